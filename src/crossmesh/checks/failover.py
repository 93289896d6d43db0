"""`gateway/*` checks that stage failures (topology gateways with agents, issue 16): each site's
active gateway fails under a stream of traffic, and comes back.

- `gateway/failover-crash: <site>`, `gateway/failover-blackhole: <site>`: the site's active gateway is
  crashed (`lab crash-node`) or stops forwarding (`lab stop-forwarding`: alive, not forwarding) under
  a stream of 100 datagrams/s between pods of two sites; traffic must resume through a standby within
  LOSS_BUDGET, the loss window in the detail. Then it is healed (`recover_node`: its agent starts
  again and brings wireguard-go back, as `lab up` would; `lab heal-node`) and the check waits for it
  to take its site back after the agents' hold-down, so the lab is left as it was found.
- `gateway/no-split-brain: <site>`: sampled through those failovers (or through one of its own when
  selected alone): no remote gateway's device holds the site's network on two peers, and the remote
  gateways and the site's nodes never disagree on the site's gateway for longer than a transition.

A failover starts from the preferred gateway, waiting for it if the site runs on another. The checks
run alone (kind `gateway`), after every other check; select or leave them out with `--test`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crossmesh.agent.gateways import HOLD_DOWN, ActiveGateway
from crossmesh.checks import probes
from crossmesh.checks.framework import Context, Planned, Skips, register
from crossmesh.checks.gateways import (
    Flow,
    Site,
    check_of,
    entries,
    etcd_active,
    holders,
    pick_flow,
    routes_of,
    runs_agents,
    sites,
    tunnel_nodes,
    until,
    via_routes,
)
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import faults, netns
from crossmesh.drivers.lab import lab as labs
from crossmesh.model.mesh import Topology

LOSS_BUDGET = 1.0  # seconds of lost traffic a failover may cost (issue 16: ≤ 1 s)
RATE = 100.0  # datagrams per second of the failover stream
SAMPLE_EVERY = 0.1  # seconds between two samples of the devices and routes during a failover
# seconds: agents follow etcd's watch each at its own pace (400 ms apart seen on a loaded host), so
# a disagreement shorter than the loss budget is a transition; a longer one is split brain
SETTLE = LOSS_BUDGET
TAKEOVER_TIMEOUT = 15.0  # seconds for a standby to be named and the stream to resume through it
BACK_TIMEOUT = HOLD_DOWN + 40.0  # seconds for the preferred gateway to take its site back
SLACK = 0.2  # seconds: a datagram sent this long before the fault may be lost to it


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic
    carriers: dict[str, tuple[str, ...]]  # remote gateway → the nodes whose entry holds the site network
    routes: dict[str, tuple[str, ...]]  # a node of the site → the gateways it routes other sites via


def split_brain(samples: Sequence[Sample], settle: float = SETTLE) -> tuple[list[str], float]:
    """What the samples show of split brain — a device holding the site network on two peers (at any
    moment), remote gateways or the site's nodes disagreeing on the site's gateway for `settle`
    seconds or more — and the longest disagreement (seconds)."""
    problems: list[str] = []
    for s in samples:
        for dev, held in sorted(s.carriers.items()):
            if len(held) > 1 and not any(p.startswith(f"{dev} held") for p in problems):
                problems.append(f"{dev} held the site network on {len(held)} peers at once ({', '.join(held)})")
    longest, since = 0.0, None
    for s in samples:
        if _disagree(s):
            since = s.at if since is None else since
        elif since is not None:
            longest, since = max(longest, s.at - since), None
    if since is not None:
        longest = max(longest, samples[-1].at - since) if samples[-1].at > since else max(longest, SAMPLE_EVERY)
    if longest >= settle:
        problems.append(f"the remote gateways or the site's nodes disagreed on its gateway for {longest:.2f} s")
    return problems, longest


def _disagree(s: Sample) -> bool:
    return len(_carriers(s)) > 1 or len(_gateways_routed_via(s)) > 1


def _carriers(s: Sample) -> set[str]:
    return {n for held in s.carriers.values() for n in held}


def _gateways_routed_via(s: Sample) -> set[str]:
    return {g for gws in s.routes.values() for g in gws}


def story(samples: Sequence[Sample], pick: Callable[[Sample], set[str]]) -> str:
    """Who, sample after sample, without repeats: `gw-a-1 → gw-a-2 → gw-a-1`."""
    out: list[str] = []
    for s in samples:
        now = "+".join(sorted(pick(s))) or "none"
        if not out or out[-1] != now:
            out.append(now)
    return " → ".join(out)


class Sampler:
    """Every SAMPLE_EVERY seconds, on a thread: which peer each remote gateway's device gives the
    site network, and which gateway each node of the site routes the other sites via."""

    def __init__(self, ctx: Context, site: Site) -> None:
        plan = ctx.plan
        self.network = site.network
        self.devices = {d.node: d.ifname for d in ctx.topo.wireguard if plan.node(d.node).site != site.name}
        self.namespaces = {n: ctx.topo.node_ns[n] for n in site.nodes}
        self.remotes = {str(s.network): s.name for s in plan.sites if s.name != site.name}
        self.by_address = {str(n.address): n.name for n in plan.nodes}
        self.tunnels = tunnel_nodes(plan)
        self.samples: list[Sample] = []
        self.skip: set[str] = set()  # nodes not read meanwhile (a crashed one: its agent routes nothing)
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{site.name}", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        handles = {}
        try:
            handles = {n: netns.open_ns(ns) for n, ns in self.namespaces.items()}
            while not self._stop.is_set():
                started = time.monotonic()
                self.samples.append(self._sample(handles, started))
                self._stop.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - started)))
        except Exception as err:  # noqa: BLE001 - shown in the check's detail, never a hung thread
            self.error = f"{type(err).__name__}: {err}"
        finally:
            for h in handles.values():
                h.close()

    def _sample(self, handles: Mapping[str, Any], at: float) -> Sample:
        carriers = {}
        for node, ifname in self.devices.items():
            found = entries(ifname, self.tunnels)
            if found is not None:
                carriers[node] = tuple(holders(found, self.network))
        routes = {}
        for node, ipr in handles.items():
            if node not in self.skip:
                via = via_routes(ipr, self.remotes)
                routes[node] = tuple(sorted({self.by_address.get(a, a) for a in via.values()}))
        return Sample(at, carriers, {n: r for n, r in routes.items() if r})


@dataclass(slots=True)
class Staged:
    """One failover staged on a site's preferred (active) gateway, and what it showed."""

    fault: str  # crash | blackhole
    victim: str
    result: Result = Result.OK
    problems: list[str] = field(default_factory=list)
    standby: str = ""  # who took over
    epoch: int = 0
    named: float | None = None  # seconds from the fault to etcd naming the standby
    window: probes.Gap | None = None  # the longest run of lost datagrams after the fault
    lost: int = 0
    sent: int = 0
    evidence: str = ""
    back: float | None = None  # seconds from the heal to the victim active again
    back_window: float = 0.0
    samples: list[Sample] = field(default_factory=list)


