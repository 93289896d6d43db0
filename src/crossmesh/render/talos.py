"""Talos documents per node: a machine-config patch and, since Talos 1.12, the WireGuard
link as its own `WireguardConfig` document (schema in tests/reference/talos/)."""

from __future__ import annotations

from typing import Any

from crossmesh.model.plan import ClusterPlan, NodePlan


def machine_patch(cluster: ClusterPlan, node: NodePlan) -> dict[str, Any]:
    network: dict[str, Any] = {
        "podSubnets": [str(cluster.pod_cidr)],
        "serviceSubnets": [str(cluster.service_cidr)],
    }
    patch: dict[str, Any] = {
        "machine": {
            "nodeLabels": {"crossmesh.io/site": node.site, "crossmesh.io/cluster": cluster.name},
        },
        "cluster": {"clusterName": cluster.name, "network": network},
    }
    if cluster.cni == "cilium":
        network["cni"] = {"name": "none"}  # Cilium is installed from the rendered Helm values
        patch["cluster"]["proxy"] = {"disabled": True}  # Cilium's kube-proxy replacement
    elif cluster.cni == "flannel":
        network["cni"] = {"name": "flannel"}
    return patch


def wireguard_document(node: NodePlan, private_key: str) -> dict[str, Any] | None:
    tunnel = node.tunnel
    if tunnel is None:
        return None
    peers = []
    for p in tunnel.peers:
        entry: dict[str, Any] = {"publicKey": p.public_key, "allowedIPs": [str(a) for a in p.allowed_ips]}
        if p.endpoint is not None:
            entry["endpoint"] = f"{p.endpoint[0]}:{p.endpoint[1]}"
        if p.persistent_keepalive:
            entry["persistentKeepaliveInterval"] = f"{p.persistent_keepalive}s"
        peers.append(entry)
    return {
        "apiVersion": "v1alpha1",
        "kind": "WireguardConfig",
        "name": tunnel.interface,
        "privateKey": private_key,
        "listenPort": tunnel.listen_port,
        "mtu": tunnel.mtu.value,
        "addresses": [{"address": f"{tunnel.address}/32"}],
        "peers": peers,
    }
