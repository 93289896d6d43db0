"""Raw Gateway and HTTPRoute objects → `gateway.model`, every problem at its field.

One walk both builds the IR and collects problems (as `istio.parse`), so what `crossmesh validate`
refuses is exactly what the route selection could not read. Problems carry a path relative to the
object; the manifest loader turns it into `file:line:column`. What needs other objects (Services,
Secrets, the Gateway a route names, other routes) is checked by `gateway.check`.

What is refused and why:

- What the Gateway API CRD or its webhook refuses (a hostname that is not a DNS name, a path not
  starting with `/`, weights outside 0..1000000, a redirect beside backendRefs, a repeated
  filter, a backendRef to a Service without a port, two listeners with one name).
- What Gateway API accepts but crossmesh does not run (protocols other than HTTP and HTTPS, TLS
  passthrough, regular-expression and query-parameter matches, filters other than
  RequestHeaderModifier and RequestRedirect, timeouts, retries, backends that are not Services or
  are in another namespace, which needs a ReferenceGrant): a route the lab's gateway would run
  differently from the cluster's would make `trace` lie, so each is an error naming what is
  supported.
- What a conformant gateway serves as an error to every request: an HTTPS listener with no
  certificate, a rule whose backends all weigh 0 (500 to all it matches).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from crossmesh.gateway.model import (
    CERTIFICATE_ANNOTATION,
    MESH_CERTIFICATE,
    TLS,
    Backend,
    Gateway,
    HeaderMatch,
    HeaderModifier,
    HTTPRoute,
    Listener,
    Match,
    ParentRef,
    PathMatch,
    PathType,
    Protocol,
    Redirect,
    RouteNamespaces,
    Rule,
    SecretRef,
)
from crossmesh.gateway.parse_base import NAME, ParserBase
from crossmesh.load.fields import Issue, brief
from crossmesh.model import k8s

Path = tuple[str | int, ...]

KINDS = ("Gateway", "HTTPRoute")
GROUP = "gateway.networking.k8s.io"

GATEWAY_SPEC = ("gatewayClassName", "listeners")
GATEWAY_SPEC_UNSUPPORTED = ("addresses", "infrastructure", "allowedListeners", "tls")
LISTENER = ("name", "hostname", "port", "protocol", "tls", "allowedRoutes")
LISTENER_TLS = ("mode", "certificateRefs", "options")
CERT_REF = ("group", "kind", "name", "namespace")
ALLOWED_ROUTES = ("namespaces", "kinds")
ROUTE_NAMESPACES = ("from",)
ROUTE_KIND = ("group", "kind")

ROUTE_SPEC = ("parentRefs", "hostnames", "rules")
PARENT_REF = ("group", "kind", "namespace", "name", "sectionName", "port")
RULE = ("name", "matches", "filters", "backendRefs")
RULE_UNSUPPORTED = ("timeouts", "retry", "sessionPersistence")
MATCH = ("path", "headers", "method")
MATCH_UNSUPPORTED = ("queryParams",)
PATH = ("type", "value")
HEADER = ("type", "name", "value")
FILTER = ("type", "requestHeaderModifier", "requestRedirect")
FILTER_TYPES = ("RequestHeaderModifier", "RequestRedirect")
FILTER_UNSUPPORTED = ("ResponseHeaderModifier", "RequestMirror", "URLRewrite", "ExtensionRef", "CORS", "ExternalAuth")
HEADER_MODIFIER = ("set", "add", "remove")
HEADER_VALUE = ("name", "value")
REDIRECT = ("scheme", "hostname", "port", "statusCode")
REDIRECT_UNSUPPORTED = ("path",)
BACKEND = ("group", "kind", "name", "namespace", "port", "weight")
BACKEND_UNSUPPORTED = ("filters",)

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
STATUS_CODES = (301, 302)
MAX_WEIGHT = 1_000_000
SECTION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")


class _Parser(ParserBase):
    """Reads one Gateway or HTTPRoute (the plumbing is `ParserBase`)."""

    # --- Gateway -----------------------------------------------------------------------------

    def gateway(self, raw: dict[str, Any], file: str, line: int) -> Gateway | None:
        spec = self.mapping(raw.get("spec"), ("spec",), GATEWAY_SPEC, GATEWAY_SPEC_UNSUPPORTED)
        if spec is None:
            return None
        class_name = self.string(
            spec.get("gatewayClassName"), ("spec", "gatewayClassName"), "gatewayClassName", required=True
        )
        annotations = (raw.get("metadata") or {}).get("annotations") or {}
        mesh = annotations.get(CERTIFICATE_ANNOTATION) if isinstance(annotations, dict) else None
        if mesh is not None and mesh != MESH_CERTIFICATE:
            self.error(
                ("metadata", "annotations", CERTIFICATE_ANNOTATION),
                f"{CERTIFICATE_ANNOTATION}: {brief(mesh)} — the only value is {MESH_CERTIFICATE!r} (a certificate from "
                "the mesh PKI); remove the annotation to serve the listeners' certificateRefs",
            )
        listeners: list[Listener] = []
        raw_listeners = self.items(spec.get("listeners"), ("spec", "listeners"), "listeners")
        if not raw_listeners:
            self.error(("spec", "listeners"), "a Gateway needs at least one listener — add one (name, port, protocol)")
        names: dict[str, Path] = {}
        keys: dict[tuple[int, str, str | None], Path] = {}
        protocols: dict[int, Listener] = {}
        for where, item in raw_listeners:
            got = self.listener(item, where, mesh_annotation=mesh == MESH_CERTIFICATE)
            if got is None:
                continue
            if got.name in names:
                self.error(
                    (*where, "name"), f"listener name {got.name!r} is used twice — names are unique in a Gateway"
                )
                continue
            key = (got.port, got.protocol.value, got.hostname)
            if key in keys:
                self.error(where, f"listener {got.name!r} repeats another's port, protocol and hostname — change one")
                continue
            first = protocols.setdefault(got.port, got)
            if first.protocol is not got.protocol:
                # Gateway API's ProtocolConflict: one port speaks one protocol (a TLS handshake or HTTP).
                self.error(
                    (*where, "protocol"),
                    f"listener {got.name!r} ({got.protocol.value}) shares port {got.port} with listener "
                    f"{first.name!r} ({first.protocol.value}): Gateway API marks them Conflicted (ProtocolConflict) "
                    "— give them different ports",
                )
                continue
            names[got.name], keys[key] = where, where
            listeners.append(got)
        if self.failed or class_name is None:
            return None
        return Gateway(self.namespace, self.name, class_name, tuple(listeners), file, line)

    def listener(self, raw: Any, path: Path, *, mesh_annotation: bool) -> Listener | None:
        data = self.mapping(raw, path, LISTENER)
        if data is None:
            return None
        name = self.string(data.get("name"), (*path, "name"), "the listener's name", required=True)
        if name is not None and (len(name) > 253 or not SECTION_NAME.fullmatch(name)):
            self.error((*path, "name"), f"listener name {name!r}: lower-case letters, digits, '-' and '.'")
        port = self.integer(data.get("port"), (*path, "port"), "port", 1, 65535)
        protocol = data.get("protocol")
        if protocol not in ("HTTP", "HTTPS"):
            self.error(
                (*path, "protocol"),
                f"protocol {brief(protocol)} is not supported by crossmesh, which runs HTTP and HTTPS listeners "
                "(HTTPRoute) — use one of those",
            )
            return None
        hostname = self.hostname(data["hostname"], (*path, "hostname")) if "hostname" in data else None
        allowed = self.allowed_routes(data.get("allowedRoutes"), (*path, "allowedRoutes"))
        tls = None
        if protocol == "HTTP" and "tls" in data:
            self.error((*path, "tls"), "an HTTP listener has no TLS — remove 'tls', or make the protocol HTTPS")
        elif protocol == "HTTPS":
            tls = self.tls(data.get("tls"), (*path, "tls"), mesh_annotation=mesh_annotation)
        if name is None or port is None or allowed is None or (protocol == "HTTPS" and tls is None):
            return None
        return Listener(name, port, Protocol(protocol), hostname, tls, allowed)

    def tls(self, raw: Any, path: Path, *, mesh_annotation: bool) -> TLS | None:
        data = self.mapping(raw, path, LISTENER_TLS)
        if data is None:
            return None
        mode = data.get("mode", "Terminate")
        if mode != "Terminate":
            self.error(
                (*path, "mode"),
                f"TLS mode {brief(mode)} is not supported by crossmesh: an HTTPS listener terminates TLS "
                "(mode Terminate) — write Terminate",
            )
        options = data.get("options") or {}
        if not isinstance(options, dict):
            self.error((*path, "options"), f"found {brief(options)}, expected a mapping of option: value")
            options = {}
        for key, value in options.items():
            if key != CERTIFICATE_ANNOTATION or value != MESH_CERTIFICATE:
                self.error(
                    (*path, "options", key),
                    f"TLS option {key}: {brief(value)} is not supported by crossmesh — the one option is "
                    f"'{CERTIFICATE_ANNOTATION}: {MESH_CERTIFICATE}' (a certificate from the mesh PKI)",
                )
        secrets = []
        for where, item in self.items(
            data.get("certificateRefs"), (*path, "certificateRefs"), "certificate references"
        ):
            ref = self.mapping(item, where, CERT_REF)
            if ref is None or not self.group_kind(ref, where, "", "Secret"):
                continue
            name = self.object_name(ref.get("name"), (*where, "name"), "Secret")
            namespace = self.namespace_of(ref.get("namespace"), (*where, "namespace"), "certificate Secret")
            if name is not None:
                secrets.append(SecretRef(namespace, name))
        mesh = mesh_annotation or options.get(CERTIFICATE_ANNOTATION) == MESH_CERTIFICATE
        if not secrets and not mesh:
            self.error(
                path,
                "an HTTPS listener needs a certificate — add tls.certificateRefs naming a Secret of type "
                f"kubernetes.io/tls, or annotate the Gateway '{CERTIFICATE_ANNOTATION}: {MESH_CERTIFICATE}' for one "
                "from the mesh PKI",
            )
            return None
        if secrets and mesh:
            self.error(
                (*path, "certificateRefs"),
                "this listener has certificateRefs and asks for a mesh certificate too — keep one: remove the "
                f"certificateRefs, or the '{CERTIFICATE_ANNOTATION}' annotation/option",
            )
            return None
        return TLS(tuple(secrets), mesh=not secrets)

    def allowed_routes(self, raw: Any, path: Path) -> RouteNamespaces | None:
        data = self.mapping(raw, path, ALLOWED_ROUTES)
        if data is None:
            return None
        for where, item in self.items(data.get("kinds"), (*path, "kinds"), "route kinds"):
            kind = self.mapping(item, where, ROUTE_KIND)
            if kind is not None:
                self.group_kind(kind, where, GROUP, "HTTPRoute")
        spaces = self.mapping(data.get("namespaces"), (*path, "namespaces"), ROUTE_NAMESPACES)
        if spaces is None:
            return None
        value = spaces.get("from", "Same")
        if value not in ("Same", "All"):
            self.error(
                (*path, "namespaces", "from"),
                f"allowedRoutes from {brief(value)} is not supported by crossmesh, which allows routes from the "
                "Gateway's namespace (Same) or from All — use one of those",
            )
            return None
        return RouteNamespaces(value)

    # --- HTTPRoute ---------------------------------------------------------------------------

    def route(self, raw: dict[str, Any], file: str, line: int) -> HTTPRoute | None:
        spec = self.mapping(raw.get("spec"), ("spec",), ROUTE_SPEC)
        if spec is None:
            return None
        parents = [
            p
            for w, item in self.items(spec.get("parentRefs"), ("spec", "parentRefs"), "parentRefs")
            if (p := self.parent(item, w))
        ]
        if not spec.get("parentRefs"):
            self.error(("spec", "parentRefs"), "an HTTPRoute attaches to no Gateway — add parentRefs naming one")
        hostnames = [
            h
            for w, item in self.items(spec.get("hostnames"), ("spec", "hostnames"), "hostnames")
            if (h := self.hostname(item, w))
        ]
        raw_rules = self.items(spec.get("rules"), ("spec", "rules"), "rules")
        rules = [r for w, item in raw_rules if (r := self.rule(item, w))] if "rules" in spec else [Rule()]
        if self.failed:
            return None
        return HTTPRoute(self.namespace, self.name, tuple(parents), tuple(hostnames), tuple(rules), file, line)

    def parent(self, raw: Any, path: Path) -> ParentRef | None:
        data = self.mapping(raw, path, PARENT_REF)
        if data is None or not self.group_kind(data, path, GROUP, "Gateway"):
            return None
        name = self.object_name(data.get("name"), (*path, "name"), "Gateway")
        namespace = data.get("namespace", self.namespace)
        if not isinstance(namespace, str) or not NAME.fullmatch(namespace):
            self.error((*path, "namespace"), f"namespace {brief(namespace)} is not a Kubernetes name")
            return None
        section = self.string(data.get("sectionName"), (*path, "sectionName"), "a listener name")
        port = self.integer(data["port"], (*path, "port"), "port", 1, 65535) if "port" in data else None
        if name is None:
            return None
        return ParentRef(namespace, name, section, port)

    def rule(self, raw: Any, path: Path) -> Rule | None:
        data = self.mapping(raw, path, RULE, RULE_UNSUPPORTED)
        if data is None:
            return None
        name = self.string(data.get("name"), (*path, "name"), "the rule's name")
        matches = [
            m
            for w, item in self.items(data.get("matches"), (*path, "matches"), "matches")
            if (m := self.match(item, w))
        ]
        headers, redirect = self.filters(data.get("filters"), (*path, "filters"))
        backends: list[Backend] = []
        for where, item in self.items(data.get("backendRefs"), (*path, "backendRefs"), "backendRefs"):
            got = self.backend(item, where)
            if got is not None:
                backends.append(got)
        if redirect is not None and data.get("backendRefs"):
            self.error(
                (*path, "backendRefs"),
                "a rule that redirects answers the redirect itself, so Gateway API refuses backendRefs beside "
                "RequestRedirect — remove one of them",
            )
        elif backends and all(b.weight == 0 for b in backends):
            self.error(
                (*path, "backendRefs"),
                "every backend of this rule has weight 0, so a gateway answers 500 to each request it matches — give "
                "at least one backend a weight above 0",
            )
        elif redirect is None and not data.get("backendRefs"):
            self.warn(
                path,
                "this rule has no backendRefs and no redirect: a gateway answers 500 to every request it "
                "matches — add backendRefs or a RequestRedirect filter",
            )
        if not data.get("matches"):
            matches = [Match()]
        return Rule(tuple(matches), headers, redirect, tuple(backends), name)

    def match(self, raw: Any, path: Path) -> Match | None:
        data = self.mapping(raw, path, MATCH, MATCH_UNSUPPORTED)
        if data is None:
            return None
        path_match = PathMatch()
        if "path" in data:
            got = self.path_match(data["path"], (*path, "path"))
            if got is None:
                return None
            path_match = got
        headers: list[HeaderMatch] = []
        seen: set[str] = set()
        for where, item in self.items(data.get("headers"), (*path, "headers"), "header matches"):
            header = self.mapping(item, where, HEADER)
            if header is None:
                continue
            if header.get("type", "Exact") != "Exact":
                self.error(
                    (*where, "type"),
                    f"header match type {brief(header['type'])} is not supported by crossmesh, which matches header "
                    "values exactly (Exact) — write the exact value",
                )
                continue
            name = self.header_name(header.get("name"), (*where, "name"))
            value = header.get("value")
            if not isinstance(value, str):
                self.error(
                    (*where, "value"), f"found {brief(value)}, expected the header's value as a string — quote it"
                )
                continue
            if name is None:
                continue
            if name.lower() in seen:
                self.error(
                    (*where, "name"), f"header {name!r} is matched twice; Gateway API reads only the first — keep one"
                )
                continue
            seen.add(name.lower())
            headers.append(HeaderMatch(name, value))
        method = data.get("method")
        if method is not None and method not in METHODS:
            fix = (
                f"write {str(method).upper()!r}"
                if str(method).upper() in METHODS
                else f"use one of {', '.join(METHODS)}"
            )
            self.error((*path, "method"), f"method {brief(method)} is not an HTTP method Gateway API matches — {fix}")
            return None
        return Match(path_match, tuple(headers), method)

    def path_match(self, raw: Any, path: Path) -> PathMatch | None:
        data = self.mapping(raw, path, PATH)
        if data is None:
            return None
        kind = data.get("type", "PathPrefix")
        if kind not in ("Exact", "PathPrefix"):
            self.error(
                (*path, "type"),
                f"path match type {brief(kind)} is not supported by crossmesh, which matches Exact and PathPrefix — "
                "use one of those",
            )
            return None
        value = data.get("value", "/")
        if not isinstance(value, str) or not value.startswith("/"):
            self.error((*path, "value"), f"path {brief(value)} must be an absolute path starting with '/'")
            return None
        bad = next((s for s in ("//", "/./", "/../", "%2f", "%2F", "#", "?") if s in value), None)
        if bad is not None or value.endswith(("/..", "/.")) or len(value) > 1024:
            self.error(
                (*path, "value"),
                f"path {value!r} is refused by Gateway API ({bad or 'dot segment or length'}) — "
                "write a normalized path without a query",
            )
            return None
        return PathMatch(PathType(kind), value)

    def header_name(self, value: Any, path: Path) -> str | None:
        text = self.string(value, path, "a header name", required=True)
        if text is not None and (len(text) > 256 or not HEADER_NAME.fullmatch(text)):
            self.error(path, f"{text!r} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
            return None
        return text

    def filters(self, raw: Any, path: Path) -> tuple[HeaderModifier | None, Redirect | None]:
        headers: HeaderModifier | None = None
        redirect: Redirect | None = None
        for where, item in self.items(raw, path, "filters"):
            kind = item.get("type") if isinstance(item, dict) else None
            data = self.mapping(item, where, FILTER) if kind in FILTER_TYPES else item
            if not isinstance(data, dict):
                self.error(where, f"found {brief(item)}, expected a filter (type and its settings)")
                continue
            if kind not in FILTER_TYPES:
                what = "is not supported by crossmesh" if kind in FILTER_UNSUPPORTED else "is not a filter type"
                self.error(
                    (*where, "type"),
                    f"filter {brief(kind)} {what}; it runs RequestHeaderModifier and RequestRedirect — "
                    "remove the filter or use one of those",
                )
                continue
            field_name = "requestHeaderModifier" if kind == "RequestHeaderModifier" else "requestRedirect"
            other = next(
                (k for k in ("requestHeaderModifier", "requestRedirect") if k in data and k != field_name), None
            )
            if other is not None:
                self.error((*where, other), f"a {kind} filter holds {field_name!r} only — remove {other!r}")
                continue
            if kind == "RequestHeaderModifier":
                if headers is not None:
                    self.error(where, "RequestHeaderModifier is repeated; Gateway API allows it once — merge them")
                headers = self.header_modifier(data.get(field_name), (*where, field_name))
            else:
                if redirect is not None:
                    self.error(where, "RequestRedirect is repeated; Gateway API allows it once — keep one")
                redirect = self.redirect(data.get(field_name), (*where, field_name))
        return headers, redirect

    def header_modifier(self, raw: Any, path: Path) -> HeaderModifier | None:
        data = self.mapping(raw, path, HEADER_MODIFIER)
        if not data:
            self.error(path, "RequestHeaderModifier needs set, add or remove — write what it changes")
            return None
        seen: set[str] = set()

        def pairs(key: str) -> tuple[tuple[str, str], ...]:
            out = []
            for where, item in self.items(data.get(key), (*path, key), "headers"):
                entry = self.mapping(item, where, HEADER_VALUE)
                if entry is None:
                    continue
                name = self.header_name(entry.get("name"), (*where, "name"))
                value = entry.get("value")
                if not isinstance(value, str):
                    self.error((*where, "value"), f"found {brief(value)}, expected the header's value as a string")
                elif name is not None and name.lower() in seen:
                    self.error((*where, "name"), f"header {name!r} is modified twice in this filter — keep one")
                elif name is not None:
                    seen.add(name.lower())
                    out.append((name, value))
            return tuple(out)

        set_, add = pairs("set"), pairs("add")
        remove = []
        for where, item in self.items(data.get("remove"), (*path, "remove"), "header names"):
            name = self.header_name(item, where)
            if name is not None:
                remove.append(name)
        return HeaderModifier(set_, add, tuple(remove))

    def redirect(self, raw: Any, path: Path) -> Redirect | None:
        data = self.mapping(raw, path, REDIRECT, REDIRECT_UNSUPPORTED)
        if data is None:
            return None
        scheme = data.get("scheme")
        if scheme is not None and scheme not in ("http", "https"):
            self.error((*path, "scheme"), f"scheme {brief(scheme)}: Gateway API redirects to 'http' or 'https'")
        hostname = self.hostname(data["hostname"], (*path, "hostname"), wildcard=False) if "hostname" in data else None
        port = self.integer(data["port"], (*path, "port"), "port", 1, 65535) if "port" in data else None
        status = data.get("statusCode", 302)
        if status not in STATUS_CODES:
            self.error(
                (*path, "statusCode"), f"statusCode {brief(status)}: crossmesh redirects with 301 or 302 — use one"
            )
            return None
        return Redirect(scheme, hostname, port, status)

    def backend(self, raw: Any, path: Path) -> Backend | None:
        data = self.mapping(raw, path, BACKEND, BACKEND_UNSUPPORTED)
        if data is None or not self.group_kind(data, path, "", "Service"):
            return None
        name = self.object_name(data.get("name"), (*path, "name"), "Service")
        namespace = self.namespace_of(data.get("namespace"), (*path, "namespace"), "backend Service")
        if "port" not in data:
            self.error(path, "a backendRef to a Service needs the Service's port — add 'port'")
            return None
        port = self.integer(data["port"], (*path, "port"), "port", 1, 65535)
        weight = self.integer(data.get("weight", 1), (*path, "weight"), "weight", 0, MAX_WEIGHT)
        if name is None or port is None or weight is None:
            return None
        return Backend(namespace, name, port, weight)


Parsed = Gateway | HTTPRoute


def parse_manifest(m: k8s.Manifest) -> tuple[Parsed | None, list[Issue]]:
    """The Gateway or HTTPRoute of one manifest object (None when it is neither or is wrong) and its
    problems."""
    if m.kind not in KINDS or m.obj is None:
        return None, []
    parser = _Parser(m.namespace or "default", m.name)
    if m.kind == "Gateway":
        return parser.gateway(m.raw, m.file, m.line), parser.issues
    return parser.route(m.raw, m.file, m.line), parser.issues


def check_manifest(m: k8s.Manifest) -> list[Issue]:
    """Problems of one manifest object, for the loader (`crossmesh validate`)."""
    return parse_manifest(m)[1]


def cluster_objects(manifests: Iterable[k8s.Manifest]) -> tuple[list[Gateway], list[HTTPRoute]]:
    """The valid Gateways and HTTPRoutes of one cluster, sorted by namespace and name (a stable order,
    and Gateway API's tie-break between routes)."""
    gateways: list[Gateway] = []
    routes: list[HTTPRoute] = []
    for m in manifests:
        got, _ = parse_manifest(m)
        if isinstance(got, Gateway):
            gateways.append(got)
        elif isinstance(got, HTTPRoute):
            routes.append(got)
    return sorted(gateways, key=lambda g: g.ref), sorted(routes, key=lambda r: r.ref)
