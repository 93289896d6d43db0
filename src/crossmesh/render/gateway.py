"""The Gateway API objects of a cluster as a real cluster takes them, with Istio as the Gateway API
implementation (gatewayClassName `istio`; docs/ingress.md deploys them).

Istio deploys each Gateway itself ("automated deployment"): a Deployment and a LoadBalancer Service
named `<gateway>-istio`, the Service's ports the listeners' ports. What crossmesh's own annotations
say is translated into what Istio understands, and the annotations are dropped:

- `crossmesh.io/certificate: mesh` (or the listener's `tls.options` entry): the listener's
  certificate comes from the mesh's ingress CA (`state.ingresspki`). It is rendered as a
  `kubernetes.io/tls` Secret `<gateway>-<listener>-mesh-tls` beside the Gateway (tls-secrets.yaml,
  0600: it holds the key), and the listener's `certificateRefs` name it.
- `crossmesh.io/nodes: "a,b"`: one gateway pod on each listed node. Istio takes per-Gateway
  overrides of the objects it generates from a ConfigMap named by `spec.infrastructure.parametersRef`,
  whose `deployment` key is merged into the Deployment ("Resource Customization" of
  https://istio.io/latest/docs/tasks/traffic-management/ingress/gateway-api/#automated-deployment;
  the same ConfigMap keys — deployment, service, horizontalPodAutoscaler, podDisruptionBudget — and
  `parametersRef: {group: "", kind: ConfigMap, name: ...}` in Microsoft's guide to the Istio add-on,
  https://learn.microsoft.com/en-us/azure/aks/istio-gateway-api). The overlay sets `replicas` to the
  number of nodes, a required node affinity on `kubernetes.io/hostname` In those nodes, and a
  required pod anti-affinity on the same key, so no node gets two.

The cloud's load balancer: Gateway API's `spec.infrastructure.annotations` are put on every object
the implementation makes for the Gateway, its Service included
(https://gateway-api.sigs.k8s.io/guides/infrastructure/). Per provider of the sites the gateway pods
run in, the annotations that make the Service an internet-facing layer-4 load balancer to the node
ports (`LOAD_BALANCER_ANNOTATIONS`, each with its source). A gateway whose pods may run in sites of
different providers, or on bare metal, gets none: there the site router publishes it.

The user's HTTPRoutes are rendered as written, namespace made explicit (as crossmesh read them), so
that they land beside their Gateway whatever `kubectl -n` says; they leave manifests.yaml, which is
applied before the Gateway API CRDs exist.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from crossmesh.gateway import parse as gateway_parse
from crossmesh.gateway.model import CERTIFICATE_ANNOTATION, Gateway
from crossmesh.identity.ingress import TLS_SECRET_TYPE, ListenerId
from crossmesh.model.k8s import Manifest
from crossmesh.model.mesh import Provider
from crossmesh.model.plan import ClusterPlan, Plan
from crossmesh.model.tls import IngressCert
from crossmesh.render.files import RenderedFile, yaml_dump

NODES_ANNOTATION = "crossmesh.io/nodes"
CROSSMESH_ANNOTATIONS = (CERTIFICATE_ANNOTATION, NODES_ANNOTATION)
HOSTNAME_LABEL = "kubernetes.io/hostname"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"  # Istio labels each gateway pod with it
SERVICE_SUFFIX = "-istio"  # Istio names a Gateway's Deployment and Service <gateway>-istio
MAX_NAME = 253

# Per provider: the Service annotations of an internet-facing L4 load balancer to the node ports.
LOAD_BALANCER_ANNOTATIONS: dict[Provider, dict[str, str]] = {
    # AWS Load Balancer Controller: an NLB (type external), targets the nodes' node ports (instance),
    # internet-facing (its default is internal since v2.2).
    # https://kubernetes-sigs.github.io/aws-load-balancer-controller/latest/guide/service/nlb/
    # https://kubernetes-sigs.github.io/aws-load-balancer-controller/latest/guide/service/annotations/
    Provider.AWS: {
        "service.beta.kubernetes.io/aws-load-balancer-type": "external",
        "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "instance",
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing",
        # Client IP preservation off: the nodes see the NLB's private addresses, so the security group
        # admits the node port from the VPC only (plan/prerequisites.py) and a node's public address
        # does not publish it. https://docs.aws.amazon.com/elasticloadbalancing/latest/network/edit-target-group-attributes.html
        "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes": "preserve_client_ip.enabled=false",
    },
    # cloud-provider-azure: public unless internal is "true"; stated so that a copied manifest
    # does not inherit an internal setting. https://kubernetes-sigs.github.io/cloud-provider-azure/topics/loadbalancer/
    Provider.AZURE: {"service.beta.kubernetes.io/azure-load-balancer-internal": "false"},
    # GKE: a backend service-based external passthrough Network Load Balancer.
    # https://cloud.google.com/kubernetes-engine/docs/how-to/external-svc-lb-rbs
    Provider.GCP: {"cloud.google.com/l4-rbs": "enabled"},
    # cloud-provider-openstack (Octavia): external unless internal is "true"; the floating network
    # is the cloud's own (loadbalancer.openstack.org/floating-network-id, docs/ingress.md).
    # https://github.com/kubernetes/cloud-provider-openstack/blob/master/docs/openstack-cloud-controller-manager/expose-applications-using-loadbalancer-type-service.md
    Provider.OPENSTACK: {"service.beta.kubernetes.io/openstack-internal-load-balancer": "false"},
}


def is_gateway_api(m: Manifest) -> bool:
    """A Gateway or HTTPRoute of Gateway API (not Istio's own networking.istio.io Gateway)."""
    group = str(m.raw.get("apiVersion", "")).split("/", 1)[0]
    return m.kind in gateway_parse.KINDS and group == gateway_parse.GROUP


def service_name(gateway: str) -> str:
    """The Deployment and Service Istio makes for a Gateway."""
    return f"{gateway}{SERVICE_SUFFIX}"


def pinned_nodes(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The nodes `crossmesh.io/nodes` names, in its order, each once; () without it."""
    annotations = (raw.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(NODES_ANNOTATION) if isinstance(annotations, Mapping) else None
    if not isinstance(value, str):
        return ()
    return tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))


def secret_name(gateway: str, listener: str) -> str:
    """`<gateway>-<listener>-mesh-tls`, cut with a hash when past Kubernetes' 253 characters."""
    name = f"{gateway}-{listener}-mesh-tls"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME - 20]}-{digest}-mesh-tls"


