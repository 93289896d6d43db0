"""Faults staged on the lab's network: a site cut off from the internet router, and healed;
a node that stops forwarding, or whose own path to the internet is cut at its site router.

A cloud region that loses its uplink keeps running: its nodes, their agents and their
tunnel devices stay; only the packets stop. The lab stages that by setting both ends of
the veth between the internet namespace and the site's router down — what the kernel
sees when a link fails: every route through it goes with it (the router's default route,
the internet's routes to the site's public addresses). Nothing else is touched, so what
recovers afterwards is what recovers on its own (WireGuard sessions, agents, services).

Healing sets the links up and brings exactly those two namespaces back to their specs
with the reconcile `lab up` uses, which puts back the routes the kernel removed; the
internet namespace's spec is first stripped of the uplinks of sites still cut, so that
healing one site does not half-heal another. A full `lab up` brings every namespace back
to the plan, cut uplinks included.

A broken gateway is staged on one node (`stop_forwarding`, `cut_uplink`, `heal_node`): it
stays alive — agent, WireGuard device, addresses — but either its namespace stops forwarding
IPv4 (net.ipv4.ip_forward=0 there and nowhere else), or its site router drops what the node
exchanges with the internet, in a table of its own (FAULTS_TABLE) that neither the router's
table nor `lab up`'s reconcile touches; the node stays reachable on its site network. A plain
`lab up` heals both (the node's sysctls are in its spec; it removes every router's FAULTS_TABLE);
a changed-only `up` (membership changes) keeps them.

The pure part (`uplink`, `without_uplinks`, `uplink_cut_table`, `holding_faults`) reads the lab
topology; the rest changes links, sysctls and tables.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from crossmesh import nft
from crossmesh.drivers.lab import netns, reconcile, wireguard
from crossmesh.drivers.lab.desired import compiled_of, topology_of
from crossmesh.drivers.lab.spec import Namespace
from crossmesh.drivers.lab.state import LabState
from crossmesh.drivers.lab.topology import FORWARD_SYSCTLS, LabTopology
from crossmesh.errors import UsageError
from crossmesh.model.plan import Plan

IFF_UP = 1


@dataclass(frozen=True, slots=True)
class Uplink:
    """The veth pair between the internet and one site's router."""

    site: str
    inet_ns: str
    inet_if: str
    router_ns: str
    wan_if: str


def uplink_of(state: LabState, site: str) -> Uplink:
    """The uplink of `site` from the lab's recorded names (no plan needed: a cut is instant)."""
    if site not in state.sites:
        known = ", ".join(sorted(state.sites)) or "none"
        raise UsageError(f"no site {site} in lab {state.mesh_name} — its sites are: {known}")
    k = state.indices.get("site", {}).get(site)
    if k is None:
        raise UsageError(f"lab {state.mesh_name} has no device number for site {site}: run `crossmesh lab up` first")
    prefix = f"cm-{state.tag}"
    return Uplink(site, state.inet, f"{prefix}-i{k}", state.sites[site], f"{prefix}-w{k}")


def uplink(topo: LabTopology, site: str) -> Uplink:
    """The uplink of `site` as the topology plans it: the internet's veth whose peer is in the router."""
    router = topo.site_ns[site]
    inet = topo.namespace(f"{topo.prefix}-inet")
    link = next(link for link in inet.links if link.kind == "veth" and link.peer_ns == router)
    assert link.peer is not None  # noqa: S101 - a veth of the topology has a peer
    return Uplink(site, inet.name, link.ifname, router, link.peer)


def without_uplinks(inet: Namespace, ifnames: frozenset[str]) -> Namespace:
    """The internet namespace's spec without the links (and their addresses and routes) in
    `ifnames`: reconciling it leaves those links as they are — down, for cut sites."""
    return dataclasses.replace(
        inet,
        links=tuple(link for link in inet.links if link.ifname not in ifnames),
        addresses=tuple(a for a in inet.addresses if a[0] not in ifnames),
        routes=tuple(r for r in inet.routes if r.dev not in ifnames),
    )


