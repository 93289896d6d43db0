"""Sites joined through a hub: which transport carries each pair of sites, and its MTU budget.

A hub is an AWS Transit Gateway. Site `hub.site`'s VPC attaches to it (the attachment is named after
the site) and every VPN connection of `spec.vpnConnections` attaches to it from its customer site (the
attachment is named after the connection). Two sites travel through the hub — IPsec from the customer
gateway into the hub, the hub's routing, and the VPC or another VPN connection out — when both are
attached to it and the route table associated with each one's attachment routes the other's site
network to the other's attachment. Every other pair keeps crossmesh's WireGuard: the file says which
pair uses which transport by its connections and route tables alone, with no per-pair switch. A pair
carried by IPsec is no WireGuard pair: its nodes do not peer, and the sites' routers carry it (the
VPC's route table and the customer gateway's `ipsec0`), as in seed 001.

MTU of an IPsec path: ESP in tunnel mode, UDP-encapsulated (NAT-T, port 4500; crossmesh always
encapsulates, as kernel-libipsec must), over an internet MTU of 1500:
    outer IPv4 20 + UDP 8 + ESP header (SPI, sequence) 8 + IV + ICV + trailer (pad length, next
    header) 2, the encrypted part padded to the cipher's block (4 for GCM, RFC 4303 §2.4).
AES-GCM (RFC 4106): IV 8, ICV 16; AES-CBC (RFC 3602): IV 16, padded to 16, with HMAC-SHA1-96 12,
SHA2-256 16, SHA2-384 24, SHA2-512 32 (RFC 4868). The worst of a tunnel's phase-2 proposals counts:
either may be negotiated. AES256-GCM-16 gives 1500 − 62 = 1438. AWS documents a maximum of 1446 bytes
(MSS 1406) for Site-to-Site VPN ("Best practices for your customer gateway device": the same sum
without the 8 bytes of NAT-T), so a figure is never above 1446 either. And the customer gateway crossmesh
renders runs ESP in user space (kernel-libipsec), whose TUN device carries 1400 at most (`LIBIPSEC_MTU`):
every tunnel's figure is 1400, the pods' across it 1350 with VXLAN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from itertools import combinations

from crossmesh.model.mesh import (
    Encryption,
    Hub,
    Integrity,
    Mesh,
    Phase1,
    Phase2,
    RouteTable,
    Routing,
    VpnConnection,
)
from crossmesh.model.plan import (
    VXLAN_OVERHEAD,
    WIREGUARD_OVERHEAD,
    HubAttachmentPlan,
    HubPlan,
    HubRoutePlan,
    HubRouteTablePlan,
    Mtu,
    Proposal,
    SitePairPlan,
    Transport,
    VpnConnectionPlan,
    VpnTunnelPlan,
)

INTERNET_MTU = 1500  # the path between the customer gateway and AWS's tunnel endpoints
AWS_VPN_MAX_MTU = 1446  # AWS, "Best practices for your customer gateway device": MTU 1446, MSS 1406
LIBIPSEC_MTU = 1400
"""The customer gateway crossmesh renders (and the lab runs) does ESP in user space, kernel-libipsec,
whose TUN device is made with MTU 1400 (TUN_DEFAULT_MTU, strongSwan
src/libcharon/plugins/kernel_libipsec/kernel_libipsec_plugin.c), not configurable; libipsec reads
packets into buffers of that size, so raising the device's MTU with `ip link` loses every larger
packet (measured: a 1401-byte datagram never arrived, 1400 did). Its tunnels carry 1400."""
OUTER_IPV4, NATT_UDP, ESP_HEADER, ESP_TRAILER = 20, 8, 8, 2
DEFAULT_ROUTE_TABLE = "default"
PSK_FOLDER = "vpn"


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str
    kind: str  # vpc | vpn
    site: str
    prefixes: tuple[IPv4Network, ...]


@dataclass(frozen=True, slots=True)
class Link:
    """Two sites joined through `hub` over `connections` (one, or one per customer site)."""

    hub: str
    connections: tuple[str, ...]


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def customer_prefixes(mesh: Mesh, conn: VpnConnection) -> tuple[IPv4Network, ...]:
    """What a connection's customer side brings: its static routes, or under BGP its site network (the
    node addresses, between which the CNI's VXLAN carries pods: README, "Datapath")."""
    if conn.routing is Routing.STATIC:
        return tuple(sorted(set(conn.static_routes)))
    site = next((s for s in mesh.spec.sites if s.name == conn.site), None)
    return () if site is None else (site.network,)


