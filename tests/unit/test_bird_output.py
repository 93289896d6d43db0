"""Reading BIRD's and strongSwan's own words (drivers/lab/vpn.py): what the vpn/bgp checks and
`lab status` decide from. The texts are real output of the seed-001 lab (BIRD 2.0.12)."""

from __future__ import annotations

from ipaddress import IPv4Network

from crossmesh.drivers.lab import vpn

HUB = """BIRD 2.0.12 ready.
Table master4:
10.100.0.0/16        unreachable [owned 14:08:41.644] * (200)
10.0.1.0/24          unicast [openstack_vpn_1 14:08:42.750] * (100) [AS65000i]
\tvia 169.254.10.2 on ipsec0
                     unicast [openstack_vpn_2 14:08:42.469] (100) [AS65000i]
\tvia 169.254.20.2 on ipsec1
"""

CUT = """BIRD 2.0.12 ready.
Table master4:
10.100.0.0/16        unicast [openstack_vpn_2 14:09:12.101] * (100) [AS64512i]
\tvia 169.254.20.1 on ipsec1
10.0.1.0/24          unreachable [owned 14:08:42.068] * (200)
"""


def test_each_route_of_a_prefix_with_its_session_choice_and_device() -> None:
    routes = vpn.parse_bird_routes(HUB)
    assert routes == [
        vpn.BirdRoute(IPv4Network("10.100.0.0/16"), "owned", True, ""),
        vpn.BirdRoute(IPv4Network("10.0.1.0/24"), "openstack_vpn_1", True, "ipsec0"),
        vpn.BirdRoute(IPv4Network("10.0.1.0/24"), "openstack_vpn_2", False, "ipsec1"),
    ]


def test_a_cut_tunnel_leaves_the_standby_route_alone() -> None:
    learned = [r for r in vpn.parse_bird_routes(CUT) if r.protocol != "owned"]
    assert learned == [vpn.BirdRoute(IPv4Network("10.100.0.0/16"), "openstack_vpn_2", True, "ipsec1")]


def test_nothing_to_read_is_no_route() -> None:
    assert vpn.parse_bird_routes("") == []
    assert vpn.parse_bird_routes("BIRD 2.0.12 ready.\nTable master4:\n") == []
