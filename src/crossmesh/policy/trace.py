"""`policy trace` as a pure function: names → endpoints → verdicts → JSON and plain text.

The command line (`crossmesh policy trace`) and the UI's click-through on a dropped flow
(`/api/trace`) both answer "why was this flow allowed or denied?"; one function answers it, so
the page can never name a different policy than the command. Bad names raise UsageError with the
fix, as the command shows them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from ipaddress import IPv4Address, ip_address
from typing import Any

from crossmesh.errors import UsageError
from crossmesh.istio.index import IstioIndex
from crossmesh.istio.layer import IstioLayer, istio_layer
from crossmesh.model.plan import Plan, ServicePlan
from crossmesh.plan import outside
from crossmesh.policy.endpoints import world_endpoint
from crossmesh.policy.evaluator import PolicyIndex, Side, Verdict, evaluate
from crossmesh.policy.model import MAX_HTTP_REQUEST, Endpoint, EndpointKind, HttpRequest
from crossmesh.services.backends import backend_sets

PORT_RE = re.compile(r"^(\d{1,5})/(TCP|UDP|SCTP)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What `--to` named: the endpoints that answer, and on which port."""

    service: ServicePlan | None
    backends: tuple[tuple[Endpoint, int], ...]  # (endpoint, port after service DNAT)


@dataclasses.dataclass(frozen=True, slots=True)
class Trace:
    """The verdict of one flow: for a service, one per backend (the first of the serving tier first)."""

    source: str  # as given
    target: str
    port: int
    protocol: str
    request: HttpRequest | None
    src: Endpoint
    dst: Target
    verdicts: tuple[tuple[Endpoint, int, Verdict], ...]
    istio: tuple[IstioLayer, ...] = ()  # one per verdict when the mesh has Istio, else empty

    @property
    def first(self) -> Verdict:
        return self.verdicts[0][2]

    @property
    def allowed(self) -> bool:
        """The overall verdict: network policy and, with Istio, the destination's proxy."""
        return self.first.allowed and (not self.istio or self.istio[0].allowed)

    def _overall(self, i: int) -> str:
        allowed = self.verdicts[i][2].allowed and (not self.istio or self.istio[i].allowed)
        return "allowed" if allowed else "denied"

    def as_json(self, policies: Mapping[Any, Any]) -> dict[str, Any]:
        """SPEC §2's shape of `policy trace -o json`."""
        first_ep, first_port, first = self.verdicts[0]
        proto = self.protocol
        request = self.request
        data: dict[str, Any] = {
            "verdict": first.verdict,
            "from": self.source,
            "to": self.target,
            "port": f"{self.port}/{proto}",
            "destination": first_ep.ref,
            "destination_port": f"{first_port}/{proto}",
            "http": None
            if request is None
            else {"method": request.method, "path": request.path, "headers": [f"{k}: {v}" for k, v in request.headers]},
            "egress": first.egress.as_json(policies),
            "ingress": first.ingress.as_json(policies),
        }
        if self.istio:
            data["verdict"] = self._overall(0)
            data["network_verdict"] = first.verdict
            data["istio"] = self.istio[0].as_json()
        if self.dst.service is not None:
            data["service"] = self.dst.service.ref
            data["backends"] = [
                {
                    "backend": ep.ref,
                    "port": f"{p}/{proto}",
                    "verdict": v.verdict,
                    "egress": v.egress.as_json(policies),
                    "ingress": v.ingress.as_json(policies),
                }
                | (
                    {"verdict": self._overall(i), "network_verdict": v.verdict, "istio": self.istio[i].as_json()}
                    if self.istio
                    else {}
                )
                for i, (ep, p, v) in enumerate(self.verdicts)
            ]
        return data

    def lines(self) -> list[str]:
        """The trace as plain text lines, as `policy trace` prints it (without colour)."""
        ep, dport, first = self.verdicts[0]
        proto, request = self.protocol, self.request
        what = f"{self.port}/{proto}" + (f" {request.method} {request.path}" if request else "")
        out: list[str] = []
        if self.dst.service is not None:
            n = len(self.verdicts)
            out.append(
                f"service {self.dst.service.ref} {self.port}/{proto} → {n} backend{'s' if n != 1 else ''}; "
                f"in full: the first of the serving tier, {ep.ref} "
                + (
                    f"(headless: the client connects to the pod itself, port {dport})"
                    if self.dst.service.headless
                    else f"(port {dport} after DNAT)"
                )
            )
        out.append(f"{name(self.src)} → {name(ep)} {what}: {self._overall(0)}")
        if self.istio:
            out.append(f"  network policy (Cilium/Kubernetes): {first.verdict}")
        for side in (first.egress, first.ingress):
            out.extend(_side_lines(side))
        if self.istio:
            out.extend(self.istio[0].lines(ep, dport))
        if self.dst.service is not None and len(self.verdicts) > 1:
            out.append("all backends:")
            for i, (bep, bport, v) in enumerate(self.verdicts):
                why = "" if v.allowed else f" — {_short(v.egress if not v.egress.allowed else v.ingress)}"
                if v.allowed and self.istio and not self.istio[i].allowed:
                    why = f" — istio: {self.istio[i].reason}"
                out.append(f"  {bep.ref} {bport}/{proto}: {self._overall(i)}{why}")
        return out


