"""Starting and stopping the service mesh's daemons from `lab up`: the CA (meshca.py, one per lab)
and a node proxy per node (meshproxy.py); `lab rotate-certs` asks the proxies for new certificates.

They run only for a mesh with `spec.istio`; `up` of a mesh that lost it stops them (and its pods'
capture tables go with the namespaces' reconcile). They are restarted together when what they
read changed: the plan, the Istio policies, the state directory's CA files or their own code.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crossmesh.drivers.lab import meshca, meshcapture, meshproxy, meshtls, reconcile
from crossmesh.drivers.lab.processes import alive, stop_group
from crossmesh.drivers.lab.services import plan_services_view
from crossmesh.drivers.lab.state import LabError, LabState
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.identity import spiffe, svid
from crossmesh.istio import index, model, parse
from crossmesh.model.plan import Plan

START = 30.0  # seconds for the CA's sockets and each proxy's listeners (imports take seconds under load)


def _digest(state: LabState, plan: Plan, manifests: dict[str, list[Any]]) -> str:
    policies = sorted(json.dumps(m.raw, sort_keys=True) for ms in manifests.values() for m in ms)
    modules = (meshca, meshcapture, meshproxy, meshtls, index, model, parse, spiffe, svid)
    code = hashlib.sha256(b"".join(Path(str(m.__file__)).read_bytes() for m in modules)).hexdigest()
    pki = Path(state.state_dir) / "istio-pki"
    files = sorted((f.name, f.stat().st_mtime_ns) for f in pki.iterdir()) if pki.is_dir() else []
    return reconcile.nft_digest(
        json.dumps([plan_services_view(plan), repr(plan.istio), code, policies, files], sort_keys=True, default=str)
    )


def _spawn(state: LabState, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = state.dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    module = name.split("-", 1)[0]
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"crossmesh.drivers.lab.{module}", str(state.dir), *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc, log


def _wait(proc: subprocess.Popen[bytes], log: Path, ready: Any, what: str) -> None:
    deadline = time.monotonic() + START
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the {what} did not start; see {log}")
        time.sleep(0.05)


def _ready_line(log: Path, since: int) -> bool:
    try:
        with log.open("rb") as fh:
            fh.seek(since)
            return b"; ready" in fh.read()
    except OSError:
        return False


def start_mesh(state: LabState, topo: LabTopology, plan: Plan, manifests: dict[str, list[Any]]) -> list[str]:
    """The CA and every node's proxy running as the plan says (none without `spec.istio`)."""
    if plan.istio is None:
        return stop_mesh(state)
    digest = _digest(state, plan, manifests)
    running = alive(state.mesh_ca_pid) and all(alive(state.mesh_proxies.get(n, 0)) for n in topo.node_ns)
    if running and state.mesh_digest == digest and set(state.mesh_proxies) == set(topo.node_ns):
        return []
    changes = stop_mesh(state, "the plan, the Istio policies or the mesh CA changed")
    sockets = [meshtls.ca_socket(state.dir, n) for n in topo.node_ns]
    for sock in sockets:  # the stopped CA's: the new one's are waited for
        sock.unlink(missing_ok=True)
    proc, log = _spawn(state, "meshca", [])
    state.mesh_ca_pid = proc.pid
    state.save()
    _wait(proc, log, lambda: all(s.exists() for s in sockets), "mesh CA")
    changes.append("mesh CA started")
    started = []
    for node in sorted(topo.node_ns):
        name = f"meshproxy-{node}"
        log = state.dir / "logs" / f"{name}.log"
        since = log.stat().st_size if log.exists() else 0
        proc, log = _spawn(state, name, [node])
        state.mesh_proxies[node] = proc.pid
        started.append((proc, log, since, node))
    state.mesh_digest = digest
    state.save()
    for proc, log, since, node in started:
        _wait(proc, log, lambda log=log, since=since: _ready_line(log, since), f"mesh proxy of node {node}")
        changes.append(f"mesh proxy of node {node} started")
    return changes


def stop_mesh(state: LabState, why: str = "the mesh has no spec.istio") -> list[str]:
    changes = []
    for node, pid in sorted(state.mesh_proxies.items()):
        if alive(pid):
            stop_group(pid)
            changes.append(f"mesh proxy of node {node} stopped ({why})")
    if alive(state.mesh_ca_pid):
        stop_group(state.mesh_ca_pid)
        changes.append(f"mesh CA stopped ({why})")
    if state.mesh_ca_pid or state.mesh_proxies or state.mesh_digest:
        state.mesh_ca_pid, state.mesh_proxies, state.mesh_digest = 0, {}, ""
        state.save()
    return changes


def rotate_certs(state: LabState) -> list[str]:
    """SIGUSR1 to every node proxy: each renews its workloads' certificates at once (new keys);
    open connections keep theirs. Returns, once every proxy is done, what each says it renewed and
    each renewal that failed (the proxy keeps serving the current, still-valid certificate)."""
    if not state.mesh_proxies:
        raise LabError("this lab runs no service mesh: its mesh file has no spec.istio")
    logs = {}
    for node, pid in sorted(state.mesh_proxies.items()):
        if not alive(pid):
            raise LabError(f"the mesh proxy of node {node} is not running; `crossmesh lab up` restarts it")
        log = state.dir / "logs" / f"meshproxy-{node}.log"
        logs[node] = (log, log.stat().st_size if log.exists() else 0)
        os.kill(pid, signal.SIGUSR1)
    done = []
    deadline = time.monotonic() + START
    for node, (log, since) in logs.items():
        while (line := _line_after(log, since, b"rotation done: ")) is None:
            if time.monotonic() > deadline:
                raise LabError(f"the mesh proxy of node {node} did not renew its certificates; see {log}")
            time.sleep(0.05)
        done.append(f"{node}: {line}")
        done += [f"{node}: {failed}" for failed in _lines_after(log, since, b"certificate renewal failed")]
    return done


def _lines_after(log: Path, since: int, marker: bytes) -> list[str]:
    """Every line of `log` after byte `since` that contains `marker` (from the marker on)."""
    try:
        with log.open("rb") as fh:
            fh.seek(since)
            text = fh.read()
    except OSError:
        return []
    return [line[line.index(marker) :].decode(errors="replace") for line in text.splitlines() if marker in line]


def _line_after(log: Path, since: int, marker: bytes) -> str | None:
    """The first line of `log` after byte `since` that contains `marker` (from the marker on)."""
    found = _lines_after(log, since, marker)
    return found[0] if found else None
