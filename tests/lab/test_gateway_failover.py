"""The `gateway/*` checks of `crossmesh test` on examples/gateway-failover run with agents (three sites,
two gateways each, on-prem behind NAT): every site's active gateway carries it, every standby is ready,
each site's active gateway crashed and then blackholed under a UDP stream fails over within the loss
budget — the window in the detail — and comes back, with no split brain; the fidelity checks hold
while a site runs on its standby; and the whole `crossmesh test` still passes afterwards, the lab left
on its preferred gateways. One lab for the module, brought down by its own tag."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from agentkit import until
from labkit import Lab, copy_example, crossmesh

from crossmesh.drivers.lab import lab as labs

KINDS = ("active-carries", "standby-ready", "failover-crash", "failover-blackhole", "no-split-brain")
PREFERRED = {"aws-use1": "gw-aws-1", "azure-weu": "gw-azure-1", "onprem": "gw-onprem-1"}
WINDOW = re.compile(r"loss window (\d+) ms")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    mesh, name = copy_example(tmp_path_factory.mktemp("gateway-checks"), "gateway-failover")
    made = Lab(mesh, name)
    try:
        t0 = time.monotonic()
        made.up("--agents")
        print(f"\n[gateway checks] lab up --agents: {time.monotonic() - t0:.1f} s")
        yield made
    finally:
        made.down()
        assert labs.leftovers(made.tag) == [], f"lab cm-{made.tag} left things behind"


def active(lab: Lab) -> dict[str, str]:
    st = labs.LabState.load(lab.tag)
    assert st is not None
    return {site: json.loads(raw)["active"] for site, raw in labs.gateway_values(st).items()}


def on_preferred(lab: Lab) -> bool:
    """etcd names every site's preferred gateway"""
    return active(lab) == PREFERRED


def failed(report: dict[str, object]) -> list[str]:
    return [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["passed"]]  # type: ignore[attr-defined]


def test_the_gateway_checks_pass_and_report_their_loss_windows(lab: Lab) -> None:
    t0 = time.monotonic()
    code, report = lab.test("--test", "^gateway/")
    took = time.monotonic() - t0
    assert code == 0, failed(report)
    checks: list[dict[str, str]] = report["checks"]  # type: ignore[assignment]
    ran = [c for c in checks if not c["skipped"]]
    assert {c["name"].split(":")[0].removeprefix("gateway/") for c in ran} == set(KINDS)
    assert all(c["kind"] == "gateway" and c["actual"] == "ok" for c in ran)
    assert len(ran) == 15 and not [c for c in checks if c["skipped"]]
    windows = {}
    for c in ran:
        if c["name"].startswith("gateway/failover-"):
            found = WINDOW.search(c["detail"])
            assert found, c["detail"]
            windows[c["name"]] = int(found[1])
            assert int(found[1]) <= 1000 and "took over" in c["detail"] and "active again" in c["detail"], c
    assert len(windows) == 6
    for name, ms in sorted(windows.items()):
        print(f"[gateway checks] {name}: loss window {ms} ms")
    for c in ran:
        if c["name"].startswith("gateway/no-split-brain"):
            print(f"[gateway checks] {c['name']}: {c['detail']}")
    print(f"[gateway checks] crossmesh test --test ^gateway/: {took:.1f} s")
    assert on_preferred(lab), active(lab)  # left as found


def test_fidelity_holds_while_a_site_runs_on_its_standby(lab: Lab) -> None:
    assert until(lambda: on_preferred(lab), 40, interval=0.2)[0], active(lab)
    m = ("--mesh", str(lab.mesh))
    crossmesh("lab", "stop-forwarding", "gw-aws-1", *m, check=True)
    try:
        assert until(lambda: active(lab)["aws-use1"] == "gw-aws-2", 15, interval=0.1)[0], active(lab)
        code, report = lab.test("--test", "^fidelity/tunnel|^gateway/(active-carries|standby-ready)")
        assert code == 0, failed(report)
        checks: list[dict[str, str]] = report["checks"]  # type: ignore[assignment]
        fidelity = [c for c in checks if c["name"].startswith("fidelity/tunnel")]
        assert len(fidelity) == 6
        assert all("site aws-use1 on gw-aws-2 (preferred gw-aws-1)" in c["detail"] for c in fidelity), fidelity
        names = {c["name"] for c in checks}
        assert {"gateway/standby-ready: gw-aws-1", "gateway/active-carries: aws-use1"} <= names
        assert "gateway/standby-ready: gw-aws-2" not in names
    finally:
        crossmesh("lab", "heal-node", "gw-aws-1", *m, check=True)
    assert until(lambda: on_preferred(lab), 40, interval=0.2)[0], active(lab)


def test_the_whole_test_still_passes(lab: Lab) -> None:
    t0 = time.monotonic()
    code, report = lab.test()
    took = time.monotonic() - t0
    assert code == 0, failed(report)
    summary = report["summary"]
    names = {c["name"] for c in report["checks"]}  # type: ignore[attr-defined]
    assert {f"gateway/failover-crash: {s}" for s in PREFERRED} <= names
    print(f"[gateway checks] crossmesh test (all): {summary} in {took:.1f} s")
    assert on_preferred(lab), active(lab)
