"""The checks framework, apart from the scenarios (as Cilium's connectivity test): the `Context`
builders read, a check `Planned` with its `Runner`, the builder registry, `build` and `run`.

Builders are pure (plan + lab topology → `Planned` checks with expectations); `run` executes
them in the lab's namespaces. A case a builder cannot check is not dropped in silence: `Skips`
turns it into a skipped check whose detail says why — one per reason, not one per case.
The scenarios live in modules by concern and register themselves here; `checks/suite.py`
imports them all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from crossmesh.checks import probes
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab.lab import LabState
from crossmesh.drivers.lab.topology import LabTopology, PodEndpoint
from crossmesh.drivers.lab.transit import LabGateway
from crossmesh.gateway.model import Gateway, HTTPRoute, Listener, Protocol
from crossmesh.istio.index import IstioIndex
from crossmesh.istio.layer import istio_layer
from crossmesh.model.plan import IngressPlan, Plan, PodPlan
from crossmesh.plan import datapath
from crossmesh.plan.ingress import gateway_of
from crossmesh.policy.evaluator import PolicyIndex, Reason, Verdict, evaluate
from crossmesh.policy.model import HttpRequest

DENIED_TIMEOUT = 1.5
CHECK_PATH = "/crossmesh-check"
# Captures and staged failures run alone, so that other checks' traffic and kills do not mix in
# (a gateway's failover stops every cross-site flow of its site for a moment; so does a VPN tunnel's).
ALONE = ("encryption", "nat", "service", "gateway", "mtls", "ingress", "vpn")


@dataclass(frozen=True, slots=True)
class GatewayView:
    """An ingress gateway as the checks read it: its plan, its Gateway API objects (every HTTPRoute of
    its cluster: `gateway.match` keeps the attached ones), and per HTTPS listener the PEM a client
    outside trusts — the mesh's ingress CA, or the certificates of the listener's Secret."""

    plan: IngressPlan
    gateway: Gateway
    routes: tuple[HTTPRoute, ...]
    trust: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Context:
    plan: Plan
    topo: LabTopology
    state: LabState | None = None  # needed by checks that stage failures (kill / revive)
    policy: PolicyIndex | None = None  # expectations of pod-to-pod flows come from the evaluator
    files: Mapping[str, Any] | None = None  # what `render` writes for this mesh: the fidelity checks
    # Topology gateways with agents: each site's active gateway as etcd names it (the plan and the
    # files above are made with it); None: the planner's preferred ones (no control plane).
    active: Mapping[str, str] | None = None
    istio: IstioIndex | None = None  # a mesh with spec.istio: what the destination's mesh proxy does
    ingress: Mapping[str, GatewayView] | None = None  # IngressPlan ref → the gateway (the ingress checks)
    vpn: tuple[LabGateway, ...] = ()  # every hub's and customer gateway's daemons (drivers/lab/transit.py)

    def gateway_view(self, pod: PodPlan) -> GatewayView | None:
        """The gateway `pod` runs (it answers with HAProxy's listeners, not the echo app), or None."""
        name = gateway_of(pod)
        if name is None:
            return None
        ref = f"{pod.cluster}/{pod.namespace}/{name}"
        return (self.ingress or {}).get(ref) or _bare_view(self.plan, ref)

    def site_of(self, pod: PodPlan) -> str:
        return self.plan.node(pod.node).site

    def verdict(self, src: PodPlan, dst: PodPlan, port: int, protocol: str) -> Verdict | None:
        if self.policy is None or not self.policy.policies:
            return None
        return evaluate(self.policy, self.policy.endpoints[src.ref], self.policy.endpoints[dst.ref], port, protocol)

    def allowed(self, src: PodPlan, dst: PodPlan, port: int, protocol: str) -> bool:
        """Whether the checks' own request gets through (for TCP: GET CHECK_PATH, HTTP rules included)."""
        if protocol == "TCP":
            return self.expect_http(src, dst, port) is Result.OK
        v = self.verdict(src, dst, port, protocol)
        return v is None or v.allowed

    def expect_http(self, src: PodPlan, dst: PodPlan, port: int, method: str = "GET", path: str = "") -> Result:
        """What an HTTP request should meet: an answer, the L7 proxy's 403, or a drop — and in a mesh
        with Istio, what the destination's mesh proxy then does with it (`mesh_proxy`)."""
        if self.policy is None:
            return Result.OK
        request = HttpRequest(method, path or CHECK_PATH, (("Host", str(dst.address)),))
        if self.policy.policies:
            v = evaluate(
                self.policy, self.policy.endpoints[src.ref], self.policy.endpoints[dst.ref], port, "TCP", request
            )
            if not v.allowed:
                sides = (v.egress, v.ingress)
                if any(x.reason is Reason.L7_DENIED for x in sides) and all(
                    x.allowed or x.reason is Reason.L7_DENIED for x in sides
                ):
                    return Result.FORBIDDEN
                return Result.TIMEOUT
        return self.mesh_proxy(src, dst, port, request) or Result.OK

    def mesh_proxy(self, src: PodPlan, dst: PodPlan, port: int, request: HttpRequest | None) -> Result | None:
        """How the destination's mesh proxy refuses what the network let through (None: it passes it), by
        the one reading of PeerAuthentication and AuthorizationPolicy that `policy trace` shows
        (`istio_layer`): an HTTP request it read is answered 403 (Envoy's RBAC filter); a connection it
        did not read — plaintext to STRICT, or TCP its policies cannot judge by HTTP — is reset."""
        if self.istio is None or self.policy is None or self.plan.istio is None or gateway_of(dst) is not None:
            return None  # a gateway pod has no inbound capture: its own proxy takes what arrives
        eps, domain = self.policy.endpoints, self.plan.istio.trust_domain
        layer = istio_layer(self.istio, eps[src.ref], eps[dst.ref], port, request, trust_domain=domain)
        if layer.allowed:
            return None
        read = layer.authz is not None and request is not None and (layer.principal is not None or layer.needs_http)
        return Result.FORBIDDEN if read else Result.RESET

    def connected(self, src: PodPlan, dst: PodPlan) -> bool:
        """Whether the plan's datapath connects the two pods' clusters (plan/datapath.py)."""
        return datapath.connects(self.plan.cluster(src.cluster), self.plan.cluster(dst.cluster))

    def ep(self, pod: PodPlan) -> PodEndpoint:
        return self.topo.pod(pod.ref)

    def pods(self) -> list[PodPlan]:
        """Every pod of the plan, by reference: the builders' stable order."""
        return sorted(self.plan.pods(), key=lambda p: p.ref)


def _bare_view(plan: Plan, ref: str) -> GatewayView | None:
    """A gateway known from the plan alone (no Gateway API objects read): its listeners' ports and
    protocols are what a probe of its pods needs."""
    g = next((g for g in plan.ingress if g.ref == ref), None)
    if g is None:
        return None
    listeners = tuple(Listener(li.name, li.port, Protocol(li.protocol), li.hostname) for li in g.listeners)
    return GatewayView(g, Gateway(g.namespace, g.name, "istio", listeners), ())


Runner = Callable[[Check], None]


@dataclass(slots=True)
class Planned:
    check: Check
    run: Runner


Builder = Callable[[Context], list[Planned]]


def ports(pod: PodPlan, proto: str) -> list[int]:
    return [p for p, pr, _ in pod.ports if pr == proto]


def timeout(check: Check) -> float:
    # A flow the policy denies is dropped: waiting for it is the cost of checking it.
    return DENIED_TIMEOUT if check.expected is Result.TIMEOUT else probes.TIMEOUT


def _not_run(_: Check) -> None:
    """A skipped check has nothing to run: its result is its expectation."""


@dataclass(slots=True)
class Skips:
    """The cases a builder leaves out, grouped by reason: one skipped check per reason."""

    kind: Kind
    groups: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, case: str) -> None:
        self.groups.setdefault(reason, []).append(case)

    def planned(self) -> list[Planned]:
        out = []
        for reason, cases in self.groups.items():
            more = f" (and {len(cases) - 1} more)" if len(cases) > 1 else ""
            check = Check(
                name=f"{self.kind}/skipped: {reason}",
                kind=self.kind,
                source="-",
                target="-",
                port="-",
                expected=Result.SKIPPED,
                actual=Result.SKIPPED,
                detail=f"{reason}: {cases[0]}{more}",
                extra={"skipped": len(cases)},
            )
            out.append(Planned(check, _not_run))
        return out


