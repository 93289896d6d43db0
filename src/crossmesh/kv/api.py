"""The key-value store the control plane shares, as a small protocol: what the operator, `apply`,
`status` and the agents need of etcd, and nothing more.

Two implementations: `crossmesh.kv.etcd.EtcdKv` speaks etcd's v3 gRPC API (plaintext for a test
etcd, TLS with a client certificate for a real one — etcd then knows the caller by the certificate's
common name and its roles decide what it may write), and `crossmesh.kv.memory.MemoryKv`, an
in-memory store with the same revisions, transactions, leases and watches, for fast unit tests of
the decisions built on top (as httpx ships MockTransport). `tests/unit/test_kv_contract.py` runs
one suite against both, so the fake cannot drift from etcd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from crossmesh.errors import CrossmeshError, Refused


class KvError(CrossmeshError):
    """The store refused or failed a request."""


class KvUnavailable(KvError):
    """No member answers (down, unreachable, no quorum)."""


class KvDenied(KvError, Refused):
    """The caller's identity may not do this (etcd roles, or a certificate etcd refuses)."""


class KvCompacted(KvError):
    """A watch asked for history the store no longer has: read again, then watch from there."""


class LeaseExpired(KvError):
    """The lease is gone (expired or revoked): the keys attached to it are deleted."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    kind: Literal["put", "delete"]
    entry: Entry  # for a delete: the key, an empty value, mod_revision = the delete's revision


@dataclass(frozen=True, slots=True)
class Snapshot:
    entries: list[Entry]
    revision: int  # the store's revision the read saw: watch from revision + 1


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction. `target` compares the key's create or mod revision, its
    version or its value; a missing key has revisions and version 0 and no value."""

    key: bytes
    target: Literal["create", "mod", "version", "value"]
    value: int | bytes
    op: Literal["=", "!="] = "="


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    prefix: bool = False


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int  # as granted: etcd raises a TTL below its minimum


@dataclass(slots=True)
class Permission:
    """An etcd role's permission: read, write or readwrite on one key or a prefix."""

    kind: Literal["read", "write", "readwrite"]
    key: bytes
    prefix: bool = False


@dataclass(slots=True)
class Role:
    name: str
    permissions: list[Permission] = field(default_factory=list)


MAX_TXN_OPS = 128  # etcd's default --max-txn-ops: a transaction with more operations is refused


class Kv(Protocol):
    """What the control plane asks of its store. Every call may raise KvUnavailable or KvDenied."""

    endpoint: str  # the member this client talks to

    async def get(self, key: bytes) -> Entry | None: ...

    async def range(self, prefix: bytes) -> Snapshot: ...

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write `key`; the store's revision after the write."""
        ...

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        """Delete `key` (or every key under it); how many were deleted."""
        ...

    async def txn(self, compares: list[Compare], success: list[Put | Delete]) -> TxnResult:
        """Apply `success` atomically if every compare holds, else nothing."""
        ...

    def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[Event]]:
        """Batches of events under `prefix` from `start_revision` on, in order, until cancelled.
        KvCompacted when that history is gone; KvUnavailable when the member goes away."""
        ...

    async def grant(self, ttl: int) -> Lease: ...

    async def refresh(self, lease: int) -> int:
        """Renew the lease; its TTL. LeaseExpired when it is gone."""
        ...

    async def revoke(self, lease: int) -> None: ...

    async def close(self) -> None: ...


class KvAdmin(Protocol):
    """etcd's administration, as its `root` user: roles, users, auth (`kv.roles.ensure_roles`).
    A caller that is not root gets KvDenied once auth is enabled."""

    async def roles(self) -> list[Role]:
        """Every role but etcd's own `root`, with its permissions, sorted by name."""
        ...

    async def ensure_role(self, role: Role) -> bool:
        """Create `role` if missing and make its permissions exactly `role.permissions`; whether
        anything changed."""
        ...

    async def delete_role(self, name: str) -> None:
        """Remove the role (and with it, every user's grant of it)."""
        ...

    async def ensure_user(self, user: str, roles: list[str]) -> bool:
        """A user without password (it authenticates by certificate common name) holding exactly
        `roles`; whether anything changed."""
        ...

    async def enable_auth(self) -> None:
        """Turn authentication on (it stays on). etcd refuses it while user root lacks role root."""
        ...


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix` (etcd's range_end for a prefix)."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # the prefix is all 0xff: to the end of the keyspace
