"""The one peer rule of a full mesh, used by the planner (from the mesh file) and by every agent
(from the etcd records): who a node peers with, what it lets each peer carry, and who keeps the
NAT mapping open. Property-tested to agree (tests/property/test_agent_peers.py).

Pods never appear here: they travel in the CNI's VXLAN between node addresses (plan/datapath.py).
"""

from __future__ import annotations

from typing import TypeVar

A = TypeVar("A")  # an address as the caller holds it: IPv4Address (planner) or canonical text (agents)


def is_peer(own_site: str, own_natted: bool, other_site: str, other_natted: bool) -> bool:
    """Every node of every other site, except where both ends are behind NAT: neither can dial."""
    return other_site != own_site and not (own_natted and other_natted)


def carried(tunnel_address: A, address: A) -> tuple[A, A]:
    """What a peer may carry, each address a host (/32): its tunnel address and its node (site)
    address. The agents hold records' addresses as canonical text and format them without parsing
    (10,000 records: 33 ms per apply; parsing them made it 185 ms)."""
    return tunnel_address, address


def keepalive(own_natted: bool, interval: int) -> int:
    """The side behind NAT keeps its mapping open; a public side never needs to."""
    return interval if own_natted else 0


def agents_unsupported(topology: str, mesh: str) -> str | None:
    """Why agents cannot run a mesh of this topology, or None. They build full-mesh tunnels with the
    rule above only (issue 16 brings gateways): under `topology: gateways` their peers would differ
    from the plan's. Read by `render` (whether to write the agents' units and DaemonSets) as well as
    by the agents and the lab."""
    if topology == "full-mesh":
        return None
    return (
        f"the agents build full-mesh tunnels only; mesh {mesh} uses spec.wireguard.topology "
        f"{str(topology)!r}, whose peers they would get wrong"
    )
