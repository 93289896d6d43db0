"""A flow relay that serves canned flows by the relay protocol (common to the flow daemon, `observe`
and the UI), on a real Unix socket: the UI under test dials it as it would the lab's flows.sock.

    {"since": <epoch s or null>, "follow": <bool>}       one request line from the client
    {"flow": {...}} per stored flow with time >= since, then {"nodes": {...}}; with follow, further
    {"flow": ...} lines as `push` adds them and {"nodes": ...} every second, until the client leaves.
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
import time
from pathlib import Path
from typing import Any


def flow(  # noqa: PLR0913 - a flow record has this many parts worth choosing in a test
    src: tuple[str, str, str, str],
    dst: tuple[str, str, str, str],
    port: int,
    *,
    verdict: str = "FORWARDED",
    node: str = "aws-talos-1",
    policy: str = "",
    reason: str = "",
    at: float | None = None,
) -> dict[str, Any]:
    """A flow record as `Flow.to_json()` writes it; src/dst = (cluster, namespace, pod, address)."""

    def end(e: tuple[str, str, str, str]) -> dict[str, Any]:
        return {"address": e[3], "kind": "pod", "cluster": e[0], "namespace": e[1], "name": e[2], "labels": {}}

    return {
        "time": time.time() if at is None else at,
        "node": node,
        "verdict": verdict,
        "protocol": "TCP",
        "source": end(src),
        "destination": end(dst),
        "source_port": 40000,
        "destination_port": port,
        "drop_reason": reason,
        "direction": "egress" if policy else "",
        "policy": policy,
    }


class FakeRelay:
    def __init__(self, path: Path, flows: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.flows: list[dict[str, Any]] = list(flows or [])
        self.nodes = {"aws-talos-1": {"recorded": 0, "lost": 0, "error": ""}}
        self.requests: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        relay = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request = json.loads(self.rfile.readline())
                relay.requests.append(request)
                since = request.get("since") or 0.0
                with relay.changed:
                    sent = len(relay.flows)
                    backlog = [f for f in relay.flows if f["time"] >= since]
                try:
                    for f in backlog:
                        self.send({"flow": f})
                    self.send({"nodes": relay.nodes})
                    while request.get("follow"):
                        with relay.changed:
                            relay.changed.wait(1.0)
                            new, sent = relay.flows[sent:], len(relay.flows)
                        for f in new:
                            self.send({"flow": f})
                        self.send({"nodes": relay.nodes})
                except (BrokenPipeError, ConnectionResetError):
                    return

            def send(self, message: dict[str, Any]) -> None:
                self.wfile.write((json.dumps(message) + "\n").encode())
                self.wfile.flush()

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(path), Handler)
        os.chmod(path, 0o600)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeRelay:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def push(self, record: dict[str, Any]) -> None:
        with self.changed:
            self.flows.append(record)
            self.changed.notify_all()
