"""Both examples come up for real, pass `crossmesh test`, re-apply without changes,
recover from a killed tunnel, and leave nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
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
    assert any(n.startswith("pod-to-pod/cross-site/http: k3s/demo/demo-app-0 -> k3s/microservices/tkb-") for n in names)
    assert any("-> k3s/microservices/tkb-service" in n for n in names)
    # Seed 001's transit: the sites are joined by the hub's two IPsec tunnels with BGP over each.
    assert any(n.startswith("vpn/tunnels-up") for n in names)
    assert any(n.startswith("bgp/established") for n in names)
    assert any(n.startswith("vpn/failover") for n in names)


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


HEADLESS = """\
apiVersion: v1
kind: Service
metadata:
  name: tkb-headless
  namespace: microservices
spec:
  clusterIP: None
  selector: {app: tkb}
  ports:
    - {port: 3000, protocol: TCP, name: http}
"""


def test_nodeport_on_every_node_and_a_headless_service_without_vip(make_lab) -> None:  # type: ignore[no-untyped-def]
    """Seed 001's NodePort 30080 answers on every node of the stretched cluster — the two OpenStack
    nodes have no tkb pod, theirs are on AWS — from a pod, another node and the site network; a
    headless Service beside it gets no ClusterIP and no rule, and its name answers its ready pods."""
    lab = make_lab("hybrid-openstack-aws")
    (lab.mesh.parent / "apps" / "headless.yaml").write_text(HEADLESS)
    lab.up()
    mesh = ("--mesh", str(lab.mesh))

    plan = json.loads(crossmesh("plan", str(lab.mesh), "-o", "json", check=True).stdout)["plan"]
    services = {s["ref"]: s for c in plan["clusters"] for s in c["services"]}
    assert services["k3s/microservices/tkb-service"]["nodePorts"] == {"30080/TCP": 30080}
    headless = services["k3s/microservices/tkb-headless"]
    assert headless["clusterIP"] is None and headless["headless"]

    code, report = lab.test("--test", "^(nodeport|headless|pod-to-service)/")
    assert code == 0, _failed(report)
    checks = [c for c in report["checks"] if c["kind"] == "nodeport" and not c["skipped"]]  # type: ignore[union-attr, attr-defined]
    seen = {(c["name"].split(" -> ")[1].split()[0], c["name"].split(":")[0]) for c in checks}
    nodes = ("openstack-master", "openstack-worker", "aws-worker-1")
    origins = ("nodeport/from-pod/http", "nodeport/from-node/http", "nodeport/from-site/http")
    assert seen == {(n, o) for n in nodes for o in origins}, sorted(seen)
    assert all("answered by k3s/microservices/tkb-" in c["detail"] for c in checks), [c["detail"] for c in checks]
    assert any(c["kind"] == "headless" and c["passed"] for c in report["checks"])  # type: ignore[union-attr, attr-defined]

    # No VIP: each node's service chain holds tkb-service's ClusterIP and node port rules, nothing else.
    state = labs.LabState.load(lab.tag)
    assert state is not None
    _, topo = labs.topology_of(state)
    for node in nodes:
        table = subprocess.run(
            ["ip", "netns", "exec", topo.node_ns[node], "nft", "list", "chain", "ip", "crossmesh", "services"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        dnat = [line.strip() for line in table.splitlines() if "dnat" in line]
        # ClusterIP, the node's own node port and, on a node with pods, its pods' connections to the
        # other nodes' node ports (translated at the source, as Cilium's socket load balancer does).
        has_pods = any(p["node"] == node for c in plan["clusters"] for p in c["pods"])
        assert len(dnat) == 2 + has_pods and all(r.startswith("ip saddr ") for r in dnat[2:]), dnat
        vip = services["k3s/microservices/tkb-service"]["clusterIP"]
        address = next(n["address"] for n in plan["nodes"] if n["name"] == node)
        assert dnat[0].startswith(f"ip daddr {vip} tcp dport 30080 dnat"), dnat
        assert (
            dnat[1].startswith("ip daddr {")
            and f"{address}" in dnat[1].split("}")[0].replace(",", " ").split()
            # the node port's rules are counted (`crossmesh trace` reads them) and named by a comment
            and re.search(r"tcp dport 30080 counter packets \d+ bytes \d+ dnat", dnat[1])
            and 'comment "nodeport k3s/microservices/tkb-service 30080/TCP"' in dnat[1]
        ), dnat
        assert all(". 3000" in rule for rule in dnat), dnat  # to the tkb pods' container port

    def resolve() -> set[str]:
        out = crossmesh(
            "lab",
            "exec",
            *mesh,
            "k3s/demo/demo-app-0",
            "--",
            "getent",
            "ahostsv4",
            "tkb-headless.microservices.svc.cluster.local",
            check=True,
        )
        return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}

    pods = {p["ref"]: p["address"] for c in plan["clusters"] for p in c["pods"]}
    tkb = {pods["k3s/microservices/tkb-0"], pods["k3s/microservices/tkb-1"]}
    assert resolve() == tkb
    # A dead pod leaves the headless name's answers; the node port keeps answering from the other one.
    crossmesh("lab", "kill", *mesh, "k3s/microservices/tkb-0", check=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and resolve() != {pods["k3s/microservices/tkb-1"]}:
            time.sleep(0.2)
        assert resolve() == {pods["k3s/microservices/tkb-1"]}
        code, report = lab.test("--test", "^nodeport/from-site")
        assert code == 0, _failed(report)
        assert all("answered by k3s/microservices/tkb-1" in c["detail"] for c in report["checks"])  # type: ignore[union-attr, attr-defined]
    finally:
        crossmesh("lab", "revive", *mesh, "k3s/microservices/tkb-0", check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and resolve() != tkb:
        time.sleep(0.2)
    assert resolve() == tkb
