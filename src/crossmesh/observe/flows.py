"""Flow records: one per new connection a node saw and one per packet it dropped, Hubble-style.

The lab's flow daemon builds them from what the kernel reports (nftables `log group` → NFLOG,
with the connection's conntrack tuple) and the lab's own knowledge of who owns an address; the
relay serves them as JSON lines; `crossmesh observe` and `crossmesh ui` read them. A record read
back from JSON is checked field by field (`from_json`): the relay's socket is a file in a folder,
and nothing read from one is trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from ipaddress import IPv4Address
from typing import Any


class Verdict(StrEnum):
    FORWARDED = "FORWARDED"
    DROPPED = "DROPPED"


class DropReason(StrEnum):
    """Why a packet was dropped (Hubble's drop reasons, where one fits)."""

    NONE = ""
    POLICY_DENIED = "POLICY_DENIED"  # default deny: the endpoint is selected, no rule allows the flow
    POLICY_DENY = "POLICY_DENY"  # an explicit deny rule matched
    NO_ROUTE = "NO_ROUTE"
    MTU = "FRAG_NEEDED"  # too big for the path, with DF set
    ANTI_SPOOFING = "INVALID_SOURCE_IP"
    NOT_ALLOWED_BY_FIREWALL = "FIREWALL_DENIED"  # a site router's inbound rules (the cloud's firewall)
    NO_BACKEND = "SERVICE_BACKEND_NOT_FOUND"  # a Service port with no healthy backend: rejected


@dataclass(frozen=True, slots=True)
class FlowEndpoint:
    """One end of a flow: a pod (cluster/namespace/pod with its identity labels), a node, or the world."""

    address: str
    kind: str = "world"  # pod, node, world
    cluster: str = ""
    namespace: str = ""
    name: str = ""  # pod or node name
    labels: dict[str, str] = field(default_factory=dict)
    identity: int = 2  # Cilium's numbers: 1 host, 2 world, 6 remote-node, 256 + n a pod identity

    @property
    def ref(self) -> str:
        """CLUSTER/NAMESPACE/POD for a pod, the node name for a node, the address for the world."""
        if self.kind == "pod":
            return f"{self.cluster}/{self.namespace}/{self.name}"
        return self.name or self.address

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "kind": self.kind,
            "cluster": self.cluster,
            "namespace": self.namespace,
            "name": self.name,
            "labels": dict(self.labels),
            "identity": self.identity,
        }


@dataclass(frozen=True, slots=True)
class Tunnel:
    """The WireGuard peer a flow left or arrived by."""

    peer: str  # node name
    site: str


@dataclass(frozen=True, slots=True)
class Http:
    method: str
    path: str
    status: int = 0


