"""K3s configuration files (docs.k3s.io, "Configuration File": each CLI flag is a config.yaml key).

clusters/<cluster>/k3s-server.yaml: what every server of the cluster must agree on (cluster-cidr,
service-cidr, flannel-backend, disable-network-policy are "critical configuration values"), for
/etc/rancher/k3s/config.yaml.d/ on each server. nodes/<node>/k3s-config.yaml: the node's own
settings, for /etc/rancher/k3s/config.yaml on every node, server or agent.
"""

from __future__ import annotations

from typing import Any

from crossmesh.model.plan import ClusterPlan, NodePlan, Plan
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


def node_config(node: NodePlan) -> dict[str, Any]:
    """node-ip: the node's InternalIP is its site address, which the other sites reach through
    wg-crossmesh and the CNI's VXLAN uses. node-name: the name pin-pod-cidrs.sh and the plan use.
    Flannel's VXLAN takes the interface of the default route (k3s-io/k3s#12056): when that is not the
    interface holding node-ip, add `flannel-iface: <that interface>` here (crossmesh does not know names)."""
    return {"node-ip": str(node.address), "node-name": node.name}
