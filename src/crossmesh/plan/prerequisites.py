"""What each site's cloud must allow and carry before the plan can work, as provider-neutral data.

A cloud network is not a wire: a security group drops a WireGuard handshake nobody allowed, a VPC
drops packets a VM sends for addresses that are not its own, and Azure and GCP forward by their route
tables, not by the next hop a VM picks. So, per site, from the plan alone (pure: no I/O):

- **inbound rules**, stateful as every cloud's are (the answers to what a node sent are always let in):
  the WireGuard port of the site's *dialled* tunnel nodes (a tunnel and a public address) from each
  peer's public address, /32 each — or from 0.0.0.0/0 for peers behind NAT, whose source is their
  NAT's address, which the mesh file does not know; and, from the site network, what the cluster's
  nodes say to each other there: the CNI's VXLAN, Cilium's health checks, the clustermesh-apiserver's
  node port, the Kubernetes API. Across sites these travel inside WireGuard and never meet the
  cloud's firewall, except where a router puts the other sites' packets on the site network: with
  `topology: gateways` the site's gateway, and for a pair of sites a hub joins (transport `ipsec`)
  the transit gateway's VPC attachment on the AWS side and the customer gateway on the other. The
  packets keep the other site's node addresses (nothing NATs them), so the same ports are allowed
  from those sites' networks too.
- **forwarding**: source/destination check off and IP forwarding on for nodes that carry others'
  packets (gateways), with the networks they carry (OpenStack's allowed address pairs need them).
- **routes** for the site's route table: another site's network via the site's active gateway,
  because that is where the nodes send it (pod CIDRs never need one: pods cross in VXLAN between
  node addresses, README "Datapath").

`render/providers.py` writes these as Terraform per provider; the lab's site routers enforce the
inbound rules from the internet side from this same data (drivers/lab/topology.py), so a rule missing
here fails in the lab as it would in the cloud.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network

from crossmesh.model.plan import MANAGED_DISTRIBUTIONS, VXLAN_PORT, NodePlan, Plan, RouteVia, SitePlan, Transport
from crossmesh.model.tls import CLUSTERMESH_NODEPORT, clustermesh_clusters

ANYWHERE = IPv4Network("0.0.0.0/0")
CILIUM_HEALTH_PORT = 4240  # cilium-health's node-to-node checks (TCP)
KUBE_API_PORT = 6443  # the API server of kubeadm, K3s and Talos control planes


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Targets(StrEnum):
    """Which nodes of the site a rule protects: every cloud applies rules per interface (or tag)."""

    DIALLED = "dialled"  # tunnel nodes with a public address: the other sites' peers dial them
    NODES = "nodes"  # every node of the site
    INGRESS = "ingress"  # the nodes running an ingress gateway's pods: its load balancer's targets

    @property
    def description(self) -> str:
        if self is Targets.DIALLED:
            return "the tunnel nodes the other sites dial"
        if self is Targets.INGRESS:
            return "the nodes running ingress gateways"
        return "every node"


class Scope(StrEnum):
    INTERNET = "internet"  # arrives from outside the site, through its public addresses (the lab enforces these)
    SITE = "site"  # arrives on the site network (a node, or the site's gateway forwarding another site)


@dataclass(frozen=True, slots=True)
class InboundRule:
    name: str  # unique in the site, stable: Terraform resource names derive from it
    protocol: Protocol
    port: int
    source: IPv4Network
    targets: Targets
    scope: Scope
    reason: str


@dataclass(frozen=True, slots=True)
class Forwarding:
    node: str
    address: IPv4Address
    carries: tuple[IPv4Network, ...]  # other sites' networks whose packets it forwards
    reason: str


@dataclass(frozen=True, slots=True)
class RouteEntry:
    destination: IPv4Network
    node: str  # the next hop
    next_hop: IPv4Address
    reason: str


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    """The cloud's network load balancer in front of an ingress gateway's LoadBalancer Service: each
    listener's port on the balancer's own public address forwarded to the Service's node port on
    the site's nodes that run the gateway (instance targets, client address kept: AWS NLB, Azure
    Standard LB, GCP external passthrough NLB, OpenStack Octavia)."""

    name: str  # stable: Terraform resource names derive from it
    gateway: str  # the IngressPlan's ref, cluster/namespace/name
    service: str  # namespace/name of the gateway's Service
    listeners: tuple[tuple[int, int], ...]  # (port on the balancer, node port), TCP
    targets: tuple[tuple[str, IPv4Address], ...]  # (node, address on the site network)
    reason: str


@dataclass(frozen=True, slots=True)
class SitePrerequisites:
    site: SitePlan
    mesh: str
    nodes: tuple[tuple[str, IPv4Address], ...]  # every node of the site, by name
    dialled: tuple[tuple[str, IPv4Address, IPv4Address], ...]  # (name, address, public address)
    inbound: tuple[InboundRule, ...]
    forwarding: tuple[Forwarding, ...]
    routes: tuple[RouteEntry, ...]
    load_balancers: tuple[LoadBalancer, ...] = ()

    def members(self, targets: Targets) -> tuple[tuple[str, IPv4Address], ...]:
        """The nodes a rule protects: (name, address on the site network)."""
        if targets is Targets.DIALLED:
            return tuple((name, address) for name, address, _ in self.dialled)
        if targets is Targets.INGRESS:
            return tuple(sorted({t for lb in self.load_balancers for t in lb.targets}))
        return self.nodes


def derive(plan: Plan) -> tuple[SitePrerequisites, ...]:
    """Every site's prerequisites, in the plan's site order; within a site, rules sorted by name."""
    by_site: dict[str, list[NodePlan]] = {s.name: [] for s in plan.sites}
    for n in plan.nodes:
        by_site[n.site].append(n)
    return tuple(_site(plan, s, by_site[s.name]) for s in plan.sites)


def for_site(plan: Plan, site: str) -> SitePrerequisites:
    return next(p for p in derive(plan) if p.site.name == site)


def _site(plan: Plan, site: SitePlan, nodes: list[NodePlan]) -> SitePrerequisites:
    ordered = sorted(nodes, key=lambda n: n.name)
    dialled = [n for n in ordered if n.tunnel is not None and n.public_address is not None]
    routes = _routes(plan, site, ordered)
    names = {s.network: s.name for s in plan.sites}
    carried = tuple((r.destination, r.node, names.get(r.destination, "")) for r in routes)
    balancers = _load_balancers(plan, ordered)
    inbound = [*_wireguard(dialled), *_site_network(plan, site, ordered, carried), *_ingress(site, balancers)]
    return SitePrerequisites(
        site=site,
        mesh=plan.mesh,
        nodes=tuple((n.name, n.address) for n in ordered),
        dialled=tuple((n.name, n.address, n.public_address) for n in dialled if n.public_address is not None),
        inbound=tuple(sorted(inbound, key=lambda r: r.name)),
        forwarding=_forwarding(plan, site, ordered),
        routes=routes,
        load_balancers=balancers,
    )


def _load_balancers(plan: Plan, nodes: list[NodePlan]) -> tuple[LoadBalancer, ...]:
    """A load balancer per ingress gateway with pods on this site's nodes, targeting those nodes."""
    here = {n.name: n.address for n in nodes}
    out = []
    for g in plan.ingress:
        targets = tuple((name, here[name]) for name in g.nodes if name in here)
        if not targets or not g.listeners:
            continue
        out.append(
            LoadBalancer(
                name=f"{g.cluster}-{g.namespace}-{g.name}",
                gateway=g.ref,
                service=f"{g.namespace}/{g.service}",
                listeners=tuple(sorted({(li.port, li.node_port) for li in g.listeners})),
                targets=targets,
                reason=f"Gateway {g.namespace}/{g.name} of {g.cluster}: its LoadBalancer Service {g.service}",
            )
        )
    return tuple(out)