@dataclass(frozen=True, slots=True)
class Flow:
    time: float  # seconds since the epoch
    node: str  # the node that saw it, or `router/<site>` for a site router's firewall (router_node)
    verdict: Verdict
    protocol: str  # TCP, UDP, ICMP, SCTP
    source: FlowEndpoint
    destination: FlowEndpoint
    source_port: int = 0
    destination_port: int = 0
    drop_reason: DropReason = DropReason.NONE
    direction: str = ""  # egress / ingress: the policy direction that decided
    policy: str = ""  # the deciding policy, as `policy trace` names it
    rule: str = ""  # the deciding rule, as `policy trace` names it
    service: str = ""  # CLUSTER/NAMESPACE/NAME of the Service the flow was sent to, if any
    service_address: str = ""  # the address:port it was sent to (ClusterIP, NodePort)
    backend: str = ""  # the pod the service sent it to
    tunnel: Tunnel | None = None
    http: Http | None = None
    summary: str = ""  # one line, as `observe` prints it

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data, every field by name (what `dataclasses.asdict` gives, written
        out: the relay encodes every record it keeps, and asdict's deep copy was most of that)."""
        return {
            "time": self.time,
            "node": self.node,
            "verdict": self.verdict,
            "protocol": self.protocol,
            "source": self.source.to_json(),
            "destination": self.destination.to_json(),
            "source_port": self.source_port,
            "destination_port": self.destination_port,
            "drop_reason": self.drop_reason,
            "direction": self.direction,
            "policy": self.policy,
            "rule": self.rule,
            "service": self.service,
            "service_address": self.service_address,
            "backend": self.backend,
            "tunnel": None if self.tunnel is None else {"peer": self.tunnel.peer, "site": self.tunnel.site},
            "http": None
            if self.http is None
            else {"method": self.http.method, "path": self.http.path, "status": self.http.status},
            "summary": self.summary,
        }

    @classmethod
    def from_json(cls, data: object) -> Flow:
        """A flow from its JSON form; ValueError naming the field when anything is off."""
        d = _obj(data, "flow")
        quick = _quick(d)
        if quick is not None:
            return quick
        verdict, reason = outcome(d)
        tunnel = d.get("tunnel")
        http = d.get("http")
        return cls(
            time=_num(d, "time"),
            node=_str(d, "node"),
            verdict=verdict,
            protocol=_str(d, "protocol"),
            source=_endpoint(d.get("source"), "source"),
            destination=_endpoint(d.get("destination"), "destination"),
            source_port=_port(d, "source_port"),
            destination_port=_port(d, "destination_port"),
            drop_reason=reason,
            direction=_str(d, "direction", ""),
            policy=_str(d, "policy", ""),
            rule=_str(d, "rule", ""),
            service=_str(d, "service", ""),
            service_address=_str(d, "service_address", ""),
            backend=_str(d, "backend", ""),
            tunnel=None if tunnel is None else Tunnel(_str(_obj(tunnel, "tunnel"), "peer"), _str(tunnel, "site")),
            http=None
            if http is None
            else Http(_str(_obj(http, "http"), "method"), _str(http, "path"), _port(http, "status")),
            summary=_str(d, "summary", ""),
        )


ROUTER_PREFIX = "router/"


def outcome(d: dict[str, Any]) -> tuple[Verdict, DropReason]:
    """The `verdict` and `drop_reason` of a record or event read as JSON; ValueError naming the field."""
    try:
        verdict = Verdict(_str(d, "verdict"))
    except ValueError:
        raise ValueError(f"verdict: {str(d.get('verdict'))[:20]!r} is not FORWARDED or DROPPED") from None
    try:
        reason = DropReason(_str(d, "drop_reason", ""))
    except ValueError:
        raise ValueError(f"drop_reason: {str(d.get('drop_reason'))[:30]!r} is not a known reason") from None
    return verdict, reason


def router_node(site: str) -> str:
    """The name a site router's records carry as their `node`: `router/<site>`."""
    return ROUTER_PREFIX + site


MAX_TEXT = 1024


def _obj(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected an object, got {type(value).__name__}")
    return value


def _str(d: dict[str, Any], key: str, default: str | None = None) -> str:
    value = d.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{key}: longer than {MAX_TEXT} characters")
    return value


def _num(d: dict[str, Any], key: str) -> float:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number, got {type(value).__name__}")
    return float(value)


def _port(d: dict[str, Any], key: str) -> int:
    value = d.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{key}: expected an integer 0-65535, got {value!r}")
    return value


def _endpoint(value: object, name: str) -> FlowEndpoint:
    d = _obj(value, name)
    address = _str(d, "address")
    if not _is_ipv4(address):
        raise ValueError(f"{name}.address: {address[:40]!r} is not an IPv4 address")
    labels = _obj(d.get("labels", {}), f"{name}.labels")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ValueError(f"{name}.labels: keys and values must be strings")
    identity = d.get("identity", 2)
    if isinstance(identity, bool) or not isinstance(identity, int) or identity < 0:
        raise ValueError(f"{name}.identity: expected a non-negative integer, got {identity!r}")
    kind = _str(d, "kind", "world")
    if kind not in ("pod", "node", "world"):
        raise ValueError(f"{name}.kind: {kind[:20]!r} is not pod, node or world")
    return FlowEndpoint(
        address=address,
        kind=kind,
        cluster=_str(d, "cluster", ""),
        namespace=_str(d, "namespace", ""),
        name=_str(d, "name", ""),
        labels=dict(labels),
        identity=identity,
    )


@lru_cache(maxsize=4096)
def _is_ipv4(text: str) -> bool:
    """Whether `text` is an IPv4 address; remembered, as a stream of records repeats a lab's few
    hundred addresses (parsing each anew was a third of reading a record back)."""
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


# --- reading a record back quickly -----------------------------------------------------------------
# A reader of full rings reads 120,000 records at once (`observe --last`, the UI's first page), and
# checking each field with its own call was most of that time. `_quick` checks the usual shape in
# few steps and builds the record; anything unusual (a missing or odd field, an HTTP record, an
# integer time) makes it answer None, and `from_json`'s field-by-field check then reads the record
# or says what is wrong. It accepts only what that check accepts, and builds the same record.

_VERDICTS = {v.value: v for v in Verdict}
_REASONS = {r.value: r for r in DropReason}
_KINDS = frozenset(("pod", "node", "world"))


def _quick(d: dict[str, Any]) -> Flow | None:
    g: Callable[..., Any] = d.get  # JSON data: every value is checked below
    t, sport, dport, verdict, reason = (
        g("time"),
        g("source_port", 0),
        g("destination_port", 0),
        g("verdict"),
        g("drop_reason", ""),
    )
    if type(t) is not float or type(sport) is not int or type(dport) is not int or g("http") is not None:
        return None
    if not (0 <= sport <= 65535 and 0 <= dport <= 65535) or type(verdict) is not str or type(reason) is not str:
        return None
    texts = (
        g("node"),
        g("protocol"),
        g("direction", ""),
        g("policy", ""),
        g("rule", ""),
        g("service", ""),
        g("service_address", ""),
        g("backend", ""),
        g("summary", ""),
    )
    for text in texts:
        if type(text) is not str or len(text) > MAX_TEXT:
            return None
    tunnel = g("tunnel")
    if tunnel is not None:
        if type(tunnel) is not dict:
            return None
        peer, site = tunnel.get("peer"), tunnel.get("site")
        if type(peer) is not str or type(site) is not str or len(peer) > MAX_TEXT or len(site) > MAX_TEXT:
            return None
        tunnel = Tunnel(peer, site)
    source, destination = _quick_endpoint(g("source")), _quick_endpoint(g("destination"))
    v, r = _VERDICTS.get(verdict), _REASONS.get(reason)
    if source is None or destination is None or v is None or r is None:
        return None
    node, protocol, direction, policy, rule, service, service_address, backend, summary = texts
    return Flow(
        t,
        node,
        v,
        protocol,
        source,
        destination,
        sport,
        dport,
        r,
        direction,
        policy,
        rule,
        service,
        service_address,
        backend,
        tunnel,
        None,
        summary,
    )


def _quick_endpoint(e: object) -> FlowEndpoint | None:
    if type(e) is not dict:
        return None
    g: Callable[..., Any] = e.get
    address, kind, labels, identity = g("address"), g("kind", "world"), g("labels", {}), g("identity", 2)
    cluster, namespace, name = g("cluster", ""), g("namespace", ""), g("name", "")
    for text in (address, kind, cluster, namespace, name):
        if type(text) is not str or len(text) > MAX_TEXT:
            return None
    if kind not in _KINDS or type(identity) is not int or identity < 0 or type(labels) is not dict:
        return None
    for key, value in labels.items():
        if type(key) is not str or type(value) is not str:
            return None
    if not _is_ipv4(address):
        return None
    return FlowEndpoint(address, kind, cluster, namespace, name, dict(labels), identity)
