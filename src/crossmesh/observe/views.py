"""What `crossmesh ui` shows, as JSON built from the plan and what the lab reports. Pure.

The page draws nothing from the plan itself: the server hands it these views (and the picture
`render/graph.py` draws), so the page and the command line never disagree about a tier or a
tunnel. Lab readings come in as plain mappings (the UI's sources read them), so every view is
testable without a lab.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crossmesh.model.plan import Plan
from crossmesh.observe.health import Health, Pair, TunnelHealth, counts, tunnel_pairs
from crossmesh.services.backends import backend_sets

BackendKey = tuple[str, str, int]  # (pod ref, address, port): one backend as the service daemon checks it


def topology(plan: Plan, health: Mapping[Pair, TunnelHealth] | None, *, read_error: str = "") -> dict[str, Any]:
    """Nodes and tunnels with their health (`health` None: no lab, every tunnel unknown)."""
    tunnels = []
    states = []
    for (a, b), standby in tunnel_pairs(plan):
        h = None if health is None else health.get((a, b))
        states.append(Health.UNKNOWN if h is None else h.health)
        tunnels.append(
            {"a": a, "b": b, "standby": standby}
            | (h.as_json() if h else {"health": Health.UNKNOWN.value, "handshakeAge": None, "rx": 0, "tx": 0})
        )
    nodes = [
        {
            "name": n.name,
            "cluster": n.cluster,
            "site": n.site,
            "address": str(n.address),
            "publicAddress": None if n.public_address is None else str(n.public_address),
            "gateway": n.gateway,
        }
        for n in sorted(plan.nodes, key=lambda n: n.name)
    ]
    return {
        "mesh": plan.mesh,
        "topology": plan.topology.value,
        "sites": [{"name": s.name, "provider": s.provider.value, "region": s.region} for s in plan.sites],
        "nodes": nodes,
        "tunnels": tunnels,
        "summary": counts(states),
        "healthRead": health is not None,
        "error": read_error,
    }


def services(plan: Plan, healthy: Mapping[BackendKey, bool] | None) -> list[dict[str, Any]]:
    """Every service port with its backends by tier, each backend's health (None: not known) and the
    tier that serves: the first with a healthy backend, as the service daemon balances."""
    out = []
    for cluster in plan.clusters:
        for svc in cluster.services:
            for bs in backend_sets(plan, svc):
                tiers = [
                    [
                        {
                            "pod": b.pod,
                            "cluster": b.cluster,
                            "address": b.address,
                            "port": b.port,
                            "healthy": None if healthy is None else healthy.get((b.pod, b.address, b.port), True),
                        }
                        for b in tier
                    ]
                    for tier in bs.tiers
                ]
                serving = next(
                    (i for i, tier in enumerate(tiers) if any(b["healthy"] is not False for b in tier)), None
                )
                out.append(
                    {
                        "service": svc.ref,
                        "type": svc.type,
                        "clusterIP": None if svc.cluster_ip is None else str(svc.cluster_ip),
                        "port": f"{bs.port}/{bs.protocol}",
                        "global": svc.is_global,
                        "shared": svc.shared,
                        "affinity": svc.affinity,
                        "tiers": tiers,
                        "serving": serving,
                        "excluded": list(bs.excluded),
                    }
                )
    return out


def parse_health(data: object) -> dict[BackendKey, bool]:
    """The service daemon's health.json (`{"backends": {"POD@ADDR:PORT": {"healthy": bool, …}}}`) as
    backend → healthy; entries that are not of that shape are skipped (the file is read, not trusted)."""
    out: dict[BackendKey, bool] = {}
    backends = data.get("backends") if isinstance(data, dict) else None
    if not isinstance(backends, dict):
        return out
    for key, entry in backends.items():
        pod, at, rest = str(key).rpartition("@")
        address, colon, port = rest.rpartition(":")
        if not (at and colon and port.isdigit()) or not isinstance(entry, dict):
            continue
        out[(pod, address, int(port))] = entry.get("healthy") is not False
    return out
