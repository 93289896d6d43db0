"""What an Istio multi-primary install across the mesh's clusters needs, per cluster (Istio 1.30).

Why ONE network. Istio's multi-cluster models differ in how a sidecar reaches a pod of another
cluster: directly ("Install Multi-Primary", same network) or through the other cluster's east-west
gateway on 15443 ("Install Multi-Primary on different networks"). crossmesh gives every cluster's
pods direct routes to every other cluster's pods (WireGuard between sites, Cilium ClusterMesh
between clusters), so every cluster is rendered as a primary on the one network `network(plan)`:
each istiod discovers the other clusters' endpoints through remote secrets (their API servers) and
sidecar-to-sidecar mTLS goes pod to pod, exactly what the lab's proxies do. The east-west gateway
files are rendered too, under `east-west/`, for the day a cluster is put on a network of its own
(its pods no longer routed): they are not installed otherwise.

Trust across clusters is Istio's "plug-in CA" model: one mesh root and one intermediate per cluster
(`IstioCA`, issued in the state directory), given to each cluster's istiod as the Secret `cacerts`
with Istio's file names (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem). istiod mounts it
when it exists at start, so it is applied before istiod is installed.

Certificate lifetime (`spec.istio.workloadCertTTL`): the proxy asks for SECRET_TTL and renews at
SECRET_GRACE_PERIOD_RATIO of it (pilot-agent, pilot/cmd/pilot-agent/options/options.go), set for
every proxy through `meshConfig.defaultConfig.proxyMetadata` (the injector turns it into the
proxy's env); istiod signs for DEFAULT_WORKLOAD_CERT_TTL when a request names no lifetime and never
for more than MAX_WORKLOAD_CERT_TTL (pilot/pkg/bootstrap/istio_ca.go): both are the same lifetime,
so no proxy gets a longer certificate than the mesh file says.

Remote secrets: `istioctl create-remote-secret` reads a token of the other cluster's
istio-reader-service-account, which crossmesh does not have. remote-secrets.yaml is that command's
Secret with a clearly named placeholder for the token and the API server's CA, and
create-remote-secrets.sh runs the command for each other cluster with the server address the plan
knows. The API server is taken to be on the first node the mesh file lists for the cluster, port
6443 (kubeadm, K3s and Talos all serve there); a managed cluster's endpoint is the cloud's, so the
command keeps the one of the kube context.

Injection: `sidecarInjectorWebhook.enableNamespacesByDefault` puts every pod of every namespace in
the mesh (as in the lab), except kube-system and those labelled `istio-injection=disabled`.
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from crossmesh.model.k8s import Manifest
from crossmesh.model.plan import MANAGED_DISTRIBUTIONS, ClusterPlan, IstioPlan, Plan
from crossmesh.model.tls import IstioCA
from crossmesh.render.files import RenderedFile, yaml_dump

ISTIO_NAMESPACE = "istio-system"
API_SERVER_PORT = 6443
READER_SERVICE_ACCOUNT = "istio-reader-service-account"  # istio/base's, for create-remote-secret
MULTICLUSTER_LABEL = "istio/multiCluster"  # pkg/kube/multicluster/secretcontroller.go
CLUSTER_ANNOTATION = "networking.istio.io/cluster"  # istioctl/pkg/multicluster/options.go
NETWORK_LABEL = "topology.istio.io/network"
GRACE_PERIOD_RATIO = "0.5"  # renew at half-life
EAST_WEST_GATEWAY = "istio-eastwestgateway"
EAST_WEST_SELECTOR = {"istio": "eastwestgateway"}  # what the gateway chart derives from its name
EAST_WEST_PORT = 15443
POLICY_KINDS = frozenset({"PeerAuthentication", "AuthorizationPolicy"})
POLICY_GROUP = "security.istio.io"
PLACEHOLDER = "REPLACE-ME"


def network(istio: IstioPlan) -> str:
    """The one network every cluster is on: all pods route to all pods (see the module's doc)."""
    return f"{istio.mesh_id}-network"


def go_duration(value: timedelta) -> str:
    """A Go duration string (`time.ParseDuration`): 24h, 90m, 1h30m, 45s."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"


def _need(plan: Plan) -> IstioPlan:
    if plan.istio is None:
        raise ValueError("the plan has no Istio service mesh (spec.istio): nothing to render for Istio")
    return plan.istio


def _mesh_config(istio: IstioPlan) -> dict[str, Any]:
    ttl = go_duration(istio.cert_ttl)
    return {
        "trustDomain": istio.trust_domain,
        "defaultConfig": {"proxyMetadata": {"SECRET_TTL": ttl, "SECRET_GRACE_PERIOD_RATIO": GRACE_PERIOD_RATIO}},
    }


def _global(istio: IstioPlan, cluster: ClusterPlan) -> dict[str, Any]:
    return {"meshID": istio.mesh_id, "multiCluster": {"clusterName": cluster.name}, "network": network(istio)}


def _istiod_env(istio: IstioPlan) -> dict[str, str]:
    ttl = go_duration(istio.cert_ttl)
    return {"DEFAULT_WORKLOAD_CERT_TTL": ttl, "MAX_WORKLOAD_CERT_TTL": ttl}


def istiod_values(plan: Plan, cluster: ClusterPlan) -> dict[str, Any]:
    """Helm values of the `istio/istiod` chart (its values are top-level: `env`, `meshConfig`,
    `global`, `sidecarInjectorWebhook` — the chart's values.yaml)."""
    istio = _need(plan)
    return {
        "global": _global(istio, cluster),
        "meshConfig": _mesh_config(istio),
        "env": _istiod_env(istio),
        "sidecarInjectorWebhook": {"enableNamespacesByDefault": True},
    }


def istio_operator(plan: Plan, cluster: ClusterPlan) -> dict[str, Any]:
    """The same install as an IstioOperator for `istioctl install -f` (install.istio.io/v1alpha1):
    istioctl gives `values.pilot` to the istiod chart as its top-level values, and `meshConfig`
    as the chart's `meshConfig`."""
    istio = _need(plan)
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"name": f"crossmesh-{cluster.name}", "namespace": ISTIO_NAMESPACE},
        "spec": {
            "profile": "default",
            "meshConfig": _mesh_config(istio),
            "values": {
                "global": _global(istio, cluster),
                "pilot": {"env": _istiod_env(istio)},
                "sidecarInjectorWebhook": {"enableNamespacesByDefault": True},
            },
        },
    }


