"""Istio's PeerAuthentication and AuthorizationPolicy in a normalized form (IR).

`istio.parse` reads the user's manifests into these frozen values; `istio.index` evaluates
them for the lab's proxy and for `policy trace`. The values keep only what Istio's own
evaluation reads, with Istio's meaning:

- A `Pattern` is one of Istio's string matches (AuthorizationPolicy reference, "Rule"): exact,
  prefix `abc*`, suffix `*abc`, or presence `*`. An absent value (a plaintext peer has no
  principal and no namespace) matches no pattern — so a `notPrincipals` field does match it,
  as ISTIO-SECURITY-2021-004 spells out.
- A `Source` or `Operation` ANDs the fields that are present, each field ORs its values; a
  `Rule` matches when any of its `from` entries and any of its `to` entries match (a missing
  list matches everything). A policy with no rules matches nothing.
- Paths and methods exist only in HTTP. For a request that is not HTTP, Istio skips an ALLOW
  rule that names them (the allow becomes smaller) and ignores those fields in a DENY rule (the
  deny becomes wider) — pilot's authz builder, `rule.checkError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

ROOT_NAMESPACE = "istio-system"  # Istio's default meshConfig.rootNamespace

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


class Mode(StrEnum):
    """The mTLS mode a workload accepts on a port (PeerAuthentication.MutualTLS.Mode)."""

    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"
    DISABLE = "DISABLE"


class Action(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"


@dataclass(frozen=True, slots=True)
class Pattern:
    """One of Istio's string matches, as written (`*`, `abc*`, `*abc` or `abc`)."""

    text: str

    def matches(self, value: str | None) -> bool:
        if value is None or value == "":
            return False
        t = self.text
        if t == "*":
            return True
        if t.endswith("*"):
            return value.startswith(t[:-1])
        if t.startswith("*"):
            return value.endswith(t[1:])
        return value == t

    def __str__(self) -> str:
        return self.text


def any_matches(patterns: tuple[Pattern, ...], value: str | None) -> bool:
    return any(p.matches(value) for p in patterns)


@dataclass(frozen=True, slots=True)
class Source:
    """`rules[].from[].source`: None for a field not written."""

    principals: tuple[Pattern, ...] | None = None
    not_principals: tuple[Pattern, ...] | None = None
    namespaces: tuple[Pattern, ...] | None = None
    not_namespaces: tuple[Pattern, ...] | None = None
    ip_blocks: tuple[Network, ...] | None = None
    not_ip_blocks: tuple[Network, ...] | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    """`rules[].to[].operation`: None for a field not written. Ports are the workload's ports."""

    ports: tuple[int, ...] | None = None
    not_ports: tuple[int, ...] | None = None
    methods: tuple[Pattern, ...] | None = None
    not_methods: tuple[Pattern, ...] | None = None
    paths: tuple[Pattern, ...] | None = None
    not_paths: tuple[Pattern, ...] | None = None

    @property
    def http_only(self) -> bool:
        """Whether it reads a field that only an HTTP request has."""
        return any(f is not None for f in (self.methods, self.not_methods, self.paths, self.not_paths))


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of `rules`: empty `sources`/`operations` means the list was not written (any)."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()

    @property
    def http_only(self) -> bool:
        return any(o.http_only for o in self.operations)


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    cluster: str
    namespace: str
    name: str
    action: Action
    selector: Mapping[str, str] | None  # None: every workload of the namespace (of the mesh in the root namespace)
    rules: tuple[Rule, ...]
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    cluster: str
    namespace: str
    name: str
    selector: Mapping[str, str] | None  # None: namespace-wide (mesh-wide in the root namespace)
    mode: Mode | None  # None: UNSET, inherited
    port_modes: Mapping[int, Mode | None] = field(default_factory=dict)
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """Istio's workload selector: every label written must be on the pod (None selects all)."""
    return selector is None or all(labels.get(k) == v for k, v in selector.items())