def _set_state(namespace: str, ifname: str, state: str) -> bool:
    """Set a link up or down; True when it changed."""
    with netns.open_ns(namespace) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise UsageError(f"link {ifname} is missing in namespace {namespace}: run `crossmesh lab up` first")
        up = bool(ipr.get_links(found[0])[0]["flags"] & IFF_UP)
        if up == (state == "up"):
            return False
        ipr.link("set", index=found[0], state=state)
        return True


def link_up(namespace: str, ifname: str) -> bool | None:
    """Whether a link is administratively up; None when it (or its namespace) is missing."""
    if not netns.exists(namespace):
        return None
    with netns.open_ns(namespace) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        return bool(ipr.get_links(found[0])[0]["flags"] & IFF_UP) if found else None


def uplink_state(state: LabState, site: str) -> str:
    """`up`, `down` (both ends), `half` (one end down: still no carrier) or `missing`."""
    u = uplink_of(state, site)
    ends = (link_up(u.inet_ns, u.inet_if), link_up(u.router_ns, u.wan_if))
    if None in ends:
        return "missing"
    return "up" if all(ends) else "down" if not any(ends) else "half"


def cut_site(state: LabState, site: str) -> list[str]:
    """Cut `site` off from the internet router: both ends of its uplink down. Its nodes keep
    running and reach nothing outside the site until `heal_site` (or `lab up`)."""
    u = uplink_of(state, site)
    changes = [
        f"{ns}: link {ifname} down"
        for ns, ifname in ((u.router_ns, u.wan_if), (u.inet_ns, u.inet_if))
        if _set_state(ns, ifname, "down")
    ]
    if site not in state.cut_sites:
        state.cut_sites = sorted({*state.cut_sites, site})
        state.save()
    return changes


def heal_site(state: LabState, site: str) -> list[str]:
    """Bring the uplink of `site` back: links up, and the router's and the internet's routes
    that went with them, by reconciling those two namespaces to their specs."""
    uplink_of(state, site)  # an unknown site fails before the mesh is compiled
    compiled, topo = topology_of(state)
    u = uplink(topo, site)
    still_cut = frozenset(uplink(topo, s).inet_if for s in state.cut_sites if s != site and s in topo.site_ns)
    wg_names = tuple(d.ifname for d in topo.wireguard)
    # The router first: its end up, the internet's end still down, no packet moves yet; the
    # internet's end comes up with its routes at once, and both directions work together.
    changes = reconcile.reconcile(topo.namespace(u.router_ns), wireguard_ifnames=wg_names)
    changes += reconcile.reconcile(without_uplinks(topo.namespace(u.inet_ns), still_cut), wireguard_ifnames=wg_names)
    if changes:
        # A session that outlived REJECT_AFTER_TIME (180 s) needs a handshake before data moves,
        # and the other end, which kept sending, may initiate only every REKEY_TIMEOUT (5 s).
        # One datagram from each node of the site to each peer starts the handshake at once
        # from this end, which sent nothing while cut; a live session just carries it.
        for dev in topo.wireguard:
            node = compiled.plan.node(dev.node)
            if node.site == site and node.tunnel is not None:
                wireguard.poke(dev.namespace, [str(p.allowed_ips[0].network_address) for p in node.tunnel.peers])
                changes.append(f"{dev.namespace}: {dev.node} sent a datagram to each of its peers")
    if site in state.cut_sites:
        state.cut_sites = [s for s in state.cut_sites if s != site]
        state.save()
    return changes


# --- a broken gateway: one node alive but not forwarding, or cut off at its site router -------

FAULTS_TABLE = "crossmesh_faults"  # beside the router's own `crossmesh` table (nft names have no hyphen)
IP_FORWARD = "net/ipv4/ip_forward"
FORWARDING = dict(FORWARD_SYSCTLS)[IP_FORWARD]  # what every node's spec says: "1"
STOPPED = "0"
# Before the router's own forward chain (priority 0), which may drop the packet first and hide it
# from these counters.
FIRST_FORWARD = nft.Base(nft.ChainType.FILTER, nft.Hook.FORWARD, -10)
_CUT_RULE = re.compile(r'comment "cut-uplink (\S+): to the internet"')


