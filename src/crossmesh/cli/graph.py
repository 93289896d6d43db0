"""`crossmesh graph`: the mesh as a picture — DOT text, or SVG laid out by Graphviz."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path

import typer

from crossmesh.cli.common import friendly
from crossmesh.cli.core import MESH_ARG, STATE_OPTION
from crossmesh.drivers import graphviz
from crossmesh.errors import UsageError
from crossmesh.render.graph import dot
from crossmesh.workspace import compile_mesh


class GraphFormat(StrEnum):
    DOT = "dot"
    SVG = "svg"


@friendly
def graph(
    mesh: Path = MESH_ARG,
    output: GraphFormat = typer.Option(
        GraphFormat.DOT, "-o", "--output", help="dot: Graphviz text; svg: laid out by Graphviz's `dot`"
    ),
    output_file: Path | None = typer.Option(
        None, "--output-file", "-f", help="write here instead of standard output", show_default=False
    ),
    state: Path | None = STATE_OPTION,
) -> None:
    """Draw the mesh: sites (with their provider) holding their clusters and nodes, gateways and nodes
    behind NAT marked, every WireGuard tunnel of the plan, and each site's link to the internet.

    Writes nothing else: allocations are computed in memory, as `plan --dry-run` does. SVG needs
    Graphviz (`apt-get install graphviz`). `crossmesh ui` shows the same picture with each tunnel
    coloured by its health.
    """
    compiled = compile_mesh(mesh, state, persist=False, dry_run=True)
    text = dot(compiled.plan)
    if output is GraphFormat.SVG:
        text = graphviz.svg(text)
    if output_file is None:
        sys.stdout.write(text)
        return
    if output_file.is_dir():
        raise UsageError(f"--output-file {output_file}: is a folder — name a file, e.g. {output_file / 'mesh.svg'}")
    tmp = output_file.with_name(f".{output_file.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, output_file)
    except OSError as err:
        raise UsageError(f"--output-file {output_file}: cannot write: {err.strerror}") from err
