"""`crossmesh ui`'s server without a browser: its JSON views from fixed lab readings, the trace it
answers for a flow (the same as `policy trace`), the relay reader's distrust of what it reads, and
the command's refusals (a port in use, a lab that is not running)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.istio.index import istio_index
from crossmesh.observe.views import parse_health
from crossmesh.policy.endpoints import mesh_index
from crossmesh.render.graph import COLOURS
from crossmesh.ui.relay import FlowHub
from crossmesh.ui.server import Ui, make_app
from crossmesh.ui.sources import Fixed, NoLab
from crossmesh.workspace import compile_mesh

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-clouds"
NOW = 1_800_000_000.0
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Any:
    mesh = tmp_path_factory.mktemp("ui") / "three-clouds"
    shutil.copytree(EXAMPLE, mesh)
    return compile_mesh(mesh / "mesh.yaml", mesh / "state")  # keys made: tunnels are known by them


def ui_of(compiled: Any, readings: Any) -> Ui:
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    istio = istio_index(compiled.plan, compiled.loaded.manifests)  # three-clouds runs Istio
    return Ui(compiled.plan, index, readings, FlowHub(None), "test", clock=lambda: NOW, istio=istio)


def get(ui: Ui, url: str) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        async with TestClient(TestServer(make_app(ui))) as client:
            response = await client.get(url)
            return response.status, await response.json()

    return asyncio.run(go())


def key(compiled: Any, node: str) -> str:
    return next(p.public_key for n in compiled.plan.nodes if n.tunnel for p in n.tunnel.peers if p.node == node)


def test_topology_colours_tunnels_by_the_handshakes_both_ends_report(compiled: Any) -> None:
    aws, azure, gcp = "aws-talos-1", "azure-talos-1", "gcp-talos-1"
    stats = {
        aws: {key(compiled, azure): (int(NOW) - 10, 5000, 7000, None), key(compiled, gcp): (0, 0, 0, None)},
        azure: {key(compiled, aws): (int(NOW) - 500, 7000, 5000, None)},  # older than aws's view: aws's wins
        gcp: {key(compiled, azure): (int(NOW) - 400, 10, 10, None)},
    }
    status, data = get(ui_of(compiled, Fixed(tunnels=stats)), "/api/topology")
    assert status == 200
    tunnels = {(t["a"], t["b"]): t for t in data["tunnels"]}
    assert tunnels[(aws, azure)]["health"] == "up" and tunnels[(aws, azure)]["handshakeAge"] == 10
    assert tunnels[(aws, gcp)]["health"] == "down"
    assert tunnels[(azure, gcp)]["health"] == "stale"
    assert data["summary"] == {"up": 1, "stale": 1, "down": 1, "unknown": 0}
    if shutil.which("dot"):
        svg = ET.fromstring(data["svg"])
        edges = {g.get("id"): g for g in svg.iter(f"{SVG}g")}
        for (a, b), state in [((aws, azure), "up"), ((aws, gcp), "down"), ((azure, gcp), "stale")]:
            edge = edges[f"tunnel:{a}|{b}"]
            assert edge.get("class") == f"edge tunnel {state}"
            assert next(edge.iter(f"{SVG}path")).get("stroke") == COLOURS[state]


def test_without_a_lab_tunnels_are_unknown(compiled: Any) -> None:
    _, data = get(ui_of(compiled, NoLab()), "/api/topology")
    assert not data["healthRead"] and {t["health"] for t in data["tunnels"]} == {"unknown"}


def test_a_dead_local_backend_moves_service_to_the_next_tier(compiled: Any) -> None:
    """relay in cluster1 has affinity local: tier 1 is cluster1's relay-0; when it is down, tier 2 serves."""
    relay0 = next(p for p in compiled.plan.pods() if p.ref == "cluster1/default/relay-0")
    dead = {("cluster1/default/relay-0", str(relay0.address), 8080): False}
    _, before = get(ui_of(compiled, Fixed()), "/api/services")
    _, after = get(ui_of(compiled, Fixed(health=dead)), "/api/services")

    def relay(data: dict[str, Any]) -> dict[str, Any]:
        return next(s for s in data["services"] if s["service"] == "cluster1/default/relay")

    assert relay(before)["serving"] == 0 and relay(after)["serving"] == 1
    assert relay(after)["tiers"][0][0]["healthy"] is False


def test_trace_of_a_dropped_flow_is_policy_trace(compiled: Any) -> None:
    url = "/api/trace?from=cluster1/default/x-wing-0&to=cluster3/default/rebel-base-0&port=80&proto=TCP"
    status, data = get(ui_of(compiled, NoLab()), url)
    assert status == 200 and data["verdict"] == "denied"
    assert data["lines"][0].endswith("80/TCP: denied")
    assert any("NetworkPolicy cluster1/default/default-deny" in line for line in data["lines"])
    cli = CliRunner().invoke(
        app,
        [
            "policy",
            "trace",
            str(compiled.loaded.path),
            "--from",
            "cluster1/default/x-wing-0",
            "--to",
            "cluster3/default/rebel-base-0",
            "--port",
            "80/TCP",
            "-o",
            "json",
        ],
    )
    assert json.loads(cli.stdout) == data["trace"]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("from=nobody&to=cluster3/default/rebel-base-0&port=80&proto=TCP", "neither a pod"),
        ("from=cluster1/default/x-wing-0&to=cluster3/default/rebel-base-0&port=80&proto=ICMP", "PORT/PROTO"),
        ("from=cluster1/default/x-wing-0", "missing to, port, proto"),
    ],
)
def test_trace_of_bad_input_says_what_is_wrong(compiled: Any, query: str, words: str) -> None:
    status, data = get(ui_of(compiled, NoLab()), f"/api/trace?{query}")
    assert status == 400 and words in data["error"]


