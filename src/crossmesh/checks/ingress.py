"""`ingress/…`: the first hop — a user outside (the lab's `local`) → a gateway's load balancer → the
routes' backends in any cloud (issue 12). Every request leaves `local` for the load balancer's
public address with the Host and SNI of a listener, trusting what a user would (the mesh's ingress
CA, or the listener Secret's own certificates).

- `ingress/route`: per HTTPRoute rule attached to a gateway, a request built from the rule's first
  match and hostname; what it must meet is `gateway.match.select`'s answer — a backend pod of the
  rule that wins (the echo app names itself; its Services' backend sets name the pods), the
  redirect's status and Location, 404 or 500 — and, for the leg from the gateway pod to the
  backends, what `policy trace` says: all refused gives the refusal (403) or HAProxy's 5xx;
- `ingress/weights`: per rule with two or more weighted backendRefs, 1,000 requests over keep-alive
  connections; each backendRef's share within ±3 points of its weight's (the measured split in
  the detail, with the requests HAProxy's own counters gave each server);
- `ingress/header-match`: per rule matching headers, the request with the headers is taken by that
  rule and the same request without them is not (HAProxy's per-rule counters tell the rules apart
  where their backends overlap);
- `ingress/tls` and `ingress/no-public-exposure` (checks/ingressedge.py): the certificates and
  SNI of the listeners, plaintext refused, and nothing but the listeners answering on any public
  address;
- `ingress/failover` (checks/ingressfailover.py): a global backend's preferred tier killed, the
  requests through the gateway keep succeeding once the Service NAT moved to the next tier.

Planning is pure (plan, Gateway API objects, policy index → checks with expectations); the checks
run alone (kind `ingress`), so other checks' requests do not move HAProxy's counters.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from crossmesh.checks import ingressclient
from crossmesh.checks.framework import Context, GatewayView, Planned, Runner, Skips, register
from crossmesh.checks.ingressclient import Answer, Ask
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import ingressd
from crossmesh.drivers.lab.state import LabError
from crossmesh.errors import StateError
from crossmesh.gateway.match import Request, attached, hostnames_on, select
from crossmesh.gateway.model import Backend, HTTPRoute, Listener, Match, PathType, Protocol
from crossmesh.identity.ingress import secret_pem
from crossmesh.model.plan import PodPlan
from crossmesh.policy.endpoints import world_endpoint
from crossmesh.policy.evaluator import evaluate
from crossmesh.services.backends import backend_sets
from crossmesh.state.ingresspki import ingress_ca_pem
from crossmesh.workspace import Compiled

WEIGHT_REQUESTS = 1000
WEIGHT_TOLERANCE = 3.0  # points of share
WORKERS = 8  # keep-alive connections at once
HEADER_REQUESTS = 20  # of each kind, with and without the headers
DENIED_TIMEOUT = 20.0  # HAProxy tries a dropped backend 3 times (timeout connect 5 s) before its 503
SCAN_TIMEOUT = 1.5
DEFAULT_PORTS = {"http": 80, "https": 443}
K = TypeVar("K")


# --- the gateways as the checks read them (shell: reads the state directory) --------------------
def views(compiled: Compiled, state_dir: Path | None) -> dict[str, GatewayView]:
    """Every gateway of the plan with its Gateway API objects and, per HTTPS listener, what a client
    trusts: the ingress CA (`<state>/ingress-pki/ca.crt`) or the Secret's own certificates."""
    out: dict[str, GatewayView] = {}
    for g in compiled.plan.ingress:
        gateway, routes = ingressd.objects(compiled, g)
        secrets = {
            (m.namespace, m.name): m.raw for m in compiled.loaded.manifests.get(g.cluster, []) if m.kind == "Secret"
        }
        trust: dict[str, bytes] = {}
        for li in gateway.listeners:
            if li.tls is None:
                continue
            if li.tls.mesh and state_dir is not None:
                with contextlib.suppress(StateError):  # no CA yet: the tls check says there is nothing to trust
                    trust[li.name] = ingress_ca_pem(state_dir)
            elif li.tls.secrets and (raw := secrets.get((li.tls.secrets[0].namespace, li.tls.secrets[0].name))):
                try:
                    chain = x509.load_pem_x509_certificates(secret_pem(raw))
                except ValueError:
                    continue
                trust[li.name] = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        out[g.ref] = GatewayView(g, gateway, tuple(routes), trust)
    return out


