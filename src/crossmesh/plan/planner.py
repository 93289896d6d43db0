"""Mesh + allocations + public keys → `Plan`. No I/O, no clock, no randomness.

Topologies:
- full-mesh: every node peers with every node of every other site. A peer with a
  publicAddress gets it as endpoint; a NATed peer gets none and dials out itself,
  with persistent keepalive so that its NAT mapping stays open.
- gateways: per site, the gateway nodes peer with the gateways of the other sites.
  With two gateways in a site the first (public address first, then name) is
  *active* and carries the site's prefixes; the others are *standby*: they keep a
  handshake with every remote gateway (allowed IPs = their tunnel address only)
  so that failover — moving the prefixes, done by the control plane — does not
  wait for a handshake. WireGuard cannot give one prefix to two peers of a
  device, which is why this is active/standby and not ECMP.

Pods travel in the CNI's VXLAN (UDP 8472) between node addresses, in a site and
across sites alike: WireGuard carries node addresses, never pod CIDRs (one
datapath model, README "Datapath"; plan/datapath.py states it per cluster).

Site pairs a hub carries (plan/hubs.py: a VPN connection into a transit gateway) are no WireGuard
pairs in either topology: their nodes do not peer and route nothing to each other, the sites' routers
carry them over IPsec, and the cluster's underlay shrinks to that path's MTU where its VXLAN crosses it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network

from crossmesh.ipam.allocate import Allocations
from crossmesh.model import k8s
from crossmesh.model.mesh import Mesh, Node, Topology
from crossmesh.model.plan import (
    TUNNEL_INTERFACE,
    VXLAN_OVERHEAD,
    VXLAN_PORT,
    VXLAN_VNI,
    WIREGUARD_OVERHEAD,
    ClusterPlan,
    HealthPlan,
    IstioPlan,
    Mtu,
    NodePlan,
    Peer,
    Plan,
    Route,
    RouteVia,
    SitePlan,
    Tunnel,
    Vxlan,
    VxlanNeighbour,
)
from crossmesh.plan import datapath, hubs, ingress, workloads
from crossmesh.plan import peers as peer_rule

# A node before its tunnel and VXLAN are made: (node, cluster, peers, routes of the topology).
Draft = tuple[Node, str, tuple[Peer, ...], tuple[Route, ...]]


def vtep_mac(address: IPv4Address) -> str:
    """A stable, locally administered MAC for a node's VXLAN device."""
    b = address.packed
    return f"0e:{b[0]:02x}:{b[1]:02x}:{b[2]:02x}:{b[3]:02x}:01"


def _host(addr: IPv4Address) -> IPv4Network:
    return IPv4Network((addr, 32))


