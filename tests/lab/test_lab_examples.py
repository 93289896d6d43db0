"""Both examples come up for real, pass `crossmesh test`, re-apply without changes,
recover from a killed tunnel, and leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from labkit import crossmesh

from crossmesh.drivers.lab import lab as labs


def _failed(report: dict[str, object]) -> list[str]:
    return [f"{c['name']}: {c['actual']} ({c['detail']})" for c in report["checks"] if not c["passed"]]  # type: ignore[index, union-attr, attr-defined]


def test_three_clouds_up_test_reapply_down(make_lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab("three-clouds")
    first = lab.up()
    assert first["changes"], "the first up must build something"

    again = lab.up()
    assert again["changes"] == [], f"second up changed: {again['changes'][:5]}"

    junit = tmp_path / "junit.xml"
    code, report = lab.test("--junit", str(junit))
    assert code == 0, _failed(report)
    kinds = {c["kind"] for c in report["checks"]}  # type: ignore[union-attr, attr-defined]
    assert {"pod-to-pod", "pod-to-service", "mtu", "encryption", "nat"} <= kinds
    names = " ".join(c["name"] for c in report["checks"])  # type: ignore[union-attr, attr-defined]
    for pair_class in ("same-node", "cross-cluster"):
        assert f"pod-to-pod/{pair_class}/http" in names and f"pod-to-pod/{pair_class}/udp" in names
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and int(suite.get("tests", "0")) == len(report["checks"])  # type: ignore[arg-type]

    # exec passes output and exit status through; DNS answers the MCS name of the global service.
    plan = json.loads(crossmesh("plan", str(lab.mesh), "-o", "json", check=True).stdout)["plan"]
    pods = {p["ref"]: p for c in plan["clusters"] for p in c["pods"]}
    client = pods["cluster1/default/x-wing-0"]["address"]
    target = pods["cluster2/default/rebel-base-0"]["address"]
    out = crossmesh(
        "lab",
        "exec",
        "--mesh",
        str(lab.mesh),
        "cluster1/default/x-wing-0",
        "--",
        "curl",
        "-s",
        "-m",
        "3",
        f"http://{target}/from-test",
        check=True,
    )
    answer = json.loads(out.stdout)
    assert answer["pod"] == "rebel-base-0" and answer["clientIP"] == client and answer["path"] == "/from-test"
    out = crossmesh(
        "lab",
        "exec",
        "--mesh",
        str(lab.mesh),
        "cluster1/default/x-wing-0",
        "--",
        "curl",
        "-s",
        "-m",
        "3",
        "http://relay.default.svc.clusterset.local/",
        check=True,
    )
    assert json.loads(out.stdout)["pod"] == "relay-0"
    code7 = crossmesh("lab", "exec", "--mesh", str(lab.mesh), "cluster1/default/x-wing-0", "--", "sh", "-c", "exit 7")
    assert code7.returncode == 7

    status = json.loads(crossmesh("lab", "status", "--mesh", str(lab.mesh), "-o", "json", check=True).stdout)
    assert len(status["tunnels"]) == 6 and all(t["handshakeAge"] is not None for t in status["tunnels"])


def test_killed_tunnel_fails_checks_and_up_repairs_it(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab("three-clouds")
    lab.up()
    status = json.loads(crossmesh("lab", "status", "--mesh", str(lab.mesh), "-o", "json", check=True).stdout)
    del status
    state = json.loads(Path(f"/run/crossmesh/cm-{lab.tag}/lab.json").read_text())
    victim = next(d for d in state["wireguard"].values() if d["node"] == "azure-talos-1")
    os.kill(victim["pid"], signal.SIGKILL)

    code, report = lab.test("--test", "cross-cluster/http")
    assert code == 1
    failed = _failed(report)
    assert failed and all("cluster2" in f for f in failed), failed

    repaired = lab.up()
    assert any("wireguard-go" in c and "started" in c for c in repaired["changes"])
    code, report = lab.test()
    assert code == 0, _failed(report)


def test_hybrid_stretched_k3s(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab("hybrid-openstack-aws")
    lab.up()
    code, report = lab.test()
    assert code == 0, _failed(report)
    names = [c["name"] for c in report["checks"]]  # type: ignore[union-attr, attr-defined]
    # Seed 001's flow: demo-app on OpenStack reaches tkb on AWS, directly and through its service.
    assert any(n.startswith("pod-to-pod/cross-site/http: k3s/demo/demo-app-0 -> k3s/demo/tkb-") for n in names)
    assert any("-> k3s/demo/tkb-service" in n for n in names)
    # The worker behind the OpenStack router's NAT is reached only through its tunnel.
    assert any(n.startswith("nat/unsolicited-from-internet") and "openstack-worker" in n for n in names)
    assert any(n.startswith("nat/reached-through-tunnel") for n in names)


def test_kill_moves_service_traffic_and_revive_brings_it_back(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab("three-clouds")
    lab.up()
    mesh = ("--mesh", str(lab.mesh))

    def answered() -> str:
        out = crossmesh(
            "lab",
            "exec",
            *mesh,
            "cluster1/default/x-wing-0",
            "--",
            "curl",
            "-s",
            "-m",
            "2",
            "http://relay.default.svc.cluster.local/",
            check=True,
        )
        return str(json.loads(out.stdout)["cluster"])

    assert {answered() for _ in range(5)} == {"cluster1"}  # affinity: local
    crossmesh("lab", "kill", *mesh, "cluster1/default/relay-0", check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and answered() != "cluster2":
        time.sleep(0.1)
    # cluster3 keeps its relay to itself (shared: "false"): only cluster2 may take over.
    assert {answered() for _ in range(5)} == {"cluster2"}
    crossmesh("lab", "revive", *mesh, "cluster1/default/relay-0", check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and answered() != "cluster1":
        time.sleep(0.1)
    assert answered() == "cluster1"
    # A second `up` with a pod killed keeps the daemon's tables and changes nothing.
    crossmesh("lab", "kill", *mesh, "cluster1/default/relay-0", check=True)
    time.sleep(1.0)
    assert lab.up()["changes"] == []


def test_a_filtered_failover_run_leaves_the_lab_as_it_found_it(make_lab) -> None:  # type: ignore[no-untyped-def]
    """`--test failover` alone kills the preferred backends and revives them before it ends (the
    revive was the separate `return` check, which the filter left out)."""
    lab = make_lab("three-clouds")
    lab.up()
    code, report = lab.test("--test", "failover")
    names = [c["name"] for c in report["checks"]]  # type: ignore[attr-defined]
    assert names and all("failover" in n for n in names), names
    assert code == 0, [c for c in report["checks"] if not c["passed"]]  # type: ignore[attr-defined]
    st = labs.LabState.load(lab.tag)
    assert st is not None
    killed = st.dir / "killed"
    assert not killed.is_dir() or not any(killed.iterdir()), sorted(p.name for p in killed.iterdir())
    code, report = lab.test("--test", "return")
    assert code == 0, [c for c in report["checks"] if not c["passed"]]  # type: ignore[attr-defined]
    assert not killed.is_dir() or not any(killed.iterdir())


def test_gateways_topology(make_lab) -> None:  # type: ignore[no-untyped-def]
    """`topology: gateways` (tests/golden/gateways: an active and a standby gateway in one site, workers
    behind NAT routing through them): up, every check, MTU through the gateways, and a second up that
    changes nothing."""
    lab = make_lab("tests/golden/gateways")
    lab.up()
    code, report = lab.test()
    checks = report["checks"]  # type: ignore[index]
    assert code == 0, [c["name"] for c in checks if not c["passed"]]  # type: ignore[attr-defined]
    names = {c["name"].split(":")[0] for c in checks}  # type: ignore[attr-defined]
    assert {"encryption/marker", "nat/reached-through-tunnel"} <= names, sorted(names)
    assert any(n.startswith("mtu/") for n in names), sorted(names)
    assert lab.up()["changes"] == []
