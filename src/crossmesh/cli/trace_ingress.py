"""`crossmesh trace --from local --to https://HOST/PATH`: seed 000's path from a user outside, hop by hop.

The hops come from the plan and the gateway's decision (`plan.ingress_trace`, pure); with the mesh's
lab running, one real request is sent from the lab's client outside and each hop is confirmed by its
counters (`drivers.lab.ingresstrace`), the answer shown at the end. Exit 0 when the request arrives
(a backend pod answers, or the gateway redirects as its rule says), 1 when the trace shows it does
not (no gateway for the host, a port not published, no rule, no answer in the lab), 2 for bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from crossmesh.cli.common import Output, emit, out
from crossmesh.drivers.lab import ingresstrace
from crossmesh.drivers.lab import lab as labs
from crossmesh.errors import UsageError
from crossmesh.plan import outside
from crossmesh.plan.ingress_trace import IngressTrace, is_url, parse_target, trace_url
from crossmesh.plan.trace import TraceError
from crossmesh.policy import trace as policy_trace
from crossmesh.policy.endpoints import mesh_index
from crossmesh.policy.evaluator import evaluate
from crossmesh.workspace import Compiled, compile_mesh

__all__ = ["is_url", "trace_url_command"]

UNPROBED = "not probed (lab not running): planned, unconfirmed"


def trace_url_command(  # noqa: PLR0913
    mesh: Path, source: str, url: str, headers: list[str], method: str, *, probe: bool, output: Output
) -> None:
    if source != outside.LOCAL:
        raise UsageError(
            f"--from {source}: a URL is traced from {outside.LOCAL}, the client outside (a pod reaches a "
            "Service by its name: --to CLUSTER/NS/SERVICE --port 80/TCP)"
        )
    try:
        target = parse_target(url, headers, method)
    except TraceError as err:
        raise UsageError(str(err)) from err
    compiled = compile_mesh(mesh)
    running = next((lab for lab in labs.running_labs() if lab.mesh == str(mesh.resolve())), None)
    answer: ingresstrace.Answer | None = None
    if probe and running is not None and running.status == "ready":
        lab_compiled, topo = labs.topology_of(running)
        confirmed = ingresstrace.confirm(running, lab_compiled, topo, target)
        traced, marks, answer = confirmed.traced, list(confirmed.marks), confirmed.answer
    else:
        traced = trace_url(compiled.plan, compiled.loaded.manifests, target)
        marks = [UNPROBED for _ in traced.hops]
    arrives = traced.arrives and (answer is None or 200 <= answer.status < 400)
    policy = _policy(compiled, traced)
    if output is not Output.TABLE:
        emit(_data(traced, marks, answer, policy, arrives), output)
    else:
        _table(traced, marks, answer, policy)
    if not arrives:
        raise typer.Exit(1)


def _policy(compiled: Compiled, traced: IngressTrace) -> list[dict[str, Any]]:
    """The network policy verdict of each leg the trace reaches: the client outside (the world) to
    the gateway pod on the listener's port, and the gateway pod to the backend pod."""
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    legs = []
    if traced.gateway_pod and traced.listener is not None:
        world = policy_trace.endpoint(index, compiled.plan, outside.LOCAL)
        legs.append((world, index.endpoints[traced.gateway_pod], traced.listener.port))
    if traced.leg is not None:
        leg = traced.leg
        legs.append((index.endpoints[leg.source], index.endpoints[leg.backend], leg.delivered_port or leg.port))
    result = []
    for src, dst, port in legs:
        v = evaluate(index, src, dst, port, "TCP")
        result.append(
            {
                "from": src.ref,
                "to": dst.ref,
                "port": f"{port}/TCP",
                "verdict": v.verdict,
                "egress": v.egress.message,
                "ingress": v.ingress.message,
            }
        )
    return result


def _data(
    traced: IngressTrace,
    marks: list[str],
    answer: ingresstrace.Answer | None,
    policy: list[dict[str, Any]],
    arrives: bool,
) -> dict[str, Any]:
    t, d = traced.target, traced.decision
    return {
        "from": outside.LOCAL,
        "to": t.url,
        "method": t.method,
        "headers": {n: v for n, v in t.headers},
        "gateway": traced.gateway.ref if traced.gateway else None,
        "address": str(traced.address) if traced.address else None,
        "gateway_pod": traced.gateway_pod or None,
        "listener": traced.listener.name if traced.listener else None,
        "route": d.route.ref if d else None,
        "rule": d.rule.name if d and d.rule.name else (d.rule_index if d else None),
        "why": list(d.why) if d else [],
        "backend_ref": traced.backend.ref if traced.backend else None,
        "weights": [{"backend_ref": b.ref, "weight": b.weight, "share": round(s, 4)} for b, s in traced.shares],
        "identity": traced.identity or None,
        "backend": traced.leg.backend if traced.leg else None,
        "hops": [
            {
                "step": h.step,
                "at": h.where,
                "action": h.action,
                "device": h.device,
                "verdict": h.verdict,
                "details": list(h.details),
                "confirmed": marks[i],
            }
            for i, h in enumerate(traced.hops)
        ],
        "arrives": arrives,
        "outcome": traced.outcome,
        "response": traced.response,
        "policy": policy,
        "probe": None
        if answer is None
        else {
            "status": answer.status,
            "line": answer.line,
            "answer": answer.body,
            "location": answer.location or None,
            "tls": answer.verified or None,
        },
    }


def _table(
    traced: IngressTrace, marks: list[str], answer: ingresstrace.Answer | None, policy: list[dict[str, Any]]
) -> None:
    t = traced.target
    extra = "".join(f", {n}: {v}" for n, v in t.headers)
    probed = answer is not None
    head = f"[bold]{outside.LOCAL} → {escape(t.url)}[/bold] ({escape(t.method + extra)})"
    out.print(head + ("" if probed else f" [dim]— {UNPROBED}[/dim]"))
    for i, h in enumerate(traced.hops):
        mark = {"yes": "[green]✓[/green]", "no:": "[red]✗[/red]"}.get(marks[i][:3].strip(), " ")
        confirmed = f"  [dim]({escape(marks[i])})[/dim]" if probed else ""
        out.print(f"{h.step:3d}. {mark} [cyan]{escape(h.where)}[/cyan]: {escape(h.action)}{confirmed}")
        for line in h.details:
            out.print(f"         · {escape(line)}")
    if traced.response:
        out.print(f"     {escape(traced.response)}")
    else:
        out.print(f"     [red]does not arrive[/red]: {escape(traced.outcome)}")
    for p in policy:
        colour = "green" if p["verdict"] == "allowed" else "red"
        out.print(
            f"     policy {escape(p['from'])} → {escape(p['to'])} {p['port']}: [{colour}]{p['verdict']}[/{colour}]"
            f" — {escape(p['ingress'])}"
        )
    if answer is not None:
        out.print(f"     answer: {answer.summary()}", markup=False)
