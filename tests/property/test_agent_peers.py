"""One peer rule (issue 16): the peers an agent derives from the other nodes' records are the peers
the planner gives that node — same nodes, keys, endpoints, allowed IPs and keepalive — on generated
full-mesh and gateways meshes, with nodes behind NAT among them, and under gateways the routes via
the site's gateway are the plan's too. What the lab proves with the plan is then what the agents
build on real nodes. Whichever gateway etcd makes active, each site's network is carried by one
peer entry at most on any device: no split brain — and the plan made with that choice is what the
agents then run. With a transit gateway joining some sites over IPsec (issue 13: every connection on
AWS's default route table, or the spokes kept apart), the agents leave those pairs to it as the
planner does, from what their intents say — and `crossmesh status` expects the peers they have."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_ipam import Generated, fresh, meshes

from crossmesh.agent import intents, records
from crossmesh.load.yamlpos import Document
from crossmesh.model.mesh import Mesh
from crossmesh.model.plan import NodePlan, Plan, RouteVia, Transport
from crossmesh.operator import apply as operator_apply
from crossmesh.plan import hubs as hub_rule
from crossmesh.plan.planner import build_plan
from crossmesh.state import keys as wgkeys
from crossmesh.validate import rules

KEYS = [wgkeys.public_key(wgkeys.generate_private_key()) for _ in range(40)]


@dataclass(frozen=True)
class HubDraw:
    at: int  # the index of the site whose VPC attaches
    joined: list[bool]  # which other sites (by index) have a VPN connection to the hub
    spokes_apart: bool  # route tables that keep the customer sites from each other


HUBS = st.none() | st.builds(HubDraw, st.integers(0, 2), st.lists(st.booleans(), min_size=3, max_size=3), st.booleans())


def _with_hub(data: dict[str, Any], hub: HubDraw | None) -> None:
    """A transit gateway at one site of the generated mesh, with a VPN connection from each site `hub`
    flags: on AWS's default route table (every attachment reaches every other, customer sites each
    other too), or one table for the VPC and one for the connections (spokes apart: WireGuard)."""
    if hub is None:
        return
    sites = [s["name"] for s in data["spec"]["sites"]]
    at = sites[hub.at % len(sites)]
    conns = [
        {
            "name": f"vpn-{site}",
            "hub": "tgw",
            "site": site,
            "customerGateway": {"asn": 65000 + i, "publicAddress": f"198.51.100.{10 + i}"},
            "tunnels": [{"insideCIDR": f"169.254.{10 + 2 * i}.0/30"}, {"insideCIDR": f"169.254.{11 + 2 * i}.0/30"}],
        }
        for i, (site, flag) in enumerate(zip(sites, hub.joined, strict=False))
        if flag and site != at
    ]
    entry: dict[str, Any] = {"name": "tgw", "site": at}
    if hub.spokes_apart and conns:
        names = [c["name"] for c in conns]
        entry["routeTables"] = [
            {"name": "vpc", "associations": [at], "propagations": names},
            {"name": "vpns", "associations": names, "propagations": [at]},
        ]
    data["spec"]["hubs"] = [entry]
    data["spec"]["vpnConnections"] = conns


def _through_etcd(plan: Plan) -> dict[str, intents.NodeIntent]:
    """Every node's intent as the operator publishes it and an agent reads it back."""
    return {
        n: intents.decode_intent(intents.NodeIntent(1, p, 1400, 25).encode(), n)
        for n, p in records.intent_of(plan).items()
    }


def _hub_pairs_left_alone(mesh: Mesh, plan: Plan) -> None:
    """The plan's IPsec pairs are the hubs' (plan/hubs.py), and no tunnel of the plan joins one."""
    apart = hub_rule.apart(mesh)
    assert apart == {frozenset(p.sites) for p in plan.site_pairs if p.transport is Transport.IPSEC}
    for node in plan.nodes:
        for p in node.tunnel.peers if node.tunnel else ():
            assert frozenset((node.site, p.site)) not in apart, (node.name, p.node)


