"""The lab's operator: the mesh (with its membership changes) applied to the lab's etcd as a
revision, two `crossmesh operator` replicas that elect a leader, and the wait for the leader to
publish that revision's intents — which the agents then run.

The lab builds its namespaces from its own allocations, the operator allocates in etcd: the two
must agree or the twin is not faithful. The lab's allocations seed an empty etcd, after which both
run the same allocator on the same history; every rollout is then checked against what the lab
built, and a difference stops `lab up` with both values named.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ruamel.yaml import YAML

from crossmesh.drivers import etcd
from crossmesh.drivers.lab.processes import alive, find_processes, stop_group
from crossmesh.drivers.lab.state import LabError, LabState
from crossmesh.kv.layout import ADMIN_USER, OPERATOR_USER, Layout
from crossmesh.workspace import Compiled

REPLICAS = 2
ROLLOUT_TIMEOUT = 60.0
T = TypeVar("T")


def replica_id(state: LabState, k: int) -> str:
    return f"cm-{state.tag}-op{k}"


def replica_pids(state: LabState) -> dict[str, int]:
    """Running replicas by id (found by command line: the id names the lab's tag)."""
    out = {}
    for k in range(REPLICAS):
        rid = replica_id(state, k)
        pids = [p for p in find_processes(rid) if alive(p)]
        if pids:
            out[rid] = pids[0]
    return out


def start_operators(state: LabState) -> list[str]:
    """Start the replicas that do not run; each with the operator's etcd identity."""
    running = replica_pids(state)
    me = etcd.identity(etcd.pki_dir(state.dir), OPERATOR_USER)
    changes = []
    for k in range(REPLICAS):
        rid = replica_id(state, k)
        if rid in running:
            continue
        log = state.dir / "logs" / f"operator-{k}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "crossmesh.operator", "--mesh", state.mesh_name, "--id", rid]
        argv += ["--etcd-endpoints", ",".join(etcd.endpoints(state.tag)), "--lease-ttl", str(max(2, state.lease_ttl))]
        argv += ["--cacert", str(me.ca), "--cert", str(me.cert), "--key", str(me.key)]
        with log.open("ab") as fh:
            subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        changes.append(f"operator replica {rid} started")
    return changes


def start_provisioner(state: LabState) -> list[str]:
    """The process that follows `crossmesh apply` for this lab (provisioner.py), if it does not run."""
    marker = str(state.dir)
    if any(alive(p) for p in find_processes(marker) if _is_provisioner(p)):
        return []
    log = state.dir / "logs" / "provisioner.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        subprocess.Popen(
            [sys.executable, "-m", "crossmesh.drivers.lab.provisioner", marker],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return ["provisioner started: the lab follows crossmesh apply"]


def _is_provisioner(pid: int) -> bool:
    from crossmesh.drivers.lab.processes import cmdline_has

    return cmdline_has(pid, ("crossmesh.drivers.lab.provisioner",))


def stop_operator(state: LabState, rid: str, *, crash: bool = False) -> int:
    """Stop replica `rid` (SIGKILL with `crash`: its lease must run out); its pid, 0 if none ran."""
    pid = replica_pids(state).get(rid, 0)
    if pid and crash:
        import os
        import signal

        os.kill(pid, signal.SIGKILL)
    elif pid:
        stop_group(pid)
    return pid


def gateway_values(state: LabState) -> dict[str, bytes]:
    """Topology gateways: each site's active-gateway value as the lab's etcd holds it
    (`gateways/<site>`, read as the admin; `agent.gateways.decode_active` reads one)."""
    prefix = Layout(state.mesh_name).gateways

    async def work(kv: Any) -> dict[str, bytes]:
        snap = await kv.range(prefix)
        return {e.key[len(prefix) :].decode(errors="replace"): e.value for e in snap.entries}

    return _admin(state, work)


def _admin(state: LabState, work: Callable[[Any], Awaitable[T]]) -> T:
    from crossmesh.kv.etcd import Tls, connect

    me = etcd.identity(etcd.pki_dir(state.dir), ADMIN_USER)

    async def run() -> T:
        kv = await connect(etcd.endpoints(state.tag), Tls(me.ca, me.cert, me.key))
        try:
            return await work(kv)
        finally:
            await kv.close()

    return asyncio.run(run())


def mesh_files(compiled: Compiled, overlay: dict[str, Any]) -> tuple[dict[str, str], str]:
    """The files `crossmesh apply` would publish for this lab: the mesh file — rewritten with the
    lab's membership changes when there are any — and its manifests."""
    from crossmesh.operator.desired import bundle

    loaded = compiled.loaded
    path = Path(loaded.path)
    files = bundle(path, loaded.doc, loaded.mesh)
    if overlay.get("add") or overlay.get("remove"):
        text = io.StringIO()
        yaml = YAML()
        yaml.default_flow_style = False
        yaml.dump(_plain(loaded.doc.data), text)
        files[path.name] = (
            "# crossmesh lab: the mesh file with the lab's add-node / remove-node changes\n" + text.getvalue()
        )
    return files, path.name


def _plain(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


def publish(state: LabState, compiled: Compiled) -> tuple[int, str, list[str]]:
    """Apply the lab's mesh to its etcd (seeding etcd's allocations from the lab's when it has
    none); the applied revision, its digest and what changed."""
    from crossmesh.kv.layout import Layout
    from crossmesh.operator import apply as ops
    from crossmesh.operator import ipam

    files, mesh_file = mesh_files(compiled, state.overlay)
    layout = Layout(compiled.plan.mesh)

    async def work(kv: Any) -> tuple[int, str, list[str]]:
        changes = []
        _, guard = await ipam.read(kv, layout)
        if guard == 0:
            from crossmesh.ipam.allocate import Allocations

            await ipam.commit(kv, layout, Allocations(), 0, compiled.allocations)
            changes.append("etcd allocations seeded from the lab's")
        desired, new = await ops.apply(kv, await ops.propose_files(kv, files, mesh_file), "crossmesh lab")
        if new:
            changes.append(f"mesh revision {desired.revision} applied")
        return desired.revision, desired.digest, changes

    return _admin(state, work)


def wait_rollout(state: LabState, compiled: Compiled, revision: int, timeout: float = ROLLOUT_TIMEOUT) -> None:
    """Until the operator has published `revision`; then hold its allocations to the lab's."""
    from crossmesh.kv.layout import Layout
    from crossmesh.operator import ipam
    from crossmesh.operator.publish import decode_rollout

    layout = Layout(compiled.plan.mesh)

    async def work(kv: Any) -> None:
        deadline = time.monotonic() + timeout
        while True:
            got = await kv.get(layout.rollout)
            rollout = decode_rollout(got.value) if got is not None else None
            if rollout is not None and rollout.error and rollout.revision < revision:
                raise LabError(f"the operator cannot roll out revision {revision}: {rollout.error}")
            if rollout is not None and rollout.revision >= revision and not rollout.error:
                break
            if time.monotonic() > deadline:
                raise LabError(
                    f"the operator did not publish revision {revision} within {timeout:.0f} s "
                    f"(logs: {state.dir / 'logs'}/operator-*.log)"
                )
            await asyncio.sleep(0.1)
        etcd_alloc, _ = await ipam.read(kv, layout)
        for name, mine in compiled.allocations.nodes.items():
            theirs = etcd_alloc.nodes.get(name)
            if theirs is None and rollout.revision > revision:
                continue  # a newer revision removed the node: that one is built next
            if theirs != mine:
                raise LabError(
                    f"the operator allocated {theirs} to node {name}, the lab built {mine}: the twin would not "
                    "be faithful — bring the lab down (lab down --mesh) and up again"
                )

    _admin(state, work)


def leader(state: LabState, mesh: str) -> str | None:
    from crossmesh.kv.layout import Layout
    from crossmesh.operator.publish import leader_id

    async def work(kv: Any) -> str | None:
        got = await kv.get(Layout(mesh).leader)
        return None if got is None else leader_id(got.value)

    return _admin(state, work)


def crash_leader(state: LabState) -> tuple[str, str, float]:
    """SIGKILL the leading replica (no goodbye: its lease must run out) and wait for another to
    lead; (old leader, new leader, seconds between the kill and the new leader's key)."""
    if state.control_plane != "etcd":
        raise LabError("crash-operator needs the control plane: bring the lab up with `crossmesh lab up --agents`")
    old = leader(state, state.mesh_name)
    if old is None or not stop_operator(state, old, crash=True):
        raise LabError(f"no operator replica of lab {state.mesh_name} leads now")
    killed = time.monotonic()
    deadline = killed + state.lease_ttl + 15
    while time.monotonic() < deadline:
        now = leader(state, state.mesh_name)
        if now is not None and now != old:
            return old, now, time.monotonic() - killed
        time.sleep(0.02)
    raise LabError(f"no other replica took over within {deadline - killed:.0f} s of killing {old}")


def control(state: LabState) -> dict[str, Any]:
    """The operator as `lab status` shows it: replicas, leader, applied and rolled-out revision."""
    from crossmesh.operator import apply as ops

    running = replica_pids(state)
    out: dict[str, Any] = {"replicas": {replica_id(state, k): replica_id(state, k) in running for k in range(REPLICAS)}}
    try:
        got = _admin(state, lambda kv: ops.status(kv, state.mesh_name))
    except Exception as err:  # noqa: BLE001 - etcd down: say so, the rest of the status still shows
        return out | {"error": str(err)}
    return out | {
        "leader": got.leader,
        "applied": got.desired["revision"] if got.desired else None,
        "rolledOut": got.rollout["revision"] if got.rollout else None,
        "rolloutError": got.rollout.get("error") if got.rollout else None,
        "converged": got.converged,
        "nodesConverged": sum(1 for n in got.nodes if n.converged),
        "nodes": len(got.nodes),
    }
