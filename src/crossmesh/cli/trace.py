"""`crossmesh trace`: the hop-by-hop path of a request, confirmed on the lab when it runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from crossmesh.cli import trace_ingress as ingress_cli
from crossmesh.cli import trace_lab
from crossmesh.cli.common import OUTPUT_OPTION, Output, emit, friendly, out
from crossmesh.drivers.lab import lab as labs
from crossmesh.errors import UsageError
from crossmesh.identity.spiffe import SpiffeId
from crossmesh.plan import outside
from crossmesh.plan.trace import NODE_PREFIX, Trace, TraceError
from crossmesh.plan.trace import trace as plan_trace
from crossmesh.policy import trace as policy_trace
from crossmesh.policy.endpoints import mesh_index
from crossmesh.policy.evaluator import evaluate
from crossmesh.policy.model import SA_LABEL
from crossmesh.workspace import Compiled, compile_mesh

SEED_MARKS = dict(enumerate("⓪①②③④⑤⑥⑦⑧⑨⑩⑪⑫"))  # seed 001's step numbers
PORT_RE = re.compile(r"^(\d{1,5})/(TCP|UDP)$", re.IGNORECASE)


@friendly
def trace(
    mesh: Path = typer.Argument(..., help="the mesh file", show_default=False),
    source: str = typer.Option(..., "--from", help="source pod CLUSTER/NS/POD, or local (the client outside)"),
    target: str = typer.Option(
        ...,
        "--to",
        help=(
            "pod CLUSTER/NS/POD, service CLUSTER/NS/SERVICE or NS/SERVICE, a node port node/NODE (with "
            "--port NODEPORT/PROTO, e.g. node/aws-worker-1 --port 30080/TCP); from local also a URL https://HOST/PATH"
        ),
    ),
    port: str = typer.Option(
        "", "--port", help="PORT/PROTO, e.g. 80/TCP; with node/NODE its node port (a URL names its own)"
    ),
    header: list[str] = typer.Option([], "-H", "--header", help="with a URL: a request header 'Name: value'; repeat"),
    method: str = typer.Option("GET", "--method", help="with a URL: the HTTP method"),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="confirm each hop on the running lab"),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Show the path pod → veth → node → VXLAN or WireGuard (peer, endpoint, NAT) → remote node → pod.

    Between sites a hub joins over IPsec (seed 001): node → customer gateway (BGP route, tunnel) → ESP in
    UDP 4500 → transit gateway (route table, route, attachment) → VPC route table → node, and the answer
    back; the tunnel that carried each is read from the CHILD_SA counters. Hops are numbered ①–⑫ where
    they are seed 001's 12 steps. A node port: `--to node/NODE --port 30080/TCP` (kube-proxy's DNAT).

    From `local` to a URL: the client outside → internet → the site's load balancer (DNAT) → node
    port → ingress gateway (listener, route rule and why, backendRef by weight) → mesh (mTLS) →
    Service NAT → WireGuard → the pod. When the mesh's lab is running, one real request is sent and
    each hop is confirmed by its counters (interface packets, WireGuard peer bytes, nft rules, HAProxy,
    IPsec CHILD_SAs). Exit 1 when that request is not answered; 2 for bad input.
    """
    if ingress_cli.is_url(target):
        if port:
            raise UsageError(f"--port {port!r}: a URL names its port itself (https://HOST:PORT/PATH) — drop --port")
        ingress_cli.trace_url_command(mesh, source, target, header, method, probe=probe, output=output)
        return
    if header or method != "GET":
        raise UsageError("-H/--header and --method go with a URL --to (https://HOST/PATH)")
    _node_target(target)
    if not port:
        raise UsageError("--port is required for a pod, service or node port: write PORT/PROTO, e.g. 80/TCP")
    m = PORT_RE.match(port)
    if not m or not 1 <= int(m.group(1)) <= 65535:
        raise UsageError(f"--port {port!r}: write PORT/PROTO with PROTO TCP or UDP, e.g. 80/TCP")
    number, proto = int(m.group(1)), m.group(2).upper()
    compiled = compile_mesh(mesh)
    plan = compiled.plan
    identities = _identities(compiled)
    try:
        planned = plan_trace(plan, source, target, number, proto, identities=identities)
    except TraceError as err:
        raise UsageError(str(err)) from err
    decided = _policy(compiled, planned)
    confirmations: list[str] = []
    answer_detail = ""
    unanswered = False
    running = next((lab for lab in labs.running_labs() if lab.mesh == str(mesh.resolve())), None)
    if probe and running is not None and running.status == "ready":
        done = trace_lab.confirm(plan, running, planned, source, target, number, proto, identities)
        planned, confirmations, answer_detail = done.traced, done.marks, done.summary
        # The path delivers, but the lab's request was not answered: the destination cannot be reached.
        unanswered = not done.answered and planned.delivery.verdict == "forwarded" and source != outside.LOCAL
    hops = [
        {
            "step": h.step,
            "seedStep": h.seed or None,
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
        if unanswered:
            raise typer.Exit(1)
        return
    out.print(f"[bold]{escape(source)} → {escape(target)} {number}/{proto}[/bold] (backend {escape(planned.backend)})")
    for h in hops:
        # "yes: +3" ✓, "no: counter did not move" ✗, "no counter here" (nothing to confirm with) neither.
        verdict = str(h["confirmed"]).split(":", 1)[0] if ":" in str(h["confirmed"]) else ""
        mark = {"yes": "[green]✓[/green]", "no": "[red]✗[/red]"}.get(verdict, " ")
        seed = SEED_MARKS[int(h["seedStep"])] if h["seedStep"] else " "
        out.print(
            f"{h['step']:3d}. {seed} {mark} [cyan]{escape(str(h['at']))}[/cyan]: {escape(str(h['action']))}  "
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
    if unanswered:
        raise typer.Exit(1)


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
    first, last = planned.hops[0].step, planned.delivery.step
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
            "reached": planned.delivery.verdict == "forwarded",
        },
    }


def _identities(compiled: Compiled) -> dict[str, str] | None:
    """Each pod's SPIFFE id when the mesh proxies carry pod traffic in mTLS (`spec.istio`), else None."""
    plan = compiled.plan
    if plan.istio is None:
        return None
    index = mesh_index(plan, compiled.loaded.manifests)
    return {
        p.ref: SpiffeId(
            plan.istio.trust_domain, p.namespace, index.endpoints[p.ref].labels.get(SA_LABEL, "default")
        ).uri
        for p in plan.pods()
        if p.ref in index.endpoints
    }


def _node_target(target: str) -> None:
    """`node/NAME`: bad forms are the user's to fix (exit 2), before anything is compiled."""
    if not target.startswith(NODE_PREFIX):
        return
    name = target.removeprefix(NODE_PREFIX)
    if not name or "/" in name:
        raise UsageError(
            f"--to {target!r}: a node port is node/NAME (e.g. node/aws-worker-1) with --port NODEPORT/PROTO"
        )
