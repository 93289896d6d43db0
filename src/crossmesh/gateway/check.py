"""What a Gateway or HTTPRoute means only beside the cluster's other objects, checked per cluster.

`gateway.parse` reads one object; here each route must reach a Gateway that accepts it, each
backend a Service of the same cluster with that port, each certificate a `kubernetes.io/tls`
Secret, and no two rules on one listener and hostname may claim the same match. For the last,
Gateway API would pick the older route (or the earlier rule), which a file does not say, and the
other rule would never answer: crossmesh refuses the ambiguity and names both places.

Problems point at the field (`Manifest.where`); an object common to every cluster is reported once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from crossmesh.errors import Problem
from crossmesh.gateway.match import hostnames_on, not_attached
from crossmesh.gateway.model import Gateway, HTTPRoute, Match
from crossmesh.gateway.parse import cluster_objects
from crossmesh.load.fields import dotted
from crossmesh.model import k8s

Path = tuple[str | int, ...]
TLS_SECRET = "kubernetes.io/tls"
Places = Mapping[tuple[str, str, int], k8s.Manifest]


def conflicts(manifests: Mapping[str, list[k8s.Manifest]]) -> list[Problem]:
    """Every cross-object problem of the clusters' Gateways and HTTPRoutes, in a stable order."""
    found: dict[tuple[str, int, int, str], Problem] = {}
    for cluster, objects in sorted(manifests.items()):
        by_place = {(m.kind, m.file, m.line): m for m in objects}
        services = {(m.namespace, m.name): m.obj for m in objects if isinstance(m.obj, k8s.Service)}
        secrets = {(m.namespace, m.name): m.raw for m in objects if m.kind == "Secret"}
        gateways, routes = cluster_objects(objects)

        def report(kind: str, obj: Gateway | HTTPRoute, path: Path, message: str, by_place: Places = by_place) -> None:
            m = by_place.get((kind, obj.file, obj.line))
            line, column = m.where(path) if m is not None else (obj.line, 1)
            found.setdefault((obj.file, line, column, message), Problem(obj.file, line, column, dotted(path), message))

        for g in gateways:
            for path, message in _certificates(g, secrets, cluster):
                report("Gateway", g, path, message)
        for r in routes:
            for path, message in _parents(r, gateways, cluster) + _backends(r, services, cluster):
                report("HTTPRoute", r, path, message)

        def locate(r: HTTPRoute, path: Path, by_place: Places = by_place) -> str:
            m = by_place.get(("HTTPRoute", r.file, r.line))
            return f"{r.file}:{m.where(path)[0] if m is not None else r.line}"

        for r, path, message in _same_claims(gateways, routes, locate):
            report("HTTPRoute", r, path, message)
    return sorted(found.values(), key=lambda p: (p.file, p.line, p.column))


def _certificates(
    g: Gateway, secrets: Mapping[tuple[str, str], dict[str, object]], cluster: str
) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    for i, listener in enumerate(g.listeners):
        for j, ref in enumerate(listener.tls.secrets if listener.tls else ()):
            path: Path = ("spec", "listeners", i, "tls", "certificateRefs", j, "name")
            raw = secrets.get((ref.namespace, ref.name))
            if raw is None:
                out.append(
                    (
                        path,
                        f"Secret {ref.ref} is not in cluster {cluster}'s manifests — add it (type {TLS_SECRET}, with "
                        f"tls.crt and tls.key), or annotate the Gateway 'crossmesh.io/certificate: mesh'",
                    )
                )
            elif raw.get("type") != TLS_SECRET:
                out.append(
                    (path, f"Secret {ref.ref} has type {raw.get('type')!r}; a listener serves a {TLS_SECRET} Secret")
                )
    return out


