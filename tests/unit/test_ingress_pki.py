"""The ingress CA in the state directory and the listeners' server certificates: what a client
outside verifies (the chain to ca.crt, the name it asked for), kept across renders, issued anew when
the hostnames change or at half-life, keys 0600 whatever the umask; and a Secret's certificate
read with a clear message when it is not one."""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from crossmesh.errors import StateError
from crossmesh.gateway.model import Gateway, HTTPRoute, Listener, ParentRef, Protocol
from crossmesh.identity import ingress
from crossmesh.state import certs
from crossmesh.state.ingresspki import ingress_ca_pem, listener_pem
from crossmesh.state.store import StateStore

NOW = datetime(2026, 3, 1, tzinfo=UTC)
LID = ingress.ListenerId("cluster1", "shop", "web", "https")


def issue(state: Path, names: tuple[str, ...], now: datetime = NOW, lid: ingress.ListenerId = LID) -> bytes:
    return listener_pem(
        state,
        mesh="m",
        cluster=lid.cluster,
        namespace=lid.namespace,
        gateway=lid.gateway,
        listener=lid.listener,
        hostnames=names,
        now=now,
    )


def verify(pem: bytes, ca_pem: bytes, host: str, when: datetime = NOW) -> None:
    """What a TLS client does with the chain a listener serves (leaf first), trusting ca.crt only."""
    chain = x509.load_pem_x509_certificates(pem)
    root = x509.load_pem_x509_certificate(ca_pem)
    verifier = PolicyBuilder().store(Store([root])).time(when).build_server_verifier(x509.DNSName(host))
    verifier.verify(chain[0], chain[1:])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_client_trusting_the_ingress_ca_accepts_the_listener_for_its_hostname(tmp_path: Path) -> None:
    pem = issue(tmp_path, ("shop.example.com",))
    ca_pem = ingress_ca_pem(tmp_path)
    verify(pem, ca_pem, "shop.example.com")
    with pytest.raises(VerificationError):
        verify(pem, ca_pem, "other.example.com")
    # HAProxy's crt: leaf, CA, then the key that matches the leaf.
    assert pem.count(b"BEGIN CERTIFICATE") == 2 and pem.rstrip().endswith(b"-----END PRIVATE KEY-----")
    assert ingress.secret_pem(_secret(pem)) == pem


def test_a_wildcard_listener_gets_a_wildcard_name(tmp_path: Path) -> None:
    pem = issue(tmp_path, ("*.example.com",))
    leaf = x509.load_pem_x509_certificates(pem)[0]
    assert ingress.dns_names(leaf) == ("*.example.com",)
    verify(pem, ingress_ca_pem(tmp_path), "shop.example.com")


def test_keys_are_0600_and_the_folder_0700_under_umask_000(tmp_path: Path, open_umask: None) -> None:
    issue(tmp_path, ("shop.example.com",))
    folder = tmp_path / "ingress-pki"
    assert mode(folder) == 0o700
    assert mode(folder / "ca.key") == 0o600
    assert mode(folder / f"{LID.stem}.key") == 0o600
    assert mode(folder / "ca.crt") == 0o644


def test_a_second_render_serves_the_same_certificate(tmp_path: Path) -> None:
    first = issue(tmp_path, ("shop.example.com",))
    assert issue(tmp_path, ("shop.example.com",), NOW + timedelta(days=30)) == first


def test_changed_hostnames_give_a_new_certificate_under_the_same_ca(tmp_path: Path) -> None:
    first = issue(tmp_path, ("shop.example.com",))
    ca_pem = ingress_ca_pem(tmp_path)
    second = issue(tmp_path, ("shop.example.com", "www.example.com"))
    assert second != first
    verify(second, ca_pem, "www.example.com")
    assert ingress_ca_pem(tmp_path) == ca_pem


def test_past_half_life_a_certificate_is_issued_anew(tmp_path: Path) -> None:
    first = issue(tmp_path, ("shop.example.com",))
    half = ingress.LISTENER_VALIDITY / 2
    assert issue(tmp_path, ("shop.example.com",), NOW + half - timedelta(days=1)) == first
    later = NOW + half + timedelta(days=1)
    renewed = issue(tmp_path, ("shop.example.com",), later)
    assert renewed != first
    verify(renewed, ingress_ca_pem(tmp_path), "shop.example.com", later)


def test_listeners_have_certificates_of_their_own(tmp_path: Path) -> None:
    other = ingress.ListenerId("cluster1", "shop", "web", "admin")
    a = issue(tmp_path, ("shop.example.com",))
    b = issue(tmp_path, ("shop.example.com",), lid=other)
    assert a.split(b"-----END CERTIFICATE-----")[0] != b.split(b"-----END CERTIFICATE-----")[0]
    kept = StateStore(tmp_path).ingress_kept()
    assert [k.stem for k in kept] == sorted([LID.stem, other.stem])


