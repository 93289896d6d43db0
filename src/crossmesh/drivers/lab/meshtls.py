"""A workload's SVID in the node proxy: its key (in memory only), its certificate from the lab's CA
daemon (meshca.py), the TLS contexts made of them, and the check of a peer's certificate.

The key is made here and never leaves the process: the CA gets a certificate signing request,
as ztunnel asks istiod. Python's `ssl` reads certificates and keys only from files, so the
contexts are loaded from an anonymous memory file (memfd_create(2)), never from the disk.

A certificate is renewed at half its lifetime (Istio's SECRET_GRACE_PERIOD_RATIO 0.5). A renewal
that fails keeps the certificate in use while it is valid, and says so in the log; the next
attempt comes soon. Connections made with the old contexts keep them: only new ones use the new.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crossmesh.identity.spiffe import SpiffeId
from crossmesh.identity.svid import Verdict, make_csr, verify_svid
from crossmesh.policy.model import SA_LABEL, Endpoint

RETRY = 10.0  # seconds between attempts after a failed renewal
CA_TIMEOUT = 10.0
ANSWER_MAX = 1 << 20
HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"PATCH ", b"OPTIONS ", b"CONNECT ", b"TRACE ")


def spiffe_of(ep: Endpoint, trust_domain: str) -> SpiffeId:
    """A pod's SPIFFE id: its namespace and service account (policy labels; "default" without one)."""
    return SpiffeId(trust_domain, ep.namespace, ep.labels.get(SA_LABEL, "default"))


def ca_socket(lab_dir: Path, node: str) -> Path:
    """The CA daemon's socket for the workloads of `node` (it signs only their identities)."""
    return lab_dir / "mesh" / "ca" / f"{node}.sock"


@dataclass(frozen=True, slots=True)
class Bundle:
    """What the CA answers: the SVID's chain, the mesh roots, the intermediates of every cluster
    (to check a peer whose handshake sent only its leaf) and the revoked intermediates' serials."""

    chain_pem: bytes
    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...]
    revoked: frozenset[int]
    not_after: float

    @classmethod
    def from_answer(cls, answer: dict[str, object]) -> Bundle:
        if "error" in answer:
            raise ValueError(f"the CA refused: {answer['error']}")
        chain = str(answer["chain"]).encode()
        roots = tuple(x509.load_pem_x509_certificates(str(answer["roots"]).encode()))
        inter_pem = str(answer.get("intermediates", "")).encode()
        inters = tuple(x509.load_pem_x509_certificates(inter_pem)) if inter_pem.strip() else ()
        revoked = frozenset(int(str(s)) for s in answer.get("revoked", ()) or ())  # type: ignore[attr-defined]
        return cls(chain, roots, inters, revoked, float(str(answer["not_after"])))


async def request_certificate(sock: Path, key: ec.EllipticCurvePrivateKey, spiffe: SpiffeId) -> Bundle:
    """One CSR to the CA daemon's socket; ValueError (the reason) when it refuses or is not there."""
    csr = make_csr(key, spiffe).decode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(sock), limit=ANSWER_MAX), CA_TIMEOUT)
    except (OSError, TimeoutError) as err:
        raise ValueError(f"the CA at {sock} is not answering: {err}") from err
    try:
        writer.write(json.dumps({"csr": csr}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), CA_TIMEOUT)
    except (OSError, TimeoutError, asyncio.LimitOverrunError) as err:
        raise ValueError(f"the CA at {sock} did not answer: {err}") from err
    finally:
        writer.close()
    try:
        answer = json.loads(line)
        return Bundle.from_answer(answer)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"the CA's answer is unusable: {err}") from err


def _pem_roots(roots: tuple[x509.Certificate, ...]) -> str:
    return "".join(r.public_bytes(serialization.Encoding.PEM).decode() for r in roots)


