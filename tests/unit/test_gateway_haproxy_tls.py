"""HTTPS listeners on the gateway's HAProxy: SNI picks the listener's certificate (chain verified
against the CA that issued it), a port without a hostname-less listener refuses names no listener
serves, TLS 1.2 is the floor, ALPN offers http/1.1, and plain HTTP on the port gets no HTTP answer."""

from __future__ import annotations

import http.client
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from haproxy_kit import CA, LOOPBACK, check, free_port, haproxy, leaf_pem, make_ca, upstreams, write

from crossmesh.gateway.haproxy import render
from crossmesh.gateway.model import TLS, Backend, Gateway, HTTPRoute, Listener, ParentRef, Protocol, Rule, SecretRef

STRICT, DEFAULT = free_port(), free_port()
SECRET = TLS(secrets=(SecretRef("web", "tls"),))
GATEWAY = Gateway(
    "web",
    "secure",
    "istio",
    (
        Listener("shop", STRICT, Protocol.HTTPS, "shop.example.com", SECRET),
        Listener("wild", STRICT, Protocol.HTTPS, "*.example.com", SECRET),
        Listener("any", DEFAULT, Protocol.HTTPS, None, SECRET),
        Listener("shop-too", DEFAULT, Protocol.HTTPS, "shop.example.com", SECRET),
    ),
)
ROUTE = HTTPRoute("web", "app", (ParentRef("web", "secure"),), (), (Rule(backends=(Backend("web", "app", 8080),)),))
SUBJECTS = {"shop": "shop.example.com", "wild": "*.example.com", "any": "anything", "shop-too": "shop.example.com"}


@pytest.fixture(scope="module")
def ca() -> CA:
    return make_ca()


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, ca: CA) -> Iterator[None]:
    directory = tmp_path_factory.mktemp("secure")
    certificates = {}
    for listener, subject in SUBJECTS.items():
        pem = directory / f"{listener}.pem"
        pem.write_bytes(leaf_pem(ca, f"{listener} {subject}", [subject]))
        certificates[listener] = str(pem)
    with upstreams(["web/app:8080"]) as addresses:
        config = render(
            GATEWAY,
            [ROUTE],
            upstreams=addresses,
            certificates=certificates,
            stats_socket=str(directory / "stats.sock"),
            crt_list_dir=str(directory),
            address=LOOPBACK,
        )
        cfg = write(config, directory)
        assert check(cfg) == ""
        with haproxy(cfg, directory / "stats.sock", [STRICT, DEFAULT]):
            yield


def client(ca: CA, *, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.pem.decode())
    if not verify:
        ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def handshake(ctx: ssl.SSLContext, port: int, sni: str) -> tuple[str, str | None, str | None]:
    """The certificate's subject CN, the ALPN protocol and the TLS version a handshake gets."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=sni) as tls:
        cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
        subject = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return str(subject), tls.selected_alpn_protocol(), tls.version()


def test_sni_picks_the_listeners_certificate(secure: None, ca: CA) -> None:
    ctx = client(ca)  # verifies the chain and the name: the PEM carries the chain HAProxy sends
    assert handshake(ctx, STRICT, "shop.example.com") == ("shop shop.example.com", "http/1.1", "TLSv1.3")
    assert handshake(ctx, STRICT, "a.example.com")[0] == "wild *.example.com"
    assert handshake(ctx, DEFAULT, "shop.example.com")[0] == "shop-too shop.example.com"
    unverified = client(ca, verify=False)
    assert handshake(unverified, DEFAULT, "other.org")[0] == "any anything"  # the hostname-less listener's


def test_a_name_no_listener_serves_is_refused(secure: None, ca: CA) -> None:
    for sni in ("other.org", "example.com"):
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            handshake(client(ca, verify=False), STRICT, sni)


def test_tls_below_1_2_is_refused(secure: None, ca: CA) -> None:
    ctx = client(ca, verify=False)
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # Python deprecates the old versions: exactly what is tried here
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        handshake(ctx, STRICT, "shop.example.com")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(ctx, STRICT, "shop.example.com")[2] == "TLSv1.2"


def test_requests_over_tls_are_routed(secure: None, ca: CA) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, STRICT, timeout=5)
    raw = socket.create_connection((LOOPBACK, STRICT), timeout=5)
    conn.sock = client(ca).wrap_socket(raw, server_hostname="shop.example.com")  # SNI as a browser sends it
    conn.request("GET", "/x", headers={"Host": "shop.example.com"})
    response = conn.getresponse()
    assert response.status == 200 and b'"name": "web/app:8080"' in response.read()
    conn.close()


def test_plain_http_on_an_https_port_gets_no_http_answer(secure: None) -> None:
    for port in (STRICT, DEFAULT):
        with socket.create_connection((LOOPBACK, port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
            got = b""
            try:
                while chunk := s.recv(4096):
                    got += chunk
            except (ConnectionResetError, TimeoutError):
                pass
        assert not got.startswith(b"HTTP/"), got[:100]


def test_crt_lists_name_each_listener_certificate(tmp_path: Path) -> None:
    certificates = {name: f"/certs/{name}.pem" for name in SUBJECTS}
    config = render(GATEWAY, [ROUTE], upstreams={"web/app:8080": ("10.96.0.1", 8080)}, certificates=certificates,
                    stats_socket="/run/s", crt_list_dir="/run/haproxy")  # fmt: skip
    assert config.crt_lists == {
        f"/run/haproxy/port-{STRICT}.crtlist": "/certs/shop.pem shop.example.com\n/certs/wild.pem *.example.com\n",
        f"/run/haproxy/port-{DEFAULT}.crtlist": "/certs/any.pem !*\n/certs/shop-too.pem shop.example.com\n",
    }
    binds = [line.split()[1:4] for line in config.text.splitlines() if line.strip().startswith("bind ")]
    assert binds == [
        [f"0.0.0.0:{p}", "ssl", kind] for p, kind in sorted([(STRICT, "strict-sni"), (DEFAULT, "crt-list")])
    ]
