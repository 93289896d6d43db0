"""The lab's state file: /run/crossmesh/cm-<tag>/lab.json, what a running lab is made of.

Everything else the lab makes is found by its `cm-<tag>` prefix: namespaces in /run/netns,
wireguard-go sockets, processes whose command line names the tag (processes.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossmesh.errors import CrossmeshError, UsageError

LAB_ROOT = Path("/run/crossmesh")

Progress = Callable[[str], None]


class LabError(CrossmeshError):
    """Building or operating the lab failed; the message names the node or tunnel."""


def quiet(_: str) -> None:
    pass


@dataclass(slots=True)
class LabState:
    tag: str
    mesh: str
    mesh_name: str
    state_dir: str
    status: str = "building"
    created: float = field(default_factory=time.time)
    namespaces: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)  # node → namespace
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # ref → {namespace, node, address, ports}
    wireguard: dict[str, dict[str, Any]] = field(default_factory=dict)  # ifname → {namespace, node, pid}
    workloads: dict[str, int] = field(default_factory=dict)  # node → pid
    control_plane: str = ""  # "etcd": per-node agents own WireGuard peers and tunnel routes
    lease_ttl: int = 3  # seconds: a crashed node's routes are withdrawn about this long after the crash
    overlay: dict[str, Any] = field(default_factory=dict)  # membership changes: lab add-node / remove-node
    placements: dict[str, str] = field(default_factory=dict)  # pod → node, kept so that joins move nobody
    indices: dict[str, dict[str, int]] = field(default_factory=dict)  # numbers in namespace and device names
    etcd_pids: dict[str, int] = field(default_factory=dict)  # member → pid
    services_pid: int = 0  # the service daemon: health checks, ClusterIP tables, DNS
    services_digest: str = ""  # of the plan it runs with; a new plan restarts it
    sites: dict[str, str] = field(default_factory=dict)  # site → router namespace
    inet: str = ""
    applied: dict[str, str] = field(default_factory=dict)  # namespace → digest of the spec it was brought to
    built_digest: str = ""  # of the applied revision (crossmesh apply) the lab was last brought to
    cut_sites: list[str] = field(default_factory=list)  # cut off from the internet: lab cut-site, heal-site

    @property
    def dir(self) -> Path:
        return LAB_ROOT / f"cm-{self.tag}"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "lab.json.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, self.dir / "lab.json")

    @classmethod
    def load(cls, tag: str) -> LabState | None:
        path = LAB_ROOT / f"cm-{tag}" / "lab.json"
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None


def running_labs() -> list[LabState]:
    if not LAB_ROOT.is_dir():
        return []
    out = []
    for d in sorted(LAB_ROOT.glob("cm-*")):
        state = LabState.load(d.name[3:])
        if state is not None:
            out.append(state)
    return out


def find_lab(mesh: Path | None) -> LabState:
    """The lab of `mesh`, or the only running lab when no mesh is given."""
    labs = running_labs()
    if mesh is not None:
        target = str(mesh.resolve())
        for lab in labs:
            if lab.mesh == target:
                return lab
        raise UsageError(f"no lab is running for {mesh} — start it with `crossmesh lab up {mesh}`")
    if not labs:
        raise UsageError("no lab is running — start one with `crossmesh lab up MESH`")
    if len(labs) > 1:
        names = ", ".join(f"{lab.mesh_name} ({lab.mesh})" for lab in labs)
        raise UsageError(f"{len(labs)} labs are running ({names}) — say which with --mesh MESH")
    return labs[0]


@contextlib.contextmanager
def lab_lock(tag: str | None) -> Iterator[None]:
    """One `lab up` at a time for lab `tag` (the CLI's and the provisioner's, which follows
    `crossmesh apply`): an exclusive lock in the lab's folder, released by the kernel if the holder
    dies. A new lab (`tag` None) has nothing to share yet."""
    folder = LAB_ROOT / f"cm-{tag}"
    if tag is None or not folder.is_dir():
        yield
        return
    fd = os.open(folder / "up.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
