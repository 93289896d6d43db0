"""An in-memory store with etcd's semantics — revisions, transactions, leases, watches from a
revision, roles — for unit tests of what is built on `crossmesh.kv.api.Kv`.

    store = MemoryStore()                 # one store, shared by every client of a test
    kv = store.client("node-a")           # a client, identified as etcd would from a certificate
    store.advance(10)                     # time passes: leases expire, their keys are deleted

`tests/unit/test_kv_contract.py` runs the same suite against this and a real etcd.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from crossmesh.kv import api as errors  # the store's errors, raised as etcd's client raises them
from crossmesh.kv.api import (
    Compare,
    Delete,
    Entry,
    Event,
    Lease,
    Permission,
    Put,
    Role,
    Snapshot,
    TxnResult,
    prefix_end,
)

MIN_TTL = 2  # like etcd with a 1 s election timeout: a shorter lease is granted this long


class MemoryStore:
    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self._now = 0.0
        self.clock = clock or (lambda: self._now)
        self.revision = 1  # etcd starts at 1
        self.data: dict[bytes, Entry] = {}
        self.history: list[tuple[int, Event]] = []
        self.compacted = 0
        self.leases: dict[int, tuple[int, float]] = {}  # id → (ttl, deadline)
        self._next_lease = 0x1000
        self.watchers: list[tuple[bytes, asyncio.Queue[list[Event] | None]]] = []
        self.roles: dict[str, Role] = {}
        self.users: dict[str, set[str]] = {}
        self.auth = False
        self.down = False  # every call raises errors.KvUnavailable (a partition, a dead cluster)

    def client(self, user: str = "root") -> MemoryKv:
        return MemoryKv(self, user)

    # --- time and failure ---------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        self._now += seconds
        self.expire()

    def expire(self) -> None:
        now = self.clock()
        for lease, (_, deadline) in list(self.leases.items()):
            if deadline <= now:
                self._drop_lease(lease)

    def compact(self, revision: int) -> None:
        self.compacted = revision
        self.history = [(r, e) for r, e in self.history if r > revision]

    # --- auth -----------------------------------------------------------------------------
    def add_role(self, role: Role) -> None:
        self.roles[role.name] = role

    def grant_role(self, user: str, role: str) -> None:
        self.users.setdefault(user, set()).add(role)

    def allowed(self, user: str, key: bytes, end: bytes | None, kind: str) -> bool:
        if not self.auth or user == "root" or not kind:
            return True
        for name in self.users.get(user, ()):
            for perm in self.roles[name].permissions:
                if kind in perm.kind and _covers(perm, key, end):
                    return True
        return False

    # --- the store --------------------------------------------------------------------------
    def _drop_lease(self, lease: int) -> None:
        self.leases.pop(lease, None)
        doomed = [k for k, e in self.data.items() if e.lease == lease]
        if doomed:
            self.revision += 1
            self._notify([self._delete(k) for k in doomed])

    def _put(self, key: bytes, value: bytes, lease: int) -> Event:
        if lease and lease not in self.leases:
            raise errors.LeaseExpired(f"lease {lease:x} not found")
        old = self.data.get(key)
        entry = Entry(
            key=key,
            value=value,
            create_revision=old.create_revision if old else self.revision,
            mod_revision=self.revision,
            version=(old.version if old else 0) + 1,
            lease=lease,
        )
        self.data[key] = entry
        return Event("put", entry)

    def _delete(self, key: bytes) -> Event:
        old = self.data.pop(key)
        return Event("delete", Entry(key, b"", old.create_revision, self.revision, 0))

    def _notify(self, events: list[Event]) -> None:
        self.history.extend((e.entry.mod_revision, e) for e in events)
        for prefix, queue in self.watchers:
            mine = [e for e in events if e.entry.key.startswith(prefix)]
            if mine:
                queue.put_nowait(mine)

    def _holds(self, c: Compare) -> bool:
        entry = self.data.get(c.key)
        got: int | bytes | None
        if c.target == "value":
            got = entry.value if entry else None
        else:
            attr = {"create": "create_revision", "mod": "mod_revision", "version": "version"}[c.target]
            got = getattr(entry, attr) if entry else 0
        return (got == c.value) == (c.op == "=")


def _matches(key: bytes, op: Delete) -> bool:
    return key.startswith(op.key) if op.prefix else key == op.key


def _covers(perm: Permission, key: bytes, end: bytes | None) -> bool:
    if not perm.prefix:
        return end is None and key == perm.key
    if not key.startswith(perm.key):
        return False
    return end is None or end <= prefix_end(perm.key)


class MemoryKv:
    """One client of a MemoryStore, acting as `user`."""

    def __init__(self, store: MemoryStore, user: str) -> None:
        self.store = store
        self.user = user
        self.endpoint = f"memory://{user}"

    def _live(self) -> MemoryStore:
        s = self.store
        if s.down:
            raise errors.KvUnavailable("no etcd endpoint answers (the in-memory store is down)")
        s.expire()
        return s

    def _check(self, key: bytes, end: bytes | None, kind: str) -> MemoryStore:
        s = self._live()
        if not s.allowed(self.user, key, end, kind):
            raise errors.KvDenied(
                f"etcdserver: permission denied ({self.user} may not {kind} {key.decode(errors='replace')})"
            )
        return s

    async def get(self, key: bytes) -> Entry | None:
        return self._check(key, None, "read").data.get(key)

    async def range(self, prefix: bytes) -> Snapshot:
        s = self._check(prefix, prefix_end(prefix), "read")
        entries = sorted((e for k, e in s.data.items() if k.startswith(prefix)), key=lambda e: e.key)
        return Snapshot(entries, s.revision)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        result = await self.txn([], [Put(key, value, lease)])
        return result.revision

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        s = self._check(key, prefix_end(key) if prefix else None, "write")
        n = sum(1 for k in s.data if _matches(k, Delete(key, prefix)))
        await self.txn([], [Delete(key, prefix)])
        return n

    async def txn(self, compares: list[Compare], success: list[Put | Delete]) -> TxnResult:
        s = self._live()
        for c in compares:
            self._check(c.key, None, "read")
        for op in success:
            self._check(op.key, prefix_end(op.key) if isinstance(op, Delete) and op.prefix else None, "write")
        if not all(s._holds(c) for c in compares):
            return TxnResult(False, s.revision)
        puts = [op.key for op in success if isinstance(op, Put)]
        if len(puts) != len(set(puts)):
            raise errors.KvDenied("etcdserver: duplicate key given in txn request")
        s.revision += 1
        events: list[Event] = []
        for op in success:
            if isinstance(op, Put):
                events.append(s._put(op.key, op.value, op.lease))
            else:
                events += [s._delete(k) for k in [k for k in s.data if _matches(k, op)]]
        if not events:  # nothing written: etcd keeps its revision
            s.revision -= 1
        else:
            s._notify(events)
        return TxnResult(True, s.revision)

    async def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[Event]]:
        s = self._check(prefix, prefix_end(prefix), "read")
        if start_revision and start_revision <= s.compacted:
            raise errors.KvCompacted(f"required revision {start_revision} has been compacted ({s.compacted})")
        queue: asyncio.Queue[list[Event] | None] = asyncio.Queue()
        past = [e for r, e in s.history if r >= start_revision and e.entry.key.startswith(prefix)]
        if past:
            queue.put_nowait(past)
        watcher = (prefix, queue)
        s.watchers.append(watcher)
        try:
            while True:
                batch = await queue.get()
                if batch is None:
                    raise errors.KvUnavailable("the watch was closed by the store")
                yield batch
        finally:
            s.watchers.remove(watcher)

    async def grant(self, ttl: int) -> Lease:
        s = self._live()
        s._next_lease += 1
        ttl = max(ttl, MIN_TTL)
        s.leases[s._next_lease] = (ttl, s.clock() + ttl)
        return Lease(s._next_lease, ttl)

    async def refresh(self, lease: int) -> int:
        s = self._live()
        if lease not in s.leases:
            raise errors.LeaseExpired(f"lease {lease:x} not found")
        ttl, _ = s.leases[lease]
        s.leases[lease] = (ttl, s.clock() + ttl)
        return ttl

    async def revoke(self, lease: int) -> None:
        self._live()._drop_lease(lease)

    async def close(self) -> None:
        return None

    # --- administration, as etcd's `root` -------------------------------------------------------
    def _admin(self) -> MemoryStore:
        s = self._live()
        if s.auth and self.user != "root":
            raise errors.KvDenied(f"etcdserver: permission denied ({self.user} is not root)")
        return s

    async def roles(self) -> list[Role]:
        s = self._admin()
        return [_copy(s.roles[name]) for name in sorted(s.roles) if name != "root"]

    async def ensure_role(self, role: Role) -> bool:
        s = self._admin()
        old = s.roles.get(role.name)
        s.add_role(_copy(role))
        return old is None or _perms(old) != _perms(role)

    async def delete_role(self, name: str) -> None:
        s = self._admin()
        if name not in s.roles:
            raise errors.KvError(f"role delete: etcdserver: role name not found ({name})")
        del s.roles[name]
        for held in s.users.values():
            held.discard(name)

    async def ensure_user(self, user: str, roles: list[str]) -> bool:
        s = self._admin()
        missing = [r for r in roles if r not in s.roles and r != "root"]
        if missing:
            raise errors.KvError(f"user grant: etcdserver: role name not found ({missing[0]})")
        old = s.users.get(user)
        s.users[user] = set(roles)
        return old != set(roles)

    async def enable_auth(self) -> None:
        s = self._admin()
        if "root" not in s.users.get("root", set()):
            raise errors.KvError("auth enable: etcdserver: root user does not exist or does not have the root role")
        s.auth = True


def _perms(role: Role) -> set[tuple[str, bytes, bool]]:
    return {(p.kind, p.key, p.prefix) for p in role.permissions}


def _copy(role: Role) -> Role:
    return Role(role.name, [Permission(p.kind, p.key, p.prefix) for p in sorted(role.permissions, key=_order)])


def _order(p: Permission) -> tuple[bytes, str, bool]:
    return (p.key, p.kind, p.prefix)
