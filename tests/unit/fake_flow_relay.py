"""A fake of the lab's flow relay for tests: a real Unix socket server speaking the relay protocol
(see observe/wire.py), serving canned lines — good ones, or whatever hostile bytes a test gives it.

The real relay (drivers/lab/flowsd.py) reads NFLOG in the lab's namespaces, which needs root and a
lab; its readers are tested against this instead, over the same kind of socket.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crossmesh.observe.flows import Flow, FlowEndpoint, Verdict


def status_line(nodes: dict[str, dict[str, Any]]) -> bytes:
    """A status line of node entries as given (a test may give wrong ones; see wire.status_line)."""
    return json.dumps({"nodes": nodes}).encode() + b"\n"


def pod(ref: str, address: str) -> FlowEndpoint:
    cluster, namespace, name = ref.split("/")
    return FlowEndpoint(address=address, kind="pod", cluster=cluster, namespace=namespace, name=name, identity=300)


def flow(
    t: float,
    src: FlowEndpoint,
    dst: FlowEndpoint,
    *,
    port: int = 80,
    verdict: Verdict = Verdict.FORWARDED,
    node: str = "c1-n1",
    protocol: str = "TCP",
    **extra: Any,
) -> Flow:
    return Flow(
        time=t,
        node=node,
        verdict=verdict,
        protocol=protocol,
        source=src,
        destination=dst,
        source_port=40000,
        destination_port=port,
        **extra,
    )


class FakeRelay:
    """Serves each connection: reads its request line (kept in `requests`), sends `history` (lines
    of bytes, sent as given), then `status` if not None; then, if the request follows, sends
    `follow_lines` one by one and, if `hold`, a status line every `tick` seconds until the client
    closes. Use as a context manager; `path` is the socket."""

    def __init__(
        self,
        history: Sequence[bytes],
        *,
        status: bytes | None = b"",
        follow_lines: Sequence[bytes] = (),
        hold: bool = True,
        tick: float = 0.05,
        path: Path | None = None,
    ) -> None:
        self.history = list(history)
        self.status = (
            status_line({"c1-n1": {"recorded": len(history), "lost": 0, "error": ""}}) if status == b"" else status
        )
        self.follow_lines = list(follow_lines)
        self.hold, self.tick = hold, tick
        self._dir = None if path is not None else tempfile.TemporaryDirectory(prefix="cmfr")  # short: AF_UNIX
        self.path = path if path is not None else Path(self._dir.name) / "flows.sock"  # type: ignore[union-attr]
        self.requests: list[dict[str, Any]] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> FakeRelay:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server.bind(str(self.path))
        self._server.listen()
        self._server.settimeout(0.1)
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._server.close()
        self.path.unlink(missing_ok=True)
        if self._dir is not None:
            self._dir.cleanup()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            request = conn.makefile("rb").readline()
            self.requests.append(json.loads(request))
            try:
                for line in self.history:
                    conn.sendall(line)
                if self.status is not None:
                    conn.sendall(self.status)
                if not self.requests[-1]["follow"]:
                    return
                for line in self.follow_lines:
                    conn.sendall(line)
                    time.sleep(self.tick)
                while self.hold and not self._stop.is_set():
                    if self.status is not None:
                        conn.sendall(self.status)
                    time.sleep(self.tick)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client closed: how a follower stops
