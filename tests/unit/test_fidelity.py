"""Issue 10's proof: the rendered files alone — read back as wg-quick, Cilium and Talos read them
(render/readback.py) — give every pair class the plan states, with one encryption layer and the
plan's MTU. The lab proves the same MTU with DF probes (`crossmesh test`, mtu/* and fidelity/*)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from crossmesh.model.plan import Plan
from crossmesh.render import readback
from crossmesh.render.files import RenderedFile
from crossmesh.workspace import compile_mesh, rendered

ROOT = Path(__file__).resolve().parents[2]
CASES = ["examples/three-clouds", "tests/meshes/hybrid-wireguard", "tests/golden/gateways"]


def render_case(case: str, tmp: Path) -> tuple[Plan, dict[str, RenderedFile]]:
    shutil.copytree(ROOT / case, tmp / "m", ignore=shutil.ignore_patterns(".crossmesh", "expected", "state"))
    compiled = compile_mesh(tmp / "m" / "mesh.yaml")
    return compiled.plan, rendered(compiled)


def inventory(plan: Plan) -> list[readback.InventoryNode]:
    return [readback.InventoryNode(n.name, n.cluster, n.site, str(n.address)) for n in plan.nodes]


@pytest.mark.parametrize("case", CASES)
def test_every_pair_class_from_the_files_alone_is_the_plans(case: str, tmp_path: Path) -> None:
    plan, files = render_case(case, tmp_path)
    derived = readback.derive(files, inventory(plan))
    assert derived, "no Cilium cluster rendered"
    for d in derived:
        datapath = plan.cluster(d.cluster).datapath
        assert datapath is not None
        planned = {k.name: k for k in datapath.classes}
        assert d.name in planned and planned[d.name].connected, (d.cluster, d.name)
        k = planned[d.name]
        assert k.mtu is not None and d.mtu == k.mtu.value, (d.cluster, d.name, d.mtu, k.mtu)
        assert d.encryptions <= 1, f"{d.cluster} {d.name}: encrypted {d.encryptions} times"
        assert d.encapsulation == k.encapsulation, (d.cluster, d.name)
        # Exactly one layer wherever a pair crosses sites (wg-crossmesh), none inside a site or node.
        crosses = {
            "same-node": False,
            "same-site": False,
            "cross-site": True,
            "cross-cluster": any(
                a.site != b.site
                for a in plan.nodes
                if a.cluster == d.cluster
                for b in plan.nodes
                if b.cluster != d.cluster and plan.cluster(b.cluster).cni == "cilium"
            ),
        }[d.name]
        assert d.encryptions == int(crosses), (d.cluster, d.name, d.encryptions)
    # Every class the plan connects is made by the files too.
    for c in plan.clusters:
        assert c.datapath is not None
        made = {d.name for d in derived if d.cluster == c.name}
        assert made == {k.name for k in c.datapath.classes if k.connected}, c.name


@pytest.mark.parametrize("case", CASES)
def test_no_pod_cidr_is_carried_by_wireguard(case: str, tmp_path: Path) -> None:
    """A pod CIDR in AllowedIPs would be a second, native path next to the CNI's VXLAN."""
    plan, files = render_case(case, tmp_path)
    for n in plan.nodes:
        t = readback.node_tunnel(files, n.name)
        if t is None:
            continue
        for peer in t.peers.values():
            for a in peer.allowed_ips:
                assert not any(p.pod_cidr.overlaps(__import__("ipaddress").ip_network(a)) for p in plan.nodes), (
                    f"{t.source}: {a}"
                )


def test_a_values_file_that_encrypts_twice_is_caught(tmp_path: Path) -> None:
    """The derivation is not a mirror of the plan: Cilium's own WireGuard on top of wg-crossmesh shows
    as two layers and a pod MTU 80 bytes lower (Cilium's pkg/mtu)."""
    plan, files = render_case("examples/three-clouds", tmp_path)
    values = yaml.safe_load(files["clusters/cluster1/cilium-values.yaml"].content)
    values["encryption"] = {"enabled": True, "type": "wireguard"}
    broken = dict(files)
    broken["clusters/cluster1/cilium-values.yaml"] = RenderedFile(yaml.safe_dump(values))
    derived = {(d.cluster, d.name): d for d in readback.derive(broken, inventory(plan))}
    cross = derived["cluster1", "cross-cluster"]
    assert cross.encryptions == 2
    datapath = plan.cluster("cluster1").datapath
    assert datapath is not None and cross.mtu == datapath.pod_mtu.value - 80


def test_wg_quick_and_talos_read_back_alike() -> None:
    conf = (
        "[Interface]\nPrivateKey = k\nListenPort = 51820\nAddress = 100.64.0.1/32\nMTU = 1380\n"
        "[Peer]\n# b\nPublicKey = B\nEndpoint = 192.0.2.2:51820\nAllowedIPs = 100.64.0.2/32, 10.2.0.5/32\n"
    )
    talos = yaml.safe_dump(
        {
            "kind": "WireguardConfig",
            "name": "wg-crossmesh",
            "privateKey": "k",
            "listenPort": 51820,
            "mtu": 1380,
            "addresses": [{"address": "100.64.0.1/32"}],
            "peers": [
                {"publicKey": "B", "endpoint": "192.0.2.2:51820", "allowedIPs": ["100.64.0.2/32", "10.2.0.5/32"]}
            ],
            "routes": [{"destination": "100.64.0.2/32"}, {"destination": "10.2.0.5/32"}],
        }
    )
    a = readback.node_tunnel({"nodes/a/wg-crossmesh.conf": conf}, "a")
    b = readback.node_tunnel({"nodes/a/talos.yaml": talos}, "a")
    assert a is not None and b is not None
    assert (a.mtu, a.listen_port, a.addresses, a.peers, a.routes) == (
        b.mtu,
        b.listen_port,
        b.addresses,
        b.peers,
        b.routes,
    )
    # Talos makes only the routes its document lists: one missing is one missing.
    c = readback.node_tunnel({"nodes/a/talos.yaml": talos.replace("- destination: 10.2.0.5/32\n", "")}, "a")
    assert c is not None and c.routes == ("100.64.0.2/32",)
