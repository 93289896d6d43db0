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
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from crossmesh.errors import StateError
from crossmesh.model.tls import CertSpec, ClusterMeshTLS, IssuedCert, clustermesh_specs
from crossmesh.state import certs, disk

FILE_LIMIT = 64 * 1024  # a PEM key or certificate here is under 1 KiB
CA_KEY, CA_CERT = "ca.key", "ca.crt"


def clustermesh_tls(
    fd: int, folder: Path, mesh: str, clusters: Iterable[str], now: datetime
) -> dict[str, ClusterMeshTLS]:
    """The TLS material of every cluster in `clusters`, from the PKI folder `fd` (shown as
    `folder`), making the CA and whatever certificate is missing or due."""
    ca = _authority(fd, folder, mesh, now)
    ca_pem = certs.cert_pem(ca.cert)
    return {
        c: ClusterMeshTLS(c, ca_pem, tuple(_issued(fd, folder, ca, c, spec, now) for spec in clustermesh_specs(c)))
        for c in sorted(set(clusters))
    }


def _authority(fd: int, folder: Path, mesh: str, now: datetime) -> certs.Authority:
    key_text = _read(fd, folder, CA_KEY, private=True)
    cert_text = _read(fd, folder, CA_CERT, private=False)
    if key_text is None and cert_text is None:
        ca = certs.new_ca(mesh, now)
        _write(fd, folder, CA_KEY, certs.key_pem(ca.key), private=True)
        _write(fd, folder, CA_CERT, certs.cert_pem(ca.cert), private=False)
        return ca
    fix = (
        f"restore it from a backup, or delete both {folder / CA_KEY} and {folder / CA_CERT} to make a new "
        "mesh CA (then every cluster gets new ClusterMesh certificates: apply them to all clusters together)"
    )
    if key_text is None or cert_text is None:
        missing = CA_KEY if key_text is None else CA_CERT
        raise StateError(f"{folder / missing} is missing while its pair is there — {fix}")
    try:
        ca = certs.Authority(certs.load_cert(cert_text), certs.load_key(key_text))
    except ValueError as err:
        raise StateError(f"the mesh CA in {folder} is unreadable ({_first_line(err)}) — {fix}") from None
    if not certs.ca_usable(ca, now):
        raise StateError(
            f"the mesh CA in {folder} does not match its key, or expires within "
            f"{certs.RENEW_BEFORE.days} days ({ca.cert.not_valid_after_utc:%Y-%m-%d}) — {fix}"
        )
    return ca


def _issued(fd: int, folder: Path, ca: certs.Authority, cluster: str, spec: CertSpec, now: datetime) -> IssuedCert:
    stem = f"{cluster}.{spec.secret}"
    key_text = _read(fd, folder, f"{stem}.key", private=True)
    cert_text = _read(fd, folder, f"{stem}.crt", private=False)
    if key_text is not None and cert_text is not None:
        try:
            key, cert = certs.load_key(key_text), certs.load_cert(cert_text)
        except ValueError:
            pass  # unreadable: issued anew below, as a missing one would be
        else:
            if certs.usable(cert, key, ca, spec, now):
                return IssuedCert(spec, cert_text, key_text)
    key = certs.new_key()
    cert_text = certs.cert_pem(certs.issue(ca, spec, key, now))
    key_text = certs.key_pem(key)
    _write(fd, folder, f"{stem}.key", key_text, private=True)
    _write(fd, folder, f"{stem}.crt", cert_text, private=False)
    return IssuedCert(spec, cert_text, key_text)


def _read(fd: int, folder: Path, name: str, *, private: bool) -> str | None:
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


def _write(fd: int, folder: Path, name: str, text: str, *, private: bool) -> None:
    path = folder / name
    try:
        if private:
            disk.write_private(path, text, folder=fd)
        else:
            disk.write_at(fd, name, text.encode("ascii"), disk.SHARED, path)
    except OSError as err:
        raise StateError(f"cannot write {path}: {err.strerror}") from err


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]
