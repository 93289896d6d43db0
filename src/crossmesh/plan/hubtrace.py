"""The hops of a packet between two sites a hub joins over IPsec (plan.site_pairs, transport ipsec), from
the plan alone — seed 001's steps 4 to 8 and, for the answer, 12:

    node → its site's router, the customer gateway (BGP route via ipsec<k>: tunnel k of the connection)
    → ESP in UDP 4500 from the customer's public address across the internet to the tunnel's outside
    address at the hub → the transit gateway's route table (associated with the attachment the packet
    came in on; the route, propagated from which attachment) → the VPC attachment → the VPC router's
    route table → the node. From the VPC towards a customer site the same, the other way round.

Which tunnel carries the packet is a parameter (`Tunnels`): the active one (tunnel 1: the customer gives
its routes local preference 200, and prepends its AS on tunnel 2 so the hub prefers tunnel 1 too) unless
the caller knows better — the lab reads it from the tunnels' CHILD_SA counters, so that a cut tunnel 1
shows tunnel 2. A tunnel's outside address at the hub is AWS's to assign; the lab passes its stand-ins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from crossmesh.model.plan import HubPlan, NodePlan, Plan, SitePairPlan, Transport, VpnConnectionPlan

REQUEST, REPLY = "request", "reply"
TunnelChoice = Mapping[tuple[str, str], int]  # (connection, REQUEST | REPLY) → tunnel index 1 | 2
AddHop = Callable[..., None]  # add(where, action, device, node, peer="", seed=0)
ESP_PORT = 4500


@dataclass(frozen=True, slots=True)
class Crossing:
    """One connection crossed: from the customer site into the hub (`inbound`) or out of it."""

    connection: VpnConnectionPlan
    hub: HubPlan
    inbound: bool


@dataclass
class HubPath:
    """What the trace needs of the lab (or the cloud) beyond the plan, and what it crossed on the way."""

    tunnels: TunnelChoice = field(default_factory=dict)
    outside: Mapping[tuple[str, int], IPv4Address] = field(default_factory=dict)  # (connection, tunnel) → address
    crossed: list[Crossing] = field(default_factory=list)


def ipsec_pair(plan: Plan, a: str, b: str) -> SitePairPlan | None:
    """The site pair joining sites `a` and `b` over IPsec, if a hub carries it."""
    want = tuple(sorted((a, b)))
    return next((p for p in plan.site_pairs if p.sites == want and p.transport is Transport.IPSEC), None)


def active(conn: VpnConnectionPlan) -> int:
    return next((t.index for t in conn.tunnels if not t.standby), conn.tunnels[0].index)


def device(plan: Plan, conn: VpnConnectionPlan, index: int, *, hub_side: bool) -> str:
    """The TUN device of tunnel `index` at one end: tunnel k of that end (its connections in plan order,
    their tunnels in order) is charon k on `ipsec<k>`, as plan/vpngw.py derives the daemons."""
    mine = [c for c in plan.vpn if (c.hub == conn.hub if hub_side else c.site == conn.site)]
    keys = [(c.name, t.index) for c in mine for t in c.tunnels]
    return f"ipsec{keys.index((conn.name, index))}"


def _tunnel(path: HubPath, conn: VpnConnectionPlan, leg: str) -> int:
    return path.tunnels.get((conn.name, leg), active(conn))


def _outside(path: HubPath, conn: VpnConnectionPlan, index: int) -> str:
    found = path.outside.get((conn.name, index))
    return str(found) if found is not None else f"tunnel {index}'s outside address (AWS's to assign)"


def _route(table_routes: tuple[tuple[IPv4Network, str, bool], ...], dst: IPv4Address) -> tuple[IPv4Network, str, bool]:
    best = max((r for r in table_routes if dst in r[0]), key=lambda r: r[0].prefixlen, default=None)
    if best is None:
        raise LookupError(dst)
    return best


def _table(hub: HubPlan, attachment: str, dst: IPv4Address) -> tuple[str, IPv4Network, str, bool]:
    """(route table, destination, attachment, propagated) the hub uses for a packet to `dst` that came
    in on `attachment`: the table associated with it, its longest matching route."""
    table = next((t for t in hub.route_tables if attachment in t.associations), None)
    if table is None:
        raise LookupError(f"no route table of hub {hub.name} is associated with attachment {attachment}")
    try:
        dest, att, propagated = _route(tuple((r.destination, r.attachment, r.propagated) for r in table.routes), dst)
    except LookupError:
        raise LookupError(f"route table {table.name} of hub {hub.name} has no route to {dst} (dropped)") from None
    return table.name, dest, att, propagated


def cross(plan: Plan, node: NodePlan, target: NodePlan, add: AddHop, path: HubPath) -> None:
    """The hops from `node` to node `target` in another site, the pair carried by a hub over IPsec.
    LookupError when the hub does not route it (no associated table, no route)."""
    hub = next(h for h in plan.hubs if h.name == (ipsec_pair(plan, node.site, target.site) or _no()).hub)
    router = plan.site(node.site).network.network_address + 1
    add(
        node.name,
        f"Linux routing table: {target.address} is off site {node.site}, default route to the site's router "
        f"({router})" + (", the customer gateway" if node.site != hub.site else ", the VPC router"),
        "site",
        node.name,
        seed=4,
    )
    attachment = node.site
    if node.site != hub.site:
        conn = next(c for c in plan.vpn if c.site == node.site and c.hub == hub.name)
        _into_hub(plan, conn, hub, target, add, path)
        attachment = conn.name
    else:
        _vpc_to_hub(plan, hub, node, target, add)
    table, dest, att, propagated = _table(hub, attachment, target.address)
    how = f"propagated from attachment {att}" if propagated else f"static, to attachment {att}"
    if att == hub.site:
        add(
            f"transit gateway {hub.name}",
            f"route table {table} (associated with attachment {attachment}): {dest} {how} → VPC attachment "
            f"of site {att}",
            "tgw-vpc",
            "",
            key=hub.name,
            seed=7,
        )
        _vpc_to_node(plan, hub, target, add)
        return
    out = next(c for c in plan.vpn if c.name == att)
    k = _tunnel(path, out, REQUEST)
    add(
        f"transit gateway {hub.name}",
        f"route table {table} (associated with attachment {attachment}): {dest} {how} → VPN attachment "
        f"{out.name}, tunnel {k} ({'standby' if _standby(out, k) else 'active'}: the shorter AS path)",
        "tgw-vpn",
        "",
        seed=7,
    )
    _out_of_hub(plan, out, hub, target, add, path)


def _no() -> SitePairPlan:
    raise LookupError("no hub carries this site pair")


def _standby(conn: VpnConnectionPlan, index: int) -> bool:
    return next(t.standby for t in conn.tunnels if t.index == index)


def _inside(conn: VpnConnectionPlan, index: int) -> IPv4Network:
    return next(t.inside_cidr for t in conn.tunnels if t.index == index)


def _into_hub(plan: Plan, conn: VpnConnectionPlan, hub: HubPlan, target: NodePlan, add: AddHop, path: HubPath) -> None:
    """Customer gateway → ESP → the hub's tunnel endpoint."""
    k = _tunnel(path, conn, REQUEST)
    dev = device(plan, conn, k, hub_side=False)
    prefix = next((p for p in conn.hub_prefixes if target.address in p), target.address)
    learned = (
        f"BGP route {prefix} from {next(t.hub_address for t in conn.tunnels if t.index == k)} (AS {hub.amazon_asn})"
        if conn.routing == "bgp"
        else f"static route {prefix}"
    )
    role = "standby, local preference 100" if _standby(conn, k) else "active, local preference 200"
    add(
        f"router {conn.site}",
        f"customer gateway {conn.customer_address}: {learned} via {dev} — tunnel {k} of {conn.name} "
        f"({_inside(conn, k)}, {role})",
        "ipsec-route",
        "",
        seed=4,
        key=dev,
    )
    add(
        f"router {conn.site}",
        f"IPsec (kernel-libipsec) encrypts into the CHILD_SA of tunnel {k}: ESP in UDP {ESP_PORT} (NAT-T) "
        f"from {conn.customer_address} to {_outside(path, conn, k)}",
        "esp-out",
        "",
        key=f"{conn.name}:{k}",
        seed=5,
    )
    add("internet", f"carries UDP {ESP_PORT} to the hub's tunnel {k} endpoint", "inet", "", seed=6, key=hub.name)
    add(
        f"transit gateway {hub.name}",
        f"tunnel {k} endpoint decrypts (CHILD_SA in) onto {device(plan, conn, k, hub_side=True)}: "
        f"arrives on VPN attachment {conn.name}",
        "esp-in",
        "",
        key=f"{conn.name}:{k}",
        seed=6,
    )
    path.crossed.append(Crossing(conn, hub, inbound=True))


