"""The agent of one node: publish its record under an etcd lease, watch everyone else's,
and keep the node's WireGuard device and routes equal to what the records say.

    python -m crossmesh.agent.daemon CONFIG.json        (the lab starts one per node)
    crossmesh agent MESH --node N ... | --mesh NAME ... (a real node)

What the mesh plans for every node — the intent records are held to — comes from the mesh file
(inline), a file the lab rewrites, or the operator's intents in etcd (config.py); the etcd session
itself (read, lease, publish, watch, status) is session.py, over any `crossmesh.kv.api.Kv`, so that
these decisions are unit-tested on the in-memory store.

Changes are applied incrementally (`wg set ... peer`, one route at a time): a node
joining adds one peer here and resets nobody's session. When etcd is unreachable the
data plane keeps the last state and the agent retries; when it returns, the agent
publishes again and resyncs from a fresh read. The private key is read from the node's
key file and never leaves the node: etcd holds public keys only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from crossmesh.agent import dataplane, failover, handshakes, intents, kernel, metrics, records, rotation, session
from crossmesh.agent.config import AgentConfig, ConfigError
from crossmesh.agent.following import Following
from crossmesh.agent.log import log
from crossmesh.drivers.lab import wireguard
from crossmesh.errors import CrossmeshError
from crossmesh.kv import etcd as etcd_kv
from crossmesh.kv.api import Entry, Event, Kv
from crossmesh.state import disk
from crossmesh.state import keys as wgkeys

KvFactory = Callable[[], Awaitable[Kv]]  # a connected client of the first member that answers

AGENT_ROUTE_PROTO = dataplane.AGENT_ROUTE_PROTO
FULL_CHECK = 10.0  # seconds between reads of the device settings and routes back from the kernel
MAX_KEYS = 2 * records.MAX_RECORDS  # keys under the prefix the agent holds at all (etcd may hold more)
STATUS_REJECTED = 100  # rejected records named in the status file (the total is counted)
STATUS_EVERY = 5.0  # seconds between status writes when nothing happens (sixty agents share two CPUs)
RETRY = 0.5  # seconds between attempts to reach etcd
ROTATE_RETRY = 60.0  # seconds before a scheduled rotation that failed is tried again
TICK = 0.5  # seconds between the maintenance loop's rounds (device check, scheduled rotation, status)


class Agent:
    def __init__(
        self,
        cfg: AgentConfig,
        dp: dataplane.Dataplane | None = None,
        kv: KvFactory | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.clock = clock  # wall time, for the key's age (a key file's mtime is wall time too)
        self.node = cfg.node
        self.ifname = cfg.ifname
        self.namespace = cfg.namespace
        self.layout = cfg.layout
        self.prefix: bytes = self.layout.nodes
        self.ttl = cfg.ttl
        self.refresh_every = cfg.ttl / 3  # lease refreshes (and status heartbeats in etcd)
        self.key_path = cfg.private_key_path
        # The device, its link and the agent's routes: the kernel's, or a fake in unit tests.
        self.dp = dp or dataplane.Kernel(self.ifname, self.namespace, cfg.wireguard_log)
        # etcd, or the in-memory store in unit tests.
        self.connect_kv = kv or _etcd(cfg)
        self.status_path = cfg.status
        # The key on disk is the node's: after a rotation the configuration may still name the
        # previous public key. The device uses `private`; a rotated key waits in `pending`
        # until its public key is published, so the node is never re-keyed while peers cannot
        # learn it (etcd unreachable).
        self.private = disk.read_private(self.key_path).strip()
        self.public_key = wgkeys.public_key(self.private)  # the one published (`pending`'s once rotated)
        self.key_version = 1
        self.key_born = rotation.born(self.key_path, clock())  # when the key on disk was made
        self.pending: str | None = None
        self.applied: dict[str, records.DesiredPeer] = {}  # peers as the device has them
        self.applied_via: dict[str, str] = {}  # routes via the site's gateway as the kernel has them
        self.applied_private: str | None = None
        self.full_due = 0.0  # monotonic time of the next full check (see _apply)
        self.events: collections.deque[float] = collections.deque(maxlen=4)  # when the last watch events came
        self.rotated_at = -handshakes.ROTATION_WINDOW
        self.latest: dict[str, bytes] = {}  # each key's value as etcd last delivered it
        self.records: dict[str, records.NodeRecord] = {}  # the good record of each node
        self.rejected: dict[str, str] = {}
        self.bad: dict[str, str] = {}  # records refused on their own (malformed, not the mesh's)
        self.created: dict[str, int] = {}  # etcd create revision of each record: older wins an overlap
        self.own_created = 0  # and of our own
        self.announced = False  # whether peers can know our current public key (it is in etcd)
        self.synced = False  # whether etcd has been read once: until then the device keeps what it has
        self.put_needed = asyncio.Event()
        self.report = asyncio.Event()  # the node's status in etcd may have changed
        self.dirty = asyncio.Event()
        # What the mesh plans for every node (a record may change only its key and endpoint) and for
        # this one: inline (`crossmesh agent MESH` compiles the mesh), a file the lab rewrites on
        # membership changes, or the operator's intents in etcd — then this node's own intent gives
        # its record, MTU and keepalive, and it publishes and applies nothing until it exists.
        self.following = Following.of(cfg)
        self.followed: intents.NodeIntent | None = None  # this node's intent as last acted on
        self.own: records.NodeRecord | None = None  # None: no intent yet (etcd)
        self.applied_revision = 0  # the intent revision the last successful apply made real
        self.apply_error: str | None = None
        self.chosen: dict[str, str] = {}  # site → its active gateway as etcd names it (topology: gateways)
        self.failover = failover.Failover(self)  # following it, and (a gateway) probing and taking over
        self.metrics = metrics.AgentMetrics(self)  # its own registry; served by `run` (cfg.metrics)
        if cfg.intent_source != "etcd":
            try:
                self.own = records.NodeRecord(**{**(cfg.record or {}), "public_key": self.public_key})
            except TypeError as err:
                raise ConfigError(f"agent configuration: record is not a node record ({err})") from None
            why = records.bind(self.own, self.following.nodes)
            if why is not None:
                raise SystemExit(f"this node's own record does not match the mesh: {why}")
        self.connected: str | None = None
        self.failure: str | None = None  # the last reason etcd could not be used, logged once
        self.lease_refreshed = 0.0
        self.last_reconcile = 0.0
        self.last_reconcile_ms = 0.0
        self.reconciles = 0
        self.wg_restarts = 0
        self.rotate = asyncio.Event()
        self.stop = asyncio.Event()
        self.work = threading.Lock()  # applies and device restores never overlap
        self.status_lock = threading.Lock()
        self.status_written = 0.0
        self.peer_count = 0

    # --- the loop ---------------------------------------------------------------------------
    async def run(self, await_device: float = 0.0) -> None:
        lock = self._lock()
        if lock is None:
            log(f"another agent of node {self.node} is running: exiting")
            return
        deadline = time.monotonic() + await_device
        sock = wireguard.SOCKET_DIR / f"{self.ifname}.sock"
        while time.monotonic() < deadline and not (sock.exists() and self.dp.running()):
            await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR1, self.rotate.set)
        # Netlink (pyroute2) runs its own event loop: device and route work happens on a thread.
        # The device keeps what it has until etcd has been read: an agent restarted while etcd is
        # down must not empty it.
        try:
            await asyncio.to_thread(self._check_device)
        except Exception as err:  # noqa: BLE001 - its namespace not built yet (a join): maintain retries
            log(f"cannot start {self.ifname} yet ({err}); retrying every {TICK} s")
        async with self.metrics.serving():
            await self.serve()
        os.close(lock)

    async def serve(self) -> None:
        """Sessions with etcd, one after the other, until stopped: etcd down, a member gone or a
        certificate refused keeps the data plane as it is and tries again."""
        tasks = [asyncio.create_task(self.maintain()), asyncio.create_task(self.apply_loop())]
        try:
            while not self.stop.is_set():
                try:
                    kv = await self.connect_kv()
                except Exception as err:  # noqa: BLE001 - KvUnavailable, KvDenied, unreadable TLS files
                    self._failed(f"cannot reach etcd ({type(err).__name__}: {err}); keeping the last state")
                    await asyncio.sleep(RETRY)
                    continue
                self.connected, self.failure = kv.endpoint, None
                try:
                    await session.run(self, kv)
                except Exception as err:  # noqa: BLE001 - etcd down, member gone: keep the data plane, retry
                    self._failed(f"etcd session lost ({type(err).__name__}: {err}); keeping the last state")
                    await asyncio.sleep(RETRY)
                finally:
                    self.connected = None
                    with contextlib.suppress(Exception):
                        await kv.close()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.failover.stop()

    def _failed(self, why: str) -> None:
        if why != self.failure:
            log(why)
        self.failure, self.connected = why, None
        self.write_status()

    def _lock(self) -> int | None:
        """One agent per node: an exclusive lock beside the status file, released by the kernel
        when the agent dies. A second agent started by a race (a supervisor restarting an agent
        that `lab up` is replacing) gives up instead of publishing and applying twice."""
        path = self.status_path.with_suffix(".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    # --- records ------------------------------------------------------------------------------
    def record_events(self, batch: list[Event]) -> None:
        for ev in batch:
            self.events.append(time.monotonic())
            name = ev.entry.key[len(self.prefix) :].decode(errors="replace")
            deleted = ev.kind == "delete"
            if name == self.node:
                if self.own is not None and (deleted or ev.entry.value != self.own.encode() and self.announced):
                    self.put_needed.set()  # someone deleted or overwrote us: publish again
                elif self.own is None and not deleted:
                    self.put_needed.set()  # a record of ours while the mesh has none: withdrawn
                if not deleted:
                    self.own_created = ev.entry.create_revision
                continue
            if deleted:
                self.records.pop(name, None)
                self.latest.pop(name, None)
                self.bad.pop(name, None)
                self.created.pop(name, None)
                log(f"node {_safe(name)} left")
            else:
                self.created[name] = ev.entry.create_revision
                self._take(name, ev.entry.value)
            self.dirty.set()

    def load(self, entries: list[Entry]) -> None:
        """A full read of the prefix: the record set is swapped for it only once every record has
        been taken (a read that fails halfway leaves the last one in place)."""
        self._reload_intent()
        latest, created, announced = {}, {}, False
        if len(entries) > MAX_KEYS:
            log(f"{len(entries)} keys under {self.prefix.decode()}: only the {MAX_KEYS} oldest are read")
            entries = sorted(entries, key=lambda e: e.create_revision)[:MAX_KEYS]
        for e in entries:
            name = e.key[len(self.prefix) :].decode(errors="replace")
            if name == self.node:
                self.own_created = e.create_revision
                with contextlib.suppress(records.RecordError):
                    # Our record, left by the agent before this one: peers know this key already.
                    announced = records.decode(e.value).public_key == self.public_key
            else:
                created[name], latest[name] = e.create_revision, e.value
        previous = self.records
        self.records, self.bad = {}, {}
        for name, raw in latest.items():
            self._take(name, raw, previous.get(name))
        self.latest, self.created, self.announced = latest, created, announced
        self.synced = True
        self.dirty.set()

    def _take(self, name: str, raw: bytes, previous: records.NodeRecord | None = None) -> None:
        if name not in self.latest and len(self.latest) >= MAX_KEYS:
            self.bad["(past the limit)"] = f"more than {MAX_KEYS} keys under the prefix: the newest are ignored"
            return
        self.latest[name] = raw
        rec, why = records.take(name, raw, self.intent, previous or self.records.get(name))
        if why is not None and name not in self.intent and self._reload_intent():
            rec, why = records.take(name, raw, self.intent, previous or self.records.get(name))
        if why is not None:
            if self.bad.get(name) != why:
                log(f"rejected record of {_safe(name)}: {why}")
            self.bad[name] = why
        else:
            self.bad.pop(name, None)
        if rec is None:
            self.records.pop(name, None)
        else:
            self.records[name] = rec

    # --- intents --------------------------------------------------------------------------------
    def load_intents(self, entries: list[Entry]) -> None:
        self.following.load(entries)
        self._intents_changed()

    def intent_events(self, batch: list[Event]) -> None:
        self.following.events(batch)
        self._intents_changed()

    def _intents_changed(self) -> None:
        """Act on what the intents now say: this node's record is published again when its planned
        fields changed (or withdrawn when it has no intent), every record is judged again, and the
        node applies what follows."""
        mine = self.following.mine
        if mine is not None and mine != self.followed:
            self.full_due = 0.0  # an MTU (or address) of its own may have changed: the device is checked
        self.followed = mine
        tunnel = mine is not None and bool(mine.node.tunnel_address)  # a node of a gateways mesh may have none
        own = records.record_from(mine.node, self.public_key, self.key_version) if mine and tunnel else None
        if own != self.own:
            self.own = own
            self.put_needed.set()
        self._judge_again()
        self.report.set()

    def _judge_again(self) -> None:
        for name, raw in list(self.latest.items()):
            self._take(name, raw)
        self.dirty.set()

    @property
    def intent(self) -> dict[str, records.PlannedNode]:
        return self.following.nodes

    @property
    def mtu(self) -> int:
        mine = self.following.mine
        return (self.cfg.mtu or 0) if mine is None else mine.mtu

    @property
    def keepalive(self) -> int:
        mine = self.following.mine
        return (self.cfg.keepalive or 0) if mine is None else mine.keepalive

    @property
    def schedule(self) -> rotation.Schedule:
        """When the key is due: its age and this node's jittered period, from the intent followed now
        (a new intent's period applies at once) or the mesh file's."""
        mine = self.following.mine
        period = mine.key_rotation if mine is not None else self.cfg.key_rotation or 0
        return rotation.Schedule(self.key_born, intents.rotation_period(period, self.node))

    def node_status(self) -> intents.NodeStatus:
        """What this node reports under `status/<node>`: the intent revision it runs, or why not."""
        error = self.following.error or self.apply_error
        return intents.NodeStatus(
            revision=self.applied_revision,
            ok=error is None,
            error=error,
            peers=self.peer_count,
            public_key=self.public_key,
            at=time.time(),
            next_rotation=self.schedule.next_at,
        )

    def _reload_intent(self) -> bool:
        """The lab's intent file read again if it changed; every record then judged again."""
        if not self.following.reload():
            return False
        self._judge_again()
        return True

    # --- applying -----------------------------------------------------------------------------
    async def apply_loop(self) -> None:
        while True:
            await self.dirty.wait()
            # Coalesce a burst of events into one apply: 10 ms after a quiet spell (a join is
            # applied at once), 200 ms while events keep coming (sixty agents starting together
            # would otherwise each apply sixty times).
            busy = len(self.events) == self.events.maxlen and time.monotonic() - self.events[0] < 1.0
            await asyncio.sleep(0.2 if busy else 0.01)
            self.dirty.clear()
            with contextlib.suppress(Exception):  # logged; tried again on the next change or tick
                await asyncio.to_thread(self.apply)
            self.report.set()

    def apply(self) -> None:
        """Apply what the records say; a failure is logged, kept for the status, and raised."""
        with self.work, self.metrics.applying():
            try:
                self._apply()
            except Exception as err:
                self.apply_error = f"apply failed: {type(err).__name__}: {err}"
                log(self.apply_error)
                raise
            self.apply_error = None

    @property
    def route_only(self) -> bool:
        """A node without a tunnel (topology gateways): its agent keeps only its routes via the site's
        active gateway — no device, no record."""
        mine = self.following.mine
        return mine is not None and not mine.node.tunnel_address

    def _apply(self) -> None:
        if self.synced and self.route_only:
            full = time.monotonic() >= self.full_due
            for c in self._via(full):
                log(c)
            self.full_due = time.monotonic() + FULL_CHECK if full else self.full_due
            self.applied_revision = self.following.revision
            self.last_reconcile, self.reconciles = time.time(), self.reconciles + 1
            self.write_status(0)
            return
        if not self.synced or self.own is None:
            return  # nothing read yet (an agent started while etcd is down must not empty the device), or no intent
        own, revision = self.own, self.following.revision
        t0 = time.monotonic()
        # Copies: the event loop changes these while this runs on a thread (a dict copy is atomic
        # under the GIL; iterating the live dict is not).
        ok, rejected = records.accept(own, dict(self.records), dict(self.created))
        for name, why in rejected.items():
            if self.rejected.get(name) != why:
                log(f"rejected record of {name}: {why}")
        self.rejected = {**rejected, **self.bad}
        peers = records.desired_peers(own, ok, self.keepalive, self.intent, self.chosen)
        desired = wireguard.DeviceConf(
            self.private,
            own.listen_port,
            {p.public_key: wireguard.PeerConf(p.public_key, p.endpoint, p.allowed_ips, p.keepalive) for p in peers},
        )
        # Device settings and routes are read back from the kernel on a (re)start and every
        # FULL_CHECK seconds; in between, a change applies the difference from the last apply.
        full = self.applied_private is None or time.monotonic() >= self.full_due
        t1 = time.monotonic()
        self._restore_device()  # a device that died (or was never started here) first
        changes = self.dp.reconcile(desired)
        t2 = time.monotonic()
        changes += kernel.device_settings(self.dp, self.ifname, self.mtu, own.tunnel_address) if full else []
        t3 = time.monotonic()
        want = {a for p in peers for a in p.allowed_ips}
        last = None if full else {a for p in self.applied.values() for a in p.allowed_ips}
        changes += self._kernel(kernel.tunnel_routes, self.dp, self.ifname, want, last)
        changes += self._via(full)
        if full:
            self.full_due = time.monotonic() + FULL_CHECK
        self.last_reconcile = time.time()
        self.last_reconcile_ms = (time.monotonic() - t0) * 1000
        self.reconciles += 1
        for c in changes:
            log(c)
        if changes:
            ms = [round(1000 * (b - a)) for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, time.monotonic()))]
            log(
                f"applied {len(changes)} changes in {self.last_reconcile_ms:.0f} ms (records {ms[0]}, "
                f"wireguard {ms[1]}, device {ms[2]}, routes {ms[3]})"
            )
        changed = [p for p in peers if self.applied.get(p.node) != p]
        first = self.applied_private is None  # agent or device (re)started: nothing was set here
        rotated = not first and self.applied_private != self.private
        if rotated:
            self.rotated_at = time.monotonic()
        before, self.applied, self.applied_private = self.applied, {p.node: p for p in peers}, self.private
        if changed or rotated:
            handshakes.start(self, own, peers, changed, first=first, rotated=rotated, before=before)
        self.applied_revision = revision
        self.write_status(len(peers))

    def _via(self, full: bool) -> list[str]:
        """Under `topology: gateways`, the routes via the site's active gateway (none on that gateway)."""
        want = records.GatewayView.of(self.intent, self.chosen).routes(self.node, self.intent)
        changes = self._kernel(kernel.via_routes, self.dp, want, None if full else self.applied_via)
        self.applied_via = want
        return changes

    def _kernel(self, step: Callable[..., list[str]], *args: object) -> list[str]:
        """A change of routes; when the kernel refuses it, everything is read back next time."""
        try:
            return step(*args)
        except (RuntimeError, OSError):
            self.full_due = 0.0  # the kernel differs from what was applied
            raise

    # --- device health and key rotation ------------------------------------------------------
    def _check_device(self) -> bool:
        with self.work:
            return self._restore_device()

    def _restore_device(self) -> bool:
        if self.stop.is_set() or self.dp.running():
            return False  # stopping: whoever stops the agent may be stopping wireguard-go too
        if self.route_only or (self.following.mine is None and self.cfg.intent_source == "etcd"):
            return False  # no tunnel here, or not known yet: no device is made on a guess
        self.dp.start()  # a real node's device is not the agent's to start: this raises there
        log(f"wireguard-go for {self.ifname} was not running: started it")
        self.applied, self.applied_private = {}, None  # a new device: every peer is new to it
        self.wg_restarts += 1
        return True

    async def maintain(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK):  # not wait_for: see session.keep
                    await self.rotate.wait()
            self._reload_intent()
            reachable = self.connected is not None and self.synced
            if self.schedule.due(self.clock(), reachable=reachable, pending=self.pending is not None):
                log(f"key due for rotation (every {self.schedule.period:.0f} s on this node)")
                self.rotate.set()  # the path SIGUSR1 takes
            if self.rotate.is_set():
                self.rotate.clear()
                try:
                    self.rotate_key()
                except (OSError, CrossmeshError) as err:  # the key file not writable: the old key stays
                    log(f"cannot rotate the key: {err}; a scheduled rotation is tried again in {ROTATE_RETRY:.0f} s")
                    self.key_born = max(self.key_born, self.clock() - self.schedule.period + ROTATE_RETRY)
            try:
                if await asyncio.to_thread(self._check_device) or time.monotonic() >= self.full_due:
                    self.dirty.set()
            except Exception as err:  # noqa: BLE001
                log(f"cannot restore {self.ifname}: {err}")
            if time.monotonic() - self.status_written > STATUS_EVERY:
                self.write_status()  # applies and lease refreshes write it too

    def rotate_key(self) -> None:
        """New key on the node: set on the device and published at once when etcd answers (`publish`),
        not before, so that a node never takes a key its peers cannot learn; peers follow."""
        private = wgkeys.generate_private_key()
        disk.write_private(self.key_path, private + "\n")  # the one writer of private keys: 0600, no link followed
        pub = self.key_path.with_suffix(".pub")
        if pub.exists():
            folder = disk.open_dir(pub.parent, pub.parent)
            try:
                disk.write_at(folder, pub.name, (wgkeys.public_key(private) + "\n").encode(), disk.SHARED, pub)
            finally:
                os.close(folder)
        self.public_key, self.key_version = wgkeys.public_key(private), self.key_version + 1
        self.key_born = self.clock()
        if self.own is not None:
            self.own = replace(self.own, public_key=self.public_key, version=self.key_version)
        self.pending = private
        self.put_needed.set()
        log(f"key rotated (version {self.key_version})")
        self.report.set()  # the next rotation moved

    def write_status(self, peers: int | None = None) -> None:
        data = {
            "node": self.node,
            "pid": os.getpid(),
            "etcd": self.connected,
            "leaseRefreshed": self.lease_refreshed,
            "lastReconcile": self.last_reconcile,
            "lastReconcileMs": round(self.last_reconcile_ms, 2),
            "reconciles": self.reconciles,
            "records": len(self.records),
            "rejected": dict(sorted(self.rejected.items())[:STATUS_REJECTED]),
            "rejectedTotal": len(self.rejected),
            "wireguardRestarts": self.wg_restarts,
            "keyVersion": self.key_version,
            "keyRotationPeriod": round(self.schedule.period, 1),  # seconds, jittered; 0: only when asked
            "nextKeyRotation": self.schedule.next_at,  # unix time (past while etcd is unreachable)
            "intentSource": self.cfg.intent_source,
            "intentRevision": self.following.revision,
            "appliedRevision": self.applied_revision,
            "error": self.following.error or self.apply_error,
            "gateways": self.failover.status(),
            "updated": time.time(),
        }
        # Written from the event loop and from the apply thread: one at a time, or the two
        # would rename the same temporary file.
        with self.status_lock:
            self.status_written = time.monotonic()
            if peers is not None:
                self.peer_count = peers
            data["peers"] = self.peer_count
            tmp = self.status_path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(data, sort_keys=True))
                tmp.replace(self.status_path)
            except OSError as err:  # a full or vanished state directory must not stop the agent
                log(f"cannot write status: {err}")


