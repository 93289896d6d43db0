"""`mtu/…`: the pod MTU of every pair class the plan states, and every tunnel's MTU — exactly
the planned size passes with DF set; one byte more is refused locally ("message too long")."""

from __future__ import annotations

from crossmesh.checks import probes
from crossmesh.checks.framework import Context, Planned, Runner, Skips, ports, register
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab.servicesd import ECHO_PORT
from crossmesh.model.plan import NodePlan, PodPlan
from crossmesh.plan import datapath


def node_pair_class(a: NodePlan, b: NodePlan) -> str:
    """The plan's pair class of pods on nodes `a` and `b` (plan/datapath.py)."""
    if a.cluster != b.cluster:
        return "cross-cluster"
    if a.name == b.name:
        return "same-node"
    return "same-site" if a.site == b.site else "cross-site"


@register(60)
def tunnel_mtu(ctx: Context) -> list[Planned]:
    """Every tunnel, node to node (the lab's UDP echo on port 7, whatever pod policies say):
    a packet of exactly the tunnel MTU with DF crosses; one byte more is refused locally."""
    out = []
    skips = Skips(Kind.MTU)
    nodes = {n.name: n for n in ctx.plan.nodes}
    for a in ctx.plan.nodes:
        if a.tunnel is None:
            continue
        for peer in a.tunnel.peers:
            b = nodes[peer.node]
            if b.tunnel is None or peer.standby:
                skips.add(
                    "standby tunnel peer: it carries nothing while the active gateway is up", f"{a.name} -> {b.name}"
                )
                continue
            size = a.tunnel.mtu.value
            for total, expected, label in ((size, Result.OK, "fits"), (size + 1, Result.MSG_TOO_LONG, "one-byte-over")):
                check = Check(
                    name=f"mtu/tunnel-{label}: {a.name} -> {b.name} ({total} bytes, DF)",
                    kind=Kind.MTU,
                    source=a.name,
                    target=b.name,
                    port=f"{ECHO_PORT}/UDP",
                    expected=expected,
                    extra={"packetSize": total, "arithmetic": a.tunnel.mtu.arithmetic},
                )

                def run(c: Check, a: str = a.name, b: str = str(b.tunnel.address), total: int = total) -> None:
                    result, detail = probes.udp_echo(
                        ctx.topo.node_ns[a], b, ECHO_PORT, size=total - 28, dont_fragment=True
                    )
                    c.actual, c.detail = result, detail or f"IP packet of {total} bytes through the tunnel"

                out.append(Planned(check, run))
    return out + skips.planned()


@register(70)
def mtu(ctx: Context) -> list[Planned]:
    """The pod MTU of every pair class the plan states (same node, same site, cross site, cross cluster):
    for every node pair across sites and one pair of each other class per cluster, exactly the pod MTU
    passes with DF (inner and VXLAN outer); one byte more is refused."""
    out = []
    skips = Skips(Kind.MTU)
    by_node: dict[str, list[PodPlan]] = {}
    for p in ctx.pods():
        by_node.setdefault(p.node, []).append(p)
    nodes = {n.name: n for n in ctx.plan.nodes}
    clusters = {c.name: c for c in ctx.plan.clusters}
    seen: set[tuple[str, str]] = set()  # (cluster, class) probed once, except cross-site: every node pair
    missed: dict[tuple[str, str], str] = {}  # (cluster, class) with a node pair but no pod pair to probe
    tried: set[tuple[str, str]] = set()  # (cluster, class) of some node pair that runs pods
    for a in sorted(by_node):
        for b in sorted(by_node):
            kind = node_pair_class(nodes[a], nodes[b])
            tried.add((nodes[a].cluster, kind))
            if not datapath.connects(clusters[nodes[a].cluster], clusters[nodes[b].cluster]):
                # pod-to-pod checks these pairs time out; there is no path whose MTU to measure
                skips.add(f"{kind}: the plan's datapath does not connect these clusters", f"{a} -> {b}")
                continue
            if kind != "cross-site" and (nodes[a].cluster, kind) in seen:
                continue  # one pair of this class in this cluster is enough
            pair = next(
                (
                    (s, d)
                    for s in by_node[a]
                    for d in by_node[b]
                    if s.ref != d.ref and ports(d, "UDP") and ctx.allowed(s, d, ports(d, "UDP")[0], "UDP")
                ),
                None,
            )
            if pair is None:
                if kind == "cross-site":
                    skips.add(f"{kind}: no pod pair with a UDP port the policies let through", f"{a} -> {b}")
                else:  # another node pair of the class may have one
                    missed.setdefault((nodes[a].cluster, kind), f"{a} -> {b}")
                continue
            seen.add((nodes[a].cluster, kind))
            src, dst = pair
            size = min(nodes[a].pod_mtu.value, nodes[b].pod_mtu.value)
            port = ports(dst, "UDP")[0]
            for total, expected, label in ((size, Result.OK, "fits"), (size + 1, Result.MSG_TOO_LONG, "one-byte-over")):
                check = Check(
                    name=f"mtu/{label}: {src.ref} -> {dst.ref} ({kind}, {total} bytes, DF)",
                    kind=Kind.MTU,
                    source=src.ref,
                    target=dst.ref,
                    port=f"{port}/UDP",
                    expected=expected,
                    extra={"packetSize": total, "arithmetic": nodes[a].pod_mtu.arithmetic, "pairClass": kind},
                )
                out.append(Planned(check, mtu_runner(ctx, src, dst, port, total)))
    for (cluster, kind), case in missed.items():
        if (cluster, kind) not in seen:
            skips.add(f"{kind}: no pod pair with a UDP port the policies let through", case)
    for c in ctx.plan.clusters:  # a class the plan states, and no two nodes of it run pods
        for k in c.datapath.classes if c.datapath else ():
            if k.connected and (c.name, k.name) not in seen | set(missed) | tried:
                skips.add(f"{k.name}: no node pair of this class runs pods", f"cluster {c.name}")
    return out + skips.planned()


def mtu_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int, total: int) -> Runner:
    def run(check: Check) -> None:
        result, detail = probes.udp_echo(
            ctx.ep(src).namespace, str(dst.address), port, size=total - 28, dont_fragment=True
        )
        check.actual, check.detail = result, detail or f"IP packet of {total} bytes"

    return run
