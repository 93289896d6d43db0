"""A Grafana dashboard and a Prometheus scrape configuration for a plan: what to look at, and where
to scrape it.

    observability/grafana-dashboard.json   the mesh's dashboard (Grafana schema 39)
    observability/prometheus.yml           scrape jobs: every agent (:9962), every node's Hubble (:9965)

Both come from the plan, so they name the mesh's real sites, clusters, nodes and tunnels, and serve
the lab and a real cluster alike: at :9962 the agent (a lab node's, or the rendered DaemonSet's or
unit's), at :9965 Hubble (the lab's flow daemon, or Cilium's Hubble with the rendered values'
`hubble.metrics`: render/cilium.py). A panel reading series only the lab serves says so. The scrape
jobs label every target with its `node`, `site` and `cluster`, and the dashboard's template
variables (options from the plan) select on those labels. Rows: the mesh's control plane, Hubble's
flows and drops, the services, then one row per site with its nodes' tunnels — a panel per node
pair with a tunnel while there are at most `PAIR_PANELS` pairs, otherwise one panel per node with a
series per peer (sixty nodes in a full mesh are 1770 pairs: no one reads 1770 panels).

Every PromQL expression selects only series in the catalogue of what crossmesh and Hubble serve
(observe/metrics.py); `expressions` gives them all so a test can hold the dashboard to it.
Pure: dictionaries serialised with sorted keys, panels in plan order, ids numbered in that order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from crossmesh.kv import identities
from crossmesh.model.plan import Plan
from crossmesh.observe import metrics as m

SCHEMA_VERSION = 39
PAIR_PANELS = 60  # node pairs shown one panel each; past this, one panel per node
SEL = 'site=~"$site", cluster=~"$cluster", node=~"$node"'
WIDTH = 24  # Grafana's grid
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True, slots=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 8
    description: str = ""


@dataclass(slots=True)
class _Grid:
    """Places panels left to right, a new line when the width is used up; rows span the width."""

    panels: list[dict[str, Any]] = field(default_factory=list)
    x: int = 0
    y: int = 0
    line: int = 0  # the tallest panel of the current line

    def row(self, title: str) -> None:
        self._break()
        self.panels.append(
            {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": _pos(0, self.y, WIDTH, 1)}
        )
        self.y += 1

    def add(self, p: Panel, height: int = 8) -> None:
        if self.x + p.width > WIDTH:
            self._break()
        targets = [
            {"refId": chr(ord("A") + i), "expr": t.expr, "legendFormat": t.legend, "datasource": DATASOURCE}
            for i, t in enumerate(p.targets)
        ]
        panel: dict[str, Any] = {
            "type": p.kind,
            "title": p.title,
            "datasource": DATASOURCE,
            "gridPos": _pos(self.x, self.y, p.width, height),
            "targets": targets,
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
            if p.kind == "timeseries"
            else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        }
        description = " ".join(filter(None, (p.description, _lab_note(p))))
        if description:
            panel["description"] = description
        self.panels.append(panel)
        self.x += p.width
        self.line = max(self.line, height)

    def _break(self) -> None:
        if self.x:
            self.y += self.line
        self.x, self.line = 0, 0


def _lab_note(p: Panel) -> str:
    """What a panel reading series only the lab serves (observe/metrics.lab_only) tells whoever loads
    the dashboard for a real cluster."""
    found = [x for t in p.targets for x in m.selected(t.expr) if m.lab_only(x)]
    services = sorted({x.name for x in found if x.source is m.Source.SERVICES})
    flows = sorted({x.name for x in found if x.source is m.Source.HUBBLE})
    notes = []
    if services:
        notes.append(
            f"Lab only: the lab's service daemon serves {', '.join(services)} at :{m.SERVICES_PORT}, which the "
            "rendered prometheus.yml does not scrape (on a real cluster the port is Cilium operator's). "
            "On a real cluster Cilium balances the Services and enforces the policies, and this panel stays empty."
        )
    if flows:
        notes.append(f"Lab only: the lab's flow daemon serves {', '.join(flows)}; Cilium's Hubble has no such series.")
    return " ".join(notes)


def _pos(x: int, y: int, w: int, h: int) -> dict[str, int]:
    return {"x": x, "y": y, "w": w, "h": h}


def _rate(metric: str, by: str, sel: str = SEL, window: str = "$__rate_interval") -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{window}]))"


def _quantile(metric: str, q: float, by: str = "node") -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{SEL}}}[$__rate_interval])))"


def control_plane() -> list[Panel]:
    return [
        Panel("WireGuard peers", (Target(f"{m.WIREGUARD_PEERS.name}{{{SEL}}}", "{{node}}"),), kind="stat"),
        Panel(
            "Oldest handshake per node",
            (Target(f"max by (node) ({m.WIREGUARD_HANDSHAKE_AGE.name}{{{SEL}}})", "{{node}}"),),
            unit="s",
            description="WireGuard re-keys every 2 minutes: above 180 s a tunnel is down (+Inf: never up)",
        ),
        Panel(
            "Applies",
            (Target(_rate(m.APPLIES.name, "outcome"), "{{outcome}}"),),
            unit="ops",
        ),
        Panel("Reconcile duration (p95)", (Target(_quantile(m.RECONCILE_DURATION.name, 0.95), "{{node}}"),), unit="s"),
        Panel(
            "etcd watch lag (p95)",
            (Target(_quantile(m.ETCD_WATCH_LAG.name, 0.95), "{{node}}"),),
            unit="s",
            description="From a watch event's arrival at the agent to the end of the apply that made it real",
        ),
        Panel(
            "etcd reconnects and lease renewals",
            (
                Target(f"sum by (node) (increase({m.ETCD_RECONNECTS.name}{{{SEL}}}[$__range]))", "reconnects {{node}}"),
                Target(_rate(m.ETCD_LEASE_RENEWALS.name, "node"), "renewals/s {{node}}"),
            ),
        ),
        Panel("Lease TTL remaining", (Target(f"{m.ETCD_LEASE_TTL.name}{{{SEL}}}", "{{node}}"),), unit="s"),
        Panel(
            "Next key rotation in",
            (Target(f"{m.KEY_ROTATION_NEXT.name}{{{SEL}}} - time()", "{{node}}"),),
            unit="s",
            kind="stat",
        ),
        Panel(
            "etcd client certificate expires in",
            (Target(f'{m.CERTIFICATE_EXPIRY.name}{{{SEL}, cert="etcd-client"}} - time()', "{{node}}"),),
            unit="s",
            kind="stat",
        ),
        Panel(
            "Active gateway per site",
            (Target(f"max by (site, gateway) ({m.GATEWAY_ACTIVE.name}{{{SEL}}})", "{{site}}: {{gateway}}"),),
            description="As each agent reads it from etcd (topology gateways)",
        ),
        Panel(
            "Gateway takeovers",
            (Target(f"sum by (node) (increase({m.GATEWAY_TAKEOVERS.name}{{{SEL}}}[$__range]))", "{{node}}"),),
            kind="stat",
        ),
        Panel(
            "WireGuard device restarts",
            (Target(f"sum by (node) (increase({m.WIREGUARD_RESTARTS.name}{{{SEL}}}[$__range]))", "{{node}}"),),
            kind="stat",
        ),
    ]


def flows() -> list[Panel]:
    return [
        Panel("Flows by verdict", (Target(_rate(m.HUBBLE_FLOWS.name, "verdict"), "{{verdict}}"),), unit="ops"),
        Panel("Drops by reason", (Target(_rate(m.HUBBLE_DROPS.name, "reason"), "{{reason}}"),), unit="pps"),
        Panel(
            "Policy verdicts",
            (Target(_rate(m.HUBBLE_POLICY_VERDICTS.name, "direction, action"), "{{direction}} {{action}}"),),
            unit="ops",
        ),
        Panel(
            "Policy drops (nftables counters)",
            (Target(_rate(m.POLICY_DROP_PACKETS.name, "direction, kind"), "{{direction}} {{kind}}"),),
            unit="pps",
            width=12,
        ),
        Panel(
            "Drops by node",
            (Target(_rate(m.HUBBLE_DROPS.name, "node"), "{{node}}"),),
            unit="pps",
            width=12,
        ),
    ]


def services() -> list[Panel]:
    return [
        Panel(
            "Backends by health",
            (Target(f"sum by (service, state) ({m.SERVICE_BACKENDS.name}{{{SEL}}})", "{{service}} {{state}}"),),
        ),
        Panel(
            "Backend health transitions",
            (
                Target(
                    f"sum by (service, state) (increase({m.SERVICE_TRANSITIONS.name}{{{SEL}}}[$__range]))",
                    "{{service}} → {{state}}",
                ),
            ),
        ),
        Panel(
            "Health check duration (p95)",
            (Target(_quantile(m.HEALTH_CHECK_DURATION.name, 0.95), "{{node}}"),),
            unit="s",
        ),
    ]


def tunnel_pairs(plan: Plan) -> list[tuple[str, str]]:
    """Every pair of nodes with a WireGuard tunnel between them, each once (names in order)."""
    pairs = {tuple(sorted((n.name, p.node))) for n in plan.nodes if n.tunnel is not None for p in n.tunnel.peers}
    return sorted((a, b) for a, b in pairs)


def site_panels(plan: Plan, site: str) -> list[Panel]:
    """The tunnels of a site's nodes: per pair (a pair across two sites shows in both rows), or per node."""
    mine = [n.name for n in plan.nodes if n.site == site]
    pairs = tunnel_pairs(plan)
    age, sent = m.WIREGUARD_HANDSHAKE_AGE.name, m.WIREGUARD_TRANSMITTED.name
    if len(pairs) > PAIR_PANELS:
        return [
            Panel(
                f"{node}: tunnels",
                (
                    Target(f'{age}{{node="{node}"}}', "handshake age {{peer}}"),
                    Target(f'rate({sent}{{node="{node}"}}[$__rate_interval])', "sent {{peer}}"),
                ),
            )
            for node in mine
        ]
    out = []
    for a, b in pairs:
        if a not in mine and b not in mine:
            continue
        out.append(
            Panel(
                f"{a} ↔ {b}",
                (
                    Target(f'rate({sent}{{node="{a}", peer="{b}"}}[$__rate_interval])', f"{a} → {b}"),
                    Target(f'rate({sent}{{node="{b}", peer="{a}"}}[$__rate_interval])', f"{b} → {a}"),
                    Target(f'{age}{{node="{a}", peer="{b}"}}', f"handshake age at {a}"),
                ),
                unit="Bps",
                description="Bytes per second each way through the tunnel, and the handshake's age (seconds)",
            )
        )
    return out


