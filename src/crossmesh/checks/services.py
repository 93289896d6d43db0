"""Service checks (Cilium Cluster Mesh semantics, seed 003), run against the lab:

- spread:   affinity none — new connections reach every backend of the set;
- affinity: affinity local (remote) — only the preferred tier answers while healthy;
- shared:   a cluster with `shared: "false"` never answers other clusters;
- failover: every backend of the preferred tier killed → the next tier answers;
- return:   revived → the preferred tier answers again.

Failover and return stage real failures with `lab kill`/`revive`; each revives what it killed
before it ends, so any one of them runs alone and leaves the lab as it found it.
"""

from __future__ import annotations

import time

from crossmesh.checks import probes
from crossmesh.checks.framework import Context, Planned, Runner, Skips, register
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import servicenat
from crossmesh.model.plan import PodPlan, ServicePlan
from crossmesh.plan.ingress import gateway_of
from crossmesh.services.backends import BackendSet, backend_sets

SPREAD_TRIES = 60
SAMPLE = 12
FAILOVER_TIMEOUT = 15.0
POLL = 0.05


def _ask(ns: str, ip: str, port: int) -> str | None:
    result, answer, _ = probes.http(ns, ip, port, path="/crossmesh-service-check", timeout=1.0)
    if result is not Result.OK or answer is None:
        return None
    return f"{answer['cluster']}/{answer['namespace']}/{answer['pod']}"


@register(130)
def services(ctx: Context) -> list[Planned]:
    """From one client per global backend set: spread, affinity, shared, failover and return."""
    plan = ctx.plan
    pods = list(plan.pods())
    by_ref = {p.ref: p for p in pods}
    out: list[tuple[Check, Runner]] = []
    skips = Skips(Kind.SERVICE)
    for cluster in plan.clusters:
        for svc in cluster.services:
            if svc.cluster_ip is None:
                continue  # headless: no VIP to spread, prefer or fail over; its name answers every ready pod
            for bs in backend_sets(plan, svc):
                if bs.protocol != "TCP":
                    skips.add(f"{bs.protocol} service port: the checks ask over HTTP", f"{svc.ref} {bs.port}")
                    continue
                if not bs.all:
                    skips.add("no backend pod", f"{svc.ref} {bs.port}")
                    continue
                if any(gateway_of(by_ref[b.pod]) for b in bs.all):
                    # its pods run HAProxy, not the echo app: `ingress/*` checks it through its load balancer
                    skips.add("an ingress gateway's Service: the ingress checks cover it", f"{svc.ref} {bs.port}")
                    continue
                client = next(
                    (
                        c
                        for c in sorted(pods, key=lambda p: p.ref)
                        if c.cluster == svc.cluster
                        and c.ref not in {b.pod for b in bs.all}
                        and all(ctx.allowed(c, by_ref[b.pod], b.port, "TCP") for b in bs.all)
                    ),
                    None,
                )
                if client is None:
                    # the answers would be a coin toss between allowed and dropped backends
                    skips.add("no client the policies let reach every backend", f"{svc.ref} {bs.port}")
                    continue
                if ctx.state is None:
                    skips.add("no running lab to stage failures in", f"{svc.ref} {bs.port}")
                    continue
                out += _checks(svc, bs, client, ctx.ep(client).namespace, ctx.state)
    return [Planned(c, r) for c, r in out] + skips.planned()


