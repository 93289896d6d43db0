"""The service mesh's Istio PKI in the state directory: made once with private keys 0600 whatever
the umask, read back byte for byte, a revoked intermediate replaced (and refused by verifiers), and
a damaged folder stopping with the fix instead of a new root behind the user's back."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from crossmesh.errors import StateError, UnsafePath
from crossmesh.identity.spiffe import SpiffeId
from crossmesh.identity.svid import istio_ca, make_csr, sign_csr, verify_svid
from crossmesh.state import certs
from crossmesh.state.store import StateStore

NOW = datetime(2026, 3, 1, tzinfo=UTC)
TD = "cluster.local"
ALICE = SpiffeId(TD, "default", "alice")


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


def _files(store: StateStore) -> dict[str, bytes]:
    folder = store.root / "istio-pki"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_cas_are_made_once_private_and_read_back_the_same(store: StateStore) -> None:
    old = os.umask(0)
    try:
        root, cas = store.istio_cas("demo", TD, ["west", "east", "east"], NOW)
    finally:
        os.umask(old)
    folder = store.root / "istio-pki"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{s}.{e}" for s in ("intermediate.east", "intermediate.west", "root") for e in ("crt", "key")]
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == (0o600 if path.suffix == ".key" else 0o644), path
    assert list(cas) == ["east", "west"]
    assert all(certs.signed_by(ca.cert, root) for ca in cas.values())
    before = _files(store)
    again_root, again = store.istio_cas("demo", TD, ["east", "west"], NOW + timedelta(days=30))
    assert _files(store) == before and again_root == root
    assert {c: a.cert for c, a in again.items()} == {c: a.cert for c, a in cas.items()}
    # a cluster added later gets an intermediate of the same root; the others stay as they were
    _, more = store.istio_cas("demo", TD, ["east", "west", "north"], NOW)
    assert more["east"].cert == cas["east"].cert and certs.signed_by(more["north"].cert, root)


def test_the_cacerts_of_a_cluster_hold_what_istio_expects(store: StateStore) -> None:
    root, cas = store.istio_cas("demo", TD, ["east"], NOW)
    made = istio_ca("east", root, cas["east"])
    assert made.cluster == "east" and made.root_cert_pem == certs.cert_pem(root)
    assert made.cert_pem == certs.cert_pem(cas["east"].cert)
    assert certs.load_key(made.key_pem).private_numbers() == cas["east"].key.private_numbers()
    assert x509.load_pem_x509_certificates(made.chain_pem.encode()) == [cas["east"].cert, root]


def test_revoking_an_intermediate_replaces_it_and_peers_refuse_what_it_signed(store: StateStore) -> None:
    root, cas = store.istio_cas("demo", TD, ["east", "west"], NOW)
    svid = sign_csr(cas["east"], make_csr(certs.new_key(), ALICE), lambda _: True, NOW, timedelta(hours=1))
    assert store.istio_revoked() == frozenset()
    store.istio_revoke("east")
    assert not (store.root / "istio-pki" / "intermediate.east.key").exists()
    gone = store.istio_revoked()
    assert gone == {cas["east"].cert.serial_number}
    verdict = verify_svid(svid, [root], TD, NOW, gone)
    assert not verdict.ok and verdict.reason == "issued by revoked intermediate east"
    [entry] = store.istio_revocations()
    assert entry["cluster"] == "east" and int(entry["serial"], 16) == cas["east"].cert.serial_number
    _, after = store.istio_cas("demo", TD, ["east", "west"], NOW)
    assert after["east"].cert != cas["east"].cert and after["west"].cert == cas["west"].cert
    assert after["east"].cert.serial_number not in store.istio_revoked()
    fresh = sign_csr(after["east"], make_csr(certs.new_key(), ALICE), lambda _: True, NOW, timedelta(hours=1))
    assert verify_svid(fresh, [root], TD, NOW, store.istio_revoked()).ok
    with pytest.raises(StateError, match="cluster south has no Istio intermediate"):
        store.istio_revoke("south")


def test_an_intermediate_of_another_trust_domain_is_issued_anew(store: StateStore) -> None:
    _, cas = store.istio_cas("demo", TD, ["east"], NOW)
    _, moved = store.istio_cas("demo", "example.org", ["east"], NOW)
    assert moved["east"].cert != cas["east"].cert


def test_a_damaged_root_stops_with_the_fix(store: StateStore) -> None:
    store.istio_cas("demo", TD, ["east"], NOW)
    folder = store.root / "istio-pki"
    (folder / "root.key").unlink()
    with pytest.raises(StateError, match=r"root.key is missing while its pair is there — restore it"):
        store.istio_cas("demo", TD, ["east"], NOW)
    (folder / "root.key").write_text(certs.key_pem(certs.new_key()))
    os.chmod(folder / "root.key", 0o600)
    with pytest.raises(StateError, match=r"does not match its key.*delete both .*root.key and .*root.crt"):
        store.istio_cas("demo", TD, ["east"], NOW)
    (folder / "root.crt").write_text("garbage")
    with pytest.raises(StateError, match=r"the Istio root in .* is unreadable"):
        store.istio_cas("demo", TD, ["east"], NOW)


def test_a_shared_key_or_a_mismatched_intermediate_is_refused(store: StateStore) -> None:
    store.istio_cas("demo", TD, ["east", "west"], NOW)
    folder = store.root / "istio-pki"
    os.chmod(folder / "intermediate.east.key", 0o644)
    with pytest.raises(UnsafePath, match=r"readable by other users .* `chmod 600 "):
        store.istio_cas("demo", TD, ["east"], NOW)
    os.chmod(folder / "intermediate.east.key", 0o600)
    (folder / "intermediate.east.key").write_bytes((folder / "intermediate.west.key").read_bytes())
    with pytest.raises(StateError, match=r"intermediate of cluster east does not match its key — delete"):
        store.istio_cas("demo", TD, ["east"], NOW)


def test_a_link_in_the_folder_is_not_followed(store: StateStore, tmp_path: Path) -> None:
    store.istio_cas("demo", TD, ["east"], NOW)
    folder = store.root / "istio-pki"
    elsewhere = tmp_path / "elsewhere.crt"
    elsewhere.write_bytes((folder / "root.crt").read_bytes())
    (folder / "root.crt").unlink()
    (folder / "root.crt").symlink_to(elsewhere)
    with pytest.raises(UnsafePath, match="root.crt is a symbolic link"):
        store.istio_cas("demo", TD, ["east"], NOW)


def test_a_broken_revocation_list_stops_with_the_fix(store: StateStore) -> None:
    store.istio_cas("demo", TD, ["east"], NOW)
    (store.root / "istio-pki" / "revoked.json").write_text(json.dumps([{"serial": "zz"}]))
    with pytest.raises(StateError, match="deleting it un-revokes"):
        store.istio_revoked()
    assert StateStore(store.root.parent / "never").istio_revoked() == frozenset()


MESH = """\
apiVersion: crossmesh.io/v1alpha1
kind: Mesh
metadata:
  name: demo
