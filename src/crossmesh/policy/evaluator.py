"""The verdict for one flow, with the policies and the rule that decided it.

A flow from A to B is allowed when A's egress allows it and B's ingress allows it,
each decided by the policies of the endpoint's own cluster — across clusters too
(Cilium docs, "Layer 3 Policies": "policy must be configured on both sides").
Per direction, for the enforcing pod:

1. no policy selects it → "no policy selects it: allowed by default";
2. a deny rule matches → denied: "Deny policies take precedence over allow policies,
   regardless of whether they are a Cilium Network Policy, a Clusterwide Cilium Network
   Policy or even a Kubernetes Network Policy" (Cilium docs, "Deny Policies");
3. an allow rule matches: without HTTP rules → allowed; with HTTP rules the request
   must match one of them, else HTTP 403. "If a layer 4 rule is specified in the
   policy, and a similar layer 4 rule with layer 7 rules is also specified, then the
   layer 7 portions of the latter rule will have no effect" (Cilium docs, "Layer 7");
4. otherwise denied when a selecting policy makes the direction default-deny.

Exceptions both projects document: a pod can always reach itself (Kubernetes,
"a pod cannot block access to itself"); traffic from the pod's own node is allowed
(Cilium: "Kubernetes will automatically allow all communication from the local host
of all local endpoints"; Kubernetes, outside Cilium, also to it: "traffic to and from
the node where a Pod is running is always allowed").

Speed: pods with equal labels form one identity (as in Cilium). The index computes
once which policies select each identity, and per (identity, direction) — on first
use — which rules apply to which peer identity, so a verdict is a few dictionary
lookups and port comparisons.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import chain
from typing import Any, NamedTuple

from crossmesh.policy.model import (
    CILIUM_DOMAIN,
    RESERVED_VIEW_LABELS,
    Action,
    Address,
    Direction,
    Endpoint,
    EndpointKind,
    HttpRequest,
    HttpRule,
    Operator,
    PeerTerm,
    Policy,
    PortMatcher,
    Requirement,
    Rule,
    Selector,
    View,
)

NON_IDENTITY_VIEWS = (View.HOST, View.REMOTE_NODE, View.WORLD)


class Reason(StrEnum):
    DEFAULT_ALLOW = "default-allow"
    ALLOWED = "allowed"
    DENIED = "denied"
    DEFAULT_DENY = "default-deny"
    L7_DENIED = "l7-denied"
    LOCAL_HOST = "local-host"
    SELF = "self"
    NOT_A_POD = "not-a-pod"


class Decision(NamedTuple):
    """The rule that decided a direction, and which of its parts matched."""

    rule: Rule
    peer: PeerTerm
    port: PortMatcher
    http: HttpRule | None = None

    def as_json(self, policies: Mapping[Any, Policy]) -> dict[str, Any]:
        p = self.rule.policy
        owner = policies.get(p)
        return {
            "policy": str(p),
            "kind": p.kind.value,
            "cluster": p.cluster,
            "namespace": p.namespace,
            "name": p.name,
            "rule": self.rule.path,
            "action": self.rule.action.value,
            "peer": str(self.peer),
            "port": str(self.port),
            "http": None if self.http is None else str(self.http),
            "file": owner.file if owner else "",
            "line": owner.line if owner else 0,
        }


class Side(NamedTuple):
    """One direction of a flow: the egress of the source or the ingress of the destination.

    A NamedTuple rather than a frozen dataclass: two are made per verdict, and a frozen
    dataclass's __init__ (object.__setattr__ per field) was most of a verdict's cost.
    """

    direction: Direction
    endpoint: Endpoint  # the endpoint whose policies decide
    peer: Endpoint
    view: View  # how `endpoint` sees `peer`
    allowed: bool
    reason: Reason
    policies: tuple[Policy, ...] = ()  # those that select `endpoint` in this direction
    decision: Decision | None = None
    http_rules: tuple[tuple[Rule, HttpRule], ...] = ()  # HTTP rules that filter requests on this flow

    @property
    def message(self) -> str:
        d = self.decision
        if self.reason is Reason.DEFAULT_ALLOW:
            if self.policies:
                return "selected, but no policy makes this direction default-deny: allowed by default"
            return "no policy selects it: allowed by default"
        if self.reason is Reason.NOT_A_POD:
            return f"{self.endpoint.kind.value} {self.endpoint.ref} is not a pod: no policy applies to it"
        if self.reason is Reason.SELF:
            return "a pod can always reach itself"
        if self.reason is Reason.LOCAL_HOST:
            return f"traffic with the pod's own node ({self.peer.ref}) is always allowed"
        if self.reason is Reason.DEFAULT_DENY:
            return "no rule allows it: denied by default (the endpoint is selected by a policy in this direction)"
        if self.reason is Reason.L7_DENIED:
            rules = " or ".join(f"{r.policy.name} {r.path} {h}" for r, h in self.http_rules)
            return f"the HTTP request matches none of the HTTP rules on this port ({rules}): denied with HTTP 403"
        assert d is not None  # noqa: S101 - ALLOWED and DENIED always carry their decision
        verb = "allowed" if self.reason is Reason.ALLOWED else "denied (deny rules win)"
        text = f"{verb} by {d.rule.policy} {d.rule.path}: peer {d.peer}, on {d.port}"
        if d.http is not None:
            text += f", HTTP {d.http}"
        elif self.http_rules:
            text += "; HTTP requests must match " + " or ".join(str(h) for _, h in self.http_rules)
        return text

    def as_json(self, policies: Mapping[Any, Policy]) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint.ref,
            "kind": self.endpoint.kind.value,
            "peer": self.peer.ref,
            "peer_seen_as": self.view.value,
            "verdict": "allowed" if self.allowed else "denied",
            "reason": self.reason.value,
            "message": self.message,
            "policies": [
                {
                    "policy": str(p.id),
                    "kind": p.id.kind.value,
                    "cluster": p.id.cluster,
                    "namespace": p.id.namespace,
                    "name": p.id.name,
                    "default_deny": self.direction in p.default_deny,
                    "file": p.file,
                    "line": p.line,
                }
                for p in self.policies
            ],
            "rule": None if self.decision is None else self.decision.as_json(policies),
            "http_rules": [f"{r.policy} {r.path} {h}" for r, h in self.http_rules],
        }


class Verdict(NamedTuple):
    allowed: bool
    egress: Side
    ingress: Side

    @property
    def verdict(self) -> str:
        return "allowed" if self.allowed else "denied"


@dataclass(frozen=True, slots=True)
class Identity:
    """Pods with the same identity labels (their cluster and namespace are among them)."""

    id: int
    cluster: str
    domain: str
    labels: Mapping[str, str] = field(compare=False, hash=False)
    endpoints: tuple[str, ...] = ()


Match = tuple[Rule, PeerTerm]


@dataclass(slots=True)
class RuleSet:
    """The rules of one action for one (identity, direction), filed by the peer they can match.

    `selected`: (rule, term, peer identity ids) for terms whose selector matches pod
    identities of the same identity domain — the id sets are shared between tables;
    `by_identity[peer identity id]`: the same, inverted (built when first read, or at once
    when small); `by_view[HOST | REMOTE_NODE | WORLD]`: rules matching that reserved view —
    for WORLD a term with `cidr` still has to contain the peer's address; `any`: wildcard
    terms, matching every peer. Entries are (rule, matching term); the rule's `ports` and
    `http` still apply. Lists follow the policies' order.
    """

    selected: list[tuple[Rule, PeerTerm, frozenset[int]]] = field(default_factory=list)
    by_view: dict[View, list[Match]] = field(default_factory=lambda: {v: [] for v in NON_IDENTITY_VIEWS})
    any: list[Match] = field(default_factory=list)
    _by_identity: dict[int, list[Match]] | None = None

    @property
    def by_identity(self) -> dict[int, list[Match]]:
        if self._by_identity is None:
            inverted: dict[int, list[Match]] = defaultdict(list)
            for rule, term, ids in self.selected:
                for peer in ids:
                    inverted[peer].append((rule, term))
            self._by_identity = dict(inverted)
        return self._by_identity

    def candidates(self, view: View, peer_id: int) -> Iterable[Match]:
        if view is not View.IDENTITY:
            own: Iterable[Match] = self.by_view[view]
        elif self._by_identity is not None:
            own = self._by_identity.get(peer_id, ())
        else:
            # A wide table (selectors matching thousands of identities) is scanned rather than
            # inverted: a membership test per term beats building a list per peer identity.
            own = [(rule, term) for rule, term, ids in self.selected if peer_id in ids]
        return chain(own, self.any) if self.any else own


INVERT_BUDGET = 1024  # (term, peer identity) pairs up to which a table is inverted when built


@dataclass(slots=True)
class RuleTable:
    """Everything that decides one direction for one identity: what a data-plane compiler reads.

    Not in the table, because they do not depend on policy: a pod always reaches itself,
    and traffic from its own node (Cilium), or to and from it (other CNIs), is allowed.
    """

    policies: tuple[Policy, ...]  # selecting the identity in this direction
    default_deny: bool  # some selecting policy makes the direction default-deny
    deny: RuleSet  # checked first: a match denies
    allow: RuleSet


class PolicyIndex:
    """Policies, endpoints and identities of a mesh, with per-identity selections precomputed.

    `domains` maps each cluster to its identity domain: clusters of one domain see each
    other's pods by labels (Cilium Cluster Mesh); other peers are seen as world.
    """

    def __init__(self, policies: Iterable[Policy], endpoints: Iterable[Endpoint], domains: Mapping[str, str]) -> None:
        self.policies: tuple[Policy, ...] = tuple(sorted(policies, key=lambda p: p.id))
        self.by_policy_id = {p.id: p for p in self.policies}
        self.domains = dict(domains)
        self.endpoints: dict[str, Endpoint] = {}
        self.by_address: dict[Address, Endpoint] = {}
        keyed: dict[tuple[str, tuple[tuple[str, str], ...]], list[Endpoint]] = {}
        for e in endpoints:
            self.endpoints[e.ref] = e
            for a in e.addresses:
                self.by_address.setdefault(a, e)
            if e.kind is EndpointKind.POD:
                keyed.setdefault((e.cluster, e.identity_key()), []).append(e)
        self.identities: list[Identity] = []
        self.identity_of: dict[str, int] = {}
        self._postings: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        self._by_cluster: dict[str, set[int]] = defaultdict(set)
        self._by_domain: dict[str, set[int]] = defaultdict(set)
        for i, ((cluster, labels), members) in enumerate(sorted(keyed.items())):
            domain = self.domains.get(cluster, f"cluster {cluster}")
            self.identities.append(Identity(i, cluster, domain, dict(labels), tuple(m.ref for m in members)))
            for m in members:
                self.identity_of[m.ref] = i
            for k, v in labels:
                self._postings[k][v].add(i)
            self._by_cluster[cluster].add(i)
            self._by_domain[domain].add(i)
        self._all = frozenset(range(len(self.identities)))
        self._selected: dict[tuple[Selector, str], frozenset[int]] = {}
        self._tables: dict[tuple[int, Direction], RuleTable] = {}
        self._shared: dict[tuple[Direction, str, tuple[int, ...]], RuleTable] = {}
        self._views: dict[Selector, tuple[View, ...]] = {}
        self._order = {p.id: i for i, p in enumerate(self.policies)}
        # Which policies select each identity, per direction: computed once, here.
        self.selections: dict[int, dict[Direction, list[Policy]]] = defaultdict(lambda: {d: [] for d in Direction})
        for p in self.policies:
            directions = [d for d in Direction if p.applies(d)]
            for i in sorted(self.select(p.subject, within=self._by_cluster.get(p.id.cluster, set()))):
                for d in directions:
                    self.selections[i][d].append(p)

    # --- selection ----------------------------------------------------------------------------

    def _requirement_ids(self, r: Requirement) -> set[int] | frozenset[int]:
        postings = self._postings.get(r.key)
        if r.operator is Operator.IN:
            return set().union(*(postings.get(v, ()) for v in r.values)) if postings else set()
        if r.operator is Operator.EXISTS:
            return set().union(*postings.values()) if postings else set()
        if r.operator is Operator.NOT_IN:
            return self._all - (set().union(*(postings.get(v, ()) for v in r.values)) if postings else set())
        return self._all - (set().union(*postings.values()) if postings else set())

    def select(self, selector: Selector, *, within: Iterable[int] | None = None) -> frozenset[int]:
        """Identity ids whose labels match `selector` (restricted to `within` when given)."""
        result: set[int] | frozenset[int] = self._all if within is None else frozenset(within)
        for r in selector.requirements:
            if not result:
                break
            result = result & self._requirement_ids(r)
        return frozenset(result)

    def _peer_ids(self, selector: Selector, domain: str) -> frozenset[int]:
        key = (selector, domain)
        got = self._selected.get(key)
        if got is None:
            got = self._selected[key] = self.select(selector, within=self._by_domain.get(domain, set()))
        return got

    def identities_of_peer(self, term: PeerTerm, cluster: str) -> frozenset[int]:
        """The pod identities a peer term matches for a policy of `cluster` (for compilers)."""
        domain = self.domains.get(cluster, f"cluster {cluster}")
        if term.wildcard:
            return frozenset(self._by_domain.get(domain, set()))
        if term.selector is None:
            return frozenset()
        return self._peer_ids(term.selector, domain)

    def policies_selecting(self, endpoint: Endpoint, direction: Direction) -> tuple[Policy, ...]:
        i = self.identity_of.get(endpoint.ref)
        if i is None:
            return tuple(p for p in self.policies if p.applies(direction) and p.selects(endpoint))
        return tuple(self.selections[i][direction]) if i in self.selections else ()

    def rule_table(self, identity: int, direction: Direction) -> RuleTable:
        """The rules deciding `direction` for pod identity `identity` (built on first use, then kept).

        A table depends only on the selecting policies and the identity domain, so identities
        selected by the same policies share one table.
        """
        key = (identity, direction)
        table = self._tables.get(key)
        if table is not None:
            return table
        selecting = self.selections[identity][direction] if identity in self.selections else []
        domain = self.identities[identity].domain
        shared = (direction, domain, tuple(self._order[p.id] for p in selecting))
        table = self._shared.get(shared)
        if table is None:
            table = self._shared[shared] = self._build_table(selecting, direction, domain)
        self._tables[key] = table
        return table

    def _build_table(self, selecting: list[Policy], direction: Direction, domain: str) -> RuleTable:
        table = RuleTable(tuple(selecting), any(direction in p.default_deny for p in selecting), RuleSet(), RuleSet())
        for p in selecting:
            for rule in p.rules:
                if rule.direction is not direction:
                    continue
                target = table.deny if rule.action is Action.DENY else table.allow
                for term in rule.peers:
                    match = (rule, term)
                    if term.wildcard:
                        target.any.append(match)
                    elif term.cidr is not None:
                        target.by_view[View.WORLD].append(match)
                    elif term.selector is not None:
                        ids = self._peer_ids(term.selector, domain)
                        if ids:
                            target.selected.append((rule, term, ids))
                        for view in self._reserved_views(term.selector):
                            target.by_view[view].append(match)
        for rules in (table.deny, table.allow):
            if sum(len(ids) for _, _, ids in rules.selected) <= INVERT_BUDGET:
                _ = rules.by_identity
        return table

    def _reserved_views(self, selector: Selector) -> tuple[View, ...]:
        got = self._views.get(selector)
        if got is None:
            got = self._views[selector] = tuple(
                v for v in NON_IDENTITY_VIEWS if selector.matches(RESERVED_VIEW_LABELS[v])
            )
        return got

    _table = rule_table  # the name the first compiler used

    # --- evaluation -----------------------------------------------------------------------------

    def view(self, subject: Endpoint, peer: Endpoint) -> tuple[View, int]:
        """How `subject` sees `peer`, and the peer's identity id when seen by identity."""
        domain = self.domains.get(subject.cluster)
        if peer.kind is EndpointKind.POD:
            peer_id = self.identity_of.get(peer.ref)
            if peer_id is not None and self.identities[peer_id].domain == domain:
                return View.IDENTITY, peer_id
            return View.WORLD, -1
        if peer.kind is EndpointKind.NODE:
            if peer.ref == subject.node:
                return View.HOST, -1
            if self.domains.get(peer.cluster) == domain:
                return View.REMOTE_NODE, -1
        return View.WORLD, -1

    def side(  # noqa: PLR0911, PLR0912, PLR0913 - the steps of the module docstring, in order
        self,
        direction: Direction,
        subject: Endpoint,
        peer: Endpoint,
        port: int,
        protocol: str,
        http: HttpRequest | None = None,
    ) -> Side:
        """The verdict of `subject`'s policies in `direction` on a flow with `peer`."""
        if subject.kind is not EndpointKind.POD:
            return Side(direction, subject, peer, View.WORLD, True, Reason.NOT_A_POD)
        view, peer_id = self.view(subject, peer)
        if peer.ref == subject.ref:
            return Side(direction, subject, peer, view, True, Reason.SELF)
        identity = self.identity_of.get(subject.ref)
        if identity is None:
            raise KeyError(f"{subject.ref} is not an endpoint of this index")
        if view is View.HOST and (direction is Direction.INGRESS or self.domains.get(subject.cluster) != CILIUM_DOMAIN):
            return Side(direction, subject, peer, view, True, Reason.LOCAL_HOST)
        table = self._tables.get((identity, direction)) or self.rule_table(identity, direction)
        if not table.policies:
            return Side(direction, subject, peer, view, True, Reason.DEFAULT_ALLOW)
        named = (peer if direction is Direction.EGRESS else subject).named_ports
        address = peer.address
        for rule, term in table.deny.candidates(view, peer_id):
            if term.cidr is not None and (address is None or not term.cidr.contains(address)):
                continue
            pm = rule.match_port(port, protocol, named)
            if pm is not None:
                return Side(
                    direction, subject, peer, view, False, Reason.DENIED, table.policies, Decision(rule, term, pm)
                )
        filtered: list[tuple[Rule, PeerTerm, PortMatcher]] = []
        for rule, term in table.allow.candidates(view, peer_id):
            if term.cidr is not None and (address is None or not term.cidr.contains(address)):
                continue
            pm = rule.match_port(port, protocol, named)
            if pm is None:
                continue
            if not rule.http:
                return Side(
                    direction, subject, peer, view, True, Reason.ALLOWED, table.policies, Decision(rule, term, pm)
                )
            filtered.append((rule, term, pm))
        if filtered:
            http_rules = tuple((r, h) for r, _, _ in filtered for h in r.http)
            if http is None:
                rule, term, pm = filtered[0]
                decision = Decision(rule, term, pm)
                return Side(direction, subject, peer, view, True, Reason.ALLOWED, table.policies, decision, http_rules)
            for rule, term, pm in filtered:
                for h in rule.http:
                    if h.matches(http):
                        decision = Decision(rule, term, pm, h)
                        return Side(
                            direction, subject, peer, view, True, Reason.ALLOWED, table.policies, decision, http_rules
                        )
            return Side(direction, subject, peer, view, False, Reason.L7_DENIED, table.policies, None, http_rules)
        if not table.default_deny:
            return Side(direction, subject, peer, view, True, Reason.DEFAULT_ALLOW, table.policies)
        return Side(direction, subject, peer, view, False, Reason.DEFAULT_DENY, table.policies)


def evaluate(  # noqa: PLR0913 - the flow's five parts plus the optional request
    index: PolicyIndex,
    src: Endpoint,
    dst: Endpoint,
    port: int,
    protocol: str,
    http: HttpRequest | None = None,
) -> Verdict:
    """Whether `src` may open `port`/`protocol` to `dst` (after service DNAT: `dst` is the backend)."""
    egress = index.side(Direction.EGRESS, src, dst, port, protocol, http)
    ingress = index.side(Direction.INGRESS, dst, src, port, protocol, http)
    return Verdict(egress.allowed and ingress.allowed, egress, ingress)