@dataclass(slots=True)
class SiteRuns:
    """The failovers staged on one site during this run: the no-split-brain check judges their samples."""

    staged: list[Staged] = field(default_factory=list)


class Failover:
    """Stages a fault on a site's active gateway under a stream, and heals it."""

    def __init__(self, ctx: Context, site: Site, flow: Flow) -> None:
        self.ctx, self.site, self.flow = ctx, site, flow
        self.devices = {d.node: d.ifname for d in ctx.topo.wireguard}

    def active(self) -> dict[str, ActiveGateway]:
        assert self.ctx.state is not None  # noqa: S101 - planned only with a lab
        return etcd_active(self.ctx.state, self.ctx.plan)

    def named(self, site: str) -> str | None:
        v = self.active().get(site)
        return v.active if v else None

    def stage(self, fault: str) -> Staged:
        ctx, site, flow = self.ctx, self.site, self.flow
        assert ctx.state is not None  # noqa: S101 - planned only with a lab
        victim = site.gateways[0]
        st = Staged(fault, victim)
        if until(lambda: self.named(site.name) == victim, BACK_TIMEOUT) is not True:
            st.result = Result.TIMEOUT
            st.problems.append(
                f"the site runs on {self.named(site.name)}, and its preferred {victim} did not take it back within "
                f"{BACK_TIMEOUT:.0f} s: nothing staged"
            )
            return st
        active = {s: v.active for s, v in self.active().items()}
        remote_gw = active[flow.remote_site]
        address = flow.address or str(ctx.plan.node(remote_gw).address)
        net = str(ctx.plan.site(flow.remote_site).network)
        leaves = ctx.topo.node_ns[flow.node]
        sampler = Sampler(ctx, site)
        with sampler, probes.UdpStream(flow.namespace, address, flow.port, rate=RATE, size=flow.size) as stream:
            if not until(lambda: stream.echoes() >= 10, 5.0):
                st.result = Result.TIMEOUT
                st.problems.append(f"the stream did not flow before the fault ({stream.error or 'no echo'})")
                return st
            before = routes_of(leaves, {net: flow.remote_site}).get(net)
            if before != str(ctx.plan.node(victim).address):
                st.problems.append(f"before the fault {flow.node} routes {net} via {before}, not via {victim}")
            faulted = time.monotonic()
            healed = self._fault(st, sampler, stream, faulted, remote_gw, leaves, net)
            took = until(lambda: self.named(site.name) == victim, BACK_TIMEOUT)
            if took:
                st.back = time.monotonic() - healed
                back_at = time.monotonic()
                until(lambda: stream.echoes(since=back_at) > 0, 5.0)
                time.sleep(0.5)
        st.samples = sampler.samples
        if sampler.error:
            st.problems.append(f"sampling stopped: {sampler.error}")
        sent, echoed = stream.snapshot()
        st.sent, st.lost = len(sent), len(sent) - len(echoed)
        failing = probes.gaps(sent, echoed, faulted - SLACK, healed)
        st.window = max(failing, key=lambda g: g.seconds, default=None)
        st.back_window = max((g.seconds for g in probes.gaps(sent, echoed, healed)), default=0.0)
        if st.back is None and st.result is Result.OK:
            st.problems.append(f"{victim} was not active again within {BACK_TIMEOUT:.0f} s of the heal")
        st.result = verdict(st)
        return st

    def _fault(  # noqa: PLR0913
        self,
        st: Staged,
        sampler: Sampler,
        stream: probes.UdpStream,
        faulted: float,
        remote_gw: str,
        leaves: str,
        net: str,
    ) -> float:
        """Stage the fault, wait for a standby to carry the stream, heal; the time of the heal."""
        state = self._state()
        if st.fault == "crash":
            sampler.skip.add(st.victim)
            labs.crash_node(state, st.victim)
        else:
            faults.stop_forwarding(state, st.victim)
        try:
            self._takeover(st, stream, faulted, remote_gw, leaves, net)
        finally:
            healed = time.monotonic()
            if st.fault == "crash":
                labs.recover_node(self._state(), st.victim)
                sampler.skip.discard(st.victim)
            else:
                faults.heal_node(self._state(), st.victim)
        return healed

    def _takeover(  # noqa: PLR0913
        self, st: Staged, stream: probes.UdpStream, faulted: float, remote_gw: str, leaves: str, net: str
    ) -> None:
        """A standby named in etcd, the stream resumed, and through the standby."""
        if not until(lambda: (self.named(self.site.name) or st.victim) != st.victim, TAKEOVER_TIMEOUT):
            st.result = Result.TIMEOUT
            st.problems.append(f"no standby took over within {TAKEOVER_TIMEOUT:.0f} s (etcd names {st.victim})")
            return
        value = self.active()[self.site.name]
        st.standby, st.epoch, st.named = value.active, value.epoch, time.monotonic() - faulted
        named_at = time.monotonic()
        if not until(lambda: stream.echoes(since=named_at) > 0, TAKEOVER_TIMEOUT):
            st.result = Result.TIMEOUT
            st.problems.append(f"{st.standby} took over but the stream did not resume within {TAKEOVER_TIMEOUT:.0f} s")
            return
        st.evidence = self._through(st, stream, remote_gw, leaves, net)

    def _through(self, st: Staged, stream: probes.UdpStream, remote_gw: str, leaves: str, net: str) -> str:
        """That the stream now goes through the standby: the route it leaves by, the standby's counters."""
        plan = self.ctx.plan
        tunnels = tunnel_nodes(plan)
        ifname = self.devices.get(st.standby, "")
        before = (entries(ifname, tunnels) or {}).get(remote_gw)
        t0 = time.monotonic()
        time.sleep(1.0)
        after = (entries(ifname, tunnels) or {}).get(remote_gw)
        echoed = stream.echoes(since=t0) * self.flow.size
        via = routes_of(leaves, {net: self.flow.remote_site}).get(net)
        if via != str(plan.node(st.standby).address):
            st.problems.append(f"{self.flow.node} routes {net} via {via}, not via {st.standby}")
        if before is None or after is None:
            st.problems.append(f"{st.standby} has no entry for {remote_gw}")
            return ""
        rx, tx = after.rx - before.rx, after.tx - before.tx
        if min(rx, tx) < echoed // 2:
            st.problems.append(f"{st.standby}'s entry for {remote_gw} moved +{rx}/+{tx} bytes while {echoed} echoed")
        moved = f"+{rx} B in, +{tx} B out in 1 s"
        return f"{self.flow.node} routes {net} via {st.standby}, whose entry for {remote_gw} carried it ({moved})"

    def _state(self) -> labs.LabState:
        assert self.ctx.state is not None  # noqa: S101 - planned only with a lab
        return labs.LabState.load(self.ctx.state.tag) or self.ctx.state


