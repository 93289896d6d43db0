"""The operator's decisions on the in-memory store: apply publishes revisions and refuses a race,
the leader allocates once and writes only changed intents, a standby takes over when the
leader's lease runs out, and a deposed leader writes nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from crossmesh.agent.intents import NodeStatus, decode_intent
from crossmesh.errors import SpecError
from crossmesh.kv.api import Kv, Put
from crossmesh.kv.layout import Layout
from crossmesh.kv.memory import MemoryStore
from crossmesh.operator import apply as apply_mod
from crossmesh.operator import desired as desired_mod
from crossmesh.operator import ipam
from crossmesh.operator.publish import Deposed
from crossmesh.operator.run import Operator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MESH = "three-clouds-prod"


def _copy(tmp: Path) -> Path:
    shutil.copytree(EXAMPLES / "three-clouds", tmp / "m")
    return tmp / "m" / "mesh.yaml"


def _mesh_name(path: Path) -> str:
    from crossmesh.load.mesh import load_mesh_model

    _, mesh, _ = load_mesh_model(path)
    assert mesh is not None
    return mesh.metadata.name


def _add_node(path: Path) -> None:
    """A fourth node in the first cluster, on the first site's network, behind NAT."""
    doc = yaml.safe_load(path.read_text())
    first = doc["spec"]["clusters"][0]["nodes"][0]
    doc["spec"]["clusters"][0]["nodes"].append(
        {"name": "zz-added", "site": first["site"], "address": first["address"].rsplit(".", 1)[0] + ".77"}
    )
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(body(), 30))


async def _converge(op: Operator, kv: Kv) -> None:
    await op.reconcile(kv)


