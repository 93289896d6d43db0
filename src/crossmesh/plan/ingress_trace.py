"""The path of a request from the client outside to a URL the mesh publishes, hop by hop, from the plan.

Seed 000's flow starts "Local Request → Ingress Gateway (Istio)": `trace --from local --to
https://rebels.example.com/x` follows it as the lab builds it and a cloud runs it — the laptop's
request crosses the internet to the load balancer's public address; the site's load balancer
(the lab's site router) DNATs the listener's port to a gateway node's node port; that node's
Service NAT hands it to a gateway pod; the gateway (HAProxy in the lab, Envoy under Istio)
terminates TLS on the listener that takes the host, picks the HTTPRoute rule (`gateway.match.select`,
so its reasons are the ones the proxy's configuration was rendered from), applies the rule's header
modifications or redirect and picks a backendRef by weight; the mesh proxy carries that leg in mTLS
as the gateway's identity to the backend Service, whose Service NAT picks a pod (local tier first)
and the leg continues as any pod-to-service trace does (`plan.trace`): VXLAN, WireGuard, the pod.

Pure: the load balancers' public addresses exist only where something holds them (the lab's site
routers, a cloud's balancer), so the caller passes them when it knows them; which gateway pod and
which backendRef and pod took a real request are the lab's to say (`gateway_pod`, `backend_ref`,
`backend_pod`); without them the trace shows the likeliest: the first pod, the heaviest backendRef.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from urllib.parse import urlsplit

from crossmesh.gateway.match import Decision, Request, listener_for, select
from crossmesh.gateway.model import Backend, Gateway, HTTPRoute, Listener, Protocol, hostname_matches
from crossmesh.gateway.parse import cluster_objects
from crossmesh.gateway.parse_base import NAME
from crossmesh.identity.spiffe import SpiffeId
from crossmesh.model import k8s
from crossmesh.model.plan import IngressPlan, Plan
from crossmesh.plan import ingress, outside
from crossmesh.plan.trace import Hop, Trace, TraceError, trace

SCHEMES = {"http": 80, "https": 443}
TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 5.6.2: a header name or a method
RESPONSE = (
    "Response → reverse path with same security: the pod's answer goes back over the same connections — "
    "through its mesh proxy in mTLS (and WireGuard across sites) to the gateway, which answers the client "
    "on its {scheme} connection; the site router undoes its DNAT: the answer comes from {origin}"
)


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """The request `trace` sends: a URL, the method and the extra headers (`-H 'Name: value'`)."""

    url: str
    scheme: str  # http | https
    host: str  # lower case, without a trailing dot: what SNI and the Host header carry
    port: int
    path: str  # with its query
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def request(self) -> Request:
        return Request(self.host, self.path, self.method, dict(self.headers))

    @property
    def address(self) -> IPv4Address | None:
        """The host as an IPv4 address, when the URL names one instead of a name."""
        try:
            return IPv4Address(self.host)
        except ValueError:
            return None


def is_url(text: str) -> bool:
    return "://" in text


def parse_target(url: str, headers: Sequence[str] = (), method: str = "GET") -> HttpTarget:
    """The request a URL, `-H` lines and `--method` describe; TraceError (bad input) saying what to fix."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise TraceError(f"--to {url!r}: {err} — write e.g. https://rebels.example.com/x") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise TraceError(f"--to {url!r}: the scheme must be http or https, not {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise TraceError(f"--to {url!r}: user info ('user@') is not part of what a gateway routes on — leave it out")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise TraceError(f"--to {url!r} names no host — write e.g. https://rebels.example.com/x")
    try:
        IPv4Address(host)
    except ValueError:
        if not NAME.match(host) or len(host) > 253:
            raise TraceError(f"--to {url!r}: host {host!r} is neither a DNS name nor an IPv4 address") from None
    if port == 0:
        raise TraceError(f"--to {url!r}: port 0 is not a port — write 1 to 65535")
    if not TOKEN.match(method):
        raise TraceError(f"--method {method!r} is not an HTTP method (letters, e.g. GET or POST)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return HttpTarget(
        url, scheme, host, port or SCHEMES[scheme], path, method.upper(), tuple(_header(h) for h in headers)
    )


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not TOKEN.match(name):
        raise TraceError(f"-H {text!r}: write a header as 'Name: value', e.g. -H 'X-Version: beta'")
    if "\r" in value or "\n" in value:
        raise TraceError(f"-H {text!r}: a header value cannot hold a line break")
    if name.lower() == "host":
        raise TraceError(f"-H {text!r}: the Host header (and SNI) come from the URL's host — change the URL")
    return name, value


