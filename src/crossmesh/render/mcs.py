"""Multi-Cluster Services API objects (multicluster.x-k8s.io/v1beta1), the alternative to
Cilium's annotations: a `ServiceExport` for every global Service a cluster shares, and a
`ServiceImport` for every global Service the cluster uses — the name
`<svc>.<ns>.svc.clusterset.local` resolves to it (KEP-1645): type `ClusterSetIP`, or `Headless`
for a headless Service (`clusterIP: None`), whose name resolves to the pods themselves."""

from __future__ import annotations

from typing import Any

from crossmesh.model.plan import ClusterPlan, Plan

API = "multicluster.x-k8s.io/v1beta1"


def objects(plan: Plan, cluster: ClusterPlan) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for svc in cluster.services:
        if not svc.is_global:
            continue
        if svc.shared:
            out.append(
                {
                    "apiVersion": API,
                    "kind": "ServiceExport",
                    "metadata": {"name": svc.name, "namespace": svc.namespace},
                }
            )
        exporters = sorted(
            c.name
            for c in plan.clusters
            for s in c.services
            if s.namespace == svc.namespace and s.name == svc.name and s.is_global and s.shared
        )
        out.append(
            {
                "apiVersion": API,
                "kind": "ServiceImport",
                "metadata": {
                    "name": svc.name,
                    "namespace": svc.namespace,
                    "annotations": {"crossmesh.io/exported-by": ",".join(exporters)},
                },
                "spec": {
                    "type": "Headless" if svc.headless else "ClusterSetIP",
                    "ports": [
                        {"name": name or f"{proto.lower()}-{port}", "port": port, "protocol": proto}
                        for port, proto, _, name in svc.ports
                    ],
                    "sessionAffinity": "None",
                },
            }
        )
    return out
