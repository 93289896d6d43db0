"""The control plane's etcd identities: who gets a certificate (from the plan, one list for the lab,
the command and the roles), the etcd CA kept in the state directory, and `crossmesh pki etcd`."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.errors import SpecError
from crossmesh.kv import identities
from crossmesh.kv.layout import ADMIN_USER, OPERATOR_USER
from crossmesh.render.etcd import tls_files
from crossmesh.state import pki
from crossmesh.workspace import Compiled, compile_mesh

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
NODES = ["aws-talos-1", "azure-talos-1", "gcp-talos-1"]


@pytest.fixture
def compiled(tmp_path: Path) -> Compiled:
    return compile_mesh(EXAMPLES / "three-clouds" / "mesh.yaml", tmp_path / "state", dry_run=True)


def test_the_identities_of_a_mesh_come_from_its_plan(compiled: Compiled) -> None:
    assert identities.agent_nodes(compiled.plan) == NODES
    specs = identities.etcd_specs(compiled.plan, server_ips=["10.0.0.2", "127.0.0.1"], server_names=["etcd.local"])
    assert [(s.secret, s.common_name, s.server) for s in specs] == [
        ("server", "etcd", True),
        *((n, n, False) for n in sorted([*NODES, OPERATOR_USER, ADMIN_USER, "root"])),
    ]
    assert specs[0].ip_addresses == ("10.0.0.2", "127.0.0.1") and specs[0].dns_names == ("etcd.local",)
    # the users the roles are made for are the clients the certificates are issued to
    assert set(identities.users(compiled.plan)) | {"root"} == {s.common_name for s in specs[1:]}
    assert [identities.folder(s) for s in specs[:2]] == ["server", "users/aws-talos-1"]


def test_a_node_named_as_an_etcd_identity_does_not_validate(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    text = (EXAMPLES / "three-clouds" / "mesh.yaml").read_text().replace("name: aws-talos-1", "name: root")
    shutil.copytree(EXAMPLES / "three-clouds", tmp_path, dirs_exist_ok=True)
    mesh.write_text(text)
    with pytest.raises(SpecError) as err:
        compile_mesh(mesh, tmp_path / "state", dry_run=True)
    assert any("node name root is reserved" in str(p) for p in err.value.problems), err.value.problems


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def test_certificates_are_issued_once_and_kept(compiled: Compiled) -> None:
    old = os.umask(0)
    try:
        first = compiled.etcd_tls(NOW)
    finally:
        os.umask(old)
    folder = compiled.store.root / "etcd-pki"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.suffix == ".key" else 0o644), path
    assert first.renewed == {s.spec.secret for s in first.certs}
    ca = _cert(first.ca_cert_pem)
    for issued in first.certs:
        cert = _cert(issued.cert_pem)
        assert cert.issuer == ca.subject
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == issued.spec.common_name
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
        assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == issued.spec.server
    server = _cert(first.certs[[c.spec.secret for c in first.certs].index("server")].cert_pem)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]

    again = compiled.etcd_tls(NOW + timedelta(days=100))
    assert again.renewed == frozenset() and again.certs == first.certs and again.ca_cert_pem == first.ca_cert_pem

    # another server address: only the server certificate is issued anew
    moved = compiled.etcd_tls(NOW, server_ips=["10.0.0.2"])
    assert moved.renewed == {"server"}

    # less than 30 days left: issued anew by the same CA; the ClusterMesh CA is another one
    end = _cert(first.certs[1].cert_pem).not_valid_after_utc
    kept = compiled.etcd_tls(end - pki.ETCD_RENEW_BEFORE - timedelta(days=1), server_ips=["10.0.0.2"])
    assert kept.renewed == frozenset()
    late = compiled.etcd_tls(end - pki.ETCD_RENEW_BEFORE + timedelta(days=1), server_ips=["10.0.0.2"])
    assert late.renewed == {s.spec.secret for s in first.certs} and late.ca_cert_pem == first.ca_cert_pem
    assert "etcd CA" in ca.subject.rfc4514_string()


def test_the_files_of_each_identity(compiled: Compiled) -> None:
    files = tls_files(compiled.etcd_tls(NOW))
    assert {p for p in files if p.startswith("server/")} == {"server/ca.crt", "server/tls.crt", "server/tls.key"}
    assert files["users/root/tls.key"].mode == 0o600 and files["users/root/tls.key"].secret
    assert files["users/root/ca.crt"].mode == 0o644
    ca_key = (compiled.store.root / "etcd-pki" / "ca.key").read_text()
    assert all(ca_key not in f.content for f in files.values()), "the CA's key left the state directory"


def test_the_command(tmp_path: Path) -> None:
    mesh = EXAMPLES / "three-clouds" / "mesh.yaml"
    state, out = tmp_path / "state", tmp_path / "out"
    runner = CliRunner()
    args = ["pki", "etcd", str(mesh), "--state", str(state), "--output-dir", str(out), "-o", "json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    rows = json.loads(first.output)["identities"]
    assert all(r["issued"] for r in rows) and len(rows) == 7
    assert stat.S_IMODE((out / "users" / "aws-talos-1" / "tls.key").stat().st_mode) == 0o600
    assert not (state / "keys").exists() and not (state / "allocations.json").exists(), "pki wrote more than the PKI"
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and not any(r["issued"] for r in json.loads(second.output)["identities"])
    assert (state / "etcd-pki" / "ca.key").read_text() not in first.output + second.output
    bad = runner.invoke(app, ["pki", "etcd", str(mesh), "--state", str(state), "--server-ip", "10.0.0.300"])
    assert bad.exit_code == 2 and "not an IP address" in bad.output
    helped = runner.invoke(app, ["pki", "etcd", "--help"])
    assert "0600" in helped.output and "users/<CN>/" in helped.output
