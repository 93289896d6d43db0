"""`crossmesh trace`: the hop-by-hop path of a request, confirmed on the lab when it runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from crossmesh.checks import probes
from crossmesh.checks.results import Result
from crossmesh.cli import trace_ingress as ingress_cli
from crossmesh.cli.common import OUTPUT_OPTION, Output, emit, friendly, out
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import tracing
from crossmesh.errors import UsageError
from crossmesh.plan import outside
from crossmesh.plan.trace import Trace, TraceError
from crossmesh.plan.trace import trace as plan_trace
from crossmesh.policy import trace as policy_trace
from crossmesh.policy.endpoints import mesh_index
from crossmesh.policy.evaluator import evaluate
from crossmesh.workspace import Compiled, compile_mesh

PORT_RE = re.compile(r"^(\d{1,5})/(TCP|UDP)$", re.IGNORECASE)


@friendly
def trace(
    mesh: Path = typer.Argument(..., help="the mesh file", show_default=False),
    source: str = typer.Option(..., "--from", help="source pod CLUSTER/NS/POD, or local (the client outside)"),
    target: str = typer.Option(
        ...,
        "--to",
        help="pod CLUSTER/NS/POD, service CLUSTER/NS/SERVICE or NS/SERVICE; from local also a URL https://HOST/PATH",
    ),
    port: str = typer.Option("", "--port", help="PORT/PROTO, e.g. 80/TCP (a URL names its own)"),
    header: list[str] = typer.Option([], "-H", "--header", help="with a URL: a request header 'Name: value'; repeat"),
    method: str = typer.Option("GET", "--method", help="with a URL: the HTTP method"),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="confirm each hop on the running lab"),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Show the path pod → veth → node → VXLAN or WireGuard (peer, endpoint, NAT) → remote node → pod.

    From `local` to a URL: the client outside → internet → the site's load balancer (DNAT) → node
    port → ingress gateway (listener, route rule and why, backendRef by weight) → mesh (mTLS) →
    Service NAT → WireGuard → the pod. When the mesh's lab is running, one real request is sent and
    each hop is confirmed by its counters (interface packets, WireGuard peer bytes, nft rules, HAProxy).
    """
    if ingress_cli.is_url(target):
        if port:
            raise UsageError(f"--port {port!r}: a URL names its port itself (https://HOST:PORT/PATH) — drop --port")
        ingress_cli.trace_url_command(mesh, source, target, header, method, probe=probe, output=output)
        return
    if header or method != "GET":
        raise UsageError("-H/--header and --method go with a URL --to (https://HOST/PATH)")
    if not port:
        raise UsageError("--port is required for a pod or service: write PORT/PROTO, e.g. 80/TCP")
    m = PORT_RE.match(port)
    if not m or not 1 <= int(m.group(1)) <= 65535:
        raise UsageError(f"--port {port!r}: write PORT/PROTO with PROTO TCP or UDP, e.g. 80/TCP")
    number, proto = int(m.group(1)), m.group(2).upper()
    compiled = compile_mesh(mesh)
    plan = compiled.plan
    try:
        planned = plan_trace(plan, source, target, number, proto)
    except TraceError as err:
        raise UsageError(str(err)) from err
    decided = _policy(compiled, planned)
    confirmations: list[str] = []
    answer_detail = ""
    running = next((lab for lab in labs.running_labs() if lab.mesh == str(mesh.resolve())), None)
    if probe and running is not None and running.status == "ready":
        planned, confirmations, answer_detail = _confirm(plan, running, planned, source, target, number, proto)
    hops = [
        {
            "step": h.step,
            "at": h.where,
            "action": h.action,
            "device": h.device,
            "verdict": h.verdict,
            "confirmed": confirmations[i] if confirmations else "not probed (lab not running)",
        }
        for i, h in enumerate(planned.hops)
    ]
    if output is not Output.TABLE:
        emit(
            {
                "from": source,
                "to": target,
                "port": f"{number}/{proto}",
                "backend": planned.backend,
                "destination": str(planned.destination),
                "hops": hops,
                "policy": decided,
                "probe": answer_detail,
            },
            output,
        )
        return
    out.print(f"[bold]{escape(source)} → {escape(target)} {number}/{proto}[/bold] (backend {escape(planned.backend)})")
    for h in hops:
        # "yes: +3" ✓, "no: counter did not move" ✗, "no counter here" (nothing to confirm with) neither.
        verdict = str(h["confirmed"]).split(":", 1)[0] if ":" in str(h["confirmed"]) else ""
        mark = {"yes": "[green]✓[/green]", "no": "[red]✗[/red]"}.get(verdict, " ")
        out.print(
            f"{h['step']:3d}. {mark} [cyan]{escape(str(h['at']))}[/cyan]: {escape(str(h['action']))}  "
            f"[dim]({escape(str(h['confirmed']))})[/dim]"
        )
    for side in ("egress", "ingress"):
        d = decided[side]
        colour = "green" if d["allowed"] else "red"
        where = f"at hop {d['hop']}" if d.get("reached", True) else "(never reached: the path ends before it)"
        out.print(
            f"     policy {where}: {side} of {escape(d['endpoint'])}: "
            f"[{colour}]{'allowed' if d['allowed'] else 'denied'}[/{colour}] — {escape(d['reason'])}"
        )
    if answer_detail:
        out.print(answer_detail, markup=False)


