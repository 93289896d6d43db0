"""The agent's etcd session on the in-memory store (kv/memory.py), with a fake data plane: what it
publishes and when, how it lives through an etcd outage, a broken watch and a compacted history,
and how an etcd-fed agent follows the operator's intents. No root, no etcd, no wireguard-go: each
test runs the agent's real loop for well under a second."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from crossmesh.agent import daemon, dataplane, intents, records
from crossmesh.agent.config import AgentConfig
from crossmesh.agent.daemon import Agent
from crossmesh.cli.agent import Where, etcd_fed_config
from crossmesh.drivers.lab.wireguard import DeviceConf
from crossmesh.errors import UsageError
from crossmesh.kv.api import Kv
from crossmesh.kv.layout import Layout
from crossmesh.kv.memory import MemoryStore
from crossmesh.operator import publish
from crossmesh.state.store import StateStore
from crossmesh.workspace import compile_mesh

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-clouds"
ME, AZURE, GCP = "aws-talos-1", "azure-talos-1", "gcp-talos-1"
WHERE = Where(interface="wg-fake", namespace=None, etcd=["memory://"], ttl=2, tls=None, metrics="off")


class Mesh:
    """examples/three-clouds planned, its intents as the operator computes them, an in-memory etcd
    with the mesh's roles (each node writes only its own record and status), and the records of
    the other nodes as their agents would have published them."""

    def __init__(self, tmp: Path) -> None:
        shutil.copytree(EXAMPLE, tmp / "mesh")
        compiled = compile_mesh(tmp / "mesh" / "mesh.yaml", None)
        self.tmp = tmp
        self.plan = compiled.plan
        self.layout = Layout(self.plan.mesh)
        self.intents = publish.intents_for(self.plan, 1, compiled.loaded.mesh.spec.wireguard)
        pubs = compiled.store.public_keys([n.name for n in self.plan.nodes])
        self.records = {n: records.record_from(i.node, pubs[n]) for n, i in self.intents.items()}
        self.store = MemoryStore()
        for user, role in self.layout.users(sorted(self.intents)).items():
            self.store.add_role(role)
            self.store.grant_role(user, role.name)
        self.store.auth = True
        self.root = self.store.client("root")

    async def put_intents(self, *nodes: str) -> None:
        for n in nodes:
            await self.root.put(self.layout.intent(n), self.intents[n].encode())

    async def put_records(self, *nodes: str) -> None:
        for n in nodes:
            lease = await self.root.grant(60)
            await self.root.put(self.layout.node(n), self.records[n].encode(), lease=lease.id)

    def config(self, node: str = ME) -> AgentConfig:
        return etcd_fed_config(node, self.plan.mesh, self.tmp / f"state-{node}", WHERE)

    def agent(self, node: str = ME, clock: Callable[[], float] = time.time) -> tuple[Agent, dataplane.Fake]:
        fake = dataplane.Fake()

        async def connect() -> Kv:
            return self.store.client(node)

        a = Agent(self.config(node), fake, connect, clock)
        a.refresh_every = 0.05
        return a, fake

    async def start(
        self, told: tuple[str, ...] = (ME, AZURE, GCP), published: tuple[str, ...] = (AZURE, GCP)
    ) -> tuple[Agent, dataplane.Fake, asyncio.Task[None]]:
        """The intents of `told` and the records of `published` in etcd, then this node's agent running."""
        await self.put_intents(*told)
        await self.put_records(*published)
        a, fake = self.agent()
        return a, fake, asyncio.create_task(a.serve())

    async def status(self, node: str = ME) -> intents.NodeStatus | None:
        got = await self.root.get(self.layout.status(node))
        return None if got is None else intents.decode_status(got.value, node)

    async def record(self, node: str = ME) -> records.NodeRecord | None:
        got = await self.root.get(self.layout.node(node))
        return None if got is None else records.decode(got.value)


@pytest.fixture
def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Mesh:
    monkeypatch.setattr(daemon, "RETRY", 0.02)
    monkeypatch.setattr(daemon, "TICK", 0.02)
    return Mesh(tmp_path)


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(body(), 20))


