"""The one peer rule of a full mesh, used by the planner (from the mesh file) and by every agent
(from the etcd records): who a node peers with, what it lets each peer carry, and who keeps the
NAT mapping open. Property-tested to agree (tests/property/test_agent_peers.py).

Pods never appear here: they travel in the CNI's VXLAN between node addresses (plan/datapath.py).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network


def is_peer(own_site: str, own_natted: bool, other_site: str, other_natted: bool) -> bool:
    """Every node of every other site, except where both ends are behind NAT: neither can dial."""
    return other_site != own_site and not (own_natted and other_natted)


def allowed_ips(tunnel_address: IPv4Address, address: IPv4Address) -> tuple[IPv4Network, IPv4Network]:
    """What a peer may carry: its tunnel address and its node (site) address."""
    return IPv4Network((tunnel_address, 32)), IPv4Network((address, 32))


def keepalive(own_natted: bool, interval: int) -> int:
    """The side behind NAT keeps its mapping open; a public side never needs to."""
    return interval if own_natted else 0
