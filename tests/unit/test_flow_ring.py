"""Per-node ring buffers: bounded, every loss counted, read back in time order."""

from __future__ import annotations

import pytest

from crossmesh.observe.flows import Flow, FlowEndpoint, Verdict
from crossmesh.observe.ring import Ring, merged


def flow(t: float, node: str = "n1") -> Flow:
    return Flow(
        time=t,
        node=node,
        verdict=Verdict.FORWARDED,
        protocol="TCP",
        source=FlowEndpoint("10.0.0.1"),
        destination=FlowEndpoint("10.0.0.2"),
    )


def test_a_full_ring_evicts_the_oldest_and_counts_it() -> None:
    ring = Ring(capacity=3)
    ring.extend(flow(t) for t in range(5))
    assert [f.time for f in ring.since(None)] == [2, 3, 4]
    status = ring.status()
    assert (status.recorded, status.evicted, status.lost, status.error) == (5, 2, 0, "")
    assert len(ring) == 3


def test_since_keeps_records_at_or_after_the_time() -> None:
    ring = Ring()
    ring.extend(flow(t) for t in (1.0, 2.0, 3.0))
    assert [f.time for f in ring.since(2.0)] == [2.0, 3.0]
    assert ring.since(9.0) == []


def test_lost_records_and_errors_are_kept_in_the_status() -> None:
    ring = Ring()
    ring.add_lost(7)
    ring.add_lost(0)
    ring.error = "NFLOG group 100: permission denied"
    assert ring.status().to_json() == {
        "recorded": 0,
        "lost": 7,
        "evicted": 0,
        "error": "NFLOG group 100: permission denied",
    }
    with pytest.raises(ValueError, match="count"):
        ring.add_lost(-1)


def test_a_ring_holds_at_least_one_record() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Ring(capacity=0)


def test_merged_reads_every_node_in_time_order() -> None:
    a, b = Ring(), Ring()
    a.extend(flow(t, "a") for t in (1.0, 4.0, 5.0))
    b.extend(flow(t, "b") for t in (2.0, 3.0, 4.0))
    got = [(f.time, f.node) for f in merged({"b": b, "a": a}, 2.0)]
    assert got == [(2.0, "b"), (3.0, "b"), (4.0, "a"), (4.0, "b"), (5.0, "a")]
