"""The VPN gateway renderers (strongSwan with kernel-libipsec, BIRD 2) and the status parsers:
what a gateway's operator would check in the files — AWS's proposals, one charon per tunnel on
its own ports and TUN device, the port mapping that puts every tunnel on 500/4500 on the wire,
exact prefix filters, the standby tunnel prepended — and BIRD itself accepting the file."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path, PurePosixPath

import pytest

from crossmesh import nft
from crossmesh.drivers.lab import vpn
from crossmesh.render import bgp, ipsec

N, A = IPv4Network, IPv4Address


def tunnel(i: int, *, customer: bool = True, psk: str = "s3cret.key_1") -> ipsec.TunnelSpec:
    cgw, aws = A("192.0.2.162"), (A("203.0.113.10"), A("198.51.100.10"))[i]
    inside = N(f"169.254.{21 + i}.0/30")
    aws_in, cgw_in = list(inside.hosts())
    return ipsec.TunnelSpec(
        name=f"tunnel{i + 1}",
        local_outside=cgw if customer else aws,
        remote_outside=aws if customer else cgw,
        inside_local=IPv4Interface(f"{cgw_in if customer else aws_in}/30"),
        inside_remote=aws_in if customer else cgw_in,
        psk=psk,
        initiator=customer,
    )


def customer_router(bfd: bool = False) -> bgp.BgpRouterSpec:
    mine = (N("10.0.1.0/24"), N("10.42.0.0/24"))
    theirs = (N("10.100.0.0/16"), N("10.42.3.0/24"))
    peers = tuple(
        bgp.BgpPeerSpec(
            name=f"tunnel{i + 1}",
            local_address=A(f"169.254.{21 + i}.2"),
            neighbor_address=A(f"169.254.{21 + i}.1"),
            neighbor_as=bgp.AMAZON_ASN,
            interface=f"ipsec{i}",
            import_prefixes=theirs,
            export_prefixes=mine,
            local_pref=200 if i == 0 else 100,
            prepend=2 * i,
        )
        for i in range(2)
    )
    return bgp.BgpRouterSpec(A("192.0.2.162"), 65000, mine, peers, bfd=bgp.BfdSpec() if bfd else None)


def test_each_tunnel_has_its_own_charon_ports_tun_device_and_inert_routing_table() -> None:
    second = ipsec.CharonInstance(1, PurePosixPath("/tmp/cm-x/charon-1"))
    conf = ipsec.strongswan_conf(second)
    assert (second.ike_port, second.natt_port, second.tun_device) == (501, 4501, "ipsec1")
    assert "port = 501\n" in conf and "port_nat_t = 4501\n" in conf
    assert "routing_table = 221\n" in conf and f"fwmark = {ipsec.INERT_MARK:#x}" in conf
    assert "socket = unix:///tmp/cm-x/charon-1/run/charon.vici" in conf
    load = next(line for line in conf.splitlines() if line.strip().startswith("load = ") and "kernel" in line)
    assert load.index("kernel-libipsec") < load.index("kernel-netlink")


def test_swanctl_conf_is_aws_route_based_ikev2_with_the_psk_quoted() -> None:
    text = ipsec.swanctl_conf(tunnel(0, psk='we"ird key'))
    assert "version = 2" in text
    assert "proposals = aes256gcm16-prfsha384-ecp384" in text
    assert "esp_proposals = aes256gcm16-ecp384" in text
    assert "local_ts = 0.0.0.0/0" in text and "remote_ts = 0.0.0.0/0" in text
    assert 'secret = "we\\"ird key"' in text
    assert "start_action = start" in text and "dpd_action = restart" in text
    aws_side = ipsec.swanctl_conf(tunnel(0, customer=False))
    assert "start_action = none" in aws_side and "dpd_action = clear" in aws_side


def test_inside_addresses_outside_one_slash_30_are_refused() -> None:
    wrong = dataclasses.replace(tunnel(0), inside_remote=A("169.254.99.1"))
    with pytest.raises(ValueError, match="share one /30"):
        ipsec.swanctl_conf(wrong)


def test_port_map_puts_the_second_tunnel_on_500_and_4500_on_the_wire_only() -> None:
    assert ipsec.port_map([tunnel(0)]) is None
    table = ipsec.port_map([tunnel(0), tunnel(1)])
    assert table is not None
    text = nft.render(table)
    assert "ip saddr 198.51.100.10 ip daddr 192.0.2.162 udp dport 4500 dnat to 192.0.2.162:4501" in text
    assert "ip saddr 192.0.2.162 ip daddr 198.51.100.10 udp sport 501 snat to 192.0.2.162:500" in text
    assert "203.0.113.10" not in text  # tunnel 1 keeps its ports untouched


def test_bird_conf_filters_exact_prefixes_and_prepends_on_the_standby() -> None:
    text = bgp.bird_conf(customer_router(), log=PurePosixPath("/tmp/cm-x/bird.log"))
    t1, t2 = text.split("protocol bgp tunnel1")[1].split("protocol bgp tunnel2")
    assert "if net ~ [ 10.42.3.0/24, 10.100.0.0/16 ] then { bgp_local_pref = 200; accept; }" in t1
    assert "bgp_local_pref = 100" in t2
    assert "bgp_path.prepend" not in t1 and t2.count("bgp_path.prepend(65000);") == 2
    assert "hold time 3;" in t1 and "keepalive time 1;" in t1
    assert "export where source = RTS_BGP;" in text
    assert "bfd" not in text


def test_a_peer_cannot_export_what_the_router_does_not_own() -> None:
    r = customer_router()
    leaky = dataclasses.replace(r.peers[0], export_prefixes=(N("0.0.0.0/0"),))
    with pytest.raises(ValueError, match="does not originate"):
        bgp.bird_conf(bgp.BgpRouterSpec(r.router_id, r.local_as, r.originate, (leaky,)), log=PurePosixPath("/x"))


@pytest.mark.skipif(shutil.which("bird") is None, reason="needs bird (apt-get install bird2)")
@pytest.mark.parametrize("bfd", [False, True])
def test_bird_accepts_the_configuration(tmp_path: Path, bfd: bool) -> None:
    conf = tmp_path / "bird.conf"
    conf.write_text(bgp.bird_conf(customer_router(bfd), log=PurePosixPath(tmp_path / "bird.log")))
    done = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


RAW = (
    "list-sa event {tunnel1 {uniqueid=3 version=2 state=ESTABLISHED local-host=192.0.2.162 local-port=4500 "
    "remote-host=203.0.113.10 remote-port=4500 child-sas {tunnel1-2 {name=tunnel1 uniqueid=2 state=INSTALLED "
    "bytes-in=61 packets-in=1 bytes-out=33 packets-out=1 local-ts=[0.0.0.0/0] remote-ts=[0.0.0.0/0]}}}}\n"
    "list-sa event {tunnel1 {uniqueid=4 version=2 state=CONNECTING local-host=192.0.2.162 local-port=500 "
    "remote-host=203.0.113.10 remote-port=500 child-sas {}}}\n"
    "list-sas reply {}\n"
)


def test_swanctl_raw_output_is_read_sa_by_sa() -> None:
    sas = vpn.parse_swanctl_raw(RAW)
    assert [(s.name, s.state, s.installed) for s in sas] == [
        ("tunnel1", "ESTABLISHED", True),
        ("tunnel1", "CONNECTING", False),
    ]
    assert sas[0].children[0].bytes_out == 33 and sas[0].remote == "203.0.113.10[4500]"


def test_bird_protocols_are_read() -> None:
    text = (
        "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n"
        "device1    Device     ---        up     11:16:00.000  \n"
        "tunnel1    BGP        ---        start  11:16:50.000  Connect       BGP Error: Hold timer expired\n"
        "tunnel2    BGP        ---        up     11:16:00.000  Established   \n"
    )
    sessions = {s.name: s for s in vpn.parse_bird_protocols(text)}
    assert set(sessions) == {"tunnel1", "tunnel2"}
    assert sessions["tunnel2"].established and not sessions["tunnel1"].established
