"""Cilium values and the ClusterMesh PKI (issue 10): every rendered key is one of the chart's, the
values pass its schema, the datapath is the plan's (MTU = underlay, encryption off), each
distribution gets what its guide asks for, and every cluster's clustermesh-apiserver certificates
chain to the one mesh CA, whose key is in no rendered file."""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
import json
import os
import re
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crossmesh.errors import StateError, UnsafePath
from crossmesh.model.plan import Plan
from crossmesh.model.tls import clustermesh_clusters
from crossmesh.render import cilium
from crossmesh.render.files import RenderedFile
from crossmesh.render.tree import render
from crossmesh.state import certs
from crossmesh.state.store import StateStore
from crossmesh.workspace import Compiled, compile_mesh

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "tests" / "reference" / "cilium" / "v1.20.0"
MESHES = {
    "three-clouds": REPO / "examples" / "three-clouds" / "mesh.yaml",
    "hybrid-openstack-aws": REPO / "tests" / "meshes" / "hybrid-wireguard" / "mesh.yaml",
    "golden-gateways": REPO / "tests" / "golden" / "gateways" / "mesh.yaml",
}
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclasses.dataclass
class Rendered:
    compiled: Compiled
    plan: Plan
    files: dict[str, RenderedFile]

    def values(self) -> dict[str, dict[str, Any]]:
        return {
            c.name: yaml.safe_load(self.files[f"clusters/{c.name}/cilium-values.yaml"].content)
            for c in self.plan.clusters
            if c.cni == "cilium"
        }


def render_mesh(mesh: Path, state: Path, now: datetime = NOW) -> Rendered:
    compiled = compile_mesh(mesh, state)
    plan = compiled.plan
    tls, cas = compiled.clustermesh_tls(now), compiled.istio_cas(now)
    certs = compiled.ingress_certs(now)
    files = render(plan, compiled.loaded.manifests, compiled.store.private_key, tls, cas, certs)
    return Rendered(compiled, plan, files)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    base = tmp_path_factory.mktemp("cilium")
    return {name: render_mesh(mesh, base / name / "state") for name, mesh in MESHES.items()}


def all_values(rendered: dict[str, Rendered]) -> list[tuple[str, str, dict[str, Any]]]:
    out = [(name, c, v) for name, r in rendered.items() for c, v in r.values().items()]
    assert len(out) >= 3 + 2  # three-clouds has three Cilium clusters, gateways two
    return out


# (i) and (ii): the chart's keys and schema ---------------------------------------------------
def unknown_keys(values: Any, chart: Any, path: str = "") -> list[str]:
    """Paths of `values` the chart's values.yaml does not have. A list, or a chart default of {}, []
    or null (a map or list the user fills), ends the walk: what is below is the user's."""
    if not isinstance(values, dict) or isinstance(values, list) or chart in ({}, [], None):
        return []
    if not isinstance(chart, dict):
        return [f"{path or '.'}: a map where the chart has {chart!r}"]
    out = []
    for key, value in values.items():
        here = f"{path}.{key}" if path else key
        if key not in chart:
            out.append(here)
        else:
            out += unknown_keys(value, chart[key], here)
    return out


@pytest.fixture(scope="module")
def chart_values() -> Any:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def test_every_rendered_key_is_one_of_the_charts(rendered: dict[str, Rendered], chart_values: Any) -> None:
    for name, cluster, values in all_values(rendered):
        assert unknown_keys(values, chart_values) == [], f"{name}: {cluster}"


def test_the_key_check_catches_a_misspelled_key(chart_values: Any) -> None:
    # The schema accepts unknown keys; this check is what catches them.
    assert unknown_keys({"clustermesh": {"mcsApi": {"enabled": True}}}, chart_values) == ["clustermesh.mcsApi"]
    assert unknown_keys({"encryption": {"enable": False}}, chart_values) == ["encryption.enable"]
    assert unknown_keys({"clustermesh": {"config": {"clusters": [{"anything": 1}]}}}, chart_values) == []


def test_values_validate_against_the_chart_schema(rendered: dict[str, Rendered]) -> None:
    validator = jsonschema.Draft7Validator(json.loads((CHART / "values.schema.json").read_text()))
    for name, cluster, values in all_values(rendered):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(values)]
        assert errors == [], f"{name}: {cluster}"


