"""The log rules of the lab's tables, which the flow daemon's records come from: no node or router
drops a packet without logging it with a code that says why, every code the tables write is one
the daemon decodes, and a node logs a new connection of its pods only after the policy verdict."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from crossmesh import nft
from crossmesh.drivers.lab import topology
from crossmesh.drivers.lab.desired import policy_index
from crossmesh.observe import codes
from crossmesh.observe.flows import DropReason, Verdict
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]
CASES = ["examples/three-clouds", "examples/hybrid-openstack-aws", "tests/golden/gateways"]


def _tables(case: str, tmp: Path) -> list[tuple[str, str, nft.Table]]:
    shutil.copytree(ROOT / case, tmp / "m", ignore=shutil.ignore_patterns(".crossmesh", "expected"))
    compiled = compile_mesh(tmp / "m" / "mesh.yaml")
    topo = topology.build(compiled.plan, "f0f0", policy=policy_index(compiled))
    return [(ns.name, ns.role, ns.nft) for ns in topo.namespaces if ns.nft is not None]


def _chains(table: nft.Table) -> Iterator[nft.Chain]:
    return (c for c in table.items if isinstance(c, nft.Chain))


def _logs(rule: nft.Rule) -> list[nft.Log]:
    return [e for e in rule.exprs if isinstance(e, nft.Log)]


def _matches(rule: nft.Rule) -> tuple[nft.Expr, ...]:
    return tuple(e for e in rule.exprs if isinstance(e, nft.Match))


def _drops(rule: nft.Rule) -> bool:
    return any(e is nft.Verdict.DROP or isinstance(e, nft.Reject) for e in rule.exprs)


@pytest.mark.parametrize("case", CASES)
def test_no_node_or_router_drops_a_packet_without_logging_why(case: str, tmp_path: Path) -> None:
    drops = 0
    for name, role, table in _tables(case, tmp_path):
        if role not in ("node", "router"):
            continue  # the internet's own drops are nobody's flows
        for chain in _chains(table):
            before: nft.Rule | None = None
            for rule in chain.rules:
                if _drops(rule):
                    drops += 1
                    ahead = before is not None and _matches(before) == _matches(rule) and _logs(before)
                    logged = _logs(rule) or ahead
                    assert logged, f"{name} {chain.name}: {nft.rule(rule)} drops without a log"
                before = rule
    assert drops > 0


@pytest.mark.parametrize("case", CASES)
def test_every_code_the_tables_write_is_one_the_flow_daemon_decodes(case: str, tmp_path: Path) -> None:
    written: set[str] = set()
    for _name, _role, table in _tables(case, tmp_path):
        for chain in _chains(table):
            for rule in chain.rules:
                for log in _logs(rule):
                    assert log.group == codes.GROUP
                    assert log.prefix == codes.NAT or codes.decode_prefix(log.prefix) is not None, log.prefix
                    written.add(log.prefix)
    assert {codes.NEW_EGRESS, codes.NEW_INGRESS, codes.SPOOF, codes.FIREWALL, codes.NAT} <= written
    if case == "examples/three-clouds":  # default deny in every namespace, and deny rules
        assert {codes.DEFAULT_EGRESS, codes.DEFAULT_INGRESS, codes.DENY_INGRESS} <= written


def test_a_node_logs_new_connections_after_anti_spoofing_and_the_policy_verdict(tmp_path: Path) -> None:
    checked = 0
    for name, role, table in _tables("examples/three-clouds", tmp_path):
        if role != "node":
            continue
        chains = {c.name: c for c in _chains(table)}
        forward = [nft.rule(r) for r in chains["forward"].rules]
        new = [i for i, r in enumerate(forward) if "cm:new:" in r]
        if not new:
            continue  # a node without pods
        assert [forward[i].split(" log ")[0].split()[-1] for i in new] == ["}", "}"], forward  # egress, ingress
        assert "cm:new:egress" in forward[new[0]] and "cm:new:ingress" in forward[new[1]]
        assert all(r.startswith("ct state new ") for r in (forward[i] for i in new))
        assert new == [len(forward) - 2, len(forward) - 1], f"{name}: not last in forward"
        assert "jump netpol" in forward[new[0] - 1], f"{name}: not after the policy verdict"
        local_in = [nft.rule(r) for r in chains["local_in"].rules]
        assert local_in[-2:] == forward[-2:]
        checked += 1
    assert checked >= 3


def test_the_codes_decode_to_verdict_reason_and_direction() -> None:
    assert codes.decode_prefix(codes.new("egress")) == (Verdict.FORWARDED, DropReason.NONE, "egress")
    assert codes.decode_prefix(codes.new("ingress")) == (Verdict.FORWARDED, DropReason.NONE, "ingress")
    assert codes.decode_prefix(codes.deny("ingress")) == (Verdict.DROPPED, DropReason.POLICY_DENY, "ingress")
    assert codes.decode_prefix(codes.default("egress")) == (Verdict.DROPPED, DropReason.POLICY_DENIED, "egress")
    assert codes.decode_prefix(codes.SPOOF) == (Verdict.DROPPED, DropReason.ANTI_SPOOFING, "")
    assert codes.decode_prefix(codes.NO_BACKEND) == (Verdict.DROPPED, DropReason.NO_BACKEND, "")
    assert codes.decode_prefix(codes.FIREWALL) == (Verdict.DROPPED, DropReason.NOT_ALLOWED_BY_FIREWALL, "")
    assert codes.decode_prefix(codes.NAT) is None
    assert codes.decode_prefix("someone else's prefix") is None
    for code in (codes.NEW_EGRESS, codes.DENY_INGRESS, codes.PRIVATE_TO_INTERNET, codes.NAT):
        assert nft.log_prefix(code) == code  # nft takes each as it is


@pytest.mark.parametrize("case", CASES)
def test_every_node_and_router_logs_the_icmp_errors_its_forwarding_sends(case: str, tmp_path: Path) -> None:
    # A packet too big for the path, or with no route or neighbour, is refused before any forward
    # chain sees it; the ICMP error the kernel answers with leaves through the output hook.
    want = [
        'icmp type 3 icmp code 4 log prefix "cm:mtu" group 100',
        'icmp type 3 icmp code { 0, 1 } log prefix "cm:noroute" group 100',
    ]
    seen = 0
    for name, role, table in _tables(case, tmp_path):
        if role not in ("node", "router"):
            continue
        (out,) = (
            c
            for c in _chains(table)
            if c.base is not None and c.base.hook is nft.Hook.OUTPUT and c.base.type is nft.ChainType.FILTER
        )
        rules = [nft.rule(r) for r in out.rules]
        assert rules[-2:] == want, f"{name} {out.name}: {rules}"
        assert not any(_drops(r) for r in out.rules[-2:])  # logged only: the error goes to its sender
        seen += 1
    assert seen >= 2


def test_the_icmp_error_codes_decode_to_drops_of_the_quoted_flow() -> None:
    assert codes.decode_prefix(codes.MTU) == (Verdict.DROPPED, DropReason.MTU, "")
    assert codes.decode_prefix(codes.NO_ROUTE) == (Verdict.DROPPED, DropReason.NO_ROUTE, "")
    assert {codes.MTU, codes.NO_ROUTE} == codes.ICMP_ERRORS
    for code in codes.ICMP_ERRORS:
        assert nft.log_prefix(code) == code
