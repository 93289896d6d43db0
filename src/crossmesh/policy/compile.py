"""Policy → nftables sets for one node of the lab, from the evaluator's own index.

Cilium enforces with identities and BPF maps; the lab does the same with nftables:

- every address the node may see maps to a numeric identity (`map ident`): pods of its
  identity domain by their identity (id + 256), its own node as `host` (1), other
  nodes of the domain as `remote-node` (6), anything else stays `world` (2) —
  Cilium's reserved identity numbers;
- the verdict for a new connection is a handful of set lookups keyed by
  (local identity . peer identity . protocol . port), so the cost per packet does not
  grow with the number of policies or rules;
- deny elements are looked up first (deny wins), then, for identities made default-deny
  by a selecting policy, the allow elements; established flows pass both ways.

The sets are built from `PolicyIndex._table`, the evaluator's per-(identity, direction)
rule table, so the data plane and `policy trace` share one reading of the policies. What an
identity adds to a node's sets does not depend on the node: it is compiled and printed once
per index and shared by every node hosting the identity (benchmarks/bench_policy_compile.py).
Enforcement is on the node's forward path (pod to pod, other nodes to pods) and input
path (a pod to its own node, e.g. the lab's DNS, which Cilium filters on egress too).
HTTP rules need the L7 proxy; their ports are listed in `l7` so that it can take them.
"""

from __future__ import annotations

import bisect
import gc
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import ParamSpec, TypeVar
from weakref import WeakKeyDictionary

from crossmesh import nft
from crossmesh.observe import codes
from crossmesh.policy.evaluator import PolicyIndex
from crossmesh.policy.model import (
    Action,
    Direction,
    Endpoint,
    EndpointKind,
    PeerTerm,
    PortMatcher,
    Rule,
    View,
)

HOST, WORLD, REMOTE_NODE = 1, 2, 6
IDENTITY_BASE = 256
PROTOCOLS = ("TCP", "UDP", "SCTP")
ALL = (0, 65535)

Range = tuple[int, int]
T = TypeVar("T")
P = ParamSpec("P")


def mark(identity: int) -> int:
    return IDENTITY_BASE + identity


@dataclass(slots=True)
class _Sets:
    """Elements of one (action, direction) for one local identity: peers by identity mark,
    world by address. Every key starts with the local identity's mark."""

    l4: dict[tuple[int, int, str], list[Range]] = field(default_factory=lambda: defaultdict(list))
    l3: set[tuple[int, int]] = field(default_factory=set)
    world: dict[tuple[int, str], list[tuple[Range, Range]]] = field(default_factory=lambda: defaultdict(list))
    world_l3: dict[int, list[Range]] = field(default_factory=lambda: defaultdict(list))
    any_l4: dict[tuple[int, str], list[Range]] = field(default_factory=lambda: defaultdict(list))
    any_l3: set[int] = field(default_factory=set)


Printed = dict[str, nft.Elements]  # set name suffix ("", "_l3", "_world", ...) → its elements, printed


@dataclass(slots=True)
class _Part:
    """What one pod identity adds to the sets of a node hosting it, printed. It does not depend
    on the node, so it is compiled once per index however many nodes host the identity."""

    isolated: tuple[Direction, ...]
    sets: dict[tuple[Action, Direction], Printed]
    l7: set[tuple[IPv4Address, int, str]]


@dataclass(slots=True)
class _PodMarks:
    """An identity domain's pod addresses and their identity marks, shared by the domain's
    nodes (read only); the elements of `map ident` are printed once, in address order, with
    the addresses as integers to merge each node's own entries into."""

    marks: dict[IPv4Address, int]
    _printed: tuple[list[int], nft.Elements] | None = None

    def printed(self) -> tuple[list[int], nft.Elements]:
        if self._printed is None:
            self._printed = _ident(self.marks)
        return self._printed