# --- requests built from the routes -----------------------------------------------------------
def host_of(listener: Listener, route: HTTPRoute) -> str:
    """A host the route answers on the listener: its (or the listener's) first hostname, a wildcard's
    with a label of ours, or a name of ours where neither names one."""
    names = [h for h in hostnames_on(listener, route) if h is not None]
    return ingressclient.host_for(names[0]) if names else "crossmesh-check.example"


def ask_for(listener: Listener, route: HTTPRoute, m: Match, *, headers: bool = True) -> Ask:
    """The request a user sends to take match `m`: its exact path, or a path under its prefix; its
    method; its headers (without them: `headers=False`)."""
    path = m.path.value if m.path.type is PathType.EXACT else m.path.value.rstrip("/") + "/crossmesh-ingress-check"
    sent = tuple((h.name, h.value) for h in m.headers) if headers else ()
    return Ask(host_of(listener, route), path, m.method or "GET", sent)


@dataclass(frozen=True, slots=True)
class Expect:
    """What a request through the gateway must meet: one of `statuses`; for 200 an answer from one
    of `pods`; for a redirect `location`. `rule` is the (route ref, rule index) the gateway applies."""

    statuses: tuple[int, ...]
    pods: frozenset[str] = frozenset()
    location: str | None = None
    rule: tuple[str, int] | None = None
    why: str = ""
    timeout: float = ingressclient.TIMEOUT

    def judge(self, got: Answer) -> tuple[Result, str]:
        if got.result is not Result.OK:
            return got.result, got.detail
        if got.status not in self.statuses:
            return Result.WRONG_ANSWER, f"answered {got.status}, expected {'/'.join(map(str, self.statuses))}"
        if got.status == 200 and self.pods and got.pod not in self.pods:
            return Result.WRONG_ANSWER, f"answered by {got.pod or 'something that is not a pod'}, not a backend"
        if self.location is not None and got.headers.get("location") != self.location:
            return Result.WRONG_ANSWER, f"Location {got.headers.get('location')!r}, expected {self.location!r}"
        if got.status == 200:
            return Result.OK, f"answered by {got.pod}"
        return Result.OK, f"answered {got.status}" + (f" → {self.location}" if self.location else "")


def tier_pods(ctx: Context, cluster: str, backend: Backend) -> tuple[tuple[str, ...], ...]:
    """The backend pods of a backendRef's Service port by tier (first non-empty tier serves)."""
    svc = next(
        (s for s in ctx.plan.cluster(cluster).services if (s.namespace, s.name) == (backend.namespace, backend.name)),
        None,
    )
    if svc is None or svc.cluster_ip is None:
        return ()
    for bs in backend_sets(ctx.plan, svc):
        if bs.port == backend.port and bs.protocol == "TCP":
            return tuple(tuple(b.pod for b in tier) for tier in bs.tiers if tier)
    return ()


def _pods(ctx: Context) -> dict[str, PodPlan]:
    return {p.ref: p for p in ctx.plan.pods()}


def _leg(ctx: Context, view: GatewayView, pod: str, port: int, ask: Ask) -> Result:
    """What the gateway's request to a backend pod meets, from every gateway pod: `policy trace`'s
    answer (the network, then the backend's mesh proxy judging the gateway's identity). ERROR when
    the gateway pods disagree."""
    pods = _pods(ctx)
    outcomes = {ctx.expect_http(pods[gp], pods[pod], port, ask.method, ask.path) for gp in view.plan.pods}
    return outcomes.pop() if len(outcomes) == 1 else Result.ERROR


