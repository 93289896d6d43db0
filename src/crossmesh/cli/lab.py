"""`crossmesh lab …`: build, inspect, enter and remove the lab."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from crossmesh.cli import labvpn
from crossmesh.cli.agent import require_agent_extra
from crossmesh.cli.common import OUTPUT_OPTION, Output, emit, err, friendly, listeners_text, out
from crossmesh.drivers import etcd
from crossmesh.drivers.lab import faults, meshd, netns, topology, wireguard
from crossmesh.drivers.lab import lab as labs
from crossmesh.errors import CrossmeshError, SpecError, UsageError
from crossmesh.load.mesh import load_mesh_model
from crossmesh.model.plan import Plan
from crossmesh.plan import serialize

app = typer.Typer(
    help="The lab: the whole mesh built for real on this Linux host (network namespaces, wireguard-go, "
    "VXLAN, nftables NAT). Needs root.",
    no_args_is_help=True,
)
MESH_OPTION = typer.Option(None, "--mesh", help="the lab's mesh file (default: the only running lab)")


def _progress(started: float) -> labs.Progress:
    """Progress lines on stderr, each with the seconds since the command started."""

    def progress(msg: str) -> None:
        err.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim] {escape(msg)}")

    return progress


@app.command("up")
@friendly
def up(
    mesh: Path = typer.Argument(..., help="the mesh file", show_default=False),
    state: Path | None = typer.Option(None, "--state", help="state directory (default: .crossmesh/ beside the mesh)"),
    keep_on_error: bool = typer.Option(False, "--keep-on-error", help="keep what was built when up fails"),
    tag: str | None = typer.Option(None, "--tag", help="lab tag (4 hex digits; default: from the mesh name)"),
    agents: bool = typer.Option(
        False, "--agents", help="run the control plane: a 3-member etcd on loopback and one agent per node"
    ),
    lease_ttl: int | None = typer.Option(
        None, "--lease-ttl", min=1, max=600, help="agents' etcd lease TTL in seconds (default 3): failure detection"
    ),
    flow_logs: bool | None = typer.Option(
        None,
        "--flow-logs/--no-flow-logs",
        help="record flows: log rules in every node's and router's table and the flow daemon (`crossmesh "
        "observe`); --no-flow-logs builds the tables without them and stops the daemon. Kept by later `lab up`s "
        "[default: what the lab has; on for a new lab]",
        show_default=False,
    ),
    output: Output = OUTPUT_OPTION,
) -> None:
    """Build the mesh on this host and return when every tunnel has completed a handshake and every pod
    answers. Running it again changes only what differs from the plan."""
    if agents:
        require_agent_extra()  # before anything is built
    started = time.monotonic()
    result = labs.up(
        mesh,
        state,
        tag=tag,
        keep_on_error=keep_on_error,
        agents=agents,
        lease_ttl=lease_ttl,
        progress=_progress(started),
        flow_logs=flow_logs,
    )
    total = time.monotonic() - started
    if output is not Output.TABLE:
        emit({"tag": result.state.tag, "changes": result.changes, "seconds": result.seconds, "total": total}, output)
        return
    s = result.state
    out.print(
        f"[green]lab {s.mesh_name} is up[/green] (cm-{s.tag}): {len(s.nodes)} nodes, {len(s.pods)} pods, "
        f"{len(s.wireguard)} WireGuard devices — {len(result.changes)} changes in {total:.1f} s"
    )
    if not result.changes:
        out.print("nothing to change: the lab already matches the plan")


def _gateways(state: labs.LabState, plan: Plan, topo: topology.LabTopology) -> list[dict[str, Any]]:
    """Each ingress gateway: its load balancer's public address, listeners and HAProxy processes."""
    return [
        {
            **serialize.ingress_json(g),
            "address": str(topo.load_balancers.get(g.ref, "")),
            "haproxy": {p: labs.alive(state.ingress.get(p, 0)) for p in g.pods},
        }
        for g in plan.ingress
    ]