def _etcd(cfg: AgentConfig) -> KvFactory:
    """A client of the first of the configuration's etcd members that answers, over TLS when the
    configuration names its files."""
    tls = None if cfg.tls is None else etcd_kv.Tls(Path(cfg.tls["ca"]), Path(cfg.tls["cert"]), Path(cfg.tls["key"]))

    async def connect() -> Kv:
        return await etcd_kv.connect(list(cfg.etcd), tls)

    return connect


def _safe(name: str) -> str:
    """A node name from an etcd key, fit for one log line (keys are anyone's bytes)."""
    text = name if name.isprintable() else repr(name)
    return text if len(text) <= 64 else text[:61] + "..."


def main(argv: list[str]) -> int:
    """`python -m crossmesh.agent.daemon CONFIG.json [AWAIT_DEVICE_SECONDS]`: the lab starts the
    agent of a joining node while it still builds the node, and gives it that long for the
    device to appear before the agent starts wireguard-go itself."""
    if len(argv) not in (1, 2):
        print("usage: python -m crossmesh.agent.daemon CONFIG.json [AWAIT_DEVICE_SECONDS]", file=sys.stderr)
        return 2
    try:
        agent = Agent(AgentConfig.from_json(json.loads(Path(argv[0]).read_text())))
    except (CrossmeshError, ValueError) as err:  # its configuration or key file wrong: nothing to run with
        print(f"error: {err}", file=sys.stderr)
        return 2
    asyncio.run(agent.run(await_device=float(argv[1]) if len(argv) == 2 else 0.0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
