"""`gateway/*` checks (topology gateways, issue 16) that change nothing, and what every gateway check
reads: the sites and their gateways, which gateway etcd names active, WireGuard entries and routes.

- `gateway/active-carries: <site>`: the site's active gateway holds every remote site's network on
  the peer entry of that site's active gateway (and no other entry holds it), the site's other nodes
  route the other sites via it, and a cross-site flow from the site moves its counters.
- `gateway/standby-ready: <node>`: a standby has a handshake younger than 3 minutes with every remote
  active gateway it can dial and carries no site network: a failover waits for no handshake.

The staged failovers are in checks/failover.py. Which gateway is active is read from etcd
(`gateways/<site>`), not from the agents' status files: etcd's value is the agreement, written with a
compare, that every agent converges to; a status file is one agent's view, rewritten every few
seconds and left stale by an agent that crashed. A lab without agents runs the planner's preferred
gateways.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from crossmesh.agent.gateways import ActiveGateway, GatewayError, decode_active
from crossmesh.agent.probes import MAX_ECHO, PROBE_PORT
from crossmesh.checks import probes
from crossmesh.checks.framework import Context, Planned, Skips, ports, register
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns, wireguard
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.kv.api import KvError
from crossmesh.model.mesh import Topology
from crossmesh.model.plan import Plan
from crossmesh.plan import peers as peer_rule
from crossmesh.workspace import Compiled

HANDSHAKE_FRESH = 180.0  # seconds: WireGuard rekeys every 2 minutes while a tunnel carries anything
POD_SIZE = 200  # bytes of UDP payload between pods (far below any pod MTU)
PROBE_SIZE = MAX_ECHO  # to a gateway agent's probe responder, which echoes up to this
FLOW_ECHOES = 10  # echoes of active-carries' flow
POLL = 0.05
NO_FLOW = "no flow sent through it (no pod pair across sites with a UDP port; without agents, no probe responder)"


# --- the plan's view: sites, their gateways, flows -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    network: IPv4Network
    gateways: tuple[str, ...]  # in preference order: the first is the preferred one
    nodes: tuple[str, ...]  # every node of the site, gateways included


def sites(plan: Plan) -> list[Site]:
    order = gateway_order(plan)
    return [
        Site(s.name, s.network, order.get(s.name, ()), tuple(sorted(n.name for n in plan.nodes if n.site == s.name)))
        for s in plan.sites
    ]


def gateway_order(plan: Plan) -> dict[str, tuple[str, ...]]:
    return peer_rule.gateway_order(peer_rule.Member(n.name, n.site, n.natted, n.gateway) for n in plan.nodes)


def planned_active(ctx: Context) -> dict[str, str]:
    """Each site's active gateway as the checks were planned: etcd's (ctx.active) or the preferred."""
    return peer_rule.active_of(gateway_order(ctx.plan), ctx.active or {})


def runs_agents(ctx: Context) -> bool:
    return ctx.state is not None and ctx.state.control_plane == "etcd"


@dataclass(frozen=True, slots=True)
class Flow:
    """Cross-site traffic from a site: from a namespace behind its gateways to an echo in another site."""

    namespace: str
    node: str  # the node it leaves by: its routes choose the gateway
    remote_site: str
    address: str  # "": the remote site's active gateway's node address (its probe responder), read at run
    port: int
    size: int
    label: str


def pick_flow(ctx: Context, site: Site) -> Flow | None:
    """Two workers' pods if there are any — a pod on a node of the site that is no gateway, and a pod
    in another site with a UDP port the policies let it reach (a worker's first) — else, under agents,
    a node of the site that is no gateway to the probe responder of another site's active gateway (the
    agents run it); None when there is neither."""
    plan = ctx.plan
    workers = [n for n in site.nodes if not plan.node(n).gateway]
    pods = ctx.pods()
    remote = sorted(
        (p for p in pods if plan.node(p.node).site != site.name), key=lambda p: (plan.node(p.node).gateway, p.ref)
    )
    for src in (p for p in pods if p.node in workers):
        for dst in remote:
            if not ctx.connected(src, dst):
                continue
            for port in ports(dst, "UDP"):
                if ctx.allowed(src, dst, port, "UDP"):
                    where = plan.node(dst.node).site
                    label = f"{src.ref} -> {dst.ref}:{port}/UDP"
                    return Flow(ctx.ep(src).namespace, src.node, where, str(dst.address), port, POD_SIZE, label)
    others = sorted(s.name for s in plan.sites if s.name != site.name)
    if not workers or not others or not runs_agents(ctx):
        return None
    label = f"node {workers[0]} -> site {others[0]}'s active gateway:{PROBE_PORT}/UDP (its probe responder)"
    return Flow(ctx.topo.node_ns[workers[0]], workers[0], others[0], "", PROBE_PORT, PROBE_SIZE, label)


# --- the running lab: etcd, devices, routes --------------------------------------------------------


def etcd_active(state: labs.LabState, plan: Plan) -> dict[str, ActiveGateway]:
    """Each site's active-gateway value in the lab's etcd, where it names one of the site's gateways."""
    order = gateway_order(plan)
    out = {}
    for site, raw in labs.gateway_values(state).items():
        with contextlib.suppress(GatewayError):
            out[site] = decode_active(raw, site, order.get(site, ()))
    return out


