"""Lab lifecycle: up (reconcile to the plan), status, exec, down — and finding leftovers.

State of a running lab lives in /run/crossmesh/cm-<tag>/ (lab.json, the nodes' wg-quick
files 0600, logs, workload specs). Everything else the lab makes is found by its
`cm-<tag>` prefix: namespaces in /run/netns, wireguard-go sockets, processes whose
command line names the tag. That is what lets `down --all` clean up after a crash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crossmesh.agent import config as agent_configs
from crossmesh.agent import records
from crossmesh.drivers import etcd
from crossmesh.drivers.lab import netns, reconcile, topology, wireguard
from crossmesh.drivers.lab.topology import LabTopology, Namespace
from crossmesh.errors import CrossmeshError, EnvironmentProblem, UsageError
from crossmesh.model.plan import Plan
from crossmesh.policy.endpoints import mesh_index
from crossmesh.policy.evaluator import PolicyIndex
from crossmesh.render.tree import render as render_tree
from crossmesh.state.disk import write_private
from crossmesh.workspace import Compiled, compile_mesh

LAB_ROOT = Path("/run/crossmesh")
REQUIRED = {
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
    "wg-quick": "wireguard-tools",
    "nft": "nftables",
    "ip": "iproute2",
}
HANDSHAKE_TIMEOUT = 30.0
AGENT_HANDSHAKE_GRACE = 3.0  # seconds the agents have to start their handshakes before `up` pokes

Progress = Callable[[str], None]


class LabError(CrossmeshError):
    """Building or operating the lab failed; the message names the node or tunnel."""


def _quiet(_: str) -> None:
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


def preflight() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("the lab needs root (network namespaces, nftables, TUN): run it with sudo")
    missing = sorted({pkg for cmd, pkg in REQUIRED.items() if shutil.which(cmd) is None})
    if missing:
        raise EnvironmentProblem(
            f"missing Debian package{'s' if len(missing) > 1 else ''}: {', '.join(missing)} — install with "
            f"`apt-get install -y --no-install-recommends {' '.join(missing)}`"
        )
    if not Path("/dev/net/tun").exists():
        raise EnvironmentProblem("/dev/net/tun is missing: wireguard-go needs the TUN device")


# --- up ------------------------------------------------------------------------------------


@dataclass(slots=True)
class UpResult:
    state: LabState
    changes: list[str]
    seconds: dict[str, float]


def up(
    mesh: Path,
    state_dir: Path | None = None,
    *,
    tag: str | None = None,
    keep_on_error: bool = False,
    agents: bool = False,
    lease_ttl: int | None = None,
    overlay: dict[str, Any] | None = None,
    changed_only: bool = False,
    progress: Progress = _quiet,
) -> UpResult:
    """Build (or bring back to the plan) the lab of `mesh`; returns when every tunnel has
    completed a handshake and every pod answers. With `agents`, a 3-member etcd cluster and
    one agent per node run the tunnels (the control plane); a lab keeps the mode it has.
    `changed_only` (membership changes) reconciles only the namespaces whose desired state
    differs from the one they were last brought to; a plain `up` checks every namespace."""
    preflight()
    mesh_abs = str(mesh.resolve())
    running = next((lab for lab in running_labs() if lab.mesh == mesh_abs), None)
    if overlay is None:
        overlay = running.overlay if running is not None else {}
    compiled = compile_mesh(  # SpecError before anything is built
        mesh, state_dir, overlay=overlay, placements=running.placements if running is not None else None
    )
    plan = compiled.plan
    tag = tag or (running.tag if running is not None else topology.lab_tag(plan.mesh))
    existing = LabState.load(tag)
    if existing is not None and existing.mesh != mesh_abs:
        raise EnvironmentProblem(
            f"lab cm-{tag} is already running for mesh {existing.mesh_name!r} from {existing.mesh}; its names would "
            f"clash — bring it down first (`crossmesh lab down --mesh {existing.mesh}`) or rename this mesh"
        )
    if existing is None and any(n.startswith(f"cm-{tag}-") for n in netns.listing()):
        raise EnvironmentProblem(
            f"namespaces named cm-{tag}-* exist but no lab state: leftovers of a crashed lab — "
            "remove them with `crossmesh lab down --all`"
        )
    agents = agents or (existing is not None and existing.control_plane == "etcd")
    why = records.unsupported(plan) if agents else None
    if why is not None:
        raise UsageError(
            f"{why} — bring it up without --agents (the lab applies the planned gateways), or set topology: full-mesh"
        )
    try:
        topo = topology.build(
            plan,
            tag,
            unhealthy_backends(tag),
            policy_index(compiled),
            agent_routes=agents,
            indices=existing.indices if existing is not None else None,
        )
    except ValueError as err:
        raise LabError(str(err)) from err
    state = existing or LabState(tag=tag, mesh=mesh_abs, mesh_name=plan.mesh, state_dir=str(compiled.store.root))
    state.control_plane = "etcd" if agents else ""
    state.overlay = overlay
    state.indices = topo.indices
    state.placements = {p.ref: p.node for p in plan.pods()}
    if lease_ttl is not None:
        state.lease_ttl = lease_ttl
    joining = frozenset(topo.node_ns) - frozenset(state.nodes) if existing is not None else frozenset()
    _record(state, topo)
    state.save()
    try:
        result = _build(state, topo, compiled, progress, changed_only=changed_only, joining=joining)
    except BaseException as err:
        if not keep_on_error and existing is None:
            progress("failed: removing what was built (use --keep-on-error to keep it)")
            down(state.tag)
        if isinstance(err, LabError | EnvironmentProblem | KeyboardInterrupt):
            raise
        raise LabError(f"lab up failed: {err}") from err
    state.status = "ready"
    if not changed_only:  # every namespace was brought to its spec: cut uplinks are up again
        state.cut_sites = []
    state.save()
    compiled.store.save_applied_plan(_plan_snapshot(plan))
    return result


def _plan_snapshot(plan: Plan) -> dict[str, Any]:
    from crossmesh.plan.serialize import plan_json

    return plan_json(plan)


def _record(state: LabState, topo: LabTopology) -> None:
    state.namespaces = [n.name for n in topo.namespaces]
    state.nodes = dict(topo.node_ns)
    state.sites = dict(topo.site_ns)
    state.inet = f"{topo.prefix}-inet"
    state.pods = {
        ep.pod.ref: {
            "namespace": ep.namespace,
            "node": ep.pod.node,
            "nodeNamespace": ep.node_namespace,
            "address": str(ep.pod.address),
            "ports": [[p, proto] for p, proto, _ in ep.pod.ports],
            "cluster": ep.pod.cluster,
            "podNamespace": ep.pod.namespace,
            "name": ep.pod.name,
        }
        for ep in topo.pods
    }
    for dev in topo.wireguard:
        state.wireguard.setdefault(dev.ifname, {"namespace": dev.namespace, "node": dev.node, "pid": 0})


def namespace_digest(spec: Namespace) -> str:
    """What a namespace is to be brought to, as a digest (specs are frozen dataclasses of
    strings, numbers and addresses: their repr is stable)."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:16]


