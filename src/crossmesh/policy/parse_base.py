"""The plumbing of the policy parser (policy/parse.py): field checks, labels, selectors, CIDRs,
and the problems found so far. NetworkPolicy and Cilium specs are read by parse_k8s.py and
parse_cilium.py on top of it."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any

from crossmesh.load.fields import FieldReader, Path, brief, dotted
from crossmesh.policy.model import (
    CLUSTER_LABEL,
    NS_LABEL,
    NS_LABELS_PREFIX,
    RESERVED_PREFIX,
    Action,
    CidrBlock,
    Direction,
    Network,
    Operator,
    PolicyId,
    PolicyKind,
    Requirement,
    Selector,
    http_regex_problem,
)

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


@dataclass(slots=True)
class ParserBase(FieldReader):
    """The state of parsing one manifest: who it is and what went wrong so far (the plumbing is
    `FieldReader`'s)."""

    kind: PolicyKind
    cluster: str
    namespace: str  # "" for clusterwide
    name: str
    local_cluster_default: bool
    rule_base: Path = ()  # the rule being parsed: peer, port and HTTP paths are relative to it

    def listing(self, value: Any, path: Path) -> list[Any] | None:
        """`value` as a list; None stays None (absent), anything else is reported."""
        if value is None or isinstance(value, list):
            return value
        self.error(path, f"found {brief(value)}, expected a list")
        return None

    def string(self, value: Any, path: Path, what: str) -> str | None:
        if isinstance(value, str):
            return value
        if isinstance(value, bool | int | float):
            self.error(path, f"{what} must be a string — quote it ({str(value).lower()!r})")
        else:
            self.error(path, f"found {brief(value)}, expected {what} as a string")
        return None

    def rel(self, path: Path) -> str:
        return dotted(path[len(self.rule_base) :])

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
            self.error((*path, "matchLabels"), f"found {brief(labels)}, expected a mapping of label: value")
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
                f"operator {brief(op_raw)} is not one of In, NotIn, Exists, DoesNotExist",
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

    def regex(self, text: str, path: Path) -> bool:
        why = http_regex_problem(text)
        if why is not None:
            self.error(path, f"{brief(text)} {why}")
            return False
        return True