def _vpc_to_hub(plan: Plan, hub: HubPlan, node: NodePlan, target: NodePlan, add: AddHop) -> None:
    add(
        f"router {hub.site}",
        f"VPC route table: {target.address} → transit gateway {hub.name} (VPC attachment)",
        "vpc-out",
        "",
        seed=8,
    )


def _vpc_to_node(plan: Plan, hub: HubPlan, target: NodePlan, add: AddHop) -> None:
    site = plan.site(target.site)
    add(
        f"router {hub.site}",
        f"VPC route table: {site.network} local → node {target.name} ({target.address}) in the subnet",
        "vpc-in",
        "",
        target.name,
        key=hub.name,
        seed=8,
    )


def _out_of_hub(
    plan: Plan, conn: VpnConnectionPlan, hub: HubPlan, target: NodePlan, add: AddHop, path: HubPath
) -> None:
    """The hub's tunnel endpoint → ESP → the customer gateway → the node."""
    k = _tunnel(path, conn, REQUEST)
    add(
        f"transit gateway {hub.name}",
        f"tunnel {k} endpoint encrypts: ESP in UDP {ESP_PORT} from {_outside(path, conn, k)} to "
        f"{conn.customer_address}",
        "esp-hub-out",
        "",
        key=f"{conn.name}:{k}",
        seed=6,
    )
    add(
        f"router {conn.site}",
        f"customer gateway decrypts tunnel {k} (CHILD_SA in) on {device(plan, conn, k, hub_side=False)} → "
        f"node {target.name} ({target.address}) on site network {conn.site}",
        "esp-cgw-in",
        "",
        target.name,
        seed=8,
        key=f"{conn.name}:{k}",
    )
    path.crossed.append(Crossing(conn, hub, inbound=False))