@dataclass(slots=True)
class NodePolicy:
    """What one node enforces, ready to serialise as nftables (`nft_sets`).

    `sets[(action, direction)]` holds the elements of each local identity, in identity order;
    they are shared with the other nodes hosting the identity: read only."""

    pods: _PodMarks
    nodes: dict[IPv4Address, int]  # this node's addresses (host) and its domain's other nodes' (remote-node)
    isolated: dict[Direction, set[int]]
    sets: dict[tuple[Action, Direction], list[Printed]]
    l7: set[tuple[IPv4Address, int, str]]  # (pod address, port, protocol) carrying HTTP rules

    @property
    def ident(self) -> dict[IPv4Address, int]:
        """Every address the node maps to an identity (`map ident`)."""
        return {**self.pods.marks, **self.nodes}

    @property
    def active(self) -> bool:
        return any(self.isolated.values()) or any(
            any(elements.values()) for parts in self.sets.values() for elements in parts
        )


class _Memo:
    """Per index, what every node's compilation reads: endpoints by identity and by node, each
    identity domain's pod addresses, and each identity's `_Part` (built on first use)."""

    def __init__(self, index: PolicyIndex) -> None:
        self.members: dict[int, list[Endpoint]] = defaultdict(list)
        self.pods_on: dict[str, list[Endpoint]] = defaultdict(list)
        for e in index.endpoints.values():
            i = index.identity_of.get(e.ref)
            if i is not None:
                self.members[i].append(e)
            if e.kind is EndpointKind.POD:
                self.pods_on[e.node].append(e)
        self.parts: dict[int, _Part] = {}
        self.pod_marks: dict[str, _PodMarks] = {}

    def domain_marks(self, index: PolicyIndex, domain: str) -> _PodMarks:
        got = self.pod_marks.get(domain)
        if got is None:
            got = self.pod_marks[domain] = _PodMarks({})
            for e in index.endpoints.values():
                if e.kind is EndpointKind.POD:
                    i = index.identity_of.get(e.ref)
                    if i is not None and index.identities[i].domain == domain:
                        for a in e.addresses:
                            if isinstance(a, IPv4Address):
                                got.marks[a] = mark(i)
        return got


_MEMOS: WeakKeyDictionary[PolicyIndex, _Memo] = WeakKeyDictionary()


def _merge(ranges: Iterable[Range]) -> list[Range]:
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _cidr_ranges(term: PeerTerm) -> list[Range]:
    """The addresses of a CIDR term (network minus excepts) as integer ranges; IPv4 only."""
    if term.cidr is None or not isinstance(term.cidr.network, IPv4Network):
        return []
    net = term.cidr.network
    pieces = [(int(net.network_address), int(net.broadcast_address))]
    for ex in term.cidr.excepts:
        if not isinstance(ex, IPv4Network):
            continue
        lo, hi = int(ex.network_address), int(ex.broadcast_address)
        nxt: list[Range] = []
        for a, b in pieces:
            if hi < a or b < lo:
                nxt.append((a, b))
                continue
            if a < lo:
                nxt.append((a, lo - 1))
            if hi < b:
                nxt.append((hi + 1, b))
        pieces = nxt
    return _merge(pieces)


def _ports(pm: PortMatcher, named_sources: Iterable[Endpoint]) -> list[tuple[str, Range]]:
    protocols = (pm.protocol,) if pm.protocol else PROTOCOLS
    if pm.name is not None:
        found = set()
        for e in named_sources:
            got = e.named_ports.get(pm.name)
            if got is not None and got[1] in protocols:
                found.add((got[1], (got[0], got[0])))
        return sorted(found)
    if pm.port is None:
        return [(p, ALL) for p in protocols]
    return [(p, (pm.port, pm.end_port or pm.port)) for p in protocols]