@dataclass(frozen=True, slots=True)
class IngressTrace:
    """A traced request from `local`: its hops, whether it arrives (a backend pod answers, or the
    gateway answers a redirect as its rule says), and what the gateway decided, for the lab's
    confirmation and for JSON."""

    target: HttpTarget
    hops: tuple[Hop, ...]
    arrives: bool
    outcome: str  # in words: where the request ends
    gateway: IngressPlan | None = None
    address: IPv4Address | None = None  # the load balancer's public address, when known
    node: str = ""  # the load balancer's target node
    gateway_pod: str = ""
    listener: Listener | None = None
    decision: Decision | None = None
    backend: Backend | None = None  # the backendRef that takes the request
    shares: tuple[tuple[Backend, float], ...] = ()  # every backendRef of the rule, with its share of requests
    identity: str = ""  # the gateway's SPIFFE id on the mesh leg ("" without spec.istio)
    leg: Trace | None = None  # gateway pod → backend Service → pod (`plan.trace`)
    leg_start: int = 0  # index in `hops` of the leg's first hop
    response: str = ""
    candidates: tuple[str, ...] = field(default=(), compare=False)  # other gateways serving the host


def _gateways(
    plan: Plan, manifests: Mapping[str, Sequence[k8s.Manifest]]
) -> list[tuple[IngressPlan, Gateway, list[HTTPRoute]]]:
    out = []
    for g in plan.ingress:
        gateways, routes = cluster_objects(manifests.get(g.cluster, []))
        gw = next((x for x in gateways if (x.namespace, x.name) == (g.namespace, g.name)), None)
        if gw is not None:
            out.append((g, gw, routes))
    return out


def _served(gateway: Gateway) -> str:
    return ", ".join(f"{li.hostname or '*'}:{li.port} ({li.protocol.value})" for li in gateway.listeners)


class _Hops:
    def __init__(self) -> None:
        self.hops: list[Hop] = []

    def add(self, where: str, action: str, device: str, node: str = "", **kw: object) -> None:
        self.hops.append(Hop(len(self.hops) + 1, where, action, device, node, **kw))  # type: ignore[arg-type]


def trace_url(  # noqa: PLR0913
    plan: Plan,
    manifests: Mapping[str, Sequence[k8s.Manifest]],
    target: HttpTarget,
    *,
    addresses: Mapping[str, IPv4Address] | None = None,
    gateway_pod: str | None = None,
    backend_ref: str | None = None,
    backend_pod: str | None = None,
) -> IngressTrace:
    """The hops of `target` from `local` (see the module). `addresses`: each gateway's load-balancer
    address by `IngressPlan.ref` (the lab's); `gateway_pod`, `backend_ref` (a `Backend.ref`) and
    `backend_pod`: what the lab saw take the request."""
    addresses = addresses or {}
    h = _Hops()
    local = outside.local_address(plan)
    found = _gateways(plan, manifests)
    if target.address is not None:
        serving = [x for x in found if addresses.get(x[0].ref) == target.address]
        lacking = f"no load balancer of the mesh has address {target.address}" + (
            ""
            if addresses
            else " (crossmesh knows the load balancers' addresses only in the running lab: name the host)"
        )
    else:
        serving = [x for x in found if any(hostname_matches(li.hostname, target.host) for li in x[1].listeners)]
        published = "; ".join(f"{g.ref}: {_served(gw)}" for g, gw, _ in found) or "none: the mesh has no Gateway"
        lacking = (
            f"no gateway of the mesh serves host {target.host}, so no load balancer publishes it (served: {published})"
        )
    if not serving:
        h.add(outside.LOCAL, f"{lacking}: the request has nowhere to go", "local", verdict="no listener")
        return IngressTrace(target, tuple(h.hops), False, lacking)
    g, gateway, routes = serving[0]
    address = addresses.get(g.ref)
    at = str(address) if address is not None else "<load balancer>"
    resolved = "" if target.address is not None else f"{target.host} resolves to {g.ref}'s load balancer ({at}); "
    h.add(
        outside.LOCAL,
        f"{resolved}leaves the client outside ({local}) for {at}:{target.port} by its default route",
        "local",
    )
    site = plan.node(g.nodes[0]).site if g.nodes else ""
    h.add("internet", f"routed to site {site}'s router, which holds the load balancer's address", "internet")
    base = IngressTrace(target, (), False, "", g, address, candidates=tuple(x[0].ref for x in serving[1:]))
    entry = next((li for li in g.listeners if li.port == target.port), None)
    if entry is None:
        ports = ", ".join(str(li.port) for li in g.listeners)
        why = f"port {target.port} is not published: the load balancer forwards only {ports}"
        h.add(
            f"router {site}",
            f"{why}; the site's inbound firewall drops the rest (the client times out)",
            "lb",
            verdict="dropped",
        )
        return replace(base, hops=tuple(h.hops), outcome=why)
    pods = {p.ref: p for p in plan.pods()}
    pod = pods[gateway_pod if gateway_pod in g.pods else g.pods[0]]
    node = plan.node(pod.node)
    h.add(
        f"router {site}",
        f"load balancer DNAT {at}:{target.port} → {node.address}:{entry.node_port} (node port of service "
        f"{g.namespace}/{g.service} on node {node.name}; one of {len(g.nodes)} target(s), picked per connection)",
        "lb",
        node.name,
        peer=str(target.port),
    )
    snat = node.pod_cidr.network_address + 1
    h.add(
        node.name,
        f"Service NAT: node port {entry.node_port} → gateway pod {pod.name} ({pod.address}:{target.port}), "
        f"source NAT to the node ({snat})",
        "nodeport",
        node.name,
    )
    base = replace(base, node=node.name, gateway_pod=pod.ref)
    return _gateway(plan, h, base, gateway, routes, backend_ref, backend_pod)


