"""The plan of a mesh with a hub: every pair of sites on its transport, with its MTU budget.

Seed 001 (tests/meshes/hybrid-tgw): the OpenStack and AWS sites are joined by IPsec through the
transit gateway, so their nodes are no WireGuard peers, and the cluster's VXLAN crosses the IPsec
path: 1450/1500 sites, ESP with NAT-T and AES-256-GCM: 1438; pods 1388.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vpn_meshes import HYBRID, hybrid, plan_of, spokes, with_gateways, with_gcp

from crossmesh.model.mesh import Encryption, Integrity, Phase2
from crossmesh.model.plan import Transport
from crossmesh.plan import hubs, serialize
from crossmesh.state import psk
from crossmesh.state.store import StateStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_seed_001_pair_is_ipsec_through_the_hub_with_its_mtu() -> None:
    plan = plan_of(hybrid())
    (pair,) = plan.site_pairs
    assert pair.sites == ("aws", "openstack")
    assert pair.transport is Transport.IPSEC and pair.hub == "tgw" and pair.connections == ("openstack-vpn",)
    # ESP's budget is 1438, but the rendered gateway's kernel-libipsec TUN device carries 1400.
    assert pair.mtu.value == 1400
    assert "8 UDP 4500 (NAT-T)" in pair.mtu.arithmetic and "16 ICV (AES256-GCM-16)" in pair.mtu.arithmetic
    assert "= 1438; kernel-libipsec's TUN device 1400" in pair.mtu.arithmetic
    assert pair.pod_mtu is not None and pair.pod_mtu.value == 1350
    assert "198.51.100.162" in pair.path and "tunnel 1, standby 2" in pair.path


def test_no_wireguard_between_sites_the_hub_joins_and_pods_fit_the_ipsec_path() -> None:
    plan = plan_of(hybrid())
    assert all(n.tunnel is None for n in plan.nodes)
    assert all(r.via.value == "vxlan" for n in plan.nodes for r in n.all_routes())
    assert {n.pod_mtu.value for n in plan.nodes} == {1350}
    (cluster,) = plan.clusters
    assert cluster.datapath is not None
    cross = next(k for k in cluster.datapath.classes if k.name == "cross-site")
    assert cross.encryption == "ipsec" and "IPsec via hub tgw" in cross.path


def test_tunnels_plan_aws_addresses_and_never_carry_a_key() -> None:
    (conn,) = plan_of(hybrid()).vpn
    t1, t2 = conn.tunnels
    assert (str(t1.hub_address), str(t1.customer_address)) == ("169.254.10.1", "169.254.10.2")
    assert (t1.standby, t2.standby) == (False, True)
    assert t1.psk == "state:vpn/openstack-vpn.tunnel1.psk"
    assert [str(p) for p in conn.customer_prefixes] == ["10.0.1.0/24"]
    assert [str(p) for p in conn.hub_prefixes] == ["10.100.0.0/16"]
    assert conn.customer_asn == 65000


def test_sites_outside_the_hub_keep_wireguard() -> None:
    plan = plan_of(with_gcp(hybrid()))
    by = {p.sites: p for p in plan.site_pairs}
    assert by["aws", "openstack"].transport is Transport.IPSEC
    assert by["aws", "gcp"].transport is by["gcp", "openstack"].transport is Transport.WIREGUARD
    assert by["gcp", "openstack"].mtu.value == 1450 - 80
    peers = {n.name: sorted(p.node for p in (n.tunnel.peers if n.tunnel else ())) for n in plan.nodes}
    assert peers["aws-worker-1"] == ["gcp-1"]
    assert peers["openstack-master"] == ["gcp-1"]
    assert peers["gcp-1"] == ["aws-worker-1", "openstack-master", "openstack-worker"]
    # the Cilium cluster's one underlay is the smallest of its paths: WireGuard to GCP here
    assert {n.pod_mtu.value for n in plan.nodes} == {1370 - 50}


def test_two_customer_sites_of_one_hub_reach_each_other_through_it() -> None:
    plan = plan_of(spokes(hybrid()))
    by = {p.sites: p for p in plan.site_pairs}
    spoke = by["branch", "openstack"]
    assert spoke.transport is Transport.IPSEC and spoke.connections == ("branch-vpn", "openstack-vpn")
    assert spoke.mtu.arithmetic.count("IPsec") == 2


def test_spokes_kept_apart_by_route_tables_fall_back_to_wireguard() -> None:
    data = spokes(hybrid())
    data["spec"]["hubs"][0]["routeTables"] = [
        {"name": "vpc", "associations": ["aws"], "propagations": ["openstack-vpn", "branch-vpn"]},
        {"name": "vpns", "associations": ["openstack-vpn", "branch-vpn"], "propagations": ["aws"]},
    ]
    data["spec"]["clusters"][0]["cni"] = "cilium"
    for n in data["spec"]["clusters"][0]["nodes"]:
        if n["site"] == "branch":
            n["publicAddress"] = "203.0.113.51"
    by = {p.sites: p for p in plan_of(data).site_pairs}
    assert by["branch", "openstack"].transport is Transport.WIREGUARD
    assert by["aws", "branch"].transport is Transport.IPSEC


def test_topology_gateways_leaves_hub_pairs_to_the_hub() -> None:
    plan = plan_of(with_gateways(with_gcp(hybrid())))
    worker = plan.node("openstack-worker")
    routed = {str(r.dst) for r in worker.routes}
    assert routed == {"10.200.0.0/16"}  # GCP via the gateway; AWS through the site router and the hub
    master = plan.node("openstack-master")
    assert master.tunnel is not None and {p.site for p in master.tunnel.peers} == {"gcp"}


@given(
    st.lists(st.sampled_from(list(Encryption)), min_size=1, max_size=4, unique=True),
    st.lists(st.sampled_from(list(Integrity)), min_size=1, max_size=4, unique=True),
    st.integers(1280, 9000),
)
def test_esp_budget_laws(encryption: list[Encryption], integrity: list[Integrity], outer: int) -> None:
    """Any inner packet up to the figure fits the outer MTU with the worst proposal, one block more
    does not (unless AWS's maximum capped it), and it is never above AWS's 1446."""
    mtu = hubs.esp_mtu(Phase2(encryption=encryption, integrity=integrity), outer).value
    assert mtu <= hubs.AWS_VPN_MAX_MTU
    for enc in encryption:
        for integ in integrity:
            iv, icv, block, _ = hubs._esp(enc, integ)
            padded = -(-(mtu + 2) // block) * block
            assert 20 + 8 + 8 + iv + padded + icv <= outer
    if mtu < hubs.AWS_VPN_MAX_MTU:
        worst = [hubs._esp(e, i) for e in encryption for i in integrity]
        assert any(20 + 8 + 8 + iv + -(-(mtu + 1 + 2) // block) * block + icv > outer for iv, icv, block, _ in worst)


def test_esp_figures() -> None:
    assert hubs.esp_mtu(Phase2()).value == 1438  # AES256-GCM-16, NAT-T
    cbc = Phase2(encryption=[Encryption.AES256], integrity=[Integrity.SHA2_512])
    assert hubs.esp_mtu(cbc).value == 1406  # 1500 − 20 − 8 − 8 − 16 − 32 = 1416, 1408 by 16, − 2
    assert hubs.esp_mtu(Phase2(), 9001).value == 1446  # AWS's maximum
    assert hubs.tunnel_mtu(Phase2()).value == 1400  # kernel-libipsec's TUN device
    assert hubs.tunnel_mtu(cbc).value == 1400


def test_plan_json_holds_pairs_hubs_and_connections_only_with_hubs() -> None:
    data = serialize.plan_json(plan_of(hybrid()))
    assert [p["transport"] for p in data["sitePairs"]] == ["ipsec"]
    assert data["hubs"][0]["amazonSideASN"] == 64512
    assert data["vpnConnections"][0]["tunnels"][0]["preSharedKey"].startswith("state:")
    plain = hybrid()
    plain["spec"]["hubs"] = plain["spec"]["vpnConnections"] = []
    plain["spec"]["clusters"][0]["cni"] = "cilium"
    plain["spec"]["clusters"][0]["nodes"][0]["publicAddress"] = "198.51.100.190"
    plain["spec"]["clusters"][0]["nodes"][2]["publicAddress"] = "203.0.113.69"
    assert not {"sitePairs", "hubs", "vpnConnections"} & set(serialize.plan_json(plan_of(plain)))


def _crossmesh(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "crossmesh.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_plan_command_shows_the_pairs_and_makes_the_keys_0600(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(HYBRID.read_text())
    run = _crossmesh("plan", "mesh.yaml", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Site pairs" in run.stdout and "ipsec via hub tgw over openstack-vpn" in run.stdout
    assert "1438" in run.stdout and "VPN connections" in run.stdout
    folder = tmp_path / ".crossmesh" / "vpn"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    keys = sorted(folder.iterdir())
    assert [k.name for k in keys] == ["openstack-vpn.tunnel1.psk", "openstack-vpn.tunnel2.psk"]
    texts = [k.read_text().strip() for k in keys]
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert all(psk.problem(t) is None for t in texts) and texts[0] != texts[1]
    again = _crossmesh("plan", "-o", "json", "mesh.yaml", cwd=tmp_path)
    assert [k.read_text().strip() for k in keys] == texts  # kept, not made anew
    assert not any(t in again.stdout or t in run.stdout for t in texts)
    assert (
        "openstack-vpn.tunnel1.psk"
        in json.loads(again.stdout)["plan"]["vpnConnections"][0]["tunnels"][0]["preSharedKey"]
    )


def test_plan_command_of_a_mesh_without_hubs_shows_no_site_pairs(tmp_path: Path) -> None:
    run = _crossmesh(
        "plan", "--dry-run", str(EXAMPLES.parent / "tests" / "meshes" / "hybrid-wireguard" / "mesh.yaml"), cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "Site pairs" not in run.stdout and "VPN connections" not in run.stdout


def test_a_pre_shared_key_file_is_checked_by_validate(tmp_path: Path) -> None:
    text = HYBRID.read_text().replace(
        "        - insideCIDR: 169.254.10.0/30  # tunnel 1, active",
        "        - insideCIDR: 169.254.10.0/30  # tunnel 1, active\n          preSharedKeyFile: t1.psk",
    )
    (tmp_path / "mesh.yaml").write_text(text)
    key = tmp_path / "t1.psk"
    key.write_text("0startswithzero\n")
    key.chmod(0o600)
    run = _crossmesh("validate", "mesh.yaml", cwd=tmp_path)
    assert run.returncode == 2 and "preSharedKeyFile" in run.stderr and "starts with 0" in run.stderr
    key.write_text("Abcdefgh12345678\n")
    key.chmod(0o644)
    run = _crossmesh("validate", "mesh.yaml", cwd=tmp_path)
    assert run.returncode == 2 and "chmod 600" in run.stderr
    key.chmod(0o600)
    assert _crossmesh("validate", "mesh.yaml", cwd=tmp_path).returncode == 0
    plan = _crossmesh("plan", "-o", "json", "mesh.yaml", cwd=tmp_path)
    tunnels = json.loads(plan.stdout)["plan"]["vpnConnections"][0]["tunnels"]
    assert tunnels[0]["preSharedKey"] == "file:t1.psk" and "Abcdefgh12345678" not in plan.stdout
    assert [p.name for p in (tmp_path / ".crossmesh" / "vpn").iterdir()] == ["openstack-vpn.tunnel2.psk"]


def test_a_shared_key_in_the_state_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.ensure_psks([("c", 1)])
    first = store.psk("c", 1)
    store.ensure_psks([("c", 1)])
    assert store.psk("c", 1) == first
    (tmp_path / "state" / "vpn" / "c.tunnel1.psk").chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        store.psk("c", 1)