def _checks(
    svc: ServicePlan, bs: BackendSet, client: PodPlan, ns: str, state: labs.LabState
) -> list[tuple[Check, Runner]]:
    ip, port = str(svc.cluster_ip), bs.port
    where = f"{client.ref} -> {svc.ref} ({ip}:{port})"
    out: list[tuple[Check, Runner]] = []
    first = {b.pod for b in bs.tiers[0]}

    def check(label: str, expected: Result = Result.OK) -> Check:
        return Check(
            name=f"service/{label}: {where}",
            kind=Kind.SERVICE,
            source=client.ref,
            target=svc.ref,
            port=f"{port}/TCP",
            expected=expected,
        )

    if len(bs.tiers) == 1 and len(first) > 1:

        def spread(c: Check) -> None:
            seen: set[str] = set()
            stray: set[str] = set()
            for _ in range(SPREAD_TRIES):
                who = _ask(ns, ip, port)
                if who is not None:
                    (seen if who in first else stray).add(who)
                if seen == first:
                    break
            # A backend the health checker has taken out (a loaded host can time a probe out)
            # is rightly not reached: compare with the healthy ones.
            down = labs.unhealthy_backends(state.tag)
            healthy = {b.pod for b in bs.tiers[0] if servicenat.backend_key(b.pod, b.address, b.port) not in down}
            c.actual = Result.OK if seen >= healthy and healthy and not stray else Result.WRONG_ANSWER
            c.detail = (
                f"reached {len(seen)}/{len(first)} backends"
                + (f" ({len(first) - len(healthy)} taken out by health checks)" if healthy != first else "")
                + (f"; outside the set: {sorted(stray)}" if stray else "")
            )

        out.append((check("spread"), spread))

    not_shared = set(bs.excluded)
    if len(bs.tiers) > 1 and bs.tiers[1]:
        second = {b.pod for b in bs.tiers[1]}

        def affinity(c: Check) -> None:
            answers = [_ask(ns, ip, port) for _ in range(SAMPLE)]
            wrong = sorted({a for a in answers if a is not None and a not in first})
            missing = sum(1 for a in answers if a is None)
            c.actual = Result.OK if not wrong and not missing else Result.WRONG_ANSWER
            c.detail = f"{SAMPLE - missing}/{SAMPLE} answered by the preferred tier ({svc.affinity})" + (
                f"; also by {wrong}" if wrong else ""
            )

        def answered_by(group: set[str]) -> tuple[str | None, float]:
            """Poll the service until a pod of `group` answers: that pod and how long it took."""
            t0, who = time.monotonic(), None
            while time.monotonic() - t0 < FAILOVER_TIMEOUT:
                who = _ask(ns, ip, port)
                if who in group:
                    break
                time.sleep(POLL)
            return who, time.monotonic() - t0

        def staged(killed: list[str], kill: bool) -> None:
            for ref in killed:
                labs.set_killed(state, ref, kill)

        def failover(c: Check) -> None:
            """Kill the preferred tier, the next one answers; revive it whatever happens, so that a
            run of this check alone (`--test failover`) leaves the lab as it found it."""
            killed = sorted(first)
            c.extra["killed"] = killed
            try:
                staged(killed, True)
                who, took = answered_by(second)
                if who not in second:
                    c.actual, c.detail = Result.TIMEOUT, f"no answer from the next tier within {FAILOVER_TIMEOUT:.0f} s"
                    return
                answers = [_ask(ns, ip, port) for _ in range(SAMPLE)]
                wrong = sorted({a for a in answers if a is not None and a not in second})
                c.actual = Result.WRONG_ANSWER if wrong else Result.OK
                c.detail = f"next tier answered {took:.2f} s after killing {', '.join(killed)}" + (
                    f"; but also {wrong}" if wrong else ""
                )
            finally:
                staged(killed, False)
                answered_by(first)  # back to where it was before the next check runs

        def back(c: Check) -> None:
            """The preferred tier down (the next one answering), then revived: it answers again."""
            killed = sorted(first)
            try:
                staged(killed, True)
                answered_by(second)
            finally:
                staged(killed, False)
            who, took = answered_by(first)
            c.actual = Result.OK if who in first else Result.TIMEOUT
            c.detail = f"preferred tier answered again {took:.2f} s after revive" if who in first else "never returned"

        out.append((check(f"affinity-{svc.affinity}"), affinity))
        out.append((check("failover"), failover))
        out.append((check("return"), back))
    if not_shared:

        def shared(c: Check) -> None:
            answers = [_ask(ns, ip, port) for _ in range(SAMPLE)]
            leaked = sorted({a for a in answers if a is not None and a.split("/")[0] in not_shared})
            c.actual = Result.WRONG_ANSWER if leaked else Result.OK
            c.detail = (
                f"never answered by {', '.join(sorted(not_shared))} (shared: false)"
                if not leaked
                else f"answered by {leaked} although shared: false"
            )

        out.append((check("shared-false-respected"), shared))
    return out
