"""`lab up --no-flow-logs` on a real lab: no table of any node logs a packet, no flow daemon runs (no
flows.sock), `crossmesh observe` says so and how to turn them on, and the service daemon's own table
rewrites (a backend dies) keep them off; `lab up --flow-logs` brings the log rules and the relay
back, and a connection is recorded again.

tests/meshes/cilium-l7 (three-clouds without Istio: flows told apart by source port): x-wing
(cluster1) may reach cluster2's rebel-base on TCP 80; rebel-base-0 is the backend of cluster2's
rebel-base Service."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time

from labkit import crossmesh

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns
from crossmesh.drivers.lab.relay_client import snapshot

CLIENT, SERVER = "cluster1/default/x-wing-0", "cluster2/default/rebel-base-0"


def ruleset(namespace: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "list", "ruleset"], capture_output=True, text=True, check=True
    ).stdout


def connect(st: labs.LabState, sport: int) -> None:
    def go() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("", sport))
            s.settimeout(1.0)
            with contextlib.suppress(OSError):
                s.connect((str(st.pods[SERVER].address), 80))

    netns.run_in(st.pods[CLIENT].namespace, go)


def test_flow_logs_off_and_on_again(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab("tests/meshes/cilium-l7")
    lab.up("--no-flow-logs")
    st = labs.LabState.load(lab.tag)
    assert st is not None and not st.flow_logs
    assert not (st.dir / "flows.sock").exists() and not labs.alive(st.flows_pid)
    server_ns = st.nodes[st.pods[SERVER].node]
    for node, ns in st.nodes.items():
        text = ruleset(ns)
        assert "table ip crossmesh" in text and " log " not in text, f"{node} still logs"
    for ns in st.sites.values():
        assert " log " not in ruleset(ns)

    status = json.loads(crossmesh("lab", "status", "--mesh", str(lab.mesh), "-o", "json", check=True).stdout)
    assert status["flows"]["logs"] is False
    observed = crossmesh("observe", "--mesh", str(lab.mesh))
    assert observed.returncode == 2
    assert "flow logs are off for this lab" in observed.stderr
    assert f"crossmesh lab up {lab.mesh} --flow-logs" in observed.stderr.replace("\n", "")

    # The service daemon rewrites the node tables when a backend dies: still without logs.
    before = ruleset(server_ns)
    crossmesh("lab", "kill", SERVER, "--mesh", str(lab.mesh), check=True)
    deadline = time.monotonic() + 20
    while (after := ruleset(server_ns)) == before and time.monotonic() < deadline:
        time.sleep(0.3)
    assert after != before, "the service daemon did not rewrite the node's table"
    assert " log " not in after
    crossmesh("lab", "revive", SERVER, "--mesh", str(lab.mesh), check=True)

    # A later plain `lab up` keeps the switch.
    lab.up()
    st = labs.LabState.load(lab.tag)
    assert st is not None and not st.flow_logs and not (st.dir / "flows.sock").exists()

    lab.up("--flow-logs")
    st = labs.LabState.load(lab.tag)
    assert st is not None and st.flow_logs and labs.alive(st.flows_pid)
    assert all("log prefix" in ruleset(ns) for ns in st.nodes.values())
    start = time.time() - 1
    connect(st, sport=42011)
    deadline = time.monotonic() + 10
    while True:
        snap = snapshot(st.dir / "flows.sock", since=start)
        seen = {f.node for f in snap.flows if f.source_port == 42011}
        if len(seen) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    routers = [f"router/{site}" for site in st.sites]
    assert snap.status is not None and sorted(snap.status.nodes) == sorted([*st.nodes, *routers])
    assert seen == {st.pods[CLIENT].node, st.pods[SERVER].node}