def _policy(compiled: Compiled, planned: Trace) -> dict[str, Any]:
    """The policy verdict of the traced flow, on the hop that decides each side: the source's egress
    where the packet leaves its pod, the destination's ingress where it is delivered (as Cilium
    enforces them, on the endpoints' own nodes). `policy trace` gives the rule-by-rule detail."""
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    verdict = evaluate(
        index,
        policy_trace.endpoint(index, compiled.plan, planned.source),  # a pod, or `local`: the world
        index.endpoints[planned.backend],
        planned.delivered_port or planned.port,
        planned.protocol,
    )
    first, last = planned.hops[0].step, planned.hops[-1].step
    return {
        "verdict": verdict.verdict,
        "egress": {
            "hop": first,
            "endpoint": verdict.egress.endpoint.ref,
            "allowed": verdict.egress.allowed,
            "reason": verdict.egress.message,
        },
        "ingress": {
            "hop": last,
            "endpoint": verdict.ingress.endpoint.ref,
            "allowed": verdict.ingress.allowed,
            "reason": verdict.ingress.message,
            # False: the path ends before the destination (from `local`, on the internet), so this
            # verdict is what the destination would decide, never applied
            "reached": planned.hops[-1].verdict == "forwarded",
        },
    }


def _confirm(
    plan: Any, lab: Any, planned: Trace, source: str, target: str, port: int, proto: str
) -> tuple[Trace, list[str], str]:
    compiled, topo = labs.topology_of(lab)
    del compiled
    candidates = [planned]
    if planned.backend != target and source != outside.LOCAL:  # a service: any backend of the tier may answer
        for p in plan.pods():
            if p.ref != planned.backend:
                try:
                    alt = plan_trace(plan, source, target, port, proto, backend=p.ref)
                except TraceError:
                    continue
                if alt.backend == p.ref:
                    candidates.append(alt)
    counters = {
        c.backend: [
            tracing.counter_for(h, c, plan, topo, first=i == 0, last=i == len(c.hops) - 1) for i, h in enumerate(c.hops)
        ]
        for c in candidates
    }
    before = {k: tracing.snapshot(v) for k, v in counters.items()}
    src_ns = topo.local_ns if source == outside.LOCAL else topo.pod(source).namespace
    if planned.headless:  # no VIP: the client connects to the pod its name resolved to
        dest_ip, port = str(planned.destination), planned.delivered_port
    elif planned.backend == target or source == outside.LOCAL:
        dest_ip = str(candidates[0].destination)
    else:
        dest_ip = _service_ip(plan, source, target)
    if proto == "TCP":
        result, answer, detail = probes.http(src_ns, dest_ip, port, path="/crossmesh-trace")
        answered = f"{answer['cluster']}/{answer['namespace']}/{answer['pod']}" if answer else ""
    else:
        result, detail = probes.udp_echo(src_ns, dest_ip, port)
        answered = planned.backend if result is Result.OK else ""
    chosen = next((c for c in candidates if c.backend == answered), planned)
    after = tracing.snapshot(counters[chosen.backend])
    marks = []
    for i, h in enumerate(chosen.hops):
        b, a = before[chosen.backend][i], after[i]
        if h.device == "service":
            marks.append(f"yes: answered by {answered}" if answered else "no answer")
        elif b is None or a is None or a < 0:
            marks.append("no counter here")
        else:
            marks.append(f"yes: +{a - b}" if a > b else "no: counter did not move")
    summary = f"probe {dest_ip}:{port}/{proto}: {result.value}" + (f" ({detail})" if detail else "")
    return chosen, marks, summary


def _service_ip(plan: Any, source: str, target: str) -> str:
    parts = target.split("/")
    cluster = source.split("/")[0] if len(parts) == 2 else parts[0]
    for s in plan.cluster(cluster).services:
        if s.namespace == parts[-2] and s.name == parts[-1]:
            return str(s.cluster_ip)
    raise UsageError(f"no service {target}")
