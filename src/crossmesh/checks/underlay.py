"""`encryption/…` and `nat/…`: what the internet carries. One capture on the internet router
while a fresh random marker crosses every site pair (never in clear, only the plan's tunnels —
WireGuard between public addresses, IKE and ESP-in-UDP between customer gateways and their hubs'
endpoints: checks/wire.py — never a private address); a node behind NAT is reached through its
tunnel and not from the internet."""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass

from crossmesh.checks import probes, wire
from crossmesh.checks.connectivity import http_runner
from crossmesh.checks.framework import Context, Planned, Skips, ports, register
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab.servicesd import ECHO_PORT
from crossmesh.drivers.lab.topology import PRIVATE_RANGES
from crossmesh.model.plan import PodPlan


@dataclass(frozen=True, slots=True)
class Crossing:
    """One site pair's marked request: pod to pod over HTTP where policy allows one, else
    node to node over the lab's UDP echo (so that strict policies do not hide the proof)."""

    source: str
    target: str
    namespace: str
    address: str
    port: int
    protocol: str
    sites: tuple[str, str]  # (from, to)


def site_crossings(ctx: Context, skips: Skips | None = None) -> list[Crossing]:
    by_site: dict[str, list[PodPlan]] = {}
    for p in ctx.pods():
        by_site.setdefault(ctx.site_of(p), []).append(p)
    tunnel_nodes: dict[str, list[str]] = {}
    for n in ctx.plan.nodes:
        if n.tunnel is not None:
            tunnel_nodes.setdefault(n.site, []).append(n.name)
    sites = sorted(set(by_site) | set(tunnel_nodes))
    out = []
    for a in sites:
        for b in sites:
            if a == b:
                continue
            pair = next(
                (
                    (s, d)
                    for s in by_site.get(a, [])
                    for d in by_site.get(b, [])
                    if ports(d, "TCP") and ctx.expect_http(s, d, ports(d, "TCP")[0], "POST", "/") is Result.OK
                ),
                None,
            )
            if pair is not None:
                s, d = pair
                out.append(
                    Crossing(s.ref, d.ref, ctx.ep(s).namespace, str(d.address), ports(d, "TCP")[0], "TCP", (a, b))
                )
                continue
            node_a = next(iter(tunnel_nodes.get(a, [])), None)
            tunnel_a = ctx.plan.node(node_a).tunnel if node_a else None
            peers = tunnel_a.peers if tunnel_a is not None else ()
            node_b = next((p.node for p in peers if p.site == b and not p.standby), None)
            tb = ctx.plan.node(node_b).tunnel if node_a and node_b else None
            if node_a and node_b and tb is not None:
                out.append(
                    Crossing(node_a, node_b, ctx.topo.node_ns[node_a], str(tb.address), ECHO_PORT, "UDP", (a, b))
                )
            elif skips is not None:
                skips.add("site pair with neither a pod pair the policies let through nor a tunnel", f"{a} -> {b}")
    return out


