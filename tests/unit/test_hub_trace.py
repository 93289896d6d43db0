"""`crossmesh trace` through a hub's IPsec site pair (plan/hubtrace.py), from the plan alone: seed 001's
12-step flow on the hybrid example, the tunnel the caller read from the lab's counters, the answer's way
back, a node port as `node/NAME`, and the same crossing on tests/meshes/hybrid-tgw in both directions."""

from __future__ import annotations

import shutil
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.model.plan import Plan
from crossmesh.plan import hubtrace
from crossmesh.plan.trace import Hop, TraceError, trace
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]
HYBRID = ROOT / "examples" / "hybrid-openstack-aws"
TGW = ROOT / "tests" / "meshes" / "hybrid-tgw"
DEMO, TKB = "k3s/demo/demo-app-0", "k3s/microservices/tkb-0"
IDS = {
    DEMO: "spiffe://cluster.local/ns/demo/sa/demo-app",
    TKB: "spiffe://cluster.local/ns/microservices/sa/tkb-service",
}


def _copy(tmp: Path, source: Path) -> Path:
    shutil.copytree(source, tmp / source.name, ignore=shutil.ignore_patterns(".crossmesh"))
    return tmp / source.name / "mesh.yaml"


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return compile_mesh(_copy(tmp_path_factory.mktemp("h"), HYBRID)).plan


