"""Gateway API `Gateway` and `HTTPRoute` in a normalized form (IR), with Gateway API's meaning.

`gateway.parse` reads the user's manifests into these frozen values; `gateway.match` answers which
rule of which route a gateway applies to a request. Only what crossmesh runs is kept (the Core
features of HTTP routing, and header modifiers and redirects): a value here always means what it
means to a conformant Gateway API implementation, so the lab's proxy and the cluster agree.

- Defaults are filled in as the CRD defaults them: a route's match without a path is
  `PathPrefix /`, a rule without matches has that one match, a backend's weight is 1, a
  parentRef's and a backendRef's namespace is the route's own.
- Header names are kept as written and compared without case (HTTP's rule); values exactly.
- A listener's certificate is either Secrets (`certificateRefs`) or one the mesh PKI issues
  (the Gateway annotation `crossmesh.io/certificate: mesh`, or the listener's
  `tls.options` entry of that name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

CERTIFICATE_ANNOTATION = "crossmesh.io/certificate"
MESH_CERTIFICATE = "mesh"


class Protocol(StrEnum):
    HTTP = "HTTP"
    HTTPS = "HTTPS"


class RouteNamespaces(StrEnum):
    """`allowedRoutes.namespaces.from`: which namespaces' routes may attach to a listener."""

    SAME = "Same"
    ALL = "All"


class PathType(StrEnum):
    EXACT = "Exact"
    PREFIX = "PathPrefix"


@dataclass(frozen=True, slots=True)
class SecretRef:
    namespace: str
    name: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class TLS:
    """How an HTTPS listener terminates TLS: the Secrets it serves, or a certificate from the mesh PKI
    (`mesh`, then `secrets` is empty)."""

    secrets: tuple[SecretRef, ...] = ()
    mesh: bool = False


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    port: int
    protocol: Protocol
    hostname: str | None = None  # None: every host; "*.example.com": any name under example.com
    tls: TLS | None = None  # set exactly for HTTPS
    allowed: RouteNamespaces = RouteNamespaces.SAME


@dataclass(frozen=True, slots=True)
class Gateway:
    namespace: str
    name: str
    class_name: str
    listeners: tuple[Listener, ...]
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def listener(self, name: str) -> Listener | None:
        return next((li for li in self.listeners if li.name == name), None)


@dataclass(frozen=True, slots=True)
class ParentRef:
    namespace: str
    name: str
    section: str | None = None  # a listener name; None: every listener that accepts the route
    port: int | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PathMatch:
    type: PathType = PathType.PREFIX
    value: str = "/"

    def matches(self, path: str) -> bool:
        """Gateway API's path match: Exact is the whole path; a prefix matches by path element, so
        `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar` (a trailing `/` in the prefix
        is ignored)."""
        if self.type is PathType.EXACT:
            return path == self.value
        prefix = self.value.rstrip("/")
        return prefix == "" or path == prefix or path.startswith(prefix + "/")

    def __str__(self) -> str:
        return f"path {'exactly' if self.type is PathType.EXACT else 'prefix'} {self.value}"


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str
    value: str

    @property
    def key(self) -> str:
        return self.name.lower()

    def __str__(self) -> str:
        return f"header {self.name}: {self.value}"


@dataclass(frozen=True, slots=True)
class Match:
    """One `matches[]` entry: everything written must hold (AND)."""

    path: PathMatch = PathMatch()
    headers: tuple[HeaderMatch, ...] = ()
    method: str | None = None

    @property
    def identity(self) -> tuple[str, str, str, frozenset[tuple[str, str]]]:
        """What makes two matches the same claim: path type and value, method, the header set."""
        return (
            self.path.type.value,
            self.path.value,
            self.method or "",
            frozenset((h.key, h.value) for h in self.headers),
        )

    def __str__(self) -> str:
        parts = [str(self.path)]
        if self.method:
            parts.append(f"method {self.method}")
        parts += [str(h) for h in self.headers]
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """`RequestHeaderModifier`: set replaces, add appends, remove drops (names without case)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Redirect:
    """`RequestRedirect`: a field not written keeps the request's own value (the port: the default
    port of the scheme when the scheme changes, as Gateway API says)."""

    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class Backend:
    """A `backendRefs[]` entry: a Service of the route's namespace and one of its ports."""

    namespace: str
    name: str
    port: int
    weight: int = 1

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port}"


@dataclass(frozen=True, slots=True)
class Rule:
    matches: tuple[Match, ...] = (Match(),)
    headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    backends: tuple[Backend, ...] = ()
    name: str | None = None


@dataclass(frozen=True, slots=True)
class HTTPRoute:
    namespace: str
    name: str
    parents: tuple[ParentRef, ...]
    hostnames: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = (Rule(),)
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def hostname_matches(pattern: str | None, host: str) -> bool:
    """Gateway API's hostname match: None matches every host, `*.example.com` any name with one or
    more labels before `.example.com` (not `example.com` itself), anything else exactly. Host
    names compare without case and without a trailing dot."""
    if pattern is None:
        return True
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def hostnames_intersect(a: str | None, b: str | None) -> bool:
    """Whether some host name matches both patterns (a listener's and a route's)."""
    if a is None or b is None:
        return True
    if a.startswith("*.") and b.startswith("*."):
        return a.endswith(b[1:]) or b.endswith(a[1:])
    if a.startswith("*."):
        return hostname_matches(a, b)
    if b.startswith("*."):
        return hostname_matches(b, a)
    return a == b
