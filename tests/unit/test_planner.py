"""The planner (src/crossmesh/plan/planner.py): peers, endpoints, keepalives, allowed IPs,
gateways, MTU arithmetic, VXLAN neighbours, and the difference between two plans.

Meshes are written as a user would write them and go through the validator and the
allocator first, so every plan here is one `crossmesh plan` could show.
"""

from __future__ import annotations

import copy
from ipaddress import IPv4Address, IPv4Network, collapse_addresses
from typing import Any

import pytest

from crossmesh.ipam.allocate import Allocations, allocate
from crossmesh.load.yamlpos import Document
from crossmesh.model.mesh import Mesh
from crossmesh.model.plan import NodePlan, Plan, RouteVia
from crossmesh.plan import serialize
from crossmesh.plan.planner import build_plan
from crossmesh.validate import rules

PORT = 51999


def mesh_data(sites: list[dict[str, Any]], clusters: list[dict[str, Any]], **wireguard: Any) -> dict[str, Any]:
    return {
        "apiVersion": "crossmesh.io/v1alpha1",
        "kind": "Mesh",
        "metadata": {"name": "test"},
        "spec": {
            "wireguard": {"listenPort": PORT, "persistentKeepalive": 25, **wireguard},
            "sites": sites,
            "clusters": clusters,
        },
    }


def site(name: str, net: str, mtu: int = 1500) -> dict[str, Any]:
    return {"name": name, "provider": "baremetal", "network": net, "mtu": mtu}


def node(name: str, site: str, address: str, public: str | None = None, *, gateway: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "site": site, "address": address}
    if public:
        out["publicAddress"] = public
    if gateway:
        out["gateway"] = True
    return out


def plan_of(data: dict[str, Any], previous: Allocations | None = None) -> tuple[Plan, Allocations]:
    mesh = Mesh.model_validate(data)
    problems = rules.check(mesh, Document("mesh.yaml", data))
    assert problems == [], [str(p) for p in problems]
    alloc, alloc_problems = allocate(mesh, previous or Allocations())
    assert alloc_problems == []
    keys = {n.name: f"pub-{n.name}" for c in mesh.spec.clusters for n in c.nodes}
    return build_plan(mesh, alloc, keys), alloc


def host(addr: IPv4Address | str) -> IPv4Network:
    return IPv4Network(f"{addr}/32")


# east: one cluster, two public nodes; west: a public and a NATed node of cluster "two",
# whose third node is in gcp (smaller MTU); "three" shares the east site with "one".
FULL = mesh_data(
    [site("east", "10.1.0.0/16"), site("west", "10.2.0.0/16"), site("gcp", "10.3.0.0/16", mtu=1460)],
    [
        {
            "name": "one",
            "nodes": [
                node("e1", "east", "10.1.0.11", "203.0.113.1"),
                node("e2", "east", "10.1.0.12", "203.0.113.2"),
            ],
        },
        {
            "name": "two",
            "nodes": [
                node("w1", "west", "10.2.0.11", "198.51.100.1"),
                node("w2", "west", "10.2.0.12"),
                node("g1", "gcp", "10.3.0.11", "192.0.2.1"),
            ],
        },
        {"name": "three", "cni": "flannel", "nodes": [node("e3", "east", "10.1.0.13", "203.0.113.3")]},
    ],
)


@pytest.fixture(scope="module")
def full() -> Plan:
    return plan_of(FULL)[0]


def peers_of(n: NodePlan) -> dict[str, Any]:
    assert n.tunnel is not None, f"{n.name} has no tunnel"
    return {p.node: p for p in n.tunnel.peers}


# --- full mesh ------------------------------------------------------------------------------


def test_full_mesh_peers_every_node_of_every_other_site_and_none_of_its_own(full: Plan) -> None:
    for n in full.nodes:
        expected = {o.name for o in full.nodes if o.site != n.site}
        assert set(peers_of(n)) == expected, n.name
        assert n.tunnel is not None and n.tunnel.listen_port == PORT


def test_endpoint_is_the_public_address_and_none_behind_nat(full: Plan) -> None:
    for n in full.nodes:
        for name, p in peers_of(n).items():
            other = full.node(name)
            if other.public_address is None:
                assert p.endpoint is None and p.endpoint_text is None
            else:
                assert p.endpoint == (other.public_address, PORT)
                assert p.endpoint_text == f"{other.public_address}:{PORT}"


