"""The rules of SPEC §1 that a schema cannot express: uniqueness, overlaps, reachability.

Each rule is a small function returning problems; `check` runs them all so that
every problem is reported at once. Overlap checks sort networks by start address
and compare neighbours' spans, so a 1,000-node mesh is checked in O(n log n).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from itertools import islice

from crossmesh.errors import Problem
from crossmesh.kv import identities
from crossmesh.load.yamlpos import Document, PathKey, dotted
from crossmesh.model.mesh import Distribution, Mesh, Site, Topology
from crossmesh.plan import hubs as hub_rule
from crossmesh.plan import peers as peer_rule
from crossmesh.validate import vpn
from crossmesh.validate.common import dupes

MAX_PAIR_REPORTS = 20


@dataclass(frozen=True, slots=True)
class Claim:
    """A network range someone declared, for overlap checks."""

    net: IPv4Network
    owner: str  # human words: "cluster aws pod CIDR"
    path: PathKey


def check(mesh: Mesh, doc: Document) -> list[Problem]:
    problems: list[Problem] = []
    for rule in (
        _unique_names,
        _reserved_names,
        _sites_exist,
        _addresses,
        _cidrs,
        _reachability,
        _datapath,
        _managed_pod_cidrs,
        _talos_routes,
        _preferred,
        vpn.check,
    ):
        problems.extend(rule(mesh, doc))
    return problems


def _unique_names(mesh: Mesh, doc: Document) -> list[Problem]:
    spec = mesh.spec
    out = dupes(
        doc,
        ((s.name, ("spec", "sites", i, "name")) for i, s in enumerate(spec.sites)),
        "site name",
        "give each site its own name",
    )
    out += dupes(
        doc,
        ((c.name, ("spec", "clusters", i, "name")) for i, c in enumerate(spec.clusters)),
        "cluster name",
        "give each cluster its own name",
    )
    out += dupes(
        doc,
        ((c.id, ("spec", "clusters", i, "id")) for i, c in enumerate(spec.clusters) if c.id is not None),
        "cluster id",
        "choose another id in 1..511 or omit it to allocate one",
    )
    out += dupes(
        doc,
        (
            (n.name, ("spec", "clusters", ci, "nodes", ni, "name"))
            for ci, c in enumerate(spec.clusters)
            for ni, n in enumerate(c.nodes)
        ),
        "node name",
        "node names must be unique across the mesh",
    )
    return out


def _reserved_names(mesh: Mesh, doc: Document) -> list[Problem]:
    """etcd takes a node's agent certificate (CN = the node) as the user of that name: a node named
    `root` would administer the control plane's etcd."""
    return [
        doc.problem(
            ("spec", "clusters", ci, "nodes", ni, "name"),
            f"node name {n.name} is reserved: etcd would take this node's agent for the user {n.name} — "
            f"rename the node ({', '.join(identities.RESERVED)} are reserved)",
        )
        for ci, c in enumerate(mesh.spec.clusters)
        for ni, n in enumerate(c.nodes)
        if n.name in identities.RESERVED
    ]


def _sites_exist(mesh: Mesh, doc: Document) -> list[Problem]:
    names = {s.name for s in mesh.spec.sites}
    out = []
    for ci, c in enumerate(mesh.spec.clusters):
        for ni, n in enumerate(c.nodes):
            if n.site not in names:
                out.append(
                    doc.problem(
                        ("spec", "clusters", ci, "nodes", ni, "site"),
                        f"site {n.site!r} is not declared — use one of: {', '.join(sorted(names))}",
                    )
                )
    return out