_PEM = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


def _certificates(*pems: str) -> list[str]:
    """The certificates of PEM texts, in order, each once (normalised: one per block, no blank lines)."""
    out: list[str] = []
    for text in pems:
        for block in _PEM.findall(text):
            norm = "\n".join(line.strip() for line in block.splitlines() if line.strip()) + "\n"
            if norm not in out:
                out.append(norm)
    return out


def cert_chain_pem(ca: IstioCA) -> str:
    """cert-chain.pem as Istio's Makefile.selfsigned.mk makes it: the cluster's intermediate, any CA
    between it and the root, then the root — whether `chain_pem` holds the root or not."""
    root = _certificates(ca.root_cert_pem)
    middle = [c for c in _certificates(ca.cert_pem, ca.chain_pem) if c not in root]
    return "".join(middle + root)


def cacerts_objects(plan: Plan, ca: IstioCA) -> list[dict[str, Any]]:
    """The istio-system Namespace (labelled with the cluster's network, as the multi-network guide
    asks; harmless on one network) and the Secret `cacerts` istiod reads its CA from."""
    istio = _need(plan)

    def b64(text: str) -> str:
        return base64.b64encode(text.encode("ascii")).decode("ascii")

    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ISTIO_NAMESPACE, "labels": {NETWORK_LABEL: network(istio)}},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": "cacerts",
                "namespace": ISTIO_NAMESPACE,
                "labels": {"app.kubernetes.io/managed-by": "crossmesh", "app.kubernetes.io/part-of": "istio"},
            },
            "data": {
                "ca-cert.pem": b64("".join(_certificates(ca.cert_pem))),
                "ca-key.pem": b64(ca.key_pem),
                "root-cert.pem": b64("".join(_certificates(ca.root_cert_pem))),
                "cert-chain.pem": b64(cert_chain_pem(ca)),
            },
        },
    ]


def api_server(plan: Plan, cluster: ClusterPlan) -> str | None:
    """https://<address>:6443 of the cluster's first node, or None for a managed cluster (the cloud's)."""
    if cluster.distribution in MANAGED_DISTRIBUTIONS or not cluster.nodes:
        return None
    first = next(n for n in plan.nodes if n.name == cluster.nodes[0])
    return f"https://{first.address}:{API_SERVER_PORT}"


def _kubeconfig(plan: Plan, other: ClusterPlan) -> dict[str, Any]:
    """The kubeconfig istioctl writes (createBaseKubeconfig + bearer token), without the secrets it holds."""
    name = other.name
    server = api_server(plan, other) or f"https://{PLACEHOLDER}-api-server-of-{name}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "certificate-authority-data": f"{PLACEHOLDER}-base64-CA-certificate-of-{name}-API-server",
                    "server": server,
                },
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "preferences": {},
        "users": [{"name": name, "user": {"token": f"{PLACEHOLDER}-token-of-{READER_SERVICE_ACCOUNT}-in-{name}"}}],
    }


