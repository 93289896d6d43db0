"""The plan as JSON-ready data (`plan -o json`, the applied-plan snapshot) and its difference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crossmesh.model.durations import format_go
from crossmesh.model.plan import (
    Datapath,
    HubPlan,
    IngressPlan,
    IstioPlan,
    Mtu,
    NodePlan,
    Peer,
    Plan,
    Proposal,
    Route,
    SitePairPlan,
    VpnConnectionPlan,
    VxlanNeighbour,
)
from crossmesh.services.backends import backend_sets


def peer_json(p: Peer) -> dict[str, Any]:
    return {
        "node": p.node,
        "site": p.site,
        "publicKey": p.public_key,
        "endpoint": p.endpoint_text,
        "allowedIPs": [str(a) for a in p.allowed_ips],
        "persistentKeepalive": p.persistent_keepalive,
        "standby": p.standby,
    }


def route_json(r: Route) -> dict[str, Any]:
    return {"dst": str(r.dst), "via": r.via.value, "gateway": str(r.gateway) if r.gateway else None, "peer": r.peer}


def _shared(items: tuple[Any, ...], cache: dict[int, Any], convert: Callable[[Any], Any]) -> list[Any]:
    """`[convert(x) for x in items]`, converting each distinct object only once; a tuple that
    several nodes share (a full mesh's peers) gives them one shared list."""
    out: list[Any] | None = cache.get(id(items))
    if out is None:
        try:
            out = list(map(cache.__getitem__, map(id, items)))  # C-level: 12 million refs at 10,000 nodes
        except KeyError:
            for x in items:
                if id(x) not in cache:
                    cache[id(x)] = convert(x)
            out = list(map(cache.__getitem__, map(id, items)))
        cache[id(items)] = out
    return out


def _neighbour_json(v: VxlanNeighbour) -> dict[str, Any]:
    return {"node": v.node, "address": str(v.address), "podCIDR": str(v.pod_cidr), "mac": v.mac}


def _mtu_json(m: Mtu | None) -> dict[str, Any] | None:
    return None if m is None else {"value": m.value, "arithmetic": m.arithmetic}


def datapath_json(d: Datapath | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {
        "mode": d.mode,
        "encapsulation": f"{d.encapsulation} (UDP {d.port})",
        "underlayMTU": _mtu_json(d.underlay_mtu),
        "podMTU": _mtu_json(d.pod_mtu),
        "podCIDRsPinned": d.pod_cidrs_pinned,
        "pairs": [
            {
                "class": k.name,
                "connected": k.connected,
                "path": k.path,
                "encapsulation": k.encapsulation,
                "encryption": k.encryption,
                "mtu": _mtu_json(k.mtu),
                "note": k.why,
            }
            for k in d.classes
        ],
    }


def node_json(n: NodePlan, cache: dict[int, Any] | None = None) -> dict[str, Any]:
    cache = {} if cache is None else cache
    return {
        "name": n.name,
        "cluster": n.cluster,
        "site": n.site,
        "address": str(n.address),
        "publicAddress": str(n.public_address) if n.public_address else None,
        "gateway": n.gateway,
        "podCIDR": str(n.pod_cidr),
        "podMTU": {"value": n.pod_mtu.value, "arithmetic": n.pod_mtu.arithmetic},
        "tunnel": None
        if n.tunnel is None
        else {
            "interface": n.tunnel.interface,
            "address": str(n.tunnel.address),
            "listenPort": n.tunnel.listen_port,
            "mtu": {"value": n.tunnel.mtu.value, "arithmetic": n.tunnel.mtu.arithmetic},
            "peers": _shared(n.tunnel.peers, cache, peer_json),
        },
        "vxlan": None
        if n.vxlan is None
        else {
            "vni": n.vxlan.vni,
            "port": n.vxlan.port,
            "mtu": {"value": n.vxlan.mtu.value, "arithmetic": n.vxlan.mtu.arithmetic},
            "mac": n.vxlan.local_mac,
            "overlay": n.vxlan.overlay,  # its neighbours: the plan's "overlays" (each listed once)
        },
        "routes": _shared(n.routes, cache, route_json),
    }


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as JSON data. Nodes share `Peer`, `Route` and `VxlanNeighbour` objects (a full
    mesh of n nodes holds O(n) of them behind O(n²) references), and so they share the dicts made
    of them: each is converted once and the data stays O(n) dicts. Treat the result as read-only."""
    cache: dict[int, Any] = {}
    return {
        "mesh": plan.mesh,
        "topology": plan.topology,
        "trustDomain": plan.trust_domain,
        "sites": [
            {"name": s.name, "provider": s.provider, "region": s.region, "network": str(s.network), "mtu": s.mtu}
            for s in plan.sites
        ],
        "clusters": [
            {
                "name": c.name,
                "id": c.id,
                "distribution": c.distribution,
                "cni": c.cni,
                "podCIDR": str(c.pod_cidr),
                "serviceCIDR": str(c.service_cidr),
                "datapath": datapath_json(c.datapath),
                "nodes": list(c.nodes),
                "pods": [
                    {
                        "ref": p.ref,
                        "node": p.node,
                        "address": str(p.address),
                        "labels": dict(p.labels),
                        "ports": [f"{port}/{proto}" for port, proto, _ in p.ports],
                    }
                    for p in c.pods
                ],
                "services": [
                    {
                        "ref": s.ref,
                        "type": s.type,
                        "clusterIP": None if s.cluster_ip is None else str(s.cluster_ip),
                        "headless": s.headless,
                        "nodePorts": {f"{port}/{proto}": node_port for port, proto, node_port in s.node_ports},
                        "ports": [f"{port}/{proto}" for port, proto, _, _ in s.ports],
                        "backends": list(s.backends),
                        "global": s.is_global,
                        "shared": s.shared,
                        "affinity": s.affinity,
                        "backendSets": [
                            {
                                "port": f"{bs.port}/{bs.protocol}",
                                "tiers": [[f"{b.pod}@{b.address}:{b.port}" for b in tier] for tier in bs.tiers],
                            }
                            for bs in backend_sets(plan, s)
                        ],
                    }
                    for s in c.services
                ],
            }
            for c in plan.clusters
        ],
        "overlays": {
            n.vxlan.overlay: [_neighbour_json(v) for v in n.vxlan.neighbours]
            for n in _first_of_each_overlay(plan)
            if n.vxlan is not None
        },
        "nodes": [node_json(n, cache) for n in plan.nodes],
        **({} if plan.istio is None else {"istio": istio_json(plan.istio)}),  # absent: no service mesh
        **({} if not plan.ingress else {"ingress": [ingress_json(g) for g in plan.ingress]}),  # absent: none
        # absent: no hubs (a mesh without them gives exactly the JSON it gave before)
        **({} if not plan.site_pairs else {"sitePairs": [site_pair_json(p) for p in plan.site_pairs]}),
        **({} if not plan.hubs else {"hubs": [hub_json(h) for h in plan.hubs]}),
        **({} if not plan.vpn else {"vpnConnections": [vpn_json(c) for c in plan.vpn]}),
    }


def site_pair_json(p: SitePairPlan) -> dict[str, Any]:
    return {
        "sites": list(p.sites),
        "transport": p.transport.value,
        "hub": p.hub,
        "connections": list(p.connections),
        "path": p.path,
        "mtu": _mtu_json(p.mtu),
        "podMTU": _mtu_json(p.pod_mtu),
    }


def hub_json(h: HubPlan) -> dict[str, Any]:
    return {
        "name": h.name,
        "site": h.site,
        "amazonSideASN": h.amazon_asn,
        "attachments": [
            {"name": a.name, "kind": a.kind, "prefixes": [str(x) for x in a.prefixes]} for a in h.attachments
        ],
        "routeTables": [
            {
                "name": t.name,
                "associations": list(t.associations),
                "propagations": list(t.propagations),
                "routes": [
                    {"destination": str(r.destination), "attachment": r.attachment, "propagated": r.propagated}
                    for r in t.routes
                ],
            }
            for t in h.route_tables
        ],
    }


def _proposal_json(p: Proposal) -> dict[str, Any]:
    return {
        "encryption": list(p.encryption),
        "integrity": list(p.integrity),
        "dhGroups": list(p.dh_groups),
        "lifetimeSeconds": p.lifetime_seconds,
    }


def vpn_json(c: VpnConnectionPlan) -> dict[str, Any]:
    """A connection as planned. `preSharedKey` is where the key is kept, never the key."""
    return {
        "name": c.name,
        "hub": c.hub,
        "site": c.site,
        "customerGateway": {"asn": c.customer_asn, "publicAddress": str(c.customer_address)},
        "routing": c.routing,
        "customerPrefixes": [str(x) for x in c.customer_prefixes],
        "hubPrefixes": [str(x) for x in c.hub_prefixes],
        "tunnels": [
            {
                "index": t.index,
                "insideCIDR": str(t.inside_cidr),
                "hubAddress": str(t.hub_address),
                "customerAddress": str(t.customer_address),
                "ikeVersion": t.ike_version,
                "phase1": _proposal_json(t.phase1),
                "phase2": _proposal_json(t.phase2),
                "preSharedKey": t.psk,
                "mtu": _mtu_json(t.mtu),
                "standby": t.standby,
            }
            for t in c.tunnels
        ],
    }


def ingress_json(g: IngressPlan) -> dict[str, Any]:
    return {
        "gateway": g.ref,
        "service": f"{g.namespace}/{g.service}",
        "nodes": list(g.nodes),
        "pods": list(g.pods),
        "listeners": [
            {
                "name": li.name,
                "port": li.port,
                "protocol": li.protocol,
                "hostname": li.hostname,
                "nodePort": li.node_port,
            }
            for li in g.listeners
        ],
    }


def istio_json(istio: IstioPlan) -> dict[str, Any]:
    return {"trustDomain": istio.trust_domain, "meshID": istio.mesh_id, "certTTL": format_go(istio.cert_ttl)}


def _first_of_each_overlay(plan: Plan) -> list[NodePlan]:
    seen: dict[str, NodePlan] = {}
    for n in plan.nodes:
        if n.vxlan is not None and n.vxlan.overlay not in seen:
            seen[n.vxlan.overlay] = n
    return list(seen.values())


def overlay_routes(data: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    """The VXLAN routes of a node of `plan_json`: every other node of its overlay."""
    vxlan = node.get("vxlan")
    if not vxlan:
        return []
    return [
        {"dst": v["podCIDR"], "via": "vxlan", "gateway": v["podCIDR"].split("/")[0], "peer": v["node"]}
        for v in data.get("overlays", {}).get(vxlan.get("overlay", ""), [])
        if v["node"] != node["name"]
    ]


_NO_PEERS: list[dict[str, Any]] = []  # one object, so that its id is a stable memo key


def _peer_change(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    peers_b = {p["node"]: p for p in before}
    peers_a = {p["node"]: p for p in after}
    return {
        "peersAdded": sorted(set(peers_a) - set(peers_b)),
        "peersRemoved": sorted(set(peers_b) - set(peers_a)),
        "peersChanged": sorted(
            {
                k: [f for f in peers_a[k] if peers_a[k][f] != peers_b[k].get(f)]
                for k in set(peers_a) & set(peers_b)
                if peers_a[k] != peers_b[k]
            }.items()
        ),
    }


def _overlay_change(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Pod CIDRs (VXLAN routes) added, removed or changed (another node or address) in an overlay."""
    b = {v["podCIDR"]: v for v in before}
    a = {v["podCIDR"]: v for v in after}
    return {
        "added": set(a) - set(b),
        "removed": set(b) - set(a),
        "changed": {k for k in set(a) & set(b) if a[k] != b[k]},
    }


def diff(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """Peers and routes added, removed or changed per node since the last applied plan. A node that was
    not there is listed in `nodesAdded` only: every peer and route of it is new."""
    prev_nodes = {n["name"]: n for n in (previous or {}).get("nodes", [])}
    cur_nodes = {n["name"]: n for n in current.get("nodes", [])}
    out: dict[str, Any] = {
        "nodesAdded": sorted(set(cur_nodes) - set(prev_nodes)),
        "nodesRemoved": sorted(set(prev_nodes) - set(cur_nodes)),
        "nodes": {},
    }
    # Nodes of a full mesh share their peer lists (see plan_json): compare each pair of lists once.
    peer_changes: dict[tuple[int, int], dict[str, Any]] = {}
    # A node's VXLAN routes are its overlay's members: compare each overlay once, each node then
    # takes its overlay's change (less its own entry, which an existing node keeps).
    overlays_b, overlays_a = (previous or {}).get("overlays", {}), current.get("overlays", {})
    overlay_changes = {
        name: _overlay_change(overlays_b.get(name, []), overlays_a.get(name, []))
        for name in set(overlays_b) | set(overlays_a)
    }
    for name in sorted(cur_nodes):
        before, after = prev_nodes.get(name), cur_nodes[name]
        if before is None:
            continue  # an added node is in nodesAdded (all its peers and routes are new)
        ov_b = (before.get("vxlan") or {}).get("overlay")
        ov_a = (after.get("vxlan") or {}).get("overlay")
        if ov_b == ov_a:
            overlay = overlay_changes[ov_a] if ov_a else _overlay_change([], [])
        else:  # the node moved to another overlay, or gained or lost its VXLAN
            overlay = _overlay_change(overlays_b.get(ov_b or "", []), overlays_a.get(ov_a or "", []))
        if before == after and not any(overlay.values()):
            continue
        list_b = ((before or {}).get("tunnel") or {}).get("peers", _NO_PEERS)
        list_a = (after.get("tunnel") or {}).get("peers", _NO_PEERS)
        peers = peer_changes.get((id(list_b), id(list_a)))
        if peers is None:
            peers = peer_changes[id(list_b), id(list_a)] = _peer_change(list_b, list_a)
        routes_b = {r["dst"]: r for r in (before or {}).get("routes", [])}
        routes_a = {r["dst"]: r for r in after.get("routes", [])}
        own = {before.get("podCIDR"), after.get("podCIDR")}
        change = {
            **peers,
            "routesAdded": sorted((set(routes_a) - set(routes_b)) | (overlay["added"] - own)),
            "routesRemoved": sorted((set(routes_b) - set(routes_a)) | (overlay["removed"] - own)),
            "routesChanged": sorted(
                {k for k in set(routes_a) & set(routes_b) if routes_a[k] != routes_b[k]} | (overlay["changed"] - own)
            ),
        }
        if any(change.values()):
            out["nodes"][name] = {k: (dict(v) if k == "peersChanged" else v) for k, v in change.items()}
    for name in out["nodesRemoved"]:
        out["nodes"][name] = {"removed": True}
    out["empty"] = not (out["nodesAdded"] or out["nodesRemoved"] or out["nodes"])
    return out
