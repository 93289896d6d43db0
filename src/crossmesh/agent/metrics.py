"""The agent's Prometheus metrics, served at `/metrics` on port 9962 (Cilium agent's).

Two kinds of values, kept apart on purpose:

- Events the agent cannot see again later — an apply, a watch batch arriving, a session with etcd
  starting, a lease refresh — are counted by hooks where they happen (`applying`, `watched`,
  `etcd_session`, `lease_granted`, `lease_renewed`), into prometheus-client counters and histograms.
- State the agent already holds — the peers on the device and their handshakes and bytes, the next
  key rotation, the active gateways, the etcd client certificate — is read when Prometheus scrapes
  (`_Scraped`), so it is never stale and costs nothing between scrapes. The WireGuard counters are
  read from the device at that moment (one UAPI `get`, ≈1 ms for sixty peers).

Watch lag here is time, not revisions: from the arrival at the agent of the first watch event an
apply has not yet taken to the end of the apply that takes it. etcd events carry no timestamp, and
in practice the delivery from etcd is milliseconds while the coalescing and the apply are what a
user waits for.

Each `AgentMetrics` owns its registry, so tests (and several agents in one process) never share
series. The listening socket is opened inside the node's namespace when the agent has one (the
lab), on the configured address; until that namespace and address exist (a joining node's agent
starts before its namespace is built) it is tried again every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric as Family

from crossmesh.agent import dataplane, records
from crossmesh.agent.log import log
from crossmesh.drivers.exposition import MetricsServer, counter, counter_family, gauge_family, histogram, listen
from crossmesh.kv.api import Event
from crossmesh.observe import metrics as catalogue

if TYPE_CHECKING:
    from crossmesh.agent.daemon import Agent

LISTEN_RETRY = 1.0  # seconds between attempts to open the metrics socket


class AgentMetrics:
    def __init__(self, agent: Agent, registry: CollectorRegistry | None = None) -> None:
        self.agent = agent
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconcile = histogram(catalogue.RECONCILE_DURATION, r)
        self.applies = counter(catalogue.APPLIES, r)
        self.watch_lag = histogram(catalogue.ETCD_WATCH_LAG, r)
        self.reconnects = counter(catalogue.ETCD_RECONNECTS, r)
        self.renewals = counter(catalogue.ETCD_LEASE_RENEWALS, r)
        for outcome in ("success", "failure"):
            self.applies.labels(outcome=outcome)  # both shown from the start: a rate of nothing is 0
        self.sessions = 0
        self.lease_ttl = 0
        self.lease_base = 0.0  # monotonic time the lease's TTL last started counting down
        self.waiting: float | None = None  # monotonic arrival of the oldest watch batch not yet applied
        self.lock = threading.Lock()  # watch batches arrive on the event loop, applies run on a thread
        self.certificate = _Certificate(agent.cfg.tls["cert"] if agent.cfg.tls else None)
        self.server: MetricsServer | None = None
        r.register(_Scraped(self))

    # --- hooks ------------------------------------------------------------------------------
    def watched(self, handle: Callable[[list[Event]], None]) -> Callable[[list[Event]], None]:
        """`handle` of a watch, with each batch's arrival noted for the watch lag."""

        def note(batch: list[Event]) -> None:
            with self.lock:
                if self.waiting is None:
                    self.waiting = time.monotonic()
            handle(batch)

        return note

    @contextlib.contextmanager
    def applying(self) -> Iterator[None]:
        """Around one apply: its duration, its outcome, and the watch lag of the events it takes.
        Events that arrive while it runs wait for the next one; a failed apply leaves its events
        waiting too (the next apply makes them real)."""
        with self.lock:
            waiting, self.waiting = self.waiting, None
        start = time.monotonic()
        try:
            yield
        except BaseException:
            self.reconcile.observe(time.monotonic() - start)
            self.applies.labels(outcome="failure").inc()
            with self.lock:
                if waiting is not None:
                    self.waiting = waiting if self.waiting is None else min(waiting, self.waiting)
            raise
        end = time.monotonic()
        self.reconcile.observe(end - start)
        self.applies.labels(outcome="success").inc()
        if waiting is not None:
            self.watch_lag.observe(end - waiting)

    def etcd_session(self) -> None:
        """A session with etcd starts; every one after the first is a reconnect."""
        self.sessions += 1
        if self.sessions > 1:
            self.reconnects.inc()

    def lease_granted(self, ttl: int) -> None:
        self.lease_ttl, self.lease_base = ttl, time.monotonic()

    def lease_renewed(self, sent: float) -> None:
        """A refresh etcd answered; `sent`: the monotonic time it was sent (the TTL counts from there)."""
        self.renewals.inc()
        self.lease_base = sent

    # --- serving ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """`/metrics` served while the body runs (on the configured address; nothing when "off")."""
        where = self.agent.cfg.metrics_listen
        task = None if where is None else asyncio.create_task(self._open(*where))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if self.server is not None:
                self.server.close()
                self.server = None

    async def _open(self, host: str, port: int) -> None:
        told = ""
        while True:
            try:
                server = await asyncio.to_thread(self.serve, host, port)
            except OSError as err:
                if str(err) != told:
                    log(f"cannot serve metrics on {host or '*'}:{port} yet ({err}); retrying every {LISTEN_RETRY} s")
                    told = str(err)
                await asyncio.sleep(LISTEN_RETRY)
                continue
            bound_host, bound_port = server.address
            log(f"serving metrics at http://{bound_host or '*'}:{bound_port}/metrics")
            return

    def serve(self, host: str, port: int) -> MetricsServer:
        """Serve `/metrics` on `host`:`port` (0: any free port), in the agent's namespace if it has one."""
        namespace = self.agent.cfg.namespace
        if namespace:
            from crossmesh.drivers.lab import netns  # the lab's agents only

            sock = netns.run_in(namespace, lambda: listen(host, port))
        else:
            sock = listen(host, port)
        self.server = MetricsServer(self.registry, sock)
        return self.server


