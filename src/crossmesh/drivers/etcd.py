"""A 3-member etcd cluster on loopback for the lab's agents (Debian's etcd-server 3.4).

Members listen only on 127.0.0.1, on ports derived from the lab tag so that two labs
do not collide; data lives under the lab's state directory. Restarting a stopped
member reuses its data directory and rejoins the cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from crossmesh.errors import EnvironmentProblem

MEMBERS = 3


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    client: int
    peer: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client}"


def members(tag: str) -> list[Member]:
    base = 21000 + (int(tag, 16) % 1000) * 8
    return [Member(f"m{k}", base + 2 * k, base + 2 * k + 1) for k in range(MEMBERS)]


def endpoints(tag: str) -> list[str]:
    return [m.endpoint for m in members(tag)]


def healthy(member: Member, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(f"{member.endpoint}/health", timeout=timeout) as r:  # noqa: S310 - loopback
            return b'"health":"true"' in r.read()
    except OSError:
        return False


def start_member(lab_dir: Path, tag: str, member: Member) -> int:
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
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return proc.pid


def wait_healthy(tag: str, timeout: float = 20.0, *, quorum_only: bool = False) -> None:
    deadline = time.monotonic() + timeout
    need = MEMBERS // 2 + 1 if quorum_only else MEMBERS
    while time.monotonic() < deadline:
        if sum(healthy(m) for m in members(tag)) >= need:
            return
        time.sleep(0.1)
    raise EnvironmentProblem(f"etcd members of lab cm-{tag} did not become healthy within {timeout:.0f} s")
