"""Deterministic, stable allocation.

Three laws, each with a property test: allocations never overlap; a value the
file states always wins; and an allocation made once is kept when clusters or
nodes are added (previous allocations are an input, read from the state store).
New items are allocated in name order, lowest free range first, so the same file
and the same previous state always give the same result (unlike allocators that
renumber by insertion order).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from crossmesh.errors import Problem
from crossmesh.load.yamlpos import Document
from crossmesh.model.mesh import Mesh


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
    """Ranges taken so far; finds the lowest free aligned subnet quickly."""

    def __init__(self, taken: Iterable[IPv4Network]) -> None:
        self.taken = sorted(set(taken), key=lambda n: int(n.network_address))

    def conflicts(self, net: IPv4Network) -> bool:
        return any(net.overlaps(t) for t in self.taken)

    def take(self, net: IPv4Network) -> None:
        self.taken.append(net)
        self.taken.sort(key=lambda n: int(n.network_address))

    def first(self, pool: IPv4Network, prefix: int) -> IPv4Network | None:
        if prefix < pool.prefixlen:
            return None
        step = 1 << (32 - prefix)
        start, end = int(pool.network_address), int(pool.broadcast_address)
        relevant = [t for t in self.taken if t.overlaps(pool)]
        cursor = start
        for t in relevant + [None]:
            limit = end + 1 if t is None else int(t.network_address)
            aligned = (cursor + step - 1) // step * step
            if aligned + step - 1 < limit and aligned + step - 1 <= end:
                return IPv4Network((aligned, prefix))
            if t is not None:
                cursor = max(cursor, int(t.broadcast_address) + 1)
        return None


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
        if prev is not None and 1 <= prev.id <= 255 and prev.id not in used_ids:
            ids[c.name] = prev.id
            used_ids.add(prev.id)
    for c in sorted(spec.clusters, key=lambda c: c.name):
        if c.name in ids:
            continue
        free_id = next((i for i in range(1, 256) if i not in used_ids), None)
        if free_id is None:
            fail(("spec", "clusters"), "more than 255 clusters: Cilium cluster ids run 1..255 — split the mesh")
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