def remote_secrets(plan: Plan, cluster: ClusterPlan) -> list[dict[str, Any]]:
    """For each other cluster, the Secret `istioctl create-remote-secret --name <other>` prints
    (istioctl/pkg/multicluster/remote_secret.go), to apply in this cluster: its istiod then reads
    the other cluster's Services and endpoints. The token and CA are placeholders (see the module's doc)."""
    _need(plan)
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": f"istio-remote-secret-{other.name}",
                "namespace": ISTIO_NAMESPACE,
                "labels": {MULTICLUSTER_LABEL: "true"},
                "annotations": {CLUSTER_ANNOTATION: other.name},
            },
            "stringData": {other.name: yaml_dump(_kubeconfig(plan, other))},
        }
        for other in plan.clusters
        if other.name != cluster.name
    ]


def context_variable(cluster: str) -> str:
    """The shell variable naming a cluster's kube context in create-remote-secrets.sh."""
    return "CTX_" + re.sub(r"[^A-Za-z0-9]", "_", cluster).upper()


def create_remote_secrets_script(plan: Plan, cluster: ClusterPlan) -> str:
    """`istioctl create-remote-secret` for each other cluster, applied in this one: the real remote
    secrets (with a reader token) that remote-secrets.yaml stands for."""
    _need(plan)
    others = [c for c in plan.clusters if c.name != cluster.name]
    lines = [
        "#!/bin/sh",
        f"# crossmesh {plan.mesh}: remote secrets of cluster {cluster.name}: one per other cluster, made by",
        "# `istioctl create-remote-secret` with that cluster's istio-reader-service-account token (istio/base",
        f"# installs it) and applied in {cluster.name}, whose istiod then discovers that cluster's endpoints.",
        "# Run after istio/base is installed in every cluster. Kube contexts default to the cluster names;",
        "# set the variables below to override. Generated by `crossmesh render`; safe to run again.",
        "set -eu",
        'ISTIOCTL="${ISTIOCTL:-istioctl}"',
        'KUBECTL="${KUBECTL:-kubectl}"',
    ]
    for c in [cluster, *others]:
        var = context_variable(c.name)
        lines.append(f'{var}="${{{var}:-{c.name}}}"')
    for other in others:
        server = api_server(plan, other)
        flag = (
            f" --server={shlex.quote(server)}" if server else ""  # managed: the API server of the kube context
        )
        if not server:
            lines.append(
                f"# {other.name} is managed ({other.distribution}): its API server is the one of its kube context"
            )
        lines.append(
            f'"$ISTIOCTL" create-remote-secret --context="${context_variable(other.name)}" '
            f"--name={shlex.quote(other.name)}{flag} \\\n"
            f'  | "$KUBECTL" apply --context="${context_variable(cluster.name)}" -f -'
        )
    return "\n".join(lines) + "\n"


def is_policy(m: Manifest) -> bool:
    """A PeerAuthentication or AuthorizationPolicy (security.istio.io): Istio's, applied after its CRDs."""
    group = str(m.raw.get("apiVersion", "")).split("/", 1)[0]
    return m.kind in POLICY_KINDS and group == POLICY_GROUP


def policies(manifests: Sequence[Manifest]) -> list[Manifest]:
    """The cluster's Istio policies as the user wrote them, in a stable order."""
    return sorted((m for m in manifests if is_policy(m)), key=lambda m: (m.kind, m.namespace, m.name))


def east_west_values(plan: Plan, cluster: ClusterPlan) -> dict[str, Any]:
    """Helm values of `istio/gateway` for an east-west gateway (the multi-network guide's
    `--set name=istio-eastwestgateway --set networkGateway=<network>`; the chart then adds the
    network label, ISTIO_META_REQUESTED_NETWORK_VIEW and the 15021/15443/15012/15017 ports)."""
    istio = _need(plan)
    return {
        "name": EAST_WEST_GATEWAY,
        "networkGateway": network(istio),
        "labels": {**EAST_WEST_SELECTOR, "app": EAST_WEST_GATEWAY, NETWORK_LABEL: network(istio)},
    }


