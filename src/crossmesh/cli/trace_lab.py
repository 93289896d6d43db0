"""`crossmesh trace` on the running lab: one real request, every hop confirmed by a counter.

Every path the request may take is planned first — each backend of a service, and through a hub each
tunnel of each VPN connection for the request and for the answer — and the counters of all their hops
are read before and after the one request (interface packets, WireGuard peer bytes, nft rule counters,
the tunnels' CHILD_SA packets). The pod that answered picks the backend; the tunnels are picked by their
CHILD_SA counters, not assumed: of a connection's tunnels, the one whose packets moved most carried the
request (tunnel 1 normally, tunnel 2 once tunnel 1 is cut). Both tunnels carry BGP keepalives (one a
second each way), so "moved most" rather than "moved": one request crosses as several packets in well
under a second.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from crossmesh.checks import probes
from crossmesh.checks.results import Result
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import tracing, transit, vpn
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.errors import UsageError
from crossmesh.model.plan import Plan
from crossmesh.plan import hubtrace, outside
from crossmesh.plan.trace import Trace, TraceError
from crossmesh.plan.trace import trace as plan_trace


@dataclass(frozen=True, slots=True)
class Confirmed:
    traced: Trace
    marks: list[str]
    summary: str
    answered: bool  # the request was answered (by the pod that answered, for TCP)


def _tunnel_choices(plan: Plan) -> list[dict[tuple[str, str], int]]:
    """Every assignment of a tunnel to each connection's request and reply."""
    slots = [(c.name, leg) for c in plan.vpn for leg in (hubtrace.REQUEST, hubtrace.REPLY)]
    options = [[t.index for t in c.tunnels] for c in plan.vpn for _ in (hubtrace.REQUEST, hubtrace.REPLY)]
    return [dict(zip(slots, combo, strict=True)) for combo in itertools.product(*options)] or [{}]


def _gateways(lab: Any, topo: LabTopology, compiled: Any) -> dict[str, vpn.Gateway]:
    return {g.key: transit.attach(g) for g in transit.gateways(lab, topo, compiled)}


def confirm(  # noqa: PLR0913
    plan: Plan,
    lab: Any,
    planned: Trace,
    source: str,
    target: str,
    port: int,
    proto: str,
    identities: dict[str, str] | None,
) -> Confirmed:
    compiled, topo = labs.topology_of(lab)
    gateways = _gateways(lab, topo, compiled)
    backends = [planned.backend]
    if planned.backend != target and source != outside.LOCAL:  # a service or node port: any backend may answer
        backends += [p.ref for p in plan.pods() if p.ref != planned.backend]
    candidates: list[tuple[Trace, dict[tuple[str, str], int]]] = []
    for backend in backends:
        for choice in _tunnel_choices(plan):
            path = hubtrace.HubPath(tunnels=choice, outside=topo.vpn_outside)
            try:
                alt = plan_trace(plan, source, target, port, proto, backend=backend, hub=path, identities=identities)
            except TraceError:
                continue
            if alt.backend == backend:
                candidates.append((alt, choice))
    per = {id(c): _counters(c, plan, topo) for c, _ in candidates}
    every = {k for v in per.values() for k in v if k is not None}
    before = {k: tracing.read(k, gateways) for k in every}
    src_ns = topo.local_ns if source == outside.LOCAL else topo.pod(source).namespace
    dest_ip, dest_port = _destination(plan, planned, source, target, port)
    answer: dict[str, Any] | None = None
    if proto == "TCP":
        result, answer, detail = probes.http(src_ns, dest_ip, dest_port, path="/crossmesh-trace")
        answered = f"{answer['cluster']}/{answer['namespace']}/{answer['pod']}" if answer else ""
    else:
        result, detail = probes.udp_echo(src_ns, dest_ip, dest_port)
        answered = planned.backend if result is Result.OK else ""
    after = {k: tracing.read(k, gateways) for k in every}
    chosen, tunnels = _choose(candidates, answered, planned, before, after, plan, topo)
    marks = [
        _mark(h, c, before, after, answered, answer, identities)
        for h, c in zip(chosen.hops, per_hop(chosen, plan, topo), strict=True)
    ]
    summary = f"probe {dest_ip}:{dest_port}/{proto}: {result.value}" + (f" ({detail})" if detail else "")
    if tunnels:
        summary += "; tunnels by their CHILD_SA counters: " + ", ".join(
            f"{conn} {leg} tunnel {k}" for (conn, leg), k in sorted(tunnels.items())
        )
    return Confirmed(chosen, marks, summary, result is Result.OK)