class _Planner:
    def __init__(self, mesh: Mesh, alloc: Allocations, public_keys: dict[str, str]) -> None:
        self.mesh = mesh
        # Site pairs the hubs carry over IPsec, and every pair's transport and MTU (only with hubs: a
        # mesh without any plans exactly as before).
        links = hubs.links(mesh) if mesh.spec.hubs else {}
        self.apart = frozenset(frozenset(p) for p in links)
        self.site_pairs = hubs.site_pairs(mesh, links) if mesh.spec.hubs else ()
        self.alloc = alloc
        self.keys = public_keys
        self.spec = mesh.spec
        self.port = self.spec.wireguard.listen_port
        self.keepalive = self.spec.wireguard.persistent_keepalive
        self.site_mtu = {s.name: s.mtu for s in self.spec.sites}
        self.site_net = {s.name: s.network for s in self.spec.sites}
        self.nodes: list[tuple[Node, str]] = sorted(
            ((n, c.name) for c in self.spec.clusters for n in c.nodes), key=lambda t: t[0].name
        )
        self.by_site: dict[str, list[tuple[Node, str]]] = defaultdict(list)
        for n, c in self.nodes:
            self.by_site[n.site].append((n, c))
        self._peer_cache: dict[tuple[str, bool, bool], Peer] = {}
        self._gateway_peer_cache: dict[tuple[str, bool, bool, bool], Peer] = {}
        self._route_cache: dict[tuple[IPv4Network, RouteVia, IPv4Address | None, str], Route] = {}
        self.cni = {c.name: c.cni.value for c in self.spec.clusters}
        # A Cilium cluster's VXLAN reaches every Cilium node of the mesh (Cluster Mesh); Flannel's
        # and Calico's reach their own cluster only.
        self.domain_of = {c: ("cilium" if cni == "cilium" else f"cluster/{c}") for c, cni in self.cni.items()}
        self.domains: dict[str, list[tuple[Node, str]]] = defaultdict(list)
        for n, c in self.nodes:
            self.domains[self.domain_of[c]].append((n, c))
        self._overlay_cache: dict[str, tuple[VxlanNeighbour, ...]] = {}
        self.underlays: dict[str, Mtu] = {}  # cluster → its underlay, set by node_plans

    # shared building blocks -------------------------------------------------------------
    def pod_cidr(self, node: str) -> IPv4Network:
        return self.alloc.nodes[node].pod_cidr

    def tunnel_addr(self, node: str) -> IPv4Address:
        return self.alloc.nodes[node].tunnel_address

    def route(self, dst: IPv4Network, via: RouteVia, gateway: IPv4Address | None, peer: str) -> Route:
        key = (dst, via, gateway, peer)
        r = self._route_cache.get(key)
        if r is None:
            r = self._route_cache[key] = Route(dst, via, gateway, peer)
        return r

    def peer(self, node: Node, allowed: tuple[IPv4Network, ...], *, keepalive: bool, standby: bool) -> Peer:
        key = (node.name, keepalive, standby)
        p = self._peer_cache.get(key)
        if p is None:
            p = self._peer_cache[key] = Peer(
                node=node.name,
                site=node.site,
                public_key=self.keys[node.name],
                endpoint=(node.public_address, self.port) if node.public_address is not None else None,
                allowed_ips=allowed,
                persistent_keepalive=peer_rule.keepalive(keepalive, self.keepalive),
                standby=standby,
            )
        return p

    def tunnel_mtu(self, node: Node, peers: tuple[Peer, ...]) -> Mtu:
        sites = sorted({p.site for p in peers} | {node.site})
        low = min(self.site_mtu[s] for s in sites)
        terms = ", ".join(f"{self.site_mtu[s]} {s}" for s in sites)
        head = f"min({terms})" if len(sites) > 1 else f"{low} {node.site}"
        return Mtu(low - WIREGUARD_OVERHEAD, f"{head} − {WIREGUARD_OVERHEAD} WireGuard = {low - WIREGUARD_OVERHEAD}")

    def overlay(self, node: Node, cluster: str, pod_mtu: Mtu) -> Vxlan | None:
        """The node's VXLAN device: every node of its overlay as a neighbour — every Cilium node of
        the mesh for a Cilium cluster (Cluster Mesh tunnels to the remote cluster's nodes), only its
        own cluster's nodes for Flannel and Calico. One neighbour tuple per overlay, shared by its
        nodes (each skips its own entry): a Cluster Mesh of 10,000 nodes holds 10,000 entries."""
        domain = self.domain_of[cluster]
        neighbours = self._overlay_cache.get(domain)
        if neighbours is None:
            neighbours = self._overlay_cache[domain] = tuple(
                VxlanNeighbour(other.name, other.address, self.pod_cidr(other.name), vtep_mac(other.address))
                for other, _ in self.domains[domain]
            )
        if len(neighbours) < 2:
            return None
        return Vxlan(
            vni=VXLAN_VNI,
            port=VXLAN_PORT,
            mtu=pod_mtu,
            local_mac=vtep_mac(node.address),
            neighbours=neighbours,
            bound=self.cni[cluster] != "cilium",
            overlay=domain,
        )

    def underlay(self, node: Node, cluster: str, tunnel: Mtu | None, routes: Sequence[Route]) -> Mtu:
        """The smallest network this node's VXLAN packets cross: its tunnel, the tunnel of the gateway
        it routes other sites through, or its site network — or an IPsec path through a hub to a site
        its overlay reaches, when smaller. Flannel's VXLAN leaves the site only through a hub."""
        mtu = self._wireguard_underlay(node, cluster, tunnel, routes)
        if self.apart:
            domain = {n.site for n, _ in self.domains[self.domain_of[cluster]]}
            ipsec = hubs.underlay_limit(self.mesh, self.site_pairs, node.site, domain)
            if ipsec is not None and ipsec.value < mtu.value:
                return ipsec
        return mtu

    def _wireguard_underlay(self, node: Node, cluster: str, tunnel: Mtu | None, routes: Sequence[Route]) -> Mtu:
        if self.cni[cluster] == "cilium":
            if tunnel is not None:
                return tunnel
            via = self._via_gateway_mtu(routes)
            if via is not None:
                return via
        mtu = self.site_mtu[node.site]
        return Mtu(mtu, f"{mtu} site {node.site}")

    # topologies ---------------------------------------------------------------------------
    def full_mesh(self) -> list[Draft]:
        allowed: dict[str, tuple[IPv4Network, ...]] = {
            n.name: tuple(map(_host, peer_rule.carried(self.tunnel_addr(n.name), n.address))) for n, _ in self.nodes
        }
        towards = {
            name: tuple(self.route(a, RouteVia.WIREGUARD, None, name) for a in nets) for name, nets in allowed.items()
        }
        # Peers (and the tunnel routes that follow from them) depend only on the node's site and
        # whether it is behind NAT: build them once per such group, not once per node — with
        # n nodes that is O(sites · n) work instead of O(n²), and the groups share their tuples.
        groups: dict[tuple[str, bool], tuple[tuple[Peer, ...], tuple[Route, ...]]] = {}
        out = []
        for node, cluster in self.nodes:
            natted = node.public_address is None
            group = groups.get((node.site, natted))
            if group is None:
                peers = tuple(
                    self.peer(other, allowed[other.name], keepalive=natted, standby=False)
                    for other, _ in self.nodes
                    if peer_rule.is_peer(node.site, natted, other.site, other.public_address is None, self.apart)
                )
                group = groups[node.site, natted] = (peers, tuple(r for p in peers for r in towards[p.node]))
            out.append((node, cluster, *group))
        return out

    def gateways(self, chosen: Mapping[str, str] | None = None) -> list[Draft]:
        """The gateway rule of plan/peers.py with each site's preferred gateway active — or, with
        `chosen` (site → gateway, as etcd names them after a failover), the one it names where that
        is one of the site's gateways (`peers.active_of`): what the agents run then."""
        members = [
            peer_rule.Member(n.name, n.site, n.public_address is None, n.gateway, n.preferred) for n, _ in self.nodes
        ]
        natted = {m.name: m.natted for m in members}
        by_name = {n.name: n for n, _ in self.nodes}
        order = peer_rule.gateway_order(members)
        active = peer_rule.active_of(order, chosen) if chosen else peer_rule.preferred(order)
        # What a site's active gateway carries: the site network, its nodes' addresses, between
        # which the CNI's VXLAN carries the pods.
        prefixes = {site: (self.site_net[site],) for site in self.by_site}
        # What a node that is not its site's active gateway routes to the other sites: the same for
        # every such node of the site, so built once per site (10,000 nodes × 500 clusters: 10 million).
        via_gateway: dict[str, tuple[Route, ...]] = {
            site: tuple(
                self.route(pfx, RouteVia.GATEWAY, by_name[active[site]].address, active[site])
                for other_site in sorted(self.by_site)
                if other_site != site and frozenset((site, other_site)) not in self.apart
                for pfx in prefixes[other_site]
            )
            for site in self.by_site
            if site in active
        }
        out = []
        for (node, cluster), member in zip(self.nodes, members, strict=True):
            peers = tuple(
                self._gateway_peer(
                    by_name[g.node],
                    (_host(self.tunnel_addr(g.node)),) + (prefixes[g.site] if g.carries else ()),
                    keepalive=g.keepalive,
                    carries=g.carries,
                    standby=g.standby,
                )
                for g in peer_rule.gateway_peers(member, natted, order, active, self.apart)
            )
            routes = [self.route(a, RouteVia.WIREGUARD, None, p.node) for p in peers for a in p.allowed_ips]
            if peer_rule.via_gateway(member, active) is not None:
                routes.extend(via_gateway[node.site])
            out.append((node, cluster, peers, tuple(routes)))
        return out

    def _gateway_peer(
        self, node: Node, allowed: tuple[IPv4Network, ...], *, keepalive: bool, carries: bool, standby: bool
    ) -> Peer:
        """`carries`: the entry holds the remote site's prefixes; `standby`: the peer is a standby
        gateway. A standby node's entry for a remote *active* gateway carries nothing, yet is no standby."""
        key = (node.name, carries, keepalive, standby)
        p = self._gateway_peer_cache.get(key)
        if p is None:
            p = self._gateway_peer_cache[key] = Peer(
                node=node.name,
                site=node.site,
                public_key=self.keys[node.name],
                endpoint=(node.public_address, self.port) if node.public_address is not None else None,
                allowed_ips=allowed,
                persistent_keepalive=self.keepalive if keepalive else 0,
                standby=standby,
            )
        return p

    def node_plans(self, drafts: list[Draft]) -> list[NodePlan]:
        """Tunnels first, then each cluster's underlay (the smallest over its nodes: Cilium's `MTU`
        is one value per cluster), then every node with its cluster's pod MTU and its VXLAN."""
        tunnels: list[Tunnel | None] = []
        for node, cluster, peers, routes in drafts:
            tunnel = None
            if peers:
                tunnel = Tunnel(
                    interface=TUNNEL_INTERFACE,
                    address=self.tunnel_addr(node.name),
                    listen_port=self.port,
                    mtu=self.tunnel_mtu(node, peers),
                    peers=peers,
                )
            tunnels.append(tunnel)
            mtu = self.underlay(node, cluster, tunnel.mtu if tunnel else None, routes)
            low = self.underlays.get(cluster)
            if low is None or mtu.value < low.value:
                self.underlays[cluster] = mtu
        pod_mtu = {
            c: Mtu(
                u.value - VXLAN_OVERHEAD, f"{u.value} underlay − {VXLAN_OVERHEAD} VXLAN = {u.value - VXLAN_OVERHEAD}"
            )
            for c, u in self.underlays.items()
        }
        out = []
        for (node, cluster, _, routes), tunnel in zip(drafts, tunnels, strict=True):
            vxlan = self.overlay(node, cluster, pod_mtu[cluster])
            out.append(
                NodePlan(
                    name=node.name,
                    cluster=cluster,
                    site=node.site,
                    address=node.address,
                    public_address=node.public_address,
                    gateway=node.gateway,
                    preferred=node.gateway and node.preferred,
                    pod_cidr=self.pod_cidr(node.name),
                    tunnel=tunnel,
                    vxlan=vxlan,
                    routes=routes,  # shared by a group of nodes where the topology allows (full mesh)
                    pod_mtu=pod_mtu[cluster],
                )
            )
        return out

    def _via_gateway_mtu(self, routes: Sequence[Route]) -> Mtu | None:
        """A node routing cross-site traffic through its gateway is bound by the gateway's tunnel MTU."""
        if not any(r.via is RouteVia.GATEWAY for r in routes):
            return None
        low = min(self.site_mtu.values())
        return Mtu(
            low - WIREGUARD_OVERHEAD,
            f"min(site MTUs) {low} − {WIREGUARD_OVERHEAD} WireGuard at the gateway = {low - WIREGUARD_OVERHEAD}",
        )


