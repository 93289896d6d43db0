"""`vpn/failover: <connection>`: a site-to-site VPN's active tunnel cut under a stream of traffic, and healed
(issue 13) — what AWS's two tunnels per connection are for.

A stream of RATE datagrams/s runs from a pod of the customer site to a pod of the hub's site and is echoed
back, both ways over the connection. Tunnel 1 is cut on the wire (`lab cut-tunnel`: the internet drops its
IKE and ESP-in-UDP). Neither end runs BFD (AWS does none on VPN tunnels, plan/vpngw.py), so BGP's hold timer
(3 s) notices the dead session and both ends move the routes to tunnel 2; the stream must resume within
LOSS_BUDGET, and the evidence that it goes through tunnel 2 is the customer gateway's kernel route (its
device is tunnel 2's TUN device) and tunnel 2's CHILD_SA byte counters, which must grow by what was echoed.
Then the tunnel is healed: the customer's charon re-establishes it, BGP comes back, and the routes return to
tunnel 1 (the preferred one) with no datagram lost, since both tunnels carry traffic during the move.

The loss window (from the first datagram lost to the next one echoed) is in the detail and in `extra`.
The check runs alone (kind `vpn`), after every other check, and always heals the tunnel it cut.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from crossmesh.checks import probes
from crossmesh.checks.framework import Context, Planned, Skips, register
from crossmesh.checks.gateways import until
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import transit, tunnelcut, vpn
from crossmesh.model.plan import PodPlan, VpnConnectionPlan
from crossmesh.plan import vpngw
from crossmesh.render.bgp import BgpTimers

RATE = 100.0  # datagrams per second
SIZE = 64  # bytes of each datagram's payload
HOLD = BgpTimers().hold_s
# Seconds of lost traffic a tunnel failover may cost: BGP's hold time, then both ends install the other
# tunnel's route (BIRD's next scan, a fraction of a second).
LOSS_BUDGET = HOLD + 0.5
TAKEOVER_TIMEOUT = 15.0  # seconds for the stream to resume through tunnel 2
BACK_TIMEOUT = 30.0  # seconds for tunnel 1 to come back and carry the routes again
SLACK = 0.2  # seconds: a datagram sent this long before the cut may be lost to it
POLL = 0.05


@dataclass(frozen=True, slots=True)
class Flow:
    source: PodPlan  # in the customer site
    target: PodPlan  # in the hub's site, with a UDP echo port
    port: int
    prefix: IPv4Network  # the hub-side prefix whose route at the customer gateway moves

    @property
    def label(self) -> str:
        return f"{self.source.ref} → {self.target.ref}:{self.port}/UDP"


@dataclass(slots=True)
class Run:
    """What one cut and heal showed."""

    problems: list[str] = field(default_factory=list)
    result: Result = Result.OK
    window: probes.Gap | None = None
    moved: float | None = None  # seconds from the cut to the customer's route on tunnel 2
    back: float | None = None  # seconds from the heal to the route on tunnel 1 again
    lost_back: int = 0  # datagrams lost after the heal
    sent: int = 0
    lost: int = 0
    evidence: str = ""


def pick_flow(ctx: Context, conn: VpnConnectionPlan) -> Flow | None:
    """A pod of the customer site towards a pod with a UDP port on the hub's site (the first by name)."""
    hub = next(h for h in ctx.plan.hubs if h.name == conn.hub)
    sources = [p for p in ctx.pods() if ctx.site_of(p) == conn.site]
    targets = [p for p in ctx.pods() if ctx.site_of(p) == hub.site and any(pr == "UDP" for _, pr, _ in p.ports)]
    if not sources or not targets or not conn.hub_prefixes:
        return None
    node = ctx.plan.node(targets[0].node)
    prefix = next((n for n in conn.hub_prefixes if node.address in n), conn.hub_prefixes[0])
    port = next(p for p, pr, _ in targets[0].ports if pr == "UDP")
    return Flow(sources[0], targets[0], port, prefix)


def _cannot_stage(ctx: Context, conn: VpnConnectionPlan) -> str | None:
    if ctx.state is None:
        return "vpn failover: no running lab to cut a tunnel in"
    if conn.routing != "bgp":
        return "vpn failover: static routing (no BGP), routes stay on tunnel 1 and nothing fails over"
    if sorted(t.index for t in conn.tunnels) != [1, 2]:
        return "vpn failover: the connection has no standby tunnel"
    return None