def _destination(plan: Plan, planned: Trace, source: str, target: str, port: int) -> tuple[str, int]:
    if planned.sent_to:
        address, _, number = planned.sent_to.rpartition(":")
        return address, int(number)
    if planned.headless:  # no VIP: the client connects to the pod its name resolved to
        return str(planned.destination), planned.delivered_port
    if planned.backend == target or source == outside.LOCAL:
        return str(planned.destination), port
    parts = target.split("/")
    cluster = source.split("/")[0] if len(parts) == 2 else parts[0]
    for s in plan.cluster(cluster).services:
        if s.namespace == parts[-2] and s.name == parts[-1]:
            return str(s.cluster_ip), port
    raise UsageError(f"no service {target}")


def per_hop(traced: Trace, plan: Plan, topo: LabTopology) -> list[tracing.Counter | None]:
    return _counters(traced, plan, topo)


def _counters(traced: Trace, plan: Plan, topo: LabTopology) -> list[tracing.Counter | None]:
    return [
        tracing.counter_for(h, traced, plan, topo, first=i == 0, last=h.device == "veth" and i > 0)
        for i, h in enumerate(traced.hops)
    ]


def _delta(c: tracing.Counter | None, before: dict[tracing.Counter, int], after: dict[tracing.Counter, int]) -> int:
    if c is None or before.get(c, -1) < 0 or after.get(c, -1) < 0:
        return -1
    return after[c] - before[c]


def _choose(  # noqa: PLR0913
    candidates: list[tuple[Trace, dict[tuple[str, str], int]]],
    answered: str,
    planned: Trace,
    before: dict[tracing.Counter, int],
    after: dict[tracing.Counter, int],
    plan: Plan,
    topo: LabTopology,
) -> tuple[Trace, dict[tuple[str, str], int]]:
    """The candidate of the pod that answered whose tunnels' CHILD_SA packets moved most."""
    mine = [(c, t) for c, t in candidates if c.backend == answered] or [
        (c, t) for c, t in candidates if c.backend == planned.backend
    ]
    if not mine:
        return planned, {}

    def moved(item: tuple[Trace, dict[tuple[str, str], int]]) -> int:
        c = item[0]
        return sum(
            max(_delta(k, before, after), 0)
            for h, k in zip(c.hops, _counters(c, plan, topo), strict=True)
            if h.device in tracing.SA_HOPS
        )

    best = max(mine, key=moved)
    return best[0], {k: v for k, v in best[1].items() if any(h.key.startswith(f"{k[0]}:") for h in best[0].hops)}


def _mark(  # noqa: PLR0911, PLR0913
    hop: Any,
    counter: tracing.Counter | None,
    before: dict[tracing.Counter, int],
    after: dict[tracing.Counter, int],
    answered: str,
    answer: dict[str, Any] | None,
    identities: dict[str, str] | None,
) -> str:
    if hop.device in ("service", "answer"):
        return f"yes: answered by {answered}" if answered else "no answer"
    if hop.device in ("mesh", "mesh-in"):
        xfcc = str((answer or {}).get("xfcc", ""))
        who = (identities or {}).get(hop.where if hop.device == "mesh" else "", "")
        if hop.device == "mesh":
            return (
                f"yes: the answering pod saw URI={who}"
                if who and f"URI={who}" in xfcc
                else f"no: the pod saw xfcc {xfcc!r}"
            )
        return f"yes: its proxy passed on xfcc {xfcc}" if xfcc else "no: no client certificate reached the pod"
    d = _delta(counter, before, after)
    if d < 0:
        return "no counter here"
    unit = "packets" if counter is not None and counter.kind in ("sa", "link", "nft") else "bytes"
    return f"yes: +{d} {unit}" if d > 0 else "no: counter did not move"