def build_plan(
    mesh: Mesh,
    alloc: Allocations,
    public_keys: dict[str, str],
    manifests: dict[str, list[k8s.Manifest]] | None = None,
    placements: dict[str, str] | None = None,
    active: Mapping[str, str] | None = None,
) -> Plan:
    """The plan of `mesh`. `active` (topology gateways only): each site's active gateway where it is
    not the preferred one — the running mesh after a failover, which the lab's checks compare with;
    `render` and `apply` plan on the preferred gateways (no `active`)."""
    planner = _Planner(mesh, alloc, public_keys)
    gateways = mesh.spec.wireguard.topology is Topology.GATEWAYS
    drafts = planner.gateways(active) if gateways else planner.full_mesh()
    node_plans = planner.node_plans(drafts)
    clusters = datapath.attach(
        mesh, cluster_plans(mesh, alloc, manifests, placements), node_plans, planner.underlays, planner.site_pairs
    )
    hc = mesh.spec.health_check
    return Plan(
        mesh=mesh.metadata.name,
        topology=mesh.spec.wireguard.topology,
        trust_domain=mesh.spec.trust_domain,
        listen_port=mesh.spec.wireguard.listen_port,
        sites=tuple(
            SitePlan(s.name, s.provider, s.region, s.network, s.mtu)
            for s in sorted(mesh.spec.sites, key=lambda s: s.name)
        ),
        clusters=clusters,
        nodes=tuple(node_plans),
        health=HealthPlan(
            probe=hc.probe,
            path=hc.path,
            interval_ms=hc.interval_ms,
            timeout_ms=hc.timeout_ms,
            failure_threshold=hc.failure_threshold,
            success_threshold=hc.success_threshold,
        ),
        istio=istio_plan(mesh),
        ingress=ingress.ingress_plans(clusters, manifests),
        hubs=hubs.hub_plans(mesh),
        vpn=hubs.vpn_plans(mesh),
        site_pairs=planner.site_pairs,
    )


