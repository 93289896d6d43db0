"""`crossmesh version`: the versions it names are the ones the tests check rendered files against."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from crossmesh import __version__
from crossmesh.cli.main import app

REFERENCE = Path(__file__).resolve().parents[1] / "reference"


def test_version_json_names_the_schemas_kept_in_the_repository() -> None:
    result = CliRunner().invoke(app, ["version", "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["crossmesh"] == __version__
    for project in ("cilium", "talos", "mcs-api"):
        assert (REFERENCE / project / f"v{data['targets'][project]}").is_dir(), project


def test_version_refuses_an_unknown_format() -> None:
    result = CliRunner().invoke(app, ["version", "-o", "xml"])
    assert result.exit_code == 2


def test_python_dash_m() -> None:
    done = subprocess.run([sys.executable, "-m", "crossmesh", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"crossmesh {__version__}", done.stderr


def test_every_machine_output_is_also_yaml() -> None:
    """`-o yaml` gives the same data as `-o json` (issue 17: formats as the ecosystem expects)."""
    import json

    import yaml
    from typer.testing import CliRunner

    from crossmesh.cli.main import app

    as_json = CliRunner().invoke(app, ["version", "-o", "json"])
    as_yaml = CliRunner().invoke(app, ["version", "-o", "yaml"])
    assert as_json.exit_code == as_yaml.exit_code == 0
    assert yaml.safe_load(as_yaml.output) == json.loads(as_json.output)
