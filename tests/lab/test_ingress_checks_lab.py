"""The `ingress/*` checks of `crossmesh test` on a real lab of examples/three-clouds: a user outside
(`local`) reaches https://rebels.example.com on the load balancer of Azure's site, the routes answer
from the backends `gateway.match.select` names, the canary splits 90/10 over 1,000 requests, the
X-Version header picks its rule, TLS is as configured, nothing else answers on a public address,
and killing cluster2's rebel-base pods under requests moves them to cluster3's. The checks that
send to pods and Services treat the gateway's pod as HAProxy's listener, not the echo app."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from labkit import Lab

pytestmark = pytest.mark.lab

CHECKS = ("route", "weights", "header-match", "tls", "no-public-exposure", "failover")


def test_the_ingress_checks_pass_on_three_clouds(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("three-clouds")
    lab.up()
    code, report = lab.test("--test", "^(ingress|nodeport|pod-to-service)/")
    checks: list[dict[str, Any]] = report["checks"]  # type: ignore[assignment]
    failed = [f"{c['name']}: {c['actual']} — {c['detail']}" for c in checks if not c["passed"]]
    assert code == 0 and not failed, "\n".join(failed)
    ingress = [c for c in checks if c["kind"] == "ingress" and not c["skipped"]]
    assert {c["name"].split(":")[0].removeprefix("ingress/") for c in ingress} == set(CHECKS)
    assert all(c["from"] == "local" for c in ingress)

    [weights] = [c for c in ingress if c["name"].startswith("ingress/weights")]
    shares = dict(re.findall(r"default/(rebel-base(?:-gcp)?):80 (\d+\.\d) %", weights["detail"]))
    assert abs(float(shares["rebel-base"]) - 90.0) <= 3.0 and abs(float(shares["rebel-base-gcp"]) - 10.0) <= 3.0
    assert "1000 requests" in weights["detail"]

    [header] = [c for c in ingress if c["name"].startswith("ingress/header-match")]
    assert "HAProxy counted" in header["detail"]  # the rules told apart by the gateway's own counters

    exposure = [c for c in ingress if c["name"].startswith("ingress/no-public-exposure")]
    assert len(exposure) == 7  # three routers, three nodes with a public address, one load balancer
    assert [c for c in exposure if "answered: 443" in c["detail"]] == [c for c in exposure if c["port"] == "443"]

    [failover] = [c for c in ingress if c["name"].startswith("ingress/failover")]
    assert re.search(r"gap \d+ ms", failover["detail"]) and "answered again" in failover["detail"]

    # the gateway's node port answers with its TLS listener, not the echo app
    gateway_nodeport = [c for c in checks if c["kind"] == "nodeport" and c["to"] == "cluster2/default/rebels-istio"]
    assert gateway_nodeport and all(
        "answered TLS for rebels.example.com" in c["detail"] for c in gateway_nodeport if not c["skipped"]
    )