def reply(plan: Plan, path: HubPath, add: AddHop) -> None:
    """Step 12: the answer back over each connection crossed, last first, through the tunnel that
    carries the reply (the hub chooses it by AS path, the customer by local preference)."""
    for c in reversed(path.crossed):
        conn, hub = c.connection, c.hub
        k = _tunnel(path, conn, REPLY)
        table = next((t for t in hub.route_tables if hub.site in t.associations), None)
        routes = "" if table is None else f"route table {table.name}: "
        routed = next((p for p in conn.customer_prefixes), None)
        if c.inbound:
            add(
                f"transit gateway {hub.name}",
                f"the answer: {routes}{routed} propagated from {conn.name} → tunnel {k} "
                f"({'standby' if _standby(conn, k) else 'active: tunnel 2 is AS-path prepended'}), ESP to "
                f"{conn.customer_address}",
                "reply-hub-out",
                "",
                key=f"{conn.name}:{k}",
                seed=12,
            )
            add(
                f"router {conn.site}",
                f"customer gateway decrypts the answer from tunnel {k} on {device(plan, conn, k, hub_side=False)}",
                "reply-cgw-in",
                "",
                key=f"{conn.name}:{k}",
                seed=12,
            )
        else:
            add(
                f"router {conn.site}",
                f"the answer: customer gateway encrypts into tunnel {k} (ESP to {_outside(path, conn, k)})",
                "reply-cgw-out",
                "",
                key=f"{conn.name}:{k}",
                seed=12,
            )
            add(
                f"transit gateway {hub.name}",
                f"tunnel {k} endpoint decrypts the answer → its route table → on to the sender",
                "reply-hub-in",
                "",
                key=f"{conn.name}:{k}",
                seed=12,
            )
