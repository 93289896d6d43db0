"""Intents under `topology: gateways` (issue 16): every node gets one — a node without a tunnel runs an
agent for its routes via the site's active gateway — carrying its gateway flag and site network; a full
mesh's intents read and encode as before; and an intent whose addresses are not addresses is refused
before anything reaches `ip`."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from crossmesh.agent import intents, records
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]


def _plan(tmp_path: Path, case: str):  # type: ignore[no-untyped-def]
    source = ROOT / "tests" / "golden" / case if case == "gateways" else ROOT / "examples" / case
    shutil.copytree(source, tmp_path / case, ignore=shutil.ignore_patterns("expected"))
    return compile_mesh(tmp_path / case / "mesh.yaml", tmp_path / "state", dry_run=True).plan


def test_every_node_of_a_gateways_mesh_has_an_intent_and_routes_via_its_active_gateway(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "gateways")
    planned = records.intent_of(plan)
    assert set(planned) == {n.name for n in plan.nodes}
    worker = planned["east-worker-1"]
    assert (worker.tunnel_address, worker.listen_port, worker.gateway, worker.site_network) == (
        "",
        0,
        False,
        "10.30.0.0/16",
    )
    assert planned["gw-east-1"].gateway and planned["gw-east-2"].gateway and not planned["west-worker-1"].gateway
    view = records.GatewayView.of(planned, {})
    assert view.active == {"dc-east": "gw-east-2", "aws-west": "gw-west"}  # public before NAT, then name
    assert view.routes("east-worker-1", planned) == {"10.40.0.0/16": "10.30.0.11"}
    assert view.routes("gw-east-1", planned) == {"10.40.0.0/16": "10.30.0.11"}  # the standby too
    assert view.routes("gw-east-2", planned) == {}  # the active gateway routes into its tunnel
    # etcd moves dc-east to gw-east-1: every node of the site follows; a foreign name counts for nothing
    moved = records.GatewayView.of(planned, {"dc-east": "gw-east-1"})
    assert moved.routes("east-worker-1", planned) == {"10.40.0.0/16": "10.30.0.10"}
    assert records.GatewayView.of(planned, {"dc-east": "gw-west"}).active["dc-east"] == "gw-east-2"
    for name, p in planned.items():
        intent = intents.NodeIntent(3, p, 1400, 20)
        assert intents.decode_intent(intent.encode(), name) == intent


def test_a_full_mesh_intent_carries_no_gateway_fields(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "three-clouds")
    for name, p in records.intent_of(plan).items():
        data = json.loads(intents.NodeIntent(1, p, 1420, 25).encode())
        assert "gateway" not in data["node"] and "site_network" not in data["node"]
        assert intents.decode_intent(json.dumps(data).encode(), name).node == p


GOOD = records.PlannedNode("n", "c", "s", "10.0.0.5", "10.244.1.0/24", "100.64.0.5", 51820, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"address": "10.0.0.5 dev lo"}, "address '10.0.0.5 dev lo' is not an IPv4 address"),
        ({"tunnel_address": "100.64.0.5/32\naddr flush dev eth0"}, "tunnel_address .* is not an IPv4 address"),
        ({"pod_cidr": "10.244.1.0"}, None),  # a host is a /32 network: accepted
        ({"pod_cidr": "10.244.1.1/24"}, "pod_cidr .* is not an IPv4 network"),
        ({"public_address": "example.com"}, "public_address 'example.com' is not an IPv4 address"),
        ({"site_network": "10.0.0.0/33", "gateway": True}, "site_network .* is not an IPv4 network"),
        ({"listen_port": 0}, r"listen_port 0 out of range 1\.\.65535"),
        ({"tunnel_address": "", "listen_port": 0}, "no tunnel_address"),
        ({"tunnel_address": "", "listen_port": 51820, "site_network": "10.0.0.0/16"}, "listen_port 51820"),
        ({"tunnel_address": "", "listen_port": 0, "site_network": "10.0.0.0/16"}, None),
    ],
)
def test_an_intent_whose_addresses_are_not_addresses_is_refused(change: dict[str, object], message: str | None) -> None:
    raw = intents.NodeIntent(1, replace(GOOD, **change), 1420, 25).encode()  # type: ignore[arg-type]
    if message is None:
        assert intents.decode_intent(raw, "n").node == replace(GOOD, **change)  # type: ignore[arg-type]
        return
    with pytest.raises(intents.IntentError, match=message):
        intents.decode_intent(raw, "n")


def test_a_gateway_named_preferred_comes_first_in_the_plan_and_for_the_agents(tmp_path: Path) -> None:
    """gw-east-1 is behind NAT and would sort after gw-east-2; `preferred: true` puts it first."""
    shutil.copytree(ROOT / "tests" / "golden" / "gateways", tmp_path / "g", ignore=shutil.ignore_patterns("expected"))
    mesh = tmp_path / "g" / "mesh.yaml"
    text = mesh.read_text()
    mesh.write_text(
        text.replace(
            "address: 10.30.0.10\n          gateway: true",
            "address: 10.30.0.10\n          gateway: true\n          preferred: true",
        )
    )
    plan = compile_mesh(mesh, tmp_path / "state", dry_run=True).plan
    worker = plan.node("east-worker-1")
    assert {str(r.gateway) for r in worker.routes} == {"10.30.0.10"}  # routes via gw-east-1
    planned = records.intent_of(plan)
    assert planned["gw-east-1"].preferred and not planned["gw-east-2"].preferred
    assert records.GatewayView.of(planned, {}).active["dc-east"] == "gw-east-1"
