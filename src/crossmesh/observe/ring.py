"""Bounded per-node ring buffers of flow records, with what they lost counted.

A node's flows are kept in a ring of fixed size, as Hubble keeps its per-node ring: memory
stays bounded whatever the traffic, and the oldest records make room for new ones. Nothing is
lost silently: `evicted` counts the records pushed out of the ring, `lost` the ones the kernel
could not hand over (NFLOG's queue overflowed), and `error` says why a node gives no records at
all. `merged` reads several rings as one stream in time order, as the relay serves them.

A ring holds anything with a `time`: flows, or what the relay keeps of them (each record's time
and its line, encoded once when it arrives rather than at every reader's request).

Pure and not thread-safe: the flow daemon touches its rings from one thread (its event loop).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Generic, Protocol, TypeVar

from crossmesh.observe.wire import NodeStatus

DEFAULT_CAPACITY = 4096


class Timed(Protocol):
    @property
    def time(self) -> float:
        """Seconds since the epoch."""


R = TypeVar("R", bound=Timed)


class Ring(Generic[R]):
    """The last `capacity` records (flows) of one node."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: {capacity} — a ring holds at least one record")
        self.capacity = capacity
        self._flows: deque[R] = deque(maxlen=capacity)
        self.recorded = 0  # every record ever appended
        self.evicted = 0  # pushed out by newer ones
        self.lost = 0  # never received: the kernel dropped them (NFLOG's queue was full)
        self.error = ""  # why this node's flows cannot be read ("" when they can)

    def __len__(self) -> int:
        return len(self._flows)

    def append(self, flow: R) -> None:
        if len(self._flows) == self.capacity:
            self.evicted += 1
        self._flows.append(flow)
        self.recorded += 1

    def extend(self, flows: Iterable[R]) -> None:
        for flow in flows:
            self.append(flow)

    def add_lost(self, count: int) -> None:
        if count < 0:
            raise ValueError(f"count: {count} — a number of lost records is not negative")
        self.lost += count

    def since(self, t: float | None) -> list[R]:
        """The records with time >= `t` (all with None), oldest first."""
        if t is None:
            return list(self._flows)
        return [f for f in self._flows if f.time >= t]

    def status(self) -> NodeStatus:
        """What the ring says of itself, as the relay's status line carries it per node."""
        return NodeStatus(recorded=self.recorded, lost=self.lost, error=self.error, evicted=self.evicted)


def merged(rings: Mapping[str, Ring[R]], t: float | None) -> list[R]:
    """The records of every ring with time >= `t`, in time order (ties: by node name, then as
    recorded — the sort is stable, so a node's own order is kept)."""
    out = [f for _, ring in sorted(rings.items()) for f in ring.since(t)]
    out.sort(key=lambda f: f.time)
    return out