@register(150)
def vpn_failover(ctx: Context) -> list[Planned]:
    """Every BGP VPN connection with two tunnels: tunnel 1 cut under a stream, then healed."""
    if not ctx.plan.vpn:
        return []
    skips = Skips(Kind.VPN)
    out: list[Planned] = []
    for conn in ctx.plan.vpn:
        reason = _cannot_stage(ctx, conn)
        flow = pick_flow(ctx, conn) if reason is None else None
        if reason is None and flow is None:
            reason = "vpn failover: no pod pair across the connection (a UDP echo port on the hub's site)"
        if reason is not None or flow is None:
            skips.add(reason or "", conn.name)
            continue
        check = Check(
            name=f"vpn/failover: {conn.name}",
            kind=Kind.VPN,
            source=flow.source.ref,
            target=flow.target.ref,
            port=f"{flow.port}/UDP",
            expected=Result.OK,
        )
        out.append(Planned(check, _runner(ctx, conn, flow)))
    return out + skips.planned()


def _runner(ctx: Context, conn: VpnConnectionPlan, flow: Flow) -> Callable[[Check], None]:
    def run(c: Check) -> None:
        r = stage(ctx, conn, flow)
        c.actual, c.detail = r.result, f"{flow.label}: {describe(r, conn.name)}"
        c.extra.update(
            {
                "lossWindowMs": None if r.window is None else _ms(r.window.seconds),
                "movedAfterS": r.moved,
                "backAfterS": r.back,
                "lostAfterHeal": r.lost_back,
                "lost": r.lost,
                "sent": r.sent,
            }
        )

    return run


def customer_gateway(state: labs.LabState, site: str) -> tuple[vpn.Gateway, vpngw.GatewaySpec]:
    """The running customer gateway of `site`, to read its routes and SAs."""
    compiled, topo = labs.topology_of(state)
    gw = next(g for g in transit.gateways(state, topo, compiled) if g.key == f"customer:{site}")
    return transit.attach(gw), gw.spec


def child_bytes(gw: vpn.Gateway, name: str) -> int:
    """Bytes in plus out of the tunnel's CHILD_SAs at this end (0: none)."""
    sa = gw.sas().get(name)
    return 0 if sa is None else sa.bytes_in + sa.bytes_out


def stage(ctx: Context, conn: VpnConnectionPlan, flow: Flow) -> Run:
    """Cut tunnel 1 under the stream, watch it move to tunnel 2, heal, watch it come back."""
    assert ctx.state is not None  # noqa: S101 - planned only with a lab
    state = labs.LabState.load(ctx.state.tag) or ctx.state
    gw, spec = customer_gateway(state, conn.site)
    dev1, dev2 = spec.device(conn.name, 1), spec.device(conn.name, 2)
    r = Run()
    src = ctx.ep(flow.source).namespace
    with probes.UdpStream(src, str(flow.target.address), flow.port, rate=RATE, size=SIZE) as stream:
        if not until(lambda: stream.echoes() >= 10, 5.0, POLL):
            r.result = Result.TIMEOUT
            r.problems.append(f"the stream did not flow before the cut ({stream.error or 'no echo'})")
            return r
        before = gw.device_for(flow.prefix)
        if before != dev1:
            r.problems.append(f"before the cut the customer gateway routes {flow.prefix} via {before}, not {dev1}")
        faulted = time.monotonic()
        tunnelcut.cut_tunnel(state, conn.name, 1)
        try:
            _takeover(r, gw, conn, flow, stream, faulted, dev2)
        finally:
            healed = time.monotonic()
            tunnelcut.heal_tunnel(labs.LabState.load(state.tag) or state, conn.name, 1)
        if r.result is Result.OK:
            _back(r, gw, conn, flow, stream, healed, dev1)
    sent, echoed = stream.snapshot()
    r.sent, r.lost = len(sent), len(sent) - len(echoed)
    r.window = max(probes.gaps(sent, echoed, faulted - SLACK, healed), key=lambda g: g.seconds, default=None)
    r.lost_back = sum(g.lost for g in probes.gaps(sent, echoed, healed))
    r.result = verdict(r)
    return r


