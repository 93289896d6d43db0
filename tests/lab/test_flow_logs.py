"""The log rules of a real lab's nodes, read with the NFLOG reader in each node's namespace: an allowed
connection across clouds is recorded on the sending node and on the receiving node, a connection
denied by policy is recorded as a drop, with its direction, on the node that denied it, and a
connection to a Service names the ClusterIP it was sent to and the backend it reached.

tests/meshes/cilium-l7 (examples/three-clouds without Istio: the connections are told apart by the
client's source port, which a mesh proxy would replace with its own): default deny everywhere;
x-wing (cluster1, aws-talos-1) may send anything to cluster2's rebel-base, which admits it on TCP 80
only; x-wing may reach relay on 8080 only."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from labkit import Lab, connect, copy_example

from crossmesh.drivers import nflog
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns
from crossmesh.drivers.lab.processes import stop_group
from crossmesh.observe import codes
from crossmesh.workspace import compile_mesh

CLIENT, SERVER, RELAY = "cluster1/default/x-wing-0", "cluster2/default/rebel-base-0", "cluster1/default/relay-0"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    mesh, name = copy_example(tmp_path_factory.mktemp("flowlogs"), "tests/meshes/cilium-l7")
    lab = Lab(mesh, name)
    try:
        lab.up()
        # The kernel's log messages are read here, below the flow daemon: it binds the NFLOG group
        # in every node's namespace (one reader per group and namespace), so it is stopped first.
        st = labs.LabState.load(lab.tag)
        assert st is not None
        stop_group(st.flows_pid)
        yield lab
    finally:
        lab.down()
        assert labs.leftovers(lab.tag) == [], f"lab cm-{lab.tag} left things behind"


@contextlib.contextmanager
def readers(st: labs.LabState) -> Iterator[Callable[[], dict[str, list[nflog.LogPacket]]]]:
    """An NFLOG socket in every node's namespace; the callable collects what they logged."""
    socks = {node: netns.run_in(ns, lambda: nflog.NflogSocket(codes.GROUP)) for node, ns in st.nodes.items()}
    got: dict[str, list[nflog.LogPacket]] = {node: [] for node in socks}

    def collect() -> dict[str, list[nflog.LogPacket]]:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            select.select(list(socks.values()), [], [], 0.1)
            for node, s in socks.items():
                packets, lost = s.read()
                assert lost == 0
                got[node] += packets
        return got

    try:
        yield collect
    finally:
        for s in socks.values():
            s.close()


def datagram(st: labs.LabState, pod: str, address: str, port: int, sport: int) -> None:
    def go() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("", sport))
            s.sendto(b"crossmesh-flow", (address, port))

    netns.run_in(st.pods[pod].namespace, go)


def records(got: dict[str, list[nflog.LogPacket]], sport: int) -> set[tuple[str, str, str, int]]:
    """(node, prefix, destination, destination port) of what the nodes logged from source port `sport`."""
    return {(node, p.prefix, p.dst, p.dport) for node, packets in got.items() for p in packets if p.sport == sport}


def test_flows_are_logged_on_each_node_with_their_verdict_and_service(lab: Lab) -> None:
    st = labs.LabState.load(lab.tag)
    assert st is not None
    pods = {p.ref: p for p in compile_mesh(lab.mesh).plan.pods()}
    client, server, relay = (str(st.pods[r].address) for r in (CLIENT, SERVER, RELAY))
    a, b = pods[CLIENT].node, pods[SERVER].node
    vip = next(s.cluster_ip for s in compile_mesh(lab.mesh).plan.cluster("cluster1").services if s.name == "rebel-base")
    assert vip is not None
    with readers(st) as collect:
        connect(st, CLIENT, server, 80, sport=41001)  # allowed both ways
        datagram(st, CLIENT, server, 5353, sport=41002)  # x-wing may send it, rebel-base does not admit it
        connect(st, CLIENT, relay, 9999, sport=41003)  # x-wing may reach relay on 8080 only
        connect(st, CLIENT, str(vip), 80, sport=41004)  # through the Service: a rebel-base of cluster2 or cluster3
        got = collect()

    assert records(got, 41001) == {(a, codes.NEW_EGRESS, server, 80), (b, codes.NEW_INGRESS, server, 80)}
    assert records(got, 41002) == {(a, codes.NEW_EGRESS, server, 5353), (b, codes.DEFAULT_INGRESS, server, 5353)}
    assert {(n, p) for n, p, _, _ in records(got, 41003)} == {(a, codes.DEFAULT_EGRESS)}  # SYN and retries
    # The Service is global: its backends are rebel-base pods of cluster2 (x-wing may reach them)
    # and of cluster3 (it may not), picked at random per connection. Either way the record names
    # the ClusterIP it was sent to, and its verdict is the policy's for the backend it reached.
    (egress,) = {p for p in got[a] if p.sport == 41004}
    assert egress.src == client and (egress.orig_dst, egress.orig_dport) == (str(vip), 80)
    allowed = {str(p.address) for r, p in pods.items() if r.startswith("cluster2/default/rebel-base-")}
    others = {str(p.address) for r, p in pods.items() if r.startswith("cluster3/default/rebel-base-")}
    assert egress.dport == 80 and egress.dst in allowed | others
    assert egress.prefix == (codes.NEW_EGRESS if egress.dst in allowed else codes.DEFAULT_EGRESS)
    assert all(not p.prefix.startswith(codes.NAT) for packets in got.values() for p in packets)
