"""Raw policy specs → the IR of `policy.model`, with every problem at its field path.

One parser walks each spec once and both builds the rules and collects the problems,
so what `crossmesh validate` rejects is exactly what the evaluator could not read.
Problems carry a path relative to the object (`("spec", "ingress", 0, "from", 1)`);
the manifest loader turns that into `file:line:column`.

The implicit defaults follow the projects' own translation, not intuition:

- NetworkPolicy (Kubernetes docs, "Network Policies"): a `podSelector` peer means pods
  of the policy's namespace; `namespaceSelector` alone, all pods of the selected
  namespaces (`{}`: every namespace); both in one peer, pods matching both (AND);
  separate peers OR. A rule without `from`/`to` matches every peer, without `ports`
  every port. `policyTypes` defaults to Ingress, plus Egress "if the NetworkPolicy has
  any egress rules" (section "The NetworkPolicy resource"). `endPort` needs a numeric
  `port` ("Targeting a range of ports").
- Cilium (cilium/cilium pkg/k8s/apis/cilium.io/utils getEndpointSelector, Cilium docs
  "Using Kubernetes Constructs in Policy" → Namespaces): a namespaced policy selects only
  its own namespace, and a peer selector without a namespace label means the policy's
  namespace; a clusterwide peer selector without one means any pod (namespace label
  Exists). A selector with a `reserved:` key is taken as written.
- Cluster Mesh (Cilium docs, "Cluster Mesh" → "Network Policy"): "Policies automatically
  select endpoints from the local cluster only, unless one or multiple cluster are
  specifically targeted" — `clustermesh.policyDefaultLocalCluster`, true since Cilium
  1.19 and in the 1.20 chart crossmesh renders for. Kubernetes NetworkPolicy peers get
  it too, unless their podSelector names `io.cilium.k8s.policy.cluster`.
- Cilium rules: a rule with `toPorts` and no L3 field allows every peer on those ports
  ("Layer 4 Policies": "to any layer 3 destination"); a rule with neither (`- {}`)
  allows nothing but still puts the endpoint into default deny ("Layer 3 Policies" →
  "Ingress/Egress Default Deny"); an L3 field that is present but empty selects
  nothing; two L3 fields in one rule are rejected ("combining X and Y is not supported
  yet"). A direction is default-deny when the policy has allow or deny rules for it,
  unless `enableDefaultDeny` says otherwise (CRD field documentation).
"""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from typing import Any, NamedTuple

from crossmesh.model import k8s
from crossmesh.policy.model import (
    CLUSTER_LABEL,
    NS_LABEL,
    NS_LABELS_PREFIX,
    RESERVED_PREFIX,
    Action,
    CidrBlock,
    Direction,
    Entity,
    HeaderMatch,
    HttpRule,
    Network,
    Operator,
    PeerTerm,
    Policy,
    PolicyId,
    PolicyKind,
    PortMatcher,
    Requirement,
    Rule,
    Selector,
    http_regex_problem,
)

Path = tuple[str | int, ...]

POLICY_KINDS = tuple(k.value for k in PolicyKind)
L4_PROTOCOLS = ("TCP", "UDP", "SCTP")
CILIUM_PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY", "VRRP", "IGMP", "GRE", "IPIP", "IPV6", "ESP", "AH")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_PORT_NAME = 15  # an IANA service name, as container port names are: a longer name names no port
PORT_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-")
LABEL_SOURCES = ("k8s", "any", "reserved", "container", "unspec", "cidr", "fqdn", "cilium-generated")
MAX_CILIUM_PORTS = 40

NP_SPEC = ("podSelector", "policyTypes", "ingress", "egress")
NP_INGRESS = ("from", "ports")
NP_EGRESS = ("to", "ports")
NP_PEER = ("podSelector", "namespaceSelector", "ipBlock")
NP_PORT = ("protocol", "port", "endPort")
SELECTOR = ("matchLabels", "matchExpressions")
EXPRESSION = ("key", "operator", "values")

CNP_SPEC = (
    "description",
    "egress",
    "egressDeny",
    "enableDefaultDeny",
    "endpointSelector",
    "ingress",
    "ingressDeny",
    "labels",
    "log",
    "nodeSelector",
)
CNP_RULE_FIELDS: dict[tuple[Direction, Action], tuple[str, ...]] = {
    (Direction.INGRESS, Action.ALLOW): (
        "authentication",
        "fromCIDR",
        "fromCIDRSet",
        "fromEndpoints",
        "fromEntities",
        "fromGroups",
        "fromNodes",
        "fromRequires",
        "icmps",
        "toPorts",
    ),
    (Direction.INGRESS, Action.DENY): (
        "fromCIDR",
        "fromCIDRSet",
        "fromEndpoints",
        "fromEntities",
        "fromGroups",
        "fromNodes",
        "fromRequires",
        "icmps",
        "toPorts",
    ),
    (Direction.EGRESS, Action.ALLOW): (
        "authentication",
        "icmps",
        "toCIDR",
        "toCIDRSet",
        "toEndpoints",
        "toEntities",
        "toFQDNs",
        "toGroups",
        "toNodes",
        "toPorts",
        "toRequires",
        "toServices",
    ),
    (Direction.EGRESS, Action.DENY): (
        "icmps",
        "toCIDR",
        "toCIDRSet",
        "toEndpoints",
        "toEntities",
        "toGroups",
        "toNodes",
        "toPorts",
        "toRequires",
        "toServices",
    ),
}
CNP_SECTIONS = (
    ("ingress", Direction.INGRESS, Action.ALLOW),
    ("ingressDeny", Direction.INGRESS, Action.DENY),
    ("egress", Direction.EGRESS, Action.ALLOW),
    ("egressDeny", Direction.EGRESS, Action.DENY),
)
PORT_RULE = ("ports", "rules", "listener", "originatingTLS", "terminatingTLS", "serverNames")
PORT_DENY_RULE = ("ports",)
PORT_PROTOCOL = ("port", "endPort", "protocol")
L7_RULES = ("http", "dns", "kafka")
HTTP_RULE = ("method", "path", "host", "headers", "headerMatches")
HEADER_MATCH = ("name", "value", "secret", "mismatch")
CIDR_RULE = ("cidr", "except", "cidrGroupRef", "cidrGroupSelector")
ICMP_RULE = ("fields",)


