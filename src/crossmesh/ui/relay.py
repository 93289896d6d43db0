"""The UI's reader of the lab's flow relay: one follow-mode connection shared by every open page.

The relay (`<lab dir>/flows.sock`, protocol and its codec in observe/wire.py) answers one JSON
request line with `{"flow": …}` lines and `{"nodes": …}` status lines. This reader keeps the
newest flows for pages that open later, hands every message to each page's queue, and when the
relay goes away says so and dials again, asking only for flows newer than the last it saw.
Only the asynchronous transport is here: every line is judged by the protocol's `Decoder` (size
cap, JSON, each field checked) before a page sees it, as `crossmesh observe` judges it — the
socket is a file in a folder, and its lines are not trusted. A page that reads too slowly loses
flows (counted), never the reader.

The relay's history (what it answers before its first status line: the last five minutes, up to
30 nodes × 4096 records on a busy lab) is only the backdrop of a page: of its flow lines the hub
keeps the newest `KEEP` undecoded and judges those alone when the history ends, rather than
decoding 120,000 records in the server's loop while a page is asking for the topology. A bad line
among the skipped older ones is then not counted in `rejected` — nothing of it reached a page.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from pathlib import Path
from typing import Any

from crossmesh.observe.flows import Flow
from crossmesh.observe.wire import FLOW_START, Decoder, Malformed, Request, Status, request_line

KEEP = 500  # flows kept for a page that opens now
SINCE = 300.0  # seconds of history asked for at the first connection
QUEUE = 1000  # messages waiting for one page before it loses some
CHUNK = 65536  # bytes read from the relay at once


class FlowHub:
    def __init__(self, path: Path | None, *, keep: int = KEEP, since: float = SINCE) -> None:
        self.path = path
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self.since = since
        self.nodes: dict[str, Any] = {}
        self.state = "none" if path is None else "connecting"
        self.error = "" if path is not None else "no relay: not reading a lab"
        self.rejected = 0  # lines that were not valid messages
        self.decoder = Decoder()
        self.last_time: float | None = None  # of the newest flow seen
        self.resume: float | None = None  # while the relay resends its history after a redial: last_time
        self.history: deque[bytes] | None = None  # while the relay sends its history: its newest flow lines
        self.pages: dict[asyncio.Queue[dict[str, Any]], int] = {}  # queue → flows it lost

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "error": self.error,
            "socket": "" if self.path is None else str(self.path),
            "rejected": self.rejected,
            "nodes": self.nodes,
        }

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)
        self.pages[q] = 0
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self.pages.pop(q, None)

    def _send(self, message: dict[str, Any]) -> None:
        for q in list(self.pages):
            try:
                q.put_nowait(message)
            except asyncio.QueueFull:
                self.pages[q] += 1

    def _set_state(self, state: str, error: str = "") -> None:
        if (state, error) != (self.state, self.error):
            self.state, self.error = state, error
            self._send({"relay": self.status()})

    async def run(self) -> None:
        """Read the relay until cancelled, dialling again a second (up to five) after it goes away."""
        if self.path is None:
            return
        delay = 1.0
        while True:
            try:
                await self._follow(self.path)
                self._set_state("unreachable", "the relay closed the connection")
            except (OSError, ValueError, asyncio.IncompleteReadError) as err:
                self._set_state("unreachable", f"{self.path}: {getattr(err, 'strerror', None) or err}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _follow(self, path: Path) -> None:
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            since = time.time() - self.since if self.last_time is None else self.last_time
            writer.write(request_line(Request(since, follow=True)))
            await writer.drain()
            self._set_state("connected")
            self.decoder, self.resume = Decoder(), self.last_time
            self.history = deque(maxlen=self.recent.maxlen)
            while chunk := await reader.read(CHUNK):
                self.take(chunk)
        finally:
            self._end_history()  # a relay that closed before its status line: show what it sent
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def take(self, chunk: bytes) -> None:
        """Bytes from the relay: each whole line a flow or a status for the pages; a line that is
        neither is counted and skipped. During the history, flow lines are set aside (the newest
        `KEEP`) and judged when it ends."""
        for line in self.decoder.lines(chunk):
            if isinstance(line, Malformed):
                self.rejected += 1
            elif self.history is not None and line.startswith(FLOW_START):
                self.history.append(line)
            else:
                self._item(Decoder.decode(line))

    def _end_history(self) -> None:
        history, self.history = self.history, None
        for line in history or ():
            self._item(Decoder.decode(line))

    def _item(self, item: Flow | Status | Malformed) -> None:
        if isinstance(item, Malformed):
            self.rejected += 1
        elif isinstance(item, Status):
            self._end_history()
            self.resume = None  # the history is over: every flow from here on is new
            self.nodes = {name: node.to_json() for name, node in item.nodes.items()}
            self._send({"nodes": self.nodes})
        else:
            data = item.to_json()
            if self.resume is not None and (
                item.time < self.resume or (item.time == self.resume and data in self.recent)
            ):
                return  # seen before the relay was dialled again
            self.last_time = max(item.time, self.last_time or item.time)
            self.recent.append(data)
            self._send({"flow": data})