@app.command("status")
@friendly
def status(mesh: Path | None = MESH_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Nodes, pods and tunnels (latest handshake and bytes) of the running lab."""
    state = labs.find_lab(mesh)
    compiled, topo = labs.topology_of(state)
    tunnels = labs.tunnel_status(topo)
    key_node = {p.public_key: p.node for n in compiled.plan.nodes if n.tunnel for p in n.tunnel.peers}
    now = int(time.time())
    rows: list[dict[str, Any]] = []
    for dev in topo.wireguard:
        for key, (hs, rx, tx, endpoint) in sorted(tunnels.get(dev.node, {}).items()):
            rows.append(
                {
                    "node": dev.node,
                    "peer": key_node.get(key, key[:8]),
                    "endpoint": endpoint,
                    "handshakeAge": (now - hs) if hs else None,
                    "rx": rx,
                    "tx": tx,
                }
            )
    cut = {n for nodes_cut in faults.uplink_cuts(state).values() for n in nodes_cut}
    nodes: list[dict[str, Any]] = [
        {
            "node": n,
            "namespace": ns,
            "up": netns.exists(ns),
            "workload": labs.alive(state.workloads.get(n, 0)),
            "forwarding": faults.forwarding(state, n),
            "stoppedForwarding": n in state.stopped_forwarding,
            "uplink": "cut" if n in cut else "up",
            "uplinkCut": n in state.cut_uplinks,
        }
        for n, ns in sorted(state.nodes.items())
    ]
    wg: list[dict[str, Any]] = [
        {"device": ifname, "node": d.node, "running": wireguard.is_running(ifname)}
        for ifname, d in sorted(state.wireguard.items())
    ]
    agents_rows, members = _control_plane(state)
    operator = labs.operator_control(state) if state.control_plane == "etcd" else None
    sites = _sites(state)
    local = {"namespace": topo.local_ns, "address": str(topo.local_address), "up": netns.exists(topo.local_ns)}
    gateways = _gateways(state, compiled.plan, topo)
    vpn = labvpn.vpn_rows(state, topo, compiled)
    if output is not Output.TABLE:
        emit(
            {
                "lab": state.mesh_name,
                "tag": state.tag,
                "status": state.status,
                "nodes": nodes,
                "wireguard": wg,
                "tunnels": rows,
                "pods": labs.to_json(state.pods),
                "agents": agents_rows,
                "etcd": members,
                "operator": operator,
                "sites": sites,
                "vpn": vpn,
                "local": local,
                "gateways": gateways,
                "flows": {
                    "logs": state.flow_logs,
                    "running": labs.alive(state.flows_pid),
                    "socket": str(state.dir / "flows.sock"),
                },
            },
            output,
        )
        return
    out.print(f"lab [bold]{state.mesh_name}[/bold] (cm-{state.tag}) from {escape(str(state.mesh))}: {state.status}")
    if not state.flow_logs:
        fix = escape(f"`crossmesh lab up {state.mesh} --flow-logs`")
        out.print(f"flow logs: off (no table logs a packet, no flow daemon; turn them on with {fix})")
    else:
        flows = (
            f"relay at {escape(str(state.dir / 'flows.sock'))}"
            if labs.alive(state.flows_pid)
            else "[red]not running[/red]"
        )
        out.print(
            f"flow logs: on — flow daemon: {flows} (`crossmesh observe`, site routers as router/SITE; "
            "metrics on every node's address, :9965)"
        )
    t = Table(title="Nodes", title_justify="left")
    for c in ("node", "namespace", "namespace up", "workload", "WireGuard", "forwarding", "uplink"):
        t.add_column(c, overflow="fold")
    running = {d["node"]: d["running"] for d in wg}
    for n in nodes:
        heal = f" (`lab heal-node {n['node']}`)"
        t.add_row(
            n["node"],
            n["namespace"],
            _yes(n["up"]),
            _yes(n["workload"]),
            _yes(running[n["node"]]) if n["node"] in running else "-",
            "-" if n["forwarding"] is None else _yes(n["forwarding"]) + (heal if not n["forwarding"] else ""),
            "up" if n["uplink"] == "up" else f"[red]cut at the site router[/red]{heal}",
        )
    out.print(t)
    t = Table(title="Sites", title_justify="left")
    for c in ("site", "router namespace", "link to the internet"):
        t.add_column(c, overflow="fold")
    for s in sites:
        link = s["uplink"] if not s["cut"] else f"{s['uplink']}: cut off (`lab heal-site {s['site']}`)"
        t.add_row(s["site"], s["namespace"], link if link == "up" else f"[red]{link}[/red]")
    out.print(t)
    labvpn.print_vpn(vpn)
    where = "" if local["up"] else " [red](namespace missing: `crossmesh lab up`)[/red]"
    out.print(
        f"client outside: local at {local['address']} on the internet, namespace {local['namespace']}{where} "
        "(`crossmesh lab exec local -- CMD`)"
    )
    if gateways:
        t = Table(title="Ingress gateways (published by their site's load balancer)", title_justify="left")
        for c in ("gateway", "load balancer", "listeners", "pods", "haproxy"):
            t.add_column(c, overflow="fold")
        for g in gateways:
            listeners = listeners_text(g["listeners"])
            procs = ", ".join(f"{p}: {'running' if up else '[red]down[/red]'}" for p, up in g["haproxy"].items())
            t.add_row(escape(g["gateway"]), g["address"], escape(listeners), escape(", ".join(g["pods"])), procs)
        out.print(t)
        out.print(
            "reach one from outside: `crossmesh lab exec local -- curl --resolve HOST:443:ADDRESS "
            f"--cacert {escape(str(Path(state.state_dir) / 'ingress-pki' / 'ca.crt'))} https://HOST/`"
        )
    if agents_rows:
        t = Table(title="Agents", title_justify="left")
        for c in ("node", "running", "etcd", "lease refreshed", "last reconcile", "took", "peers", "rejected"):
            t.add_column(c, overflow="fold")
        for a in agents_rows:
            t.add_row(
                a["node"],
                _yes(a["running"]),
                a["etcd"] or "[red]unreachable[/red]",
                f"{a['leaseAge']} s ago" if a["leaseAge"] is not None else "-",
                f"{a['lastReconcileAge']} s ago" if a["lastReconcileAge"] is not None else "-",
                f"{a['lastReconcileMs']} ms" if a["lastReconcileMs"] is not None else "-",
                str(a["peers"]),
                escape(", ".join(f"{k}: {v}" for k, v in a["rejected"].items())) or "-",  # etcd's text
            )
        out.print(t)
        _print_operator(operator or {})
        t = Table(title="etcd", title_justify="left")
        for c in ("member", "endpoint", "healthy"):
            t.add_column(c)
        for m in members:
            t.add_row(m["member"], m["endpoint"], _yes(m["healthy"]))
        out.print(t)
    t = Table(title="Tunnels", title_justify="left")
    for c in ("node", "peer", "endpoint", "handshake", "rx", "tx"):
        t.add_column(c, overflow="fold")
    for r in rows:
        age = f"{r['handshakeAge']} s ago" if r["handshakeAge"] is not None else "[red]never[/red]"
        t.add_row(r["node"], r["peer"], r["endpoint"] or "(none)", age, _bytes(r["rx"]), _bytes(r["tx"]))
    out.print(t)
    t = Table(title="Pods", title_justify="left")
    for c in ("pod", "node", "address", "ports"):
        t.add_column(c, overflow="fold")
    for ref, p in sorted(state.pods.items()):
        t.add_row(ref, p.node, str(p.address), ", ".join(f"{port}/{proto}" for port, proto in p.ports))
    out.print(t)


def _print_operator(op: dict[str, Any]) -> None:
    replicas = ", ".join(
        f"{rid} {'running' if up else '[red]down[/red]'}" for rid, up in op.get("replicas", {}).items()
    )
    out.print(f"operator: {replicas}", highlight=False)
    if "error" in op:
        out.print(f"  [red]etcd unreachable:[/red] {escape(op['error'])}")
        return
    state = "[green]converged[/green]" if op["converged"] else f"{op['nodesConverged']}/{op['nodes']} nodes converged"
    out.print(
        f"  leader {escape(str(op['leader']))}; revision applied {op['applied']}, rolled out {op['rolledOut']}: {state}"
    )
    if op.get("rolloutError"):
        out.print(f"  [red]rollout error:[/red] {escape(op['rolloutError'])}")


def _sites(state: labs.LabState) -> list[dict[str, Any]]:
    """Each site's router and its link to the internet as the kernel has it (`up`, `down`, `half`:
    one end down, `missing`), and whether `lab cut-site` cut it."""
    return [
        {"site": s, "namespace": ns, "uplink": faults.uplink_state(state, s), "cut": s in state.cut_sites}
        for s, ns in sorted(state.sites.items())
    ]


def _control_plane(state: labs.LabState) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each agent's health, lease age, last reconcile and its duration; etcd member health."""
    if state.control_plane != "etcd":
        return [], []
    now = time.time()
    rows = []
    for n in sorted(d.node for d in state.wireguard.values()):
        st = labs.agent_status(state, n)
        rows.append(
            {
                "node": n,
                "running": labs.alive(int(st.get("pid", 0))),
                "etcd": st.get("etcd"),
                "leaseAge": round(now - st["leaseRefreshed"], 1) if st.get("leaseRefreshed") else None,
                "lastReconcileAge": round(now - st["lastReconcile"], 1) if st.get("lastReconcile") else None,
                "lastReconcileMs": st.get("lastReconcileMs"),
                "peers": st.get("peers"),
                "rejected": st.get("rejected", {}),
                "keyVersion": st.get("keyVersion"),
                "wireguardRestarts": st.get("wireguardRestarts", 0),
            }
        )
    pki = etcd.pki_dir(state.dir)
    members = [
        {"member": m.name, "endpoint": m.endpoint, "healthy": etcd.healthy(m, pki)} for m in etcd.members(state.tag)
    ]
    return rows, members