def _ingress(site: SitePlan, balancers: tuple[LoadBalancer, ...]) -> list[InboundRule]:
    """The node ports a load balancer forwards to. On AWS, from the site network only: the rendered
    NLB has client IP preservation off (`preserve_client_ip.enabled=false`), so its targets see its
    private addresses, and a node's own public address does not publish the node port. Elsewhere
    from anywhere: Azure's and GCP's passthrough balancers and Octavia keep the client's address,
    which a firewall rule then has to admit (README "Security model" says what that exposes)."""
    aws = site.provider == "aws"
    return [
        InboundRule(
            name=f"ingress-{lb.name}-{port}",
            protocol=Protocol.TCP,
            port=node_port,
            source=site.network if aws else ANYWHERE,
            targets=Targets.INGRESS,
            scope=Scope.INTERNET,
            reason=f"{lb.reason}: port {port} of its load balancer forwards to node port {node_port}"
            + (" (from the NLB's private addresses: client IP preservation off)" if aws else ""),
        )
        for lb in balancers
        for port, node_port in lb.listeners
    ]


def _wireguard(dialled: list[NodePlan]) -> list[InboundRule]:
    """One rule per public peer (its /32), and one from anywhere for the peers behind NAT."""
    public: dict[str, tuple[str, IPv4Address, int]] = {}
    natted: dict[int, set[str]] = {}
    lists = {id(n.tunnel.peers): (n.tunnel.listen_port, n.tunnel.peers) for n in dialled if n.tunnel is not None}
    # The planner shares one peer tuple among the nodes of a site and NAT side: read each once.
    for port, peers in lists.values():
        for p in peers:
            if p.endpoint is None:
                natted.setdefault(port, set()).add(p.node)
            else:
                public[p.node] = (p.site, p.endpoint[0], port)
    rules = [
        InboundRule(
            f"wireguard-from-{peer}",
            Protocol.UDP,
            port,
            IPv4Network(f"{address}/32"),
            Targets.DIALLED,
            Scope.INTERNET,
            f"WireGuard from peer {peer} (site {site}, public address {address})",
        )
        for peer, (site, address, port) in public.items()
    ]
    for port, names in natted.items():
        rules.append(
            InboundRule(
                "wireguard-from-behind-nat" + ("" if len(natted) == 1 else f"-{port}"),
                Protocol.UDP,
                port,
                ANYWHERE,
                Targets.DIALLED,
                Scope.INTERNET,
                f"WireGuard from peers behind NAT ({', '.join(sorted(names))}): they arrive from the address of "
                "their NAT, which the mesh file does not know; narrow 0.0.0.0/0 to it if you know it",
            )
        )
    return rules


