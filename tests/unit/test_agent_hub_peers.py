"""The agents and the operator leave to the hub the site pairs it carries over IPsec, as the plan does
(issue 13): seed 001's OpenStack and AWS sites (tests/meshes/hybrid-tgw) joined through the transit
gateway, with a GCP site outside it on WireGuard. An agent on the OpenStack site peers the GCP node
and never the AWS node — from the intents the operator publishes in etcd, the lab's intent file or a
mesh file — under both topologies, `crossmesh status` expects the peers it then has, and a malformed
`apart_sites` in etcd refuses the intent (the last good one is kept) instead of taking the agent down
or joining the sites over WireGuard behind the hub's back."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from vpn_meshes import hybrid, plan_of, with_gateways, with_gcp

from crossmesh.agent import intents, records
from crossmesh.agent.config import ConfigError
from crossmesh.agent.failover import Failover
from crossmesh.agent.following import Following
from crossmesh.kv.layout import Layout
from crossmesh.kv.memory import MemoryStore
from crossmesh.model.mesh import MAX_SITES
from crossmesh.model.plan import Plan
from crossmesh.operator import apply as apply_mod
from crossmesh.operator.run import Operator

KEEPALIVE = 25


def _records(plan: Plan) -> dict[str, records.NodeRecord]:
    return {n.name: records.NodeRecord(**records.record_of(n, f"pub-{n.name}")) for n in plan.nodes if n.tunnel}


def _through_etcd(planned: dict[str, records.PlannedNode]) -> dict[str, records.PlannedNode]:
    """Every node's intent as an agent reads it back from `intents/<node>`."""
    return {
        n: intents.decode_intent(intents.NodeIntent(1, p, 1400, KEEPALIVE).encode(), n).node for n, p in planned.items()
    }


def _peers(plan: Plan, planned: dict[str, records.PlannedNode], node: str) -> list[str]:
    recs = _records(plan)
    ok, rejected = records.accept(recs[node], {k: v for k, v in recs.items() if k != node})
    assert rejected == {}
    return [p.node for p in records.desired_peers(recs[node], ok, KEEPALIVE, planned, {})]


def test_an_agent_on_the_openstack_site_peers_gcp_and_never_the_aws_node() -> None:
    plan = plan_of(with_gcp(hybrid()))
    planned = _through_etcd(records.intent_of(plan))
    assert planned["openstack-master"].apart_sites == ("aws",) and planned["gcp-1"].apart_sites == ()
    assert _peers(plan, planned, "openstack-master") == ["gcp-1"]
    assert _peers(plan, planned, "openstack-worker") == ["gcp-1"]
    assert _peers(plan, planned, "aws-worker-1") == ["gcp-1"]
    assert _peers(plan, planned, "gcp-1") == ["aws-worker-1", "openstack-master", "openstack-worker"]
    # ... which is the plan's own rule
    for name in ("openstack-master", "aws-worker-1", "gcp-1"):
        tunnel = plan.node(name).tunnel
        assert tunnel is not None and _peers(plan, planned, name) == sorted(p.node for p in tunnel.peers)
    # Intents without the field (a mesh without hubs, an operator from before them): no pair apart.
    bare = {n: replace(p, apart_sites=()) for n, p in planned.items()}
    assert _peers(plan, bare, "openstack-master") == ["aws-worker-1", "gcp-1"]


def test_the_lab_file_and_a_mesh_files_inline_intent_carry_the_pairs_too() -> None:
    planned = records.intent_of(plan_of(with_gcp(hybrid())))
    text = records.encode_intent(planned)
    written = json.loads(text)
    assert written["openstack-master"]["apart_sites"] == ["aws"] and "apart_sites" not in written["gcp-1"]
    assert records.decode_intent(text) == planned
    cfg = SimpleNamespace(
        node="openstack-master",
        intent_source="inline",
        layout=Layout("hybrid-tgw"),
        intent_path=None,
        intent=json.loads(json.dumps({n: records.planned_json(p) for n, p in planned.items()})),
    )
    assert Following.of(cfg).nodes == planned  # type: ignore[arg-type]


