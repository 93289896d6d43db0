"""The flow daemon's node reader with a fake NFLOG socket: records to the relay, metrics, losses."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crossmesh.drivers.lab import l7log
from crossmesh.drivers.lab.flowsd import Daemon, LoggedPacket, devices
from crossmesh.drivers.lab.state import LabState
from crossmesh.observe import codes, l7
from crossmesh.observe.flows import DropReason, Http, Verdict
from crossmesh.workspace import compile_mesh

# examples/three-clouds before Istio: hq keeps its Cilium HTTP rule (tests/meshes/cilium-l7/mesh.yaml)
CILIUM_L7 = Path(__file__).resolve().parents[2] / "tests" / "meshes" / "cilium-l7"


@dataclass(frozen=True)
class Packet:
    prefix: str
    src: str
    dst: str
    sport: int = 40000
    dport: int = 80
    protocol: int = 6
    time: float = 1000.0
    indev: int = 0
    outdev: int = 0
    orig_src: str = ""
    orig_sport: int = 0
    orig_dst: str = ""
    orig_dport: int = 0


class FakeReader:
    """An NFLOG socket's interface over a pipe: `push` makes packets readable."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.pending: list[tuple[list[LoggedPacket], int]] = []
        self.lock = threading.Lock()

    def push(self, packets: list[Packet], lost: int = 0) -> None:
        with self.lock:
            self.pending.append((list(packets), lost))
        os.write(self.w, b"x")

    def fileno(self) -> int:
        return self.r

    def read(self) -> tuple[list[LoggedPacket], int]:
        with contextlib.suppress(BlockingIOError):
            os.read(self.r, 65536)
        with self.lock:
            batches, self.pending = self.pending, []
        return [p for b, _ in batches for p in b], sum(n for _, n in batches)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@pytest.fixture(scope="module")
def lab_state(tmp_path_factory: pytest.TempPathFactory) -> LabState:
    tmp = tmp_path_factory.mktemp("lab")
    shutil.copytree(CILIUM_L7, tmp / "m", ignore=shutil.ignore_patterns("state", ".crossmesh"))
    compile_mesh(tmp / "m" / "mesh.yaml", tmp / "state")  # the keys a lab would have
    return LabState(
        tag="fake", mesh=str(tmp / "m" / "mesh.yaml"), mesh_name="three-clouds", state_dir=str(tmp / "state")
    )


@pytest.fixture
def daemon(lab_state: LabState) -> Iterator[Daemon]:
    d = Daemon(lab_state, capacity=100)
    loop = asyncio.new_event_loop()
    d.relay.loop = loop
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield d
    d.stop.set()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def pumping(d: Daemon, node: str, reader: FakeReader) -> threading.Thread:
    t = threading.Thread(target=d.pump, args=(node, reader), daemon=True)
    t.start()
    return t


def wait_for(check: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)
    assert check(), "timed out"  # type: ignore[operator]


def test_the_devices_of_each_node_come_from_the_topology(daemon: Daemon) -> None:
    assert devices(daemon.topo)["aws-talos-1"] == {"cm-fake-g0": "wireguard", "cm-fake-x0": "vxlan"}


