"""`vpn/encrypted` and `vpn/mtu`: what a VPN connection's path does to packets, end to end.

- `vpn/encrypted`: while the internet router captures, a fresh random marker goes from a pod of the
  connection's site to a pod of its hub's site (seed 001: OpenStack → AWS) and must come back echoed,
  be in no captured packet, and cross only as the connection's ESP in UDP 4500 — at least one ESP
  packet between the customer gateway and tunnel 1's outside address (the active tunnel), and nothing
  on the wire but that connection's IKE, ESP and keepalives (checks/wire.py reads the packets).
- `vpn/mtu`: node to node both ways at the site pair's MTU with DF set, and one byte more, which a
  router on the IPsec path must refuse with fragmentation-needed (the sender learns exactly the planned
  path MTU) rather than lose; pod to pod at the pod MTU (the path less VXLAN) and one byte more, which
  the pod's own device refuses — the plan sized it so that VXLAN in IPsec fits.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from functools import partial

from crossmesh.checks import probes, underlay, wire
from crossmesh.checks.framework import Context, Planned, Runner, Skips, ports, register
from crossmesh.checks.mtu import mtu_runner
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.checks.vpn import connections
from crossmesh.drivers.lab.servicesd import ECHO_PORT
from crossmesh.model.plan import Mtu, NodePlan, SitePairPlan, VpnConnectionPlan


def _hub_site(ctx: Context, conn: VpnConnectionPlan) -> str:
    return next(h.site for h in ctx.plan.hubs if h.name == conn.hub)


def _pair(ctx: Context, conn: VpnConnectionPlan) -> SitePairPlan | None:
    return next((p for p in ctx.plan.site_pairs if p.hub == conn.hub and conn.name in p.connections), None)


@register(85)
def vpn_encrypted(ctx: Context) -> list[Planned]:
    """A marker from the connection's site to its hub's site crosses the internet only as its ESP."""
    if not ctx.plan.vpn:
        return []  # vpn_state says why once
    found, skips = connections(ctx, Kind.VPN)
    crossings = underlay.site_crossings(ctx)
    out = []
    for conn, _ in found:
        sites = (conn.site, _hub_site(ctx, conn))
        x = next((c for c in crossings if c.sites == sites), None)
        if x is None:
            skips.add("no pod pair (nor tunnel node pair) to carry a marker", f"{sites[0]} -> {sites[1]}")
            continue
        check = Check(
            name=f"vpn/encrypted: {x.source} -> {x.target} over {conn.name}",
            kind=Kind.VPN,
            source=x.source,
            target=x.target,
            port=f"{x.port}/{x.protocol}",
            expected=Result.CLEAN,
        )
        out.append(Planned(check, _encrypted_runner(ctx, conn, x)))
    return out + skips.planned()


def _encrypted_runner(ctx: Context, conn: VpnConnectionPlan, x: underlay.Crossing) -> Runner:
    allowed = wire.planned(ctx.plan, ctx.topo)
    active = next(t.index for t in conn.tunnels if not t.standby)

    def run(check: Check) -> None:
        marker = secrets.token_hex(16).encode()
        with probes.Capture(f"{ctx.topo.prefix}-inet") as cap:
            result, detail = underlay.send_marker(x, marker)
        if cap.error:
            check.actual, check.detail = Result.ERROR, f"capture failed: {cap.error}"
            return
        if result is not Result.OK:
            check.actual, check.detail = result, detail
            return
        clear = [p for p in cap.packets if marker in p.raw]
        kinds = [wire.carrier(allowed, p) for p in cap.packets]
        other = [
            p
            for p, k in zip(cap.packets, kinds, strict=True)
            if k is None or k[1] is None or k[1].connection != conn.name
        ]
        esp = Counter(k[1].tunnel for k in kinds if k is not None and k[1] is not None and k[0] is wire.Carrier.ESP)
        if clear:
            check.actual, check.detail = Result.LEAK, f"marker seen in clear in {len(clear)} packets on the internet"
        elif other:
            check.actual = Result.LEAK
            check.detail = f"{len(other)} packets other than {conn.name}'s IPsec, e.g. {wire.describe(other[0])}"
        elif not esp[active]:
            check.actual = Result.WRONG_ANSWER
            check.detail = f"no ESP-in-UDP on tunnel {active} while the marker crossed ({dict(esp)} by tunnel)"
        else:
            outside = ctx.topo.vpn_outside[conn.name, active]
            check.actual = Result.CLEAN
            check.detail = (
                f"marker echoed; {len(cap.packets)} packets, none holds it; {esp[active]} ESP-in-UDP "
                f"{conn.customer_address}:4500 ⇄ {outside}:4500 (tunnel {active})"
                + "".join(f", {n} on tunnel {i}" for i, n in sorted(esp.items()) if i != active)
            )

    return run


def _first_node(ctx: Context, site: str) -> NodePlan | None:
    return next((n for n in sorted(ctx.plan.nodes, key=lambda n: n.name) if n.site == site), None)


@register(75)
def vpn_mtu(ctx: Context) -> list[Planned]:
    """DF probes at the planned MTUs of every connection's site pair, and one byte over."""
    if not ctx.plan.vpn:
        return []  # vpn_state says why once
    found, skips = connections(ctx, Kind.VPN)
    out: list[Planned] = []
    for conn, _ in found:
        pair = _pair(ctx, conn)
        a, b = _first_node(ctx, conn.site), _first_node(ctx, _hub_site(ctx, conn))
        if pair is None or a is None or b is None:
            skips.add("no node on one side of the connection", conn.name)
            continue
        size = pair.mtu.value
        for src, dst in ((a, b), (b, a)):
            out += _sized(
                f"{src.name} -> {dst.name} over {conn.name}",
                "",
                (src.name, dst.name, ECHO_PORT),
                pair.mtu,
                partial(_path_runner, ctx, src, dst, planned=size),
            )
        out += _pod_probes(ctx, conn, pair, skips)
    return out + skips.planned()


