"""X.509 SVIDs of the service mesh, pure: Istio's "plug-in CA" layout with the clock, keys and
certificates as arguments (`crossmesh.state.meshpki` keeps the CAs on disk).

One root per mesh, one intermediate per cluster signed by it (multi-primary: each cluster's istiod
signs with its own intermediate, and every cluster trusts every other's workloads through the
shared root). A workload's key never leaves its node proxy: the proxy sends a CSR, and `sign_csr`
copies from it only the SPIFFE id, after the caller's `allowed` says the proxy may hold that id —
as istiod checks a CSR against the caller's Kubernetes token, and never trusts the CSR's other
fields. ECDSA P-256 throughout, with the helpers of `crossmesh.state.certs`.

`verify_svid` is what each side of an mTLS connection asks of the peer's chain, with a reason a
person can act on when the answer is no: a proxy log line "refused: issued by revoked intermediate
cluster2" points at the fix; "certificate verify failed" does not."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crossmesh.identity.spiffe import SpiffeId
from crossmesh.model.tls import IstioCA
from crossmesh.state import certs

ROOT_VALIDITY = certs.CA_VALIDITY  # ten years, as istiod's self-signed root
INTERMEDIATE_VALIDITY = timedelta(days=5 * 365)  # never past the root's end (capped when issued)


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA: its certificate and key, and `chain`, the certificates between `cert` and the root,
    both excluded (empty for the root and for an intermediate the root signed)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `verify_svid` found: `spiffe` is the id the leaf names whenever it names one, also on a
    refusal (so a log can say who was refused); `reason` says why not, or what was accepted."""

    ok: bool
    spiffe: SpiffeId | None
    reason: str


def new_root(mesh: str, trust_domain: str, now: datetime) -> Authority:
    """A new self-signed root of mesh `mesh`: the one certificate every cluster trusts."""
    key = certs.new_key()
    name = _name(trust_domain, mesh, f"crossmesh Istio root CA ({mesh})")
    cert = (
        _ca_builder(name, name, key, now, now + ROOT_VALIDITY, path_length=1)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert, key)