def test_persistent_keepalive_only_on_the_natted_side(full: Plan) -> None:
    w2 = peers_of(full.node("w2"))
    assert w2 and all(p.persistent_keepalive == 25 for p in w2.values())
    for n in full.nodes:
        if n.name != "w2":
            assert all(p.persistent_keepalive == 0 for p in peers_of(n).values()), n.name


def test_allowed_ips_are_tunnel_address_and_node_address_never_a_pod_cidr(full: Plan) -> None:
    """Pods travel in the CNI's VXLAN between node addresses: WireGuard never routes a pod CIDR, so
    the node pod CIDRs a real cluster allocates need not agree with the plan's."""
    for n in full.nodes:
        for name, p in peers_of(n).items():
            other = full.node(name)
            assert other.tunnel is not None
            assert p.allowed_ips == (host(other.tunnel.address), host(other.address))


def test_each_allowed_ip_is_routed_into_the_tunnel_towards_its_peer(full: Plan) -> None:
    for n in full.nodes:
        wg_routes = {(r.dst, r.peer) for r in n.routes if r.via is RouteVia.WIREGUARD}
        expected = {(a, p.node) for p in (n.tunnel.peers if n.tunnel else ()) for a in p.allowed_ips}
        assert wg_routes == expected, n.name


def test_no_prefix_is_given_to_two_peers_of_one_device(full: Plan) -> None:
    for n in full.nodes:
        nets = [a for p in peers_of(n).values() for a in p.allowed_ips]
        for i, a in enumerate(nets):
            assert not any(a.overlaps(b) for b in nets[i + 1 :]), f"{n.name}: {a} given twice"


def test_tunnel_addresses_are_distinct(full: Plan) -> None:
    addrs = [n.tunnel.address for n in full.nodes if n.tunnel]
    assert len(addrs) == len(set(addrs)) == len(full.nodes)


def test_no_tunnel_when_every_node_is_in_one_site() -> None:
    plan, _ = plan_of(
        mesh_data(
            [site("dc", "10.1.0.0/16", mtu=9000)],
            [{"name": "one", "nodes": [node("a", "dc", "10.1.0.1"), node("b", "dc", "10.1.0.2")]}],
        )
    )
    a = plan.node("a")
    assert a.tunnel is None
    assert a.vxlan is not None and a.vxlan.mtu.value == 9000 - 50
    assert a.pod_mtu.value == 8950


# --- the overlay: VXLAN between node addresses -------------------------------------------------


def test_a_cilium_node_has_every_other_cilium_node_of_the_mesh_as_vxlan_neighbour(full: Plan) -> None:
    """Cluster Mesh: Cilium tunnels to the other cluster's node too; Flannel has no multi-cluster."""
    cilium = {n.name for n in full.nodes if full.cluster(n.cluster).cni == "cilium"}
    for name in cilium:
        n = full.node(name)
        assert n.vxlan is not None and not n.vxlan.bound
        # One list per overlay, shared by its nodes (each skips its own entry): O(n), not O(n²).
        assert {v.node for v in n.vxlan.neighbours} == cilium, name
        assert n.vxlan.neighbours is full.node("e1").vxlan.neighbours  # type: ignore[union-attr]
        assert {r.peer for r in n.overlay_routes()} == cilium - {name}, name
        for v in n.vxlan.neighbours:
            other = full.node(v.node)
            assert (v.address, v.pod_cidr) == (other.address, other.pod_cidr)
    e1 = full.node("e1")
    assert e1.vxlan is not None and (e1.vxlan.vni, e1.vxlan.port) == (1, 8472)
    assert full.node("e3").vxlan is None  # Flannel, alone in its cluster


def test_a_pod_cidr_is_routed_into_vxlan_and_the_remote_vtep_into_the_tunnel(full: Plan) -> None:
    e1, w1, e3 = full.node("e1"), full.node("w1"), full.node("e3")
    vx = {r.dst: r for r in e1.all_routes() if r.via is RouteVia.VXLAN}
    assert vx[w1.pod_cidr].peer == "w1" and vx[w1.pod_cidr].gateway == w1.pod_cidr.network_address
    wg = {r.dst: r.peer for r in e1.routes if r.via is RouteVia.WIREGUARD}
    assert wg[host(w1.address)] == "w1"  # the outer VXLAN packet to w1 goes through WireGuard
    assert not any(e3.pod_cidr.overlaps(r.dst) for r in e1.all_routes()), "Flannel's pods are not in the Cluster Mesh"
    assert not any(r.via is RouteVia.SITE for n in full.nodes for r in n.all_routes())


