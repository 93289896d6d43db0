"""Both ends of a VPN connection from one plan (plan/vpngw.py): the customer gateway and the hub's
endpoints must mirror each other, or tunnels and BGP sessions never come up."""

from __future__ import annotations

import shutil
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from crossmesh.model.plan import Plan, Proposal
from crossmesh.plan import vpngw
from crossmesh.workspace import compile_mesh

MESH = Path(__file__).parents[1] / "meshes" / "hybrid-tgw"


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    folder = tmp_path_factory.mktemp("hybrid") / "m"
    shutil.copytree(MESH, folder)
    return compile_mesh(folder / "mesh.yaml", folder / ".crossmesh").plan


def ends(plan: Plan) -> tuple[vpngw.GatewaySpec, vpngw.GatewaySpec]:
    keys = vpngw.tunnel_keys(plan)
    outside = {k: IPv4Address(f"203.0.113.{10 + i}") for i, k in enumerate(keys)}
    psks = {k: f"Key{i}abcdefgh" for i, k in enumerate(keys)}
    return vpngw.customer_gateways(plan, outside, psks)["openstack"], vpngw.hub_gateways(plan, outside, psks)["tgw"]


def test_customer_and_hub_mirror_each_other(plan: Plan) -> None:
    cgw, hub = ends(plan)
    assert cgw.keys == hub.keys == (("openstack-vpn", 1), ("openstack-vpn", 2))
    for c, h in zip(cgw.tunnels, hub.tunnels, strict=True):
        assert (c.local_outside, c.remote_outside) == (h.remote_outside, h.local_outside)
        assert c.inside_local.ip == h.inside_remote and h.inside_local.ip == c.inside_remote
        assert c.psk == h.psk and c.initiator and not h.initiator
        assert c.ike_proposals == h.ike_proposals == ("aes256gcm16-prfsha256-ecp384",)
    assert str(cgw.tunnels[0].local_outside) == "198.51.100.162"  # the customer gateway's public address
    assert cgw.device("openstack-vpn", 1) == "ipsec0"  # seed 001's device for tunnel 1


def test_tunnel_2_is_standby_both_ways(plan: Plan) -> None:
    cgw, hub = ends(plan)
    assert cgw.router is not None and hub.router is not None
    one, two = cgw.router.peers
    assert (one.prepend, two.prepend) == (0, 2)  # the hub prefers the shorter AS path: tunnel 1
    assert one.local_pref > two.local_pref  # the customer prefers tunnel 1 outwards
    assert {p.med for p in hub.router.peers} == {100}  # AWS: equal MEDs outside endpoint updates
    assert one.export_prefixes == (IPv4Network("10.0.1.0/24"),)
    assert one.import_prefixes == (IPv4Network("10.100.0.0/16"),)
    assert (cgw.router.local_as, hub.router.local_as) == (65000, 64512)


def test_hub_route_table_gets_the_connection_s_sessions(plan: Plan) -> None:
    _, hub = ends(plan)
    assert hub.router is not None
    table, own = hub.router.kernel_tables
    assert table.table == vpngw.HUB_TABLE_BASE and own.table == vpngw.MAIN_TABLE
    assert set(table.sessions) == set(own.sessions) == {p.name for p in hub.router.peers}
    assert vpngw.vpc_routes(plan.hubs[0]) == (IPv4Network("10.0.1.0/24"),)


def test_proposals_in_strongswan_words() -> None:
    p = Proposal(("AES256-GCM-16", "AES128"), ("SHA2-384", "SHA1"), (20, 14), 3600)
    assert vpngw.ike_proposals(p) == (
        "aes256gcm16-prfsha384-prfsha1-ecp384-modp2048",
        "aes128-sha384-sha1-ecp384-modp2048",
    )
    assert vpngw.esp_proposals(p) == ("aes256gcm16-ecp384-modp2048", "aes128-sha384-sha1-ecp384-modp2048")


def test_names_fit_the_daemons() -> None:
    long = "a-very-long-connection-name-from-a-very-long-mesh"
    assert len(vpngw.tunnel_name(long, 1)) <= 32 and vpngw.tunnel_name(long, 1) != vpngw.tunnel_name(long, 2)
    assert vpngw.session_name("openstack-vpn", 2) == "openstack_vpn_2"
    assert vpngw.session_name("1st", 1)[0].isalpha()


def test_flannel_is_told_the_tunnel_s_mtu_and_the_lab_builds_the_same(plan: Plan) -> None:
    """Flannel would take the site interface's MTU (1500 on AWS); across the hub the rendered K3s node
    gets the plan's underlay instead, which is what the lab gives its VXLAN device (+ 50)."""
    from crossmesh.render import k3s

    (cluster,) = plan.clusters
    for node in plan.nodes:
        conf = k3s.flannel_net_conf(plan, cluster, node)
        assert conf is not None and node.vxlan is not None
        assert conf["Backend"] == {"Type": "vxlan", "MTU": 1400} == {"Type": "vxlan", "MTU": node.vxlan.mtu.value + 50}
        assert conf["Network"] == "10.42.0.0/16"
        assert k3s.node_config(node, flannel_conf=True)["flannel-conf"] == k3s.FLANNEL_CONF
