"""A small fixed mesh for policy tests: three clusters (two Cilium in one Cluster Mesh, one
Flannel), namespaces with labels, pods with named ports, nodes, and helpers that build a
`PolicyIndex` from policy YAML and evaluate a flow.

Pod names follow the NetworkPolicy recipes (web, api, db, foo, ...) and Cilium's seed 003
(x-wing, rebel-base) so that cases read like the documentation they come from.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address
from typing import Any

import yaml

from crossmesh.model import k8s
from crossmesh.policy.endpoints import node_endpoint, pod_endpoint, world_endpoint
from crossmesh.policy.evaluator import PolicyIndex, Verdict, evaluate
from crossmesh.policy.model import CILIUM_DOMAIN, Endpoint, HttpRequest
from crossmesh.policy.parse import Issue, cluster_policies, parse_manifest

CNI = {"c1": "cilium", "c2": "cilium", "c3": "flannel"}
NODES = {  # name: (cluster, site address, pod-side address)
    "node-a": ("c1", "10.0.0.11", "10.10.0.1"),
    "node-b": ("c1", "10.0.0.12", "10.10.1.1"),
    "node-c": ("c2", "10.0.1.11", "10.11.0.1"),
    "node-d": ("c3", "10.0.2.11", "10.12.0.1"),
}
NAMESPACES = {  # (cluster, namespace): labels of its Namespace manifest
    ("c1", "prod"): {"purpose": "production"},
    ("c1", "ops"): {"team": "operations"},
    ("c1", "alice"): {"user": "alice"},
}
HTTP = (80, "TCP", "http")
PODS: list[tuple[str, str, str, dict[str, str], tuple[tuple[int, str, str], ...]]] = [
    # ref, node, address, labels, ports (port, protocol, name)
    ("c1/default/web-0", "node-a", "10.10.0.2", {"app": "web"}, (HTTP,)),
    ("c1/default/api-0", "node-a", "10.10.0.3", {"app": "bookstore", "role": "api"}, ((8080, "TCP", "http"),)),
    ("c1/default/db-0", "node-b", "10.10.1.2", {"app": "bookstore", "role": "db"}, ((6379, "TCP", "redis"),)),
    ("c1/default/search-0", "node-b", "10.10.1.3", {"app": "bookstore", "role": "search"}, ()),
    ("c1/default/inventory-0", "node-b", "10.10.1.4", {"app": "inventory", "role": "web"}, ()),
    ("c1/default/foo-0", "node-a", "10.10.0.4", {"app": "foo"}, ()),
    ("c1/default/client-0", "node-a", "10.10.0.5", {"app": "client", "role": "client"}, ()),
    ("c1/default/monitor-0", "node-b", "10.10.1.5", {"role": "monitoring", "type": "monitoring"}, ()),
    ("c1/default/apiserver-0", "node-b", "10.10.1.6", {"app": "apiserver"}, ((5000, "TCP", "api"),)),
    ("c1/default/x-wing-0", "node-a", "10.10.0.6", {"name": "x-wing"}, ()),
    ("c1/default/rebel-base-0", "node-b", "10.10.1.7", {"name": "rebel-base"}, (HTTP,)),
    ("c1/other/client-0", "node-a", "10.10.0.7", {"app": "client"}, ()),
    ("c1/other/bookstore-0", "node-a", "10.10.0.8", {"app": "bookstore"}, ()),
    ("c1/prod/client-0", "node-b", "10.10.1.8", {"app": "client"}, ()),
    ("c1/ops/monitor-0", "node-b", "10.10.1.9", {"type": "monitoring"}, ()),
    ("c1/ops/other-0", "node-b", "10.10.1.10", {"type": "other"}, ()),
    ("c1/alice/client-0", "node-a", "10.10.0.9", {"role": "client"}, ()),
    ("c1/alice/server-0", "node-a", "10.10.0.10", {"role": "server"}, ()),
    (
        "c1/kube-system/coredns-0",
        "node-b",
        "10.10.1.11",
        {"k8s-app": "kube-dns"},
        ((53, "UDP", "dns"), (53, "TCP", "dns-tcp")),
    ),
    ("c2/default/rebel-base-0", "node-c", "10.11.0.2", {"name": "rebel-base"}, (HTTP,)),
    ("c2/default/x-wing-0", "node-c", "10.11.0.3", {"name": "x-wing"}, ()),
    ("c2/default/web-0", "node-c", "10.11.0.4", {"app": "web"}, (HTTP,)),
    ("c3/default/legacy-0", "node-d", "10.12.0.2", {"app": "legacy"}, ()),
    ("c3/default/web-0", "node-d", "10.12.0.3", {"app": "web"}, (HTTP,)),
]


def endpoints() -> list[Endpoint]:
    out = []
    for ref, node, address, labels, ports in PODS:
        cluster, namespace, name = ref.split("/")
        out.append(
            pod_endpoint(
                cluster=cluster,
                namespace=namespace,
                name=name,
                labels=labels,
                node=node,
                address=ip_address(address),
                namespace_labels=NAMESPACES.get((cluster, namespace), {}),
                ports=ports,
            )
        )
    for name, (cluster, site, pod_side) in NODES.items():
        out.append(node_endpoint(name=name, cluster=cluster, addresses=(ip_address(site), ip_address(pod_side))))
    return out


def manifests(text: str, *, file: str = "policy.yaml") -> list[k8s.Manifest]:
    """Typed manifests from YAML text, as the loader makes them (namespace defaults to `default`)."""
    out = []
    for raw in yaml.safe_load_all(text):
        if raw is None:
            continue
        kind = raw["kind"]
        obj = k8s.MODELS[kind].model_validate(raw)
        clusterwide = kind in ("CiliumClusterwideNetworkPolicy", "Namespace")
        namespace = "" if clusterwide else str(raw["metadata"].get("namespace") or "default")
        out.append(k8s.Manifest(file, 1, kind, raw["metadata"]["name"], namespace, raw, obj))
    return out


def issues(text: str) -> list[Issue]:
    return [i for m in manifests(text) for i in parse_manifest(m, cluster="c1")[1]]


def build(policies: Iterable[tuple[str, str]]) -> PolicyIndex:
    """An index over the fixed pods with `policies` given as (cluster, YAML) pairs; errors fail the test."""
    found = []
    for cluster, text in policies:
        objects = manifests(text)
        errors = [i for m in objects for i in parse_manifest(m, cluster=cluster)[1] if i.severity == "error"]
        assert errors == [], errors
        found.extend(cluster_policies(cluster, objects, cilium=CNI[cluster] == "cilium"))
    domains = {c: CILIUM_DOMAIN if cni == "cilium" else f"cluster {c}" for c, cni in CNI.items()}
    return PolicyIndex(found, endpoints(), domains)


def endpoint(index: PolicyIndex, ref: str) -> Endpoint:
    if ref in index.endpoints:
        return index.endpoints[ref]
    addr = ip_address(ref)
    return index.by_address.get(addr) or world_endpoint(addr)


def flow(index: PolicyIndex, src: str, dst: str, port: str = "80/TCP", http: tuple[Any, ...] | None = None) -> Verdict:
    number, proto = port.split("/")
    request = None
    if http is not None:
        method, path, *headers = http
        request = HttpRequest(method, path, tuple(tuple(h.split(": ", 1)) for h in headers))  # type: ignore[misc]
    return evaluate(index, endpoint(index, src), endpoint(index, dst), int(number), proto, request)
