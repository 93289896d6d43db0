"""The flow relay's line protocol, as its readers see it: the request they send and the lines they read.

One JSON line goes to the relay: `{"since": <epoch seconds or null>, "follow": <bool>}`. JSON lines
come back: `{"flow": <Flow>}` for each record, merged in time order, and a status line
`{"nodes": {"<node>": {"recorded": n, "lost": n, "error": "<text>"}}}` (and `"evicted": n` where the
relay counts it) after the history and then
every second while following. The relay's socket is a file in a folder: every line read from it is
decoded here as untrusted input — a size cap, JSON, then each field checked — and a line that is
not one of the two shapes is a ValueError saying why, which a reader counts and skips (it never
stops reading the lines after it). Pure: no socket here, the driver (drivers/lab/relay_client.py)
does the reading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from crossmesh.observe.flows import Flow

MAX_LINE = 64 * 1024  # bytes: a flow is well under 4 KiB (every text field is capped at 1 KiB)
MAX_NODES = 4096  # in one status line
MAX_ERROR = 1024  # characters of a node's error text kept


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node's flows as its relay counts them: recorded (ever), lost (the kernel dropped them before
    they were read: NFLOG's queue was full), evicted (pushed out of the node's ring by newer ones), and
    why the node's flows could not be read ("": they could)."""

    recorded: int = 0
    lost: int = 0
    error: str = ""
    evicted: int = 0


@dataclass(frozen=True, slots=True)
class Status:
    """The relay's status line: each node's NodeStatus, by node name (sorted)."""

    nodes: dict[str, NodeStatus]


def request_line(*, since: float | None, follow: bool) -> bytes:
    """The one line a reader sends: flows from `since` (None: all the relay holds), then new ones if
    `follow`."""
    return json.dumps({"since": since, "follow": follow}).encode() + b"\n"


def decode_line(line: bytes) -> Flow | Status:
    """A line the relay sent (without its newline) as a Flow or a Status; ValueError saying what is
    wrong with it otherwise."""
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
    keys = ", ".join(sorted(repr(str(k)[:20]) for k in data)[:5])
    raise ValueError(f'neither {{"flow": …}} nor {{"nodes": …}} (keys: {keys})')


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
