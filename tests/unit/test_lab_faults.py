"""The pure part of `lab cut-site` / `heal-site`: which veth pair is a site's uplink, and the
internet's spec without the uplinks of sites still cut (what healing another site reconciles)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from crossmesh.drivers.lab import faults, topology
from crossmesh.drivers.lab.lab import LabState
from crossmesh.errors import UsageError
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
