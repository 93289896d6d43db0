"""What a real cluster needs to be seen, as `render` writes it: Cilium's Hubble enabled with exactly
the metrics handlers whose series the rendered dashboard queries, on the port the rendered
Prometheus configuration scrapes, giving every label those queries use; its relay for `hubble
observe`; Cilium agent's own metrics off, since their port is the crossmesh agent's; and the agent's
DaemonSets and units serving that port, named and annotated, where prometheus.yml looks for it.

The labels Hubble gives each handler's series are Cilium's (observe/metrics.HUBBLE_HANDLERS, from
pkg/hubble/metrics/{flow,drop,policy}/handler.go); the chart's keys, schema and defaults are the
Cilium 1.20.0 chart's in tests/reference/cilium/v1.20.0."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from crossmesh.agent.config import listen_address
from crossmesh.cli.main import app
from crossmesh.observe import metrics as catalogue
from crossmesh.render import agent_deploy, cilium

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
CHART = REPO / "tests" / "reference" / "cilium" / "v1.20.0"
CASES = ("three-clouds", "hybrid", "gateways")


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("real-node")
    out = {}
    for case in CASES:
        mesh, state = GOLDEN / case / "mesh.yaml", base / "state" / case
        result = CliRunner().invoke(app, ["render", str(mesh), "--output-dir", str(base / case), "--state", str(state)])
        assert result.exit_code == 0, result.output
        out[case] = base / case
    return out


def cilium_values(tree: Path) -> dict[str, dict[str, Any]]:
    found = {p.parent.name: yaml.safe_load(p.read_text()) for p in sorted(tree.glob("clusters/*/cilium-values.yaml"))}
    assert found, f"{tree}: no Cilium values"
    return found


def scrape_jobs(tree: Path) -> dict[str, list[dict[str, Any]]]:
    config = yaml.safe_load((tree / "observability" / "prometheus.yml").read_text())
    return {j["job_name"]: j["static_configs"] for j in config["scrape_configs"]}


def queries(tree: Path) -> list[str]:
    board = json.loads((tree / "observability" / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


# PromQL as the dashboard writes it: `by (a, b)` groupings and `{k="v", k=~"…"}` matchers.
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def labels_used(expr: str) -> set[str]:
    """The labels a PromQL expression groups or matches on (`le` is a histogram's, not a metric's)."""
    used = {label.strip() for group in _BY.findall(expr) for label in group.split(",") if label.strip()}
    used |= {key for body in _MATCHERS.findall(expr) for key in _MATCHER_KEY.findall(body)}
    return used - {"le"}


def hubble_label_gaps(exprs: list[str], entries: list[str], target_labels: set[str]) -> dict[str, list[str]]:
    """Per query on a `hubble_*` series: the labels it uses that neither the handler enabled by
    `entries` gives that series nor the scrape job puts on every target; a query on a series no
    enabled handler produces names the series."""
    produced = {}
    for entry in entries:
        name, labels = catalogue.hubble_entry_labels(entry)
        handler = next(h for h in catalogue.HUBBLE_HANDLERS if h.name == name)
        produced[handler.metric.name] = labels
    gaps = {}
    for expr in exprs:
        hubble = [m for m in catalogue.selected(expr) if m.name.startswith("hubble_")]
        if not hubble:
            continue
        assert len(catalogue.selected(expr)) == 1, f"{expr}: one series per query, or the labels are ambiguous"
        (metric,) = hubble
        if metric.name not in produced:
            gaps[expr] = [f"no handler enabled for {metric.name}"]
            continue
        missing = sorted(labels_used(expr) - produced[metric.name] - target_labels)
        if missing:
            gaps[expr] = missing
    return gaps


# Hubble ----------------------------------------------------------------------------------------
def test_every_hubble_series_in_the_catalogue_has_its_handler() -> None:
    hubble = [m for m in catalogue.CATALOGUE if m.name.startswith("hubble_")]
    assert hubble and {h.metric for h in catalogue.HUBBLE_HANDLERS} == set(hubble)
    assert [h.name for h in catalogue.HUBBLE_HANDLERS] == ["flow", "drop", "policy"]
    # What only the lab serves is not expected of Hubble: its own loss counters, the service daemon's.
    lab = [m for m in catalogue.CATALOGUE if catalogue.lab_only(m)]
    names = {m.name for m in lab}
    assert {"crossmesh_flows_lost_total", "crossmesh_service_backends"} <= names
    assert not names & {m.name for m in hubble}
    assert all(m.source is not catalogue.Source.AGENT for m in lab)  # real nodes run the agent


@pytest.mark.parametrize("case", CASES)
def test_the_dashboards_hubble_queries_use_only_labels_the_enabled_handlers_give(
    trees: dict[str, Path], case: str
) -> None:
    exprs = queries(trees[case])
    jobs = scrape_jobs(trees[case])
    target_labels = set.intersection(*(set(c["labels"]) for c in jobs["hubble"]))
    assert target_labels == {"node", "site", "cluster"}
    read = {m.name for e in exprs for m in catalogue.selected(e) if m.name.startswith("hubble_")}
    assert read == {"hubble_flows_processed_total", "hubble_drop_total", "hubble_policy_verdicts_total"}
    for cluster, values in cilium_values(trees[case]).items():
        entries = values["hubble"]["metrics"]["enabled"]
        assert hubble_label_gaps(exprs, entries, target_labels) == {}, f"{case}: {cluster}"
        # exactly what the dashboard reads: no handler whose series nobody queries
        assert {catalogue.hubble_entry_labels(e)[0] for e in entries} == {
            h.name for h in catalogue.HUBBLE_HANDLERS if h.metric.name in read
        }


def test_the_label_check_catches_what_hubble_does_not_give() -> None:
    entries = cilium.hubble_metrics()
    targets = {"node", "site", "cluster"}
    # the lab's flow daemon names the deciding policy; Cilium's policy handler has no such label
    by_policy = 'sum by (policy) (rate(hubble_policy_verdicts_total{node=~"$node"}[5m]))'
    assert hubble_label_gaps([by_policy], entries, targets) == {by_policy: ["policy"]}
    by_source = "sum by (source) (rate(hubble_drop_total[5m]))"
    assert hubble_label_gaps([by_source], entries, targets) == {by_source: ["source"]}
    assert hubble_label_gaps([by_source], ["drop:sourceContext=namespace"], targets) == {}
    unserved = ["no handler enabled for hubble_drop_total"]
    assert hubble_label_gaps([by_source], ["flow"], targets) == {by_source: unserved}
    assert labels_used('histogram_quantile(0.9, sum by (le, node) (rate(x_bucket{site=~"a", cert!="b"}[1m])))') == {
        "node",
        "site",
        "cert",
    }


def test_hubble_entries_are_read_as_hubble_parses_them() -> None:
    name, labels = catalogue.hubble_entry_labels(
        "policy:sourceContext=namespace|pod;destinationContext=pod;labelsContext=source_namespace,traffic_direction"
    )
    assert name == "policy"
    assert labels == {"direction", "match", "action", "source", "destination", "source_namespace", "traffic_direction"}
    # the per-direction contexts choose values, they add no label; unknown options are the handler's
    assert catalogue.hubble_entry_labels("drop:sourceEgressContext=pod;exemplars=true")[1] == {"reason", "protocol"}
    with pytest.raises(ValueError, match="no handler 'dns'"):
        catalogue.hubble_entry_labels("dns:query")
    with pytest.raises(ValueError, match="labelsContext"):
        catalogue.hubble_entry_labels("flow:labelsContext=source_pod,pod_uid")


@pytest.mark.parametrize("case", CASES)
def test_hubble_serves_where_prometheus_scrapes_and_its_relay_runs(trees: dict[str, Path], case: str) -> None:
    ports = {c["targets"][0].rsplit(":", 1)[1] for c in scrape_jobs(trees[case])["hubble"]}
    for cluster, values in cilium_values(trees[case]).items():
        hubble = values["hubble"]
        assert hubble["enabled"] is True and hubble["relay"] == {"enabled": True}, f"{case}: {cluster}"
        assert ports == {str(hubble["metrics"]["port"])} == {str(catalogue.HUBBLE_PORT)}


def test_cilium_agents_own_metrics_stay_off_because_their_port_is_the_crossmesh_agents(
    trees: dict[str, Path],
) -> None:
    chart = yaml.safe_load((CHART / "values.yaml").read_text())
    # Both run on the host network of every node: enabled, Cilium's would take the agent's port
    assert chart["prometheus"]["port"] == catalogue.AGENT_PORT
    for case in CASES:
        for cluster, values in cilium_values(trees[case]).items():
            assert values["prometheus"] == {"enabled": False}, f"{case}: {cluster}"


# The agent ---------------------------------------------------------------------------------------
def agent_pods(tree: Path) -> list[dict[str, Any]]:
    pods = [
        d["spec"]["template"]
        for p in sorted(tree.glob("clusters/*/crossmesh-agent.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d["kind"] == "DaemonSet"
    ]
    assert pods
    return pods


@pytest.mark.parametrize("case", CASES)
def test_the_agents_daemonsets_serve_metrics_where_prometheus_scrapes(trees: dict[str, Path], case: str) -> None:
    scraped = {c["targets"][0].rsplit(":", 1)[1] for c in scrape_jobs(trees[case])["crossmesh-agent"]}
    assert scraped == {str(catalogue.AGENT_PORT)}
    for pod in agent_pods(trees[case]):
        (container,) = pod["spec"]["containers"]
        assert pod["spec"]["hostNetwork"] is True  # the container port is the node's, where prometheus.yml looks
        assert container["ports"] == [{"name": "metrics", "containerPort": catalogue.AGENT_PORT, "protocol": "TCP"}]
        assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "9962"}
        args = container["args"]
        address = args[args.index("--metrics-address") + 1]
        assert listen_address(address) == ("", catalogue.AGENT_PORT)  # every address of the node


@pytest.mark.parametrize("case", CASES)
def test_the_agents_units_serve_metrics_on_the_same_port(trees: dict[str, Path], case: str) -> None:
    units = sorted(trees[case].glob("nodes/*/crossmesh-agent.service"))
    if not units:
        pytest.skip(f"{case}: Talos only, no systemd units")
    for unit in units:
        (exec_start,) = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
        words = exec_start.split()
        assert words[words.index("--metrics-address") + 1] == agent_deploy.METRICS_ADDRESS == ":9962", unit


# The dashboard -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_panels_reading_what_only_the_lab_serves_say_so(trees: dict[str, Path], case: str) -> None:
    board = json.loads((trees[case] / "observability" / "grafana-dashboard.json").read_text())
    marked = 0
    for panel in (p for p in board["panels"] if p["type"] != "row"):
        lab = {m.name for t in panel["targets"] for m in catalogue.selected(t["expr"]) if catalogue.lab_only(m)}
        description = panel.get("description", "")
        assert ("Lab only" in description) == bool(lab), panel["title"]
        assert all(name in description for name in lab), panel["title"]
        marked += bool(lab)
    assert marked == 4  # the three service panels and the nftables policy drops
