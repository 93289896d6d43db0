"""The mesh file's hubs and VPN connections: AWS's rules, each refused with the rule it breaks.

One problem per file is the tests/bad corpus (95..107); these say what a corpus case cannot: that
seed 001's file is valid with AWS's defaults filled in, that rules do not fire where they should not,
and laws over every inside CIDR and ASN.
"""

from __future__ import annotations

import copy
from ipaddress import IPv4Network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from vpn_meshes import hybrid, problems_of, spokes

from crossmesh.model.mesh import (
    AMAZON_ASN_RANGES,
    RESERVED_INSIDE,
    CustomerGateway,
    Hub,
    Mesh,
    VpnTunnel,
)
from crossmesh.plan import hubs


def test_seed_001_is_valid_and_gets_aws_defaults() -> None:
    data = hybrid()
    assert problems_of(data) == []
    del data["spec"]["hubs"][0]["amazonSideASN"]
    del data["spec"]["vpnConnections"][0]["customerGateway"]["asn"]
    mesh = Mesh.model_validate(data)
    conn = mesh.spec.vpn_connections[0]
    assert mesh.spec.hubs[0].amazon_side_asn == 64512  # TransitGatewayRequestOptions default
    assert conn.customer_gateway.asn == 65000  # CreateCustomerGateway default
    tunnel = conn.tunnels[0]
    assert tunnel.ike_version == "ikev2"
    assert [e.value for e in tunnel.phase1.encryption] == ["AES256-GCM-16"]
    assert tunnel.phase1.dh_groups == [20] and tunnel.phase2.lifetime_seconds == 3600
    assert tunnel.pre_shared_key_file is None  # generated into the state directory


def test_without_route_tables_the_hub_has_aws_default_table() -> None:
    data = hybrid()
    del data["spec"]["hubs"][0]["routeTables"]
    mesh = Mesh.model_validate(data)
    assert problems_of(data) == []
    (table,) = hubs.route_tables(mesh, mesh.spec.hubs[0])
    assert table.name == "default"
    assert table.associations == table.propagations == ["aws", "openstack-vpn"]