def trace(  # noqa: PLR0913 - a flow has this many parts
    plan: Plan,
    index: PolicyIndex,
    source: str,
    target: str,
    port: str,
    request: HttpRequest | None = None,
    *,
    istio: IstioIndex | None = None,
    trust_domain: str = "cluster.local",
) -> Trace:
    """The verdict of the flow `source` → `target` on `port` ("80/TCP"). A service is traced to each of
    its backends after DNAT (policy sees the backend and its target port). With `istio` (the mesh has
    Istio), each backend's proxy is traced too: a TCP flow passes only when both layers let it."""
    number, proto = parse_port(port)
    src = endpoint(index, plan, source)
    dst = resolve_target(index, plan, src, target, number, proto)
    verdicts = tuple((ep, p, evaluate(index, src, ep, p, proto, request)) for ep, p in dst.backends)
    layers: tuple[IstioLayer, ...] = ()
    if istio is not None and proto == "TCP":  # Istio's proxies carry TCP only: UDP and SCTP pass them by
        layers = tuple(istio_layer(istio, src, ep, p, request, trust_domain=trust_domain) for ep, p in dst.backends)
    return Trace(source, target, number, proto, request, src, dst, verdicts, layers)


def parse_port(port: str) -> tuple[int, str]:
    m = PORT_RE.match(port)
    if not m or not 1 <= int(m.group(1)) <= 65535:
        raise UsageError(f"--port {port!r}: write PORT/PROTO with PROTO TCP, UDP or SCTP, e.g. 80/TCP")
    return int(m.group(1)), m.group(2).upper()


def http_request(method: str | None, path: str | None, headers: list[str]) -> HttpRequest | None:
    """The HTTP request of an L7 trace; None when no part of one is given."""
    if method is None and path is None and not headers:
        return None
    pairs = []
    for h in headers:
        key, colon, value = h.partition(":")
        if not colon or not key.strip():
            raise UsageError(f"--http-header {h!r}: write 'Name: value'")
        pairs.append((key.strip(), value.strip()))
    if path is not None and not path.startswith("/"):
        raise UsageError(f"--http-path {path!r}: an HTTP path starts with /")
    size = len(method or "") + len(path or "") + sum(len(k) + len(v) for k, v in pairs)
    if size > MAX_HTTP_REQUEST:
        raise UsageError(
            f"the HTTP request is {size} characters; Envoy refuses requests whose headers pass "
            f"{MAX_HTTP_REQUEST // 1024} KiB — shorten --http-path or --http-header"
        )
    return HttpRequest(method=(method or "GET").upper(), path=path or "/", headers=tuple(pairs))


