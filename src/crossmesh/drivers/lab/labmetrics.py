"""The lab service daemon's metrics, one registry and one `/metrics` per node (port 9963, on the
node's site address inside its namespace): the health of the service backends that node checks,
their transitions, how long a check takes, and what the node's network policy dropped.

Backend health and policy drops are read when Prometheus scrapes: health from the daemon's own
table, drops from the counters nftables keeps on the node's verdict rules in its table (`nft -t -j
list table`: terse, without the sets' elements — the sets' per-element counters would mean listing
every element; ≈20 ms for a node of the three-clouds example). A rule whose comment reads "denied
by a … deny rule" counts drops by an explicit deny, "policy-denied …" the default deny of a
selected endpoint (policy/compile.py writes both). Transitions and check durations are events,
counted by hooks in the daemon.

The socket is opened by the node's own thread of the daemon, which lives in the namespace.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric as Family

from crossmesh.drivers import exposition
from crossmesh.drivers.lab import netns, servicenat
from crossmesh.model.plan import Plan
from crossmesh.observe import metrics as catalogue
from crossmesh.services.backends import backend_sets

T = TypeVar("T")
TABLE = servicenat.TABLE
DIRECTIONS = ("egress", "ingress")


def service_backends(plan: Plan) -> dict[str, frozenset[str]]:
    """Each service (`cluster/namespace/name`) → the keys of its backends (servicenat.backend_key)."""
    out: dict[str, set[str]] = {}
    for cluster in plan.clusters:
        for svc in cluster.services:
            keys = out.setdefault(f"{cluster.name}/{svc.namespace}/{svc.name}", set())
            for bs in backend_sets(plan, svc):
                keys.update(servicenat.backend_key(b.pod, b.address, b.port) for b in bs.all)
    return {name: frozenset(keys) for name, keys in sorted(out.items())}


class NodeMetrics:
    """One node's metrics. `services`: service → the backend keys this node checks (others' are
    theirs to report); `health`: the daemon's current backend key → healthy."""

    def __init__(
        self, namespace: str, services: Mapping[str, frozenset[str]], health: Callable[[], dict[str, bool]]
    ) -> None:
        self.namespace = namespace
        self.services = {s: keys for s, keys in services.items() if keys}
        self.health = health
        self.registry = CollectorRegistry()
        self.transitions = exposition.counter(catalogue.SERVICE_TRANSITIONS, self.registry)
        self.checks = exposition.histogram(catalogue.HEALTH_CHECK_DURATION, self.registry)
        for service in self.services:
            for state in ("healthy", "unhealthy"):
                self.transitions.labels(service=service, state=state)  # 0 from the start
        self.server: exposition.MetricsServer | None = None
        self.registry.register(_Scraped(self))

    def transition(self, key: str, healthy: bool) -> None:
        """Backend `key` crossed its threshold into `healthy` (or out of it)."""
        state = "healthy" if healthy else "unhealthy"
        for service, keys in self.services.items():
            if key in keys:
                self.transitions.labels(service=service, state=state).inc()

    async def timed(self, check: Awaitable[T]) -> T:
        """`check` awaited, its duration observed."""
        start = time.monotonic()
        try:
            return await check
        finally:
            self.checks.observe(time.monotonic() - start)

    def serve(self, host: str, port: int = catalogue.SERVICES_PORT) -> exposition.MetricsServer:
        """`/metrics` on `host`:`port` in the calling thread's namespace (the node's thread calls it)."""
        self.server = exposition.MetricsServer(self.registry, exposition.listen(host, port))
        return self.server


class _Scraped:
    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Family]:
        return []

    def collect(self) -> Iterable[Family]:
        m = self.metrics
        health = m.health()
        backends = []
        for service, keys in m.services.items():
            healthy = sum(1 for k in keys if health.get(k, True))
            backends += [((service, "healthy"), healthy), ((service, "unhealthy"), len(keys) - healthy)]
        yield exposition.gauge_family(catalogue.SERVICE_BACKENDS, backends)
        drops = policy_drops(m.namespace)
        packets = [(labels, float(p)) for labels, (p, _) in sorted(drops.items())]
        octets = [(labels, float(b)) for labels, (_, b) in sorted(drops.items())]
        yield exposition.counter_family(catalogue.POLICY_DROP_PACKETS, packets)
        yield exposition.counter_family(catalogue.POLICY_DROP_BYTES, octets)


def policy_drops(namespace: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(direction, "deny" | "default") → (packets, bytes) dropped by the node's policy; {} when the
    node has no policy chains (no policy selects its pods) or nft cannot be read."""
    try:
        done = netns.run(namespace, ["nft", "-t", "-j", "list", "table", "ip", TABLE], timeout=5)
    except (OSError, TimeoutError):
        return {}
    if done.returncode != 0:
        return {}
    return parse_drops(done.stdout)


def parse_drops(text: str) -> dict[tuple[str, str], tuple[int, int]]:
    """The drop counters of the verdict chains in `nft -j` output (JSON documents, one or more)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    decoder, at = json.JSONDecoder(), 0
    while (at := _skip_space(text, at)) < len(text):
        try:
            doc, at = decoder.raw_decode(text, at)
        except ValueError:
            break
        for item in doc.get("nftables", []) if isinstance(doc, dict) else []:
            rule = item.get("rule") if isinstance(item, dict) else None
            if not isinstance(rule, dict):
                continue
            direction = str(rule.get("chain", "")).removeprefix("verdict_")
            note = str(rule.get("comment", ""))
            kind = "deny" if note.startswith("denied by a ") else "default" if note.startswith("policy-denied") else ""
            if direction not in DIRECTIONS or not kind:
                continue
            for expr in rule.get("expr", []):
                counter = expr.get("counter") if isinstance(expr, dict) else None
                if isinstance(counter, dict):
                    p, b = out.get((direction, kind), (0, 0))
                    out[(direction, kind)] = (p + int(counter.get("packets", 0)), b + int(counter.get("bytes", 0)))
    return out


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at