def _site_network(
    plan: Plan, site: SitePlan, nodes: list[NodePlan], carried: tuple[tuple[IPv4Network, str, str], ...]
) -> list[InboundRule]:
    """The cluster traffic between nodes that crosses this site network: from the site's own nodes,
    and from the sites whose networks this site's gateway carries onto it."""
    sources = [(site.network, "site", f"nodes of site {site.name}")]
    sources += [(net, f"site-{name}", f"site {name} ({net}) through gateway {gw}") for net, gw, name in carried]
    sources += _through_hubs(plan, site)
    return [
        InboundRule(f"{service}-from-{label}", protocol, port, net, Targets.NODES, Scope.SITE, f"{what} from {whom}")
        for service, protocol, port, what in _services(plan, nodes)
        for net, label, whom in sources
    ]


def _through_hubs(plan: Plan, site: SitePlan) -> list[tuple[IPv4Network, str, str]]:
    """The networks of the sites a hub joins to this one: (network, label, whom), by site name."""
    networks = {s.name: s.network for s in plan.sites}
    out = []
    for p in plan.site_pairs:
        if p.transport is not Transport.IPSEC or site.name not in p.sites:
            continue
        other = p.sites[0] if p.sites[1] == site.name else p.sites[1]
        how = f"transit gateway {p.hub}" + (f", IPsec {', '.join(p.connections)}" if p.connections else "")
        out.append((networks[other], f"site-{other}", f"site {other} ({networks[other]}) through {how}"))
    return out


def _services(plan: Plan, nodes: list[NodePlan]) -> list[tuple[str, Protocol, int, str]]:
    """What the clusters of these nodes listen on for each other: (name, protocol, port, what)."""
    clusters = {plan.cluster(c) for c in {n.cluster for n in nodes}}
    members = set(clustermesh_clusters(plan))
    out = []
    if any(n.vxlan is not None for n in nodes):
        out.append(("vxlan", Protocol.UDP, VXLAN_PORT, "the CNI VXLAN between node addresses"))
    if any(c.cni == "cilium" for c in clusters):
        out.append(("cilium-health", Protocol.TCP, CILIUM_HEALTH_PORT, "Cilium node health checks"))
    if any(c.name in members for c in clusters):
        out.append(("clustermesh", Protocol.TCP, CLUSTERMESH_NODEPORT, "the clustermesh-apiserver node port"))
    if any(c.distribution not in MANAGED_DISTRIBUTIONS for c in clusters):
        why = "the Kubernetes API server (on the control-plane nodes; crossmesh does not know which they are)"
        out.append(("kubernetes-api", Protocol.TCP, KUBE_API_PORT, why))
    return out


def _forwarding(plan: Plan, site: SitePlan, nodes: list[NodePlan]) -> tuple[Forwarding, ...]:
    others = tuple(s.network for s in plan.sites if s.name != site.name)
    out = []
    for n in nodes:
        if not n.forwards or n.tunnel is None:
            continue
        # The active gateway's peers carry the other sites' networks; a standby's only tunnel addresses.
        active = any(a in others for p in n.tunnel.peers for a in p.allowed_ips)
        role = "active gateway" if active else "standby gateway (once it takes over)"
        out.append(
            Forwarding(
                n.name,
                n.address,
                others,
                f"{role} of site {site.name}: forwards packets between its site network and the other sites, "
                "neither from nor to its own address",
            )
        )
    return tuple(out)


def _routes(plan: Plan, site: SitePlan, nodes: list[NodePlan]) -> tuple[RouteEntry, ...]:
    """The routes the site's nodes send via their gateway, once each (only `topology: gateways` has any:
    a full mesh's nodes have thousands of tunnel routes and none via a gateway, so they are not scanned)."""
    if plan.topology != "gateways":
        return ()
    names = {s.network: s.name for s in plan.sites}
    seen: dict[tuple[IPv4Network, str], RouteEntry] = {}
    for n in nodes:
        for r in n.routes:
            if r.via is not RouteVia.GATEWAY or r.gateway is None or (r.dst, r.peer) in seen:
                continue
            seen[r.dst, r.peer] = RouteEntry(
                r.dst,
                r.peer,
                r.gateway,
                f"site {names.get(r.dst, r.dst)} via gateway {r.peer}: where the nodes of site {site.name} "
                "send it; the route table must agree (Azure and GCP forward by it, AWS and OpenStack across subnets)",
            )
    return tuple(sorted(seen.values(), key=lambda e: (e.destination, e.node)))