# (iv) the datapath -----------------------------------------------------------------------------
def test_no_cilium_encryption_and_the_mtu_is_the_plans_underlay(rendered: dict[str, Rendered]) -> None:
    for name, r in rendered.items():
        for cluster, values in r.values().items():
            dp = r.plan.cluster(cluster).datapath
            assert dp is not None
            assert values["encryption"] == {"enabled": False}, f"{name}: {cluster}"
            assert values["MTU"] == dp.underlay_mtu.value, f"{name}: {cluster}"
            assert (values["routingMode"], values["tunnelProtocol"], values["tunnelPort"]) == ("tunnel", "vxlan", 8472)
            assert values["ipam"] == {"mode": "kubernetes"}


def test_values_without_a_datapath_are_refused(rendered: dict[str, Rendered]) -> None:
    plan = rendered["three-clouds"].plan
    bare = dataclasses.replace(plan.clusters[0], datapath=None)
    with pytest.raises(ValueError, match="no datapath"):
        cilium.values(plan, bare, mcs_api=False)


# distributions -----------------------------------------------------------------------------------
def test_talos_gets_what_the_talos_guide_asks_for(rendered: dict[str, Rendered]) -> None:
    values = rendered["three-clouds"].values()["cluster1"]
    assert (values["k8sServiceHost"], values["k8sServicePort"]) == ("localhost", 7445)
    assert values["kubeProxyReplacement"] == "true"
    caps = values["securityContext"]["capabilities"]
    assert "SYS_MODULE" not in caps["ciliumAgent"] and "SYS_ADMIN" in caps["ciliumAgent"]
    assert caps["cleanCiliumState"] == ["NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"]
    assert values["cgroup"] == {"autoMount": {"enabled": False}, "hostRoot": "/sys/fs/cgroup"}


def test_kubeadm_keeps_kube_proxy(rendered: dict[str, Rendered]) -> None:
    r = rendered["golden-gateways"]
    assert r.plan.cluster("edge").distribution == "kubeadm"
    values = r.values()["edge"]
    assert values["kubeProxyReplacement"] == "false"
    assert "k8sServiceHost" not in values and "securityContext" not in values and "cgroup" not in values


def test_k3s_reaches_the_api_server_through_its_node_local_load_balancer(rendered: dict[str, Rendered]) -> None:
    plan = rendered["three-clouds"].plan
    k3s = dataclasses.replace(plan.clusters[0], distribution="k3s")
    values = cilium.values(plan, k3s, mcs_api=False)
    assert (values["kubeProxyReplacement"], values["k8sServiceHost"], values["k8sServicePort"]) == (
        "true",
        "127.0.0.1",
        6444,
    )
    assert "securityContext" not in values


# ClusterMesh -----------------------------------------------------------------------------------
def test_peers_are_the_other_cilium_clusters_only(rendered: dict[str, Rendered]) -> None:
    plan = rendered["three-clouds"].plan
    flannel = dataclasses.replace(plan.clusters[1], cni="flannel")
    mixed = dataclasses.replace(plan, clusters=(plan.clusters[0], flannel, plan.clusters[2]))
    values = cilium.values(mixed, mixed.clusters[0], mcs_api=False)
    peers = values["clustermesh"]["config"]["clusters"]
    assert [p["name"] for p in peers] == [plan.clusters[2].name]
    assert peers[0]["port"] == 32379
    assert peers[0]["ips"] == [str(plan.node(n).address) for n in plan.clusters[2].nodes]


def test_mcs_api_is_on_exactly_where_mcs_objects_are_rendered(rendered: dict[str, Rendered]) -> None:
    seen = set()
    for name, r in rendered.items():
        for cluster, values in r.values().items():
            has_mcs = f"clusters/{cluster}/mcs.yaml" in r.files
            seen.add(has_mcs)
            mcsapi = values.get("clustermesh", {}).get("mcsapi")
            assert mcsapi == ({"enabled": True} if has_mcs else None), f"{name}: {cluster}"
    assert seen == {True, False}  # both cases are covered by the meshes