def _gateway(  # noqa: PLR0913
    plan: Plan,
    h: _Hops,
    base: IngressTrace,
    gateway: Gateway,
    routes: list[HTTPRoute],
    backend_ref: str | None,
    backend_pod: str | None,
) -> IngressTrace:
    """From the gateway pod on: listener, rule, backendRef, the mesh leg and the backend pod."""
    target, pod = base.target, base.gateway_pod
    assert base.gateway is not None  # noqa: S101 - set by trace_url before it calls here
    node = plan.node(next(p for p in plan.pods() if p.ref == pod).node).name
    listener = listener_for(gateway, port=target.port, host=target.host)
    here = f"gateway {base.gateway.ref}, pod {pod.split('/')[-1]} (HAProxy)"
    tls_port = any(li.protocol is Protocol.HTTPS for li in gateway.listeners if li.port == target.port)
    if listener is None:
        hosts = ", ".join(li.hostname or "*" for li in gateway.listeners if li.port == target.port)
        why = f"no listener on port {target.port} takes host {target.host} (its listeners serve {hosts})"
        verdict, ends = ("refused", "the TLS handshake is refused (strict SNI)") if tls_port else ("404", "404")
        h.add(here, f"{why}: {ends}", "gateway", node, verdict=verdict)
        return replace(base, hops=tuple(h.hops), outcome=why)
    mismatch = _protocol_mismatch(target, listener)
    if mismatch:
        h.add(here, mismatch, "gateway", node, verdict="no HTTP answer")
        return replace(base, hops=tuple(h.hops), outcome=mismatch, listener=listener)
    hostname = listener.hostname or "any"
    took = f"listener {listener.name} (port {listener.port}, {listener.protocol.value}, hostname {hostname})"
    if listener.tls is not None:
        cert = (
            "a certificate of the mesh's ingress CA"
            if listener.tls.mesh
            else f"Secret {listener.tls.secrets[0].ref}'s certificate"
        )
        took += f" takes SNI {target.host}: TLS terminated with {cert}"
    else:
        took += f" takes Host {target.host}"
    h.add(here, took, "gateway", node)
    base = replace(base, listener=listener)
    decision = select(target.request, gateway=gateway, listener=listener, routes=routes)
    if decision is None:
        why = f"no rule of the routes attached to listener {listener.name} matches {target.method} {target.path}"
        h.add(here, f"{why}: HAProxy answers 404", "route", node, verdict="404")
        return replace(base, hops=tuple(h.hops), outcome=why)
    rule = decision.rule
    h.add(here, f"route {decision.route.ref} rule {_rule_name(decision)} matches", "route", node, details=decision.why)
    base = replace(base, decision=decision)
    changes = _modifications(decision)
    if decision.redirect is not None:
        r = decision.redirect
        to = ", ".join(
            f"{k} {v}" for k, v in (("scheme", r.scheme), ("host", r.hostname), ("port", r.port)) if v is not None
        )
        what = f"redirect: answers {r.status_code} with Location ({to or 'same URL'}; path and query kept)"
        h.add(here, what, "redirect", node, verdict=str(r.status_code))
        return replace(base, hops=tuple(h.hops), arrives=True, outcome=what)
    total = sum(b.weight for b in rule.backends)
    if total == 0:
        why = "every backendRef of the rule has weight 0 (or it has none)"
        h.add(here, f"{why}: HAProxy answers 500", "weights", node, verdict="500")
        return replace(base, hops=tuple(h.hops), outcome=why)
    shares = tuple((b, b.weight / total) for b in rule.backends)
    chosen = next((b for b in rule.backends if b.ref == backend_ref and b.weight), None)
    picked = "took this request" if chosen is not None else "the likeliest (the lab shows which one took it)"
    chosen = chosen or max(rule.backends, key=lambda b: b.weight)
    split = ", ".join(f"{b.name}:{b.port} weight {b.weight} ({share:.0%})" for b, share in shares)
    h.add(
        here,
        f"{changes}backendRef {chosen.name}:{chosen.port} — weights {split}; {picked}",
        "weights",
        node,
        peer=chosen.ref,
    )
    base = replace(base, backend=chosen, shares=shares)
    return _mesh_leg(plan, h, base, chosen, backend_pod)


