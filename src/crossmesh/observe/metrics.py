"""Every metric crossmesh serves, named once: the agents' (port 9962, Cilium agent's), the lab
service daemon's (9963) and the Hubble metrics of the lab's flow daemon (9965).

The servers build their prometheus-client objects from this catalogue and the Grafana dashboard
(render/grafana.py) is checked against it, so a metric renamed in one place cannot leave a panel
querying a series nobody serves. Names follow Cilium's and Hubble's style: a `crossmesh_` prefix,
snake case, the unit in the name, `_total` on counters. Labels are bounded: a peer is a node name,
a service its `namespace/name`; no pod addresses.

On a real cluster Cilium's Hubble serves the `hubble_*` series: `HUBBLE_HANDLERS` names the
Hubble metrics handler behind each (an entry of the Helm value `hubble.metrics.enabled`, which
render/cilium.py writes) and the labels Cilium gives it; `hubble_entry_labels` reads an entry back
the way Hubble parses it. What only the lab serves — its service daemon's series, and the flow
daemon's own `crossmesh_flows_*` — is `lab_only`, and the dashboard says so on its panels.

Pure data: no prometheus-client here (the core imports no server).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

AGENT_PORT = 9962  # Cilium agent's metrics port
SERVICES_PORT = 9963  # the lab's service daemon, per node (Cilium operator's is 9963 too)
HUBBLE_PORT = 9965  # Hubble's metrics port: the lab's flow daemon, per node


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Source(StrEnum):
    """Who serves a metric, and so which scrape job carries it."""

    AGENT = "agent"
    SERVICES = "services"
    HUBBLE = "hubble"


@dataclass(frozen=True, slots=True)
class Metric:
    name: str  # as exposed: counters end in _total, histograms add _bucket, _sum and _count
    kind: Kind
    help: str
    source: Source
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms only

    @property
    def series(self) -> tuple[str, ...]:
        """The names of the series a scrape shows (what PromQL can select)."""
        if self.kind is Kind.HISTOGRAM:
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

WIREGUARD_PEERS = Metric(
    "crossmesh_wireguard_peers", Kind.GAUGE, "WireGuard peers configured on the node's device", Source.AGENT
)
WIREGUARD_HANDSHAKE_AGE = Metric(
    "crossmesh_wireguard_peer_handshake_age_seconds",
    Kind.GAUGE,
    "Seconds since the latest WireGuard handshake with the peer node (+Inf: none yet)",
    Source.AGENT,
    ("peer",),
)
WIREGUARD_RECEIVED = Metric(
    "crossmesh_wireguard_peer_received_bytes_total",
    Kind.COUNTER,
    "Bytes received from the peer node through the tunnel (resets when the device restarts)",
    Source.AGENT,
    ("peer",),
)
WIREGUARD_TRANSMITTED = Metric(
    "crossmesh_wireguard_peer_transmitted_bytes_total",
    Kind.COUNTER,
    "Bytes sent to the peer node through the tunnel (resets when the device restarts)",
    Source.AGENT,
    ("peer",),
)
WIREGUARD_RESTARTS = Metric(
    "crossmesh_wireguard_device_restarts_total",
    Kind.COUNTER,
    "Times the agent found the WireGuard device gone and started it again",
    Source.AGENT,
)
RECONCILE_DURATION = Metric(
    "crossmesh_reconcile_duration_seconds",
    Kind.HISTOGRAM,
    "Duration of one apply of the records to the device and routes",
    Source.AGENT,
    buckets=_FAST,
)
APPLIES = Metric(
    "crossmesh_applies_total", Kind.COUNTER, "Applies of the records, by outcome", Source.AGENT, ("outcome",)
)
ETCD_WATCH_LAG = Metric(
    "crossmesh_etcd_watch_lag_seconds",
    Kind.HISTOGRAM,
    "Seconds from a watch event's arrival at the agent to the end of the apply that made it real",
    Source.AGENT,
    buckets=_FAST,
)
ETCD_RECONNECTS = Metric(
    "crossmesh_etcd_reconnects_total",
    Kind.COUNTER,
    "Sessions with etcd started after the first (a member lost, etcd unreachable)",
    Source.AGENT,
)
ETCD_LEASE_RENEWALS = Metric(
    "crossmesh_etcd_lease_renewals_total", Kind.COUNTER, "Refreshes of the node record's lease", Source.AGENT
)
ETCD_LEASE_TTL = Metric(
    "crossmesh_etcd_lease_ttl_remaining_seconds",
    Kind.GAUGE,
    "Seconds before the node record's lease expires unless refreshed (0: no lease)",
    Source.AGENT,
)
KEY_ROTATION_NEXT = Metric(
    "crossmesh_key_rotation_next_timestamp_seconds",
    Kind.GAUGE,
    "Unix time of the next scheduled WireGuard key rotation (absent: rotation off)",
    Source.AGENT,
)
CERTIFICATE_EXPIRY = Metric(
    "crossmesh_certificate_expiry_timestamp_seconds",
    Kind.GAUGE,
    "Unix time the certificate stops being valid (notAfter)",
    Source.AGENT,
    ("cert",),
)
GATEWAY_ACTIVE = Metric(
    "crossmesh_gateway_active",
    Kind.GAUGE,
    "1 for each site's active gateway as etcd names it (topology gateways)",
    Source.AGENT,
    ("site", "gateway"),
)
GATEWAY_TAKEOVERS = Metric(
    "crossmesh_gateway_takeovers_total",
    Kind.COUNTER,
    "Times this node took over as its site's active gateway",
    Source.AGENT,
)

SERVICE_BACKENDS = Metric(
    "crossmesh_service_backends",
    Kind.GAUGE,
    "Backends of the service checked on this node, by health",
    Source.SERVICES,
    ("service", "state"),
)
SERVICE_TRANSITIONS = Metric(
    "crossmesh_service_backend_transitions_total",
    Kind.COUNTER,
    "Backends of the service checked on this node that crossed a health threshold, by the state entered",
    Source.SERVICES,
    ("service", "state"),
)
HEALTH_CHECK_DURATION = Metric(
    "crossmesh_service_health_check_duration_seconds",
    Kind.HISTOGRAM,
    "Duration of one backend health check",
    Source.SERVICES,
    buckets=_FAST,
)
POLICY_DROP_PACKETS = Metric(
    "crossmesh_policy_drops_packets_total",
    Kind.COUNTER,
    "Packets the node's network policy dropped, by direction and rule kind (deny rule or default deny)",
    Source.SERVICES,
    ("direction", "kind"),
)
POLICY_DROP_BYTES = Metric(
    "crossmesh_policy_drops_bytes_total",
    Kind.COUNTER,
    "Bytes the node's network policy dropped, by direction and rule kind (deny rule or default deny)",
    Source.SERVICES,
    ("direction", "kind"),
)

# Hubble's, with Cilium's names and labels (HUBBLE_HANDLERS below); served per node by the lab's
# flow daemon (drivers/lab/flowsd.py), so the dashboard reads the lab as it reads a real cluster.
HUBBLE_FLOWS = Metric(
    "hubble_flows_processed_total",
    Kind.COUNTER,
    "Total number of flows processed",
    Source.HUBBLE,
    ("protocol", "type", "subtype", "verdict"),
)
HUBBLE_DROPS = Metric("hubble_drop_total", Kind.COUNTER, "Number of drops", Source.HUBBLE, ("reason", "protocol"))
HUBBLE_POLICY_VERDICTS = Metric(
    "hubble_policy_verdicts_total",
    Kind.COUNTER,
    "Number of policy verdicts",
    Source.HUBBLE,
    ("direction", "match", "action"),
)
# The lab's own addition, beside Hubble's: verdicts by the deciding policy as `policy trace` names
# it ("" when none decided) — its values are the mesh's own policies, a set the mesh file bounds.
POLICY_VERDICTS_BY_POLICY = Metric(
    "crossmesh_policy_verdicts_total",
    Kind.COUNTER,
    "Policy verdicts of the node's flow records by deciding policy",
    Source.HUBBLE,
    ("direction", "action", "policy"),
)
FLOWS_LOST = Metric(
    "crossmesh_flows_lost_total",
    Kind.COUNTER,
    "Flow records the kernel could not hand over (the node's NFLOG queue overflowed)",
    Source.HUBBLE,
)
FLOWS_EVICTED = Metric(
    "crossmesh_flows_evicted_total",
    Kind.COUNTER,
    "Flow records pushed out of the node's ring buffer by newer ones",
    Source.HUBBLE,
)

CATALOGUE: tuple[Metric, ...] = (
    WIREGUARD_PEERS,
    WIREGUARD_HANDSHAKE_AGE,
    WIREGUARD_RECEIVED,
    WIREGUARD_TRANSMITTED,
    WIREGUARD_RESTARTS,
    RECONCILE_DURATION,
    APPLIES,
    ETCD_WATCH_LAG,
    ETCD_RECONNECTS,
    ETCD_LEASE_RENEWALS,
    ETCD_LEASE_TTL,
    KEY_ROTATION_NEXT,
    CERTIFICATE_EXPIRY,
    GATEWAY_ACTIVE,
    GATEWAY_TAKEOVERS,
    SERVICE_BACKENDS,
    SERVICE_TRANSITIONS,
    HEALTH_CHECK_DURATION,
    POLICY_DROP_PACKETS,
    POLICY_DROP_BYTES,
    HUBBLE_FLOWS,
    HUBBLE_DROPS,
    HUBBLE_POLICY_VERDICTS,
    POLICY_VERDICTS_BY_POLICY,
    FLOWS_LOST,
    FLOWS_EVICTED,
)

SERIES: frozenset[str] = frozenset(s for m in CATALOGUE for s in m.series)


@dataclass(frozen=True, slots=True)
class HubbleHandler:
    """A Hubble metrics handler of Cilium: `name` is its entry in `hubble.metrics.enabled`, `metric`
    the series it registers, `labels` the labels it gives that series before any context option adds
    its own (Cilium's pkg/hubble/metrics/<name>/handler.go, `Init`)."""

    name: str
    metric: Metric
    labels: tuple[str, ...]


# The lab's flow daemon serves the same names; its labels differ where the lab knows more or less:
# `policy` on the verdicts (the deciding policy: Hubble's handler has no such label) and no
# `protocol` on the flows. No dashboard query may use a label Hubble does not give (a test says so).
HUBBLE_HANDLERS: tuple[HubbleHandler, ...] = (
    HubbleHandler("flow", HUBBLE_FLOWS, ("protocol", "type", "subtype", "verdict")),
    HubbleHandler("drop", HUBBLE_DROPS, ("reason", "protocol")),
    HubbleHandler("policy", HUBBLE_POLICY_VERDICTS, ("direction", "match", "action")),
)

# Hubble's context options and the labels they add (pkg/hubble/metrics/api/context.go,
# `GetLabelNames`): sourceContext adds `source`, destinationContext `destination`, labelsContext
# the listed labels; the per-direction variants (sourceEgressContext, …) choose values, not labels.
_CONTEXT_LABEL = {"sourcecontext": "source", "destinationcontext": "destination"}
HUBBLE_CONTEXT_LABELS = frozenset(
    {
        "source_ip",
        "source_pod",
        "source_namespace",
        "source_workload",
        "source_app",
        "destination_ip",
        "destination_pod",
        "destination_namespace",
        "destination_workload",
        "destination_app",
        "traffic_direction",
    }
)


def hubble_entry_labels(entry: str) -> tuple[str, frozenset[str]]:
    """The handler an entry of `hubble.metrics.enabled` enables (`policy`,
    `policy:sourceContext=namespace;labelsContext=source_pod`) and the labels its series then carry."""
    name, _, options = entry.partition(":")
    handler = next((h for h in HUBBLE_HANDLERS if h.name == name), None)
    if handler is None:
        raise ValueError(f"hubble metrics entry {entry!r}: no handler {name!r} in the catalogue")
    labels = set(handler.labels)
    for option in filter(None, options.split(";")):
        key, _, value = option.partition("=")
        if key.lower() in _CONTEXT_LABEL:
            labels.add(_CONTEXT_LABEL[key.lower()])
        elif key.lower() == "labelscontext":
            wanted = set(value.split(","))
            if unknown := sorted(wanted - HUBBLE_CONTEXT_LABELS):
                raise ValueError(f"hubble metrics entry {entry!r}: labelsContext has no label {', '.join(unknown)}")
            labels |= wanted
    return name, frozenset(labels)


def lab_only(metric: Metric) -> bool:
    """Whether only the lab serves `metric`: its service daemon's (on real nodes Cilium balances
    Services and enforces policy), and the flow daemon's series no Hubble handler produces."""
    if metric.source is Source.SERVICES:
        return True
    return metric.source is Source.HUBBLE and all(h.metric != metric for h in HUBBLE_HANDLERS)


_METRIC_NAME = re.compile(r"\b(?:crossmesh|hubble)_[a-z0-9_]+\b")


def unknown_series(expr: str) -> list[str]:
    """The crossmesh and Hubble series names a PromQL expression selects that nobody serves."""
    return sorted({name for name in _METRIC_NAME.findall(expr) if name not in SERIES})


def selected(expr: str) -> list[Metric]:
    """The catalogue's metrics a PromQL expression selects, in catalogue order."""
    names = set(_METRIC_NAME.findall(expr))
    return [m for m in CATALOGUE if names & set(m.series)]
