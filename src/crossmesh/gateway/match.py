"""Which rule a gateway applies to a request, and why — Gateway API's precedence, as data.

The lab's proxy, `trace --from local` and the `ingress/*` checks all ask the same question: for
this request on this listener, which HTTPRoute rule answers, with which filters and backends?
Answering it here, purely, lets each of them show the same route and the same reasons.

Precedence (HTTPRoute API reference, `hostnames` and `rules.matches`), highest first:

1. The listener: among a port's listeners, an exact hostname over a wildcard, a longer wildcard
   over a shorter, and any of those over a listener without hostname.
2. Among the routes attached there whose hostnames match the host: the most characters in a
   matching non-wildcard hostname, then in a matching hostname.
3. Among their matching rules: an Exact path over a PathPrefix, the longest prefix, a method
   match, the most header matches.
4. Ties between routes: the oldest route, then `{namespace}/{name}` alphabetically. A manifest
   file carries no creation time, so crossmesh uses the alphabetical order alone; `gateway.check`
   refuses two rules claiming one match, where the age would decide.
5. Within a route: the first matching rule, then its first matching match, in list order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from crossmesh.gateway.model import (
    Backend,
    Gateway,
    HeaderModifier,
    HTTPRoute,
    Listener,
    Match,
    PathType,
    Redirect,
    RouteNamespaces,
    Rule,
    hostname_matches,
    hostnames_intersect,
)


@dataclass(frozen=True, slots=True)
class Request:
    """What a gateway routes on: the Host (or SNI), the method, the path (a query is ignored) and
    the headers (names compared without case)."""

    host: str
    path: str = "/"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    @property
    def bare_path(self) -> str:
        return self.path.split("?", 1)[0].split("#", 1)[0] or "/"


@dataclass(frozen=True, slots=True)
class Decision:
    """The rule that answers a request: where it is, what it does and the reasons it won."""

    route: HTTPRoute
    rule_index: int
    match_index: int
    hostname: str | None  # the route (or listener) hostname that matched the host; None: any host
    why: tuple[str, ...]

    @property
    def rule(self) -> Rule:
        return self.route.rules[self.rule_index]

    @property
    def match(self) -> Match:
        return self.rule.matches[self.match_index]

    @property
    def headers(self) -> HeaderModifier | None:
        return self.rule.headers

    @property
    def redirect(self) -> Redirect | None:
        return self.rule.redirect

    @property
    def backends(self) -> tuple[Backend, ...]:
        return self.rule.backends


def _listener_rank(listener: Listener) -> tuple[int, int]:
    if listener.hostname is None:
        return (0, 0)
    if listener.hostname.startswith("*."):
        return (1, len(listener.hostname))
    return (2, len(listener.hostname))


def listener_order(gateway: Gateway, *, port: int) -> list[Listener]:
    """The listeners of `gateway` on `port`, most specific hostname first (precedence 1; equals in
    the Gateway's order): the first whose hostname matches a request's host takes it. A proxy that
    cannot compare ranks per request (HAProxy) tries them in this order."""
    on_port = [li for li in gateway.listeners if li.port == port]
    return sorted(on_port, key=_listener_rank, reverse=True)


def listener_for(gateway: Gateway, *, port: int, host: str) -> Listener | None:
    """The listener of `gateway` on `port` that takes a request for `host` (precedence 1); None when
    no listener's hostname matches."""
    return next((li for li in listener_order(gateway, port=port) if hostname_matches(li.hostname, host)), None)


def not_attached(gateway: Gateway, listener: Listener, route: HTTPRoute) -> str | None:
    """Why `route` does not attach to `listener` of `gateway`, or None when it does: a parentRef
    must name the Gateway (and this listener or port, when it names one), the listener must allow
    the route's namespace, and a route's hostnames must meet the listener's."""
    refs = [p for p in route.parents if p.namespace == gateway.namespace and p.name == gateway.name]
    if not refs:
        return f"it names no parentRef {gateway.ref}"
    if not any((p.section in (None, listener.name)) and p.port in (None, listener.port) for p in refs):
        return f"its parentRefs to {gateway.ref} name other listeners"
    if listener.allowed is RouteNamespaces.SAME and route.namespace != gateway.namespace:
        return (
            f"listener {listener.name} allows routes of namespace {gateway.namespace} only "
            "(allowedRoutes.namespaces.from: Same)"
        )
    if route.hostnames and not any(hostnames_intersect(listener.hostname, h) for h in route.hostnames):
        return f"none of its hostnames ({', '.join(route.hostnames)}) is under listener hostname {listener.hostname}"
    return None


def hostnames_on(listener: Listener, route: HTTPRoute) -> tuple[str | None, ...]:
    """The hostnames a route answers on a listener: its own that meet the listener's (the more
    specific of each pair), or the listener's when the route names none."""
    if not route.hostnames:
        return (listener.hostname,)
    out: list[str | None] = []
    for h in route.hostnames:
        if not hostnames_intersect(listener.hostname, h):
            continue
        narrower = h if listener.hostname is None or hostname_matches(listener.hostname, h) else listener.hostname
        if narrower not in out:
            out.append(narrower)
    return tuple(out)


def _host_rank(hostname: str | None) -> tuple[int, int]:
    if hostname is None:
        return (0, 0)
    if hostname.startswith("*."):
        return (0, len(hostname))
    return (len(hostname), len(hostname))


def _matches(m: Match, request: Request) -> bool:
    return (
        m.path.matches(request.bare_path)
        and (m.method is None or m.method == request.method)
        and all(request.header(h.name) == h.value for h in m.headers)
    )


Key = tuple[int, int, int, int, int, int, int, int, int]


def precedence(hostname: str | None, m: Match, *, route_rank: int, rule_index: int, match_index: int) -> Key:
    """How strongly a match of a rule claims a request its `hostname` and `m` both accept (precedence
    2 to 5): the highest key among the matching ones wins. `route_rank` is the route's place in
    `attached` order. `select` ranks the candidates of one request by it; a proxy without Gateway
    API's precedence (HAProxy) tries every (hostname, match) of a listener in this order."""
    exact = m.path.type is PathType.EXACT
    return (
        *_host_rank(hostname),
        int(exact),
        0 if exact else len(m.path.value),
        int(m.method is not None),
        len(m.headers),
        -route_rank,
        -rule_index,
        -match_index,
    )


def attached(gateway: Gateway, listener: Listener, routes: Iterable[HTTPRoute]) -> list[HTTPRoute]:
    """The routes attached to `listener` (`not_attached`), in Gateway API's tie-break order
    (`{namespace}/{name}`): a route's place here is its `route_rank`."""
    return sorted((r for r in routes if not_attached(gateway, listener, r) is None), key=lambda r: r.ref)


@dataclass(frozen=True, slots=True)
class _Candidate:
    key: Key
    route: HTTPRoute
    rule_index: int
    match_index: int
    hostname: str | None


def _candidates(request: Request, listener: Listener, routes: Sequence[HTTPRoute]) -> list[_Candidate]:
    out = []
    for rank, route in enumerate(routes):
        matching = [h for h in hostnames_on(listener, route) if hostname_matches(h, request.host)]
        if not matching:
            continue
        hostname = max(matching, key=_host_rank)
        for i, rule in enumerate(route.rules):
            for j, m in enumerate(rule.matches):
                if _matches(m, request):
                    key = precedence(hostname, m, route_rank=rank, rule_index=i, match_index=j)
                    out.append(_Candidate(key, route, i, j, hostname))
    return out


def select(request: Request, *, gateway: Gateway, listener: Listener, routes: Iterable[HTTPRoute]) -> Decision | None:
    """The rule `listener` of `gateway` applies to `request`, or None (Gateway API answers 404).

    Only the routes attached to the listener are considered (`not_attached`); they are ordered by
    `{namespace}/{name}`, Gateway API's tie-break."""
    found = sorted(
        _candidates(request, listener, attached(gateway, listener, routes)), key=lambda c: c.key, reverse=True
    )
    if not found:
        return None
    best = found[0]
    runner = next((c for c in found[1:] if (c.route, c.rule_index) != (best.route, best.rule_index)), None)
    return Decision(best.route, best.rule_index, best.match_index, best.hostname, tuple(_why(best, runner, listener)))


def _why(best: _Candidate, runner: _Candidate | None, listener: Listener) -> list[str]:
    """Reasons a user can read: what matched, then what beat the closest other rule."""
    m = best.route.rules[best.rule_index].matches[best.match_index]
    where = f"listener {listener.name} (port {listener.port}, {listener.protocol.value})"
    out = [f"{where}, hostname {listener.hostname or 'any'}"]
    if best.hostname is not None and best.route.hostnames:
        kind = "wildcard" if best.hostname.startswith("*.") else "exact"
        out.append(f"route {best.route.ref} hostname {best.hostname} ({kind})")
    if m.path.type is PathType.EXACT:
        out.append(f"path exactly {m.path.value}")
    else:
        out.append(f"path prefix {m.path.value}")
    if m.method is not None:
        out.append(f"method {m.method}")
    out += [f"header {h.name}: {h.value}" for h in m.headers]
    if runner is None:
        out.append(f"the only matching rule ({_place(best)})")
        return out
    out.append(f"chosen over {_place(runner)}: {_beats(best, runner)}")
    return out


def _place(c: _Candidate) -> str:
    name = c.route.rules[c.rule_index].name
    return f"{c.route.ref} rule {c.rule_index}" + (f" ({name})" if name else "")


def _beats(best: _Candidate, other: _Candidate) -> str:
    """The first precedence criterion on which `best` wins over `other`, in words."""
    b = best.route.rules[best.rule_index].matches[best.match_index]
    o = other.route.rules[other.rule_index].matches[other.match_index]
    for pos in range(len(best.key)):
        if best.key[pos] == other.key[pos]:
            continue
        if pos == 0:
            return f"exact hostname {best.hostname} over {other.hostname or 'any host'}"
        if pos == 1:
            return f"hostname {best.hostname} is more specific than {other.hostname or 'any host'}"
        if pos == 2:
            return f"Exact path {b.path.value} over path prefix {o.path.value}"
        if pos == 3:
            return f"path prefix {b.path.value} is longer than {o.path.value} (longest matching prefix)"
        if pos == 4:
            return f"it matches the method ({b.method}) and the other does not"
        if pos == 5:
            return f"it matches more headers ({len(b.headers)} over {len(o.headers)})"
        if pos == 6:
            return f"equal precedence; {best.route.ref} comes first by namespace/name"
        return "equal precedence; it comes first in the route's list order"
    return "equal precedence"


def pick(backends: Sequence[Backend], draw: float) -> Backend | None:
    """The backend a gateway sends to for a draw in [0, 1): each backend owns a slice of [0, 1) as
    wide as its share of the weights, in list order, so a uniform draw splits requests by weight
    and a backend of weight 0 is never chosen. None when every weight is 0 (a gateway answers 500)."""
    if not 0.0 <= draw < 1.0:
        raise ValueError(f"draw {draw} is not in [0, 1)")
    total = sum(b.weight for b in backends)
    if total == 0:
        return None
    target = draw * total
    upto = 0
    for b in backends:
        upto += b.weight
        if b.weight and target < upto:
            return b
    return next(b for b in reversed(backends) if b.weight)  # float rounding at the top end