def test_the_datapath_states_every_pair_class(full: Plan) -> None:
    two = full.cluster("two").datapath
    assert two is not None and two.mode == "tunnel" and not two.pod_cidrs_pinned
    classes = {k.name: k for k in two.classes}
    assert set(classes) == {"same-node", "same-site", "cross-site", "cross-cluster"}
    assert classes["cross-site"].encryption == "wireguard" and classes["same-site"].encryption == "none"
    assert all(k.mtu == two.pod_mtu for k in two.classes if k.connected)
    three = full.cluster("three").datapath
    assert three is not None
    cross = next(k for k in three.classes if k.name == "cross-cluster")
    assert not cross.connected and "cni: cilium" in cross.why


# --- MTU -------------------------------------------------------------------------------------


def test_tunnel_mtu_is_the_smallest_site_mtu_on_the_path_minus_80(full: Plan) -> None:
    # Every node here peers with gcp (1460) or is in it.
    for n in full.nodes:
        assert n.tunnel is not None
        assert n.tunnel.mtu.value == 1460 - 80, n.name
        assert "1460 gcp" in n.tunnel.mtu.arithmetic and n.tunnel.mtu.arithmetic.endswith("= 1380")


def test_tunnel_mtu_between_sites_of_equal_mtu() -> None:
    plan, _ = plan_of(
        mesh_data(
            [site("a", "10.1.0.0/16", 9000), site("b", "10.2.0.0/16", 1500), site("c", "10.3.0.0/16", 9000)],
            [
                {"name": "x", "nodes": [node("a1", "a", "10.1.0.1", "203.0.113.1")]},
                {"name": "y", "nodes": [node("b1", "b", "10.2.0.1", "203.0.113.2")]},
                {"name": "z", "nodes": [node("c1", "c", "10.3.0.1", "203.0.113.3")]},
            ],
        )
    )
    # Every node has a peer at 1500; the smallest path wins even for two 9000 sites.
    assert {n.name: n.tunnel.mtu.value for n in plan.nodes if n.tunnel} == {"a1": 1420, "b1": 1420, "c1": 1420}


def test_pod_mtu_is_the_clusters_smallest_underlay_minus_50(full: Plan) -> None:
    """Cilium's `MTU` is one value per cluster: the smallest network its VXLAN crosses (here every
    node's tunnel, 1380); every pod of the cluster gets that − 50, the same for every pair class."""
    for name in ["e1", "e2", "w1", "w2", "g1"]:
        n = full.node(name)
        assert n.pod_mtu.value == 1330, name
        assert n.pod_mtu.arithmetic == "1380 underlay − 50 VXLAN = 1330"
        assert n.vxlan is not None and n.vxlan.mtu == n.pod_mtu
    # Flannel's VXLAN never leaves its site network (1500).
    assert full.node("e3").pod_mtu.value == 1450
    one = full.cluster("one").datapath
    assert one is not None and one.underlay_mtu.value == 1380 and one.pod_mtu.value == 1330


def test_pod_mtu_without_any_encapsulation_is_the_site_mtu() -> None:
    plan, _ = plan_of(
        mesh_data([site("dc", "10.1.0.0/16", 1450)], [{"name": "x", "nodes": [node("a", "dc", "10.1.0.1")]}])
    )
    # Cilium's tunnel mode takes the VXLAN overhead off the pods' routes even with no other node.
    assert plan.node("a").pod_mtu.value == 1400
    assert plan.node("a").tunnel is None and plan.node("a").vxlan is None


# --- gateways --------------------------------------------------------------------------------

# east: two gateways, the NATed one sorts first by name but the public one is active; one
# plain node in cluster "one" and one in cluster "two". west: one gateway and a plain node.
GATEWAYS = mesh_data(
    [site("east", "10.1.0.0/16", 1500), site("west", "10.2.0.0/16", 1450)],
    [
        {
            "name": "one",
            "nodes": [
                node("e-gw-a", "east", "10.1.0.10", gateway=True),
                node("e-gw-b", "east", "10.1.0.11", "203.0.113.11", gateway=True),
                node("e-n1", "east", "10.1.0.21"),
                node("w-gw", "west", "10.2.0.10", "198.51.100.10", gateway=True),
                node("w-n1", "west", "10.2.0.21"),
            ],
        },
        {"name": "two", "nodes": [node("e-n2", "east", "10.1.0.22")]},
    ],
    topology="gateways",
)


@pytest.fixture(scope="module")
def gw() -> Plan:
    return plan_of(GATEWAYS)[0]


