"""The mesh PKI's certificates: a CSR signed by a cluster's intermediate is an SVID every cluster of
the mesh accepts, and each way a chain can be wrong is refused with a reason that names it. The last
test runs a real TLS 1.3 handshake through OpenSSL, as the node proxies do, so the certificates'
extensions (name constraints, key usage, critical SAN) are checked by the verifier that matters."""

from __future__ import annotations

import contextlib
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from crossmesh.identity.spiffe import SpiffeId
from crossmesh.identity.svid import (
    Authority,
    make_csr,
    new_intermediate,
    new_root,
    sign_csr,
    unit_of,
    verify_svid,
)
from crossmesh.state import certs

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TD = "cluster.local"
HOUR = timedelta(hours=1)
ALICE = SpiffeId(TD, "default", "alice")
ROOT = new_root("demo", TD, NOW)
EAST = new_intermediate(ROOT, "east", TD, NOW)
WEST = new_intermediate(ROOT, "west", TD, NOW)


def anyone(_: SpiffeId) -> bool:
    return True


def svid(ca: Authority = EAST, who: SpiffeId = ALICE, *, now: datetime = NOW, ttl: timedelta = HOUR) -> bytes:
    return sign_csr(ca, make_csr(certs.new_key(), who), anyone, now, ttl)


def leaf(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem)[0]


def test_a_signed_csr_is_an_svid_of_the_workload_that_every_cluster_accepts() -> None:
    key = certs.new_key()
    pem = sign_csr(EAST, make_csr(key, ALICE), anyone, NOW, HOUR)
    chain = x509.load_pem_x509_certificates(pem)
    assert [c.subject for c in chain[1:]] == [EAST.cert.subject]  # leaf + intermediate, no root
    cert = chain[0]
    assert certs.public_key_der(cert.public_key()) == certs.public_key_der(key.public_key())
    assert cert.not_valid_before_utc < NOW <= cert.not_valid_after_utc == NOW + HOUR
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    verdict = verify_svid(pem, [ROOT.cert], TD, NOW + timedelta(minutes=30))
    assert verdict.ok and verdict.spiffe == ALICE, verdict
    # a west workload checks an east one with the same root, and the chain may come parsed
    assert verify_svid(chain, [ROOT.cert], TD, NOW).ok


def test_the_ca_layout_is_istios_plug_in_ca() -> None:
    basic = ROOT.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 1 and ROOT.cert.issuer == ROOT.cert.subject
    basic = EAST.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0 and EAST.cert.issuer == ROOT.cert.subject
    assert certs.signed_by(EAST.cert, ROOT.cert) and EAST.chain == ()
    nc = EAST.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and list(nc.value.permitted_subtrees or []) == [x509.UniformResourceIdentifier(TD)]
    assert (unit_of(ROOT.cert), unit_of(EAST.cert)) == ("demo", "east")
    assert EAST.cert.not_valid_after_utc <= ROOT.cert.not_valid_after_utc


def test_only_the_spiffe_id_is_copied_from_the_csr() -> None:
    key = certs.new_key()
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root CA")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ALICE.uri), x509.DNSName("bank.example")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert = leaf(sign_csr(EAST, greedy, anyone, NOW, HOUR))
    assert cert.subject == x509.Name([])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(ALICE.uri)]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_leaf_never_outlives_its_intermediate() -> None:
    cert = leaf(svid(ttl=timedelta(days=100 * 365)))
    assert cert.not_valid_after_utc == EAST.cert.not_valid_after_utc


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, names: list[x509.GeneralName]) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _uri(text: str) -> x509.GeneralName:
    return x509.UniformResourceIdentifier(text)


@pytest.mark.parametrize(
    ("csr", "reason"),
    [
        (b"not a csr", "not a PEM certificate request"),
        (_csr(certs.new_key(), []), "asks for no SPIFFE id"),
        (_csr(certs.new_key(), [x509.DNSName("alice.default.svc")]), "asks for no URI SANs"),
        (_csr(certs.new_key(), [_uri(ALICE.uri), _uri(ALICE.uri + "2")]), "asks for 2 URI SANs"),
        (_csr(certs.new_key(), [_uri("spiffe://cluster.local/alice")]), "not an Istio workload id"),
        (_csr(rsa.generate_private_key(65537, 2048), [_uri(ALICE.uri)]), "not an ECDSA P-256 key"),
        (_csr(ec.generate_private_key(ec.SECP384R1()), [_uri(ALICE.uri)]), "not an ECDSA P-256 key"),
        (make_csr(certs.new_key(), SpiffeId("evil.example", "default", "alice")), "signs ids of cluster.local only"),
    ],
)
def test_a_csr_that_is_malformed_or_asks_too_much_is_refused(csr: bytes, reason: str) -> None:
    with pytest.raises(ValueError) as err:
        sign_csr(EAST, csr, anyone, NOW, HOUR)
    assert reason in str(err.value), str(err.value)