def test_relay_lines_are_checked_before_a_page_sees_them() -> None:
    hub = FlowHub(None)
    good = {
        "flow": {
            "time": NOW,
            "node": "n",
            "verdict": "DROPPED",
            "protocol": "TCP",
            "source": {"address": "10.0.0.1"},
            "destination": {"address": "10.0.0.2"},
        }
    }
    lines = [b"not json", b"[1]", b'{"flow": {"time": "x"}}', b'{"hello": 1}', b"x" * 70000, json.dumps(good).encode()]
    hub.take(b"\n".join(lines) + b"\n")
    hub.take(b'{"nodes": {"n": {"recorded": 1, "lost": 2, "error": ""}}}')
    assert hub.rejected == 5 and not hub.nodes, "a status line counts once its newline is in"
    hub.take(b"\n")
    assert hub.rejected == 5
    assert [f["verdict"] for f in hub.recent] == ["DROPPED"]
    assert hub.status()["nodes"]["n"]["lost"] == 2


def test_health_file_entries_of_the_wrong_shape_are_skipped() -> None:
    data = {"backends": {"c/ns/p@10.0.0.1:80": {"healthy": False}, "junk": {}, "c/ns/q@10.0.0.2:x": {}}}
    assert parse_health(data) == {("c/ns/p", "10.0.0.1", 80): False}
    assert parse_health(["nope"]) == {}


def test_a_port_in_use_exits_2_naming_the_fix(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "--mesh", str(tmp_path / "mesh.yaml"), "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port} is in use: pass --port" in " ".join(result.output.split())


def test_a_lab_that_is_not_running_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["ui", "--lab", f"cm-nosuch{int(time.time())}", "--port", "0"])
    assert result.exit_code == 2 and "is running" in result.output


def test_of_a_long_history_the_hub_shows_the_newest_flows_then_follows(tmp_path: Path) -> None:
    """The relay's history (full rings: thousands of records) is the backdrop of a page: the hub
    hands pages its newest `keep` flows, in time order, then the status, then what comes next."""
    from crossmesh.drivers.lab.flowrelay import Relay
    from crossmesh.observe.flows import Flow, FlowEndpoint, Verdict

    def record(t: float, node: str) -> Flow:
        return Flow(t, node, Verdict.DROPPED, "UDP", FlowEndpoint("10.0.0.1"), FlowEndpoint("10.0.0.2"), 1, 53)

    start = time.time() - 100

    async def until(condition: Any) -> None:
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not within 5 s")

    async def go() -> tuple[list[dict[str, Any]], FlowHub]:
        relay = Relay(["n1", "n2"])
        server = await relay.serve(tmp_path / "flows.sock")
        for node, offset in (("n1", 0.0), ("n2", 0.005)):
            relay.add(node, [record(start + i * 0.01 + offset, node) for i in range(3000)])
        hub = FlowHub(tmp_path / "flows.sock", keep=50)
        page = hub.subscribe()
        task = asyncio.create_task(hub.run())
        await until(lambda: hub.nodes)
        relay.add("n1", [record(time.time(), "n1")])
        await until(lambda: hub.recent[-1]["time"] > start + 100)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await until(lambda: not relay.clients)  # the relay saw the hub leave
        server.close()
        return [page.get_nowait() for _ in range(page.qsize())], hub

    messages, hub = asyncio.run(go())
    newest = sorted(start + i * 0.01 + o for i in range(3000) for o in (0.0, 0.005))[-50:]
    flows = [m["flow"]["time"] for m in messages if "flow" in m]
    assert flows[:50] == newest, "the newest 50 of the history, oldest first"
    assert len(flows) == 51 and flows[50] > newest[-1], "then the flow recorded after the status"
    kinds = [next(iter(m)) for m in messages]
    assert kinds.index("nodes") == kinds.index("flow") + 50, "the status comes after the history's flows"
    assert hub.nodes["n1"]["recorded"] == 3000 and hub.rejected == 0


def test_a_relay_closing_before_its_status_still_shows_its_history_each_line_judged(tmp_path: Path) -> None:
    from crossmesh.observe import wire
    from crossmesh.observe.flows import Flow, FlowEndpoint, Verdict

    now = time.time()
    good = [
        wire.flow_line(
            Flow(now - i, "n1", Verdict.FORWARDED, "TCP", FlowEndpoint("10.0.0.1"), FlowEndpoint("10.0.0.2"))
        )
        for i in (3, 2, 1)
    ]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.writelines([good[0], b'{"flow": {"time": "soon"}}\n', good[1], b'{"flow":[1]}\n', good[2]])
        await writer.drain()
        writer.close()

    async def go() -> FlowHub:
        server = await asyncio.start_unix_server(answer, str(tmp_path / "flows.sock"))
        hub = FlowHub(tmp_path / "flows.sock")
        task = asyncio.create_task(hub.run())
        for _ in range(500):
            if hub.state == "unreachable":
                break
            await asyncio.sleep(0.01)
        task.cancel()
        server.close()
        return hub

    hub = asyncio.run(go())
    assert [f["time"] for f in hub.recent] == [now - 3, now - 2, now - 1]
    assert hub.rejected == 2 and hub.error == "the relay closed the connection"
