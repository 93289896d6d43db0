"""`ensure_roles`: etcd's users and roles for a mesh, as `kv.layout` decides them — on the in-memory
store and on a real etcd with TLS client certificates, where each user is its certificate's CN."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from etcdkit import EtcdServer, etcd

from crossmesh.kv.api import Kv, KvAdmin, KvDenied, Permission, Put, Role
from crossmesh.kv.etcd import connect
from crossmesh.kv.layout import ADMIN_USER, OPERATOR_USER, Layout
from crossmesh.kv.memory import MemoryStore
from crossmesh.kv.roles import ensure_roles


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with etcd(tmp_path_factory.mktemp("etcd-roles"), tls=True) as server:
        yield server


class Clients:
    """A client per identity, on one store."""

    def __init__(self, store: str, request: pytest.FixtureRequest) -> None:
        self.store = store
        self.memory = MemoryStore()
        self.server: EtcdServer | None = request.getfixturevalue("tls_etcd") if store == "etcd" else None
        self.open: list[Kv] = []

    async def __call__(self, cn: str) -> Any:
        if self.server is None:
            kv: Kv = self.memory.client(cn)
        else:
            kv = await connect([self.server.endpoint], self.server.tls(cn))
        self.open.append(kv)
        return kv

    async def close(self) -> None:
        for kv in self.open:
            await kv.close()


async def _may_write(kv: Kv, key: bytes) -> bool:
    try:
        await kv.put(key, b"x")
    except KvDenied:
        return False
    return True


@pytest.mark.parametrize("store", ["memory", "etcd"])
def test_each_identity_writes_what_its_role_says(store: str, request: pytest.FixtureRequest) -> None:
    layout = Layout(f"m{uuid.uuid4().hex[:6]}")

    async def main() -> None:
        clients = Clients(store, request)
        try:
            root: KvAdmin = await clients("root")
            first = await ensure_roles(root, layout, ["a", "b"])
            assert f"etcd role {layout.role_prefix}node:a: read {layout.root.decode()}*, " in "\n".join(first)
            again = await ensure_roles(root, layout, ["a", "b"])
            assert again == [], again

            a, operator, admin = await clients("a"), await clients(OPERATOR_USER), await clients(ADMIN_USER)
            assert await _may_write(a, layout.node("a")) and await _may_write(a, layout.status("a"))
            for key in (layout.node("b"), layout.status("b"), layout.intent("a"), layout.desired, layout.rollout):
                assert not await _may_write(a, key), key
            with pytest.raises(KvDenied):
                await a.txn([], [Put(layout.node("a"), b"x"), Put(layout.node("b"), b"hijack")])
            with pytest.raises(KvDenied):
                await a.delete(layout.nodes, prefix=True)
            with pytest.raises(KvDenied):
                await a.range(b"/crossmesh/another-mesh/")
            assert [e.key for e in (await a.range(layout.nodes)).entries] == [layout.node("a")]
            assert await _may_write(operator, layout.intent("a")) and await _may_write(operator, layout.rollout)
            assert await _may_write(admin, layout.desired)
            with pytest.raises(KvDenied):
                await a.ensure_role(Role(f"{layout.role_prefix}node:a", [Permission("readwrite", layout.root, True)]))

            # b leaves the mesh: its role goes, and with it what its certificate could write
            left = await ensure_roles(root, layout, ["a"])
            assert left == [f"etcd role {layout.role_prefix}node:b deleted: no node of mesh {layout.mesh} needs it"]
            assert not await _may_write(await clients("b"), layout.node("b"))

            # a permission granted by hand beyond the role is revoked
            wider = Role(f"{layout.role_prefix}node:a", [*layout.node_role("a").permissions])
            wider.permissions.append(Permission("readwrite", layout.intents, prefix=True))
            await root.ensure_role(wider)
            assert await _may_write(a, layout.intent("a"))
            assert len(await ensure_roles(root, layout, ["a"])) == 1
            assert not await _may_write(a, layout.intent("a"))
        finally:
            await clients.close()

    asyncio.run(main())


@pytest.mark.parametrize("store", ["memory", "etcd"])
def test_a_gateway_may_move_only_its_own_sites_active_gateway(store: str, request: pytest.FixtureRequest) -> None:
    """Topology gateways: gw-a (site a) writes gateways/a (failover); neither a plain node of its site nor
    a gateway of another site can, so no certificate but a site's gateways' can move that site."""
    layout = Layout(f"m{uuid.uuid4().hex[:6]}")

    async def main() -> None:
        clients = Clients(store, request)
        try:
            root: KvAdmin = await clients("root")
            await ensure_roles(root, layout, ["gw-a", "gw-b", "worker-a"], {"gw-a": "a", "gw-b": "b"})
            gw_a, gw_b, worker = await clients("gw-a"), await clients("gw-b"), await clients("worker-a")
            assert await _may_write(gw_a, layout.gateway("a"))
            assert not await _may_write(gw_a, layout.gateway("b"))
            assert not await _may_write(gw_b, layout.gateway("a"))
            assert not await _may_write(worker, layout.gateway("a"))
            assert [e.key for e in (await worker.range(layout.gateways)).entries] == [layout.gateway("a")]  # reads
        finally:
            await clients.close()

    asyncio.run(main())


def test_another_mesh_is_left_alone() -> None:
    """`prod` does not prune `prod-eu`'s roles: role names carry the mesh between colons."""
    store = MemoryStore()

    async def main() -> None:
        root = store.client("root")
        await ensure_roles(root, Layout("prod-eu"), ["x"])
        await ensure_roles(root, Layout("prod"), ["a"])
        assert "crossmesh:prod-eu:node:x" in [r.name for r in await root.roles()]

    asyncio.run(main())


def test_the_command(tls_etcd: EtcdServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from crossmesh.cli.main import app

    mesh = Path(__file__).resolve().parents[2] / "examples" / "three-clouds" / "mesh.yaml"
    root = tls_etcd.tls("root")
    assert root is not None
    args = ["pki", "etcd-roles", str(mesh), "--state", str(tmp_path / "state"), "--etcd-endpoints", tls_etcd.endpoint]
    args += ["--cacert", str(root.ca), "--cert", str(root.cert), "--key", str(root.key)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "etcd user aws-talos-1 (role crossmesh:three-clouds:node:aws-talos-1)" in first.output
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and "0 changes; auth enabled" in second.output, second.output
    missing = CliRunner().invoke(app, args[:7])  # no certificate named, none in the state folder yet
    assert missing.exit_code == 2 and "run `crossmesh pki etcd" in missing.output, missing.output
