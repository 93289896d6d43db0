"""The HAProxy 2.6 configuration a gateway pod runs: Gateway API routing as `gateway.match` decides it.

The lab runs Debian's HAProxy as the gateway's proxy, while `trace` and the `ingress/*` checks read
`match.select`. Both must give one answer, so nothing here re-decides precedence: the listeners of a
port are tried in `match.listener_order`, and every (listener, attached route, hostname, rule,
match) becomes one `set-var(txn.rule)` line, the lines ordered by `match.precedence` — the key
`select` ranks the candidates of a request by. HAProxy evaluates them in order and keeps the first
that holds, which is the highest-ranked candidate: `select`'s answer.

How each Gateway API meaning becomes HAProxy's:

- Host: the Host header, port cut, without case; an exact hostname also matches with a trailing dot,
  a wildcard `*.example.com` one or more labels before `.example.com` (a regex, as
  `model.hostname_matches`).
- Path: `path` (the query cut off); Exact is the whole path, a prefix `/foo` is `/foo` or anything
  under `/foo/` (Gateway API matches by path element, so not `/foobar`).
- Headers: the first occurrence (`req.fhdr(name,1)`, whole value, no comma split), exactly.
- No rule → 404; a rule whose weights are all zero (or that has no backend) → 500, as `match.pick`.
- `RequestHeaderModifier`: remove, then set, then add (Envoy's order, which Istio's gateway uses).
- `RequestRedirect`: scheme, host and port default to the request's (the host without its port,
  lower-cased); a changed scheme without a port takes the scheme's well-known port; the port is
  left out of `Location` where it is the scheme's default; path and query are kept.
- Weighted backendRefs: one HAProxy backend per rule, one server per backendRef, `balance
  roundrobin`. HAProxy's weighted round robin is smooth and deterministic: over any N requests each
  server's share is within one cycle of its weight, so 1,000 requests split 90/10 give 900/100
  exactly — what `ingress/weights` checks within ±3 points. `random` would draw twice and take the
  less loaded server (power of two choices, not the weights); `random(1)` honours the weights only
  in expectation (±1 point standard deviation over 1,000 requests at 90/10, a flaky ±3). Weights
  are divided by their greatest common divisor and, above HAProxy's maximum of 256, scaled down
  (a non-zero weight stays at least 1, so only then does the ratio round).
- HTTPS: one `crt-list` per port; each listener's certificate serves the SNI names of its hostname.
  A listener without hostname holds the default certificate (first line, filter `!*` so its own
  names take nothing from the more specific listeners); without one the port is `strict-sni`, and a
  handshake for a name no listener serves is refused, as Envoy refuses a filter chain miss. HAProxy
  matches a wildcard SNI filter on one label (`*.example.com` serves `a.example.com`, not
  `a.b.example.com` — which a client could not verify against such a certificate anyway). TLS 1.2
  or later, ALPN http/1.1 only. Plain HTTP to that port fails the handshake: no HTTP answer.

Running it (the caller's part): write `crt_lists` and the PEMs first, then in the pod's netns
`haproxy -D -p <pidfile> -f <cfg>` (or `-db` in the foreground); reload with
`haproxy -D -p <pidfile> -f <cfg> -sf <old pid>` — the old process finishes its connections
(at most `hard-stop-after`) while the new one serves. `haproxy -c -f <cfg>` checks a configuration
without binding. The stats socket answers `show stat`, which `parse_stats` reads.

Names: HAProxy names may hold letters, digits and `.-_:` but no `/`; a backend is
`<namespace>:<route>:<rule index>`, a server `<service>:<port>`, and `HaproxyConfig` maps them back.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from crossmesh.gateway.match import attached, hostnames_on, listener_order, precedence
from crossmesh.gateway.model import (
    Backend,
    Gateway,
    HeaderMatch,
    HTTPRoute,
    Listener,
    Match,
    PathType,
    Protocol,
    Redirect,
    Rule,
)

MAX_WEIGHT = 256  # HAProxy's largest server weight
DEFAULT_PORTS = {"http": 80, "https": 443}
TIMEOUTS = (
    ("connect", "5s"),
    ("client", "30s"),
    ("server", "30s"),
    ("http-request", "10s"),
    ("http-keep-alive", "10s"),
    ("queue", "5s"),
)


@dataclass(frozen=True, slots=True)
class HaproxyConfig:
    """What a gateway pod's HAProxy runs: the configuration, the crt-list files it names (path →
    text), and how its backend and server names map back to routes and backendRefs."""

    text: str
    crt_lists: dict[str, str] = field(default_factory=dict)
    backends: dict[str, tuple[str, int]] = field(default_factory=dict)  # backend → (route ref, rule index)
    servers: dict[tuple[str, str], Backend] = field(default_factory=dict)  # (backend, server) → backendRef


@dataclass(frozen=True, slots=True)
class Counters:
    """One row of `show stat`: sessions (for a server: requests sent to it) and HTTP responses by
    class (`1xx` … `5xx`, `other`)."""

    sessions: int
    responses: dict[str, int] = field(default_factory=dict)


def render(
    gateway: Gateway,
    routes: Iterable[HTTPRoute],
    *,
    upstreams: Mapping[str, tuple[str, int]],
    certificates: Mapping[str, str],
    stats_socket: str,
    crt_list_dir: str,
    address: str = "0.0.0.0",
) -> HaproxyConfig:
    """The HAProxy configuration for `gateway` routing `routes`.

    `upstreams` gives each backendRef (`Backend.ref`) the address HAProxy connects to (in the lab the
    Service's ClusterIP and port), `certificates` each HTTPS listener's PEM file (chain and key),
    `crt_list_dir` where the crt-list files will be written, `address` where the listeners bind.
    ValueError names a backendRef without upstream, an HTTPS listener without certificate, or a
    port whose listeners mix HTTP and HTTPS (Gateway API's ProtocolConflict)."""
    routes = list(routes)
    ports = sorted({li.port for li in gateway.listeners})
    rules = _rules(gateway, routes)
    ids = {key: n for n, key in enumerate(rules)}
    config = HaproxyConfig(text="")
    for (route, index), rule in rules.items():
        _backend(config, route, index, rule, upstreams)
    lines = _global(stats_socket)
    for port in ports:
        lines += _frontend(gateway, port, routes, ids, rules, config, certificates, crt_list_dir, address)
    for name in config.backends:
        lines += ["", f"backend {name}", "  balance roundrobin"]
        servers = [(s, b) for (be, s), b in config.servers.items() if be == name]
        for (server, backend), weight in zip(servers, _scaled([b.weight for _, b in servers]), strict=True):
            host, port = upstreams[backend.ref]
            lines.append(f"  server {server} {_hostport(host, port)} weight {weight}")
    return HaproxyConfig("\n".join(lines) + "\n", config.crt_lists, config.backends, config.servers)


def _rules(gateway: Gateway, routes: list[HTTPRoute]) -> dict[tuple[str, int], Rule]:
    """Every rule of a route attached to some listener, by (route ref, index), sorted: its id."""
    out: dict[tuple[str, int], Rule] = {}
    for li in gateway.listeners:
        for route in attached(gateway, li, routes):
            for i, rule in enumerate(route.rules):
                out[(route.ref, i)] = rule
    return dict(sorted(out.items()))


def _backend(
    config: HaproxyConfig, route_ref: str, index: int, rule: Rule, upstreams: Mapping[str, tuple[str, int]]
) -> None:
    if rule.redirect is not None or not any(b.weight for b in rule.backends):
        return
    missing = [b.ref for b in rule.backends if b.ref not in upstreams]
    if missing:
        raise ValueError(f"route {route_ref} rule {index}: no upstream address for {', '.join(missing)}")
    name = f"{route_ref.replace('/', ':')}:{index}"
    config.backends[name] = (route_ref, index)
    for k, b in enumerate(rule.backends):
        server = f"{b.name}:{b.port}"
        if (name, server) in config.servers:
            server = f"{server}:{k}"
        config.servers[(name, server)] = b


def _global(stats_socket: str) -> list[str]:
    return [
        "global",
        f"  stats socket {_quote(stats_socket)} mode 600 level operator",
        "  ssl-default-bind-options ssl-min-ver TLSv1.2",
        "  hard-stop-after 30s",  # a reload (-sf) lets old connections finish, not linger forever
        "",
        "defaults",
        "  mode http",
        "  option forwardfor",  # as Istio's gateway: the backend sees the client in X-Forwarded-For
        "  retries 2",  # reconnects to the same server only: a weighted choice is never redone
        *(f"  timeout {name} {value}" for name, value in TIMEOUTS),
    ]


def _frontend(
    gateway: Gateway,
    port: int,
    routes: list[HTTPRoute],
    ids: Mapping[tuple[str, int], int],
    rules: Mapping[tuple[str, int], Rule],
    config: HaproxyConfig,
    certificates: Mapping[str, str],
    crt_list_dir: str,
    address: str,
) -> list[str]:
    listeners = listener_order(gateway, port=port)
    protocols = {li.protocol for li in listeners}
    if len(protocols) > 1:
        raise ValueError(f"Gateway {gateway.ref} port {port}: listeners mix HTTP and HTTPS")
    https = Protocol.HTTPS in protocols
    bind = f"  bind {_hostport(address, port)}"
    if https:
        path = f"{crt_list_dir.rstrip('/')}/port-{port}.crtlist"
        config.crt_lists[path] = _crt_list(gateway, listeners, certificates)
        strict = "" if any(li.hostname is None for li in listeners) else " strict-sni"
        bind += f" ssl{strict} crt-list {_quote(path)} alpn http/1.1 ssl-min-ver TLSv1.2"
    out = ["", f"frontend port-{port}", bind, "  http-request set-var(txn.host) req.hdr(host),field(1,:),lower"]
    out.append("  # the listener: most specific hostname first (match.listener_order)")
    for n, li in enumerate(listeners):
        unset = "!{ var(txn.listener) -m found }"
        out.append(f"  http-request set-var(txn.listener) int({n}) if {unset}{_host(li.hostname)}")
    out.append("  # the rule: every candidate in match.precedence order, the first that holds wins")
    entries = []
    for n, li in enumerate(listeners):
        for rank, route in enumerate(attached(gateway, li, routes)):
            for hostname in hostnames_on(li, route):
                for i, rule in enumerate(route.rules):
                    for j, m in enumerate(rule.matches):
                        key = precedence(hostname, m, route_rank=rank, rule_index=i, match_index=j)
                        entries.append(((n, tuple(-k for k in key)), ids[(route.ref, i)], hostname, m))
    for (n, _), rule_id, hostname, m in sorted(entries, key=lambda e: e[0]):
        out += [
            f"  http-request set-var(txn.rule) int({rule_id}) if !{{ var(txn.rule) -m found }}"
            f" {{ var(txn.listener) -m int {n} }}{_host(hostname)}{path}{_rest(m)}"
            for path in _paths(m)
        ]
    out.append("  http-request return status 404 if !{ var(txn.rule) -m found }")
    used = sorted({e[1] for e in entries})
    keys = {v: k for k, v in ids.items()}
    scheme = "https" if https else "http"
    routing = []  # HAProxy runs every http-request rule before use_backend: written so
    for rule_id in used:
        route_ref, index = keys[rule_id]
        rule = rules[keys[rule_id]]
        when = f" if {{ var(txn.rule) -m int {rule_id} }}"
        out.append(f"  # rule {rule_id}: {route_ref} rule {index}" + (f" ({rule.name})" if rule.name else ""))
        out += [f"  {action}{when}" for action in _actions(rule, scheme, port)]
        if rule.redirect is None and any(b.weight for b in rule.backends):
            routing.append(f"  use_backend {route_ref.replace('/', ':')}:{index}{when}")
    return out + routing


def _actions(rule: Rule, scheme: str, port: int) -> list[str]:
    out = []
    if rule.headers is not None:
        out += [f"http-request del-header {_quote(name)}" for name in rule.headers.remove]
        out += [f"http-request set-header {_quote(n)} {_quote(_lf(v))}" for n, v in rule.headers.set]
        out += [f"http-request add-header {_quote(n)} {_quote(_lf(v))}" for n, v in rule.headers.add]
    if rule.redirect is not None:
        location = _location(rule.redirect, scheme, port)
        out.append(f"http-request redirect location {_quote(location)} code {rule.redirect.status_code}")
    elif not any(b.weight for b in rule.backends):
        out.append("http-request return status 500")
    return out


def _location(redirect: Redirect, scheme: str, port: int) -> str:
    """Gateway API's redirect target as a log-format: a field not written keeps the request's value;
    a new scheme without a port takes its well-known port; a scheme's default port is left out."""
    to_scheme = redirect.scheme or scheme
    to_port = redirect.port or (DEFAULT_PORTS.get(to_scheme, port) if redirect.scheme else port)
    host = _lf(redirect.hostname) if redirect.hostname else "%[var(txn.host)]"
    shown = "" if DEFAULT_PORTS.get(to_scheme) == to_port else f":{to_port}"
    return f"{to_scheme}://{host}{shown}%[pathq]"


def _crt_list(gateway: Gateway, listeners: list[Listener], certificates: Mapping[str, str]) -> str:
    missing = [li.name for li in listeners if li.name not in certificates]
    if missing:
        raise ValueError(f"Gateway {gateway.ref}: no certificate for HTTPS listener(s) {', '.join(missing)}")
    default = [li for li in listeners if li.hostname is None][:1]
    named = [li for li in listeners if li.hostname is not None]
    unsafe = sorted({p for p in certificates.values() if not p or any(c.isspace() or c in "#'\"\\" for c in p)})
    if unsafe:
        raise ValueError(f"certificate paths a crt-list cannot hold (spaces, quotes or #): {', '.join(unsafe)}")
    lines = [f"{certificates[li.name]} !*" for li in default]  # first line: the default certificate
    lines += [f"{certificates[li.name]} {li.hostname}" for li in named]
    return "\n".join(lines) + "\n"


def _host(hostname: str | None) -> str:
    """The host condition, trailing dot allowed; a wildcard needs a label before its suffix."""
    if hostname is None:
        return ""
    if hostname.startswith("*."):
        suffix = hostname[1:]
        return f" {{ var(txn.host) -m end {suffix} {suffix}. }} !{{ var(txn.host) -m str {suffix} {suffix}. }}"
    return f" {{ var(txn.host) -m str {hostname} {hostname}. }}"


def _paths(m: Match) -> list[str]:
    """The path conditions, any one of which matches: a prefix is the path itself or anything under
    it by path element (two alternatives, as HAProxy's `||` would bind looser than the rest)."""
    if m.path.type is PathType.EXACT:
        return [f" {{ path -m str -- {_quote(m.path.value)} }}"]
    prefix = m.path.value.rstrip("/")
    if not prefix:
        return [""]
    return [f" {{ path -m str -- {_quote(prefix)} }}", f" {{ path -m beg -- {_quote(prefix + '/')} }}"]


def _rest(m: Match) -> str:
    out = f" {{ method -m str {m.method} }}" if m.method is not None else ""
    return out + "".join(_header(h) for h in m.headers)


def _header(h: HeaderMatch) -> str:
    fetch = 'req.fhdr("' + h.name + '",1)'  # names hold no `"` (an HTTP token)
    return f" {{ {_quote(fetch)} -m str -- {_quote(h.value)} }}"


def _scaled(weights: list[int]) -> list[int]:
    """Weights in HAProxy's 0..256 with their ratio: divided by the greatest common divisor, then
    scaled down when still above 256 (a non-zero weight stays at least 1)."""
    divisor = math.gcd(*weights) or 1
    reduced = [w // divisor for w in weights]
    top = max(reduced, default=0)
    if top <= MAX_WEIGHT:
        return reduced
    return [max(1, round(w * MAX_WEIGHT / top)) if w else 0 for w in reduced]


def _quote(text: str) -> str:
    """One HAProxy configuration word: single quotes keep everything as written (no escapes, no
    environment variables, `#` not a comment); a quote itself is written `'\\''`."""
    return "'" + text.replace("'", "'\\''") + "'"


def _lf(text: str) -> str:
    """A literal in a log-format string (header values, redirect hosts): `%` doubled."""
    return text.replace("%", "%%")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_stats(text: str) -> dict[tuple[str, str], Counters]:
    """`show stat` CSV (as HAProxy's stats socket answers it) as counters per (proxy, name): a
    server row is (backend, server name), a proxy's own rows (frontend or backend, `FRONTEND` or
    `BACKEND`). Differences between two readings count which server took the requests between."""
    body = text.lstrip("# ")
    out: dict[tuple[str, str], Counters] = {}
    for row in csv.DictReader(io.StringIO(body)):
        if not row.get("pxname") or not row.get("svname"):
            continue
        responses = {
            key.removeprefix("hrsp_"): int(value)
            for key, value in row.items()
            if key and key.startswith("hrsp_") and value
        }
        out[(row["pxname"], row["svname"])] = Counters(int(row.get("stot") or 0), responses)
    return out