def attachments(mesh: Mesh, hub: Hub) -> list[Attachment]:
    """The hub's attachments: its site's VPC, then its VPN connections by name. Unknown sites give no
    prefixes (validate reports them)."""
    networks = {s.name: s.network for s in mesh.spec.sites}
    out = [Attachment(hub.site, "vpc", hub.site, (networks[hub.site],) if hub.site in networks else ())]
    for conn in sorted(mesh.spec.vpn_connections, key=lambda c: c.name):
        if conn.hub == hub.name:
            out.append(Attachment(conn.name, "vpn", conn.site, customer_prefixes(mesh, conn)))
    return out


def route_tables(mesh: Mesh, hub: Hub) -> list[RouteTable]:
    """The hub's route tables as written, or AWS's default (every attachment associated with and
    propagating to one table: DefaultRouteTableAssociation and ...Propagation are enabled by default)."""
    if hub.route_tables is not None:
        return list(hub.route_tables)
    names = [a.name for a in attachments(mesh, hub)]
    return [RouteTable(name=DEFAULT_ROUTE_TABLE, associations=names, propagations=names)]


def effective_routes(mesh: Mesh, hub: Hub, table: RouteTable) -> tuple[HubRoutePlan, ...]:
    """A table's routes: its static ones, then the propagated prefixes it does not hold statically
    (a static route wins over a propagated one for the same destination, as on a transit gateway)."""
    by_name = {a.name: a for a in attachments(mesh, hub)}
    routes = {r.destination: HubRoutePlan(r.destination, r.attachment, False) for r in table.routes}
    for name in table.propagations:
        for prefix in by_name[name].prefixes if name in by_name else ():
            routes.setdefault(prefix, HubRoutePlan(prefix, name, True))
    return tuple(sorted(routes.values(), key=lambda r: (int(r.destination.network_address), r.destination.prefixlen)))


def reaches(mesh: Mesh, hub: Hub, src: str, dst: Attachment) -> bool:
    """Whether the table associated with attachment `src` routes all of `dst`'s prefixes to `dst`
    (longest match: no more specific route of the table sends part of them elsewhere)."""
    table = next((t for t in route_tables(mesh, hub) if src in t.associations), None)
    if table is None or not dst.prefixes:
        return False
    routes = effective_routes(mesh, hub, table)
    for prefix in dst.prefixes:
        covering = [r for r in routes if prefix.subnet_of(r.destination)]
        inside = [r for r in routes if r.destination.subnet_of(prefix) and r.destination != prefix]
        best = max(covering, key=lambda r: r.destination.prefixlen, default=None)
        if best is None or best.attachment != dst.name or any(r.attachment != dst.name for r in inside):
            return False
    return True


def links(mesh: Mesh) -> dict[tuple[str, str], Link]:
    """Every pair of sites the hubs carry. A connection declares its site and its hub's site a pair
    (validate refuses route tables that do not carry it: validate/vpn.py); two customer sites of one
    hub are a pair when the hub's route tables route each to the other (spokes may be kept apart, a
    common transit gateway design). The first hub by name wins where two could carry a pair."""
    out: dict[tuple[str, str], Link] = {}
    hubs = {h.name: h for h in mesh.spec.hubs}
    sites = {s.name for s in mesh.spec.sites}
    for conn in sorted(mesh.spec.vpn_connections, key=lambda c: (c.hub, c.name)):
        hub = hubs.get(conn.hub)
        if hub is None or conn.site == hub.site or not {conn.site, hub.site} <= sites:
            continue
        out.setdefault(pair(conn.site, hub.site), Link(hub.name, (conn.name,)))
    for hub in sorted(mesh.spec.hubs, key=lambda h: h.name):
        atts = attachments(mesh, hub)
        for a, b in combinations(atts, 2):
            if a.site == b.site or pair(a.site, b.site) in out:
                continue
            if reaches(mesh, hub, a.name, b) and reaches(mesh, hub, b.name, a):
                conns = tuple(x.name for x in sorted((a, b), key=lambda x: x.site) if x.kind == "vpn")
                out[pair(a.site, b.site)] = Link(hub.name, conns)
    return out


def apart(mesh: Mesh) -> frozenset[frozenset[str]]:
    """The site pairs that are no WireGuard pair (the hubs carry them), for the peer rule."""
    return frozenset(frozenset(p) for p in links(mesh))


def partners(pairs: Iterable[SitePairPlan]) -> dict[str, tuple[str, ...]]:
    """Each site's partners over IPsec (the plan's site pairs whose transport the hubs carry), in name
    order: what every node's intent tells its agent, so that the agents leave to the hubs the pairs
    `apart` leaves to them in the plan (agent/records.py)."""
    out: dict[str, list[str]] = {}
    for p in pairs:
        if p.transport is Transport.IPSEC:
            a, b = p.sites
            out.setdefault(a, []).append(b)
            out.setdefault(b, []).append(a)
    return {site: tuple(sorted(others)) for site, others in out.items()}


# --- MTU --------------------------------------------------------------------------------------------

