"""The flow daemon's relay: every node's ring buffer served on one Unix socket (protocol: observe/wire.py).

One asyncio loop owns the rings and the clients; the node readers, on their own threads, hand
their records over with `submit` (thread-safe). Each record is encoded once, when it arrives:
the rings keep its time and its line, and every answer (the buffered records of a request, each
following client's queue) writes those lines — a reader asking for full rings (30 nodes × 4096
records) costs the daemon a copy of bytes, not 120,000 encodings (at ~1.2 KB a record, full
rings hold ~170 MB). A client that does not read fast enough never holds the daemon up: its
queue is bounded, what does not fit is dropped for that client alone and counted, and that
client's status lines show it in the nodes' `lost`, so it knows its stream has holes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from crossmesh.observe import wire
from crossmesh.observe.flows import Flow
from crossmesh.observe.ring import DEFAULT_CAPACITY, Ring, merged

CLIENT_QUEUE = 16384  # lines queued to one following client before its records are dropped
STATUS_EVERY = 1.0  # seconds between status lines to a following client
REQUEST_TIMEOUT = 10.0
WRITE_CHUNK = 512  # lines written between drains while sending the buffered records


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a ring keeps of a flow: its time (to answer `since`) and its encoded line."""

    time: float
    line: bytes

    def flow(self) -> Flow:
        """The record read back from its line."""
        flow = wire.decode_line(self.line.rstrip(b"\n"))
        if not isinstance(flow, Flow):  # not reached: the line was made by flow_line
            raise TypeError(f"a relay ring holds a line that is not a flow: {self.line[:80]!r}")
        return flow


def encoded(flows: list[Flow]) -> list[Recorded]:
    return [Recorded(f.time, wire.flow_line(f)) for f in flows]


@dataclass(eq=False)
class Client:
    queue: deque[tuple[str, bytes]] = field(default_factory=deque)  # (node, line)
    dropped: dict[str, int] = field(default_factory=dict)  # node → lines dropped for this client
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Relay:
    def __init__(
        self,
        nodes: Iterable[str],
        capacity: int = DEFAULT_CAPACITY,
        queue: int = CLIENT_QUEUE,
        *,
        on_evicted: Callable[[str, int], None] | None = None,
    ) -> None:
        """`on_evicted(node, n)`: called in the loop when `n` of `node`'s records left its ring."""
        self.rings: dict[str, Ring[Recorded]] = {n: Ring(capacity) for n in nodes}
        self.on_evicted = on_evicted
        self.queue_limit = queue
        self.clients: set[Client] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.served = 0  # connections answered
        self.dropped = 0  # lines dropped for slow clients, all clients together

    # --- the node readers' side ------------------------------------------------------------------

    def submit(self, node: str, flows: list[Flow], lost: int = 0) -> None:
        """From any thread: `node`'s new records and how many the kernel lost. They are encoded
        here, on the reader's thread, so that the loop's share of a flood is appending lines: a
        reader's request is answered while 30 nodes' records pour in."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.add_recorded, node, encoded(flows), lost)

    def fail(self, node: str, error: str) -> None:
        """From any thread: why `node`'s records cannot be read ("" once they can again)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._set_error, node, error)

    def _set_error(self, node: str, error: str) -> None:
        self.rings[node].error = error

    def add(self, node: str, flows: list[Flow], lost: int = 0) -> None:
        """In the loop: records into `node`'s ring and to every following client."""
        self.add_recorded(node, encoded(flows), lost)

    def add_recorded(self, node: str, records: list[Recorded], lost: int = 0) -> None:
        """In the loop: `add` of records already encoded."""
        ring = self.rings[node]
        ring.add_lost(lost)
        evicted = ring.evicted
        ring.extend(records)
        if self.on_evicted is not None and ring.evicted > evicted:
            self.on_evicted(node, ring.evicted - evicted)
        if not self.clients or not records:
            return
        lines = [r.line for r in records]
        for client in self.clients:
            room = self.queue_limit - len(client.queue)
            if room < len(lines):
                missed = len(lines) - max(room, 0)
                client.dropped[node] = client.dropped.get(node, 0) + missed
                self.dropped += missed
            client.queue.extend((node, line) for line in lines[: max(room, 0)])
            client.wake.set()

    def statuses(self, client: Client | None = None) -> dict[str, wire.NodeStatus]:
        out = {}
        for node, ring in self.rings.items():
            status = ring.status()
            if client is not None and client.dropped.get(node):
                status = replace(status, lost=status.lost + client.dropped[node])
            out[node] = status
        return out

    # --- serving ---------------------------------------------------------------------------------

    async def serve(self, path: Path) -> asyncio.Server:
        """Listen on `path` (mode 0600; a stale socket there is replaced)."""
        self.loop = asyncio.get_running_loop()
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # no moment where others may connect: the file is made 0600
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        return await asyncio.start_unix_server(self.handle, sock=sock)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client: Client | None = None
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
                request = wire.parse_request(line)
            except (ValueError, asyncio.LimitOverrunError) as err:
                writer.write(wire.error_line(str(err)))
                await writer.drain()
                return
            self.served += 1
            # The buffered records and the registration in one step (no await between): nothing
            # recorded meanwhile is missed or sent twice.
            backlog = merged(self.rings, request.since)
            if request.follow:
                client = Client()
                self.clients.add(client)
            for i in range(0, len(backlog), WRITE_CHUNK):
                writer.writelines(r.line for r in backlog[i : i + WRITE_CHUNK])
                await writer.drain()
            writer.write(wire.status_line(self.statuses(client)))
            await writer.drain()
            if client is not None:
                await self._follow(client, reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            if client is not None:
                self.clients.discard(client)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _follow(self, client: Client, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        closed = asyncio.ensure_future(reader.read())  # b"" (or anything) once the reader is done
        next_status = loop.time() + STATUS_EVERY
        try:
            while not closed.done():
                waiter = asyncio.ensure_future(client.wake.wait())
                await asyncio.wait(
                    {waiter, closed}, timeout=max(0.0, next_status - loop.time()), return_when="FIRST_COMPLETED"
                )
                waiter.cancel()
                client.wake.clear()
                while client.queue:
                    batch = [client.queue.popleft()[1] for _ in range(min(WRITE_CHUNK, len(client.queue)))]
                    writer.writelines(batch)
                    await writer.drain()
                if loop.time() >= next_status:
                    writer.write(wire.status_line(self.statuses(client)))
                    await writer.drain()
                    next_status = loop.time() + STATUS_EVERY
        finally:
            closed.cancel()
