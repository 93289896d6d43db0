"""The datapath of each cluster as the plan states it: which layer routes, encapsulates and
encrypts each kind of pod pair, and the MTU of each, with its arithmetic.

One model (README, "Datapath"): the CNI carries pod traffic in VXLAN (UDP 8472) between node
addresses — Cilium in `routingMode: tunnel`, Flannel's `vxlan` backend — and crossmesh's
WireGuard (`wg-crossmesh`) carries node addresses between sites. One encryption layer: Cilium's
own encryption stays off. Renderers, the lab and `crossmesh test` read this; nothing recomputes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from crossmesh.model.mesh import Mesh
from crossmesh.model.plan import (
    TUNNEL_INTERFACE,
    VXLAN_PORT,
    ClusterPlan,
    Datapath,
    Mtu,
    NodePlan,
    PairClass,
    SitePairPlan,
    Transport,
)

VXLAN_HOP = f"VXLAN (UDP {VXLAN_PORT})"


def connects(a: ClusterPlan, b: ClusterPlan) -> bool:
    """Whether pods of clusters `a` and `b` reach each other: always within a cluster; across
    clusters only in Cilium's Cluster Mesh (Flannel and Calico have no multi-cluster routing)."""
    return a.name == b.name or a.cni == b.cni == "cilium"


def _ipsec_words(pairs: Sequence[SitePairPlan]) -> str:
    """ "IPsec via hub H between a and b; …" for the pairs a hub carries."""
    return "; ".join(f"IPsec via hub {p.hub} between {p.sites[0]} and {p.sites[1]}" for p in pairs)


def _classes(
    cluster: ClusterPlan,
    plan_clusters: Sequence[ClusterPlan],
    pod_mtu: Mtu,
    topology: str,
    site_pairs: Sequence[SitePairPlan] = (),
) -> list[PairClass]:
    dev = "cilium_vxlan" if cluster.cni == "cilium" else "flannel.1" if cluster.cni == "flannel" else "vxlan"
    out = [
        PairClass(
            "same-node",
            True,
            "veth to veth on the node",
            "none",
            "none",
            pod_mtu,
        )
    ]
    if len(cluster.nodes) > len(cluster.sites):  # some site holds two of its nodes
        out.append(
            PairClass(
                "same-site",
                True,
                f"{dev} {VXLAN_HOP} over the site network",
                "vxlan",
                "none",
                pod_mtu,
                "inside one site the site network is trusted: no encryption, as a cloud VPC",
            )
        )
    ipsec = [p for p in site_pairs if p.transport is Transport.IPSEC]
    if len(cluster.sites) > 1:
        carrier = f"the site gateway's {TUNNEL_INTERFACE}" if topology == "gateways" else TUNNEL_INTERFACE
        own = [p for p in ipsec if set(p.sites) <= set(cluster.sites)]
        path, encryption = f"{dev} {VXLAN_HOP} inside {carrier}", "wireguard"
        if own and len(own) == len(cluster.sites) * (len(cluster.sites) - 1) // 2:
            path, encryption = f"{dev} {VXLAN_HOP} through the sites' routers: {_ipsec_words(own)}", "ipsec"
        elif own:
            path, encryption = f"{path}; {_ipsec_words(own)}", "wireguard or ipsec"
        out.append(PairClass("cross-site", True, path, "vxlan", encryption, pod_mtu))
    others = [c for c in plan_clusters if c.name != cluster.name]
    if others:
        if cluster.cni != "cilium":
            out.append(
                PairClass(
                    "cross-cluster",
                    False,
                    "",
                    "none",
                    "none",
                    None,
                    f"{cluster.cni} has no multi-cluster routing: pods of other clusters are reached only "
                    "between Cilium clusters (Cluster Mesh); use cni: cilium",
                )
            )
        else:
            meshed = [c.name for c in others if connects(cluster, c)]
            apart = [c.name for c in others if not connects(cluster, c)]
            why = f"not connected to {', '.join(apart)} (not Cilium: no Cluster Mesh)" if apart else ""
            path = (
                f"{dev} {VXLAN_HOP} to the other cluster's node (Cluster Mesh), inside {TUNNEL_INTERFACE} "
                "when that node is in another site"
            )
            encryption = "wireguard across sites"
            if ipsec:
                path, encryption = f"{path} ({_ipsec_words(ipsec)})", "wireguard or ipsec across sites"
            mtu = pod_mtu if meshed else None
            out.append(PairClass("cross-cluster", bool(meshed), path, "vxlan", encryption, mtu, why))
    return out


def attach(
    mesh: Mesh,
    clusters: tuple[ClusterPlan, ...],
    nodes: Sequence[NodePlan],
    underlays: dict[str, Mtu],
    site_pairs: Sequence[SitePairPlan] = (),
) -> tuple[ClusterPlan, ...]:
    """`clusters` with their datapath. `underlays`: each cluster's smallest underlay (the planner's);
    `site_pairs`: every pair's transport (plan/hubs.py), with hubs only."""
    pinned = {c.name for c in mesh.spec.clusters if any(n.pod_cidr is not None for n in c.nodes)}
    pod_mtu = {n.cluster: n.pod_mtu for n in nodes}
    out = []
    for c in clusters:
        classes = _classes(c, clusters, pod_mtu[c.name], mesh.spec.wireguard.topology.value, site_pairs)
        out.append(
            replace(
                c,
                datapath=Datapath(
                    mode="tunnel",
                    encapsulation="vxlan",
                    port=VXLAN_PORT,
                    underlay_mtu=underlays[c.name],
                    pod_mtu=pod_mtu[c.name],
                    pod_cidrs_pinned=c.name in pinned,
                    classes=tuple(classes),
                ),
            )
        )
    return tuple(out)
