"""What Istio decides for one workload: the mTLS mode of a port, and whether a request is authorized.

The lab's proxy and `policy trace` ask the same `IstioIndex`, so the trace can never explain a
verdict the proxy does not give. Istio's rules, from its reference documentation:

- PeerAuthentication ("PeerAuthentication", "Authentication policies"): a policy with a selector
  in the workload's namespace beats the namespace-wide one, which beats the mesh-wide one (root
  namespace, no selector); a port-level mode beats the workload's mode; UNSET (or no `mtls`)
  inherits from the next level; with nothing at all the workload is PERMISSIVE.
- AuthorizationPolicy ("Authorization Policy"): a policy applies to the workloads its selector
  matches in its own namespace, in every namespace when it lives in the root namespace. Any
  matching DENY policy denies; else a workload no ALLOW policy applies to is allowed; else the
  request is allowed only when an ALLOW policy matches it.

A Request without a principal is a plaintext one: principals and namespaces come from the peer's
certificate, so they match nothing and their `not` forms match it (ISTIO-SECURITY-2021-004).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from crossmesh.istio.model import (
    ROOT_NAMESPACE,
    Action,
    AuthorizationPolicy,
    Mode,
    Operation,
    Pattern,
    PeerAuthentication,
    Rule,
    Source,
    any_matches,
    selects,
)
from crossmesh.istio.parse import cluster_policies
from crossmesh.model import k8s
from crossmesh.model.plan import Plan
from crossmesh.policy.model import SA_LABEL, Endpoint, EndpointKind

__all__ = [
    "AuthzVerdict",
    "IstioIndex",
    "Mode",
    "ModeDecision",
    "Request",
    "istio_index",
    "principal",
]

NO_PEER_AUTHENTICATION = "no PeerAuthentication: PERMISSIVE"


@dataclass(frozen=True, slots=True)
class ModeDecision:
    mode: Mode
    source: str  # "PeerAuthentication istio-system/default" or "no PeerAuthentication: PERMISSIVE"


@dataclass(frozen=True, slots=True)
class Request:
    """What the server-side proxy knows of a request. `principal` None: a plaintext peer.
    `method`/`path` None: not an HTTP request (or not parsed as one)."""

    principal: str | None
    source_namespace: str | None
    source_ip: IPv4Address | IPv6Address
    port: int
    method: str | None = None
    path: str | None = None

    @property
    def http(self) -> bool:
        return self.method is not None or self.path is not None


@dataclass(frozen=True, slots=True)
class AuthzVerdict:
    allowed: bool
    policy: str  # "ns/name" of the deciding policy, "" when no policy decided
    rule: int | None
    reason: str


def principal(ep: Endpoint, trust_domain: str) -> str | None:
    """The Istio principal of a pod (`td/ns/N/sa/S`); None for a node or an outside address."""
    if ep.kind is not EndpointKind.POD:
        return None
    return f"{trust_domain}/ns/{ep.namespace}/sa/{ep.labels.get(SA_LABEL, 'default')}"


def _shown(values: Iterable[object]) -> str:
    items = [str(v) for v in values]
    return items[0] if len(items) == 1 else "[" + ", ".join(items) + "]"


def _patterns(
    name: str, value: str | None, yes: tuple[Pattern, ...] | None, no: tuple[Pattern, ...] | None
) -> list[str] | None:
    """How `value` meets a field and its `not` form: the explanations, or None when it does not."""
    out = []
    shown = value if value is not None else "none (plaintext)"
    if yes is not None:
        if not any_matches(yes, value):
            return None
        out.append(f"{name} {shown}")
    if no is not None:
        if any_matches(no, value):
            return None
        out.append(f"{name} {shown} not in {_shown(no)}")
    return out


def _source(src: Source, req: Request) -> list[str] | None:
    namespace = req.source_namespace if req.principal is not None else None
    parts = [
        _patterns("principal", req.principal, src.principals, src.not_principals),
        _patterns("namespace", namespace, src.namespaces, src.not_namespaces),
    ]
    why: list[str] = []
    for part in parts:
        if part is None:
            return None
        why += part
    ip = req.source_ip
    if src.ip_blocks is not None:
        inside = [n for n in src.ip_blocks if ip.version == n.version and ip in n]
        if not inside:
            return None
        why.append(f"source {ip} in {inside[0]}")
    if src.not_ip_blocks is not None:
        if any(ip.version == n.version and ip in n for n in src.not_ip_blocks):
            return None
        why.append(f"source {ip} not in {_shown(src.not_ip_blocks)}")
    return why


def _operation(op: Operation, req: Request, *, ignore_http: bool) -> list[str] | None:
    """Paths are compared without the query, as Istio's authorization does."""
    why = []
    if op.ports is not None:
        if req.port not in op.ports:
            return None
        why.append(f"port {req.port}")
    if op.not_ports is not None:
        if req.port in op.not_ports:
            return None
        why.append(f"port {req.port} not in {_shown(op.not_ports)}")
    if ignore_http:
        return why
    for part in (
        _patterns("method", req.method, op.methods, op.not_methods),
        _patterns("path", None if req.path is None else req.path.partition("?")[0], op.paths, op.not_paths),
    ):
        if part is None:
            return None
        why += part
    return why