def active_now(ctx: Context) -> dict[str, str]:
    """Each site's active gateway now: etcd's under agents, else the planner's preferred one."""
    order = gateway_order(ctx.plan)
    if not runs_agents(ctx) or ctx.state is None:
        return peer_rule.preferred(order)
    return peer_rule.active_of(order, {s: v.active for s, v in etcd_active(ctx.state, ctx.plan).items()})


def lab_view(state: labs.LabState) -> tuple[Compiled, LabTopology, dict[str, str] | None]:
    """The running lab as `crossmesh test` compares with it: under topology gateways with agents,
    planned with each site's active gateway as etcd names it (after a failover the running peers
    and routes are that plan's, not the rendered preferred one's), and that choice; else as built
    (and None)."""
    compiled, topo = labs.topology_of(state)
    plan = compiled.plan
    if plan.topology is not Topology.GATEWAYS or state.control_plane != "etcd":
        return compiled, topo, None
    order = gateway_order(plan)
    try:
        chosen = {s: v.active for s, v in etcd_active(state, plan).items()}
    except KvError:  # etcd down: the data plane runs on; the checks that need etcd say so themselves
        return compiled, topo, None
    active = peer_rule.active_of(order, chosen)
    if active != peer_rule.preferred(order):
        compiled, topo = labs.topology_of(state, active)
    return compiled, topo, active


def not_preferred(plan: Plan, active: Mapping[str, str] | None) -> list[str]:
    """`site S on G (preferred P)` for each site whose active gateway is not its preferred one."""
    order = gateway_order(plan)
    return [
        f"site {s} on {gw} (preferred {order[s][0]})"
        for s, gw in sorted((active or {}).items())
        if s in order and order[s] and gw != order[s][0]
    ]


@dataclass(frozen=True, slots=True)
class Entry:
    """One peer entry of a device, named by the node whose tunnel address it holds."""

    node: str
    allowed: tuple[str, ...]
    handshake: int
    rx: int
    tx: int


def entries(ifname: str, tunnels: Mapping[str, str]) -> dict[str, Entry] | None:
    """The peers of a WireGuard device by node (`tunnels`: tunnel address → node); None when the
    device does not answer."""
    text = wireguard.dump(ifname)
    if text is None:
        return None
    device, stats = wireguard.parse_dump(text)
    out = {}
    for key, peer in device.peers.items():
        node = next((tunnels[a[:-3]] for a in peer.allowed_ips if a.endswith("/32") and a[:-3] in tunnels), key[:8])
        st = stats[key]
        out[node] = Entry(node, peer.allowed_ips, st.handshake, st.rx, st.tx)
    return out


