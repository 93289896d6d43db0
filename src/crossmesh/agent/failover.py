"""A node's part in its site's gateway failover (topology gateways), over etcd and the data plane.

Every agent follows `gateways/<site>` (which gateway of each site is active): the peers it gives the
device and the routes it takes via its site's gateway follow it (records.GatewayView). A gateway's
agent also answers probes (probes.PROBE_PORT, on every address of its node) and, every INTERVAL,
probes each remote site's active gateway twice — *direct*, tunnel address to tunnel address through
its own peer entry, and *via*, to that gateway's node address by the route every non-active node of
the site takes, through the local active gateway — and feeds the round to its `gateways.Judge`. When
the judge says so it writes the site's key with a compare on the revision it read: of two standbys
racing, one wins; the remote gateways then move the site network to it (one `wg set` each) and the
site's nodes re-point their routes.

The probes run on a thread inside the node's network namespace (the lab; on a real node, the host's);
the judge and the etcd writes on the agent's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

from crossmesh.agent import gateways, probes, records
from crossmesh.agent.log import log
from crossmesh.kv.api import Compare, Entry, Event, Kv, Put

if TYPE_CHECKING:
    from crossmesh.agent.daemon import Agent

TIMEOUT = gateways.INTERVAL  # a probe not answered within a round counts as lost
_SIOCGIFFLAGS, _IFF_UP = 0x8913, 0x1


class Failover:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.values: dict[str, tuple[gateways.ActiveGateway, int]] = {}  # site → good value, its mod revision
        self.raw: dict[str, Entry] = {}  # site → what etcd holds
        self.refused: dict[str, str] = {}
        self.judge = gateways.Judge(agent.node)
        self.targets: dict[str, tuple[str | None, str | None]] = {}  # remote site → (direct, via) addresses
        self.health: gateways.Health | None = None
        self.rounds: asyncio.Queue[tuple[float, gateways.Health]] | None = None
        self.background: probes.Background | None = None
        self.takeovers = 0
        self._viewed: tuple[dict[str, records.PlannedNode], dict[str, str], records.GatewayView] | None = None

    # --- following gateways/ ------------------------------------------------------------------
    def load(self, entries: list[Entry]) -> None:
        self.raw = {self._site(e.key): e for e in entries}
        self.settle()

    def events(self, batch: list[Event]) -> None:
        for ev in batch:
            if ev.kind == "delete":
                self.raw.pop(self._site(ev.entry.key), None)
            else:
                self.raw[self._site(ev.entry.key)] = ev.entry
        self.settle()

    def settle(self) -> None:
        """Each site's active gateway from what etcd holds, judged against the site's gateways as the
        intents give them (a value naming anything else is refused: the preferred gateway stays)."""
        order = self._view().order
        values, refused = {}, {}
        for site, entry in self.raw.items():
            try:
                value = gateways.decode_active(entry.value, site, order.get(site, ()))
            except gateways.GatewayError as err:
                kept = self.values.get(site)  # a bad write does not move the site: the last good choice stays
                refused[site] = str(err) + ("; keeping the last good one" if kept else "")
                if kept is not None and kept[0].active in order.get(site, ()):
                    values[site] = (kept[0], entry.mod_revision)  # a takeover compares on what etcd holds now
                continue
            values[site] = (value, entry.mod_revision)
        for site, why in refused.items():
            if self.refused.get(site) != why:
                log(f"refused the active gateway of site {site[:63]!r}: {why}")
        chosen = {site: v.active for site, (v, _) in values.items()}
        for site, (v, _) in sorted(values.items()):
            if self.agent.chosen.get(site) != v.active:
                log(f"site {site}: active gateway {v.active} (epoch {v.epoch}, by {v.by}: {v.reason})")
        self.values, self.refused = values, refused
        if chosen != self.agent.chosen:
            self.agent.chosen = chosen
            self.agent.dirty.set()

    def _view(self) -> records.GatewayView:
        """The gateways as the intents and etcd's choices give them now, made again only when either
        changed (every probe round asks: ten times a second)."""
        planned, chosen = self.agent.intent, dict(self.agent.chosen)
        if self._viewed is None or self._viewed[0] is not planned or self._viewed[1] != chosen:
            self._viewed = (planned, chosen, records.GatewayView.of(planned, chosen))
        return self._viewed[2]

    def _site(self, key: bytes) -> str:
        return key[len(self.agent.layout.gateways) :].decode(errors="replace")

    # --- probing and judging -------------------------------------------------------------------
    def aim(self) -> None:
        """The addresses to probe for each remote site's active gateway, from the intents and the
        active gateways now: (its tunnel address, its node address); nothing for a node that is not
        a gateway, no via probe for the active gateway itself (it routes into the tunnel), and no
        site a hub carries this one to (no tunnel there, no route via the gateway)."""
        planned = self.agent.intent
        me = planned.get(self.agent.node)
        if me is None or not me.gateway:
            self.targets = {}
            return
        view = self._view()
        apart = records.apart_of(planned, me.name)
        active_here = view.active.get(me.site) == me.name
        out: dict[str, tuple[str | None, str | None]] = {}
        for site, gw in sorted(view.active.items()):
            if site == me.site or frozenset((me.site, site)) in apart:
                continue
            remote = planned[gw]
            reachable = not (me.public_address is None and remote.public_address is None)
            out[site] = (remote.tunnel_address if reachable else None, None if active_here else remote.address)
        self.targets = out

    async def run(self, kv: Kv) -> None:
        """While the session lasts: start (or stop) the probes as this node is (or stops being) a
        gateway, and act on every round."""
        self.rounds = asyncio.Queue(maxsize=16)
        loop = asyncio.get_running_loop()
        try:
            while True:
                self.aim()
                me = self.agent.intent.get(self.agent.node)
                wanted = me is not None and me.gateway
                if wanted and self.background is None:
                    self.background = probes.run_in_namespace(self.agent.namespace, lambda: self._probe(loop))
                    log(f"gateway of site {me.site if me else '?'}: answering and sending probes")
                elif not wanted and self.background is not None:
                    self.stop()
                try:
                    async with asyncio.timeout(1.0):
                        now, health = await self.rounds.get()
                except TimeoutError:
                    continue
                await self._judge(kv, now, health)
        finally:
            self.rounds = None

    async def _judge(self, kv: Kv, now: float, health: gateways.Health) -> None:
        self.health = health
        me = self.agent.intent.get(self.agent.node)
        if me is None:
            return
        self.judge.observe(now, health)
        order = self._view().order.get(me.site, ())
        held = self.values.get(me.site)
        proposal = self.judge.decide(now, held[0] if held else None, order)
        if proposal is None or held is None:
            return
        key = self.agent.layout.gateway(me.site)
        result = await kv.txn([Compare(key, "mod", held[1])], [Put(key, proposal.encode())])
        if result.succeeded:
            self.takeovers += 1
            log(f"site {me.site}: took over from {held[0].active} (epoch {proposal.epoch}): {proposal.reason}")
        # Lost the race: the watch brings the winner's value, and the judge starts over from it.

    async def _probe(self, main: asyncio.AbstractEventLoop) -> None:
        """In the node's namespace: answer probes, and every INTERVAL probe the targets and hand the
        round (with this node's own forwarding and device state) to the agent's loop."""
        responder = await probes.Responder.listen()
        prober = await probes.Prober.open()
        try:
            while True:
                started = time.monotonic()
                targets = self.targets
                wanted = {f"{s}/d": d for s, (d, _) in targets.items() if d} | {
                    f"{s}/v": v for s, (_, v) in targets.items() if v
                }
                answered = await prober.round(wanted, TIMEOUT)
                remotes = {
                    s: gateways.Remote(answered.get(f"{s}/d") if d else None, answered.get(f"{s}/v") if v else None)
                    for s, (d, v) in targets.items()
                }
                health = gateways.Health(_forwarding(), _device_up(self.agent.ifname), remotes)
                with contextlib.suppress(RuntimeError, asyncio.QueueFull):  # the agent's loop is closing
                    main.call_soon_threadsafe(self._hand, time.time(), health)
                await asyncio.sleep(max(0.0, gateways.INTERVAL - (time.monotonic() - started)))
        finally:
            prober.close()
            responder.close()

    def _hand(self, now: float, health: gateways.Health) -> None:
        if self.rounds is not None and not self.rounds.full():
            self.rounds.put_nowait((now, health))

    def stop(self) -> None:
        if self.background is not None:
            self.background.stop()
            self.background = None

    def status(self) -> dict[str, object]:
        """For the agent's status file."""
        h = self.health
        return {
            "active": {site: v.active for site, (v, _) in sorted(self.values.items())},
            "refused": dict(sorted(self.refused.items())),
            "probing": self.background is not None,
            "takeovers": self.takeovers,
            "health": None
            if h is None
            else {
                "forwarding": h.forwarding,
                "deviceUp": h.device_up,
                "remotes": {s: {"direct": r.direct, "via": r.via} for s, r in sorted(h.remotes.items())},
            },
        }


def _forwarding() -> bool:
    """This thread's namespace forwards IPv4 (net sysctls are read in the reader's namespace)."""
    try:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        return False


def _device_up(ifname: str) -> bool:
    """The WireGuard device exists in this thread's namespace and is up."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            flags = struct.unpack_from("H", fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("256s", ifname.encode())), 16)[0]
    except OSError:
        return False
    return bool(flags & _IFF_UP)
