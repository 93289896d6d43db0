"""A real HAProxy on loopback for the gateway tests: echo upstreams that answer their own name and the
request's headers, HAProxy run in the foreground on a rendered configuration (stopped by its pid at
teardown), its `show stat` read from the stats socket, and certificates made with `cryptography`."""

from __future__ import annotations

import datetime
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crossmesh.gateway.haproxy import Counters, HaproxyConfig, parse_stats

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    name = ""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps({"name": self.name, "path": self.path, "headers": list(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def upstreams(names: list[str]) -> Iterator[dict[str, tuple[str, int]]]:
    """One echo server per name (a backendRef's `ref`), each on its own loopback port."""
    servers = []
    try:
        for name in names:
            handler = type("Echo", (_Echo,), {"name": name})
            server = ThreadingHTTPServer((LOOPBACK, 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
        yield {name: (LOOPBACK, s.server_address[1]) for name, s in zip(names, servers, strict=True)}
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def write(config: HaproxyConfig, directory: Path) -> Path:
    for path, text in config.crt_lists.items():
        Path(path).write_text(text)
    cfg = directory / "haproxy.cfg"
    cfg.write_text(config.text)
    return cfg


def check(cfg: Path) -> str:
    """`haproxy -c`: its complaints (warnings and alerts), empty when the configuration is clean."""
    got = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    complaints = "\n".join(line for line in (got.stdout + got.stderr).splitlines() if "NOTICE" not in line)
    assert got.returncode == 0, complaints
    return complaints.replace("Configuration file is valid", "").strip()


@dataclass
class Running:
    stats_socket: Path

    def stats(self) -> dict[tuple[str, str], Counters]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return parse_stats(b"".join(chunks).decode())


@contextmanager
def haproxy(cfg: Path, stats_socket: Path, ports: list[int]) -> Iterator[Running]:
    """HAProxy in the foreground (`-db`) until the block ends, ready once every port accepts."""
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "haproxy exited"
                try:
                    socket.create_connection((LOOPBACK, port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"haproxy does not listen on {port}"
                    time.sleep(0.02)
        yield Running(stats_socket)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Answer:
    status: int
    name: str | None
    headers: list[tuple[str, str]]  # as the upstream saw them, names in lower case
    location: str | None


def send(conn: http.client.HTTPConnection, *, host: str, path: str, method: str, headers: Mapping[str, str]) -> Answer:
    """One request on a kept-alive connection, the Host header exactly `host`."""
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.putheader("Content-Length", "0")
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    if response.status == 200 and response.getheader("Content-Type") == "application/json":
        got = json.loads(body)
        return Answer(200, got["name"], [(k.lower(), v) for k, v in got["headers"]], None)
    return Answer(response.status, None, [], response.getheader("Location"))


# Certificates: one CA, leaves it signs


@dataclass(frozen=True)
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: CA | None, names: list[str]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer.cert.subject if issuer else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return builder.sign(issuer.key if issuer else key, hashes.SHA256())


def make_ca() -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    return CA(key, _cert("crossmesh test ingress CA", key, None, []))


def leaf_pem(ca: CA, subject: str, names: list[str]) -> bytes:
    """A PEM as HAProxy reads it: the leaf, the chain (the CA) and the key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(subject, key, ca, names)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM) + ca.pem + key_pem
