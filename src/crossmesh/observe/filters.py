"""Which flows `crossmesh observe` shows: Hubble-style filters, parsed once and checked against the lab.

As in `hubble observe`, the values of one flag are alternatives (OR) and different flags must all
hold (AND): `--from a --from b --verdict DROPPED` shows the drops whose source is a or b. A flag
not given does not filter.

An endpoint (`--from`, `--to`) is written one of these ways:

    CLUSTER/NAMESPACE/POD   one pod                     cluster1/default/x-wing-0
    NAMESPACE/POD           that pod in any cluster     default/x-wing-0
    …/PREFIX*               pods whose name starts so   cluster1/default/x-wing-*   default/tie-*
    NODE                    a node (the node itself)    c1-n1
    NODE-PREFIX*            nodes whose name starts so  c1-*
    ADDRESS or CIDR         any end with that address   10.11.0.5   10.11.0.0/16
    world                   anything outside the mesh   world

A `*` may only end the last part. Names are checked against the lab's pods and nodes when they are
known (`Known`): a name that matches nothing is an error listing the close names — a typo would
otherwise show no flow at all and look like silence. `--port` matches either end's port or the port
of the service address the flow was sent to; `--namespace` either end's namespace; `--node` the node
that recorded the flow (`router/<site>`: what a site router's firewall dropped). `--since` and
`--until` take a duration back from now (`30s`, `5m`, `2h`, `1d`, `1h30m`) or an RFC 3339 / ISO 8601
time (`2024-05-01T12:00:00Z`; without an offset, in the time zone given, the user's own).

Pure: the clock (`now`) and the time zone are arguments.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import TypeVar

from crossmesh.observe.flows import ROUTER_PREFIX, Flow, FlowEndpoint, Verdict

T = TypeVar("T")
PROTOCOLS = ("TCP", "UDP", "ICMP", "SCTP")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?[smhd])+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_ADDRESSISH = re.compile(r"^[0-9.:/]+$")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # the start of a name: it may end in - or .
ENDPOINT_FORMS = "CLUSTER/NAMESPACE/POD, NAMESPACE/POD, a node name, an IPv4 address or CIDR, or world"


class FilterError(ValueError):
    """Filters that cannot be used; `problems` lists every one, each naming its option and the fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True)
class Known:
    """What the lab has, to check names against: pod refs CLUSTER/NAMESPACE/POD, node names, and
    the names its site routers' records carry (`router/<site>`, only for `--node`)."""

    pods: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()
    routers: frozenset[str] = frozenset()

    @property
    def namespaces(self) -> frozenset[str]:
        return frozenset(p.split("/")[1] for p in self.pods if p.count("/") == 2)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One `--from`/`--to` value: `kind` world, network, pod or node; for a pod, "" cluster means any
    cluster; `prefix`: the last part is a name prefix (it was written with a trailing `*`)."""

    text: str
    kind: str
    network: IPv4Network | None = None
    cluster: str = ""
    namespace: str = ""
    name: str = ""
    prefix: bool = False

    def matches(self, ep: FlowEndpoint) -> bool:
        if self.kind == "world":
            return ep.kind == "world"
        if self.kind == "network":
            return self.network is not None and _in(ep.address, self.network)
        if self.kind == "node":
            return ep.kind == "node" and self._name(ep.name)
        return (
            ep.kind == "pod"
            and (not self.cluster or ep.cluster == self.cluster)
            and ep.namespace == self.namespace
            and self._name(ep.name)
        )

    def matches_ref(self, ref: str) -> bool:
        """Whether a known pod ref CLUSTER/NAMESPACE/POD (kind pod) or node name (kind node) is meant."""
        if self.kind == "node":
            return self._name(ref)
        cluster, namespace, name = ref.split("/")
        return (not self.cluster or cluster == self.cluster) and namespace == self.namespace and self._name(name)

    def _name(self, name: str) -> bool:
        return name.startswith(self.name) if self.prefix else name == self.name


def _in(address: str, network: IPv4Network) -> bool:
    try:
        return IPv4Address(address) in network
    except ValueError:  # Flow.from_json checked it; a Flow made in code may still hold anything
        return False


@dataclass(frozen=True, slots=True)
class FlowFilter:
    """Parsed filters: each tuple is a flag's alternatives (empty: the flag was not given)."""

    sources: tuple[Endpoint, ...] = ()
    destinations: tuple[Endpoint, ...] = ()
    namespaces: tuple[str, ...] = ()
    verdicts: tuple[Verdict, ...] = ()
    ports: tuple[int, ...] = ()
    protocols: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None

    def matches(self, flow: Flow) -> bool:
        """Whether the flow passes every flag given (and one of each flag's values)."""
        if self.since is not None and flow.time < self.since:
            return False
        if self.until is not None and flow.time > self.until:
            return False
        if self.sources and not any(e.matches(flow.source) for e in self.sources):
            return False
        if self.destinations and not any(e.matches(flow.destination) for e in self.destinations):
            return False
        if self.namespaces and not (
            (flow.source.kind == "pod" and flow.source.namespace in self.namespaces)
            or (flow.destination.kind == "pod" and flow.destination.namespace in self.namespaces)
        ):
            return False
        if self.verdicts and flow.verdict not in self.verdicts:
            return False
        if self.ports and not (ports_of(flow) & set(self.ports)):
            return False
        if self.protocols and flow.protocol.upper() not in self.protocols:
            return False
        return not self.nodes or flow.node in self.nodes


