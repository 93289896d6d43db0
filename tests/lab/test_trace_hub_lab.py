"""Seed 001's 12-step flow, traced on a running lab of examples/hybrid-openstack-aws: demo-app on the
OpenStack worker → its mesh proxy (mTLS) → kube-proxy → Flannel's VXLAN → the customer gateway's BGP
route into tunnel 1 → ESP in UDP 4500 across the internet → the transit gateway's route table → the VPC
route table → tkb on the AWS worker, and the answer back; every step confirmed by a counter of the one
real request. Then the node port (node/aws-worker-1 30080/TCP, its DNAT rule's counter), tunnel 2 once
tunnel 1's UDP 4500 is dropped on the internet (read from the CHILD_SA counters), and a destination that
cannot be reached (its workload killed): exit 1. Its own lab, brought down by its mesh."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labkit import Lab, crossmesh, running_lab

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns

DEMO, TKB = "k3s/demo/demo-app-0", "k3s/microservices/tkb-0"
FAILOVER_S = 30.0  # BGP's hold time is 3 s; the routes move to tunnel 2 soon after


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("trace-hub"), "hybrid-openstack-aws") as made:
        yield made


def trace(lab: Lab, *args: str) -> tuple[int, dict[str, Any]]:
    done = crossmesh("trace", str(lab.mesh), "--from", DEMO, *args, "-o", "json")
    return done.returncode, json.loads(done.stdout)


def confirmed(data: dict[str, Any]) -> dict[int, list[str]]:
    """Seed step → the marks of its hops."""
    out: dict[int, list[str]] = {}
    for h in data["hops"]:
        if h["seedStep"]:
            out.setdefault(h["seedStep"], []).append(h["confirmed"])
    return out


def action(data: dict[str, Any], device: str) -> str:
    return str(next(h["action"] for h in data["hops"] if h["device"] == device))


@pytest.mark.lab
def test_the_twelve_steps_are_confirmed_by_counters(lab: Lab) -> None:
    code, data = trace(lab, "--to", "k3s/microservices/tkb-service", "--port", "30080/TCP")
    assert code == 0, data
    steps = confirmed(data)
    assert sorted(steps) == list(range(1, 13)), data["hops"]
    unconfirmed = {s: m for s, m in steps.items() if not all(x.startswith("yes:") for x in m)}
    assert not unconfirmed, data["hops"]
    assert "via ipsec0 — tunnel 1 of openstack-vpn" in action(data, "ipsec-route")
    assert "openstack-vpn request tunnel 1" in data["probe"] and "openstack-vpn reply tunnel 1" in data["probe"]
    assert "URI=spiffe://cluster.local/ns/demo/sa/demo-app" in next(
        h["confirmed"] for h in data["hops"] if h["device"] == "mesh"
    )


@pytest.mark.lab
def test_the_node_port_is_translated_by_its_counted_rule(lab: Lab) -> None:
    code, data = trace(lab, "--to", "node/aws-worker-1", "--port", "30080/TCP")
    assert code == 0, data
    nat = next(h for h in data["hops"] if h["device"] == "nodeport-nat")
    assert nat["seedStep"] == 9 and nat["confirmed"].startswith("yes: +"), nat
    assert data["backend"].startswith("k3s/microservices/tkb-")
    steps = confirmed(data)
    assert sorted(steps) == [1, *range(3, 13)]  # a node port is outside the mesh: no mTLS (step 2)
    assert all(m.startswith("yes:") for marks in steps.values() for m in marks), data["hops"]


@pytest.mark.lab
def test_tunnel_2_is_read_from_the_counters_when_tunnel_1_is_cut(lab: Lab, tmp_path: Path) -> None:
    state = next(s for s in labs.running_labs() if s.mesh == str(lab.mesh.resolve()))
    _, topo = labs.topology_of(state)
    outside = topo.vpn_outside[("openstack-vpn", 1)]
    inet = f"{topo.prefix}-inet"
    rules = tmp_path / "cut.nft"
    rules.write_text(
        "table ip cm_trace_cut {\n  chain cut {\n    type filter hook forward priority -10;\n"
        f"    ip daddr {outside} udp dport 4500 drop\n    ip saddr {outside} udp sport 4500 drop\n  }}\n}}\n"
    )
    assert netns.run(inet, ["nft", "-f", str(rules)]).returncode == 0
    try:
        deadline = time.monotonic() + FAILOVER_S
        data: dict[str, Any] = {}
        while time.monotonic() < deadline:
            code, data = trace(lab, "--to", "node/aws-worker-1", "--port", "30080/TCP")
            if code == 0 and "openstack-vpn request tunnel 2" in data["probe"]:
                break
            time.sleep(1.0)
        assert "openstack-vpn request tunnel 2" in data["probe"], data
        assert "via ipsec1 — tunnel 2 of openstack-vpn" in action(data, "ipsec-route")
        assert action(data, "esp-in").startswith("tunnel 2 endpoint decrypts")
        assert all(h["confirmed"].startswith("yes:") for h in data["hops"]), data["hops"]
    finally:
        netns.run(inet, ["nft", "delete", "table", "ip", "cm_trace_cut"])


@pytest.mark.lab
def test_a_destination_that_does_not_answer_exits_1(lab: Lab) -> None:
    crossmesh("lab", "kill", "--mesh", str(lab.mesh), TKB, check=True)
    try:
        code, data = trace(lab, "--to", TKB, "--port", "3000/TCP")
        assert code == 1, data
        assert "ok" not in data["probe"].split(";")[0], data["probe"]
    finally:
        crossmesh("lab", "revive", "--mesh", str(lab.mesh), TKB, check=True)
