"""`lab cut-tunnel`'s pure part: which tunnel a user names, what the internet then drops, and the
messages for a tunnel the lab does not have."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crossmesh import nft
from crossmesh.drivers.lab import topology, tunnelcut
from crossmesh.errors import UsageError
from crossmesh.workspace import Compiled, compile_mesh

ROOT = Path(__file__).resolve().parents[2]


def _compiled(tmp_path: Path, example: str) -> tuple[Compiled, topology.LabTopology]:
    src = ROOT / example
    shutil.copytree(src, tmp_path / "m", ignore=shutil.ignore_patterns(".crossmesh", "state", "expected"))
    compiled = compile_mesh(tmp_path / "m" / "mesh.yaml", tmp_path / "state")
    return compiled, topology.build(compiled.plan, "t0")


def test_default_is_tunnel_1_of_the_first_connection_between_its_outside_addresses(tmp_path: Path) -> None:
    compiled, topo = _compiled(tmp_path, "examples/hybrid-openstack-aws")
    plan = compiled.plan
    cut = tunnelcut.resolve(plan, topo, None, 1, "lab")
    assert cut.key == "openstack-vpn/1"
    assert str(cut.customer) == "198.51.100.162"  # seed 001's customer gateway (documentation stand-in)
    assert cut.hub == topo.vpn_outside[("openstack-vpn", 1)]
    assert tunnelcut.resolve(plan, topo, "openstack-vpn", 2, "lab").hub == topo.vpn_outside[("openstack-vpn", 2)]


def test_the_table_drops_ike_and_esp_in_udp_both_ways_for_the_cut_tunnel_only(tmp_path: Path) -> None:
    compiled, topo = _compiled(tmp_path, "examples/hybrid-openstack-aws")
    cut = tunnelcut.resolve(compiled.plan, topo, None, 1, "lab")
    assert tunnelcut.cut_table([]) is None
    table = tunnelcut.cut_table([cut])
    assert table is not None
    text = nft.render(table)
    standby = topo.vpn_outside[("openstack-vpn", 2)]
    assert str(standby) not in text
    for src, dst in ((cut.customer, cut.hub), (cut.hub, cut.customer)):
        assert f"ip saddr {src} ip daddr {dst} udp dport {{ 500, 4500 }} counter drop" in text
    assert "hook forward priority -10" in text


@pytest.mark.parametrize(
    ("connection", "index", "message"),
    [
        ("nope", 1, "no VPN connection nope in lab lab — its connections are: openstack-vpn"),
        (None, 3, "VPN connection openstack-vpn has no tunnel 3 — its tunnels are 1, 2"),
    ],
)
def test_a_tunnel_the_lab_lacks_is_named_with_what_it_has(
    tmp_path: Path, connection: str | None, index: int, message: str
) -> None:
    compiled, topo = _compiled(tmp_path, "examples/hybrid-openstack-aws")
    with pytest.raises(UsageError, match=message):
        tunnelcut.resolve(compiled.plan, topo, connection, index, "lab")


def test_a_mesh_without_vpn_has_no_tunnel_to_cut(tmp_path: Path) -> None:
    compiled, topo = _compiled(tmp_path, "tests/meshes/hybrid-wireguard")
    with pytest.raises(UsageError, match=r"has no VPN connection \(spec.vpnConnections\)"):
        tunnelcut.resolve(compiled.plan, topo, None, 1, "lab")
