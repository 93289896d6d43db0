"""`crossmesh operator`: replicas campaign for one lease-bound leader key; the leader turns each
applied revision into allocations and intents. The others wait for the key to go (its holder
stopped, or its lease ran out) and take over.

The data plane does not depend on the operator: agents keep what they run when it is down, and a
new leader starts from what etcd holds (allocations never move, unchanged intents are not rewritten).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from crossmesh.agent.intents import NodeIntent
from crossmesh.errors import SpecError
from crossmesh.kv.api import Compare, Kv, KvError, Lease, LeaseExpired, Put
from crossmesh.kv.layout import Layout
from crossmesh.operator import desired as desired_mod
from crossmesh.operator import ipam, publish
from crossmesh.workspace import plan_against

RESYNC = 30.0  # seconds between full reconciles when nothing changes (heals a deleted intent)
ALLOCATE_ATTEMPTS = 5


def log(msg: str) -> None:
    now = time.time()
    print(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d} {msg}", flush=True)


class Operator:
    def __init__(
        self,
        connect: Callable[[], Awaitable[Kv]],
        mesh: str,
        identity: str,
        ttl: int = 5,
        say: Callable[[str], None] = log,
    ) -> None:
        self.connect = connect
        self.layout = Layout(mesh)
        self.identity = identity
        self.ttl = ttl
        self.say = say
        self.stop = asyncio.Event()
        self.leading = asyncio.Event()
        self.led_at: float | None = None  # monotonic time leadership was last won
        self.reconciles = 0
        self.ipam = ipam.View(self.layout)
        self.fence: list[Compare] = []  # every write holds only while the leader key is ours

    async def run(self) -> None:
        while not self.stop.is_set():
            kv: Kv | None = None
            try:
                kv = await self.connect()
                await self._term(kv)
            except KvError as err:
                if not self.stop.is_set():
                    self.say(f"etcd: {err}; retrying")
                    await asyncio.sleep(0.5)
            finally:
                self.leading.clear()
                if kv is not None:
                    await kv.close()

    async def _term(self, kv: Kv) -> None:
        """Campaign, then lead until the lease is lost or the operator stops."""
        lease = await kv.grant(self.ttl)
        try:
            won = await self._until_stopped(self._campaign(kv, lease))
            if not won:
                return
            self.leading.set()
            self.led_at = time.monotonic()
            self.say(f"{self.identity} leads mesh {self.layout.mesh} (lease ttl {lease.ttl}s)")
            await self._until_stopped(self._lead(kv, lease))
        finally:
            if self.stop.is_set():
                with contextlib.suppress(KvError):
                    await kv.revoke(lease.id)  # step down at once: another replica takes over now

    async def _until_stopped(self, work: Awaitable[object]) -> bool:
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self.stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for t in (task, stopper):
            t.cancel()
        if task in done:
            task.result()  # raises what the work raised
            return True
        return False

    async def _keep(self, kv: Kv, lease: Lease) -> None:
        while True:
            await asyncio.sleep(lease.ttl / 3)
            await kv.refresh(lease.id)

    async def _campaign(self, kv: Kv, lease: Lease) -> None:
        """Return once this replica holds the leader key; keep the lease alive meanwhile."""
        keeper = asyncio.create_task(self._keep(kv, lease))
        me = json.dumps({"id": self.identity, "since": time.time(), "lease": lease.id}).encode()
        self.fence = [Compare(self.layout.leader, "value", me)]
        try:
            while True:
                got = await kv.txn([Compare(self.layout.leader, "create", 0)], [Put(self.layout.leader, me, lease.id)])
                if got.succeeded:
                    return
                holder = await kv.get(self.layout.leader)
                if holder is None:
                    continue
                self.say(f"{self.identity} stands by: {publish.leader_id(holder.value)} leads")
                await _first(keeper, self._gone(kv, holder.mod_revision + 1))
        finally:
            keeper.cancel()

    async def _gone(self, kv: Kv, revision: int) -> None:
        async for batch in kv.watch(self.layout.leader, revision):
            if any(e.kind == "delete" and e.entry.key == self.layout.leader for e in batch):
                return

    async def _lead(self, kv: Kv, lease: Lease) -> None:
        keeper = asyncio.create_task(self._keep(kv, lease))
        try:
            while True:
                revision = await self.reconcile(kv)
                await _first(keeper, self._changed(kv, revision + 1), asyncio.sleep(RESYNC))
        finally:
            keeper.cancel()

    async def _changed(self, kv: Kv, revision: int) -> None:
        async for _ in kv.watch(self.layout.desired, revision):
            return

    # --- one reconcile ------------------------------------------------------------------------
    async def reconcile(self, kv: Kv) -> int:
        """Bring allocations, intents and the rollout record to the applied revision; the store
        revision it read the desired state at."""
        self.reconciles += 1
        snap = await kv.range(self.layout.desired)
        snap_revision = snap.revision
        entry = next((e for e in snap.entries if e.key == self.layout.desired), None)
        if entry is None:
            return snap_revision
        try:
            wanted = desired_mod.decode(entry.value)
        except desired_mod.DesiredError as err:
            await self._failed(kv, 0, "", f"{err}: the intents stay at the last good revision")
            return snap_revision
        try:
            intents = await self._plan(kv, wanted)
        except (SpecError, ipam.AllocationError) as err:
            why = str(err).replace("\n", "; ")
            await self._failed(kv, wanted.revision, wanted.digest, why)
            return snap_revision
        written, deleted = await publish.publish(kv, self.layout, intents, self.fence)
        await publish.gateways(kv, self.layout, intents, self.fence, self.identity)
        await publish.finish(
            kv,
            self.layout,
            publish.Rollout(wanted.revision, wanted.digest, sorted(intents), None, self.identity, time.time()),
            self.fence,
        )
        self.say(f"revision {wanted.revision}: {len(intents)} nodes, {written} intents written, {deleted} deleted")
        return snap_revision

    async def _plan(self, kv: Kv, wanted: desired_mod.Desired) -> dict[str, NodeIntent]:
        with tempfile.TemporaryDirectory(prefix="crossmesh-operator-") as tmp:
            path = desired_mod.materialize(wanted, Path(tmp))
            for _ in range(ALLOCATE_ATTEMPTS):
                previous, guard = await self.ipam.read(kv)
                loaded, alloc, plan = await asyncio.to_thread(plan_against, path, previous)
                if await self.ipam.commit(kv, previous, guard, alloc, self.fence):
                    return publish.intents_for(plan, wanted.revision, loaded.mesh.spec.wireguard)
            raise ipam.AllocationError(f"allocations kept changing under the operator ({ALLOCATE_ATTEMPTS} attempts)")

    async def _rollout(self, kv: Kv) -> publish.Rollout | None:
        got = await kv.get(self.layout.rollout)
        if got is None:
            return None
        try:
            return publish.decode_rollout(got.value)
        except (ValueError, KeyError, TypeError):
            return None

    async def _failed(self, kv: Kv, revision: int, digest: str, why: str) -> None:
        self.say(f"revision {revision} not rolled out: {why}")
        last = await self._rollout(kv)
        nodes = last.nodes if last is not None else []
        kept = last.revision if last is not None else 0
        rollout = publish.Rollout(kept, digest if last is None else last.digest, nodes, why, self.identity, time.time())
        await publish.finish(kv, self.layout, rollout, self.fence)


async def _first(keeper: asyncio.Task[None], *work: Awaitable[object]) -> None:
    """Wait for the first of `work` to finish, or for the lease keeper to fail (the term is over:
    its error is raised). The rest of `work` is cancelled; the keeper keeps running."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait([keeper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
    if keeper in done:
        keeper.result()
        raise LeaseExpired("the leader's lease keeper stopped")
    for t in done:
        t.result()
