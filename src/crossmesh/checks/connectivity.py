"""`pod-to-pod/…` and `pod-to-service/…`: every pair class over HTTP and UDP, every Service's
ClusterIP from a pod on every node of its cluster.

Pairs are chosen so that every pair class (same node, same site, cross site same cluster, cross
cluster) is exercised from every pod, without testing all n² pod pairs.
"""

from __future__ import annotations

from collections.abc import Iterable

from crossmesh.checks import ingressclient, probes
from crossmesh.checks.framework import (
    CHECK_PATH,
    Context,
    GatewayView,
    Planned,
    Runner,
    Skips,
    ports,
    register,
    timeout,
)
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.model.plan import ClusterPlan, PodPlan
from crossmesh.plan.ingress import gateway_of
from crossmesh.services.backends import backend_sets

PAIR_CLASSES = ("same-node", "same-site", "cross-site", "cross-cluster")


def pair_class(ctx: Context, a: PodPlan, b: PodPlan) -> str:
    if a.cluster != b.cluster:
        return "cross-cluster"
    if a.node == b.node:
        return "same-node"
    if ctx.site_of(a) == ctx.site_of(b):
        return "same-site"
    return "cross-site"


@register(20)
def pod_to_pod(ctx: Context) -> list[Planned]:
    pods = ctx.pods()
    out = []
    skips = Skips(Kind.POD_TO_POD)
    stated = {c.name: _stated_classes(c) for c in ctx.plan.clusters}
    for i, src in enumerate(pods):
        for cls in PAIR_CLASSES:
            for proto in ("TCP", "UDP"):
                kind = "http" if proto == "TCP" else "udp"
                # A gateway pod answers with HAProxy, not the echo app: `ingress/*` checks it from outside.
                candidates = [
                    d
                    for d in pods
                    if d.ref != src.ref and pair_class(ctx, src, d) == cls and ports(d, proto) and not gateway_of(d)
                ]
                if not candidates:
                    if cls in stated[src.cluster]:  # a class the plan does not state is no gap
                        skips.add(f"{cls}/{kind}: no other pod of this pair class with a {proto} port", src.ref)
                    continue
                dst = candidates[i % len(candidates)]  # rotate so that sources spread over destinations
                port = ports(dst, proto)[0]
                if not ctx.connected(src, dst):
                    expected = Result.TIMEOUT  # the plan's datapath does not connect them (Flannel across clusters)
                elif proto == "TCP":
                    expected = ctx.expect_http(src, dst, port)
                else:
                    expected = Result.OK if ctx.allowed(src, dst, port, proto) else Result.TIMEOUT
                check = Check(
                    name=f"pod-to-pod/{cls}/{kind}: {src.ref} -> {dst.ref}:{port}",
                    kind=Kind.POD_TO_POD,
                    source=src.ref,
                    target=dst.ref,
                    port=f"{port}/{proto}",
                    expected=expected,
                )
                runner = http_runner(ctx, src, dst, port) if proto == "TCP" else udp_runner(ctx, src, dst, port)
                out.append(Planned(check, runner))
    return out + skips.planned()


def _stated_classes(cluster: ClusterPlan) -> set[str]:
    """The pair classes the plan's datapath states for pods of `cluster` (plan/datapath.py)."""
    return {c.name for c in cluster.datapath.classes} if cluster.datapath else set(PAIR_CLASSES)


def http_runner(
    ctx: Context, src: PodPlan, dst: PodPlan, port: int, method: str = "GET", path: str = CHECK_PATH
) -> Runner:
    view = ctx.gateway_view(dst)
    if view is not None:  # its listeners answer: TLS or HTTP as the Gateway declares them
        return listener_runner(ctx.ep(src).namespace, str(dst.address), port, view)

    def run(check: Check) -> None:
        result, answer, detail = probes.http(
            ctx.ep(src).namespace, str(dst.address), port, path=path, method=method, timeout=timeout(check)
        )
        seen = (answer or {}).get("pod"), (answer or {}).get("clientIP")
        if result is Result.OK and seen != (dst.name, str(src.address)):
            # The answer must come from the planned pod and see the client's own address: no NAT inside the mesh.
            result = Result.WRONG_ANSWER
            detail = f"answered by {seen[0]} seeing client {seen[1]}"
        check.actual, check.detail = result, detail

    return run


