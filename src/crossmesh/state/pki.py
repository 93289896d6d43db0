"""The mesh's ClusterMesh PKI in the state directory: one CA for the whole mesh, so that the
clustermesh-apiservers of all clusters trust one another (a chart that makes its own CA per
`helm install` gives clusters that never do), and per Cilium cluster the four certificates of
`model.tls.clustermesh_specs`.

    pki/ca.key                        the mesh CA's private key, 0600: rendered nowhere, printed never
    pki/ca.crt                        its certificate
    pki/<cluster>.<secret>.key        a cluster certificate's private key, 0600
    pki/<cluster>.<secret>.crt        the certificate

Everything is made once and read back on every run, so rendering twice gives the same bytes; a
cluster certificate is issued anew only when it is missing, no longer matches its key, the CA or
what Cilium expects, or has less than a year left (`certs.RENEW_BEFORE`). The folder is opened by
the state store (no links followed, 0700); the clock comes from the caller.

The control plane's etcd has a CA of its own (`etcd_tls`, in `etcd-pki/` of the state directory,
laid out the same way: `ca.key`, `ca.crt`, `server.key`, `server.crt`, `user.<CN>.key`,
`user.<CN>.crt` — a dot is in no node name, so no node's files can be the CA's): etcd takes any
certificate its CA signed as the user its common name names, so a ClusterMesh certificate must not
be one it accepts. Its certificates are issued anew with less than ETCD_RENEW_BEFORE left.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from crossmesh.errors import StateError
from crossmesh.model.tls import CertSpec, ClusterMeshTLS, EtcdTLS, IssuedCert, clustermesh_specs
from crossmesh.state import certs, disk

FILE_LIMIT = 64 * 1024  # a PEM key or certificate here is under 1 KiB
CA_KEY, CA_CERT = "ca.key", "ca.crt"
ETCD_RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Purpose:
    """Which CA a folder holds: its name, and what replacing it means (said when it is unusable)."""

    name: str
    consequence: str


CLUSTERMESH = Purpose(
    "ClusterMesh",
    "then every cluster gets new ClusterMesh certificates: apply them to all clusters together",
)
ETCD = Purpose(
    "etcd",
    "then the etcd members and every client get new certificates: install them on all of them together",
)


def clustermesh_tls(
    fd: int, folder: Path, mesh: str, clusters: Iterable[str], now: datetime
) -> dict[str, ClusterMeshTLS]:
    """The TLS material of every cluster in `clusters`, from the PKI folder `fd` (shown as
    `folder`), making the CA and whatever certificate is missing or due."""
    ca = authority(fd, folder, mesh, now, CLUSTERMESH)
    ca_pem = certs.cert_pem(ca.cert)
    return {
        c: ClusterMeshTLS(
            c,
            ca_pem,
            tuple(
                _issued(fd, folder, ca, f"{c}.{spec.secret}", spec, now, certs.RENEW_BEFORE)[0]
                for spec in clustermesh_specs(c)
            ),
        )
        for c in sorted(set(clusters))
    }


def etcd_tls(fd: int, folder: Path, mesh: str, specs: Iterable[CertSpec], now: datetime) -> EtcdTLS:
    """The etcd certificates `specs` describe (`crossmesh.kv.identities.etcd_specs`), from the etcd
    PKI folder `fd` (shown as `folder`), making its CA and whatever certificate is missing or due.
    Certificates of identities no longer in `specs` stay in the folder, unused."""
    ca = authority(fd, folder, mesh, now, ETCD)
    issued, renewed = [], set()
    for spec in sorted(specs, key=lambda s: s.secret):
        cert, fresh = _issued(fd, folder, ca, etcd_stem(spec), spec, now, ETCD_RENEW_BEFORE)
        issued.append(cert)
        if fresh:
            renewed.add(spec.secret)
    return EtcdTLS(certs.cert_pem(ca.cert), tuple(issued), frozenset(renewed))


def etcd_stem(spec: CertSpec) -> str:
    """The name an etcd certificate and its key are kept under (`.crt`, `.key`)."""
    return "server" if spec.server else f"user.{spec.common_name}"


def authority(fd: int, folder: Path, mesh: str, now: datetime, purpose: Purpose) -> certs.Authority:
    """The CA kept as ca.key/ca.crt in the folder `fd` (shown as `folder`), made there on first use;
    one that is half there, unreadable, not its key's or near its end stops with the fix."""
    key_text = read_file(fd, folder, CA_KEY, private=True)
    cert_text = read_file(fd, folder, CA_CERT, private=False)
    if key_text is None and cert_text is None:
        ca = certs.new_ca(mesh, now, purpose=purpose.name)
        write_file(fd, folder, CA_KEY, certs.key_pem(ca.key), private=True)
        write_file(fd, folder, CA_CERT, certs.cert_pem(ca.cert), private=False)
        return ca
    fix = (
        f"restore it from a backup, or delete both {folder / CA_KEY} and {folder / CA_CERT} to make a new "
        f"{purpose.name} CA ({purpose.consequence})"
    )
    if key_text is None or cert_text is None:
        missing = CA_KEY if key_text is None else CA_CERT
        raise StateError(f"{folder / missing} is missing while its pair is there — {fix}")
    try:
        ca = certs.Authority(certs.load_cert(cert_text), certs.load_key(key_text))
    except ValueError as err:
        raise StateError(f"the {purpose.name} CA in {folder} is unreadable ({first_line(err)}) — {fix}") from None
    if not certs.ca_usable(ca, now):
        raise StateError(
            f"the {purpose.name} CA in {folder} does not match its key, or expires within "
            f"{certs.CERT_VALIDITY.days} days ({ca.cert.not_valid_after_utc:%Y-%m-%d}) — {fix}"
        )
    return ca


