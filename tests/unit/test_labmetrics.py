"""The lab service daemon's per-node metrics without a lab: backends by health and transitions from
its hooks, served over real HTTP on 127.0.0.1, and the policy drop counters read from `nft -j`."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from crossmesh.drivers.lab import labmetrics


def _rule(chain: str, comment: str | None, packets: int, octets: int, counter: bool = True) -> dict[str, object]:
    expr: list[dict[str, object]] = [{"drop": None}]
    if counter:
        expr.insert(0, {"counter": {"packets": packets, "bytes": octets}})
    rule: dict[str, object] = {"family": "ip", "table": "crossmesh", "chain": chain, "handle": 1, "expr": expr}
    if comment is not None:
        rule["comment"] = comment
    return {"rule": rule}


NFT = json.dumps(
    {
        "nftables": [
            {"metainfo": {"version": "1.0.9"}},
            {"set": {"name": "deny_egress", "table": "crossmesh"}},
            _rule("verdict_egress", "denied by a egress deny rule", 2, 120),
            _rule("verdict_egress", "denied by a egress deny rule", 1, 60),
            _rule("verdict_egress", None, 0, 0, counter=False),
            _rule("verdict_egress", "policy-denied egress", 5, 300),
            _rule("verdict_ingress", "policy-denied ingress", 7, 420),
            _rule("forward", "unsolicited-from-internet", 9, 900),  # not the policy's
        ]
    }
)


def test_drops_are_summed_per_direction_and_kind() -> None:
    assert labmetrics.parse_drops(NFT) == {
        ("egress", "deny"): (3, 180),
        ("egress", "default"): (5, 300),
        ("ingress", "default"): (7, 420),
    }
    assert labmetrics.parse_drops("") == {} and labmetrics.parse_drops("not json") == {}


def test_backends_transitions_and_check_durations_are_served() -> None:
    health = {"k1": True, "k2": False, "k3": True}
    metrics = labmetrics.NodeMetrics(
        "cm-none-n0",  # no such namespace: no drops are read, the rest is served
        {"c1/default/web": frozenset({"k1", "k2"}), "c1/default/db": frozenset({"k3"}), "c1/default/none": frozenset()},
        lambda: dict(health),
    )
    metrics.transition("k2", False)

    async def check() -> bool:
        await asyncio.sleep(0.01)
        return True

    assert asyncio.run(metrics.timed(check()))
    server = metrics.serve("127.0.0.1", 0)
    try:
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.close()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    web = (("service", "c1/default/web"),)
    assert got[("crossmesh_service_backends", (*web, ("state", "healthy")))] == 1
    assert got[("crossmesh_service_backends", (*web, ("state", "unhealthy")))] == 1
    assert got[("crossmesh_service_backends", (("service", "c1/default/db"), ("state", "healthy")))] == 1
    assert not any(dict(labels).get("service") == "c1/default/none" for _, labels in got)  # no backend here
    assert got[("crossmesh_service_backend_transitions_total", (*web, ("state", "unhealthy")))] == 1
    assert got[("crossmesh_service_backend_transitions_total", (*web, ("state", "healthy")))] == 0
    assert got[("crossmesh_service_health_check_duration_seconds_count", ())] == 1
    assert got[("crossmesh_service_health_check_duration_seconds_sum", ())] >= 0.01
