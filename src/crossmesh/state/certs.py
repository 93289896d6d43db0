"""X.509 for the ClusterMesh PKI with `cryptography`, pure: the CA and the clock come in as
arguments, nothing is read or written here (state/pki.py keeps them on disk).

ECDSA P-256 throughout (etcd and Cilium accept it; cert-manager's Cilium example uses it). The CA
lives ten years; a cluster certificate three (Cilium's own CA default, `tls.ca.certValidityDuration`)
and is issued anew when a third of that is left, so a render a year before expiry renews it."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crossmesh.model.tls import CertSpec

CA_VALIDITY = timedelta(days=3650)
CERT_VALIDITY = timedelta(days=1095)
RENEW_BEFORE = timedelta(days=365)  # a certificate with less left than this is issued anew
CLOCK_SKEW = timedelta(minutes=5)  # not_before this far back: a node whose clock runs late accepts it


@dataclass(frozen=True, slots=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def new_ca(mesh: str, now: datetime, *, purpose: str = "ClusterMesh") -> Authority:
    """A new CA of mesh `mesh` for `purpose` (its name says which: the ClusterMesh CA, the etcd CA)."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"crossmesh {purpose} CA ({mesh})")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(new_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def issue(ca: Authority, spec: CertSpec, key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    """The certificate `spec` describes for `key`, signed by `ca`, valid from `now`."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(new_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + CERT_VALIDITY, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(_usages_for(spec)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    names = _names(spec)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """`cert` names `ca` as its issuer and carries a valid signature of its key."""
    if cert.issuer != ca.subject:
        return False
    public = ca.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
        return False
    try:
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def usable(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    ca: Authority,
    spec: CertSpec,
    now: datetime,
    *,
    renew_before: timedelta = RENEW_BEFORE,
) -> bool:
    """Whether a stored certificate can be rendered again: it is `key`'s, `ca` signed it, it says
    what `spec` says, and more than `renew_before` of it is left."""
    return (
        public_key_der(cert.public_key()) == public_key_der(key.public_key())
        and signed_by(cert, ca.cert)
        and cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name)])
        and _san(cert) == set(_names(spec))
        and _usages(cert) == set(_usages_for(spec))
        and cert.not_valid_before_utc <= now
        and cert.not_valid_after_utc - now > renew_before
    )


def ca_usable(ca: Authority, now: datetime) -> bool:
    return (
        public_key_der(ca.cert.public_key()) == public_key_der(ca.key.public_key())
        and signed_by(ca.cert, ca.cert)
        and ca.cert.not_valid_after_utc - now > CERT_VALIDITY
    )


# PEM ----------------------------------------------------------------------------------------
def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def load_cert(text: str) -> x509.Certificate:
    """ValueError when `text` is no PEM certificate."""
    return x509.load_pem_x509_certificate(text.encode("ascii", errors="replace"))


def load_key(text: str) -> ec.EllipticCurvePrivateKey:
    """ValueError when `text` is no unencrypted PEM EC private key."""
    try:
        key = serialization.load_pem_private_key(text.encode("ascii", errors="replace"), password=None)
    except TypeError as err:  # an encrypted key
        raise ValueError(str(err)) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


# helpers ------------------------------------------------------------------------------------
def new_serial() -> int:
    return secrets.randbits(126) + 1  # positive, at most 16 octets (RFC 5280 4.1.2.2)


def key_usage(*, ca: bool, encipherment: bool = False) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; every key signs (ECDSA keys encipher nothing, RFC 5480, so
    `encipherment` is there only for peers that look for it, as Istio's workload certificates do)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _names(spec: CertSpec) -> list[x509.GeneralName]:
    return [x509.DNSName(d) for d in spec.dns_names] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in spec.ip_addresses
    ]


def _usages_for(spec: CertSpec) -> list[x509.ObjectIdentifier]:
    # The server certificate also serves as a client one, as those of the chart's `helm` method do.
    if spec.server:
        return [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return [ExtendedKeyUsageOID.CLIENT_AUTH]


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def _san(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return set()


def public_key_der(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