def test_a_lone_cilium_cluster_has_no_cluster_mesh(rendered: dict[str, Rendered]) -> None:
    r = rendered["hybrid-openstack-aws"]
    assert [c.cni for c in r.plan.clusters] == ["cilium"] and clustermesh_clusters(r.plan) == []
    for values in r.values().values():
        assert "useAPIServer" not in values.get("clustermesh", {})
    assert not [f for f in r.files if f.endswith("clustermesh-secrets.yaml")]
    assert not (r.compiled.store.root / "pki").exists()  # no Cluster Mesh, no CA
    for name in ("three-clouds", "golden-gateways"):
        members = clustermesh_clusters(rendered[name].plan)
        assert len(members) >= 2
        for cluster, values in rendered[name].values().items():
            assert values["clustermesh"]["useAPIServer"] is True, f"{name}: {cluster}"
            assert f"clusters/{cluster}/clustermesh-secrets.yaml" in rendered[name].files


def secrets_of(r: Rendered, cluster: str) -> dict[str, dict[str, bytes]]:
    f = r.files[f"clusters/{cluster}/clustermesh-secrets.yaml"]
    assert (f.mode, f.secret) == (0o600, True)
    out = {}
    for doc in yaml.safe_load_all(f.content):
        assert (doc["kind"], doc["type"]) == ("Secret", "kubernetes.io/tls")
        assert doc["metadata"]["namespace"] == "kube-system"
        out[doc["metadata"]["name"]] = {k: base64.b64decode(v) for k, v in doc["data"].items()}
    return out


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def verify_signed(cert: x509.Certificate, ca: x509.Certificate) -> None:
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    assert cert.issuer == ca.subject


def test_every_clusters_certificates_chain_to_one_mesh_ca(rendered: dict[str, Rendered]) -> None:
    for name, r in rendered.items():
        cilium_clusters = clustermesh_clusters(r.plan)
        if not cilium_clusters:
            continue  # see test_a_lone_cilium_cluster_has_no_cluster_mesh
        ca_on_disk = (r.compiled.store.root / "pki" / "ca.crt").read_bytes()
        ca = x509.load_pem_x509_certificate(ca_on_disk)
        verify_signed(ca, ca)
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert ca.not_valid_after_utc - ca.not_valid_before_utc >= timedelta(days=3650)
        for cluster in cilium_clusters:
            values = r.values()[cluster]
            assert values["clustermesh"]["apiserver"]["tls"] == {"authMode": "cluster", "auto": {"enabled": False}}
            assert "tls" not in values  # no CA (and no CA key) in the values
            secrets = secrets_of(r, cluster)
            assert set(secrets) == {
                "clustermesh-apiserver-server-cert",
                "clustermesh-apiserver-admin-cert",
                "clustermesh-apiserver-remote-cert",
                "clustermesh-apiserver-local-cert",
            }
            for secret, data in secrets.items():
                assert data["ca.crt"] == ca_on_disk, f"{name}: {cluster}: {secret}"
                cert = x509.load_pem_x509_certificate(data["tls.crt"])
                verify_signed(cert, ca)
                key = serialization.load_pem_private_key(data["tls.key"], password=None)
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                assert key.public_key() == cert.public_key()
                assert cert.not_valid_before_utc <= NOW < cert.not_valid_after_utc
            server = x509.load_pem_x509_certificate(secrets["clustermesh-apiserver-server-cert"]["tls.crt"])
            san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert common_name(server) == "clustermesh-apiserver.cilium.io"
            dns = set(san.get_values_for_type(x509.DNSName))
            assert {"*.mesh.cilium.io", "clustermesh-apiserver.kube-system.svc"} <= dns
            assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
            eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert ExtendedKeyUsageOID.SERVER_AUTH in eku
            for role in ("admin", "remote", "local"):
                cert = x509.load_pem_x509_certificate(secrets[f"clustermesh-apiserver-{role}-cert"]["tls.crt"])
                assert common_name(cert) == f"{role}-{cluster}"
                eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
                assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def blobs(text: str) -> list[bytes]:
    """`text`, the base64 data of the Secrets in it, and the DER of every PEM block in either."""
    out = [text.encode()]
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        docs = []
    for doc in docs:
        if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
            out += [base64.b64decode(v) for v in doc["data"].values()]
    pem = re.compile(rb"-----BEGIN [A-Z ]+-----(.*?)-----END", re.S)
    return out + [base64.b64decode(m.group(1)) for blob in list(out) for m in pem.finditer(blob)]