def _yes(value: bool) -> str:
    return "[green]yes[/green]" if value else "[red]no[/red]"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def exec_(
    pod: str = typer.Argument(
        ..., help="CLUSTER/NAMESPACE/POD, or local: the client outside, on the internet", show_default=False
    ),
    command: list[str] = typer.Argument(..., help="the command to run inside the pod's network namespace"),
    mesh: Path | None = MESH_OPTION,
) -> None:
    """Run a host command inside a pod's network namespace; its output and exit status pass through.

    `local` is a user's laptop on the internet: it reaches the sites' public addresses only.

    Example: crossmesh lab exec cluster1/default/x-wing-0 -- curl -s http://10.11.0.2/
    Example: crossmesh lab exec local -- ping -c1 192.0.2.253
    """
    state = labs.find_lab(mesh)
    argv = labs.exec_argv(state, pod, list(command))
    os.execvp(argv[0], argv)


@app.command("kill")
@friendly
def kill(
    pod: str = typer.Argument(..., help="CLUSTER/NAMESPACE/POD", show_default=False),
    mesh: Path | None = MESH_OPTION,
) -> None:
    """Stop a pod's workload as if its container died: listeners closed, connections reset.
    Its namespace and address stay, so services see a dead backend."""
    state = labs.find_lab(mesh)
    changed = labs.set_killed(state, pod, True)
    out.print(f"{pod} killed" if changed else f"{pod} was already killed", markup=False)