async def until(what: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Wait for `what()` (a value, or an awaitable's) to be true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = what()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(what, '__doc__', None) or what}")
        await asyncio.sleep(0.01)


async def stopped(a: Agent, task: asyncio.Task[None]) -> None:
    a.stop.set()
    await asyncio.wait_for(task, 5)


def peers_of(fake: dataplane.Fake) -> set[str]:
    return set(fake.peers)


# --- an etcd-fed agent -------------------------------------------------------------------------
def test_publishes_under_a_lease_once_it_has_applied_the_mesh(mesh: Mesh) -> None:
    async def body() -> None:
        a, fake, task = await mesh.start()
        mine = await until(mesh.record)
        # the whole mesh was on the device before the record went out
        assert peers_of(fake) == {mesh.records[AZURE].public_key, mesh.records[GCP].public_key}
        assert mine == records.record_from(mesh.intents[ME].node, a.public_key)
        entry = await mesh.root.get(mesh.layout.node(ME))
        assert entry is not None and entry.lease in mesh.store.leases
        assert fake.mtu == mesh.intents[ME].mtu and mine.tunnel_address in fake.addresses
        status = await until(mesh.status)
        assert (status.revision, status.ok, status.error, status.peers) == (1, True, None, 2)
        assert status.public_key == a.public_key
        await stopped(a, task)
        assert await mesh.record() is None  # a clean stop withdraws the node at once (its lease revoked)

    run(body)


def test_waits_for_its_intent_and_then_runs_it(mesh: Mesh) -> None:
    async def body() -> None:
        a, fake, task = await mesh.start((AZURE, GCP))
        status = await until(mesh.status)
        assert not status.ok and status.error is not None and status.error.startswith("waiting for intent")
        assert status.revision == 0
        await asyncio.sleep(0.2)
        assert await mesh.record() is None and fake.reconciles == 0  # nothing published, the device untouched
        await mesh.put_intents(ME)
        await until(mesh.record)
        await until(lambda: peers_of(fake) == {mesh.records[AZURE].public_key, mesh.records[GCP].public_key})

        async def ok() -> bool:
            s = await mesh.status()
            return s is not None and s.ok and s.revision == 1

        await until(ok)
        await stopped(a, task)

    run(body)


def test_an_intent_naming_another_node_under_its_key_is_refused(mesh: Mesh) -> None:
    async def body() -> None:
        await mesh.put_intents(AZURE, GCP)
        await mesh.root.put(mesh.layout.intent(ME), mesh.intents[AZURE].encode())
        a, fake = mesh.agent()
        task = asyncio.create_task(a.serve())

        async def refused() -> bool:
            s = await mesh.status()
            return s is not None and s.error is not None and "names node 'azure-talos-1'" in s.error

        await until(refused)
        assert await mesh.record() is None and fake.reconciles == 0
        # a later bad write keeps the last good intent: the node stays on the mesh, its status says why
        await mesh.put_intents(ME)
        await until(mesh.record)
        await mesh.root.put(mesh.layout.intent(ME), b'{"revision": 2}')
        await until(_status_says(mesh, "keeping its last good intent"))
        assert await mesh.record() is not None and a.own is not None
        await stopped(a, task)

    run(body)


def _status_says(mesh: Mesh, text: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        s = await mesh.status()
        return s is not None and s.error is not None and text in s.error

    return check


def test_a_new_intent_revision_republishes_only_when_the_record_changes(mesh: Mesh) -> None:
    async def body() -> None:
        a, fake, task = await mesh.start()
        await until(mesh.record)
        first = await mesh.root.get(mesh.layout.node(ME))
        assert first is not None
        # The operator re-planned: revision 2, same record, another MTU. The device follows, the record stays.
        await mesh.root.put(mesh.layout.intent(ME), replace(mesh.intents[ME], revision=2, mtu=1300).encode())
        await until(lambda: fake.mtu == 1300)
        await until(_revision(mesh, 2))
        same = await mesh.root.get(mesh.layout.node(ME))
        assert same is not None and same.mod_revision == first.mod_revision
        # Revision 3 moves the node's listen port: a bound field, so its record is published again.
        moved = replace(mesh.intents[ME].node, listen_port=51999)
        await mesh.root.put(mesh.layout.intent(ME), replace(mesh.intents[ME], revision=3, node=moved).encode())

        async def republished() -> bool:
            r = await mesh.record()
            return r is not None and r.listen_port == 51999

        await until(republished)
        await until(lambda: fake.device.listen_port == 51999)
        await until(_revision(mesh, 3))
        await stopped(a, task)

    run(body)


def _revision(mesh: Mesh, revision: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        s = await mesh.status()
        return s is not None and s.ok and s.revision == revision

    return check


def test_another_nodes_intent_arriving_admits_its_record(mesh: Mesh) -> None:
    """A record is bound against the intents: a node's record is refused until its intent is there."""

    async def body() -> None:
        a, fake, task = await mesh.start((ME, AZURE))
        await until(lambda: peers_of(fake) == {mesh.records[AZURE].public_key})
        assert "not in the mesh" in a.rejected[GCP]
        await mesh.put_intents(GCP)
        await until(lambda: mesh.records[GCP].public_key in peers_of(fake))
        assert GCP not in a.rejected
        # the operator removes it again: its peer goes
        await mesh.root.delete(mesh.layout.intent(GCP))
        await until(lambda: mesh.records[GCP].public_key not in peers_of(fake))
        await stopped(a, task)

    run(body)


def test_losing_its_own_intent_withdraws_its_record(mesh: Mesh) -> None:
    async def body() -> None:
        a, fake, task = await mesh.start()
        await until(mesh.record)
        await mesh.root.delete(mesh.layout.intent(ME))
        await until(_record_gone(mesh))
        await until(_status_says(mesh, "waiting for intent"))
        assert len(fake.peers) == 2  # the device keeps what it has
        await stopped(a, task)

    run(body)


def _record_gone(mesh: Mesh) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await mesh.record() is None

    return check


# --- the session ---------------------------------------------------------------------------------
def test_its_record_deleted_or_overwritten_is_published_again(mesh: Mesh) -> None:
    async def body() -> None:
        a, _, task = await mesh.start((ME, AZURE, GCP), ())
        mine = await until(mesh.record)
        await mesh.root.delete(mesh.layout.node(ME))
        await until(lambda: _same_record(mesh, mine))
        await mesh.root.put(mesh.layout.node(ME), b"{}")
        await until(lambda: _same_record(mesh, mine))
        await stopped(a, task)

    run(body)


async def _same_record(mesh: Mesh, want: records.NodeRecord) -> bool:
    got = await mesh.root.get(mesh.layout.node(ME))
    return got is not None and got.value == want.encode()


def test_etcd_down_keeps_the_data_plane_and_a_return_resyncs(mesh: Mesh) -> None:
    async def body() -> None:
        a, fake, task = await mesh.start()
        await until(mesh.record)
        await until(lambda: len(fake.peers) == 2)
        device, routes = fake.device, dict(fake.table)
        mesh.store.down = True
        await until(lambda: a.connected is None)
        await asyncio.sleep(0.2)  # retries meanwhile
        assert (fake.device, fake.table) == (device, routes)
        # during the outage every lease ran out: gcp's record (and ours) went
        mesh.store.down = False
        mesh.store.advance(120)
        await until(lambda: a.connected is not None)
        await until(lambda: set(fake.peers) == set())  # azure's and gcp's records expired too
        assert await until(mesh.record)  # published again, under a new lease
        await mesh.put_records(AZURE)
        await until(lambda: peers_of(fake) == {mesh.records[AZURE].public_key})
        await stopped(a, task)

    run(body)


def _break_watches(store: MemoryStore) -> None:
    """Every watch stream ends as a member's would when it goes away mid-stream."""
    for _, queue in list(store.watchers):
        queue.put_nowait(None)


def test_a_broken_watch_resumes_where_it_stopped(mesh: Mesh) -> None:
    async def body() -> None:
        a, fake, task = await mesh.start((ME, AZURE, GCP), (AZURE,))
        await until(lambda: len(fake.peers) == 1)
        lease = (await mesh.root.get(mesh.layout.node(ME))).lease  # type: ignore[union-attr]
        _break_watches(mesh.store)
        await mesh.put_records(GCP)  # while no watch runs: delivered from history on resume
        await until(lambda: len(fake.peers) == 2)
        # the same session: no new lease, no second publish
        assert (await mesh.root.get(mesh.layout.node(ME))).lease == lease  # type: ignore[union-attr]
        await stopped(a, task)

    run(body)


def test_a_compacted_history_is_read_again_in_full(mesh: Mesh) -> None:
    async def body() -> None:
        a, fake, task = await mesh.start((ME, AZURE, GCP), (AZURE,))
        await until(lambda: len(fake.peers) == 1)
        _break_watches(mesh.store)
        await mesh.put_records(GCP)
        await mesh.root.put(mesh.layout.intent(ME), replace(mesh.intents[ME], revision=2, mtu=1300).encode())
        mesh.store.compact(mesh.store.revision)  # the events above are gone from history
        await until(lambda: len(fake.peers) == 2 and fake.mtu == 1300)
        await stopped(a, task)

    run(body)


def test_status_is_written_on_change_and_at_the_refresh_cadence_at_most(mesh: Mesh) -> None:
    async def body() -> None:
        await mesh.put_intents(ME, AZURE, GCP)
        await mesh.put_records(AZURE, GCP)
        a, _ = mesh.agent()
        a.refresh_every = 0.2
        task = asyncio.create_task(a.serve())
        await until(_revision(mesh, 1))
        first = (await mesh.root.get(mesh.layout.status(ME))).version  # type: ignore[union-attr]
        for _ in range(20):  # a burst of events that change nothing this node reports
            a.report.set()
            await asyncio.sleep(0.02)
        writes = (await mesh.root.get(mesh.layout.status(ME))).version - first  # type: ignore[union-attr]
        assert writes <= 3, writes  # 0.4 s: two refreshes (and one spare for timing)
        await stopped(a, task)

    run(body)


# --- its key -------------------------------------------------------------------------------------
def test_an_etcd_fed_agent_makes_its_own_key_only(mesh: Mesh, open_umask: None) -> None:
    cfg = mesh.config(ME)
    keys = mesh.tmp / f"state-{ME}" / "keys"
    assert sorted(p.name for p in keys.iterdir()) == [f"{ME}.key", f"{ME}.pub"]
    assert stat.S_IMODE(os.stat(keys / f"{ME}.key").st_mode) == 0o600
    assert cfg.private_key_path == keys / f"{ME}.key" and cfg.intent_source == "etcd"
    before = (keys / f"{ME}.key").read_text()
    mesh.config(ME)  # again: the same key
    assert (keys / f"{ME}.key").read_text() == before
    assert StateStore(mesh.tmp / f"state-{ME}").private_key(ME) == before.strip()
    # and no allocation state
    assert sorted(p.name for p in (mesh.tmp / f"state-{ME}").iterdir()) == ["keys"]
    with pytest.raises(UsageError, match="not a DNS-1123 name"):
        etcd_fed_config("../etc", mesh.plan.mesh, mesh.tmp / "x", WHERE)


def test_the_etcd_fed_configuration_round_trips(mesh: Mesh) -> None:
    from crossmesh.agent.config import ConfigError

    cfg = mesh.config(ME)
    assert AgentConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="mtu is not read with intentSource etcd"):
        AgentConfig.from_json({**cfg.to_json(), "mtu": 1400})
    with pytest.raises(ConfigError, match="intentSource"):
        AgentConfig.from_json({**cfg.to_json(), "intentSource": "guess"})


# --- scheduled key rotation (spec.wireguard.keyRotation) --------------------------------------------
HOUR = 3600


class Clock:
    """Wall time the test moves: the agent's schedule reads it, nothing sleeps for it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _rotating(mesh: Mesh, seconds: int = HOUR, revision: int = 1) -> intents.NodeIntent:
    """This node's intent with keyRotation `seconds`."""
    mesh.intents[ME] = replace(mesh.intents[ME], key_rotation=seconds, revision=revision)
    return mesh.intents[ME]


async def _started(mesh: Mesh, clock: Clock) -> tuple[Agent, dataplane.Fake, asyncio.Task[None]]:
    await mesh.put_intents(ME, AZURE, GCP)
    await mesh.put_records(AZURE, GCP)
    a, fake = mesh.agent(clock=clock)
    task = asyncio.create_task(a.serve())
    await until(mesh.record)
    return a, fake, task


def _published(mesh: Mesh, a: Agent) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        r = await mesh.record()
        return r is not None and r.public_key == a.public_key

    return check


def test_the_key_rotates_when_it_is_a_period_old_and_not_before(mesh: Mesh) -> None:
    period = _rotating(mesh).rotation_period()

    async def body() -> None:
        clock = Clock()
        a, fake, task = await _started(mesh, clock)
        old_private, old_public = fake.device.private_key, a.public_key
        born = a.key_born
        assert born <= clock.now and clock.now - born < 60  # the key file's mtime: made a moment ago
        status = await until(mesh.status)
        assert status.next_rotation == born + period
        assert json.loads(a.status_path.read_text())["nextKeyRotation"] == born + period
        clock.now = born + period - 1
        await asyncio.sleep(0.2)  # ten rounds of the maintenance loop
        assert a.key_version == 1 and fake.device.private_key == old_private
        clock.now = born + period
        await until(lambda: a.key_version == 2)
        assert a.public_key != old_public
        await until(_published(mesh, a))
        await until(lambda: fake.device.private_key not in ("", old_private))  # the new key, once published
        assert a.pending is None and a.key_born == clock.now
        # the next rotation is a period after this one, in the status too
        await until(lambda: _next_rotation(mesh, clock.now + period))
        await asyncio.sleep(0.2)
        assert a.key_version == 2  # once, not every round
        await stopped(a, task)

    run(body)


def _next_rotation(mesh: Mesh, at: float) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        s = await mesh.status()
        return s is not None and s.next_rotation == at

    return check


def test_no_scheduled_rotation_without_a_period(mesh: Mesh) -> None:
    async def body() -> None:
        clock = Clock()
        a, _, task = await _started(mesh, clock)
        clock.now += 400 * 86400
        await asyncio.sleep(0.2)
        assert a.key_version == 1
        status = await until(mesh.status)
        assert status.next_rotation is None and b"next_rotation" not in status.encode()
        file = json.loads(a.status_path.read_text())
        assert (file["nextKeyRotation"], file["keyRotationPeriod"]) == (None, 0)
        await stopped(a, task)

    run(body)


def test_a_rotation_due_during_an_etcd_outage_waits_for_etcd(mesh: Mesh) -> None:
    period = _rotating(mesh).rotation_period()

    async def body() -> None:
        clock = Clock()
        a, fake, task = await _started(mesh, clock)
        old_private = fake.device.private_key
        mesh.store.down = True
        await until(lambda: a.connected is None)
        clock.now = a.key_born + 2 * period  # overdue while no etcd answers
        await asyncio.sleep(0.3)
        assert a.key_version == 1 and a.pending is None and fake.device.private_key == old_private
        mesh.store.down = False
        await until(lambda: a.key_version == 2)
        await until(_published(mesh, a))
        await until(lambda: fake.device.private_key != old_private)
        await stopped(a, task)

    run(body)


def test_a_rotated_key_that_cannot_be_published_stays_off_the_device(mesh: Mesh) -> None:
    """etcd goes away between the rotation and its publication (before the session notices): the
    device keeps the key its peers know; the next session publishes the new one and takes it."""

    async def body() -> None:
        a, fake, task = await _started(mesh, Clock())
        old_private = fake.device.private_key
        mesh.store.down = True
        a.rotate_key()  # as SIGUSR1 would, while the agent still believes it is connected
        await until(lambda: a.connected is None)
        await asyncio.sleep(0.1)
        assert fake.device.private_key == old_private and a.pending is not None
        mesh.store.down = False
        await until(_published(mesh, a))
        await until(lambda: fake.device.private_key == a.private != old_private)
        assert a.pending is None
        await stopped(a, task)

    run(body)


def test_a_new_period_applies_without_a_restart(mesh: Mesh) -> None:
    _rotating(mesh, 30 * 86400)

    async def body() -> None:
        clock = Clock()
        a, _, task = await _started(mesh, clock)
        clock.now = a.key_born + 100
        await asyncio.sleep(0.2)
        assert a.key_version == 1
        quick = _rotating(mesh, 60, revision=2)  # the operator published keyRotation: 1m
        await mesh.put_intents(ME)
        await until(lambda: a.key_version == 2)
        assert 54 <= quick.rotation_period() <= 66
        await until(_published(mesh, a))
        await stopped(a, task)

    run(body)


def test_a_restarted_agent_keeps_the_schedule_of_its_key(mesh: Mesh) -> None:
    """The key's age is its file's: a restart neither rotates at once nor starts the period again."""
    period = _rotating(mesh).rotation_period()

    async def body() -> None:
        mesh.config(ME)  # the key file made before the clock starts
        clock = Clock()
        a, _, task = await _started(mesh, clock)
        born = a.key_born
        await stopped(a, task)
        clock.now = born + period / 2  # restarted half a period later
        b, _, task = await _started(mesh, clock)
        assert b.key_born == born and b.schedule.next_at == born + period
        await asyncio.sleep(0.2)
        assert b.key_version == 1
        await stopped(b, task)
        # the key file last written two periods ago: due, and rotated once the agent is connected
        os.utime(b.key_path, (born - 2 * period, born - 2 * period))
        c, _, task = await _started(mesh, clock)
        assert c.key_born == born - 2 * period
        await until(lambda: c.key_version == 2)
        await until(_published(mesh, c))
        await stopped(c, task)

    run(body)


def test_the_period_is_jittered_per_node_deterministically_within_ten_percent() -> None:
    planned = records.PlannedNode(
        name="n", cluster="c", site="s", address="10.0.0.1", tunnel_address="100.64.0.1", pod_cidr="10.1.0.0/24",
        listen_port=51820, public_address=None,
    )  # fmt: skip
    periods = {}
    for i in range(200):
        node = replace(planned, name=f"node-{i}")
        intent = intents.NodeIntent(1, node, 1420, 25, 86400)
        periods[node.name] = intent.rotation_period()
        assert 0.9 * 86400 <= periods[node.name] <= 1.1 * 86400
        assert replace(intent, revision=7, mtu=1300).rotation_period() == periods[node.name]  # the name decides
    assert len(set(periods.values())) == len(periods)  # no two nodes re-key together
    assert min(periods.values()) < 0.92 * 86400 and max(periods.values()) > 1.08 * 86400  # the whole band is used
    assert intents.NodeIntent(1, planned, 1420, 25, 0).rotation_period() == 0.0


def test_a_status_without_next_rotation_still_decodes() -> None:
    old = b'{"at": 1.5, "error": null, "ok": true, "peers": 2, "public_key": "k", "revision": 3}'
    assert intents.decode_status(old, "n") == intents.NodeStatus(3, True, None, 2, "k", 1.5)
    new = intents.NodeStatus(3, True, None, 2, "k", 1.5, next_rotation=86400.25)
    assert intents.decode_status(new.encode(), "n") == new
    with pytest.raises(intents.IntentError, match="next_rotation is str"):
        intents.decode_status(old.replace(b"}", b', "next_rotation": "soon"}'), "n")


def test_a_rotation_that_cannot_write_the_key_is_tried_again_later(mesh: Mesh) -> None:
    period = _rotating(mesh).rotation_period()

    async def body() -> None:
        clock = Clock()
        a, fake, task = await _started(mesh, clock)
        key_path, old_private = a.key_path, fake.device.private_key
        a.key_path = mesh.tmp / "gone" / "key"  # its folder vanished: the write fails
        clock.now = a.key_born + period
        await until(lambda: a.schedule.next_at == clock.now + daemon.ROTATE_RETRY)
        await asyncio.sleep(0.2)
        assert a.key_version == 1 and fake.device.private_key == old_private  # not retried every round
        a.key_path = key_path
        clock.now += daemon.ROTATE_RETRY
        await until(lambda: a.key_version == 2)  # the maintenance loop lived through it
        await until(_published(mesh, a))
        await stopped(a, task)

    run(body)


def _status_says_ok(mesh: Mesh) -> Callable[[], Awaitable[intents.NodeStatus | None]]:
    async def check() -> intents.NodeStatus | None:
        status = await mesh.status()
        return status if status is not None and status.ok else None

    return check


def test_a_device_that_cannot_start_yet_does_not_end_the_agent(mesh: Mesh) -> None:
    """A joining node's agent starts before its namespace exists: starting the device fails at
    first; the agent keeps running, retries, and joins once the device can start."""

    class NotYet(dataplane.Fake):
        failures = 3

        def start(self) -> None:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("Cannot open network namespace: No such file or directory")
            super().start()

        def reconcile(self, desired: DeviceConf) -> list[str]:
            if not self.alive:  # as the control socket of a device that does not run
                raise RuntimeError(f"no control socket for {self.ifname}")
            return super().reconcile(desired)

    async def body() -> None:
        await mesh.put_intents(ME, AZURE, GCP)
        await mesh.put_records(AZURE, GCP)
        a, _ = mesh.agent()
        fake = NotYet(alive=False)
        a.dp = fake
        task = asyncio.create_task(a.run())
        await until(lambda: fake.starts == 1 and len(peers_of(fake)) == 2)
        assert fake.failures == 0 and not task.done()
        status = await until(_status_says_ok(mesh))
        assert status.peers == 2 and (await mesh.record()) is not None
        await stopped(a, task)

    run(body)
