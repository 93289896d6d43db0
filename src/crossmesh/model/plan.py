"""The desired network as frozen data: what every driver applies and every renderer prints.

Peers are shared objects: in a full mesh of n nodes every node lists ~n peers, but
a peer entry for node M is the same on every node that keeps (or does not keep)
a keepalive, so the plan holds O(n) `Peer` objects and O(n²) references to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network

from crossmesh.model.mesh import Cni, Distribution, Probe, Provider, Topology

WIREGUARD_OVERHEAD = 80  # IPv6 outer header 40 + UDP 8 + WireGuard 32: safe whatever the underlay family
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
VXLAN_PORT = 8472  # Linux/Flannel/Cilium default, not IANA's 4789
VXLAN_VNI = 1  # Flannel's VNI in K3s
TUNNEL_INTERFACE = "wg-crossmesh"
# Managed distributions: their control plane (and its controller manager) is the cloud's, not ours.
MANAGED_DISTRIBUTIONS = frozenset({"eks", "aks", "gke"})


class Transport(StrEnum):
    """What carries the traffic between two sites (plan/hubs.py decides)."""

    WIREGUARD = "wireguard"  # crossmesh's node-to-node (or gateway-to-gateway) WireGuard
    IPSEC = "ipsec"  # the sites' routers: a Site-to-Site VPN into a hub (transit gateway)


class RouteVia(StrEnum):
    WIREGUARD = "wireguard"  # into the node's tunnel interface
    VXLAN = "vxlan"  # the cluster overlay inside a site
    SITE = "site"  # plain routing on the site network, via another node
    GATEWAY = "gateway"  # to the site's WireGuard gateway (topology: gateways)


@dataclass(frozen=True, slots=True)
class Peer:
    node: str
    site: str
    public_key: str
    endpoint: tuple[IPv4Address, int] | None
    allowed_ips: tuple[IPv4Network, ...]
    persistent_keepalive: int  # 0 = off
    standby: bool = False  # a second gateway of its site: carries its own addresses only

    @property
    def endpoint_text(self) -> str | None:
        return None if self.endpoint is None else f"{self.endpoint[0]}:{self.endpoint[1]}"


@dataclass(frozen=True, slots=True)
class Mtu:
    value: int
    arithmetic: str  # how it was computed, shown by `plan`


@dataclass(frozen=True, slots=True)
class Tunnel:
    interface: str
    address: IPv4Address
    listen_port: int
    mtu: Mtu
    peers: tuple[Peer, ...]


@dataclass(frozen=True, slots=True)
class VxlanNeighbour:
    node: str
    address: IPv4Address  # remote VTEP (node address on the site network)
    pod_cidr: IPv4Network
    mac: str


@dataclass(frozen=True, slots=True)
class Vxlan:
    """The CNI's VXLAN device on a node. Cilium's is a collect-metadata device the kernel routes by
    the FIB (its packets to another site's node follow that node's route into wg-crossmesh);
    Flannel's is bound to one interface (`bound`), so its packets never leave the site network."""

    vni: int
    port: int
    mtu: Mtu
    local_mac: str
    # Every node of the overlay, this one included (skip your own): one tuple shared by all of them,
    # so a Cluster Mesh of n nodes holds n entries, not n² (NodePlan.overlay_routes derives the routes).
    neighbours: tuple[VxlanNeighbour, ...]
    bound: bool = False
    overlay: str = ""  # the overlay's name: "cilium" (the Cluster Mesh) or "cluster/<name>"


@dataclass(frozen=True, slots=True)
class Route:
    dst: IPv4Network
    via: RouteVia
    gateway: IPv4Address | None  # next hop, when routed over the site network or VXLAN
    peer: str  # the node this route leads to (or through)