def test_logged_packets_become_records_metrics_and_losses(daemon: Daemon) -> None:
    reader = FakeReader()
    pumping(daemon, "azure-talos-1", reader)
    reader.push(
        [
            Packet(codes.NEW_INGRESS, "10.10.0.3", "10.11.0.3"),
            Packet(codes.DEFAULT_INGRESS, "10.10.0.3", "10.11.0.3", dport=5353, protocol=17),
            Packet("cm:something-else", "10.10.0.3", "10.11.0.3"),  # not a flow: skipped
            Packet(codes.NEW_INGRESS, "fe80::1", "10.11.0.3"),  # not IPv4: counted, skipped
        ],
        lost=3,
    )
    ring = daemon.relay.rings["azure-talos-1"]
    wait_for(lambda: ring.recorded == 2)
    forwarded, dropped = (r.flow() for r in ring.since(None))
    assert forwarded.verdict is Verdict.FORWARDED and forwarded.direction == "ingress"
    assert forwarded.policy == "CiliumNetworkPolicy cluster2/default/allow-x-wing-from-cluster1"
    assert dropped.verdict is Verdict.DROPPED and "POLICY_DENIED by" in dropped.summary
    assert ring.lost == 3 and daemon.malformed["azure-talos-1"] == 1
    m = daemon.metrics["azure-talos-1"].registry
    assert m.get_sample_value("hubble_drop_total", {"reason": "POLICY_DENIED", "protocol": "UDP"}) == 1
    assert (
        m.get_sample_value(
            "hubble_flows_processed_total",
            {"protocol": "TCP", "type": "Trace", "subtype": "to-endpoint", "verdict": "FORWARDED"},
        )
        == 1
    )
    assert (
        m.get_sample_value(
            "hubble_policy_verdicts_total",
            {"direction": "ingress", "match": "l3-l4", "action": "forwarded"},
        )
        == 1
    )
    assert (
        m.get_sample_value(
            "crossmesh_policy_verdicts_total",
            {
                "direction": "ingress",
                "action": "forwarded",
                "policy": "CiliumNetworkPolicy cluster2/default/allow-x-wing-from-cluster1",
            },
        )
        == 1
    )
    assert m.get_sample_value("crossmesh_flows_lost_total") == 3
    # Other nodes' rings are their own.
    assert daemon.relay.rings["aws-talos-1"].recorded == 0


def test_a_full_ring_counts_evictions_and_a_node_that_cannot_open_says_why(daemon: Daemon) -> None:
    reader = FakeReader()
    pumping(daemon, "aws-talos-1", reader)
    reader.push([Packet(codes.NEW_EGRESS, "10.10.0.3", "10.11.0.3", time=float(i)) for i in range(150)])
    ring = daemon.relay.rings["aws-talos-1"]
    wait_for(lambda: ring.recorded == 150)
    assert ring.evicted == 50 and len(ring) == 100
    assert daemon.metrics["aws-talos-1"].registry.get_sample_value("crossmesh_flows_evicted_total") == 50

    def refuse(group: int) -> FakeReader:
        raise PermissionError(1, "Operation not permitted")

    daemon.open_reader = refuse
    assert daemon._open("gcp-talos-1", "cm-fake-n2") is None
    wait_for(lambda: daemon.relay.rings["gcp-talos-1"].error != "")
    assert daemon.relay.rings["gcp-talos-1"].error == (
        f"cannot open NFLOG group {codes.GROUP} in cm-fake-n2: [Errno 1] Operation not permitted"
    )


def test_each_site_router_has_a_ring_and_its_firewall_drops_name_the_world_and_the_node(daemon: Daemon) -> None:
    assert {"router/aws-sg", "router/azure-we", "router/gcp-ew"} <= set(daemon.relay.rings)
    assert daemon.namespaces["router/aws-sg"] == daemon.topo.site_ns["aws-sg"]
    reader = FakeReader()
    pumping(daemon, "router/aws-sg", reader)
    # After the router's 1:1 NAT: from an internet address to the node behind 203.0.113.10.
    reader.push(
        [
            Packet(codes.FIREWALL, "198.51.100.7", "10.0.1.5", sport=40123, dport=2222),
            Packet(codes.PRIVATE_TO_INTERNET, "10.0.1.5", "10.1.1.5", dport=443),
        ]
    )
    ring = daemon.relay.rings["router/aws-sg"]
    wait_for(lambda: ring.recorded == 2)
    fw, private = (r.flow() for r in ring.since(None))
    assert (fw.verdict, fw.drop_reason.value, fw.node) == (Verdict.DROPPED, "FIREWALL_DENIED", "router/aws-sg")
    assert (fw.source.kind, fw.source.address) == ("world", "198.51.100.7")
    assert (fw.destination.kind, fw.destination.name, fw.destination_port) == ("node", "aws-talos-1", 2222)
    assert fw.summary == "198.51.100.7:40123 -> aws-talos-1:2222 TCP DROPPED (FIREWALL_DENIED)"
    assert (private.drop_reason.value, private.source.name) == ("NO_ROUTE", "aws-talos-1")
    m = daemon.metrics["router/aws-sg"].registry
    assert m.get_sample_value("hubble_drop_total", {"reason": "FIREWALL_DENIED", "protocol": "TCP"}) == 1