def tunnel_nodes(plan: Plan) -> dict[str, str]:
    return {str(n.tunnel.address): n.name for n in plan.nodes if n.tunnel is not None}


def holders(found: Mapping[str, Entry], network: IPv4Network) -> list[str]:
    return sorted(e.node for e in found.values() if str(network) in e.allowed)


def via_routes(ipr: Any, networks: Mapping[str, str]) -> dict[str, str]:
    """Main-table routes of a namespace (an rtnetlink handle) to the networks of `networks` (network
    → site) that go via a gateway: network → the gateway's address."""
    out = {}
    for route in ipr.get_routes(family=2, table=254):
        dst = f"{route.get_attr('RTA_DST') or '0.0.0.0'}/{route['dst_len']}"
        gw = route.get_attr("RTA_GATEWAY")
        if dst in networks and gw:
            out[dst] = gw
    return out


def routes_of(namespace: str, networks: Mapping[str, str]) -> dict[str, str]:
    with netns.open_ns(namespace) as ipr:
        return via_routes(ipr, networks)


def until(predicate: Callable[[], Any], timeout: float, interval: float = POLL) -> Any:
    """`predicate()` once it is truthy, or its last falsy value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --- non-disruptive: the active gateway carries, the standbys are ready ---------------------------


@register(15)
def gateway_state(ctx: Context) -> list[Planned]:
    """Topology gateways: active-carries for every site, standby-ready for every standby."""
    if ctx.plan.topology is not Topology.GATEWAYS:
        return []
    skips = Skips(Kind.GATEWAY)
    active = planned_active(ctx)
    out = []
    for site in sites(ctx.plan):
        if site.name not in active:
            continue
        out.append(Planned(check_of("active-carries", site.name, site.name, active[site.name]), _carries(ctx, site)))
        standbys = [g for g in site.gateways if g != active[site.name]]
        if not standbys:
            skips.add("standby-ready: site with one gateway, no standby", site.name)
        elif not runs_agents(ctx):
            skips.add(
                "standby-ready: the lab runs no agents, nothing keeps a standby's handshakes (lab up --agents)",
                ", ".join(standbys),
            )
        else:
            out += [
                Planned(check_of("standby-ready", n, n, f"site {site.name}"), _ready(ctx, site, n)) for n in standbys
            ]
    return out + skips.planned()


def check_of(what: str, subject: str, source: str, target: str, port: str = "-") -> Check:
    return Check(
        name=f"gateway/{what}: {subject}",
        kind=Kind.GATEWAY,
        source=source,
        target=target,
        port=port,
        expected=Result.OK,
    )


def _carries(ctx: Context, site: Site) -> Callable[[Check], None]:
    flow = pick_flow(ctx, site)
    devices = {d.node: d.ifname for d in ctx.topo.wireguard}

    def run(c: Check) -> None:
        plan = ctx.plan
        active = active_now(ctx)
        gw = active[site.name]
        c.target = gw
        tunnels, problems = tunnel_nodes(plan), []
        found = entries(devices[gw], tunnels) if gw in devices else None
        if found is None:
            c.actual, c.detail = Result.TIMEOUT, f"{gw}'s WireGuard device does not answer"
            return
        remotes = {str(s.network): s.name for s in plan.sites if s.name != site.name}
        for net, other in sorted(remotes.items()):
            held, want = holders(found, IPv4Network(net)), active.get(other)
            if want is None or (plan.node(gw).natted and plan.node(want).natted):
                continue  # neither end can dial the other: the site is reached another way or not at all
            if held != [want]:
                problems.append(f"{net} (site {other}) on {', '.join(held) or 'no entry'}, not on {want}'s")
        address = str(plan.node(gw).address)
        for node in (n for n in site.nodes if n != gw):
            got = routes_of(ctx.topo.node_ns[node], remotes)
            wrong = sorted(net for net in remotes if got.get(net) != address)
            if wrong:
                shown = ", ".join(f"{n} via {got.get(n, 'nothing')}" for n in wrong)
                problems.append(f"{node} routes {shown}")
        moved = _flow_through(ctx, flow, gw, devices, active, found) if flow is not None and not problems else ""
        if moved.startswith("!"):
            problems.append(moved[1:])
        c.actual = Result.WRONG_ANSWER if problems else Result.OK
        held_text = f"{gw} holds {len(remotes)} remote site network(s) on their active gateways' entries"
        routed = f"{len(site.nodes) - 1} other node(s) of the site route them via {address}"
        c.detail = "; ".join(problems) if problems else f"{held_text}; {routed}; " + (moved or NO_FLOW)
        mine = [n for n in not_preferred(plan, active) if n.startswith(f"site {site.name} ")]
        if mine:
            c.detail += f" ({mine[0]}, as etcd names it)"

    return run


def _flow_through(
    ctx: Context, flow: Flow, gw: str, devices: Mapping[str, str], active: Mapping[str, str], before: dict[str, Entry]
) -> str:
    """The flow's echoes and what they moved on the gateway's entry for the remote active gateway;
    a text starting with "!" when they did not come back or did not go through it."""
    remote_gw = active[flow.remote_site]
    address = flow.address or str(ctx.plan.node(remote_gw).address)
    answered = sum(
        probes.udp_echo(flow.namespace, address, flow.port, size=flow.size, timeout=1.0)[0] is Result.OK
        for _ in range(FLOW_ECHOES)
    )
    after = entries(devices[gw], tunnel_nodes(ctx.plan)) or {}
    if not answered:
        return f"!{flow.label}: none of {FLOW_ECHOES} datagrams came back"
    b, a = before.get(remote_gw), after.get(remote_gw)
    if a is None or b is None:
        return f"!{gw} has no entry for {remote_gw}"
    rx, tx, least = a.rx - b.rx, a.tx - b.tx, answered * flow.size
    if rx < least or tx < least:
        return f"!{flow.label}: {answered} echoes, but {gw}'s entry for {remote_gw} moved only +{rx}/+{tx} bytes"
    return (
        f"{flow.label}: {answered}/{FLOW_ECHOES} echoed through it (its entry for {remote_gw}: +{rx} B in, +{tx} B out)"
    )


def _ready(ctx: Context, site: Site, node: str) -> Callable[[Check], None]:
    devices = {d.node: d.ifname for d in ctx.topo.wireguard}

    def run(c: Check) -> None:
        plan = ctx.plan
        active = active_now(ctx)
        if active[site.name] == node:
            c.actual, c.detail = Result.WRONG_ANSWER, f"etcd names {node} the active gateway of {site.name} now"
            return
        found = entries(devices[node], tunnel_nodes(plan)) if node in devices else None
        if found is None:
            c.actual, c.detail = Result.TIMEOUT, f"{node}'s WireGuard device does not answer"
            return
        now, problems, fresh = time.time(), [], []
        for other, gw in sorted(active.items()):
            if other == site.name:
                continue
            if plan.node(node).natted and plan.node(gw).natted:
                continue  # neither can dial the other
            entry = found.get(gw)
            if entry is None:
                problems.append(f"no entry for {gw} (active in {other})")
            elif not entry.handshake or now - entry.handshake > HANDSHAKE_FRESH:
                age = "never" if not entry.handshake else f"{now - entry.handshake:.0f} s ago"
                problems.append(f"handshake with {gw} (active in {other}): {age}")
            else:
                fresh.append(f"{gw} {now - entry.handshake:.0f} s ago")
        networks = {str(s.network) for s in plan.sites}
        carried = sorted(f"{a} on {e.node}'s entry" for e in found.values() for a in e.allowed if a in networks)
        if carried:
            problems.append(f"carries {', '.join(carried)}")
        c.actual = Result.WRONG_ANSWER if problems else Result.OK
        c.detail = "; ".join(problems) or (
            f"handshakes with the remote active gateways: {', '.join(fresh) or 'none it can dial'}; "
            "carries no site network"
        )

    return run
