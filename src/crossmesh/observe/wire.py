"""The flow relay's line protocol, both ways: the one codec of the flow daemon, `observe` and the UI.

A reader connects to `<lab dir>/flows.sock` and sends one JSON line,
`{"since": <epoch seconds or null>, "follow": <bool>}`. The relay answers JSON lines:
`{"flow": <Flow>}` for every buffered record with time >= since, merged in time order; one status
line `{"nodes": {"<node>": {"recorded": n, "lost": n, "evicted": n, "error": "<text>"}}}`; and, when
following, further flow lines as they come with a status line every second, until the reader
closes. A request the relay cannot read is answered `{"error": "…"}` and the connection closed.

Both ends read the other's bytes as untrusted input — a size cap, JSON, then each field checked:
the relay with `parse_request` (a ValueError naming the field and what to send), a reader with a
`Decoder`, which splits the stream into lines, skips a line over `MAX_LINE` whole without holding
it, and turns each line into a `Flow`, a `Status` or a `Malformed` saying why (a reader counts
those and reads on: one bad line never stops the stream). Pure: no socket here; the relay
(drivers/lab/flowrelay.py) and its readers (drivers/lab/relay_client.py, ui/relay.py) do the I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crossmesh.observe.flows import Flow

MAX_REQUEST = 4096  # bytes of the request line
MAX_LINE = 64 * 1024  # bytes of an answer line: a flow is well under 4 KiB (text fields are capped at 1 KiB)
MAX_NODES = 4096  # in one status line
MAX_ERROR = 1024  # characters of a node's error text kept

# --- the request ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """Flows from `since` (None: all the relay holds), then new ones as they come if `follow`."""

    since: float | None = None
    follow: bool = False


def request_line(request: Request) -> bytes:
    return _line({"since": request.since, "follow": request.follow})


def parse_request(line: bytes) -> Request:
    """The reader's request; ValueError naming the field and what to send instead."""
    if len(line) > MAX_REQUEST:
        raise ValueError(f"the request is longer than {MAX_REQUEST} bytes: send one short JSON line")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        raise ValueError('the request is not JSON: send {"since": null, "follow": false}') from None
    if not isinstance(data, dict):
        raise ValueError('the request is not a JSON object: send {"since": null, "follow": false}')
    unknown = sorted(set(data) - {"since", "follow"})
    if unknown:
        raise ValueError(f"{unknown[0]}: not a field of the request (since, follow)")
    since = data.get("since")
    if since is not None and (
        isinstance(since, bool) or not isinstance(since, int | float) or not math.isfinite(since)
    ):
        raise ValueError(f"since: {json.dumps(since)[:40]} is not a number of seconds since the epoch, nor null")
    follow = data.get("follow", False)
    if not isinstance(follow, bool):
        raise ValueError(f"follow: {json.dumps(follow)[:40]} is not true or false")
    return Request(None if since is None else float(since), follow)


