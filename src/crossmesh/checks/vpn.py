"""`vpn/tunnels-up`, `bgp/established`, `bgp/routes`: the site-to-site VPNs' daemons as both ends
report them — the customer gateway (seed 001's OpenStack router r1) and the hub's tunnel endpoints
(the lab's stand-in for AWS's) — read through their control sockets (drivers/lab/vpn.py).

A tunnel is up when each end has its IKE SA ESTABLISHED with a CHILD_SA INSTALLED: one end's view is
not enough, since an initiator keeps an SA the responder has long dropped. Routes are checked where
they decide something: each BGP session learned exactly the connection's prefixes (what the other
side should announce, nothing else), and the kernel's route for each goes over tunnel 1's device
while BIRD holds tunnel 2's as the unchosen alternative (AWS's active/standby, plan/vpngw.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network

from crossmesh.checks.framework import Context, Planned, Runner, Skips, register
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import transit
from crossmesh.drivers.lab.transit import LabGateway
from crossmesh.model.plan import VpnConnectionPlan
from crossmesh.plan import vpngw


@dataclass(frozen=True, slots=True)
class Ends:
    """The two gateways of a connection, as the lab runs them."""

    customer: LabGateway
    hub: LabGateway


def ends(ctx: Context, conn: VpnConnectionPlan) -> Ends | None:
    by_key = {g.key: g for g in ctx.vpn}
    customer, hub = by_key.get(f"customer:{conn.site}"), by_key.get(f"hub:{conn.hub}")
    return Ends(customer, hub) if customer and hub else None


def connections(ctx: Context, kind: Kind) -> tuple[list[tuple[VpnConnectionPlan, Ends]], Skips]:
    """Every VPN connection with both its gateways in the lab; the others skipped with the reason."""
    skips = Skips(kind)
    if not ctx.plan.vpn:
        skips.add("no hubs: the mesh has no site-to-site VPN", ctx.plan.mesh)
    out = []
    for conn in ctx.plan.vpn:
        found = ends(ctx, conn)
        if found is None:
            skips.add("the lab runs no gateway for this connection's ends", conn.name)
        else:
            out.append((conn, found))
    return out, skips


def _tunnel_label(conn: VpnConnectionPlan, index: int) -> str:
    t = next(t for t in conn.tunnels if t.index == index)
    return f"{conn.name} tunnel {index} ({'standby' if t.standby else 'active'})"


@register(16)
def vpn_state(ctx: Context) -> list[Planned]:
    """Every tunnel up at both ends; every BGP session Established at both ends; each end's routes."""
    out: list[Planned] = []
    found, skips = connections(ctx, Kind.VPN)
    bgp_skips = Skips(Kind.BGP)
    for conn, gws in found:
        for t in conn.tunnels:
            outside = ctx.topo.vpn_outside[conn.name, t.index]
            check = Check(
                name=f"vpn/tunnels-up: {_tunnel_label(conn, t.index)}",
                kind=Kind.VPN,
                source=f"{conn.site} {conn.customer_address}",
                target=f"{conn.hub} {outside}",
                port="4500/UDP",
                expected=Result.OK,
            )
            out.append(Planned(check, _tunnel_runner(gws, vpngw.tunnel_name(conn.name, t.index))))
        if conn.routing != "bgp":
            bgp_skips.add("static routing: no BGP session", conn.name)
            continue
        asns = {h.name: h.amazon_asn for h in ctx.plan.hubs}
        for t in conn.tunnels:
            check = Check(
                name=f"bgp/established: {_tunnel_label(conn, t.index)}",
                kind=Kind.BGP,
                source=f"AS{conn.customer_asn} {t.customer_address}",
                target=f"AS{asns[conn.hub]} {t.hub_address}",
                port="179/TCP",
                expected=Result.OK,
            )
            out.append(Planned(check, _session_runner(gws, vpngw.session_name(conn.name, t.index))))
        for side, gw, prefixes in (
            ("customer", gws.customer, conn.hub_prefixes),
            ("hub", gws.hub, conn.customer_prefixes),
        ):
            check = Check(
                name=f"bgp/routes: {side} {gw.spec.name} over {conn.name}",
                kind=Kind.BGP,
                source=gw.namespace,
                target=", ".join(map(str, prefixes)),
                port="179/TCP",
                expected=Result.OK,
            )
            out.append(Planned(check, _routes_runner(conn, gw, prefixes, _tables(gw, conn))))
    return out + skips.planned() + bgp_skips.planned()


