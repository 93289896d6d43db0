"""`render --diff`: what a render would change in the output folder, writing nothing; exit 1 when
anything differs, as `kubectl diff`; a file holding a private key is named, never shown."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from crossmesh.cli.main import app

ROOT = Path(__file__).resolve().parents[2]


def test_render_diff_shows_changes_and_writes_nothing(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples" / "three-clouds", tmp_path / "m", ignore=shutil.ignore_patterns(".crossmesh"))
    mesh, out = tmp_path / "m" / "mesh.yaml", tmp_path / "out"
    first = CliRunner().invoke(app, ["render", str(mesh), "--output-dir", str(out), "--diff"])
    assert first.exit_code == 1 and "+ clusters/cluster1/cilium-values.yaml" in first.output
    assert not out.exists()
    assert CliRunner().invoke(app, ["render", str(mesh), "--output-dir", str(out)]).exit_code == 0
    same = CliRunner().invoke(app, ["render", str(mesh), "--output-dir", str(out), "--diff"])
    assert same.exit_code == 0 and "up to date" in same.output
    mesh.write_text(mesh.read_text().replace("mtu: 1460", "mtu: 1400"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    changed = CliRunner().invoke(app, ["render", str(mesh), "--output-dir", str(out), "--diff"])
    assert changed.exit_code == 1
    assert "-MTU: 1380" in changed.output and "+MTU: 1320" in changed.output
    assert "nodes/aws-talos-1/talos.yaml (holds a private key: content not shown)" in changed.output
    assert "privateKey" not in changed.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_render_output_format_is_o_and_the_folder_is_output_dir(tmp_path: Path) -> None:
    """`-o` is a format, as everywhere; the folder is `--output-dir` (a folder given to `-o` is refused, exit 2)."""
    import json

    shutil.copytree(ROOT / "examples" / "three-clouds", tmp_path / "m", ignore=shutil.ignore_patterns(".crossmesh"))
    mesh, out = tmp_path / "m" / "mesh.yaml", tmp_path / "out"
    done = CliRunner().invoke(app, ["render", str(mesh), "-d", str(out), "-o", "json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["files"] == len([p for p in out.rglob("*") if p.is_file()]) - 1  # less the render's own list
    private = [p for p in out.rglob("*") if p.is_file() and p.stat().st_mode & 0o777 == 0o600]
    # 3 talos.yaml, 3 ClusterMesh Secrets, 3 Istio cacerts (each cluster's intermediate key), and the
    # ingress gateway's TLS Secret (its listener's key, from the ingress CA)
    assert summary["secrets"] == len(private) == 10 and summary["warnings"] == []
    old = CliRunner().invoke(app, ["render", str(mesh), "-o", str(tmp_path / "elsewhere")])
    assert old.exit_code == 2 and not (tmp_path / "elsewhere").exists()