_ICV = {Integrity.SHA1: 12, Integrity.SHA2_256: 16, Integrity.SHA2_384: 24, Integrity.SHA2_512: 32}


def _esp(encryption: Encryption, integrity: Integrity) -> tuple[int, int, int, str]:
    """(IV, ICV, block, words) of one ESP transform."""
    if encryption in (Encryption.AES128_GCM_16, Encryption.AES256_GCM_16):
        return 8, 16, 4, f"8 IV − 16 ICV ({encryption})"
    icv = _ICV[integrity]
    return 16, icv, 16, f"16 IV − {icv} ICV ({encryption}/{integrity}, padded to 16)"


def esp_mtu(phase2: Phase2, outer: int = INTERNET_MTU) -> Mtu:
    """The largest inner packet one tunnel carries: the worst of its phase-2 transforms."""
    worst: tuple[int, str] | None = None
    for enc in phase2.encryption:
        for integ in phase2.integrity:
            iv, icv, block, words = _esp(enc, integ)
            room = outer - OUTER_IPV4 - NATT_UDP - ESP_HEADER - iv - icv
            inner = room // block * block - ESP_TRAILER
            if worst is None or inner < worst[0]:
                text = (
                    f"{outer} internet − {OUTER_IPV4} IPv4 − {NATT_UDP} UDP 4500 (NAT-T) − {ESP_HEADER} ESP − "
                    f"{words} = {room}"
                    + (f", to {room // block * block} by {block}" if room % block else "")
                    + f", − {ESP_TRAILER} ESP trailer = {inner}"
                )
                worst = (inner, text)
    assert worst is not None  # noqa: S101 - the model requires one encryption and one integrity at least
    if worst[0] > AWS_VPN_MAX_MTU:
        return Mtu(AWS_VPN_MAX_MTU, f"{worst[1]}; AWS's maximum {AWS_VPN_MAX_MTU}")
    return Mtu(*worst)


def tunnel_mtu(phase2: Phase2) -> Mtu:
    """What one tunnel of the rendered customer gateway carries: ESP's budget, at most the TUN device's."""
    esp = esp_mtu(phase2)
    if esp.value > LIBIPSEC_MTU:
        return Mtu(LIBIPSEC_MTU, f"{esp.arithmetic}; kernel-libipsec's TUN device {LIBIPSEC_MTU}")
    return esp


def _proposal(p: Phase1 | Phase2) -> Proposal:
    return Proposal(
        encryption=tuple(e.value for e in p.encryption),
        integrity=tuple(i.value for i in p.integrity),
        dh_groups=tuple(p.dh_groups),
        lifetime_seconds=p.lifetime_seconds,
    )


def psk_name(connection: str, index: int) -> str:
    """Where a generated pre-shared key lives in the state directory."""
    return f"{PSK_FOLDER}/{connection}.tunnel{index}.psk"


def connection_mtu(conn: VpnConnection) -> Mtu:
    """The smaller of the two tunnels' figures: traffic moves to tunnel 2 when tunnel 1 fails."""
    return min((tunnel_mtu(t.phase2) for t in conn.tunnels), key=lambda m: m.value)


# --- the plan ---------------------------------------------------------------------------------------


def hub_plans(mesh: Mesh) -> tuple[HubPlan, ...]:
    out = []
    for hub in sorted(mesh.spec.hubs, key=lambda h: h.name):
        out.append(
            HubPlan(
                name=hub.name,
                site=hub.site,
                amazon_asn=hub.amazon_side_asn,
                attachments=tuple(HubAttachmentPlan(a.name, a.kind, a.prefixes) for a in attachments(mesh, hub)),
                route_tables=tuple(
                    HubRouteTablePlan(
                        name=t.name,
                        associations=tuple(t.associations),
                        propagations=tuple(t.propagations),
                        routes=effective_routes(mesh, hub, t),
                    )
                    for t in route_tables(mesh, hub)
                ),
            )
        )
    return tuple(out)


def vpn_plans(mesh: Mesh) -> tuple[VpnConnectionPlan, ...]:
    hubs = {h.name: h for h in mesh.spec.hubs}
    out = []
    for conn in sorted(mesh.spec.vpn_connections, key=lambda c: c.name):
        hub = hubs[conn.hub]
        table = next((t for t in route_tables(mesh, hub) if conn.name in t.associations), None)
        towards = () if table is None else effective_routes(mesh, hub, table)
        tunnels = []
        for i, t in enumerate(conn.tunnels, start=1):
            hosts = list(t.inside_cidr.hosts())
            tunnels.append(
                VpnTunnelPlan(
                    index=i,
                    inside_cidr=t.inside_cidr,
                    hub_address=hosts[0],
                    customer_address=hosts[1],
                    ike_version=t.ike_version,
                    phase1=_proposal(t.phase1),
                    phase2=_proposal(t.phase2),
                    psk=f"file:{t.pre_shared_key_file}" if t.pre_shared_key_file else f"state:{psk_name(conn.name, i)}",
                    mtu=tunnel_mtu(t.phase2),
                    standby=i > 1,
                )
            )
        out.append(
            VpnConnectionPlan(
                name=conn.name,
                hub=conn.hub,
                site=conn.site,
                customer_asn=conn.customer_gateway.asn,
                customer_address=conn.customer_gateway.public_address,
                routing=conn.routing.value,
                tunnels=tuple(tunnels),
                customer_prefixes=customer_prefixes(mesh, conn),
                hub_prefixes=tuple(r.destination for r in towards if r.attachment != conn.name),
            )
        )
    return tuple(out)


