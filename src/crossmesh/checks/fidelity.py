"""`fidelity/*` checks: the running lab's devices against the files `render` writes for real nodes.

The rendered files are read back the way their consumers read them (render/readback.py); each
check reads the kernel and wireguard-go, never the plan, so a lab that drifted from what gets
deployed — a peer, an allowed IP, an MTU, a route — fails here with the difference named.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crossmesh.checks.framework import Context, Planned, Skips, register
from crossmesh.checks.gateways import not_preferred
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import netns, wireguard
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.model.plan import Plan
from crossmesh.render import readback


@dataclass(slots=True)
class Live:
    """One node namespace's devices as the kernel has them."""

    mtu: dict[str, int] = field(default_factory=dict)
    addresses: dict[str, set[str]] = field(default_factory=dict)
    routes: dict[str, set[str]] = field(default_factory=dict)  # main-table destinations by device


def read_live(namespace: str) -> Live:
    live = Live()
    with netns.open_ns(namespace) as ipr:
        names = {}
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            names[link["index"]] = name
            live.mtu[name] = link.get_attr("IFLA_MTU")
        for addr in ipr.get_addr(family=2):
            name = names.get(addr["index"], "")
            live.addresses.setdefault(name, set()).add(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}")
        for route in ipr.get_routes(family=2, table=254):
            name = names.get(route.get_attr("RTA_OIF"), "")
            dst = route.get_attr("RTA_DST") or "0.0.0.0"
            live.routes.setdefault(name, set()).add(f"{dst}/{route['dst_len']}")
    return live


def _diff(what: str, rendered: Any, live: Any) -> list[str]:
    return [] if rendered == live else [f"{what}: rendered {rendered}, running {live}"]


def compare_tunnel(rendered: readback.RenderedTunnel, dump: str | None, live: Live, ifname: str) -> list[str]:
    """The differences between a node's rendered tunnel and its running device."""
    if dump is None:
        return [f"{ifname} does not answer"]
    device, _ = wireguard.parse_dump(dump)
    out = _diff("listen port", rendered.listen_port, device.listen_port)
    out += _diff("peers", sorted(rendered.peers), sorted(device.peers))
    for key in sorted(set(rendered.peers) & set(device.peers)):
        out += _diff(f"allowed IPs of {key[:8]}…", rendered.peers[key].allowed_ips, device.peers[key].allowed_ips)
    out += _diff("MTU", rendered.mtu, live.mtu.get(ifname))
    out += _diff("addresses", sorted(rendered.addresses), sorted(live.addresses.get(ifname, set())))
    out += _diff("routes into the tunnel", list(rendered.routes), sorted(live.routes.get(ifname, set())))
    return out


@register(10)
def fidelity_checks(ctx: Context) -> list[Planned]:
    """Every tunnel node and every Cilium cluster against the rendered files."""
    skips = Skips(Kind.FIDELITY)
    if ctx.files is None:
        skips.add("no rendered files to compare with", ctx.plan.mesh)
        return skips.planned()
    # After a failover the running peers are those of the active gateways etcd names: the files are
    # rendered with them (ctx.files), and each tunnel's detail says which sites run on which gateway.
    moved = not_preferred(ctx.plan, ctx.active)
    note = f" (with the active gateways etcd names: {', '.join(moved)})" if moved else ""
    out = tunnel_checks(ctx.plan, ctx.topo, ctx.files, note)
    out += pod_mtu_checks(ctx.plan, ctx.topo, ctx.files, skips)
    return out + skips.planned()


def tunnel_checks(plan: Plan, topo: LabTopology, files: Mapping[str, Any], note: str = "") -> list[Planned]:
    """Every WireGuard device against its node's rendered files; `note` ends each detail (what the
    files were rendered with, when that is not the preferred gateways)."""
    out = []
    for dev in topo.wireguard:
        rendered = readback.node_tunnel(files, dev.node)
        check = Check(
            name=f"fidelity/tunnel: {dev.node} runs nodes/{dev.node}/ as rendered",
            kind=Kind.FIDELITY,
            source=dev.node,
            target=rendered.source if rendered else f"nodes/{dev.node}/",
            port="-",
            expected=Result.OK,
        )

        def run(c: Check, dev: Any = dev, rendered: readback.RenderedTunnel | None = rendered) -> None:
            if rendered is None:
                c.actual, c.detail = Result.WRONG_ANSWER, "the rendered files give this node no tunnel"
                return
            problems = compare_tunnel(rendered, wireguard.dump(dev.ifname), read_live(dev.namespace), dev.ifname)
            c.actual = Result.WRONG_ANSWER if problems else Result.OK
            c.detail = (
                "; ".join(problems)
                or (f"{len(rendered.peers)} peers, MTU {rendered.mtu}, {len(rendered.routes)} routes: as rendered")
            ) + note

        out.append(Planned(check, run))
    return out


def pod_mtu_checks(
    plan: Plan, topo: LabTopology, files: Mapping[str, Any], skips: Skips | None = None
) -> list[Planned]:
    """Every pod interface and VXLAN device of a cluster has the pod MTU Cilium derives from its values."""
    out = []
    for cluster in plan.clusters:
        rendered = readback.cluster_datapath(files, cluster.name)
        if rendered is None:
            if skips is not None:
                skips.add(f"pod MTU of a {cluster.cni} cluster: no Cilium values state it", cluster.name)
            continue
        check = Check(
            name=f"fidelity/pod-mtu: cluster {cluster.name} = {rendered.pod_mtu} from {rendered.source}",
            kind=Kind.FIDELITY,
            source=cluster.name,
            target=rendered.source,
            port="-",
            expected=Result.OK,
        )

        def run(c: Check, cluster: Any = cluster, rendered: readback.RenderedDatapath = rendered) -> None:
            problems = []
            nodes = set(cluster.nodes)
            for ep in topo.pods:
                if ep.pod.cluster != cluster.name:
                    continue
                mtu = read_live(ep.namespace).mtu.get(ep.ifname)
                if mtu != rendered.pod_mtu:
                    problems.append(f"pod {ep.pod.ref}: {mtu}")
            for ns in topo.namespaces:
                if ns.role != "node" or ns.owner not in nodes:
                    continue
                live = read_live(ns.name)
                for link in ns.links:
                    if link.kind == "vxlan" and live.mtu.get(link.ifname) != rendered.pod_mtu:
                        problems.append(f"VXLAN of node {ns.owner}: {live.mtu.get(link.ifname)}")
            c.actual = Result.WRONG_ANSWER if problems else Result.OK
            c.detail = (
                f"expected {rendered.pod_mtu} ({rendered.base_mtu} − {rendered.base_mtu - rendered.pod_mtu}): "
                + ", ".join(problems)
                if problems
                else f"every pod and VXLAN device at {rendered.pod_mtu}"
            )

        out.append(Planned(check, run))
    return out
