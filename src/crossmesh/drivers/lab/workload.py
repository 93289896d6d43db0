"""The built-in echo workload every lab pod runs on its declared container ports.

One process per node serves all the pods of that node: each pod's listening
sockets are opened inside the pod's network namespace (see `netns.run_in`) and then
served by one asyncio loop. That costs one Python interpreter per node instead of
one per pod (≈20 MB and ≈60 ms start-up each on this machine).

TCP ports speak just enough HTTP/1.1: the answer is JSON naming the pod, namespace,
cluster, node, pod IP and the client address the pod saw, and echoing the request
body, and the X-Forwarded-Client-Cert header the mesh proxy added ("xfcc"). UDP ports echo each datagram back unchanged.

A pod whose key (CLUSTER_NS_POD) names a file in KILLED_DIR is stopped — its
listeners closed and its connections reset, as when a container dies — and
started again when the file goes; `lab kill`/`revive` write the file and send
SIGUSR1 so that this happens at once.

    python -m crossmesh.drivers.lab.workload SPEC.json [KILLED_DIR]
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from crossmesh.drivers.lab import netns

MAX_BODY = 1 << 20


def _listen(ns: str, ip: str, port: int, proto: str) -> socket.socket:
    def make() -> socket.socket:
        kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        if kind == socket.SOCK_STREAM:
            s.listen(512)
        s.setblocking(False)
        return s

    return netns.run_in(ns, make)


def _http_handler(pod: dict[str, Any], port: int) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
            length = min(int(headers.get("content-length", "0") or 0), MAX_BODY)
            body = await asyncio.wait_for(reader.readexactly(length), timeout=10) if length else b""
            peer = writer.get_extra_info("peername") or ("", 0)
            answer = {
                "pod": pod["pod"],
                "namespace": pod["namespace"],
                "cluster": pod["cluster"],
                "node": pod["node"],
                "podIP": pod["ip"],
                "port": port,
                "client": f"{peer[0]}:{peer[1]}",
                # Behind the lab's L7 proxy the peer is the node; the proxy names the client.
                "clientIP": headers.get("x-forwarded-for", peer[0]),
                # Behind the service mesh's proxy: the identity the server's proxy saw (mTLS), as Envoy names it.
                "xfcc": headers.get("x-forwarded-client-cert", ""),
                "method": method,
                "path": path,
                "body": body.decode("utf-8", "replace"),
            }
            payload = json.dumps(answer, sort_keys=True).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    return handle


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


class Pod:
    """The servers of one pod; stopped by `lab kill`, started again by `lab revive`."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.servers: list[asyncio.AbstractServer] = []
        self.transports: list[asyncio.BaseTransport] = []
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def key(self) -> str:
        return f"{self.spec['cluster']}_{self.spec['namespace']}_{self.spec['pod']}"

    @property
    def running(self) -> bool:
        return bool(self.servers or self.transports)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for port, proto in self.spec["ports"]:
            sock = _listen(self.spec["netns"], self.spec["ip"], int(port), proto)
            if proto == "TCP":
                handler = _http_handler(self.spec, int(port))

                async def tracked(r: asyncio.StreamReader, w: asyncio.StreamWriter, h: Any = handler) -> None:
                    self.writers.add(w)
                    try:
                        await h(r, w)
                    finally:
                        self.writers.discard(w)

                self.servers.append(await asyncio.start_server(tracked, sock=sock))
            elif proto == "UDP":
                transport, _ = await loop.create_datagram_endpoint(_Echo, sock=sock)
                self.transports.append(transport)

    async def stop(self) -> None:
        """Like a crashed container: listeners closed, open connections reset."""
        for server in self.servers:
            server.close()
        for w in list(self.writers):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            w.transport.abort()
        for t in self.transports:
            t.close()
        self.servers, self.transports = [], []


async def serve(spec: list[dict[str, Any]], killed_dir: Path | None) -> None:
    loop = asyncio.get_running_loop()
    pods = [Pod(p) for p in spec]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    wake = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, wake.set)
    first = True
    while not stop.is_set():
        killed = {p.name for p in killed_dir.iterdir()} if killed_dir and killed_dir.is_dir() else set()
        for pod in pods:
            if pod.key in killed and pod.running:
                await pod.stop()
            elif pod.key not in killed and not pod.running:
                await pod.start()
        if first:
            print("ready", flush=True)
            first = False
        wake.clear()
        # SIGUSR1 (from `lab kill`/`revive`) wakes us at once; the poll is a fallback.
        waiters = [asyncio.create_task(wake.wait()), asyncio.create_task(stop.wait())]
        await asyncio.wait(waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
    for pod in pods:
        await pod.stop()


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m crossmesh.drivers.lab.workload SPEC.json [KILLED_DIR]", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    asyncio.run(serve(spec, Path(argv[1]) if len(argv) == 2 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