def contexts(
    chain_pem: bytes, key: ec.EllipticCurvePrivateKey, roots: tuple[x509.Certificate, ...]
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts: TLS 1.3 only, presenting the SVID, requiring and checking the
    peer's against the mesh roots (hostnames are not checked: the SPIFFE id is, after the handshake)."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    out = []
    for purpose in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=_pem_roots(roots))
        fd = os.memfd_create("svid", os.MFD_CLOEXEC)  # memory, not disk: the key stays in the process
        try:
            os.write(fd, chain_pem + key_pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        out.append(ctx)
    return out[0], out[1]


@dataclass(slots=True)
class Identity:
    """One local workload's SVID and the contexts made of it; replaced whole on renewal."""

    spiffe: SpiffeId
    server: ssl.SSLContext | None = None
    client: ssl.SSLContext | None = None
    bundle: Bundle | None = None
    issued: float = 0.0
    failures: int = field(default=0)

    @property
    def renew_at(self) -> float:
        """Half-way through the certificate's life; at once when there is none."""
        if self.bundle is None:
            return 0.0
        return self.issued + (self.bundle.not_after - self.issued) / 2

    async def renew(self, sock: Path) -> bool:
        """A new key and certificate; on failure the current ones stay (while valid), and the log
        says why and until when they hold."""
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            bundle = await request_certificate(sock, key, self.spiffe)
            server, client = contexts(bundle.chain_pem, key, bundle.roots)
        except (ValueError, ssl.SSLError, OSError) as err:
            self.failures += 1
            held = (
                f"keeping the current certificate, valid until {_iso(self.bundle.not_after)}"
                if self.bundle is not None and self.bundle.not_after > time.time()
                else "no valid certificate: mTLS connections of this workload fail"
            )
            print(f"certificate renewal failed for {self.spiffe.uri}: {err}; {held}", flush=True)
            return False
        self.server, self.client, self.bundle, self.issued = server, client, bundle, time.time()
        self.failures = 0
        print(f"certificate for {self.spiffe.uri} issued, valid until {_iso(bundle.not_after)}", flush=True)
        return True


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


VERIFIED_MAX = 4096  # peer certificates whose verdict a proxy remembers


_verified: dict[tuple[object, ...], tuple[Verdict, float, float]] = {}


def check_peer(leaf_der: bytes | None, bundle: Bundle, trust_domain: str) -> Verdict:
    """The peer's certificate (the leaf its handshake presented, already chained to a mesh root by
    OpenSSL) checked as an SVID: its trust domain, its chain to the root through its cluster's
    intermediate, and that intermediate not revoked.

    A certificate found good is remembered with the roots, intermediates and revocations it was
    judged against, for as long as every certificate of its chain is valid: the next connection of
    the same peer skips the signature checks (a seventh of a proxy's CPU per connection otherwise).
    A refusal is never remembered; new roots or a new revocation list are a new judgement."""
    if leaf_der is None:
        return Verdict(False, None, "no client certificate")
    key = (hashlib.sha256(leaf_der).digest(), trust_domain, bundle.roots, bundle.intermediates, bundle.revoked)
    now = time.time()
    known = _verified.get(key)
    if known is not None and known[1] <= now < known[2]:
        return known[0]
    leaf = x509.load_der_x509_certificate(leaf_der)
    chain = [leaf, *[c for c in bundle.intermediates if c.subject == leaf.issuer][:1]]
    verdict = verify_svid(chain, list(bundle.roots), trust_domain, datetime.fromtimestamp(now, UTC), bundle.revoked)
    if verdict.ok:
        if len(_verified) >= VERIFIED_MAX:
            _verified.clear()
        start = max(c.not_valid_before_utc for c in chain).timestamp()
        end = min(c.not_valid_after_utc for c in chain).timestamp()
        _verified[key] = (verdict, start, end)
    return verdict


def http_head(data: bytes) -> tuple[str, str] | None:
    """(method, path) when `data` is the head of an HTTP/1 request, else None."""
    if not data.startswith(HTTP_METHODS):
        return None
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    return (parts[0], parts[1]) if len(parts) >= 3 else None


def with_xfcc(head: bytes, server: str, client: str, cert: bytes | None = None) -> bytes:
    """The request head with Envoy's X-Forwarded-Client-Cert (any the client sent is replaced): who
    served (By), the SHA-256 of the client's certificate (Hash, when given: `cert` is its DER) and
    the client's SPIFFE id (URI), in Envoy's order. The hash tells one certificate of an identity
    from the next: `crossmesh test` sees a rotation by it."""
    lines = head[:-4].split(b"\r\n")
    kept = [lines[0], *(h for h in lines[1:] if not h.lower().startswith(b"x-forwarded-client-cert:"))]
    digest = f";Hash={hashlib.sha256(cert).hexdigest()}" if cert else ""
    kept.append(f"X-Forwarded-Client-Cert: By={server}{digest};URI={client}".encode())
    return b"\r\n".join(kept) + b"\r\n\r\n"


def tls_error(err: BaseException) -> str:
    """An error as a log line says it: OpenSSL's verification message when there is one
    (`certificate has expired`, `unable to get local issuer certificate`)."""
    if isinstance(err, ssl.SSLCertVerificationError) and err.verify_message:
        return f"certificate verification: {err.verify_message}"
    if isinstance(err, TimeoutError):
        return "timed out"
    return str(err) or type(err).__name__
