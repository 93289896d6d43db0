"""`lab up --no-flow-logs`: the lab's tables without a single log rule, and otherwise the same
rules in the same order — what is accepted, dropped, counted, marked or translated does not change."""

from __future__ import annotations

import shutil
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from crossmesh import nft
from crossmesh.drivers.lab import topology
from crossmesh.drivers.lab.desired import policy_index
from crossmesh.observe import codes
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]
CASES = ["examples/three-clouds", "examples/hybrid-openstack-aws", "tests/golden/gateways"]
F = nft.Field


def _topologies(case: str, tmp: Path) -> tuple[topology.LabTopology, topology.LabTopology]:
    shutil.copytree(ROOT / case, tmp / "m", ignore=shutil.ignore_patterns(".crossmesh", "expected"))
    compiled = compile_mesh(tmp / "m" / "mesh.yaml")
    index = policy_index(compiled)
    on = topology.build(compiled.plan, "f0f0", policy=index)
    off = topology.build(compiled.plan, "f0f0", policy=index, flow_logs=False)
    return on, off


def _effect(rule: nft.Rule) -> nft.Rule | None:
    """What a rule does once its logging is left out; None when logging was all it did."""
    kept = tuple(e for e in rule.exprs if not isinstance(e, nft.Log))
    return None if all(isinstance(e, nft.Match) for e in kept) else nft.Rule(kept, rule.comment)


@pytest.mark.parametrize("case", CASES)
def test_without_flow_logs_no_table_logs_and_every_other_rule_is_the_same(case: str, tmp_path: Path) -> None:
    on, off = _topologies(case, tmp_path)
    assert [ns.name for ns in on.namespaces] == [ns.name for ns in off.namespaces]
    logged = 0
    for a, b in zip(on.namespaces, off.namespaces, strict=True):
        assert (a.links, a.addresses, a.routes, a.neighbours, a.sysctls) == (
            b.links,
            b.addresses,
            b.routes,
            b.neighbours,
            b.sysctls,
        )
        if a.nft is None:
            assert b.nft is None
            continue
        assert b.nft is not None
        text_on, text_off = nft.render(a.nft), nft.render(b.nft)
        logged += text_on.count(f" group {codes.GROUP}")
        assert " log " not in text_off and "log prefix" not in text_off, f"{b.name} still logs"
        for item_on, item_off in zip(a.nft.items, b.nft.items, strict=True):
            if not isinstance(item_on, nft.Chain):
                assert item_on == item_off  # sets and maps: untouched
                continue
            assert isinstance(item_off, nft.Chain)
            assert (item_on.name, item_on.base) == (item_off.name, item_off.base)
            expected = [r for r in map(_effect, item_on.rules) if r is not None]
            assert list(item_off.rules) == expected, f"{b.name} chain {item_on.name}"
    assert logged > 0  # the tables with logs on did log


def test_a_rule_that_only_logged_goes_and_a_logged_drop_stays_a_counted_drop() -> None:
    new = nft.Match(F.CT_STATE, (nft.CtState.NEW,))
    addr = nft.Match(F.IP_SADDR, IPv4Address("10.0.0.1"), negate=True)
    members = nft.Set("pods", (nft.Type.IPV4_ADDR,))
    table = nft.Table(
        "crossmesh",
        (
            members,
            nft.Chain(
                "forward",
                (
                    nft.Rule((addr, nft.Log(codes.GROUP, codes.SPOOF), nft.Counter(), nft.Verdict.DROP), "spoof"),
                    nft.Rule((new, nft.Log(codes.GROUP, codes.NEW_EGRESS))),
                    nft.Rule((nft.Counter(), nft.Log(codes.GROUP, codes.NAT), nft.Redirect(15001))),
                    nft.Rule((new, nft.Verdict.ACCEPT)),
                ),
                nft.Base(nft.ChainType.FILTER, nft.Hook.FORWARD, 0),
            ),
        ),
    )
    stripped = nft.without_logs(table)
    chain = stripped.items[1]
    assert isinstance(chain, nft.Chain)
    assert stripped.items[0] is members
    assert chain.rules == (
        nft.Rule((addr, nft.Counter(), nft.Verdict.DROP), "spoof"),
        nft.Rule((nft.Counter(), nft.Redirect(15001))),
        nft.Rule((new, nft.Verdict.ACCEPT)),
    )
    assert nft.without_logs(stripped) == stripped  # nothing left to take out
