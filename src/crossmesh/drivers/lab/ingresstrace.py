"""Confirm a traced request from `local` on the running lab: one real HTTP(S) request, counters around it.

The request leaves the lab's client outside (`cm-<tag>-local`) for the load balancer's public address,
with SNI and Host set to the URL's host and the mesh's ingress CA trusted, as a user's
`curl --resolve host:443:<address> --cacert <state>/ingress-pki/ca.crt` would. Before and after it the
counters of every hop it may take are read: the laptop's and the internet's veth, the site router's
load-balancer DNAT rule (by its comment, `nft -j`), the gateway nodes' site interfaces, each gateway
pod's HAProxy (`show stat`: which frontend, which rule's backend and which server — which backendRef —
took it), and the per-hop counters of every leg to a backend pod (`tracing`). The pod that answered
(the echo app names itself) picks which leg to show; its X-Forwarded-Client-Cert confirms the mesh
leg's identity. A hop whose counter moved is confirmed.
"""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from crossmesh import nft
from crossmesh.drivers.lab import ingressd, netns, tracing
from crossmesh.drivers.lab.firewall import load_balancer_comment
from crossmesh.drivers.lab.state import LabError, LabState
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.errors import StateError
from crossmesh.gateway.haproxy import Counters
from crossmesh.model.plan import Plan
from crossmesh.plan.ingress_trace import HttpTarget, IngressTrace, trace_url
from crossmesh.state.ingresspki import ingress_ca_pem
from crossmesh.workspace import Compiled

TIMEOUT = 5.0  # seconds for the whole request: an unpublished port is dropped, the client times out
MAX_ANSWER = 1 << 20
DROPPED = "unsolicited-to-router"  # the site router's rule that drops what nothing published


@dataclass(frozen=True, slots=True)
class Answer:
    """What the client outside got: the HTTP status (0: no HTTP answer), the status line or why none
    came, the echo app's JSON (which pod and cluster answered, the mesh identity it saw), a redirect's
    Location, and the certificate check."""

    status: int
    line: str
    body: dict[str, Any] | None = None
    location: str = ""
    verified: str = ""

    def summary(self) -> str:
        if not self.status:
            return f"no HTTP answer: {self.line}"
        out = self.line
        if self.location:
            out += f", Location {self.location}"
        b = self.body
        if b and "pod" in b:
            out += f" from pod {b.get('cluster')}/{b.get('namespace')}/{b.get('pod')}"
            if b.get("xfcc"):
                out += f", xfcc {b['xfcc']}"
        return out + (f"; {self.verified}" if self.verified else "")


@dataclass(frozen=True, slots=True)
class Confirmed:
    traced: IngressTrace
    marks: tuple[str, ...]  # per hop: "yes: …", "no: …" or why there is no counter
    answer: Answer


def _context(ca_pem: bytes | None) -> tuple[ssl.SSLContext, str]:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])
    if ca_pem is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx, "certificate not verified (no ingress CA in the state directory)"
    ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    return ctx, "certificate verified against the mesh's ingress CA"


def send(namespace: str, address: str, target: HttpTarget, ca_pem: bytes | None, timeout: float = TIMEOUT) -> Answer:
    """One request from `namespace` to `address`:port, for `target`'s host (SNI and Host)."""
    ctx, verified = _context(ca_pem)
    host = target.host if target.port == (443 if target.scheme == "https" else 80) else f"{target.host}:{target.port}"
    head = [f"{target.method} {target.path} HTTP/1.1", f"Host: {host}", *(f"{n}: {v}" for n, v in target.headers)]
    data = ("\r\n".join([*head, "Connection: close", "", ""])).encode("latin-1")

    def go() -> bytes:
        with socket.create_connection((address, target.port), timeout=timeout) as raw:
            conn: socket.socket = raw
            if target.scheme == "https":
                conn = ctx.wrap_socket(raw, server_hostname=target.host)  # an address: no SNI, its SAN checked
            conn.sendall(data)
            chunks, size = [], 0
            while size < MAX_ANSWER:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)

    try:
        raw = netns.run_in(namespace, go)
    except ssl.SSLCertVerificationError as err:
        return Answer(0, f"TLS: the certificate does not verify ({err.verify_message})")
    except ssl.SSLError as err:
        return Answer(0, f"TLS handshake failed ({err.reason or err})")
    except TimeoutError:
        return Answer(0, f"timed out after {timeout:g} s (dropped on the way)")
    except OSError as err:
        return Answer(0, f"{err.strerror or err}")
    return _parse(raw, verified if target.scheme == "https" else "")


