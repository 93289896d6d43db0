"""Talos documents per node (schema in tests/reference/talos/): a machine-config patch and, since
Talos 1.12, the WireGuard link as its own `WireguardConfig` document.

A Talos node runs no shell script and no wg-quick: everything it needs is in these documents. The
WireGuard link carries a route per allowed IP of every peer (Talos does not route AllowedIPs by
itself; wg-quick would install the same routes). Routes via another host on the site network
(topology gateways) would need a `LinkConfig` naming the node's interface, which crossmesh cannot
know: validate refuses such Talos nodes (validate/rules.py), and `machine_patch` asserts it.
"""

from __future__ import annotations

from typing import Any

from crossmesh.model.plan import ClusterPlan, NodePlan, Plan, RouteVia
from crossmesh.render.common import controller_manager_args, forwards, kube_proxy_replacement

KUBEPRISM_PORT = 7445  # Sidero's Cilium guide: KubePrism enabled on 7445 (k8sServicePort of the values)


def machine_patch(plan: Plan, cluster: ClusterPlan, node: NodePlan) -> dict[str, Any]:
    via_gateway = [r for r in node.routes if r.via is RouteVia.GATEWAY]
    if via_gateway:  # validate refuses these meshes; reaching here is a bug, not a user error
        raise ValueError(f"Talos node {node.name} needs a route via its site gateway ({via_gateway[0].dst})")
    network: dict[str, Any] = {
        "podSubnets": [str(cluster.pod_cidr)],
        "serviceSubnets": [str(cluster.service_cidr)],
    }
    machine: dict[str, Any] = {
        "nodeLabels": {"crossmesh.io/site": node.site, "crossmesh.io/cluster": cluster.name},
        "features": {"kubePrism": {"enabled": True, "port": KUBEPRISM_PORT}},
        # The node's InternalIP is its site address, never the wg-crossmesh one.
        "kubelet": {"nodeIP": {"validSubnets": [str(plan.site(node.site).network)]}},
    }
    if forwards(node):
        machine["sysctls"] = {"net.ipv4.ip_forward": "1"}
    patch: dict[str, Any] = {
        "machine": machine,
        "cluster": {
            "clusterName": cluster.name,
            "network": network,
            "controllerManager": {"extraArgs": controller_manager_args(plan, cluster)},
        },
    }
    if cluster.cni == "cilium":
        network["cni"] = {"name": "none"}  # Cilium is installed from the rendered Helm values
        if kube_proxy_replacement(cluster):
            patch["cluster"]["proxy"] = {"disabled": True}
    elif cluster.cni == "flannel":
        network["cni"] = {"name": "flannel"}
    return patch


def wireguard_document(node: NodePlan, private_key: str) -> dict[str, Any] | None:
    tunnel = node.tunnel
    if tunnel is None:
        return None
    peers = []
    routes: list[dict[str, str]] = []
    for p in tunnel.peers:
        entry: dict[str, Any] = {"publicKey": p.public_key, "allowedIPs": [str(a) for a in p.allowed_ips]}
        if p.endpoint is not None:
            entry["endpoint"] = f"{p.endpoint[0]}:{p.endpoint[1]}"
        if p.persistent_keepalive:
            entry["persistentKeepaliveInterval"] = f"{p.persistent_keepalive}s"
        peers.append(entry)
        routes.extend({"destination": str(a)} for a in p.allowed_ips)  # link-scope, as wg-quick's
    return {
        "apiVersion": "v1alpha1",
        "kind": "WireguardConfig",
        "name": tunnel.interface,
        "privateKey": private_key,
        "listenPort": tunnel.listen_port,
        "mtu": tunnel.mtu.value,
        "addresses": [{"address": f"{tunnel.address}/32"}],
        "peers": peers,
        "routes": routes,
    }
