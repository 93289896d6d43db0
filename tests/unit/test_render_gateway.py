"""`crossmesh render` of Gateway API objects (clusters/<c>/gateway/): every Gateway and HTTPRoute
valid against the Gateway API v1.6.1 CRDs, the mesh certificate a real kubernetes.io/tls Secret a
client trusting the ingress CA accepts for the listener's name, `crossmesh.io/nodes` one gateway
pod per named node, the cloud's load balancer annotations, and nothing of it left in manifests.yaml
(applied before the CRDs exist)."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from gateway_crd import schema_problems
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.identity import ingress
from crossmesh.model.mesh import Provider
from crossmesh.render import gateway
from crossmesh.state.ingresspki import ingress_ca_pem

CASE = Path(__file__).resolve().parents[1] / "golden" / "ingress"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The golden case rendered with a fresh state (a new ingress CA): (output, state)."""
    root = tmp_path_factory.mktemp("ingress")
    mesh = root / "case"
    shutil.copytree(CASE, mesh, ignore=shutil.ignore_patterns("state", "expected"))
    state, out = root / "state", root / "out"
    result = CliRunner().invoke(app, ["render", str(mesh / "mesh.yaml"), "-d", str(out), "--state", str(state)])
    assert result.exit_code == 0, result.output
    return out, state


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_every_rendered_gateway_and_route_is_valid_against_the_crds(rendered: tuple[Path, Path]) -> None:
    out, _ = rendered
    objects = [
        d
        for f in sorted(out.glob("clusters/*/gateway/*.yaml"))
        for d in docs(f)
        if d["kind"] in ("Gateway", "HTTPRoute")
    ]
    assert sorted(d["kind"] for d in objects) == ["Gateway", "Gateway", "HTTPRoute", "HTTPRoute"]
    for obj in objects:
        assert schema_problems(obj) == [], obj["metadata"]["name"]
        assert obj["metadata"]["namespace"]  # explicit: lands beside its Secret whatever `kubectl -n` says
        assert not any(k.startswith("crossmesh.io/") for k in obj["metadata"].get("annotations", {}))


def test_gateway_api_objects_leave_manifests_yaml(rendered: tuple[Path, Path]) -> None:
    out, _ = rendered
    kinds = {d["kind"] for d in docs(out / "clusters" / "shop" / "manifests.yaml")}
    assert "Gateway" not in kinds and "HTTPRoute" not in kinds
    assert "Secret" in kinds  # the user's api-tls stays where the user's objects are


def test_a_mesh_listener_serves_a_secret_a_client_trusting_the_ingress_ca_accepts(rendered: tuple[Path, Path]) -> None:
    out, state = rendered
    secrets_file = out / "clusters" / "shop" / "gateway" / "tls-secrets.yaml"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    (secret,) = docs(secrets_file)
    (gw,) = [d for d in docs(out / "clusters" / "shop" / "gateway" / "gateways.yaml") if d["kind"] == "Gateway"]
    www = next(li for li in gw["spec"]["listeners"] if li["name"] == "www")
    assert www["tls"] == {
        "mode": "Terminate",
        "certificateRefs": [{"group": "", "kind": "Secret", "name": secret["metadata"]["name"]}],
    }
    assert secret["metadata"]["namespace"] == gw["metadata"]["namespace"]
    pem = ingress.secret_pem(secret)  # type kubernetes.io/tls, base64 data, key matching the leaf
    chain = x509.load_pem_x509_certificates(pem)
    root = x509.load_pem_x509_certificate(ingress_ca_pem(state))
    verifier = PolicyBuilder().store(Store([root])).time(datetime.now(UTC))
    verifier.build_server_verifier(x509.DNSName("www.shop.example")).verify(chain[0], chain[1:])
    # The Secret-based listener keeps its own reference.
    api = next(li for li in gw["spec"]["listeners"] if li["name"] == "api")
    assert api["tls"]["certificateRefs"] == [{"kind": "Secret", "name": "api-tls"}]