def _rule_name(d: Decision) -> str:
    return f"{d.rule_index} ({d.rule.name})" if d.rule.name else str(d.rule_index)


def _protocol_mismatch(target: HttpTarget, listener: Listener) -> str:
    if listener.protocol is Protocol.HTTPS and target.scheme == "http":
        return (
            f"plain HTTP to HTTPS listener {listener.name} (port {listener.port}): the TLS handshake fails and "
            f"HAProxy gives no HTTP answer — use https://{target.host}"
        )
    if listener.protocol is Protocol.HTTP and target.scheme == "https":
        return (
            f"TLS to HTTP listener {listener.name} (port {listener.port}): HAProxy answers in plaintext, the "
            f"client's TLS handshake fails — use http://{target.host}"
        )
    return ""


def _modifications(d: Decision) -> str:
    m = d.headers
    if m is None:
        return ""
    parts = [f"remove {n}" for n in m.remove]
    parts += [f"set {n}: {v}" for n, v in m.set]
    parts += [f"add {n}: {v}" for n, v in m.add]
    return f"request headers: {', '.join(parts)}; " if parts else ""


def _mesh_leg(plan: Plan, h: _Hops, base: IngressTrace, chosen: Backend, backend_pod: str | None) -> IngressTrace:
    """The gateway's upstream connection to `chosen`'s Service: the mesh proxy's mTLS, then the path of
    any pod-to-service connection (`plan.trace`), then the backend pod's proxy."""
    assert base.gateway is not None  # noqa: S101 - set by trace_url
    g = base.gateway
    svc = next(
        (s for s in plan.cluster(g.cluster).services if (s.namespace, s.name) == (chosen.namespace, chosen.name)), None
    )
    here = f"gateway {g.ref}, pod {base.gateway_pod.split('/')[-1]}"
    node = h.hops[-1].node
    if svc is None or svc.cluster_ip is None:
        why = f"backendRef {chosen.ref} is no Service with a ClusterIP in cluster {g.cluster}"
        h.add(here, f"{why}: HAProxy answers 503", "weights", node, verdict="503")
        return replace(base, hops=tuple(h.hops), outcome=why)
    identity = ""
    if plan.istio is not None:
        identity = SpiffeId(plan.istio.trust_domain, g.namespace, ingress.service_name(g.name)).uri
        h.add(
            here,
            f"mesh proxy (outbound capture, port 15001) opens mTLS as {identity} to {svc.ref} "
            f"{svc.cluster_ip}:{chosen.port}; it accepts only a backend's identity",
            "mesh",
            node,
        )
    else:
        h.add(
            here,
            f"HAProxy connects to {svc.ref} {svc.cluster_ip}:{chosen.port} (no service mesh: plain TCP)",
            "upstream",
            node,
        )
    try:
        leg = trace(plan, base.gateway_pod, svc.ref, chosen.port, "TCP", backend=backend_pod)
    except TraceError as err:
        h.add(node, f"{err}: HAProxy answers 503", "service", node, verdict="503")
        return replace(base, hops=tuple(h.hops), outcome=str(err), identity=identity)
    start = len(h.hops)
    for hop in leg.hops:
        h.add(hop.where, hop.action, hop.device, hop.node, peer=hop.peer, verdict=hop.verdict)
    answering = leg.backend.split("/")[-1]
    if identity:
        h.add(
            leg.backend,
            f"mesh proxy (inbound, port 15006) of pod {answering} verifies the client certificate {identity}, "
            "applies the AuthorizationPolicies and hands the request to the app with X-Forwarded-Client-Cert",
            "mesh-in",
            h.hops[-1].node,
        )
    origin = f"{base.address or 'the load balancer'}:{base.target.port}"  # what the client dialled
    response = RESPONSE.format(scheme=base.target.scheme.upper(), origin=origin)
    return replace(
        base,
        hops=tuple(h.hops),
        arrives=True,
        outcome=f"delivered to pod {leg.backend}",
        identity=identity,
        leg=leg,
        leg_start=start,
        response=response,
    )
