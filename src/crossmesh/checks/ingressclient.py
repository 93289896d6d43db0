"""The client outside, as the `ingress/*` checks need it: HTTP(S) with the Host, SNI and headers a
user's browser would send to a gateway's load balancer, keep-alive connections for the thousand
requests of a weight split, a bare TLS handshake (which certificate, for which name), and a scan of
many address:port pairs at once.

Sockets are made in the client's namespace (`netns.run_in`) and keep it: a socket's namespace is
fixed when it is created, so the requests themselves can then run on any thread. The scan connects
every pair at once without blocking: a router that drops in silence costs one timeout in all, not
one per port.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from crossmesh.checks.probes import classify
from crossmesh.checks.results import Result
from crossmesh.drivers.lab import netns
from crossmesh.gateway.model import Listener, Protocol

TIMEOUT = 5.0


def tls_context(trust: bytes | None) -> ssl.SSLContext:
    """A client context trusting the PEM certificates `trust` (the ingress CA, or a Secret's own
    chain — a self-signed leaf is an anchor too); None: no verification (what answers, not whom)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["http/1.1"])
    if trust is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.load_verify_locations(cadata=trust.decode("ascii"))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


@dataclass(frozen=True, slots=True)
class Ask:
    """One request as the user sends it: the Host (and SNI), the method, the path and headers."""

    host: str
    path: str = "/"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()

    def wire(self, *, close: bool) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {self.host}", "Content-Length: 0"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        lines.append("Connection: close" if close else "Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass(slots=True)
class Answer:
    result: Result  # ok: an HTTP answer came (any status); else why none did
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    body: dict[str, Any] | None = None  # the echo app's JSON, when it is
    detail: str = ""

    @property
    def pod(self) -> str | None:
        """The answering pod as CLUSTER/NS/POD (the echo app names itself), or None."""
        if self.body is None or "pod" not in self.body:
            return None
        return f"{self.body.get('cluster')}/{self.body.get('namespace')}/{self.body.get('pod')}"


