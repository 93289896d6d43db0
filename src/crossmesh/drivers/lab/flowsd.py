"""The lab's flow daemon: every node's flow records, from the kernel, behind one relay.

The nodes' tables log each new connection they let through and each packet their policy (or
anti-spoofing, or a Service without backends) drops to NFLOG group `codes.GROUP`, with a prefix
naming why (observe/codes.py), and each ICMP error the node sends for a packet its forwarding
refused (too big for the path: FRAG_NEEDED; no route or no neighbour: NO_ROUTE), recorded as
the refused packet's flow. One thread per node namespace, entered once with setns, reads
that group (drivers/nflog.py), turns each packet into a flow record (observe/enrich.py: names,
Service, tunnel, deciding policy) and hands it to the relay (flowrelay.py), which keeps a
bounded ring per node and serves them all on `<lab dir>/flows.sock` (protocol: observe/wire.py).

Two kinds of flow the nodes' log rules cannot see have readers of their own:

- each site router's firewall (the cloud's, in front of the site's nodes) logs its drops to the
  same group in the router's namespace: one more reader thread per router, its records kept
  under the node name `router/<site>` (unsolicited from the internet: FIREWALL_DENIED; a private
  destination towards the internet: NO_ROUTE);
- each node's L7 proxy (the service daemon) reports every HTTP request it handled as a datagram
  on `<lab dir>/l7.sock` (drivers/lab/l7log.py, observe/l7.py): method, path, status, verdict and
  deciding rule, recorded in the ring of the proxy's node. Datagrams are untrusted: one that does
  not decode, or names no node of the lab, is counted (`http_malformed`) and dropped.

The same thread serves the node's Hubble-style metrics on its site address, port 9965, from a
socket it creates inside the namespace, one registry per node (names: observe/metrics.py); a
router's are on its address in the site network (the nodes' gateway):

    hubble_flows_processed_total{protocol, type="Trace" | "Drop" | "L7", subtype, verdict}
    hubble_drop_total{reason, protocol}
    hubble_policy_verdicts_total{direction, match, action}
    crossmesh_policy_verdicts_total{direction, action, policy}
    crossmesh_flows_lost_total, crossmesh_flows_evicted_total

Labels as Hubble's handlers give them: `type` Trace for a forwarded flow, Drop for a drop, L7 for
an HTTP record (`subtype` HTTP); a Trace's `subtype` is its observation point: to-endpoint
(allowed into a local pod), to-overlay (out through a tunnel), to-stack (otherwise). `policy` (the
lab's own metric) is the deciding policy as `policy trace` names it ("" when none decided): its
values are the mesh's own policies, a set the mesh file bounds.

A node whose NFLOG socket cannot be opened gets the error in its status (the relay shows it);
the other nodes go on, and the daemon tries that node again every few seconds.

    python -m crossmesh.drivers.lab.flowsd LAB_DIR [--capacity N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from crossmesh.drivers import exposition
from crossmesh.drivers.lab import flowrelay, l7log, netns
from crossmesh.drivers.lab.desired import policy_index, topology_of
from crossmesh.drivers.lab.state import LabState, daemon_state
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.observe import codes, l7
from crossmesh.observe import metrics as catalogue
from crossmesh.observe.enrich import VXLAN, WIREGUARD, Directory, Enriched, Observed, Packet, enrich
from crossmesh.observe.flows import ROUTER_PREFIX, Flow, Verdict, router_node
from crossmesh.observe.ring import DEFAULT_CAPACITY

REOPEN_EVERY = 5.0  # seconds between attempts to open a node's NFLOG socket again
POLL_MS = 500
REPORT_MALFORMED = 100  # a malformed HTTP datagram is logged once in this many


class LoggedPacket(Packet, Protocol):
    """What a reader hands over: a packet with its rule's prefix and its devices' ifindexes."""

    @property
    def prefix(self) -> str: ...
    @property
    def indev(self) -> int: ...
    @property
    def outdev(self) -> int: ...


class Reader(Protocol):
    """An NFLOG group's packets in the calling thread's namespace (drivers/nflog.NflogSocket)."""

    def fileno(self) -> int: ...
    def read(self) -> tuple[Sequence[LoggedPacket], int]: ...
    def close(self) -> None: ...


def nflog_reader(group: int) -> Reader:
    from crossmesh.drivers.nflog import NflogSocket  # the kernel's side, only where it runs

    return NflogSocket(group)


def devices(topo: LabTopology) -> dict[str, dict[str, str]]:
    """Per node, its WireGuard and VXLAN devices by name."""
    kinds = {"tun": WIREGUARD, "vxlan": VXLAN}
    return {
        ns.owner: {link.ifname: kinds[link.kind] for link in ns.links if link.kind in kinds}
        for ns in topo.namespaces
        if ns.role == "node"
    }


class NodeMetrics:
    """One node's Hubble-style metrics, in a registry of its own (names: observe/metrics.py)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.flows = exposition.counter(catalogue.HUBBLE_FLOWS, self.registry)
        self.drops = exposition.counter(catalogue.HUBBLE_DROPS, self.registry)
        self.verdicts = exposition.counter(catalogue.HUBBLE_POLICY_VERDICTS, self.registry)
        self.by_policy = exposition.counter(catalogue.POLICY_VERDICTS_BY_POLICY, self.registry)
        self.lost = exposition.counter(catalogue.FLOWS_LOST, self.registry)
        self.evicted = exposition.counter(catalogue.FLOWS_EVICTED, self.registry)
        self.server: exposition.MetricsServer | None = None
        # Each labelled series once looked up: `labels()` validates and locks on every call, a
        # sixth of a record's cost. The label values are bounded (see the module's docstring).
        self.series: dict[tuple[object, ...], Any] = {}

    def _inc(self, metric: Any, *labels: str) -> None:
        key = (id(metric), *labels)  # the three metrics live as long as this object
        child = self.series.get(key)
        if child is None:
            child = self.series[key] = metric.labels(*labels)
        child.inc()

    def count(self, record: Enriched) -> None:
        flow = record.flow
        kind = "Trace"
        if flow.verdict is Verdict.DROPPED:
            kind, subtype = "Drop", ""
            self._inc(self.drops, flow.drop_reason.value or "UNKNOWN", flow.protocol)
        elif flow.direction == "ingress":
            subtype = "to-endpoint"
        else:
            subtype = "to-overlay" if flow.tunnel is not None else "to-stack"
        if flow.http is not None:
            kind, subtype = "L7", "HTTP"
        self._inc(self.flows, flow.protocol, kind, subtype, flow.verdict.value)
        if flow.direction:
            action = flow.verdict.value.lower()
            self._inc(self.verdicts, flow.direction, record.match, action)
            self._inc(self.by_policy, flow.direction, action, flow.policy)


