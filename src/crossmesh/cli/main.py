"""Entry point: `crossmesh <command>`."""

from __future__ import annotations

import typer

from crossmesh import __version__
from crossmesh.cli import agent as agent_cli
from crossmesh.cli import checks, control, core, lab, labvpn, observe, pki, policy, trace
from crossmesh.cli import graph as graph_cli
from crossmesh.cli import ui as ui_cli
from crossmesh.cli.common import OUTPUT_OPTION, Output, emit

app = typer.Typer(
    name="crossmesh",
    help="Connect Kubernetes clusters across clouds: validate a mesh file, plan and render WireGuard, "
    "Cilium and Talos files, and build the whole mesh for real on this Linux host (the lab).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    rich_markup_mode="rich",
)
core.register(app)
labvpn.register(lab.app)
app.add_typer(lab.app, name="lab")
app.add_typer(policy.app, name="policy")
app.add_typer(pki.app, name="pki")
app.command("test")(checks.test)
app.command("trace")(trace.trace)
app.command("observe", help=observe.HELP)(observe.observe)
app.command("agent")(agent_cli.agent)
app.command("apply")(control.apply)
app.command("diff")(control.diff)
app.command("status")(control.status)
app.command("operator")(control.operator)
app.command("graph")(graph_cli.graph)
app.command("ui")(ui_cli.ui)


@app.command("version")
def version_cmd(output: Output = OUTPUT_OPTION) -> None:
    """Print crossmesh's version and the upstream versions it renders for (Cilium, Talos, MCS API)."""
    from crossmesh.targets import TARGETS

    if output is not Output.TABLE:
        emit({"crossmesh": __version__, "targets": TARGETS}, output)
        return
    typer.echo(f"crossmesh {__version__}")
    for name, version in TARGETS.items():
        typer.echo(f"  {name:<10} {version}")


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="print the version and exit")) -> None:
    if version:
        typer.echo(f"crossmesh {__version__}")
        raise typer.Exit(0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
