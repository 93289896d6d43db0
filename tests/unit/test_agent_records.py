"""Which node records an agent applies when two of them claim the same addresses."""

from __future__ import annotations

from crossmesh.agent.records import NodeRecord, accept


def rec(name: str, pod_cidr: str, tunnel: str) -> NodeRecord:
    """Distinct node address and key per name: only the pod CIDR and tunnel address may clash."""
    n = sum(name.encode()) % 250 + 1
    return NodeRecord(name, "c", "s", name, f"10.0.0.{n}", pod_cidr, tunnel, 51820, None)


OWN = rec("own", "10.10.0.0/24", "100.64.0.1")
OLD = rec("zz-old", "10.11.0.0/24", "100.64.0.2")
NEW = rec("aa-new", "10.11.0.0/24", "100.64.0.3")  # sorts first, published last


def test_the_older_record_keeps_its_pod_cidr() -> None:
    ok, rejected = accept(OWN, {"zz-old": OLD, "aa-new": NEW}, {"zz-old": 5, "aa-new": 9})
    assert list(ok) == ["zz-old"]
    assert rejected == {"aa-new": "10.11.0.0/24 overlaps node zz-old's 10.11.0.0/24"}


def test_the_reason_names_the_overlapping_address() -> None:
    same_tunnel = rec("b", "10.12.0.0/24", "100.64.0.1")
    _, rejected = accept(OWN, {"b": same_tunnel}, {"b": 3})
    assert rejected == {"b": "100.64.0.1/32 overlaps node own's 100.64.0.1/32"}


def test_own_addresses_are_never_given_away() -> None:
    _, rejected = accept(OWN, {"x": rec("x", "10.10.0.0/16", "100.64.0.9")}, {"x": 1})
    assert set(rejected) == {"x"}


def test_without_revisions_name_order_decides() -> None:
    ok, rejected = accept(OWN, {"zz-old": OLD, "aa-new": NEW})
    assert list(ok) == ["aa-new"] and set(rejected) == {"zz-old"}
