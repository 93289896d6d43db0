"""Bounded work (issue 18): the fast YAML path, the streamed JSON, the limits, the folded plan table.

Speed itself is measured by benchmarks/bench_scale.py, not here; these tests hold the behaviour the
speed-ups must not change: the same data and positions, the same JSON bytes, a positioned refusal
past a limit, and a plan table that stays readable past DETAIL_NODES nodes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossmesh.cli import common, core
from crossmesh.cli.main import app
from crossmesh.load import mesh as load_mesh
from crossmesh.load import yamlpos
from crossmesh.workspace import check

HEAD = """\
apiVersion: crossmesh.io/v1alpha1
kind: Mesh
metadata:
  name: big
spec:
  wireguard: {topology: full-mesh, listenPort: 51820}
  sites:
    - name: site-a
      provider: aws
      network: 10.0.0.0/16
      region: yes        # a string in YAML 1.2, true in 1.1
    - name: site-b
      provider: gcp
      network: 10.1.0.0/16
      mtu: 01460         # 1460 in YAML 1.2, octal in 1.1
  clusters:
    - name: one
      podCIDR: 10.10.0.0/16
      nodes:
"""


def node(i: int, *, scalars: bool) -> str:
    """Node i; with `scalars`, labels of every YAML type (not a valid mesh: labels are strings)."""
    site, octet = ("site-a", 0) if i % 2 else ("site-b", 1)
    odd = ", spare: ~, weight: 0x1f, ratio: 1.5, on: true" if scalars else ""
    labels = f'{{rack: "{i}"{odd}}}'
    return (
        f"        - name: n{i:04d}\n"
        f"          site: {site}\n"
        f"          address: '10.{octet}.{i // 250}.{i % 250 + 1}'\n"
        f"          publicAddress: 198.51.100.{i % 250 + 1}\n"
        f"          labels: {labels}\n"
    )


def big_mesh(nodes: int, *, scalars: bool = False) -> str:
    return HEAD + "".join(node(i, scalars=scalars) for i in range(nodes))


def test_the_libyaml_path_gives_ruamels_data_and_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    text = big_mesh(400, scalars=True)
    assert len(text) > yamlpos.FAST_PATH_BYTES
    assert yamlpos._fast_documents(text, "mesh.yaml") is not None  # really took the fast path
    fast, fast_problems = yamlpos.parse_documents(text, "mesh.yaml")
    monkeypatch.setattr(yamlpos, "FAST_PATH_BYTES", len(text) + 1)
    slow, slow_problems = yamlpos.parse_documents(text, "mesh.yaml")
    assert fast_problems == slow_problems == []
    assert [(d.data, d.positions, d.start_line) for d in fast] == [(d.data, d.positions, d.start_line) for d in slow]
    site_a, site_b = fast[0].data["spec"]["sites"]
    assert site_a["region"] == "yes" and site_b["mtu"] == 1460
    assert fast[0].data["spec"]["clusters"][0]["nodes"][3]["labels"] == {
        "rack": "3",
        "spare": None,
        "weight": 31,
        "ratio": 1.5,
        "on": True,
    }


@pytest.mark.parametrize(
    "extra",
    [
        "        - &a {name: x}\n        - *a\n",
        "        - !!str 5\n",
        "        - {name: a, name: b}\n",
        "        - [\n",
    ],
    ids=["alias", "tag", "duplicate-key", "malformed"],
)
def test_what_the_fast_path_cannot_word_goes_to_ruamel(extra: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = big_mesh(400) + extra
    assert yamlpos._fast_documents(text, "mesh.yaml") is None
    fast = yamlpos.parse_documents(text, "mesh.yaml")
    monkeypatch.setattr(yamlpos, "FAST_PATH_BYTES", len(text) + 1)
    slow = yamlpos.parse_documents(text, "mesh.yaml")
    assert [str(p) for p in fast[1]] == [str(p) for p in slow[1]]


def test_emit_json_writes_json_dumps_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    shared_peer = {"node": "b", "allowedIPs": ["10.0.0.1/32"], "endpoint": None, "keepalive": 0}
    peers = [shared_peer] * 3 + [{"node": 'é"\n', "ratio": 1.5, "flag": True}]
    data = {
        "nodes": [{"name": f"n{i}", "peers": peers, "routes": [], "extra": {}} for i in range(100)],
        "names": [f"n{i}" for i in range(200)],
        "empty": [[], {}],
        "top": "x",
    }
    written = io.StringIO()
    monkeypatch.setattr(common.sys, "stdout", written)
    common.emit_json(data)
    assert written.getvalue() == json.dumps(data, indent=2, sort_keys=True) + "\n"


def test_a_mesh_past_the_node_limit_is_refused_at_the_first_node_too_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mesh.yaml").write_text(big_mesh(6))
    monkeypatch.setattr(load_mesh, "MAX_NODES", 5)
    loaded, problems = check(tmp_path / "mesh.yaml")
    assert loaded is None
    assert [str(p) for p in problems] == [
        f"{tmp_path / 'mesh.yaml'}:45:11: spec.clusters[0].nodes[5]: 6 nodes: crossmesh handles at most 5 nodes "
        "in one mesh (this is node 6) — split the mesh"
    ]


def test_plan_table_folds_nodes_into_sites_past_the_detail_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mesh.yaml").write_text(big_mesh(4))
    monkeypatch.setattr(core, "DETAIL_NODES", 3)
    runner = CliRunner()

    folded = runner.invoke(app, ["plan", str(tmp_path / "mesh.yaml")])
    assert folded.exit_code == 0, folded.output
    assert "Sites" in folded.output and "Peers" not in folded.output and "Routes" not in folded.output
    assert "4 nodes: the nodes, MTU, peers and routes tables are shown for up to 3 nodes" in folded.output
    assert "4 nodes added, 0 removed" in folded.output

    one = runner.invoke(app, ["plan", str(tmp_path / "mesh.yaml"), "--node", "n0001"])
    assert one.exit_code == 0, one.output
    assert "Peers" in one.output and "Routes" in one.output and "Sites" not in one.output
