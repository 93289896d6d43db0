"""`crossmesh test`: connectivity and security checks against the running lab."""

from __future__ import annotations

import re
import time
from pathlib import Path

import typer
from rich.markup import escape

from crossmesh.checks import ingress, results, suite
from crossmesh.cli.common import OUTPUT_OPTION, Output, emit, err, friendly, out
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import transit
from crossmesh.errors import CrossmeshError, UsageError
from crossmesh.istio.index import istio_index
from crossmesh.workspace import rendered


@friendly
def test(
    mesh: Path = typer.Argument(..., help="the mesh file whose lab is running", show_default=False),
    pattern: str | None = typer.Option(None, "--test", help="run only checks whose name matches this regex"),
    output: Output = OUTPUT_OPTION,
    junit: Path | None = typer.Option(None, "--junit", help="also write a JUnit XML report here"),
) -> None:
    """Check the running lab: pod→pod for every pair class (HTTP and UDP), pod→service, MTU with DF
    across every tunnel, encryption (a marker never crosses the internet in clear) and NAT, and fidelity:
    every tunnel, pod and VXLAN device as the files `crossmesh render` writes give it. Under topology
    gateways: who carries each site and whether its standbys are ready; with agents, each site's
    active gateway crashed and then blackholed under a stream (loss window, back to the preferred one
    after), last and one at a time, and no split brain meanwhile. With ingress gateways (Gateway API),
    from the client outside through each load balancer: every route rule answered as `trace` decides,
    the weighted split over 1,000 requests, header matches, TLS and SNI, nothing else answering on a
    public address, and a global backend's preferred tier killed under requests (the gap reported).

    Expectations come from the plan. Exit code 1 when any check fails.
    """
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as e:
            raise UsageError(f"--test {pattern!r} is not a regular expression: {e}") from None
    state = labs.find_lab(mesh)
    if state.status != "ready":
        raise CrossmeshError(f"lab {state.mesh_name} is {state.status}, not ready — run `crossmesh lab up {mesh}`")
    # Under topology gateways with agents, planned (and rendered) with the active gateways etcd names
    compiled, topo, active = suite.lab_view(state)
    istio = istio_index(compiled.plan, compiled.loaded.manifests) if compiled.plan.istio is not None else None
    gateways = ingress.views(compiled, Path(state.state_dir)) if compiled.plan.ingress else None
    ctx = suite.Context(
        compiled.plan,
        topo,
        state,
        labs.policy_index(compiled),
        rendered(compiled),
        active,
        istio,
        gateways,
        tuple(transit.gateways(state, topo, compiled)),
    )
    planned = suite.build(ctx, pattern)
    if not planned:
        err.print(f"no check matches {pattern!r}", markup=False)
        raise typer.Exit(1)
    started = time.monotonic()
    done = [0]

    def progress(c: results.Check) -> None:
        done[0] += 1
        if output is Output.TABLE:
            mark = _mark(c)
            err.print(
                f"[dim]{done[0]:4d}/{len(planned)}[/dim] {mark} {escape(c.name)}", markup=True
            ) if err.is_terminal else None

    checks = suite.run(planned, progress=progress)
    report = results.report(checks)
    if junit is not None:
        junit.write_text(results.junit(checks, f"crossmesh.{compiled.plan.mesh}"))
    if output is not Output.TABLE:
        emit(report, output)
    else:
        out.print(f"[bold]crossmesh test {escape(compiled.plan.mesh)}[/bold]")
        for c in checks:
            if c.skipped:  # the detail names the reason and the cases left out
                out.print(f"{_mark(c)} {escape(f'{c.kind}/skipped: {c.detail}')}", markup=True, highlight=False)
                continue
            verdict = c.actual.value if c.passed else f"expected {c.expected.value}, got {c.actual.value}"
            detail = f" — {c.detail}" if c.detail else ""
            out.print(f"{_mark(c)} {escape(c.name)}: {escape(verdict + detail)}", markup=True, highlight=False)
        s = report["summary"]
        colour = "green" if s["failed"] == 0 else "red"
        out.print(
            f"[{colour}]{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped[/{colour}]"
            f" in {time.monotonic() - started:.1f} s"
        )
    if report["summary"]["failed"]:
        raise typer.Exit(1)


def _mark(c: results.Check) -> str:
    if c.skipped:
        return "[yellow]-[/yellow]"
    return "[green]✓[/green]" if c.passed else "[red]✗[/red]"
