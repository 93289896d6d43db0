"""Cilium Helm values per cluster (validated against Cilium's values.schema.json in tests)."""

from __future__ import annotations

from typing import Any

from crossmesh.model.mesh import CILIUM_DEFAULT_MAX_CLUSTER_ID, MAX_CLUSTER_ID
from crossmesh.model.plan import ClusterPlan, NodePlan, Plan, RouteVia

CLUSTERMESH_NODEPORT = 32379  # clustermesh-apiserver's default NodePort


def _underlay_mtu(plan: Plan, node: NodePlan, by_name: dict[str, NodePlan]) -> int:
    """The network Cilium's packets cross: the node's tunnel for cross-site paths, or the tunnel of
    the gateway it sends them through (topology: gateways), else the site."""
    if node.tunnel is not None:
        return node.tunnel.mtu.value
    gateways = sorted({r.peer for r in node.routes if r.via is RouteVia.GATEWAY})
    tunnels = [t.mtu.value for t in (by_name[g].tunnel for g in gateways) if t is not None]
    return min([plan.site(node.site).mtu, *tunnels])


def values(plan: Plan, cluster: ClusterPlan) -> dict[str, Any]:
    by_name = {n.name: n for n in plan.nodes}  # Plan.node() is a linear scan; this runs per cluster
    nodes = [by_name[n] for n in cluster.nodes]
    underlay = min(_underlay_mtu(plan, n, by_name) for n in nodes)
    node_prefix = min(n.pod_cidr.prefixlen for n in nodes)
    peers = []
    for other in plan.clusters:
        if other.name == cluster.name:
            continue
        peers.append(
            {
                "name": other.name,
                "port": CLUSTERMESH_NODEPORT,
                "ips": [str(by_name[n].address) for n in other.nodes],
            }
        )
    clustermesh: dict[str, Any] = {
        "useAPIServer": True,
        "apiserver": {"service": {"type": "NodePort", "nodePort": CLUSTERMESH_NODEPORT}},
        "config": {"enabled": True, "clusters": peers},
    }
    if max(c.id for c in plan.clusters) > CILIUM_DEFAULT_MAX_CLUSTER_ID:
        # Every cluster of a Cluster Mesh must carry the same value, so it depends on the whole plan.
        clustermesh["maxConnectedClusters"] = MAX_CLUSTER_ID
    return {
        "cluster": {"name": cluster.name, "id": cluster.id},
        "ipam": {
            "mode": "cluster-pool",
            "operator": {
                "clusterPoolIPv4PodCIDRList": [str(cluster.pod_cidr)],
                "clusterPoolIPv4MaskSize": node_prefix,
            },
        },
        "routingMode": "tunnel",
        "tunnelProtocol": "vxlan",
        "tunnelPort": 8472,
        "encryption": {"enabled": True, "type": "wireguard"},
        "kubeProxyReplacement": True,
        "MTU": underlay,
        "clustermesh": clustermesh,
        "hubble": {"enabled": True, "relay": {"enabled": True}, "ui": {"enabled": True}},
    }
