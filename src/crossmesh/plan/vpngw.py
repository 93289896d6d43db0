"""Both ends of the plan's VPN connections as daemon specifications: one derivation, so that the
customer gateway `render` writes is the one the lab runs, and the lab's stand-in for AWS's endpoints
holds the same tunnels and prefixes from the other side.

- The **customer gateway** of a site (seed 001: the OpenStack router r1) runs one charon per tunnel of
  every connection from its site, and one BIRD. Tunnel k of the gateway (connections by name, tunnels
  in order) is charon k and TUN device `ipsec<k>` (render/ipsec.py), so a site with one connection has
  seed 001's `ipsec0` (tunnel 1) and `ipsec1` (tunnel 2).
- The **hub** end (AWS's tunnel endpoints inside the transit gateway) likewise for every connection into
  the hub. AWS runs it in a real cloud; only the lab's transit-gateway namespace uses this end.

Active/standby as AWS advises ("Making a Site-to-Site VPN connection highly available"; re:Post
"vpn-configure-tunnel-preference"): the customer prepends its AS twice on what it announces over the
standby tunnel (the transit gateway prefers the shortest AS path) and gives routes learned over tunnel 1
local preference 200 (its own choice outwards). The hub sets the same MED on both tunnels, as AWS does
outside endpoint updates.

Liveness. AWS does no BFD on Site-to-Site VPN tunnels (BFD is a Direct Connect feature), so neither end
runs it: a dead tunnel is noticed by BGP's hold timer. The customer gateway asks for BIRD's smallest,
3 s with keepalives every second; BGP uses the smaller hold time of the two OPEN messages (RFC 4271
§4.2), so the session on either end times out 3 s after the last keepalive. Static connections have
no BGP: their routes point at tunnel 1's device, and move only when someone moves them.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from crossmesh.model.plan import HubPlan, HubRoutePlan, Plan, Proposal, VpnConnectionPlan, VpnTunnelPlan
from crossmesh.render import bgp, ipsec

CUSTOMER, HUB = "customer", "hub"
STANDBY_PREPEND = 2
ACTIVE_LOCAL_PREF, STANDBY_LOCAL_PREF = 200, 100
HUB_MED = 100
MAIN_TABLE = 254
HUB_TABLE_BASE = 100  # the lab's kernel table of a transit gateway's route table i: 100 + i

# AWS's names (EC2 VpnTunnelOptionsSpecification) → strongSwan's proposal keywords.
_ENCRYPTION = {"AES128": "aes128", "AES256": "aes256", "AES128-GCM-16": "aes128gcm16", "AES256-GCM-16": "aes256gcm16"}
_INTEGRITY = {"SHA1": "sha1", "SHA2-256": "sha256", "SHA2-384": "sha384", "SHA2-512": "sha512"}
_DH = {
    2: "modp1024",
    5: "modp1536",
    14: "modp2048",
    15: "modp3072",
    16: "modp4096",
    17: "modp6144",
    18: "modp8192",
    19: "ecp256",
    20: "ecp384",
    21: "ecp521",
    22: "modp1024s160",
    23: "modp2048s224",
    24: "modp2048s256",
}

TunnelKey = tuple[str, int]  # (connection, tunnel index 1 | 2)


@dataclass(frozen=True, slots=True)
class StaticRoute:
    destination: IPv4Network
    device: str  # the TUN device of the connection's tunnel 1


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """The daemons of one end: charon k carries `tunnels[k]` on `ipsec<k>`; `router` is None when no
    connection of this end uses BGP."""

    side: str  # customer | hub
    name: str  # the customer site, or the hub
    tunnels: tuple[ipsec.TunnelSpec, ...]
    keys: tuple[TunnelKey, ...]  # tunnels[k] is tunnel keys[k][1] of connection keys[k][0]
    router: bgp.BgpRouterSpec | None
    static_routes: tuple[StaticRoute, ...]

    def device(self, connection: str, index: int) -> str:
        return f"ipsec{self.keys.index((connection, index))}"


def ike_proposals(p: Proposal) -> tuple[str, ...]:
    """Phase 1 as strongSwan proposals: one for the AEAD ciphers (with a PRF of each integrity
    algorithm), one for the others (their integrity algorithms double as PRFs); AEAD and classic
    ciphers cannot share a proposal."""
    dh = [_DH[g] for g in p.dh_groups]
    gcm = [_ENCRYPTION[e] for e in p.encryption if "GCM" in e]
    cbc = [_ENCRYPTION[e] for e in p.encryption if "GCM" not in e]
    integ = [_INTEGRITY[i] for i in p.integrity]
    out = []
    if gcm:
        out.append("-".join([*gcm, *(f"prf{i}" for i in integ), *dh]))
    if cbc:
        out.append("-".join([*cbc, *integ, *dh]))
    return tuple(out)


def esp_proposals(p: Proposal) -> tuple[str, ...]:
    """Phase 2 as strongSwan proposals, the DH groups for PFS; an AEAD cipher takes no integrity."""
    dh = [_DH[g] for g in p.dh_groups]
    gcm = [_ENCRYPTION[e] for e in p.encryption if "GCM" in e]
    cbc = [_ENCRYPTION[e] for e in p.encryption if "GCM" not in e]
    out = []
    if gcm:
        out.append("-".join([*gcm, *dh]))
    if cbc:
        out.append("-".join([*cbc, *(_INTEGRITY[i] for i in p.integrity), *dh]))
    return tuple(out)


def _word(text: str, limit: int, allowed: str) -> str:
    """`text` with every character outside `allowed` made `_`, starting with a letter, cut to `limit`
    with a digest of the whole when too long (two long names stay apart)."""
    word = re.sub(f"[^{allowed}]", "_", text)
    if not word[:1].isalpha():
        word = f"c{word}"
    if len(word) > limit:
        word = f"{word[: limit - 5]}_{zlib.crc32(text.encode()) & 0xFFFF:04x}"
    return word


def tunnel_name(connection: str, index: int) -> str:
    """swanctl's connection and child name of a tunnel (letters, digits, - and _; 32 at most)."""
    return _word(f"{connection}-{index}", 32, "A-Za-z0-9_-")


