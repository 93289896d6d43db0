"""The whole rendered tree for a plan.

clusters/<cluster>/cilium-values.yaml   (cni: cilium)
clusters/<cluster>/clustermesh-secrets.yaml  (two Cilium clusters or more) the clustermesh-apiserver's certificates,
                                        signed by the mesh CA; apply before `helm install` (0600)
clusters/<cluster>/manifests.yaml       the cluster's objects as they would be applied
nodes/<node>/wg-crossmesh.conf          wg-quick file (0600: holds the node's private key)
nodes/<node>/talos.yaml                 Talos patch + WireguardConfig (0600), distribution: talos
nodes/<node>/routes.sh                  routes beyond wg-quick and the CNI (other clusters in the site,
                                        gateways topology), IP forwarding on gateways
etcd/rbac.sh                            etcd roles: each node's agent writes only its own record
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from crossmesh.model.k8s import Manifest
from crossmesh.model.plan import Plan
from crossmesh.model.tls import ClusterMeshTLS, clustermesh_clusters
from crossmesh.render import cilium, etcd, mcs, routes, talos, wireguard
from crossmesh.render.files import RenderedFile, yaml_dump

KIND_ORDER = {
    "Namespace": 0,
    "ServiceAccount": 1,
    "ConfigMap": 2,
    "Secret": 2,
    "Service": 3,
    "Deployment": 4,
    "StatefulSet": 4,
    "Pod": 5,
}


def render(
    plan: Plan,
    manifests: dict[str, list[Manifest]],
    private_key: Callable[[str], str],
    clustermesh: Mapping[str, ClusterMeshTLS],
) -> dict[str, RenderedFile]:
    """`clustermesh`: the TLS material of every Cluster Mesh member (`Compiled.clustermesh_tls`)."""
    out: dict[str, RenderedFile] = {}
    cache: dict[int, str] = {}
    members = clustermesh_clusters(plan)
    for cluster in plan.clusters:
        base = f"clusters/{cluster.name}"
        mcs_objects = mcs.objects(plan, cluster)
        if cluster.cni == "cilium":
            values = cilium.values(plan, cluster, mcs_api=bool(mcs_objects))
            out[f"{base}/cilium-values.yaml"] = RenderedFile(yaml_dump(values))
        if cluster.name in members:
            tls = clustermesh.get(cluster.name)
            if tls is None:
                raise ValueError(f"cluster {cluster.name}: no ClusterMesh certificates were given to render")
            secrets = cilium.clustermesh_secrets(tls)
            out[f"{base}/clustermesh-secrets.yaml"] = RenderedFile(yaml_dump(*secrets), 0o600, True)
        objects = sorted(
            manifests.get(cluster.name, []),
            key=lambda m: (KIND_ORDER.get(m.kind, 9), m.kind, m.namespace, m.name),
        )
        if objects:
            out[f"{base}/manifests.yaml"] = RenderedFile(yaml_dump(*[m.raw for m in objects]))
        if mcs_objects:
            out[f"{base}/mcs.yaml"] = RenderedFile(yaml_dump(*mcs_objects))
    for node in plan.nodes:
        base = f"nodes/{node.name}"
        cluster = plan.cluster(node.cluster)
        key = private_key(node.name) if node.tunnel is not None else ""
        conf = wireguard.wg_quick(plan, node, key, cache)
        if conf is not None:
            out[f"{base}/{node.tunnel.interface if node.tunnel else 'wg'}.conf"] = RenderedFile(conf, 0o600, True)
        route_script = routes.script(plan, node)
        if route_script is not None:
            out[f"{base}/routes.sh"] = RenderedFile(route_script, 0o755)
        if cluster.distribution == "talos":
            docs = [talos.machine_patch(cluster, node)]
            wg_doc = talos.wireguard_document(node, key)
            if wg_doc is not None:
                docs.append(wg_doc)
            out[f"{base}/talos.yaml"] = RenderedFile(yaml_dump(*docs), 0o600, wg_doc is not None)
    rbac = etcd.rbac_script(plan)
    if rbac is not None:
        out["etcd/rbac.sh"] = RenderedFile(rbac, 0o755)
    return out