def node_namespace(state: LabState, node: str) -> str:
    """The namespace of `node`; UsageError naming the lab's nodes when it has no such node."""
    ns = state.nodes.get(node)
    if ns is None:
        known = ", ".join(sorted(state.nodes)) or "none"
        raise UsageError(f"no node {node} in lab {state.mesh_name} — its nodes are: {known}")
    if not netns.exists(ns):
        raise UsageError(f"namespace {ns} of node {node} is missing: run `crossmesh lab up` first")
    return ns


@dataclass(frozen=True, slots=True)
class CutNode:
    """A node cut off at its site router: its address on the site network and its public one
    (None: it reaches the internet through the router's source NAT)."""

    node: str
    address: IPv4Address
    public_address: IPv4Address | None


def uplink_cut_table(wan_if: str, cut: Sequence[CutNode]) -> nft.Table | None:
    """A site router's FAULTS_TABLE: it drops what comes from the internet for each node in `cut`
    and what the node sends to the internet; None when no node of the site is cut.

    Both rules match the node's own address in the forward hook, after the router's NAT rewrote
    the destination (DNAT of the node's public address, or the reverse of its source NAT for the
    answers to a node behind NAT) and before it rewrites the source (SNAT in postrouting): one
    pair of rules serves a node with a public address and one without."""
    if not cut:
        return None
    f = nft.Field
    from_wan, to_wan = nft.Match(f.IIFNAME, wan_if), nft.Match(f.OIFNAME, wan_if)
    rules: list[nft.Rule] = []
    for c in cut:
        inbound = f"to {c.public_address}" if c.public_address is not None else "through the site's NAT"
        rules += [
            nft.Rule(
                (from_wan, nft.Match(f.IP_DADDR, c.address), nft.Counter(), nft.Verdict.DROP),
                f"cut-uplink {c.node}: from the internet {inbound}",
            ),
            nft.Rule(
                (to_wan, nft.Match(f.IP_SADDR, c.address), nft.Counter(), nft.Verdict.DROP),
                f"cut-uplink {c.node}: to the internet",
            ),
        ]
    return nft.Table(FAULTS_TABLE, (nft.Chain("forward", tuple(rules), FIRST_FORWARD),))


def holding_faults(state: LabState, spec: Namespace) -> Namespace:
    """`spec` as a changed-only `lab up` brings it: a node stopped with `lab stop-forwarding` keeps
    ip_forward=0 (never on for a moment). A plain `up` reconciles the spec itself, which heals it."""
    if spec.role != "node" or spec.owner not in state.stopped_forwarding:
        return spec
    sysctls = tuple((k, STOPPED if k == IP_FORWARD else v) for k, v in spec.sysctls)
    return dataclasses.replace(spec, sysctls=sysctls)


def forwarding(state: LabState, node: str) -> bool | None:
    """Whether the node's namespace forwards IPv4, as the kernel has it; None without the namespace."""
    ns = state.nodes.get(node)
    if ns is None or not netns.exists(ns):
        return None
    return netns.read_sysctl(ns, IP_FORWARD) != STOPPED


def uplink_cuts(state: LabState) -> dict[str, list[str]]:
    """Site → the nodes whose uplink its router cuts, read from the routers' FAULTS_TABLE."""
    out = {}
    for site, ns in sorted(state.sites.items()):
        listed = reconcile.list_table(ns, FAULTS_TABLE) if netns.exists(ns) else None
        if listed:
            out[site] = sorted(_CUT_RULE.findall(listed))
    return out


def stop_forwarding(state: LabState, node: str) -> list[str]:
    """The node's namespace stops forwarding IPv4; its agent, device and addresses stay."""
    ns = node_namespace(state, node)
    changes = []
    if netns.read_sysctl(ns, IP_FORWARD) != STOPPED:
        netns.write_sysctl(ns, IP_FORWARD, STOPPED)
        changes.append(f"{ns}: sysctl net.ipv4.ip_forward={STOPPED}: {node} no longer forwards")
    if node not in state.stopped_forwarding:
        state.stopped_forwarding = sorted({*state.stopped_forwarding, node})
        state.save()
    return changes