def session_name(connection: str, index: int) -> str:
    """BIRD's protocol name of a tunnel's BGP session (letters, digits and _; 32 at most)."""
    return _word(f"{connection}_{index}", 32, "A-Za-z0-9_")


def _tunnel(
    side: str,
    conn: VpnConnectionPlan,
    t: VpnTunnelPlan,
    outside: IPv4Address,
    psk: str,
) -> ipsec.TunnelSpec:
    customer = side == CUSTOMER
    return ipsec.TunnelSpec(
        name=tunnel_name(conn.name, t.index),
        local_outside=conn.customer_address if customer else outside,
        remote_outside=outside if customer else conn.customer_address,
        inside_local=IPv4Interface(f"{t.customer_address if customer else t.hub_address}/{t.inside_cidr.prefixlen}"),
        inside_remote=t.hub_address if customer else t.customer_address,
        psk=psk,
        initiator=customer,
        ike_proposals=ike_proposals(t.phase1),
        esp_proposals=esp_proposals(t.phase2),
        ike_lifetime_s=t.phase1.lifetime_seconds,
        child_lifetime_s=t.phase2.lifetime_seconds,
    )


def _peer(side: str, conn: VpnConnectionPlan, t: VpnTunnelPlan, device: str, hub_asn: int) -> bgp.BgpPeerSpec:
    customer = side == CUSTOMER
    return bgp.BgpPeerSpec(
        name=session_name(conn.name, t.index),
        local_address=t.customer_address if customer else t.hub_address,
        neighbor_address=t.hub_address if customer else t.customer_address,
        neighbor_as=hub_asn if customer else conn.customer_asn,
        interface=device,
        import_prefixes=conn.hub_prefixes if customer else conn.customer_prefixes,
        export_prefixes=conn.customer_prefixes if customer else conn.hub_prefixes,
        local_pref=(STANDBY_LOCAL_PREF if t.standby else ACTIVE_LOCAL_PREF) if customer else 100,
        prepend=STANDBY_PREPEND if customer and t.standby else 0,
        med=None if customer else HUB_MED,
        # A site's connections may come from customer gateways with different ASNs: each session its own.
        local_as=conn.customer_asn if customer else None,
    )


