"""Import every command's modules once, before the first fork, so children do not each import them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hostile.corpus import BASES


@pytest.fixture(scope="session", autouse=True)
def _warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from crossmesh.cli.main import app

    base = BASES["three-clouds"]
    root = tmp_path_factory.mktemp("warm")
    shutil.copytree(base.folder, root / "project")
    mesh = str(root / "project" / "mesh.yaml")
    flow = ["--from", base.source, "--to", base.target, "--port", base.port]
    runner = CliRunner()
    for args in (
        ["validate", mesh],
        ["plan", mesh],
        ["render", mesh, "--output-dir", str(root / "out")],
        ["policy", "trace", mesh, *flow],
        ["trace", mesh, *flow],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    yield
    shutil.rmtree(Path(root), ignore_errors=True)