def _parents(r: HTTPRoute, gateways: list[Gateway], cluster: str) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    by_ref = {g.ref: g for g in gateways}
    for i, p in enumerate(r.parents):
        path: Path = ("spec", "parentRefs", i)
        g = by_ref.get(p.ref)
        if g is None:
            known = ", ".join(by_ref) or "none"
            out.append(((*path, "name"), f"Gateway {p.ref} is not in cluster {cluster}'s manifests (known: {known})"))
            continue
        if p.section is not None and g.listener(p.section) is None:
            names = ", ".join(li.name for li in g.listeners)
            out.append(((*path, "sectionName"), f"Gateway {g.ref} has no listener {p.section!r} (listeners: {names})"))
            continue
        if p.port is not None and not any(li.port == p.port for li in g.listeners):
            out.append(((*path, "port"), f"Gateway {g.ref} has no listener on port {p.port}"))
            continue
        named = [li for li in g.listeners if p.section in (None, li.name) and p.port in (None, li.port)]
        why = [not_attached(g, li, _only(r, i)) for li in named]
        if all(w is not None for w in why):
            reasons = "; ".join(f"{li.name}: {w}" for li, w in zip(named, why, strict=True))
            out.append(
                (
                    path,
                    f"the route attaches to no listener of Gateway {g.ref} ({reasons}) — fix the hostnames "
                    "or the listener's allowedRoutes",
                )
            )
    return out


def _only(r: HTTPRoute, i: int) -> HTTPRoute:
    """The route as if it had only its `i`-th parentRef (to tell which parentRef attaches nowhere)."""
    return HTTPRoute(r.namespace, r.name, (r.parents[i],), r.hostnames, r.rules, r.file, r.line)


def _backends(r: HTTPRoute, services: Mapping[tuple[str, str], object], cluster: str) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    for i, rule in enumerate(r.rules):
        for j, b in enumerate(rule.backends):
            path: Path = ("spec", "rules", i, "backendRefs", j)
            svc = services.get((b.namespace, b.name))
            if not isinstance(svc, k8s.Service):
                near = sorted(n for ns, n in services if ns == b.namespace)
                hint = f" (Services there: {', '.join(near)})" if near else ""
                out.append(
                    (
                        (*path, "name"),
                        f"Service {b.namespace}/{b.name} is not in cluster {cluster}'s manifests{hint} — "
                        "add it or name one that is",
                    )
                )
                continue
            ports = [p.port for p in svc.spec.ports]
            if b.port not in ports:
                out.append(
                    (
                        (*path, "port"),
                        f"Service {b.namespace}/{b.name} has no port {b.port} (its ports: "
                        f"{', '.join(map(str, ports))}) — use one of those",
                    )
                )
    return out


def _same_claims(
    gateways: list[Gateway], routes: list[HTTPRoute], locate: Callable[[HTTPRoute, Path], str]
) -> list[tuple[HTTPRoute, Path, str]]:
    """Two rules on one Gateway listener and hostname with the same match: the later one (by Gateway
    API's tie-break: namespace/name, then list order) never answers."""
    out: list[tuple[HTTPRoute, Path, str]] = []
    for g in gateways:
        for listener in g.listeners:
            first: dict[tuple[str | None, tuple[object, ...]], tuple[HTTPRoute, int, int]] = {}
            for r in sorted(routes, key=lambda r: r.ref):
                if not_attached(g, listener, r) is not None:
                    continue
                for host in hostnames_on(listener, r):
                    for i, rule in enumerate(r.rules):
                        for j, m in enumerate(rule.matches):
                            key = (host, m.identity)
                            prev = first.setdefault(key, (r, i, j))
                            if prev == (r, i, j) or prev[0] is r and prev[1] == i:
                                continue
                            pr, pi, pj = prev
                            out.append(
                                (
                                    r,
                                    ("spec", "rules", i, "matches", j),
                                    f"{_claim(m)} on Gateway {g.ref} listener {listener.name}, hostname {host or 'any'}"
                                    " "
                                    f"is already claimed by HTTPRoute {pr.ref} rules[{pi}].matches[{pj}] "
                                    f"({locate(pr, ('spec', 'rules', pi, 'matches', pj))}); "
                                    "that rule wins and this one never answers — change or "
                                    "remove one of them",
                                )
                            )
    return out


def _claim(m: Match) -> str:
    return f"the match ({m})"