@dataclass(frozen=True, slots=True)
class PodPlan:
    cluster: str
    namespace: str
    name: str
    node: str
    address: IPv4Address
    labels: tuple[tuple[str, str], ...]
    ports: tuple[tuple[int, str, str], ...]  # (port, protocol, name)

    @property
    def ref(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePlan:
    cluster: str
    namespace: str
    name: str
    cluster_ip: IPv4Address | None  # None: headless (`clusterIP: None`), its name resolves to the pods
    ports: tuple[tuple[int, str, str, str], ...]  # (port, protocol, targetPort, name)
    backends: tuple[str, ...]  # pod refs
    is_global: bool
    shared: bool
    affinity: str
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer | ExternalName
    node_ports: tuple[tuple[int, str, int], ...] = ()  # (port, protocol, nodePort): NodePort, LoadBalancer

    @property
    def ref(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip is None

    def node_port(self, port: int, protocol: str) -> int | None:
        """The node port of service port `port`/`protocol`, if it has one."""
        return next((n for p, proto, n in self.node_ports if p == port and proto == protocol), None)


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str
    cluster: str
    site: str
    address: IPv4Address
    public_address: IPv4Address | None
    gateway: bool
    pod_cidr: IPv4Network
    tunnel: Tunnel | None
    vxlan: Vxlan | None
    routes: tuple[Route, ...]  # the topology's: tunnel, gateway (VXLAN routes: overlay_routes)
    pod_mtu: Mtu
    preferred: bool = False  # topology gateways: the mesh file marks it its site's preferred gateway

    @property
    def natted(self) -> bool:
        return self.public_address is None

    @property
    def forwards(self) -> bool:
        """IP forwarding: a gateway with a tunnel carries its site's traffic to the other sites (a standby
        one once it takes over), so it sends and receives packets that are neither from nor to itself."""
        return self.gateway and self.tunnel is not None

    def overlay_routes(self) -> tuple[Route, ...]:
        """Every other overlay node's pod CIDR into the VXLAN device, via its VXLAN address (the
        network address of its pod CIDR, onlink), derived from the shared neighbour list."""
        if self.vxlan is None:
            return ()
        return tuple(
            Route(v.pod_cidr, RouteVia.VXLAN, v.pod_cidr.network_address, v.node)
            for v in self.vxlan.neighbours
            if v.node != self.name
        )

    def all_routes(self) -> tuple[Route, ...]:
        return (*self.overlay_routes(), *self.routes)


@dataclass(frozen=True, slots=True)
class SitePlan:
    name: str
    provider: Provider
    region: str
    network: IPv4Network
    mtu: int


@dataclass(frozen=True, slots=True)
class PairClass:
    """How pod traffic between two pods of one kind of pair travels: who routes, who encapsulates,
    who encrypts, and the largest packet a pod may send (DF set) with its arithmetic."""

    name: str  # same-node | same-site | cross-site | cross-cluster
    connected: bool
    path: str  # the hops, e.g. "pod → cilium_vxlan (VXLAN 8472) → wg-crossmesh → site network"
    encapsulation: str  # none | vxlan
    encryption: str  # none | wireguard
    mtu: Mtu | None  # None when not connected
    why: str = ""  # why a class is not connected, or a remark


@dataclass(frozen=True, slots=True)
class Datapath:
    """The one datapath model of a cluster (README, "Datapath"). Every renderer and the lab read it;
    nothing recomputes it. Model `tunnel`: the CNI carries pod traffic in VXLAN (UDP 8472) between
    node addresses (the nodes' InternalIP); crossmesh's WireGuard carries the node addresses between
    sites and never a pod CIDR, so node pod CIDRs need no agreement with the plan unless pinned."""

    mode: str  # tunnel
    encapsulation: str  # vxlan
    port: int
    underlay_mtu: Mtu  # the network the CNI's VXLAN packets cross: Cilium's `MTU` value
    pod_mtu: Mtu  # underlay − VXLAN overhead: every pod's interface and route MTU
    pod_cidrs_pinned: bool  # True: nodes state podCIDRs; the rendered files pin them (KCM off + patch)
    classes: tuple[PairClass, ...]


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    name: str
    id: int
    distribution: Distribution
    cni: Cni
    pod_cidr: IPv4Network
    service_cidr: IPv4Network
    nodes: tuple[str, ...]
    sites: tuple[str, ...]
    pods: tuple[PodPlan, ...]
    services: tuple[ServicePlan, ...]
    datapath: Datapath | None = None  # None only in the cluster plans `validate` builds


@dataclass(frozen=True, slots=True)
class HealthPlan:
    probe: Probe
    path: str
    interval_ms: int
    timeout_ms: int
    failure_threshold: int
    success_threshold: int


@dataclass(frozen=True, slots=True)
class IstioPlan:
    """The service mesh of a mesh file with `spec.istio`: whose identities (`trust_domain`), which
    mesh (`mesh_id`, Istio's meshID: the mesh's name), and how long a workload certificate lives."""

    trust_domain: str
    mesh_id: str
    cert_ttl: timedelta


@dataclass(frozen=True, slots=True)
class IngressListener:
    """A listener of an ingress gateway as its load balancer publishes it: the port users reach on
    the site's public address, and the node port of the gateway's Service it is forwarded to."""

    name: str
    port: int
    protocol: str  # HTTP | HTTPS
    hostname: str | None
    node_port: int


@dataclass(frozen=True, slots=True)
class IngressPlan:
    """An ingress gateway (a Gateway API `Gateway`): the Service `service` of type LoadBalancer in its
    namespace, the pods that run it and the nodes they are on (its load balancer's targets)."""

    cluster: str
    namespace: str
    name: str
    service: str
    nodes: tuple[str, ...]
    pods: tuple[str, ...]  # pod refs
    listeners: tuple[IngressListener, ...]

    @property
    def ref(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class SitePairPlan:
    """How two sites reach each other: the transport, for IPsec the hub and connections it crosses, the
    path in words, and the largest packet between node addresses (`mtu`) and between pods (`pod_mtu`,
    `mtu` − VXLAN where a cluster's VXLAN crosses the pair; None where none does), with arithmetic."""

    sites: tuple[str, str]  # in name order
    transport: Transport
    hub: str | None  # ipsec: the transit gateway
    connections: tuple[str, ...]  # ipsec: the VPN connections crossed (one, or two from site to site)
    path: str
    mtu: Mtu
    pod_mtu: Mtu | None


@dataclass(frozen=True, slots=True)
class Proposal:
    """One IKE phase's proposals, AWS's names (AES256-GCM-16, SHA2-256, DH group numbers)."""

    encryption: tuple[str, ...]
    integrity: tuple[str, ...]
    dh_groups: tuple[int, ...]
    lifetime_seconds: int


@dataclass(frozen=True, slots=True)
class VpnTunnelPlan:
    """One of a connection's two tunnels. The inside /30's first host is the hub's end, the second the
    customer gateway's (AWS's assignment); the BGP session runs between them. Tunnel 1 is active,
    tunnel 2 standby (the customer side prefers tunnel 1's routes). `psk` says where the pre-shared key
    is — `state:<path in the state directory>` or `file:<path beside the mesh file>` — never the key."""

    index: int  # 1 | 2
    inside_cidr: IPv4Network
    hub_address: IPv4Address
    customer_address: IPv4Address
    ike_version: str
    phase1: Proposal
    phase2: Proposal
    psk: str
    mtu: Mtu  # the largest inner packet this tunnel carries, ESP with NAT-T arithmetic
    standby: bool


@dataclass(frozen=True, slots=True)
class VpnConnectionPlan:
    name: str
    hub: str
    site: str
    customer_asn: int
    customer_address: IPv4Address  # the customer gateway's public (outside) address
    routing: str  # bgp | static
    tunnels: tuple[VpnTunnelPlan, ...]
    customer_prefixes: tuple[IPv4Network, ...]  # what the customer side announces (bgp) or its static routes
    hub_prefixes: tuple[IPv4Network, ...]  # what the hub routes to it: its route table's other destinations


@dataclass(frozen=True, slots=True)
class HubRoutePlan:
    destination: IPv4Network
    attachment: str
    propagated: bool  # learned from the attachment (propagation), not a static route


@dataclass(frozen=True, slots=True)
class HubRouteTablePlan:
    name: str
    associations: tuple[str, ...]
    propagations: tuple[str, ...]
    routes: tuple[HubRoutePlan, ...]  # static and propagated, by destination


@dataclass(frozen=True, slots=True)
class HubAttachmentPlan:
    name: str  # the VPC's site, or the VPN connection
    kind: str  # vpc | vpn
    prefixes: tuple[IPv4Network, ...]  # what it propagates


@dataclass(frozen=True, slots=True)
class HubPlan:
    name: str
    site: str  # the site whose VPC attaches
    amazon_asn: int
    attachments: tuple[HubAttachmentPlan, ...]
    route_tables: tuple[HubRouteTablePlan, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    mesh: str
    topology: Topology
    trust_domain: str
    listen_port: int
    sites: tuple[SitePlan, ...]
    clusters: tuple[ClusterPlan, ...]
    nodes: tuple[NodePlan, ...]
    health: HealthPlan = HealthPlan(Probe.TCP, "/", 200, 500, 2, 1)
    istio: IstioPlan | None = None  # None: no service mesh (no `spec.istio`)
    ingress: tuple[IngressPlan, ...] = ()  # the clusters' Gateway API gateways
    # Site-to-site VPN (spec.hubs, spec.vpnConnections); all empty in a mesh without hubs.
    hubs: tuple[HubPlan, ...] = ()
    vpn: tuple[VpnConnectionPlan, ...] = ()
    site_pairs: tuple[SitePairPlan, ...] = ()  # every pair of sites, with a hub in the mesh

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def cluster(self, name: str) -> ClusterPlan:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)

    def site(self, name: str) -> SitePlan:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def pods(self) -> tuple[PodPlan, ...]:
        return tuple(p for c in self.clusters for p in c.pods)
