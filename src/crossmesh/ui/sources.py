"""Where the UI's live readings come from: a running lab, nothing (a mesh file alone), or fixed data.

The server asks a `Readings` for WireGuard counters and backend health and never cares which one
it holds. `LabReadings` reads the lab as `crossmesh lab status` does (each node's WireGuard device
through the lab driver, the service daemon's health.json); `NoLab` answers nothing, so a plan
alone draws plain tunnels; `Fixed` answers what it was given — the fake for tests and demos.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.observe.health import Stats
from crossmesh.observe.views import BackendKey, parse_health

TunnelStats = Mapping[str, Mapping[str, Stats]]  # node → peer public key → counters


class Readings(Protocol):
    def tunnel_stats(self) -> TunnelStats | None:
        """Each node's WireGuard counters; None when there is no lab to read."""

    def backend_health(self) -> Mapping[BackendKey, bool] | None:
        """Each service backend's health; None when nothing checks it."""


class NoLab:
    def tunnel_stats(self) -> TunnelStats | None:
        return None

    def backend_health(self) -> Mapping[BackendKey, bool] | None:
        return None


@dataclass
class Fixed:
    tunnels: dict[str, dict[str, Stats]] = field(default_factory=dict)
    health: dict[BackendKey, bool] = field(default_factory=dict)

    def tunnel_stats(self) -> TunnelStats | None:
        return self.tunnels

    def backend_health(self) -> Mapping[BackendKey, bool] | None:
        return self.health


class LabReadings:
    """A running lab (`labs.LabState`): blocking reads — the server calls them from a thread."""

    def __init__(self, state: labs.LabState, topo: LabTopology) -> None:
        self.state = state
        self.topo = topo

    def tunnel_stats(self) -> TunnelStats | None:
        return {
            node: {k: (s[0], s[1], s[2], s[3]) for k, s in peers.items()}
            for node, peers in labs.tunnel_status(self.topo).items()
        }

    def backend_health(self) -> Mapping[BackendKey, bool] | None:
        path: Path = self.state.dir / "health.json"
        try:
            return parse_health(json.loads(path.read_text()))
        except FileNotFoundError:
            return None  # no service daemon (yet): health unknown, not healthy
        except (OSError, ValueError):
            return {}
