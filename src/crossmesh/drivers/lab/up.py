"""`lab up`: build a lab, or bring a running one back to its plan — namespaces, tunnels,
control plane, workloads, services — and wait until every tunnel has a handshake and
every pod answers."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossmesh.drivers.lab import faults, netns, operators, reconcile, topology, tunnelcut, wireguard
from crossmesh.drivers.lab.control_plane import start_agents, start_etcd, start_joining_agents
from crossmesh.drivers.lab.desired import namespace_digest, policy_index, unhealthy_backends
from crossmesh.drivers.lab.ingressd import start_ingress
from crossmesh.drivers.lab.meshd import start_mesh
from crossmesh.drivers.lab.pods import pod_key, start_workloads, wait_pods
from crossmesh.drivers.lab.processes import wireguard_pids
from crossmesh.drivers.lab.services import start_flows, start_services
from crossmesh.drivers.lab.spec import Namespace
from crossmesh.drivers.lab.state import (
    DeviceEntry,
    LabError,
    LabState,
    PodEntry,
    Progress,
    lab_lock,
    quiet,
    running_labs,
)
from crossmesh.drivers.lab.teardown import collect_garbage, down
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.drivers.lab.transit import start_transit
from crossmesh.errors import EnvironmentProblem
from crossmesh.model.plan import Plan
from crossmesh.plan.serialize import plan_json
from crossmesh.render import readback
from crossmesh.render.files import RenderedFile
from crossmesh.state.disk import write_private
from crossmesh.workspace import Compiled, compile_mesh, rendered

REQUIRED = {
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
    "wg-quick": "wireguard-tools",
    "nft": "nftables",
    "ip": "iproute2",
}
HANDSHAKE_TIMEOUT = 30.0
AGENT_HANDSHAKE_GRACE = 3.0  # seconds the agents have to start their handshakes before `up` pokes


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
    progress: Progress = quiet,
    source: Path | None = None,
    applied: tuple[int, str] | None = None,
    flow_logs: bool | None = None,
) -> UpResult:
    """Build (or bring back to the plan) the lab of `mesh`; returns when every tunnel has
    completed a handshake and every pod answers. With `agents`, a 3-member etcd cluster and
    one agent per node run the tunnels (the control plane); a lab keeps the mode it has.
    `changed_only` (membership changes) reconciles only the namespaces whose desired state
    differs from the one they were last brought to; a plain `up` checks every namespace.
    `source`: build from these files instead of `mesh`'s (the revision `crossmesh apply` published
    for this lab, which the provisioner follows; `applied`: its revision and digest, so that it is not
    applied again — a stale one would undo a newer apply); the lab stays `mesh`'s. One `up` at a time
    per lab. `flow_logs`: False builds every table without a log rule and runs no flow daemon, True
    brings both back; None keeps what the lab has (on for a new lab)."""
    preflight()
    mesh_abs = str(mesh.resolve())
    running = next((lab for lab in running_labs() if lab.mesh == mesh_abs), None)
    with lab_lock(running.tag if running is not None else None):
        return _up(mesh, mesh_abs, running, state_dir, tag, keep_on_error, agents, lease_ttl, overlay, changed_only,
                   progress, source, applied, flow_logs)  # fmt: skip


def _up(
    mesh: Path,
    mesh_abs: str,
    running: LabState | None,
    state_dir: Path | None,
    tag: str | None,
    keep_on_error: bool,
    agents: bool,
    lease_ttl: int | None,
    overlay: dict[str, Any] | None,
    changed_only: bool,
    progress: Progress,
    source: Path | None,
    applied: tuple[int, str] | None,
    flow_logs: bool | None,
) -> UpResult:
    if running is not None:
        running = LabState.load(running.tag) or running  # another `up` may have changed it meanwhile
    if overlay is None:
        overlay = running.overlay if running is not None else {}
    compiled = compile_mesh(  # SpecError before anything is built
        source or mesh, state_dir, overlay=overlay, placements=running.placements if running is not None else None
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
    if flow_logs is None:
        flow_logs = existing.flow_logs if existing is not None else True
    try:
        topo = topology.build(
            plan,
            tag,
            unhealthy_backends(tag),
            policy_index(compiled),
            agent_routes=agents,
            indices=existing.indices if existing is not None else None,
            flow_logs=flow_logs,
        )
    except ValueError as err:
        raise LabError(str(err)) from err
    state = existing or LabState(tag=tag, mesh=mesh_abs, mesh_name=plan.mesh, state_dir=str(compiled.store.root))
    state.control_plane = "etcd" if agents else ""
    state.flow_logs = flow_logs
    state.built_from = str(source.absolute()) if source is not None else ""
    state.overlay = overlay
    state.indices = topo.indices
    state.placements = {p.ref: p.node for p in plan.pods()}
    if lease_ttl is not None:
        state.lease_ttl = lease_ttl
    joining = frozenset(topo.node_ns) - frozenset(state.nodes) if existing is not None else frozenset()
    _record(state, topo)
    state.save()
    try:
        result = _build(state, topo, compiled, progress, changed_only=changed_only, joining=joining, applied=applied)
    except BaseException as err:
        if not keep_on_error and existing is None:
            progress("failed: removing what was built (use --keep-on-error to keep it)")
            down(state.tag)
        if isinstance(err, LabError | EnvironmentProblem | KeyboardInterrupt):
            raise
        raise LabError(f"lab up failed: {err}") from err
    state.status = "ready"
    if not changed_only:  # every namespace was brought to its spec: cut uplinks are up again, nodes forward
        state.cut_sites = []
        state.stopped_forwarding = []
        state.cut_uplinks = []
    state.save()
    compiled.store.save_applied_plan(_plan_snapshot(plan))
    return result


def _plan_snapshot(plan: Plan) -> dict[str, Any]:
    return plan_json(plan)


def _record(state: LabState, topo: LabTopology) -> None:
    state.namespaces = [n.name for n in topo.namespaces]
    state.nodes = dict(topo.node_ns)
    state.sites = dict(topo.site_ns)
    state.inet = f"{topo.prefix}-inet"
    state.local = topo.local_ns
    state.pods = {
        ep.pod.ref: PodEntry(
            namespace=ep.namespace,
            node=ep.pod.node,
            node_namespace=ep.node_namespace,
            address=ep.pod.address,
            ports=tuple((p, proto) for p, proto, _ in ep.pod.ports),
            cluster=ep.pod.cluster,
            pod_namespace=ep.pod.namespace,
            name=ep.pod.name,
        )
        for ep in topo.pods
    }
    for dev in topo.wireguard:
        state.wireguard.setdefault(dev.ifname, DeviceEntry(namespace=dev.namespace, node=dev.node))


def _build(
    state: LabState,
    topo: LabTopology,
    compiled: Compiled,
    progress: Progress,
    *,
    changed_only: bool = False,
    joining: frozenset[str] = frozenset(),
    applied: tuple[int, str] | None = None,
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
    changes += collect_garbage(state, topo)
    changes += reconcile.ensure_namespaces([n.name for n in topo.namespaces])
    agents = state.control_plane == "etcd"
    early = start_joining_agents(state, topo, compiled, joining) if agents else {}
    lap("namespaces")
    digests = {ns.name: namespace_digest(ns) for ns in topo.namespaces}
    todo = [ns for ns in topo.namespaces if not changed_only or state.applied.get(ns.name) != digests[ns.name]]
    # A membership change first builds what the new nodes stand on (their namespaces, the site
    # routers, the internet) and starts their tunnels and agents; the other namespaces that
    # changed (a new neighbour on the site's VXLAN, a new address in a policy set) follow once
    # the tunnels are up, so as not to take CPU from the agents converging.
    first = [
        ns
        for ns in todo
        if not changed_only or ns.name not in state.applied or ns.role in ("inet", "local", "router", "hub")
    ]
    state.applied = {k: v for k, v in state.applied.items() if k in digests}
    for ns in todo:  # forgotten until brought to its spec: a failure below leaves it to do again
        state.applied.pop(ns.name, None)
    state.save()
    progress(f"links, addresses, routes, NAT: {len(todo)} namespaces" + (" changed" if changed_only else ""))
    wg_names = tuple(d.ifname for d in topo.wireguard)
    hold = functools.partial(faults.holding_faults, state) if changed_only else None
    changes += _reconcile_namespaces(first, wg_names, hold)
    if changed_only and state.cut_sites:  # routers and the internet were reconciled: cut sites stay cut
        for site in list(state.cut_sites):
            changes += faults.cut_site(state, site)
    # Nodes cut at their site router stay cut through a membership change; a plain `up` heals them.
    changes += faults.keep_uplink_cuts(state, compiled.plan) if changed_only else faults.clear_uplink_cuts(state)
    lap("links")

    if agents:
        progress("control plane: 3-member etcd on loopback, the mesh applied, 2 operator replicas")
        changes += start_etcd(state, compiled)
        if applied is None:  # the lab's own file: applied here
            revision, digest, published = operators.publish(state, compiled)
        else:  # a revision someone applied (the provisioner builds it): applied already, never again
            (revision, digest), published = applied, []
        changes += published + operators.start_operators(state)
        operators.wait_rollout(state, compiled, revision)
        state.built_digest = digest
        if applied is None:  # the provisioner itself builds with `applied`: it runs already
            changes += operators.start_provisioner(state)
        lap("etcd")
    progress(f"WireGuard: {len(topo.wireguard)} wireguard-go devices")
    files = rendered(compiled)
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
        # Each device is configured from the node's own rendered file, read as its consumer reads it:
        # a wg-quick file through `wg-quick strip`, a Talos WireguardConfig document as Talos does.
        wg_quick = files.get(f"nodes/{dev.node}/{node.tunnel.interface}.conf")
        conf = conf_dir / f"{dev.ifname}.conf"  # wg-quick wants an interface name
        if wg_quick is not None:
            _write_private(conf, wg_quick.content)
        if wireguard.is_running(dev.ifname) and not _has_link(dev.namespace, dev.ifname):
            # A wireguard-go that answers but whose device is not in the node's namespace: left
            # by an earlier lab of the same tag whose namespace is gone. It goes.
            for stray in wireguard_pids(dev.ifname):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stray, signal.SIGKILL)
            changes.append(f"stray wireguard-go for {dev.ifname} stopped")
        if not wireguard.is_running(dev.ifname):
            pid = wireguard.start(dev.namespace, dev.ifname, state.dir / "logs" / f"{dev.ifname}.log")
            state.wireguard[dev.ifname] = dataclasses.replace(state.wireguard[dev.ifname], pid=pid)
            changes.append(f"{dev.namespace}: wireguard-go {dev.ifname} started")
            started.add(dev.namespace)
            state.save()
        if agents:
            continue  # the node's agent configures its device from etcd
        try:
            changes += wireguard.reconcile(dev.ifname, _desired_device(files, dev.node, conf if wg_quick else None))
        except (RuntimeError, readback.ReadbackError) as err:
            raise LabError(f"configuring the tunnel of node {dev.node}: {err}") from err
    lap("wireguard")
    # Second pass: new tunnel devices now exist, so their addresses and routes can be set.
    changes += _reconcile_namespaces([ns for ns in topo.namespaces if ns.name in started], wg_names, hold)
    lap("links")

    if agents:
        progress(f"agents: {len(topo.wireguard)}")
        changes += start_agents(state, topo, compiled, early)
        lap("agents")
    progress("waiting for every tunnel to complete a handshake")
    cut_off = frozenset(
        n.name
        for n in compiled.plan.nodes
        if changed_only and (n.site in state.cut_sites or n.name in state.cut_uplinks)
    )
    _wait_handshakes(topo, compiled.plan, progress, agents=agents, cut_off=cut_off)
    lap("handshakes")
    changes += _reconcile_namespaces([ns for ns in todo if ns not in first], wg_names, hold)
    state.applied.update((ns.name, digests[ns.name]) for ns in todo)
    state.save()
    lap("links")
    if compiled.plan.vpn or state.vpn:
        progress("site-to-site VPN: strongSwan and BIRD at every customer gateway and transit gateway")
    # Every `up` waits for every tunnel and BGP session: a tunnel cut with `lab cut-tunnel` is healed first.
    changes += tunnelcut.clear(state)
    changes += start_transit(state, topo, compiled)
    lap("vpn")
    progress("workloads: echo servers in every pod")
    changes += start_workloads(state, topo)
    lap("workloads")
    # After the handshakes: a (re)starting service daemon takes a CPU-second, not to be taken
    # from tunnels and agents converging.
    progress("services: health checks, ClusterIP tables, DNS")
    changes += start_services(state, topo, compiled.plan, compiled.loaded.manifests)
    lap("services")
    progress("flows: every node's flow records (flows.sock) and metrics (:9965)" if state.flow_logs else "flows: off")
    changes += start_flows(state, topo, compiled.plan, compiled.loaded.manifests)
    lap("flows")
    if compiled.plan.istio is not None or state.mesh_proxies:
        progress("service mesh: the CA and every node's proxy (mTLS, AuthorizationPolicy)")
    changes += start_mesh(state, topo, compiled.plan, compiled.loaded.manifests)
    lap("mesh")
    if compiled.plan.ingress or state.ingress:
        progress("ingress gateways: haproxy in every gateway pod, published by its site's load balancer")
    changes += start_ingress(state, topo, compiled)
    lap("ingress")
    progress("waiting for every pod to answer")
    killed_dir = state.dir / "killed"
    killed = {p.name for p in killed_dir.iterdir()} if killed_dir.is_dir() else set()
    wait_pods([ep for ep in topo.pods if pod_key(state.pods[ep.pod.ref]) not in killed])
    lap("pods")
    return UpResult(state=state, changes=changes, seconds=seconds)


def _has_link(namespace: str, ifname: str) -> bool:
    with netns.open_ns(namespace) as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def _reconcile_namespaces(
    specs: list[Namespace], wg_names: tuple[str, ...], hold: Callable[[Namespace], Namespace] | None = None
) -> list[str]:
    """Each namespace brought to its spec; `hold` (a changed-only `up`) first keeps staged faults in it."""
    changes = []
    for ns in specs:
        try:
            changes += reconcile.reconcile(hold(ns) if hold else ns, wireguard_ifnames=wg_names)
        except Exception as err:
            raise LabError(f"configuring {ns.role} {ns.owner} ({ns.name}) failed: {err}") from err
    return changes


def tunnel_status(topo: LabTopology, skip: frozenset[str] = frozenset()) -> dict[str, dict[str, wireguard.PeerStats]]:
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


def _desired_device(files: dict[str, RenderedFile], node: str, wg_quick: Path | None) -> wireguard.DeviceConf:
    if wg_quick is not None:
        return wireguard.parse_setconf(wireguard.strip(wg_quick))
    tunnel = readback.node_tunnel(files, node)
    if tunnel is None:
        raise readback.ReadbackError(f"the rendered files of node {node} give it no tunnel")
    peers = {k: wireguard.PeerConf(k, p.endpoint, p.allowed_ips, p.keepalive) for k, p in tunnel.peers.items()}
    return wireguard.DeviceConf(tunnel.private_key, tunnel.listen_port, peers)


def _write_private(path: Path, content: str) -> None:
    if path.exists() and path.read_text() == content:
        return
    write_private(path, content)