def options_name(gateway: str) -> str:
    return f"{gateway}-crossmesh-options"[:MAX_NAME]


def providers(plan: Plan, cluster: ClusterPlan, nodes: Sequence[str]) -> set[Provider]:
    """The providers of the sites the gateway's pods may run in: its nodes', or the cluster's."""
    sites = {plan.node(n).site for n in nodes if n in cluster.nodes} if nodes else set(cluster.sites)
    return {plan.site(s).provider for s in sites}


def load_balancer_annotations(found: set[Provider]) -> dict[str, str]:
    """The Service annotations for one cloud; none for bare metal or a mix of providers."""
    if len(found) != 1:
        return {}
    return dict(LOAD_BALANCER_ANNOTATIONS.get(next(iter(found)), {}))


def deployment_overlay(gateway: str, nodes: Sequence[str]) -> dict[str, Any]:
    """What Istio merges into the gateway's Deployment: one pod per node, on those nodes only."""
    term = {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": list(nodes)}]}
    spread = {"labelSelector": {"matchLabels": {GATEWAY_NAME_LABEL: gateway}}, "topologyKey": HOSTNAME_LABEL}
    return {
        "spec": {
            "replicas": len(nodes),
            "template": {
                "spec": {
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
                        },
                        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [spread]},
                    }
                }
            },
        }
    }


def options_config_map(gw: Gateway, nodes: Sequence[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": options_name(gw.name), "namespace": gw.namespace, "labels": _managed()},
        "data": {"deployment": yaml_dump(deployment_overlay(gw.name, nodes))},
    }


def tls_secret(cert: IngressCert) -> dict[str, Any]:
    """The listener's certificate as the Secret its certificateRefs names."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": TLS_SECRET_TYPE,
        "metadata": {
            "name": secret_name(cert.gateway, cert.listener),
            "namespace": cert.namespace,
            "labels": _managed(),
            "annotations": {"crossmesh.io/certificate-names": ",".join(cert.names)},
        },
        "data": {"tls.crt": _b64(cert.cert_pem), "tls.key": _b64(cert.key_pem)},
    }


def gateway_object(m: Manifest, gw: Gateway, *, annotations: Mapping[str, str], nodes: Sequence[str]) -> dict[str, Any]:
    """The user's Gateway with crossmesh's annotations turned into Istio's terms (module docstring)."""
    raw = copy.deepcopy(m.raw)
    meta = raw.setdefault("metadata", {})
    meta["namespace"] = gw.namespace
    kept = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in CROSSMESH_ANNOTATIONS}
    if kept:
        meta["annotations"] = kept
    else:
        meta.pop("annotations", None)
    spec = raw["spec"]
    for item in spec.get("listeners", []):
        listener = gw.listener(item.get("name"))
        if listener is None or listener.tls is None or not listener.tls.mesh:
            continue
        tls = item.setdefault("tls", {})
        options = {k: v for k, v in (tls.get("options") or {}).items() if k != CERTIFICATE_ANNOTATION}
        if options:
            tls["options"] = options
        else:
            tls.pop("options", None)
        tls["mode"] = "Terminate"
        tls["certificateRefs"] = [{"group": "", "kind": "Secret", "name": secret_name(gw.name, listener.name)}]
    infrastructure: dict[str, Any] = {}
    if annotations:
        infrastructure["annotations"] = dict(annotations)
    if nodes:
        infrastructure["parametersRef"] = {"group": "", "kind": "ConfigMap", "name": options_name(gw.name)}
    if infrastructure:
        spec["infrastructure"] = infrastructure
    return raw


