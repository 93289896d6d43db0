"""Ingress gateways: what a Gateway API `Gateway` in a cluster's manifests makes the cluster run.

crossmesh follows Istio's Gateway API implementation (gatewayClassName `istio`, "automated
deployment"): for each Gateway the control plane creates a Deployment and a Service of type
LoadBalancer, both named `<gateway>-istio`, in the Gateway's namespace. The pods carry the label
`gateway.networking.k8s.io/gateway-name: <gateway>` and run as ServiceAccount `<gateway>-istio`,
so their mesh identity is `spiffe://<trust domain>/ns/<ns>/sa/<gateway>-istio`; the Service's
ports are the listeners' ports. The planner adds these implied objects to the cluster's
manifests before it places pods and allocates addresses and node ports, so a gateway's pods and
Service are pods and a Service like any other: policies select them, the Service NAT and the
mesh proxy carry them, `render` and the lab agree on their addresses.

Where the pods run: the Gateway's annotation `crossmesh.io/nodes: "a,b"` pins one pod to each
node named (rendered as Istio's Deployment overlay with a node affinity); without it there is one
replica, placed as any Deployment is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crossmesh.gateway.model import Gateway
from crossmesh.gateway.parse import cluster_objects
from crossmesh.model import k8s
from crossmesh.model.plan import ClusterPlan, IngressListener, IngressPlan, PodPlan
from crossmesh.plan.workloads import PlacementError

NODES_ANNOTATION = "crossmesh.io/nodes"
IMPLIED_ANNOTATION = "crossmesh.io/implied-by"  # on the objects a Gateway implies: "Gateway <ns>/<name>"
GATEWAY_LABEL = "gateway.networking.k8s.io/gateway-name"
SUFFIX = "-istio"  # Istio's name for a Gateway's Deployment, Service and ServiceAccount


def gateway_of(pod: PodPlan) -> str | None:
    """The Gateway (its name, in the pod's namespace) whose pod `pod` is, or None. Such a pod runs
    the gateway's proxy instead of an app, and no mesh proxy takes its inbound connections (Istio
    injects no sidecar into a gateway: the gateway is the proxy)."""
    return dict(pod.labels).get(GATEWAY_LABEL)


def service_name(gateway: str) -> str:
    return f"{gateway}{SUFFIX}"


def port_name(protocol: str, port: int) -> str:
    return f"{protocol.lower()}-{port}"


def _nodes(m: k8s.Manifest, cluster_nodes: Sequence[str]) -> list[str]:
    """The nodes the annotation pins the gateway's pods to (none: not pinned)."""
    raw = ((m.raw.get("metadata") or {}).get("annotations") or {}).get(NODES_ANNOTATION)
    if raw is None:
        return []
    names = [n.strip() for n in str(raw).split(",") if n.strip()]
    path = ("metadata", "annotations", NODES_ANNOTATION)
    unknown = [n for n in names if n not in cluster_nodes]
    if not names or unknown:
        what = f"node {', '.join(unknown)} is not" if unknown else "it names no node"
        raise PlacementError(
            m,
            path,
            f"{NODES_ANNOTATION} of Gateway {m.namespace}/{m.name}: {what} in the cluster — "
            f"name nodes of the cluster, comma-separated ({', '.join(sorted(cluster_nodes))})",
        )
    if len(set(names)) != len(names):
        raise PlacementError(m, path, f"{NODES_ANNOTATION} names a node twice — name each node once")
    return names


def _ports(gw: Gateway) -> list[dict[str, Any]]:
    seen: dict[int, str] = {}
    for li in gw.listeners:
        seen.setdefault(li.port, li.protocol.value)
    return [{"port": p, "protocol": "TCP", "name": port_name(proto, p)} for p, proto in sorted(seen.items())]