def _status_expects_the_plans_peers(plan: Plan, told: dict[str, intents.NodeIntent], chosen: dict[str, str]) -> None:
    expected = operator_apply.expected_peers(told, chosen)
    assert expected == {n.name: len(n.tunnel.peers) if n.tunnel else 0 for n in plan.nodes if n.name in told}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated=meshes(), nat=st.lists(st.booleans(), min_size=40, max_size=40), hub=HUBS)
def test_agents_converge_to_the_plans_peers(generated: Generated, nat: list[bool], hub: HubDraw | None) -> None:
    data = generated.data
    nodes = [n for c in data["spec"]["clusters"] for n in c["nodes"]]
    for n, behind in zip(nodes, nat, strict=False):
        if behind:
            del n["publicAddress"]
    _with_hub(data, hub)
    mesh = Mesh.model_validate(data)
    assume(rules.check(mesh, Document("generated.yaml", data)) == [])  # two NATed sites cannot meet
    names = sorted(n["name"] for n in nodes)
    public = dict(zip(names, KEYS, strict=False))
    plan = build_plan(mesh, fresh(mesh), public)
    _hub_pairs_left_alone(mesh, plan)
    keepalive = mesh.spec.wireguard.persistent_keepalive
    recs = {n.name: records.NodeRecord(**records.record_of(n, public[n.name])) for n in plan.nodes if n.tunnel}
    told = _through_etcd(plan)
    intent = {n: i.node for n, i in told.items()}
    for node in plan.nodes:
        if node.tunnel is None:
            continue
        own = recs[node.name]
        assert records.bind(own, intent) is None
        ok, rejected = records.accept(own, {k: v for k, v in recs.items() if k != node.name})
        assert rejected == {}, rejected
        _assert_same_peers(records.desired_peers(own, ok, keepalive, intent), node)
    _status_expects_the_plans_peers(plan, told, {})


def _assert_same_peers(agent_peers: list[records.DesiredPeer], node: NodePlan) -> None:
    """The agent's peers are the plan's: nodes, keys, endpoints, allowed IPs and keepalive."""
    assert node.tunnel is not None
    agent = {(p.node, p.public_key, p.endpoint, tuple(sorted(p.allowed_ips)), p.keepalive) for p in agent_peers}
    planned = {
        (p.node, p.public_key, p.endpoint_text, tuple(sorted(str(IPv4Network(a)) for a in p.allowed_ips)),
         p.persistent_keepalive)
        for p in node.tunnel.peers
    }  # fmt: skip
    assert agent == planned, node.name


def _gateways(data: dict[str, Any], gw: list[bool], nat: list[bool]) -> Mesh:
    """The generated mesh under `topology: gateways`: nodes flagged by `gw` (and the first node of a
    site without one), nodes behind NAT by `nat` (a site's first gateway keeps its public address
    where `nat` would leave two NATed sites unable to meet: the validator refuses those)."""
    data["spec"]["wireguard"] = {"topology": "gateways"}
    nodes = [n for c in data["spec"]["clusters"] for n in c["nodes"]]
    for n, flag in zip(nodes, gw, strict=False):
        n["gateway"] = flag
    for site in {n["site"] for n in nodes}:
        members = [n for n in nodes if n["site"] == site]
        if not any(n["gateway"] for n in members):
            members[0]["gateway"] = True
    for n, behind in zip(nodes, nat, strict=False):
        if behind:
            del n["publicAddress"]
    return Mesh.model_validate(data)


