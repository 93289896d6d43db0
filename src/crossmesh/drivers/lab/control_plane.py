"""The lab's control plane: a 3-member etcd on loopback and one agent per node (their
configurations, status files and the mesh intent they are held to); crashing a node and
rotating keys through the agents.

etcd runs as on real nodes: TLS with client certificates from the mesh's etcd CA (the state
directory's, as `crossmesh pki etcd` issues them), users and roles made by `ensure_roles` with
root's certificate, auth enabled; each agent holds its own node's certificate only, so it can
write its own record and no other's."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crossmesh.agent import config as agent_configs
from crossmesh.drivers import etcd
from crossmesh.drivers.files import write_tree
from crossmesh.drivers.lab import wireguard
from crossmesh.drivers.lab.processes import alive, stop_group, wireguard_pids
from crossmesh.drivers.lab.state import LabError, LabState
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.errors import UsageError
from crossmesh.kv import identities
from crossmesh.observe.metrics import AGENT_PORT
from crossmesh.render.etcd import tls_files
from crossmesh.state.store import StateStore
from crossmesh.workspace import Compiled


def start_etcd(state: LabState, compiled: Compiled) -> list[str]:
    pki = issue_etcd_identities(state, compiled)
    changes = []
    for m in etcd.members(state.tag):
        if etcd.healthy(m, pki) or alive(state.etcd_pids.get(m.name, 0)):
            continue
        state.etcd_pids[m.name] = etcd.start_member(state.dir, state.tag, m, pki)
        changes.append(f"etcd member {m.name} started on 127.0.0.1:{m.client}")
    state.save()
    etcd.wait_healthy(state.tag, pki)
    return changes + ensure_etcd_roles(state, compiled)


def issue_etcd_identities(state: LabState, compiled: Compiled) -> Path:
    """The certificates of the mesh's etcd identities (`kv.identities`), issued once from the state
    directory's etcd CA and kept there, written where the members and agents read them."""
    pki = etcd.pki_dir(state.dir)
    write_tree(pki, tls_files(compiled.etcd_tls(datetime.now(UTC))))
    return pki


def ensure_etcd_roles(state: LabState, compiled: Compiled) -> list[str]:
    """etcd's users and roles for the mesh's nodes as they are now, as root; auth on."""
    from crossmesh.kv.etcd import Tls, connect  # gRPC loads only with the control plane
    from crossmesh.kv.layout import Layout
    from crossmesh.kv.roles import ensure_roles

    root = etcd.identity(etcd.pki_dir(state.dir), identities.ROOT_USER)

    async def run() -> list[str]:
        kv = await connect(etcd.endpoints(state.tag), Tls(root.ca, root.cert, root.key))
        try:
            plan = compiled.plan
            gateways = identities.gateway_sites(plan)
            return await ensure_roles(kv, Layout(plan.mesh), identities.agent_nodes(plan), gateways)
        finally:
            await kv.close()

    return asyncio.run(run())


def agent_dir(state: LabState) -> Path:
    return state.dir / "agents"