def _read_answer(s: socket.socket | ssl.SSLSocket, method: str) -> tuple[Answer, bool]:
    """One HTTP/1.1 answer off the socket; (answer, whether the connection stays open)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            if not buf:
                return Answer(Result.RESET, detail="closed without an answer"), False
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return Answer(Result.WRONG_ANSWER, detail=f"not HTTP: {lines[0][:60]!r}"), False
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0") or 0) if method != "HEAD" else 0
    keep = headers.get("connection", "").lower() != "close"
    if "content-length" not in headers and method != "HEAD" and status >= 200 and status not in (204, 304):
        keep = False  # the body ends with the connection
        while chunk := s.recv(65536):
            rest += chunk
        length = len(rest)
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    body: dict[str, Any] | None = None
    if rest:
        try:
            loaded = json.loads(rest[:length])
            body = loaded if isinstance(loaded, dict) else None
        except ValueError:
            body = None
    return Answer(Result.OK, status, headers, body, lines[0]), keep


def _connect(ns: str, ip: str, port: int, timeout: float) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
        except BaseException:
            s.close()
            raise
        return s

    return netns.run_in(ns, make)


class Session:
    """One keep-alive connection from namespace `ns` to ip:port (over TLS with `tls`, SNI
    `server_name`), opened again when the server closes it."""

    def __init__(  # noqa: PLR0913
        self,
        ns: str,
        ip: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        server_name: str | None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.ns, self.target, self.tls, self.server_name, self.timeout = ns, (ip, port), tls, server_name, timeout
        self.sock: socket.socket | ssl.SSLSocket | None = None
        self.connections = 0

    def _open(self) -> socket.socket | ssl.SSLSocket:
        raw = _connect(self.ns, self.target[0], self.target[1], self.timeout)
        self.connections += 1
        if self.tls is None:
            return raw
        try:
            return self.tls.wrap_socket(raw, server_hostname=self.server_name)
        except BaseException:
            raw.close()
            raise

    def send(self, ask: Ask, *, close: bool = False) -> Answer:
        for attempt in (0, 1):
            fresh = self.sock is None
            try:
                if self.sock is None:
                    self.sock = self._open()
                self.sock.sendall(ask.wire(close=close))
                answer, keep = _read_answer(self.sock, ask.method)
            except OSError as err:
                self.close()
                if fresh or attempt:
                    return Answer(classify(err), detail=str(err))
                continue  # the server closed an idle keep-alive connection: once more on a new one
            if answer.result is Result.RESET and not fresh and not attempt:
                self.close()
                continue
            if close or not keep:
                self.close()
            return answer
        return Answer(Result.ERROR, detail="unreachable")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def request(  # noqa: PLR0913
    ns: str,
    ip: str,
    port: int,
    ask: Ask,
    *,
    tls: ssl.SSLContext | None,
    server_name: str | None = None,
    timeout: float = TIMEOUT,
) -> Answer:
    """One request on a connection of its own."""
    return Session(ns, ip, port, tls=tls, server_name=server_name, timeout=timeout).send(ask, close=True)


@dataclass(slots=True)
class Batch:
    answers: list[Answer]
    seconds: float
    connections: int


def many(  # noqa: PLR0913
    ns: str,
    ip: str,
    port: int,
    ask: Ask,
    count: int,
    *,
    tls: ssl.SSLContext | None,
    server_name: str | None,
    workers: int = 8,
) -> Batch:
    """`count` requests over `workers` keep-alive connections in parallel."""
    sessions = [Session(ns, ip, port, tls=tls, server_name=server_name) for _ in range(workers)]
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]

    def run(i: int) -> list[Answer]:
        try:
            return [sessions[i].send(ask) for _ in range(shares[i])]
        finally:
            sessions[i].close()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        answers = [a for part in pool.map(run, range(workers)) for a in part]
    return Batch(answers, time.monotonic() - started, sum(s.connections for s in sessions))


@dataclass(frozen=True, slots=True)
class Handshake:
    result: Result  # ok: the handshake completed (and verified, with a trusting context)
    detail: str
    names: tuple[str, ...] = ()  # the certificate's DNS names
    issuer: str = ""
    version: str = ""  # the TLS version agreed


def handshake(
    ns: str, ip: str, port: int, *, tls: ssl.SSLContext, server_name: str | None, timeout: float = TIMEOUT
) -> Handshake:
    """A TLS handshake alone: whether it completes for `server_name` (verified when `tls` trusts
    someone), and the certificate the server chose."""
    try:
        raw = _connect(ns, ip, port, timeout)
    except OSError as err:
        return Handshake(classify(err), str(err))
    try:
        with tls.wrap_socket(raw, server_hostname=server_name) as s:
            cert = s.getpeercert() or {}
            version = s.version() or ""
    except ssl.SSLCertVerificationError as err:
        return Handshake(Result.WRONG_ANSWER, f"certificate not verified: {err.verify_message}")
    except OSError as err:
        return Handshake(classify(err), str(err))
    finally:
        raw.close()
    alt: Any = cert.get("subjectAltName", ())
    issued: Any = cert.get("issuer", ())
    names = tuple(str(v) for k, v in alt if k == "DNS")
    issuer = ", ".join(f"{k}={v}" for rdn in issued for k, v in rdn)
    return Handshake(Result.OK, "", names, issuer, version)


def scan(ns: str, targets: Iterable[tuple[str, int]], *, timeout: float = 1.5) -> dict[tuple[str, int], Result]:
    """A TCP connect to every (address, port) at once: `ok` where one completed (something
    answers), else refused / unreachable / timeout (dropped in silence)."""
    wanted = sorted(set(targets))

    def run() -> dict[tuple[str, int], Result]:
        out: dict[tuple[str, int], Result] = {}
        for start in range(0, len(wanted), 256):  # a few hundred descriptors at a time
            out |= _scan_batch(wanted[start : start + 256], timeout)
        return out

    return netns.run_in(ns, run)


def _scan_batch(batch: Sequence[tuple[str, int]], timeout: float) -> dict[tuple[str, int], Result]:
    pending: dict[int, tuple[socket.socket, tuple[str, int]]] = {}
    out: dict[tuple[str, int], Result] = {}
    poller = select.poll()
    for target in batch:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        code = s.connect_ex(target)
        if code not in (0, 115):  # EINPROGRESS
            out[target] = classify(OSError(code, "connect"))
            s.close()
            continue
        pending[s.fileno()] = (s, target)
        poller.register(s, select.POLLOUT)
    deadline = time.monotonic() + timeout
    while pending and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            s, target = pending.pop(fd)
            poller.unregister(fd)
            code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            out[target] = Result.OK if code == 0 else classify(OSError(code, "connect"))
            s.close()
    for s, target in pending.values():
        out[target] = Result.TIMEOUT
        s.close()
    return out


def split(counts: Mapping[str, int], total: int) -> str:
    """`a 90.1 %, b 9.9 %` in the order given."""
    return ", ".join(f"{k} {100.0 * v / total:.1f} %" for k, v in counts.items()) if total else "nothing"


def listener_answers(ns: str, ip: str, port: int, listeners: Sequence[Listener], timeout: float = TIMEOUT) -> Answer:
    """Whether a gateway's `listeners` (of one port) answer at ip:port (a gateway pod, its Service, a
    node port to it) in their own protocol: an HTTPS listener completes a TLS handshake for its hostname
    (not verified: this says what answers, `ingress/tls` says whom to trust); an HTTP listener gives
    an HTTP answer, any status (HAProxy's 404 for a host no route claims is still the gateway)."""
    if not listeners:
        return Answer(Result.ERROR, detail=f"no listener of the gateway behind port {port}")
    li = listeners[0]
    host = host_for(li.hostname) if li.hostname else ip
    if li.protocol is Protocol.HTTPS:
        shook = handshake(ns, ip, port, tls=tls_context(None), server_name=host, timeout=timeout)
        what = f"the gateway's listener {li.name} answered TLS for {host}"
        return Answer(shook.result, detail=what if shook.result is Result.OK else shook.detail)
    got = request(ns, ip, port, Ask(host, "/crossmesh-check"), tls=None, timeout=timeout)
    if got.result is Result.OK:
        got.detail = f"the gateway's listener {li.name} answered HTTP {got.status}"
    return got


def host_for(hostname: str) -> str:
    """A name a listener or route hostname matches: a wildcard's with a first label of ours."""
    return "crossmesh-check" + hostname[1:] if hostname.startswith("*.") else hostname