def _build(
    state: LabState,
    topo: LabTopology,
    compiled: Compiled,
    progress: Progress,
    *,
    changed_only: bool = False,
    joining: frozenset[str] = frozenset(),
) -> UpResult:
    seconds: dict[str, float] = {}
    changes: list[str] = []
    t0 = time.monotonic()

    def lap(name: str) -> None:
        nonlocal t0
        now = time.monotonic()
        seconds[name] = seconds.get(name, 0.0) + now - t0
        t0 = now

    progress(f"namespaces: {len(topo.namespaces)}")
    changes += _collect_garbage(state, topo)
    changes += reconcile.ensure_namespaces([n.name for n in topo.namespaces])
    agents = state.control_plane == "etcd"
    early = _early_agents(state, topo, compiled, joining) if agents else {}
    lap("namespaces")
    digests = {ns.name: namespace_digest(ns) for ns in topo.namespaces}
    todo = [ns for ns in topo.namespaces if not changed_only or state.applied.get(ns.name) != digests[ns.name]]
    # A membership change first builds what the new nodes stand on (their namespaces, the site
    # routers, the internet) and starts their tunnels and agents; the other namespaces that
    # changed (a new neighbour on the site's VXLAN, a new address in a policy set) follow once
    # the tunnels are up, so as not to take CPU from the agents converging.
    first = [ns for ns in todo if not changed_only or ns.name not in state.applied or ns.role in ("inet", "router")]
    state.applied = {k: v for k, v in state.applied.items() if k in digests}
    for ns in todo:  # forgotten until brought to its spec: a failure below leaves it to do again
        state.applied.pop(ns.name, None)
    state.save()
    progress(f"links, addresses, routes, NAT: {len(todo)} namespaces" + (" changed" if changed_only else ""))
    wg_names = tuple(d.ifname for d in topo.wireguard)
    changes += _reconcile_namespaces(first, wg_names)
    if changed_only and state.cut_sites:  # routers and the internet were reconciled: cut sites stay cut
        from crossmesh.drivers.lab import faults

        for site in list(state.cut_sites):
            changes += faults.cut_site(state, site)
    lap("links")

    if agents:
        progress("control plane: 3-member etcd on loopback")
        changes += _etcd(state)
        lap("etcd")
    progress(f"WireGuard: {len(topo.wireguard)} wireguard-go devices")
    tls = compiled.clustermesh_tls(datetime.now(UTC))
    files = render_tree(compiled.plan, compiled.loaded.manifests, compiled.store.private_key, tls)
    conf_dir = state.dir / "wireguard"
    conf_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(conf_dir, 0o700)
    started: set[str] = set()  # node namespaces whose tunnel device is new
    changed_ns = {ns.name for ns in todo}
    for dev in topo.wireguard:
        if agents and changed_only and dev.namespace not in changed_ns:
            continue  # an unchanged node: its agent keeps its device
        node = compiled.plan.node(dev.node)
        assert node.tunnel is not None  # noqa: S101 - topology only lists tunnel nodes
        rendered = files[f"nodes/{dev.node}/{node.tunnel.interface}.conf"]
        conf = conf_dir / f"{dev.ifname}.conf"  # wg-quick wants an interface name
        _write_private(conf, rendered.content)
        entry = state.wireguard[dev.ifname]
        if wireguard.is_running(dev.ifname) and not _has_link(dev.namespace, dev.ifname):
            # A wireguard-go that answers but whose device is not in the node's namespace: left
            # by an earlier lab of the same tag whose namespace is gone. It goes.
            for stray in _wireguard_pids(dev.ifname):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stray, signal.SIGKILL)
            changes.append(f"stray wireguard-go for {dev.ifname} stopped")
        if not wireguard.is_running(dev.ifname):
            entry["pid"] = wireguard.start(dev.namespace, dev.ifname, state.dir / "logs" / f"{dev.ifname}.log")
            changes.append(f"{dev.namespace}: wireguard-go {dev.ifname} started")
            started.add(dev.namespace)
            state.save()
        if agents:
            continue  # the node's agent configures its device from etcd
        try:
            changes += wireguard.reconcile(dev.ifname, wireguard.parse_setconf(wireguard.strip(conf)))
        except RuntimeError as err:
            raise LabError(f"configuring the tunnel of node {dev.node}: {err}") from err
    lap("wireguard")
    # Second pass: new tunnel devices now exist, so their addresses and routes can be set.
    changes += _reconcile_namespaces([ns for ns in topo.namespaces if ns.name in started], wg_names)
    lap("links")

    if agents:
        progress(f"agents: {len(topo.wireguard)}")
        changes += _agents(state, topo, compiled, early)
        lap("agents")
    progress("waiting for every tunnel to complete a handshake")
    cut_off = frozenset(n.name for n in compiled.plan.nodes if changed_only and n.site in state.cut_sites)
    _wait_handshakes(topo, compiled.plan, progress, agents=agents, cut_off=cut_off)
    lap("handshakes")
    changes += _reconcile_namespaces([ns for ns in todo if ns not in first], wg_names)
    state.applied.update((ns.name, digests[ns.name]) for ns in todo)
    state.save()
    lap("links")
    progress("workloads: echo servers in every pod")
    changes += _workloads(state, topo)
    lap("workloads")
    # After the handshakes: a (re)starting service daemon takes a CPU-second, not to be taken
    # from tunnels and agents converging.
    progress("services: health checks, ClusterIP tables, DNS")
    changes += _services(state, topo, compiled.plan, compiled.loaded.manifests)
    lap("services")
    progress("waiting for every pod to answer")
    killed_dir = state.dir / "killed"
    killed = {p.name for p in killed_dir.iterdir()} if killed_dir.is_dir() else set()
    _wait_pods([ep for ep in topo.pods if pod_key(state.pods[ep.pod.ref]) not in killed])
    lap("pods")
    return UpResult(state=state, changes=changes, seconds=seconds)