class Daemon:
    def __init__(
        self,
        state: LabState,
        *,
        capacity: int = DEFAULT_CAPACITY,
        open_reader: Callable[[int], Reader] = nflog_reader,
        metrics_port: int = catalogue.HUBBLE_PORT,
    ) -> None:
        self.state = state
        compiled, self.topo = topology_of(state)
        self.plan = compiled.plan
        self.directory = Directory.build(self.plan, policy_index(compiled), devices(self.topo))
        # What each reader thread watches, by the name its records carry: the nodes, then the routers.
        self.namespaces = {n.name: self.topo.node_ns[n.name] for n in self.plan.nodes}
        self.addresses = {n.name: str(n.address) for n in self.plan.nodes}  # where each serves /metrics
        for site in self.plan.sites:
            if site.name in self.topo.site_ns:
                self.namespaces[router_node(site.name)] = self.topo.site_ns[site.name]
                self.addresses[router_node(site.name)] = str(site.network.network_address + 1)
        self.relay = flowrelay.Relay(self.namespaces, capacity, on_evicted=self._evicted)
        self.capacity = capacity
        self.open_reader = open_reader
        self.metrics_port = metrics_port
        self.metrics = {name: NodeMetrics() for name in self.namespaces}
        self.malformed = dict.fromkeys(self.metrics, 0)  # packets enrich refused (not IPv4, …)
        self.http_malformed = 0  # datagrams on l7.sock that were not an HTTP event of a node
        self.stop = threading.Event()
        self.started = threading.Barrier(len(self.namespaces) + 1)

    def _evicted(self, node: str, count: int) -> None:
        self.metrics[node].evicted.inc(count)

    # --- one node ---------------------------------------------------------------------------------

    def run_node(self, node: str, namespace: str) -> None:
        try:
            netns.enter(namespace)
        except OSError as err:
            self.relay.fail(node, f"cannot enter namespace {namespace}: {err.strerror}")
            self._started()
            return
        self.serve_metrics(node)
        reader = self._open(node, namespace)
        self._started()
        while not self.stop.is_set():
            if reader is None:
                self.stop.wait(REOPEN_EVERY)
                reader = self._open(node, namespace)
                continue
            try:
                self.pump(node, reader)
            except OSError as err:
                self.relay.fail(node, f"reading NFLOG group {codes.GROUP} in {namespace}: {err}")
                print(f"{node}: {err}", flush=True)
            reader.close()
            reader = None

    def _started(self) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):  # a node that hung: the others go on
            self.started.wait(timeout=30)

    def _open(self, node: str, namespace: str) -> Reader | None:
        try:
            reader = self.open_reader(codes.GROUP)
        except OSError as err:
            self.relay.fail(node, f"cannot open NFLOG group {codes.GROUP} in {namespace}: {err}")
            return None
        self.relay.fail(node, "")
        return reader

    def serve_metrics(self, node: str) -> None:
        """/metrics on the node's site address, from a socket made here, in the node's namespace."""
        address = self.addresses[node]
        metrics = self.metrics[node]
        try:
            metrics.server = exposition.MetricsServer(metrics.registry, exposition.listen(address, self.metrics_port))
        except OSError as err:
            print(f"{node}: metrics on {address}:{self.metrics_port}: {err}", flush=True)

    def pump(self, node: str, reader: Reader) -> None:
        """Read, enrich and hand over until stopped (OSError: the socket failed)."""
        poller = select.poll()
        poller.register(reader.fileno(), select.POLLIN)
        names = interface_names()
        metrics = self.metrics[node]
        while not self.stop.is_set():
            if not poller.poll(POLL_MS):
                continue
            packets, lost = reader.read()
            flows: list[Flow] = []
            for p in packets:
                if (p.indev and p.indev not in names) or (p.outdev and p.outdev not in names):
                    names = interface_names()  # a pod was added since
                record = self.record(node, p, names)
                if record is None:
                    continue
                metrics.count(record)
                flows.append(record.flow)
            if lost:
                metrics.lost.inc(lost)
            if flows or lost:
                self.relay.submit(node, flows, lost)

    def record(self, node: str, p: LoggedPacket, names: dict[int, str]) -> Enriched | None:
        decoded = codes.decode_prefix(p.prefix)
        if decoded is None:
            return None
        verdict, reason, direction = decoded
        try:
            return enrich(
                p,
                Observed(verdict, reason, direction, quoted=p.prefix in codes.ICMP_ERRORS),
                node=node,
                indev=names.get(p.indev, ""),
                outdev=names.get(p.outdev, ""),
                directory=self.directory,
            )
        except ValueError:
            self.malformed[node] += 1
            return None

    # --- the L7 proxies' records ------------------------------------------------------------------

    def take_http(self, data: bytes) -> Flow | None:
        """In the loop: one datagram from an L7 proxy into its node's ring (None: malformed, counted)."""
        try:
            event = l7.decode(data)
            if event.node not in self.namespaces or event.node.startswith(ROUTER_PREFIX):
                raise ValueError(f"node: {event.node[:40]!r} is not a node of the lab")
            record = l7.to_flow(event, self.directory)
        except ValueError as err:
            self.http_malformed += 1
            if self.http_malformed % REPORT_MALFORMED == 1:
                print(f"l7.sock: a malformed datagram ({self.http_malformed} so far): {err}", flush=True)
            return None
        self.metrics[event.node].count(record)
        self.relay.add(event.node, [record.flow])
        return record.flow

    async def serve_http(self, path: Path) -> asyncio.DatagramTransport:
        """Receive the L7 proxies' datagrams on `path` (mode 0600; a stale socket there is replaced)."""
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        daemon = self

        class Intake(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                daemon.take_http(data)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Intake, sock=sock)
        return transport

    # --- the daemon -------------------------------------------------------------------------------

    async def main(self, ready: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stopped.set)
        loop.add_signal_handler(signal.SIGINT, stopped.set)
        path = self.state.dir / "flows.sock"
        tmp = path.with_name("flows.sock.new")
        # The socket's name appears only once every node has opened its reader (or failed to):
        # `lab up` waits for the file, and a first reader then sees every node's status.
        server = await self.relay.serve(tmp)
        http_path = l7log.socket_path(self.state.dir)
        http = await self.serve_http(http_path)
        for name, namespace in self.namespaces.items():
            threading.Thread(target=self.run_node, args=(name, namespace), name=f"flows-{name}", daemon=True).start()
        await loop.run_in_executor(None, self._started)
        tmp.replace(path)
        print("ready", flush=True)
        if ready is not None:
            ready()
        try:
            await stopped.wait()
        finally:
            self.stop.set()
            server.close()
            http.close()
            path.unlink(missing_ok=True)
            http_path.unlink(missing_ok=True)


def interface_names() -> dict[int, str]:
    """ifindex → name in the calling thread's network namespace."""
    return dict(socket.if_nameindex())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m crossmesh.drivers.lab.flowsd")
    parser.add_argument("lab_dir", metavar="LAB_DIR", help="the lab's folder, /run/crossmesh/cm-<tag>")
    parser.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY, help="flow records kept per node")
    args = parser.parse_args(argv)
    if args.capacity < 1:
        print(f"--capacity {args.capacity}: keep at least one record per node", file=sys.stderr)
        return 2
    state = daemon_state(args.lab_dir)
    if isinstance(state, str):
        print(state, file=sys.stderr)
        return 2
    started = time.monotonic()
    daemon = Daemon(state, capacity=args.capacity)
    routers = len(daemon.namespaces) - len(daemon.plan.nodes)
    print(
        f"{len(daemon.plan.nodes)} nodes, {routers} routers, ring of {args.capacity} per node, "
        f"{time.monotonic() - started:.1f} s to load"
    )
    asyncio.run(daemon.main())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
