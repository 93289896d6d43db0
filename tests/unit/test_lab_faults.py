"""The pure part of `lab cut-site` / `heal-site`: which veth pair is a site's uplink, and the
internet's spec without the uplinks of sites still cut (what healing another site reconciles).
Of `lab stop-forwarding` / `cut-uplink` / `heal-node`: the router's table that cuts a node, a
stopped node held through a membership change, and the commands' bad input."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossmesh import nft
from crossmesh.cli.main import app
from crossmesh.drivers.lab import faults, topology
from crossmesh.drivers.lab.lab import LabState
from crossmesh.errors import UsageError
from crossmesh.model.plan import Plan
from crossmesh.workspace import compile_mesh

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-clouds"


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> topology.LabTopology:
    work = tmp_path_factory.mktemp("three-clouds")
    shutil.copytree(EXAMPLE, work / "mesh", ignore=shutil.ignore_patterns(".crossmesh"))
    return topology.build(compile_mesh(work / "mesh" / "mesh.yaml", work / "state").plan, "abcd")


def test_uplink_is_the_veth_between_internet_and_router(topo: topology.LabTopology) -> None:
    u = faults.uplink(topo, "azure-we")
    k = topo.indices["site"]["azure-we"]
    assert u == faults.Uplink("azure-we", "cm-abcd-inet", f"cm-abcd-i{k}", topo.site_ns["azure-we"], f"cm-abcd-w{k}")
    router = topo.namespace(u.router_ns)
    assert any(ifname == u.wan_if for ifname, _ in router.addresses)  # the router's WAN end
    state = LabState(tag="abcd", mesh="m", mesh_name="m", state_dir="s", sites=dict(topo.site_ns), inet=u.inet_ns)
    state.indices = topo.indices
    assert faults.uplink_of(state, "azure-we") == u  # the same names without compiling the plan


def test_unknown_site_names_the_known_ones(topo: topology.LabTopology) -> None:
    state = LabState(tag="abcd", mesh="m", mesh_name="m", state_dir="s", sites=dict(topo.site_ns))
    with pytest.raises(UsageError, match=r"no site mars in lab m — its sites are: aws-sg, azure-we, gcp-ew"):
        faults.uplink_of(state, "mars")


def test_without_uplinks_leaves_cut_links_alone(topo: topology.LabTopology) -> None:
    inet = topo.namespace(f"{topo.prefix}-inet")
    cut = faults.uplink(topo, "gcp-ew").inet_if
    spec = faults.without_uplinks(inet, frozenset({cut}))
    assert {link.ifname for link in spec.links} == {link.ifname for link in inet.links} - {cut}
    assert all(ifname != cut for ifname, _ in spec.addresses)
    assert [r for r in spec.routes if r.dev == cut] == [] and len(spec.routes) < len(inet.routes)
    assert {r for r in inet.routes if r.dev != cut} == set(spec.routes)
    assert faults.without_uplinks(inet, frozenset()) == inet


# --- a broken gateway: lab stop-forwarding, cut-uplink, heal-node ---------------------------------

GATEWAYS = Path(__file__).resolve().parents[1] / "golden" / "gateways"
HAS_NFT = os.geteuid() == 0 and shutil.which("nft") is not None and shutil.which("unshare") is not None


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> tuple[Plan, topology.LabTopology]:
    work = tmp_path_factory.mktemp("gateways")
    shutil.copytree(GATEWAYS, work / "mesh", ignore=shutil.ignore_patterns(".crossmesh", "state", "expected"))
    plan = compile_mesh(work / "mesh" / "mesh.yaml", work / "state").plan
    return plan, topology.build(plan, "abcd")


def _cut(plan: Plan, *names: str) -> list[faults.CutNode]:
    return [faults.CutNode(n, plan.node(n).address, plan.node(n).public_address) for n in names]


def test_a_cut_uplink_drops_the_node_both_ways_at_its_router_in_a_table_of_its_own(
    gateways: tuple[Plan, topology.LabTopology],
) -> None:
    plan, topo = gateways
    router = topo.namespace(topo.site_ns["dc-east"])
    wan_if = faults.uplink(topo, "dc-east").wan_if
    assert faults.uplink_cut_table(wan_if, []) is None  # nothing cut: no table
    table = faults.uplink_cut_table(wan_if, _cut(plan, "gw-east-2", "gw-east-1"))
    assert table is not None and router.nft is not None
    assert table.name == faults.FAULTS_TABLE != router.nft.name  # `lab up` reconciles only the router's own
    (chain,) = table.items
    assert isinstance(chain, nft.Chain) and chain.base is not None
    assert (chain.base.hook, chain.base.type) == (nft.Hook.FORWARD, nft.ChainType.FILTER)
    assert isinstance(chain.base.priority, int) and chain.base.priority < 0  # before the router's firewall
    F = nft.Field
    drop = (nft.Counter(), nft.Verdict.DROP)
    assert [r.exprs for r in chain.rules] == [
        (nft.Match(F.IIFNAME, wan_if), nft.Match(F.IP_DADDR, IPv4Address("10.30.0.11")), *drop),
        (nft.Match(F.OIFNAME, wan_if), nft.Match(F.IP_SADDR, IPv4Address("10.30.0.11")), *drop),
        (nft.Match(F.IIFNAME, wan_if), nft.Match(F.IP_DADDR, IPv4Address("10.30.0.10")), *drop),
        (nft.Match(F.OIFNAME, wan_if), nft.Match(F.IP_SADDR, IPv4Address("10.30.0.10")), *drop),
    ]
    assert [r.comment for r in chain.rules] == [
        "cut-uplink gw-east-2: from the internet to 192.0.2.11",
        "cut-uplink gw-east-2: to the internet",
        "cut-uplink gw-east-1: from the internet through the site's NAT",
        "cut-uplink gw-east-1: to the internet",
    ]
    # Matching the node's own address in forward covers its public address: the router's prerouting
    # rewrote that to the node's address before (and the answers to a node behind NAT likewise).
    prerouting = next(c for c in router.nft.items if isinstance(c, nft.Chain) and c.name == "prerouting")
    assert (
        nft.Match(F.IIFNAME, wan_if),
        nft.Match(F.IP_DADDR, IPv4Address("192.0.2.11")),
        nft.Nat(nft.NatKind.DNAT, IPv4Address("10.30.0.11")),
    ) in [r.exprs for r in prerouting.rules]


@pytest.mark.skipif(not HAS_NFT, reason="loading a table needs root, nft and unshare (the lab's requirements)")
def test_the_cut_table_loads_and_lab_status_reads_the_cut_nodes_back(
    gateways: tuple[Plan, topology.LabTopology],
) -> None:
    plan, topo = gateways
    table = faults.uplink_cut_table(faults.uplink(topo, "dc-east").wan_if, _cut(plan, "gw-east-2", "gw-east-1"))
    assert table is not None
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", f"nft -f - && nft list table ip {faults.FAULTS_TABLE}"],
        input=nft.render(table),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(faults._CUT_RULE.findall(done.stdout)) == ["gw-east-1", "gw-east-2"]


def test_a_membership_change_keeps_a_stopped_node_stopped(gateways: tuple[Plan, topology.LabTopology]) -> None:
    """A changed-only `up` reconciles the node with ip_forward=0 (never on for a moment); every other
    namespace, and the sysctls beside it, as planned."""
    _, topo = gateways
    state = LabState(tag="abcd", mesh="m", mesh_name="m", state_dir="s", stopped_forwarding=["gw-east-2"])
    assert faults.FORWARDING == "1"
    for spec in topo.namespaces:
        held = faults.holding_faults(state, spec)
        if spec.owner != "gw-east-2":
            assert held is spec, spec.name
            continue
        assert dict(held.sysctls) == {**dict(spec.sysctls), faults.IP_FORWARD: faults.STOPPED}
        assert list(dict(held.sysctls)) == list(dict(spec.sysctls))  # same keys, same order
        assert dataclasses.replace(held, sysctls=spec.sysctls) == spec


def test_unknown_node_names_the_known_ones(gateways: tuple[Plan, topology.LabTopology]) -> None:
    _, topo = gateways
    state = LabState(tag="abcd", mesh="m", mesh_name="m", state_dir="s", nodes=dict(topo.node_ns))
    known = "east-worker-1, edge-1, edge-2, gw-east-1, gw-east-2, gw-west, west-worker-1"
    with pytest.raises(UsageError, match=rf"^no node mars in lab m — its nodes are: {known}$"):
        faults.node_namespace(state, "mars")


def _lab_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nodes: dict[str, str]) -> Path:
    from crossmesh.drivers.lab import state as lab_state

    monkeypatch.setattr(lab_state, "LAB_ROOT", tmp_path)
    mesh = tmp_path / "mesh.yaml"
    if nodes:
        st = LabState(tag="f00d", mesh=str(mesh), mesh_name="unit", state_dir=str(tmp_path / "state"), nodes=nodes)
        st.save()
    return mesh


NODE_FAULTS = ["stop-forwarding", "cut-uplink", "heal-node"]


@pytest.mark.parametrize("command", NODE_FAULTS)
def test_a_node_fault_on_an_unknown_node_is_refused_naming_the_nodes(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = _lab_root(tmp_path, monkeypatch, {"gw-1": "cm-f00d-n0", "worker-1": "cm-f00d-n1"})
    for args in (["mars"], ["mars", "--mesh", str(mesh)], ["mars", "-o", "json"]):
        result = CliRunner().invoke(app, ["lab", command, *args])
        text = " ".join(result.output.split())
        assert result.exit_code == 2, result.output
        assert "no node mars in lab unit — its nodes are: gw-1, worker-1" in text, text
        assert "Traceback" not in result.output
    state = LabState.load("f00d")
    assert state is not None and (state.stopped_forwarding, state.cut_uplinks) == ([], [])  # nothing recorded


@pytest.mark.parametrize("command", NODE_FAULTS)
def test_a_node_fault_with_no_lab_running_says_so(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _lab_root(tmp_path, monkeypatch, {})
    result = CliRunner().invoke(app, ["lab", command, "gw-1"])
    assert result.exit_code == 2, result.output
    assert "no lab is running — start one with `crossmesh lab up MESH`" in " ".join(result.output.split())


def test_a_node_fault_on_a_node_whose_namespace_is_gone_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _lab_root(tmp_path, monkeypatch, {"gw-1": "cm-f00d-n0-missing"})
    result = CliRunner().invoke(app, ["lab", "stop-forwarding", "gw-1"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "namespace cm-f00d-n0-missing of node gw-1 is missing: run `crossmesh lab up` first" in text, text
