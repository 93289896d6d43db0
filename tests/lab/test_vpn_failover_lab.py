"""Seed 001's VPN in the lab: `lab cut-tunnel` really kills tunnel 1 (traffic moves to tunnel 2's TUN device at
the customer gateway), `lab heal-tunnel` and `lab up` bring it back, and `crossmesh test`'s vpn/failover
measures the move under a stream."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path

from labkit import crossmesh

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import transit, tunnelcut

VPC = IPv4Network("10.100.0.0/16")  # seed 001's AWS VPC, behind the transit gateway


def _device(mesh: Path) -> Callable[[], str | None]:
    """The device the customer gateway (the OpenStack router) routes the VPC through, read anew each call."""
    state = labs.find_lab(mesh)
    compiled, topo = labs.topology_of(state)
    gw = next(g for g in transit.gateways(state, topo, compiled) if g.key == "customer:openstack")
    attached = transit.attach(gw)
    return lambda: attached.device_for(VPC)


def _until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _status(mesh: Path) -> dict[str, object]:
    done = crossmesh("lab", "status", "--mesh", str(mesh), "-o", "json", check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_cut_tunnel_moves_traffic_to_tunnel_2_and_heal_and_up_bring_it_back(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab("hybrid-openstack-aws")
    lab.up()
    mesh = str(lab.mesh)
    device = _device(lab.mesh)
    assert device() == "ipsec0"  # seed 001: tunnel 1 is the active one

    bad = crossmesh("lab", "cut-tunnel", "--mesh", mesh, "--tunnel", "3")
    assert bad.returncode == 2 and "has no tunnel 3 — its tunnels are 1, 2" in bad.stderr
    bad = crossmesh("lab", "cut-tunnel", "--mesh", mesh, "--connection", "nope")
    assert bad.returncode == 2 and "its connections are: openstack-vpn" in bad.stderr

    cut = json.loads(crossmesh("lab", "cut-tunnel", "--mesh", mesh, "-o", "json", check=True).stdout)
    assert (cut["connection"], cut["tunnel"], len(cut["changes"])) == ("openstack-vpn", 1, 1)
    again = json.loads(crossmesh("lab", "cut-tunnel", "--mesh", mesh, "-o", "json", check=True).stdout)
    assert again["changes"] == []  # idempotent
    assert _until(lambda: device() == "ipsec1", 10), f"the VPC is still routed via {device()} after the cut"
    state = labs.find_lab(lab.mesh)
    assert state.cut_tunnels == ["openstack-vpn/1"]
    assert tunnelcut.dropped(state)["openstack-vpn/1"] > 0  # the wire, not a daemon, killed it
    rows = {r["tunnel"]: r for r in _status(lab.mesh)["vpn"]}  # type: ignore[union-attr]
    assert rows[1]["cut"] and rows[1]["cutDropped"] > 0 and not rows[2]["cut"]
    assert rows[2]["carries"] and not rows[1]["carries"]  # the customer gateway routes into tunnel 2
    wide = {**os.environ, "COLUMNS": "400"}  # one table row on one line
    assert "packets dropped (`lab heal-tunnel`)" in crossmesh("lab", "status", "--mesh", mesh, env=wide).stdout
    # Pod to pod still works, through tunnel 2.
    http = ("curl", "-sf", "-m", "5", "http://10.42.3.2:3000/")
    assert crossmesh("lab", "exec", "--mesh", mesh, "k3s/demo/demo-app-0", "--", *http, check=True).stdout

    healed = crossmesh("lab", "heal-tunnel", "--mesh", mesh, check=True)
    assert "healed" in healed.stdout
    assert _until(lambda: device() == "ipsec0", 20), f"the VPC is routed via {device()} after the heal"
    assert not any(r["cut"] for r in _status(lab.mesh)["vpn"])  # type: ignore[union-attr]
    assert "nothing to heal" in crossmesh("lab", "heal-tunnel", "--mesh", mesh, check=True).stdout

    crossmesh("lab", "cut-tunnel", "--mesh", mesh, check=True)
    assert _until(lambda: device() == "ipsec1", 10)
    up = lab.up()
    assert any(tunnelcut.TABLE in c for c in up["changes"]), up["changes"]  # a plain `up` heals it
    assert labs.find_lab(lab.mesh).cut_tunnels == []
    assert _until(lambda: device() == "ipsec0", 20)

    code, report = lab.test("--test", "^vpn/failover")
    [check] = report["checks"]
    assert code == 0 and check["actual"] == "ok", check["detail"]
    detail = check["detail"]
    window = re.search(r"loss window (\d+) ms", detail)
    # No BFD: BGP's 3 s hold timer decides; a window well under it would mean the cut missed the tunnel.
    assert window and 1500 <= int(window.group(1)) <= 3500, detail
    assert re.search(r"healed: back on tunnel 1 [\d.]+ s later, 0 datagrams lost", detail), detail
    assert "tunnel 2 (ipsec1) carried it" in check["detail"]
    assert device() == "ipsec0" and labs.find_lab(lab.mesh).cut_tunnels == []  # the check healed what it cut
