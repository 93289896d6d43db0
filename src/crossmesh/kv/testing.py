"""A throwaway single-member etcd on loopback for tests and benchmarks: plaintext, or TLS with
client-certificate authentication (etcd then knows a client by its certificate's common name).
Shipped with the package, as the in-memory store is: code built on `crossmesh.kv` can test against
the real thing in a few lines.

    with etcd(tmp_path, tls=True) as server:
        kv = await connect([server.endpoint], server.tls("node-a"))
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crossmesh.kv.etcd import Tls


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def make_cert(name: str, issuer: Issuer | None, *, server: bool = False) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def write_cert(path: Path, pair: Issuer) -> tuple[Path, Path]:
    cert, key = pair
    crt, pem = path.with_suffix(".crt"), path.with_suffix(".key")
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(pem, 0o600)
    return crt, pem


@dataclass
class EtcdServer:
    endpoint: str
    directory: Path
    ca: Issuer | None = None
    ca_path: Path | None = None
    clients: dict[str, Tls] = field(default_factory=dict)

    def tls(self, cn: str) -> Tls | None:
        """TLS material of a client named `cn` (made on first use), None for a plaintext etcd."""
        if self.ca is None or self.ca_path is None:
            return None
        if cn not in self.clients:
            crt, key = write_cert(self.directory / f"client-{cn}", make_cert(cn, self.ca))
            self.clients[cn] = Tls(self.ca_path, crt, key)
        return self.clients[cn]


@contextlib.contextmanager
def etcd(directory: Path, *, tls: bool = False) -> Iterator[EtcdServer]:
    if shutil.which("etcd") is None:
        raise RuntimeError("these tests need etcd: apt-get install -y --no-install-recommends etcd-server")
    client, peer = free_port(), free_port()
    scheme = "https" if tls else "http"
    argv = ["etcd", "--name", "t", "--data-dir", str(directory / "data")]
    argv += ["--listen-client-urls", f"{scheme}://127.0.0.1:{client}"]
    argv += ["--advertise-client-urls", f"{scheme}://127.0.0.1:{client}"]
    argv += [
        "--listen-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls",
        f"http://127.0.0.1:{peer}",
    ]
    argv += ["--initial-cluster", f"t=http://127.0.0.1:{peer}", "--heartbeat-interval", "100"]
    argv += ["--election-timeout", "1000"]
    server = EtcdServer(f"{scheme}://127.0.0.1:{client}", directory)
    if tls:
        server.ca = make_cert("crossmesh test CA", None)
        server.ca_path, _ = write_cert(directory / "ca", server.ca)
        crt, key = write_cert(directory / "server", make_cert("etcd", server.ca, server=True))
        argv += ["--cert-file", str(crt), "--key-file", str(key), "--trusted-ca-file", str(server.ca_path)]
        argv += ["--client-cert-auth"]
    log = (directory / "etcd.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(client)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            time.sleep(0.3)  # listening; give the member a moment to elect itself
            return
        time.sleep(0.05)
    raise RuntimeError(f"etcd did not listen on 127.0.0.1:{port} within {timeout:.0f} s")