def _tables(gw: LabGateway, conn: VpnConnectionPlan) -> tuple[int | None, ...]:
    """The kernel tables that must hold the learned routes: the customer's main table; each hub
    route table that propagates the connection, and the hub's own main table (router.kernel_tables)."""
    if gw.spec.side == vpngw.CUSTOMER or gw.spec.router is None:
        return (None,)
    first = vpngw.session_name(conn.name, conn.tunnels[0].index)
    return tuple(
        None if k.table == vpngw.MAIN_TABLE else k.table for k in gw.spec.router.kernel_tables if first in k.sessions
    )


def _tunnel_runner(gws: Ends, name: str) -> Runner:
    def run(check: Check) -> None:
        views = []
        bad = []
        for label, gw in (("customer", gws.customer), ("hub", gws.hub)):
            sa = transit.attach(gw).sas().get(name)
            if sa is None:
                bad.append(f"{label}: no IKE SA")
                continue
            child = ",".join(c.state for c in sa.children) or "no CHILD_SA"
            views.append(f"{label} {sa.local}: IKE {sa.state}, CHILD_SA {child}")
            if not sa.installed:
                bad.append(f"{label} {sa.local}: IKE {sa.state}, CHILD_SA {child}")
        check.actual = Result.TIMEOUT if bad else Result.OK
        check.detail = "; ".join(bad) if bad else "; ".join(views)

    return run


def _session_runner(gws: Ends, name: str) -> Runner:
    def run(check: Check) -> None:
        states = []
        for label, gw in (("customer", gws.customer), ("hub", gws.hub)):
            s = transit.attach(gw).sessions().get(name)
            states.append((label, s.established if s else False, f"{s.state} {s.info.strip()}" if s else "no session"))
        down = [f"{label}: {what}" for label, ok, what in states if not ok]
        check.actual = Result.TIMEOUT if down else Result.OK
        check.detail = "; ".join(down) if down else "Established at both ends"

    return run


def _routes_runner(
    conn: VpnConnectionPlan, gw: LabGateway, prefixes: tuple[IPv4Network, ...], tables: tuple[int | None, ...]
) -> Runner:
    want = set(prefixes)
    sessions = {t.index: vpngw.session_name(conn.name, t.index) for t in conn.tunnels}
    active = next(t.index for t in conn.tunnels if not t.standby)
    devices = {t.index: gw.spec.device(conn.name, t.index) for t in conn.tunnels}

    def run(check: Check) -> None:
        live = transit.attach(gw)
        table = live.bird_routes()
        wrong = []
        for index, session in sessions.items():
            learned = {r.prefix for r in table if r.protocol == session}
            if learned != want:
                extra, missing = sorted(learned - want), sorted(want - learned)
                wrong.append(f"{session} learned {_nets(learned)} (missing {_nets(missing)}, extra {_nets(extra)})")
            standby = [r for r in table if r.protocol == session and r.best != (index == active)]
            if standby:
                role = "chosen" if index != active else "not chosen"
                wrong.append(f"{session}'s {_nets(r.prefix for r in standby)} {role}")
        ours = set(sessions.values())
        for t in tables:
            kernel = live.routes(t)
            where = "main" if t is None else str(t)
            for p in sorted(want):
                dev = next((r.dev for r in kernel if r.dst == p), None)
                if dev != devices[active]:
                    wrong.append(f"table {where}: {p} via {dev or 'nothing'}, not {devices[active]}")
            others = sorted({r.dst for r in kernel if r.dev in devices.values()} - want)
            if others:
                wrong.append(f"table {where}: also {_nets(others)} over the tunnels")
        foreign = sorted({r.prefix for r in table if r.protocol in ours} - want)
        if wrong or foreign:
            check.actual, check.detail = Result.WRONG_ANSWER, "; ".join(wrong) or f"learned {_nets(foreign)}"
            return
        where = ", ".join("main" if t is None else f"table {t}" for t in tables)
        check.actual = Result.OK
        check.detail = (
            f"each session learned exactly {_nets(sorted(want))}; {where}: via {devices[active]} "
            f"(tunnel {active}), tunnel {', '.join(str(i) for i in devices if i != active)} standby"
        )

    return run


def _nets(nets: Iterable[object]) -> str:
    items = [str(n) for n in nets]
    return ", ".join(items) if items else "none"
