"""A small fixed mesh for Istio policy tests: pods with service accounts in a few namespaces of
two clusters, and helpers that build an `IstioIndex` from policy YAML and make requests."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import yaml

from crossmesh.istio import parse
from crossmesh.istio.index import IstioIndex, Request, principal
from crossmesh.model import k8s
from crossmesh.policy.endpoints import pod_endpoint
from crossmesh.policy.model import Endpoint

TRUST_DOMAIN = "cluster.local"
PODS = [  # ref, address, labels, service account
    ("c1/default/web-0", "10.10.0.2", {"app": "web"}, "web"),
    ("c1/default/x-wing-0", "10.10.0.3", {"name": "x-wing"}, "x-wing"),
    ("c1/default/rebel-base-0", "10.10.0.4", {"name": "rebel-base"}, "rebel-base"),
    ("c1/empire/tie-0", "10.10.1.2", {"name": "tie"}, "tie"),
    ("c1/foo/client-0", "10.10.1.3", {"app": "client"}, "default"),
    ("c1/istio-system/ingress-0", "10.10.2.2", {"app": "istio-ingressgateway"}, "ingress"),
    ("c2/default/web-0", "10.11.0.2", {"app": "web"}, "web"),
    ("c2/default/x-wing-0", "10.11.0.3", {"name": "x-wing"}, "x-wing"),
]


def endpoints() -> dict[str, Endpoint]:
    out = {}
    for ref, address, labels, account in PODS:
        cluster, namespace, name = ref.split("/")
        out[ref] = pod_endpoint(
            cluster=cluster,
            namespace=namespace,
            name=name,
            labels=labels,
            address=ip_address(address),
            service_account=account,
        )
    return out


EPS = endpoints()


def manifests(text: str) -> list[k8s.Manifest]:
    out = []
    for raw in yaml.safe_load_all(text):
        if raw is None:
            continue
        obj = k8s.MODELS[raw["kind"]].model_validate(raw)
        namespace = str(raw["metadata"].get("namespace") or "default")
        out.append(k8s.Manifest("policy.yaml", 1, raw["kind"], raw["metadata"]["name"], namespace, raw, obj))
    return out


def doc(kind: str, name: str, spec: dict[str, Any], namespace: str = "default") -> str:
    meta = {"name": name, "namespace": namespace}
    return yaml.safe_dump({"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": meta, "spec": spec})


def index(*docs: str, cluster: str = "c1") -> IstioIndex:
    """An index over the given policy documents in `cluster`; any problem fails the test."""
    objects = manifests("---\n".join(docs))
    issues = [i for m in objects for i in parse.check_manifest(m) if i.severity == "error"]
    assert issues == [], issues
    authz, peer = parse.cluster_policies(cluster, objects)
    return IstioIndex(authz, peer)


def request(  # noqa: PLR0913 - the parts of a request
    src: str | None,
    port: int = 80,
    method: str | None = None,
    path: str | None = None,
    *,
    plaintext: bool = False,
    ip: str | None = None,
) -> Request:
    """A request from pod `src` (None: an outside address `ip`), mTLS unless `plaintext`."""
    if src is None:
        return Request(None, None, ip_address(ip or "192.0.2.9"), port, method, path)
    ep = EPS[src]
    who = None if plaintext else principal(ep, TRUST_DOMAIN)
    address = ip_address(ip) if ip else ep.addresses[0]
    return Request(who, None if plaintext else ep.namespace, address, port, method, path)