def test_a_lone_ca_key_stops_with_the_fix(tmp_path: Path) -> None:
    issue(tmp_path, ("shop.example.com",))
    (tmp_path / "ingress-pki" / "ca.crt").unlink()
    with pytest.raises(StateError, match=r"ca.crt is missing while its pair is there — restore it"):
        issue(tmp_path, ("shop.example.com",))


def test_the_ca_before_any_render_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="render a mesh whose Gateway has a mesh certificate first"):
        ingress_ca_pem(tmp_path)


# names ---------------------------------------------------------------------------------------
def _gateway(hostname: str | None) -> tuple[Gateway, Listener]:
    li = Listener("https", 443, Protocol.HTTPS, hostname)
    return Gateway("shop", "web", "istio", (li, Listener("http", 80, Protocol.HTTP))), li


def test_a_listener_hostname_is_the_only_name() -> None:
    gw, li = _gateway("*.example.com")
    route = HTTPRoute("shop", "r", (ParentRef("shop", "web"),), ("a.other.org",))
    assert ingress.listener_names(gw, li, [route]) == ("*.example.com",)


def test_without_a_hostname_the_attached_routes_name_it() -> None:
    gw, li = _gateway(None)
    routes = [
        HTTPRoute("shop", "a", (ParentRef("shop", "web"),), ("b.example.com", "A.example.com")),
        HTTPRoute("shop", "b", (ParentRef("shop", "web", section="https"),), ("c.example.com",)),
        HTTPRoute("shop", "c", (ParentRef("shop", "web", section="http"),), ("plain.example.com",)),
        HTTPRoute("shop", "d", (ParentRef("shop", "other"),), ("elsewhere.example.com",)),
    ]
    assert ingress.listener_names(gw, li, routes) == ("a.example.com", "b.example.com", "c.example.com")


def test_with_no_hostname_anywhere_the_gateway_service_is_named() -> None:
    gw, li = _gateway(None)
    assert ingress.listener_names(gw, li, []) == ("web-istio.shop.svc.cluster.local",)


# Secrets of the manifests ---------------------------------------------------------------------
def _secret(pem: bytes, **override: object) -> dict[str, object]:
    key_at = pem.index(b"-----BEGIN PRIVATE KEY-----")
    data = {
        "tls.crt": base64.b64encode(pem[:key_at]).decode(),
        "tls.key": base64.b64encode(pem[key_at:]).decode(),
    }
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "data": data, **override}


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return issue(tmp_path_factory.mktemp("state"), ("shop.example.com",))


def test_a_secret_with_string_data_reads_the_same(pem: bytes) -> None:
    key_at = pem.index(b"-----BEGIN PRIVATE KEY-----")
    raw = _secret(pem, data={}, stringData={"tls.crt": pem[:key_at].decode(), "tls.key": pem[key_at:].decode()})
    assert ingress.secret_pem(raw) == pem


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": "Opaque"}, r"type: 'Opaque' — write 'type: kubernetes.io/tls'"),
        ({"kind": "ConfigMap"}, r"kind: 'ConfigMap'"),
        ({"data": {"tls.key": "eA=="}}, r"data.tls.crt: missing"),
        ({"data": {"tls.crt": "%%%", "tls.key": "eA=="}}, r"data.tls.crt: not base64"),
        ({"data": {"tls.crt": "aGVsbG8=", "tls.key": "eA=="}}, r"data.tls.crt: not a PEM certificate chain"),
        ({"data": {"tls.crt": 7, "tls.key": "eA=="}}, r"data.tls.crt: found int"),
    ],
)
def test_a_malformed_secret_names_the_field(pem: bytes, change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ingress.secret_pem(_secret(pem, **change))


def test_a_key_that_is_not_the_certificates_is_refused(pem: bytes) -> None:
    raw = _secret(pem)
    other = certs.key_pem(certs.new_key()).encode()
    raw["data"] = {**raw["data"], "tls.key": base64.b64encode(other).decode()}  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="data.tls.key: the key does not belong to the first certificate"):
        ingress.secret_pem(raw)


def test_a_key_that_is_not_pem_is_refused(pem: bytes) -> None:
    raw = _secret(pem)
    raw["data"] = {**raw["data"], "tls.key": base64.b64encode(b"not a key").decode()}  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="data.tls.key: not a PEM private key"):
        ingress.secret_pem(raw)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs Debian's haproxy (installed by .ci/run)")
def test_haproxy_takes_the_listener_pem_as_its_crt(tmp_path: Path) -> None:
    crt = tmp_path / "listener.pem"
    crt.write_bytes(issue(tmp_path / "state", ("shop.example.com",)))
    cfg = tmp_path / "haproxy.cfg"  # -c checks the configuration and loads the crt; it binds nothing
    cfg.write_text(
        "defaults\n  mode http\n  timeout client 1s\n  timeout server 1s\n  timeout connect 1s\n"
        f"frontend f\n  bind 127.0.0.1:8443 ssl crt {crt}\n  default_backend b\n"
        "backend b\n  server s 127.0.0.1:1\n"
    )
    result = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
