"""Every metric crossmesh serves, named once: the agents' (port 9962, Cilium agent's), the lab
service daemon's (9963) and the Hubble metrics of the lab's flow daemon (9965).

The servers build their prometheus-client objects from this catalogue and the Grafana dashboard
(render/grafana.py) is checked against it, so a metric renamed in one place cannot leave a panel
querying a series nobody serves. Names follow Cilium's and Hubble's style: a `crossmesh_` prefix,
snake case, the unit in the name, `_total` on counters. Labels are bounded: a peer is a node name,
a service its `namespace/name`; no pod addresses.

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

# Hubble's, as Cilium names them; served per node by the lab's flow daemon (drivers/lab/flowsd.py).
# `policy` is the deciding policy as `policy trace` names it ("" when none decided): its values are
# the mesh's own policies, a set the mesh file bounds, never one per flow or address.
HUBBLE_FLOWS = Metric(
    "hubble_flows_processed_total",
    Kind.COUNTER,
    "Total number of flows processed",
    Source.HUBBLE,
    ("type", "subtype", "verdict"),
)
HUBBLE_DROPS = Metric("hubble_drop_total", Kind.COUNTER, "Number of drops", Source.HUBBLE, ("reason", "protocol"))
HUBBLE_POLICY_VERDICTS = Metric(
    "hubble_policy_verdicts_total",
    Kind.COUNTER,
    "Number of policy verdicts",
    Source.HUBBLE,
    ("direction", "match", "action", "policy"),
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
    FLOWS_LOST,
    FLOWS_EVICTED,
)

SERIES: frozenset[str] = frozenset(s for m in CATALOGUE for s in m.series)

_METRIC_NAME = re.compile(r"\b(?:crossmesh|hubble)_[a-z0-9_]+\b")


def unknown_series(expr: str) -> list[str]:
    """The crossmesh and Hubble series names a PromQL expression selects that nobody serves."""
    return sorted({name for name in _METRIC_NAME.findall(expr) if name not in SERIES})
