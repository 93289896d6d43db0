"""Flows the nodes' log rules cannot see, on a real lab: each HTTP request through a node's L7 proxy
is a record with its method, path and status and the rule that decided it; what a site router's
firewall drops is a record on `router/<site>`.

tests/meshes/cilium-l7 (examples/three-clouds before Istio): hq (cluster2) admits x-wing
(cluster1) on TCP 80 for `GET /public` only (hq-read-only, an HTTP rule), so the proxy on hq's
node forwards a GET and answers a POST 403.
Each site router admits from the internet only answers and what the mesh needs (WireGuard)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from labkit import Lab, crossmesh

from crossmesh.checks import probes
from crossmesh.checks.results import Result
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns
from crossmesh.drivers.lab.desired import topology_of
from crossmesh.observe.flows import Flow, Http, Verdict

CLIENT, HQ = "cluster1/default/x-wing-0", "cluster2/default/hq-0"
HQ_POLICY = "CiliumNetworkPolicy cluster2/default/hq-read-only"
CLOSED_PORT = 4321  # no prerequisite opens it


def relay(st: labs.LabState, since: float) -> tuple[list[Flow], dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(st.dir / "flows.sock"))
        s.sendall(json.dumps({"since": since, "follow": False}).encode() + b"\n")
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    lines = [json.loads(line) for line in data.splitlines()]
    return [Flow.from_json(x["flow"]) for x in lines if "flow" in x], lines[-1]


def wait_for(st: labs.LabState, since: float, found: Callable[[list[Flow]], bool]) -> tuple[list[Flow], dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        flows, status = relay(st, since)
        if found(flows) or time.monotonic() > deadline:
            return flows, status
        time.sleep(0.2)


def test_http_requests_and_the_site_routers_drops_are_recorded(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("tests/meshes/cilium-l7")
    lab.up()
    st = labs.LabState.load(lab.tag)
    assert st is not None
    plan = topology_of(st)[0].plan
    hq, client_ns = str(st.pods[HQ].address), st.pods[CLIENT].namespace
    hq_node = st.pods[HQ].node
    start = time.time() - 1

    # --- L7: an allowed GET and a refused POST through the proxy on hq's node --------------------
    assert probes.http(client_ns, hq, 80, path="/public")[0] is Result.OK
    assert probes.http(client_ns, hq, 80, path="/public", method="POST", body=b"{}")[0] is Result.FORBIDDEN

    def http_records(flows: list[Flow]) -> list[Flow]:
        return [f for f in flows if f.http is not None and f.source.ref == CLIENT]

    flows, status = wait_for(st, start, lambda fs: len(http_records(fs)) >= 2)
    got = {f.http.method: f for f in http_records(flows) if f.http is not None}
    assert set(got) == {"GET", "POST"}, [f.summary for f in flows]
    get, post = got["GET"], got["POST"]
    for f in (get, post):
        assert (f.node, f.destination.ref, f.destination_port, f.direction) == (hq_node, HQ, 80, "ingress")
        assert (f.policy, f.rule) == (HQ_POLICY, "spec.ingress[0]")
    assert (get.http, get.verdict) == (Http("GET", "/public", 200), Verdict.FORWARDED)
    assert (post.http, post.verdict, post.drop_reason.value) == (
        Http("POST", "/public", 403),
        Verdict.DROPPED,
        "POLICY_DENIED",
    )
    # The same rule `policy trace` names for the request.
    trace = crossmesh("policy", "trace", str(lab.mesh), "--from", CLIENT, "--to", HQ, "--port", "80/TCP", "-o", "json")
    assert "hq-read-only" in trace.stdout and "spec.ingress[0]" in trace.stdout, trace.stdout

    # `observe` shows them as TCP/HTTP.
    table = crossmesh("observe", "--mesh", str(lab.mesh), "--to", HQ, "--since", "5m", check=True).stdout
    assert "TCP/HTTP" in table and "POST /public → 403" in table, table

    # --- a site router's firewall: unsolicited from the internet to a node's public address ------
    node = plan.node(hq_node)
    assert node.public_address is not None
    public, site = str(node.public_address), node.site

    def knock() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("", 40777))
            s.sendto(b"knock", (public, CLOSED_PORT))

    netns.run_in(st.inet, knock)
    router = f"router/{site}"

    def knocked(flows: list[Flow]) -> list[Flow]:
        return [f for f in flows if f.node == router and f.destination_port == CLOSED_PORT]

    flows, status = wait_for(st, start, lambda fs: bool(knocked(fs)))
    assert router in status["nodes"] and status["nodes"][router]["error"] == "", status
    assert sorted(status["nodes"]) == sorted([*st.nodes, *(f"router/{s}" for s in st.sites)])
    (drop,) = knocked(flows)
    assert (drop.verdict, drop.drop_reason.value, drop.protocol) == (Verdict.DROPPED, "FIREWALL_DENIED", "UDP")
    assert drop.source.kind == "world" and drop.source_port == 40777
    assert (drop.destination.kind, drop.destination.name) == ("node", hq_node), drop.summary

    # `observe --node router/<site>` reads it; a router that does not exist is an error naming the routers.
    out = crossmesh("observe", "--mesh", str(lab.mesh), "--node", router, "-o", "json", check=True).stdout
    assert any(json.loads(line).get("destination_port") == CLOSED_PORT for line in out.splitlines()), out
    wrong = crossmesh("observe", "--mesh", str(lab.mesh), "--node", "router/nowhere")
    assert wrong.returncode == 2 and "router/" in wrong.stderr, wrong.stderr
