"""`vpn/failover`'s builder and verdict, apart from the lab (tests/lab/test_vpn_failover_lab.py stages it)."""

from __future__ import annotations

import dataclasses
import shutil
from ipaddress import IPv4Network
from pathlib import Path

from crossmesh.checks import probes, vpnfailover
from crossmesh.checks.framework import Context
from crossmesh.checks.results import Kind, Result
from crossmesh.drivers.lab import topology
from crossmesh.drivers.lab.state import LabState
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]


def _context(tmp_path: Path, example: str, *, lab: bool) -> Context:
    shutil.copytree(ROOT / example, tmp_path / "m", ignore=shutil.ignore_patterns(".crossmesh", "state", "expected"))
    compiled = compile_mesh(tmp_path / "m" / "mesh.yaml", tmp_path / "state")
    state = LabState("t0", "mesh.yaml", "m", str(tmp_path / "state")) if lab else None
    return Context(compiled.plan, topology.build(compiled.plan, "t0"), state)


def test_seed_001_streams_from_openstack_to_the_aws_echo_through_the_vpc_prefix(tmp_path: Path) -> None:
    [planned] = vpnfailover.vpn_failover(_context(tmp_path, "examples/hybrid-openstack-aws", lab=True))
    c = planned.check
    assert (c.name, c.kind, c.expected) == ("vpn/failover: openstack-vpn", Kind.VPN, Result.OK)
    assert c.source.startswith("k3s/demo/") and c.target == "k3s/microservices/tkb-0" and c.port == "30053/UDP"


def test_without_a_lab_it_is_skipped_with_the_reason_and_without_vpn_it_is_absent(tmp_path: Path) -> None:
    [skipped] = vpnfailover.vpn_failover(_context(tmp_path / "a", "examples/hybrid-openstack-aws", lab=False))
    assert skipped.check.skipped and "no running lab to cut a tunnel in" in skipped.check.detail
    assert vpnfailover.vpn_failover(_context(tmp_path / "b", "tests/meshes/hybrid-wireguard", lab=True)) == []


def test_static_routing_cannot_fail_over(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "examples/hybrid-openstack-aws", lab=True)
    plan = dataclasses.replace(ctx.plan, vpn=tuple(dataclasses.replace(c, routing="static") for c in ctx.plan.vpn))
    [skipped] = vpnfailover.vpn_failover(dataclasses.replace(ctx, plan=plan))
    assert skipped.check.skipped and "static routing" in skipped.check.detail


def _run(window: float, lost_back: int = 0) -> vpnfailover.Run:
    return vpnfailover.Run(
        window=probes.Gap(10, int(window * 100), 0.0, window), moved=2.5, back=1.5, lost_back=lost_back
    )


def test_verdict_holds_the_window_to_the_hold_time_and_the_move_back_to_no_loss() -> None:
    assert vpnfailover.LOSS_BUDGET == 3.5  # BGP hold 3 s (no BFD on AWS VPN tunnels) + half a second to install
    assert vpnfailover.verdict(_run(2.9)) is Result.OK
    assert vpnfailover.verdict(_run(3.6)) is Result.TOO_SLOW
    r = _run(2.9, lost_back=3)
    assert vpnfailover.verdict(r) is Result.WRONG_ANSWER
    assert "3 datagrams lost while the traffic moved back to tunnel 1" in vpnfailover.describe(r, "c")
    never = vpnfailover.Run(window=probes.Gap(0, 5, 0.0, float("inf")), back=None)
    assert vpnfailover.verdict(never) is Result.TIMEOUT


def test_flow_prefix_is_the_hub_prefix_holding_the_target_node(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "examples/hybrid-openstack-aws", lab=True)
    flow = vpnfailover.pick_flow(ctx, ctx.plan.vpn[0])
    assert flow is not None
    assert flow.prefix == IPv4Network("10.100.0.0/16")
    assert ctx.plan.node(flow.target.node).address in flow.prefix