def verdict(st: Staged) -> Result:
    """A staged failover's result: a step that never came (no takeover, no resumed stream: set while
    staging; no takeback) → timeout; evidence that the stream does not go through the standby →
    wrong-answer; a loss window over LOSS_BUDGET → too-slow; else ok."""
    if st.result is not Result.OK:
        return st.result
    if st.back is None:
        return Result.TIMEOUT
    if st.problems:
        return Result.WRONG_ANSWER
    if st.window is not None and st.window.seconds > LOSS_BUDGET:
        return Result.TOO_SLOW
    return Result.OK


def describe(st: Staged) -> str:
    """A staged failover in one line, its loss window first."""
    if st.window is None:
        window = "loss window 0 ms"
    else:
        seconds = "never resumed" if math.isinf(st.window.seconds) else f"{st.window.seconds * 1000:.0f} ms"
        window = f"loss window {seconds}"
    head = f"{window} ({st.lost} of {st.sent} datagrams lost)"
    if st.problems:
        head = "; ".join(st.problems) + f" — {head}"
    parts = [head]
    if st.standby:
        parts.append(f"{st.standby} took over (epoch {st.epoch}), named in etcd {st.named or 0:.2f} s after the fault")
    if st.evidence:
        parts.append(st.evidence)
    if st.back is not None:
        parts.append(
            f"{st.victim} active again {st.back:.1f} s after the heal (hold-down {HOLD_DOWN:.0f} s), "
            f"the takeback losing {st.back_window * 1000:.0f} ms"
        )
    return "; ".join(parts)