def _addresses(mesh: Mesh, doc: Document) -> list[Problem]:
    sites: dict[str, Site] = {}
    for s in mesh.spec.sites:
        sites.setdefault(s.name, s)  # a duplicate name is reported once, by _unique_names; the first one counts
    out = []
    per_site: list[tuple[object, PathKey]] = []
    public: list[tuple[object, PathKey]] = []
    for ci, c in enumerate(mesh.spec.clusters):
        for ni, n in enumerate(c.nodes):
            base = ("spec", "clusters", ci, "nodes", ni)
            site = sites.get(n.site)
            per_site.append((f"{n.address} in site {n.site}", (*base, "address")))
            if n.public_address is not None:
                public.append((str(n.public_address), (*base, "publicAddress")))
                why = _public_address_problem(n.public_address, sites.values())
                if why is not None:
                    out.append(
                        doc.problem(
                            (*base, "publicAddress"),
                            f"{why} — use the address the node is dialled at from the other sites, "
                            "or leave publicAddress out (behind NAT)",
                        )
                    )
            if site is None:
                continue
            if n.address not in site.network:
                out.append(
                    doc.problem(
                        (*base, "address"),
                        f"{n.address} is outside site {site.name}'s network {site.network} — "
                        f"use an address in {site.network}",
                    )
                )
            elif n.address in (site.network.network_address, site.network.broadcast_address):
                out.append(
                    doc.problem(
                        (*base, "address"),
                        f"{n.address} is the network or broadcast address of {site.network} — use a host address",
                    )
                )
    out += dupes(doc, per_site, "node address", "each node in a site needs its own address")
    out += dupes(doc, public, "public address", "each node needs its own public address")
    for i, conn in enumerate(mesh.spec.vpn_connections):
        why = _public_address_problem(conn.customer_gateway.public_address, sites.values())
        if why is not None:
            out.append(
                doc.problem(
                    ("spec", "vpnConnections", i, "customerGateway", "publicAddress"),
                    f"{why} — use the customer gateway's static outside address, the one AWS's endpoints dial",
                )
            )
    return out


# Addresses no other site can dial. Private ranges are not refused as such (a mesh over a private
# WAN dials them), only when they lie inside a site network, nor are the documentation and
# benchmarking ranges that examples and tests use.
_UNUSABLE_PUBLIC = (
    (IPv4Network("0.0.0.0/8"), 'an unspecified ("this network") address'),
    (IPv4Network("127.0.0.0/8"), "a loopback address"),
    (IPv4Network("169.254.0.0/16"), "a link-local address"),
    (IPv4Network("224.0.0.0/4"), "a multicast address"),
    (IPv4Network("240.0.0.0/4"), "a reserved address (or the broadcast address)"),
)


def _public_address_problem(address: IPv4Address, sites: Iterable[Site]) -> str | None:
    for net, what in _UNUSABLE_PUBLIC:
        if address in net:
            return f"{address} is {what}: no other site can reach it"
    for site in sites:
        if address in site.network:
            return f"{address} is inside site {site.name}'s network {site.network}: that is a private side"
    return None


def _claims(mesh: Mesh) -> list[Claim]:
    claims = [
        Claim(s.network, f"site {s.name} network", ("spec", "sites", i, "network"))
        for i, s in enumerate(mesh.spec.sites)
    ]
    for ci, c in enumerate(mesh.spec.clusters):
        if c.pod_cidr is not None:
            claims.append(Claim(c.pod_cidr, f"cluster {c.name} pod CIDR", ("spec", "clusters", ci, "podCIDR")))
    claims.append(Claim(mesh.spec.ipam.tunnel_pool, "the tunnel address pool", ("spec", "ipam", "tunnelPool")))
    return claims


def _overlaps(claims: list[Claim]) -> list[tuple[Claim, Claim]]:
    ordered = sorted(claims, key=lambda c: (int(c.net.network_address), -c.net.prefixlen))
    pairs: list[tuple[Claim, Claim]] = []
    open_claims: list[Claim] = []
    for claim in ordered:
        start = int(claim.net.network_address)
        open_claims = [o for o in open_claims if int(o.net.broadcast_address) >= start]
        pairs.extend((o, claim) for o in open_claims)
        open_claims.append(claim)
    return pairs