class _Scraped:
    """What the agent holds, read at each scrape."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Family]:
        return []  # nothing to check against the registry's other names: these are the catalogue's

    def collect(self) -> Iterable[Family]:
        m, agent = self.metrics, self.metrics.agent
        applied = dict(agent.applied)  # replaced whole by each apply: a copy is consistent
        yield gauge_family(catalogue.WIREGUARD_PEERS, [((), len(applied))])
        yield from wireguard_families(applied, agent.dp.peer_stats() if applied else {}, time.time())
        yield counter_family(catalogue.WIREGUARD_RESTARTS, [((), agent.wg_restarts)])
        remaining = 0.0 if not m.lease_ttl else max(0.0, m.lease_ttl - (time.monotonic() - m.lease_base))
        yield gauge_family(catalogue.ETCD_LEASE_TTL, [((), remaining)])
        at = agent.schedule.next_at
        yield gauge_family(catalogue.KEY_ROTATION_NEXT, [] if at is None else [((), at)])
        expiry = m.certificate.not_after()
        yield gauge_family(catalogue.CERTIFICATE_EXPIRY, [] if expiry is None else [(("etcd-client",), expiry)])
        chosen = dict(agent.chosen)
        yield gauge_family(catalogue.GATEWAY_ACTIVE, [((site, gw), 1) for site, gw in sorted(chosen.items())])
        yield counter_family(catalogue.GATEWAY_TAKEOVERS, [((), agent.failover.takeovers)])


def wireguard_families(
    applied: Mapping[str, records.DesiredPeer], stats: dataplane.PeerStats, now: float
) -> list[Family]:
    """Per peer node: the handshake's age (+Inf: none yet) and the bytes each way, from the device's
    counters keyed by public key (`applied`: node → the peer as applied)."""
    ages, received, sent = [], [], []
    for node in sorted(applied):
        got = stats.get(applied[node].public_key)
        handshake = got[0] if got else 0
        ages.append(((node,), now - handshake if handshake else math.inf))
        if got:
            received.append(((node,), got[1]))
            sent.append(((node,), got[2]))
    return [
        gauge_family(catalogue.WIREGUARD_HANDSHAKE_AGE, ages),
        counter_family(catalogue.WIREGUARD_RECEIVED, received),
        counter_family(catalogue.WIREGUARD_TRANSMITTED, sent),
    ]


class _Certificate:
    """A certificate file's notAfter, read again only when the file changes (certificates are
    renewed in place)."""

    def __init__(self, path: str | None) -> None:
        self.path = None if path is None else Path(path)
        self.seen: tuple[float, float | None] | None = None  # (mtime, notAfter)

    def not_after(self) -> float | None:
        if self.path is None:
            return None
        try:
            mtime = os.stat(self.path).st_mtime
            if self.seen is None or self.seen[0] != mtime:
                from cryptography import x509

                cert = x509.load_pem_x509_certificate(self.path.read_bytes())
                self.seen = (mtime, cert.not_valid_after_utc.timestamp())
        except (OSError, ValueError):
            return None  # unreadable or not PEM: the series is absent, the agent's etcd client says why
        return self.seen[1]