@register(140)
def gateway_failover(ctx: Context) -> list[Planned]:
    """Topology gateways with agents: crash and blackhole each site's active gateway, then judge split brain."""
    if ctx.plan.topology is not Topology.GATEWAYS:
        return []
    skips = Skips(Kind.GATEWAY)
    out: list[Planned] = []
    for site in sites(ctx.plan):
        reason = _cannot_stage(ctx, site)
        flow = pick_flow(ctx, site) if reason is None else None
        if reason is None and flow is None:
            reason = "failover: no node of the site but its gateways to send a stream from"
        if reason is not None or flow is None:
            skips.add(reason or "", site.name)
            continue
        failover, runs = Failover(ctx, site, flow), SiteRuns()
        target, port = f"{site.gateways[0]} (preferred)", f"{flow.port}/UDP"
        out += [
            Planned(check_of(f"failover-{fault}", site.name, site.name, target, port), _failover(failover, runs, fault))
            for fault in ("crash", "blackhole")
        ]
        out.append(
            Planned(check_of("no-split-brain", site.name, site.name, target, port), _no_split_brain(failover, runs))
        )
    return out + skips.planned()


def _cannot_stage(ctx: Context, site: Site) -> str | None:
    if len(site.gateways) < 2:
        return "failover: site with one gateway, no standby to fail over to"
    if ctx.state is None:
        return "failover: no running lab to stage failures in"
    if not runs_agents(ctx):
        return "failover: the lab runs no agents, so nothing fails over (lab up --agents)"
    return None


def _failover(failover: Failover, runs: SiteRuns, fault: str) -> Callable[[Check], None]:
    def run(c: Check) -> None:
        st = failover.stage(fault)
        runs.staged.append(st)
        c.actual, c.detail = st.result, f"{failover.flow.label}: {describe(st)}"
        c.extra.update(
            {
                "lossWindowMs": None if st.window is None else _ms(st.window.seconds),
                "lost": st.lost,
                "sent": st.sent,
                "standby": st.standby,
                "backSeconds": st.back,
            }
        )

    return run


def _ms(seconds: float) -> float | None:
    return None if math.isinf(seconds) else round(seconds * 1000, 1)


def _no_split_brain(failover: Failover, runs: SiteRuns) -> Callable[[Check], None]:
    def run(c: Check) -> None:
        own = ""
        if not runs.staged:  # selected alone: a failover of its own to watch
            runs.staged.append(failover.stage("blackhole"))
            own = " (staged on its own)"
        samples = [s for st in runs.staged for s in st.samples]
        if not samples:
            c.actual, c.detail = Result.ERROR, "no sample: " + "; ".join(p for st in runs.staged for p in st.problems)
            return
        problems, longest = split_brain(samples)
        kinds = ", ".join(st.fault for st in runs.staged)
        carried = " | ".join(
            story(st.samples, lambda s: {n for h in s.carriers.values() for n in h}) for st in runs.staged
        )
        routed = " | ".join(
            story(st.samples, lambda s: {g for r in s.routes.values() for g in r}) for st in runs.staged
        )
        c.actual = Result.WRONG_ANSWER if problems else Result.OK
        c.detail = (
            f"{'; '.join(problems) + ' — ' if problems else ''}{len(samples)} samples over {len(runs.staged)} "
            f"failover(s){own} ({kinds}): the remote gateways gave {failover.site.network} to {carried}; the site's "
            f"nodes routed via {routed}; longest disagreement {longest * 1000:.0f} ms (a transition is < "
            f"{SETTLE * 1000:.0f} ms)"
        )

    return run
