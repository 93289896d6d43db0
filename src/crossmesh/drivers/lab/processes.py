"""The lab's processes, found by command line (a lab tag, a device name), and stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def stop_group(pid: int) -> None:
    """SIGTERM to the process group of `pid` (a process the lab started in a new session), SIGKILL after 2 s."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        if not alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def find_processes(marker: str) -> list[int]:
    """Pids of processes whose command line mentions `marker` (a lab tag or the cm- prefix)."""
    pids = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0]:
            continue
        prog = os.path.basename(argv[0].decode(errors="replace"))
        args = [a.decode(errors="replace") for a in argv[1:]]
        is_wg = prog == "wireguard-go" or (prog == "ip" and "wireguard-go" in args)
        ours = (
            "crossmesh.drivers.lab.workload",
            "crossmesh.drivers.lab.servicesd",
            "crossmesh.drivers.lab.flowsd",
            "crossmesh.drivers.lab.meshca",
            "crossmesh.drivers.lab.meshproxy",
            "crossmesh.agent.daemon",
            "crossmesh.operator",
            "crossmesh.drivers.lab.provisioner",
        )
        is_workload = any(m in args for m in ours)
        # tcpdump captures, and the lab's etcd members (their data directory names the tag).
        is_other = prog in ("tcpdump", "etcd")
        if (is_wg or is_workload or is_other) and any(marker in a for a in args):
            pids.append(int(entry.name))
    return pids


def wireguard_pids(ifname: str) -> list[int]:
    """The wireguard-go of exactly this device (cm-x-g5 is not cm-x-g50)."""
    return [p for p in find_processes(ifname) if cmdline_has(p, (ifname,))]


def cmdline_has(pid: int, words: tuple[str, ...]) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(w in args for w in words)