def _variable(name: str, label: str, values: list[str]) -> dict[str, Any]:
    options = [{"text": "All", "value": "$__all", "selected": True}]
    options += [{"text": v, "value": v, "selected": False} for v in values]
    return {
        "type": "custom",
        "name": name,
        "label": label,
        "query": ",".join(values),
        "options": options,
        "current": {"text": ["All"], "value": ["$__all"]},
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "hide": 0,
    }


def dashboard(plan: Plan) -> dict[str, Any]:
    grid = _Grid()
    sections = (("Control plane", control_plane()), ("Flows and drops", flows()), ("Services", services()))
    for title, panels in sections:
        grid.row(title)
        for p in panels:
            grid.add(p)
    for site in plan.sites:
        grid.row(f"Site {site.name} ({site.provider.value} {site.region})")
        for p in site_panels(plan, site.name):
            grid.add(p)
    for number, panel in enumerate(grid.panels, start=1):
        panel["id"] = number
    variables = [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Prometheus",
            "query": "prometheus",
            "current": {},
            "hide": 0,
        },
        _variable("site", "Site", [s.name for s in plan.sites]),
        _variable("cluster", "Cluster", [c.name for c in plan.clusters]),
        _variable("node", "Node", [n.name for n in plan.nodes]),
    ]
    return {
        "uid": _uid(plan.mesh),
        "title": f"crossmesh: {plan.mesh}",
        "tags": ["crossmesh", "wireguard", "hubble"],
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": grid.panels,
    }