def overlay_sites(mesh: Mesh) -> list[frozenset[str]]:
    """The sites each VXLAN overlay spans: every Cilium cluster together (Cluster Mesh), each other
    cluster alone (plan/datapath.py)."""
    cilium = frozenset(n.site for c in mesh.spec.clusters if c.cni.value == "cilium" for n in c.nodes)
    others = [frozenset(n.site for n in c.nodes) for c in mesh.spec.clusters if c.cni.value != "cilium"]
    return [s for s in (cilium, *others) if s]


def ipsec_mtu(mesh: Mesh, sites: tuple[str, str], link: Link) -> Mtu:
    """min(both sites' MTUs, every crossed connection's tunnels)."""
    mtu = {s.name: s.mtu for s in mesh.spec.sites}
    conns = {c.name: c for c in mesh.spec.vpn_connections}
    terms = [(mtu[s], f"{mtu[s]} {s}") for s in sites]
    for name in link.connections:
        m = connection_mtu(conns[name])
        terms.append((m.value, f"{m.value} IPsec {name} ({m.arithmetic})"))
    low = min(v for v, _ in terms)
    return Mtu(low, f"min({', '.join(t for _, t in terms)}) = {low}")


def site_pairs(mesh: Mesh, found: Mapping[tuple[str, str], Link]) -> tuple[SitePairPlan, ...]:
    """Every pair of sites in name order, its transport, path and MTU budget."""
    mtu = {s.name: s.mtu for s in mesh.spec.sites}
    overlays = overlay_sites(mesh)
    conns = {c.name: c for c in mesh.spec.vpn_connections}
    hubs = {h.name: h for h in mesh.spec.hubs}
    gateways = mesh.spec.wireguard.topology.value == "gateways"
    out = []
    for a, b in combinations(sorted(mtu), 2):
        link = found.get((a, b))
        if link is None:
            low = min(mtu[a], mtu[b])
            m = Mtu(
                low - WIREGUARD_OVERHEAD,
                f"min({mtu[a]} {a}, {mtu[b]} {b}) − {WIREGUARD_OVERHEAD} WireGuard = {low - WIREGUARD_OVERHEAD}",
            )
            carrier = "the sites' gateways" if gateways else "node to node"
            entry = SitePairPlan((a, b), Transport.WIREGUARD, None, (), f"WireGuard, {carrier}", m, None)
        else:
            m = ipsec_mtu(mesh, (a, b), link)
            entry = SitePairPlan(
                (a, b), Transport.IPSEC, link.hub, link.connections, _path(a, b, link, hubs, conns), m, None
            )
        if any(a in s and b in s for s in overlays):
            low = entry.mtu.value - VXLAN_OVERHEAD
            pod = Mtu(low, f"{entry.mtu.value} path − {VXLAN_OVERHEAD} VXLAN = {low}")
            entry = SitePairPlan(entry.sites, entry.transport, entry.hub, entry.connections, entry.path, m, pod)
        out.append(entry)
    return tuple(out)


def _path(a: str, b: str, link: Link, hubs: Mapping[str, Hub], conns: Mapping[str, VpnConnection]) -> str:
    hub = hubs[link.hub]

    def leg(site: str) -> str:
        if site == hub.site:
            return f"{site} VPC attachment"
        conn = next(conns[c] for c in link.connections if conns[c].site == site)
        cgw = conn.customer_gateway.public_address
        return f"{site} customer gateway {cgw} ⇄ IPsec {conn.name} (tunnel 1, standby 2)"

    return f"{leg(a)} → {hub.name} (transit gateway, ASN {hub.amazon_side_asn}) → {leg(b)}"


def underlay_limit(mesh: Mesh, pairs: Sequence[SitePairPlan], site: str, domain_sites: Iterable[str]) -> Mtu | None:
    """The smallest IPsec path from `site` to a site its VXLAN overlay reaches, or None."""
    reach = set(domain_sites)
    ipsec = [
        p.mtu for p in pairs if p.transport is Transport.IPSEC and site in p.sites and (set(p.sites) - {site}) <= reach
    ]
    return min(ipsec, key=lambda m: m.value, default=None)