def test_apply_publishes_revisions_and_the_leader_writes_only_what_changed(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    store = MemoryStore()
    layout = Layout(_mesh_name(path))

    async def body() -> None:
        admin = store.client()
        first, new = await apply_mod.apply(admin, await apply_mod.propose(admin, path), "alice")
        assert new and first.revision == 1 and first.applied_by == "alice"
        again, new = await apply_mod.apply(admin, await apply_mod.propose(admin, path), "alice")
        assert not new and again.revision == 1  # unchanged: no new revision

        op = Operator(lambda: _const(store.client("crossmesh-operator")), layout.mesh, "op-1", say=lambda _: None)
        kv = store.client("crossmesh-operator")
        lease = await kv.grant(5)
        await op._campaign(kv, lease)
        await op.reconcile(kv)
        intents = {e.key: e for e in (await kv.range(layout.intents)).entries}
        assert len(intents) >= 3
        allocated, _ = await ipam.read(kv, layout)
        rollout = json.loads((await kv.get(layout.rollout)).value)  # type: ignore[union-attr]
        assert rollout["revision"] == 1 and rollout["error"] is None and len(rollout["nodes"]) == len(intents)

        _add_node(path)
        proposal = await apply_mod.propose(admin, path)
        changes = apply_mod.diff(proposal)
        assert changes["changed"] and len(changes["nodes"]["added"]) == 1 and changes["nodes"]["removed"] == []
        second, new = await apply_mod.apply(admin, proposal, "bob")
        assert new and second.revision == 2
        await op.reconcile(kv)
        after = {e.key: e for e in (await kv.range(layout.intents)).entries}
        added = set(after) - set(intents)
        assert len(added) == 1
        # Nothing moved, and the other nodes' intents were not rewritten.
        assert all(after[k].mod_revision == intents[k].mod_revision for k in intents)
        grown, _ = await ipam.read(kv, layout)
        assert all(grown.nodes[n] == a for n, a in allocated.nodes.items())
        new_intent = decode_intent(after[added.pop()].value, "zz-added")
        assert new_intent.revision == 2 and new_intent.node.public_address is None
        status = await apply_mod.status(admin, layout.mesh)
        assert status.desired["revision"] == 2 and status.rollout["revision"] == 2  # type: ignore[index]
        assert not status.converged and all(n.error for n in status.nodes)  # no agent reported
        # A node's agent reports, with its next key rotation: status shows when.
        node = status.nodes[0].name
        report = NodeStatus(2, True, None, 0, "k", time.time(), next_rotation=1_900_000_000.0)
        await admin.put(layout.status(node), report.encode())
        rows = (await apply_mod.status(admin, layout.mesh)).to_json()["nodes"]
        assert [r["nextKeyRotation"] for r in rows if r["name"] == node] == [1_900_000_000.0]
        assert all(r["nextKeyRotation"] is None for r in rows if r["name"] != node)

    run(body)


async def _const(kv: Kv) -> Kv:
    return kv


def test_an_apply_racing_another_changes_nothing(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    store = MemoryStore()

    async def body() -> None:
        admin = store.client()
        await apply_mod.apply(admin, await apply_mod.propose(admin, path), "alice")
        mine = await apply_mod.propose(admin, path)
        _add_node(path)
        theirs = await apply_mod.propose(admin, path)
        await apply_mod.apply(admin, theirs, "bob")
        path.write_text(path.read_text() + "\n# mine\n")
        mine = apply_mod.Proposal(**{**_fields(mine), "files": {**mine.files, "mesh.yaml": path.read_text()}})
        with pytest.raises(apply_mod.ApplyConflict, match="another apply landed meanwhile \\(revision 2 by bob"):
            await apply_mod.apply(admin, mine, "alice")
        got = desired_mod.decode((await admin.get(Layout(_mesh_name(path)).desired)).value)  # type: ignore[union-attr]
        assert got.revision == 2 and got.applied_by == "bob"

    run(body)


def _fields(p: apply_mod.Proposal) -> dict[str, Any]:
    return {f: getattr(p, f) for f in p.__dataclass_fields__}


def test_a_mesh_that_does_not_validate_is_not_applied(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    path.write_text(path.read_text().replace("network: 10.0.0.0/16", "network: 10.0.0.0/33"))
    store = MemoryStore()

    async def body() -> None:
        with pytest.raises(SpecError):
            await apply_mod.propose(store.client(), path)
        assert (await store.client().range(b"/crossmesh/")).entries == []

    run(body)


def test_under_gateways_the_operator_names_each_sites_active_gateway_once(tmp_path: Path) -> None:
    """Every node gets an intent; each site's key names its preferred gateway; a valid choice (a
    failover) is never undone; a key naming no gateway of the site is put back to the preferred."""
    shutil.copytree(Path(__file__).resolve().parents[1] / "golden" / "gateways", tmp_path / "g")
    path = tmp_path / "g" / "mesh.yaml"
    store = MemoryStore()
    layout = Layout("gateways")

    async def active(kv: Kv, site: str) -> dict[str, Any]:
        got = await kv.get(layout.gateway(site))
        assert got is not None
        return json.loads(got.value)  # type: ignore[no-any-return]

    async def body() -> None:
        admin = store.client()
        await apply_mod.apply(admin, await apply_mod.propose(admin, path), "alice")
        op = Operator(lambda: _const(store.client("crossmesh-operator")), layout.mesh, "op-1", say=lambda _: None)
        kv = store.client("crossmesh-operator")
        await op._campaign(kv, await kv.grant(5))
        await op.reconcile(kv)
        names = {e.key.decode().rsplit("/", 1)[1] for e in (await kv.range(layout.intents)).entries}
        doc = yaml.safe_load(path.read_text())
        assert names == {n["name"] for c in doc["spec"]["clusters"] for n in c["nodes"]}  # tunnel or not
        east = await active(kv, "dc-east")
        assert (east["active"], east["epoch"], east["by"]) == ("gw-east-2", 1, "op-1")
        assert (await active(kv, "aws-west"))["active"] == "gw-west"
        # A failover moved dc-east to the standby: the operator leaves it so.
        moved = {**east, "active": "gw-east-1", "epoch": 2, "by": "gw-east-1", "reason": "takeover"}
        await kv.put(layout.gateway("dc-east"), json.dumps(moved).encode())
        await op.reconcile(kv)
        assert await active(kv, "dc-east") == moved
        # A key naming a node that is no gateway of the site goes back to the preferred, epoch above.
        await kv.put(layout.gateway("dc-east"), json.dumps({**moved, "active": "east-worker-1"}).encode())
        await op.reconcile(kv)
        back = await active(kv, "dc-east")
        assert (back["active"], back["epoch"]) == ("gw-east-2", 3) and "no gateway of the site" in back["reason"]

    run(body)


def test_a_garbled_desired_revision_is_reported_and_the_intents_stay(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    store = MemoryStore()
    layout = Layout(_mesh_name(path))

    async def body() -> None:
        admin = store.client()
        await apply_mod.apply(admin, await apply_mod.propose(admin, path), "alice")
        op = Operator(lambda: _const(admin), layout.mesh, "op-1", say=lambda _: None)
        await op.reconcile(admin)
        before = (await admin.range(layout.intents)).entries
        hostile = json.loads((await admin.get(layout.desired)).value)  # type: ignore[union-attr]
        hostile["files"]["../../etc/passwd"] = "x"
        await admin.put(layout.desired, json.dumps(hostile).encode())
        await op.reconcile(admin)
        rollout = json.loads((await admin.get(layout.rollout)).value)  # type: ignore[union-attr]
        assert "would leave the mesh's folder" in rollout["error"] and rollout["revision"] == 1
        assert (await admin.range(layout.intents)).entries == before

    run(body)


def test_a_standby_takes_over_when_the_leaders_lease_runs_out_and_the_old_leader_writes_nothing(
    tmp_path: Path,
) -> None:
    path = _copy(tmp_path)
    store = MemoryStore()
    layout = Layout(_mesh_name(path))

    async def body() -> None:
        admin = store.client()
        await apply_mod.apply(admin, await apply_mod.propose(admin, path), "alice")
        a = Operator(lambda: _const(store.client("op-a")), layout.mesh, "op-a", ttl=5, say=lambda _: None)
        b = Operator(lambda: _const(store.client("op-b")), layout.mesh, "op-b", ttl=5, say=lambda _: None)
        ka, kb = store.client("op-a"), store.client("op-b")
        la, lb = await ka.grant(5), await kb.grant(5)
        await a._campaign(ka, la)
        standby = asyncio.create_task(b._campaign(kb, lb))
        await asyncio.sleep(0.05)
        assert not standby.done()
        await kb.refresh(lb.id)
        store.advance(3)
        await kb.refresh(lb.id)  # b keeps its lease; a stops refreshing: its lease runs out with the key
        store.advance(3)
        await kb.refresh(lb.id)
        await asyncio.wait_for(standby, 5)
        leader = json.loads((await admin.get(layout.leader)).value)  # type: ignore[union-attr]
        assert leader["id"] == "op-b"
        with pytest.raises(Deposed):
            await a.reconcile(ka)
        await b.reconcile(kb)
        assert (await admin.range(layout.intents)).entries

    run(body)


def test_the_stability_law_is_checked_before_anything_is_written() -> None:
    from ipaddress import IPv4Address, IPv4Network

    from crossmesh.ipam.allocate import Allocations, NodeAllocation

    layout = Layout("m")
    before = Allocations(nodes={"a": NodeAllocation(IPv4Network("10.42.0.0/24"), IPv4Address("100.64.0.1"))})
    after = Allocations(nodes={"a": NodeAllocation(IPv4Network("10.42.1.0/24"), IPv4Address("100.64.0.1"))})
    with pytest.raises(ipam.AllocationError, match="would move"):
        ipam.changes(before, after, layout)
    assert isinstance(ipam.changes(Allocations(), before, layout)[0], Put)
