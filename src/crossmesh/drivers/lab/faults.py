"""Faults staged on the lab's network: a site cut off from the internet router, and healed.

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

The pure part (`uplink`, `without_uplinks`) reads the lab topology; the rest changes links.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from crossmesh.drivers.lab import netns, reconcile, wireguard
from crossmesh.drivers.lab.desired import topology_of
from crossmesh.drivers.lab.state import LabState
from crossmesh.drivers.lab.topology import LabTopology, Namespace
from crossmesh.errors import UsageError

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
