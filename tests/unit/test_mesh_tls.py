"""The node proxy's TLS (meshtls, meshproxy helpers) over real sockets: two workloads of a mesh
complete a TLS 1.3 handshake with their SVIDs and each names the other's SPIFFE id; a peer of
another trust domain, from a revoked intermediate, or with an expired certificate is refused with
a reason a log can show; Envoy's X-Forwarded-Client-Cert is added to a request head."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from crossmesh.drivers.lab.meshtls import Bundle, check_peer, contexts, http_head, tls_error, with_xfcc
from crossmesh.identity.spiffe import SpiffeId
from crossmesh.identity.svid import Authority, make_csr, new_intermediate, new_root, sign_csr

TD = "cluster.local"
NOW = datetime.now(UTC)


def _svid(ca: Authority, spiffe: SpiffeId, now: datetime | None = None, ttl: timedelta = timedelta(hours=1)):  # type: ignore[no-untyped-def]  # noqa: ANN202
    key = ec.generate_private_key(ec.SECP256R1())
    chain = sign_csr(ca, make_csr(key, spiffe), lambda _: True, now or datetime.now(UTC), ttl)
    return key, chain


@pytest.fixture(scope="module")
def pki() -> dict[str, Authority]:
    root = new_root("m", TD, NOW)
    return {
        "root": root,
        "c1": new_intermediate(root, "c1", TD, NOW),
        "c2": new_intermediate(root, "c2", TD, NOW),
        "other": new_intermediate(root, "other", "example.org", NOW),
    }


def _bundle(pki: dict[str, Authority], chain: bytes, revoked: frozenset[int] = frozenset()) -> Bundle:
    inters = tuple(pki[c].cert for c in ("c1", "c2", "other"))
    return Bundle(chain, (pki["root"].cert,), inters, revoked, (datetime.now(UTC) + timedelta(hours=1)).timestamp())


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[bytes | None, bytes | None]:
    """(the client's certificate as the server saw it, the server's as the client saw it)."""
    seen: dict[str, bytes | None] = {}
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["client"] = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()
        done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="x")
        server_cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(b"hello\n")
        assert await reader.readline() == b"hello\n"
        writer.close()
        await asyncio.wait_for(done.wait(), 5)
    finally:
        server.close()
    return seen["client"], server_cert


def test_two_workloads_of_the_mesh_see_each_others_spiffe_ids(pki: dict[str, Authority]) -> None:
    a, b = SpiffeId(TD, "default", "client"), SpiffeId(TD, "shop", "server")
    ka, ca = _svid(pki["c1"], a)
    kb, cb = _svid(pki["c2"], b)
    server_ctx, _ = contexts(cb, kb, (pki["root"].cert,))
    _, client_ctx = contexts(ca, ka, (pki["root"].cert,))
    client_cert, server_cert = asyncio.run(_handshake(server_ctx, client_ctx))
    seen_by_server = check_peer(client_cert, _bundle(pki, cb), TD)
    seen_by_client = check_peer(server_cert, _bundle(pki, ca), TD)
    assert seen_by_server.ok and seen_by_server.spiffe == a
    assert seen_by_client.ok and seen_by_client.spiffe == b


def test_another_trust_domain_and_a_revoked_intermediate_are_refused(pki: dict[str, Authority]) -> None:
    stranger = SpiffeId("example.org", "default", "x")
    ks, cs = _svid(pki["other"], stranger)
    kb, cb = _svid(pki["c2"], SpiffeId(TD, "shop", "server"))
    server_ctx, _ = contexts(cb, kb, (pki["root"].cert,))
    _, client_ctx = contexts(cs, ks, (pki["root"].cert,))
    client_cert, _ = asyncio.run(_handshake(server_ctx, client_ctx))  # the chain is the root's: TLS is fine
    verdict = check_peer(client_cert, _bundle(pki, cb), TD)
    assert not verdict.ok and verdict.reason == "trust domain example.org is not cluster.local"
    ka, ca = _svid(pki["c1"], SpiffeId(TD, "default", "client"))
    revoked = check_peer(_leaf_der(ca), _bundle(pki, cb, frozenset({pki["c1"].cert.serial_number})), TD)
    assert not revoked.ok and revoked.reason == "issued by revoked intermediate c1"


def test_an_expired_certificate_fails_the_handshake_with_openssls_reason(pki: dict[str, Authority]) -> None:
    ke, ce = _svid(pki["c1"], SpiffeId(TD, "default", "old"), NOW - timedelta(hours=3), timedelta(hours=1))
    kb, cb = _svid(pki["c2"], SpiffeId(TD, "shop", "server"))
    server_ctx, _ = contexts(cb, kb, (pki["root"].cert,))
    _, client_ctx = contexts(ce, ke, (pki["root"].cert,))
    left, right = socket.socketpair()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server_ctx.wrap_socket(right, server_side=True).recv(1)
        except (ssl.SSLError, OSError) as err:
            failure.append(err)
        finally:
            right.close()

    thread = threading.Thread(target=serve)
    thread.start()
    with contextlib.suppress(ssl.SSLError, OSError):
        client_ctx.wrap_socket(left).recv(1)  # TLS 1.3: the client learns only that the server hung up
    left.close()
    thread.join(5)
    assert isinstance(failure[0], ssl.SSLCertVerificationError)
    assert tls_error(failure[0]) == "certificate verification: certificate has expired"


def test_the_request_head_gets_the_identity_the_server_saw() -> None:
    head = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: By=forged\r\n\r\n"
    assert http_head(head) == ("GET", "/x")
    assert http_head(b"\x16\x03\x01") is None
    out = with_xfcc(head, "spiffe://cluster.local/ns/shop/sa/server", "spiffe://cluster.local/ns/default/sa/client")
    assert b"forged" not in out
    assert out.endswith(
        b"X-Forwarded-Client-Cert: By=spiffe://cluster.local/ns/shop/sa/server;"
        b"URI=spiffe://cluster.local/ns/default/sa/client\r\n\r\n"
    )
    # With the client's certificate: its SHA-256 between By and URI, as Envoy writes it.
    hashed = with_xfcc(head, "spiffe://td/ns/a/sa/s", "spiffe://td/ns/b/sa/c", b"der")
    assert b";Hash=" + hashlib.sha256(b"der").hexdigest().encode() + b";URI=spiffe://td/ns/b/sa/c" in hashed


def _leaf_der(chain: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_pem_x509_certificates(chain)[0].public_bytes(serialization.Encoding.DER)


def test_a_good_peer_is_remembered_only_while_valid_and_against_the_same_revocations(
    pki: dict[str, Authority], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test's own clock, not the module's: a long run (CI) collects this file half an hour before it runs it.
    now = datetime.now(UTC)
    _, chain = _svid(pki["c1"], SpiffeId(TD, "default", "cached"), now, timedelta(minutes=30))
    leaf = _leaf_der(chain)
    bundle = _bundle(pki, chain)
    assert check_peer(leaf, bundle, TD).ok and check_peer(leaf, bundle, TD).ok  # judged, then remembered
    # A revocation is a new bundle: judged again, refused.
    revoked = _bundle(pki, chain, frozenset({pki["c1"].cert.serial_number}))
    assert check_peer(leaf, revoked, TD).reason == "issued by revoked intermediate c1"
    # Past the leaf's end the remembered verdict no longer holds.
    later = (now + timedelta(hours=1)).timestamp()
    monkeypatch.setattr("crossmesh.drivers.lab.meshtls.time.time", lambda: later)
    expired = check_peer(leaf, bundle, TD)
    assert not expired.ok and "expired" in expired.reason