def agent_status(state: LabState, node: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((agent_dir(state) / f"{node}.status.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def agent_config(state: LabState, topo: LabTopology, compiled: Compiled, node_name: str) -> dict[str, Any]:
    """The node's agent configuration as the JSON document its process reads: etcd-fed, as on a real
    node — it follows the operator's intents, holds only its own key and its own etcd certificate."""
    namespace, ifname = agent_homes(topo, compiled)[node_name]
    cfg = agent_configs.etcd_fed(
        node_name,
        compiled.plan.mesh,
        namespace=namespace,
        ifname=ifname,
        etcd=etcd.endpoints(state.tag),
        ttl=state.lease_ttl,
        state=agent_dir(state),
        private_key_path=compiled.store.private_key_path(node_name),
        tls=etcd.identity(etcd.pki_dir(state.dir), node_name).as_dict(),
        # /metrics on the node's site address, inside its namespace (the agent opens the socket there)
        metrics=f"{compiled.plan.node(node_name).address}:{AGENT_PORT}",
    )
    logs = replace(cfg, status=agent_dir(state) / f"{node_name}.status.json")
    return replace(logs, wireguard_log=state.dir / "logs" / f"{ifname or 'no-device-' + node_name}.log").to_json()


def agent_homes(topo: LabTopology, compiled: Compiled) -> dict[str, tuple[str, str]]:
    """Each node that runs an agent (kv.identities: those with a tunnel; under topology gateways every
    node) → its namespace and its WireGuard device, "" for a node without one (routes only)."""
    devices = {d.node: (d.namespace, d.ifname) for d in topo.wireguard}
    return {n: devices.get(n, (topo.node_ns[n], "")) for n in identities.agent_nodes(compiled.plan)}


def agent_running(state: LabState, node: str) -> bool:
    """Whether an agent runs for `node`: its pid is alive or it holds the node's agent lock
    (taken at start, before it has written any status)."""
    if alive(int(agent_status(state, node).get("pid", 0))):
        return True
    try:
        fd = os.open(agent_dir(state) / f"{node}.status.lock", os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def start_agent(state: LabState, node: str, *, await_device: float = 0.0) -> int:
    cfg = agent_dir(state) / f"{node}.json"
    log = state.dir / "logs" / f"agent-{node}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crossmesh.agent.daemon", str(cfg), *([str(await_device)] if await_device else [])],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc.pid


def start_joining_agents(
    state: LabState, topo: LabTopology, compiled: Compiled, joining: frozenset[str]
) -> dict[str, int]:
    """Start the agents of nodes that join now, before their namespaces are built: an agent takes
    about half a second to start, as long as the build of a node, and waits for its device."""
    directory = agent_dir(state)
    directory.mkdir(parents=True, exist_ok=True)
    if joining:  # their certificates, and their roles if etcd runs (else start_etcd makes them)
        pki = issue_etcd_identities(state, compiled)
        if any(etcd.healthy(m, pki) for m in etcd.members(state.tag)):
            ensure_etcd_roles(state, compiled)
    started = {}
    for node, (_, ifname) in agent_homes(topo, compiled).items():
        path = directory / f"{node}.json"
        if node not in joining or path.exists() or agent_running(state, node):
            continue
        path.write_text(json.dumps(agent_config(state, topo, compiled, node), indent=1, sort_keys=True))
        started[node] = start_agent(state, node, await_device=10.0 if ifname else 0.0)
    return started


def start_agents(state: LabState, topo: LabTopology, compiled: Compiled, early: dict[str, int]) -> list[str]:
    changes = [f"agent for node {node} started" for node in early]
    directory = agent_dir(state)
    directory.mkdir(parents=True, exist_ok=True)
    crashed = directory / "crashed"
    for node in agent_homes(topo, compiled):
        (crashed / node).unlink(missing_ok=True)  # `up` brings crashed nodes back
        if alive(early.get(node, 0)):
            continue
        cfg = agent_config(state, topo, compiled, node)
        path = directory / f"{node}.json"
        text = json.dumps(cfg, indent=1, sort_keys=True)
        pid = int(agent_status(state, node).get("pid", 0))
        if alive(pid) and path.exists() and _same_agent_config(path.read_text(), cfg):
            continue
        if alive(pid):
            stop_group(pid)
        path.write_text(text)
        start_agent(state, node)
        changes.append(f"agent for node {node} started")
    return changes


def _same_agent_config(text: str, cfg: dict[str, Any]) -> bool:
    """Whether a running agent runs with `cfg` (its key is read from the node's key file and changes
    with `rotate-keys` without a restart, which would withdraw the node from its peers for a moment)."""
    try:
        return bool(json.loads(text) == cfg)
    except ValueError:
        return False


def crash_node(state: LabState, node: str) -> list[str]:
    """Kill a node's agent and wireguard-go without any cleanup, as a crash would."""
    if node not in state.nodes:
        raise UsageError(f"no node {node} in lab {state.mesh_name}")
    if state.control_plane != "etcd":
        raise UsageError("crash-node needs the control plane: bring the lab up with `crossmesh lab up --agents`")
    crashed = agent_dir(state) / "crashed"
    crashed.mkdir(parents=True, exist_ok=True)
    (crashed / node).touch()
    done = []
    pid = int(agent_status(state, node).get("pid", 0))
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        done.append(f"agent {pid} killed")
    for ifname, entry in state.wireguard.items():
        if entry.node == node:
            for wpid in wireguard_pids(ifname):
                os.kill(wpid, signal.SIGKILL)
                done.append(f"wireguard-go {wpid} killed")
    return done


def recover_node(state: LabState, node: str) -> list[str]:
    """Bring a node stopped with `crash_node` back without a full `lab up`: the crash mark goes (the
    service daemon's supervisor would restart the agent again) and its agent starts, which starts
    wireguard-go and configures the device as it does after any restart of either. What it changed."""
    if node not in state.nodes:
        raise UsageError(f"no node {node} in lab {state.mesh_name}")
    mark = agent_dir(state) / "crashed" / node
    done = []
    if mark.exists():
        mark.unlink()
        done.append(f"node {node} no longer marked crashed")
    if (agent_dir(state) / f"{node}.json").exists() and not agent_running(state, node):
        done.append(f"agent {start_agent(state, node)} of node {node} started")
    return done


def rotate_keys(state: LabState, nodes: list[str]) -> dict[str, str]:
    """Ask the agents of `nodes` for a new key, one node after the other; returns node → the new
    public key once every peer has it and has completed a handshake with it. One at a time, so
    the two ends of a tunnel never change keys at the same moment (their agents can handle it,
    at the cost of a deferred handshake)."""
    if state.control_plane != "etcd":
        raise UsageError("rotate-keys needs the control plane: bring the lab up with `crossmesh lab up --agents`")
    store = StateStore(Path(state.state_dir))
    for n in nodes:
        if not alive(int(agent_status(state, n).get("pid", 0))):
            raise LabError(f"the agent of node {n} is not running")
    deadline = time.monotonic() + 30 * len(nodes)
    keys: dict[str, str] = {}
    for n in nodes:
        old = store.public_keys([n])[n]
        # The devices that have the node as peer now must have its new key, with a handshake.
        holders = [dev for dev, peers in _device_peers(state).items() if old in peers]
        before = int(agent_status(state, n).get("keyVersion", 0))
        os.kill(int(agent_status(state, n).get("pid", 0)), signal.SIGUSR1)
        while int(agent_status(state, n).get("keyVersion", 0)) <= before:
            if time.monotonic() > deadline:
                raise LabError(f"the agent of node {n} did not rotate its key")
            time.sleep(0.01)
        keys[n] = store.public_keys([n])[n]
        while True:
            peers = _device_peers(state)
            waiting = [
                dev
                for dev in holders
                if old in peers.get(dev, {}) or peers.get(dev, {}).get(keys[n], (0, 0, 0, None))[0] == 0
            ]
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise LabError(f"no handshake with the new key of {n} on {', '.join(waiting[:10])}")
            time.sleep(0.01)
    return keys


def _device_peers(state: LabState) -> dict[str, dict[str, wireguard.PeerStats]]:
    """Each running WireGuard device of the lab → its peers' (latest handshake, rx, tx, endpoint)."""
    out = {}
    for ifname in state.wireguard:
        text = wireguard.dump(ifname)
        if text:
            out[ifname] = wireguard.parse_dump(text)[1]
    return out