def expect(ctx: Context, view: GatewayView, listener: Listener, ask: Ask) -> Expect | str:
    """What `ask` on `listener` meets (`select`'s rule, then the backend leg as policy has it), or
    why no one answer can be expected (a skip reason)."""
    request = Request(ask.host, ask.path, ask.method, dict(ask.headers))
    d = select(request, gateway=view.gateway, listener=listener, routes=view.routes)
    if d is None:
        return Expect((404,), why="no rule matches: 404")
    rule = (d.route.ref, d.rule_index)
    place = f"{d.route.ref} rule {d.rule_index}" + (f" ({d.rule.name})" if d.rule.name else "")
    if d.redirect is not None:
        r = d.redirect
        scheme = r.scheme or ("https" if listener.protocol is Protocol.HTTPS else "http")
        port = r.port or (DEFAULT_PORTS.get(scheme, listener.port) if r.scheme else listener.port)
        shown = "" if DEFAULT_PORTS.get(scheme) == port else f":{port}"
        location = f"{scheme}://{r.hostname or ask.host.lower()}{shown}{ask.path}"
        return Expect((r.status_code,), location=location, rule=rule, why=f"{place} redirects")
    weighted = [b for b in d.backends if b.weight]
    if not weighted:
        return Expect((500,), rule=rule, why=f"{place}: every weight is 0")
    outcomes: dict[str, Result] = {}
    for b in weighted:
        tiers = tier_pods(ctx, view.plan.cluster, b)
        if not tiers:
            return f"backendRef {b.ref} has no backend pod (HAProxy's answer would be a 503 for its share)"
        for pod in tiers[0]:
            outcomes[pod] = _leg(ctx, view, pod, b.port, ask)
    kinds = set(outcomes.values())
    if Result.ERROR in kinds:
        return "the gateway's pods are not judged alike by policy"
    if kinds == {Result.OK}:
        return Expect((200,), frozenset(outcomes), rule=rule, why=place)
    if len(kinds) > 1:
        return "policy lets the gateway reach some backends of the rule and not others"
    if kinds == {Result.FORBIDDEN}:
        return Expect((403,), rule=rule, why=f"{place}: policy answers 403 for every backend")
    return Expect((502, 503, 504), rule=rule, why=f"{place}: policy refuses every backend", timeout=DENIED_TIMEOUT)


def first_hop(ctx: Context, view: GatewayView, port: int) -> str | None:
    """Why policy would stop `local`'s connection to the gateway pods' listener port, or None: the
    pod sees the client (world) or, behind the node port's source NAT, its node."""
    index = ctx.policy
    if index is None or not index.policies:
        return None
    pods = _pods(ctx)
    for gp in view.plan.pods:
        dst = index.endpoints[gp]
        for src in (world_endpoint(str(ctx.topo.local_address)), index.endpoints[pods[gp].node]):
            if not evaluate(index, src, dst, port, "TCP").allowed:
                return f"policy drops {src.ref} → {gp}:{port}: the checks expect the gateway reachable"
    return None


# --- the cases: one per rule of a route attached to a gateway -------------------------------------
@dataclass(frozen=True, slots=True)
class Case:
    view: GatewayView
    listener: Listener
    route: HTTPRoute
    index: int  # the rule's

    @property
    def label(self) -> str:
        name = self.route.rules[self.index].name
        return f"{self.view.plan.ref} {self.route.ref} rule {self.index}" + (f" ({name})" if name else "")


def cases(view: GatewayView) -> list[Case]:
    """Each rule of each route attached to the gateway, once, on the first listener it attaches to."""
    out: list[Case] = []
    seen: set[tuple[str, int]] = set()
    for li in view.gateway.listeners:
        for route in attached(view.gateway, li, view.routes):
            for i in range(len(route.rules)):
                if (route.ref, i) not in seen:
                    seen.add((route.ref, i))
                    out.append(Case(view, li, route, i))
    return out


@dataclass(frozen=True, slots=True)
class Target:
    """Where the client outside sends: its namespace, the load balancer's address, the TLS it uses."""

    ns: str
    address: str


def target(ctx: Context, view: GatewayView) -> Target | str:
    address = ctx.topo.load_balancers.get(view.plan.ref)
    if address is None or not ctx.topo.local_ns:
        return "the lab gives the gateway no load balancer address or has no client outside"
    return Target(ctx.topo.local_ns, str(address))


def check_of(name: str, view: GatewayView, port: int, expected: Result = Result.OK) -> Check:
    return Check(
        name=name, kind=Kind.INGRESS, source="local", target=view.plan.ref, port=f"{port}/TCP", expected=expected
    )


