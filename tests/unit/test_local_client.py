"""The client outside (`local`): a laptop on the internet with one public address, whose only way
into the mesh is the sites' public addresses — as the lab's topology plans it and as `policy trace
--from local` names it, from the plan alone."""

from __future__ import annotations

import dataclasses
import json
import shutil
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossmesh import nft
from crossmesh.cli.main import app
from crossmesh.drivers.lab import pods, topology
from crossmesh.drivers.lab.lab import LabState
from crossmesh.errors import UsageError
from crossmesh.model.plan import Plan
from crossmesh.plan import outside
from crossmesh.plan.trace import TraceError
from crossmesh.plan.trace import trace as plan_trace
from crossmesh.policy import trace as policy_trace
from crossmesh.policy.endpoints import mesh_index
from crossmesh.policy.model import EndpointKind
from crossmesh.workspace import Compiled, compile_mesh

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-clouds"
IFNAMSIZ = 15  # the kernel's longest interface name


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("three-clouds")
    shutil.copytree(EXAMPLE, work / "mesh", ignore=shutil.ignore_patterns(".crossmesh"))
    return work / "mesh" / "mesh.yaml"


@pytest.fixture(scope="module")
def compiled(mesh: Path) -> Compiled:
    return compile_mesh(mesh)


@pytest.fixture(scope="module")
def topo(compiled: Compiled) -> topology.LabTopology:
    return topology.build(compiled.plan, "abcd")


def test_the_laptop_has_one_public_address_and_a_default_route_via_the_internet(topo: topology.LabTopology) -> None:
    local = topo.namespace(topo.local_ns)
    assert (local.name, local.role, topo.local_address) == ("cm-abcd-local", "local", IPv4Address("198.51.100.100"))
    assert local.addresses == (("cm-abcd-lc", IPv4Interface("198.51.100.100/32")),)
    assert local.routes == (
        topology.Route(IPv4Network(f"{topo.inet_address}/32"), "cm-abcd-lc"),
        topology.Route(IPv4Network("0.0.0.0/0"), "cm-abcd-lc", topo.inet_address, onlink=True),
    )
    assert local.links == () and local.nft is None  # the internet makes the veth; a laptop has no firewall here
    inet = topo.namespace("cm-abcd-inet")
    veth = next(link for link in inet.links if link.peer_ns == local.name)
    assert (veth.ifname, veth.peer) == ("cm-abcd-li", "cm-abcd-lc")
    assert topology.Route(IPv4Network("198.51.100.100/32"), "cm-abcd-li") in inet.routes
    # Built right after the internet, whose veth it configures.
    names = [n.name for n in topo.namespaces]
    assert names.index(local.name) == names.index(inet.name) + 1


def test_every_name_is_the_labs_and_fits_the_kernel(topo: topology.LabTopology) -> None:
    for ns in topo.namespaces:
        assert ns.name.startswith("cm-abcd-")
        for link in ns.links:
            for name in (link.ifname, link.peer):
                assert name is None or (name.startswith("cm-abcd-") and len(name) <= IFNAMSIZ)


def test_the_internet_routes_public_addresses_only(topo: topology.LabTopology, compiled: Compiled) -> None:
    """So the laptop reaches what the sites publish, never a private address: no route goes there."""
    inet = topo.namespace("cm-abcd-inet")
    for route in inet.routes:
        assert not any(route.dst.overlaps(private) for private in topology.PRIVATE_RANGES), route
    publics = {IPv4Network(f"{a}/32") for a in topo.site_wan.values()} | {
        IPv4Network(f"{n.public_address}/32") for n in compiled.plan.nodes if n.public_address
    }
    assert publics <= {r.dst for r in inet.routes}
    # and the internet's firewall drops a private address anyway (a leak shows as a counter)
    assert inet.nft is not None
    private = "ip daddr { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 } counter drop"
    assert f'{private} comment "private-destination"' in nft.render(inet.nft)


