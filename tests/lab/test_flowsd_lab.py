"""The lab's flow daemon on a real lab: `lab up` starts it, its relay answers with every node, an
allowed connection is a FORWARDED record on both ends' nodes and a denied one a DROPPED record that
names the policies `policy trace` names; each node's Hubble metrics count them; `crossmesh observe`
reads them through the relay.

tests/meshes/cilium-l7 (three-clouds without Istio: flows told apart by source port): default deny
everywhere; x-wing (cluster1) may send anything to cluster2's rebel-base, which admits it on TCP 80;
x-wing may not reach relay on 9999."""

from __future__ import annotations

import json
import time
import urllib.request

from labkit import connect, crossmesh

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns, relay_client
from crossmesh.observe.flows import Flow, Verdict
from crossmesh.observe.wire import Status
from crossmesh.workspace import compile_mesh

CLIENT, SERVER, RELAY = "cluster1/default/x-wing-0", "cluster2/default/rebel-base-0", "cluster1/default/relay-0"


def relay(st: labs.LabState, since: float) -> tuple[list[Flow], Status]:
    """What the relay holds since `since`: its records and its status line."""
    snap = relay_client.snapshot(relay_client.socket_path(st.dir), since=since)
    assert snap.status is not None and snap.malformed == 0, snap.first_problem
    return snap.flows, snap.status


def test_the_flow_daemon_records_allowed_and_denied_flows_with_their_policy(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab("tests/meshes/cilium-l7")
    lab.up()
    st = labs.LabState.load(lab.tag)
    assert st is not None and labs.alive(st.flows_pid)
    assert (st.dir / "flows.sock").stat().st_mode & 0o777 == 0o600
    server, other = str(st.pods[SERVER].address), str(st.pods[RELAY].address)
    a, b = st.pods[CLIENT].node, st.pods[SERVER].node

    start = time.time() - 1
    connect(st, CLIENT, server, 80, sport=42001)  # allowed both ways
    connect(st, CLIENT, other, 9999, sport=42003)  # x-wing's egress does not allow it
    deadline = time.monotonic() + 10
    while True:
        flows, status = relay(st, start)
        allowed = {(f.node, f.direction) for f in flows if f.source_port == 42001 and f.verdict is Verdict.FORWARDED}
        denied = [f for f in flows if f.source_port == 42003 and f.verdict is Verdict.DROPPED]
        if (len(allowed) == 2 and denied) or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    # Every node answers, and every site router (its firewall's drops), none with an error.
    assert sorted(status.nodes) == sorted([*st.nodes, *(f"router/{site}" for site in st.sites)])
    assert all(n.error == "" and n.lost == 0 for n in status.nodes.values()), status
    # The allowed connection: on the sending node (egress) and the receiving node (ingress), through the tunnel.
    assert allowed == {(a, "egress"), (b, "ingress")}, [f.summary for f in flows]
    sent = next(f for f in flows if f.source_port == 42001 and f.node == a)
    assert sent.source.ref == CLIENT and sent.destination.ref == SERVER
    assert sent.tunnel is not None and sent.tunnel.peer == b
    assert sent.policy == "CiliumNetworkPolicy cluster1/default/allow-cross-cluster"
    # The denied one: dropped on the client's node at its egress, named as `policy trace` names it.
    assert denied, [f.summary for f in flows]
    drop = denied[0]
    assert (drop.node, drop.direction, drop.drop_reason.value) == (a, "egress", "POLICY_DENIED")
    trace = crossmesh(
        "policy", "trace", str(lab.mesh), "--from", CLIENT, "--to", RELAY, "--port", "9999/TCP", "-o", "json"
    )
    assert trace.returncode == 1, trace.stderr  # denied
    egress = json.loads(trace.stdout)["egress"]
    assert egress["reason"] == "default-deny"
    isolating = [p["policy"] for p in egress["policies"] if p["default_deny"]]
    assert drop.policy == ", ".join(isolating) and drop.rule == ""
    assert drop.summary.startswith(f"{CLIENT}:42003 -> {RELAY}:9999 TCP DROPPED (POLICY_DENIED by ")

    # The node's Hubble metrics, scraped on its site address inside its namespace.
    address = str(compile_mesh(lab.mesh).plan.node(a).address)
    text = netns.run_in(
        st.nodes[a], lambda: urllib.request.urlopen(f"http://{address}:9965/metrics", timeout=5).read().decode()
    )
    assert 'hubble_drop_total{protocol="TCP",reason="POLICY_DENIED"}' in text
    assert 'hubble_flows_processed_total{protocol="TCP",subtype="to-overlay",type="Trace",verdict="FORWARDED"}' in text
    assert "crossmesh_flows_lost_total 0.0" in text

    # `crossmesh observe` reads the same records through the relay.
    out = crossmesh(
        "observe", "--mesh", str(lab.mesh), "--verdict", "DROPPED", "--port", "9999", "-o", "json", check=True
    )
    observed = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert any(o.get("source_port") == 42003 and o.get("policy") == drop.policy for o in observed), out.stdout

    status_json = json.loads(crossmesh("lab", "status", "--mesh", str(lab.mesh), "-o", "json", check=True).stdout)
    assert status_json["flows"]["running"] is True
