"""The normalized policy form (IR) shared by the evaluator and the data-plane compiler.

Kubernetes `NetworkPolicy`, `CiliumNetworkPolicy` and `CiliumClusterwideNetworkPolicy`
say the same things in three dialects with different implicit defaults. `parse`
translates all three into this one form the way Cilium itself does, so that every
consumer applies the same semantics without re-implementing them:

- endpoints carry Cilium *identity labels*: the pod's labels plus
  `io.kubernetes.pod.namespace`, `io.cilium.k8s.policy.cluster`,
  `io.cilium.k8s.policy.serviceaccount` and `io.cilium.k8s.namespace.labels.<key>`
  for each label of its namespace. Endpoints with equal labels share an identity;
- a `Policy` selects pods of its own cluster with `subject` (the namespace of a
  namespaced policy is already part of it) and makes the directions in
  `default_deny` default-deny for them;
- a `Rule` allows or denies, in one direction, traffic with a peer matching any of
  its `peers` terms, on any of its `ports`, and (allow only) HTTP requests matching
  any of its `http` rules. Peer selectors already hold Cilium's implied namespace and
  local-cluster requirements (listed apart in `Selector.implied` for explanations);
- a peer is seen from the enforcing endpoint as one of four `View`s: by identity
  labels (pods of the same identity domain), as the local `host`, as a
  `remote-node`, or as `world` (everything else, matched by CIDR terms).

Keys are normalized: Kubernetes labels without a source prefix (`k8s:app` and
`any:app` are `app`), reserved identities as `reserved:<name>`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import re2

NS_LABEL = "io.kubernetes.pod.namespace"
CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
SA_LABEL = "io.cilium.k8s.policy.serviceaccount"
NS_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
NS_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server
RESERVED_PREFIX = "reserved:"
HOST_LABEL = "reserved:host"
REMOTE_NODE_LABEL = "reserved:remote-node"
WORLD_LABEL = "reserved:world"
# The identity domain of Cilium clusters: Cluster Mesh shares identities among them, and Cilium
# (not Kubernetes) semantics apply, e.g. a pod's egress to its own node needs a rule.
CILIUM_DOMAIN = "cilium"

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


class PolicyKind(StrEnum):
    NETWORK_POLICY = "NetworkPolicy"
    CILIUM = "CiliumNetworkPolicy"
    CILIUM_CLUSTERWIDE = "CiliumClusterwideNetworkPolicy"


class Direction(StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class Entity(StrEnum):
    """Cilium entities (Cilium docs, "Layer 3 Policies" → "Entities based")."""

    WORLD = "world"
    CLUSTER = "cluster"
    CLUSTER_MESH = "cluster-mesh"
    HOST = "host"
    REMOTE_NODE = "remote-node"
    ALL = "all"
    KUBE_APISERVER = "kube-apiserver"
    INGRESS = "ingress"
    INIT = "init"
    HEALTH = "health"
    UNMANAGED = "unmanaged"
    NONE = "none"


class View(StrEnum):
    """How the enforcing endpoint sees its peer."""

    IDENTITY = "identity"  # a pod of the same identity domain: matched by its labels
    HOST = "host"  # the node the enforcing pod runs on
    REMOTE_NODE = "remote-node"  # any other node of the domain
    WORLD = "world"  # everything else: outside addresses, pods and nodes outside the domain


RESERVED_VIEW_LABELS: dict[View, Mapping[str, str]] = {
    View.HOST: {HOST_LABEL: ""},
    View.REMOTE_NODE: {REMOTE_NODE_LABEL: ""},
    View.WORLD: {WORLD_LABEL: ""},
}


class EndpointKind(StrEnum):
    POD = "pod"
    NODE = "node"
    WORLD = "world"


# --- selectors -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requirement:
    """One term of a label selector (Kubernetes LabelSelectorRequirement semantics)."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        op = self.operator
        if op is Operator.IN:
            return value is not None and value in self.values
        if op is Operator.NOT_IN:
            # A missing label satisfies NotIn (apimachinery labels.Requirement.Matches).
            return value is None or value not in self.values
        if op is Operator.EXISTS:
            return value is not None
        return value is None

    def __str__(self) -> str:
        if self.operator is Operator.IN and len(self.values) == 1:
            return f"{self.key}={self.values[0]}"
        if self.operator is Operator.IN:
            return f"{self.key} in ({', '.join(self.values)})"
        if self.operator is Operator.NOT_IN:
            return f"{self.key} notin ({', '.join(self.values)})"
        if self.operator is Operator.EXISTS:
            return self.key
        return f"!{self.key}"


@dataclass(frozen=True, slots=True)
class Selector:
    """Requirements ANDed together; no requirement at all selects every labelled endpoint.

    `written` are the user's; `implied` are what Kubernetes or Cilium add (the policy's
    namespace, the local cluster) — kept apart only to explain a verdict.
    """

    written: tuple[Requirement, ...] = ()
    implied: tuple[Requirement, ...] = ()
    requirements: tuple[Requirement, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "requirements", self.written + self.implied)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def has_key(self, key: str) -> bool:
        return any(r.key == key for r in self.requirements)

    def has_key_prefix(self, prefix: str) -> bool:
        return any(r.key.startswith(prefix) for r in self.requirements)

    def __str__(self) -> str:
        text = "{" + ", ".join(str(r) for r in self.written) + "}"
        if self.implied:
            text += " + implied {" + ", ".join(str(r) for r in self.implied) + "}"
        return text