def test_a_csr_with_a_forged_signature_is_refused() -> None:
    csr = x509.load_pem_x509_csr(make_csr(certs.new_key(), ALICE))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature's last integer
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ValueError, match="signature does not verify"):
        sign_csr(EAST, forged, anyone, NOW, HOUR)


def test_an_id_the_caller_may_not_have_is_refused() -> None:
    only_bob = SpiffeId(TD, "default", "bob")
    with pytest.raises(ValueError, match="spiffe://cluster.local/ns/default/sa/alice, which its sender may not"):
        sign_csr(EAST, make_csr(certs.new_key(), ALICE), lambda s: s == only_bob, NOW, HOUR)


def _forged(template: x509.Certificate, issuer: Authority, **changes: object) -> x509.Certificate:
    """`template` re-signed by `issuer`, with its validity or extensions changed."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(issuer.cert.subject)
        .public_key(template.public_key())  # type: ignore[arg-type]
        .serial_number(certs.new_serial())
        .not_valid_before(changes.get("not_before", template.not_valid_before_utc))  # type: ignore[arg-type]
        .not_valid_after(changes.get("not_after", template.not_valid_after_utc))  # type: ignore[arg-type]
    )
    for ext in changes.get("extensions", template.extensions):  # type: ignore[union-attr]
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(issuer.key, hashes.SHA256())


def test_each_bad_chain_is_refused_with_its_reason() -> None:
    good = x509.load_pem_x509_certificates(svid())
    other_root = new_root("other", TD, NOW)
    other_east = new_intermediate(other_root, "east", TD, NOW)
    rogue_ca = Authority(leaf(svid()), certs.new_key())
    san_ext = good[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
    two = x509.Extension(
        san_ext.oid, True, x509.SubjectAlternativeName([_uri(ALICE.uri), _uri("spiffe://cluster.local/ns/a/sa/b")])
    )
    no_uri = x509.Extension(san_ext.oid, True, x509.SubjectAlternativeName([x509.DNSName("alice")]))
    others = [e for e in good[0].extensions if e.oid != san_ext.oid]
    cases: list[tuple[bytes | list[x509.Certificate], datetime, frozenset[int], str]] = [
        (svid(), NOW + 2 * HOUR, frozenset(), "certificate expired at 2026-03-01 13:00:00 UTC"),
        (svid(), NOW - HOUR, frozenset(), "certificate not valid before 2026-03-01 11:55:00 UTC"),
        (
            svid(EAST, SpiffeId(TD, "x", "y")),
            NOW,
            frozenset({EAST.cert.serial_number}),
            "issued by revoked intermediate east",
        ),
        (svid(other_east), NOW, frozenset(), "not signed by the mesh root"),
        ([good[0], WEST.cert], NOW, frozenset(), "is not signed by 'crossmesh Istio intermediate CA (west)'"),
        ([good[0]], NOW, frozenset(), "not signed by the mesh root"),  # the intermediate left out
        ([_forged(good[0], EAST, extensions=[two, *others]), EAST.cert], NOW, frozenset(), "has 2 URI SANs"),
        ([_forged(good[0], EAST, extensions=[no_uri, *others]), EAST.cert], NOW, frozenset(), "has no URI SANs"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", NOW, frozenset(), "malformed certificate"),
        (b"garbage", NOW, frozenset(), "malformed certificate"),
        (b"", NOW, frozenset(), "no certificate presented"),
        ([EAST.cert], NOW, frozenset(), "has no URI SANs"),
        ([_forged(good[0], rogue_ca), rogue_ca.cert, EAST.cert], NOW, frozenset(), "which is not a CA"),
    ]
    for chain, when, revoked, reason in cases:
        verdict = verify_svid(chain, [ROOT.cert], TD, when, revoked)
        assert not verdict.ok and reason in verdict.reason, (reason, verdict)


def test_an_svid_of_another_trust_domain_is_refused_even_from_our_root() -> None:
    foreign = new_intermediate(ROOT, "east", "example.org", NOW)
    pem = svid(foreign, SpiffeId("example.org", "default", "alice"))
    verdict = verify_svid(pem, [ROOT.cert], TD, NOW)
    assert not verdict.ok and verdict.reason == "trust domain example.org is not cluster.local"
    assert verdict.spiffe == SpiffeId("example.org", "default", "alice")  # who was refused, for the log


def test_an_intermediate_outside_its_name_constraints_is_refused() -> None:
    # an intermediate of example.org (a stolen key, say) signs a cluster.local id: refused by its constraints
    foreign = new_intermediate(ROOT, "rogue", "example.org", NOW)
    stolen = Authority(foreign.cert, foreign.key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(foreign.cert.subject)
        .public_key(certs.new_key().public_key())
        .serial_number(certs.new_serial())
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .add_extension(x509.SubjectAlternativeName([_uri(ALICE.uri)]), critical=True)
        .sign(stolen.key, hashes.SHA256())
    )
    verdict = verify_svid([cert, foreign.cert], [ROOT.cert], TD, NOW)
    assert not verdict.ok and "may not sign ids of trust domain cluster.local" in verdict.reason


def test_an_expired_intermediate_is_refused_by_name() -> None:
    old = _forged(EAST.cert, ROOT, not_before=NOW - 3 * HOUR, not_after=NOW - HOUR)
    verdict = verify_svid([leaf(svid()), old], [ROOT.cert], TD, NOW - 2 * HOUR)
    assert not verdict.ok and verdict.reason.startswith("certificate not valid before")  # the leaf's
    verdict = verify_svid([leaf(svid()), old], [ROOT.cert], TD, NOW)
    assert not verdict.ok and "'crossmesh Istio intermediate CA (east)' expired at" in verdict.reason


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([EAST, WEST]),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9._-]{3,20}", fullmatch=True),
    st.integers(min_value=10, max_value=90 * 24 * 60),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_an_svid_is_valid_exactly_within_its_lifetime(
    ca: Authority, namespace: str, account: str, minutes: int, at: float
) -> None:
    who = SpiffeId(TD, namespace, account)
    ttl = timedelta(minutes=minutes)
    pem = svid(ca, who, ttl=ttl)
    inside = verify_svid(pem, [ROOT.cert], TD, NOW + ttl * at)
    assert inside.ok and inside.spiffe == who, inside
    after = verify_svid(pem, [ROOT.cert], TD, NOW + ttl + timedelta(seconds=1))
    assert not after.ok and "expired" in after.reason
    assert not verify_svid(pem, [ROOT.cert], TD, NOW, frozenset({ca.cert.serial_number})).ok


def _files(tmp: Path, name: str, ca: Authority, who: SpiffeId) -> tuple[Path, Path]:
    key = certs.new_key()
    chain, key_file = tmp / f"{name}.pem", tmp / f"{name}.key"
    chain.write_bytes(sign_csr(ca, make_csr(key, who), anyone, datetime.now(UTC), HOUR))
    key_file.write_text(certs.key_pem(key))
    return chain, key_file


def _handshake(tmp: Path, client_ca: Authority, roots: list[x509.Certificate]) -> x509.Certificate:
    """A TLS 1.3 mutual handshake in memory between an east server and a client of `client_ca`."""
    bundle = tmp / "roots.pem"
    bundle.write_text("".join(certs.cert_pem(r) for r in roots))
    live = datetime.now(UTC)  # OpenSSL checks validity against the real clock
    server_ca = Authority(_forged(EAST.cert, ROOT, not_before=live - HOUR), EAST.key)
    contexts = []
    for side, ca, who in (
        (ssl.Purpose.CLIENT_AUTH, server_ca, SpiffeId(TD, "default", "server")),
        (ssl.Purpose.SERVER_AUTH, client_ca, ALICE),
    ):
        ctx = ssl.create_default_context(side, cafile=str(bundle))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(*_files(tmp, who.service_account, ca, who))
        contexts.append(ctx)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server = contexts[0].wrap_bio(bios[0], bios[1], server_side=True)
    client = contexts[1].wrap_bio(bios[2], bios[3], server_side=False)
    for _ in range(10):
        for conn, out, peer_in in ((client, bios[3], bios[0]), (server, bios[1], bios[2])):
            with contextlib.suppress(ssl.SSLWantReadError):  # until the peer's next flight arrives
                conn.do_handshake()
            peer_in.write(out.read())
    der = server.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_openssl_accepts_the_svids_in_a_mutual_tls_13_handshake(tmp_path: Path) -> None:
    live = datetime.now(UTC)
    west = Authority(_forged(WEST.cert, ROOT, not_before=live - HOUR), WEST.key)
    peer = _handshake(tmp_path, west, [ROOT.cert])
    verdict = verify_svid([peer, west.cert], [ROOT.cert], TD, live)
    assert verdict.ok and verdict.spiffe == ALICE


def test_openssl_refuses_a_client_of_another_mesh(tmp_path: Path) -> None:
    live = datetime.now(UTC)
    stranger_root = new_root("other", TD, live)
    stranger = new_intermediate(stranger_root, "east", TD, live)
    with pytest.raises(ssl.SSLError, match="certificate"):
        _handshake(tmp_path, stranger, [ROOT.cert])