@app.command("revive")
@friendly
def revive(
    pod: str = typer.Argument(..., help="CLUSTER/NAMESPACE/POD", show_default=False),
    mesh: Path | None = MESH_OPTION,
) -> None:
    """Start a killed pod's workload again."""
    state = labs.find_lab(mesh)
    changed = labs.set_killed(state, pod, False)
    out.print(f"{pod} revived" if changed else f"{pod} was running", markup=False)


@app.command("add-node")
@friendly
def add_node(
    cluster: str = typer.Option(..., "--cluster", help="cluster the node joins"),
    site: str = typer.Option(..., "--site", help="site the node runs in"),
    name: str = typer.Option(..., "--name", help="node name (DNS-1123, unique in the mesh)"),
    address: str = typer.Option(..., "--address", help="private address in the site network"),
    public_address: str | None = typer.Option(None, "--public-address", help="public address (absent: behind NAT)"),
    mesh: Path | None = MESH_OPTION,
) -> None:
    """Add a node to the running lab, validated like the mesh file; returns when every tunnel,
    its own too, has completed a handshake. The mesh file is not changed: `lab down` forgets it."""
    started = time.monotonic()
    node: dict[str, Any] = {"name": name, "site": site, "address": address}
    if public_address:
        node["publicAddress"] = public_address
    result = labs.add_node(mesh, node, cluster, progress=_progress(started))
    took = time.monotonic() - started
    out.print(f"node {name} joined in {took:.2f} s ({len(result.changes)} changes)", markup=False)


