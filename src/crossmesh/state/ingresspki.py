"""The mesh's ingress CA in the state directory, and the server certificates it issues to gateway
listeners whose TLS is `mesh` (`crossmesh.gateway.model.TLS.mesh`; what is issued and when is
`crossmesh.identity.ingress`).

    ingress-pki/ca.key          the ingress CA's key, 0600: rendered nowhere, printed never
    ingress-pki/ca.crt          its certificate: what a client outside trusts (curl --cacert)
    ingress-pki/<stem>.key      a listener's key, 0600; <stem> = listener.<cluster>_<ns>_<gateway>_<listener>
    ingress-pki/<stem>.crt      its certificate (the leaf alone)

One CA per mesh, made on first use and read back after, so two renders give the same bytes. A
listener's certificate is issued anew when it is missing, unreadable, not its key's or the CA's,
when the listener's hostnames changed, or past half of its life; otherwise it is served again.
Certificates of listeners no longer in the manifests stay, unused. The CA is never replaced behind
the user's back (every client that trusts it would refuse the gateways): one half there, unreadable
or near its end stops with the fix (`pki.authority`). The folder is opened by the state store (no
links followed, 0700); keys are written 0600 whatever the umask (`disk`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from crossmesh.errors import StateError
from crossmesh.identity import ingress
from crossmesh.model.tls import IngressCert
from crossmesh.state import certs, pki
from crossmesh.state.pki import first_line, read_file

INGRESS = pki.Purpose(
    "ingress",
    "then every listener gets a new certificate, and every client outside must trust the new ca.crt",
)
LISTENER_PREFIX = "listener."


@dataclass(frozen=True, slots=True)
class Kept:
    """A listener certificate found in the folder, for listings."""

    stem: str
    subject: str
    names: tuple[str, ...]
    serial: str
    not_after: datetime


def ca(fd: int, folder: Path, mesh: str, now: datetime) -> certs.Authority:
    """The mesh's ingress CA, made on first use."""
    return pki.authority(fd, folder, mesh, now, INGRESS)


def ca_cert(fd: int, folder: Path) -> x509.Certificate:
    """The ingress CA's certificate as made before; StateError when there is none yet."""
    text = read_file(fd, folder, pki.CA_CERT, private=False)
    if text is None:
        raise StateError(
            f"{folder / pki.CA_CERT} does not exist yet — render a mesh whose Gateway has a mesh certificate first"
        )
    try:
        return certs.load_cert(text)
    except ValueError as err:
        raise StateError(
            f"{folder / pki.CA_CERT} is unreadable ({first_line(err)}) — restore it from a backup"
        ) from None


def listener(
    fd: int, folder: Path, authority: certs.Authority, lid: ingress.ListenerId, names: Iterable[str], now: datetime
) -> IngressCert:
    """The certificate of listener `lid` naming `names`: the one kept, or a new one when due."""
    wanted = tuple(sorted(set(names)))
    kept_pair = pki.read_pair(fd, folder, lid.stem)
    if kept_pair is not None and ingress.due(kept_pair.cert, kept_pair.key, authority, wanted, now) is None:
        return _issued(lid, wanted, kept_pair, authority, fresh=False)
    key = certs.new_key()
    pair = pki.write_pair(fd, folder, lid.stem, key, ingress.issue(authority, lid, wanted, key, now))
    return _issued(lid, wanted, pair, authority, fresh=True)


def _issued(
    lid: ingress.ListenerId, names: tuple[str, ...], pair: pki.Pair, authority: certs.Authority, *, fresh: bool
) -> IngressCert:
    return IngressCert(
        lid.cluster,
        lid.namespace,
        lid.gateway,
        lid.listener,
        names,
        certs.cert_pem(pair.cert) + certs.cert_pem(authority.cert),
        pair.key_text,
        pair.cert.not_valid_after_utc.isoformat(),
        fresh,
    )


def kept(fd: int, folder: Path) -> list[Kept]:
    """Every listener certificate in the folder, by name; unreadable ones are skipped (the next
    render issues them anew)."""
    try:
        entries = sorted(os.listdir(fd))
    except OSError as err:
        raise StateError(f"cannot list {folder}: {err.strerror}") from err
    out = []
    for entry in entries:
        if not (entry.startswith(LISTENER_PREFIX) and entry.endswith(".crt")):
            continue
        text = read_file(fd, folder, entry, private=False)
        try:
            cert = certs.load_cert(text or "")
        except ValueError:
            continue
        out.append(
            Kept(
                entry.removesuffix(".crt"),
                cert.subject.rfc4514_string(),
                ingress.dns_names(cert),
                f"{cert.serial_number:x}",
                cert.not_valid_after_utc,
            )
        )
    return out


# the state directory by path (the lab's gateway and tests) ---------------------------------------
def listener_pem(
    state_dir: Path,
    *,
    mesh: str,
    cluster: str,
    namespace: str,
    gateway: str,
    listener: str,
    hostnames: Iterable[str],
    now: datetime | None = None,
) -> bytes:
    """The PEM HAProxy's `crt` wants for a listener (leaf, the ingress CA, the key), issued or renewed
    in `<state_dir>/ingress-pki/` as `listener` does (the CA made on first use, for mesh `mesh`)."""
    from crossmesh.state.store import StateStore  # the store opens the folder; it imports this module

    lid = ingress.ListenerId(cluster, namespace, gateway, listener)
    got = StateStore(state_dir).ingress_listeners(mesh, {lid: tuple(hostnames)}, now or datetime.now(UTC))[lid]
    return got.cert_pem.encode("ascii") + got.key_pem.encode("ascii")


def ingress_ca_pem(state_dir: Path) -> bytes:
    """The ingress CA's certificate (what a client outside trusts: `curl --cacert`); StateError when
    none was made yet."""
    from crossmesh.state.store import StateStore

    return certs.cert_pem(StateStore(state_dir).ingress_ca_cert()).encode("ascii")
