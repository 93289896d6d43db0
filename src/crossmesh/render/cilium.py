"""Cilium Helm values per cluster, and the Secrets of its clustermesh-apiserver, for the Cilium 1.20
chart (tests/reference/cilium/v1.20.0: every key below exists in its values.yaml, the values pass
its values.schema.json).

The datapath is the plan's (`ClusterPlan.datapath`, README "Datapath"), never recomputed here:
Cilium carries pods in VXLAN between node addresses, and crossmesh's own WireGuard device
(wg-crossmesh) is the one encryption layer between sites — Cilium's encryption stays off, or every
cross-site packet would be encrypted twice and lose 80 more bytes of MTU. `MTU` is the underlay the
VXLAN packets cross, stated so that Cilium never derives it from whatever device it finds
(wg-crossmesh included).

Hubble is what records flows on real nodes (crossmesh's own flow daemon runs in the lab only), with
its relay for `hubble observe` across the cluster, and serves on :9965 the Hubble metrics the
rendered dashboard reads (render/grafana.py): `hubble.metrics.enabled` holds exactly the handlers of
the catalogue's Hubble series (observe/metrics.py, HUBBLE_HANDLERS), with no context option — the
dashboard selects by node, site and cluster, the scrape job's target labels, and a `source` or
`destination` label would multiply every series by the pods talking with no panel reading it.
Cilium agent's own /metrics stays off: its port is 9962, which crossmesh's agent (host network, on
every node that runs one) serves.
"""

from __future__ import annotations

import base64
from typing import Any

from crossmesh.model.mesh import CILIUM_DEFAULT_MAX_CLUSTER_ID, MAX_CLUSTER_ID
from crossmesh.model.plan import ClusterPlan, Plan
from crossmesh.model.tls import CILIUM_NAMESPACE, CLUSTERMESH_NODEPORT, ClusterMeshTLS, clustermesh_clusters
from crossmesh.observe import metrics
from crossmesh.render.common import kube_proxy_replacement

# Sidero's "Deploying Cilium CNI" guide (docs.siderolabs.com/kubernetes-guides/cni/deploying-cilium):
# Talos lets no workload load kernel modules, so SYS_MODULE (and SYSLOG) leave the chart's default
# capability list; Talos mounts cgroup2 itself; KubePrism serves the API server on every node at
# localhost:7445, which the agent needs before any Service works (there is no kube-proxy).
TALOS_AGENT_CAPABILITIES = (
    "CHOWN",
    "KILL",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "SYS_ADMIN",
    "SYS_RESOURCE",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETGID",
    "SETUID",
)
TALOS_CLEAN_STATE_CAPABILITIES = ("NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE")
KUBEPRISM = ("localhost", 7445)
# K3s runs its supervisor client load balancer on every node, servers and agents alike (`--lb-server-port`,
# default 6444), and it proxies the API server: the node-local endpoint a kube-proxy-free Cilium needs
# (as cilium/cilium#19038 and K3s users run it). The K3s side — `flannel-backend: none`,
# `disable-network-policy: true`, `disable-kube-proxy: true` — is the K3s configuration's to state.
K3S_API_LOAD_BALANCER = ("127.0.0.1", 6444)


def values(plan: Plan, cluster: ClusterPlan, *, mcs_api: bool) -> dict[str, Any]:
    """The cluster's values; `mcs_api` when crossmesh renders MCS-API objects for it (render/mcs.py)."""
    dp = cluster.datapath
    if dp is None:
        raise ValueError(f"cluster {cluster.name}: the plan has no datapath — Cilium values need the planner's")
    if (dp.mode, dp.encapsulation) != ("tunnel", "vxlan"):
        raise ValueError(f"cluster {cluster.name}: Cilium values support the tunnel/vxlan datapath, not {dp.mode}")
    clustermesh: dict[str, Any] = {}
    if cluster.name in clustermesh_clusters(plan):
        clustermesh = _clustermesh(plan, cluster)
    if mcs_api:
        clustermesh["mcsapi"] = {"enabled": True}
    return {
        "cluster": {"name": cluster.name, "id": cluster.id},
        # Node pod CIDRs come from Node.spec.podCIDRs (kube-controller-manager allocates them from
        # the cluster pod CIDR, or crossmesh pins them); Cilium's own pool would ignore both.
        "ipam": {"mode": "kubernetes"},
        "routingMode": dp.mode,
        "tunnelProtocol": dp.encapsulation,
        "tunnelPort": dp.port,
        "encryption": {"enabled": False},  # wg-crossmesh encrypts between sites; see the module's doc
        "MTU": dp.underlay_mtu.value,
        **({"clustermesh": clustermesh} if clustermesh else {}),
        "hubble": {
            "enabled": True,
            "relay": {"enabled": True},
            "ui": {"enabled": True},
            "metrics": {"enabled": hubble_metrics(), "port": metrics.HUBBLE_PORT},
        },
        "prometheus": {"enabled": False},  # Cilium agent's port is 9962: crossmesh's agent serves it; see the doc
        **_distribution(cluster),
    }