# --- peers, ports, HTTP ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CidrBlock:
    """An address block minus its exceptions (ipBlock.except, toCIDRSet[].except)."""

    network: Network
    excepts: tuple[Network, ...] = ()

    def contains(self, address: Address) -> bool:
        if address.version != self.network.version or address not in self.network:
            return False
        return not any(address in e for e in self.excepts)

    def __str__(self) -> str:
        if not self.excepts:
            return str(self.network)
        return f"{self.network} except {', '.join(str(e) for e in self.excepts)}"


@dataclass(frozen=True, slots=True)
class PeerTerm:
    """One alternative of a rule's peer, as written at `path` (e.g. `toEndpoints[0]`, `from[1]`).

    Exactly one of `wildcard`, `selector`, `cidr` carries the meaning; `entity` names the
    Cilium entity the term was made from. A CIDR term matches only peers seen as world:
    "CIDR rules do not apply to traffic where both sides of the connection are either
    managed by Cilium or use an IP belonging to a node in the cluster" (Cilium docs,
    "Layer 3 Policies" → "IP/CIDR based"); Kubernetes says ipBlock is meant for
    "cluster-external IPs" (Network Policies → "Behavior of to and from selectors").
    """

    path: str
    selector: Selector | None = None
    cidr: CidrBlock | None = None
    entity: Entity | None = None
    wildcard: bool = False

    def matches(self, view: View, labels: Mapping[str, str], address: Address | None) -> bool:
        if self.wildcard:
            return True
        if self.cidr is not None:
            return view is View.WORLD and address is not None and self.cidr.contains(address)
        if self.selector is not None:
            return self.selector.matches(labels)
        return False

    def __str__(self) -> str:
        if self.entity is not None:
            return f"{self.path} (entity {self.entity.value})"
        if self.wildcard:
            return self.path
        if self.cidr is not None:
            return f"{self.path} {self.cidr}"
        return f"{self.path} {self.selector}"


@dataclass(frozen=True, slots=True)
class PortMatcher:
    """A destination port: one number, a range (`end_port`), a named port, or every port.

    `protocol` None means TCP, UDP and SCTP alike (Cilium's ANY). A named port is
    looked up on the destination endpoint of the flow, whichever side enforces.
    """

    path: str
    protocol: str | None = None
    port: int | None = None
    end_port: int | None = None
    name: str | None = None

    def matches(self, port: int, protocol: str, named: Mapping[str, tuple[int, str]]) -> bool:
        if self.protocol is not None and self.protocol != protocol:
            return False
        if self.name is not None:
            return named.get(self.name) == (port, protocol)
        if self.port is None:
            return True
        if self.end_port is None:
            return port == self.port
        return self.port <= port <= self.end_port

    def __str__(self) -> str:
        if self.name is not None:
            what = f"named port {self.name!r}" + (f"/{self.protocol}" if self.protocol else "")
        elif self.port is None:
            what = "any port" + (f" of {self.protocol}" if self.protocol else "")
        elif self.end_port is not None:
            what = f"{self.port}-{self.end_port}/{self.protocol or 'any protocol'}"
        else:
            what = f"{self.port}/{self.protocol or 'any protocol'}"
        return f"{self.path} {what}" if self.path else what


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for k, v in self.headers:
            if k.lower() == lowered:
                return v
        return None


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A header that must be present (`value` None) or equal `value`.

    `enforced` is False for Cilium headerMatches with a `mismatch` action: those only log
    or rewrite, "the overall rule is still considered as matching".
    """

    name: str
    value: str | None = None
    enforced: bool = True
    secret: bool = False  # the value is in a Secret crossmesh cannot read: never matches

    def matches(self, request: HttpRequest) -> bool:
        if not self.enforced:
            return True
        if self.secret:
            return False
        got = request.header(self.name)
        return got is not None and (self.value is None or got == self.value)


MAX_HTTP_REGEX = 1024  # characters of one method, path or host pattern
MAX_HTTP_REQUEST = 60 * 1024  # Envoy's default limit on a request's headers (max_request_headers_kb)


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # a bad pattern is reported as a problem, not logged to stderr
    return options


_RE2_OPTIONS = _re2_options()


@functools.lru_cache(maxsize=4096)
def _regex(pattern: str) -> Any:
    """An HTTP rule's pattern, compiled by RE2 as Envoy's safe_regex is: matching takes time
    linear in the request, whatever the pattern. Python's `re` backtracks: `/(a+)+$` took
    9.8 s on a 28-character path, twice that per added character, in `policy trace` and in
    the lab's L7 proxy alike."""
    return re2.compile(pattern, _RE2_OPTIONS)