def test_a_site_router_answers_ping_on_its_public_address_and_nothing_else_unsolicited(
    topo: topology.LabTopology,
) -> None:
    router = topo.namespace(topo.site_ns["aws-sg"])
    assert router.nft is not None
    text = nft.render(router.nft)
    ping = next(line for line in text.splitlines() if "ping-router" in line)
    assert "icmp type 8" in ping and "accept" in ping
    chain = text[text.index("chain input") :]
    assert chain.index("ping-router") < chain.index("unsolicited-to-router")  # the rest is still dropped


def _with_node_public(plan: Plan, address: str) -> Plan:
    node = dataclasses.replace(plan.nodes[0], public_address=IPv4Address(address))
    return dataclasses.replace(plan, nodes=(node, *plan.nodes[1:]))


def test_a_mesh_that_uses_the_laptops_address_moves_the_laptop(compiled: Compiled) -> None:
    plan = _with_node_public(compiled.plan, "198.51.100.100")
    moved = outside.local_address(plan)
    assert moved != IPv4Address("198.51.100.100") and moved in IPv4Network("198.51.100.0/24")
    topo = topology.build(plan, "abcd")
    assert topo.local_address == moved
    assert moved not in {topo.inet_address, *topo.site_wan.values()}


def test_policy_trace_from_local_is_the_world_at_the_laptops_address(compiled: Compiled) -> None:
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    ep = policy_trace.endpoint(index, compiled.plan, "local")
    assert ep.kind is EndpointKind.WORLD and ep.addresses == (IPv4Address("198.51.100.100"),)


def test_policy_trace_command_from_local(mesh: Path) -> None:
    args = ["--from", "local", "--to", "cluster2/default/rebel-base-0", "--port", "80/TCP", "-o", "json"]
    result = CliRunner().invoke(app, ["policy", "trace", str(mesh), *args])
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.output)
    assert data["from"] == "local"
    assert data["egress"]["endpoint"] == "198.51.100.100"


def test_lab_exec_local_without_the_namespace_says_how_to_add_it() -> None:
    state = LabState(tag="abcd", mesh="/tmp/m/mesh.yaml", mesh_name="m", state_dir="s")
    with pytest.raises(UsageError, match=r"no `local` client yet: run `crossmesh lab up /tmp/m/mesh.yaml`"):
        pods.exec_argv(state, "local", ["true"])
    with pytest.raises(UsageError, match=r"`local` is the client outside"):
        pods.exec_argv(state, "cluster1/default/nobody", ["true"])


def test_trace_from_local_ends_on_the_internet(compiled: Compiled) -> None:
    traced = plan_trace(compiled.plan, "local", "cluster2/default/rebel-base-0", 80, "TCP")
    assert [(h.where, h.device, h.verdict) for h in traced.hops] == [
        ("local", "local", "forwarded"),
        ("internet", "internet", "no route"),
    ]
    assert "198.51.100.100" in traced.hops[0].action and f"no route to {traced.destination}" in traced.hops[1].action
    service = plan_trace(compiled.plan, "local", "cluster2/default/rebel-base", 80, "TCP")
    assert str(service.destination).startswith("10.96.")  # the ClusterIP: private too
    with pytest.raises(TraceError, match="the client outside is in no cluster"):
        plan_trace(compiled.plan, "local", "default/rebel-base", 80, "TCP")


def test_trace_command_from_local_says_the_destination_is_never_reached(mesh: Path) -> None:
    args = ["--from", "local", "--to", "cluster2/default/rebel-base-0", "--port", "80/TCP"]
    result = CliRunner().invoke(app, ["trace", str(mesh), *args, "--no-probe", "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["hops"][-1]["verdict"] == "no route"
    assert data["policy"]["egress"]["endpoint"] == "198.51.100.100"
    assert data["policy"]["ingress"]["reached"] is False