def _send(t: Target, case_view: GatewayView, listener: Listener, ask: Ask, timeout: float) -> Answer:
    https = listener.protocol is Protocol.HTTPS
    tls = ingressclient.tls_context(case_view.trust.get(listener.name)) if https else None
    return ingressclient.request(
        t.ns, t.address, listener.port, ask, tls=tls, server_name=ask.host if https else None, timeout=timeout
    )


def _describe(ask: Ask, listener: Listener) -> str:
    scheme = "https" if listener.protocol is Protocol.HTTPS else "http"
    shown = "" if DEFAULT_PORTS[scheme] == listener.port else f":{listener.port}"
    headers = "".join(f" {k}: {v}" for k, v in ask.headers)
    return f"{ask.method} {scheme}://{ask.host}{shown}{ask.path}{headers}"


@dataclass
class _Prepared:
    """The cases of every gateway with where to send, and the skips collected on the way."""

    kind_skips: Skips
    ready: list[tuple[Case, Target]] = field(default_factory=list)


def prepare(ctx: Context) -> _Prepared:
    out = _Prepared(Skips(Kind.INGRESS))
    for view in (ctx.ingress or {}).values():
        t = target(ctx, view)
        if isinstance(t, str):
            out.kind_skips.add(t, view.plan.ref)
            continue
        for case in cases(view):
            blocked = first_hop(ctx, view, case.listener.port)
            if blocked is not None:
                out.kind_skips.add(blocked, case.label)
                continue
            out.ready.append((case, t))
    return out


def each_case(ctx: Context, plan_one: Callable[[Case, Target, Skips], Planned | None]) -> list[Planned]:
    """`plan_one` for every case the client outside can reach, then its skips (the first hop's own
    skips are the routes check's, not repeated)."""
    skips = Skips(Kind.INGRESS)
    out = [p for case, t in prepare(ctx).ready if (p := plan_one(case, t, skips)) is not None]
    return out + skips.planned()


# --- HAProxy's own counters: which rule took how many requests ------------------------------------
def stats(ctx: Context, view: GatewayView) -> Counter[tuple[str, str]] | None:
    """Requests per (HAProxy proxy, server) summed over the gateway's pods (`show stat`); None
    without a lab. A rule's backend is `<ns>:<route>:<rule index>`, its own row `BACKEND`."""
    if ctx.state is None:
        return None
    out: Counter[tuple[str, str]] = Counter()
    for pod in view.plan.pods:
        try:
            read = ingressd.read_stats(ctx.state, pod)
        except LabError:
            return None
        for key, counters in read.items():
            out[key] += counters.sessions
    return out


def rule_counts(ctx: Context, view: GatewayView) -> Counter[tuple[str, int]] | None:
    """Requests per (route ref, rule index): the rules' HAProxy backends."""
    read = stats(ctx, view)
    if read is None:
        return None
    out: Counter[tuple[str, int]] = Counter()
    for (proxy, server), n in read.items():
        if server == "BACKEND" and proxy.count(":") == 2:
            ns, route, index = proxy.split(":")
            out[(f"{ns}/{route}", int(index))] += n
    return out


def server_counts(ctx: Context, view: GatewayView, rule: tuple[str, int]) -> Counter[str] | None:
    """Requests per server (`<service>:<port>`, a backendRef) of a rule's HAProxy backend."""
    read = stats(ctx, view)
    if read is None:
        return None
    backend = rule[0].replace("/", ":") + f":{rule[1]}"
    return Counter({s: n for (p, s), n in read.items() if p == backend and s not in ("BACKEND", "FRONTEND")})


def delta(after: Counter[K] | None, before: Counter[K] | None) -> Counter[K] | None:
    """What the counters moved by between two readings (None when either is missing)."""
    if after is None or before is None:
        return None
    return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)})


@register(121)
def routes(ctx: Context) -> list[Planned]:
    """Per rule of every route attached to a gateway: a request made to match it meets what
    `select` and policy say."""
    prepared = prepare(ctx)
    out: list[Planned] = []
    for case, t in prepared.ready:
        m = case.route.rules[case.index].matches[0]
        ask = ask_for(case.listener, case.route, m)
        exp = expect(ctx, case.view, case.listener, ask)
        if isinstance(exp, str):
            prepared.kind_skips.add(exp, case.label)
            continue
        name = f"ingress/route: {case.label}: {_describe(ask, case.listener)}"
        check = check_of(name, case.view, case.listener.port)
        check.extra |= {"statuses": list(exp.statuses), "pods": sorted(exp.pods), "rule": exp.rule}
        out.append(Planned(check, _route_runner(t, case, ask, exp)))
    return out + prepared.kind_skips.planned()


