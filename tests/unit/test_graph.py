"""`crossmesh graph`: the DOT picture of a plan against golden files, every user string shown exactly
as written (laid out by the real Graphviz), SVG that parses and names every node, and a clear
message when Graphviz is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from test_golden import GOLDEN, REGEN, node_names, state_copy
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.observe.health import TunnelHealth, tunnel_pairs
from crossmesh.render.graph import COLOURS, dot, quote
from crossmesh.workspace import compile_mesh

GRAPH_CASES = ["gateways", "hybrid"]
SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")


def graph(case: str, tmp: Path, *args: str) -> str:
    result = CliRunner().invoke(
        app, ["graph", str(GOLDEN / case / "mesh.yaml"), "--state", str(state_copy(case, tmp)), *args]
    )
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("case", GRAPH_CASES)
def test_dot_matches_golden(case: str, tmp_path: Path) -> None:
    text = graph(case, tmp_path)
    golden = GOLDEN / case / "graph.dot"
    if REGEN:
        golden.write_text(text)
    assert golden.is_file(), f"{case}: no graph.dot — run with CROSSMESH_REGEN_GOLDEN=1"
    assert text.splitlines() == golden.read_text().splitlines()


def test_the_picture_shows_what_the_plan_has(tmp_path: Path) -> None:
    """Gateways topology: gateway pairs are tunnels (the standby one dotted), the other nodes lead to
    their site's active gateway, NAT'd nodes are dashed, each site links to the internet."""
    text = graph("gateways", tmp_path)
    assert re.search(r'"node:gw-east-2" -- "node:gw-west" \[class="tunnel unknown"', text)
    assert re.search(r'"node:gw-east-1" -- "node:gw-west" \[class="tunnel unknown standby".*style="dotted"', text)
    assert '"node:edge-1" -- "node:gw-east-2" [class="via-gateway"' in text
    assert not re.search(r'"node:edge-1" -- "node:gw-west"', text)  # no tunnel of its own
    nat = re.search(r'"node:west-worker-1" \[class="node nat".*style="dashed,rounded"', text)
    assert nat and "behind NAT" in nat.group(0)
    assert re.search(r'"node:gw-west" \[class="node gateway".*shape="hexagon"', text)
    assert 'label="site aws-west\\naws us-west-2\\n10.40.0.0/16"' in text
    assert text.count('"internet" -- ') == 2


def test_full_mesh_draws_every_cross_site_pair_once(tmp_path: Path) -> None:
    compiled = compile_mesh(GOLDEN / "hybrid" / "mesh.yaml", state_copy("hybrid", tmp_path), persist=False)
    text = dot(compiled.plan)
    tunnels = re.findall(r'"node:([^"]+)" -- "node:([^"]+)" \[class="tunnel', text)
    expected = {(a, b) for (a, b), _ in tunnel_pairs(compiled.plan)}
    assert set(tunnels) == expected and len(tunnels) == len(expected)
    site = {n.name: n.site for n in compiled.plan.nodes}
    assert all(site[a] != site[b] for a, b in tunnels)


def test_tunnels_are_coloured_by_health(tmp_path: Path) -> None:
    compiled = compile_mesh(GOLDEN / "gateways" / "mesh.yaml", state_copy("gateways", tmp_path), persist=False)
    health = {
        ("gw-east-2", "gw-west"): TunnelHealth(4.0, 2048, 1024),
        ("gw-east-1", "gw-west"): TunnelHealth(None, 0, 0),
    }
    text = dot(compiled.plan, health)
    up = re.search(r'"node:gw-east-2" -- "node:gw-west" \[([^\]]*)\]', text)
    assert up and 'class="tunnel up"' in up.group(1) and f'color="{COLOURS["up"]}"' in up.group(1)  # type: ignore[index]
    assert 'label="3.0 KiB"' in up.group(1) and "handshake 4 s ago" in up.group(1)
    down = re.search(r'"node:gw-east-1" -- "node:gw-west" \[([^\]]*)\]', text)
    assert down and 'class="tunnel down standby"' in down.group(1) and "handshake never" in down.group(1)


HOSTILE = ['a"b', "back\\slash", "\\N \\G \\l", "<b>bold</b>", "&lt; &amp; &", 'x"] ; node [label="y']


@needs_dot
@pytest.mark.parametrize("text", HOSTILE)
def test_quoted_text_shows_exactly_as_written(text: str) -> None:
    """What a mesh file says is what the picture shows: no escape, entity or HTML label is interpreted."""
    svg = subprocess.run(
        ["dot", "-Tsvg"], input=f"graph g {{ n [label={quote(text)}]; }}", capture_output=True, text=True, check=True
    ).stdout
    shown = [t.text for t in ET.fromstring(svg).iter(f"{SVG}text")]
    assert shown == [text]


@needs_dot
def test_a_hostile_region_is_shown_as_written(tmp_path: Path) -> None:
    mesh = yaml.safe_load((GOLDEN / "gateways" / "mesh.yaml").read_text())
    mesh["spec"]["sites"][1]["region"] = 'us"west\\N <i>&amp;'
    case = tmp_path / "case"
    shutil.copytree(GOLDEN / "gateways", case)
    (case / "mesh.yaml").write_text(yaml.safe_dump(mesh))
    for p in [case / "state", *(case / "state").rglob("*")]:
        p.chmod(0o700 if p.is_dir() else 0o600)
    result = CliRunner().invoke(app, ["graph", str(case / "mesh.yaml"), "--state", str(case / "state"), "-o", "svg"])
    assert result.exit_code == 0, result.output
    shown = [t.text for t in ET.fromstring(result.stdout).iter(f"{SVG}text")]
    assert 'aws us"west\\N <i>&amp;' in shown


@needs_dot
@pytest.mark.parametrize("case", GRAPH_CASES)
def test_svg_is_xml_naming_every_node(case: str, tmp_path: Path) -> None:
    out = tmp_path / "mesh.svg"
    graph(case, tmp_path, "-o", "svg", "--output-file", str(out))
    root = ET.fromstring(out.read_text())
    assert root.tag == f"{SVG}svg"
    shown = {t.text for t in root.iter(f"{SVG}text")}
    names = set(node_names(case))
    assert names <= shown
    ids = {g.get("id") for g in root.iter(f"{SVG}g")}
    assert {f"node:{n}" for n in names} <= ids


def test_svg_without_graphviz_says_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = CliRunner().invoke(
        app,
        ["graph", str(GOLDEN / "gateways" / "mesh.yaml"), "--state", str(state_copy("gateways", tmp_path))]
        + ["-o", "svg"],
    )
    assert result.exit_code == 2
    assert "install graphviz" in " ".join(result.output.split())
    assert os.environ["PATH"] == str(empty)


def test_output_file_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "graph",
            str(GOLDEN / "gateways" / "mesh.yaml"),
            "--state",
            str(state_copy("gateways", tmp_path)),
            "--output-file",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert "--output-file" in result.output and "is a folder" in result.output


def test_past_forty_tunnels_one_edge_per_site_pair_counts_them(tmp_path: Path) -> None:
    """A 30-node full mesh over 5 sites (360 tunnels) draws 10 site-pair edges, each naming its 36 tunnels
    and coloured by the worst of them."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from gen_mesh import mesh_yaml

    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(mesh_yaml(5, 30))
    plan = compile_mesh(mesh, tmp_path / "state", persist=False, dry_run=True).plan
    assert len(tunnel_pairs(plan)) == 360
    down = {("s00-n000", "s01-n000"): TunnelHealth(None, 0, 0)}
    health = {p: TunnelHealth(3.0, 100, 100) for p, _ in tunnel_pairs(plan)} | down
    text = dot(plan, health)
    bundles = re.findall(r'\[class="tunnels (\w+)".*label="([^"]*)"', text)
    assert len(bundles) == 10 and not re.search(r'class="tunnel ', text)
    assert ("down", "36 tunnels: 1 down, 35 up, 6.8 KiB") in bundles
    assert bundles.count(("up", "36 tunnels: 36 up, 7.0 KiB")) == 9