@app.command("remove-node")
@friendly
def remove_node(
    name: str = typer.Argument(..., help="node name", show_default=False),
    mesh: Path | None = MESH_OPTION,
) -> None:
    """Remove a node from the running lab: its agent leaves (peers drop it), its namespaces go,
    its pods are placed on the cluster's other nodes."""
    started = time.monotonic()
    result = labs.remove_node(mesh, name, progress=_progress(started))
    took = time.monotonic() - started
    out.print(f"node {name} removed in {took:.2f} s ({len(result.changes)} changes)", markup=False)


@app.command("crash-node")
@friendly
def crash_node(
    node: str = typer.Argument(..., help="node name", show_default=False),
    mesh: Path | None = MESH_OPTION,
) -> None:
    """Kill a node's agent and wireguard-go with no cleanup, as a crash would (needs --agents).
    Its etcd lease expires and the other nodes withdraw its peer and routes; `lab up` brings it back."""
    state = labs.find_lab(mesh)
    for line in labs.crash_node(state, node):
        out.print(line, markup=False)


@app.command("crash-operator")
@friendly
def crash_operator(mesh: Path | None = MESH_OPTION) -> None:
    """Kill the leading operator replica with no goodbye (needs --agents) and report how long the
    other took to lead: its lease must run out first (`--lease-ttl`). The lab restarts the killed
    replica as a standby a little later, as a Deployment would; the agents keep running meanwhile."""
    state = labs.find_lab(mesh)
    old, new, took = labs.crash_leader(state)
    out.print(f"operator {old} (leader) killed; {new} leads after {took:.2f} s (lease TTL {state.lease_ttl} s)")


SITE_ARGUMENT = typer.Argument(..., help="site name (spec.sites[].name)", show_default=False)