@given(st.integers(0, 2**16 // 4 - 1))
def test_every_slash_30_of_169_254_is_taken_unless_aws_reserves_it(index: int) -> None:
    net = IPv4Network((int(IPv4Network("169.254.0.0/16").network_address) + 4 * index, 30))
    if net in RESERVED_INSIDE:
        with pytest.raises(ValidationError, match="reserved by AWS"):
            VpnTunnel.model_validate({"insideCIDR": str(net)})
    else:
        assert VpnTunnel.model_validate({"insideCIDR": str(net)}).inside_cidr == net


@pytest.mark.parametrize("cidr", ["169.254.10.0/29", "169.254.10.0/31", "10.0.0.0/30", "169.255.0.0/30"])
def test_an_inside_cidr_is_a_slash_30_of_169_254(cidr: str) -> None:
    with pytest.raises(ValidationError, match=r"not a /30 inside 169\.254\.0\.0/16"):
        VpnTunnel.model_validate({"insideCIDR": cidr})


@given(st.integers(0, 2**32))
def test_the_amazon_asn_is_taken_exactly_in_aws_private_ranges(asn: int) -> None:
    private = any(low <= asn <= high for low, high in AMAZON_ASN_RANGES)
    data = {"name": "tgw", "site": "aws", "amazonSideASN": asn}
    if private:
        assert Hub.model_validate(data).amazon_side_asn == asn
    else:
        with pytest.raises(ValidationError, match=r"64512\.\.65534 or 4200000000\.\.4294967294"):
            Hub.model_validate(data)


@pytest.mark.parametrize(("asn", "ok"), [(1, True), (65000, True), (2147483647, True), (0, False), (2147483648, False)])
def test_the_customer_asn_is_aws_bgp_asn_range(asn: int, ok: bool) -> None:
    data = {"asn": asn, "publicAddress": "198.51.100.162"}
    if ok:
        assert CustomerGateway.model_validate(data).asn == asn
    else:
        with pytest.raises(ValidationError, match=r"1\.\.2147483647"):
            CustomerGateway.model_validate(data)


@pytest.mark.parametrize(
    ("phase", "groups", "ok"),
    [("phase1", [5], False), ("phase2", [5], True), ("phase1", [1], False), ("phase2", [24, 2], True)],
)
def test_dh_groups_are_those_aws_permits_per_phase(phase: str, groups: list[int], ok: bool) -> None:
    data = {"insideCIDR": "169.254.10.0/30", phase: {"dhGroups": groups}}
    if ok:
        VpnTunnel.model_validate(data)
    else:
        with pytest.raises(ValidationError, match=f"not one AWS permits in phase {phase[-1]}"):
            VpnTunnel.model_validate(data)


def test_an_unknown_algorithm_names_aws_values() -> None:
    with pytest.raises(ValidationError, match="AES256-GCM-16"):
        VpnTunnel.model_validate({"insideCIDR": "169.254.10.0/30", "phase2": {"encryption": ["CHACHA20"]}})


def test_inside_cidrs_must_not_overlap_across_connections() -> None:
    data = spokes(hybrid())
    data["spec"]["vpnConnections"][1]["tunnels"][1]["insideCIDR"] = "169.254.10.0/30"
    (problem,) = problems_of(data)
    assert "vpnConnections[1].tunnels[1].insideCIDR" in problem
    assert "overlaps tunnel 1 of VPN connection openstack-vpn (169.254.10.0/30)" in problem


def test_equal_asns_are_refused_only_where_bgp_runs() -> None:
    data = hybrid()
    data["spec"]["vpnConnections"][0]["customerGateway"]["asn"] = 64512
    assert any("eBGP" in p for p in problems_of(data))
    data["spec"]["vpnConnections"][0]["routing"] = "static"
    data["spec"]["vpnConnections"][0]["staticRoutes"] = ["10.0.1.0/24"]
    assert problems_of(data) == []


def test_three_tunnels_name_the_third() -> None:
    data = hybrid()
    data["spec"]["vpnConnections"][0]["tunnels"].append({"insideCIDR": "169.254.30.0/30"})
    (problem,) = problems_of(data)
    assert "tunnels[2]" in problem and "has 3 tunnels" in problem and "exactly two" in problem


def _route_table_case(change: list[dict[str, Any]]) -> list[str]:
    data = hybrid()
    data["spec"]["hubs"][0]["routeTables"] = change
    return problems_of(data)


def test_an_attachment_belongs_to_one_route_table() -> None:
    problems = _route_table_case(
        [
            {"name": "a", "associations": ["aws", "openstack-vpn"], "propagations": ["aws", "openstack-vpn"]},
            {"name": "b", "associations": ["aws"]},
        ]
    )
    (problem,) = problems
    assert "routeTables[1].associations[0]" in problem and "associated with one route table" in problem


def test_static_routes_lead_the_way_and_a_destination_is_routed_once() -> None:
    routes = [
        {"destination": "10.0.1.0/24", "attachment": "openstack-vpn"},
        {"destination": "10.100.0.0/16", "attachment": "aws"},
    ]
    tables = [{"name": "main", "associations": ["aws", "openstack-vpn"], "routes": routes}]
    assert _route_table_case(tables) == []  # static routes alone carry the pair
    tables[0]["routes"] = [*routes, {"destination": "10.0.1.0/24", "attachment": "aws"}]
    problems = _route_table_case(tables)
    assert any("duplicate static route destination 10.0.1.0/24" in p for p in problems)


def test_a_more_specific_route_elsewhere_breaks_the_path() -> None:
    tables = [
        {
            "name": "main",
            "associations": ["aws", "openstack-vpn"],
            "propagations": ["aws", "openstack-vpn"],
            "routes": [{"destination": "10.100.2.0/24", "attachment": "openstack-vpn"}],  # a loop back
        }
    ]
    (problem,) = _route_table_case(tables)
    assert "does not route 10.100.0.0/16 to attachment aws" in problem


def test_an_unassociated_attachment_is_named() -> None:
    tables = [{"name": "main", "associations": ["aws"], "propagations": ["aws", "openstack-vpn"]}]
    (problem,) = _route_table_case(tables)
    assert "attachment openstack-vpn of hub tgw is associated with no route table" in problem


def test_names_and_references() -> None:
    data = hybrid()
    data["spec"]["vpnConnections"][0]["name"] = "aws"
    assert any("named like a site" in p for p in problems_of(data))
    data = hybrid()
    data["spec"]["vpnConnections"][0]["site"] = "aws"
    assert any("whose own VPC is in that site" in p for p in problems_of(data))
    data = hybrid()
    data["spec"]["hubs"][0]["site"] = "azure"
    assert any("site 'azure' is not declared" in p for p in problems_of(data))
    data = hybrid()
    second = copy.deepcopy(data["spec"]["vpnConnections"][0])
    tunnels = [{"insideCIDR": "169.254.50.0/30"}, {"insideCIDR": "169.254.60.0/30"}]
    second.update(name="openstack-vpn-2", tunnels=tunnels)
    data["spec"]["vpnConnections"].append(second)
    assert any("one connection per site and hub" in p for p in problems_of(data))


def test_a_customer_gateway_address_must_be_dialable() -> None:
    data = hybrid()
    data["spec"]["vpnConnections"][0]["customerGateway"]["publicAddress"] = "10.0.1.1"
    (problem,) = problems_of(data)
    assert "customerGateway.publicAddress" in problem and "inside site openstack's network" in problem


def test_static_routing_and_bgp_are_not_mixed() -> None:
    data = hybrid()
    data["spec"]["vpnConnections"][0]["staticRoutes"] = ["10.0.1.0/24"]
    (problem,) = problems_of(data)
    assert "staticRoutes but routing: bgp" in problem


def test_flannel_across_sites_needs_the_hub_and_nat_is_fine_through_it() -> None:
    data = hybrid()
    assert problems_of(data) == []  # every node is behind NAT, and the cluster is Flannel
    data["spec"]["vpnConnections"] = []
    data["spec"]["hubs"] = []
    problems = problems_of(data)
    assert any("flannel's VXLAN is bound to one interface" in p for p in problems)
    assert any("both lack a publicAddress" in p for p in problems)


def test_a_site_joined_to_two_hubs_is_warned_that_render_writes_no_gateway_for_it() -> None:
    data = spokes(hybrid())
    data["spec"]["sites"].append({"name": "aws2", "provider": "aws", "network": "10.101.0.0/16"})
    data["spec"]["hubs"].append({"name": "tgw2", "site": "aws2", "amazonSideASN": 64513})
    data["spec"]["vpnConnections"].append(
        {
            "name": "openstack-vpn2",
            "hub": "tgw2",
            "site": "openstack",
            "customerGateway": {"asn": 65000, "publicAddress": "198.51.100.162"},
            "tunnels": [{"insideCIDR": "169.254.50.0/30"}, {"insideCIDR": "169.254.60.0/30"}],
        }
    )
    (warning,) = problems_of(data)  # the mesh is valid: only the warning
    assert "warning: spec.vpnConnections[2].hub" in warning
    assert "go into hubs tgw and tgw2" in warning and "`render` writes no customer gateway files" in warning
    assert all("go into hubs" not in p for p in problems_of(spokes(hybrid())))  # one hub each: no warning