def http_regex_problem(pattern: str) -> str | None:
    """Why Envoy would refuse `pattern`, or None: the same compile the match uses, so a rule
    that validates is a rule that matches."""
    if len(pattern) > MAX_HTTP_REGEX:
        return f"is {len(pattern)} characters; an HTTP rule's regex may have at most {MAX_HTTP_REGEX}"
    try:
        _regex(pattern)
    except re2.error as err:
        reason = err.args[0] if err.args else "invalid"
        reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        hint = ""
        if reason.startswith("invalid perl operator") or reason[-2:-1] == "\\" and reason[-1:].isdigit():
            hint = " — RE2 has no lookaround and no backreferences"
        return f"is not a valid regular expression for RE2 (Envoy's safe_regex): {reason}{hint}"
    return None


@dataclass(frozen=True, slots=True)
class HttpRule:
    """Cilium `rules.http[]`: every given field must match. Regexes match the whole value:
    Envoy's safe_regex is a full match, so `/public` never matches `/public/x`."""

    path: str
    method: str | None = None
    url_path: str | None = None
    host: str | None = None
    headers: tuple[HeaderMatch, ...] = ()

    def matches(self, request: HttpRequest) -> bool:
        if self.method and not _regex(self.method).fullmatch(request.method):
            return False
        if self.url_path and not _regex(self.url_path).fullmatch(request.path):
            return False
        if self.host:
            host = request.header("host")
            if host is None or not _regex(self.host).fullmatch(host):
                return False
        return all(h.matches(request) for h in self.headers)

    def __str__(self) -> str:
        parts = [f"method {self.method}" if self.method else "", f"path {self.url_path}" if self.url_path else ""]
        parts += [f"host {self.host}" if self.host else ""]
        parts += [f"header {h.name}" + (f": {h.value}" if h.value is not None else "") for h in self.headers]
        shown = ", ".join(p for p in parts if p) or "any request"
        return f"{self.path} ({shown})"


# --- policies and rules ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class PolicyId:
    cluster: str
    namespace: str  # "" for a clusterwide policy
    name: str
    kind: PolicyKind
    spec: str = "spec"  # "specs[i]" for a Cilium policy with several specs

    def __str__(self) -> str:
        where = f"{self.cluster}/{self.namespace}/{self.name}" if self.namespace else f"{self.cluster}/{self.name}"
        suffix = f" {self.spec}" if self.spec != "spec" else ""
        return f"{self.kind.value} {where}{suffix}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One ingress/egress (allow) or ingressDeny/egressDeny (deny) entry of a policy."""

    policy: PolicyId
    direction: Direction
    action: Action
    path: str  # e.g. "spec.egress[0]"
    peers: tuple[PeerTerm, ...]  # any of them; () matches no peer
    ports: tuple[PortMatcher, ...] = ()  # any of them; () = every port of every protocol
    http: tuple[HttpRule, ...] = ()  # any of them; () = no HTTP filtering
    notes: tuple[str, ...] = ()  # parts crossmesh does not evaluate (e.g. DNS rules)

    def match_port(self, port: int, protocol: str, named: Mapping[str, tuple[int, str]]) -> PortMatcher | None:
        """The port matcher that admits the flow, ALL_PORTS when the rule has none, else None."""
        if not self.ports:
            return ALL_PORTS
        for p in self.ports:
            if p.matches(port, protocol, named):
                return p
        return None


ALL_PORTS = PortMatcher(path="")  # a rule without ports admits every port


@dataclass(frozen=True, slots=True)
class Policy:
    id: PolicyId
    file: str
    line: int
    subject: Selector  # pods of `id.cluster` it applies to (namespace already required)
    default_deny: frozenset[Direction]
    rules: tuple[Rule, ...]

    def selects(self, endpoint: Endpoint) -> bool:
        """Whether this policy applies to `endpoint` (a pod of the policy's cluster)."""
        return (
            endpoint.kind is EndpointKind.POD
            and endpoint.cluster == self.id.cluster
            and self.subject.matches(endpoint.labels)
        )

    def applies(self, direction: Direction) -> bool:
        """Whether the policy has anything to say in `direction` for the endpoints it selects."""
        return direction in self.default_deny or any(r.direction is direction for r in self.rules)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else ""


# --- endpoints -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A pod, a node, or an outside address, as policy sees it.

    `labels` are identity labels (pods only); `named_ports` maps a container port name to
    (port, protocol). A node has its site address and its pod-side address.
    """

    kind: EndpointKind
    ref: str  # CLUSTER/NAMESPACE/POD, the node name, or the address
    cluster: str = ""
    namespace: str = ""
    node: str = ""
    addresses: tuple[Address, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    named_ports: Mapping[str, tuple[int, str]] = field(default_factory=dict, compare=False, hash=False)

    @property
    def address(self) -> Address | None:
        return self.addresses[0] if self.addresses else None

    def identity_key(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.labels.items()))

    def __str__(self) -> str:
        addr = f" ({self.address})" if self.address is not None and self.kind is not EndpointKind.WORLD else ""
        return f"{self.kind.value} {self.ref}{addr}"