def _cidrs(mesh: Mesh, doc: Document) -> list[Problem]:
    out = []
    for first, second in _overlaps(_claims(mesh)):
        out.append(
            doc.problem(
                second.path,
                f"{second.net} ({second.owner}) overlaps {first.owner} ({first.net}) — "
                "choose another range" + (" or omit it to allocate one" if "pod CIDR" in second.owner else ""),
            )
        )
    # pod CIDRs must not collide with any cluster's service CIDR: ClusterIPs are routed locally.
    for ci, c in enumerate(mesh.spec.clusters):
        if c.pod_cidr is None:
            continue
        for other in mesh.spec.clusters:
            if c.pod_cidr.overlaps(other.service_cidr):
                out.append(
                    doc.problem(
                        ("spec", "clusters", ci, "podCIDR"),
                        f"{c.pod_cidr} (cluster {c.name} pod CIDR) overlaps cluster {other.name}'s "
                        f"service CIDR {other.service_cidr} — choose another range",
                    )
                )
    for ci, c in enumerate(mesh.spec.clusters):
        for site in mesh.spec.sites:
            if c.service_cidr.overlaps(site.network):
                out.append(
                    doc.problem(
                        ("spec", "clusters", ci, "serviceCIDR"),
                        f"{c.service_cidr} (cluster {c.name} service CIDR) overlaps site {site.name}'s "
                        f"network {site.network} — choose another range",
                    )
                )
        node_claims: list[Claim] = []
        for ni, n in enumerate(c.nodes):
            if n.pod_cidr is None:
                continue
            path = ("spec", "clusters", ci, "nodes", ni, "podCIDR")
            node_claims.append(Claim(n.pod_cidr, f"node {n.name} pod CIDR", path))
            if c.pod_cidr is None:
                out.append(
                    doc.problem(
                        path,
                        f"node pod CIDR {n.pod_cidr} is set but cluster {c.name} has no podCIDR — "
                        "set the cluster's podCIDR too, or omit the node's",
                    )
                )
            elif not n.pod_cidr.subnet_of(c.pod_cidr):
                out.append(
                    doc.problem(
                        path,
                        f"{n.pod_cidr} is outside cluster {c.name}'s pod CIDR {c.pod_cidr} — "
                        f"use a /{mesh.spec.ipam.node_prefix} inside it or omit it",
                    )
                )
        for first, second in _overlaps(node_claims):
            out.append(
                doc.problem(
                    second.path,
                    f"{second.net} ({second.owner}) overlaps {first.owner} ({first.net}) — "
                    "choose another range or omit it to allocate one",
                )
            )
    return out


