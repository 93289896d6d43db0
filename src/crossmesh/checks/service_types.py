"""Checks of the Service types beyond ClusterIP, run against the lab:

- `nodeport/<from>/<http|udp>`: every node of the cluster answers `<node address>:<nodePort>`
  and the request reaches a backend of the Service (the first tier that has one) — also on a
  node without a local backend, and with backends in another site. Asked from a pod of the
  cluster on another node (`from-pod`), from another node of the cluster (`from-node`) and from
  the node's site network (`from-site`, the site router: a machine of the VPC).
- `headless/dns`: a headless Service (`clusterIP: None`) has no VIP; its name, asked from a pod
  of its cluster at the pod's resolver, answers exactly the addresses of its ready pods.

A flow some policy on its way would deny is not checked here (the policy checks cover
policies): a NodePort request crosses the client's egress to the node, then — translated to
the node's address — the backend's ingress.
"""

from __future__ import annotations

from crossmesh.checks import probes
from crossmesh.checks.connectivity import listener_runner
from crossmesh.checks.framework import CHECK_PATH, Context, Planned, Runner, Skips, register
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab.servicenat import backend_key
from crossmesh.model.plan import NodePlan, PodPlan
from crossmesh.policy.endpoints import node_endpoint, pod_endpoint, world_endpoint
from crossmesh.policy.evaluator import evaluate
from crossmesh.policy.model import Endpoint, EndpointKind, HttpRequest
from crossmesh.services.backends import Backend, backend_sets


def _passes(ctx: Context, src: Endpoint, dst: Endpoint, port: int, protocol: str) -> bool:
    if ctx.policy is None or not ctx.policy.policies:
        return True
    request = HttpRequest("GET", CHECK_PATH, (("Host", "node-port"),)) if protocol == "TCP" else None
    return evaluate(ctx.policy, src, dst, port, protocol, request).allowed


def _clear(ctx: Context, src: Endpoint, node: NodePlan, node_port: int, tier: tuple[Backend, ...], proto: str) -> bool:
    """Whether no policy stands in the way: the client to the node, the node to every backend."""
    if ctx.policy is None or not ctx.policy.policies:
        return True
    index = ctx.policy
    to_node = src.kind is EndpointKind.NODE or _passes(ctx, src, index.endpoints[node.name], node_port, proto)
    return to_node and all(
        _passes(ctx, index.endpoints[node.name], index.endpoints[b.pod], b.port, proto) for b in tier
    )


@register(40)
def node_ports(ctx: Context) -> list[Planned]:
    plan = ctx.plan
    out: list[Planned] = []
    skips = Skips(Kind.NODEPORT)
    for cluster in plan.clusters:
        nodes = [plan.node(n) for n in sorted(cluster.nodes)]
        pods = sorted(cluster.pods, key=lambda p: p.ref)
        for svc in cluster.services:
            for bs in backend_sets(plan, svc):
                node_port = svc.node_port(bs.port, bs.protocol)
                tier = next((t for t in bs.tiers if t), ())
                if node_port is None:
                    continue  # not a NodePort / LoadBalancer port
                if not tier or bs.protocol not in ("TCP", "UDP"):
                    why = "no backend pod" if not tier else f"{bs.protocol} node port: the probes speak TCP and UDP"
                    skips.add(why, f"{svc.ref} {node_port}/{bs.protocol}")
                    continue
                for i, node in enumerate(nodes):
                    origins: list[tuple[str, str, str, Endpoint]] = []  # (label, who, namespace, policy source)
                    others = [p for p in pods if p.node != node.name] or pods
                    if others:
                        pod = others[i % len(others)]
                        origins.append(("from-pod", pod.ref, ctx.ep(pod).namespace, _pod_endpoint(ctx, pod)))
                    if len(nodes) > 1:
                        other = nodes[(i + 1) % len(nodes)]
                        origins.append(
                            ("from-node", other.name, ctx.topo.node_ns[other.name], _node_endpoint(ctx, other))
                        )
                    router = str(plan.site(node.site).network.network_address + 1)
                    origins.append(
                        (
                            "from-site",
                            f"site {node.site} ({router})",
                            ctx.topo.site_ns[node.site],
                            world_endpoint(router),
                        )
                    )
                    for label, who, ns, source in origins:
                        if not _clear(ctx, source, node, node_port, tier, bs.protocol):
                            skips.add(
                                "a policy on the way decides this flow (the policy checks cover policies)",
                                f"{label}: {who} -> {node.name}:{node_port} for {svc.ref}",
                            )
                            continue
                        kind = "http" if bs.protocol == "TCP" else "udp"
                        check = Check(
                            name=f"nodeport/{label}/{kind}: {who} -> {node.name} ({node.address}:{node_port}) "
                            f"for {svc.ref} port {bs.port}",
                            kind=Kind.NODEPORT,
                            source=who,
                            target=svc.ref,
                            port=f"{node_port}/{bs.protocol}",
                            expected=Result.OK,
                            extra={"node": node.name, "nodePort": node_port},
                        )
                        view = ctx.gateway_view(ctx.topo.pod(tier[0].pod).pod)
                        runner = (
                            listener_runner(ns, str(node.address), node_port, view, bs.port)
                            if view is not None and bs.protocol == "TCP"
                            else _runner(ns, str(node.address), node_port, bs.protocol, tier)
                        )
                        out.append(Planned(check, runner))
    return out + skips.planned()


