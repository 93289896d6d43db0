"""What an agent does with `gateways/<site>` (agent/failover.py), on the golden gateways mesh: follows
each site's active gateway, keeps the last good choice when a bad value is written (a garbled or
foreign name does not move the site back to a gateway that may be the broken one), falls back to the
preferred gateway when the key is deleted, and aims its probes at each remote site's active gateway —
direct (tunnel address) and, for a standby, via its own site's active gateway (node address)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from crossmesh.agent import records
from crossmesh.agent.failover import Failover
from crossmesh.agent.gateways import ActiveGateway
from crossmesh.kv.api import Entry, Event
from crossmesh.kv.layout import Layout
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = Layout("gateways")


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, records.PlannedNode]:
    tmp = tmp_path_factory.mktemp("g")
    shutil.copytree(ROOT / "tests" / "golden" / "gateways", tmp / "g", ignore=shutil.ignore_patterns("expected"))
    return records.intent_of(compile_mesh(tmp / "g" / "mesh.yaml", tmp / "state", dry_run=True).plan)


def _agent(node: str, planned: dict[str, records.PlannedNode]) -> Any:
    return SimpleNamespace(node=node, intent=planned, chosen={}, layout=LAYOUT, dirty=asyncio.Event(), namespace=None)


def _entry(site: str, value: bytes, revision: int) -> Entry:
    return Entry(LAYOUT.gateway(site), value, 1, revision, 1)


def _value(active: str, epoch: int) -> bytes:
    return ActiveGateway(active, epoch, 1.0, "op", "test").encode()


def test_an_agent_follows_the_active_gateway_and_keeps_the_last_good_one(
    planned: dict[str, records.PlannedNode],
) -> None:
    agent = _agent("east-worker-1", planned)
    f = Failover(agent)
    f.load([_entry("dc-east", _value("gw-east-2", 1), 5), _entry("aws-west", _value("gw-west", 1), 6)])
    assert agent.chosen == {"dc-east": "gw-east-2", "aws-west": "gw-west"} and agent.dirty.is_set()
    agent.dirty.clear()
    f.events([Event("put", _entry("dc-east", _value("gw-east-1", 2), 7))])  # a failover
    assert agent.chosen["dc-east"] == "gw-east-1" and agent.dirty.is_set()
    for bad in (b"{not json", _value("east-worker-1", 3), json.dumps({"active": "gw-east-2"}).encode()):
        agent.dirty.clear()
        f.events([Event("put", _entry("dc-east", bad, 8))])
        assert agent.chosen["dc-east"] == "gw-east-1" and not agent.dirty.is_set()  # not moved back
        assert "keeping the last good one" in f.refused["dc-east"]
        assert f.values["dc-east"][1] == 8  # a takeover compares on the revision etcd holds now
    f.events([Event("delete", _entry("dc-east", b"", 9))])
    assert "dc-east" not in agent.chosen  # records.GatewayView then takes the preferred one
    assert records.GatewayView.of(planned, agent.chosen).active["dc-east"] == "gw-east-2"


def test_probes_aim_at_each_remote_sites_active_gateway(planned: dict[str, records.PlannedNode]) -> None:
    standby = Failover(_agent("gw-east-1", planned))  # behind NAT, standby of dc-east
    standby.aim()
    west = planned["gw-west"]
    assert standby.targets == {"aws-west": (west.tunnel_address, west.address)}
    active = Failover(_agent("gw-east-2", planned))
    active.aim()
    assert active.targets == {"aws-west": (west.tunnel_address, None)}  # no via: it routes into its tunnel
    moved = _agent("gw-east-2", planned)
    moved.chosen = {"dc-east": "gw-east-1"}  # after a failover, the old active probes through the new one
    f = Failover(moved)
    f.aim()
    assert f.targets == {"aws-west": (west.tunnel_address, west.address)}
    worker = Failover(_agent("east-worker-1", planned))
    worker.aim()
    assert worker.targets == {}  # only gateways probe