def hubble_metrics() -> list[str]:
    """`hubble.metrics.enabled`: the handler of each Hubble series the dashboard may read."""
    return [h.name for h in metrics.HUBBLE_HANDLERS]


def _clustermesh(plan: Plan, cluster: ClusterPlan) -> dict[str, Any]:
    by_name = {n.name: n for n in plan.nodes}  # Plan.node() is a linear scan; this runs per cluster
    peers = [
        {"name": other.name, "port": CLUSTERMESH_NODEPORT, "ips": [str(by_name[n].address) for n in other.nodes]}
        for other in plan.clusters
        if other.name != cluster.name and other.cni == "cilium"  # only Cilium clusters run a clustermesh-apiserver
    ]
    clustermesh: dict[str, Any] = {
        "useAPIServer": True,
        "apiserver": {
            "service": {"type": "NodePort", "nodePort": CLUSTERMESH_NODEPORT},
            # The certificates are crossmesh's, signed by the one mesh CA (clustermesh_secrets): the
            # chart would make a CA per install, and clusters of different CAs never connect.
            # `cluster`: each cluster reaches the others as remote-<its name>, which one CA makes safe.
            "tls": {"authMode": "cluster", "auto": {"enabled": False}},
        },
        "config": {"enabled": True, "clusters": peers},
    }
    if max(c.id for c in plan.clusters) > CILIUM_DEFAULT_MAX_CLUSTER_ID:
        # Every cluster of a Cluster Mesh must carry the same value, so it depends on the whole plan.
        clustermesh["maxConnectedClusters"] = MAX_CLUSTER_ID
    return clustermesh


def _distribution(cluster: ClusterPlan) -> dict[str, Any]:
    """How the agent reaches the API server, and whether Cilium replaces kube-proxy (one predicate with
    the distributions' files, which disable kube-proxy exactly then: render/common.py)."""
    replaces = "true" if kube_proxy_replacement(cluster) else "false"
    if cluster.distribution == "talos":
        return {
            "kubeProxyReplacement": replaces,
            "k8sServiceHost": KUBEPRISM[0],
            "k8sServicePort": KUBEPRISM[1],
            "securityContext": {
                "capabilities": {
                    "ciliumAgent": list(TALOS_AGENT_CAPABILITIES),
                    "cleanCiliumState": list(TALOS_CLEAN_STATE_CAPABILITIES),
                }
            },
            "cgroup": {"autoMount": {"enabled": False}, "hostRoot": "/sys/fs/cgroup"},
        }
    if cluster.distribution == "k3s":
        return {
            "kubeProxyReplacement": replaces,
            "k8sServiceHost": K3S_API_LOAD_BALANCER[0],
            "k8sServicePort": K3S_API_LOAD_BALANCER[1],
        }
    # kubeadm and managed clusters: no node-local API endpoint, and the mesh file names no
    # control-plane endpoint. Without kube-proxy the agent could reach the API server only through
    # the `kubernetes` Service, which nothing would serve yet: kube-proxy stays, Cilium does not replace it.
    return {"kubeProxyReplacement": replaces}


def clustermesh_secrets(tls: ClusterMeshTLS) -> list[dict[str, Any]]:
    """The Secrets the chart wants with `clustermesh.apiserver.tls.auto.enabled: false`: `tls.crt`,
    `tls.key` and `ca.crt` (the mesh CA's certificate — its key stays in the state directory)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": c.spec.secret,
                "namespace": CILIUM_NAMESPACE,
                "labels": {"app.kubernetes.io/managed-by": "crossmesh", "app.kubernetes.io/part-of": "cilium"},
            },
            "data": {"ca.crt": _b64(tls.ca_cert_pem), "tls.crt": _b64(c.cert_pem), "tls.key": _b64(c.key_pem)},
        }
        for c in tls.certs
    ]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("ascii")).decode("ascii")