def _takeover(  # noqa: PLR0913
    r: Run, gw: vpn.Gateway, conn: VpnConnectionPlan, flow: Flow, stream: probes.UdpStream, faulted: float, dev2: str
) -> None:
    """The customer's route on tunnel 2, the stream resumed, and tunnel 2's CHILD_SA carrying it."""
    if until(lambda: gw.device_for(flow.prefix) == dev2, TAKEOVER_TIMEOUT, POLL):
        r.moved = round(time.monotonic() - faulted, 2)
    else:
        r.result = Result.TIMEOUT
        r.problems.append(f"the route to {flow.prefix} did not move to {dev2} within {TAKEOVER_TIMEOUT:.0f} s")
        return
    moved_at = time.monotonic()
    if not until(lambda: stream.echoes(since=moved_at) > 0, TAKEOVER_TIMEOUT, POLL):
        r.result = Result.TIMEOUT
        r.problems.append(f"the route moved to {dev2} but the stream did not resume within {TAKEOVER_TIMEOUT:.0f} s")
        return
    time.sleep(0.3)  # the hub's end follows its own hold timer
    name2 = vpngw.tunnel_name(conn.name, 2)
    b0, t0 = child_bytes(gw, name2), time.monotonic()
    time.sleep(1.0)
    grew, echoed = child_bytes(gw, name2) - b0, stream.echoes(since=t0) * SIZE
    if echoed == 0:
        r.problems.append("no datagram echoed in the second after the route moved")
    elif grew < echoed:
        r.problems.append(f"tunnel 2's CHILD_SA moved +{grew} B while {echoed} B of datagrams were echoed through it")
    r.evidence = f"tunnel 2 ({dev2}) carried it: its CHILD_SA +{grew} B in 1 s ({echoed} B of payload echoed)"


def _back(
    r: Run, gw: vpn.Gateway, conn: VpnConnectionPlan, flow: Flow, stream: probes.UdpStream, healed: float, dev1: str
) -> None:
    """After the heal: the route on tunnel 1 again, and the stream through it."""
    if not until(lambda: gw.device_for(flow.prefix) == dev1, BACK_TIMEOUT, POLL):
        r.problems.append(f"the route to {flow.prefix} was not back on {dev1} within {BACK_TIMEOUT:.0f} s of the heal")
        return
    r.back = round(time.monotonic() - healed, 2)
    time.sleep(0.3)
    name1 = vpngw.tunnel_name(conn.name, 1)
    b0, t0 = child_bytes(gw, name1), time.monotonic()
    time.sleep(1.0)
    grew, echoed = child_bytes(gw, name1) - b0, stream.echoes(since=t0) * SIZE
    if grew < echoed or echoed == 0:
        r.problems.append(f"after the heal tunnel 1's CHILD_SA moved +{grew} B while {echoed} B were echoed")


def verdict(r: Run) -> Result:
    """timeout: the stream never moved (set while staging) or tunnel 1 never came back; wrong-answer: it
    did not go where the routes say, or the move back lost datagrams; too-slow: a window over LOSS_BUDGET."""
    if r.result is not Result.OK:
        return r.result
    if r.back is None:
        return Result.TIMEOUT
    if r.lost_back:
        r.problems.append(f"{r.lost_back} datagrams lost while the traffic moved back to tunnel 1")
    if r.problems:
        return Result.WRONG_ANSWER
    if r.window is not None and r.window.seconds > LOSS_BUDGET:
        return Result.TOO_SLOW
    return Result.OK


def describe(r: Run, connection: str) -> str:
    """One line: the loss window first, then where the traffic went and came back."""
    if r.window is None:
        window = "loss window 0 ms"
    else:
        window = "never resumed" if math.isinf(r.window.seconds) else f"loss window {r.window.seconds * 1000:.0f} ms"
    head = f"tunnel 1 of {connection} cut: {window} ({r.lost} of {r.sent} datagrams lost; BGP hold {HOLD} s)"
    parts = ["; ".join(r.problems) + f" — {head}" if r.problems else head]
    if r.moved is not None:
        parts.append(f"the customer gateway's route moved to tunnel 2 {r.moved:.2f} s after the cut")
    if r.evidence:
        parts.append(r.evidence)
    if r.back is not None:
        parts.append(f"healed: back on tunnel 1 {r.back:.2f} s later, {r.lost_back} datagrams lost")
    return "; ".join(parts)


def _ms(seconds: float) -> float | None:
    return None if math.isinf(seconds) else round(seconds * 1000, 1)