def _agents(plan: Plan, keepalive: int, chosen: dict[str, str]) -> dict[str, list[records.DesiredPeer]]:
    names = sorted(n.name for n in plan.nodes)
    public = dict(zip(names, KEYS, strict=False))
    recs = {n.name: records.NodeRecord(**records.record_of(n, public[n.name])) for n in plan.nodes if n.tunnel}
    intent = {n: i.node for n, i in _through_etcd(plan).items()}
    out = {}
    for name, own in recs.items():
        assert records.bind(own, intent) is None
        ok, rejected = records.accept(own, {k: v for k, v in recs.items() if k != name})
        assert rejected == {}, rejected
        out[name] = records.desired_peers(own, ok, keepalive, intent, chosen)
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    generated=meshes(),
    gw=st.lists(st.booleans(), min_size=40, max_size=40),
    nat=st.lists(st.booleans(), min_size=40, max_size=40),
    hub=HUBS,
)
def test_under_gateways_agents_converge_to_the_plans_peers_and_routes(
    generated: Generated, gw: list[bool], nat: list[bool], hub: HubDraw | None
) -> None:
    _with_hub(generated.data, hub)
    mesh = _gateways(generated.data, gw, nat)
    assume(rules.check(mesh, Document("generated.yaml", generated.data)) == [])
    names = sorted(n.name for c in mesh.spec.clusters for n in c.nodes)
    plan = build_plan(mesh, fresh(mesh), dict(zip(names, KEYS, strict=False)))
    _hub_pairs_left_alone(mesh, plan)
    told = _through_etcd(plan)
    intent = {n: i.node for n, i in told.items()}
    agents = _agents(plan, mesh.spec.wireguard.persistent_keepalive, {})  # etcd names no active yet
    _status_expects_the_plans_peers(plan, told, {})
    view = records.GatewayView.of(intent, {})
    for node in plan.nodes:  # every node runs an agent under gateways: routes for all, peers for tunnels
        via = {str(r.dst): str(r.gateway) for r in node.routes if r.via is RouteVia.GATEWAY}
        assert view.routes(node.name, intent) == via, node.name
        if node.tunnel is not None:
            _assert_same_peers(agents[node.name], node)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    generated=meshes(),
    gw=st.lists(st.booleans(), min_size=40, max_size=40),
    pick=st.lists(st.integers(0, 3), min_size=3, max_size=3),
    foreign=st.booleans(),
    hub=HUBS,
)
def test_whichever_gateway_is_active_a_site_is_carried_by_one_peer_and_routed_to_it(
    generated: Generated, gw: list[bool], pick: list[int], foreign: bool, hub: HubDraw | None
) -> None:
    _with_hub(generated.data, hub)
    mesh = _gateways(generated.data, gw, [])
    assume(rules.check(mesh, Document("generated.yaml", generated.data)) == [])
    names = sorted(n.name for c in mesh.spec.clusters for n in c.nodes)
    plan = build_plan(mesh, fresh(mesh), dict(zip(names, KEYS, strict=False)))
    told = _through_etcd(plan)
    intent = {n: i.node for n, i in told.items()}
    order = records.GatewayView.of(intent, {}).order
    chosen = {site: gws[k % len(gws)] for (site, gws), k in zip(sorted(order.items()), pick, strict=False)}
    if foreign and chosen:  # etcd naming a node that is not the site's gateway counts for nothing
        site = sorted(chosen)[0]
        chosen[site] = next((n for n in names if n not in order[site]), chosen[site])
    view = records.GatewayView.of(intent, chosen)
    assert all(view.active[s] in gws for s, gws in order.items())
    nets = {p.site_network: p.site for p in intent.values() if p.gateway}
    for name, peers in _agents(plan, 25, chosen).items():
        carried = Counter(a for p in peers for a in p.allowed_ips if a in nets)
        assert all(c == 1 for c in carried.values()), (name, carried)  # one peer per site network
        for p in peers:  # ... and that peer is the site's active gateway, seen from an active one
            for a in p.allowed_ips:
                if a in nets:
                    assert view.active[nets[a]] == p.node and view.active[intent[name].site] == name
        routes = view.routes(name, intent)
        mine = intent[name].site
        if view.active[mine] == name:
            assert routes == {}
        else:
            assert set(routes.values()) <= {intent[view.active[mine]].address}
    # The plan made with etcd's choice (what the lab's fidelity checks compare with after a failover)
    # is what the agents run: the same peers, and the same routes via the site's active gateway.
    moved = build_plan(mesh, fresh(mesh), dict(zip(names, KEYS, strict=False)), active=chosen)
    agents = _agents(plan, mesh.spec.wireguard.persistent_keepalive, chosen)
    for node in moved.nodes:
        via = {str(r.dst): str(r.gateway) for r in node.routes if r.via is RouteVia.GATEWAY}
        assert view.routes(node.name, intent) == via, node.name
        if node.tunnel is not None:
            _assert_same_peers(agents[node.name], node)
    _status_expects_the_plans_peers(moved, told, chosen)
