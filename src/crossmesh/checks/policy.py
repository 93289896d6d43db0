"""`policy/…` and `l7/…`: the data plane against the policy evaluator (`policy trace`) — every
pod pair and declared port allowed or dropped as it says, and HTTP rules answered 200 or 403."""

from __future__ import annotations

import re

from crossmesh.checks.connectivity import http_runner, udp_runner
from crossmesh.checks.framework import Context, Planned, Runner, Skips, ports, register
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.plan.ingress import gateway_of
from crossmesh.policy.evaluator import Verdict

MAX_POLICY_CHECKS = 2000


@register(110)
def policy_matrix(ctx: Context) -> list[Planned]:
    """Differential check: for every pod pair and every declared port, the data plane does
    what the policy evaluator (`policy trace`) says — allowed connects, denied is dropped."""
    if ctx.policy is None or not ctx.policy.policies:
        return []  # no policy: pod-to-pod already expects every flow through
    out: list[Planned] = []
    skips = Skips(Kind.POLICY)
    pods = ctx.pods()
    for src in pods:
        for dst in pods:
            if src.ref == dst.ref:
                continue
            for port, proto, _ in dst.ports:
                case = f"{src.ref} -> {dst.ref}:{port}/{proto}"
                if proto not in ("TCP", "UDP"):
                    skips.add(f"{proto} port: the probes speak TCP and UDP", case)
                    continue
                if len(out) >= MAX_POLICY_CHECKS:
                    skips.add(f"more than {MAX_POLICY_CHECKS} flows: the rest are left to `policy trace`", case)
                    continue
                verdict = ctx.verdict(src, dst, port, proto)
                assert verdict is not None  # noqa: S101 - policies exist
                if not ctx.connected(src, dst):
                    expected = Result.TIMEOUT  # the plan's datapath does not connect them (Flannel across clusters)
                elif proto == "TCP":
                    expected = ctx.expect_http(src, dst, port)
                else:
                    expected = Result.OK if verdict.allowed else Result.TIMEOUT
                word = {Result.OK: "allowed", Result.FORBIDDEN: "http-403"}.get(expected, "denied")
                check = Check(
                    name=f"policy/{word}: {src.ref} -> {dst.ref}:{port}/{proto}",
                    kind=Kind.POLICY,
                    source=src.ref,
                    target=dst.ref,
                    port=f"{port}/{proto}",
                    expected=expected,
                )
                runner = http_runner(ctx, src, dst, port) if proto == "TCP" else udp_runner(ctx, src, dst, port)
                out.append(Planned(check, _explained(runner, verdict)))
    return out + skips.planned()


@register(120)
def l7(ctx: Context) -> list[Planned]:
    """HTTP rules: for every flow they filter, the requests their rules name get through
    (200) and others are refused by the L7 proxy with 403, as the evaluator says."""
    if ctx.policy is None or not ctx.policy.policies:
        return []
    out: list[Planned] = []
    pods = ctx.pods()
    for dst in pods:
        if gateway_of(dst):
            continue  # HAProxy's TLS listener: an HTTP rule there is not the gateway's to answer
        for port in ports(dst, "TCP"):
            for src in pods:
                if src.ref == dst.ref:
                    continue
                v = ctx.verdict(src, dst, port, "TCP")
                if v is None or not v.allowed or not (v.ingress.http_rules or v.egress.http_rules):
                    continue  # no HTTP rule filters this flow: policy_matrix checks it
                requests = {("POST", "/crossmesh-admin"), ("DELETE", "/")}
                for _rule, h in (*v.egress.http_rules, *v.ingress.http_rules):
                    method = h.method if h.method and h.method.isalpha() else "GET"
                    path = h.url_path if h.url_path and re.fullmatch(r"[\w/.-]*", h.url_path) else "/"
                    requests.add((method, path))
                for method, path in sorted(requests):
                    expected = ctx.expect_http(src, dst, port, method, path)
                    check = Check(
                        name=f"l7/{method} {path}: {src.ref} -> {dst.ref}:{port}",
                        kind=Kind.L7,
                        source=src.ref,
                        target=dst.ref,
                        port=f"{port}/TCP",
                        expected=expected,
                    )
                    out.append(Planned(check, http_runner(ctx, src, dst, port, method, path)))
    return out


def _explained(runner: Runner, verdict: Verdict) -> Runner:
    def run(check: Check) -> None:
        runner(check)
        if not check.passed:
            check.detail = (
                f"data plane: {check.actual.value} ({check.detail}); policy: {verdict.verdict} — "
                f"egress: {verdict.egress.message}; ingress: {verdict.ingress.message}"
            )
        else:
            check.detail = verdict.egress.message if not verdict.egress.allowed else verdict.ingress.message

    return run
