"""Seed 001's VPN checks against the real lab of examples/hybrid-openstack-aws: every one passes on
the lab as built, and a crashed tunnel endpoint — the hub's charon of tunnel 1, killed by its pid
file — is caught by the tunnel, BGP, route and encryption checks; `lab up` repairs it and they pass
again."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from crossmesh.drivers.lab import transit
from crossmesh.drivers.lab.state import VPN_ROOT

pytestmark = pytest.mark.lab

NEEDED = ("/usr/lib/ipsec/charon", "swanctl", "bird", "birdc")
PATTERN = "^(vpn|bgp|encryption)/"
TUNNEL_1 = "openstack-vpn tunnel 1 (active)"


def _results(lab, pattern: str = PATTERN) -> dict[str, dict[str, object]]:  # type: ignore[no-untyped-def]
    _, report = lab.test("--test", pattern)
    return {c["name"]: c for c in report["checks"]}  # type: ignore[index,union-attr]


def _failed(checks: dict[str, dict[str, object]]) -> set[str]:
    return {name for name, c in checks.items() if not c["passed"]}


@pytest.mark.skipif(
    any(shutil.which(c) is None and not os.path.exists(c) for c in NEEDED),
    reason="needs strongSwan's charon and swanctl, BIRD 2 (apt-get install strongswan-charon "
    "libcharon-extra-plugins strongswan-swanctl bird2)",
)
def test_seed_001s_vpn_checks_pass_and_catch_a_dead_tunnel_endpoint(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab("hybrid-openstack-aws")
    lab.up()
    checks = _results(lab)
    assert not _failed(checks), {n: checks[n]["detail"] for n in _failed(checks)}
    assert {
        f"vpn/tunnels-up: {TUNNEL_1}",
        "vpn/tunnels-up: openstack-vpn tunnel 2 (standby)",
        f"bgp/established: {TUNNEL_1}",
        "bgp/established: openstack-vpn tunnel 2 (standby)",
        "bgp/routes: customer openstack over openstack-vpn",
        "bgp/routes: hub zta-transit-gateway over openstack-vpn",
        "vpn/encrypted: k3s/demo/demo-app-0 -> k3s/microservices/tkb-0 over openstack-vpn",
        "vpn/mtu-one-byte-over: openstack-master -> aws-worker-1 over openstack-vpn (1401 bytes, DF)",
        "vpn/mtu-one-byte-over: aws-worker-1 -> openstack-master over openstack-vpn (1401 bytes, DF)",
        "encryption/internet-carries-only-planned-tunnels",
    } <= set(checks)
    over = checks["vpn/mtu-one-byte-over: openstack-master -> aws-worker-1 over openstack-vpn (1401 bytes, DF)"]
    assert over["detail"] == "fragmentation needed on the way: path MTU 1400"
    assert "via ipsec0 (tunnel 1)" in str(checks["bgp/routes: customer openstack over openstack-vpn"]["detail"])

    # The hub's end of tunnel 1 dies: its charon, by its pid file.
    hub_folder = transit.folder_name("hub:zta-transit-gateway")
    pid_file = VPN_ROOT / f"cm-{lab.tag}" / hub_folder / "charon-0" / "run" / "charon.pid"
    os.kill(int(Path(pid_file).read_text().strip()), signal.SIGKILL)
    expected = {
        f"vpn/tunnels-up: {TUNNEL_1}",
        f"bgp/established: {TUNNEL_1}",
        "bgp/routes: customer openstack over openstack-vpn",
        "bgp/routes: hub zta-transit-gateway over openstack-vpn",
    }
    # The hub's session goes down at once (its TUN device went with its charon); the customer's only
    # when BGP's 3 s hold time runs out, and only then do its routes move to tunnel 2.
    deadline = time.monotonic() + 20
    while True:  # the state checks alone: vpn/failover would cut tunnel 1 itself and take 15 s
        checks = _results(lab, "^(vpn/tunnels-up|bgp/)")
        failed = _failed(checks)
        if expected <= failed or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert expected <= failed, {n: c["detail"] for n, c in checks.items()}
    assert "hub" in str(checks[f"vpn/tunnels-up: {TUNNEL_1}"]["detail"])
    assert "via ipsec1" in str(checks["bgp/routes: customer openstack over openstack-vpn"]["detail"])
    assert "vpn/tunnels-up: openstack-vpn tunnel 2 (standby)" not in failed  # the standby still carries

    lab.up()  # the gateway with a dead daemon is restarted
    checks = _results(lab)
    assert not _failed(checks), {n: checks[n]["detail"] for n in _failed(checks)}