@app.command("cut-site")
@friendly
def cut_site(site: str = SITE_ARGUMENT, mesh: Path | None = MESH_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Cut a site off from the internet router, as a failed uplink would: both ends of the link
    between the internet and the site's router go down, and the routes through it with them.
    The site's nodes, agents and tunnel devices keep running; traffic to and from other sites
    stops. `lab heal-site SITE` (or `lab up`) brings the link back; `lab status` shows cut sites."""
    _site_fault(mesh, output, site, cut=True)


@app.command("heal-site")
@friendly
def heal_site(site: str = SITE_ARGUMENT, mesh: Path | None = MESH_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Reconnect a site cut off with `lab cut-site`: the link comes up and the site router and the
    internet are brought back to the plan (the routes the link-down removed). Returns then: traffic
    resumes with the next packet over the tunnels' sessions; tunnels whose handshakes went unanswered
    during the cut re-handshake at their next retry (within 5 s), and each node of the site sends one
    datagram to each peer so that a session that expired in a long cut starts its handshake at once."""
    _site_fault(mesh, output, site, cut=False)


def _site_fault(mesh: Path | None, output: Output, site: str, *, cut: bool) -> None:
    state = labs.find_lab(mesh)
    changes = faults.cut_site(state, site) if cut else faults.heal_site(state, site)
    if output is not Output.TABLE:
        emit({"site": site, "cut": cut, "changes": changes}, output)
        return
    for line in changes:
        out.print(line, markup=False)
    if changes:
        out.print(f"site {site} {'cut off' if cut else 'healed'}", markup=False)
    else:
        out.print(f"site {site} {'was already cut off' if cut else 'was not cut off: nothing to heal'}", markup=False)


NODE_ARGUMENT = typer.Argument(..., help="node name", show_default=False)


@app.command("stop-forwarding")
@friendly
def stop_forwarding(node: str = NODE_ARGUMENT, mesh: Path | None = MESH_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Stage a broken gateway that is alive but does not forward: the node's namespace stops
    forwarding IPv4 (net.ipv4.ip_forward=0 in it, nowhere else) while its agent, WireGuard device
    and addresses stay as they are. `lab heal-node NODE` (or `lab up`) undoes it; `lab status` shows it."""
    _node_fault(mesh, output, node, "stop-forwarding")


@app.command("cut-uplink")
@friendly
def cut_uplink(node: str = NODE_ARGUMENT, mesh: Path | None = MESH_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Cut one node's path to the internet at its site router: the router drops what comes from the
    internet for the node (its public address, or the answers through the site's NAT) and what the
    node sends to the internet. The node stays reachable on its site network. `lab heal-node NODE`
    (or `lab up`) undoes it; `lab status` shows it."""
    _node_fault(mesh, output, node, "cut-uplink")


@app.command("heal-node")
@friendly
def heal_node(node: str = NODE_ARGUMENT, mesh: Path | None = MESH_OPTION, output: Output = OUTPUT_OPTION) -> None:
    """Undo `lab stop-forwarding` and `lab cut-uplink` for a node: it forwards again and its site
    router passes its traffic; a node with a tunnel sends one datagram to each peer so that a session
    that expired during the cut starts its handshake at once."""
    _node_fault(mesh, output, node, "heal")


_NODE_FAULTS = {
    "stop-forwarding": (faults.stop_forwarding, "stopped forwarding", "was already not forwarding"),
    "cut-uplink": (faults.cut_uplink, "cut off at its site router", "was already cut off at its site router"),
    "heal": (faults.heal_node, "healed", "had nothing to heal"),
}


def _node_fault(mesh: Path | None, output: Output, node: str, fault: str) -> None:
    act, done, unchanged = _NODE_FAULTS[fault]
    changes = act(labs.find_lab(mesh), node)
    if output is not Output.TABLE:
        emit({"node": node, "fault": fault, "changes": changes}, output)
        return
    for line in changes:
        out.print(line, markup=False)
    out.print(f"node {node} {done if changes else unchanged + ': nothing changed'}", markup=False)


@app.command("rotate-certs")
@friendly
def rotate_certs(mesh: Path | None = MESH_OPTION) -> None:
    """Renew every workload certificate of the lab's service mesh now (spec.istio): each node proxy
    makes new keys, gets them signed by the lab's mesh CA and uses them for new connections; open
    connections keep the certificates they started with. Returns when every proxy is done; exit
    code 1 when a renewal failed (that workload keeps its current certificate while it is valid)."""
    state = labs.find_lab(mesh)
    started = time.monotonic()
    lines = meshd.rotate_certs(state)
    for line in lines:
        out.print(line, markup=False)
    failed = [line for line in lines if "certificate renewal failed" in line]
    if failed:
        raise CrossmeshError(
            f"{len(failed)} certificate renewals failed; those workloads keep serving their current certificates "
            "while they are valid, and their proxies try again every few seconds (see the lines above)"
        )
    out.print(f"certificates rotated in {time.monotonic() - started:.2f} s")


@app.command("rotate-keys")
@friendly
def rotate_keys(
    node: list[str] = typer.Option([], "--node", help="only these nodes (repeatable; default: every node)"),
    mesh: Path | None = MESH_OPTION,
) -> None:
    """Give nodes new WireGuard keys while the mesh runs (needs --agents): each agent makes a key
    on its node, publishes the public key through etcd, and the peers switch over."""
    state = labs.find_lab(mesh)
    nodes = node or sorted(d.node for d in state.wireguard.values())
    started = time.monotonic()
    keys = labs.rotate_keys(state, nodes)
    for n, k in sorted(keys.items()):
        out.print(f"{n}: new public key {k}", markup=False)
    out.print(f"rotated {len(keys)} keys in {time.monotonic() - started:.2f} s")


@app.command("down")
@friendly
def down(
    mesh: Path | None = MESH_OPTION,
    all_: bool = typer.Option(False, "--all", help="remove every lab and every leftover with the cm- prefix"),
) -> None:
    """Remove every namespace, process, socket and state file of the lab. Safe to run twice."""
    if os.geteuid() != 0:
        labs.preflight()
    if all_:
        removed = labs.down(None)
    else:
        try:
            tag = labs.find_lab(mesh).tag
        except (UsageError, labs.LabError) as err:
            if mesh is None:
                if isinstance(err, labs.LabError):
                    raise
                out.print("no lab is running; nothing to remove (`--all` sweeps leftovers of crashed labs)")
                return
            # No state (a `lab up` killed before it wrote any) or a damaged one: sweep what carries
            # this mesh's tag.
            _, model, problems = load_mesh_model(mesh)
            if model is None:
                raise SpecError(problems) from None
            tag = topology.lab_tag(model.metadata.name)
        removed = labs.down(tag)
    out.print(f"removed {len(removed)} things" if removed else "nothing to remove")