@register(80, together=True)
def underlay(ctx: Context) -> list[Planned]:
    """Encryption and NAT proofs from one capture on the internet router."""
    skips = Skips(Kind.ENCRYPTION)
    pairs = site_crossings(ctx, skips)
    if not pairs:
        if len({n.site for n in ctx.plan.nodes}) < 2:
            skips.add("one site: nothing crosses the internet", ctx.plan.mesh)
        return skips.planned()
    inet = f"{ctx.topo.prefix}-inet"
    checks = [
        Check(
            name=f"encryption/marker: {x.source} -> {x.target}",
            kind=Kind.ENCRYPTION,
            source=x.source,
            target=x.target,
            port=f"{x.port}/{x.protocol}",
            expected=Result.CLEAN,
        )
        for x in pairs
    ]
    udp = sorted({ctx.plan.listen_port} | ({wire.IKE_PORT, wire.NAT_T_PORT} if ctx.plan.vpn else set()))
    only_wg = Check(
        name="encryption/internet-carries-only-planned-tunnels",
        kind=Kind.ENCRYPTION,
        source="internet",
        target="*",
        port=",".join(map(str, udp)) + "/UDP",
        expected=Result.CLEAN,
    )
    no_private = Check(
        name="nat/internet-never-sees-a-private-address",
        kind=Kind.NAT,
        source="internet",
        target="*",
        port="*",
        expected=Result.CLEAN,
    )
    allowed = wire.planned(ctx.plan, ctx.topo)

    def run_all(_: Check) -> None:
        markers = {c.name: secrets.token_hex(16).encode() for c in checks}
        with probes.Capture(inet) as cap:
            answers = {c.name: send_marker(x, markers[c.name]) for c, x in zip(checks, pairs, strict=True)}
        if cap.error:
            for c in [*checks, only_wg, no_private]:
                c.actual, c.detail = Result.ERROR, f"capture failed: {cap.error}"
            return
        for c in checks:
            result, detail = answers[c.name]
            seen = [p for p in cap.packets if markers[c.name] in p.raw]
            if result is not Result.OK:
                c.actual, c.detail = result, detail
            elif seen:
                c.actual, c.detail = Result.LEAK, f"marker seen in clear in {len(seen)} packets on the internet"
            else:
                c.actual, c.detail = Result.CLEAN, f"marker crossed; {len(cap.packets)} packets captured, none holds it"
        kinds = [wire.carrier(allowed, p) for p in cap.packets]
        bad = [p for p, k in zip(cap.packets, kinds, strict=True) if k is None]
        counts = Counter(k[0] for k in kinds if k is not None)
        only_wg.actual = Result.LEAK if bad else Result.CLEAN
        only_wg.detail = (
            ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) + " packets between planned peers"
            if not bad
            else f"{len(bad)} other packets, e.g. {wire.describe(bad[0])}"
        )
        if not cap.packets:
            only_wg.detail = "nothing crossed the internet"
        private = [
            p
            for p in cap.packets
            if probes.is_private(p.src, PRIVATE_RANGES) or probes.is_private(p.dst, PRIVATE_RANGES)
        ]
        no_private.actual = Result.LEAK if private else Result.CLEAN
        no_private.detail = (
            f"{len(cap.packets)} packets, no private address"
            if not private
            else f"{len(private)} packets with a private address, e.g. {private[0].src} -> {private[0].dst}"
        )

    # One runner does the capture for all; the other checks are filled in by it.
    group = [*checks, only_wg, no_private]
    return [Planned(group[0], run_all), *[Planned(c, _filled_by_capture) for c in group[1:]], *skips.planned()]


def send_marker(x: Crossing, marker: bytes) -> tuple[Result, str]:
    """Send `marker` over the crossing and say whether it came back."""
    if x.protocol == "TCP":
        result, answer, detail = probes.http(x.namespace, x.address, x.port, body=marker)
        if result is Result.OK and (answer is None or answer.get("body") != marker.decode()):
            return Result.WRONG_ANSWER, "the answer did not echo the marker"
        return result, detail
    return probes.udp_echo(x.namespace, x.address, x.port, payload=b"crossmesh-marker " + marker)


def _filled_by_capture(_: Check) -> None:
    """The capture runner of the first underlay check sets this check's result."""


@register(90)
def nat(ctx: Context) -> list[Planned]:
    """A node behind NAT is reached through its tunnel, never from the internet directly."""
    out = []
    skips = Skips(Kind.NAT)
    inet = f"{ctx.topo.prefix}-inet"
    pods = ctx.pods()
    for node in ctx.plan.nodes:
        if node.public_address is not None:
            continue
        target = next((p for p in pods if p.node == node.name and ports(p, "TCP")), None)
        if target is None:
            skips.add("node behind NAT with no pod serving TCP to aim at", node.name)
            continue
        port = ports(target, "TCP")[0]
        wan = str(ctx.topo.site_wan[node.site])
        direct = Check(
            name=f"nat/unsolicited-from-internet: internet -> {wan}:{port} ({node.name} behind NAT)",
            kind=Kind.NAT,
            source="internet",
            target=target.ref,
            port=f"{port}/TCP",
            expected=Result.TIMEOUT,
        )

        def run_direct(check: Check, wan: str = wan, port: int = port) -> None:
            result, _, detail = probes.http(inet, wan, port, timeout=1.5)
            check.actual, check.detail = result, detail

        out.append(Planned(direct, run_direct))
        remote = next((p for p in pods if ctx.site_of(p) != node.site and ctx.allowed(p, target, port, "TCP")), None)
        if remote is None:
            skips.add("no pod of another site the policies let reach the node behind NAT", target.ref)
            continue
        via = Check(
            name=f"nat/reached-through-tunnel: {remote.ref} -> {target.ref}:{port}",
            kind=Kind.NAT,
            source=remote.ref,
            target=target.ref,
            port=f"{port}/TCP",
            expected=Result.OK,
        )
        out.append(Planned(via, http_runner(ctx, remote, target, port)))
    return out + skips.planned()
