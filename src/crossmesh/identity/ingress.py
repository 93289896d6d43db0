"""Server certificates of the ingress gateways, pure: what the mesh's ingress CA issues for a gateway
listener whose TLS is `mesh`, when such a certificate is due again, and the certificate a
`kubernetes.io/tls` Secret of the manifests holds (`crossmesh.state.ingresspki` keeps the CA and
the issued certificates on disk).

Why a CA of its own, apart from the Istio root: this one is what a client outside trusts
(`curl --cacert`, a browser's trust store). Trusting the Istio root instead would let every
workload certificate of the mesh pass as a web server; trusting this one lets nothing but the
gateways' listeners do.

Names: a listener with a hostname gets exactly that name (a wildcard `*.example.com` gives the
wildcard SAN, which a client accepts for one label under it, RFC 6125 6.4.3); without one, the
hostnames of the routes attached to it (the names clients will ask for); with neither, the in-cluster
name of the gateway's Service, so the certificate still names something real.

Lifetime: 825 days, the longest Apple platforms accept for a server certificate of a CA a user
added (support.apple.com/en-us/103769); issued anew at half-life, so a render in the second half
gives the gateway a fresh one long before clients see it expire. ECDSA P-256 as every certificate
of crossmesh (`crossmesh.state.certs`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crossmesh.gateway.model import Gateway, HTTPRoute, Listener, hostnames_intersect
from crossmesh.state import certs

LISTENER_VALIDITY = timedelta(days=825)
TLS_SECRET_TYPE = "kubernetes.io/tls"
ORGANIZATION = "crossmesh ingress"


@dataclass(frozen=True, slots=True)
class ListenerId:
    """Which listener a certificate serves: cluster, the Gateway's namespace and name, the listener."""

    cluster: str
    namespace: str
    gateway: str
    listener: str

    @property
    def ref(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.gateway}/{self.listener}"

    @property
    def stem(self) -> str:
        """The name its files are kept under: no part of it holds '_' (Kubernetes names and
        crossmesh cluster names are DNS names), so no two listeners share one."""
        return f"listener.{self.cluster}_{self.namespace}_{self.gateway}_{self.listener}"


def listener_names(gateway: Gateway, listener: Listener, routes: Iterable[HTTPRoute]) -> tuple[str, ...]:
    """The DNS names a listener's certificate carries (see the module's docstring), sorted."""
    if listener.hostname is not None:
        return (listener.hostname,)
    names: set[str] = set()
    for route in routes:
        if any(_attaches(gateway, listener, p.namespace, p.name, p.section, p.port) for p in route.parents):
            names.update(h.lower() for h in route.hostnames if hostnames_intersect(listener.hostname, h))
    if not names:
        names.add(f"{gateway.name}-istio.{gateway.namespace}.svc.cluster.local")
    return tuple(sorted(names))


def mesh_listeners(
    cluster: str, gateways: Iterable[Gateway], routes: Iterable[HTTPRoute]
) -> dict[ListenerId, tuple[str, ...]]:
    """Every listener of `cluster`'s Gateways whose certificate the ingress CA issues, with its names."""
    routes = list(routes)
    return {
        ListenerId(cluster, gw.namespace, gw.name, li.name): listener_names(gw, li, routes)
        for gw in gateways
        for li in gw.listeners
        if li.tls is not None and li.tls.mesh
    }


def _attaches(
    gateway: Gateway, listener: Listener, namespace: str, name: str, section: str | None, port: int | None
) -> bool:
    return (
        (namespace, name) == (gateway.namespace, gateway.name)
        and section in (None, listener.name)
        and port in (None, listener.port)
    )


