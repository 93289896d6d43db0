"""The built-in echo workload every lab pod runs on its declared container ports.

One process per node serves all the pods of that node: each pod's listening
sockets are opened inside the pod's network namespace (see `netns.run_in`) and then
served by one asyncio loop. That costs one Python interpreter per node instead of
one per pod (≈20 MB and ≈60 ms start-up each on this machine).

TCP ports speak just enough HTTP/1.1: the answer is JSON naming the pod, namespace,
cluster, node, pod IP and the client address the pod saw, and echoing the request
body. UDP ports echo each datagram back unchanged.

    python -m crossmesh.drivers.lab.workload SPEC.json
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
                "clientIP": peer[0],
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


async def serve(spec: list[dict[str, Any]]) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for pod in spec:
        for port, proto in pod["ports"]:
            sock = _listen(pod["netns"], pod["ip"], int(port), proto)
            if proto == "TCP":
                servers.append(await asyncio.start_server(_http_handler(pod, int(port)), sock=sock))
            elif proto == "UDP":
                await loop.create_datagram_endpoint(_Echo, sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m crossmesh.drivers.lab.workload SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    asyncio.run(serve(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
