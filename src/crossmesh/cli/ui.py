"""`crossmesh ui`: a local web page of the mesh — topology with tunnel health, services, live flows."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from crossmesh.cli.common import err, friendly, out
from crossmesh.cli.core import STATE_OPTION
from crossmesh.errors import UsageError

if TYPE_CHECKING:
    from crossmesh.ui.server import Ui


@friendly
def ui(
    lab: str | None = typer.Option(None, "--lab", help="the lab's tag (TAG or cm-TAG); default: the only running lab"),
    mesh: Path | None = typer.Option(
        None,
        "--mesh",
        help="the lab running this mesh file; when none runs, the file's plan alone (no health, no flows)",
        show_default=False,
    ),
    state: Path | None = STATE_OPTION,
    relay: Path | None = typer.Option(
        None, "--relay", help="the flow relay's socket (default: the lab's flows.sock)", show_default=False
    ),
    port: int = typer.Option(8765, "--port", help="TCP port to serve on (0: any free port)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to serve on; the page has no login"),
) -> None:
    """Serve a web page of the mesh: the topology (the `crossmesh graph` picture, each tunnel coloured
    by its latest handshake, with its traffic), the services with their tiers and backend health, and
    the live flow stream with drops highlighted — click a drop for its `policy trace`.

    Reads a running lab (as `lab status` does: needs root for the WireGuard counters) and its flow
    relay; with `--mesh FILE` and no lab running, shows the file's plan. Serves 127.0.0.1:8765 until
    Ctrl-C. Exit 2 when the port is taken or no lab or mesh is found.
    """
    from crossmesh.ui import server

    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: a TCP port is 0-65535 (0: any free port)")
    if lab is not None and mesh is not None:
        raise UsageError("--lab and --mesh both name what to show: pass one")
    sock = server.bind(host, port)
    try:
        ui_state = _load(lab, mesh, state, relay)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                server.serve(
                    ui_state,
                    sock,
                    lambda url: out.print(f"crossmesh ui: {ui_state.source} at {url} — Ctrl-C stops", markup=False),
                )
            )
    finally:
        sock.close()


def _load(lab: str | None, mesh: Path | None, state: Path | None, relay: Path | None) -> Ui:
    from crossmesh.drivers.lab import lab as labs
    from crossmesh.istio.index import istio_index
    from crossmesh.policy.endpoints import mesh_index
    from crossmesh.ui.relay import FlowHub
    from crossmesh.ui.server import Ui as UiState
    from crossmesh.ui.sources import LabReadings, NoLab
    from crossmesh.workspace import compile_mesh

    found: labs.LabState | None = None
    if lab is not None:
        tag = lab.removeprefix("cm-")
        found = labs.LabState.load(tag)
        if found is None:
            raise UsageError(f"--lab {lab}: no lab cm-{tag} is running — `crossmesh lab up MESH` starts one")
    elif mesh is not None:
        found = next((s for s in labs.running_labs() if s.mesh == str(mesh.resolve())), None)
    else:
        found = labs.find_lab(None)
    if found is not None:
        compiled, topo = labs.topology_of(found)
        hub = FlowHub(relay or found.dir / "flows.sock")
        source = f"lab {found.mesh_name} (cm-{found.tag})"
        index = mesh_index(compiled.plan, compiled.loaded.manifests)
        istio = istio_index(compiled.plan, compiled.loaded.manifests) if compiled.plan.istio else None
        return UiState(compiled.plan, index, LabReadings(found, topo), hub, source, istio=istio)
    if mesh is None:  # find_lab(None) found one or raised
        raise UsageError("no lab is running — pass --mesh MESH to show a mesh file's plan")
    compiled = compile_mesh(mesh, state, persist=False, dry_run=True)
    source = f"plan of {mesh} (no lab running)"
    if relay is not None:
        err.print(f"reading flows from {relay}", markup=False)
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    istio = istio_index(compiled.plan, compiled.loaded.manifests) if compiled.plan.istio else None
    return UiState(compiled.plan, index, NoLab(), FlowHub(relay), source, istio=istio)
