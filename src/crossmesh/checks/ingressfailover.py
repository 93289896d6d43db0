"""`ingress/failover`: a gateway's global backend loses its preferred tier under a stream of user
requests, and the requests keep succeeding once the Service NAT moves to the next tier.

For each backendRef whose Service has more than one tier (a global Service with affinity: rebel-base
in cluster2 — cluster2's pods first, cluster3's next), requests go from `local` through the load
balancer and the gateway without a pause, on keep-alive connections; the preferred tier's pods are
killed (`lab kill`: listeners closed, as a crashed container), the service daemon's health checks
take them out and the node's Service NAT sends the gateway's connections to the next tier. The check
passes when the next tier answers within FAILOVER_TIMEOUT and every request after that succeeds;
the gap — the longest run of failed requests, from the first one sent to the next that succeeded —
is reported. Then the tier is revived and the check waits for it to answer again, so the lab is left
as it was found.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from crossmesh.checks import ingressclient
from crossmesh.checks.framework import Context, Planned, Runner, Skips, register
from crossmesh.checks.ingress import Case, Expect, Target, ask_for, expect, prepare, tier_pods
from crossmesh.checks.ingressclient import Ask, Session
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import servicenat
from crossmesh.gateway.model import Backend, Protocol
from crossmesh.services.backends import backend_sets

FAILOVER_TIMEOUT = 15.0  # seconds for the next tier to answer once the preferred one is killed
STEADY = 2.0  # seconds of requests after the move that must all succeed
BEFORE = 1.0  # seconds of requests before the kill
WORKERS = 4
PAUSE = 0.04  # seconds between two requests of one connection (≈ 100 requests/s in all)
REQUEST_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class Sent:
    at: float  # monotonic, when sent
    ok: bool
    pod: str | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Gap:
    failed: int  # requests in the run
    seconds: float  # from the first failed request's sending to the next successful one's


def longest_gap(sent: list[Sent]) -> Gap:
    """The longest run of failed requests (in sending order), and how long it lasted."""
    best, first, count = Gap(0, 0.0), None, 0
    for s in sorted(sent, key=lambda s: s.at):
        if not s.ok:
            first, count = (s.at if first is None else first), count + 1
            continue
        if first is not None and s.at - first > best.seconds:
            best = Gap(count, s.at - first)
        first, count = None, 0
    if first is not None:
        best = Gap(count, float("inf"))
    return best


@dataclass
class Stream:
    """Requests without a pause from `WORKERS` keep-alive connections, on threads of their own."""

    target: Target
    port: int
    ask: Ask
    tls: object
    server_name: str | None
    sent: list[Sent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Stream:
        for i in range(WORKERS):
            thread = threading.Thread(target=self._run, name=f"ingress-stream-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 2)

    def _run(self) -> None:
        session = Session(
            self.target.ns,
            self.target.address,
            self.port,
            tls=self.tls,  # type: ignore[arg-type]
            server_name=self.server_name,
            timeout=REQUEST_TIMEOUT,
        )
        try:
            while not self._stop.is_set():
                at = time.monotonic()
                got = session.send(self.ask)
                ok = got.result is Result.OK and got.status == 200
                with self._lock:
                    self.sent.append(Sent(at, ok, got.pod, got.detail if not ok else ""))
                self._stop.wait(PAUSE)
        finally:
            session.close()

    def since(self, at: float) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if s.at >= at]

    def answered_by(self, pods: set[str], since: float, timeout: float) -> float | None:
        """When a pod of `pods` first answered a request sent at or after `since` (None: not within `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((s for s in self.since(since) if s.ok and s.pod in pods), None)
            if hit is not None:
                return hit.at
            time.sleep(0.05)
        return None


@register(135)
def failover(ctx: Context) -> list[Planned]:
    """Per gateway backendRef whose Service has a next tier: kill the preferred tier under requests."""
    prepared = prepare(ctx)
    skips = Skips(Kind.INGRESS)
    out: list[Planned] = []
    done: set[tuple[str, str]] = set()
    for case, t in prepared.ready:
        rule = case.route.rules[case.index]
        for b in rule.backends:
            tiers = tier_pods(ctx, case.view.plan.cluster, b) if b.weight else ()
            if len(tiers) < 2 or (case.view.plan.ref, b.ref) in done or rule.redirect is not None:
                continue
            ask = ask_for(case.listener, case.route, rule.matches[0])
            exp = expect(ctx, case.view, case.listener, ask)
            if ctx.state is None:
                skips.add("failover: no running lab to stage failures in", case.label)
                continue
            if isinstance(exp, str) or exp.statuses != (200,):
                skips.add("failover: the rule's request is not answered by its backends", case.label)
                continue
            done.add((case.view.plan.ref, b.ref))
            name = f"ingress/failover: {case.label} -> {b.ref}: preferred tier ({len(tiers[0])} pods) killed"
            check = Check(
                name=name,
                kind=Kind.INGRESS,
                source="local",
                target=case.view.plan.ref,
                port=f"{case.listener.port}/TCP",
                expected=Result.OK,
            )
            out.append(Planned(check, _runner(ctx, t, case, b, tiers, exp)))
    return out + skips.planned()


def _moved(state: labs.LabState, keys: frozenset[str]) -> float | None:
    """When the service daemon had taken every backend of `keys` out (its health file; the Service
    NAT follows it), None when not within FAILOVER_TIMEOUT."""
    deadline = time.monotonic() + FAILOVER_TIMEOUT
    while time.monotonic() < deadline:
        if keys <= labs.unhealthy_backends(state.tag):
            return time.monotonic()
        time.sleep(0.02)
    return None


def _first_tier_keys(ctx: Context, cluster: str, backend: Backend) -> frozenset[str]:
    """The service daemon's keys of the backends of the Service port's first tier."""
    svc = next(
        s for s in ctx.plan.cluster(cluster).services if (s.namespace, s.name) == (backend.namespace, backend.name)
    )
    bs = next(bs for bs in backend_sets(ctx.plan, svc) if bs.port == backend.port and bs.protocol == "TCP")
    tier = next(t for t in bs.tiers if t)
    return frozenset(servicenat.backend_key(b.pod, b.address, b.port) for b in tier)


def _runner(  # noqa: PLR0913
    ctx: Context, t: Target, case: Case, backend: Backend, tiers: tuple[tuple[str, ...], ...], exp: Expect
) -> Runner:
    first, second = set(tiers[0]), set(tiers[1])
    keys = _first_tier_keys(ctx, case.view.plan.cluster, backend)
    everyone = exp.pods | {p for tier in tiers for p in tier}
    https = case.listener.protocol is Protocol.HTTPS
    ask = ask_for(case.listener, case.route, case.route.rules[case.index].matches[0])

    def run(check: Check) -> None:
        assert ctx.state is not None  # noqa: S101 - planned only with a lab
        state = ctx.state
        tls = ingressclient.tls_context(case.view.trust.get(case.listener.name)) if https else None
        stream = Stream(t, case.listener.port, ask, tls, ask.host if https else None)
        moved = back = None
        with stream:
            started = time.monotonic()
            if stream.answered_by(first, started, FAILOVER_TIMEOUT) is None:
                check.actual, check.detail = (
                    Result.ERROR,
                    f"the preferred tier did not answer before the kill ({backend.ref})",
                )
                return
            time.sleep(BEFORE)
            killed_at = time.monotonic()
            try:
                for pod in sorted(first):
                    labs.set_killed(state, pod, True)
                moved = _moved(state, keys)
                if moved is not None:
                    time.sleep(STEADY)
                steady_end = time.monotonic()
            finally:
                for pod in sorted(first):
                    labs.set_killed(state, pod, False)
            revived_at = time.monotonic()
            back = stream.answered_by(first, revived_at, FAILOVER_TIMEOUT)
        during = [s for s in stream.since(killed_at) if s.at < steady_end]
        gap = longest_gap(during)
        after = [s for s in during if moved is not None and s.at >= moved]
        wrong = sorted({s.pod or "?" for s in stream.sent if s.ok and s.pod not in everyone})
        failed_after = [s for s in after if not s.ok]
        nxt = [s for s in after if s.pod in second]
        gap_ms = None if gap.seconds == float("inf") else round(gap.seconds * 1000, 1)
        failures = [s.at for s in during if not s.ok]
        window_ms = round((failures[-1] - failures[0]) * 1000, 1) if failures else 0.0
        check.extra |= {"gapMs": gap_ms, "windowMs": window_ms, "failed": len(failures), "sent": len(during)}
        shown = "never resumed" if gap_ms is None else f"{gap_ms:.0f} ms"
        # The other backendRefs' share keeps answering meanwhile, so runs of failures are short; the
        # window is from the first failed request to the last.
        story = (
            f"gap {shown} ({gap.failed} requests failed in a row; {len(failures)} of {len(during)} failed while "
            f"staged, within {window_ms:.0f} ms); "
        )
        if moved is None:
            check.actual = Result.TIMEOUT
            check.detail = (
                story + f"the next tier never answered within {FAILOVER_TIMEOUT:.0f} s of killing {sorted(first)}"
            )
        elif failed_after or wrong:
            check.actual = Result.WRONG_ANSWER
            why = (
                f"{failed_after[0].detail}, sent {(failed_after[0].at - (moved or 0.0)) * 1000:.0f} ms after the move"
                if failed_after
                else f"answered by {wrong}"
            )
            check.detail = story + f"after the move {len(failed_after)} of {len(after)} failed ({why})"
        elif back is None:
            check.actual = Result.TIMEOUT
            check.detail = story + f"the revived tier did not answer again within {FAILOVER_TIMEOUT:.0f} s"
        else:
            check.actual = Result.OK
            check.detail = story + (
                f"the Service NAT moved to the next tier ({', '.join(sorted(second))}) {moved - killed_at:.2f} s after "
                f"the kill, all {len(after)} requests after it succeeded ({len(nxt)} answered by the next tier); "
                f"revived, the preferred tier answered again "
                f"{back - revived_at:.2f} s later"
            )

    return run