def _reachability(mesh: Mesh, doc: Document) -> list[Problem]:
    """A tunnel is dialled by whichever end has a public address; with none on either end it never comes up."""
    nodes_by_site: dict[str, list[tuple[str, bool, PathKey]]] = defaultdict(list)
    gateways: dict[str, list[tuple[str, bool, PathKey]]] = defaultdict(list)
    for ci, c in enumerate(mesh.spec.clusters):
        for ni, n in enumerate(c.nodes):
            entry = (n.name, n.public_address is not None, ("spec", "clusters", ci, "nodes", ni))
            nodes_by_site[n.site].append(entry)
            if n.gateway:
                gateways[n.site].append(entry)
    out: list[Problem] = []
    sites = sorted(nodes_by_site)
    # Site pairs a hub carries over IPsec are no WireGuard pairs: no tunnel to dial between them.
    apart = _apart(mesh)
    if mesh.spec.wireguard.topology is Topology.GATEWAYS:
        for site in sites:
            if apart and all(frozenset((site, other)) in apart for other in sites if other != site):
                continue  # every other site is reached through a hub: no WireGuard gateway needed
            if not gateways[site]:
                first = nodes_by_site[site][0]
                out.append(
                    doc.problem(
                        first[2],
                        f"site {site} has no gateway node but topology is gateways — "
                        "set gateway: true on one node of the site (two give active/standby)",
                    )
                )
        by_name = {e[0]: e for site in sites for e in gateways[site]}
        tunnel_ends = {s: [by_name[gws[0]]] for s, gws in peer_rule.gateway_order(_members(mesh)).items()}
        advice = "give one of them a publicAddress"
    else:
        tunnel_ends = {s: nodes_by_site[s] for s in sites}
        advice = "give one of them a publicAddress, or use topology: gateways with a public gateway per site"
    natted = {s: [e for e in ends if not e[1]] for s, ends in tunnel_ends.items()}
    # Pairs of NATed ends in different sites: counted, not enumerated (10,000 NATed nodes make 50 million).
    counts = [len(natted.get(s, [])) for s in sites]
    pairs = (sum(counts) ** 2 - sum(c * c for c in counts)) // 2
    if apart:  # pairs the hubs carry are not counted
        pairs -= sum(len(natted.get(a, [])) * len(natted.get(b, [])) for a, b in (tuple(p) for p in apart))
    shown = list(
        islice(
            (
                (a, na, b, nb)
                for i, a in enumerate(sites)
                for b in sites[i + 1 :]
                if frozenset((a, b)) not in apart
                for na in natted.get(a, [])
                for nb in natted.get(b, [])
            ),
            MAX_PAIR_REPORTS,
        )
    )
    for a, na, b, nb in shown:
        out.append(
            doc.problem(
                nb[2],
                f"nodes {na[0]} (site {a}) and {nb[0]} (site {b}) both lack a publicAddress: "
                f"the tunnel between them can never be dialled — {advice}",
                label=f"{dotted(nb[2])}.publicAddress",
            )
        )
    hidden = pairs - len(shown)
    if hidden:
        out.append(
            doc.problem(
                ("spec", "wireguard", "topology"), f"{hidden} more node pairs cannot dial each other (both behind NAT)"
            )
        )
    return out


def _apart(mesh: Mesh) -> frozenset[frozenset[str]]:
    """The site pairs a hub carries (no WireGuard pair). A connection naming a hub that does not exist
    is reported once (validate/vpn.py): its site counts as joined to every site, so that the mistake
    is not reported again as tunnels that cannot be dialled."""
    if not mesh.spec.vpn_connections:
        return frozenset()
    hubs = {h.name for h in mesh.spec.hubs}
    sites = {s.name for s in mesh.spec.sites}
    lost = {frozenset((c.site, s)) for c in mesh.spec.vpn_connections if c.hub not in hubs for s in sites}
    return hub_rule.apart(mesh) | frozenset(p for p in lost if len(p) == 2)


def _datapath(mesh: Mesh, doc: Document) -> list[Problem]:
    """Flannel's (and Calico's) VXLAN device is bound to one interface (flannel-iface): its packets to a
    node of another site would leave by that interface's default route, not through wg-crossmesh
    (flannel-io/flannel#895, #2141), so such a cluster cannot span sites. Cilium's VXLAN device is
    routed by the kernel's table and can (README, "Datapath"). A cluster whose sites a hub joins
    pairwise is the exception: the sites' routers carry the VXLAN over IPsec, as in seed 001."""
    apart = _apart(mesh)
    out = []
    for i, c in enumerate(mesh.spec.clusters):
        sites = sorted({n.site for n in c.nodes})
        joined = all(frozenset((a, b)) in apart for k, a in enumerate(sites) for b in sites[k + 1 :])
        if c.cni.value != "cilium" and len(sites) > 1 and not joined:
            out.append(
                doc.problem(
                    ("spec", "clusters", i, "cni"),
                    f"cluster {c.name} uses {c.cni.value} across sites {', '.join(sites)}: {c.cni.value}'s VXLAN is "
                    "bound to one interface and cannot reach nodes through wg-crossmesh — use cni: cilium, or "
                    "keep the cluster's nodes in one site",
                )
            )
    return out


MANAGED = (Distribution.EKS, Distribution.AKS, Distribution.GKE)


