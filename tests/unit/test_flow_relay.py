"""The flow relay on a real Unix socket: buffered records, status, follow, slow clients, bad requests."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crossmesh.drivers.lab.flowrelay import Relay
from crossmesh.observe import wire
from crossmesh.observe.flows import Flow, FlowEndpoint, Verdict


def flow(t: float, node: str) -> Flow:
    return Flow(
        time=t,
        node=node,
        verdict=Verdict.FORWARDED,
        protocol="TCP",
        source=FlowEndpoint("10.0.0.1"),
        destination=FlowEndpoint("10.0.0.2"),
        destination_port=80,
    )


class Running:
    """A relay served by an event loop on its own thread, as the daemon runs it."""

    def __init__(self, path: Path, **kw: int) -> None:
        self.relay = Relay(["n1", "n2"], **kw)
        self.path = path
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def serve() -> None:
            self.server = await self.relay.serve(path)
            started.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(5)
        started.wait(5)

    def sync(self) -> None:
        """Wait until the loop has run what was submitted so far."""
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result(5)

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = Running(tmp_path / "flows.sock")
    yield r
    r.close()


class Client:
    """A reader of the relay: one socket, its lines read with a buffer kept between calls."""

    def __init__(self, path: Path, request: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.sock.sendall(request)
        self.buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def lines(self, until: str = "nodes") -> list[dict[str, object]]:
        """JSON lines up to and including the first one with key `until` (or the end of the stream)."""
        out: list[dict[str, object]] = []
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                out.append(json.loads(line))
                if until in out[-1]:
                    return out
            chunk = self.sock.recv(65536)
            if not chunk:
                return out
            self.buf += chunk


def test_records_since_a_time_merged_in_time_order_then_the_status(running: Running) -> None:
    running.relay.submit("n1", [flow(1.0, "n1"), flow(3.0, "n1")], lost=2)
    running.relay.submit("n2", [flow(2.0, "n2")])
    running.relay.fail("n2", "cannot open NFLOG group 100: permission denied")
    running.sync()
    assert stat.S_IMODE(running.path.stat().st_mode) == 0o600
    with Client(running.path, b'{"since": 2.0, "follow": false}\n') as c:
        got = c.lines()
        assert c.sock.recv(1) == b""  # not following: the relay closes after the status
    flows = [Flow.from_json(g["flow"]) for g in got[:-1]]
    assert [(f.time, f.node) for f in flows] == [(2.0, "n2"), (3.0, "n1")]
    assert got[-1] == {
        "nodes": {
            "n1": {"recorded": 2, "lost": 2, "evicted": 0, "error": ""},
            "n2": {"recorded": 1, "lost": 0, "evicted": 0, "error": "cannot open NFLOG group 100: permission denied"},
        }
    }


def test_following_streams_new_records_and_a_status_every_second(running: Running) -> None:
    running.relay.submit("n1", [flow(1.0, "n1")])
    running.sync()
    with Client(running.path, wire.request_line(wire.Request(None, follow=True))) as c:
        first = c.lines()
        assert len(first) == 2 and "flow" in first[0]
        running.relay.submit("n2", [flow(5.0, "n2")])
        streamed = c.lines(until="flow")
        assert Flow.from_json(streamed[-1]["flow"]).node == "n2"
        started = time.monotonic()
        status = c.lines()[-1]
        assert time.monotonic() - started < 1.5
        assert status["nodes"]["n2"]["recorded"] == 1  # type: ignore[index]
    # The client left: the relay forgets it.
    deadline = time.monotonic() + 3
    while running.relay.clients and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not running.relay.clients


def test_a_slow_client_loses_records_alone_and_is_told(tmp_path: Path) -> None:
    running = Running(tmp_path / "flows.sock", queue=100)
    try:
        stuck = Client(running.path, b'{"since": null, "follow": true}\n')
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.lines()
        reader = Client(running.path, b'{"since": null, "follow": true}\n')
        reader.lines()
        seen = 0
        for batch in range(40):  # far more than the stuck client's socket buffers and queue hold
            running.relay.submit("n1", [flow(10.0 + batch + i / 100, "n1") for i in range(100)])
            running.sync()
            while seen < (batch + 1) * 100:
                seen += sum(1 for line in reader.lines(until="flow") if "flow" in line)
        assert seen == 4000 and running.relay.dropped > 0
        # The stuck client's status shows what it missed as lost; the relay never waited for it.
        dropped = running.relay.dropped
        while True:  # what it was sent, then a status line that counts the rest as lost
            status = stuck.lines()[-1]
            if status["nodes"]["n1"]["lost"] == dropped:  # type: ignore[index]
                break
        assert status["nodes"]["n1"]["recorded"] == 4000  # type: ignore[index]
        stuck.sock.close()
        reader.sock.close()
    finally:
        running.close()


@pytest.mark.parametrize(
    ("request_line", "message"),
    [
        (b"hello\n", "not JSON"),
        (b"[1]\n", "not a JSON object"),
        (b'{"since": "yesterday"}\n', "since:"),
        (b'{"follow": 1}\n', "follow:"),
        (b'{"sinse": 1}\n', "sinse: not a field"),
    ],
)
def test_a_bad_request_is_answered_with_what_to_send(running: Running, request_line: bytes, message: str) -> None:
    with Client(running.path, request_line) as c:
        got = c.lines(until="error")
    assert message in str(got[-1]["error"])
