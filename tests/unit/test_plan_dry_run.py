"""`plan --dry-run` writes nothing: no state folder, no allocations, no keys — and shows the same plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.workspace import NO_KEY_YET

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_nothing_and_shows_the_plan(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples" / "three-clouds", tmp_path / "m", ignore=shutil.ignore_patterns(".crossmesh"))
    mesh = tmp_path / "m" / "mesh.yaml"
    dry = CliRunner().invoke(app, ["plan", str(mesh), "--dry-run", "-o", "json"])
    assert dry.exit_code == 0, dry.output
    assert not (tmp_path / "m" / ".crossmesh").exists()
    planned = json.loads(dry.output)["plan"]
    keys = {p["publicKey"] for n in planned["nodes"] for p in (n["tunnel"] or {}).get("peers", [])}
    assert keys == {NO_KEY_YET}
    # The real plan afterwards makes the state; a second dry run then shows the real keys, same routes.
    real = CliRunner().invoke(app, ["plan", str(mesh), "-o", "json"])
    assert real.exit_code == 0 and (tmp_path / "m" / ".crossmesh").exists()
    again = json.loads(CliRunner().invoke(app, ["plan", str(mesh), "--dry-run", "-o", "json"]).output)["plan"]
    assert again == json.loads(real.output)["plan"]
    assert [n["routes"] for n in again["nodes"]] == [n["routes"] for n in planned["nodes"]]