class Issue(NamedTuple):
    """A problem in one object: where (relative to the object), what, and how bad."""

    path: Path
    message: str
    severity: str = "error"


def cilium_port_name(text: str) -> bool:
    """Cilium's port-name pattern `([a-zA-Z0-9]-?)*[a-zA-Z](-?[a-zA-Z0-9])*`, checked in one pass:
    letters, digits and single '-' between them, with at least one letter. The regex itself
    backtracks: 20,000 characters took 9 s, 100,000 never finished."""
    return (
        bool(text)
        and set(text) <= PORT_NAME_CHARS
        and any(c in string.ascii_letters for c in text)
        and text[0] != "-"
        and text[-1] != "-"
        and "--" not in text
    )


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out


@dataclass(slots=True)
class _Parser:
    """The state of parsing one manifest: who it is and what went wrong so far."""

    kind: PolicyKind
    cluster: str
    namespace: str  # "" for clusterwide
    name: str
    local_cluster_default: bool
    issues: list[Issue] = field(default_factory=list)
    rule_base: Path = ()  # the rule being parsed: peer, port and HTTP paths are relative to it

    # --- plumbing ------------------------------------------------------------------------

    def error(self, path: Path, message: str) -> None:
        self.issues.append(Issue(path, message))

    def warn(self, path: Path, message: str) -> None:
        self.issues.append(Issue(path, message, "warning"))

    def mapping(self, value: Any, path: Path, known: tuple[str, ...]) -> dict[str, Any] | None:
        """`value` as a mapping whose unknown keys are reported; None (absent) reads as {}."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"found {_brief(value)}, expected a mapping")
            return None
        for key in value:
            if key not in known:
                by_lower = {k.lower(): k for k in known}
                near = difflib.get_close_matches(str(key).lower(), list(by_lower), n=1)
                hint = f"did you mean {by_lower[near[0]]!r}?" if near else "remove it"
                self.error((*path, key), f"unknown field {key!r} — {hint} (known: {', '.join(sorted(known))})")
        return value

    def listing(self, value: Any, path: Path) -> list[Any] | None:
        """`value` as a list; None stays None (absent), anything else is reported."""
        if value is None or isinstance(value, list):
            return value
        self.error(path, f"found {_brief(value)}, expected a list")
        return None

    def string(self, value: Any, path: Path, what: str) -> str | None:
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float):
            self.error(path, f"{what} must be a string — quote it ({str(value).lower()!r})")
        else:
            self.error(path, f"found {_brief(value)}, expected {what} as a string")
        return None

    def rel(self, path: Path) -> str:
        return _dotted(path[len(self.rule_base) :])

    def policy_id(self, spec: str) -> PolicyId:
        return PolicyId(self.cluster, self.namespace, self.name, self.kind, spec)

    # --- labels and selectors ------------------------------------------------------------

    def label_key(self, key: str, path: Path, *, cilium: bool) -> str | None:
        """The normalized key (no `k8s:`/`any:` source), or None when it cannot match anything here."""
        if cilium and ":" in key:
            source, _, rest = key.partition(":")
            if source not in LABEL_SOURCES:
                self.error(path, f"label source {source!r} in {key!r} is unknown — use k8s:, any: or reserved:")
                return None
            if source == "reserved":
                return RESERVED_PREFIX + rest
            if source not in ("k8s", "any"):
                self.warn(path, f"labels of source {source!r} are not modelled by crossmesh; {key!r} matches nothing")
                return None
            key = rest
        prefix, slash, name = key.rpartition("/")
        bad = len(name) > 63 or not LABEL_NAME.fullmatch(name)
        bad = bad or bool(slash) and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN.fullmatch(prefix))
        if bad:
            self.error(
                path,
                f"{key!r} is not a valid label key: [prefix/]name, name ≤63 characters of "
                "letters, digits, '-', '_', '.', starting and ending with a letter or digit",
            )
            return None
        return key

    def label_value(self, value: Any, path: Path) -> str | None:
        text = self.string(value, path, "a label value")
        if text is not None and (len(text) > 63 or not LABEL_VALUE.fullmatch(text)):
            self.error(path, f"{text!r} is not a valid label value (≤63 letters, digits, '-', '_', '.')")
            return None
        return text

    def selector(self, raw: Any, path: Path, *, cilium: bool) -> tuple[Requirement, ...] | None:
        """The requirements of a LabelSelector, or None when it cannot match (reported)."""
        data = self.mapping(raw, path, SELECTOR)
        if data is None:
            return None
        ok = True
        out: list[Requirement] = []
        labels = data.get("matchLabels")
        if labels is not None and not isinstance(labels, dict):
            self.error((*path, "matchLabels"), f"found {_brief(labels)}, expected a mapping of label: value")
            ok = False
            labels = None
        for key, value in (labels or {}).items():
            where = (*path, "matchLabels", key)
            nkey = self.label_key(str(key), where, cilium=cilium)
            text = self.label_value(value, where)
            if nkey is None or text is None:
                ok = False
                continue
            out.append(Requirement(nkey, Operator.IN, (text,)))
        for i, expr in enumerate(self.listing(data.get("matchExpressions"), (*path, "matchExpressions")) or []):
            req = self.expression(expr, (*path, "matchExpressions", i), cilium=cilium)
            if req is None:
                ok = False
            else:
                out.append(req)
        return tuple(out) if ok else None

    def expression(self, raw: Any, path: Path, *, cilium: bool) -> Requirement | None:
        data = self.mapping(raw, path, EXPRESSION)
        if data is None:
            return None
        ok = True
        key = data.get("key")
        nkey = None
        if key is None:
            self.error((*path, "key"), "required field 'key' is missing — add it")
            ok = False
        else:
            text = self.string(key, (*path, "key"), "a label key")
            nkey = self.label_key(text, (*path, "key"), cilium=cilium) if text is not None else None
            ok = ok and nkey is not None
        op_raw = data.get("operator")
        operator = None
        if op_raw is None:
            self.error(
                (*path, "operator"), "required field 'operator' is missing — use In, NotIn, Exists or DoesNotExist"
            )
        elif op_raw not in tuple(o.value for o in Operator):
            self.error(
                (*path, "operator"),
                f"operator {_brief(op_raw)} is not one of In, NotIn, Exists, DoesNotExist",
            )
        else:
            operator = Operator(op_raw)
        values: list[str] = []
        raw_values = self.listing(data.get("values"), (*path, "values"))
        for j, v in enumerate(raw_values or []):
            text = self.label_value(v, (*path, "values", j))
            if text is None:
                ok = False
            else:
                values.append(text)
        if operator in (Operator.IN, Operator.NOT_IN) and not raw_values:
            self.error(path, f"operator {operator.value} needs a non-empty 'values' list")
            ok = False
        if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and raw_values:
            self.error((*path, "values"), f"operator {operator.value} takes no values — remove 'values'")
            ok = False
        if not ok or operator is None or nkey is None:
            return None
        return Requirement(nkey, operator, tuple(values))

    def cluster_default(self, written: tuple[Requirement, ...]) -> tuple[Requirement, ...]:
        if not self.local_cluster_default or any(r.key == CLUSTER_LABEL for r in written):
            return ()
        return (Requirement(CLUSTER_LABEL, Operator.IN, (self.cluster,)),)

    def cilium_peer(self, written: tuple[Requirement, ...]) -> Selector:
        """Cilium's getEndpointSelector: the namespace and local-cluster defaults of a peer."""
        if any(r.key.startswith(RESERVED_PREFIX) for r in written):
            return Selector(written)
        implied: list[Requirement] = []
        if not any(r.key == NS_LABEL for r in written):
            if not self.namespace:
                implied.append(Requirement(NS_LABEL, Operator.EXISTS))
            elif not any(r.key.startswith(NS_LABELS_PREFIX) for r in written):
                implied.append(Requirement(NS_LABEL, Operator.IN, (self.namespace,)))
        return Selector(written, (*implied, *self.cluster_default(written)))

    # --- networks and ports -----------------------------------------------------------------

    def cidr(self, raw: Any, path: Path) -> Network | None:
        text = self.string(raw, path, "a CIDR")
        if text is None:
            return None
        try:
            net = ip_network(text, strict=False)
        except ValueError:
            self.error(path, f"{text!r} is not a CIDR — write an address block such as 10.0.0.0/8 or 192.0.2.1/32")
            return None
        if "/" not in text:
            self.error(path, f"{text!r} lacks a prefix length — write {text}/{net.max_prefixlen}")
            return None
        if net.network_address != ip_address(text.split("/")[0]):
            self.warn(path, f"{text!r} has host bits set; it is read as {net}")
        return net

    def cidr_block(self, cidr: Any, excepts: Any, path: Path, except_path: Path) -> CidrBlock | None:
        net = self.cidr(cidr, path)
        out: list[Network] = []
        for j, e in enumerate(self.listing(excepts, except_path) or []):
            sub = self.cidr(e, (*except_path, j))
            if sub is None or net is None:
                continue
            if sub.version != net.version or not sub.subnet_of(net):  # type: ignore[arg-type]
                self.error(
                    (*except_path, j), f"except {sub} is not inside {net} — an exception must be part of the block"
                )
                continue
            out.append(sub)
        return None if net is None else CidrBlock(net, tuple(out))

    # --- Kubernetes NetworkPolicy ---------------------------------------------------------

    def network_policy(self, spec_raw: Any, file: str, line: int) -> list[Policy]:
        base: Path = ("spec",)
        spec = self.mapping(spec_raw, base, NP_SPEC)
        if spec is None:
            return []
        if "podSelector" not in spec:
            self.error((*base, "podSelector"), "required field 'podSelector' is missing — {} selects every pod")
        pid = self.policy_id("spec")
        subject_reqs = self.selector(spec.get("podSelector"), (*base, "podSelector"), cilium=False)
        ns_req = Requirement(NS_LABEL, Operator.IN, (self.namespace,))
        subject = Selector(subject_reqs or (), (ns_req,))
        ingress = self.listing(spec.get("ingress"), (*base, "ingress"))
        egress = self.listing(spec.get("egress"), (*base, "egress"))
        types_raw = self.listing(spec.get("policyTypes"), (*base, "policyTypes"))
        types: set[Direction] = set()
        if types_raw is None:
            # "by default Ingress will always be set and Egress will be set if the
            # NetworkPolicy has any egress rules" (Kubernetes docs, The NetworkPolicy resource).
            types = {Direction.INGRESS} | ({Direction.EGRESS} if egress else set())
        for i, t in enumerate(types_raw or []):
            if t not in ("Ingress", "Egress"):
                self.error((*base, "policyTypes", i), f"policy type {_brief(t)} is not Ingress or Egress")
            elif Direction(t.lower()) in types:
                self.error((*base, "policyTypes", i), f"{t} is listed twice")
            else:
                types.add(Direction(t.lower()))
        rules: list[Rule] = []
        for section, direction, peer_field, known in (
            ("ingress", Direction.INGRESS, "from", NP_INGRESS),
            ("egress", Direction.EGRESS, "to", NP_EGRESS),
        ):
            items = ingress if direction is Direction.INGRESS else egress
            for i, raw_rule in enumerate(items or []):
                path = (*base, section, i)
                rule = self.mapping(raw_rule, path, known)
                if rule is None:
                    continue
                self.rule_base = path
                peers = self.np_peers(rule.get(peer_field), (*path, peer_field))
                ports = self.np_ports(rule.get("ports"), (*path, "ports"))
                if direction in types:
                    rules.append(Rule(pid, direction, Action.ALLOW, _dotted(path), peers, ports))
            if items and direction not in types:
                self.warn(
                    (*base, section),
                    f"{section} rules are ignored: policyTypes does not list {section.capitalize()} — add it",
                )
        if subject_reqs is None:
            return []
        return [Policy(pid, file, line, subject, frozenset(types), tuple(rules))]

    def np_peers(self, raw: Any, path: Path) -> tuple[PeerTerm, ...]:
        items = self.listing(raw, path)
        if not items:
            # "If this field is empty or missing, this rule matches all sources/destinations."
            return (PeerTerm(f"(no {path[-1]}: every peer)", wildcard=True),)
        out: list[PeerTerm] = []
        for i, raw_peer in enumerate(items):
            where = (*path, i)
            peer = self.mapping(raw_peer, where, NP_PEER)
            if peer is None:
                continue
            has_pods, has_ns, has_block = ("podSelector" in peer, "namespaceSelector" in peer, "ipBlock" in peer)
            if not (has_pods or has_ns or has_block):
                self.error(where, "a peer needs podSelector, namespaceSelector or ipBlock")
                continue
            if has_block and (has_pods or has_ns):
                self.error(
                    where,
                    "ipBlock cannot be combined with podSelector or namespaceSelector in one peer — "
                    "make them two peers",
                )
                continue
            if has_block:
                block = self.mapping(peer["ipBlock"], (*where, "ipBlock"), ("cidr", "except"))
                if block is None:
                    continue
                if "cidr" not in block:
                    self.error((*where, "ipBlock", "cidr"), "required field 'cidr' is missing — add it")
                    continue
                cidr = self.cidr_block(
                    block["cidr"], block.get("except"), (*where, "ipBlock", "cidr"), (*where, "ipBlock", "except")
                )
                if cidr is not None:
                    out.append(PeerTerm(self.rel(where), cidr=cidr))
                continue
            pods = self.selector(peer.get("podSelector"), (*where, "podSelector"), cilium=False)
            if pods is None:
                continue
            if not has_ns:
                implied = (Requirement(NS_LABEL, Operator.IN, (self.namespace,)), *self.cluster_default(pods))
                out.append(PeerTerm(self.rel(where), selector=Selector(pods, implied)))
                continue
            ns = self.selector(peer.get("namespaceSelector"), (*where, "namespaceSelector"), cilium=False)
            if ns is None:
                continue
            ns_reqs = tuple(Requirement(NS_LABELS_PREFIX + r.key, r.operator, r.values) for r in ns)
            # An empty namespaceSelector selects every namespace: "a namespace label exists".
            every_ns = () if ns_reqs else (Requirement(NS_LABEL, Operator.EXISTS),)
            out.append(
                PeerTerm(self.rel(where), selector=Selector(ns_reqs + pods, every_ns + self.cluster_default(pods)))
            )
        return tuple(out)

    def np_ports(self, raw: Any, path: Path) -> tuple[PortMatcher, ...]:
        out: list[PortMatcher] = []
        for i, raw_port in enumerate(self.listing(raw, path) or []):
            where = (*path, i)
            item = self.mapping(raw_port, where, NP_PORT)
            if item is None:
                continue
            protocol = item.get("protocol") or "TCP"
            if protocol not in L4_PROTOCOLS:
                self.error((*where, "protocol"), f"protocol {_brief(protocol)} is not TCP, UDP or SCTP")
                continue
            port = item.get("port")
            end = item.get("endPort")
            number: int | None = None
            name: str | None = None
            if isinstance(port, bool) or port is not None and not isinstance(port, int | str):
                self.error((*where, "port"), f"found {_brief(port)}, expected a port number or a port name")
                continue
            if isinstance(port, int):
                if not 1 <= port <= 65535:
                    self.error((*where, "port"), f"port {port} is out of range 1..65535")
                    continue
                number = port
            elif isinstance(port, str):
                if port.isdigit():
                    self.error((*where, "port"), f"port {port!r} is a string — write {port} without quotes")
                    continue
                if len(port) > 15 or not IANA_SVC_NAME.fullmatch(port) or "--" in port:
                    self.error(
                        (*where, "port"),
                        f"port name {port!r} must be an IANA service name: ≤15 lower-case "
                        "letters, digits, '-', with at least one letter",
                    )
                    continue
                name = port
            end_port = None
            if end is not None:
                if isinstance(end, bool) or not isinstance(end, int):
                    self.error((*where, "endPort"), f"found {_brief(end)}, expected a port number")
                    continue
                if number is None:
                    self.error((*where, "endPort"), "endPort needs a numeric port to start the range")
                    continue
                if not 1 <= end <= 65535:
                    self.error((*where, "endPort"), f"endPort {end} is out of range 1..65535")
                    continue
                if end < number:
                    self.error((*where, "endPort"), f"endPort {end} is below port {number}")
                    continue
                end_port = end
            out.append(PortMatcher(self.rel(where), str(protocol), number, end_port, name))
        return tuple(out)

    # --- Cilium ------------------------------------------------------------------------------

    def cilium_policy(self, raw: dict[str, Any], file: str, line: int) -> list[Policy]:
        specs: list[tuple[Path, Any]] = []
        if raw.get("spec") is not None:
            specs.append((("spec",), raw["spec"]))
        many = self.listing(raw.get("specs"), ("specs",))
        specs += [(("specs", i), s) for i, s in enumerate(many or [])]
        if not specs:
            self.error((), f"{self.kind.value} has neither spec nor specs — add a spec with an endpointSelector")
            return []
        out = []
        for path, spec in specs:
            policy = self.cilium_spec(spec, path, file, line, _dotted(path))
            if policy is not None:
                out.append(policy)
        return out

    def cilium_spec(self, raw: Any, base: Path, file: str, line: int, spec_name: str) -> Policy | None:
        spec = self.mapping(raw, base, CNP_SPEC)
        if spec is None:
            return None
        has_ep, has_node = spec.get("endpointSelector") is not None, spec.get("nodeSelector") is not None
        if has_ep == has_node:
            self.error(base, "a Cilium policy spec needs exactly one of endpointSelector and nodeSelector")
        pid = self.policy_id(spec_name)
        rules: list[Rule] = []
        section_has: dict[Direction, bool] = {Direction.INGRESS: False, Direction.EGRESS: False}
        for section, direction, action in CNP_SECTIONS:
            items = self.listing(spec.get(section), (*base, section))
            for i, raw_rule in enumerate(items or []):
                path = (*base, section, i)
                rule = self.cilium_rule(raw_rule, path, pid, direction, action)
                if rule is not None:
                    rules.append(rule)
            section_has[direction] = section_has[direction] or bool(items)
        dd = self.mapping(spec.get("enableDefaultDeny"), (*base, "enableDefaultDeny"), ("ingress", "egress")) or {}
        default_deny: set[Direction] = set()
        for direction in Direction:
            flag = dd.get(direction.value)
            if flag is not None and not isinstance(flag, bool):
                self.error(
                    (*base, "enableDefaultDeny", direction.value), f"found {_brief(flag)}, expected true or false"
                )
                flag = None
            if flag if flag is not None else section_has[direction]:
                default_deny.add(direction)
        if has_node and not has_ep:
            self.warn((*base, "nodeSelector"), "host policies (nodeSelector) are not evaluated by crossmesh")
            return None
        subject = self.cilium_subject(spec.get("endpointSelector"), (*base, "endpointSelector"))
        if subject is None:
            return None
        return Policy(pid, file, line, subject, frozenset(default_deny), tuple(rules))

    def cilium_subject(self, raw: Any, path: Path) -> Selector | None:
        written = self.selector(raw, path, cilium=True)
        if written is None:
            return None
        if any(r.key.startswith(RESERVED_PREFIX) for r in written):
            self.warn(path, "an endpointSelector with reserved: labels selects no pod — crossmesh does not evaluate it")
            return None
        if not self.namespace:
            return Selector(written)
        for r in written:
            # "Kubernetes prohibits specifying the namespace in the endpointSelector" (Cilium docs,
            # Using Kubernetes Constructs in Policy → Namespaces): Cilium rejects another namespace.
            if r.key == NS_LABEL and (r.operator is not Operator.IN or r.values != (self.namespace,)):
                self.error(
                    self.namespace_key_path(raw, path),
                    f"the endpointSelector of a policy in namespace {self.namespace!r} cannot select "
                    f"another namespace ({r}) — move the policy or use a CiliumClusterwideNetworkPolicy",
                )
                return None
        implied = (
            () if any(r.key == NS_LABEL for r in written) else (Requirement(NS_LABEL, Operator.IN, (self.namespace,)),)
        )
        return Selector(written, implied)

    def namespace_key_path(self, raw: Any, path: Path) -> Path:
        """Where a selector names the namespace label, to point the problem at that line."""
        data = raw if isinstance(raw, dict) else {}
        for key in data.get("matchLabels") or {}:
            if str(key).partition(":")[2] == NS_LABEL or key == NS_LABEL:
                return (*path, "matchLabels", key)
        for i, expr in enumerate(data.get("matchExpressions") or []):
            key = str(expr.get("key", "")) if isinstance(expr, dict) else ""
            if key == NS_LABEL or key.partition(":")[2] == NS_LABEL:
                return (*path, "matchExpressions", i)
        return path

    def cilium_rule(self, raw: Any, path: Path, pid: PolicyId, direction: Direction, action: Action) -> Rule | None:
        rule = self.mapping(raw, path, CNP_RULE_FIELDS[(direction, action)])
        if rule is None:
            return None
        self.rule_base = path
        pre = "from" if direction is Direction.INGRESS else "to"
        l3 = [
            f
            for f in (
                f"{pre}Endpoints",
                f"{pre}CIDR",
                f"{pre}CIDRSet",
                f"{pre}Entities",
                f"{pre}Nodes",
                f"{pre}Groups",
                "toServices",
                "toFQDNs",
            )
            if f in rule and (direction is Direction.EGRESS or not f.startswith("to"))
        ]
        present = [f for f in l3 if rule.get(f)]
        if len(present) > 1:
            self.error(
                path,
                f"combining {present[0]} and {present[1]} in one rule is not supported by Cilium — "
                "write them as two rules",
            )
            return None
        notes: list[str] = []
        for unmodelled, why in (
            (f"{pre}Requires", "was removed in Cilium 1.19; crossmesh ignores it"),
            ("authentication", "(mutual authentication) is not evaluated by crossmesh"),
        ):
            if rule.get(unmodelled):
                self.warn((*path, unmodelled), f"{unmodelled} {why}")
                notes.append(f"{unmodelled} ignored")
        peers = self.cilium_peers(rule, path, pre, l3)
        icmps = self.listing(rule.get("icmps"), (*path, "icmps"))
        to_ports = self.listing(rule.get("toPorts"), (*path, "toPorts"))
        if icmps and to_ports:
            self.error(path, "icmps may only be present without toPorts — define a separate rule for toPorts")
            return None
        ports: list[PortMatcher] = []
        http: list[HttpRule] = []
        for i, raw_icmp in enumerate(icmps or []):
            self.mapping(raw_icmp, (*path, "icmps", i), ICMP_RULE)
            ports.append(PortMatcher(self.rel((*path, "icmps", i)), protocol="ICMP"))
        for i, raw_pr in enumerate(to_ports or []):
            got = self.cilium_port_rule(raw_pr, (*path, "toPorts", i), direction, action, notes)
            if got is not None:
                ports.extend(got[0])
                http.extend(got[1])
        if not present and not [f for f in l3 if f in rule] and (to_ports or icmps):
            # L4-only rule: "to any layer 3 destination" (Cilium docs, Layer 4 Policies).
            peers = (PeerTerm("(no L3 field: every peer)", wildcard=True),)
        if to_ports and not ports:
            return None  # every toPorts entry was wrong: reported, and not widened to "every port"
        return Rule(pid, direction, action, _dotted(path), peers, tuple(ports), tuple(http), tuple(notes))

    def cilium_peers(self, rule: dict[str, Any], path: Path, pre: str, l3: list[str]) -> tuple[PeerTerm, ...]:
        out: list[PeerTerm] = []
        for i, raw_sel in enumerate(self.listing(rule.get(f"{pre}Endpoints"), (*path, f"{pre}Endpoints")) or []):
            where = (*path, f"{pre}Endpoints", i)
            written = self.selector(raw_sel, where, cilium=True)
            if written is not None:
                out.append(PeerTerm(f"{pre}Endpoints[{i}]", selector=self.cilium_peer(written)))
        for i, raw_ent in enumerate(self.listing(rule.get(f"{pre}Entities"), (*path, f"{pre}Entities")) or []):
            where = (*path, f"{pre}Entities", i)
            if raw_ent not in tuple(e.value for e in Entity):
                known = ", ".join(e.value for e in Entity)
                self.error(where, f"entity {_brief(raw_ent)} is unknown (known: {known})")
                continue
            out.extend(self.entity_terms(Entity(raw_ent), f"{pre}Entities[{i}]"))
        for i, raw_cidr in enumerate(self.listing(rule.get(f"{pre}CIDR"), (*path, f"{pre}CIDR")) or []):
            net = self.cidr(raw_cidr, (*path, f"{pre}CIDR", i))
            if net is not None:
                out.append(PeerTerm(f"{pre}CIDR[{i}]", cidr=CidrBlock(net)))
        for i, raw_set in enumerate(self.listing(rule.get(f"{pre}CIDRSet"), (*path, f"{pre}CIDRSet")) or []):
            where = (*path, f"{pre}CIDRSet", i)
            item = self.mapping(raw_set, where, CIDR_RULE)
            if item is None:
                continue
            if "cidr" not in item:
                if item.get("cidrGroupRef") or item.get("cidrGroupSelector"):
                    self.warn(
                        where, "CiliumCIDRGroup references are not modelled by crossmesh; this entry matches nothing"
                    )
                else:
                    self.error(where, "a CIDR set entry needs cidr (or a cidrGroupRef)")
                continue
            block = self.cidr_block(item["cidr"], item.get("except"), (*where, "cidr"), (*where, "except"))
            if block is not None:
                out.append(PeerTerm(f"{pre}CIDRSet[{i}]", cidr=block))
        for unmodelled in (f"{pre}Nodes", f"{pre}Groups", "toServices", "toFQDNs"):
            if unmodelled in l3 and rule.get(unmodelled):
                self.warn((*path, unmodelled), f"{unmodelled} is not evaluated by crossmesh; the rule matches no peer")
        return tuple(out)

    def entity_terms(self, entity: Entity, path: str) -> list[PeerTerm]:
        """Entities as selectors over identity labels (Cilium pkg/policy/api/entity.go)."""

        def sel(key: str, op: Operator = Operator.EXISTS, *values: str) -> Selector:
            return Selector((Requirement(key, op, values),))

        host = PeerTerm(path, selector=sel("reserved:host"), entity=entity)
        remote = PeerTerm(path, selector=sel("reserved:remote-node"), entity=entity)
        if entity is Entity.ALL:
            return [PeerTerm(path, wildcard=True, entity=entity)]
        if entity is Entity.WORLD:
            return [PeerTerm(path, selector=sel("reserved:world"), entity=entity)]
        if entity is Entity.HOST:
            return [host]
        if entity is Entity.REMOTE_NODE:
            return [remote]
        if entity is Entity.CLUSTER:
            # "all network endpoints inside of the local cluster ... as well as the host,
            # remote-node ... This also includes all remote nodes in a clustermesh scenario."
            return [PeerTerm(path, selector=sel(CLUSTER_LABEL, Operator.IN, self.cluster), entity=entity), host, remote]
        if entity is Entity.CLUSTER_MESH:
            return [PeerTerm(path, selector=sel(CLUSTER_LABEL), entity=entity), host, remote]
        return []  # kube-apiserver, ingress, init, health, unmanaged, none: no such endpoint in crossmesh

    def cilium_port_rule(
        self, raw: Any, path: Path, direction: Direction, action: Action, notes: list[str]
    ) -> tuple[list[PortMatcher], list[HttpRule]] | None:
        item = self.mapping(raw, path, PORT_RULE if action is Action.ALLOW else PORT_DENY_RULE)
        if item is None:
            return None
        ports: list[PortMatcher] = []
        raw_ports = self.listing(item.get("ports"), (*path, "ports"))
        if raw_ports is not None and len(raw_ports) > MAX_CILIUM_PORTS:
            self.error(
                (*path, "ports"), f"{len(raw_ports)} ports in one entry; Cilium accepts at most {MAX_CILIUM_PORTS}"
            )
        for i, raw_port in enumerate(raw_ports or []):
            matcher = self.cilium_port(raw_port, (*path, "ports", i))
            if matcher is not None:
                ports.append(matcher)
        if raw_ports and not ports:
            return None
        if not raw_ports:
            ports.append(PortMatcher(self.rel(path)))
        for unmodelled in ("listener", "originatingTLS", "terminatingTLS", "serverNames"):
            if item.get(unmodelled):
                self.warn((*path, unmodelled), f"{unmodelled} is not evaluated by crossmesh")
                notes.append(f"{unmodelled} ignored")
        http: list[HttpRule] = []
        rules = self.mapping(item.get("rules"), (*path, "rules"), L7_RULES)
        if rules:
            kinds = [k for k in L7_RULES if rules.get(k)]
            if len(kinds) > 1:
                self.error((*path, "rules"), f"one port carries one L7 protocol; found {' and '.join(kinds)}")
            if rules.get("dns") is not None:
                if direction is Direction.INGRESS:
                    self.error((*path, "rules", "dns"), "L7 protocol DNS is not supported on ingress")
                else:
                    notes.append("DNS rules are not evaluated: every query passes")
            if rules.get("kafka"):
                self.warn((*path, "rules", "kafka"), "Kafka rules are deprecated and not evaluated by crossmesh")
                notes.append("Kafka rules are not evaluated")
            for i, raw_http in enumerate(self.listing(rules.get("http"), (*path, "rules", "http")) or []):
                rule = self.http_rule(raw_http, (*path, "rules", "http", i))
                if rule is not None:
                    http.append(rule)
        return ports, http

    def cilium_port(self, raw: Any, path: Path) -> PortMatcher | None:
        item = self.mapping(raw, path, PORT_PROTOCOL)
        if item is None:
            return None
        protocol = item.get("protocol", "ANY")
        if protocol in ("", None):
            protocol = "ANY"
        if protocol not in CILIUM_PROTOCOLS:
            self.error((*path, "protocol"), f"protocol {_brief(protocol)} is not one of {', '.join(CILIUM_PROTOCOLS)}")
            return None
        port = item.get("port")
        number: int | None = None
        name: str | None = None
        if port is not None:
            if isinstance(port, bool) or not isinstance(port, str):
                hint = f' — write "{port}"' if isinstance(port, int) and not isinstance(port, bool) else ""
                self.error((*path, "port"), f"found {_brief(port)}; a Cilium port is a string{hint}")
                return None
            if len(port) > MAX_PORT_NAME:
                self.error(
                    (*path, "port"),
                    f"port {_brief(port)} is {len(port)} characters: a port number or a port name "
                    f"has at most {MAX_PORT_NAME}",
                )
                return None
            if port.isascii() and port.isdigit():
                number = int(port)
                if number > 65535:
                    self.error((*path, "port"), f"port {number} is out of range 0..65535")
                    return None
            elif cilium_port_name(port):
                name = port.lower()
            else:
                self.error((*path, "port"), f"port {port!r} is neither a number nor a port name")
                return None
        end = item.get("endPort")
        end_port = None
        if end is not None and end != 0:
            if isinstance(end, bool) or not isinstance(end, int):
                self.error((*path, "endPort"), f"found {_brief(end)}, expected a port number")
                return None
            if not 0 <= end <= 65535:
                self.error((*path, "endPort"), f"endPort {end} is out of range 0..65535")
                return None
            if number is not None and number != 0:
                if end < number:
                    self.error((*path, "endPort"), f"endPort {end} is below port {number}")
                    return None
                end_port = end
        l4 = None if protocol == "ANY" else str(protocol)
        # Port 0 is Cilium's "every port"; endPort is "ignored if Port is a named port".
        return PortMatcher(self.rel(path), l4, number or None, end_port, name)

    def http_rule(self, raw: Any, path: Path) -> HttpRule | None:
        item = self.mapping(raw, path, HTTP_RULE)
        if item is None:
            return None
        ok = True
        texts: dict[str, str | None] = {}
        for key in ("method", "path", "host"):
            value = item.get(key)
            if value is None or value == "":
                texts[key] = None
                continue
            text = self.string(value, (*path, key), f"the {key} regex")
            if text is None or not self.regex(text, (*path, key)):
                ok = False
            texts[key] = text
        headers: list[HeaderMatch] = []
        for i, h in enumerate(self.listing(item.get("headers"), (*path, "headers")) or []):
            text = self.string(h, (*path, "headers", i), "a header")
            if text is None:
                ok = False
                continue
            name, colon, value = text.partition(":")
            if not name.strip():
                self.error((*path, "headers", i), f"header {text!r} has no name — write 'Name' or 'Name: value'")
                ok = False
                continue
            headers.append(HeaderMatch(name.strip(), value.strip() if colon else None))
        for i, raw_hm in enumerate(self.listing(item.get("headerMatches"), (*path, "headerMatches")) or []):
            where = (*path, "headerMatches", i)
            hm = self.mapping(raw_hm, where, HEADER_MATCH)
            if hm is None:
                ok = False
                continue
            hname = hm.get("name")
            if not isinstance(hname, str) or not hname:
                self.error((*where, "name"), "required field 'name' is missing — add the header name")
                ok = False
                continue
            mismatch = hm.get("mismatch")
            if mismatch is not None and mismatch not in ("LOG", "ADD", "DELETE", "REPLACE"):
                self.error((*where, "mismatch"), f"mismatch {_brief(mismatch)} is not LOG, ADD, DELETE or REPLACE")
                ok = False
                continue
            value = hm.get("value")
            if hm.get("secret") is not None and value is None:
                self.warn((*where, "secret"), "header values from secrets are not modelled; this header never matches")
            secret = hm.get("secret") is not None and value is None
            headers.append(
                HeaderMatch(hname, None if value is None else str(value), enforced=mismatch is None, secret=secret)
            )
        if not ok:
            return None
        return HttpRule(self.rel(path), texts["method"], texts["path"], texts["host"], tuple(headers))

    def regex(self, text: str, path: Path) -> bool:
        why = http_regex_problem(text)
        if why is not None:
            self.error(path, f"{_brief(text)} {why}")
            return False
        return True