def site_prefixes(plan: Plan, site_name: str) -> tuple[IPv4Network, ...]:
    """What a site's active gateway carries: the site network, where the CNI's VXLAN ends."""
    return tuple(collapse_addresses([plan.site(site_name).network]))


def test_non_gateway_nodes_have_no_tunnel_and_route_remote_sites_via_the_active_gateway(gw: Plan) -> None:
    active = {"east": gw.node("e-gw-b"), "west": gw.node("w-gw")}
    for name in ["e-n1", "e-n2", "w-n1"]:
        n = gw.node(name)
        assert n.tunnel is None, name
        remote = "west" if n.site == "east" else "east"
        via = [(r.dst, r.gateway, r.peer) for r in n.routes if r.via is RouteVia.GATEWAY]
        expected = [(pfx, active[n.site].address, active[n.site].name) for pfx in site_prefixes(gw, remote)]
        assert via == expected, name
        assert not any(r.via is RouteVia.WIREGUARD for r in n.routes)


def test_the_public_gateway_is_active_and_carries_the_site_prefixes(gw: Plan) -> None:
    east_active, west = gw.node("e-gw-b"), gw.node("w-gw")
    peers = peers_of(east_active)
    assert set(peers) == {"w-gw"}
    assert peers["w-gw"].allowed_ips == (host(west.tunnel.address if west.tunnel else ""), *site_prefixes(gw, "west"))
    assert peers["w-gw"].endpoint == (IPv4Address("198.51.100.10"), PORT)
    assert not peers["w-gw"].standby
    # The active gateway routes its own site's traffic itself: no route via a gateway.
    assert not any(r.via is RouteVia.GATEWAY for r in east_active.routes)


def test_the_standby_gateway_keeps_a_handshake_with_its_own_address_only(gw: Plan) -> None:
    standby, west = gw.node("e-gw-a"), gw.node("w-gw")
    assert standby.tunnel is not None and west.tunnel is not None
    peers = peers_of(standby)
    assert set(peers) == {"w-gw"}
    assert peers["w-gw"].allowed_ips == (host(west.tunnel.address),)
    assert not peers["w-gw"].standby, "w-gw is west's active gateway, whoever looks at it"
    # Behind NAT, it keeps its mapping open; the remote gateway cannot dial it.
    assert peers["w-gw"].persistent_keepalive == 25
    # Until failover it sends remote traffic through the active gateway like any other node.
    via = {r.dst for r in standby.routes if r.via is RouteVia.GATEWAY}
    assert via == set(site_prefixes(gw, "west"))
    # The remote gateway knows both: the active one with the prefixes, the standby with its address.
    remote = peers_of(west)
    assert set(remote) == {"e-gw-a", "e-gw-b"}
    assert remote["e-gw-b"].allowed_ips == (host(gw.node("e-gw-b").tunnel.address), *site_prefixes(gw, "east"))  # type: ignore[union-attr]
    assert remote["e-gw-a"].allowed_ips == (host(standby.tunnel.address),)
    assert remote["e-gw-a"].standby and remote["e-gw-a"].endpoint is None
    assert remote["e-gw-a"].persistent_keepalive == 0


def test_gateways_never_give_one_prefix_to_two_peers(gw: Plan) -> None:
    for n in gw.nodes:
        if n.tunnel is None:
            continue
        nets = [a for p in n.tunnel.peers for a in p.allowed_ips]
        for i, a in enumerate(nets):
            assert not any(a.overlaps(b) for b in nets[i + 1 :]), f"{n.name}: {a} given twice"


def test_gateway_mtus(gw: Plan) -> None:
    for name in ["e-gw-a", "e-gw-b", "w-gw"]:
        t = gw.node(name).tunnel
        assert t is not None and t.mtu.value == 1450 - 80, name
    # Every cluster is bound by the gateways' tunnels: 1370 − 50 VXLAN.
    for n in gw.nodes:
        assert n.pod_mtu.value == 1320, n.name


def test_vxlan_neighbours_in_a_gateways_topology(gw: Plan) -> None:
    every = {n.name for n in gw.nodes}  # all Cilium: one Cluster Mesh overlay
    for n in gw.nodes:
        assert n.vxlan is not None
        assert {r.peer for r in n.overlay_routes()} == every - {n.name}


# --- determinism and the difference between plans ----------------------------------------------


