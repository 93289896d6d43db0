"""The service mesh's PKI in the state directory (Istio's "plug-in CA", multi-primary): one root
for the mesh and one intermediate per cluster signed by it, which that cluster's CA (istiod, or
the lab's CA daemon) signs workload certificates with. Workloads of every cluster trust one
another through the shared root; a cluster's intermediate can be revoked and replaced alone.

    istio-pki/root.key                     the mesh root's private key, 0600: rendered nowhere, printed never
    istio-pki/root.crt                     its certificate (every cluster's root-cert.pem)
    istio-pki/intermediate.<cluster>.key   a cluster's intermediate key, 0600 (its cacerts ca-key.pem)
    istio-pki/intermediate.<cluster>.crt   its certificate (ca-cert.pem)
    istio-pki/revoked.json                 the intermediates revoked so far: serial, cluster, subject, end

Made once and read back, so two runs give the same bytes. An intermediate is issued anew, under
the same root, when it is missing, revoked, made for another trust domain, or within a year of its
end: harmless, as every workload's certificate still chains to the root. The root is never
replaced behind the user's back (that cuts every cluster off from every other until all have the
new one): a root that is missing half its pair, unreadable or expiring stops with the fix. A
cluster's intermediate whose files disagree stops too — it may be a hand-placed one. The folder is
opened by the state store (no links followed, 0700), files as `pki` reads and writes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from crossmesh.errors import StateError
from crossmesh.identity.svid import Authority, new_intermediate, new_root, permitted_domains
from crossmesh.state import certs
from crossmesh.state.pki import first_line, read_file, write_file

ROOT_KEY, ROOT_CERT, REVOKED = "root.key", "root.crt", "revoked.json"
RENEW_BEFORE = timedelta(days=365)  # an intermediate with less left is issued anew; a root stops the run


def istio_cas(
    fd: int, folder: Path, mesh: str, trust_domain: str, clusters: Iterable[str], now: datetime
) -> dict[str, Authority]:
    """The intermediate of every cluster in `clusters`, from the folder `fd` (shown as `folder`),
    making the root and whatever intermediate is missing or due (see the module's docstring)."""
    root = _root(fd, folder, mesh, trust_domain, now)
    gone = revoked(fd, folder)
    return {c: _intermediate(fd, folder, root, c, trust_domain, now, gone) for c in sorted(set(clusters))}


def istio_root(fd: int, folder: Path) -> x509.Certificate:
    """The mesh root's certificate (every cluster's trust anchor), as `istio_cas` made it."""
    text = read_file(fd, folder, ROOT_CERT, private=False)
    if text is None:
        raise StateError(f"{folder / ROOT_CERT} does not exist yet — render the mesh once to make its Istio CA")
    try:
        return certs.load_cert(text)
    except ValueError as err:
        raise StateError(f"{folder / ROOT_CERT} is unreadable ({first_line(err)}) — restore it from a backup") from None


def intermediate_stem(cluster: str) -> str:
    """The name a cluster's intermediate and its key are kept under (`.crt`, `.key`); a cluster
    name has no dot, so none can be the root's."""
    return f"intermediate.{cluster}"


def revoked(fd: int, folder: Path) -> frozenset[int]:
    """The serial numbers of the intermediates revoked in this folder."""
    return frozenset(int(r["serial"], 16) for r in revocations(fd, folder))


def revocations(fd: int, folder: Path) -> list[dict[str, str]]:
    """The revoked intermediates as recorded: `serial` (hex), `cluster`, `subject`, `notAfter`."""
    path = folder / REVOKED
    text = read_file(fd, folder, REVOKED, private=False)
    if text is None:
        return []
    fix = "restore it from a backup (deleting it un-revokes every intermediate it lists)"
    try:
        data = json.loads(text)
    except ValueError as err:
        raise StateError(f"{path} is not JSON ({first_line(err)}) — {fix}") from None
    keys = {"serial", "cluster", "subject", "notAfter"}
    if not isinstance(data, list) or not all(
        isinstance(r, dict) and set(r) == keys and all(isinstance(v, str) for v in r.values()) for r in data
    ):
        raise StateError(f"{path} is not a list of revoked intermediates ({', '.join(sorted(keys))}) — {fix}")
    try:
        for r in data:
            int(r["serial"], 16)
    except ValueError:
        raise StateError(f"{path} holds a serial number that is not hexadecimal — {fix}") from None
    return data


def revoke(fd: int, folder: Path, cluster: str) -> None:
    """Revoke `cluster`'s intermediate: its serial joins the revoked list (peers refuse whatever it
    signed), its key is deleted, and the next `istio_cas` issues the cluster a new one."""
    stem = intermediate_stem(cluster)
    text = read_file(fd, folder, f"{stem}.crt", private=False)
    if text is None:
        raise StateError(f"cluster {cluster} has no Istio intermediate in {folder} — nothing to revoke")
    try:
        cert = certs.load_cert(text)
    except ValueError as err:
        raise StateError(
            f"{folder / (stem + '.crt')} is unreadable ({first_line(err)}) — delete {stem}.crt and {stem}.key, "
            "and a new intermediate is issued at the next render"
        ) from None
    entries = revocations(fd, folder)
    serial = f"{cert.serial_number:x}"
    if all(r["serial"] != serial for r in entries):
        entries.append(
            {
                "serial": serial,
                "cluster": cluster,
                "subject": cert.subject.rfc4514_string(),
                "notAfter": cert.not_valid_after_utc.isoformat(),
            }
        )
        write_file(fd, folder, REVOKED, json.dumps(entries, indent=2) + "\n", private=False)
    for suffix in (".key", ".crt"):  # written first: a crash in between leaves it revoked, not live
        try:
            with suppress(FileNotFoundError):
                os.unlink(f"{stem}{suffix}", dir_fd=fd)
        except OSError as err:
            raise StateError(f"cannot delete {folder / (stem + suffix)}: {err.strerror}") from err


def _root(fd: int, folder: Path, mesh: str, trust_domain: str, now: datetime) -> Authority:
    key_text = read_file(fd, folder, ROOT_KEY, private=True)
    cert_text = read_file(fd, folder, ROOT_CERT, private=False)
    if key_text is None and cert_text is None:
        root = new_root(mesh, trust_domain, now)
        write_file(fd, folder, ROOT_KEY, certs.key_pem(root.key), private=True)
        write_file(fd, folder, ROOT_CERT, certs.cert_pem(root.cert), private=False)
        return root
    fix = (
        f"restore it from a backup, or delete both {folder / ROOT_KEY} and {folder / ROOT_CERT} to make a new "
        "Istio root (then every cluster needs its new cacerts before workloads of different clusters "
        "trust one another again)"
    )
    if key_text is None or cert_text is None:
        missing = ROOT_KEY if key_text is None else ROOT_CERT
        raise StateError(f"{folder / missing} is missing while its pair is there — {fix}")
    try:
        root = Authority(certs.load_cert(cert_text), certs.load_key(key_text))
    except ValueError as err:
        raise StateError(f"the Istio root in {folder} is unreadable ({first_line(err)}) — {fix}") from None
    if not (_matches(root) and certs.signed_by(root.cert, root.cert)):
        raise StateError(f"the Istio root in {folder} does not match its key, or is not self-signed — {fix}")
    if root.cert.not_valid_after_utc - now < RENEW_BEFORE:
        raise StateError(
            f"the Istio root in {folder} expires within {RENEW_BEFORE.days} days "
            f"({root.cert.not_valid_after_utc:%Y-%m-%d}) — {fix}"
        )
    return root


def _intermediate(
    fd: int, folder: Path, root: Authority, cluster: str, trust_domain: str, now: datetime, gone: frozenset[int]
) -> Authority:
    stem = intermediate_stem(cluster)
    key_text = read_file(fd, folder, f"{stem}.key", private=True)
    cert_text = read_file(fd, folder, f"{stem}.crt", private=False)
    if key_text is not None and cert_text is not None:
        fix = (
            f"delete {folder / (stem + '.key')} and {folder / (stem + '.crt')} to issue cluster {cluster} "
            "a new intermediate (its workloads get new certificates at their next rotation)"
        )
        try:
            ca = Authority(certs.load_cert(cert_text), certs.load_key(key_text))
        except ValueError as err:
            raise StateError(
                f"the Istio intermediate of cluster {cluster} is unreadable ({first_line(err)}) — {fix}"
            ) from None
        if not _matches(ca):
            raise StateError(f"the Istio intermediate of cluster {cluster} does not match its key — {fix}")
        if not certs.signed_by(ca.cert, root.cert):
            raise StateError(f"the Istio intermediate of cluster {cluster} is not signed by the mesh's root — {fix}")
        due = (
            ca.cert.serial_number in gone
            or permitted_domains(ca.cert) != frozenset({trust_domain})
            or ca.cert.not_valid_after_utc - now < RENEW_BEFORE
        )
        if not due:
            return ca
    elif key_text is not None or cert_text is not None:
        missing = f"{stem}.key" if key_text is None else f"{stem}.crt"
        raise StateError(
            f"{folder / missing} is missing while its pair is there — restore it, or delete the other to issue "
            f"cluster {cluster} a new intermediate"
        )
    ca = new_intermediate(root, cluster, trust_domain, now)
    write_file(fd, folder, f"{stem}.key", certs.key_pem(ca.key), private=True)
    write_file(fd, folder, f"{stem}.crt", certs.cert_pem(ca.cert), private=False)
    return ca


def _matches(ca: Authority) -> bool:
    return certs.public_key_der(ca.cert.public_key()) == certs.public_key_der(ca.key.public_key())
