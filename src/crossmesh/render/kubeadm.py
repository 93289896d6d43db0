"""kubeadm files (kubeadm.k8s.io/v1beta4, whose extraArgs are lists of {name, value}).

clusters/<cluster>/kubeadm-config.yaml: the ClusterConfiguration for `kubeadm init --config`
(pod and service subnets, controller-manager flags; kube-proxy disabled only when Cilium replaces it).
nodes/<node>/kubelet.env: KUBELET_EXTRA_ARGS with the node's InternalIP, for /etc/default/kubelet
(deb) or /etc/sysconfig/kubelet (rpm), which kubeadm's kubelet drop-in sources last (highest priority).
"""

from __future__ import annotations

from typing import Any

from crossmesh.model.plan import ClusterPlan, NodePlan, Plan
from crossmesh.render.common import controller_manager_args, kube_proxy_replacement

API = "kubeadm.k8s.io/v1beta4"


def cluster_config(plan: Plan, cluster: ClusterPlan) -> dict[str, Any]:
    config: dict[str, Any] = {
        "apiVersion": API,
        "kind": "ClusterConfiguration",
        "clusterName": cluster.name,
        "networking": {"podSubnet": str(cluster.pod_cidr), "serviceSubnet": str(cluster.service_cidr)},
        "controllerManager": {
            "extraArgs": [{"name": k, "value": v} for k, v in controller_manager_args(plan, cluster).items()]
        },
    }
    if kube_proxy_replacement(cluster):
        config["proxy"] = {"disabled": True}
    return config


def kubelet_env(plan: Plan, node: NodePlan) -> str:
    return (
        f"# crossmesh {plan.mesh}: kubelet flags of node {node.name} (cluster {node.cluster}, site {node.site})\n"
        "# install as /etc/default/kubelet (deb) or /etc/sysconfig/kubelet (rpm) before `kubeadm init/join`;\n"
        "# node-ip: the node's InternalIP is its site address (the CNI's VXLAN runs between these)\n"
        f"KUBELET_EXTRA_ARGS=--node-ip={node.address}\n"
    )
