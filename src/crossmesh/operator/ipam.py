"""Allocations in etcd: one key per cluster and per node, written once by the operator with
transactions guarded by `ipam/guard`, so two writers never both allocate from the same view.

The decision is the pure allocator's (`crossmesh.ipam.allocate`), fed with what etcd holds; this
module only reads it back and writes the difference. The stability law is checked here too: an
allocation the store holds is never rewritten — a new one is added, a removed node's is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import TypeVar

from crossmesh.ipam.allocate import Allocations, ClusterAllocation, NodeAllocation
from crossmesh.kv.api import MAX_TXN_OPS, Compare, Delete, Kv, KvError, Put
from crossmesh.kv.layout import Layout

_A = TypeVar("_A", ClusterAllocation, NodeAllocation)


class AllocationError(KvError):
    """What etcd holds under ipam/ is not an allocation, or an allocation would move."""


def _cluster(raw: bytes) -> ClusterAllocation:
    data = json.loads(raw)
    return ClusterAllocation(int(data["id"]), IPv4Network(data["podCIDR"]))


def _node(raw: bytes) -> NodeAllocation:
    data = json.loads(raw)
    return NodeAllocation(IPv4Network(data["podCIDR"]), IPv4Address(data["tunnelAddress"]))


def _encode(value: ClusterAllocation | NodeAllocation) -> bytes:
    if isinstance(value, ClusterAllocation):
        return json.dumps({"id": value.id, "podCIDR": str(value.pod_cidr)}).encode()
    return json.dumps({"podCIDR": str(value.pod_cidr), "tunnelAddress": str(value.tunnel_address)}).encode()


async def read(kv: Kv, layout: Layout) -> tuple[Allocations, int]:
    """What etcd holds, and the guard's mod revision (0: nothing allocated yet)."""
    snap = await kv.range(layout.ipam)
    clusters, nodes, guard = {}, {}, 0
    for e in snap.entries:
        sub = e.key[len(layout.ipam) :].decode(errors="replace")
        try:
            if sub == "guard":
                guard = e.mod_revision
            elif sub.startswith("clusters/"):
                clusters[sub[9:]] = _cluster(e.value)
            elif sub.startswith("nodes/"):
                nodes[sub[6:]] = _node(e.value)
        except (ValueError, KeyError, TypeError) as err:
            raise AllocationError(
                f"etcd key {e.key.decode(errors='replace')} is not an allocation ({err}); "
                "the operator allocates nothing over it — delete the key or restore it"
            ) from None
    return Allocations(clusters=clusters, nodes=nodes), guard


def changes(before: Allocations, after: Allocations, layout: Layout) -> list[Put | Delete]:
    """The writes that take etcd from `before` to `after`. AllocationError if one would move."""
    return _diff("cluster", before.clusters, after.clusters, layout.ipam_cluster) + _diff(
        "node", before.nodes, after.nodes, layout.ipam_node
    )


def _diff(kind: str, old: Mapping[str, _A], new: Mapping[str, _A], key: Callable[[str], bytes]) -> list[Put | Delete]:
    ops: list[Put | Delete] = []
    for name, value in sorted(new.items()):
        if name not in old:
            ops.append(Put(key(name), _encode(value)))
        elif old[name] != value:
            raise AllocationError(f"the allocation of {kind} {name} would move ({old[name]} → {value}): refused")
    return ops + [Delete(key(name)) for name in sorted(set(old) - set(new))]


async def commit(
    kv: Kv, layout: Layout, before: Allocations, guard: int, after: Allocations, fence: list[Compare] | None = None
) -> int | None:
    """Write the difference, in transactions of at most etcd's operation limit, each one only if
    nobody else wrote the allocations since: the guard's new mod revision, or None when someone
    did (read again, plan again)."""
    ops = changes(before, after, layout)
    if not ops:
        return guard
    step = MAX_TXN_OPS - 1
    for i in range(0, len(ops), step):
        chunk = ops[i : i + step]
        compares = [Compare(layout.ipam_guard, "mod", guard), *(fence or [])]
        result = await kv.txn(compares, [*chunk, Put(layout.ipam_guard, b"")])
        if not result.succeeded:
            return None
        guard = result.revision
    return guard


class View:
    """The allocations as this process last read or wrote them, re-read only when the guard moved
    (parsing 1,000 allocations costs more than the join being allocated)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.guard = -1
        self.allocations = Allocations()

    async def read(self, kv: Kv) -> tuple[Allocations, int]:
        got = await kv.get(self.layout.ipam_guard)
        if (got.mod_revision if got is not None else 0) != self.guard:
            self.allocations, self.guard = await read(kv, self.layout)
        return self.allocations, self.guard

    async def commit(
        self, kv: Kv, before: Allocations, guard: int, after: Allocations, fence: list[Compare] | None = None
    ) -> bool:
        new_guard = await commit(kv, self.layout, before, guard, after, fence)
        if new_guard is None:
            self.guard = -1
            return False
        self.allocations, self.guard = after, new_guard
        return True