@dataclass(frozen=True, slots=True)
class Registered:
    builder: Builder
    rank: int  # the order of the report: fidelity first, staged failures last
    together: bool  # its checks share one run (a capture): selecting any of them selects all


REGISTRY: dict[str, Registered] = {}


def register(rank: int, *, together: bool = False) -> Callable[[Builder], Builder]:
    def add(builder: Builder) -> Builder:
        REGISTRY[f"{builder.__module__}.{builder.__name__}"] = Registered(builder, rank, together)
        return builder

    return add


def builders() -> list[Registered]:
    return sorted(REGISTRY.values(), key=lambda r: r.rank)


def build(ctx: Context, pattern: str | None = None) -> list[Planned]:
    rx = re.compile(pattern) if pattern else None
    out: list[Planned] = []
    for entry in builders():
        items = entry.builder(ctx)
        if rx is None:
            out += items
        elif entry.together:
            if any(rx.search(p.check.name) for p in items):
                out += items
        else:
            out += [p for p in items if rx.search(p.check.name)]
    return out


def run(planned: list[Planned], *, workers: int = 8, progress: Callable[[Check], None] | None = None) -> list[Check]:
    parallel = [p for p in planned if p.check.kind not in ALONE]
    serial = [p for p in planned if p.check.kind in ALONE]

    def one(p: Planned) -> Check:
        t = time.monotonic()
        if not p.check.skipped:
            try:
                p.run(p.check)
            except Exception as err:  # a probe bug must show as a failed check, not stop the run
                p.check.actual, p.check.detail = Result.ERROR, f"{type(err).__name__}: {err}"
        p.check.seconds = time.monotonic() - t
        if progress:
            progress(p.check)
        return p.check

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, parallel))
    for p in serial:
        one(p)
    return [p.check for p in planned]
