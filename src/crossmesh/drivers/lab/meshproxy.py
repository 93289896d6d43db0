"""The lab's node proxy of the service mesh (`spec.istio`): one process per node, as ztunnel.

For each pod of its node it holds the pod's SVID (meshtls.py: key in memory, certificate from the
lab's CA daemon) and two listening sockets opened inside the pod's network namespace — Istio
ambient's in-pod redirection — to which the pod's nftables (meshcapture.py) hand its TCP:

- 15001, outbound: where the app was going (SO_ORIGINAL_DST); mTLS when the destination accepts
  it (its PeerAuthentication is not DISABLE; a ClusterIP: every backend's), TLS 1.3 with the
  pod's SVID to the destination's own address and port, sidecar-style (no HBONE tunnel), so the
  node's tables still see real pod addresses and ports; the server's SPIFFE id must be that of
  the destination (one of the Service's backends). Plain TCP otherwise.
- 15006, inbound: the first bytes tell a TLS ClientHello from plaintext. TLS: the pod's SVID,
  a client certificate required and checked (chain to the mesh root, trust domain, revoked
  intermediates); its SPIFFE id is the principal. Plaintext: only when the pod's mode is
  PERMISSIVE or DISABLE (STRICT: reset). Then the AuthorizationPolicies (crossmesh.istio): a
  denied HTTP request gets 403 "RBAC: access denied", anything else denied a reset. Allowed:
  a connection to the app from the client's own address (IP_TRANSPARENT), and HTTP requests
  carry `X-Forwarded-Client-Cert: By=<server id>;URI=<client id>` as Envoy adds it.

Every refusal is logged with its reason. SIGUSR1 renews every certificate at once
(`crossmesh lab rotate-certs`); otherwise each is renewed at half its lifetime.

    python -m crossmesh.drivers.lab.meshproxy LAB_DIR NODE
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from crossmesh.drivers.lab import meshcapture, netns
from crossmesh.drivers.lab.desired import topology_of
from crossmesh.drivers.lab.meshtls import (
    RETRY,
    Identity,
    ca_socket,
    check_peer,
    http_head,
    spiffe_of,
    tls_error,
    with_xfcc,
)
from crossmesh.drivers.lab.state import daemon_state
from crossmesh.identity.spiffe import SpiffeId
from crossmesh.istio.index import IstioIndex, Mode, Request, istio_index
from crossmesh.policy.endpoints import mesh_endpoints
from crossmesh.policy.model import Endpoint, EndpointKind
from crossmesh.services.backends import backend_sets

SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19
CHUNK = 1 << 16
HEAD_MAX = 1 << 16
FIRST_BYTES_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class Route:
    """Where an outbound connection goes and how: mTLS (and the ids the server may have) or plain."""

    mtls: bool
    expected: frozenset[str]  # SPIFFE URIs the server may present
    why: str


Services = dict[tuple[IPv4Address, int], list[tuple[Endpoint, int]]]
"""ClusterIP and port → the backends (pod, target port) behind it."""


def outbound_route(
    index: IstioIndex, pods: dict[IPv4Address, Endpoint], services: Services, trust_domain: str, target: IPv4Address,
    port: int,
) -> Route:  # fmt: skip
    """mTLS when every destination accepts it (not DISABLE), as Istio's auto mTLS decides."""
    if target in pods:
        backends = [(pods[target], port)]
    elif (target, port) in services:
        backends = services[(target, port)]
    else:
        return Route(False, frozenset(), f"{target}:{port} is no mesh workload")
    if not backends:
        return Route(False, frozenset(), f"{target}:{port} has no backends")
    for ep, p in backends:
        decision = index.mode(ep, p)
        if decision.mode is Mode.DISABLE:
            return Route(False, frozenset(), f"{ep.ref}:{p} does not accept mTLS ({decision.source})")
    return Route(True, frozenset(spiffe_of(ep, trust_domain).uri for ep, _ in backends), "mTLS")