def _uid(mesh: str) -> str:
    """Grafana's uid is at most 40 characters; a mesh name is up to 63."""
    uid = f"crossmesh-{mesh}"
    return uid if len(uid) <= 40 else f"crossmesh-{hashlib.sha256(mesh.encode()).hexdigest()[:16]}"


def expressions(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard's panels."""
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def scrape_config(plan: Plan) -> dict[str, Any]:
    """Prometheus's scrape jobs: each agent at its node's address :9962, each node's Hubble at :9965,
    every target labelled with its node, site and cluster (what the dashboard selects on)."""
    agents = set(identities.agent_nodes(plan))

    def targets(port: int, nodes: list[str]) -> list[dict[str, Any]]:
        out = []
        for name in nodes:
            node = plan.node(name)
            labels = {"node": node.name, "site": node.site, "cluster": node.cluster}
            out.append({"targets": [f"{node.address}:{port}"], "labels": labels})
        return out

    names = [n.name for n in plan.nodes]
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "scrape_configs": [
            {
                "job_name": "crossmesh-agent",
                "metrics_path": "/metrics",
                "static_configs": targets(m.AGENT_PORT, [n for n in names if n in agents]),
            },
            {"job_name": "hubble", "metrics_path": "/metrics", "static_configs": targets(m.HUBBLE_PORT, names)},
        ],
    }


def dashboard_json(plan: Plan) -> str:
    return json.dumps(dashboard(plan), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
