"""Pods and nodes of a plan as policy endpoints, and the index over a whole mesh.

A pod's identity labels are built as Cilium builds them: its own labels, its
namespace, cluster and service account, and the labels of its namespace (from the
cluster's `Namespace` manifests; a namespace without one still carries
`kubernetes.io/metadata.name`, which the API server sets on every namespace).

Identity domains: Cilium clusters joined by Cluster Mesh share identities, so a pod
of one is matched by labels in the others. A cluster with another CNI knows only its
own pods; everything else reaches it as plain addresses (world).
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, ip_address

from crossmesh.model import k8s
from crossmesh.model.plan import Plan
from crossmesh.plan.workloads import expand_pods
from crossmesh.policy.evaluator import PolicyIndex
from crossmesh.policy.model import (
    CILIUM_DOMAIN,
    CLUSTER_LABEL,
    NS_LABEL,
    NS_LABELS_PREFIX,
    NS_NAME_LABEL,
    SA_LABEL,
    Address,
    Endpoint,
    EndpointKind,
)
from crossmesh.policy.parse import cluster_policies


def namespace_labels(manifests: list[k8s.Manifest]) -> dict[str, dict[str, str]]:
    """Labels of each namespace declared by a `Namespace` manifest, with its name label."""
    out: dict[str, dict[str, str]] = {}
    for m in manifests:
        if isinstance(m.obj, k8s.Namespace):
            out[m.name] = {**m.obj.metadata.labels, NS_NAME_LABEL: m.name}
    return out


def identity_labels(
    *,
    cluster: str,
    namespace: str,
    labels: Mapping[str, str],
    namespace_labels: Mapping[str, str],
    service_account: str = "default",
) -> dict[str, str]:
    out = dict(labels)
    for key, value in namespace_labels.items():
        out[NS_LABELS_PREFIX + key] = value
    out.setdefault(NS_LABELS_PREFIX + NS_NAME_LABEL, namespace)
    out[NS_LABEL] = namespace
    out[CLUSTER_LABEL] = cluster
    out[SA_LABEL] = service_account
    return out


def pod_endpoint(  # noqa: PLR0913 - the parts of a pod that policy reads
    *,
    cluster: str,
    namespace: str,
    name: str,
    labels: Mapping[str, str],
    node: str = "",
    address: Address | None = None,
    namespace_labels: Mapping[str, str] | None = None,
    service_account: str = "default",
    ports: tuple[tuple[int, str, str], ...] = (),
) -> Endpoint:
    """A pod; `ports` are (port, protocol, name) as in the plan (name "" when unnamed)."""
    return Endpoint(
        kind=EndpointKind.POD,
        ref=f"{cluster}/{namespace}/{name}",
        cluster=cluster,
        namespace=namespace,
        node=node,
        addresses=() if address is None else (address,),
        labels=identity_labels(
            cluster=cluster,
            namespace=namespace,
            labels=labels,
            namespace_labels=namespace_labels or {},
            service_account=service_account,
        ),
        named_ports={n: (p, proto) for p, proto, n in ports if n},
    )


def node_endpoint(*, name: str, cluster: str, addresses: tuple[Address, ...]) -> Endpoint:
    return Endpoint(kind=EndpointKind.NODE, ref=name, cluster=cluster, node=name, addresses=addresses)


def world_endpoint(address: Address | str) -> Endpoint:
    addr = ip_address(address) if isinstance(address, str) else address
    return Endpoint(kind=EndpointKind.WORLD, ref=str(addr), addresses=(addr,))


def mesh_endpoints(plan: Plan, manifests: Mapping[str, list[k8s.Manifest]]) -> list[Endpoint]:
    """Every pod and node of the plan."""
    out: list[Endpoint] = []
    for c in plan.clusters:
        objects = manifests.get(c.name, [])
        ns_labels = namespace_labels(objects)
        accounts = {pod.ref: pod.service_account for pod, _ in expand_pods(c.name, objects, list(c.nodes))}
        for p in c.pods:
            out.append(
                pod_endpoint(
                    cluster=c.name,
                    namespace=p.namespace,
                    name=p.name,
                    labels=dict(p.labels),
                    node=p.node,
                    address=p.address,
                    namespace_labels=ns_labels.get(p.namespace, {}),
                    service_account=accounts.get(p.ref, "default"),
                    ports=p.ports,
                )
            )
    for n in plan.nodes:
        pod_side: IPv4Address = n.pod_cidr.network_address + 1  # the node's address on its pods' side
        out.append(node_endpoint(name=n.name, cluster=n.cluster, addresses=(n.address, pod_side)))
    return out


def identity_domains(plan: Plan) -> dict[str, str]:
    return {c.name: CILIUM_DOMAIN if c.cni == "cilium" else f"cluster {c.name}" for c in plan.clusters}


def mesh_index(plan: Plan, manifests: Mapping[str, list[k8s.Manifest]]) -> PolicyIndex:
    """The policy index of a planned mesh: every enforced policy, pod and node."""
    policies = []
    for c in plan.clusters:
        policies.extend(cluster_policies(c.name, manifests.get(c.name, []), cilium=c.cni == "cilium"))
    return PolicyIndex(policies, mesh_endpoints(plan, manifests), identity_domains(plan))