@pytest.fixture(scope="module")
def tgw(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return compile_mesh(_copy(tmp_path_factory.mktemp("t"), TGW)).plan


def _by(hops: tuple[Hop, ...], device: str) -> list[Hop]:
    return [h for h in hops if h.device == device]


def test_seed_001_flow_has_all_twelve_steps_in_order(hybrid: Plan) -> None:
    t = trace(hybrid, DEMO, "k3s/microservices/tkb-service", 30080, "TCP", identities=IDS)
    assert sorted({h.seed for h in t.hops}) == list(range(1, 13))
    direct = trace(hybrid, DEMO, TKB, 3000, "TCP", identities=IDS)
    seeds = [h.seed for h in direct.hops]
    assert seeds == sorted(seeds) and 9 not in seeds  # pod to pod: no kube-proxy, the rest in the seed's order
    route = _by(t.hops, "ipsec-route")[0]
    assert "BGP route 10.100.0.0/16 from 169.254.10.1 (AS 64512) via ipsec0 — tunnel 1 of openstack-vpn" in route.action
    assert "active, local preference 200" in route.action and route.key == "ipsec0"
    assert "from 198.51.100.162 to tunnel 1's outside address (AWS's to assign)" in _by(t.hops, "esp-out")[0].action
    table = _by(t.hops, "tgw-vpc")[0].action
    assert (
        "route table main (associated with attachment openstack-vpn): 10.100.0.0/16 propagated from attachment aws"
        in table
    )
    assert "node aws-worker-1 (10.100.2.50)" in _by(t.hops, "vpc-in")[0].action
    assert t.delivery.action.endswith("(10.42.3.2:3000/TCP)") and t.delivery.seed == 10
    back = [h.device for h in t.hops if h.seed == 12]
    assert back == ["reply-hub-out", "reply-cgw-in", "veth-back"]
    assert [h.step for h in t.hops] == list(range(1, len(t.hops) + 1))


def test_the_tunnel_is_the_callers_and_outside_addresses_are_shown(hybrid: Plan) -> None:
    path = hubtrace.HubPath(
        tunnels={("openstack-vpn", hubtrace.REQUEST): 2, ("openstack-vpn", hubtrace.REPLY): 2},
        outside={("openstack-vpn", 2): IPv4Address("192.0.2.250")},
    )
    t = trace(hybrid, DEMO, TKB, 3000, "TCP", hub=path)
    route = _by(t.hops, "ipsec-route")[0]
    assert "via ipsec1 — tunnel 2 of openstack-vpn (169.254.20.0/30, standby" in route.action
    assert route.key == "ipsec1"
    assert "to 192.0.2.250" in _by(t.hops, "esp-out")[0].action
    assert {h.key for h in t.hops if h.device in ("esp-out", "esp-in", "reply-hub-out", "reply-cgw-in")} == {
        "openstack-vpn:2"
    }
    assert not _by(t.hops, "mesh")  # without identities, no mTLS hops


def test_node_port_is_translated_to_a_tkb_pod(hybrid: Plan) -> None:
    t = trace(hybrid, DEMO, "node/aws-worker-1", 30080, "TCP", backend="k3s/microservices/tkb-1", identities=IDS)
    assert t.backend == "k3s/microservices/tkb-1" and t.sent_to == "10.100.2.50:30080" and t.delivered_port == 3000
    nat = _by(t.hops, "nodeport-nat")[0]
    assert nat.seed == 9 and nat.key == "k3s/microservices/tkb-service 30080/TCP" and nat.node == "openstack-worker"
    assert not _by(t.hops, "mesh")  # a node's address is outside the mesh: no proxy wraps it
    assert {h.seed for h in t.hops} == set(range(1, 13)) - {2}


@pytest.mark.parametrize(
    ("target", "port", "says"),
    [
        ("node/nope", 30080, "no node nope — nodes: aws-worker-1, openstack-master, openstack-worker"),
        ("node/aws-worker-1", 30081, "no service of cluster k3s has node port 30081/TCP (node ports: 30080/TCP"),
    ],
)
def test_a_bad_node_port_says_what_exists(hybrid: Plan, target: str, port: int, says: str) -> None:
    with pytest.raises(TraceError) as err:
        trace(hybrid, DEMO, target, port, "TCP")
    assert says in str(err.value)


def test_hub_crossing_both_ways_on_hybrid_tgw(tgw: Plan) -> None:
    hops: list[Hop] = []

    def add(where: str, action: str, device: str, node: str, peer: str = "", seed: int = 0, key: str = "") -> None:  # noqa: PLR0913
        hops.append(Hop(len(hops) + 1, where, action, device, node, peer, seed=seed, key=key))

    path = hubtrace.HubPath()
    hubtrace.cross(tgw, tgw.node("openstack-worker"), tgw.node("aws-worker-1"), add, path)
    assert [h.device for h in hops] == ["site", "ipsec-route", "esp-out", "inet", "esp-in", "tgw-vpc", "vpc-in"]
    assert [h.seed for h in hops] == [4, 4, 5, 6, 6, 7, 8]
    assert [c.inbound for c in path.crossed] == [True]
    hops.clear()
    back = hubtrace.HubPath()
    hubtrace.cross(tgw, tgw.node("aws-worker-1"), tgw.node("openstack-master"), add, back)
    assert [h.device for h in hops] == ["site", "vpc-out", "tgw-vpn", "esp-hub-out", "esp-cgw-in"]
    assert (
        "10.0.1.0/24 propagated from attachment openstack-vpn → VPN attachment openstack-vpn, tunnel 1"
        in hops[2].action
    )
    assert hops[-1].peer == "openstack-master" and [c.inbound for c in back.crossed] == [False]


def test_cli_node_port_forms_exit_2_with_the_fix(tmp_path: Path) -> None:
    mesh = _copy(tmp_path, HYBRID)
    run = CliRunner()
    base = ["trace", str(mesh), "--from", DEMO, "--no-probe"]
    bad = run.invoke(app, [*base, "--to", "node/", "--port", "30080/TCP"])
    assert bad.exit_code == 2 and "a node port is node/NAME (e.g. node/aws-worker-1)" in bad.output
    no_port = run.invoke(app, [*base, "--to", "node/aws-worker-1"])
    assert no_port.exit_code == 2 and "--port is required" in no_port.output
    wrong = run.invoke(app, [*base, "--to", "node/aws-worker-1", "--port", "3000/TCP"])
    assert wrong.exit_code == 2 and "no service of cluster k3s has node port 3000/TCP" in wrong.output
    good = run.invoke(app, [*base, "--to", "node/aws-worker-1", "--port", "30080/TCP", "-o", "json"])
    assert good.exit_code == 0, good.output
    assert "node/NODE" in run.invoke(app, ["trace", "--help"]).output