def route_object(m: Manifest) -> dict[str, Any]:
    raw = copy.deepcopy(m.raw)
    raw.setdefault("metadata", {})["namespace"] = m.namespace or "default"
    return raw


def files(
    plan: Plan, cluster: ClusterPlan, manifests: Sequence[Manifest], certs: Mapping[ListenerId, IngressCert]
) -> dict[str, RenderedFile]:
    """Every file of clusters/<cluster>/gateway/ (relative to it); none without a Gateway API object."""
    objects = sorted((m for m in manifests if is_gateway_api(m)), key=lambda m: (m.kind, m.namespace, m.name))
    if not objects:
        return {}
    secrets: list[dict[str, Any]] = []
    options: list[dict[str, Any]] = []
    gateways: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    clouds: list[str] = []
    for m in objects:
        if m.kind == "HTTPRoute":
            routes.append(route_object(m))
            continue
        gw, _ = gateway_parse.parse_manifest(m)
        if not isinstance(gw, Gateway):
            raise ValueError(f"{m.file}:{m.line}: Gateway {m.name} is not valid: nothing to render for it")
        nodes = pinned_nodes(m.raw)
        found = providers(plan, cluster, nodes)
        annotations = load_balancer_annotations(found)
        clouds.append(
            f"{gw.ref}: Service {service_name(gw.name)} — "
            + (f"load balancer annotations of {next(iter(found)).value}" if annotations else _why_none(found))
        )
        for li in gw.listeners:
            if li.tls is not None and li.tls.mesh:
                lid = ListenerId(cluster.name, gw.namespace, gw.name, li.name)
                cert = certs.get(lid)
                if cert is None:
                    raise ValueError(f"listener {lid.ref}: no certificate from the ingress CA was given to render")
                secrets.append(tls_secret(cert))
        if nodes:
            options.append(options_config_map(gw, nodes))
        gateways.append(gateway_object(m, gw, annotations=annotations, nodes=nodes))
    name = cluster.name
    out: dict[str, RenderedFile] = {}
    if secrets:
        out["tls-secrets.yaml"] = RenderedFile(
            _header(
                f"crossmesh {plan.mesh}: server certificates of cluster {name}'s gateway listeners from the mesh's",
                "ingress CA, WITH THEIR PRIVATE KEYS: keep 0600. Apply before gateways.yaml (docs/ingress.md).",
            )
            + yaml_dump(*secrets),
            0o600,
            True,
        )
    if gateways:
        out["gateways.yaml"] = RenderedFile(
            _header(
                f"crossmesh {plan.mesh}: the Gateways of cluster {name} for Istio's Gateway API implementation",
                "(gatewayClassName istio), with each gateway's Deployment overrides (ConfigMaps). Apply after the",
                "Gateway API CRDs, istiod and tls-secrets.yaml (docs/ingress.md). The cloud load balancers:",
                *clouds,
            )
            + yaml_dump(*options, *gateways)
        )
    if routes:
        out["httproutes.yaml"] = RenderedFile(
            _header(f"crossmesh {plan.mesh}: the HTTPRoutes of cluster {name}, applied after gateways.yaml.")
            + yaml_dump(*routes)
        )
    return out


def tree(
    plan: Plan, manifests: Mapping[str, list[Manifest]], certs: Mapping[ListenerId, IngressCert]
) -> dict[str, RenderedFile]:
    """clusters/<cluster>/gateway/... for every cluster whose manifests hold Gateway API objects."""
    return {
        f"clusters/{c.name}/gateway/{rel}": f
        for c in plan.clusters
        for rel, f in files(plan, c, manifests.get(c.name, []), certs).items()
    }


def _why_none(found: set[Provider]) -> str:
    if len(found) > 1:
        kinds = ", ".join(sorted(p.value for p in found))
        return f"no load balancer annotations: its pods may run in sites of several providers ({kinds})"
    return "no load balancer annotations: bare metal, the site router publishes it"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("ascii")).decode("ascii")


def _managed() -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "crossmesh"}


def _header(*lines: str) -> str:
    return "".join(f"# {line}\n" for line in lines)
