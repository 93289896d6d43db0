"""The TLS material a Cilium ClusterMesh needs, as data: one mesh CA that every cluster trusts and,
per cluster, the clustermesh-apiserver certificates the chart names (values.yaml of Cilium 1.20,
`clustermesh.apiserver.tls.auto`: "pre-create the following secrets"). Issued by `state.pki`,
rendered as Secrets by `render.cilium`."""

from __future__ import annotations

from dataclasses import dataclass

from crossmesh.model.plan import Plan

CILIUM_NAMESPACE = "kube-system"  # the release namespace of every rendered Cilium install
CLUSTERMESH_NODEPORT = 32379  # clustermesh-apiserver's default NodePort: the other clusters dial it on node addresses


@dataclass(frozen=True, slots=True)
class CertSpec:
    """What Cilium expects of one certificate (the chart's own generators: tls-helm, tls-cronjob,
    tls-certmanager): the Secret it lives in, its subject CN, its names, and whether it serves TLS."""

    secret: str  # the name it is kept under: a Secret of the chart, an etcd identity
    common_name: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    server: bool = False


@dataclass(frozen=True, slots=True)
class IssuedCert:
    spec: CertSpec
    cert_pem: str
    key_pem: str  # private: whatever holds it is written 0600


@dataclass(frozen=True, slots=True)
class ClusterMeshTLS:
    cluster: str
    ca_cert_pem: str  # the mesh CA's certificate only; its key never leaves the state directory
    certs: tuple[IssuedCert, ...]


def clustermesh_clusters(plan: Plan) -> list[str]:
    """The clusters of the mesh's Cilium Cluster Mesh: its Cilium clusters when there are two or more.
    A Cilium cluster alone has no one to connect to: no clustermesh-apiserver, no certificates."""
    names = [c.name for c in plan.clusters if c.cni == "cilium"]
    return names if len(names) > 1 else []


def clustermesh_specs(cluster: str) -> tuple[CertSpec, ...]:
    """The four Secrets of a cluster's clustermesh-apiserver with `authMode: cluster` (the CN of the
    remote certificate is `remote-<cluster>`, the etcd user every other cluster's apiserver creates
    for it from its `clustermesh.config.clusters`)."""
    server_dns = (
        "clustermesh-apiserver.cilium.io",
        "*.mesh.cilium.io",  # <cluster>.mesh.cilium.io: how the other clusters name it (config.domain)
        f"clustermesh-apiserver.{CILIUM_NAMESPACE}.svc",
    )
    return (
        CertSpec(
            "clustermesh-apiserver-server-cert",
            "clustermesh-apiserver.cilium.io",
            server_dns,
            ("127.0.0.1", "::1"),
            server=True,
        ),
        CertSpec("clustermesh-apiserver-admin-cert", f"admin-{cluster}"),
        CertSpec("clustermesh-apiserver-remote-cert", f"remote-{cluster}"),
        CertSpec("clustermesh-apiserver-local-cert", f"local-{cluster}"),
    )


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    """The control plane's etcd PKI as issued (`crossmesh.kv.identities` says who gets what): the etcd
    CA's certificate, and per identity its certificate and key. `renewed`: the identities issued
    anew by this call (missing, changed or near their end); the others were kept as they were."""

    ca_cert_pem: str  # the etcd CA's certificate only; its key never leaves the state directory
    certs: tuple[IssuedCert, ...]
    renewed: frozenset[str] = frozenset()  # CertSpec.secret of each certificate issued now


@dataclass(frozen=True, slots=True)
class IstioCA:
    """One cluster's Istio plug-in CA, as its `cacerts` Secret in `istio-system` holds it (Istio's
    "Plug in CA certificates": root-cert.pem, ca-cert.pem, ca-key.pem, cert-chain.pem). Made from
    the state directory's root and the cluster's intermediate by `identity.svid.istio_ca`."""

    cluster: str
    root_cert_pem: str  # root-cert.pem: the mesh root, the one trust anchor of every cluster
    cert_pem: str  # ca-cert.pem: the cluster's intermediate
    key_pem: str  # ca-key.pem: its key, private: whatever holds it is written 0600
    chain_pem: str  # cert-chain.pem: the intermediate, then up to and including the root


@dataclass(frozen=True, slots=True)
class IngressCert:
    """A gateway listener's server certificate from the mesh's ingress CA (`state.ingresspki`):
    what its `kubernetes.io/tls` Secret holds. `names` are its DNS SANs."""

    cluster: str
    namespace: str
    gateway: str
    listener: str
    names: tuple[str, ...]
    cert_pem: str  # tls.crt: the leaf, then the ingress CA
    key_pem: str  # tls.key, private: whatever holds it is written 0600
    not_after: str = ""  # ISO 8601, for listings
    issued: bool = False  # issued by this run (not read back)
