"""One suite, two stores: the in-memory fake and a real etcd (plaintext, and TLS with roles) must
answer every call the same way — the fake's unit tests are worth only what this proves."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from etcdkit import EtcdServer, etcd

from crossmesh.kv.api import (
    Compare,
    Delete,
    Event,
    Kv,
    KvAdmin,
    KvDenied,
    KvUnavailable,
    LeaseExpired,
    Permission,
    Put,
    Role,
)
from crossmesh.kv.etcd import connect
from crossmesh.kv.memory import MemoryStore


@pytest.fixture(scope="module")
def plain_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with etcd(tmp_path_factory.mktemp("etcd-tls"), tls=True) as server:
        yield server


Body = Callable[[Kv, bytes], Awaitable[None]]


@pytest.fixture(params=["memory", "etcd"])
def run(request: pytest.FixtureRequest) -> Callable[[Body], None]:
    """Run an async test body against a client of the store and a key prefix of its own."""
    prefix = f"/t/{uuid.uuid4().hex[:8]}/".encode()

    def go(body: Body) -> None:
        async def main() -> None:
            if request.param == "memory":
                kv: Kv = MemoryStore().client()
            else:
                kv = await connect([request.getfixturevalue("plain_etcd").endpoint], None)
            try:
                await asyncio.wait_for(body(kv, prefix), 20)
            finally:
                await kv.close()

        asyncio.run(main())

    return go


def test_revisions_and_versions(run: Callable[[Body], None]) -> None:
    async def body(kv: Kv, p: bytes) -> None:
        r1 = await kv.put(p + b"a", b"1")
        r2 = await kv.put(p + b"a", b"2")
        assert r2 == r1 + 1
        got = await kv.get(p + b"a")
        assert got is not None and (got.value, got.create_revision, got.mod_revision, got.version) == (b"2", r1, r2, 2)
        assert await kv.get(p + b"missing") is None
        await kv.put(p + b"b", b"3")
        await kv.put(p + b"c/d", b"4")
        snap = await kv.range(p)
        assert [e.key for e in snap.entries] == [p + b"a", p + b"b", p + b"c/d"] and snap.revision >= r2 + 2
        assert await kv.delete(p, prefix=True) == 3
        assert (await kv.range(p)).entries == []

    run(body)


def test_transactions_compare_and_swap(run: Callable[[Body], None]) -> None:
    async def body(kv: Kv, p: bytes) -> None:
        key = p + b"leader"
        first = await kv.txn([Compare(key, "create", 0)], [Put(key, b"one")])
        second = await kv.txn([Compare(key, "create", 0)], [Put(key, b"two")])
        assert first.succeeded and not second.succeeded
        entry = await kv.get(key)
        assert entry is not None and entry.value == b"one"
        stale = await kv.txn([Compare(key, "mod", entry.mod_revision - 1)], [Put(key, b"x")])
        fresh = await kv.txn([Compare(key, "mod", entry.mod_revision)], [Put(key, b"y"), Put(p + b"other", b"z")])
        assert not stale.succeeded and fresh.succeeded
        assert (await kv.get(key)).value == b"y"  # type: ignore[union-attr]
        assert (await kv.txn([Compare(key, "value", b"y")], [Delete(key)])).succeeded
        assert await kv.get(key) is None

    run(body)


def test_watch_from_a_revision_sees_history_then_live_events(run: Callable[[Body], None]) -> None:
    async def body(kv: Kv, p: bytes) -> None:
        start = await kv.put(p + b"x", b"1")
        await kv.put(p + b"y", b"2")
        seen: list[Event] = []

        async def collect() -> None:
            async for batch in kv.watch(p, start):
                seen.extend(batch)
                if len(seen) >= 4:
                    return

        task = asyncio.create_task(collect())
        await asyncio.sleep(0.2)
        await kv.put(p + b"x", b"3")
        await kv.delete(p + b"y")
        await kv.put(b"/elsewhere/" + p, b"not ours")
        await asyncio.wait_for(task, 10)
        assert [(e.kind, e.entry.key, e.entry.value) for e in seen] == [
            ("put", p + b"x", b"1"),
            ("put", p + b"y", b"2"),
            ("put", p + b"x", b"3"),
            ("delete", p + b"y", b""),
        ]
        assert seen[2].entry.mod_revision > seen[1].entry.mod_revision

    run(body)


def test_a_lease_takes_its_keys_with_it(run: Callable[[Body], None]) -> None:
    async def body(kv: Kv, p: bytes) -> None:
        lease = await kv.grant(5)
        assert lease.ttl >= 5
        await kv.put(p + b"held", b"1", lease=lease.id)
        assert await kv.refresh(lease.id) >= 5
        await kv.revoke(lease.id)
        assert await kv.get(p + b"held") is None
        with pytest.raises(LeaseExpired):
            await kv.refresh(lease.id)
        with pytest.raises(LeaseExpired):
            await kv.put(p + b"held", b"2", lease=lease.id)
        await kv.revoke(lease.id)  # twice: nothing to withdraw, no error

    run(body)


async def _setup_roles(admin: KvAdmin, p: bytes) -> None:
    """The same administration calls on both stores."""
    role = Role(f"node-a-{p.hex()[-8:]}", [Permission("readwrite", p + b"nodes/a"), Permission("read", p, prefix=True)])
    await admin.ensure_user("root", ["root"])
    assert await admin.ensure_role(role)
    assert not await admin.ensure_role(role), "the same role again changed something"
    await admin.ensure_user("a", [role.name])
    assert not await admin.ensure_user("a", [role.name])
    await admin.enable_auth()
    await admin.enable_auth()  # enabled already: nothing to do, no error
    assert role.name in [r.name for r in await admin.roles()]


@pytest.mark.parametrize("store", ["memory", "etcd"])
def test_a_node_writes_only_its_own_key(store: str, request: pytest.FixtureRequest) -> None:
    p = f"/t/{uuid.uuid4().hex[:8]}/".encode()

    async def main() -> None:
        if store == "memory":
            memory = MemoryStore()
            admin: Any = memory.client("root")
            node: Kv = memory.client("a")
        else:
            server: EtcdServer = request.getfixturevalue("tls_etcd")
            admin = await connect([server.endpoint], server.tls("root"))
            node = await connect([server.endpoint], server.tls("a"))
        try:
            await admin.put(p + b"nodes/b", b"b's record")
            await _setup_roles(admin, p)
            await node.put(p + b"nodes/a", b"mine")
            assert [e.key for e in (await node.range(p)).entries] == [p + b"nodes/a", p + b"nodes/b"]
            for attempt in (
                node.put(p + b"nodes/b", b"hijack"),
                node.delete(p + b"nodes/b"),
                node.txn([], [Put(p + b"nodes/zz", b"new")]),
            ):
                with pytest.raises(KvDenied):
                    await attempt
            assert (await admin.get(p + b"nodes/b")).value == b"b's record"
        finally:
            await admin.close()
            await node.close()

    asyncio.run(main())


def test_a_certificate_from_another_ca_is_refused(tls_etcd: EtcdServer, tmp_path: Path) -> None:
    from etcdkit import make_cert, write_cert

    from crossmesh.kv.etcd import Tls

    rogue = make_cert("rogue CA", None)
    crt, key = write_cert(tmp_path / "rogue-a", make_cert("a", rogue))
    assert tls_etcd.ca_path is not None

    async def main() -> None:
        with pytest.raises(KvDenied, match="refused the TLS handshake"):
            await connect([tls_etcd.endpoint], Tls(tls_etcd.ca_path, crt, key))  # type: ignore[arg-type]

    asyncio.run(main())


def test_no_member_answers() -> None:
    async def main() -> None:
        with pytest.raises(KvUnavailable, match="no etcd endpoint answers"):
            await connect(["http://127.0.0.1:1"], None)

    asyncio.run(main())