def _gateway(
    plan: Plan,
    side: str,
    name: str,
    conns: Sequence[VpnConnectionPlan],
    outside: Mapping[TunnelKey, IPv4Address],
    psks: Mapping[TunnelKey, str],
) -> GatewaySpec:
    asns = {h.name: h.amazon_asn for h in plan.hubs}
    tunnels: list[ipsec.TunnelSpec] = []
    keys: list[TunnelKey] = []
    peers: list[bgp.BgpPeerSpec] = []
    static: list[StaticRoute] = []
    originate: list[IPv4Network] = []
    for conn in conns:
        for t in conn.tunnels:
            device = f"ipsec{len(tunnels)}"
            key = (conn.name, t.index)
            tunnels.append(_tunnel(side, conn, t, outside[key], psks[key]))
            keys.append(key)
            if conn.routing == "bgp":
                peers.append(_peer(side, conn, t, device, asns[conn.hub]))
            elif t.index == 1:
                towards = conn.hub_prefixes if side == CUSTOMER else conn.customer_prefixes
                static.extend(StaticRoute(p, device) for p in towards)
        if conn.routing == "bgp":
            originate.extend(conn.customer_prefixes if side == CUSTOMER else conn.hub_prefixes)
    router = None
    if peers:
        first = tunnels[0]
        router = bgp.BgpRouterSpec(
            router_id=first.local_outside,
            local_as=conns[0].customer_asn if side == CUSTOMER else asns[conns[0].hub],
            originate=tuple(sorted(set(originate))),
            peers=tuple(peers),
            kernel_tables=() if side == CUSTOMER else (*_kernel_tables(plan, name, conns), _own_table(peers)),
        )
    return GatewaySpec(side, name, tuple(tunnels), tuple(keys), router, tuple(static))


@dataclass(frozen=True, slots=True)
class HubTable:
    """One route table of a transit gateway as the lab's kernel table `table`: looked up for packets
    that arrive from its associated attachments, filled with its static and propagated routes."""

    name: str
    table: int
    associations: tuple[str, ...]
    routes: tuple[HubRoutePlan, ...]
    propagations: tuple[str, ...]


def hub_tables(hub: HubPlan) -> tuple[HubTable, ...]:
    return tuple(
        HubTable(t.name, HUB_TABLE_BASE + i, t.associations, t.routes, t.propagations)
        for i, t in enumerate(hub.route_tables)
    )


def _kernel_tables(plan: Plan, hub: str, conns: Sequence[VpnConnectionPlan]) -> tuple[bgp.KernelTable, ...]:
    """Each route table receives the BGP routes of the connections it propagates."""
    found = next(h for h in plan.hubs if h.name == hub)
    return tuple(
        bgp.KernelTable(
            t.table,
            tuple(
                session_name(c.name, tun.index)
                for c in conns
                if c.routing == "bgp" and c.name in t.propagations
                for tun in c.tunnels
            ),
        )
        for t in hub_tables(found)
    )


def _own_table(peers: Sequence[bgp.BgpPeerSpec]) -> bgp.KernelTable:
    """The hub's main table, for what it sends itself (ICMP errors such as fragmentation needed): every
    learned route, so that an error about a customer's packet goes back into the tunnel."""
    return bgp.KernelTable(MAIN_TABLE, tuple(p.name for p in peers))


def vpc_routes(hub: HubPlan) -> tuple[IPv4Network, ...]:
    """What the hub site's VPC route table sends to the transit gateway: every destination of the route
    table associated with the VPC attachment that leads to another attachment (seed 001: 10.0.1.0/24 →
    Transit Gateway). Terraform writes them as `aws_route`s; the lab's VPC router holds them."""
    table = next((t for t in hub.route_tables if hub.site in t.associations), None)
    if table is None:
        return ()
    return tuple(r.destination for r in table.routes if r.attachment != hub.site)


def customer_gateways(
    plan: Plan, outside: Mapping[TunnelKey, IPv4Address], psks: Mapping[TunnelKey, str]
) -> dict[str, GatewaySpec]:
    """Each customer site's gateway. `outside`: AWS's outside address of every tunnel (assigned by AWS
    when the connection is made; the lab picks its own); `psks`: every tunnel's pre-shared key."""
    sites = sorted({c.site for c in plan.vpn})
    return {s: _gateway(plan, CUSTOMER, s, [c for c in plan.vpn if c.site == s], outside, psks) for s in sites}


def hub_gateways(
    plan: Plan, outside: Mapping[TunnelKey, IPv4Address], psks: Mapping[TunnelKey, str]
) -> dict[str, GatewaySpec]:
    """Each hub's tunnel endpoints (the lab's stand-in for AWS's)."""
    return {
        h.name: _gateway(plan, HUB, h.name, [c for c in plan.vpn if c.hub == h.name], outside, psks) for h in plan.hubs
    }


def tunnel_keys(plan: Plan) -> list[TunnelKey]:
    return [(c.name, t.index) for c in plan.vpn for t in c.tunnels]