class Workload:
    """One local pod: its identity, its namespace's thread (sockets are made there), its listeners."""

    def __init__(self, proxy: Proxy, ep: Endpoint, netns_name: str, address: IPv4Address) -> None:
        self.proxy = proxy
        self.ep = ep
        self.netns = netns_name
        self.address = address
        self.identity = Identity(spiffe_of(ep, proxy.trust_domain))
        self.thread = ThreadPoolExecutor(1, f"ns-{netns_name}", initializer=netns.enter, initargs=(netns_name,))
        self.servers: list[asyncio.AbstractServer] = []

    async def in_ns(self, fn: object) -> socket.socket:
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn)  # type: ignore[arg-type]

    async def start(self) -> socket.socket:
        """The outbound listener served; the inbound one returned (`Proxy.accept` serves it)."""

        def listener(port: int) -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(512)
            s.setblocking(False)
            return s

        out = await self.in_ns(lambda: listener(meshcapture.OUTBOUND_PORT))
        self.servers = [await asyncio.start_server(self.proxy.outbound_handler(self), sock=out, limit=CHUNK)]
        return await self.in_ns(lambda: listener(meshcapture.INBOUND_PORT))

    async def socket_to(self, mark: int, source: str | None) -> socket.socket:
        """A TCP socket in the pod's namespace with the proxy's `mark` (never captured again), bound
        to `source` when given (any address: IP_TRANSPARENT)."""

        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            if source is not None:
                s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                s.bind((source, 0))
            s.setblocking(False)
            return s

        return await self.in_ns(make)


def _log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def _reset(writer: asyncio.StreamWriter | None, sock: socket.socket | None = None) -> None:
    """Close with a TCP reset, as Envoy refuses a connection."""
    raw = sock if sock is not None else (writer.get_extra_info("socket") if writer is not None else None)
    with contextlib.suppress(OSError):
        if raw is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    if writer is not None:
        writer.transport.abort()
    elif sock is not None:
        sock.close()


def _original_dst(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter, *, answers: bool
) -> None:
    """Bytes from `reader` to `writer` until the end. The end is passed on as a half-close where the
    writer can (plain TCP). TLS cannot half-close here (asyncio's TLS transport has no write_eof):
    the end of the answers (`answers`: this pipe runs from the server towards the client) closes the
    TLS side whole, while the end of a request is kept until the answer is done. A broken side
    (reset, TLS error) aborts both (`other`: the writer of the opposite direction)."""
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (OSError, ssl.SSLError, RuntimeError):
        for w in (writer, other):
            w.transport.abort()
        return
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
        elif answers:
            writer.close()


