"""The laws of IPAM (src/crossmesh/ipam/allocate.py), checked on generated meshes.

Meshes are generated valid (the validator finds nothing in them): sites, service
CIDRs, stated pod CIDRs and the tunnel pool each take a distinct /16 block, and the
blocks are drawn around the start of the pod pool so that allocation has to step
over what the file states. Each law is something a user would notice: overlapping
pod ranges break routing, a moved allocation renumbers a running cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossmesh.ipam.allocate import Allocations, ClusterAllocation, NodeAllocation, allocate
from crossmesh.load.yamlpos import Document
from crossmesh.model.mesh import MAX_CLUSTER_ID, Mesh
from crossmesh.validate import rules

SETTINGS = settings(  # cheap enough for every run: ~1 s a property
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

POD_POOL = IPv4Network("10.128.0.0/9")
# Second octets of the /16 blocks handed out to stated ranges: straddling the pool's start,
# so that stated ranges sit right where the allocator would otherwise begin.
BLOCKS = list(range(120, 150))
LETTERS = st.sampled_from("abmyz")


def block(i: int) -> IPv4Network:
    return IPv4Network(f"10.{i}.0.0/16")


@dataclass
class Generated:
    data: dict[str, Any]
    mesh: Mesh
    free_blocks: list[int]  # blocks nothing in the file uses, for sites added later


@st.composite
def meshes(draw: st.DrawFn) -> Generated:
    n_sites = draw(st.integers(1, 3))
    n_clusters = draw(st.integers(1, 4))
    counter = iter(range(100))

    def name() -> str:
        # A drawn first letter makes the name order differ from the file order; the counter keeps names unique.
        return f"{draw(LETTERS)}{next(counter)}"

    # At most 1 tunnel pool + 3 sites + 4 × (service + pod CIDR) = 12 blocks; the rest stay free.
    take = iter(draw(st.lists(st.sampled_from(BLOCKS), min_size=16, max_size=16, unique=True)))
    cluster_prefix = draw(st.integers(16, 19))
    node_prefix = draw(st.integers(22, 26))
    tunnel_choice = draw(st.sampled_from(["default", "small", "in-pod-range"]))
    ipam: dict[str, Any] = {"podPool": str(POD_POOL), "clusterPrefix": cluster_prefix, "nodePrefix": node_prefix}
    if tunnel_choice == "small":
        ipam["tunnelPool"] = "100.64.7.0/27"  # 30 host addresses: room for the largest mesh plus one
    elif tunnel_choice == "in-pod-range":
        ipam["tunnelPool"] = str(IPv4Network((block(next(take)).network_address, 24)))

    sites = []
    for _ in range(n_sites):
        prefix = draw(st.integers(16, 24))
        net = IPv4Network((block(next(take)).network_address, prefix))
        sites.append({"name": name(), "provider": "baremetal", "network": str(net)})

    used_ids = draw(st.lists(st.integers(1, 12), min_size=n_clusters, max_size=n_clusters, unique=True))
    public = iter(IPv4Address("203.0.113.1") + i for i in range(254))
    per_site_host = [1] * n_sites
    clusters = []
    for ci in range(n_clusters):
        cluster: dict[str, Any] = {"name": name(), "nodes": []}
        if draw(st.booleans()):
            cluster["id"] = used_ids[ci]
        service = draw(st.sampled_from(["default", "own"]))
        if service == "own":
            cluster["serviceCIDR"] = str(IPv4Network((block(next(take)).network_address, draw(st.integers(16, 20)))))
        cluster_cidr: IPv4Network | None = None
        if draw(st.booleans()):
            cluster_cidr = IPv4Network((block(next(take)).network_address, draw(st.integers(16, 18))))
            cluster["podCIDR"] = str(cluster_cidr)
        n_nodes = draw(st.integers(1, 4))
        slots = draw(st.lists(st.integers(0, 15), min_size=4, max_size=4, unique=True)) if cluster_cidr else []
        for ni in range(n_nodes):
            si = draw(st.integers(0, n_sites - 1))
            site_net = IPv4Network(sites[si]["network"])
            node: dict[str, Any] = {
                "name": name(),
                "site": sites[si]["name"],
                "address": str(site_net.network_address + per_site_host[si]),
                "publicAddress": str(next(public)),
            }
            per_site_host[si] += 1
            if cluster_cidr is not None and draw(st.booleans()):
                slot = list(cluster_cidr.subnets(new_prefix=node_prefix))[slots[ni]]
                pin_prefix = draw(st.sampled_from([node_prefix, node_prefix + 1]))
                node["podCIDR"] = str(IPv4Network((slot.network_address, pin_prefix)))
            cluster["nodes"].append(node)
        clusters.append(cluster)

    data = {
        "apiVersion": "crossmesh.io/v1alpha1",
        "kind": "Mesh",
        "metadata": {"name": "generated"},
        "spec": {"ipam": ipam, "sites": sites, "clusters": clusters},
    }
    mesh = Mesh.model_validate(data)
    problems = rules.check(mesh, Document("generated.yaml", data))
    assert problems == [], f"the generator made an invalid mesh: {[str(p) for p in problems]}"
    return Generated(data, mesh, list(take))


def fresh(mesh: Mesh, previous: Allocations | None = None) -> Allocations:
    alloc, problems = allocate(mesh, previous or Allocations())
    assert problems == [], [str(p) for p in problems]
    return alloc


def overlapping(nets: Iterable[tuple[str, IPv4Network]]) -> list[tuple[str, str]]:
    items = sorted(nets, key=lambda t: (int(t[1].network_address), t[1].prefixlen))
    return [(a, b) for i, (a, na) in enumerate(items) for b, nb in items[i + 1 :] if na.overlaps(nb)]


def check_laws(mesh: Mesh, alloc: Allocations, *, sizes: bool = True) -> None:
    spec = mesh.spec
    clusters = {c.name: c for c in spec.clusters}
    assert set(alloc.clusters) == set(clusters)
    assert set(alloc.nodes) == {n.name for c in spec.clusters for n in c.nodes}

    ids = [a.id for a in alloc.clusters.values()]
    assert len(set(ids)) == len(ids), f"duplicate cluster ids {ids}"
    assert all(1 <= i <= MAX_CLUSTER_ID for i in ids), ids  # past 255 the Cilium values say maxConnectedClusters 511

    # Cluster pod CIDRs: disjoint from each other and from every other range of the mesh.
    pods = [(f"cluster {k}", a.pod_cidr) for k, a in alloc.clusters.items()]
    assert overlapping(pods) == []
    others = [(f"site {s.name}", s.network) for s in spec.sites]
    others += [(f"service {c.name}", c.service_cidr) for c in spec.clusters]
    others.append(("tunnel pool", spec.ipam.tunnel_pool))
    for owner, net in pods:
        for other, onet in others:
            assert not net.overlaps(onet), f"{owner} {net} overlaps {other} {onet}"

    for c in spec.clusters:
        ca = alloc.clusters[c.name]
        if c.pod_cidr is None:
            assert ca.pod_cidr.subnet_of(spec.ipam.pod_pool)
            # A kept allocation keeps its size even if ipam.clusterPrefix changed since.
            assert not sizes or ca.pod_cidr.prefixlen == spec.ipam.cluster_prefix
        node_nets = []
        for n in c.nodes:
            na = alloc.nodes[n.name]
            assert na.pod_cidr.subnet_of(ca.pod_cidr), f"node {n.name} {na.pod_cidr} outside {ca.pod_cidr}"
            if n.pod_cidr is None:
                assert na.pod_cidr.prefixlen == spec.ipam.node_prefix
            node_nets.append((n.name, na.pod_cidr))
        assert overlapping(node_nets) == []

    pool = spec.ipam.tunnel_pool
    addrs = [a.tunnel_address for a in alloc.nodes.values()]
    assert len(set(addrs)) == len(addrs), "duplicate tunnel addresses"
    for a in addrs:
        assert a in pool and a not in (pool.network_address, pool.broadcast_address), a


def check_pins(mesh: Mesh, alloc: Allocations) -> None:
    for c in mesh.spec.clusters:
        if c.id is not None:
            assert alloc.clusters[c.name].id == c.id
        if c.pod_cidr is not None:
            assert alloc.clusters[c.name].pod_cidr == c.pod_cidr
        for n in c.nodes:
            if n.pod_cidr is not None:
                assert alloc.nodes[n.name].pod_cidr == n.pod_cidr


def assert_kept(before: Allocations, after: Allocations) -> None:
    for name, ca in before.clusters.items():
        assert after.clusters[name] == ca, f"cluster {name} moved: {ca} -> {after.clusters[name]}"
    for name, na in before.nodes.items():
        assert after.nodes[name] == na, f"node {name} moved: {na} -> {after.nodes[name]}"


def with_spec(g: Generated, **changes: Any) -> Mesh:
    data = {**g.data, "spec": {**g.data["spec"], **changes}}
    mesh = Mesh.model_validate(data)
    problems = rules.check(mesh, Document("changed.yaml", data))
    assert problems == [], [str(p) for p in problems]
    return mesh


def existing_names(g: Generated) -> set[str]:
    spec = g.mesh.spec
    return (
        {s.name for s in spec.sites}
        | {c.name for c in spec.clusters}
        | {n.name for c in spec.clusters for n in c.nodes}
    )


NEW_NAMES = st.sampled_from(["0", "a", "aaa", "m", "zzz"])  # before, between and after the generated names


@SETTINGS
@given(meshes())
def test_allocations_never_overlap_and_stay_in_their_ranges(g: Generated) -> None:
    check_laws(g.mesh, fresh(g.mesh))


@SETTINGS
@given(meshes())
def test_what_the_file_states_always_wins(g: Generated) -> None:
    check_pins(g.mesh, fresh(g.mesh))


@SETTINGS
@given(meshes())
def test_allocating_again_from_the_previous_result_changes_nothing(g: Generated) -> None:
    first = fresh(g.mesh)
    assert fresh(g.mesh, first) == first
    assert fresh(g.mesh) == first  # and the same input always gives the same output


@SETTINGS
@given(meshes(), st.data())
def test_adding_a_cluster_moves_nothing(g: Generated, data: st.DataObject) -> None:
    before = fresh(g.mesh)
    name = data.draw(NEW_NAMES.filter(lambda n: n not in existing_names(g)), label="cluster name")
    node = data.draw(NEW_NAMES.filter(lambda n: n not in existing_names(g) | {name}), label="node name")
    site = g.data["spec"]["sites"][0]
    used = {n["address"] for c in g.data["spec"]["clusters"] for n in c["nodes"]}
    address = next(str(a) for a in IPv4Network(site["network"]).hosts() if str(a) not in used)
    cluster = {
        "name": name,
        "nodes": [{"name": node, "site": site["name"], "address": address, "publicAddress": "198.51.100.1"}],
    }
    clusters = g.data["spec"]["clusters"]
    position = data.draw(st.integers(0, len(clusters)), label="position in the file")
    bigger = with_spec(g, clusters=clusters[:position] + [cluster] + clusters[position:])
    after = fresh(bigger, before)
    assert_kept(before, after)
    check_laws(bigger, after)


@SETTINGS
@given(meshes(), st.data())
def test_adding_a_node_moves_nothing(g: Generated, data: st.DataObject) -> None:
    before = fresh(g.mesh)
    clusters = g.data["spec"]["clusters"]
    ci = data.draw(st.integers(0, len(clusters) - 1), label="cluster")
    name = data.draw(NEW_NAMES.filter(lambda n: n not in existing_names(g)), label="node name")
    site = g.data["spec"]["sites"][-1]
    used = {n["address"] for c in clusters for n in c["nodes"]}
    address = next(str(a) for a in IPv4Network(site["network"]).hosts() if str(a) not in used)
    new_node = {"name": name, "site": site["name"], "address": address, "publicAddress": "198.51.100.2"}
    nodes = clusters[ci]["nodes"]
    position = data.draw(st.integers(0, len(nodes)), label="position in the file")
    changed = {**clusters[ci], "nodes": nodes[:position] + [new_node] + nodes[position:]}
    bigger = with_spec(g, clusters=clusters[:ci] + [changed] + clusters[ci + 1 :])
    after = fresh(bigger, before)
    assert_kept(before, after)
    check_laws(bigger, after)


@SETTINGS
@given(meshes(), st.data())
def test_adding_a_site_moves_nothing(g: Generated, data: st.DataObject) -> None:
    before = fresh(g.mesh)
    # A new site whose network lies where nothing was allocated: no reason for anything to move.
    allocated = [a.pod_cidr for a in before.clusters.values()]
    candidates = [b for b in g.free_blocks if not any(block(b).overlaps(a) for a in allocated)]
    net = block(data.draw(st.sampled_from(candidates), label="site block"))
    name = data.draw(NEW_NAMES.filter(lambda n: n not in existing_names(g)), label="site name")
    node = data.draw(NEW_NAMES.filter(lambda n: n not in existing_names(g) | {name}), label="node name")
    sites = [{"name": name, "provider": "aws", "network": str(net)}, *g.data["spec"]["sites"]]
    clusters = g.data["spec"]["clusters"]
    grown = {
        **clusters[0],
        "nodes": [
            {"name": node, "site": name, "address": str(net.network_address + 10), "publicAddress": "198.51.100.3"},
            *clusters[0]["nodes"],
        ],
    }
    bigger = with_spec(g, sites=sites, clusters=[grown, *clusters[1:]])
    after = fresh(bigger, before)
    assert_kept(before, after)
    check_laws(bigger, after)


@st.composite
def junk_previous(draw: st.DrawFn, mesh: Mesh) -> Allocations:
    """Previous allocations as a hand-edited or stale state file might hold them: overlapping,
    out of range, for clusters and nodes that no longer exist."""
    cluster_names = [c.name for c in mesh.spec.clusters] + ["gone"]
    node_names = [n.name for c in mesh.spec.clusters for n in c.nodes] + ["gone-node"]

    def nets(prefixes: st.SearchStrategy[int]) -> st.SearchStrategy[IPv4Network]:
        starts = st.sampled_from(range(118, 152))
        return st.builds(lambda b, p: IPv4Network((block(b).network_address, p), strict=False), starts, prefixes)

    tunnel = st.builds(lambda i: IPv4Address("100.64.0.0") + i, st.integers(0, 70)) | st.builds(
        lambda i: IPv4Address("100.64.7.0") + i, st.integers(0, 40)
    )
    clusters = draw(
        st.dictionaries(
            st.sampled_from(cluster_names),
            # Large enough for the nodes; a kept range too small for them is reported, not silently moved.
            st.builds(ClusterAllocation, st.integers(0, 300), nets(st.integers(14, 20))),
        )
    )
    nodes = draw(
        st.dictionaries(
            st.sampled_from(node_names),
            st.builds(NodeAllocation, nets(st.integers(14, 26)), tunnel),
        )
    )
    return Allocations(clusters=clusters, nodes=nodes)


@SETTINGS
@given(st.data())
def test_laws_hold_whatever_the_previous_state_holds(data: st.DataObject) -> None:
    g = data.draw(meshes(), label="mesh")
    previous = data.draw(junk_previous(g.mesh), label="previous allocations")
    alloc = fresh(g.mesh, previous)
    check_laws(g.mesh, alloc, sizes=False)
    check_pins(g.mesh, alloc)
    assert fresh(g.mesh, alloc) == alloc


def test_an_exhausted_pool_is_a_problem_not_an_overlap() -> None:
    data = {
        "apiVersion": "crossmesh.io/v1alpha1",
        "kind": "Mesh",
        "metadata": {"name": "tight"},
        "spec": {
            "ipam": {"podPool": "10.240.0.0/15", "clusterPrefix": 16, "tunnelPool": "100.64.0.0/30"},
            "sites": [{"name": "dc", "provider": "baremetal", "network": "10.0.0.0/24"}],
            "clusters": [
                {"name": name, "nodes": [{"name": f"{name}-1", "site": "dc", "address": f"10.0.0.{i + 1}"}]}
                for i, name in enumerate(["a", "b", "c"])
            ],
        },
    }
    alloc, problems = allocate(Mesh.model_validate(data), Allocations())
    messages = [p.message for p in problems]
    assert any("has no free /16 left for cluster c" in m for m in messages), messages
    assert any("tunnel pool 100.64.0.0/30 is exhausted" in m for m in messages), messages
    assert sorted(alloc.clusters) == ["a", "b"]
    assert alloc.clusters["a"].pod_cidr != alloc.clusters["b"].pod_cidr