def cut_uplink(state: LabState, node: str) -> list[str]:
    """The node's site router drops what the node exchanges with the internet; the node stays on
    its site network."""
    node_namespace(state, node)  # an unknown node fails before the mesh is compiled
    plan = compiled_of(state).plan
    site = plan.node(node).site
    changes = []
    if _apply_site_cuts(state, plan, site, {*state.cut_uplinks, node}):
        changes.append(
            f"{state.sites[site]}: the router of site {site} drops {node}'s traffic to and from the internet "
            f"(nftables table {FAULTS_TABLE})"
        )
    if node not in state.cut_uplinks:
        state.cut_uplinks = sorted({*state.cut_uplinks, node})
        state.save()
    return changes


def heal_node(state: LabState, node: str) -> list[str]:
    """Undo `stop_forwarding` and `cut_uplink` for `node`: it forwards again, and its site router
    passes its traffic (a node with a tunnel then sends a datagram to each peer, so that a session
    that expired during the cut starts its handshake at once)."""
    ns = node_namespace(state, node)
    changes = []
    if netns.read_sysctl(ns, IP_FORWARD) != FORWARDING:
        netns.write_sysctl(ns, IP_FORWARD, FORWARDING)
        changes.append(f"{ns}: sysctl net.ipv4.ip_forward={FORWARDING}: {node} forwards again")
    if node in state.cut_uplinks or any(node in cut for cut in uplink_cuts(state).values()):
        plan = compiled_of(state).plan
        n = plan.node(node)
        if _apply_site_cuts(state, plan, n.site, set(state.cut_uplinks) - {node}):
            changes.append(f"{state.sites[n.site]}: the router of site {n.site} passes {node}'s traffic again")
            if n.tunnel is not None:
                wireguard.poke(ns, [str(p.allowed_ips[0].network_address) for p in n.tunnel.peers])
                changes.append(f"{ns}: {node} sent a datagram to each of its peers")
    if node in state.stopped_forwarding or node in state.cut_uplinks:
        state.stopped_forwarding = [n for n in state.stopped_forwarding if n != node]
        state.cut_uplinks = [n for n in state.cut_uplinks if n != node]
        state.save()
    return changes


def keep_uplink_cuts(state: LabState, plan: Plan) -> list[str]:
    """After a changed-only `lab up`: nodes that left the lab leave the record, and every router's
    FAULTS_TABLE is what the record says (a removed node's address could be a new node's)."""
    present = {n.name for n in plan.nodes}
    state.stopped_forwarding = [n for n in state.stopped_forwarding if n in present]
    if not state.cut_uplinks:
        return []
    state.cut_uplinks = [n for n in state.cut_uplinks if n in present]
    return [
        f"{state.sites[s]}: nftables table {FAULTS_TABLE} of site {s}'s router kept to the cut uplinks"
        for s in sorted(state.sites)
        if _apply_site_cuts(state, plan, s, state.cut_uplinks)
    ]


def clear_uplink_cuts(state: LabState) -> list[str]:
    """No router keeps a FAULTS_TABLE (a plain `lab up`: the lab back to the plan)."""
    return [
        f"{ns}: nftables table {FAULTS_TABLE} removed: uplinks cut with `lab cut-uplink` restored"
        for ns in sorted(state.sites.values())
        if netns.exists(ns) and reconcile.remove_table(ns, FAULTS_TABLE)
    ]


def _apply_site_cuts(state: LabState, plan: Plan, site: str, nodes: Collection[str]) -> bool:
    """Bring the FAULTS_TABLE of `site`'s router to cutting exactly those of `nodes` that are in the
    site; True when it changed."""
    u = uplink_of(state, site)
    cut = [CutNode(n.name, n.address, n.public_address) for n in plan.nodes if n.site == site and n.name in nodes]
    table = uplink_cut_table(u.wan_if, cut)
    if table is None:
        return reconcile.remove_table(u.router_ns, FAULTS_TABLE)
    return reconcile.apply_table(u.router_ns, table) is not None