def _issued(
    fd: int, folder: Path, ca: certs.Authority, stem: str, spec: CertSpec, now: datetime, renew_before: timedelta
) -> tuple[IssuedCert, bool]:
    """The certificate kept as `stem`.crt/.key if still usable, else a new one; True when new."""
    kept = read_pair(fd, folder, stem)
    if kept is not None and certs.usable(kept.cert, kept.key, ca, spec, now, renew_before=renew_before):
        return IssuedCert(spec, certs.cert_pem(kept.cert), kept.key_text), False
    key = certs.new_key()
    pair = write_pair(fd, folder, stem, key, certs.issue(ca, spec, key, now))
    return IssuedCert(spec, certs.cert_pem(pair.cert), pair.key_text), True


@dataclass(frozen=True, slots=True)
class Pair:
    """A certificate and its key as kept under one stem (`.crt`, `.key`)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    key_text: str


def read_pair(fd: int, folder: Path, stem: str) -> Pair | None:
    """The certificate and key kept as `stem`.crt/.key; None when either is missing or unreadable
    (the caller issues it anew, as a missing one)."""
    key_text = read_file(fd, folder, f"{stem}.key", private=True)
    cert_text = read_file(fd, folder, f"{stem}.crt", private=False)
    if key_text is None or cert_text is None:
        return None
    try:
        return Pair(certs.load_cert(cert_text), certs.load_key(key_text), key_text)
    except ValueError:
        return None


def write_pair(fd: int, folder: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> Pair:
    """Keep a new certificate and its key as `stem`.crt/.key (the key 0600)."""
    key_text = certs.key_pem(key)
    write_file(fd, folder, f"{stem}.key", key_text, private=True)
    write_file(fd, folder, f"{stem}.crt", certs.cert_pem(cert), private=False)
    return Pair(cert, key, key_text)


def read_file(fd: int, folder: Path, name: str, *, private: bool) -> str | None:
    path = folder / name
    try:
        got = disk.read_at(fd, name, path, limit=FILE_LIMIT)
    except OSError as err:
        raise StateError(f"cannot read {path}: {err.strerror}") from err
    if got is None:
        return None
    data, st = got
    if private:
        disk.refuse_shared(st, path, bits=0o077, chmod="600")
    return data.decode("ascii", errors="replace")


def write_file(fd: int, folder: Path, name: str, text: str, *, private: bool) -> None:
    path = folder / name
    try:
        if private:
            disk.write_private(path, text, folder=fd)
        else:
            disk.write_at(fd, name, text.encode("ascii"), disk.SHARED, path)
    except OSError as err:
        raise StateError(f"cannot write {path}: {err.strerror}") from err


def first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]
