"""Deterministic, stable allocation.

Three laws, each with a property test: allocations never overlap; a value the
file states always wins; and an allocation made once is kept when clusters or
nodes are added (previous allocations are an input, read from the state store).
New items are allocated in name order, lowest free range first, so the same file
and the same previous state always give the same result (unlike allocators that
renumber by insertion order).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from crossmesh.errors import Problem
from crossmesh.load.yamlpos import Document
from crossmesh.model.mesh import MAX_CLUSTER_ID, Mesh


@dataclass(frozen=True, slots=True)
class ClusterAllocation:
    id: int
    pod_cidr: IPv4Network


@dataclass(frozen=True, slots=True)
class NodeAllocation:
    pod_cidr: IPv4Network
    tunnel_address: IPv4Address


@dataclass(frozen=True, slots=True)
class Allocations:
    clusters: dict[str, ClusterAllocation] = field(default_factory=dict)
    nodes: dict[str, NodeAllocation] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "clusters": {k: {"id": v.id, "podCIDR": str(v.pod_cidr)} for k, v in sorted(self.clusters.items())},
            "nodes": {
                k: {"podCIDR": str(v.pod_cidr), "tunnelAddress": str(v.tunnel_address)}
                for k, v in sorted(self.nodes.items())
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, dict[str, dict[str, object]]]) -> Allocations:
        return cls(
            clusters={
                k: ClusterAllocation(int(str(v["id"])), IPv4Network(str(v["podCIDR"])))
                for k, v in data.get("clusters", {}).items()
            },
            nodes={
                k: NodeAllocation(IPv4Network(str(v["podCIDR"])), IPv4Address(str(v["tunnelAddress"])))
                for k, v in data.get("nodes", {}).items()
            },
        )


class _Free:
    """Ranges taken so far, kept as sorted disjoint intervals, so that a conflict check is a
    binary search and the lowest free aligned subnet is found without rescanning what an earlier
    search already found full: taking only ever adds, so the answer for a pool never moves down.
    (Rescanning made 10,000 node pod CIDRs in one cluster quadratic.)"""

    def __init__(self, taken: Iterable[IPv4Network]) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.floor: dict[tuple[IPv4Network, int], int] = {}
        for net in taken:
            self.take(net)

    def conflicts(self, net: IPv4Network) -> bool:
        i = bisect_right(self.starts, int(net.broadcast_address))  # intervals starting at or before its end
        return i > 0 and self.ends[i - 1] >= int(net.network_address)

    def take(self, net: IPv4Network) -> None:
        start, end = int(net.network_address), int(net.broadcast_address)
        lo = hi = bisect_left(self.starts, start)
        if lo > 0 and self.ends[lo - 1] >= start - 1:
            lo -= 1
            start, end = self.starts[lo], max(end, self.ends[lo])
        while hi < len(self.starts) and self.starts[hi] <= end + 1:
            end = max(end, self.ends[hi])
            hi += 1
        self.starts[lo:hi] = [start]
        self.ends[lo:hi] = [end]

    def first(self, pool: IPv4Network, prefix: int) -> IPv4Network | None:
        if prefix < pool.prefixlen:
            return None
        step = 1 << (32 - prefix)
        end = int(pool.broadcast_address)
        cursor = self.floor.get((pool, prefix), int(pool.network_address))
        i = max(bisect_right(self.starts, cursor) - 1, 0)
        while True:
            aligned = (cursor + step - 1) // step * step
            if aligned + step - 1 > end:
                return None
            while i < len(self.starts) and self.ends[i] < aligned:
                i += 1
            if i == len(self.starts) or self.starts[i] > aligned + step - 1:
                self.floor[(pool, prefix)] = aligned
                return IPv4Network((aligned, prefix))
            cursor = self.ends[i] + 1


def _hosts(pool: IPv4Network) -> Iterator[IPv4Address]:
    return pool.hosts() if pool.prefixlen < 31 else iter(pool)


def allocate(mesh: Mesh, previous: Allocations, doc: Document | None = None) -> tuple[Allocations, list[Problem]]:
    spec = mesh.spec
    problems: list[Problem] = []

    def fail(path: tuple[str | int, ...], message: str) -> None:
        if doc is not None:
            problems.append(doc.problem(path, message))
        else:
            problems.append(Problem("<mesh>", 1, 1, ".".join(map(str, path)), message))

    # Cluster ids: stated ids first, then kept ones, then the lowest free id in name order.
    used_ids = {c.id for c in spec.clusters if c.id is not None}
    ids: dict[str, int] = {c.name: c.id for c in spec.clusters if c.id is not None}
    for c in sorted(spec.clusters, key=lambda c: c.name):
        if c.name in ids:
            continue
        prev = previous.clusters.get(c.name)
        # A hand-edited or stale state file may hold an id Cilium rejects: allocate a new one then.
        if prev is not None and 1 <= prev.id <= MAX_CLUSTER_ID and prev.id not in used_ids:
            ids[c.name] = prev.id
            used_ids.add(prev.id)
    for c in sorted(spec.clusters, key=lambda c: c.name):
        if c.name in ids:
            continue
        # Past 255 only when the ids below are used up: 256..511 need maxConnectedClusters 511.
        free_id = next((i for i in range(1, MAX_CLUSTER_ID + 1) if i not in used_ids), None)
        if free_id is None:
            fail(
                ("spec", "clusters"),
                f"more than {MAX_CLUSTER_ID} clusters: Cilium cluster ids run 1..{MAX_CLUSTER_ID} — split the mesh",
            )
            continue
        ids[c.name] = free_id
        used_ids.add(free_id)

    # Cluster pod CIDRs. Everything stated anywhere is taken before anything is allocated.
    taken = [s.network for s in spec.sites] + [c.service_cidr for c in spec.clusters] + [spec.ipam.tunnel_pool]
    taken += [c.pod_cidr for c in spec.clusters if c.pod_cidr is not None]
    free = _Free(taken)
    cluster_cidrs: dict[str, IPv4Network] = {c.name: c.pod_cidr for c in spec.clusters if c.pod_cidr is not None}
    for c in sorted(spec.clusters, key=lambda c: c.name):
        prev = previous.clusters.get(c.name)
        if (
            c.name not in cluster_cidrs
            and prev is not None
            and prev.pod_cidr.subnet_of(spec.ipam.pod_pool)
            and not free.conflicts(prev.pod_cidr)
        ):
            cluster_cidrs[c.name] = prev.pod_cidr
            free.take(prev.pod_cidr)
    for c in sorted(spec.clusters, key=lambda c: c.name):
        if c.name in cluster_cidrs:
            continue
        net = free.first(spec.ipam.pod_pool, spec.ipam.cluster_prefix)
        if net is None:
            fail(
                ("spec", "ipam", "podPool"),
                f"pod pool {spec.ipam.pod_pool} has no free /{spec.ipam.cluster_prefix} left for cluster {c.name} — "
                "widen ipam.podPool, raise ipam.clusterPrefix, or set the cluster's podCIDR",
            )
            continue
        cluster_cidrs[c.name] = net
        free.take(net)

    # Node pod CIDRs inside their cluster's CIDR.
    node_cidrs: dict[str, IPv4Network] = {}
    for ci, c in enumerate(spec.clusters):
        cidr = cluster_cidrs.get(c.name)
        if cidr is None:
            continue
        inner = _Free(n.pod_cidr for n in c.nodes if n.pod_cidr is not None)
        for n in c.nodes:
            if n.pod_cidr is not None:
                node_cidrs[n.name] = n.pod_cidr
        for n in sorted(c.nodes, key=lambda n: n.name):
            prev_node = previous.nodes.get(n.name)
            if (
                n.name not in node_cidrs
                and prev_node is not None
                and prev_node.pod_cidr.subnet_of(cidr)
                and prev_node.pod_cidr.prefixlen == spec.ipam.node_prefix
                and not inner.conflicts(prev_node.pod_cidr)
            ):
                node_cidrs[n.name] = prev_node.pod_cidr
                inner.take(prev_node.pod_cidr)
        for n in sorted(c.nodes, key=lambda n: n.name):
            if n.name in node_cidrs:
                continue
            net = inner.first(cidr, spec.ipam.node_prefix)
            if net is None:
                fail(
                    ("spec", "clusters", ci, "podCIDR"),
                    f"cluster {c.name}'s pod CIDR {cidr} has no free /{spec.ipam.node_prefix} left for node {n.name} — "
                    "use a larger cluster CIDR or raise ipam.nodePrefix",
                )
                continue
            node_cidrs[n.name] = net
            inner.take(net)

    # Tunnel addresses: one host address per node from the tunnel pool.
    pool = spec.ipam.tunnel_pool
    all_nodes = sorted((n for c in spec.clusters for n in c.nodes), key=lambda n: n.name)
    tunnel: dict[str, IPv4Address] = {}
    used_addr: set[IPv4Address] = set()
    for n in all_nodes:
        prev_node = previous.nodes.get(n.name)
        if (
            prev_node is not None
            and prev_node.tunnel_address in pool
            and prev_node.tunnel_address not in used_addr
            and prev_node.tunnel_address not in (pool.network_address, pool.broadcast_address)
        ):
            tunnel[n.name] = prev_node.tunnel_address
            used_addr.add(prev_node.tunnel_address)
    hosts = _hosts(pool)
    for n in all_nodes:
        if n.name in tunnel:
            continue
        addr = next((h for h in hosts if h not in used_addr), None)
        if addr is None:
            fail(("spec", "ipam", "tunnelPool"), f"tunnel pool {pool} is exhausted — widen ipam.tunnelPool")
            break
        tunnel[n.name] = addr
        used_addr.add(addr)

    result = Allocations(
        clusters={
            c.name: ClusterAllocation(ids[c.name], cluster_cidrs[c.name])
            for c in spec.clusters
            if c.name in ids and c.name in cluster_cidrs
        },
        nodes={
            n.name: NodeAllocation(node_cidrs[n.name], tunnel[n.name])
            for n in all_nodes
            if n.name in node_cidrs and n.name in tunnel
        },
    )
    return result, problems