def _without_gc(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    # Compiling allocates millions of small objects that all stay alive: the cyclic garbage
    # collector's full passes find nothing here and cost a third of the time (measured).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return fn(*args, **kwargs)
    finally:
        if enabled:
            gc.enable()


def compile_node(index: PolicyIndex, node: str, plan_nodes: dict[str, tuple[IPv4Address, ...]]) -> NodePolicy:
    """Sets for the pods on `node`; `plan_nodes` maps every node to its addresses."""
    return _without_gc(_compile_node, index, node, plan_nodes)


def _compile_node(index: PolicyIndex, node: str, plan_nodes: dict[str, tuple[IPv4Address, ...]]) -> NodePolicy:
    memo = _MEMOS.get(index)
    if memo is None:
        memo = _MEMOS[index] = _Memo(index)
    local = memo.pods_on.get(node, [])
    own = index.endpoints.get(node)
    if own is not None and own.kind is EndpointKind.NODE:
        node_cluster = own.cluster
    else:
        node_cluster = local[0].cluster if local else ""
    domain = index.domains.get(node_cluster, f"cluster {node_cluster}")
    pods = memo.domain_marks(index, domain)
    nodes: dict[IPv4Address, int] = {}
    for name, addresses in plan_nodes.items():
        other = index.endpoints.get(name)
        same = other is not None and index.domains.get(other.cluster) == domain
        for a in addresses:
            if name == node:
                nodes[a] = HOST
            elif same and a not in pods.marks:
                nodes.setdefault(a, REMOTE_NODE)
    result = NodePolicy(pods, nodes, {d: set() for d in Direction}, {}, set())
    for act in Action:
        for d in Direction:
            result.sets[(act, d)] = []
    for i in sorted({index.identity_of[e.ref] for e in local if e.ref in index.identity_of}):
        part = memo.parts.get(i)
        if part is None:
            part = memo.parts[i] = _compile_identity(index, i, memo.members)
        for d in part.isolated:
            result.isolated[d].add(mark(i))
        for key, sets in part.sets.items():
            result.sets[key].append(sets)
        result.l7 |= part.l7
    return result


def _compile_identity(index: PolicyIndex, i: int, members: dict[int, list[Endpoint]]) -> _Part:
    part = _Part((), {}, set())
    for d in Direction:
        table = index._table(i, d)  # noqa: SLF001 - the evaluator's own reading of the rules
        if not table.policies:
            continue
        if table.default_deny:
            part.isolated += (d,)
        for action, rules in ((Action.DENY, table.deny), (Action.ALLOW, table.allow)):
            sets = _Sets()
            # Term by term rather than `by_identity`: a wide table need not be inverted, and
            # the elements are the same (each set's ranges are sorted and merged when printed).
            for rule, _term, peer_ids in rules.selected:
                for peer_id in peer_ids:
                    _add(sets, mark(i), mark(peer_id), rule, d, members[i], members[peer_id], part.l7)
            for view, matches in rules.by_view.items():
                for rule, term in matches:
                    if view is View.WORLD and term.cidr is not None:
                        _add_world(sets, mark(i), rule, term, d, members[i])
                    elif view is View.WORLD:
                        _add_world(sets, mark(i), rule, None, d, members[i])
                    else:
                        peer_mark = HOST if view is View.HOST else REMOTE_NODE
                        _add(sets, mark(i), peer_mark, rule, d, members[i], [], part.l7)
            for rule, _term in rules.any:
                _add_any(sets, mark(i), rule, d, members[i], members)
            # Kept printed: strings cost the garbage collector nothing, unlike the builder's tuples.
            part.sets[(action, d)] = _print_sets(sets)
    return part


def _named_sources(d: Direction, local: list[Endpoint], peer: list[Endpoint]) -> list[Endpoint]:
    # A named port is the destination's: the peer's on egress, the local pod's on ingress.
    return peer if d is Direction.EGRESS else local


def _add(
    sets: _Sets,
    local: int,
    peer: int,
    rule: Rule,
    d: Direction,
    local_eps: list[Endpoint],
    peer_eps: list[Endpoint],
    l7: set[tuple[IPv4Address, int, str]],
) -> None:
    if not rule.ports:
        sets.l3.add((local, peer))
        return
    for pm in rule.ports:
        for proto, rng in _ports(pm, _named_sources(d, local_eps, peer_eps)):
            sets.l4[(local, peer, proto)].append(rng)
            if rule.http and rule.action is Action.ALLOW and d is Direction.INGRESS:
                for e in local_eps:
                    for a in e.addresses:
                        if isinstance(a, IPv4Address) and rng[0] == rng[1]:
                            l7.add((a, rng[0], proto))


def _add_world(
    sets: _Sets, local: int, rule: Rule, term: PeerTerm | None, d: Direction, local_eps: list[Endpoint]
) -> None:
    addresses = _cidr_ranges(term) if term is not None else [(0, 2**32 - 1)]
    if not addresses:
        return
    if not rule.ports:
        sets.world_l3[local].extend(addresses)
        return
    for pm in rule.ports:
        for proto, rng in _ports(pm, local_eps if d is Direction.INGRESS else []):
            sets.world[(local, proto)].extend((a, rng) for a in addresses)


def _add_any(
    sets: _Sets, local: int, rule: Rule, d: Direction, local_eps: list[Endpoint], members: dict[int, list[Endpoint]]
) -> None:
    if not rule.ports:
        sets.any_l3.add(local)
        return
    everyone = [e for eps in members.values() for e in eps] if d is Direction.EGRESS else local_eps
    for pm in rule.ports:
        for proto, rng in _ports(pm, everyone):
            sets.any_l4[(local, proto)].append(rng)


# --- printing --------------------------------------------------------------------------------


def _disjoint(entries: list[tuple[Range, Range]]) -> list[tuple[Range, list[Range]]]:
    """Address ranges that do not overlap, each with the merged port ranges of every entry
    covering it (nftables interval sets refuse overlapping elements)."""
    points = sorted({p for (lo, hi), _ in entries for p in (lo, hi + 1)})
    out: list[tuple[Range, list[Range]]] = []
    for a, b in zip(points, points[1:], strict=False):
        ports = _merge(rng for (lo, hi), rng in entries if lo <= a and b - 1 <= hi)
        if not ports:
            continue
        if out and out[-1][0][1] + 1 == a and out[-1][1] == ports:
            out[-1] = ((out[-1][0][0], b - 1), ports)
        else:
            out.append(((a, b - 1), ports))
    return out


def _addresses(r: Range) -> tuple[IPv4Address, IPv4Address]:
    return IPv4Address(r[0]), IPv4Address(r[1])


PROTO = {"TCP": nft.Proto.TCP, "UDP": nft.Proto.UDP, "SCTP": nft.Proto.SCTP}
MARK, ADDR, L4PROTO, SERVICE = nft.Type.MARK, nft.Type.IPV4_ADDR, nft.Type.INET_PROTO, nft.Type.INET_SERVICE

SET_TYPES: tuple[tuple[str, tuple[nft.Type, ...], bool], ...] = (
    ("", (MARK, MARK, L4PROTO, SERVICE), True),
    ("_l3", (MARK, MARK), False),
    ("_world", (MARK, ADDR, L4PROTO, SERVICE), True),
    ("_world_l3", (MARK, ADDR), True),
    ("_any", (MARK, L4PROTO, SERVICE), True),
    ("_any_l3", (MARK,), False),
)
_KEYS = {suffix: key for suffix, key, _ in SET_TYPES}
IDENT_KEY: tuple[nft.Type, ...] = (ADDR,)


def _ident(marks: dict[IPv4Address, int]) -> tuple[list[int], nft.Elements]:
    """The elements of `map ident` for these addresses, in address order, and the addresses as integers."""
    ordered = sorted(marks)
    return [int(a) for a in ordered], nft.elements(IDENT_KEY, [(a, marks[a]) for a in ordered], data=MARK)


def _ident_map(policy: NodePolicy) -> nft.Map:
    """The pods' elements (shared) with the node's own merged in, in address order; a node's entry
    wins over a pod's of the same address."""
    keys, pods = policy.pods.printed()
    own, nodes = _ident(policy.nodes)
    blocks = []
    start = 0
    for k, address in enumerate(own):
        i = bisect.bisect_left(keys, address, lo=start)
        blocks += [pods.part(start, i), nodes.part(k, k + 1)]
        start = i + 1 if i < len(keys) and keys[i] == address else i
    blocks.append(pods.part(start, len(keys)))
    # One block: the parts are many small objects the garbage collector would have to walk.
    return nft.Map("ident", IDENT_KEY, MARK, (nft.Elements.concat(blocks),))


def _print_sets(s: _Sets) -> Printed:
    return {
        "": nft.elements(
            _KEYS[""], ((lo, pe, PROTO[p], r) for (lo, pe, p), rs in sorted(s.l4.items()) for r in _merge(rs))
        ),
        "_l3": nft.elements(_KEYS["_l3"], sorted(s.l3)),
        "_world": nft.elements(
            _KEYS["_world"],
            (
                (lo, _addresses(a), PROTO[p], r)
                for (lo, p), entries in sorted(s.world.items())
                for a, ports in _disjoint(entries)
                for r in ports
            ),
        ),
        "_world_l3": nft.elements(
            _KEYS["_world_l3"], ((lo, _addresses(a)) for lo, rs in sorted(s.world_l3.items()) for a in _merge(rs))
        ),
        "_any": nft.elements(
            _KEYS["_any"], ((lo, PROTO[p], r) for (lo, p), rs in sorted(s.any_l4.items()) for r in _merge(rs))
        ),
        "_any_l3": nft.elements(_KEYS["_any_l3"], ((m,) for m in sorted(s.any_l3))),
    }


def nft_sets(policy: NodePolicy) -> list[nft.Item]:
    """The node's identity map and its policy sets (a counter on every element)."""
    return _without_gc(_nft_sets, policy)  # the first call per domain prints every pod's entry


def _nft_sets(policy: NodePolicy) -> list[nft.Item]:
    out: list[nft.Item] = [_ident_map(policy)]
    for d in Direction:
        iso = nft.elements((MARK,), ((m,) for m in sorted(policy.isolated[d])))
        out.append(nft.Set(f"isolated_{d.value}", (MARK,), (iso,), counter=True))
    for (action, d), parts in sorted(policy.sets.items(), key=lambda kv: (kv[0][0].value, kv[0][1].value)):
        tag = f"{action.value}_{d.value}"
        # Each part's elements start with its own identity's mark and parts come in identity
        # order, so their concatenation is the sorted whole.
        for suffix, key, interval in SET_TYPES:
            blocks = tuple(p[suffix] for p in parts)
            out.append(nft.Set(f"{tag}{suffix}", key, blocks, interval=interval, counter=True))
    return out


def _lookup(
    key: tuple[nft.Field, ...],
    set_name: str,
    verdict: tuple[nft.Expr, ...],
    note: str | None,
    *,
    when: tuple[nft.Match, ...] = (),
) -> nft.Rule:
    """`[when…] <key> @<set_name> <verdict>`."""
    return nft.Rule((*when, nft.Match(key, nft.SetRef(set_name)), *verdict), note)


def _direction_chain(d: Direction) -> nft.Chain:
    """Egress: local = source (meta mark), peer = destination (ct mark); ingress the reverse."""
    F = nft.Field  # noqa: N806 - a short name for a table of fields
    local, peer = (F.META_MARK, F.CT_MARK) if d is Direction.EGRESS else (F.CT_MARK, F.META_MARK)
    peer_addr = F.IP_DADDR if d is Direction.EGRESS else F.IP_SADDR
    l4 = (F.META_L4PROTO, F.TH_DPORT)
    world = nft.Match(peer, WORLD)
    rules: list[nft.Rule] = []
    if d is Direction.INGRESS:
        rules.append(nft.Rule((nft.Match(F.META_MARK, HOST), nft.Verdict.RETURN), "from its own node: always allowed"))
    for action in (Action.DENY, Action.ALLOW):
        tag = f"{action.value}_{d.value}"
        verdict: tuple[nft.Expr, ...] = (nft.Verdict.RETURN,)
        note = None
        if action is Action.DENY:
            deny = nft.Log(codes.GROUP, codes.deny(d.value))
            verdict, note = (deny, nft.Counter(), nft.Verdict.DROP), f"denied by a {d.value} deny rule"
        else:
            rules.append(nft.Rule((nft.Match(local, nft.SetRef(f"isolated_{d.value}"), negate=True), *verdict)))
        rules += [
            _lookup((local, peer, *l4), tag, verdict, note),
            _lookup((local, peer), f"{tag}_l3", verdict, note),
            _lookup((local, peer_addr, *l4), f"{tag}_world", verdict, note, when=(world,)),
            _lookup((local, peer_addr), f"{tag}_world_l3", verdict, note, when=(world,)),
            _lookup((local, *l4), f"{tag}_any", verdict, note),
            _lookup((local,), f"{tag}_any_l3", verdict, note),
        ]
    default = nft.Log(codes.GROUP, codes.default(d.value))
    rules.append(nft.Rule((default, nft.Counter(), nft.Verdict.DROP), f"policy-denied {d.value}"))
    return nft.Chain(f"verdict_{d.value}", tuple(rules))


def nft_chains(pod_ifaces: list[str], self_pairs: list[IPv4Address]) -> list[nft.Item]:
    """The chains that use the sets: called from the node's forward chain for new flows."""
    F = nft.Field  # noqa: N806 - a short name for a table of fields
    ifs = nft.elements((nft.Type.IFNAME,), ((i,) for i in sorted(pod_ifaces)))
    selfs = nft.elements((ADDR, ADDR), ((a, a) for a in sorted(self_pairs)))
    ident = "ident"
    netpol = (
        nft.Rule((nft.Match(F.CT_STATE, (nft.CtState.ESTABLISHED, nft.CtState.RELATED)), nft.Verdict.ACCEPT)),
        _lookup((F.IP_SADDR, F.IP_DADDR), "self_pairs", (nft.Verdict.ACCEPT,), "a pod can always reach itself"),
        nft.Rule((nft.SetMark(F.META_MARK, WORLD),)),
        nft.Rule((nft.SetMark(F.META_MARK, nft.MapLookup(F.IP_SADDR, ident)),)),
        nft.Rule((nft.SetMark(F.CT_MARK, WORLD),)),
        nft.Rule((nft.SetMark(F.CT_MARK, nft.MapLookup(F.IP_DADDR, ident)),)),
        # Redirected to the L7 proxy, the flow now ends on the node: judge it by where it was going.
        nft.Rule(
            (
                nft.Match(F.CT_STATUS, nft.CtStatus.DNAT),
                nft.Match(F.CT_MARK, HOST),
                nft.SetMark(F.CT_MARK, nft.MapLookup(F.CT_ORIGINAL_IP_DADDR, ident)),
            )
        ),
        nft.Rule((nft.Match(F.IIFNAME, nft.SetRef("local_pods")), nft.Jump("verdict_egress"))),
        nft.Rule((nft.Match(F.OIFNAME, nft.SetRef("local_pods")), nft.Jump("verdict_ingress"))),
    )
    return [
        nft.Set("local_pods", (nft.Type.IFNAME,), (ifs,)),
        nft.Set("self_pairs", (ADDR, ADDR), (selfs,)),
        nft.Chain("netpol", netpol),
        _direction_chain(Direction.EGRESS),
        _direction_chain(Direction.INGRESS),
    ]


L7_PROXY_PORT = 15001


def nft_l7(policy: NodePolicy) -> tuple[nft.Set | None, nft.Rule | None]:
    """The set of (pod address . port) carrying HTTP rules on this node, and the prerouting
    rule that hands their new connections to the node's L7 proxy (SO_ORIGINAL_DST tells it
    where they were going); none without HTTP rules."""
    tcp = sorted((a, port) for a, port, proto in policy.l7 if proto == "TCP")
    if not tcp:
        return None, None
    key = (ADDR, SERVICE)
    return (
        nft.Set("l7_ports", key, (nft.elements(key, tcp),)),
        _lookup(
            (nft.Field.IP_DADDR, nft.Field.TCP_DPORT),
            "l7_ports",
            (nft.Counter(), nft.Log(codes.GROUP, codes.NAT), nft.Redirect(L7_PROXY_PORT)),
            None,
        ),
    )
