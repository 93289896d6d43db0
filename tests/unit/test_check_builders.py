"""The check builders of `crossmesh test` without a lab (and without root): a `Context` from a real
plan and the lab topology as data, and which checks each builder plans — names, kinds, expected
results — and which cases it skips, with the reason."""

from __future__ import annotations

import ast
import dataclasses
import shutil
from collections import Counter
from ipaddress import IPv4Address as A
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from crossmesh.checks import (
    connectivity,
    fidelity,
    framework,
    mtu,
    results,
    service_types,
    services,
    suite,
    underlay,
    vpn,
    vpnpath,
    wire,
)
from crossmesh.checks.framework import Context, Planned
from crossmesh.checks.probes import Packet
from crossmesh.checks.results import Check, Result
from crossmesh.drivers.lab import topology, transit
from crossmesh.drivers.lab.state import LabState
from crossmesh.model.plan import Plan
from crossmesh.policy.endpoints import mesh_index
from crossmesh.workspace import compile_mesh, rendered

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "src" / "crossmesh" / "checks"
CASES = {
    "three-clouds": ROOT / "examples" / "three-clouds",
    "hybrid": ROOT / "tests" / "meshes" / "hybrid-wireguard",
    "gateways": ROOT / "tests" / "golden" / "gateways",
    "seed001": ROOT / "examples" / "hybrid-openstack-aws",  # hub, IPsec, BGP
}


def context(src: Path, work: Path, edit: tuple[str, str, str] | None = None) -> Context:
    """A Context as `crossmesh test` builds it, from a copy of `src` (with `edit`: after the first
    `anchor`, `old` becomes `new` in mesh.yaml)."""
    shutil.copytree(src, work, ignore=shutil.ignore_patterns(".crossmesh", "expected", "state"))
    if edit is not None:
        anchor, old, new = edit
        text = (work / "mesh.yaml").read_text()
        at = text.index(anchor)
        (work / "mesh.yaml").write_text(text[:at] + text[at:].replace(old, new, 1))
    compiled = compile_mesh(work / "mesh.yaml", work / "state")
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    topo = topology.build(compiled.plan, "t0", policy=index)
    lab = LabState(tag="t0", mesh=str(work / "mesh.yaml"), mesh_name=compiled.plan.mesh, state_dir=str(work / "state"))
    gws = tuple(transit.gateways(lab, topo, compiled))
    return Context(compiled.plan, topo, None, index, rendered(compiled), vpn=gws)


@pytest.fixture(scope="module")
def ctxs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Context]:
    tmp = tmp_path_factory.mktemp("checks")
    out = {name: context(path, tmp / name) for name, path in CASES.items()}
    # cluster3 on Flannel: no Cluster Mesh, so its pods and the others' are not connected
    flannel = ("- name: cluster3", "cni: cilium", "cni: flannel")
    out["flannel"] = context(CASES["three-clouds"], tmp / "flannel", flannel)
    out["open"] = dataclasses.replace(out["three-clouds"], policy=None)  # no policy: every flow allowed
    return out


def checks(planned: list[Planned], kind: str | None = None, *, skipped: bool = False) -> list[Check]:
    return [p.check for p in planned if (kind is None or p.check.kind == kind) and p.check.skipped == skipped]


# --- the framework ---------------------------------------------------------------------------------