def _route_runner(t: Target, case: Case, ask: Ask, exp: Expect) -> Runner:
    def run(check: Check) -> None:
        got = _send(t, case.view, case.listener, ask, exp.timeout)
        check.actual, detail = exp.judge(got)
        check.detail = f"{detail} ({exp.why})"

    return run


# --- ingress/weights ---------------------------------------------------------------------------
def owners(ctx: Context, case: Case) -> dict[str, str] | str:
    """Each pod that may answer for a weighted backendRef of the rule → that backendRef, or why the
    answers cannot be told apart (two backendRefs sharing a pod)."""
    out: dict[str, str] = {}
    for b in case.route.rules[case.index].backends:
        if not b.weight:
            continue
        tiers = tier_pods(ctx, case.view.plan.cluster, b)
        for pod in tiers[0] if tiers else ():
            if out.setdefault(pod, b.ref) != b.ref:
                return f"backendRefs {out[pod]} and {b.ref} share pod {pod}: its answers cannot be told apart"
    return out


@register(122)
def weights(ctx: Context) -> list[Planned]:
    """Per rule with two or more weighted backendRefs: 1,000 requests split as the weights, ±3 points."""

    def plan_one(case: Case, t: Target, skips: Skips) -> Planned | None:
        rule = case.route.rules[case.index]
        weighted = [b for b in rule.backends if b.weight]
        if len(weighted) < 2 or rule.redirect is not None:
            return None
        ask = ask_for(case.listener, case.route, rule.matches[0])
        exp, own = expect(ctx, case.view, case.listener, ask), owners(ctx, case)
        if isinstance(exp, str) or isinstance(own, str):
            skips.add(f"weights: {exp if isinstance(exp, str) else own}", case.label)
            return None
        if exp.statuses != (200,) or exp.rule != (case.route.ref, case.index):
            skips.add("weights: the rule's request is not answered by its backends (see ingress/route)", case.label)
            return None
        total = sum(b.weight for b in weighted)
        want = {b.ref: 100.0 * b.weight / total for b in weighted}
        split = "/".join(str(b.weight) for b in weighted)
        name = f"ingress/weights: {case.label}: {split} over {WEIGHT_REQUESTS} requests"
        check = check_of(name, case.view, case.listener.port)
        check.extra["want"] = want
        return Planned(check, _weights_runner(ctx, t, case, ask, own, want))

    return each_case(ctx, plan_one)


def _weights_runner(  # noqa: PLR0913
    ctx: Context, t: Target, case: Case, ask: Ask, own: dict[str, str], want: dict[str, float]
) -> Runner:
    rule = (case.route.ref, case.index)

    def run(check: Check) -> None:
        https = case.listener.protocol is Protocol.HTTPS
        tls = ingressclient.tls_context(case.view.trust.get(case.listener.name)) if https else None
        before = server_counts(ctx, case.view, rule)
        batch = ingressclient.many(
            t.ns,
            t.address,
            case.listener.port,
            ask,
            WEIGHT_REQUESTS,
            tls=tls,
            server_name=ask.host if https else None,
            workers=WORKERS,
        )
        moved = delta(server_counts(ctx, case.view, rule), before)
        counts: Counter[str] = Counter({ref: 0 for ref in want})
        failed: Counter[str] = Counter()
        for a in batch.answers:
            ref = own.get(a.pod or "") if a.result is Result.OK and a.status == 200 else None
            if ref is None:
                failed[a.detail if a.result is not Result.OK else f"{a.status} {a.pod or ''}".strip()] += 1
            else:
                counts[ref] += 1
        n = len(batch.answers)
        got = {ref: 100.0 * c / n for ref, c in counts.items()} if n else {}
        off = {ref: got.get(ref, 0.0) - w for ref, w in want.items()}
        check.extra |= {"split": got, "requests": n, "seconds": round(batch.seconds, 2), "failed": sum(failed.values())}
        measured = ", ".join(f"{ref} {got.get(ref, 0.0):.1f} % (weight {w:.1f} %)" for ref, w in want.items())
        rate = n / batch.seconds if batch.seconds else 0.0
        detail = (
            f"{measured}; {n} requests in {batch.seconds:.1f} s ({rate:.0f}/s) over {batch.connections} connections"
        )
        if moved is not None:
            detail += "; HAProxy's servers: " + ", ".join(f"{k} {v}" for k, v in sorted(moved.items()))
        if failed:
            detail = f"{sum(failed.values())} requests not answered by a backend ({failed.most_common(2)}); " + detail
        ok = not failed and all(abs(d) <= WEIGHT_TOLERANCE for d in off.values())
        check.actual, check.detail = (Result.OK if ok else Result.WRONG_ANSWER), detail

    return run


