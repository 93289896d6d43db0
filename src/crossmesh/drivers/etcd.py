"""A 3-member etcd cluster on loopback for the lab's agents (Debian's etcd-server 3.4), run as a
real one is: clients speak TLS and must show a certificate of the etcd CA (`--client-cert-auth`),
which etcd takes as the user its common name names (`crossmesh pki etcd`, `kv.identities`).

Members listen only on 127.0.0.1, on ports derived from the lab tag so that two labs
do not collide; data lives under the lab's state directory. Restarting a stopped
member reuses its data directory and rejoins the cluster. The peer URLs (members to members)
stay plaintext http: they are on loopback, where no one is on the path.

The certificates are the folder `crossmesh pki etcd --output-dir` writes (`pki` below):
`server/` for the members, `users/<CN>/` for each client; `root` probes their health.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from crossmesh.errors import EnvironmentProblem
from crossmesh.kv import identities
from crossmesh.model.tls import CertSpec
from crossmesh.render.etcd import CA_FILE, CERT_FILE, KEY_FILE

MEMBERS = 3


@dataclass(frozen=True, slots=True)
class Identity:
    """The files of one etcd identity: the etcd CA's certificate, its certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def as_dict(self) -> dict[str, str]:
        """As an agent configuration holds it (`AgentConfig.tls`)."""
        return {"ca": str(self.ca), "cert": str(self.cert), "key": str(self.key)}


def pki_dir(lab_dir: Path) -> Path:
    """Where the lab keeps its etcd identities' files (0700 folders, keys 0600)."""
    return lab_dir / "etcd-pki"


def identity(pki: Path, user: str | None) -> Identity:
    """The files of client `user` in `pki`, or the members' (`None`)."""
    spec = CertSpec(identities.SERVER, identities.SERVER_CN, server=True) if user is None else CertSpec(user, user)
    folder = pki / identities.folder(spec)
    return Identity(folder / CA_FILE, folder / CERT_FILE, folder / KEY_FILE)


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    client: int
    peer: int

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.client}"


def members(tag: str) -> list[Member]:
    base = 21000 + (int(tag, 16) % 1000) * 8
    return [Member(f"m{k}", base + 2 * k, base + 2 * k + 1) for k in range(MEMBERS)]


def endpoints(tag: str) -> list[str]:
    return [m.endpoint for m in members(tag)]


def healthy(member: Member, pki: Path, timeout: float = 0.5) -> bool:
    """Whether the member answers /health over TLS to root's certificate (etcd's /health answers
    with auth enabled too; a member that refuses the certificate is not healthy)."""
    root = identity(pki, identities.ROOT_USER)
    try:
        context = ssl.create_default_context(cafile=str(root.ca))
        context.load_cert_chain(str(root.cert), str(root.key))
        with urllib.request.urlopen(f"{member.endpoint}/health", timeout=timeout, context=context) as r:  # noqa: S310
            return b'"health":"true"' in r.read()
    except (OSError, ssl.SSLError):
        return False


def start_member(lab_dir: Path, tag: str, member: Member, pki: Path) -> int:
    if shutil.which("etcd") is None:
        raise EnvironmentProblem(
            "missing Debian package etcd-server — install with `apt-get install -y --no-install-recommends etcd-server`"
        )
    cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer}" for m in members(tag))
    data = lab_dir / "etcd" / member.name
    data.parent.mkdir(parents=True, exist_ok=True)
    log = lab_dir / "logs" / f"etcd-{member.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        "etcd",
        "--name",
        member.name,
        "--data-dir",
        str(data),
        "--listen-client-urls",
        member.endpoint,
        "--advertise-client-urls",
        member.endpoint,
        "--listen-peer-urls",
        f"http://127.0.0.1:{member.peer}",
        "--initial-advertise-peer-urls",
        f"http://127.0.0.1:{member.peer}",
        "--initial-cluster",
        cluster,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        f"cm-{tag}",
        "--heartbeat-interval",
        "100",
        "--election-timeout",
        "1000",
    ]
    server = identity(pki, None)
    argv += ["--cert-file", str(server.cert), "--key-file", str(server.key), "--trusted-ca-file", str(server.ca)]
    argv += ["--client-cert-auth"]
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return proc.pid


def wait_healthy(tag: str, pki: Path, timeout: float = 20.0, *, quorum_only: bool = False) -> None:
    deadline = time.monotonic() + timeout
    need = MEMBERS // 2 + 1 if quorum_only else MEMBERS
    while time.monotonic() < deadline:
        if sum(healthy(m, pki) for m in members(tag)) >= need:
            return
        time.sleep(0.1)
    raise EnvironmentProblem(f"etcd members of lab cm-{tag} did not become healthy within {timeout:.0f} s")