def subject(lid: ListenerId) -> x509.Name:
    """O = crossmesh ingress, OU = the cluster, CN = namespace/gateway/listener (cut to X.509's 64)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, lid.cluster),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{lid.namespace}/{lid.gateway}/{lid.listener}"[:64]),
        ]
    )


def issue(
    ca: certs.Authority, lid: ListenerId, names: Iterable[str], key: ec.EllipticCurvePrivateKey, now: datetime
) -> x509.Certificate:
    """A server certificate for `key` naming `names`, signed by `ca`, valid from `now`."""
    dns = sorted(set(names))
    if not dns:
        raise ValueError(f"listener {lid.ref}: a server certificate needs at least one DNS name")
    return (
        x509.CertificateBuilder()
        .subject_name(subject(lid))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(certs.new_serial())
        .not_valid_before(now - certs.CLOCK_SKEW)
        .not_valid_after(min(now + LISTENER_VALIDITY, ca.cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(certs.key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def due(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, ca: certs.Authority, names: Iterable[str], now: datetime
) -> str | None:
    """Why a kept certificate must be issued anew (None: it may be served again): another key,
    another CA, other names, or past half of its life."""
    if certs.public_key_der(cert.public_key()) != certs.public_key_der(key.public_key()):
        return "it does not match its key"
    if not certs.signed_by(cert, ca.cert):
        return "the ingress CA did not sign it"
    if dns_names(cert) != tuple(sorted(set(names))):
        return "the listener's hostnames changed"
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now >= start + (end - start) / 2:
        return "it is past half of its life"
    return None


def dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(sorted(san.get_values_for_type(x509.DNSName)))


def server_pem(chain: Iterable[x509.Certificate], key_pem: str) -> bytes:
    """Leaf, the CAs above it, then the key: the one file HAProxy's `crt` reads."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain) + key_pem.encode("ascii")


# certificates from a Secret of the manifests -------------------------------------------------
def secret_pem(secret_raw: Mapping[str, Any]) -> bytes:
    """The leaf and chain (`tls.crt`) and key (`tls.key`) of a `kubernetes.io/tls` Secret as one PEM
    (the form `server_pem` gives). ValueError naming the field and the fix when the Secret is not
    one, a field is missing or not base64, the PEM does not parse, or the key is not the leaf's."""
    kind, kind_type = secret_raw.get("kind"), secret_raw.get("type")
    if kind != "Secret":
        raise ValueError(f"kind: {kind!r} — a listener's certificate comes from a Secret")
    if kind_type != TLS_SECRET_TYPE:
        raise ValueError(f"type: {kind_type!r} — write 'type: {TLS_SECRET_TYPE}' (with data tls.crt and tls.key)")
    crt, key = _field(secret_raw, "tls.crt"), _field(secret_raw, "tls.key")
    try:
        chain = x509.load_pem_x509_certificates(crt)
    except ValueError:
        raise ValueError("data.tls.crt: not a PEM certificate chain — put the server certificate first") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as err:
        why = "encrypted" if isinstance(err, TypeError) else "not a PEM private key"
        raise ValueError(f"data.tls.key: {why} — give the unencrypted PEM key of the certificate") from None
    leaf_public = (
        chain[0].public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    ours = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if leaf_public != ours:
        raise ValueError(
            "data.tls.key: the key does not belong to the first certificate of data.tls.crt — give the key the "
            "certificate was issued for, and the server certificate first"
        )
    key_text = key.decode("ascii").strip() + "\n"
    return server_pem(chain, key_text)


def _field(secret_raw: Mapping[str, Any], name: str) -> bytes:
    data = secret_raw.get("data") or {}
    strings = secret_raw.get("stringData") or {}
    if not isinstance(data, Mapping) or not isinstance(strings, Mapping):
        raise ValueError("data: not a mapping — write data: {tls.crt: <base64>, tls.key: <base64>}")
    if isinstance(strings.get(name), str):  # the API server folds stringData into data, winning over it
        return str(strings[name]).encode("ascii", errors="replace")
    value = data.get(name)
    if value is None:
        raise ValueError(f"data.{name}: missing — a {TLS_SECRET_TYPE} Secret holds tls.crt and tls.key")
    if not isinstance(value, str):
        raise ValueError(f"data.{name}: found {type(value).__name__}, expected base64 text")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"data.{name}: not base64 — encode the PEM file with `base64 -w0`") from None
