"""The agent of one node: publish its record under an etcd lease, watch everyone else's,
and keep the node's WireGuard device and routes equal to what the records say.

    python -m crossmesh.agent.daemon CONFIG.json        (the lab starts one per node)
    crossmesh agent --config CONFIG.json                (a real node)

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
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import aetcd

from crossmesh.agent import dataplane, etcd_client, records
from crossmesh.agent.config import AgentConfig, ConfigError
from crossmesh.drivers.lab import wireguard
from crossmesh.errors import CrossmeshError
from crossmesh.state import disk
from crossmesh.state import keys as wgkeys

AGENT_ROUTE_PROTO = dataplane.AGENT_ROUTE_PROTO
# Handshakes after a change: one end of a pair initiates at once, the other only if nothing came
# from it after this long (two initiations that cross each other both fail, and WireGuard retries
# only after 5 s). Longer after a join: each of the other nodes initiates when its watch delivers
# the newcomer's record and it has applied it, which on a loaded host (thirty agents on two CPUs
# react to the same event) can take most of a second; a fallback fired meanwhile would cross.
# Within ROTATION_WINDOW of its own key change a node defers to a lower-named peer that changed
# too (both rotated at once).
POKE_LATER = 0.5
POKE_LATER_JOIN = 2.0
ROTATION_WINDOW = 2.0
FULL_CHECK = 10.0  # seconds between reads of the device settings and routes back from the kernel
MAX_KEYS = 2 * records.MAX_RECORDS  # keys under the prefix the agent holds at all (etcd may hold more)
STATUS_REJECTED = 100  # rejected records named in the status file (the total is counted)
STATUS_EVERY = 5.0  # seconds between status writes when nothing happens (sixty agents share two CPUs)


def log(msg: str) -> None:
    now = time.time()
    print(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d} {msg}", flush=True)


class Agent:
    def __init__(self, cfg: AgentConfig, dp: dataplane.Dataplane | None = None) -> None:
        self.cfg = cfg
        self.node = cfg.node
        self.ifname = cfg.ifname
        self.namespace = cfg.namespace
        self.prefix: bytes = cfg.prefix.encode()
        self.ttl = cfg.ttl
        self.keepalive = cfg.keepalive
        self.key_path = cfg.private_key_path
        # The device, its link and the agent's routes: the kernel's, or a fake in unit tests.
        self.dp = dp or dataplane.Kernel(self.ifname, self.namespace, cfg.wireguard_log)
        self.status_path = cfg.status
        # The key on disk is the node's: after a rotation the configuration may still name the
        # previous public key. The device uses `private`; a rotated key waits in `pending`
        # until its public key is published, so the node is never re-keyed while peers cannot
        # learn it (etcd unreachable).
        self.private = disk.read_private(self.key_path).strip()
        self.pending: str | None = None
        self.applied: dict[str, records.DesiredPeer] = {}  # peers as the device has them
        self.applied_private: str | None = None
        self.full_due = 0.0  # monotonic time of the next full check (see _apply)
        self.events: collections.deque[float] = collections.deque(maxlen=4)  # when the last watch events came
        self.rotated_at = -ROTATION_WINDOW
        try:
            self.own = records.NodeRecord(**{**cfg.record, "public_key": wgkeys.public_key(self.private)})
        except TypeError as err:
            raise ConfigError(f"agent configuration: record is not a node record ({err})") from None
        # What the mesh plans for every node: a record may change only its key and endpoint. Inline
        # (`crossmesh agent` compiles the mesh) or a file the lab rewrites on membership changes.
        self.intent_path = cfg.intent_path
        self.intent_seen: tuple[int, int] | None = None
        self.intent: dict[str, records.PlannedNode] = {}
        if self.intent_path is None:
            try:
                self.intent = {n: records.PlannedNode(**p) for n, p in (cfg.intent or {}).items()}
            except TypeError as err:
                raise ConfigError(f"agent configuration: intent is not the mesh's ({err})") from None
        else:
            self._reload_intent()
        why = records.bind(self.own, self.intent)
        if why is not None:
            raise SystemExit(f"this node's own record does not match the mesh: {why}")
        self.latest: dict[str, bytes] = {}  # each key's value as etcd last delivered it
        self.records: dict[str, records.NodeRecord] = {}  # the good record of each node
        self.rejected: dict[str, str] = {}
        self.bad: dict[str, str] = {}  # records refused on their own (malformed, not the mesh's)
        self.created: dict[str, int] = {}  # etcd create revision of each record: older wins an overlap
        self.own_created = 0  # and of our own
        self.announced = False  # whether peers can know our current public key (it is in etcd)
        self.synced = False  # whether etcd has been read once: until then the device keeps what it has
        self.connected: str | None = None
        self.lease_refreshed = 0.0
        self.last_reconcile = 0.0
        self.last_reconcile_ms = 0.0
        self.reconciles = 0
        self.wg_restarts = 0
        self.dirty = asyncio.Event()
        self.rotate = asyncio.Event()
        self.stop = asyncio.Event()
        self.put_needed = asyncio.Event()
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
        await asyncio.to_thread(self._check_device)
        tasks = [asyncio.create_task(self.maintain()), asyncio.create_task(self.apply_loop())]
        while not self.stop.is_set():
            try:
                await self.session()
            except Exception as err:  # noqa: BLE001 - etcd down, member gone: keep the data plane, retry
                if self.connected is not None:
                    log(f"etcd session lost ({type(err).__name__}: {err}); keeping the last state")
                self.connected = None
                self.write_status()
                await asyncio.sleep(0.5)
        for t in tasks:
            t.cancel()
        os.close(lock)

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

    async def connect(self) -> aetcd.Client:
        client, self.connected = await etcd_client.connect(list(self.cfg.etcd), self.cfg.tls)
        return client

    async def session(self) -> None:
        client = await self.connect()
        try:
            key = self.prefix + self.node.encode()
            # The mesh first, then our record: once peers learn of this node it has them all, so
            # each can initiate its handshake at once (see _handshakes). The lease is taken after
            # that apply, which on a loaded host can take longer than the TTL.
            got = await client.get_prefix(self.prefix)
            self.load([(kv.key, kv.value, kv.create_revision) for kv in got])
            self.dirty.clear()
            await asyncio.to_thread(self.apply)
            lease = await client.lease(self.ttl)
            granted_at = time.monotonic()  # refreshes count from here, however long the put takes
            await self.publish(client, key, lease)
            self.lease_refreshed = time.time()
            granted = f"ttl {lease.ttl}s"
            if lease.ttl != self.ttl:  # etcd raises a TTL below its minimum (1.5 election timeouts)
                granted += f": etcd's minimum, not {self.ttl}s"
            log(f"published {self.node} (lease {lease.id}, {granted}) via {self.connected}")
            watch = await client.watch_prefix(self.prefix, start_revision=got.header.revision + 1)

            async def keep() -> None:
                due = granted_at + self.ttl / 3
                while True:
                    # A rotated key (or our record deleted) is published at once, not at the next refresh:
                    # until peers have the new public key, this node's sessions are down.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.put_needed.wait(), max(0.0, due - time.monotonic()))
                    if self.put_needed.is_set():
                        self.put_needed.clear()
                        await self.publish(client, key, lease)
                    if time.monotonic() >= due:
                        sent = time.monotonic()
                        await asyncio.wait_for(lease.refresh(), self.ttl)
                        self.lease_refreshed = time.time()
                        self.write_status()
                        due = sent + self.ttl / 3

            keeper = asyncio.create_task(keep())
            events = asyncio.create_task(self.follow(watch))
            stopper = asyncio.create_task(self.stop.wait())
            done, pending = await asyncio.wait({keeper, events, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            for t in done:
                if t is not stopper and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            if self.stop.is_set():
                await lease.revoke()  # a clean stop withdraws the node at once
        finally:
            await client.close()

    async def follow(self, watch: Any) -> None:
        async for ev in watch:
            self.events.append(time.monotonic())
            name = ev.kv.key[len(self.prefix) :].decode(errors="replace")
            if name == self.node:
                if str(ev.kind).endswith("DELETE") or (ev.kv.value != self.own.encode() and self.announced):
                    self.put_needed.set()  # someone deleted or overwrote us: publish again
                if not str(ev.kind).endswith("DELETE"):
                    self.own_created = ev.kv.create_revision
                continue
            if str(ev.kind).endswith("DELETE"):
                self.records.pop(name, None)
                self.latest.pop(name, None)
                self.bad.pop(name, None)
                self.created.pop(name, None)
                log(f"node {_safe(name)} left")
            else:
                self.created[name] = ev.kv.create_revision
                self._take(name, ev.kv.value)
            self.dirty.set()

    def load(self, items: list[tuple[bytes, bytes, int]]) -> None:
        """A full read of the prefix: the record set is swapped for it only once every record has
        been taken (a read that fails halfway leaves the last one in place)."""
        self._reload_intent()
        latest, created, announced = {}, {}, False
        if len(items) > MAX_KEYS:
            log(f"{len(items)} keys under {self.prefix.decode()}: only the {MAX_KEYS} oldest are read")
            items = sorted(items, key=lambda kv: kv[2])[:MAX_KEYS]
        for k, v, rev in items:
            name = k[len(self.prefix) :].decode(errors="replace")
            if name == self.node:
                self.own_created = rev
                with contextlib.suppress(records.RecordError):
                    # Our record, left by the agent before this one: peers know this key already.
                    announced = records.decode(v).public_key == self.own.public_key
            else:
                created[name], latest[name] = rev, v
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

    def _reload_intent(self) -> bool:
        """Read the intent file again if it changed since the last read (the lab rewrites it before
        a node joins or after one leaves); every record is then judged again. Whether it changed."""
        if self.intent_path is None:
            return False
        try:
            st = self.intent_path.stat()
            seen = (st.st_mtime_ns, st.st_size)
            if seen == self.intent_seen:
                return False
            intent = records.decode_intent(self.intent_path.read_text())
        except (OSError, ValueError) as err:
            if self.intent_seen is None:
                raise SystemExit(f"cannot read the mesh intent {self.intent_path}: {err}") from None
            log(f"cannot read the mesh intent {self.intent_path}: {err}; keeping the last one")
            return False
        first, self.intent_seen, self.intent = self.intent_seen is None, seen, intent
        if not first:
            log(f"mesh intent reloaded: {len(intent)} nodes")
            for name, raw in list(self.latest.items()):
                self._take(name, raw)
            self.dirty.set()
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
            try:
                await asyncio.to_thread(self.apply)
            except Exception as err:  # noqa: BLE001 - log, try again on the next change or tick
                log(f"apply failed: {type(err).__name__}: {err}")

    def apply(self) -> None:
        with self.work:
            self._apply()

    def _apply(self) -> None:
        if not self.synced:
            return  # nothing read yet: an agent started while etcd is down must not empty the device
        t0 = time.monotonic()
        # Copies: the event loop changes these while this runs on a thread (a dict copy is atomic
        # under the GIL; iterating the live dict is not).
        ok, rejected = records.accept(self.own, dict(self.records), dict(self.created))
        for name, why in rejected.items():
            if self.rejected.get(name) != why:
                log(f"rejected record of {name}: {why}")
        self.rejected = {**rejected, **self.bad}
        peers = records.desired_peers(self.own, ok, self.keepalive)
        desired = wireguard.DeviceConf(
            self.private,
            self.own.listen_port,
            {p.public_key: wireguard.PeerConf(p.public_key, p.endpoint, p.allowed_ips, p.keepalive) for p in peers},
        )
        # Device settings and routes are read back from the kernel on a (re)start and every
        # FULL_CHECK seconds; in between, a change applies the difference from the last apply.
        full = self.applied_private is None or time.monotonic() >= self.full_due
        t1 = time.monotonic()
        changes = self.dp.reconcile(desired)
        t2 = time.monotonic()
        changes += self._device() if full else []
        t3 = time.monotonic()
        changes += self._routes(peers, full)
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
            self._handshakes(peers, changed, first, rotated, before)
        self.write_status(len(peers))

    def _handshakes(
        self,
        peers: list[records.DesiredPeer],
        changed: list[records.DesiredPeer],
        first: bool,
        rotated: bool,
        before: dict[str, records.DesiredPeer],
    ) -> None:
        """Start the handshakes a change needs, with one end of each pair initiating first: two
        initiations that cross each other both fail and WireGuard retries only after 5 s.

        - This device is new (agent or wireguard-go restarted) and peers know its key: it pokes every
          peer; they saw nothing. A node that has not published its key yet pokes nobody.
        - A peer's key changed: that node set its key before publishing it, so it is ready — poke it
          now; unless this node re-keyed too (both rotated at once): then the lower name goes first.
        - This node re-keyed: its peers learn the key after it and initiate; no poke now.
        - A node joined: the one with the older record initiates. The newcomer applied the whole
          mesh before it published its record, so it is ready when the others learn of it.
        Whoever did not poke at once pokes later the peers from which nothing came."""
        reachable = [p for p in peers if p.endpoint or self.own.natted]
        recent = time.monotonic() - self.rotated_at < ROTATION_WINDOW
        now = [
            p for p in reachable if (first and self.announced) or (p in changed and self._initiates(p, before, recent))
        ]
        if now:
            log(f"initiating handshakes with {', '.join(p.node for p in now[:8])}" + (" …" if len(now) > 8 else ""))
            self._poke(now)
        waiting = [p for p in reachable if p not in now and (rotated or p in changed)]
        joined = [p for p in waiting if p.node not in before]
        for group, delay in (([p for p in waiting if p not in joined], POKE_LATER), (joined, POKE_LATER_JOIN)):
            if group:
                timer = threading.Timer(delay, self._poke_unanswered, (group, time.time(), set(changed)))
                timer.daemon = True
                timer.start()

    def _initiates(self, p: records.DesiredPeer, before: dict[str, records.DesiredPeer], recent: bool) -> bool:
        if p.node not in before:
            return 0 < self.own_created < self.created.get(p.node, 0)
        return not (recent and self.own.name > p.node)

    def _poke_unanswered(self, peers: list[records.DesiredPeer], since: float, fresh: set[records.DesiredPeer]) -> None:
        stats = self.dp.peer_stats()
        targets = []
        for p in peers:
            handshake, rx, _, _ = stats.get(p.public_key, (0, 0, 0, None))
            # Handshake times are whole seconds: one in the same second counts as not seen (a poke
            # through a session that is up costs one datagram). A peer entry made by that apply
            # that received anything got an initiation: answering it is enough.
            if handshake <= int(since) and not (p in fresh and rx):
                targets.append(p)
        if targets:
            log(f"no handshake yet with {', '.join(p.node for p in targets[:8])}: initiating")
        self._poke(targets)

    def _poke(self, peers: list[records.DesiredPeer]) -> None:
        """One datagram to each peer's tunnel address: WireGuard initiates a handshake for it
        now instead of when a session times out."""
        self.dp.poke([p.allowed_ips[0].split("/")[0] for p in peers])

    def _device(self) -> list[str]:
        """MTU, up, and the node's tunnel address on the device."""
        link = self.dp.link()
        if link is None:
            return [f"device {self.ifname} missing"]
        out: list[str] = []
        commands: list[str] = []
        if link.get("mtu") != self.cfg.mtu:
            commands.append(f"link set dev {self.ifname} mtu {self.cfg.mtu}")
            out.append(f"{self.ifname} mtu {self.cfg.mtu}")
        if "UP" not in link.get("flags", []):
            commands.append(f"link set dev {self.ifname} up")
            out.append(f"{self.ifname} up")
        have = {a.get("local") for a in link.get("addr_info", []) if a.get("family") == "inet"}
        if self.own.tunnel_address not in have:
            commands.append(f"addr replace {self.own.tunnel_address}/32 dev {self.ifname}")
            out.append(f"{self.ifname} address {self.own.tunnel_address}/32")
        self.dp.link_commands(commands)
        return out

    def _routes(self, peers: list[records.DesiredPeer], full: bool) -> list[str]:
        """The agent's routes (protocol 100) to every peer's addresses through the tunnel. `full`
        reads what the kernel has; otherwise the routes of the last apply are taken as there.
        The changes go to the kernel over one rtnetlink socket, no process."""
        want = {str(IPv4Network(a)) for p in peers for a in p.allowed_ips}
        if full:
            have = self.dp.routes()
        else:
            have = {str(IPv4Network(a)): self.ifname for p in self.applied.values() for a in p.allowed_ips}
        replace = [dst for dst in sorted(want) if have.get(dst) != self.ifname]
        delete = sorted(set(have) - want)
        out = [f"route {dst} dev {self.ifname}" for dst in replace] + [f"route {dst} withdrawn" for dst in delete]
        try:
            self.dp.set_routes(replace, delete)
        except (RuntimeError, OSError):
            self.full_due = 0.0  # the kernel differs from what was applied: read it back next time
            raise
        return out

    # --- device health and key rotation ------------------------------------------------------
    def _check_device(self) -> bool:
        with self.work:
            return self._restore_device()

    def _restore_device(self) -> bool:
        if self.stop.is_set() or self.dp.running():
            return False  # stopping: whoever stops the agent may be stopping wireguard-go too
        self.dp.start()  # a real node's device is not the agent's to start: this raises there
        log(f"wireguard-go for {self.ifname} was not running: started it")
        self.applied, self.applied_private = {}, None  # a new device: every peer is new to it
        self.wg_restarts += 1
        return True

    async def maintain(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rotate.wait(), 0.5)
            self._reload_intent()
            if self.rotate.is_set():
                self.rotate.clear()
                self.rotate_key()
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
        self.own = replace(self.own, public_key=wgkeys.public_key(private), version=self.own.version + 1)
        self.pending = private
        self.put_needed.set()
        log(f"key rotated (version {self.own.version})")

    async def publish(self, client: aetcd.Client, key: bytes, lease: Any) -> None:
        """Put our record. A rotated key goes onto the device just before: a peer that learns it
        from etcd and initiates a handshake at once always finds this end ready."""
        if self.pending is not None:
            self.private, self.pending = self.pending, None
            await asyncio.to_thread(self.apply)
        await client.put(key, self.own.encode(), lease=lease)
        self.announced = True

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
            "keyVersion": self.own.version,
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
