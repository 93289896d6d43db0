"""`security/anti-spoofing`: a pod cannot send from an address that is not its own — the node
drops it and its nftables counter shows it."""

from __future__ import annotations

import time

from crossmesh.checks import probes
from crossmesh.checks.framework import Context, Planned, Skips, ports, register
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab.topology import spoof_comment
from crossmesh.model.plan import PodPlan


@register(100)
def anti_spoofing(ctx: Context) -> list[Planned]:
    """From one pod of every node, a datagram with a forged source address of the node's pod CIDR."""
    out = []
    skips = Skips(Kind.SECURITY)
    pods = ctx.pods()
    for node in ctx.plan.nodes:
        src = next((p for p in pods if p.node == node.name), None)
        if src is None:
            skips.add("anti-spoofing: node with no pod to send from", node.name)
            continue
        dst = next((p for p in pods if p.ref != src.ref and ports(p, "UDP")), None)
        if dst is None:
            skips.add("anti-spoofing: no other pod with a UDP port to send to", src.ref)
            continue
        forged = str(node.pod_cidr.broadcast_address - 1)
        check = Check(
            name=f"security/anti-spoofing: {src.ref} sends as {forged}",
            kind=Kind.SECURITY,
            source=src.ref,
            target=dst.ref,
            port=f"{ports(dst, 'UDP')[0]}/UDP",
            expected=Result.DROPPED,
        )

        def run(c: Check, src: PodPlan = src, dst: PodPlan = dst, forged: str = forged) -> None:
            ep = ctx.ep(src)
            comment = spoof_comment(src)
            before = probes.nft_counter(ep.node_namespace, comment)
            probes.spoofed_udp(ep.namespace, forged, str(dst.address), ports(dst, "UDP")[0])
            time.sleep(0.1)
            after = probes.nft_counter(ep.node_namespace, comment)
            c.actual = Result.DROPPED if after > before >= 0 else Result.LEAK
            c.detail = f"anti-spoofing counter {before} -> {after} on node {src.node}"

        out.append(Planned(check, run))
    return out + skips.planned()
