"""Raw PeerAuthentication and AuthorizationPolicy objects → `istio.model`, every problem at its field.

One walk both builds the IR and collects problems, so what `crossmesh validate` refuses is
exactly what the evaluator could not read (the design of `policy.parse`). Problems carry a path
relative to the object; the manifest loader turns it into `file:line:column`.

What is refused and why:

- Fields Istio has but crossmesh does not evaluate (`when`, `requestPrincipals`,
  `remoteIpBlocks`, `serviceAccounts`, `trustDomains`, `hosts`, `targetRef(s)`, the CUSTOM and
  AUDIT actions): a policy crossmesh cannot evaluate would make `policy trace` and the lab say
  something the cluster does not do, so each is an error naming what is supported.
- What Istio's webhook or CRD refuses (an unknown action or mode, `portLevelMtls` without a
  selector, a port outside 1..65535, an empty `from`/`to`/`source`/`operation`), and what it
  accepts but can never match: a principal that is not `<trust-domain>/ns/<ns>/sa/<sa>`, a `*`
  inside a value (Istio matches exact, `prefix*`, `*suffix` and `*` only), a lower-case method
  (Envoy answers 400 to one), a path not starting with `/`.
- Two namespace-wide PeerAuthentications in one namespace: Istio takes the oldest, which a
  file does not say; `conflicts` refuses the ambiguity.

A PeerAuthentication with a selector in the root namespace is ignored by Istio (API reference,
"PeerAuthentication"); it is kept out of the IR and reported as a warning.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any, TypeVar

from crossmesh.errors import Problem
from crossmesh.istio.model import (
    ROOT_NAMESPACE,
    Action,
    AuthorizationPolicy,
    Mode,
    Network,
    Operation,
    Pattern,
    PeerAuthentication,
    Rule,
    Source,
)
from crossmesh.load.fields import FieldReader, Issue, brief
from crossmesh.model import k8s

Path = tuple[str | int, ...]
T = TypeVar("T")

KINDS = ("AuthorizationPolicy", "PeerAuthentication")
API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")

AP_SPEC = ("action", "rules", "selector")
AP_SPEC_UNSUPPORTED = ("provider", "targetRef", "targetRefs")
RULE = ("from", "to")
RULE_UNSUPPORTED = ("when",)
SOURCE = ("principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks")
SOURCE_UNSUPPORTED = (
    "requestPrincipals",
    "notRequestPrincipals",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "serviceAccounts",
    "notServiceAccounts",
    "trustDomains",
    "notTrustDomains",
)
OPERATION = ("ports", "notPorts", "methods", "notMethods", "paths", "notPaths")
OPERATION_UNSUPPORTED = ("hosts", "notHosts")
WHY_UNSUPPORTED = {
    "when": "'when' conditions are not supported by crossmesh; it evaluates from.source (principals, "
    "namespaces, ipBlocks and their not* forms) and to.operation (ports, methods, paths and their not* "
    "forms) — remove 'when' or express it with those fields",
}
PA_SPEC = ("selector", "mtls", "portLevelMtls")
SELECTOR = ("matchLabels",)
MTLS = ("mode",)
MODES = ("UNSET", "STRICT", "PERMISSIVE", "DISABLE")
ACTIONS = ("ALLOW", "DENY")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")

NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
TRUST_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
NAMESPACE = re.compile(rf"^{NAME}$")
SERVICE_ACCOUNT = re.compile(rf"^{NAME}(\.{NAME})*$")
PRINCIPAL_FORM = "<trust-domain>/ns/<namespace>/sa/<service-account>, e.g. cluster.local/ns/default/sa/web"


@dataclass(slots=True)
class _Parser(FieldReader):
    """The state of parsing one object: where it is and what went wrong so far."""

    cluster: str
    namespace: str
    name: str

    def unsupported(self, key: str, known: tuple[str, ...]) -> str:
        return WHY_UNSUPPORTED.get(key) or (
            f"{key!r} is not supported by crossmesh, which evaluates only {', '.join(known)} here — "
            "remove it or express the rule with those"
        )

    def strings(self, value: Any, path: Path, what: str) -> list[tuple[Path, str]] | None:
        """A list of strings with the path of each; None when absent or not a list (reported)."""
        if value is None:
            return None
        if not isinstance(value, list):
            self.error(path, f"found {brief(value)}, expected a list of {what}s")
            return None
        out = []
        for i, item in enumerate(value):
            where = (*path, i)
            if isinstance(item, str) and item:
                out.append((where, item))
            elif isinstance(item, str):
                self.error(where, f"an empty {what} matches nothing — remove it")
            elif isinstance(item, bool | int | float):
                self.error(where, f"{what} must be a string — quote it ({str(item).lower()!r})")
            else:
                self.error(where, f"found {brief(item)}, expected {what} as a string")
        return out

    def pattern(self, where: Path, text: str, what: str) -> Pattern | None:
        """Istio's exact / `prefix*` / `*suffix` / `*` match; a `*` anywhere else matches nothing."""
        if "*" in text[1:-1] or text.startswith("*") and text.endswith("*") and text != "*":
            self.error(
                where,
                f"{what} {text!r}: Istio matches a value exactly, by prefix ('abc*'), by suffix ('*abc') "
                "or any value ('*'); a '*' elsewhere matches nothing — use one of those forms",
            )
            return None
        return Pattern(text)

    # --- AuthorizationPolicy --------------------------------------------------------------

    def authorization_policy(self, raw: dict[str, Any], file: str, line: int) -> AuthorizationPolicy | None:
        spec = self.mapping(raw.get("spec"), ("spec",), AP_SPEC, AP_SPEC_UNSUPPORTED)
        if spec is None:
            return None
        action = spec.get("action", "ALLOW")
        if action not in ACTIONS:
            if action in ("CUSTOM", "AUDIT"):
                why = f"action {action} is not supported by crossmesh (it evaluates ALLOW and DENY)"
            else:
                why = f"action {brief(action)} is not one of ALLOW, DENY (Istio also has CUSTOM and AUDIT)"
            self.error(("spec", "action"), f"{why} — use ALLOW or DENY")
        selector = self.selector(spec.get("selector"), ("spec", "selector"))
        rules = []
        raw_rules = spec.get("rules")
        if raw_rules is not None and not isinstance(raw_rules, list):
            self.error(("spec", "rules"), f"found {brief(raw_rules)}, expected a list of rules")
            raw_rules = None
        for i, r in enumerate(raw_rules or []):
            rule = self.rule(r, ("spec", "rules", i))
            if rule is not None:
                rules.append(rule)
        if any(i.severity == "error" for i in self.issues):
            return None
        return AuthorizationPolicy(
            self.cluster, self.namespace, self.name, Action(action), selector, tuple(rules), file, line
        )

    def rule(self, raw: Any, path: Path) -> Rule | None:
        data = self.mapping(raw, path, RULE, RULE_UNSUPPORTED)
        if data is None:
            return None
        sources = self.entries(data.get("from"), (*path, "from"), "source", self.source)
        operations = self.entries(data.get("to"), (*path, "to"), "operation", self.operation)
        return Rule(tuple(sources), tuple(operations))

    def entries(self, raw: Any, path: Path, key: str, parse: Callable[[Any, Path], T | None]) -> list[T]:
        """The `from` or `to` list: each entry holds one `source` / `operation`."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.error(path, f"found {brief(raw)}, expected a list of {{{key}: ...}} entries")
            return []
        if not raw:
            self.error(path, f"an empty '{path[-1]}' list is refused by Istio — remove it to match any {key}")
        out: list[T] = []
        for i, entry in enumerate(raw):
            data = self.mapping(entry, (*path, i), (key,))
            if data is None:
                continue
            if not data.get(key):
                self.error((*path, i, key), f"'{key}' must not be empty (Istio refuses it) — name what it matches")
                continue
            got = parse(data[key], (*path, i, key))
            if got is not None:
                out.append(got)
        return out

    def source(self, raw: Any, path: Path) -> Source | None:
        data = self.mapping(raw, path, SOURCE, SOURCE_UNSUPPORTED)
        if data is None:
            return None
        return Source(
            principals=self.principals(data.get("principals"), (*path, "principals")),
            not_principals=self.principals(data.get("notPrincipals"), (*path, "notPrincipals")),
            namespaces=self.namespaces(data.get("namespaces"), (*path, "namespaces")),
            not_namespaces=self.namespaces(data.get("notNamespaces"), (*path, "notNamespaces")),
            ip_blocks=self.ip_blocks(data.get("ipBlocks"), (*path, "ipBlocks")),
            not_ip_blocks=self.ip_blocks(data.get("notIpBlocks"), (*path, "notIpBlocks")),
        )

    def principals(self, raw: Any, path: Path) -> tuple[Pattern, ...] | None:
        items = self.strings(raw, path, "principal")
        if items is None:
            return None
        out = []
        for where, text in items:
            if text.startswith("spiffe://"):
                self.error(where, f"principal {text!r}: Istio principals omit 'spiffe://' — write {text[9:]!r}")
                continue
            if "*" not in text and not _principal_ok(text):
                self.error(where, f"principal {text!r} is not {PRINCIPAL_FORM} (or a '*' prefix/suffix form)")
                continue
            p = self.pattern(where, text, "principal")
            if p is not None:
                out.append(p)
        return tuple(out)

    def namespaces(self, raw: Any, path: Path) -> tuple[Pattern, ...] | None:
        items = self.strings(raw, path, "namespace")
        if items is None:
            return None
        out = []
        for where, text in items:
            if "*" not in text and (len(text) > 63 or not NAMESPACE.fullmatch(text)):
                self.error(where, f"{text!r} is not a namespace name (lower-case letters, digits, '-', ≤63)")
                continue
            p = self.pattern(where, text, "namespace")
            if p is not None:
                out.append(p)
        return tuple(out)

    def ip_blocks(self, raw: Any, path: Path) -> tuple[Network, ...] | None:
        items = self.strings(raw, path, "address block")
        if items is None:
            return None
        out: list[Network] = []
        for where, text in items:
            try:
                net = ip_network(text, strict=False)
            except ValueError:
                self.error(where, f"{text!r} is not an address or CIDR — write e.g. 10.0.0.0/8 or 192.0.2.7")
                continue
            if net.network_address != ip_address(text.split("/")[0]):
                self.warn(where, f"{text!r} has host bits set; it is read as {net}")
            out.append(net)
        return tuple(out)

    def operation(self, raw: Any, path: Path) -> Operation | None:
        data = self.mapping(raw, path, OPERATION, OPERATION_UNSUPPORTED)
        if data is None:
            return None
        return Operation(
            ports=self.ports(data.get("ports"), (*path, "ports")),
            not_ports=self.ports(data.get("notPorts"), (*path, "notPorts")),
            methods=self.methods(data.get("methods"), (*path, "methods")),
            not_methods=self.methods(data.get("notMethods"), (*path, "notMethods")),
            paths=self.paths(data.get("paths"), (*path, "paths")),
            not_paths=self.paths(data.get("notPaths"), (*path, "notPaths")),
        )

    def ports(self, raw: Any, path: Path) -> tuple[int, ...] | None:
        items = self.strings(raw, path, "port")
        if items is None:
            return None
        out = []
        for where, text in items:
            if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
                self.error(where, f"port {text!r} is not a number from 1 to 65535 — write the workload's port")
                continue
            out.append(int(text))
        return tuple(out)

    def methods(self, raw: Any, path: Path) -> tuple[Pattern, ...] | None:
        items = self.strings(raw, path, "method")
        if items is None:
            return None
        out = []
        for where, text in items:
            if text != "*" and text not in HTTP_METHODS:
                fix = f"write {text.upper()!r}" if text.upper() in HTTP_METHODS else f"use {', '.join(HTTP_METHODS)}"
                self.error(where, f"method {text!r} is not an HTTP method — {fix} (Istio compares in upper case)")
                continue
            out.append(Pattern(text))
        return tuple(out)

    def paths(self, raw: Any, path: Path) -> tuple[Pattern, ...] | None:
        items = self.strings(raw, path, "path")
        if items is None:
            return None
        out = []
        for where, text in items:
            if "{" in text:
                self.error(where, f"path {text!r}: path templates ({{*}}, {{**}}) are not supported by crossmesh")
                continue
            if not text.startswith(("/", "*")):
                self.error(where, f"path {text!r} does not start with '/' and so matches nothing — write '/{text}'")
                continue
            p = self.pattern(where, text, "path")
            if p is not None:
                out.append(p)
        return tuple(out)

    # --- selectors and PeerAuthentication -----------------------------------------------

    def selector(self, raw: Any, path: Path) -> dict[str, str] | None:
        """The labels a workload must carry; None (every workload) when absent or empty, as Istio."""
        data = self.mapping(raw, path, SELECTOR)
        labels = (data or {}).get("matchLabels")
        if labels is None:
            return None
        if not isinstance(labels, dict):
            self.error((*path, "matchLabels"), f"found {brief(labels)}, expected a mapping of label: value")
            return None
        out = {}
        for key, value in labels.items():
            where = (*path, "matchLabels", key)
            if not isinstance(key, str) or not key or "*" in key:
                self.error(where, f"label key {brief(key)}: a non-empty name without '*' (Istio matches exactly)")
            elif not isinstance(value, str):
                self.error(where, f"label value must be a string — quote it ({str(value).lower()!r})")
            elif "*" in value or len(value) > 63:
                self.error(where, f"label value {value!r}: at most 63 characters and no '*' (Istio matches exactly)")
            else:
                out[key] = value
        return out or None

    def mode(self, raw: Any, path: Path) -> tuple[bool, Mode | None]:
        """(ok, mode); UNSET and absent are None (inherit)."""
        data = self.mapping(raw, path, MTLS)
        if data is None:
            return False, None
        value = data.get("mode", "UNSET")
        if value not in MODES:
            near = difflib.get_close_matches(str(value).upper(), MODES, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            self.error(
                (*path, "mode"), f"mTLS mode {brief(value)} is unknown — {hint}use STRICT, PERMISSIVE, DISABLE or UNSET"
            )
            return False, None
        return True, None if value == "UNSET" else Mode(value)

    def peer_authentication(self, raw: dict[str, Any], file: str, line: int) -> PeerAuthentication | None:
        spec = self.mapping(raw.get("spec"), ("spec",), PA_SPEC)
        if spec is None:
            return None
        selector = self.selector(spec.get("selector"), ("spec", "selector"))
        _, mode = self.mode(spec.get("mtls"), ("spec", "mtls"))
        ports: dict[int, Mode | None] = {}
        levels = spec.get("portLevelMtls")
        if levels is not None:
            where = ("spec", "portLevelMtls")
            if not isinstance(levels, dict) or not levels:
                self.error(where, f"found {brief(levels)}, expected a mapping of port: {{mode: ...}} (at least one)")
            elif selector is None:
                self.error(
                    where,
                    "portLevelMtls requires a workload selector (Istio refuses it on namespace- and mesh-wide "
                    "policies) — add spec.selector.matchLabels or move the ports to a policy with one",
                )
            else:
                for key, value in levels.items():
                    text = str(key)
                    if isinstance(key, bool) or not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
                        self.error((*where, key), f"port {brief(key)} must be between 1 and 65535")
                        continue
                    ok, port_mode = self.mode(value, (*where, key))
                    if ok:
                        ports[int(text)] = port_mode
        if any(i.severity == "error" for i in self.issues):
            return None
        if selector is not None and self.namespace == ROOT_NAMESPACE:
            self.warn(
                ("spec", "selector"),
                f"a PeerAuthentication with a selector in the root namespace {ROOT_NAMESPACE} is ignored by Istio "
                "— move it to the workloads' namespace, or drop the selector to make it mesh-wide",
            )
            return None
        return PeerAuthentication(self.cluster, self.namespace, self.name, selector, mode, ports, file, line)


def _principal_ok(text: str) -> bool:
    parts = text.split("/")
    return (
        len(parts) == 5
        and parts[1] == "ns"
        and parts[3] == "sa"
        and len(parts[0]) <= 253
        and bool(TRUST_DOMAIN.fullmatch(parts[0]))
        and len(parts[2]) <= 63
        and bool(NAMESPACE.fullmatch(parts[2]))
        and len(parts[4]) <= 253
        and bool(SERVICE_ACCOUNT.fullmatch(parts[4]))
    )


Parsed = AuthorizationPolicy | PeerAuthentication


def parse_manifest(m: k8s.Manifest, *, cluster: str) -> tuple[Parsed | None, list[Issue]]:
    """The policy of one manifest object (None when it is no Istio policy or is wrong) and its problems."""
    if m.kind not in KINDS or m.obj is None:
        return None, []
    parser = _Parser(cluster, m.namespace or "default", m.name)
    if m.kind == "AuthorizationPolicy":
        return parser.authorization_policy(m.raw, m.file, m.line), parser.issues
    return parser.peer_authentication(m.raw, m.file, m.line), parser.issues


def check_manifest(m: k8s.Manifest) -> list[Issue]:
    """Problems of one manifest object, for the loader (`crossmesh validate`)."""
    return parse_manifest(m, cluster="")[1]


def cluster_policies(
    cluster: str, manifests: Iterable[k8s.Manifest]
) -> tuple[list[AuthorizationPolicy], list[PeerAuthentication]]:
    """The valid Istio policies of one cluster, sorted by namespace and name (a stable order)."""
    authz: list[AuthorizationPolicy] = []
    peer: list[PeerAuthentication] = []
    for m in manifests:
        got, _ = parse_manifest(m, cluster=cluster)
        if isinstance(got, AuthorizationPolicy):
            authz.append(got)
        elif isinstance(got, PeerAuthentication):
            peer.append(got)
    return sorted(authz, key=lambda p: p.ref), sorted(peer, key=lambda p: p.ref)


def conflicts(manifests: Mapping[str, list[k8s.Manifest]]) -> list[Problem]:
    """Two namespace-wide (selector-less) PeerAuthentications in one namespace of one cluster.

    Istio applies the oldest of them; which one that is depends on when each was applied, not on
    the files, so crossmesh refuses to guess. Reported once per object (common manifests repeat
    in every cluster)."""
    out: list[Problem] = []
    seen: set[tuple[str, int]] = set()
    for cluster, objects in sorted(manifests.items()):
        first: dict[str, PeerAuthentication] = {}
        for pa in cluster_policies(cluster, objects)[1]:
            if pa.selector is not None:
                continue
            prev = first.setdefault(pa.namespace, pa)
            if prev is pa or (pa.file, pa.line) in seen:
                continue
            seen.add((pa.file, pa.line))
            scope = "mesh-wide" if pa.namespace == ROOT_NAMESPACE else f"namespace-wide in {pa.namespace}"
            out.append(
                Problem(
                    pa.file,
                    pa.line,
                    1,
                    "spec",
                    f"PeerAuthentication {pa.ref} is a second {scope} policy besides {prev.ref} "
                    f"({prev.file}:{prev.line}); Istio would apply whichever is older — keep one, or give one a "
                    "selector",
                )
            )
    return out
