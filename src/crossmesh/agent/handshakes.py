"""Who starts the WireGuard handshakes a change needs, and when: one end of each pair first, since
two initiations that cross each other both fail and WireGuard retries only after 5 s. A "poke" is
one datagram to a peer's tunnel address: WireGuard initiates a handshake for it now instead of
when a session times out.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from crossmesh.agent import dataplane, records
from crossmesh.agent.log import log

if TYPE_CHECKING:
    from crossmesh.agent.daemon import Agent

# The other end initiates only if nothing came from a peer after this long. Longer after a join:
# each of the other nodes initiates when its watch delivers the newcomer's record and it has
# applied it, which on a loaded host (thirty agents on two CPUs react to the same event) can take
# most of a second; a fallback fired meanwhile would cross. Within ROTATION_WINDOW of its own key
# change a node defers to a lower-named peer that changed too (both rotated at once).
POKE_LATER = 0.5
POKE_LATER_JOIN = 2.0
ROTATION_WINDOW = 2.0


def start(
    agent: Agent,
    own: records.NodeRecord,
    peers: list[records.DesiredPeer],
    changed: list[records.DesiredPeer],
    *,
    first: bool,
    rotated: bool,
    before: dict[str, records.DesiredPeer],
) -> None:
    """Start the handshakes a change needs.

    - This device is new (agent or wireguard-go restarted) and peers know its key: it pokes every
      peer; they saw nothing. A node that has not published its key yet pokes nobody.
    - A peer's key changed: that node set its key before publishing it, so it is ready — poke it
      now; unless this node re-keyed too (both rotated at once): then the lower name goes first.
    - This node re-keyed: its peers learn the key after it and initiate; no poke now.
    - A node joined: the one with the older record initiates. The newcomer applied the whole
      mesh before it published its record, so it is ready when the others learn of it.
    Whoever did not poke at once pokes later the peers from which nothing came."""
    reachable = [p for p in peers if p.endpoint or own.natted]
    recent = time.monotonic() - agent.rotated_at < ROTATION_WINDOW
    now = [
        p
        for p in reachable
        if (first and agent.announced) or (p in changed and _initiates(agent, own, p, before, recent))
    ]
    if now:
        log(f"initiating handshakes with {', '.join(p.node for p in now[:8])}" + (" …" if len(now) > 8 else ""))
        poke(agent.dp, now)
    waiting = [p for p in reachable if p not in now and (rotated or p in changed)]
    joined = [p for p in waiting if p.node not in before]
    for group, delay in (([p for p in waiting if p not in joined], POKE_LATER), (joined, POKE_LATER_JOIN)):
        if group:
            timer = threading.Timer(delay, _poke_unanswered, (agent.dp, group, time.time(), set(changed)))
            timer.daemon = True
            timer.start()


def _initiates(
    agent: Agent, own: records.NodeRecord, p: records.DesiredPeer, before: dict[str, records.DesiredPeer], recent: bool
) -> bool:
    if p.node not in before:
        return 0 < agent.own_created < agent.created.get(p.node, 0)
    return not (recent and own.name > p.node)


def _poke_unanswered(
    dp: dataplane.Dataplane, peers: list[records.DesiredPeer], since: float, fresh: set[records.DesiredPeer]
) -> None:
    stats = dp.peer_stats()
    targets = []
    for p in peers:
        handshake, rx, _, _ = stats.get(p.public_key, (0, 0, 0, None))
        # Handshake times are whole seconds: one in the same second counts as not seen (a poke
        # through a session that is up costs one datagram). A peer entry made by that apply
        # that received anything got an initiation: answering it is enough.
        if handshake <= int(since) and not (p in fresh and rx):
            targets.append(p)
    if targets:
        log(f"no handshake yet with {', '.join(p.node for p in targets[:8])}: initiating")
    poke(dp, targets)


def poke(dp: dataplane.Dataplane, peers: list[records.DesiredPeer]) -> None:
    """One datagram to each peer's tunnel address."""
    dp.poke([p.allowed_ips[0].split("/")[0] for p in peers])
