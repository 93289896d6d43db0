"""The lab's service daemon: backend health checks, service tables that follow them, and DNS.

One thread per node namespace (entered once with setns) runs an asyncio loop that
probes the backends living on that node, as a kubelet probes its own pods, and
answers DNS for the pods of that node on the node's pod-side address, port 53 (the
names: dns.py; a headless Service's name answers its pods that pass their checks).

When a backend crosses its failure (or success) threshold, the nftables table of
every node (ClusterIPs and NodePorts: servicenat.py) is regenerated from the plan with
the new health and replaced atomically, so new connections move off a dead backend
and back when it recovers.

Each node's thread also serves that node's `/metrics` on its site address, port 9963
(labmetrics.py): the health of the backends it checks and what its network policy dropped.

Each node's L7 proxy reports every HTTP request it handles — method, path, the status the client
got, the verdict and the deciding rule — to the flow daemon (l7log.py), as HTTP flow records.

    python -m crossmesh.drivers.lab.servicesd LAB_DIR
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from dataclasses import replace as dataclasses_replace
from ipaddress import ip_address

from crossmesh.drivers.lab import l7log, labmetrics, netns, operators, reconcile, servicenat, topology
from crossmesh.drivers.lab.control_plane import agent_dir, agent_running, start_agent
from crossmesh.drivers.lab.desired import policy_index, topology_of
from crossmesh.drivers.lab.dns import dns_answer, dns_records, headless_records, ready
from crossmesh.drivers.lab.state import LabState, daemon_state
from crossmesh.model.plan import Plan
from crossmesh.observe import l7
from crossmesh.observe.flows import DropReason, Verdict
from crossmesh.policy.compile import L7_PROXY_PORT
from crossmesh.policy.endpoints import world_endpoint
from crossmesh.policy.evaluator import Reason, evaluate
from crossmesh.policy.evaluator import Verdict as PolicyVerdict
from crossmesh.policy.model import HttpRequest
from crossmesh.services.backends import backend_sets

DNS_PORT = 53
ECHO_PORT = 7
SO_ORIGINAL_DST = 80
L7_DROP_HOLD = 5.0


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


@dataclass
class Backend:
    key: str
    pod: str
    address: str
    port: int
    protocol: str
    node: str
    healthy: bool = True
    streak: int = 0  # consecutive results against the current state
    since: float = 0.0


class Daemon:
    def __init__(self, state: LabState) -> None:
        self.state = state
        self.compiled, self.topo = topology_of(state)
        self.plan: Plan = self.compiled.plan
        self.health = self.plan.health
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.stop = threading.Event()
        self.backends: dict[str, Backend] = {}
        for cluster in self.plan.clusters:
            for svc in cluster.services:
                for bs in backend_sets(self.plan, svc):
                    for b in bs.all:
                        key = servicenat.backend_key(b.pod, b.address, b.port)
                        pod_node = next(p.node for p in self.plan.pods() if p.ref == b.pod)
                        self.backends.setdefault(
                            key, Backend(key, b.pod, b.address, b.port, bs.protocol, pod_node, since=time.time())
                        )
        services = labmetrics.service_backends(self.plan)
        self.metrics = {  # each node's /metrics (port 9963), served by its thread: the backends it checks
            n.name: labmetrics.NodeMetrics(
                self.topo.node_ns[n.name],
                {s: frozenset(k for k in keys if self.backends[k].node == n.name) for s, keys in services.items()},
                self.backend_health,
            )
            for n in self.plan.nodes
        }
        self.dns = dns_records(self.plan)
        self.headless = headless_records(self.plan)
        self.policy = policy_index(self.compiled)
        self.http_log = l7log.HttpLog(l7log.socket_path(state.dir))
        self.started_agents: dict[str, float] = {}
        self.operators_checked = 0.0
        self.operators_missing: dict[str, float] = {}  # replica → when it was first seen missing

    # --- DNS -------------------------------------------------------------------------------
    def answer(self, cluster: str, query: bytes) -> bytes | None:
        records: dict[str, str | tuple[str, ...]] = dict(self.dns.get(cluster, {}))
        if self.headless.get(cluster):
            with self.lock:
                unhealthy = {k for k, b in self.backends.items() if not b.healthy}
            records.update(ready(self.headless[cluster], unhealthy))
        return dns_answer(records, query)

    # --- L7 proxy --------------------------------------------------------------------------
    async def l7_proxy(self, node: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP-aware enforcement, as Cilium's Envoy: the request must match an HTTP rule of
        the policies that admit the flow, else 403; a flow denied below L7 is dropped. Each
        request handled is reported to the flow daemon (l7log.py)."""
        event: l7.HttpEvent | None = None
        try:
            sock = writer.get_extra_info("socket")
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack("!H", raw[2:4])[0]
            target = socket.inet_ntoa(raw[4:8])
            client, client_port = writer.get_extra_info("peername")[:2]
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            seen = time.time()
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
            headers = tuple((k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:] if h))
            length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0") or 0)
            body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
            verdict, judged = self.l7_verdict(client, target, port, HttpRequest(method, path, headers))
            event = self.http_event(node, seen, (client, client_port, target, port), method, path, judged)
            if verdict == "forbidden":
                event = dataclasses_replace(event, status=403)
                msg = b"Access denied\r\n"
                writer.write(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                    + f"Content-Length: {len(msg)}\r\n\r\n".encode()
                    + msg
                )
                await writer.drain()
                return
            if verdict == "dropped":
                self.http_log.send(event)
                event = None
                await asyncio.sleep(L7_DROP_HOLD)  # as a drop looks to the client: no answer
                return
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(target, port), 5)
            forwarded = head.replace(b"\r\n\r\n", f"\r\nX-Forwarded-For: {client}\r\n\r\n".encode(), 1)
            up_writer.write(forwarded + body)
            await up_writer.drain()
            first = True
            while chunk := await up_reader.read(65536):
                if first:
                    event, first = dataclasses_replace(event, status=l7.response_status(chunk)), False
                writer.write(chunk)
                await writer.drain()
            up_writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            if event is not None:
                self.http_log.send(event)

    def http_event(
        self,
        node: str,
        seen: float,
        ends: tuple[str, int, str, int],
        method: str,
        path: str,
        judged: PolicyVerdict | None,
    ) -> l7.HttpEvent:
        """The record of one request as the proxy judged it (status: filled in once answered)."""
        client, client_port, target, port = ends
        if judged is None:  # not an endpoint of the mesh: refused without a policy to name
            decided = l7.Judgement(Verdict.DROPPED, DropReason.NONE, "", "", "", "none")
        else:
            decided = l7.judge(judged)
        return l7.HttpEvent(
            time=seen,
            node=node,
            source=client,
            source_port=client_port,
            destination=target,
            destination_port=port,
            method=method,
            path=path,
            status=0,
            verdict=decided.verdict,
            drop_reason=decided.reason,
            direction=decided.direction,
            policy=decided.policy,
            rule=decided.rule,
            match=decided.match,
        )

    def l7_verdict(self, client: str, target: str, port: int, request: HttpRequest) -> tuple[str, PolicyVerdict | None]:
        src = self.policy.by_address.get(ip_address(client)) or world_endpoint(client)
        dst = self.policy.by_address.get(ip_address(target))
        if dst is None:
            return "forbidden", None
        verdict = evaluate(self.policy, src, dst, port, "TCP", request)
        if verdict.allowed:
            return "allowed", verdict
        reason = Reason.L7_DENIED
        if reason in (verdict.egress.reason, verdict.ingress.reason) and all(
            s.allowed or s.reason is reason for s in (verdict.egress, verdict.ingress)
        ):
            return "forbidden", verdict
        return "dropped", verdict

    # --- health ----------------------------------------------------------------------------
    async def probe(self, b: Backend) -> bool:
        timeout = self.health.timeout_ms / 1000
        try:
            if b.protocol == "UDP":
                loop = asyncio.get_running_loop()
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                try:
                    await loop.sock_connect(s, (b.address, b.port))
                    await loop.sock_sendall(s, b"crossmesh-health")
                    data = await asyncio.wait_for(loop.sock_recv(s, 64), timeout)
                    return data == b"crossmesh-health"
                finally:
                    s.close()
            reader, writer = await asyncio.wait_for(asyncio.open_connection(b.address, b.port), timeout)
            try:
                if self.health.probe == "http":
                    writer.write(
                        f"GET {self.health.path} HTTP/1.1\r\nHost: health\r\nConnection: close\r\n\r\n".encode()
                    )
                    await writer.drain()
                    line = await asyncio.wait_for(reader.readline(), timeout)
                    return line.startswith(b"HTTP/1.1 200") or line.startswith(b"HTTP/1.0 200")
                return True
            finally:
                writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return False

    def record(self, b: Backend, ok: bool) -> None:
        with self.lock:
            if ok == b.healthy:
                b.streak = 0
                return
            b.streak += 1
            need = self.health.success_threshold if ok else self.health.failure_threshold
            if b.streak >= need:
                b.healthy, b.streak, b.since = ok, 0, time.time()
                self.metrics[b.node].transition(b.key, ok)
                self.changed.set()

    def backend_health(self) -> dict[str, bool]:
        with self.lock:
            return {k: b.healthy for k, b in self.backends.items()}

    async def node_loop(self, node: str, cluster: str) -> None:
        mine = [b for b in self.backends.values() if b.node == node]
        dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dns_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        dns_sock.bind(("0.0.0.0", DNS_PORT))
        loop = asyncio.get_running_loop()
        daemon = self

        class Dns(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                reply = daemon.answer(cluster, data)
                if reply is not None:
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

        await loop.create_datagram_endpoint(Dns, sock=dns_sock)
        # The lab's diagnostic echo on every node (UDP 7, RFC 862): `crossmesh test` sends
        # tunnel-sized and marked datagrams node to node, whatever the pods' policies allow.
        echo_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        echo_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        echo_sock.bind(("0.0.0.0", ECHO_PORT))
        await loop.create_datagram_endpoint(Echo, sock=echo_sock)
        # The L7 proxy: nftables hands it new connections to pod ports that carry HTTP rules.
        proxy_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        proxy_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        proxy_sock.bind(("0.0.0.0", L7_PROXY_PORT))
        proxy_sock.listen(256)
        proxy_sock.setblocking(False)
        await asyncio.start_server(functools.partial(self.l7_proxy, node), sock=proxy_sock)
        metrics = self.metrics[node]
        try:  # opened here, on this node's thread: the socket is the namespace's
            metrics.serve(str(self.plan.node(node).address))
        except OSError as err:
            print(f"node {node}: cannot serve metrics ({err}); its services run without them", flush=True)
        interval = self.health.interval_ms / 1000
        while not self.stop.is_set():
            started = loop.time()
            results = await asyncio.gather(*(metrics.timed(self.probe(b)) for b in mine))
            for b, ok in zip(mine, results, strict=True):
                self.record(b, ok)
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    def run_node(self, node: str, cluster: str, ns: str) -> None:
        netns.enter(ns)
        asyncio.run(self.node_loop(node, cluster))

    # --- apply -----------------------------------------------------------------------------
    def apply(self) -> list[str]:
        with self.lock:
            unhealthy = frozenset(k for k, b in self.backends.items() if not b.healthy)
        topo = topology.build(self.plan, self.state.tag, unhealthy, self.policy, flow_logs=self.state.flow_logs)
        changes = []
        for ns in topo.namespaces:
            if ns.role == "node" and ns.nft is not None:
                changes += reconcile.nft_only(ns)
        self.write_status()
        return changes

    def write_status(self) -> None:
        with self.lock:
            data = {
                k: {"pod": b.pod, "healthy": b.healthy, "since": b.since, "node": b.node}
                for k, b in sorted(self.backends.items())
            }
        path = self.state.dir / "health.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"updated": time.time(), "backends": data}, indent=1, sort_keys=True))
        tmp.replace(path)

    def serve(self) -> None:
        for node in self.plan.nodes:
            t = threading.Thread(
                target=self.run_node, args=(node.name, node.cluster, self.topo.node_ns[node.name]), daemon=True
            )
            t.start()
        self.write_status()
        print("ready", flush=True)
        while not self.stop.is_set():
            if self.changed.wait(0.5):
                self.changed.clear()
                for change in self.apply():
                    print(change, flush=True)
            self.supervise_agents()
            self.supervise_operators()

    def supervise_operators(self) -> None:
        """Restart an operator replica that died, as a Deployment would — after the lease TTL and a
        margin, so that the surviving replica takes over first (`lab crash-operator` measures that)."""
        if self.state.control_plane != "etcd":
            return
        now = time.monotonic()
        if now < self.operators_checked + 1.0:
            return
        self.operators_checked = now
        running = operators.replica_pids(self.state)
        for k in range(operators.REPLICAS):
            rid = operators.replica_id(self.state, k)
            if rid in running:
                self.operators_missing.pop(rid, None)
                continue
            since = self.operators_missing.setdefault(rid, now)
            if now - since > self.state.lease_ttl + 2:
                for change in operators.start_operators(self.state):
                    print(change, flush=True)
                self.operators_missing.clear()
                return

    def supervise_agents(self) -> None:
        """Restart a node agent that died — unless `lab crash-node` stopped it on purpose."""
        directory = agent_dir(self.state)
        if not directory.is_dir():
            return
        now = time.monotonic()
        for cfg in sorted(directory.glob("*.json")):
            if cfg.name.endswith(".status.json"):
                continue
            node = cfg.stem
            if (directory / "crashed" / node).exists() or now - self.started_agents.get(node, -10.0) < 3.0:
                continue
            # An agent `lab up` has just started may not hold its lock yet: its configuration is new.
            try:
                age = time.time() - cfg.stat().st_mtime
            except FileNotFoundError:
                continue  # the node is being removed
            if age > 3 and not agent_running(self.state, node):
                start_agent(self.state, node)
                self.started_agents[node] = now
                print(f"agent of {node} was not running: restarted", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m crossmesh.drivers.lab.servicesd LAB_DIR", file=sys.stderr)
        return 2
    state = daemon_state(argv[0])
    if isinstance(state, str):
        print(state, file=sys.stderr)
        return 2
    daemon = Daemon(state)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop.set())
    daemon.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