def east_west_gateway() -> dict[str, Any]:
    """samples/multicluster/expose-services.yaml: the gateway passes mTLS through on 15443 by SNI."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "cross-network-gateway", "namespace": ISTIO_NAMESPACE},
        "spec": {
            "selector": dict(EAST_WEST_SELECTOR),
            "servers": [
                {
                    "port": {"number": EAST_WEST_PORT, "name": "tls", "protocol": "TLS"},
                    "tls": {"mode": "AUTO_PASSTHROUGH"},
                    "hosts": ["*.local"],
                }
            ],
        },
    }


def _header(*lines: str) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in lines)


def files(
    plan: Plan, cluster: ClusterPlan, ca: IstioCA | None, manifests: Sequence[Manifest]
) -> dict[str, RenderedFile]:
    """Every Istio file of one cluster, relative to clusters/<cluster>/istio/ (docs/istio.md installs them)."""
    istio = _need(plan)
    if ca is None:
        raise ValueError(f"cluster {cluster.name}: no Istio CA (cacerts) was given to render")
    name = cluster.name
    out: dict[str, RenderedFile] = {
        "istiod-values.yaml": RenderedFile(
            _header(
                f"crossmesh {plan.mesh}: Helm values of istio/istiod for cluster {name}, a primary of mesh",
                f"{istio.mesh_id} on network {network(istio)} (every cluster's pods route to every other's).",
                "Before: kubectl apply -f cacerts.yaml; helm install istio-base istio/base -n istio-system",
                "(no values: the default revision, with the istio-reader ServiceAccount remote secrets use).",
                "Then: helm install istiod istio/istiod -n istio-system -f istiod-values.yaml",
            )
            + yaml_dump(istiod_values(plan, cluster))
        ),
        "istio-operator.yaml": RenderedFile(
            _header(
                f"crossmesh {plan.mesh}: istiod-values.yaml of cluster {name} as an IstioOperator,",
                "for `istioctl install -f istio-operator.yaml` instead of Helm",
            )
            + yaml_dump(istio_operator(plan, cluster))
        ),
        "cacerts.yaml": RenderedFile(
            _header(
                f"crossmesh {plan.mesh}: Istio plug-in CA of cluster {name}: the mesh root and this cluster's",
                "intermediate, WITH ITS PRIVATE KEY (ca-key.pem): keep 0600, apply before istiod is installed.",
            )
            + yaml_dump(*cacerts_objects(plan, ca)),
            0o600,
            True,
        ),
    }
    others = [c for c in plan.clusters if c.name != name]
    if others:
        out["remote-secrets.yaml"] = RenderedFile(
            _header(
                f"crossmesh {plan.mesh}: the remote secrets cluster {name} needs, as `istioctl create-remote-secret`",
                "makes them, WITHOUT their credentials: crossmesh has no token of the other clusters. Replace",
                f"every {PLACEHOLDER}-... value, or run create-remote-secrets.sh: it makes and applies the real ones.",
            )
            + yaml_dump(*remote_secrets(plan, cluster))
        )
        out["create-remote-secrets.sh"] = RenderedFile(create_remote_secrets_script(plan, cluster), 0o755)
    objects = policies(manifests)
    if objects:
        out["policies.yaml"] = RenderedFile(
            _header(
                f"crossmesh {plan.mesh}: the PeerAuthentication and AuthorizationPolicy objects of cluster {name},",
                "as the manifests state them; apply after istio/base (their CRDs).",
            )
            + yaml_dump(*[m.raw for m in objects])
        )
    east_west = _header(
        "Needed ONLY if this cluster is put on a network of its own (its pods no longer routed to the",
        "other clusters' pods): then set global.network (istiod-values.yaml), networkGateway and the",
        f"{NETWORK_LABEL} label below to that network's name. crossmesh routes every pod to every pod: one network.",
    )
    out["east-west/gateway-values.yaml"] = RenderedFile(
        east_west
        + _header(f"helm install {EAST_WEST_GATEWAY} istio/gateway -n istio-system -f gateway-values.yaml")
        + yaml_dump(east_west_values(plan, cluster))
    )
    out["east-west/expose-services.yaml"] = RenderedFile(east_west + yaml_dump(east_west_gateway()))
    return out


def tree(plan: Plan, manifests: Mapping[str, list[Manifest]], cas: Mapping[str, IstioCA]) -> dict[str, RenderedFile]:
    """clusters/<cluster>/istio/... for every cluster, or nothing without `spec.istio`."""
    if plan.istio is None:
        return {}
    return {
        f"clusters/{c.name}/istio/{rel}": f
        for c in plan.clusters
        for rel, f in files(plan, c, cas.get(c.name), manifests.get(c.name, [])).items()
    }