def endpoint(index: PolicyIndex, plan: Plan, ref: str) -> Endpoint:
    """A pod, node or address; an address of a pod or node is that pod or node. `local`, the client
    outside (plan/outside.py), is the world at its public address (a node named `local` stays that node)."""
    found = index.endpoints.get(ref)
    if found is not None:
        return found
    if ref == outside.LOCAL:
        return world_endpoint(outside.local_address(plan))
    try:
        addr = ip_address(ref)
    except ValueError:
        raise UsageError(
            f"{ref} is neither a pod (CLUSTER/NAMESPACE/POD), a node, `{outside.LOCAL}` (the client outside) "
            "nor an IP address — "
            f"pods are e.g. {next(iter(p.ref for p in plan.pods()), 'cluster/default/web-0')}"
        ) from None
    owner = index.by_address.get(addr)
    if owner is None:
        return world_endpoint(addr)
    # The address the flow uses comes first: a CIDR rule matches that one.
    return dataclasses.replace(owner, addresses=(addr, *(a for a in owner.addresses if a != addr)))


def resolve_target(index: PolicyIndex, plan: Plan, src: Endpoint, ref: str, port: int, proto: str) -> Target:
    if ref in index.endpoints:
        return Target(None, ((index.endpoints[ref], port),))
    service = _service(plan, src, ref)
    if service is None:
        return Target(None, ((endpoint(index, plan, ref), port),))
    sets = [b for b in backend_sets(plan, service) if b.port == port and b.protocol == proto]
    if not sets:
        ports = ", ".join(f"{p}/{pr}" for p, pr, _, _ in service.ports)
        raise UsageError(f"service {service.ref} has no port {port}/{proto} (its ports: {ports})")
    backends = [(index.endpoints[b.pod], b.port) for tier in sets[0].tiers for b in tier]
    if not backends:
        raise UsageError(f"service {service.ref} has no backends on {port}/{proto}")
    return Target(service, tuple(backends))


def _service(plan: Plan, src: Endpoint, ref: str) -> ServicePlan | None:
    parts = ref.split("/")
    if len(parts) in (2, 3) and all(parts):
        cluster = parts[0] if len(parts) == 3 else src.cluster
        if cluster not in {c.name for c in plan.clusters}:
            return None
        return next(
            (s for s in plan.cluster(cluster).services if s.namespace == parts[-2] and s.name == parts[-1]), None
        )
    try:
        addr = ip_address(ref)
    except ValueError:
        return None
    # A ClusterIP of the source's cluster (every cluster may reuse the same service range).
    if src.cluster and isinstance(addr, IPv4Address):
        return next((s for s in plan.cluster(src.cluster).services if s.cluster_ip == addr), None)
    return None


def _side_lines(side: Side) -> list[str]:
    verdict = "allowed" if side.allowed else "denied"
    out = [f"  {side.direction.value} of {name(side.endpoint)}: {verdict}"]
    if side.policies:
        out.append("    selected by:")
        for p in side.policies:
            deny = "default-deny" if side.direction in p.default_deny else "no default deny"
            where = f", {p.where}" if p.where else ""
            out.append(f"      {p.id} ({deny}{where})")
    out.append(f"    {side.message}")
    return out


def _short(side: Side) -> str:
    return f"{side.direction.value} of {side.endpoint.ref}: {side.message}"


def name(ep: Endpoint) -> str:
    """The endpoint as the trace names it: pod or node with its address, or an outside address."""
    if ep.kind is EndpointKind.POD:
        return f"{ep.ref} ({ep.address})"
    if ep.kind is EndpointKind.NODE:
        return f"node {ep.ref} ({ep.address})"
    return f"{ep.ref} (world)"
