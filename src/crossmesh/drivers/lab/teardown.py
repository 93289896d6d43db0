"""Taking a lab down: `down` removes every trace of a lab (or of every lab) by its
`cm-<tag>` prefix, `leftovers` lists what is still there, and `collect_garbage` removes
what `up` made for nodes no longer in the plan."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

from crossmesh.drivers.lab import netns, wireguard
from crossmesh.drivers.lab.control_plane import agent_dir, agent_status
from crossmesh.drivers.lab.processes import alive, cmdline_has, find_processes, stop_group, wireguard_pids
from crossmesh.drivers.lab.state import LAB_ROOT, VPN_ROOT, LabState, Progress, quiet
from crossmesh.drivers.lab.topology import LabTopology


def collect_garbage(state: LabState, topo: LabTopology) -> list[str]:
    """What the lab made for nodes and pods that are no longer in the plan (a removed node):
    its agent (stopped cleanly, so its lease is revoked and peers drop it at once), its
    wireguard-go, its workload process, then its namespaces."""
    changes = []
    nodes = set(topo.node_ns)
    directory = agent_dir(state)
    for cfg in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        if cfg.name.endswith(".status.json") or cfg.stem in nodes:
            continue
        # The config goes first, so that the supervisor does not start the agent again.
        cfg.unlink(missing_ok=True)
        pid = int(agent_status(state, cfg.stem).get("pid", 0))
        for p in {pid, *find_processes(str(cfg))}:
            if alive(p):
                stop_group(p)
        (directory / f"{cfg.stem}.status.json").unlink(missing_ok=True)
        changes.append(f"agent of removed node {cfg.stem} stopped")
    wanted_wg = {d.ifname for d in topo.wireguard}
    for ifname in sorted(set(state.wireguard) - wanted_wg):
        # Killed, not stopped: wireguard-go takes 1.5 s to close its device on SIGTERM, and the
        # node's peers dropped it when its agent revoked its lease.
        for pid in wireguard_pids(ifname):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        (wireguard.SOCKET_DIR / f"{ifname}.sock").unlink(missing_ok=True)
        del state.wireguard[ifname]
        changes.append(f"wireguard-go {ifname} stopped")
    for node in sorted(set(state.workloads) - nodes):
        stop_group(state.workloads.pop(node))
        changes.append(f"workload of removed node {node} stopped")
    wanted = {n.name for n in topo.namespaces}
    for name in netns.listing(f"{topo.prefix}-"):
        if name not in wanted:
            netns.remove(name)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
            changes.append(f"namespace {name} removed")
    state.save()
    return changes


def down(tag: str | None, *, progress: Progress = quiet) -> list[str]:
    """Remove every trace of lab `tag` (or of every lab with tag None). Idempotent."""
    marker = f"cm-{tag}" if tag else "cm-"
    removed: list[str] = []
    # The service daemon restarts dead agents and agents restart a dead wireguard-go: they go
    # first, so that nothing is started again while the rest is stopped.
    supervisors = ("crossmesh.drivers.lab.servicesd", "crossmesh.agent.daemon")
    for first in (True, False):
        pids = [p for p in find_processes(marker) if not first or cmdline_has(p, supervisors)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
                removed.append(f"process {pid}")
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.05)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    names = [n for n in netns.listing() if n.startswith(marker + "-") or (tag is None and n.startswith("cm-"))]
    # What else runs inside the lab's namespaces (the VPN gateways' charon and BIRD, whose command lines
    # do not name the lab) goes with them: a namespace is not freed while a process holds it.
    inside = [p for name in names for p in netns.pids(name)]
    for pid in inside:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            removed.append(f"process {pid}")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(alive(p) for p in inside):
        time.sleep(0.05)
    for pid in inside:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for name in names:
        netns.remove(name)
        removed.append(f"namespace {name}")
    if wireguard.SOCKET_DIR.is_dir():
        for sock in wireguard.SOCKET_DIR.glob(f"{marker}*.sock"):
            sock.unlink(missing_ok=True)
            removed.append(f"socket {sock}")
    for root in (LAB_ROOT, VPN_ROOT):
        if root.is_dir():
            for d in root.glob(f"{marker}*"):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(f"state {d}")
            if not any(root.iterdir()):
                root.rmdir()
    etc = Path("/etc/netns")
    if etc.is_dir():
        for d in etc.glob(f"{marker}*"):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(f"config {d}")
    progress(f"removed {len(removed)} things")
    return removed


def leftovers(tag: str | None = None) -> list[str]:
    """What of lab `tag` (or any lab) still exists on this host."""
    marker = f"cm-{tag}" if tag else "cm-"
    found = [f"namespace {n}" for n in netns.listing(marker)]
    found += [f"process {p}" for p in find_processes(marker)]
    if wireguard.SOCKET_DIR.is_dir():
        found += [f"socket {s}" for s in wireguard.SOCKET_DIR.glob(f"{marker}*.sock")]
    for root in (LAB_ROOT, VPN_ROOT):
        if root.is_dir():
            found += [f"state {d}" for d in root.glob(f"{marker}*")]
    return found
