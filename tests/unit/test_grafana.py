"""The Grafana dashboard and Prometheus scrape jobs rendered from a plan: a dashboard Grafana can
load (ids, positions on its grid, targets with PromQL), whose every query selects series that
crossmesh or Hubble serve (the catalogue in observe/metrics.py, which the servers are built from),
with the plan's sites, clusters and nodes as its variables and a tunnel panel per node pair."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from crossmesh.model.plan import Plan
from crossmesh.observe import metrics as catalogue
from crossmesh.render import grafana
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]


def plan_of(tmp: Path, case: str) -> Plan:
    shutil.copytree(ROOT / "tests" / "golden" / case, tmp / case, ignore=shutil.ignore_patterns("expected"))
    state = tmp / case / "state"
    for path in [state, *state.rglob("*")]:  # git keeps no modes: crossmesh insists on these for keys
        path.chmod(0o700 if path.is_dir() else 0o600)
    return compile_mesh(tmp / case / "mesh.yaml", state).plan


@pytest.fixture(scope="module", params=["three-clouds", "gateways", "hybrid"])
def plan(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return plan_of(tmp_path_factory.mktemp("grafana"), request.param)


def test_the_dashboard_is_well_formed(plan: Plan) -> None:
    board = grafana.dashboard(plan)
    assert board["schemaVersion"] == 39 and board["uid"] and len(board["uid"]) <= 40
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for p in board["panels"]:
        pos = p["gridPos"]
        assert set(pos) == {"x", "y", "w", "h"} and pos["x"] + pos["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["refId"] and t["expr"].strip(), p["title"]


def test_every_query_selects_a_served_series(plan: Plan) -> None:
    exprs = grafana.expressions(grafana.dashboard(plan))
    assert exprs
    unknown = {e: catalogue.unknown_series(e) for e in exprs if catalogue.unknown_series(e)}
    assert unknown == {}
    used = {name for e in exprs for name in catalogue.SERIES if name in e}
    for wanted in ("hubble_flows_processed_total", "hubble_drop_total", "hubble_policy_verdicts_total"):
        assert wanted in used


def test_the_catalogue_check_catches_a_renamed_metric() -> None:
    assert catalogue.unknown_series("rate(crossmesh_wireguard_peer_rx_bytes_total[5m])") == [
        "crossmesh_wireguard_peer_rx_bytes_total"
    ]
    assert catalogue.unknown_series("histogram_quantile(0.9, crossmesh_reconcile_duration_seconds_bucket)") == []


def _variable(board: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in board["templating"]["list"] if v["name"] == name)


def test_variables_rows_and_tunnels_come_from_the_plan(plan: Plan) -> None:
    board = grafana.dashboard(plan)
    for name, values in (
        ("site", [s.name for s in plan.sites]),
        ("cluster", [c.name for c in plan.clusters]),
        ("node", [n.name for n in plan.nodes]),
    ):
        var = _variable(board, name)
        assert var["query"].split(",") == values and var["includeAll"] and var["multi"]
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert [r for r in rows if r.startswith("Site ")] == [
        f"Site {s.name} ({s.provider.value} {s.region})" for s in plan.sites
    ]
    titles = {p["title"] for p in board["panels"]}
    pairs = grafana.tunnel_pairs(plan)
    assert pairs and all(f"{a} ↔ {b}" in titles for a, b in pairs)
    tunnels = {(n.name, p.node) for n in plan.nodes if n.tunnel for p in n.tunnel.peers}
    assert {(a, b) for a, b in pairs} == {tuple(sorted(t)) for t in tunnels}


def test_a_large_mesh_gets_a_panel_per_node_not_per_pair(plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grafana, "PAIR_PANELS", 0)
    board = grafana.dashboard(plan)
    titles = [p["title"] for p in board["panels"]]
    assert not any("↔" in t for t in titles)
    assert {f"{n.name}: tunnels" for n in plan.nodes} <= set(titles)


def test_prometheus_scrapes_every_agent_and_every_hubble(plan: Plan) -> None:
    config = grafana.scrape_config(plan)
    jobs = {j["job_name"]: j["static_configs"] for j in config["scrape_configs"]}
    hubble = {c["labels"]["node"]: c["targets"] for c in jobs["hubble"]}
    assert hubble == {n.name: [f"{n.address}:9965"] for n in plan.nodes}
    agents = {c["labels"]["node"]: c for c in jobs["crossmesh-agent"]}
    assert agents and all(c["targets"] == [f"{plan.node(n).address}:9962"] for n, c in agents.items())
    for c in jobs["crossmesh-agent"]:
        node = plan.node(c["labels"]["node"])
        assert c["labels"] == {"node": node.name, "site": node.site, "cluster": node.cluster}