def test_file_order_does_not_change_the_plan() -> None:
    shuffled = copy.deepcopy(FULL)
    shuffled["spec"]["sites"].reverse()
    shuffled["spec"]["clusters"].reverse()
    for c in shuffled["spec"]["clusters"]:
        c["nodes"].reverse()
    assert serialize.plan_json(plan_of(shuffled)[0]) == serialize.plan_json(plan_of(FULL)[0])


def test_diff_of_a_plan_with_itself_is_empty(full: Plan) -> None:
    data = serialize.plan_json(full)
    change = serialize.diff(data, data)
    assert change["empty"] and change["nodes"] == {} and change["nodesAdded"] == []


def test_diff_reports_an_added_node(full: Plan) -> None:
    before, alloc = plan_of(FULL)
    grown = copy.deepcopy(FULL)
    grown["spec"]["clusters"][1]["nodes"].append(node("g2", "gcp", "10.3.0.12", "192.0.2.2"))
    after, _ = plan_of(grown, alloc)
    change = serialize.diff(serialize.plan_json(before), serialize.plan_json(after))
    assert not change["empty"]
    assert change["nodesAdded"] == ["g2"] and change["nodesRemoved"] == []
    g2 = after.node("g2")
    assert g2.tunnel is not None
    tunnel_routes = [str(a) for a in (host(g2.tunnel.address), host(g2.address))]
    for name in ["e1", "e2", "w1", "w2"]:  # Cilium: a peer and a VXLAN neighbour
        c = change["nodes"][name]
        assert c["peersAdded"] == ["g2"] and c["peersRemoved"] == [] and c["peersChanged"] == {}, name
        assert c["routesAdded"] == sorted([*tunnel_routes, str(g2.pod_cidr)]), name
        assert c["routesRemoved"] == [] and c["routesChanged"] == [], name
    assert change["nodes"]["e3"]["routesAdded"] == sorted(tunnel_routes)  # Flannel: a peer only
    # g1 shares the site: a VXLAN neighbour, not a peer.
    assert change["nodes"]["g1"]["peersAdded"] == []
    assert change["nodes"]["g1"]["routesAdded"] == [str(g2.pod_cidr)]


def test_diff_reports_a_removed_node(full: Plan) -> None:
    before, alloc = plan_of(FULL)
    shrunk = copy.deepcopy(FULL)
    shrunk["spec"]["clusters"][1]["nodes"] = [n for n in shrunk["spec"]["clusters"][1]["nodes"] if n["name"] != "w2"]
    after, _ = plan_of(shrunk, alloc)
    change = serialize.diff(serialize.plan_json(before), serialize.plan_json(after))
    assert change["nodesRemoved"] == ["w2"]
    assert change["nodes"]["w2"] == {"removed": True}
    assert change["nodes"]["e1"]["peersRemoved"] == ["w2"]
    assert len(change["nodes"]["e1"]["routesRemoved"]) == 3  # its pod CIDR (VXLAN), tunnel and node address


def test_diff_reports_a_changed_endpoint(full: Plan) -> None:
    before, alloc = plan_of(FULL)
    moved = copy.deepcopy(FULL)
    moved["spec"]["clusters"][1]["nodes"][0]["publicAddress"] = "198.51.100.99"  # w1
    after, _ = plan_of(moved, alloc)
    change = serialize.diff(serialize.plan_json(before), serialize.plan_json(after))
    assert change["nodesAdded"] == [] and change["nodesRemoved"] == []
    assert set(change["nodes"]) == {"e1", "e2", "e3", "g1"}  # w1's own peers and w2 (same site) are unchanged
    for name in ["e1", "e2", "e3", "g1"]:
        c = change["nodes"][name]
        assert c["peersChanged"] == {"w1": ["endpoint"]}, name
        assert c["peersAdded"] == c["peersRemoved"] == c["routesAdded"] == c["routesRemoved"] == [], name


def test_diff_reports_a_changed_route(gw: Plan) -> None:
    before, alloc = plan_of(GATEWAYS)
    # Taking e-gw-b's public address away makes e-gw-a (first by name) the active gateway.
    changed = copy.deepcopy(GATEWAYS)
    changed["spec"]["clusters"][0]["nodes"][1].pop("publicAddress")
    changed["spec"]["clusters"][0]["nodes"][0]["publicAddress"] = "203.0.113.10"
    after, _ = plan_of(changed, alloc)
    change = serialize.diff(serialize.plan_json(before), serialize.plan_json(after))
    e_n1 = change["nodes"]["e-n1"]
    assert e_n1["routesChanged"] == sorted(str(p) for p in site_prefixes(gw, "west"))
    assert e_n1["routesAdded"] == e_n1["routesRemoved"] == []
