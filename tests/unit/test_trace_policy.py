"""`trace` shows the policy verdict on the hop that decides it — the same verdict `policy trace` gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossmesh.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
FLOWS = [
    ("cluster1/default/x-wing-0", "cluster2/default/rebel-base-0", "80/TCP"),  # seed 003's allowed flow
    ("cluster1/default/x-wing-0", "cluster3/default/rebel-base-0", "80/TCP"),  # default deny
    ("cluster2/default/rebel-base-0", "cluster1/default/x-wing-0", "80/TCP"),
]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("t")
    shutil.copytree(ROOT / "examples" / "three-clouds", root / "m", ignore=shutil.ignore_patterns(".crossmesh"))
    return root / "m" / "mesh.yaml"


@pytest.mark.parametrize(("source", "target", "port"), FLOWS)
def test_trace_and_policy_trace_agree(mesh: Path, source: str, target: str, port: str) -> None:
    args = ["--from", source, "--to", target, "--port", port]
    traced = CliRunner().invoke(app, ["trace", str(mesh), *args, "--no-probe", "-o", "json"])
    assert traced.exit_code == 0, traced.output
    data = json.loads(traced.output)
    policy = data["policy"]
    hops = [h["step"] for h in data["hops"]]
    assert policy["egress"]["hop"] == hops[0] and policy["ingress"]["hop"] == hops[-1]
    assert policy["egress"]["endpoint"] == source and policy["ingress"]["endpoint"] == target
    verdict = CliRunner().invoke(app, ["policy", "trace", str(mesh), *args])
    assert verdict.exit_code == (0 if policy["verdict"] == "allowed" else 1), verdict.output
    assert policy["verdict"] == (
        "allowed" if policy["egress"]["allowed"] and policy["ingress"]["allowed"] else "denied"
    )


def test_both_verdicts_occur(mesh: Path) -> None:
    seen = set()
    for source, target, port in FLOWS:
        out = CliRunner().invoke(
            app, ["trace", str(mesh), "--from", source, "--to", target, "--port", port, "-o", "json"]
        )
        seen.add(json.loads(out.output)["policy"]["verdict"])
    assert seen == {"allowed", "denied"}
