"""The pods' echo workloads (one process per node): started, killed and revived, waited for;
and commands run in a pod's namespace."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from crossmesh.drivers.lab import netns
from crossmesh.drivers.lab.processes import alive, stop_group
from crossmesh.drivers.lab.state import LabError, LabState, PodEntry
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.errors import UsageError
from crossmesh.plan import ingress, outside


def pod_key(pod: PodEntry) -> str:
    return f"{pod.cluster}_{pod.pod_namespace}_{pod.name}"


def start_workloads(state: LabState, topo: LabTopology) -> list[str]:
    changes = []
    by_node: dict[str, list[dict[str, Any]]] = {}
    for ep in topo.pods:
        # An ingress gateway's pod runs the gateway's proxy (drivers/lab/ingressd.py), not the echo app.
        app = ingress.gateway_of(ep.pod) is None
        ports = [[p, proto] for p, proto, _ in ep.pod.ports if proto in ("TCP", "UDP") and app]
        by_node.setdefault(ep.pod.node, []).append(
            {
                "netns": ep.namespace,
                "ip": str(ep.pod.address),
                "ports": ports,
                "pod": ep.pod.name,
                "namespace": ep.pod.namespace,
                "cluster": ep.pod.cluster,
                "node": ep.pod.node,
            }
        )
    spec_dir = state.dir / "workloads"
    spec_dir.mkdir(parents=True, exist_ok=True)
    for node, pods in sorted(by_node.items()):
        spec_path = spec_dir / f"{node}.json"
        text = json.dumps(pods, indent=1, sort_keys=True)
        pid = state.workloads.get(node, 0)
        if alive(pid) and spec_path.exists() and spec_path.read_text() == text:
            continue
        if alive(pid):
            stop_group(pid)
        spec_path.write_text(text)
        log = state.dir / "logs" / f"workload-{node}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "crossmesh.drivers.lab.workload", str(spec_path), str(state.dir / "killed")],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        state.workloads[node] = proc.pid
        state.save()
        changes.append(f"workload for node {node} started ({len(pods)} pods)")
    return changes


def _pod_answers(ep: Any) -> str | None:
    """None when every TCP port of the pod accepts a connection from its node."""

    def probe() -> str | None:
        for port, proto, _ in ep.pod.ports:
            if proto != "TCP":
                continue
            try:
                with socket.create_connection((str(ep.pod.address), port), timeout=1.0):
                    pass
            except OSError as err:
                return f"{ep.pod.ref} port {port}/TCP: {err.strerror or err}"
        return None

    result: str | None = netns.run_in(ep.node_namespace, probe)
    return result


def wait_pods(endpoints: list[Any], timeout: float = 20.0) -> None:
    """Every pod (but those killed on purpose) accepts connections on its TCP ports."""
    deadline = time.monotonic() + timeout
    pending = list(endpoints)
    problems: list[str] = []
    while pending:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(_pod_answers, pending))
        problems = [r for r in results if r]
        pending = [ep for ep, r in zip(pending, results, strict=True) if r]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise LabError("pods do not answer: " + "; ".join(problems[:5]))
        time.sleep(0.2)


def set_killed(state: LabState, ref: str, killed: bool) -> bool:
    """Stop (or start again) the workload of one pod; its namespace stays. True when it changed."""
    pod = state.pods.get(ref)
    if pod is None:
        raise UsageError(f"no pod {ref} in lab {state.mesh_name} — pods are CLUSTER/NAMESPACE/POD")
    marker = state.dir / "killed" / pod_key(pod)
    marker.parent.mkdir(parents=True, exist_ok=True)
    if marker.exists() == killed:
        return False
    if killed:
        marker.touch()
    else:
        marker.unlink()
    pid = state.workloads.get(pod.node, 0)
    if alive(pid):
        os.kill(pid, signal.SIGUSR1)
    return True


def exec_argv(state: LabState, ref: str, argv: list[str]) -> list[str]:
    """`ip netns exec` of pod `ref`, or of the client outside when `ref` is `local` (a pod's
    reference always has two slashes, so the names never meet)."""
    if ref == outside.LOCAL:
        if not state.local or not netns.exists(state.local):
            raise UsageError(
                f"lab {state.mesh_name} has no `local` client yet: run `crossmesh lab up {state.mesh}` to add it"
            )
        return netns.exec_argv(state.local, argv)
    pod = state.pods.get(ref)
    if pod is None:
        known = ", ".join(sorted(state.pods)[:8])
        raise UsageError(
            f"no pod {ref} in lab {state.mesh_name} — pods are CLUSTER/NAMESPACE/POD, e.g. {known}; "
            f"`{outside.LOCAL}` is the client outside, on the internet"
        )
    return netns.exec_argv(pod.namespace, argv)
