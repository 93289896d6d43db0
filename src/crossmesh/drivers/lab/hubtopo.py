"""The lab's transit gateways, as data (pure, like topology.py which calls it).

A hub is a namespace `cm-<tag>-t<k>` between the internet and its site's router (the VPC):

    cm-<tag>-inet ── ti<k> | tw<k> ── cm-<tag>-t<k> ── tv<k> | ta<k> ── cm-<tag>-r<site> (the VPC router)
                  (AWS's tunnel outside addresses)        (the VPC attachment: a link-local /30)

- Each tunnel of each VPN connection into the hub has its own public outside address on `tw<k>`, as AWS
  gives every tunnel endpoint its own; the lab picks them from the documentation ranges.
- The VPC attachment is a veth to the site's router, which holds the VPC route table's entries to the
  transit gateway (plan/vpngw.vpc_routes: seed 001's 10.0.1.0/24 → tgw).
- The hub's route tables are kernel tables (vpngw.HUB_TABLE_BASE + i); `ip rule`s by incoming device
  associate them with attachments, BIRD fills them with the routes of the connections they propagate.
  They need the tunnels' TUN devices, which exist only once charon runs, so drivers/lab/transit.py writes
  them; this module says what they hold (`table_routes`, `table_rules`).

The customer gateway is the customer site's own router (seed 001: the OpenStack router r1 holds
`ipsec0`): its internet address is the connection's `customerGateway.publicAddress`.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from crossmesh.drivers.lab.spec import Namespace, Route
from crossmesh.model.plan import Plan
from crossmesh.plan import vpngw

LINK_POOL = IPv4Network("169.254.252.0/22")  # VPC attachments' /30s, clear of every tunnel's inside CIDR


@dataclass(frozen=True, slots=True)
class HubLink:
    """A hub's two veths: to the internet (`inet_if` ↔ `wan_if`) and to its VPC (`vpc_if` ↔ `router_if`)."""

    hub: str
    site: str
    namespace: str
    inet_if: str
    wan_if: str
    vpc_if: str
    router_if: str
    router_address: IPv4Interface
    hub_address: IPv4Interface


@dataclass(frozen=True, slots=True)
class TableRoute:
    table: int
    destination: IPv4Network
    device: str | None  # None: blackhole
    gateway: IPv4Address | None = None


def links(plan: Plan, prefix: str) -> dict[str, HubLink]:
    taken = [t.inside_cidr for c in plan.vpn for t in c.tunnels]
    free = (n for n in LINK_POOL.subnets(new_prefix=30) if not any(n.overlaps(t) for t in taken))
    out = {}
    for k, hub in enumerate(sorted(plan.hubs, key=lambda h: h.name)):
        net = next(free)
        router_ip, hub_ip = list(net.hosts())
        out[hub.name] = HubLink(
            hub=hub.name,
            site=hub.site,
            namespace=f"{prefix}-t{k}",
            inet_if=f"{prefix}-ti{k}",
            wan_if=f"{prefix}-tw{k}",
            vpc_if=f"{prefix}-tv{k}",
            router_if=f"{prefix}-ta{k}",
            router_address=IPv4Interface(f"{router_ip}/30"),
            hub_address=IPv4Interface(f"{hub_ip}/30"),
        )
    return out


def customer_addresses(plan: Plan) -> dict[str, list[IPv4Address]]:
    """Each customer site's gateway addresses (its router's internet side), first one first."""
    out: dict[str, list[IPv4Address]] = {}
    for c in plan.vpn:
        if c.customer_address not in out.setdefault(c.site, []):
            out[c.site].append(c.customer_address)
    return out


def table_routes(plan: Plan, hub: str, link: HubLink, gateway: vpngw.GatewaySpec) -> list[TableRoute]:
    """What the lab writes into the hub's kernel tables: routes to the VPC attachment, static routes to
    a VPN attachment (via its tunnel 1), and a blackhole default where the table has no default route —
    a transit gateway drops what its route table does not route. Routes a connection propagates over
    BGP are BIRD's to write."""
    found = next(h for h in plan.hubs if h.name == hub)
    bgp = {c.name for c in plan.vpn if c.hub == hub and c.routing == "bgp"}
    out = []
    for t in vpngw.hub_tables(found):
        for r in t.routes:
            if r.attachment == found.site:
                out.append(TableRoute(t.table, r.destination, link.vpc_if, link.router_address.ip))
            elif not (r.propagated and r.attachment in bgp):
                out.append(TableRoute(t.table, r.destination, gateway.device(r.attachment, 1)))
        if not any(r.destination.prefixlen == 0 for r in t.routes):
            out.append(TableRoute(t.table, IPv4Network("0.0.0.0/0"), None))
    return out


def table_rules(plan: Plan, hub: str, link: HubLink, gateway: vpngw.GatewaySpec) -> list[tuple[str, int]]:
    """(incoming device, table): each attachment's devices look up its associated route table."""
    found = next(h for h in plan.hubs if h.name == hub)
    out = []
    for t in vpngw.hub_tables(found):
        for name in t.associations:
            if name == found.site:
                out.append((link.vpc_if, t.table))
            else:
                out.extend((gateway.device(conn, index), t.table) for conn, index in gateway.keys if conn == name)
    return out


def namespaces(
    plan: Plan,
    hub_links: dict[str, HubLink],
    endpoints: dict[vpngw.TunnelKey, IPv4Address],
    inet_address: IPv4Address,
    sysctls: tuple[tuple[str, str], ...],
) -> list[Namespace]:
    """Each hub's namespace: its tunnels' outside addresses towards the internet, its end of the VPC
    attachment; its route tables come later (`table_routes`)."""
    out = []
    for hl in hub_links.values():
        conns = {c.name for c in plan.vpn if c.hub == hl.hub}
        mine = [a for key, a in endpoints.items() if key[0] in conns]
        out.append(
            Namespace(
                hl.namespace,
                "hub",
                addresses=(*((hl.wan_if, IPv4Interface(f"{a}/32")) for a in mine), (hl.vpc_if, hl.hub_address)),
                routes=(
                    Route(IPv4Network(f"{inet_address}/32"), hl.wan_if),
                    Route(IPv4Network("0.0.0.0/0"), hl.wan_if, inet_address, onlink=True),
                    # What the hub sends itself to its VPC (ICMP errors) goes back over the attachment.
                    *(Route(p, hl.vpc_if, hl.router_address.ip) for p in _vpc_prefixes(plan, hl.hub)),
                ),
                sysctls=sysctls,
                owner=hl.hub,
            )
        )
    return out


def _vpc_prefixes(plan: Plan, hub: str) -> tuple[IPv4Network, ...]:
    found = next(h for h in plan.hubs if h.name == hub)
    return next((a.prefixes for a in found.attachments if a.kind == "vpc"), ())