def test_no_import_inside_a_function_in_checks() -> None:
    """The framework is apart from the scenarios: every module imports at its top (no cycle to hide)."""
    for path in sorted(CHECKS.glob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = [n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
                assert not inner, f"{path.name}:{inner[0].lineno} imports inside {fn.name}()" if inner else ""
    for path in sorted(CHECKS.glob("*.py")):
        if path.name not in ("suite.py", "__init__.py"):
            assert "crossmesh.checks.suite" not in path.read_text(), f"{path.name} imports the facade"


def test_every_scenario_registers_in_report_order_and_the_facade_builds_them_all() -> None:
    names = [r.builder.__name__ for r in framework.builders()]
    assert names == [
        "fidelity_checks",
        "gateway_state",
        "vpn_state",
        "pod_to_pod",
        "pod_to_service",
        "node_ports",
        "headless",
        "tunnel_mtu",
        "mtu",
        "vpn_mtu",
        "underlay",
        "vpn_encrypted",
        "nat",
        "anti_spoofing",
        "policy_matrix",
        "allowed_flow_recorded",
        "drop_attributed",
        "encrypted",
        "identity",
        "strict_refuses_plaintext",
        "authorization",
        "rotation",
        "expired_refused",
        "l7",
        "routes",
        "weights",
        "header_match",
        "tls",
        "no_public_exposure",
        "services",
        "failover",
        "gateway_failover",
        "vpn_failover",
    ]
    assert [r.builder for r in framework.builders() if r.together] == [underlay.underlay]
    assert suite.Context is Context and suite.build is framework.build and suite.run is framework.run


def test_build_filters_by_name_and_keeps_a_shared_capture_whole(ctxs: dict[str, Context]) -> None:
    ctx = ctxs["three-clouds"]
    every = suite.build(ctx)
    assert len({p.check.name for p in every}) == len(every), "check names are unique"
    only = suite.build(ctx, "^mtu/tunnel-fits")
    assert only and all(p.check.name.startswith("mtu/tunnel-fits") for p in only)
    # one marker check selects the whole capture: its runner fills in the others
    capture = suite.build(ctx, "^encryption/marker: cluster1/")
    assert {p.check.name for p in capture} == {p.check.name for p in underlay.underlay(ctx)}
    assert any(p.check.name == "nat/internet-never-sees-a-private-address" for p in capture)


# --- skips: explicit, with their reason, counted apart ---------------------------------------------


def test_skips_carry_their_reason_once_per_reason_and_never_fail(ctxs: dict[str, Context]) -> None:
    for name, ctx in ctxs.items():
        planned = suite.build(ctx)
        skips = checks(planned, skipped=True)
        assert skips, name
        groups = Counter((c.kind, c.name) for c in skips)
        assert all(n == 1 for n in groups.values()), (name, groups)
        for c in skips:
            reason = c.name.split("/skipped: ", 1)[1]
            assert c.name.startswith(f"{c.kind}/skipped: ") and c.detail.startswith(f"{reason}: "), c
            assert c.expected is c.actual is Result.SKIPPED and c.passed and c.extra["skipped"] >= 1
        # the run does not run them: a skip stays a skip and passes
        ran = framework.run([p for p in planned if p.check.skipped])
        assert all(c.actual is Result.SKIPPED and c.passed for c in ran)


def test_the_report_counts_skips_apart() -> None:
    ok = Check("a", "mtu", "x", "y", "1/UDP", Result.OK, Result.OK)
    bad = Check("b", "mtu", "x", "y", "1/UDP", Result.OK, Result.TIMEOUT, "timed out")
    skip = Check("mtu/skipped: why", "mtu", "-", "-", "-", Result.SKIPPED, Result.SKIPPED, "why: x -> y")
    never_run = Check("c", "mtu", "x", "y", "1/UDP", Result.OK)  # planned, not run: a failure, not a skip
    report = results.report([ok, bad, skip, never_run])
    assert report["summary"] == {"passed": 1, "failed": 2, "skipped": 1}
    assert [c["skipped"] for c in report["checks"]] == [False, False, True, False]
    assert set(report["checks"][0]) == {
        "name",
        "kind",
        "from",
        "to",
        "port",
        "expected",
        "actual",
        "passed",
        "skipped",
        "detail",
    }
    suite_el = ET.fromstring(results.junit([ok, bad, skip], "s")).find("testsuite")
    assert suite_el is not None
    assert (suite_el.get("tests"), suite_el.get("failures"), suite_el.get("skipped")) == ("3", "1", "1")
    cases = suite_el.findall("testcase")
    assert cases[2].find("skipped") is not None and cases[2].find("failure") is None


def test_the_skips_each_builder_reports(ctxs: dict[str, Context]) -> None:
    tc, gw, fl = ctxs["three-clouds"], ctxs["gateways"], ctxs["flannel"]
    names = {c.name for c in checks(suite.build(tc), skipped=True)}
    # three-clouds' policies deny UDP between pods of one node and across clusters: no MTU pod pair there
    assert "mtu/skipped: same-node: no pod pair with a UDP port the policies let through" in names
    assert "mtu/skipped: cross-cluster: no pod pair with a UDP port the policies let through" in names
    assert "pod-to-service/skipped: policy allows some backends and not others" in names
    assert "service/skipped: no running lab to stage failures in" in names
    # one site per cluster: the plan states no same-site class, so pod-to-pod reports no gap there
    assert not any(n.startswith("pod-to-pod/skipped: same-site") for n in names), names
    gnames = {c.name for c in checks(suite.build(gw), skipped=True)}
    assert "mtu/skipped: standby tunnel peer: it carries nothing while the active gateway is up" in gnames
    assert "security/skipped: anti-spoofing: node with no pod to send from" in gnames
    assert "mtu/skipped: same-site: no node pair of this class runs pods" in gnames  # core's pods: one node a site
    assert "nat/skipped: node behind NAT with no pod serving TCP to aim at" in gnames
    fnames = {c.name for c in checks(suite.build(fl), skipped=True)}
    assert "mtu/skipped: cross-cluster: the plan's datapath does not connect these clusters" in fnames
    assert "fidelity/skipped: pod MTU of a flannel cluster: no Cilium values state it" in fnames
    assert [c.name for c in checks(fidelity.fidelity_checks(dataclasses.replace(tc, files=None)), skipped=True)] == [
        "fidelity/skipped: no rendered files to compare with"
    ]


# --- what each builder plans -----------------------------------------------------------------------


def test_mtu_checks_every_connected_pair_class_at_the_pod_mtu_and_one_byte_over(ctxs: dict[str, Context]) -> None:
    for name, ctx in ctxs.items():
        planned = mtu.mtu(ctx)
        pods = {p.ref: p for p in ctx.plan.pods()}
        skipped = " ".join(c.name for c in checks(planned, "mtu", skipped=True))
        for cluster in ctx.plan.clusters:
            assert cluster.datapath is not None
            for k in cluster.datapath.classes:
                if not k.connected:
                    continue
                assert k.mtu is not None
                mine = [
                    c
                    for c in checks(planned, "mtu")
                    if c.extra["pairClass"] == k.name and pods[c.source].cluster == cluster.name
                ]
                if not mine:  # not checked: then skipped, and said so
                    assert f"mtu/skipped: {k.name}: " in skipped, (name, cluster.name, k.name)
                    continue
                sizes = {(c.extra["packetSize"], c.expected, c.name.split(":")[0]) for c in mine}
                assert sizes == {
                    (k.mtu.value, Result.OK, "mtu/fits"),
                    (k.mtu.value + 1, Result.MSG_TOO_LONG, "mtu/one-byte-over"),
                }, (name, k.name, sizes)
    # without policies every connected class of three-clouds is checked, none skipped
    open_ = mtu.mtu(ctxs["open"])
    assert not checks(open_, skipped=True)
    assert {c.extra["pairClass"] for c in checks(open_)} == {"same-node", "cross-cluster"}


def test_every_tunnel_is_checked_at_its_mtu_in_both_directions(ctxs: dict[str, Context]) -> None:
    ctx = ctxs["hybrid"]
    planned = checks(mtu.tunnel_mtu(ctx))
    for node in ctx.plan.nodes:
        assert node.tunnel is not None
        for peer in node.tunnel.peers:
            mine = {c.name.split(":")[0]: c for c in planned if (c.source, c.target) == (node.name, peer.node)}
            assert set(mine) == {"mtu/tunnel-fits", "mtu/tunnel-one-byte-over"}
            assert mine["mtu/tunnel-fits"].extra["packetSize"] == node.tunnel.mtu.value
            assert mine["mtu/tunnel-one-byte-over"].expected is Result.MSG_TOO_LONG


def test_pod_to_pod_covers_every_stated_class_and_a_flannel_cluster_is_not_connected(ctxs: dict[str, Context]) -> None:
    ctx = ctxs["three-clouds"]
    planned = checks(connectivity.pod_to_pod(ctx))
    classes = {c.name.split(":")[0] for c in planned}
    assert classes == {f"pod-to-pod/{k}/{p}" for k in ("same-node", "cross-cluster") for p in ("http", "udp")}
    pods = {p.ref: p for p in ctx.plan.pods()}
    for c in planned:
        src, dst = pods[c.source], pods[c.target]
        port = int(c.port.split("/")[0])
        want = (
            ctx.expect_http(src, dst, port)
            if c.port.endswith("/TCP")
            else (Result.OK if ctx.allowed(src, dst, port, "UDP") else Result.TIMEOUT)
        )
        assert c.kind == "pod-to-pod" and c.expected is want, c
    assert {c.expected for c in checks(connectivity.pod_to_pod(ctxs["open"]))} == {Result.OK}

    fl = ctxs["flannel"]
    fpods = {p.ref: p for p in fl.plan.pods()}
    apart = [
        c
        for c in checks(connectivity.pod_to_pod(fl))
        if "cluster3" in {fpods[c.source].cluster, fpods[c.target].cluster}
    ]
    across = [c for c in apart if fpods[c.source].cluster != fpods[c.target].cluster]
    assert across and all(c.expected is Result.TIMEOUT and "/cross-cluster/" in c.name for c in across)
    policy = [c for c in suite.build(fl, "^policy/") if "cluster3" in c.check.source + c.check.target]
    assert all(
        p.check.expected is Result.TIMEOUT
        for p in policy
        if fpods[p.check.source].cluster != fpods[p.check.target].cluster
    )


def test_fidelity_checks_every_tunnel_node_and_every_cilium_cluster(ctxs: dict[str, Context]) -> None:
    for name, ctx in ctxs.items():
        planned = checks(fidelity.fidelity_checks(ctx))
        tunnels = {c.source for c in planned if c.name.startswith("fidelity/tunnel: ")}
        assert tunnels == {d.node for d in ctx.topo.wireguard} == {n.name for n in ctx.plan.nodes if n.tunnel}, name
        cilium = {c.source for c in planned if c.name.startswith("fidelity/pod-mtu: ")}
        assert cilium == {c.name for c in ctx.plan.clusters if c.cni == "cilium"}, name
        assert all(c.kind == "fidelity" and c.expected is Result.OK for c in planned)


def test_node_ports_headless_and_services(ctxs: dict[str, Context]) -> None:
    hy = ctxs["hybrid"]
    ports = checks(service_types.node_ports(hy))
    assert len(ports) == 9 and all(c.kind == "nodeport" and c.expected is Result.OK for c in ports)
    assert not checks(service_types.node_ports(hy), skipped=True)
    assert not service_types.headless(hy)  # the example has no headless Service
    # without a lab, the service checks (they stage failures) are skipped, with the reason
    [skip] = services.services(hy)
    assert skip.check.skipped and skip.check.detail.startswith("no running lab to stage failures in: ")


def test_underlay_and_nat(ctxs: dict[str, Context]) -> None:
    hy = ctxs["hybrid"]
    planned = checks(underlay.underlay(hy))
    sites = sorted({n.site for n in hy.plan.nodes})
    markers = [c for c in planned if c.name.startswith("encryption/marker: ")]
    assert len(markers) == len(sites) * (len(sites) - 1)
    assert {c.name for c in planned} >= {
        "encryption/internet-carries-only-planned-tunnels",
        "nat/internet-never-sees-a-private-address",
    }
    assert all(c.expected is Result.CLEAN for c in planned)
    nat = checks(underlay.nat(hy))
    behind = [n.name for n in hy.plan.nodes if n.public_address is None]
    assert behind and {c.name.split(":")[0] for c in nat} == {
        "nat/unsolicited-from-internet",
        "nat/reached-through-tunnel",
    }
    assert all(c.expected is (Result.TIMEOUT if c.source == "internet" else Result.OK) for c in nat)


def test_the_plan_fixture_is_real(ctxs: dict[str, Context]) -> None:
    plan: Plan = ctxs["three-clouds"].plan
    assert {c.cni for c in ctxs["flannel"].plan.clusters} == {"cilium", "flannel"} and len(plan.clusters) == 3


def test_seed_001s_vpn_checks_come_from_the_plan_and_skip_without_hubs(ctxs: dict[str, Context]) -> None:
    """Both tunnels, both BGP sessions, each end's routes, the marker and the MTUs of the hybrid example;
    a mesh without hubs skips them with the reason."""
    seed = ctxs["seed001"]
    names = [c.name for c in checks(vpn.vpn_state(seed) + vpnpath.vpn_mtu(seed) + vpnpath.vpn_encrypted(seed))]
    assert names == [
        "vpn/tunnels-up: openstack-vpn tunnel 1 (active)",
        "vpn/tunnels-up: openstack-vpn tunnel 2 (standby)",
        "bgp/established: openstack-vpn tunnel 1 (active)",
        "bgp/established: openstack-vpn tunnel 2 (standby)",
        "bgp/routes: customer openstack over openstack-vpn",
        "bgp/routes: hub zta-transit-gateway over openstack-vpn",
        "vpn/mtu-fits: openstack-master -> aws-worker-1 over openstack-vpn (1400 bytes, DF)",
        "vpn/mtu-one-byte-over: openstack-master -> aws-worker-1 over openstack-vpn (1401 bytes, DF)",
        "vpn/mtu-fits: aws-worker-1 -> openstack-master over openstack-vpn (1400 bytes, DF)",
        "vpn/mtu-one-byte-over: aws-worker-1 -> openstack-master over openstack-vpn (1401 bytes, DF)",
        "vpn/mtu-fits: k3s/demo/demo-app-0 -> k3s/microservices/tkb-0 over openstack-vpn (pods, 1350 bytes, DF)",
        "vpn/mtu-one-byte-over: k3s/demo/demo-app-0 -> k3s/microservices/tkb-0 over openstack-vpn "
        "(pods, 1351 bytes, DF)",
        "vpn/encrypted: k3s/demo/demo-app-0 -> k3s/microservices/tkb-0 over openstack-vpn",
    ]
    bgp = {c.name: c for c in checks(vpn.vpn_state(seed))}
    assert bgp["bgp/established: openstack-vpn tunnel 1 (active)"].source == "AS65000 169.254.10.2"
    assert bgp["bgp/established: openstack-vpn tunnel 1 (active)"].target == "AS64512 169.254.10.1"
    assert bgp["bgp/routes: customer openstack over openstack-vpn"].target == "10.100.0.0/16"
    assert bgp["bgp/routes: hub zta-transit-gateway over openstack-vpn"].target == "10.0.1.0/24"
    over = [c for c in checks(vpnpath.vpn_mtu(seed)) if "one-byte-over" in c.name]
    assert all(c.expected is Result.MSG_TOO_LONG for c in over) and len(over) == 3
    for name in ("three-clouds", "hybrid"):
        planned = vpn.vpn_state(ctxs[name]) + vpnpath.vpn_mtu(ctxs[name]) + vpnpath.vpn_encrypted(ctxs[name])
        assert {(c.name, c.detail.split(":")[0]) for c in checks(planned, skipped=True)} == {
            ("vpn/skipped: no hubs: the mesh has no site-to-site VPN", "no hubs"),
        }
        assert not checks(planned)


def test_what_the_internet_may_carry_is_the_plans_tunnels(ctxs: dict[str, Context]) -> None:
    """IKE, ESP in UDP 4500 and keepalives between the customer gateway and its hub's endpoints pass;
    the same bytes between other addresses, or ESP on another port, do not."""
    seed = ctxs["seed001"]
    allowed = wire.planned(seed.plan, seed.topo)
    cgw, t1 = A("198.51.100.162"), seed.topo.vpn_outside["openstack-vpn", 1]

    def udp(src: A, dst: A, sport: int, dport: int, payload: bytes) -> Packet:
        return Packet(src, dst, 17, sport, dport, bytes([0x45]) + bytes(19) + bytes(8) + payload)

    esp = udp(cgw, t1, 4500, 4500, b"\x01\x02\x03\x04" + bytes(40))
    assert wire.carrier(allowed, esp) == (wire.Carrier.ESP, allowed.ipsec[0])
    assert wire.carrier(allowed, udp(t1, cgw, 4500, 4500, bytes(4) + b"ike"))[0] is wire.Carrier.IKE  # type: ignore[index]
    assert wire.carrier(allowed, udp(cgw, t1, 500, 500, b"ike"))[0] is wire.Carrier.IKE  # type: ignore[index]
    assert wire.carrier(allowed, udp(cgw, t1, 4500, 4500, b"\xff"))[0] is wire.Carrier.KEEPALIVE  # type: ignore[index]
    assert wire.carrier(allowed, udp(cgw, A("192.0.2.99"), 4500, 4500, b"\x01" * 40)) is None
    assert wire.carrier(allowed, udp(cgw, t1, 4500, 51820, b"\x01" * 40)) is None
    assert wire.carrier(allowed, Packet(cgw, t1, 50, 0, 0, bytes(40))) is None  # bare ESP: not what NAT-T sends
    assert not allowed.wireguard  # seed 001 runs no WireGuard