# --- the answer ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node's flows as the relay counts them (its ring's own account): recorded (ever), lost (the
    kernel dropped them before they were read: NFLOG's queue was full; or the relay dropped them for
    a reader too slow to take them), evicted (pushed out of the node's ring by newer ones), and why
    the node's flows cannot be read ("": they can)."""

    recorded: int = 0
    lost: int = 0
    error: str = ""
    evicted: int = 0

    def to_json(self) -> dict[str, int | str]:
        return {"recorded": self.recorded, "lost": self.lost, "evicted": self.evicted, "error": self.error}


@dataclass(frozen=True, slots=True)
class Status:
    """The relay's status line: each node's NodeStatus, by node name (sorted)."""

    nodes: dict[str, NodeStatus]


@dataclass(frozen=True, slots=True)
class Malformed:
    """A line the relay sent that is neither a flow nor a status, and why."""

    reason: str


FLOW_START = b'{"flow":'
"""How every flow line `flow_line` writes begins (a reader may set such lines aside undecoded)."""


def flow_line(flow: Flow) -> bytes:
    return _line({"flow": flow.to_json()})


def status_line(nodes: Mapping[str, NodeStatus]) -> bytes:
    return _line({"nodes": {name: status.to_json() for name, status in sorted(nodes.items())}})


def error_line(message: str) -> bytes:
    return _line({"error": message})


def decode_line(line: bytes) -> Flow | Status:
    """A line the relay sent (without its newline) as a Flow or a Status; ValueError saying what is
    wrong with it otherwise (a refused request included)."""
    if len(line) > MAX_LINE:
        raise ValueError(f"a line of {len(line)} bytes (at most {MAX_LINE})")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"not JSON: {str(err)[:80]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected an object, got {type(data).__name__}")
    if "flow" in data and len(data) == 1:
        try:
            return Flow.from_json(data["flow"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"flow: {str(err)[:200]}") from None
    if "nodes" in data and len(data) == 1:
        return Status(_nodes(data["nodes"]))
    if "error" in data and len(data) == 1:
        raise ValueError(f"the relay refused the request: {str(data['error'])[:MAX_ERROR]}")
    keys = ", ".join(sorted(repr(str(k)[:20]) for k in data)[:5])
    raise ValueError(f'neither {{"flow": …}} nor {{"nodes": …}} (keys: {keys})')


class Decoder:
    """The relay's byte stream as flows, statuses and malformed lines, fed as it arrives.

    A line is at most `max_line` bytes: a longer one is one `Malformed`, and its bytes are dropped as
    they come, up to its newline, never held. `feed` each chunk received; `end` once the relay has
    closed, for a last line without its newline."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = b""
        self._overlong = False  # inside a line already judged too long

    def feed(self, chunk: bytes) -> list[Flow | Status | Malformed]:
        return [line if isinstance(line, Malformed) else self.decode(line) for line in self.lines(chunk)]

    def lines(self, chunk: bytes) -> list[bytes | Malformed]:
        """The whole lines `chunk` completes, not yet decoded (a reader that keeps only some of them
        decodes those alone, with `decode`); a line over `max_line` is a `Malformed` already."""
        out: list[bytes | Malformed] = []
        buf = self._buf + chunk
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line, start = buf[start:end], end + 1
            if self._overlong:
                self._overlong = False  # the end of the line skipped
            elif len(line) > self.max_line:
                out.append(self._too_long())
            else:
                out.append(line)
        self._buf = buf[start:]
        if not self._overlong and len(self._buf) > self.max_line:
            out.append(self._too_long())
            self._overlong = True
        if self._overlong:
            self._buf = b""
        return out

    def end(self) -> list[Flow | Status | Malformed]:
        line, self._buf = self._buf, b""
        return [self.decode(line)] if line and not self._overlong else []

    def _too_long(self) -> Malformed:
        return Malformed(f"a line over {self.max_line} bytes")

    @staticmethod
    def decode(line: bytes) -> Flow | Status | Malformed:
        """One line (without its newline) as what it is, or why it is not."""
        try:
            return decode_line(line)
        except ValueError as err:
            return Malformed(str(err))


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def _nodes(value: object) -> dict[str, NodeStatus]:
    if not isinstance(value, dict):
        raise ValueError(f"nodes: expected an object, got {type(value).__name__}")
    if len(value) > MAX_NODES:
        raise ValueError(f"nodes: {len(value)} nodes (at most {MAX_NODES})")
    nodes = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= 253:
            raise ValueError(f"nodes: a node name {str(name)[:40]!r} of 1-253 characters expected")
        nodes[name] = _node(name, entry)
    return dict(sorted(nodes.items()))


def _node(name: str, entry: Any) -> NodeStatus:
    where = f"nodes[{name[:40]!r}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    counts = []
    for key in ("recorded", "lost", "evicted"):
        n = entry.get(key, 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{where}.{key}: expected a non-negative integer, got {str(n)[:20]!r}")
        counts.append(n)
    error = entry.get("error", "")
    if not isinstance(error, str):
        raise ValueError(f"{where}.error: expected a string, got {type(error).__name__}")
    return NodeStatus(recorded=counts[0], lost=counts[1], error=error[:MAX_ERROR], evicted=counts[2])