def _rule(rule: Rule, req: Request, action: Action) -> list[str] | None:
    """Why `rule` matches `req` (a list of the conditions met), or None.

    A request that is not HTTP never matches an ALLOW rule naming methods or paths, and a DENY
    rule's methods and paths are ignored for it: Istio's builder (`rule.checkError`) drops the
    field for DENY (a wider deny) and the whole rule for ALLOW (a smaller allow)."""
    if not req.http and rule.http_only and action is Action.ALLOW:
        return None
    ignore_http = not req.http and action is Action.DENY
    why: list[str] = []
    if rule.sources:
        found = next((w for src in rule.sources if (w := _source(src, req)) is not None), None)
        if found is None:
            return None
        why += found
    if rule.operations:
        found = next(
            (w for op in rule.operations if (w := _operation(op, req, ignore_http=ignore_http)) is not None), None
        )
        if found is None:
            return None
        why += found
    if ignore_http and rule.http_only:
        why.append("methods and paths ignored: not an HTTP request")
    return why


class IstioIndex:
    """The Istio policies of a mesh, by cluster; every question is about one destination pod."""

    __slots__ = ("_authz", "_peer")

    def __init__(self, authz: Iterable[AuthorizationPolicy], peer: Iterable[PeerAuthentication]) -> None:
        self._authz: dict[str, list[AuthorizationPolicy]] = defaultdict(list)
        self._peer: dict[str, list[PeerAuthentication]] = defaultdict(list)
        for p in sorted(authz, key=lambda p: (p.cluster, p.ref)):
            self._authz[p.cluster].append(p)
        for q in sorted(peer, key=lambda p: (p.cluster, p.ref)):
            self._peer[q.cluster].append(q)

    def policies(self, dst: Endpoint) -> list[AuthorizationPolicy]:
        """The AuthorizationPolicies that apply to `dst`, sorted by namespace and name."""
        if dst.kind is not EndpointKind.POD:
            return []
        return [
            p
            for p in self._authz.get(dst.cluster, [])
            if p.namespace in (dst.namespace, ROOT_NAMESPACE) and selects(p.selector, dst.labels)
        ]

    def mode(self, dst: Endpoint, port: int) -> ModeDecision:
        """The mTLS mode `dst` accepts on `port`, with the PeerAuthentication that set it."""
        if dst.kind is not EndpointKind.POD:
            return ModeDecision(Mode.PERMISSIVE, f"{dst.ref} is not a mesh workload: PERMISSIVE")
        found = self._peer.get(dst.cluster, [])
        mesh = next((p for p in found if p.namespace == ROOT_NAMESPACE and p.selector is None), None)
        namespace = next((p for p in found if p.namespace == dst.namespace and p.selector is None), None)
        workloads = [
            p for p in found if p.namespace == dst.namespace and p.selector and selects(p.selector, dst.labels)
        ]
        decision = ModeDecision(Mode.PERMISSIVE, NO_PEER_AUTHENTICATION)
        for level in (mesh, namespace):
            if level is not None and level.mode is not None:
                decision = ModeDecision(level.mode, f"PeerAuthentication {level.ref}")
        if workloads:
            chosen = workloads[0]
            also = ""
            if len(workloads) > 1:
                others = ", ".join(p.ref for p in workloads[1:])
                also = f" (also selected by {others}; Istio applies the oldest — keep one)"
            port_mode = chosen.port_modes.get(port)
            if port_mode is not None:
                decision = ModeDecision(port_mode, f"PeerAuthentication {chosen.ref} port {port}{also}")
            elif chosen.mode is not None:
                decision = ModeDecision(chosen.mode, f"PeerAuthentication {chosen.ref}{also}")
        return decision

    def authorize(self, dst: Endpoint, req: Request) -> AuthzVerdict:
        """Istio's verdict on `req` arriving at `dst`, naming the policy and rule that decided it."""
        applying = self.policies(dst)
        for p in applying:
            if p.action is not Action.DENY:
                continue
            for i, rule in enumerate(p.rules):
                why = _rule(rule, req, Action.DENY)
                if why is not None:
                    return AuthzVerdict(False, p.ref, i, f"denied by DENY policy {p.ref} rule {i}: {_because(why)}")
        allows = [p for p in applying if p.action is Action.ALLOW]
        if not allows:
            if applying:
                return AuthzVerdict(
                    True, "", None, "no DENY policy matched and no ALLOW policy selects this workload: allowed"
                )
            return AuthzVerdict(True, "", None, "no AuthorizationPolicy selects this workload: allowed")
        for p in allows:
            for i, rule in enumerate(p.rules):
                why = _rule(rule, req, Action.ALLOW)
                if why is not None:
                    return AuthzVerdict(True, p.ref, i, f"allowed by ALLOW policy {p.ref} rule {i}: {_because(why)}")
        return AuthzVerdict(
            False, "", None, f"no ALLOW policy matched ({len(allows)} on this workload){_hints(allows, req)}"
        )

    def needs_http(self, dst: Endpoint, port: int) -> bool:
        """Whether some policy on `dst` reads methods or paths of requests to `port`: the proxy must
        then read the request as HTTP to decide."""
        return any(
            rule.http_only and any(_admits(op, port) for op in rule.operations)
            for p in self.policies(dst)
            for rule in p.rules
        )


def _admits(op: Operation, port: int) -> bool:
    return (op.ports is None or port in op.ports) and (op.not_ports is None or port not in op.not_ports)


def _because(why: list[str]) -> str:
    return ", ".join(why) if why else "the rule has no conditions (it matches every request)"


def _hints(allows: Sequence[AuthorizationPolicy], req: Request) -> str:
    """Why a request a user expected to pass may match no ALLOW rule."""
    rules = [r for p in allows for r in p.rules]
    out = []
    if req.principal is None and any(s.principals or s.namespaces for r in rules for s in r.sources):
        out.append("the request is plaintext, so it has no principal or namespace for principals/namespaces to match")
    if not req.http and any(r.http_only for r in rules):
        out.append("it is not HTTP, so rules naming methods or paths do not match it")
    return "; " + "; ".join(out) if out else ""


def istio_index(plan: Plan, manifests: Mapping[str, list[k8s.Manifest]]) -> IstioIndex:
    """The Istio policies of every cluster of the plan."""
    authz: list[AuthorizationPolicy] = []
    peer: list[PeerAuthentication] = []
    for c in plan.clusters:
        a, p = cluster_policies(c.name, manifests.get(c.name, []))
        authz += a
        peer += p
    return IstioIndex(authz, peer)
