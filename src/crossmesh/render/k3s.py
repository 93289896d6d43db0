"""K3s configuration files (docs.k3s.io, "Configuration File": each CLI flag is a config.yaml key).

clusters/<cluster>/k3s-server.yaml: what every server of the cluster must agree on (cluster-cidr,
service-cidr, flannel-backend, disable-network-policy are "critical configuration values"), for
/etc/rancher/k3s/config.yaml.d/ on each server. nodes/<node>/k3s-config.yaml: the node's own
settings, for /etc/rancher/k3s/config.yaml on every node, server or agent.
"""

from __future__ import annotations

from typing import Any

from crossmesh.model.plan import VXLAN_OVERHEAD, ClusterPlan, NodePlan, Plan
from crossmesh.render.common import controller_manager_args, kube_proxy_replacement


def server_config(plan: Plan, cluster: ClusterPlan) -> dict[str, Any]:
    config: dict[str, Any] = {
        "cluster-cidr": str(cluster.pod_cidr),
        "service-cidr": str(cluster.service_cidr),
        "kube-controller-manager-arg": [f"{k}={v}" for k, v in controller_manager_args(plan, cluster).items()],
    }
    if cluster.cni == "flannel":
        # Flannel VXLAN (UDP 8472) between the nodes' addresses: the datapath's "tunnel" model.
        config["flannel-backend"] = "vxlan"
    else:
        # Another CNI (Cilium) is installed from the rendered values; K3s's docs: with
        # flannel-backend none, also disable the embedded network policy controller.
        config["flannel-backend"] = "none"
        config["disable-network-policy"] = True
        if kube_proxy_replacement(cluster):
            config["disable-kube-proxy"] = True
    return config


FLANNEL_CONF = "/etc/rancher/k3s/flannel-net-conf.json"
"""Where a node's flannel-net-conf.json goes; K3s's `flannel-conf` takes it as is (FlannelConfOverride)."""


def node_config(node: NodePlan, *, flannel_conf: bool = False) -> dict[str, Any]:
    """node-ip: the node's InternalIP is its site address, which the other sites reach through
    wg-crossmesh and the CNI's VXLAN uses. node-name: the name pin-pod-cidrs.sh and the plan use.
    Flannel's VXLAN takes the interface of the default route (k3s-io/k3s#12056): when that is not the
    interface holding node-ip, add `flannel-iface: <that interface>` here (crossmesh does not know names).
    `flannel_conf`: the node has a rendered flannel-net-conf.json (`flannel_net_conf`)."""
    config: dict[str, Any] = {"node-ip": str(node.address), "node-name": node.name}
    if flannel_conf:
        config["flannel-conf"] = FLANNEL_CONF
    return config


def flannel_net_conf(plan: Plan, cluster: ClusterPlan, node: NodePlan) -> dict[str, Any] | None:
    """Flannel's net-conf.json for `node` when Flannel's own MTU would be wrong, else None.

    Flannel's VXLAN backend takes the MTU of the interface it sends from (the site's) unless the
    backend's `MTU` says otherwise — "Desired MTU for the outgoing packets" (flannel
    Documentation/backends.md; its VXLAN device gets MTU − 50, and so do the pods). Across a hub the
    packets cross an IPsec tunnel that carries less than the site network (plan/hubs.py: 1400), so the
    plan's underlay, the node's VXLAN MTU + 50, goes here: the lab's VXLAN device and pods get exactly
    what Flannel then gives a real node. K3s's default net-conf.json with that one key added (its
    `flannel-conf` file is used as written, so the cluster CIDR is in it)."""
    if cluster.cni != "flannel" or node.vxlan is None:
        return None
    underlay = node.vxlan.mtu.value + VXLAN_OVERHEAD
    if underlay >= plan.site(node.site).mtu:
        return None  # Flannel's own choice, the interface's MTU, is the plan's
    return {
        "Network": str(cluster.pod_cidr),
        "EnableIPv4": True,
        "EnableIPv6": False,
        "Backend": {"Type": "vxlan", "MTU": underlay},
    }
