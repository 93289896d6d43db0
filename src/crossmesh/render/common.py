"""What several distribution renderers (Talos, K3s, kubeadm) and the Cilium values must agree on:
one predicate or one computation each, read by all of them, so the files cannot disagree."""

from __future__ import annotations

from crossmesh.model.plan import ClusterPlan, NodePlan, Plan


def kube_proxy_replacement(cluster: ClusterPlan) -> bool:
    """Cilium replaces kube-proxy where every node has a local API server endpoint before any Service
    works: Talos (KubePrism, localhost:7445) and K3s (its client load balancer, 127.0.0.1:6444). On
    kubeadm and managed clusters kube-proxy stays and Cilium runs beside it (render/cilium.py)."""
    return cluster.cni == "cilium" and cluster.distribution in ("talos", "k3s")


def pod_cidrs_pinned(cluster: ClusterPlan) -> bool:
    """The mesh file states node podCIDRs for this cluster: the controller manager must not allocate
    them (`allocate-node-cidrs=false`) and pin-pod-cidrs.sh sets each Node's from the plan."""
    return cluster.datapath is not None and cluster.datapath.pod_cidrs_pinned


def node_cidr_mask(plan: Plan, cluster: ClusterPlan) -> int:
    """The prefix length of the plan's node pod CIDRs: the controller manager's `node-cidr-mask-size`."""
    by_name = {n.name: n for n in plan.nodes}
    return min(by_name[n].pod_cidr.prefixlen for n in cluster.nodes)


def controller_manager_args(plan: Plan, cluster: ClusterPlan) -> dict[str, str]:
    """kube-controller-manager flags (name → value) every self-managed distribution passes on."""
    args = {"node-cidr-mask-size": str(node_cidr_mask(plan, cluster))}
    if pod_cidrs_pinned(cluster):
        args["allocate-node-cidrs"] = "false"
    return args


def forwards(node: NodePlan) -> bool:
    """IP forwarding: a gateway with a tunnel carries its site's traffic to the other sites."""
    return node.forwards
