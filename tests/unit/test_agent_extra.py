"""The agent's etcd client is an extra: without it `crossmesh agent` says which one, exit 2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossmesh.cli.main import app

ROOT = Path(__file__).resolve().parents[2]


def test_agent_names_its_extra_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aetcd" else real(name, *a))
    mesh = ROOT / "examples" / "hybrid-openstack-aws" / "mesh.yaml"
    done = CliRunner().invoke(
        app, ["agent", str(mesh), "--node", "aws-worker-1", "--etcd-endpoints", "http://127.0.0.1:2379"]
    )
    assert done.exit_code == 2, done.output
    assert "pip install 'crossmesh[agent]'" in done.output