spec:
  istio:
    workloadCertTTL: 1h
  sites:
    - name: east
      provider: aws
      network: 10.1.0.0/16
  clusters:
    - name: one
      nodes:
        - name: e1
          site: east
          address: 10.1.0.11
    - name: two
      nodes:
        - name: e2
          site: east
          address: 10.1.0.12
"""


def test_the_command_shows_the_cas_revokes_one_and_never_prints_a_key(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crossmesh.cli.main import app

    mesh, state = tmp_path / "mesh.yaml", tmp_path / "state"
    mesh.write_text(MESH)
    runner = CliRunner()
    first = runner.invoke(app, ["pki", "istio", str(mesh), "--state", str(state), "-o", "json"])
    assert first.exit_code == 0, first.output
    rows = json.loads(first.output)["authorities"]
    assert [(r["kind"], r["name"], r["revoked"]) for r in rows] == [
        ("root", "demo", False),
        ("intermediate", "one", False),
        ("intermediate", "two", False),
    ]
    old_one = rows[1]["serial"]
    second = runner.invoke(app, ["pki", "istio", str(mesh), "--state", str(state), "--revoke", "one"])
    assert second.exit_code == 0, second.output
    assert "revoked      one" in second.output and old_one in second.output and "1 revoked" in second.output
    assert StateStore(state).istio_revoked() == {int(old_one, 16)}
    folder = state / "istio-pki"
    for key in folder.glob("*.key"):
        assert key.read_text() not in first.output + second.output
    assert not (state / "keys").exists() and not (state / "allocations.json").exists(), "pki wrote more than the PKI"
    bad = runner.invoke(app, ["pki", "istio", str(mesh), "--state", str(state), "--revoke", "three"])
    assert bad.exit_code == 2 and "no such cluster" in bad.output and "Traceback" not in bad.output
    mesh.write_text(MESH.replace("  istio:\n    workloadCertTTL: 1h\n", ""))
    none = runner.invoke(app, ["pki", "istio", str(mesh), "--state", str(state)])
    assert none.exit_code == 2 and "has no service mesh" in none.output