def istio_plan(mesh: Mesh) -> IstioPlan | None:
    """The service mesh of `mesh`: None without `spec.istio`, so that nothing changes for meshes
    without one."""
    istio = mesh.spec.istio
    if istio is None:
        return None
    return IstioPlan(trust_domain=mesh.spec.trust_domain, mesh_id=mesh.metadata.name, cert_ttl=istio.cert_ttl)


def cluster_plans(
    mesh: Mesh,
    alloc: Allocations,
    manifests: dict[str, list[k8s.Manifest]] | None = None,
    placements: dict[str, str] | None = None,
) -> tuple[ClusterPlan, ...]:
    """Every cluster with its pods and services. `validate` runs this too, so that a workload that
    does not fit its nodes' pod CIDRs is refused by validate and not first by plan: raises
    `workloads.PlacementError` naming the manifest."""
    clusters = []
    for c in sorted(mesh.spec.clusters, key=lambda c: c.name):
        names = [n.name for n in c.nodes]
        cluster_manifests = (manifests or {}).get(c.name, [])
        cluster_manifests = cluster_manifests + ingress.implied_manifests(cluster_manifests, names)  # none if added
        expanded = workloads.expand_pods(c.name, cluster_manifests, names, placements)
        pods = workloads.place_pods(c.name, expanded, {n: alloc.nodes[n].pod_cidr for n in names}, cluster_manifests)
        services = workloads.plan_services(c.name, cluster_manifests, pods, c.service_cidr)
        clusters.append(
            ClusterPlan(
                name=c.name,
                id=alloc.clusters[c.name].id,
                distribution=c.distribution,
                cni=c.cni,
                pod_cidr=alloc.clusters[c.name].pod_cidr,
                service_cidr=c.service_cidr,
                nodes=tuple(sorted(names)),
                sites=tuple(sorted({n.site for n in c.nodes})),
                pods=pods,
                services=services,
            )
        )
    return tuple(clusters)
