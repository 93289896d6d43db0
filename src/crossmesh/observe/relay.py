"""The relay protocol: what a reader of the lab's flows sends and receives, as bytes.

A reader connects to `<lab dir>/flows.sock` and sends one JSON line,
`{"since": <epoch seconds or null>, "follow": <bool>}`. The relay answers JSON lines:
`{"flow": …}` for every buffered record with time >= since, in time order; one status line
`{"nodes": {"<node>": {"recorded": …, "lost": …, "evicted": …, "error": "…"}}}`; and, when
following, further flow lines as they come with a status line every second, until the reader
closes. A request the relay cannot read is answered `{"error": "…"}` and the connection closed.

Pure: the daemon (drivers/lab/flowsd.py) and its readers both build and read lines here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crossmesh.observe.flows import Flow
from crossmesh.observe.ring import RingStatus

MAX_REQUEST = 4096  # bytes of the request line


@dataclass(frozen=True, slots=True)
class Request:
    since: float | None = None
    follow: bool = False


def parse_request(line: bytes) -> Request:
    """The reader's request; ValueError naming the field and what to send instead."""
    if len(line) > MAX_REQUEST:
        raise ValueError(f"the request is longer than {MAX_REQUEST} bytes: send one short JSON line")
    try:
        data = json.loads(line)
    except ValueError:
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


def request_line(request: Request) -> bytes:
    return _line({"since": request.since, "follow": request.follow})


def flow_line(flow: Flow) -> bytes:
    return _line({"flow": flow.to_json()})


def status_line(nodes: Mapping[str, RingStatus]) -> bytes:
    return _line({"nodes": {name: status.to_json() for name, status in sorted(nodes.items())}})


def error_line(message: str) -> bytes:
    return _line({"error": message})


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"
