"""Plan → the lab's desired state, as data. Pure: no netlink, no processes.

Layout (every name carries `cm-<tag>`; interface names are unique host-wide because
wireguard-go keeps its control socket in /var/run/wireguard/<ifname>.sock):

    cm-<tag>-inet            the internet: one veth per site, routes to public addresses
    cm-<tag>-r<k>            site k's router (the VPC): bridge for the site network,
                             1:1 NAT publicAddress <-> address, source NAT for the rest
    cm-<tag>-n<i>            node i: eth on the site bridge, VXLAN, WireGuard, pod veths
    cm-<tag>-p<j>            pod j: one veth to its node, address from the node's pod CIDR
    cm-<tag>-local           the client outside (a user's laptop): one veth to the internet,
                             a public address (plan/outside.py), default route via the internet

Public side: each site router's WAN address and the internet router's own address
come from the documentation ranges (skipping any the mesh file uses), so the
internet router never holds or sees a private address.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from crossmesh import nft
from crossmesh.drivers.lab import firewall, hubtopo, meshcapture, servicenat
from crossmesh.drivers.lab.spec import Link, Namespace, Neighbour, Route
from crossmesh.model.plan import NodePlan, Plan, PodPlan, RouteVia
from crossmesh.observe import codes
from crossmesh.plan import outside, vpngw
from crossmesh.plan.prerequisites import SitePrerequisites
from crossmesh.plan.prerequisites import derive as derive_prerequisites
from crossmesh.policy import compile as compile_policy
from crossmesh.policy.evaluator import PolicyIndex

PRIVATE_RANGES = (
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
    IPv4Network("100.64.0.0/10"),
)
DOC_RANGES = (IPv4Network("192.0.2.0/24"), IPv4Network("198.51.100.0/24"), IPv4Network("203.0.113.0/24"))
ICMP_ECHO_REQUEST = 8  # RFC 792
ROUTE_PROTO = 99  # routes the lab owns carry this protocol number; others are left alone


def lab_tag(mesh_name: str) -> str:
    return f"{zlib.crc32(mesh_name.encode()) & 0xFFFF:04x}"


@dataclass(frozen=True, slots=True)
class WireGuardDevice:
    namespace: str
    ifname: str
    node: str


@dataclass(frozen=True, slots=True)
class PodEndpoint:
    pod: PodPlan
    namespace: str
    node_namespace: str
    ifname: str  # inside the pod namespace


@dataclass(frozen=True, slots=True)
class LabTopology:
    tag: str
    prefix: str
    namespaces: tuple[Namespace, ...]
    wireguard: tuple[WireGuardDevice, ...]
    pods: tuple[PodEndpoint, ...]
    node_ns: dict[str, str] = field(default_factory=dict)
    site_ns: dict[str, str] = field(default_factory=dict)
    site_wan: dict[str, IPv4Address] = field(default_factory=dict)
    inet_address: IPv4Address = IPv4Address("192.0.2.254")
    local_ns: str = ""  # the client outside (`lab exec local`), cm-<tag>-local
    local_address: IPv4Address = outside.PREFERRED
    # Each ingress gateway's load balancer: its own public address, held by its site's router.
    load_balancers: dict[str, IPv4Address] = field(default_factory=dict)  # IngressPlan ref → address
    indices: dict[str, dict[str, int]] = field(default_factory=dict)  # name → number in device names
    hubs: dict[str, hubtopo.HubLink] = field(default_factory=dict)  # transit gateways by hub name
    vpn_outside: dict[tuple[str, int], IPv4Address] = field(default_factory=dict)  # AWS's tunnel endpoints

    def namespace(self, name: str) -> Namespace:
        return next(n for n in self.namespaces if n.name == name)

    def pod(self, ref: str) -> PodEndpoint:
        for p in self.pods:
            if p.pod.ref == ref:
                return p
        raise KeyError(ref)


def _numbering(names: list[str], kept: dict[str, int]) -> dict[str, int]:
    """Numbers for device and namespace names. A running lab keeps the numbers it gave
    (`kept`), so a node joining does not rename the others; new names get fresh numbers,
    never reused ones, so a half-removed namespace is never mistaken for a new one."""
    out = {n: kept[n] for n in names if n in kept}
    following = max(kept.values(), default=-1) + 1
    for n in names:
        if n not in out:
            out[n] = following
            following += 1
    return out


def _public_pool(plan: Plan, count: int, local: IPv4Address) -> list[IPv4Address]:
    used = {n.public_address for n in plan.nodes if n.public_address is not None} | {local}
    used |= {c.customer_address for c in plan.vpn}
    out: list[IPv4Address] = []
    for net in DOC_RANGES:
        for host in reversed(list(net.hosts())):
            if host not in used:
                out.append(host)
                if len(out) == count:
                    return out
    raise ValueError("the documentation ranges have no free public address left for the lab's routers")


FORWARD_SYSCTLS = (
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
)


def build(
    plan: Plan,
    tag: str,
    unhealthy: frozenset[str] = frozenset(),
    policy: PolicyIndex | None = None,
    *,
    agent_routes: bool = False,
    indices: dict[str, dict[str, int]] | None = None,
    prerequisites: Mapping[str, SitePrerequisites] | None = None,
    flow_logs: bool = True,
) -> LabTopology:
    """The lab's desired state. With `agent_routes`, routes into the tunnels and (topology gateways)
    via the site's active gateway are left to the nodes' agents (they follow etcd), and the lab sets up
    everything else. Site routers enforce
    the sites' inbound prerequisites (`prerequisites`, by site: the plan's own when not given).
    Without `flow_logs` (`lab up --no-flow-logs`) no table logs a packet for the flow daemon
    (`nft.without_logs`): the one place the switch acts on the data plane."""
    prefix = f"cm-{tag}"
    sites = list(plan.sites)
    firewall = prerequisites if prerequisites is not None else {p.site.name: p for p in derive_prerequisites(plan)}
    nodes = list(plan.nodes)
    pods = [p for c in plan.clusters for p in c.pods]
    kept = indices or {}
    node_index = _numbering([n.name for n in nodes], kept.get("node", {}))
    site_index = _numbering([s.name for s in sites], kept.get("site", {}))
    pod_index = _numbering([p.ref for p in pods], kept.get("pod", {}))
    local_addr = outside.local_address(plan)
    balancers = {p.site.name: p.load_balancers for p in firewall.values()}
    lb_refs = [lb.gateway for s in sites for lb in balancers.get(s.name, ())]
    tunnel_keys = vpngw.tunnel_keys(plan)
    publics = _public_pool(plan, len(sites) + 1 + len(lb_refs) + len(tunnel_keys), local_addr)
    inet_addr = publics[0]
    site_wan = {s.name: publics[k + 1] for k, s in enumerate(sites)}
    # After the sites' addresses, so that a gateway coming or going leaves the routers' addresses be.
    lb_addr = {ref: publics[len(sites) + 1 + k] for k, ref in enumerate(lb_refs)}
    # Hubs: AWS's tunnel outside addresses last; a customer site's router is its customer gateway.
    endpoints = {key: publics[len(sites) + 1 + len(lb_refs) + k] for k, key in enumerate(tunnel_keys)}
    customer = hubtopo.customer_addresses(plan)
    site_wan.update((site, addrs[0]) for site, addrs in customer.items())
    hub_links = hubtopo.links(plan, prefix)
    inet_ns = f"{prefix}-inet"
    site_ns = {s.name: f"{prefix}-r{site_index[s.name]}" for s in sites}
    node_ns = {n.name: f"{prefix}-n{node_index[n.name]}" for n in nodes}

    namespaces: list[Namespace] = []

    # The internet: routes every public address towards its site's router.
    inet_links = []
    inet_addrs = []
    inet_routes = []
    for s in sites:
        k = site_index[s.name]
        inet_if, wan_if = f"{prefix}-i{k}", f"{prefix}-w{k}"
        inet_links.append(Link(inet_if, "veth", peer=wan_if, peer_ns=site_ns[s.name]))
        inet_addrs.append((inet_if, IPv4Interface(f"{inet_addr}/32")))
        inet_routes.append(Route(IPv4Network(f"{site_wan[s.name]}/32"), inet_if))
        for lb in balancers.get(s.name, ()):
            inet_routes.append(Route(IPv4Network(f"{lb_addr[lb.gateway]}/32"), inet_if, site_wan[s.name], onlink=True))
        for n in nodes:
            if n.site == s.name and n.public_address is not None:
                inet_routes.append(Route(IPv4Network(f"{n.public_address}/32"), inet_if, site_wan[s.name], onlink=True))
        for extra in customer.get(s.name, [])[1:]:
            inet_routes.append(Route(IPv4Network(f"{extra}/32"), inet_if, site_wan[s.name], onlink=True))
    for hl in hub_links.values():
        inet_links.append(Link(hl.inet_if, "veth", peer=hl.wan_if, peer_ns=hl.namespace))
        inet_addrs.append((hl.inet_if, IPv4Interface(f"{inet_addr}/32")))
        for key, addr in endpoints.items():
            if key[0] in {c.name for c in plan.vpn if c.hub == hl.hub}:
                inet_routes.append(Route(IPv4Network(f"{addr}/32"), hl.inet_if))
    # The client outside: one more veth of the internet, whose far end is a laptop.
    local_ns, to_local, from_local = f"{prefix}-{outside.LOCAL}", f"{prefix}-li", f"{prefix}-lc"
    inet_links.append(Link(to_local, "veth", peer=from_local, peer_ns=local_ns))
    inet_addrs.append((to_local, IPv4Interface(f"{inet_addr}/32")))
    inet_routes.append(Route(IPv4Network(f"{local_addr}/32"), to_local))
    namespaces.append(
        Namespace(
            inet_ns,
            "inet",
            tuple(inet_links),
            tuple(inet_addrs),
            tuple(inet_routes),
            sysctls=FORWARD_SYSCTLS,
            nft=_inet_nft(),
            owner="internet",
        )
    )
    # Right after the internet, which creates the veth: the laptop's address and its default route.
    # Nothing else: what it reaches is what the internet routes, the sites' public addresses.
    namespaces.append(
        Namespace(
            local_ns,
            outside.LOCAL,
            addresses=((from_local, IPv4Interface(f"{local_addr}/32")),),
            routes=(
                Route(IPv4Network(f"{inet_addr}/32"), from_local),
                Route(IPv4Network("0.0.0.0/0"), from_local, inet_addr, onlink=True),
            ),
            owner=outside.LOCAL,
        )
    )

    # Site routers: the VPC's gateway and its NAT.
    for s in sites:
        k = site_index[s.name]
        ns = site_ns[s.name]
        bridge, wan_if = f"{prefix}-b{k}", f"{prefix}-w{k}"
        # A bridge takes the lowest MAC of its ports unless it has its own: a node joining or
        # leaving would change the gateway's MAC under the ARP caches of the site's nodes (their
        # first datagrams after a membership change went nowhere for seconds).
        links = [Link(bridge, "bridge", mtu=s.mtu, mac=f"02:cb:00:00:{k // 256:02x}:{k % 256:02x}")]
        site_nodes = [n for n in nodes if n.site == s.name]
        for n in site_nodes:
            i = node_index[n.name]
            links.append(
                Link(
                    f"{prefix}-s{i}",
                    "veth",
                    mtu=s.mtu,
                    master=bridge,
                    peer=f"{prefix}-e{i}",
                    peer_ns=node_ns[n.name],
                    peer_mtu=s.mtu,
                )
            )
        router_addr = s.network.network_address + 1
        vpc = [hl for hl in hub_links.values() if hl.site == s.name]
        links += [Link(hl.router_if, "veth", peer=hl.vpc_if, peer_ns=hl.namespace) for hl in vpc]
        namespaces.append(
            Namespace(
                ns,
                "router",
                tuple(links),
                addresses=(
                    (bridge, IPv4Interface(f"{router_addr}/{s.network.prefixlen}")),
                    (wan_if, IPv4Interface(f"{site_wan[s.name]}/32")),
                    *((wan_if, IPv4Interface(f"{lb_addr[lb.gateway]}/32")) for lb in balancers.get(s.name, ())),
                    *((wan_if, IPv4Interface(f"{a}/32")) for a in customer.get(s.name, [])[1:]),
                    *((hl.router_if, hl.router_address) for hl in vpc),
                ),
                routes=(
                    Route(IPv4Network(f"{inet_addr}/32"), wan_if),
                    Route(IPv4Network("0.0.0.0/0"), wan_if, inet_addr, onlink=True),
                    # The VPC route table's entries to the transit gateway.
                    *(
                        Route(dst, hl.router_if, hl.hub_address.ip)
                        for hl in vpc
                        for dst in vpngw.vpc_routes(next(h for h in plan.hubs if h.name == hl.hub))
                    ),
                ),
                # A site network is a switch, not a firewall: frames crossing the bridge skip
                # the router's nftables (the host may have br_netfilter on, which new namespaces inherit).
                sysctls=FORWARD_SYSCTLS + (("net/bridge/bridge-nf-call-iptables", "0"),),
                nft=_router_nft(wan_if, site_wan[s.name], site_nodes, firewall.get(s.name), lb_addr),
                owner=s.name,
            )
        )

    # Transit gateways: their outside addresses and the VPC attachment.
    namespaces += hubtopo.namespaces(plan, hub_links, endpoints, inet_addr, FORWARD_SYSCTLS)

    # Nodes.
    pod_eps: list[PodEndpoint] = []
    wg_devices: list[WireGuardDevice] = []
    pods_by_node: dict[str, list[tuple[int, PodPlan]]] = {}
    for p in pods:
        pods_by_node.setdefault(p.node, []).append((pod_index[p.ref], p))
    for n in nodes:
        i = node_index[n.name]
        ns = node_ns[n.name]
        site = plan.site(n.site)
        eth = f"{prefix}-e{i}"
        node_links: list[Link] = []
        addrs: list[tuple[str, IPv4Interface]] = [(eth, IPv4Interface(f"{n.address}/{site.network.prefixlen}"))]
        routes: list[Route] = [Route(IPv4Network("0.0.0.0/0"), eth, site.network.network_address + 1)]
        neigh: list[Neighbour] = []
        wg_if = f"{prefix}-g{i}"
        vx_if = f"{prefix}-x{i}"
        if n.tunnel is not None:
            wg_devices.append(WireGuardDevice(ns, wg_if, n.name))
            node_links.append(Link(wg_if, "tun", mtu=n.tunnel.mtu.value))
            addrs.append((wg_if, IPv4Interface(f"{n.tunnel.address}/32")))
        if n.vxlan is not None:
            node_links.append(
                Link(
                    vx_if,
                    "vxlan",
                    mtu=n.vxlan.mtu.value,
                    vxlan_id=n.vxlan.vni,
                    vxlan_port=n.vxlan.port,
                    vxlan_local=n.address,
                    vxlan_dev=eth if n.vxlan.bound else None,
                    mac=n.vxlan.local_mac,
                )
            )
            addrs.append((vx_if, IPv4Interface(f"{n.pod_cidr.network_address}/32")))
            for v in n.vxlan.neighbours:
                if v.node == n.name:
                    continue  # the overlay's list holds this node too
                neigh.append(Neighbour(vx_if, v.pod_cidr.network_address, v.mac, v.address))
        for r in n.all_routes():
            if r.via is RouteVia.WIREGUARD:
                if not agent_routes:
                    routes.append(Route(r.dst, wg_if))
            elif r.via is RouteVia.VXLAN:
                routes.append(Route(r.dst, vx_if, r.gateway, onlink=True))
            elif r.via is RouteVia.GATEWAY and agent_routes:
                continue  # the agents route via their site's active gateway, and move with it on failover
            else:
                routes.append(Route(r.dst, eth, r.gateway))
        gw_addr = n.pod_cidr.network_address + 1
        for j, p in pods_by_node.get(n.name, []):
            node_side, pod_side = f"{prefix}-v{j}", f"{prefix}-q{j}"
            pod_ns = f"{prefix}-p{j}"
            node_links.append(
                Link(node_side, "veth", mtu=n.pod_mtu.value, peer=pod_side, peer_ns=pod_ns, peer_mtu=n.pod_mtu.value)
            )
            addrs.append((node_side, IPv4Interface(f"{gw_addr}/32")))
            routes.append(Route(IPv4Network(f"{p.address}/32"), node_side))
            pod_eps.append(PodEndpoint(p, pod_ns, ns, pod_side))
        namespaces.append(
            Namespace(
                ns,
                "node",
                tuple(node_links),
                tuple(addrs),
                tuple(routes),
                tuple(neigh),
                sysctls=FORWARD_SYSCTLS,
                nft=node_nft(
                    plan, n, [(j, p) for j, p in pods_by_node.get(n.name, [])], gw_addr, unhealthy, prefix, policy
                ),
                owner=n.name,
            )
        )

    # Pods: the veth end, a link route to the node side, default via the node.
    node_by_name = {n.name: n for n in nodes}
    for ep in pod_eps:
        n = node_by_name[ep.pod.node]
        gw_addr = n.pod_cidr.network_address + 1
        # A service mesh (`spec.istio`): the pod's TCP goes through its node's proxy (meshcapture).
        capture = meshcapture.capture_table(plan, ep.pod, ep.ifname) if plan.istio is not None else None
        namespaces.append(
            Namespace(
                ep.namespace,
                "pod",
                addresses=((ep.ifname, IPv4Interface(f"{ep.pod.address}/32")),),
                routes=(
                    Route(IPv4Network(f"{gw_addr}/32"), ep.ifname),
                    Route(IPv4Network("0.0.0.0/0"), ep.ifname, gw_addr, onlink=True),
                ),
                nft=capture,
                owner=ep.pod.ref,
                transparent=capture is not None,
            )
        )
    if not flow_logs:
        namespaces = [replace(ns, nft=nft.without_logs(ns.nft)) if ns.nft is not None else ns for ns in namespaces]
    return LabTopology(
        tag=tag,
        prefix=prefix,
        namespaces=tuple(namespaces),
        wireguard=tuple(wg_devices),
        pods=tuple(pod_eps),
        node_ns=node_ns,
        indices={"node": node_index, "site": site_index, "pod": pod_index},
        site_ns=site_ns,
        site_wan=site_wan,
        inet_address=inet_addr,
        local_ns=local_ns,
        load_balancers=lb_addr,
        local_address=local_addr,
        hubs=hub_links,
        vpn_outside=endpoints,
    )


F = nft.Field
PRIVATE = nft.AnonSet(PRIVATE_RANGES)
ESTABLISHED = nft.Match(F.CT_STATE, (nft.CtState.ESTABLISHED, nft.CtState.RELATED))
DROP = (nft.Counter(), nft.Verdict.DROP)


def _logged_drop(code: str) -> tuple[nft.Expr, ...]:
    """Drop, counted, and logged with `code` for the flow daemon (before the counter: the checks
    read `counter packets N bytes M drop comment …` from nft's listing)."""
    return (nft.Log(codes.GROUP, code), *DROP)


def icmp_errors() -> tuple[nft.Rule, ...]:
    """Log the ICMP errors the kernel sends for the drops its forwarding makes before any forward
    chain sees the packet: fragmentation needed (a packet with DF too big for the next hop) and
    net or host unreachable (no route; a neighbour that never answered ARP). In the output hook,
    which every packet the kernel makes itself crosses; log only: the error goes on to the sender."""
    unreachable = nft.Match(F.ICMP_TYPE, codes.ICMP_DEST_UNREACH)
    no_route = nft.AnonSet((codes.ICMP_NET_UNREACH, codes.ICMP_HOST_UNREACH))
    return (
        nft.Rule((unreachable, nft.Match(F.ICMP_CODE, codes.ICMP_FRAG_NEEDED), nft.Log(codes.GROUP, codes.MTU))),
        nft.Rule((unreachable, nft.Match(F.ICMP_CODE, no_route), nft.Log(codes.GROUP, codes.NO_ROUTE))),
    )


def _inet_nft() -> nft.Table:
    # The internet drops anything from or to a private address: a leak shows up as a
    # counter here and is never forwarded.
    forward = (
        nft.Rule((nft.Match(F.IP_SADDR, PRIVATE), *DROP), "private-source"),
        nft.Rule((nft.Match(F.IP_DADDR, PRIVATE), *DROP), "private-destination"),
    )
    return nft.Table(servicenat.TABLE, (nft.Chain("forward", forward, servicenat.FILTER_FORWARD),))


def _router_nft(
    wan_if: str,
    wan_addr: IPv4Address,
    site_nodes: list[NodePlan],
    prereq: SitePrerequisites | None,
    lb_addr: Mapping[str, IPv4Address],
) -> nft.Table:
    """The cloud's NAT — 1:1 for nodes with a public address, source NAT for the others — and its
    stateful inbound firewall: from the internet only answers and what a prerequisite allows. The
    site's load balancers forward their listeners to the gateways' node ports."""
    from_wan, to_wan = nft.Match(F.IIFNAME, wan_if), nft.Match(F.OIFNAME, wan_if)
    dnat = firewall.load_balancer_dnats(from_wan, prereq, lb_addr)
    snat = []
    for n in site_nodes:
        if n.public_address is not None:
            dnat.append(
                nft.Rule((from_wan, nft.Match(F.IP_DADDR, n.public_address), nft.Nat(nft.NatKind.DNAT, n.address)))
            )
            snat.append(
                nft.Rule((to_wan, nft.Match(F.IP_SADDR, n.address), nft.Nat(nft.NatKind.SNAT, n.public_address)))
            )
    snat.append(nft.Rule((to_wan, nft.Match(F.IP_SADDR, PRIVATE), nft.Nat(nft.NatKind.SNAT, wan_addr))))
    forward = (
        nft.Rule(
            (to_wan, nft.Match(F.IP_DADDR, PRIVATE), *_logged_drop(codes.PRIVATE_TO_INTERNET)), "no-private-to-internet"
        ),
        nft.Rule((from_wan, ESTABLISHED, nft.Verdict.ACCEPT)),
        *firewall.inbound_accepts(wan_if, prereq, lb_addr),
        nft.Rule((from_wan, *_logged_drop(codes.FIREWALL)), "unsolicited-from-internet"),
    )
    local_in = (
        nft.Rule((from_wan, ESTABLISHED, nft.Verdict.ACCEPT)),
        # The site's public address answers ping, as a cloud's public IP does when its firewall allows
        # ICMP: a user outside (`lab exec local -- ping`) tells a site that is there from a closed port.
        # The router itself answers; nothing behind it is reached this way.
        nft.Rule((from_wan, nft.Match(F.ICMP_TYPE, ICMP_ECHO_REQUEST), nft.Verdict.ACCEPT), "ping-router"),
        nft.Rule((from_wan, *_logged_drop(codes.FIREWALL)), "unsolicited-to-router"),
    )
    return nft.Table(
        servicenat.TABLE,
        (
            nft.Chain("prerouting", tuple(dnat), servicenat.NAT_PREROUTING),
            nft.Chain("postrouting", tuple(snat), servicenat.NAT_POSTROUTING),
            nft.Chain("forward", forward, servicenat.FILTER_FORWARD),
            nft.Chain("input", local_in, servicenat.FILTER_INPUT),
            nft.Chain("output", icmp_errors(), servicenat.FILTER_OUTPUT),
        ),
    )


def spoof_comment(pod: PodPlan) -> str:
    """The comment of a pod's anti-spoofing rule, which `crossmesh test` reads its counter by.

    Kubernetes allows a 253-character pod name in a 63-character namespace, so a pod's reference
    can pass nftables' limit: `nft.comment` then cuts it and ends it in a digest of the whole, so
    two long names that share their first 115 characters still differ."""
    return nft.comment(f"anti-spoofing {pod.ref}")


def node_nft(  # noqa: PLR0913 - the parts of a node's table
    plan: Plan,
    node: NodePlan,
    local_pods: list[tuple[int, PodPlan]],
    node_side: IPv4Address,
    unhealthy: frozenset[str],
    prefix: str,
    policy: PolicyIndex | None,
) -> nft.Table:
    """The node's table: ClusterIP and NodePort DNAT (`servicenat.services_table`), anti-spoofing — a pod may
    send only from its own address, as Cilium enforces per endpoint — network policy, and the log
    rules of new connections, drops and the ICMP errors the node sends (`icmp_errors`)."""
    spoof = tuple(
        nft.Rule(
            (
                nft.Match(F.IIFNAME, f"{prefix}-v{j}"),
                nft.Match(F.IP_SADDR, p.address, negate=True),
                *_logged_drop(codes.SPOOF),
            ),
            spoof_comment(p),
        )
        for j, p in local_pods
    )
    extra: tuple[nft.Item, ...] = ()
    l7_rule = None
    if policy is not None:
        addresses = {
            n.name: (n.address, n.pod_cidr.network_address + 1) + ((n.tunnel.address,) if n.tunnel else ())
            for n in plan.nodes
        }
        compiled = compile_policy.compile_node(policy, node.name, addresses)
        if compiled.active:
            extra = (
                *compile_policy.nft_sets(compiled),
                *compile_policy.nft_chains(
                    [f"{prefix}-v{j}" for j, _ in local_pods], [p.address for _, p in local_pods]
                ),
            )
            spoof += (nft.Rule((nft.Jump("netpol"),)),)
            l7_set, l7_rule = compile_policy.nft_l7(compiled)
            if l7_set is not None:
                extra += (l7_set,)
    spoof += _new_connections([f"{prefix}-v{j}" for j, _ in local_pods])
    return servicenat.services_table(
        plan,
        node.cluster,
        [p for _, p in local_pods],
        node_side,
        unhealthy,
        spoof,
        extra,
        l7_rule,
        node=node,
        local_out=icmp_errors(),
    )


def _new_connections(pod_ifaces: list[str]) -> tuple[nft.Rule, ...]:
    """Log each new connection a local pod sends (egress) or receives (ingress), once per end:
    after anti-spoofing and the policy verdict (`netpol` accepts what is established and drops
    what policy denies), so what reaches these rules is forwarded. In the input hook only the
    egress rule can match (no output interface yet)."""
    if not pod_ifaces:
        return ()
    pods = nft.AnonSet(tuple(sorted(pod_ifaces)))
    new = nft.Match(F.CT_STATE, (nft.CtState.NEW,))
    return (
        nft.Rule((new, nft.Match(F.IIFNAME, pods), nft.Log(codes.GROUP, codes.NEW_EGRESS))),
        nft.Rule((new, nft.Match(F.OIFNAME, pods), nft.Log(codes.GROUP, codes.NEW_INGRESS))),
    )
