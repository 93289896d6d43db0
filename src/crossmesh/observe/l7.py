"""HTTP flow records: what a node's L7 proxy saw of each request, and how it becomes a flow record.

The kernel's log rules see a connection, not the requests in it: a connection redirected to the
node's L7 proxy is one `new` record, whatever the requests it carries. The proxy (the lab's
service daemon, drivers/lab/servicesd.py) is the witness of each request — it read the method
and path, asked the policy evaluator, answered 403 or forwarded, and read the backend's status —
so it reports each request as an `HttpEvent` (one JSON datagram, `encode`) to the flow daemon,
which names its ends from the plan (`to_flow`) and records it in the ring of the proxy's node.

The proxy decides with the request's headers, which the flow daemon does not have: so the proxy
also says which policy and rule decided (`judge`, by the evaluator `crossmesh policy trace` uses),
and the flow daemon keeps that rather than deciding again.

The datagram socket is a file in a folder and the flow daemon trusts nothing read from it:
`decode` caps the size and checks every field as `Flow.from_json` does, ValueError naming the
field when anything is off (the daemon counts those and drops them).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, NamedTuple

from crossmesh.observe.enrich import Directory, Enriched, deciding, policy_match, summary
from crossmesh.observe.flows import MAX_TEXT, DropReason, Flow, Http, Verdict, _num, _obj, _port, _str, outcome
from crossmesh.policy.evaluator import Reason
from crossmesh.policy.evaluator import Verdict as PolicyVerdict

MAX_DATAGRAM = 8192  # bytes: an event is well under 3 KiB (method and path are capped on both sides)
MAX_METHOD = 32
VERSION = 1
L7_MATCH = "l7/http"  # Hubble's policy-verdict `match` of a decision on an HTTP request
_METHOD = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an HTTP token (RFC 9110 §5.6.2)
_STATUS_LINE = re.compile(rb"^HTTP/\d(?:\.\d)? ([1-9]\d\d)(?: |\r|$)")
_DIRECTIONS = ("", "egress", "ingress")


class Judgement(NamedTuple):
    """What the evaluator said of one request, as a flow record carries it."""

    verdict: Verdict
    reason: DropReason
    direction: str  # the policy direction that decided (egress / ingress)
    policy: str
    rule: str
    match: str  # Hubble's policy match: l7/http when an HTTP rule decided


@dataclass(frozen=True, slots=True)
class HttpEvent:
    """One HTTP request a node's L7 proxy handled: its ends (before the proxy), the request line,
    the status the client got (403 from the proxy, the backend's, 0 for none) and the judgement."""

    time: float
    node: str  # the node whose proxy handled it
    source: str
    source_port: int
    destination: str  # where the client sent it (the proxy is transparent)
    destination_port: int
    method: str
    path: str
    status: int
    verdict: Verdict
    drop_reason: DropReason = DropReason.NONE
    direction: str = ""
    policy: str = ""
    rule: str = ""
    match: str = "none"


def judge(verdict: PolicyVerdict) -> Judgement:
    """The flow record's verdict of a request the evaluator judged: when denied, the side that
    denies (egress first, as the request leaves there first) with `policy trace`'s policy and rule —
    a deny rule is POLICY_DENY, a default deny or no HTTP rule matching is POLICY_DENIED; when
    allowed, the side whose HTTP rule admitted it (ingress unless only the egress filters HTTP)."""
    if not verdict.allowed:
        side = verdict.egress if not verdict.egress.allowed else verdict.ingress
        reason = DropReason.POLICY_DENY if side.reason is Reason.DENIED else DropReason.POLICY_DENIED
        policy, rule = deciding(side)
        match = L7_MATCH if side.reason is Reason.L7_DENIED else policy_match(side)
        return Judgement(Verdict.DROPPED, reason, side.direction.value, policy, rule, match)
    side = verdict.ingress
    if not verdict.ingress.http_rules and verdict.egress.http_rules:
        side = verdict.egress
    policy, rule = deciding(side)
    return Judgement(Verdict.FORWARDED, DropReason.NONE, side.direction.value, policy, rule, policy_match(side))


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters (a request's path is the client's to choose)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def response_status(data: bytes) -> int:
    """The status code of an HTTP response that starts `data` (`HTTP/1.1 200 OK`), 0 if it is none."""
    m = _STATUS_LINE.match(data)
    return int(m.group(1)) if m else 0


def encode(event: HttpEvent) -> bytes:
    """The datagram the proxy sends (method and path clipped so that it fits)."""
    data = dataclasses.asdict(event)
    data["method"] = clip(event.method, MAX_METHOD)
    data["path"] = clip(event.path)
    data["v"] = VERSION
    return json.dumps(data, separators=(",", ":")).encode()


def decode(data: bytes) -> HttpEvent:
    """An event from a datagram; ValueError naming what is wrong with it."""
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"a datagram of {len(data)} bytes or more (at most {MAX_DATAGRAM})")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"not JSON: {str(err)[:80]}") from None
    d = _obj(raw, "event")
    if d.get("v") != VERSION:
        raise ValueError(f"v: version {str(d.get('v'))[:20]}, this flow daemon reads {VERSION}")
    verdict, reason = outcome(d)
    method = _str(d, "method")
    if len(method) > MAX_METHOD or not _METHOD.match(method):
        raise ValueError(f"method: {method[:40]!r} is not an HTTP method")
    status = _port(d, "status")
    if status and not 100 <= status <= 999:
        raise ValueError(f"status: {status} is not an HTTP status")
    direction = _str(d, "direction", "")
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction: {direction[:20]!r} is not egress or ingress")
    return HttpEvent(
        time=_num(d, "time"),
        node=_str(d, "node"),
        source=_address(d, "source"),
        source_port=_port(d, "source_port"),
        destination=_address(d, "destination"),
        destination_port=_port(d, "destination_port"),
        method=method,
        path=_str(d, "path"),
        status=status,
        verdict=verdict,
        drop_reason=reason,
        direction=direction,
        policy=_str(d, "policy", ""),
        rule=_str(d, "rule", ""),
        match=_str(d, "match", "none")[:20],
    )


def _address(d: dict[str, Any], key: str) -> str:
    value = _str(d, key)
    try:
        IPv4Address(value)
    except ValueError:
        raise ValueError(f"{key}: {value[:40]!r} is not an IPv4 address") from None
    return value


def to_flow(event: HttpEvent, directory: Directory) -> Enriched:
    """The flow record of one HTTP request: its ends named from the plan, as the node saw them."""
    flow = Flow(
        time=event.time,
        node=event.node,
        verdict=event.verdict,
        protocol="TCP",
        source=directory.flow_endpoint(IPv4Address(event.source), event.node),
        destination=directory.flow_endpoint(IPv4Address(event.destination), event.node),
        source_port=event.source_port,
        destination_port=event.destination_port,
        drop_reason=event.drop_reason,
        direction=event.direction,
        policy=event.policy,
        rule=event.rule,
        http=Http(event.method, event.path, event.status),
    )
    note = "the node's L7 proxy answered 403" if event.status == 403 and event.verdict is Verdict.DROPPED else ""
    return Enriched(dataclasses.replace(flow, summary=summary(flow, note)), event.match)