def _parse(raw: bytes, verified: str) -> Answer:
    if not raw:
        return Answer(0, "the connection closed without an answer")
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return Answer(0, f"not an HTTP answer: {lines[0][:80]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    try:
        body = json.loads(payload) if payload else None
    except ValueError:
        body = None
    return Answer(
        int(parts[1]), lines[0], body if isinstance(body, dict) else None, headers.get("location", ""), verified
    )


def _stats(state: LabState, pods: tuple[str, ...]) -> dict[str, dict[tuple[str, str], Counters]]:
    out = {}
    for pod in pods:
        try:
            out[pod] = ingressd.read_stats(state, pod)
        except LabError:
            out[pod] = {}
    return out


def _moved(
    before: dict[tuple[str, str], Counters], after: dict[tuple[str, str], Counters]
) -> dict[tuple[str, str], int]:
    out = {}
    for key, c in after.items():
        delta = c.sessions - (before[key].sessions if key in before else 0)
        if delta > 0:
            out[key] = delta
    return out


def _counters(traced: IngressTrace, plan: Plan, topo: LabTopology) -> list[tracing.Counter | None]:
    """Each hop's counter, where one is read through `tracing` (HAProxy's are read apart)."""
    p = topo.prefix
    leg = traced.leg
    out: list[tracing.Counter | None] = []
    for i, hop in enumerate(traced.hops):
        j = i - traced.leg_start
        if leg is not None and 0 <= j < len(leg.hops):
            out.append(tracing.counter_for(leg.hops[j], leg, plan, topo, first=j == 0, last=j == len(leg.hops) - 1))
        elif hop.device == "local":
            out.append(tracing.Counter("link", topo.local_ns, f"{p}-lc", "tx_packets"))
        elif hop.device == "internet":
            out.append(tracing.Counter("link", f"{p}-inet", f"{p}-li", "rx_packets"))
        elif hop.device == "lb" and traced.gateway is not None:
            ns = topo.site_ns[hop.where.removeprefix("router ")]
            comment = load_balancer_comment(traced.gateway.ref, traced.target.port)
            out.append(
                tracing.Counter("nft", ns, comment if hop.verdict == "forwarded" else nft.comment(DROPPED), "packets")
            )
        elif hop.device == "nodeport":
            ns = topo.node_ns[hop.node]
            out.append(tracing.Counter("link", ns, f"{p}-e{ns.rsplit('-', 1)[1][1:]}", "rx_packets"))
        else:
            out.append(None)
    return out


def _candidates(compiled: Compiled, topo: LabTopology, first: IngressTrace) -> list[IngressTrace]:
    """Every path the request may take: each gateway pod, each backendRef, each backend pod."""
    plan, manifests, target = compiled.plan, compiled.loaded.manifests, first.target
    assert first.gateway is not None  # noqa: S101 - the caller checked
    refs: list[str | None] = [b.ref for b, share in first.shares if share > 0] or [None]
    out = []
    for pod in first.gateway.pods:
        for ref in refs:
            base = trace_url(plan, manifests, target, addresses=topo.load_balancers, gateway_pod=pod, backend_ref=ref)
            out.append(base)
            if base.leg is None:
                continue
            for other in plan.pods():
                alt = trace_url(
                    plan,
                    manifests,
                    target,
                    addresses=topo.load_balancers,
                    gateway_pod=pod,
                    backend_ref=ref,
                    backend_pod=other.ref,
                )
                if alt.leg is not None and alt.leg.backend == other.ref and other.ref != base.leg.backend:
                    out.append(alt)
    return out


def confirm(state: LabState, compiled: Compiled, topo: LabTopology, target: HttpTarget) -> Confirmed:
    """The trace of `target` as the lab ran it, each hop marked by its counters, and the answer."""
    plan = compiled.plan
    first = trace_url(plan, compiled.loaded.manifests, target, addresses=topo.load_balancers)
    if first.gateway is None or first.address is None:
        nothing = Answer(0, "not sent: there is no load balancer to send it to")
        return Confirmed(first, tuple("nothing sent" for _ in first.hops), nothing)
    candidates = _candidates(compiled, topo, first)
    counters = {id(c): _counters(c, plan, topo) for c in candidates}
    every = {k for v in counters.values() for k in v if k is not None}
    before = {k: tracing.read(k) for k in every}
    stats_before = _stats(state, first.gateway.pods)
    try:
        ca: bytes | None = ingress_ca_pem(compiled.store.root)
    except StateError:
        ca = None
    answer = send(topo.local_ns, str(first.address), target, ca)
    after = {k: tracing.read(k) for k in every}
    stats_after = _stats(state, first.gateway.pods)
    moved = {pod: _moved(stats_before[pod], stats_after[pod]) for pod in first.gateway.pods}
    took = next((pod for pod, m in moved.items() if m), None)
    b = answer.body or {}
    answered = f"{b.get('cluster')}/{b.get('namespace')}/{b.get('pod')}" if "pod" in b else None
    ref = None
    final = first
    if took is not None:
        final = trace_url(plan, compiled.loaded.manifests, target, addresses=topo.load_balancers, gateway_pod=took)
        ref = _server_ref(final, moved[took])
    final = trace_url(
        plan,
        compiled.loaded.manifests,
        target,
        addresses=topo.load_balancers,
        gateway_pod=took,
        backend_ref=ref,
        backend_pod=answered,
    )
    per_hop = _counters(final, plan, topo)
    marks = []
    for i, hop in enumerate(final.hops):
        c = per_hop[i]
        marks.append(_mark(hop.device, final, c, before, after, moved.get(took or "", {}), answer, answered, i))
    return Confirmed(final, tuple(marks), answer)


def _backend_name(traced: IngressTrace) -> str:
    """HAProxy's backend for the decided rule (`gateway.haproxy`: `<namespace>:<route>:<rule index>`)."""
    d = traced.decision
    return "" if d is None else f"{d.route.ref.replace('/', ':')}:{d.rule_index}"


def _server_ref(traced: IngressTrace, moved: dict[tuple[str, str], int]) -> str | None:
    """The backendRef whose HAProxy server (`<service>:<port>[:<k>]`) took the request."""
    name = _backend_name(traced)
    for (proxy, server), _ in moved.items():
        if proxy != name or server in ("BACKEND", "FRONTEND"):
            continue
        for b, _share in traced.shares:
            if server == f"{b.name}:{b.port}" or server.startswith(f"{b.name}:{b.port}:"):
                return b.ref
    return None


def _mark(  # noqa: PLR0911, PLR0913
    device: str,
    traced: IngressTrace,
    counter: tracing.Counter | None,
    before: dict[tracing.Counter, int],
    after: dict[tracing.Counter, int],
    moved: dict[tuple[str, str], int],
    answer: Answer,
    answered: str | None,
    index: int,
) -> str:
    leg = traced.leg
    j = index - traced.leg_start
    in_leg = leg is not None and 0 <= j < len(leg.hops)
    verdict = traced.hops[index].verdict
    if device != "lb" and verdict != "forwarded":  # where the trace says the request ends: the answer says
        expected = 0 if verdict in ("no HTTP answer", "refused") else int(verdict) if verdict.isdigit() else -1
        if answer.status == expected:
            return f"yes: {answer.summary()}"
        return f"no: expected {verdict}, got {answer.summary()}"
    if device == "service" and in_leg:
        return f"yes: answered by {answered}" if answered else "no answer from a pod"
    if device == "gateway":
        n = sum(v for (_, s), v in moved.items() if s == "FRONTEND")
        return f"yes: HAProxy frontend +{n}" if n else f"no: no HAProxy frontend counted it ({answer.summary()})"
    if device == "route":
        n = moved.get((_backend_name(traced), "BACKEND"), 0)
        if traced.decision is None:
            return f"yes: answered {answer.status}" if answer.status else f"no: {answer.summary()}"
        return (
            f"yes: the rule's backend {_backend_name(traced)} +{n}" if n else "no: the rule's backend did not count it"
        )
    if device == "weights":
        name = _backend_name(traced)
        servers = {s: v for (p, s), v in moved.items() if p == name and s not in ("BACKEND", "FRONTEND")}
        if not servers:
            return "no: no server of the rule's backend counted it"
        return "yes: " + ", ".join(f"server {s} +{v}" for s, v in sorted(servers.items()))
    if device == "redirect":
        return f"yes: answered {answer.status}" if answer.status else f"no: {answer.summary()}"
    if device in ("mesh", "mesh-in"):
        xfcc = str((answer.body or {}).get("xfcc", ""))
        if traced.identity and f"URI={traced.identity}" in xfcc:
            return f"yes: the pod saw URI={traced.identity}"
        return f"no: the pod saw xfcc {xfcc!r}" if answer.body else "no answer from a pod"
    if counter is None or counter not in before:
        return "no counter here"
    b, a = before[counter], after[counter]
    if a < 0 or b < 0:
        return "no counter here"
    return f"yes: +{a - b}" if a > b else "no: counter did not move"
