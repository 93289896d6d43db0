"""The one peer rule, used by the planner (from the mesh file) and by every agent (from the etcd
records and intents): who a node peers with, what it lets each peer carry, who keeps the NAT mapping
open, and — under `topology: gateways` — which gateway carries a site and where the other nodes send
the other sites' traffic. Property-tested to agree (tests/property/test_agent_peers.py).

Neither topology peers two sites a hub carries over IPsec (`apart`: plan/hubs.py for the planner,
the node's intent for an agent). Full mesh: every node of every other site. Gateways: a site's
gateways in preference order (the one marked `preferred`, then public before behind NAT, then by
name); one of them is *active* — for the planner the preferred one, for the agents the one etcd names
(`gateways/<site>`, moved on failover). Active gateways peer with every remote gateway, and each
one's entry for a remote *active* gateway carries that site's network; all other entries carry only
the peer's tunnel address, so that a standby keeps its handshakes and failover waits for none. Every
node but its site's active gateway routes the other sites' networks via that gateway's node address.
WireGuard gives an allowed IP to one peer of a device at a time, which is why this is active/standby
and why moving a site to a new active is one `wg set` at each remote gateway.

Pods never appear here: they travel in the CNI's VXLAN between node addresses (plan/datapath.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

A = TypeVar("A")  # an address as the caller holds it: IPv4Address (planner) or canonical text (agents)


NOT_APART: frozenset[frozenset[str]] = frozenset()


def is_peer(
    own_site: str,
    own_natted: bool,
    other_site: str,
    other_natted: bool,
    apart: Collection[frozenset[str]] = NOT_APART,
) -> bool:
    """Every node of every other site, except where both ends are behind NAT: neither can dial — and
    except the site pairs in `apart`, which a hub carries over IPsec (plan/hubs.py)."""
    return (
        other_site != own_site
        and not (own_natted and other_natted)
        and (not apart or frozenset((own_site, other_site)) not in apart)
    )


def apart_of(site: str, others: Iterable[str]) -> frozenset[frozenset[str]]:
    """The pairs `apart` holds for a node of `site` whose intent names `others`: the sites a hub carries
    its site to (an agent learns only its own site's; the planner holds every pair, plan/hubs.py)."""
    return frozenset(frozenset((site, other)) for other in others if other != site)


def carried(tunnel_address: A, address: A) -> tuple[A, A]:
    """What a peer may carry, each address a host (/32): its tunnel address and its node (site)
    address. The agents hold records' addresses as canonical text and format them without parsing
    (10,000 records: 33 ms per apply; parsing them made it 185 ms)."""
    return tunnel_address, address


def keepalive(own_natted: bool, interval: int) -> int:
    """The side behind NAT keeps its mapping open; a public side never needs to."""
    return interval if own_natted else 0


@dataclass(frozen=True, slots=True)
class Member:
    """A node as the gateway rule sees it."""

    name: str
    site: str
    natted: bool
    gateway: bool
    preferred: bool = False  # the mesh file names it the site's preferred gateway


@dataclass(frozen=True, slots=True)
class GatewayPeer:
    node: str
    site: str
    carries: bool  # the entry carries the peer's site network (both ends are their sites' active gateways)
    standby: bool  # the peer is not its site's active gateway
    keepalive: bool  # this end keeps the NAT mapping open (it is behind NAT)


def gateway_order(members: Iterable[Member]) -> dict[str, tuple[str, ...]]:
    """Each site's gateways, preferred first: the one the mesh file marks `preferred`, then public
    before behind NAT, then by name."""
    order: dict[str, list[tuple[bool, bool, str]]] = {}
    for m in members:
        if m.gateway:
            order.setdefault(m.site, []).append((not m.preferred, m.natted, m.name))
    return {site: tuple(name for *_, name in sorted(gws)) for site, gws in order.items()}


def preferred(order: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """The active gateway of each site as planned: its preferred one."""
    return {site: gws[0] for site, gws in order.items() if gws}


def active_of(order: Mapping[str, tuple[str, ...]], chosen: Mapping[str, str]) -> dict[str, str]:
    """Each site's active gateway: the one `chosen` names (etcd's) when it is one of the site's
    gateways, else the preferred one — a stale or foreign name never makes a node carry a site."""
    return {site: chosen[site] if chosen.get(site) in gws else gws[0] for site, gws in order.items() if gws}


def gateway_peers(
    own: Member,
    natted: Mapping[str, bool],
    order: Mapping[str, tuple[str, ...]],
    active: Mapping[str, str],
    apart: Collection[frozenset[str]] = NOT_APART,
) -> list[GatewayPeer]:
    """The peers of gateway `own` (none for a node that is not a gateway): every gateway of every other
    site that one of the two ends can dial, the remote active first. `natted`: each gateway's NAT;
    `apart`: site pairs a hub carries over IPsec, which are no WireGuard pairs."""
    if not own.gateway:
        return []
    own_active = active.get(own.site) == own.name
    out = []
    for site in sorted(order):
        if site == own.site or site not in active or (apart and frozenset((own.site, site)) in apart):
            continue
        remote_active = active[site]
        for gw in (remote_active, *(g for g in order[site] if g != remote_active)):
            if own.natted and natted[gw]:
                continue  # neither end can dial the other
            is_active = gw == remote_active
            out.append(GatewayPeer(gw, site, own_active and is_active, not is_active, own.natted))
    return out


def via_gateway(own: Member, active: Mapping[str, str]) -> str | None:
    """The gateway through which `own` routes the other sites' networks: its site's active gateway,
    or None when `own` is that gateway (it routes them into the tunnel)."""
    gw = active.get(own.site)
    return None if gw is None or gw == own.name else gw