def _managed_pod_cidrs(mesh: Mesh, doc: Document) -> list[Problem]:
    """A stated node podCIDR is pinned by turning kube-controller-manager's allocator off, which a
    managed control plane does not let anyone do."""
    out = []
    for ci, c in enumerate(mesh.spec.clusters):
        if c.distribution not in MANAGED:
            continue
        for ni, n in enumerate(c.nodes):
            if n.pod_cidr is not None:
                out.append(
                    doc.problem(
                        ("spec", "clusters", ci, "nodes", ni, "podCIDR"),
                        f"node {n.name} states podCIDR {n.pod_cidr} but cluster {c.name} runs on {c.distribution}: "
                        "its managed control plane allocates node pod CIDRs and its kube-controller-manager "
                        "cannot be told not to (allocate-node-cidrs=false) — remove the node's podCIDR",
                    )
                )
    return out


def _members(mesh: Mesh) -> list[peer_rule.Member]:
    """The mesh's nodes as the one gateway rule (plan/peers.py) sees them."""
    return [
        peer_rule.Member(n.name, n.site, n.public_address is None, n.gateway, n.preferred)
        for c in mesh.spec.clusters
        for n in c.nodes
    ]


def _preferred(mesh: Mesh, doc: Document) -> list[Problem]:
    """`preferred` picks a site's preferred gateway under topology gateways: one per site, a gateway."""
    gateways = mesh.spec.wireguard.topology is Topology.GATEWAYS
    first: dict[str, tuple[str, PathKey]] = {}
    out = []
    for ci, c in enumerate(mesh.spec.clusters):
        for ni, n in enumerate(c.nodes):
            if not n.preferred:
                continue
            path: PathKey = ("spec", "clusters", ci, "nodes", ni, "preferred")
            if not gateways:
                why = "preferred is read only under topology: gateways — remove it, or set spec.wireguard.topology"
                out.append(doc.problem(path, f"node {n.name}: {why}"))
            elif not n.gateway:
                why = "preferred applies to gateways — set gateway: true on it, or remove preferred"
                out.append(doc.problem(path, f"node {n.name}: {why}"))
            elif n.site in first:
                other, where = first[n.site]
                line = doc.where(where)[0]
                out.append(
                    doc.problem(
                        path,
                        f"site {n.site} has two preferred gateways, {other} (line {line}) and {n.name} — "
                        "keep preferred: true on one of them",
                    )
                )
            else:
                first[n.site] = (n.name, path)
    return out


def _talos_routes(mesh: Mesh, doc: Document) -> list[Problem]:
    """Under topology gateways every node but its site's active gateway routes the other sites via that
    gateway. A Talos 1.13 machine config attaches a route only to a link it names (LinkConfig; a
    LinkAliasConfig selects by hardware, not address), and crossmesh knows no interface names."""
    if mesh.spec.wireguard.topology is not Topology.GATEWAYS:
        return []
    by_site: dict[str, list[tuple[str, bool, bool]]] = defaultdict(list)
    for c in mesh.spec.clusters:
        for n in c.nodes:
            by_site[n.site].append((n.name, n.gateway, n.public_address is not None))
    if len(by_site) < 2:
        return []  # no other site to route to
    active = peer_rule.preferred(peer_rule.gateway_order(_members(mesh)))
    out = []
    for ci, c in enumerate(mesh.spec.clusters):
        if c.distribution is not Distribution.TALOS:
            continue
        for ni, n in enumerate(c.nodes):
            gateway = active.get(n.site)
            if gateway is None or gateway == n.name:
                continue  # a site without a gateway is reported by _reachability
            out.append(
                doc.problem(
                    ("spec", "clusters", ci, "nodes", ni),
                    f"Talos node {n.name} must route the other sites via its site's active gateway {gateway} "
                    "(topology gateways), and a Talos machine config can attach a route only to an interface "
                    "it names, which crossmesh does not know — use topology: full-mesh, or distribution "
                    f"k3s or kubeadm for cluster {c.name} (their nodes get routes.sh)",
                )
            )
    return out