# --- ingress/header-match ------------------------------------------------------------------------
@register(123)
def header_match(ctx: Context) -> list[Planned]:
    """Per rule matching headers: with them the rule takes the request, without them it does not."""

    def plan_one(case: Case, t: Target, skips: Skips) -> Planned | None:
        m = next((m for m in case.route.rules[case.index].matches if m.headers), None)
        if m is None:
            return None
        with_ask = ask_for(case.listener, case.route, m)
        without = ask_for(case.listener, case.route, m, headers=False)
        exp_with = expect(ctx, case.view, case.listener, with_ask)
        exp_without = expect(ctx, case.view, case.listener, without)
        if isinstance(exp_with, str) or isinstance(exp_without, str):
            skips.add(f"header-match: {exp_with if isinstance(exp_with, str) else exp_without}", case.label)
            return None
        headers = ", ".join(f"{h.name}: {h.value}" for h in m.headers)
        check = check_of(f"ingress/header-match: {case.label}: {headers}", case.view, case.listener.port)
        check.extra |= {"with": exp_with.rule, "without": exp_without.rule}
        return Planned(check, _header_runner(ctx, t, case, (with_ask, exp_with), (without, exp_without)))

    return each_case(ctx, plan_one)


def _header_runner(
    ctx: Context, t: Target, case: Case, with_: tuple[Ask, Expect], without: tuple[Ask, Expect]
) -> Runner:
    mine = (case.route.ref, case.index)

    def batch(ask: Ask, exp: Expect) -> tuple[list[str], Counter[tuple[str, int]] | None, str]:
        before = rule_counts(ctx, case.view)
        problems, pods = [], Counter[str]()
        for _ in range(HEADER_REQUESTS):
            got = _send(t, case.view, case.listener, ask, exp.timeout)
            result, detail = exp.judge(got)
            if result is not Result.OK:
                problems.append(detail)
            pods[got.pod or str(got.status)] += 1
        moved = delta(rule_counts(ctx, case.view), before)
        return problems, moved, ", ".join(f"{k} ×{v}" for k, v in sorted(pods.items()))

    def run(check: Check) -> None:
        (ask_w, exp_w), (ask_o, exp_o) = with_, without
        problems_w, moved_w, seen_w = batch(ask_w, exp_w)
        problems_o, moved_o, seen_o = batch(ask_o, exp_o)
        problems = [f"with the headers: {p}" for p in problems_w[:1]] + [f"without: {p}" for p in problems_o[:1]]
        counted = ""
        if moved_w is not None and moved_o is not None:
            if exp_w.rule is not None and moved_w.get(exp_w.rule, 0) != HEADER_REQUESTS:
                problems.append(f"with the headers HAProxy's rule {exp_w.rule} took {moved_w.get(exp_w.rule, 0)}")
            if exp_o.rule != mine and moved_o.get(mine, 0):
                problems.append(f"without them rule {mine} still took {moved_o[mine]} of {HEADER_REQUESTS}")
            counted = f"; HAProxy counted with: {dict(moved_w)}, without: {dict(moved_o)}"
        check.actual = Result.WRONG_ANSWER if problems else Result.OK
        took = f"rule {exp_o.rule[1]}" if exp_o.rule else f"{exp_o.statuses[0]}"
        check.detail = "; ".join(problems) or (
            f"with the headers {HEADER_REQUESTS}/{HEADER_REQUESTS} to {exp_w.why} ({seen_w}); without: {took} "
            f"({exp_o.why}; {seen_o}){counted}"
        )

    return run