def _pod_endpoint(ctx: Context, pod: PodPlan) -> Endpoint:
    if ctx.policy is not None and pod.ref in ctx.policy.endpoints:
        return ctx.policy.endpoints[pod.ref]
    return pod_endpoint(cluster=pod.cluster, namespace=pod.namespace, name=pod.name, labels=dict(pod.labels))


def _node_endpoint(ctx: Context, node: NodePlan) -> Endpoint:
    if ctx.policy is not None and node.name in ctx.policy.endpoints:
        return ctx.policy.endpoints[node.name]
    return node_endpoint(name=node.name, cluster=node.cluster, addresses=(node.address,))


def _runner(ns: str, ip: str, port: int, protocol: str, tier: tuple[Backend, ...]) -> Runner:
    backends = {b.pod for b in tier}

    def run(check: Check) -> None:
        if protocol == "UDP":
            check.actual, check.detail = probes.udp_echo(ns, ip, port)
            if check.actual is Result.OK:
                check.detail = "echoed by a backend"
            return
        result, answer, detail = probes.http(ns, ip, port, path="/crossmesh-nodeport-check")
        if result is Result.OK and answer is not None:
            ref = f"{answer.get('cluster')}/{answer.get('namespace')}/{answer.get('pod')}"
            if ref in backends:
                detail = f"answered by {ref} (seeing client {answer.get('clientIP')})"
            else:
                result, detail = Result.WRONG_ANSWER, f"answered by {ref}, not a backend"
        check.actual, check.detail = result, detail

    return run


@register(50)
def headless(ctx: Context) -> list[Planned]:
    """From one pod of the cluster per headless Service: the name answers the ready pods."""
    plan = ctx.plan
    out: list[Planned] = []
    skips = Skips(Kind.HEADLESS)
    for cluster in plan.clusters:
        pods = sorted(cluster.pods, key=lambda p: p.ref)
        for svc in cluster.services:
            if svc.cluster_ip is not None:
                continue
            if not pods:
                skips.add("no pod in the cluster to ask its resolver", svc.ref)
                continue
            client = pods[0]
            server = str(plan.node(client.node).pod_cidr.network_address + 1)  # the pod's resolver
            name = f"{svc.name}.{svc.namespace}.svc.cluster.local"
            own = tuple(
                (b.address, backend_key(b.pod, b.address, b.port))
                for bs in backend_sets(plan, svc)
                for b in bs.all
                if b.cluster == svc.cluster
            )
            check = Check(
                name=f"headless/dns: {client.ref} -> {name} (no ClusterIP)",
                kind=Kind.HEADLESS,
                source=client.ref,
                target=svc.ref,
                port="53/UDP",
                expected=Result.OK,
            )
            out.append(Planned(check, _dns_runner(ctx.ep(client).namespace, server, name, own, ctx.state)))
    return out + skips.planned()


def _dns_runner(
    ns: str, server: str, name: str, entries: tuple[tuple[str, str], ...], state: labs.LabState | None
) -> Runner:
    def run(check: Check) -> None:
        down = labs.unhealthy_backends(state.tag) if state is not None else frozenset()
        every = {a for a, _ in entries}
        expected = every - {a for a, k in entries if k in down}
        result, answers, detail = probes.dns_a(ns, server, name)
        if not expected and result is Result.REFUSED:
            check.actual, check.detail = Result.OK, "NXDOMAIN: no ready pod"
            return
        if result is not Result.OK:
            check.actual, check.detail = result, detail
            return
        ok = set(answers) == expected and len(answers) == len(expected)
        check.actual = Result.OK if ok else Result.WRONG_ANSWER
        check.detail = f"{', '.join(answers) or 'no address'}" + (
            f" — {len(expected)} ready of {len(every)} pods" if ok else f", expected {', '.join(sorted(expected))}"
        )

    return run