def send_http(daemon: Daemon, path: Path, datagrams: list[bytes]) -> None:
    """Serve l7.sock on the daemon's loop and send `datagrams` to it as the proxy does."""
    assert daemon.relay.loop is not None
    asyncio.run_coroutine_threadsafe(daemon.serve_http(path), daemon.relay.loop).result(5)
    assert path.stat().st_mode & 0o777 == 0o600
    sender = l7log.HttpLog(path)
    for data in datagrams:
        sender.sock.sendto(data, str(path))
    sender.close()


def test_the_l7_proxys_datagrams_become_http_records_of_its_node_and_bad_ones_are_counted(
    daemon: Daemon, tmp_path: Path
) -> None:
    allowed = l7.HttpEvent(
        time=2000.0,
        node="azure-talos-1",
        source="10.10.0.3",
        source_port=41000,
        destination="10.11.0.2",
        destination_port=80,
        method="GET",
        path="/public",
        status=200,
        verdict=Verdict.FORWARDED,
        direction="ingress",
        policy="CiliumNetworkPolicy cluster2/default/hq-read-only",
        rule="spec.ingress[0]",
        match="l7/http",
    )
    refused = dataclasses.replace(
        allowed, method="POST", status=403, verdict=Verdict.DROPPED, drop_reason=DropReason.POLICY_DENIED
    )
    bad = [
        b"not json",
        l7.encode(dataclasses.replace(allowed, node="router/aws-sg")),  # a router has no proxy
        l7.encode(dataclasses.replace(allowed, node="nobody")),
        b"{" + b" " * 10000 + b"}",
    ]
    send_http(daemon, tmp_path / "l7.sock", [l7.encode(allowed), *bad, l7.encode(refused)])
    ring = daemon.relay.rings["azure-talos-1"]
    wait_for(lambda: ring.recorded == 2 and daemon.http_malformed == 4)
    got, denied = (r.flow() for r in ring.since(None))
    assert got.http == Http("GET", "/public", 200) and got.destination.ref == "cluster2/default/hq-0"
    assert (denied.http, denied.verdict, denied.rule) == (
        Http("POST", "/public", 403),
        Verdict.DROPPED,
        "spec.ingress[0]",
    )
    m = daemon.metrics["azure-talos-1"].registry
    flows = "hubble_flows_processed_total"
    http = {"protocol": "TCP", "type": "L7", "subtype": "HTTP"}
    assert m.get_sample_value(flows, {**http, "verdict": "FORWARDED"}) == 1
    assert m.get_sample_value(flows, {**http, "verdict": "DROPPED"}) == 1
    verdicts = {"direction": "ingress", "match": "l7/http", "action": "dropped"}
    assert m.get_sample_value("hubble_policy_verdicts_total", verdicts) == 1
    by_policy = {"direction": "ingress", "action": "dropped", "policy": allowed.policy}
    assert m.get_sample_value("crossmesh_policy_verdicts_total", by_policy) == 1
    assert daemon.relay.rings["router/aws-sg"].recorded == 0


def test_a_proxy_whose_flow_daemon_is_not_listening_counts_the_record_and_goes_on(tmp_path: Path) -> None:
    sender = l7log.HttpLog(tmp_path / "l7.sock")
    event = l7.HttpEvent(1.0, "n", "10.0.0.1", 1, "10.0.0.2", 80, "GET", "/", 200, Verdict.FORWARDED)
    assert sender.send(event) is False and sender.unsent == 1
    sender.close()


def test_every_record_is_counted_in_its_series_not_only_the_first(daemon: Daemon) -> None:
    """The daemon looks each labelled series up once; later records still count in it."""
    reader = FakeReader()
    pumping(daemon, "azure-talos-1", reader)
    reader.push([Packet(codes.NEW_INGRESS, "10.10.0.3", "10.11.0.3", sport=40000 + i) for i in range(3)])
    reader.push([Packet(codes.DEFAULT_INGRESS, "10.10.0.3", "10.11.0.3", dport=5353, protocol=17)] * 2)
    wait_for(lambda: daemon.relay.rings["azure-talos-1"].recorded == 5)
    m = daemon.metrics["azure-talos-1"].registry
    flows = {"protocol": "TCP", "type": "Trace", "subtype": "to-endpoint", "verdict": "FORWARDED"}
    assert m.get_sample_value("hubble_flows_processed_total", flows) == 3
    assert m.get_sample_value("hubble_drop_total", {"reason": "POLICY_DENIED", "protocol": "UDP"}) == 2