def test_a_listener_without_hostnames_is_named_for_the_gateway_service(rendered: tuple[Path, Path]) -> None:
    out, _ = rendered
    (secret,) = docs(out / "clusters" / "lab" / "gateway" / "tls-secrets.yaml")
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert ingress.dns_names(leaf) == ("lab-istio.lab.svc.cluster.local",)


def test_pinned_nodes_become_one_gateway_pod_per_node(rendered: tuple[Path, Path]) -> None:
    out, _ = rendered
    objects = docs(out / "clusters" / "shop" / "gateway" / "gateways.yaml")
    (config,) = [d for d in objects if d["kind"] == "ConfigMap"]
    (gw,) = [d for d in objects if d["kind"] == "Gateway"]
    assert gw["spec"]["infrastructure"]["parametersRef"] == {
        "group": "",
        "kind": "ConfigMap",
        "name": config["metadata"]["name"],
    }
    overlay = yaml.safe_load(config["data"]["deployment"])["spec"]
    assert overlay["replicas"] == 2
    affinity = overlay["template"]["spec"]["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["shop-1", "shop-2"]}]}
    ]
    (apart,) = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert apart["topologyKey"] == "kubernetes.io/hostname"
    assert apart["labelSelector"]["matchLabels"] == {"gateway.networking.k8s.io/gateway-name": "shop"}


def test_the_cloud_load_balancer_is_asked_for_per_provider(rendered: tuple[Path, Path]) -> None:
    out, _ = rendered
    (shop,) = [d for d in docs(out / "clusters" / "shop" / "gateway" / "gateways.yaml") if d["kind"] == "Gateway"]
    assert shop["spec"]["infrastructure"]["annotations"] == gateway.LOAD_BALANCER_ANNOTATIONS[Provider.AWS]
    (lab,) = docs(out / "clusters" / "lab" / "gateway" / "gateways.yaml")
    assert "infrastructure" not in lab["spec"]  # bare metal: the site router publishes it; no nodes pinned


@pytest.mark.parametrize("provider", sorted(gateway.LOAD_BALANCER_ANNOTATIONS, key=str))
def test_each_providers_annotations_fit_gateway_api(provider: Provider) -> None:
    raw = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "g", "namespace": "n"},
        "spec": {
            "gatewayClassName": "istio",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
            "infrastructure": {"annotations": gateway.load_balancer_annotations({provider})},
        },
    }
    assert raw["spec"]["infrastructure"]["annotations"]
    assert schema_problems(raw) == []


def test_mixed_providers_or_bare_metal_get_no_annotations() -> None:
    assert gateway.load_balancer_annotations({Provider.AWS, Provider.GCP}) == {}
    assert gateway.load_balancer_annotations({Provider.BAREMETAL}) == {}


def test_the_nodes_annotation_reads_a_list_once_each() -> None:
    raw = {"metadata": {"annotations": {"crossmesh.io/nodes": " a, b ,a,,c"}}}
    assert gateway.pinned_nodes(raw) == ("a", "b", "c")
    assert gateway.pinned_nodes({"metadata": {}}) == ()


def test_a_long_secret_name_stays_a_kubernetes_name() -> None:
    name = gateway.secret_name("g" * 200, "l" * 100)
    assert len(name) <= 253 and name.endswith("-mesh-tls")
    assert name != gateway.secret_name("g" * 200, "l" * 99 + "x")


def test_pki_ingress_lists_the_ca_and_the_listeners(rendered: tuple[Path, Path], tmp_path: Path) -> None:
    _, state = rendered
    mesh = tmp_path / "case"
    shutil.copytree(CASE, mesh, ignore=shutil.ignore_patterns("state", "expected"))
    result = CliRunner().invoke(app, ["pki", "ingress", str(mesh / "mesh.yaml"), "--state", str(state), "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ca"]["subject"] == "CN=crossmesh ingress CA (ingress-golden)"
    listeners = {r["listener"]: r for r in data["listeners"]}
    assert set(listeners) == {"lab/lab/lab/https", "shop/shop/shop/www"}
    assert listeners["shop/shop/shop/www"]["names"] == ["www.shop.example"]
    assert not any(r["issued"] for r in data["listeners"])  # the render issued them; listing keeps them
    assert "PRIVATE KEY" not in result.output
