"""The client outside the mesh: a user's laptop on the internet, named `local` (`--from local`).

It has one public address and no other way in: it reaches what a site publishes on its public
addresses (the site router's, where an ingress gateway is published, and the nodes' 1:1 NAT
addresses), never a private address, because the internet has no route to one. The address is a
function of the plan alone, so `policy trace --from local` (no lab) and the lab's `local`
namespace agree on it without the lab running.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

from crossmesh.model.plan import Plan

LOCAL = "local"
"""The name of the outside client in `--from`, `lab exec` and the lab's namespace (`cm-<tag>-local`)."""

PREFERRED = IPv4Address("198.51.100.100")
"""The laptop's address: in TEST-NET-2 (RFC 5737), so it is public to the lab and never routed outside
it; .100 because no example or test mesh uses it (they use low numbers and the site routers take theirs
from the top of TEST-NET-1)."""

FALLBACK_RANGES = (
    IPv4Network("198.51.100.0/24"),
    IPv4Network("203.0.113.0/24"),
    IPv4Network("192.0.2.0/24"),
)


def _candidates() -> Iterator[IPv4Address]:
    yield PREFERRED
    for net in FALLBACK_RANGES:
        yield from net.hosts()


def local_address(plan: Plan) -> IPv4Address:
    """The outside client's address: PREFERRED unless the mesh uses it (a node's public or private
    address, a tunnel address, or one inside a site network or a pod or service range), else the
    first documentation address the mesh leaves free. ValueError when the mesh uses them all."""
    taken: set[IPv4Address] = set()
    networks: list[IPv4Network] = [s.network for s in plan.sites]
    for n in plan.nodes:
        taken.add(n.address)
        if n.public_address is not None:
            taken.add(n.public_address)
        if n.tunnel is not None:
            taken.add(n.tunnel.address)
        networks.append(n.pod_cidr)
    for c in plan.clusters:
        networks += [c.pod_cidr, c.service_cidr]
    for addr in _candidates():
        if addr not in taken and not any(addr in net for net in networks):
            return addr
    raise ValueError("the mesh uses every documentation address: none is left for the outside client `local`")
