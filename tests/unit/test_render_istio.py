"""The Istio files `crossmesh render` writes with `spec.istio` (render/istio.py): one network, every
cluster a primary; istiod values whose keys are the istiod chart's and an IstioOperator saying the
same; `cacerts` with Istio's plug-in CA file names whose chain verifies; remote secrets as istioctl
makes them; the user's Istio policies once, in policies.yaml; the east-west gateway files valid
against the gateway chart's schema and the Gateway CRD; no private key outside a 0600 file.

The mesh is a copy of three-clouds before Istio (tests/meshes/cilium-l7: three Talos clusters) with
`plan.istio` set and two Istio policies added to cluster1; the Istio CAs come from its state
directory (`Compiled.istio_cas`, state/meshpki).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from istio_crd import schema_problems

from crossmesh.model.k8s import Manifest
from crossmesh.model.plan import IstioPlan, Plan
from crossmesh.model.tls import IstioCA
from crossmesh.render import istio
from crossmesh.render.files import RenderedFile
from crossmesh.render.tree import render
from crossmesh.workspace import compile_mesh

REPO = Path(__file__).resolve().parents[2]
ISTIO_REF = REPO / "tests" / "reference" / "istio"
GATEWAY_SCHEMA = ISTIO_REF / "1.30.3" / "gateway-chart.values.schema.json"
ISTIOD_VALUES = ISTIO_REF / "1.30.3" / "istiod-chart.values.yaml"
OPERATOR_CRD = ISTIO_REF / "1.23.6" / "crd-operator.yaml"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TTL = timedelta(hours=24)

POLICIES = [
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "istio-system"},
        "spec": {"mtls": {"mode": "STRICT"}},
    },
    {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "frontend-from-cluster2", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "frontend"}},
            "action": "ALLOW",
            "rules": [
                {
                    "from": [{"source": {"principals": ["cluster.local/ns/default/sa/backend"]}}],
                    "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"], "ports": ["8080"]}}],
                }
            ],
        },
    },
]


@dataclasses.dataclass
class Rendered:
    plan: Plan
    cas: dict[str, IstioCA]
    files: dict[str, RenderedFile]

    def docs(self, rel: str) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(self.files[rel].content) if d is not None]


def policy_manifests(cluster: str) -> list[Manifest]:
    return [
        Manifest(
            f"apps/{cluster}/istio.yaml", i + 1, p["kind"], p["metadata"]["name"], p["metadata"]["namespace"], p, None
        )
        for i, p in enumerate(POLICIES)
    ]


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, list[Manifest]]]:
    base = tmp_path_factory.mktemp("istio")
    shutil.copytree(REPO / "tests" / "meshes" / "cilium-l7", base / "mesh")  # three-clouds before its Istio
    compiled = compile_mesh(base / "mesh" / "mesh.yaml", base / "state")
    manifests = {c: list(ms) for c, ms in compiled.loaded.manifests.items()}
    manifests["cluster1"] = manifests.get("cluster1", []) + policy_manifests("cluster1")
    return compiled, manifests


def render_istio(three: tuple[Any, dict[str, list[Manifest]]], *, with_istio: bool = True) -> Rendered:
    compiled, manifests = three
    plan = compiled.plan
    if with_istio:
        plan = dataclasses.replace(plan, istio=IstioPlan(plan.trust_domain, plan.mesh, TTL))
    # The Istio CAs as `crossmesh render` gets them: from the state directory's istio-pki/.
    cas = dataclasses.replace(compiled, plan=plan).istio_cas(NOW)
    files = render(plan, manifests, compiled.store.private_key, compiled.clustermesh_tls(NOW), cas)
    return Rendered(plan, cas, files)


@pytest.fixture(scope="module")
def rendered(three: tuple[Any, dict[str, list[Manifest]]]) -> Rendered:
    return render_istio(three)


# ---- what is rendered ----
def test_every_cluster_gets_its_istio_folder_and_nothing_without_spec_istio(
    rendered: Rendered, three: tuple[Any, dict[str, list[Manifest]]]
) -> None:
    names = [c.name for c in rendered.plan.clusters]
    for c in names:
        got = {
            rel.removeprefix(f"clusters/{c}/istio/") for rel in rendered.files if rel.startswith(f"clusters/{c}/istio/")
        }
        expected = {
            "istiod-values.yaml",
            "istio-operator.yaml",
            "cacerts.yaml",
            "remote-secrets.yaml",
            "create-remote-secrets.sh",
            "east-west/gateway-values.yaml",
            "east-west/expose-services.yaml",
        } | ({"policies.yaml"} if c == "cluster1" else set())
        assert got == expected, c
    without = render_istio(three, with_istio=False)
    assert not [rel for rel in without.files if "/istio/" in rel]
    assert set(without.files) == {rel for rel in rendered.files if "/istio/" not in rel}


def test_one_mesh_one_network_each_cluster_its_own_name(rendered: Rendered) -> None:
    networks = set()
    for c in rendered.plan.clusters:
        values = rendered.docs(f"clusters/{c.name}/istio/istiod-values.yaml")[0]
        assert values["global"]["meshID"] == "three-clouds"
        assert values["global"]["multiCluster"]["clusterName"] == c.name
        assert values["meshConfig"]["trustDomain"] == "cluster.local"
        networks.add(values["global"]["network"])
        ns = rendered.docs(f"clusters/{c.name}/istio/cacerts.yaml")[0]
        assert (
            ns["kind"] == "Namespace" and ns["metadata"]["labels"][istio.NETWORK_LABEL] == values["global"]["network"]
        )
    assert networks == {"three-clouds-network"}  # pods route to pods: one network (module doc)


def test_certificate_lifetime_reaches_istiod_and_every_proxy(rendered: Rendered) -> None:
    values = rendered.docs("clusters/cluster2/istio/istiod-values.yaml")[0]
    assert values["env"] == {"DEFAULT_WORKLOAD_CERT_TTL": "24h", "MAX_WORKLOAD_CERT_TTL": "24h"}
    meta = values["meshConfig"]["defaultConfig"]["proxyMetadata"]
    assert meta == {"SECRET_TTL": "24h", "SECRET_GRACE_PERIOD_RATIO": "0.5"}


@pytest.mark.parametrize(
    ("ttl", "text"),
    [
        (timedelta(hours=24), "24h"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(minutes=10), "10m"),
        (timedelta(days=90), "2160h"),
    ],
)
def test_go_durations(ttl: timedelta, text: str) -> None:
    assert istio.go_duration(ttl) == text


def _keys(tree: Any, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return set()
    out = set()
    for k, v in tree.items():
        path = f"{prefix}{k}"
        out.add(path)
        out |= _keys(v, path + ".")
    return out


def test_istiod_values_are_keys_of_the_istiod_chart(rendered: Rendered) -> None:
    defaults = yaml.safe_load(ISTIOD_VALUES.read_text())["_internal_defaults_do_not_set"]
    known = _keys(defaults)
    free = ("env.", "meshConfig.")  # maps the chart passes on as they are (container env, MeshConfig)
    for c in rendered.plan.clusters:
        values = rendered.docs(f"clusters/{c.name}/istio/istiod-values.yaml")[0]
        unknown = {k for k in _keys(values) if k not in known and not k.startswith(free)}
        assert unknown == set(), c.name


def test_istio_operator_says_what_the_helm_values_say(rendered: Rendered) -> None:
    (crd,) = [d for d in yaml.safe_load_all(OPERATOR_CRD.read_text()) if d]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    validator = jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])
    for c in rendered.plan.clusters:
        (iop,) = rendered.docs(f"clusters/{c.name}/istio/istio-operator.yaml")
        assert list(validator.iter_errors(iop)) == []
        assert iop["apiVersion"] == f"{crd['spec']['group']}/v1alpha1" and iop["kind"] == crd["spec"]["names"]["kind"]
        helm = rendered.docs(f"clusters/{c.name}/istio/istiod-values.yaml")[0]
        values = iop["spec"]["values"]
        # istioctl hands `values.pilot` to the istiod chart as its top level (component.go, ToHelmValuesTreeRoot)
        assert values["pilot"]["env"] == helm["env"]
        assert values["global"] == helm["global"]
        assert values["sidecarInjectorWebhook"] == helm["sidecarInjectorWebhook"]
        assert iop["spec"]["meshConfig"] == helm["meshConfig"]


# ---- cacerts ----
def _cacerts(rendered: Rendered, cluster: str) -> dict[str, str]:
    docs = rendered.docs(f"clusters/{cluster}/istio/cacerts.yaml")
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert secret["metadata"] == {
        "name": "cacerts",
        "namespace": "istio-system",
        "labels": {"app.kubernetes.io/managed-by": "crossmesh", "app.kubernetes.io/part-of": "istio"},
    }
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_cacerts_chain_verifies_to_the_one_mesh_root(rendered: Rendered) -> None:
    roots = set()
    for c in rendered.plan.clusters:
        data = _cacerts(rendered, c.name)
        assert set(data) == {"ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"}
        root = x509.load_pem_x509_certificate(data["root-cert.pem"].encode())
        ca = x509.load_pem_x509_certificate(data["ca-cert.pem"].encode())
        chain = x509.load_pem_x509_certificates(data["cert-chain.pem"].encode())
        assert chain == [ca, root]  # Istio's cert-chain.pem: intermediate then root
        ca.verify_directly_issued_by(root)
        root.verify_directly_issued_by(root)
        key = serialization.load_pem_private_key(data["ca-key.pem"].encode(), None)
        assert key.public_key() == ca.public_key()  # the key is the intermediate's
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        roots.add(root)
    assert len(roots) == 1


def test_cert_chain_is_the_same_whether_chain_pem_holds_the_root_or_not(rendered: Rendered) -> None:
    ca = rendered.cas["cluster1"]
    bare = dataclasses.replace(ca, chain_pem="")
    with_root = istio.cert_chain_pem(ca)
    assert istio.cert_chain_pem(bare) == with_root
    assert [c.subject for c in x509.load_pem_x509_certificates(with_root.encode())] == [
        x509.load_pem_x509_certificate(ca.cert_pem.encode()).subject,
        x509.load_pem_x509_certificate(ca.root_cert_pem.encode()).subject,
    ]


def test_no_private_key_in_a_file_that_is_not_0600(rendered: Rendered) -> None:
    keys = [ca.key_pem for ca in rendered.cas.values()]
    holding = set()
    for rel, f in rendered.files.items():
        text = f.content
        decoded = []
        if rel.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
                    decoded += [base64.b64decode(v).decode("utf-8", "replace") for v in doc["data"].values()]
        blob = text + "".join(decoded)
        if "PRIVATE KEY" in blob or any(k in blob for k in keys):
            holding.add(rel)
            assert f.mode == 0o600 and f.secret, f"{rel} holds a private key but is {oct(f.mode)}"
    assert {f"clusters/{c.name}/istio/cacerts.yaml" for c in rendered.plan.clusters} <= holding


# ---- remote secrets ----
def test_remote_secrets_are_istioctls_for_every_other_cluster(rendered: Rendered) -> None:
    by_name = {n.name: n for n in rendered.plan.nodes}
    for c in rendered.plan.clusters:
        secrets = rendered.docs(f"clusters/{c.name}/istio/remote-secrets.yaml")
        others = [o for o in rendered.plan.clusters if o.name != c.name]
        assert [s["metadata"]["name"] for s in secrets] == [f"istio-remote-secret-{o.name}" for o in others]
        for s, other in zip(secrets, others, strict=True):
            assert s["metadata"]["namespace"] == "istio-system"
            assert s["metadata"]["labels"] == {"istio/multiCluster": "true"}
            assert s["metadata"]["annotations"] == {"networking.istio.io/cluster": other.name}
            kubeconfig = yaml.safe_load(s["stringData"][other.name])
            assert kubeconfig["current-context"] == other.name
            server = kubeconfig["clusters"][0]["cluster"]["server"]
            assert server == f"https://{by_name[other.nodes[0]].address}:6443"
            token = kubeconfig["users"][0]["user"]["token"]
            assert token.startswith("REPLACE-ME") and "istio-reader-service-account" in token


def test_create_remote_secrets_script_runs_istioctl_per_pair(rendered: Rendered, tmp_path: Path) -> None:
    f = rendered.files["clusters/cluster1/istio/create-remote-secrets.sh"]
    assert f.mode == 0o755
    script = tmp_path / "create.sh"
    script.write_text(f.content)
    subprocess.run(["sh", "-n", str(script)], check=True)
    # Run it with istioctl and kubectl replaced by recorders: one pair per other cluster.
    log = tmp_path / "log"
    for tool in ("istioctl", "kubectl"):
        (tmp_path / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        (tmp_path / tool).chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "ISTIOCTL": str(tmp_path / "istioctl"), "KUBECTL": str(tmp_path / "kubectl")}
    subprocess.run(["sh", str(script)], check=True, env=env | {"CTX_CLUSTER1": "prod-1"})
    lines = sorted(log.read_text().splitlines())
    assert lines == [
        "istioctl create-remote-secret --context=cluster2 --name=cluster2 --server=https://10.1.1.5:6443",
        "istioctl create-remote-secret --context=cluster3 --name=cluster3 --server=https://10.2.1.5:6443",
        "kubectl apply --context=prod-1 -f -",
        "kubectl apply --context=prod-1 -f -",
    ]


# ---- policies ----
def test_istio_policies_are_written_once_in_policies_yaml(rendered: Rendered) -> None:
    assert rendered.docs("clusters/cluster1/istio/policies.yaml") == sorted(
        POLICIES, key=lambda p: (p["kind"], p["metadata"]["namespace"], p["metadata"]["name"])
    )
    everywhere = [
        rel
        for rel, f in rendered.files.items()
        if rel.endswith(".yaml")
        and any(d and d.get("kind") in istio.POLICY_KINDS for d in yaml.safe_load_all(f.content))
    ]
    assert everywhere == ["clusters/cluster1/istio/policies.yaml"]


def test_without_spec_istio_the_policies_stay_in_manifests_yaml(three: tuple[Any, dict[str, list[Manifest]]]) -> None:
    files = render_istio(three, with_istio=False).files
    kinds = [d["kind"] for d in yaml.safe_load_all(files["clusters/cluster1/manifests.yaml"].content)]
    assert kinds.count("PeerAuthentication") == 1 and kinds.count("AuthorizationPolicy") == 1


# ---- schemas ----
def test_rendered_istio_objects_validate_against_the_crds(rendered: Rendered) -> None:
    checked = 0
    for rel in rendered.files:
        if rel.endswith(("policies.yaml", "expose-services.yaml")):
            for doc in rendered.docs(rel):
                assert schema_problems(doc) == [], rel
                assert doc["metadata"].get("name") and doc["metadata"].get("namespace"), rel
                checked += 1
    assert checked == 2 + 3  # two policies, one Gateway per cluster


def test_the_crd_validators_reject_wrong_objects() -> None:
    bad_mode = {**POLICIES[0], "spec": {"mtls": {"mode": "STRICTEST"}}}
    misspelt = {**POLICIES[1], "spec": {"rules": [{"form": []}]}}
    assert schema_problems(bad_mode) and schema_problems(misspelt)


def test_east_west_gateway_values_pass_the_gateway_chart_schema(rendered: Rendered) -> None:
    validator = jsonschema.Draft7Validator(json.loads(GATEWAY_SCHEMA.read_text()))
    for c in rendered.plan.clusters:
        values = rendered.docs(f"clusters/{c.name}/istio/east-west/gateway-values.yaml")[0]
        assert list(validator.iter_errors(values)) == []
        assert values["networkGateway"] == "three-clouds-network"
        gateway = rendered.docs(f"clusters/{c.name}/istio/east-west/expose-services.yaml")[0]
        assert gateway["spec"]["selector"] == {"istio": values["name"].removeprefix("istio-")}
        (server,) = gateway["spec"]["servers"]
        assert server["port"]["number"] == 15443 and server["tls"] == {"mode": "AUTO_PASSTHROUGH"}
    assert list(validator.iter_errors({"networkGateway": 1}))