def test_the_ca_key_is_in_no_rendered_file(rendered: dict[str, Rendered]) -> None:
    r = rendered["three-clouds"]
    pem = (r.compiled.store.root / "pki" / "ca.key").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    checked = 0
    for rel, f in r.files.items():
        for blob in blobs(f.content):
            assert scalar not in blob and der not in blob and pem not in blob, rel
            checked += 1
    # The leaf keys are found the same way: the search does look inside the Secrets.
    leaf = secrets_of(r, "cluster1")["clustermesh-apiserver-admin-cert"]["tls.key"]
    assert any(leaf in b for b in blobs(r.files["clusters/cluster1/clustermesh-secrets.yaml"].content))
    assert checked > len(r.files)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_keys_are_0600_under_umask_000(tmp_path: Path, open_umask: None) -> None:
    store = StateStore(tmp_path / ".crossmesh")
    store.clustermesh_tls("m", ["a", "b"], NOW)
    pki = store.root / "pki"
    assert mode(pki) == 0o700
    keys = sorted(pki.glob("*.key"))
    assert len(keys) == 1 + 2 * 4
    for path in keys:
        assert mode(path) == 0o600, path
    for path in pki.glob("*.crt"):
        assert mode(path) == 0o644, path


def test_the_pki_is_made_once_and_rendering_twice_gives_identical_bytes(tmp_path: Path) -> None:
    first = render_mesh(MESHES["three-clouds"], tmp_path / "state")
    ca = (tmp_path / "state" / "pki" / "ca.key").read_bytes()
    second = render_mesh(MESHES["three-clouds"], tmp_path / "state", NOW + timedelta(days=200))
    assert (tmp_path / "state" / "pki" / "ca.key").read_bytes() == ca
    assert first.files == second.files


def test_a_certificate_near_its_end_is_issued_anew_by_the_same_ca(tmp_path: Path) -> None:
    store = StateStore(tmp_path / ".crossmesh")
    before = store.clustermesh_tls("m", ["a"], NOW)["a"]
    later = NOW + certs.CERT_VALIDITY - certs.RENEW_BEFORE + timedelta(days=1)
    after = store.clustermesh_tls("m", ["a"], later)["a"]
    assert after.ca_cert_pem == before.ca_cert_pem
    for old, new in zip(before.certs, after.certs, strict=True):
        assert old.cert_pem != new.cert_pem and old.key_pem != new.key_pem
        cert = x509.load_pem_x509_certificate(new.cert_pem.encode())
        verify_signed(cert, x509.load_pem_x509_certificate(after.ca_cert_pem.encode()))
        assert cert.not_valid_after_utc - later > certs.RENEW_BEFORE


def test_a_lost_ca_key_is_a_clear_error_not_a_new_ca(tmp_path: Path) -> None:
    store = StateStore(tmp_path / ".crossmesh")
    store.clustermesh_tls("m", ["a"], NOW)
    (store.root / "pki" / "ca.key").unlink()
    with pytest.raises(StateError, match=r"ca\.key is missing while its pair is there — restore it"):
        store.clustermesh_tls("m", ["a"], NOW)


def test_a_ca_key_others_may_read_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / ".crossmesh")
    store.clustermesh_tls("m", ["a"], NOW)
    (store.root / "pki" / "ca.key").chmod(0o644)
    with pytest.raises(UnsafePath, match="readable by other users"):
        store.clustermesh_tls("m", ["a"], NOW)


def test_a_ca_that_does_not_match_its_key_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / ".crossmesh")
    store.clustermesh_tls("m", ["a"], NOW)
    other = StateStore(tmp_path / "other")
    other.clustermesh_tls("m", ["a"], NOW)
    shutil.copy(other.root / "pki" / "ca.crt", store.root / "pki" / "ca.crt")
    with pytest.raises(StateError, match="does not match its key"):
        store.clustermesh_tls("m", ["a"], NOW)


def test_a_linked_pki_folder_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / ".crossmesh")
    store.root.mkdir(mode=0o700)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", store.root / "pki")
    with pytest.raises(UnsafePath, match="does not follow links"):
        store.clustermesh_tls("m", ["a"], NOW)
    assert list((tmp_path / "elsewhere").iterdir()) == []