def listener_runner(ns: str, ip: str, port: int, view: GatewayView, listener_port: int | None = None) -> Runner:
    """A request to a gateway pod (or its Service, or a node port to it: `listener_port` the Service
    port): its listener answers in its protocol (`ingressclient.listener_answers`)."""
    listeners = [li for li in view.gateway.listeners if li.port == (listener_port or port)]

    def run(check: Check) -> None:
        got = ingressclient.listener_answers(ns, ip, port, listeners, timeout=timeout(check))
        check.actual, check.detail = got.result, got.detail

    return run


def udp_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int) -> Runner:
    def run(check: Check) -> None:
        check.actual, check.detail = probes.udp_echo(
            ctx.ep(src).namespace, str(dst.address), port, timeout=timeout(check)
        )

    return run


@register(30)
def pod_to_service(ctx: Context) -> list[Planned]:
    out = []
    skips = Skips(Kind.POD_TO_SERVICE)
    pods = {p.ref: p for p in ctx.plan.pods()}
    for cluster in ctx.plan.clusters:
        clients = _one_pod_per_node(cluster.pods)
        for svc in cluster.services:
            if svc.cluster_ip is None:
                continue  # a headless Service has no ClusterIP: `headless/dns` checks its name
            for bs in backend_sets(ctx.plan, svc):
                tier = next((t for t in bs.tiers if t), ())
                if bs.protocol != "TCP":
                    skips.add(f"{bs.protocol} service port: the check asks over HTTP", f"{svc.ref} {bs.port}")
                    continue
                if not tier:
                    skips.add("no backend pod", f"{svc.ref} {bs.port}")
                    continue
                allowed = {b.pod for b in tier}
                for src in clients:
                    # Each backend's answer as policy has it: an answer, a drop, a proxy's 403 or reset.
                    outcomes = {ctx.expect_http(src, pods[b.pod], b.port) for b in tier}
                    if len(outcomes) > 1:
                        # The answer would be a coin toss: allowed by one backend, refused by another.
                        skips.add("policy allows some backends and not others", f"{src.ref} -> {svc.ref}")
                        continue
                    (outcome,) = outcomes
                    check = Check(
                        name=f"pod-to-service/http: {src.ref} -> {svc.ref} ({svc.cluster_ip}:{bs.port})",
                        kind=Kind.POD_TO_SERVICE,
                        source=src.ref,
                        target=svc.ref,
                        port=f"{bs.port}/TCP",
                        expected=outcome,
                    )
                    view = ctx.gateway_view(pods[tier[0].pod])
                    runner = (
                        listener_runner(ctx.ep(src).namespace, str(svc.cluster_ip), bs.port, view)
                        if view is not None
                        else _service_runner(ctx, src, str(svc.cluster_ip), bs.port, allowed)
                    )
                    out.append(Planned(check, runner))
    return out + skips.planned()


def _one_pod_per_node(pods: Iterable[PodPlan]) -> list[PodPlan]:
    seen: dict[str, PodPlan] = {}
    for p in sorted(pods, key=lambda p: p.ref):
        seen.setdefault(p.node, p)
    return list(seen.values())


def _service_runner(ctx: Context, src: PodPlan, ip: str, port: int, allowed: set[str]) -> Runner:
    def run(check: Check) -> None:
        result, answer, detail = probes.http(ctx.ep(src).namespace, ip, port, timeout=timeout(check))
        if result is Result.OK and answer is not None:
            ref = f"{answer.get('cluster')}/{answer.get('namespace')}/{answer.get('pod')}"
            if ref not in allowed:
                result, detail = Result.WRONG_ANSWER, f"answered by {ref}, not a backend"
            else:
                detail = f"answered by {ref}"
        check.actual, check.detail = result, detail

    return run
