"""The gateway probes on loopback with real sockets (no root): the responder echoes what a probe is
and nothing else, a round counts only its own echoes, and nothing raises for a target that cannot be
reached. The lab tests prove the same across namespaces and tunnels."""

from __future__ import annotations

import asyncio
import queue
import socket
import time
from collections.abc import Iterator
from typing import cast

import pytest

from crossmesh.agent.probes import MAX_ECHO, Prober, Responder, run_in_namespace

HERE, NOBODY = "127.0.0.1", "127.0.0.2"  # the responder listens on the first only


@pytest.fixture
def port() -> Iterator[int]:
    """A responder on 127.0.0.1 running on its own thread (run_in_namespace, this namespace); its port."""
    ports: queue.Queue[int] = queue.Queue()

    async def serve() -> None:
        responder = await Responder.listen(host=HERE, port=0)
        ports.put(responder.port)
        try:
            await asyncio.Event().wait()
        finally:
            responder.close()

    running = run_in_namespace(None, serve)
    yield ports.get(timeout=2)
    running.stop()
    assert not running.thread.is_alive() and running.error is None


def client(host: str = HERE, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(1)
    return sock


def test_the_responder_echoes_a_probe_as_is_and_not_an_oversize_datagram(port: int) -> None:
    with client() as sock:
        sock.sendto(b"x" * (MAX_ECHO + 1), (HERE, port))
        sock.sendto(b"y" * MAX_ECHO, (HERE, port))
        assert sock.recvfrom(2048) == (b"y" * MAX_ECHO, (HERE, port))  # the first back is the second sent


def test_the_responder_never_answers_its_own_port(port: int) -> None:
    """A datagram forged from another responder's address would otherwise bounce between them for ever."""
    with client(NOBODY, port) as forged, client() as sock:
        forged.sendto(b"ping", (HERE, port))
        sock.sendto(b"pong", (HERE, port))
        assert sock.recvfrom(64)[0] == b"pong"  # answered in order: an echo of "ping" would be there by now
        forged.setblocking(False)
        with pytest.raises(BlockingIOError):
            forged.recvfrom(64)


def probe(port: int, targets: dict[str, str], timeout: float) -> tuple[dict[str, bool], float]:
    async def go() -> tuple[dict[str, bool], float]:
        prober = await Prober.open(host=HERE, port=port)
        try:
            started = time.monotonic()
            return await prober.round(targets, timeout), time.monotonic() - started
        finally:
            prober.close()

    return asyncio.run(go())


def test_a_round_returns_as_soon_as_every_target_answered(port: int) -> None:
    answered, took = probe(port, {"x": HERE, "y": HERE}, 1.0)
    assert answered == {"x": True, "y": True} and took < 0.5


def test_a_target_with_nothing_listening_is_lost_within_the_timeout(port: int) -> None:
    answered, took = probe(port, {"up": HERE, "down": NOBODY}, 0.2)
    assert answered == {"up": True, "down": False}
    assert 0.2 <= took < 0.5


def test_a_target_that_cannot_be_sent_to_is_lost_without_an_error(port: int) -> None:
    answered, _ = probe(port, {"broadcast": "255.255.255.255", "name": "localhost", "junk": "10.0.0.300"}, 0.05)
    assert answered == {"broadcast": False, "name": False, "junk": False}


def test_an_empty_round_answers_at_once(port: int) -> None:
    assert probe(port, {}, 5.0)[0] == {}


class Slow(asyncio.DatagramProtocol):
    """Echoes the first datagram after `delay` seconds, and no other."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.sent: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.sent:
            self.sent.append(0.0)
            asyncio.get_running_loop().call_later(self.delay, self.echo, data, addr)

    def echo(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent[0] = time.monotonic()
        self.transport.sendto(data, addr)


def test_a_late_echo_of_an_earlier_round_does_not_count() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        transport, slow = await loop.create_datagram_endpoint(lambda: Slow(0.1), local_addr=(HERE, 0))
        prober = await Prober.open(host=HERE, port=transport.get_extra_info("sockname")[1])
        try:
            assert await prober.round({"gw": HERE}, 0.05) == {"gw": False}
            assert await prober.round({"gw": HERE}, 0.2) == {"gw": False}
            ended = time.monotonic()
        finally:
            prober.close()
            transport.close()
        assert 0 < slow.sent[0] < ended  # the first round's echo came during the second

    asyncio.run(go())


def test_rounds_may_overlap(port: int) -> None:
    async def go() -> list[dict[str, bool]]:
        prober = await Prober.open(host=HERE, port=port)
        try:
            return list(await asyncio.gather(prober.round({"a": HERE}, 1.0), prober.round({"b": HERE}, 1.0)))
        finally:
            prober.close()

    assert asyncio.run(go()) == [{"a": True}, {"b": True}]


def test_a_namespace_that_cannot_be_entered_is_refused_in_the_caller() -> None:
    with pytest.raises(OSError):
        run_in_namespace("cm-no-such-namespace-here", asyncio.Event().wait)


def test_what_the_coroutine_raised_is_kept() -> None:
    async def fail() -> None:
        raise RuntimeError("probe loop failed")

    running = run_in_namespace(None, fail)
    running.thread.join(2)
    running.stop()  # after the end: nothing to cancel
    assert isinstance(running.error, RuntimeError) and str(running.error) == "probe loop failed"