def _has_link(namespace: str, ifname: str) -> bool:
    with netns.open_ns(namespace) as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def _reconcile_namespaces(specs: list[Namespace], wg_names: tuple[str, ...]) -> list[str]:
    changes = []
    for ns in specs:
        try:
            changes += reconcile.reconcile(ns, wireguard_ifnames=wg_names)
        except Exception as err:
            raise LabError(f"configuring {ns.role} {ns.owner} ({ns.name}) failed: {err}") from err
    return changes


def _collect_garbage(state: LabState, topo: LabTopology) -> list[str]:
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
        for p in {pid, *_processes(str(cfg))}:
            if _alive(p):
                _kill(p)
        (directory / f"{cfg.stem}.status.json").unlink(missing_ok=True)
        changes.append(f"agent of removed node {cfg.stem} stopped")
    wanted_wg = {d.ifname for d in topo.wireguard}
    for ifname in sorted(set(state.wireguard) - wanted_wg):
        # Killed, not stopped: wireguard-go takes 1.5 s to close its device on SIGTERM, and the
        # node's peers dropped it when its agent revoked its lease.
        for pid in _wireguard_pids(ifname):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        (wireguard.SOCKET_DIR / f"{ifname}.sock").unlink(missing_ok=True)
        del state.wireguard[ifname]
        changes.append(f"wireguard-go {ifname} stopped")
    for node in sorted(set(state.workloads) - nodes):
        _kill(state.workloads.pop(node))
        changes.append(f"workload of removed node {node} stopped")
    wanted = {n.name for n in topo.namespaces}
    for name in netns.listing(f"{topo.prefix}-"):
        if name not in wanted:
            netns.remove(name)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
            changes.append(f"namespace {name} removed")
    state.save()
    return changes