def new_intermediate(root: Authority, cluster: str, trust_domain: str, now: datetime) -> Authority:
    """A new intermediate of cluster `cluster`, signed by `root`. Path length 0: it signs workload
    certificates only, never another CA; its name constraints let it sign ids of `trust_domain`
    only (RFC 5280 4.2.1.10: a URI constraint without a leading '.' is the host itself), so an
    intermediate's stolen key cannot mint another mesh's identities for a verifier that checks."""
    key = certs.new_key()
    name = _name(trust_domain, cluster, f"crossmesh Istio intermediate CA ({cluster})")
    not_after = min(now + INTERMEDIATE_VALIDITY, root.cert.not_valid_after_utc)
    cert = (
        _ca_builder(name, root.cert.subject, key, now, not_after, path_length=0)
        .add_extension(
            x509.NameConstraints([x509.UniformResourceIdentifier(trust_domain)], None),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    return Authority(cert, key, ())


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe: SpiffeId) -> bytes:
    """A PEM CSR for `key` asking for `spiffe` (as a node proxy asks istiod for a workload)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe.uri)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_csr(
    ca: Authority, csr_pem: bytes, allowed: Callable[[SpiffeId], bool], now: datetime, ttl: timedelta
) -> bytes:
    """The PEM leaf for the CSR `csr_pem`, followed by `ca`'s certificate and chain (no root):
    valid from a little before `now` (a node whose clock runs late still accepts it) for `ttl`,
    never past `ca`'s end. Only the CSR's key and its one SPIFFE id are used; the id must pass
    `allowed`. ValueError with the reason when the CSR is malformed or asks for what it may not."""
    spiffe, public = _requested(csr_pem)
    ours = permitted_domains(ca.cert)
    if ours is not None and spiffe.trust_domain not in ours:
        raise ValueError(f"the CSR asks for {spiffe.uri}, but this CA signs ids of {', '.join(sorted(ours))} only")
    if not allowed(spiffe):
        raise ValueError(f"the CSR asks for {spiffe.uri}, which its sender may not have")
    if ttl <= timedelta(0):
        raise ValueError(f"certificate lifetime must be positive, not {ttl}")
    now = _utc(now)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))  # the id is in the SAN, which is therefore critical (RFC 5280 4.2.1.6)
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(certs.new_serial())
        .not_valid_before(now - certs.CLOCK_SKEW)
        .not_valid_after(min(now + ttl, ca.cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe.uri)]), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(certs.key_usage(ca=False, encipherment=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca.cert, *ca.chain))


def verify_svid(
    chain_pems: bytes | Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    trust_domain: str,
    now: datetime,
    revoked: frozenset[int] = frozenset(),
) -> Verdict:
    """Whether the chain a peer presented (leaf first, then its intermediates; a root at the end is
    ignored) is a valid SVID of `trust_domain` at `now`: one SPIFFE id, each certificate signed by
    the next and the last by one of `roots`, no CA in it past its path length or outside its name
    constraints, no intermediate's serial in `revoked`, every certificate within its validity."""
    try:
        chain = _load_chain(chain_pems)
        uris = _uri_sans(chain[0]) if chain else []
    except ValueError as err:
        return Verdict(False, None, f"malformed certificate: {_first_line(err)}")
    if not chain:
        return Verdict(False, None, "no certificate presented")
    leaf = chain[0]
    if len(uris) != 1:
        return Verdict(False, None, f"certificate has {len(uris) or 'no'} URI SANs; an SVID has exactly one")
    try:
        spiffe = SpiffeId.parse(uris[0])
    except ValueError as err:
        return Verdict(False, None, str(err))

    def no(reason: str) -> Verdict:
        return Verdict(False, spiffe, reason)

    if spiffe.trust_domain != trust_domain:
        return no(f"trust domain {spiffe.trust_domain} is not {trust_domain}")
    if _is_ca(leaf):
        return no(f"the certificate of {spiffe.uri} is a CA's, not a workload's")
    path = [c for c in chain if c not in roots]
    if not path or path[0] != leaf:
        return no("the leaf certificate is a root")
    for below, above in zip(path, path[1:], strict=False):
        if not _is_ca(above):
            return no(f"{_describe(below)} is followed by {_describe(above)}, which is not a CA")
        if not certs.signed_by(below, above):
            return no(f"the chain is broken: {_describe(below)} is not signed by {_describe(above)}")
    root = next((r for r in roots if certs.signed_by(path[-1], r)), None)
    if root is None:
        return no("not signed by the mesh root")
    cas = [*path[1:], root]
    for depth, ca in enumerate(cas):
        limit = _path_length(ca)
        if limit is not None and depth > limit:
            return no(f"{_describe(ca)} may not sign other CAs (path length {limit})")
        domains = permitted_domains(ca)
        if domains is not None and spiffe.trust_domain not in domains:
            return no(f"{_describe(ca)} may not sign ids of trust domain {spiffe.trust_domain}")
    for ca in path[1:]:
        if ca.serial_number in revoked:
            return no(f"issued by revoked intermediate {_unit(ca)}")
    now = _utc(now)
    for cert in [*path, root]:
        who = "certificate" if cert is leaf else _describe(cert)
        if now < cert.not_valid_before_utc:
            return no(f"{who} not valid before {_when(cert.not_valid_before_utc)}")
        if now > cert.not_valid_after_utc:
            return no(f"{who} expired at {_when(cert.not_valid_after_utc)}")
    return Verdict(True, spiffe, f"{spiffe.uri} issued by {_describe(path[1] if len(path) > 1 else root)}")


def unit_of(cert: x509.Certificate) -> str:
    """Whose CA `cert` is: the mesh of a root, the cluster of an intermediate (its subject's OU)."""
    return _unit(cert)


def istio_ca(cluster: str, root: x509.Certificate, ca: Authority) -> IstioCA:
    """What cluster `cluster`'s istiod is given to sign with (its `cacerts` Secret): the
    intermediate, its key, its chain up to and including the root, and the root."""
    chain = "".join(certs.cert_pem(c) for c in (ca.cert, *ca.chain, root))
    return IstioCA(cluster, certs.cert_pem(root), certs.cert_pem(ca.cert), certs.key_pem(ca.key), chain)


def permitted_domains(cert: x509.Certificate) -> frozenset[str] | None:
    """The trust domains a CA's URI name constraints permit; None when it has none."""
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    uris = [n.value for n in nc.permitted_subtrees or () if isinstance(n, x509.UniformResourceIdentifier)]
    return frozenset(uris) if uris else None


# helpers ------------------------------------------------------------------------------------
def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    now: datetime,
    not_after: datetime,
    *,
    path_length: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(certs.new_serial())
        .not_valid_before(_utc(now) - certs.CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(certs.key_usage(ca=True), critical=True)
    )


def _name(trust_domain: str, unit: str, common_name: str) -> x509.Name:
    # O = the trust domain, as istiod's self-signed root has it; OU = the mesh or the cluster.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _requested(csr_pem: bytes) -> tuple[SpiffeId, ec.EllipticCurvePublicKey]:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise ValueError("the CSR is not a PEM certificate request") from None
    try:
        valid = csr.is_signature_valid
        public = csr.public_key()
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("the CSR asks for no SPIFFE id (it has no subject alternative names)") from None
    except (ValueError, TypeError) as err:
        raise ValueError(f"the CSR is malformed: {_first_line(err)}") from None
    if not valid:
        raise ValueError("the CSR's signature does not verify: its sender does not hold its key")
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise ValueError("the CSR's key is not an ECDSA P-256 key")
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise ValueError(f"the CSR asks for {len(uris) or 'no'} URI SANs; an SVID has exactly one SPIFFE id")
    return SpiffeId.parse(uris[0]), public


def _load_chain(chain: bytes | Sequence[x509.Certificate]) -> list[x509.Certificate]:
    if isinstance(chain, bytes):
        if not chain.strip():
            return []
        try:
            return x509.load_pem_x509_certificates(chain)
        except ValueError:
            raise ValueError("not a chain of PEM certificates") from None
    return list(chain)


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _path_length(cert: x509.Certificate) -> int | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return None


def _unit(cert: x509.Certificate) -> str:
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(units[0].value) if units else cert.subject.rfc4514_string()


def _describe(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"'{names[0].value!s}'" if names else f"'{cert.subject.rfc4514_string()}'"


def _utc(now: datetime) -> datetime:
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _when(t: datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S} UTC"


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]