def _path_runner(ctx: Context, src: NodePlan, dst: NodePlan, total: int, *, planned: int) -> Runner:
    def run(check: Check) -> None:
        got = probes.df_past_the_node(ctx.topo.node_ns[src.name], str(dst.address), ECHO_PORT, total)
        check.actual, check.detail = got.result, got.detail
        if total > planned and got.result is Result.MSG_TOO_LONG:
            if not got.refused_on_the_way:
                check.actual = Result.WRONG_ANSWER  # the node's own device, not the IPsec path, refused it
            elif got.path_mtu != planned:
                check.actual = Result.WRONG_ANSWER
                check.detail += f", not the planned {planned}"

    return run


def _pod_probes(ctx: Context, conn: VpnConnectionPlan, pair: SitePairPlan, skips: Skips) -> list[Planned]:
    if pair.pod_mtu is None:
        skips.add("no cluster's pods cross this site pair", conn.name)
        return []
    hub_site = _hub_site(ctx, conn)
    found = next(
        (
            (s, d)
            for s in ctx.pods()
            for d in ctx.pods()
            if ctx.site_of(s) == conn.site
            and ctx.site_of(d) == hub_site
            and ctx.connected(s, d)
            and ports(d, "UDP")
            and ctx.allowed(s, d, ports(d, "UDP")[0], "UDP")
        ),
        None,
    )
    if found is None:
        skips.add("no pod pair across with a UDP port the policies let through", conn.name)
        return []
    src, dst = found
    port = ports(dst, "UDP")[0]
    return _sized(
        f"{src.ref} -> {dst.ref} over {conn.name}",
        "pods, ",
        (src.ref, dst.ref, port),
        pair.pod_mtu,
        lambda total: mtu_runner(ctx, src, dst, port, total),
    )


def _sized(
    what: str, note: str, ends: tuple[str, str, int], mtu: Mtu, runner: Callable[[int], Runner]
) -> list[Planned]:
    """The planned size with DF, and one byte over."""
    out = []
    size = mtu.value
    for total, expected, label in ((size, Result.OK, "fits"), (size + 1, Result.MSG_TOO_LONG, "one-byte-over")):
        check = Check(
            name=f"vpn/mtu-{label}: {what} ({note}{total} bytes, DF)",
            kind=Kind.VPN,
            source=ends[0],
            target=ends[1],
            port=f"{ends[2]}/UDP",
            expected=expected,
            extra={"packetSize": total, "arithmetic": mtu.arithmetic},
        )
        out.append(Planned(check, runner(total)))
    return out