def ports_of(flow: Flow) -> set[int]:
    """The ports `--port` looks at: either end's, and the port of the service address it was sent to."""
    ports = {flow.source_port, flow.destination_port}
    _, _, port = flow.service_address.rpartition(":")
    if port.isdigit():
        ports.add(int(port))
    ports.discard(0)
    return ports


def parse(
    *,
    sources: Iterable[str] = (),
    destinations: Iterable[str] = (),
    namespaces: Iterable[str] = (),
    verdicts: Iterable[str] = (),
    ports: Iterable[str] = (),
    protocols: Iterable[str] = (),
    nodes: Iterable[str] = (),
    since: str | None = None,
    until: str | None = None,
    now: float,
    tz: tzinfo,
    known: Known | None = None,
) -> FlowFilter:
    """The filter the command-line values describe; FilterError listing every problem otherwise.
    `known`: the lab's pods and nodes, which names must match (None: names are not checked)."""
    problems: list[str] = []

    def each(option: str, values: Iterable[str], parse_one: Callable[[str], T]) -> tuple[T, ...]:
        parsed: list[T] = []
        for v in dict.fromkeys(values):  # a value repeated is the same alternative
            try:
                parsed.append(parse_one(v))
            except ValueError as err:
                problems.append(f"{option} {v!r}: {err}")
        return tuple(parsed)

    srcs = each("--from", sources, lambda v: parse_endpoint(v, known))
    dsts = each("--to", destinations, lambda v: parse_endpoint(v, known))
    nss = each("--namespace", namespaces, lambda v: _namespace(v, known))
    vs = each("--verdict", verdicts, _verdict)
    ps = each("--port", ports, _port)
    protos = each("--protocol", protocols, _protocol)
    ns = each("--node", nodes, lambda v: _node(v, known))
    start = end = None
    if since is not None:
        try:
            start = parse_time(since, now=now, tz=tz)
        except ValueError as err:
            problems.append(f"--since {since!r}: {err}")
    if until is not None:
        try:
            end = parse_time(until, now=now, tz=tz)
        except ValueError as err:
            problems.append(f"--until {until!r}: {err}")
    if start is not None and end is not None and end < start:
        problems.append(f"--until {until!r} is before --since {since!r}: swap them")
    if problems:
        raise FilterError(problems)
    return FlowFilter(
        sources=srcs,
        destinations=dsts,
        namespaces=nss,
        verdicts=vs,
        ports=ps,
        protocols=protos,
        nodes=ns,
        since=start,
        until=end,
    )


def parse_endpoint(text: str, known: Known | None = None) -> Endpoint:
    """One `--from`/`--to` value (see the module's docstring); ValueError with the fix otherwise."""
    value = text.strip()
    if not value:
        raise ValueError(f"empty: write {ENDPOINT_FORMS}")
    if value.lower() == "world":
        return Endpoint(text=value, kind="world")
    if _ADDRESSISH.match(value) or ":" in value:
        try:
            network = ip_network(value, strict=False)
        except ValueError:
            raise ValueError("not an IPv4 address or CIDR (e.g. 10.11.0.5 or 10.11.0.0/16)") from None
        if not isinstance(network, IPv4Network):
            raise ValueError("the lab is IPv4 only: write an IPv4 address or CIDR")
        return Endpoint(text=value, kind="network", network=network)
    parts = value.split("/")
    if len(parts) > 3:
        raise ValueError(f"too many parts: write {ENDPOINT_FORMS}")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        name = part[:-1] if last and part.endswith("*") else part
        if "*" in name:
            raise ValueError("a `*` may only end the name, as a prefix: e.g. default/x-wing-*")
        prefix = last and part.endswith("*")
        if not part or (name and not (_PREFIX if prefix else _NAME).match(name)) or (not name and not last):
            raise ValueError(f"{part!r} is not a name: write {ENDPOINT_FORMS}")
    prefix = parts[-1].endswith("*")
    name = parts[-1].rstrip("*")
    if len(parts) == 1:
        ep = Endpoint(text=value, kind="node", name=name, prefix=prefix)
    else:
        cluster = parts[0] if len(parts) == 3 else ""
        ep = Endpoint(text=value, kind="pod", cluster=cluster, namespace=parts[-2], name=name, prefix=prefix)
    if known is not None:
        _check(ep, known)
    return ep


