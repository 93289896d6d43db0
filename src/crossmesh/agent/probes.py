"""The probes by which a gateway agent sees whether its site's active gateway forwards (issue 16):
every gateway answers UDP echo on PROBE_PORT, and a standby sends one datagram per target a round.

A round's datagrams carry a fresh random token and a sequence number, and only an echo of one of
them counts: an echo that arrives after its round timed out (a path that came back, a queue that
drained) must not make the next round look healthy. Echoes are matched by payload, not by source
address: a responder bound to 0.0.0.0 answers from whatever address its route picks.

Network errors never raise: an unreachable target is one that did not answer. The sockets are
opened on the loop's thread, so `run_in_namespace` puts both ends in a lab node's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, cast

from crossmesh.drivers.lab import netns

PROBE_PORT = 4793
MAX_ECHO = 64  # bytes: a probe is 24; anything larger is not one and is not sent back
ANY = "0.0.0.0"

_SEQ = struct.Struct("!Q")
Address = tuple[str, int]


class Responder(asyncio.DatagramProtocol):
    """UDP echo for probes: every datagram up to MAX_ECHO bytes goes back as it came.

    Never to its own port: two responders made to answer each other (a datagram forged from one to
    the other) would echo it back and forth for ever."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    @classmethod
    async def listen(cls, *, host: str = ANY, port: int = PROBE_PORT) -> Responder:
        """A responder bound to host:port (port 0: any free one, then in `.port`)."""
        _, responder = await asyncio.get_running_loop().create_datagram_endpoint(cls, local_addr=(host, port))
        return responder

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # asyncio.DatagramTransport in all but class
        self.port = self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if len(data) <= MAX_ECHO and addr[1] not in (0, self.port) and self.transport is not None:
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an echo that could not go out: the prober counts it lost

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def respond_forever(*, host: str = ANY, port: int = PROBE_PORT) -> None:
    """Answer probes until cancelled (what a gateway's agent runs, in its namespace)."""
    responder = await Responder.listen(host=host, port=port)
    try:
        await asyncio.Event().wait()
    finally:
        responder.close()


@dataclass(slots=True)
class _Round:
    answered: dict[str, bool]
    waiting: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Prober(asyncio.DatagramProtocol):
    """Sends a round of probes from one UDP socket and counts the echoes that belong to it."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.port = PROBE_PORT  # where the targets answer
        self._expected: dict[bytes, tuple[_Round, str]] = {}  # payload → its round and target key
        self._seq = 0

    @classmethod
    async def open(cls, *, host: str = ANY, port: int = PROBE_PORT) -> Prober:
        """A prober sending from a free port of `host` to targets' `port`."""
        _, prober = await asyncio.get_running_loop().create_datagram_endpoint(cls, local_addr=(host, 0))
        prober.port = port
        return prober

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        hit = self._expected.pop(data, None)
        if hit is None:
            return  # a late echo of a round that timed out, or not a probe
        current, key = hit
        current.answered[key] = True
        current.waiting -= 1
        if current.waiting == 0:
            current.done.set()

    def error_received(self, exc: Exception) -> None:
        pass  # no route, refused by a firewall, ICMP unreachable: the target does not answer

    async def round(self, targets: Mapping[str, str], timeout: float) -> dict[str, bool]:
        """One datagram to each target (key → IPv4 address), then up to `timeout` seconds for the
        echoes: key → answered. Rounds may overlap."""
        current = _Round(answered=dict.fromkeys(targets, False), waiting=len(targets))
        token = secrets.token_bytes(16)
        payloads = []
        for key, target in targets.items():
            self._seq += 1
            payload = token + _SEQ.pack(self._seq)
            payloads.append(payload)
            self._expected[payload] = (current, key)
            self._send(payload, target)
        try:
            if targets:
                await asyncio.wait_for(current.done.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            for payload in payloads:
                self._expected.pop(payload, None)
        return current.answered

    def _send(self, payload: bytes, target: str) -> None:
        try:
            address = str(IPv4Address(target))  # never a name: resolving one would block the loop
        except ValueError:
            return  # not an address: it does not answer
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(payload, (address, self.port))  # errors go to error_received

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Background:
    """An asyncio loop on a daemon thread (in a network namespace) running one coroutine."""

    def __init__(self, thread: threading.Thread, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self.thread = thread
        self._loop = loop
        self.task = task
        self.error: BaseException | None = None  # what the coroutine raised, once it ended (not `stop`)

    def stop(self, timeout: float = 2.0) -> None:
        """Cancel the coroutine and wait up to `timeout` seconds for the thread to end."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the coroutine ended by itself
            self._loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout)


def run_in_namespace(namespace: str | None, coro_factory: Callable[[], Coroutine[Any, Any, Any]]) -> Background:
    """Run `coro_factory()` on a new daemon thread inside `namespace` (None: this one), on a loop of
    its own: every socket it opens is in that namespace (netns.enter moves only that thread).
    Returns once the loop runs it; a namespace that cannot be entered (missing, no privilege) raises
    OSError here."""
    started = threading.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            if namespace is not None:
                netns.enter(namespace)
            loop = asyncio.new_event_loop()
        except BaseException as err:  # noqa: BLE001 - raised in the caller's thread
            box["error"] = err
            started.set()
            return

        async def main() -> Any:
            return await coro_factory()  # made here: what it opens, it opens in the namespace

        box["running"] = running = Background(threading.current_thread(), loop, loop.create_task(main()))
        started.set()
        _run(loop, running)

    thread = threading.Thread(target=target, name=f"probes-{namespace or 'here'}", daemon=True)
    thread.start()
    started.wait()
    if "error" in box:
        raise box["error"]
    running: Background = box["running"]
    return running


def _run(loop: asyncio.AbstractEventLoop, running: Background) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(running.task)
    except asyncio.CancelledError:
        pass
    except BaseException as err:  # noqa: BLE001 - kept for the caller
        running.error = err
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