def test_under_gateways_the_openstack_gateway_peers_only_gcp_and_its_site_routes_only_gcp() -> None:
    plan = plan_of(with_gateways(with_gcp(hybrid())))
    planned = _through_etcd(records.intent_of(plan))
    assert _peers(plan, planned, "openstack-master") == ["gcp-1"]
    assert _peers(plan, planned, "aws-worker-1") == ["gcp-1"]
    assert _peers(plan, planned, "gcp-1") == ["aws-worker-1", "openstack-master"]
    view = records.GatewayView.of(planned, {})
    # The worker reaches GCP through its gateway and AWS through the site router and the hub.
    assert view.routes("openstack-worker", planned) == {"10.200.0.0/16": "10.0.1.185"}
    via = {str(r.dst): str(r.gateway) for r in plan.node("openstack-worker").routes}
    assert view.routes("openstack-worker", planned) == via
    # The OpenStack gateway probes GCP's gateway, not AWS's: it has no tunnel there.
    agent = SimpleNamespace(node="openstack-master", intent=planned, chosen={}, layout=Layout("hybrid-tgw"))
    agent.dirty = asyncio.Event()
    f = Failover(agent)  # type: ignore[arg-type]
    f.aim()
    assert set(f.targets) == {"gcp"}


@pytest.mark.parametrize("gateways", [False, True])
def test_status_expects_the_peers_the_agents_then_have(tmp_path: Path, gateways: bool) -> None:
    data = with_gcp(hybrid())
    data = with_gateways(data) if gateways else data
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    store = MemoryStore()
    layout = Layout("hybrid-tgw")

    async def body() -> dict[str, Any]:
        admin = store.client()
        await apply_mod.apply(admin, await apply_mod.propose(admin, path), "alice")
        kv = store.client("crossmesh-operator")

        async def same() -> Any:
            return kv

        op = Operator(same, layout.mesh, "op-1", say=lambda _: None)
        await op._campaign(kv, await kv.grant(5))
        await op.reconcile(kv)
        stored = json.loads((await kv.get(layout.intent("openstack-master"))).value)  # type: ignore[union-attr]
        assert stored["node"]["apart_sites"] == ["aws"]
        rows = (await apply_mod.status(admin, layout.mesh)).to_json()["nodes"]
        return {r["name"]: r["expectedPeers"] for r in rows}

    expected = asyncio.run(asyncio.wait_for(body(), 30))
    plan = plan_of(data)
    assert expected == {n.name: len(n.tunnel.peers) if n.tunnel else 0 for n in plan.nodes}
    assert expected["openstack-master"] == 1 and expected["gcp-1"] == (2 if gateways else 3)


GOOD = records.PlannedNode(
    "n", "c", "openstack", "10.0.1.5", "10.42.1.0/24", "100.64.0.5", 51820, None, apart_sites=("aws",)
)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("aws", "apart_sites is 'aws', not a list of site names"),
        ({"aws": True}, "not a list of site names"),
        ([7], "apart_sites holds 7, not a site name"),
        (["AWS; ip link del wg0"], "not a site name"),
        (["a" * 64], "not a site name"),
        (["openstack"], "apart_sites names the node's own site 'openstack'"),
        ([f"s{i}" for i in range(MAX_SITES + 1)], f"over the {MAX_SITES} of a mesh"),
        ([], None),
        (["aws", "gcp"], None),
    ],
)
def test_a_malformed_apart_sites_in_etcd_refuses_the_intent_and_keeps_the_last_good(
    value: object, message: str | None
) -> None:
    data = json.loads(intents.NodeIntent(2, GOOD, 1400, 25).encode())
    data["node"]["apart_sites"] = value
    raw = json.dumps(data).encode()
    previous = intents.NodeIntent(1, GOOD, 1400, 25)
    got, why = intents.judge("n", raw, previous)
    if message is None:
        assert why is None and got is not None and got.node.apart_sites == tuple(value)  # type: ignore[arg-type]
        return
    assert got == previous and why is not None and message in why and "keeping its last good intent" in why
    with pytest.raises(intents.IntentError):
        intents.decode_intent(raw, "n")
    # The lab's file and a configuration refuse it alike, with a message, never a traceback.
    fields = {**records.planned_json(GOOD), "apart_sites": value}
    with pytest.raises(ValueError, match="the mesh intent is malformed"):
        records.decode_intent(json.dumps({"n": fields}))
    cfg = SimpleNamespace(node="n", intent_source="inline", layout=Layout("m"), intent_path=None, intent={"n": fields})
    with pytest.raises(ConfigError, match="intent is not the mesh's"):
        Following.of(cfg)  # type: ignore[arg-type]


def test_an_intent_naming_every_other_site_of_the_largest_mesh_fits_under_the_cap() -> None:
    every = tuple(f"{i:03d}" + "s" * 60 for i in range(MAX_SITES - 1))
    raw = intents.NodeIntent(1, replace(GOOD, apart_sites=every), 1400, 25).encode()
    assert intents.decode_intent(raw, "n").node.apart_sites == every