def _check(ep: Endpoint, known: Known) -> None:
    """ValueError when `ep` names nothing the lab has, with the closest names it does have."""
    if ep.kind == "node":
        if any(ep.matches_ref(n) for n in known.nodes):
            return
        pods = [p for p in known.pods if p.rsplit("/", 1)[-1].startswith(ep.name)]
        if pods and not ep.prefix:  # a pod's name written alone
            hint = f"; pods are written NAMESPACE/POD or CLUSTER/NAMESPACE/POD, e.g. {sorted(pods)[0]}"
            raise ValueError(f"the lab has no node {ep.name!r}{hint}")
        raise ValueError(f"the lab has no node {_what(ep)}{_suggest(ep.name, known.nodes, 'nodes')}")
    if any(ep.matches_ref(p) for p in known.pods):
        return
    if ep.text in known.routers:
        raise ValueError(f"{ep.text} is a site router, not an end of a flow: --node {ep.text} shows what it dropped")
    candidates = known.pods if ep.cluster else {p.split("/", 1)[1] for p in known.pods}
    typed = ep.text.rstrip("*")
    raise ValueError(f"the lab has no pod {_what(ep)}{_suggest(typed, candidates, 'pods')}")


def _what(ep: Endpoint) -> str:
    return f"whose name starts with {ep.text[:-1]!r}" if ep.prefix else repr(ep.text)


def _suggest(typed: str, candidates: Iterable[str], what: str) -> str:
    names = sorted(candidates)
    close = difflib.get_close_matches(typed, names, n=3, cutoff=0.6)
    if not close:
        close = [n for n in names if n.startswith(typed[: max(1, len(typed) // 2)])][:3]
    if close:
        return f" — did you mean {' or '.join(close)}?"
    if not names:
        return f" (it has no {what})"
    more = f", … ({len(names)} in all)" if len(names) > 5 else ""
    return f" (its {what}: {', '.join(names[:5])}{more})"


def _namespace(value: str, known: Known | None) -> str:
    if not _NAME.match(value):
        raise ValueError("not a namespace name (e.g. default)")
    if known is not None and value not in known.namespaces:
        hint = _suggest(value, known.namespaces, "namespaces")
        raise ValueError(f"no pod of the lab is in namespace {value!r}{hint}")
    return value


def _node(value: str, known: Known | None) -> str:
    site = value.removeprefix(ROUTER_PREFIX)
    if not _NAME.match(site):
        raise ValueError("not a node name (e.g. c1-n1, or router/SITE for a site router's firewall)")
    if known is not None and value not in known.nodes | known.routers:
        recorders = known.nodes | known.routers
        raise ValueError(f"the lab has no node {value!r}{_suggest(value, recorders, 'nodes and routers')}")
    return value


def _verdict(value: str) -> Verdict:
    try:
        return Verdict(value.strip().upper())
    except ValueError:
        raise ValueError("write FORWARDED or DROPPED (any case)") from None


def _port(value: str) -> int:
    text = value.strip()
    if "/" in text:
        number, _, proto = text.partition("/")
        raise ValueError(f"write the port alone and the protocol apart: --port {number} --protocol {proto.lower()}")
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError("expected a port number 1-65535, e.g. --port 80")
    return int(text)


def _protocol(value: str) -> str:
    proto = value.strip().upper()
    if proto not in PROTOCOLS:
        raise ValueError(f"write one of {', '.join(p.lower() for p in PROTOCOLS)}")
    return proto


def parse_time(text: str, *, now: float, tz: tzinfo) -> float:
    """Epoch seconds of a `--since`/`--until` value: a duration back from `now` or a timestamp."""
    value = text.strip()
    if _DURATION.match(value):
        return now - sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(value))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            "not a duration or a time: write a duration back from now (30s, 5m, 2h, 1d, 1h30m) or an "
            "RFC 3339 time (2024-05-01T12:00:00Z, 2024-05-01T14:00:00+02:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()