def _implied_objects(m: k8s.Manifest, gw: Gateway, pinned: list[str]) -> list[k8s.Manifest]:
    name = service_name(gw.name)
    labels = {GATEWAY_LABEL: gw.name}
    ports = _ports(gw)
    pod_spec = {
        "serviceAccountName": name,
        "containers": [
            {
                "name": "istio-proxy",
                "image": "auto",  # Istio injects its proxy image into a gateway's Deployment
                "ports": [{"containerPort": p["port"], "name": p["name"]} for p in ports],
            }
        ],
    }
    implied = {IMPLIED_ANNOTATION: f"Gateway {gw.namespace}/{gw.name}"}
    meta = {"name": name, "namespace": gw.namespace, "labels": dict(labels), "annotations": implied}
    workloads: list[dict[str, Any]]
    if pinned:
        workloads = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-{i}",
                    "namespace": gw.namespace,
                    "labels": dict(labels),
                    "annotations": implied,
                },
                "spec": {**pod_spec, "nodeName": node},
            }
            for i, node in enumerate(pinned)
        ]
    else:
        workloads = [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": meta,
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": dict(labels)},
                    "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
                },
            }
        ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "LoadBalancer",
            "selector": dict(labels),
            "ports": [{**p, "targetPort": p["port"]} for p in ports],
        },
    }
    out = []
    for raw in [*workloads, service]:
        model = k8s.model_for(raw["kind"], raw["apiVersion"])
        assert model is not None  # Pod, Deployment and Service are modelled kinds
        obj = model.model_validate(raw)
        # The implied objects point at the Gateway they come from: an error about them is the Gateway's.
        out.append(
            k8s.Manifest(
                m.file, m.line, raw["kind"], raw["metadata"]["name"], gw.namespace, raw, obj, m.positions, m.base
            )
        )
    return out


def is_implied(m: k8s.Manifest) -> bool:
    """Whether `m` is an object a Gateway implies (Istio makes it in a real cluster: `render` leaves
    it out of the manifests to apply)."""
    return IMPLIED_ANNOTATION in ((m.raw.get("metadata") or {}).get("annotations") or {})


def implied_manifests(manifests: list[k8s.Manifest], nodes: Sequence[str]) -> list[k8s.Manifest]:
    """The Deployment (or pinned Pods) and LoadBalancer Service each valid Gateway of a cluster
    implies. Raises PlacementError at the Gateway when its node annotation is wrong or one of its
    objects' names is taken by the user's own manifests."""
    if any(is_implied(m) for m in manifests):
        return []  # already added (`workspace.check` adds them once, for every reader of the manifests)
    gateways, _ = cluster_objects(manifests)
    sources = {(m.namespace, m.name): m for m in manifests if m.kind == "Gateway"}
    taken = {(m.kind, m.namespace, m.name) for m in manifests}
    out: list[k8s.Manifest] = []
    for gw in gateways:
        m = sources[(gw.namespace, gw.name)]
        pinned = _nodes(m, nodes)
        implied = _implied_objects(m, gw, pinned)
        clash = next((o for o in implied if (o.kind, o.namespace, o.name) in taken), None)
        if clash is not None:
            raise PlacementError(
                m,
                ("metadata", "name"),
                f"Gateway {gw.ref} implies a {clash.kind} {clash.namespace}/{clash.name} (Istio's gateway "
                "deployment), and the manifests have their own — rename the Gateway or the other object",
            )
        out += implied
    return out


def ingress_plans(
    clusters: Sequence[ClusterPlan], manifests: dict[str, list[k8s.Manifest]] | None
) -> tuple[IngressPlan, ...]:
    """Every cluster's gateways, with their pods, nodes and node ports (from the planned Service)."""
    out = []
    for c in clusters:
        gateways, _ = cluster_objects((manifests or {}).get(c.name, []))
        services = {(s.namespace, s.name): s for s in c.services}
        for gw in gateways:
            name = service_name(gw.name)
            svc = services.get((gw.namespace, name))
            if svc is None:
                continue
            pods = sorted(
                (p for p in c.pods if p.namespace == gw.namespace and gateway_of(p) == gw.name),
                key=lambda p: p.name,
            )
            listeners = tuple(
                IngressListener(li.name, li.port, li.protocol.value, li.hostname, svc.node_port(li.port, "TCP") or 0)
                for li in gw.listeners
            )
            out.append(
                IngressPlan(
                    cluster=c.name,
                    namespace=gw.namespace,
                    name=gw.name,
                    service=name,
                    nodes=tuple(sorted({p.node for p in pods})),
                    pods=tuple(p.ref for p in pods),
                    listeners=listeners,
                )
            )
    return tuple(out)
