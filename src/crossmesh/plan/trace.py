"""The path a packet takes from a pod to a pod or service, hop by hop, from the plan alone.

In the spirit of seed 001's 12-step request flow: pod → veth → node route →
VXLAN or WireGuard (peer, endpoint, through which NAT), or a hub's IPsec tunnel
(plan/hubtrace.py) → remote node → pod. Each hop names the namespace role and
device that carries it, so the lab can confirm it with counters, and the seed's
step it corresponds to (`Hop.seed`; 0: none).

A destination `node/NAME` with a port is that node's NodePort: the service NAT
translates it to a backend pod (seed 001's step 9).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from crossmesh.model.plan import NodePlan, Plan, PodPlan, Route, RouteVia
from crossmesh.plan import hubtrace, outside
from crossmesh.services.backends import backend_sets

MAX_HOPS = 16


class TraceError(ValueError):
    """The trace cannot be computed (unknown pod or service, no route)."""


@dataclass(frozen=True, slots=True)
class Hop:
    step: int
    where: str  # pod / node name
    action: str  # what happens here, in words
    device: str  # logical device: veth, vxlan, wireguard, site, service, nat
    node: str  # node whose namespace holds the device ("" for the internet)
    peer: str = ""  # WireGuard peer or VXLAN neighbour
    verdict: str = "forwarded"
    details: tuple[str, ...] = ()  # further lines under the hop (a gateway's reasons for its rule)
    seed: int = 0  # the step of seed 001's 12-step flow this hop is (0: none)
    key: str = ""  # what the lab's counter of this hop is found by (a NodePort rule: "SERVICE PORT/PROTO")


@dataclass(frozen=True, slots=True)
class Trace:
    source: str
    target: str
    port: int
    protocol: str
    destination: IPv4Address
    backend: str  # the pod that answers
    hops: tuple[Hop, ...]
    delivered_port: int = 0  # the port the pod receives on (a service's targetPort); 0: `port`
    headless: bool = False  # a headless Service: the client connects to `destination` itself
    sent_to: str = ""  # ADDRESS:PORT the client sends to when it is not a pod or a ClusterIP (a node port)

    @property
    def delivery(self) -> Hop:
        """The hop that delivers the request to its pod (after it, through a hub, the answer's way back)."""
        return next((h for h in self.hops[1:] if h.device == "veth"), self.hops[-1])


def _pod(plan: Plan, ref: str) -> PodPlan:
    for p in plan.pods():
        if p.ref == ref:
            return p
    raise TraceError(f"no pod {ref} — pods are CLUSTER/NAMESPACE/POD")


def _route(node: NodePlan, dst: IPv4Address) -> Route | None:
    best = None
    for r in node.all_routes():
        if dst in r.dst and (best is None or r.dst.prefixlen > best.dst.prefixlen):
            best = r
    return best


AddHop = Callable[..., None]  # add(where, action, device, node, peer="", seed=0, key="")
NODE_PREFIX = "node/"  # `--to node/NAME`: a node port on that node


def trace(  # noqa: PLR0913
    plan: Plan,
    source: str,
    target: str,
    port: int,
    protocol: str,
    *,
    backend: str | None = None,
    hub: hubtrace.HubPath | None = None,
    identities: Mapping[str, str] | None = None,
) -> Trace:
    """Hops from pod `source` to pod or service `target`, or to a node port (`node/NAME`); for a
    service, through `backend` when given (the pod that actually answered), else through the first
    backend of the tier. From `local`, the client outside, the path ends on the internet
    (`_from_outside`). `hub`: which tunnel of a VPN connection carries the request and the reply, and
    the tunnels' outside addresses (the active tunnel and AWS's words without it). `identities`: pod →
    SPIFFE id, given when the mesh proxies carry the request in mTLS (seed 001's steps 2 and 10)."""
    if source == outside.LOCAL:
        return _from_outside(plan, source, target, port, protocol)
    src = _pod(plan, source)
    hops: list[Hop] = []
    path = hub if hub is not None else hubtrace.HubPath()

    def add(where: str, action: str, device: str, node: str, peer: str = "", seed: int = 0, key: str = "") -> None:  # noqa: PLR0913
        hops.append(Hop(len(hops) + 1, where, action, device, node, peer, seed=seed, key=key))

    node = plan.node(src.node)
    add(src.ref, f"leaves pod {src.name} ({src.address}) on its veth", "veth", node.name, seed=1)
    target_pod, delivered, headless, sent_to = _target(plan, src, target, port, protocol, node, add, backend)
    dst = target_pod.address
    # The mesh proxy captures what is sent to a pod or a ClusterIP; a node port is a node's address, outside
    # the mesh: its connection leaves unwrapped (seed 001's NodePort clients hold no certificate).
    mtls = identities is not None and src.ref in identities and target_pod.ref in identities and not sent_to
    if mtls and identities is not None:  # the pod's own proxy, before anything of the node's
        hops.insert(
            1,
            Hop(
                2,
                src.ref,
                f"mesh proxy (outbound capture) opens mTLS as {identities[src.ref]}; it accepts only "
                f"{identities[target_pod.ref]}",
                "mesh",
                node.name,
                seed=2,
            ),
        )
        hops[2:] = [replace(h, step=h.step + 1) for h in hops[2:]]
    for _ in range(MAX_HOPS):
        if node.name == target_pod.node:
            if mtls and identities is not None:
                add(
                    target_pod.ref,
                    f"mesh proxy (inbound) of pod {target_pod.name} verifies the client certificate "
                    f"{identities[src.ref]}, ends mTLS",
                    "mesh-in",
                    node.name,
                    seed=10,
                )
            add(
                node.name,
                f"delivered on the veth of pod {target_pod.name} ({dst}:{delivered}/{protocol})",
                "veth",
                node.name,
                seed=10,
            )
            if path.crossed:
                _answer(plan, src, target_pod, path, add)
            return Trace(source, target, port, protocol, dst, target_pod.ref, tuple(hops), delivered, headless, sent_to)
        route = _route(node, dst)
        if route is None:
            raise TraceError(f"node {node.name} has no route to {dst}")
        nxt = plan.node(route.peer)
        if route.via is RouteVia.VXLAN:
            where = f"in site {node.site}" if nxt.site == node.site else f"in site {nxt.site}, by its route"
            add(
                node.name,
                f"VXLAN (VNI 1, UDP 8472) to node {nxt.name} at {nxt.address} {where}",
                "vxlan",
                node.name,
                nxt.name,
                seed=3,
            )
            _underlay(plan, node, nxt, add, path)
        else:
            _step(plan, node, nxt, route.via, add)
        node = nxt
    raise TraceError(f"no path from {source} to {target} within {MAX_HOPS} hops")


def _from_outside(plan: Plan, source: str, target: str, port: int, protocol: str) -> Trace:
    """The laptop's request to a pod or service: its default route takes it to the internet, which
    has no route to a pod's or a ClusterIP's private address — the mesh is reached from outside only
    at a site's public address, where an ingress gateway publishes what it serves."""
    pods = {p.ref: p for p in plan.pods()}
    parts = target.split("/")
    if target in pods:
        pod, dst = pods[target], pods[target].address
    elif len(parts) == 3 and parts[0] in {c.name for c in plan.clusters}:
        svc = next((s for s in plan.cluster(parts[0]).services if s.namespace == parts[1] and s.name == parts[2]), None)
        if svc is None:
            raise TraceError(f"{target} is neither a pod (CLUSTER/NS/POD) nor a service (CLUSTER/NS/SERVICE)")
        bs = next((b for b in backend_sets(plan, svc) if b.port == port and b.protocol == protocol), None)
        tier = next((t for t in bs.tiers if t), ()) if bs is not None else ()
        if not tier:
            raise TraceError(f"service {svc.ref} has no backends on port {port}/{protocol}")
        pod = pods[tier[0].pod]
        dst = svc.cluster_ip if svc.cluster_ip is not None else pod.address
    else:
        raise TraceError(
            f"from {outside.LOCAL}, name the destination as a pod CLUSTER/NS/POD or a service CLUSTER/NS/SERVICE "
            f"(the client outside is in no cluster): {target}"
        )
    addr = outside.local_address(plan)
    hops = (
        Hop(1, outside.LOCAL, f"leaves the client outside ({addr}) by its default route to the internet", "local", ""),
        Hop(
            2,
            "internet",
            f"no route to {dst}: a private address is not on the internet — from outside, the mesh is reached "
            "only at a site's public address (an ingress gateway publishes services there)",
            "internet",
            "",
            verdict="no route",
        ),
    )
    return Trace(source, target, port, protocol, dst, pod.ref, hops)


def _answer(plan: Plan, src: PodPlan, answering: PodPlan, path: hubtrace.HubPath, add: AddHop) -> None:
    """Seed 001's steps 11 and 12, for a request that crossed a hub: the pod answers, and the answer
    takes the same path back (its tunnel chosen by the hub and the customer gateway anew)."""
    add(answering.ref, f"pod {answering.name} answers", "answer", answering.node, seed=11)
    hubtrace.reply(plan, path, add)
    add(src.ref, f"the answer arrives on the veth of pod {src.name} ({src.address})", "veth-back", src.node, seed=12)


def _underlay(plan: Plan, node: NodePlan, target: NodePlan, add: AddHop, path: hubtrace.HubPath) -> None:
    """The hops of a VXLAN packet from `node` to node `target`'s address: the site network, or
    across sites through WireGuard (the node's own tunnel, or its site's gateway), or through the
    hub that joins the two sites over IPsec."""
    start = node
    for _ in range(MAX_HOPS):
        if node.site == target.site:
            if node is not start and node.name != target.name:  # a remote gateway hands it on
                _step(plan, node, target, RouteVia.SITE, add)
            return
        if hubtrace.ipsec_pair(plan, node.site, target.site) is not None:
            try:
                hubtrace.cross(plan, node, target, add, path)
            except LookupError as err:
                raise TraceError(str(err)) from None
            return
        route = _route(node, target.address)
        if route is None:
            raise TraceError(f"node {node.name} has no route to node {target.name} ({target.address})")
        nxt = plan.node(route.peer)
        _step(plan, node, nxt, route.via, add)
        node = nxt
    raise TraceError(f"no path from node {node.name} to node {target.name} within {MAX_HOPS} hops")


def _step(plan: Plan, node: NodePlan, nxt: NodePlan, via: RouteVia, add: AddHop) -> None:
    """One hop from `node` to `nxt`: on the site network, to the site's gateway, or through WireGuard."""
    if via is RouteVia.SITE:
        add(
            node.name,
            f"routed on site network {node.site} to node {nxt.name} ({nxt.address})",
            "site",
            node.name,
            nxt.name,
        )
        return
    if via is RouteVia.GATEWAY:
        add(
            node.name,
            f"to site {node.site}'s WireGuard gateway {nxt.name} ({nxt.address})",
            "site",
            node.name,
            nxt.name,
        )
        return
    assert node.tunnel is not None  # noqa: S101 - a WireGuard route implies a tunnel
    peer = next(p for p in node.tunnel.peers if p.node == nxt.name)
    nat_out = (
        f"1:1 NAT {node.address} → {node.public_address}"
        if node.public_address
        else "source NAT to the site router's address"
    )
    endpoint = peer.endpoint_text or "the address it last dialled from (peer behind NAT)"
    add(
        node.name,
        f"WireGuard {node.tunnel.interface} encrypts for peer {nxt.name}, endpoint {endpoint}",
        "wireguard",
        node.name,
        nxt.name,
    )
    add(f"router {node.site}", f"leaves site {node.site} through its NAT ({nat_out})", "nat", "")
    nat_in = (
        f"1:1 NAT {nxt.public_address} → {nxt.address}"
        if nxt.public_address
        else "connection tracking of the tunnel its node dialled"
    )
    add(f"router {nxt.site}", f"enters site {nxt.site} ({nat_in}) as encrypted UDP {plan.listen_port}", "nat", "")
    add(nxt.name, f"WireGuard decrypts from {node.name}, checks allowed IPs", "wireguard", nxt.name, node.name)


def _target(  # noqa: PLR0913
    plan: Plan, src: PodPlan, target: str, port: int, protocol: str, node: NodePlan, add: AddHop, backend: str | None
) -> tuple[PodPlan, int, bool, str]:
    """The pod the request reaches, the port it arrives on, whether it went through a headless
    Service's name (no DNAT: the client resolves the name to a pod and connects to it), and the
    ADDRESS:PORT sent to when that is a node port."""
    pods = {p.ref: p for p in plan.pods()}
    if target in pods:
        return pods[target], port, False, ""
    if target.startswith(NODE_PREFIX):
        return _node_port(plan, src, target.removeprefix(NODE_PREFIX), port, protocol, node, add, backend)
    parts = target.split("/")
    if len(parts) not in (2, 3):
        raise TraceError(f"{target} is neither CLUSTER/NS/POD, CLUSTER/NS/SERVICE nor NS/SERVICE")
    cluster = src.cluster if len(parts) == 2 else parts[0]
    ns, name = parts[-2], parts[-1]
    try:
        svc = next(s for s in plan.cluster(cluster).services if s.namespace == ns and s.name == name)
    except (StopIteration, KeyError):
        raise TraceError(
            f"{target} is neither a pod (CLUSTER/NS/POD) nor a service (CLUSTER/NS/SERVICE or NS/SERVICE)"
        ) from None
    bs = next((b for b in backend_sets(plan, svc) if b.port == port and b.protocol == protocol), None)
    if bs is None:
        raise TraceError(f"service {svc.ref} has no port {port}/{protocol}")
    tier = next((t for t in bs.tiers if t), ())
    if not tier:
        raise TraceError(f"service {svc.ref} has no backends")
    chosen = next((b for b in tier if b.pod == backend), tier[0])
    if svc.cluster_ip is None:
        pool = sorted({b.address for b in bs.all}, key=lambda a: IPv4Address(a))
        add(
            src.ref,
            f"headless service {svc.ref} (no ClusterIP): its name resolves to its ready pods "
            f"({', '.join(pool)}); connects to {chosen.pod} ({chosen.address}:{chosen.port}) itself",
            "service",
            node.name,
        )
        return pods[chosen.pod], chosen.port, True, ""
    add(
        node.name,
        f"service {svc.ref} {svc.cluster_ip}:{port} DNAT to one of {len(tier)} backends: "
        f"{chosen.pod} ({chosen.address}:{chosen.port})",
        "service",
        node.name,
        seed=9,
    )
    return pods[chosen.pod], chosen.port, False, ""


def _node_port(  # noqa: PLR0913
    plan: Plan, src: PodPlan, name: str, port: int, protocol: str, node: NodePlan, add: AddHop, backend: str | None
) -> tuple[PodPlan, int, bool, str]:
    """`node/NAME` port P: the NodePort P of a service of NAME's cluster. kube-proxy's rule answers
    every address of every node of the cluster; a pod's connection to another node's node port is
    translated on the pod's own node (drivers/lab/servicenat.py, as Cilium's socket load balancer
    does), so the request then travels pod to pod — for seed 001's demo-app, across the hub."""
    known = {n.name: n for n in plan.nodes}
    if name not in known:
        raise TraceError(f"node/{name}: no node {name} — nodes: {', '.join(sorted(known))}")
    target = known[name]
    if target.cluster != src.cluster:
        raise TraceError(
            f"node/{name} is in cluster {target.cluster}, the source in {src.cluster}: a node port is traced "
            "from a pod of the node's own cluster"
        )
    found = [
        (s, bs)
        for s in plan.cluster(target.cluster).services
        for bs in backend_sets(plan, s)
        if s.node_port(bs.port, bs.protocol) == port and bs.protocol == protocol
    ]
    if not found:
        served = sorted(
            f"{n}/{proto} ({s.ref})" for s in plan.cluster(target.cluster).services for _, proto, n in s.node_ports
        )
        raise TraceError(
            f"node/{name}: no service of cluster {target.cluster} has node port {port}/{protocol} "
            f"(node ports: {', '.join(served) or 'none'})"
        )
    svc, bs = found[0]
    tier = next((t for t in bs.tiers if t), ())
    if not tier:
        raise TraceError(f"service {svc.ref} (node port {port}/{protocol}) has no backends")
    chosen = next((b for b in tier if b.pod == backend), tier[0])
    where = "here, on the client's node (a pod's connection to a node port is translated where it starts)"
    add(
        node.name,
        f"kube-proxy: NodePort {port}/{protocol} of node {name} ({target.address}) is service {svc.ref}: DNAT "
        f"to one of {len(tier)} backends, {chosen.pod} ({chosen.address}:{chosen.port}) — {where}",
        "nodeport-nat",
        node.name,
        seed=9,
        key=f"{svc.ref} {port}/{protocol}",
    )
    return plan_pod(plan, chosen.pod), chosen.port, False, f"{target.address}:{port}"


def plan_pod(plan: Plan, ref: str) -> PodPlan:
    return _pod(plan, ref)