async def splice(
    down: tuple[asyncio.StreamReader, asyncio.StreamWriter], up: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    """Bytes both ways between the client's side (`down`) and the server's (`up`) until both ends are
    done; then both closed."""
    try:
        await asyncio.gather(_pipe(down[0], up[1], down[1], answers=False), _pipe(up[0], down[1], up[1], answers=True))
    finally:
        for w in (down[1], up[1]):
            with contextlib.suppress(Exception):
                w.close()


FORBIDDEN = (
    b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 19\r\nconnection: close\r\n\r\n"
    b"RBAC: access denied"
)


class Proxy:
    """The node's proxy: its pods' workloads, the mesh's addresses and the Istio policies."""

    def __init__(self, lab_dir: Path, node: str) -> None:
        state = daemon_state(str(lab_dir))
        if isinstance(state, str):
            raise SystemExit(state)
        compiled, topo = topology_of(state)
        plan = compiled.plan
        if plan.istio is None:
            raise SystemExit(f"mesh {plan.mesh} has no spec.istio: no node proxy to run")
        self.node = node
        self.trust_domain = plan.istio.trust_domain
        self.ca = ca_socket(lab_dir, node)
        self.index = istio_index(plan, compiled.loaded.manifests)
        endpoints = [e for e in mesh_endpoints(plan, compiled.loaded.manifests) if e.kind is EndpointKind.POD]
        self.pods: dict[IPv4Address, Endpoint] = {IPv4Address(str(e.address)): e for e in endpoints}
        by_ref = {e.ref: e for e in endpoints}
        self.services: Services = {}
        for cluster in plan.clusters:
            for svc in cluster.services:
                if svc.cluster_ip is None:
                    continue
                for bs in backend_sets(plan, svc):
                    if bs.protocol == "TCP":
                        key = (svc.cluster_ip, bs.port)
                        self.services[key] = [(by_ref[b.pod], b.port) for b in bs.all if b.pod in by_ref]
        self.workloads = [
            Workload(self, by_ref[ep.pod.ref], ep.namespace, ep.pod.address)
            for ep in topo.pods
            if ep.pod.node == node and ep.pod.ref in by_ref
        ]
        self.renew_now = asyncio.Event()

    # --- outbound --------------------------------------------------------------------------
    def outbound_handler(self, w: Workload):  # type: ignore[no-untyped-def]  # noqa: ANN201
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.outbound(w, reader, writer)

        return handle

    async def outbound(self, w: Workload, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            target, port = _original_dst(writer.get_extra_info("socket"))
        except OSError:
            _reset(writer)
            return
        addr = IPv4Address(target)
        if addr == w.address and port in (meshcapture.OUTBOUND_PORT, meshcapture.INBOUND_PORT):
            _reset(writer)
            return
        route = outbound_route(self.index, self.pods, self.services, self.trust_domain, addr, port)
        ident = w.identity
        if route.mtls and ident.client is None:
            _log(f"outbound {w.ep.ref} → {target}:{port} refused: the workload has no certificate yet")
            _reset(writer)
            return
        up = await w.socket_to(meshcapture.PROXY_MARK, None)
        try:
            await asyncio.wait_for(loop.sock_connect(up, (target, port)), CONNECT_TIMEOUT)
            if not route.mtls:
                upstream = await asyncio.open_connection(sock=up, limit=CHUNK)
            else:
                assert ident.client is not None and ident.bundle is not None  # noqa: S101 - checked above
                upstream = await asyncio.open_connection(
                    sock=up,
                    ssl=ident.client,
                    server_hostname=target,
                    ssl_handshake_timeout=CONNECT_TIMEOUT,
                    limit=CHUNK,
                )
                peer = upstream[1].get_extra_info("ssl_object").getpeercert(binary_form=True)
                verdict = check_peer(peer, ident.bundle, self.trust_domain)
                who = verdict.spiffe.uri if verdict.spiffe is not None else "?"
                if not verdict.ok or who not in route.expected:
                    why = (
                        verdict.reason
                        if not verdict.ok
                        else f"the server is {who}, not {' or '.join(sorted(route.expected))}"
                    )
                    _log(f"outbound {w.ep.ref} → {target}:{port} refused: {why}")
                    upstream[1].transport.abort()
                    _reset(writer)
                    return
        except (OSError, TimeoutError, ssl.SSLError) as err:
            _log(f"outbound {w.ep.ref} → {target}:{port} failed: {tls_error(err)}")
            up.close()
            _reset(writer)
            return
        await splice((reader, writer), upstream)

    # --- inbound ---------------------------------------------------------------------------
    async def accept(self, w: Workload, listener: socket.socket) -> None:
        """Inbound connections are accepted by hand: their first byte is peeked at before TLS or
        plain streams are made of them (a stream that has read the ClientHello cannot hand it to TLS)."""
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        while True:
            conn, addr = await loop.sock_accept(listener)
            task = asyncio.create_task(self.inbound(w, conn, addr[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def inbound(self, w: Workload, conn: socket.socket, client: str) -> None:
        """A connection to the pod: mTLS or plaintext by its first byte, then policy, then the app."""
        try:
            _, port = _original_dst(conn)
        except OSError:
            _reset(None, conn)
            return
        where = f"inbound {client} → {w.ep.ref}:{port}"
        if port in (meshcapture.OUTBOUND_PORT, meshcapture.INBOUND_PORT):
            _reset(None, conn)
            return
        peeked = await _peek(conn)
        mode = self.index.mode(w.ep, port)
        principal: SpiffeId | None = None
        peer: bytes | None = None
        ident = w.identity
        if peeked[:1] == b"\x16" and mode.mode is not Mode.DISABLE:  # a TLS handshake record: mTLS
            if ident.server is None or ident.bundle is None:
                _log(f"{where} refused: the workload has no certificate yet")
                _reset(None, conn)
                return
            try:
                reader, writer = await _streams(conn, ident.server)
            except (OSError, TimeoutError, ssl.SSLError, ConnectionError) as err:
                _log(f"{where} refused: TLS handshake failed: {tls_error(err)}")
                _reset(None, conn)
                return
            peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            verdict = check_peer(peer, ident.bundle, self.trust_domain)
            if not verdict.ok or verdict.spiffe is None:
                _log(f"{where} refused: client certificate: {verdict.reason}")
                _reset(writer, conn)
                return
            principal = verdict.spiffe
        elif mode.mode is Mode.STRICT:
            _log(f"{where} refused: plaintext to a STRICT workload ({mode.source})")
            _reset(None, conn)
            return
        else:
            reader, writer = await _streams(conn, None)
        first = b""
        if self.index.needs_http(w.ep, port) or principal is not None:
            first = await _request_head(reader, FIRST_BYTES_TIMEOUT if self.index.needs_http(w.ep, port) else 1.0)
        head = http_head(first)
        request = Request(
            principal=principal.principal if principal is not None else None,
            source_namespace=principal.namespace if principal is not None else None,
            source_ip=IPv4Address(client),
            port=port,
            method=head[0] if head is not None else None,
            path=head[1] if head is not None else None,
        )
        verdict_authz = self.index.authorize(w.ep, request)
        if not verdict_authz.allowed:
            who = principal.uri if principal is not None else "plaintext"
            by = f" {verdict_authz.policy}" if verdict_authz.policy else ""
            _log(f"{where} ({who}) refused by authorization policy{by}: {verdict_authz.reason}")
            if head is not None:  # an HTTP request: Envoy's answer
                with contextlib.suppress(Exception):
                    writer.write(FORBIDDEN)
                    await writer.drain()
                    writer.close()
                return
            _reset(writer, conn)
            return
        if head is not None and principal is not None and b"\r\n\r\n" in first:
            end = first.index(b"\r\n\r\n") + 4
            first = with_xfcc(first[:end], ident.spiffe.uri, principal.uri, peer) + first[end:]
        await self.to_app(w, client, port, first, (reader, writer), where)

    async def to_app(
        self,
        w: Workload,
        client: str,
        port: int,
        first: bytes,
        downstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        where: str,
    ) -> None:
        """The app's connection, from the client's own address (the app sees who called)."""
        loop = asyncio.get_running_loop()
        up = await w.socket_to(meshcapture.TRANSPARENT_MARK, client)
        try:
            await asyncio.wait_for(loop.sock_connect(up, (str(w.address), port)), CONNECT_TIMEOUT)
            upstream = await asyncio.open_connection(sock=up, limit=CHUNK)
        except (OSError, TimeoutError) as err:
            _log(f"{where}: the app does not answer: {tls_error(err)}")
            up.close()
            _reset(downstream[1])
            return
        if first:
            upstream[1].write(first)
        await splice(downstream, upstream)

    # --- certificates ----------------------------------------------------------------------
    async def certificates(self) -> None:
        """Each workload's certificate renewed at half its life (at once on SIGUSR1); a failed
        renewal is tried again after RETRY seconds."""
        while True:
            now = time.time()
            due = [w for w in self.workloads if now >= w.identity.renew_at or w.identity.failures]
            asked = self.renew_now.is_set()
            if asked:
                self.renew_now.clear()
                due = list(self.workloads)
                _log("renewing every certificate now (SIGUSR1)")
            results = await asyncio.gather(*(w.identity.renew(self.ca) for w in due))
            if asked:
                _log(f"rotation done: {sum(results)} of {len(results)} certificates renewed")
            now = time.time()
            wake = min(
                (RETRY if w.identity.failures else max(0.0, w.identity.renew_at - now) for w in self.workloads),
                default=3600.0,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.renew_now.wait(), wake)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self.renew_now.set)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.gather(*(w.identity.renew(self.ca) for w in self.workloads))
        accepting = []
        for w in self.workloads:
            inbound = await w.start()
            accepting.append(asyncio.create_task(self.accept(w, inbound)))
        renewing = asyncio.create_task(self.certificates())
        _log(f"node {self.node}: {len(self.workloads)} workloads; ready")
        await stop.wait()
        for task in (*accepting, renewing):
            task.cancel()


async def _peek(conn: socket.socket) -> bytes:
    """The first byte the client sent, left in the socket (b"" when it sent none in time)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), readable)
    try:
        await asyncio.wait_for(ready, FIRST_BYTES_TIMEOUT)
    except TimeoutError:
        return b""
    finally:
        loop.remove_reader(conn.fileno())
    try:
        return conn.recv(1, socket.MSG_PEEK)
    except OSError:
        return b""


async def _streams(
    conn: socket.socket, ctx: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over an accepted connection; with `ctx`, the server's side of a TLS handshake first."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol, conn, ssl=ctx, ssl_handshake_timeout=CONNECT_TIMEOUT if ctx is not None else None
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _request_head(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """What the client sends first, through the end of an HTTP request head when it is one."""
    try:
        data = await asyncio.wait_for(reader.read(CHUNK), timeout)
        if http_head(data) is not None:
            while b"\r\n\r\n" not in data and len(data) < HEAD_MAX:
                more = await asyncio.wait_for(reader.read(CHUNK), timeout)
                if not more:
                    break
                data += more
    except (OSError, TimeoutError, ssl.SSLError):
        return b""
    return data


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m crossmesh.drivers.lab.meshproxy LAB_DIR NODE", file=sys.stderr)
        return 2
    asyncio.run(Proxy(Path(argv[0]), argv[1]).run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
