"""`observe/…`: what the lab's flow records say against what the checks did (issue 14).

- `observe/drop-attributed`: every probe the policy matrix expects dropped is sent again and must
  show up, from the lab's flow relay, as a DROPPED flow of that source, destination and port,
  naming the same policy as `policy trace` (the evaluator);
- `observe/allowed-flow-recorded`: for one allowed flow of every pair of clusters (and of sites
  within a cluster), a FORWARDED record on the sending node and one on the receiving node.

The flows come from the kernel (nftables log rules → NFLOG → the lab's flow daemon), not from
the checks' own knowledge: a check passes only when the record is there.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from crossmesh.checks import probes
from crossmesh.checks.framework import Context, Planned, Runner, Skips, ports, register
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab.relay_client import snapshot, socket_path
from crossmesh.errors import CrossmeshError
from crossmesh.model.plan import PodPlan
from crossmesh.observe.enrich import deciding
from crossmesh.observe.flows import Flow, Verdict
from crossmesh.policy.evaluator import Verdict as PolicyVerdict

WAIT = 3.0  # seconds a record may take to reach the relay
SEND_TIMEOUT = 0.5  # the probe's own wait: its first packet is what gets logged
MAX_DROPS = 400


def _send(ctx: Context, src: PodPlan, dst: PodPlan, port: int, proto: str) -> None:
    ns = ctx.ep(src).namespace
    if proto == "TCP":
        probes.http(ns, str(dst.address), port, timeout=SEND_TIMEOUT)
    else:
        probes.udp_echo(ns, str(dst.address), port, timeout=SEND_TIMEOUT)


def _wait_for(ctx: Context, since: float, want: Callable[[list[Flow]], str | None]) -> tuple[bool, str]:
    """Poll the relay until `want` finds what it looks for (None) or WAIT passes; (found, last reason)."""
    assert ctx.state is not None  # noqa: S101 - builders plan these checks only on a lab
    path = socket_path(ctx.state.dir)
    deadline = time.monotonic() + WAIT
    reason = "no flow recorded"
    while True:
        try:
            flows = snapshot(path, since=since).flows
        except CrossmeshError as err:
            return False, f"the flow relay: {err}"
        missing = want(flows)
        if missing is None:
            return True, ""
        reason = missing
        if time.monotonic() > deadline:
            return False, reason
        time.sleep(0.2)


def _matches(f: Flow, src: PodPlan, dst: PodPlan, port: int, proto: str) -> bool:
    return (
        f.source.address == str(src.address)
        and f.destination.address == str(dst.address)
        and f.destination_port == port
        and f.protocol == proto
    )


def expected_policy(verdict: PolicyVerdict) -> tuple[str, str]:
    """(direction, policy) of a denied verdict as the flow records name it: the egress side when it
    denies, else the ingress side; the deny rule's policy, or the policies isolating the pod."""
    side = verdict.egress if not verdict.egress.allowed else verdict.ingress
    direction = "egress" if side is verdict.egress else "ingress"
    return direction, deciding(side)[0]


def _drop_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int, proto: str, verdict: PolicyVerdict) -> Runner:
    direction, policy = expected_policy(verdict)

    def run(check: Check) -> None:
        since = time.time() - 0.05
        _send(ctx, src, dst, port, proto)

        def want(flows: list[Flow]) -> str | None:
            mine = [f for f in flows if _matches(f, src, dst, port, proto)]
            drops = [f for f in mine if f.verdict is Verdict.DROPPED]
            if any(f.policy == policy and f.direction == direction for f in drops):
                return None
            if drops:
                f = drops[-1]
                return f"recorded on {f.node} as {f.drop_reason.value} {f.direction} by {f.policy or '-'}"
            if mine:
                return f"recorded only as {mine[-1].verdict.value} on {mine[-1].node}"
            return "no flow recorded"

        found, reason = _wait_for(ctx, since, want)
        check.actual = Result.OK if found else Result.WRONG_ANSWER
        check.detail = f"DROPPED {direction} by {policy}" if found else f"{reason}; policy trace: {direction} {policy}"

    return run


@register(112)
def drop_attributed(ctx: Context) -> list[Planned]:
    """Every denied probe of the policy matrix, seen as a DROPPED flow naming policy trace's policy."""
    if ctx.policy is None or not ctx.policy.policies or ctx.state is None:
        return []
    out: list[Planned] = []
    skips = Skips(Kind.OBSERVE)
    pods = ctx.pods()
    for src in pods:
        for dst in pods:
            if src.ref == dst.ref or not ctx.connected(src, dst):
                continue
            for port, proto, _ in dst.ports:
                verdict = ctx.verdict(src, dst, port, proto)
                if verdict is None or verdict.allowed or proto not in ("TCP", "UDP"):
                    continue
                if proto == "TCP" and ctx.expect_http(src, dst, port) is not Result.TIMEOUT:
                    continue  # refused by the L7 proxy with a 403: not a drop
                case = f"{src.ref} -> {dst.ref}:{port}/{proto}"
                if len(out) >= MAX_DROPS:
                    skips.add(f"more than {MAX_DROPS} denied flows: the rest are left to policy/denied", case)
                    continue
                check = Check(
                    name=f"observe/drop-attributed: {case}",
                    kind=Kind.OBSERVE,
                    source=src.ref,
                    target=dst.ref,
                    port=f"{port}/{proto}",
                    expected=Result.OK,
                )
                out.append(Planned(check, _drop_runner(ctx, src, dst, port, proto, verdict)))
    return out + skips.planned()


def _forward_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int, proto: str) -> Runner:
    def run(check: Check) -> None:
        since = time.time() - 0.05
        _send(ctx, src, dst, port, proto)
        wanted = {src.node: "egress", dst.node: "ingress"}

        def want(flows: list[Flow]) -> str | None:
            seen = {
                (f.node, f.direction)
                for f in flows
                if f.verdict is Verdict.FORWARDED and _matches(f, src, dst, port, proto)
            }
            missing = [f"{node} ({d})" for node, d in wanted.items() if (node, d) not in seen]
            return f"no FORWARDED record on {', '.join(missing)}" if missing else None

        found, reason = _wait_for(ctx, since, want)
        check.actual = Result.OK if found else Result.WRONG_ANSWER
        check.detail = f"FORWARDED on {src.node} (egress) and {dst.node} (ingress)" if found else reason

    return run


@register(111)
def allowed_flow_recorded(ctx: Context) -> list[Planned]:
    """One allowed flow per (source cluster and site, destination cluster and site): recorded as
    FORWARDED where it left and where it arrived."""
    if ctx.state is None:
        return []
    out: list[Planned] = []
    done: set[tuple[str, str, str, str]] = set()
    pods = ctx.pods()
    for src in pods:
        for dst in pods:
            if src.node == dst.node or not ctx.connected(src, dst):
                continue
            pair = (src.cluster, ctx.site_of(src), dst.cluster, ctx.site_of(dst))
            if pair in done:
                continue
            port = next((p for p in ports(dst, "TCP") if ctx.allowed(src, dst, p, "TCP")), None)
            if port is None:
                continue
            done.add(pair)
            check = Check(
                name=f"observe/allowed-flow-recorded: {src.ref} -> {dst.ref}:{port}/TCP",
                kind=Kind.OBSERVE,
                source=src.ref,
                target=dst.ref,
                port=f"{port}/TCP",
                expected=Result.OK,
            )
            out.append(Planned(check, _forward_runner(ctx, src, dst, port, "TCP")))
    return out
