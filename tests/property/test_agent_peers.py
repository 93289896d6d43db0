"""One peer rule (issue 16): the peers an agent derives from the other nodes' records are the peers
the planner gives that node — same nodes, keys, endpoints, allowed IPs and keepalive — on generated
full-mesh meshes, with nodes behind NAT among them. What the lab proves with the plan is then what
the agents build on real nodes."""

from __future__ import annotations

from ipaddress import IPv4Network

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_ipam import Generated, fresh, meshes

from crossmesh.agent import records
from crossmesh.load.yamlpos import Document
from crossmesh.model.mesh import Mesh
from crossmesh.plan.planner import build_plan
from crossmesh.state import keys as wgkeys
from crossmesh.validate import rules

KEYS = [wgkeys.public_key(wgkeys.generate_private_key()) for _ in range(40)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated=meshes(), nat=st.lists(st.booleans(), min_size=40, max_size=40))
def test_agents_converge_to_the_plans_peers(generated: Generated, nat: list[bool]) -> None:
    data = generated.data
    nodes = [n for c in data["spec"]["clusters"] for n in c["nodes"]]
    for n, behind in zip(nodes, nat, strict=False):
        if behind:
            del n["publicAddress"]
    mesh = Mesh.model_validate(data)
    assume(rules.check(mesh, Document("generated.yaml", data)) == [])  # two NATed sites cannot meet
    names = sorted(n["name"] for n in nodes)
    public = dict(zip(names, KEYS, strict=False))
    plan = build_plan(mesh, fresh(mesh), public)
    keepalive = mesh.spec.wireguard.persistent_keepalive
    recs = {n.name: records.NodeRecord(**records.record_of(n, public[n.name])) for n in plan.nodes if n.tunnel}
    intent = records.intent_of(plan)
    for node in plan.nodes:
        if node.tunnel is None:
            continue
        own = recs[node.name]
        assert records.bind(own, intent) is None
        ok, rejected = records.accept(own, {k: v for k, v in recs.items() if k != node.name})
        assert rejected == {}, rejected
        agent = {
            (p.node, p.public_key, p.endpoint, tuple(sorted(p.allowed_ips)), p.keepalive)
            for p in records.desired_peers(own, ok, keepalive)
        }
        planned = {
            (p.node, p.public_key, p.endpoint_text, tuple(sorted(str(IPv4Network(a)) for a in p.allowed_ips)),
             p.persistent_keepalive)
            for p in node.tunnel.peers
        }  # fmt: skip
        assert agent == planned, node.name