def _manifest_names(m: k8s.Manifest) -> tuple[PolicyKind, str]:
    kind = PolicyKind(m.kind)
    return kind, "" if kind is PolicyKind.CILIUM_CLUSTERWIDE else (m.namespace or "default")


def parse_manifest(
    m: k8s.Manifest, *, cluster: str, local_cluster_default: bool = True
) -> tuple[list[Policy], list[Issue]]:
    """The policies of one manifest object (none when it is not a policy) and its problems."""
    if m.kind not in POLICY_KINDS or m.obj is None:
        return [], []
    kind, namespace = _manifest_names(m)
    parser = _Parser(kind, cluster, namespace, m.name, local_cluster_default)
    if kind is PolicyKind.NETWORK_POLICY:
        policies = parser.network_policy(m.raw.get("spec"), m.file, m.line)
    else:
        policies = parser.cilium_policy(m.raw, m.file, m.line)
    return policies, parser.issues


def check_manifest(m: k8s.Manifest) -> list[Issue]:
    """Problems of one manifest object, for the loader (`crossmesh validate`)."""
    return parse_manifest(m, cluster="")[1]


def cluster_policies(
    cluster: str, manifests: list[k8s.Manifest], *, cilium: bool, local_cluster_default: bool = True
) -> list[Policy]:
    """Every policy enforced in `cluster`. Cilium policies need Cilium: elsewhere nothing enforces them."""
    out: list[Policy] = []
    for m in manifests:
        if m.kind in (PolicyKind.CILIUM.value, PolicyKind.CILIUM_CLUSTERWIDE.value) and not cilium:
            continue
        out.extend(parse_manifest(m, cluster=cluster, local_cluster_default=local_cluster_default)[0])
    return sorted(out, key=lambda p: p.id)


def unenforced(cluster: str, cni: str, manifests: list[k8s.Manifest]) -> list[tuple[k8s.Manifest, str]]:
    """Cilium policies in a cluster whose CNI is not Cilium: applied, but nothing enforces them."""
    if cni == "cilium":
        return []
    return [
        (m, f"{m.kind} {m.name} is not enforced in cluster {cluster}: its CNI is {cni}, not cilium")
        for m in manifests
        if m.kind in (PolicyKind.CILIUM.value, PolicyKind.CILIUM_CLUSTERWIDE.value)
    ]