def _etcd(state: LabState) -> list[str]:
    changes = []
    for m in etcd.members(state.tag):
        if etcd.healthy(m) or _alive(state.etcd_pids.get(m.name, 0)):
            continue
        state.etcd_pids[m.name] = etcd.start_member(state.dir, state.tag, m)
        changes.append(f"etcd member {m.name} started on 127.0.0.1:{m.client}")
    state.save()
    etcd.wait_healthy(state.tag)
    return changes


def agent_dir(state: LabState) -> Path:
    return state.dir / "agents"


def agent_status(state: LabState, node: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((agent_dir(state) / f"{node}.status.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def agent_config(state: LabState, topo: LabTopology, compiled: Compiled, node_name: str) -> dict[str, Any]:
    dev = next(d for d in topo.wireguard if d.node == node_name)
    return agent_configs.build(
        compiled,
        node_name,
        namespace=dev.namespace,
        ifname=dev.ifname,
        etcd=etcd.endpoints(state.tag),
        ttl=state.lease_ttl,
        status=agent_dir(state) / f"{node_name}.status.json",
        wireguard_log=state.dir / "logs" / f"{dev.ifname}.log",
        intent_path=intent_path(state),
    )


def intent_path(state: LabState) -> Path:
    return state.dir / "intent.json"


def _write_intent(state: LabState, compiled: Compiled) -> None:
    """What the mesh (with its membership changes) plans for every node, for the agents to hold
    records to. Written before any agent starts or learns of a joining node; replaced at once."""
    path = intent_path(state)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(records.encode_intent(records.intent_of(compiled.plan)))
    tmp.replace(path)


def agent_running(state: LabState, node: str) -> bool:
    """Whether an agent runs for `node`: its pid is alive or it holds the node's agent lock
    (taken at start, before it has written any status)."""
    if _alive(int(agent_status(state, node).get("pid", 0))):
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


def _early_agents(state: LabState, topo: LabTopology, compiled: Compiled, joining: frozenset[str]) -> dict[str, int]:
    """Start the agents of nodes that join now, before their namespaces are built: an agent takes
    about half a second to start, as long as the build of a node, and waits for its device."""
    directory = agent_dir(state)
    directory.mkdir(parents=True, exist_ok=True)
    _write_intent(state, compiled)
    started = {}
    for dev in topo.wireguard:
        path = directory / f"{dev.node}.json"
        if dev.node not in joining or path.exists() or agent_running(state, dev.node):
            continue
        path.write_text(json.dumps(agent_config(state, topo, compiled, dev.node), indent=1, sort_keys=True))
        started[dev.node] = start_agent(state, dev.node, await_device=10.0)
    return started


def _agents(state: LabState, topo: LabTopology, compiled: Compiled, early: dict[str, int]) -> list[str]:
    changes = [f"agent for node {node} started" for node in early]
    directory = agent_dir(state)
    directory.mkdir(parents=True, exist_ok=True)
    crashed = directory / "crashed"
    for dev in topo.wireguard:
        (crashed / dev.node).unlink(missing_ok=True)  # `up` brings crashed nodes back
        if _alive(early.get(dev.node, 0)):
            continue
        cfg = agent_config(state, topo, compiled, dev.node)
        path = directory / f"{dev.node}.json"
        text = json.dumps(cfg, indent=1, sort_keys=True)
        pid = int(agent_status(state, dev.node).get("pid", 0))
        if _alive(pid) and path.exists() and _same_agent_config(path.read_text(), cfg):
            if path.read_text() != text:
                path.write_text(text)  # a rotated key: the running agent has it already
            continue
        if _alive(pid):
            _kill(pid)
        path.write_text(text)
        start_agent(state, dev.node)
        changes.append(f"agent for node {dev.node} started")
    return changes


def _same_agent_config(text: str, cfg: dict[str, Any]) -> bool:
    """Whether a running agent's configuration differs from `cfg` in nothing but the public key,
    which the agent reads from the node's key file (it changes with `rotate-keys`): no restart,
    which would withdraw the node from its peers for a moment."""
    try:
        old = json.loads(text)
        return {**old, "record": {**old["record"], "public_key": ""}} == {
            **cfg,
            "record": {**cfg["record"], "public_key": ""},
        }
    except (ValueError, KeyError, TypeError):
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
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        done.append(f"agent {pid} killed")
    for ifname, entry in state.wireguard.items():
        if entry["node"] == node:
            for wpid in _wireguard_pids(ifname):
                os.kill(wpid, signal.SIGKILL)
                done.append(f"wireguard-go {wpid} killed")
    return done


def add_node(mesh: Path | None, node: dict[str, Any], cluster: str, progress: Progress = _quiet) -> UpResult:
    """Add a node to the running lab; returns once every tunnel (its own too) has a handshake."""
    state = find_lab(mesh)
    if node["name"] in state.nodes:
        raise UsageError(f"node {node['name']} is already in lab {state.mesh_name}")
    if node.get("site") in state.cut_sites:
        raise UsageError(
            f"site {node['site']} is cut off from the internet (lab cut-site): a node there could not reach "
            f"its peers — heal it first with `crossmesh lab heal-site {node['site']}`"
        )
    overlay = {"add": list(state.overlay.get("add", [])), "remove": list(state.overlay.get("remove", []))}
    if node["name"] in overlay["remove"]:
        overlay["remove"].remove(node["name"])
    overlay["add"].append({"cluster": cluster, "node": node})
    return up(Path(state.mesh), Path(state.state_dir), overlay=overlay, changed_only=True, progress=progress)


def remove_node(mesh: Path | None, name: str, progress: Progress = _quiet) -> UpResult:
    state = find_lab(mesh)
    if name not in state.nodes:
        raise UsageError(f"no node {name} in lab {state.mesh_name}")
    added = [e for e in state.overlay.get("add", []) if e["node"]["name"] != name]
    removed = list(state.overlay.get("remove", []))
    if len(added) == len(state.overlay.get("add", [])):
        removed.append(name)
    return up(
        Path(state.mesh),
        Path(state.state_dir),
        overlay={"add": added, "remove": removed},
        changed_only=True,
        progress=progress,
    )


def rotate_keys(state: LabState, nodes: list[str]) -> dict[str, str]:
    """Ask the agents of `nodes` for a new key, one node after the other; returns node → the new
    public key once every peer has it and has completed a handshake with it. One at a time, so
    the two ends of a tunnel never change keys at the same moment (their agents can handle it,
    at the cost of a deferred handshake)."""
    if state.control_plane != "etcd":
        raise UsageError("rotate-keys needs the control plane: bring the lab up with `crossmesh lab up --agents`")
    from crossmesh.state.store import StateStore

    store = StateStore(Path(state.state_dir))
    for n in nodes:
        if not _alive(int(agent_status(state, n).get("pid", 0))):
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


def _device_peers(state: LabState) -> dict[str, dict[str, tuple[int, int, int, str | None]]]:
    """Each running WireGuard device of the lab → its peers' (latest handshake, rx, tx, endpoint)."""
    out = {}
    for ifname in state.wireguard:
        text = wireguard.dump(ifname)
        if text:
            out[ifname] = wireguard.parse_dump(text)[1]
    return out


def _write_private(path: Path, content: str) -> None:
    if path.exists() and path.read_text() == content:
        return
    write_private(path, content)


def _alive(pid: int) -> bool:
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


def _workloads(state: LabState, topo: LabTopology) -> list[str]:
    changes = []
    by_node: dict[str, list[dict[str, Any]]] = {}
    for ep in topo.pods:
        ports = [[p, proto] for p, proto, _ in ep.pod.ports if proto in ("TCP", "UDP")]
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
        if _alive(pid) and spec_path.exists() and spec_path.read_text() == text:
            continue
        if _alive(pid):
            _kill(pid)
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


def policy_index(compiled: Compiled) -> PolicyIndex:
    """The policies of every cluster, read as `policy trace` reads them, for the data plane."""
    return mesh_index(compiled.plan, compiled.loaded.manifests)


def unhealthy_backends(tag: str) -> frozenset[str]:
    """Backends the running service daemon found dead, so that `up` keeps its tables."""
    try:
        data = json.loads((LAB_ROOT / f"cm-{tag}" / "health.json").read_text())
    except (OSError, ValueError):
        return frozenset()
    return frozenset(k for k, b in data.get("backends", {}).items() if not b.get("healthy", True))


def plan_services_view(plan: Plan) -> list[Any]:
    """What the service daemon depends on: services, their backends and ClusterIPs, pods, nodes."""
    from crossmesh.plan.serialize import plan_json

    data = plan_json(plan)
    return [
        [c["name"], c["services"], [(p["ref"], p["address"], p["node"]) for p in c["pods"]], c["nodes"]]
        for c in data["clusters"]
    ]


def _services(state: LabState, topo: LabTopology, plan: Plan, manifests: dict[str, list[Any]]) -> list[str]:
    # The daemon rewrites node tables with its own reading of the policies: a new one restarts it.
    policies = sorted(json.dumps(m.raw, sort_keys=True) for ms in manifests.values() for m in ms)
    from crossmesh.drivers.lab.servicesd import resolv_conf

    changes = []
    for ns, text in resolv_conf(plan, topo).items():
        path = Path("/etc/netns") / ns / "resolv.conf"
        if path.exists() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changes.append(f"{ns}: resolv.conf")
    from crossmesh.drivers.lab import servicesd

    code = hashlib.sha256(Path(servicesd.__file__).read_bytes()).hexdigest()  # a new daemon restarts it too
    digest = reconcile.nft_digest(
        json.dumps(
            [plan_services_view(plan), dataclasses.asdict(plan.health), code, policies], sort_keys=True, default=str
        )
    )
    if _alive(state.services_pid) and state.services_digest == digest:
        return changes
    if _alive(state.services_pid):
        _kill(state.services_pid)
        changes.append("service daemon stopped (the services changed)")
    log = state.dir / "logs" / "servicesd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crossmesh.drivers.lab.servicesd", str(state.dir)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state.services_pid = proc.pid
    state.services_digest = digest
    state.save()
    deadline = time.monotonic() + 10
    while not (state.dir / "health.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the service daemon did not start; see {log}")
        time.sleep(0.02)
    changes.append("service daemon started")
    return changes


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        if not _alive(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def tunnel_status(
    topo: LabTopology, skip: frozenset[str] = frozenset()
) -> dict[str, dict[str, tuple[int, int, int, str | None]]]:
    """Each node's tunnel peers → (latest handshake, rx, tx, endpoint); nodes in `skip` are not read."""
    out = {}
    for dev in topo.wireguard:
        if dev.node in skip:
            continue
        out[dev.node] = wireguard.peer_stats(dev.ifname) or {}
    return out


def _wait_handshakes(
    topo: LabTopology, plan: Plan, progress: Progress, *, agents: bool = False, cut_off: frozenset[str] = frozenset()
) -> None:
    """Until every tunnel has completed a handshake, but those of nodes in `cut_off` (sites cut
    from the internet, which cannot). Pokes the silent ones every second; with agents only after
    AGENT_HANDSHAKE_GRACE: they start handshakes themselves, one end of each pair first, and a
    poke from the other end at the same moment would cross theirs."""
    # Thirty seconds, and more for a big mesh: on two CPUs, sixty agents starting together
    # take most of a minute to import, apply and handshake.
    timeout = max(HANDSHAKE_TIMEOUT, len(topo.wireguard) * (1.5 if agents else 0.5))
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    done: set[str] = set()  # nodes with a handshake on every tunnel: not read again
    last_poke = time.monotonic() + AGENT_HANDSHAKE_GRACE - 1.0 if agents else 0.0
    while True:
        status = tunnel_status(topo, frozenset(done))
        pending = []
        for dev in topo.wireguard:
            if dev.node in done:
                continue
            node = plan.node(dev.node)
            assert node.tunnel is not None  # noqa: S101
            waiting = [
                f"{dev.node} → {p.node}"
                for p in node.tunnel.peers
                if status.get(dev.node, {}).get(p.public_key, (0, 0, 0, None))[0] == 0
                and dev.node not in cut_off
                and p.node not in cut_off
            ]
            if not waiting:
                done.add(dev.node)
            pending += waiting
        if not pending:
            return
        if time.monotonic() > deadline:
            raise LabError(
                f"no WireGuard handshake after {timeout:.0f} s on {len(pending)} tunnel(s): "
                + ", ".join(pending[:10])
                + (" …" if len(pending) > 10 else "")
            )
        if time.monotonic() - last_poke > 1.0:
            silent = set(pending)
            for dev in topo.wireguard:
                node = plan.node(dev.node)
                assert node.tunnel is not None  # noqa: S101
                # One initiator per pair: simultaneous initiations can collide and cost a 5 s retry.
                targets = [
                    str(p.allowed_ips[0].network_address)
                    for p in node.tunnel.peers
                    if (node.public_address is None or (p.endpoint is not None and node.name < p.node))
                    and (f"{dev.node} → {p.node}" in silent or f"{p.node} → {dev.node}" in silent)
                ]
                if targets:
                    wireguard.poke(dev.namespace, targets)
            last_poke = time.monotonic()
        time.sleep(min(1.0, 0.1 + 0.02 * (len(topo.wireguard) - len(done))))  # reading devices costs CPU too


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


def _wait_pods(endpoints: list[Any], timeout: float = 20.0) -> None:
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


# --- down ----------------------------------------------------------------------------------


def _processes(marker: str) -> list[int]:
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
        ours = ("crossmesh.drivers.lab.workload", "crossmesh.drivers.lab.servicesd", "crossmesh.agent.daemon")
        is_workload = any(m in args for m in ours)
        # tcpdump captures, and the lab's etcd members (their data directory names the tag).
        is_other = prog in ("tcpdump", "etcd")
        if (is_wg or is_workload or is_other) and any(marker in a for a in args):
            pids.append(int(entry.name))
    return pids


def _wireguard_pids(ifname: str) -> list[int]:
    """The wireguard-go of exactly this device (cm-x-g5 is not cm-x-g50)."""
    return [p for p in _processes(ifname) if _cmdline_has(p, (ifname,))]


def _cmdline_has(pid: int, words: tuple[str, ...]) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(w in args for w in words)


def down(tag: str | None, *, progress: Progress = _quiet) -> list[str]:
    """Remove every trace of lab `tag` (or of every lab with tag None). Idempotent."""
    marker = f"cm-{tag}" if tag else "cm-"
    removed: list[str] = []
    # The service daemon restarts dead agents and agents restart a dead wireguard-go: they go
    # first, so that nothing is started again while the rest is stopped.
    supervisors = ("crossmesh.drivers.lab.servicesd", "crossmesh.agent.daemon")
    for first in (True, False):
        pids = [p for p in _processes(marker) if not first or _cmdline_has(p, supervisors)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
                removed.append(f"process {pid}")
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    names = [n for n in netns.listing() if n.startswith(marker + "-") or (tag is None and n.startswith("cm-"))]
    for name in names:
        netns.remove(name)
        removed.append(f"namespace {name}")
    if wireguard.SOCKET_DIR.is_dir():
        for sock in wireguard.SOCKET_DIR.glob(f"{marker}*.sock"):
            sock.unlink(missing_ok=True)
            removed.append(f"socket {sock}")
    if LAB_ROOT.is_dir():
        for d in LAB_ROOT.glob(f"{marker}*"):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(f"state {d}")
        if not any(LAB_ROOT.iterdir()):
            LAB_ROOT.rmdir()
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
    found += [f"process {p}" for p in _processes(marker)]
    if wireguard.SOCKET_DIR.is_dir():
        found += [f"socket {s}" for s in wireguard.SOCKET_DIR.glob(f"{marker}*.sock")]
    if LAB_ROOT.is_dir():
        found += [f"state {d}" for d in LAB_ROOT.glob(f"{marker}*")]
    return found


def topology_of(state: LabState) -> tuple[Compiled, LabTopology]:
    compiled = compile_mesh(
        Path(state.mesh), Path(state.state_dir), persist=False, overlay=state.overlay, placements=state.placements
    )
    return compiled, topology.build(
        compiled.plan,
        state.tag,
        unhealthy_backends(state.tag),
        policy_index(compiled),
        agent_routes=state.control_plane == "etcd",
        indices=state.indices or None,
    )


def pod_key(pod: dict[str, Any]) -> str:
    return f"{pod['cluster']}_{pod['podNamespace']}_{pod['name']}"


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
    pid = state.workloads.get(pod["node"], 0)
    if _alive(pid):
        os.kill(pid, signal.SIGUSR1)
    return True


def exec_argv(state: LabState, ref: str, argv: list[str]) -> list[str]:
    pod = state.pods.get(ref)
    if pod is None:
        known = ", ".join(sorted(state.pods)[:8])
        raise UsageError(f"no pod {ref} in lab {state.mesh_name} — pods are CLUSTER/NAMESPACE/POD, e.g. {known}")
    return netns.exec_argv(pod["namespace"], argv)
