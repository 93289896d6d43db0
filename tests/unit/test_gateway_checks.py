"""The `gateway/*` checks of `crossmesh test` without a lab (and without root): which checks are planned
for which mesh and lab, what they skip and why, the flows they send, the judgements they make on what
they measured (loss windows, split brain), and the fidelity checks on a mesh that failed over."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from test_check_builders import CASES, ROOT, checks, context

from crossmesh.checks import failover, fidelity, framework, gateways, probes, suite
from crossmesh.checks.failover import Sample, Staged
from crossmesh.checks.framework import Context, Planned
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import control_plane, topology
from crossmesh.drivers.lab import state as lab_state
from crossmesh.drivers.lab.lab import LabState
from crossmesh.policy.endpoints import mesh_index
from crossmesh.render import readback
from crossmesh.workspace import compile_mesh, rendered

FAILOVER = ROOT / "examples" / "gateway-failover"
SITES = ("aws-use1", "azure-weu", "onprem")


def lab(control_plane: str = "etcd") -> LabState:
    return LabState(tag="t0", mesh="mesh.yaml", mesh_name="m", state_dir="state", control_plane=control_plane)


@pytest.fixture(scope="module")
def ctxs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Context]:
    tmp = tmp_path_factory.mktemp("gateway-checks")
    example = context(FAILOVER, tmp / "failover")
    golden = context(CASES["gateways"], tmp / "golden")
    return {
        "three-clouds": context(CASES["three-clouds"], tmp / "three-clouds"),
        "failover": example,  # no lab: what a unit test of the builders sees
        "failover-agents": dataclasses.replace(example, state=lab()),
        "failover-no-agents": dataclasses.replace(example, state=lab("")),
        "golden-agents": dataclasses.replace(golden, state=lab()),
    }


def gateway(planned: list[Planned], *, skipped: bool = False) -> list[Check]:
    return checks(planned, Kind.GATEWAY, skipped=skipped)


# --- which checks, for which mesh and lab -----------------------------------------------------------


def test_a_full_mesh_plans_no_gateway_check(ctxs: dict[str, Context]) -> None:
    planned = suite.build(ctxs["three-clouds"])
    assert not [p for p in planned if p.check.kind == Kind.GATEWAY]


def test_with_agents_every_site_is_checked_and_failed_over_last(ctxs: dict[str, Context]) -> None:
    ctx = ctxs["failover-agents"]
    planned = suite.build(ctx)
    names = [c.name for c in gateway(planned)]
    assert names[:6] == [
        "gateway/active-carries: aws-use1",
        "gateway/standby-ready: gw-aws-2",
        "gateway/active-carries: azure-weu",
        "gateway/standby-ready: gw-azure-2",
        "gateway/active-carries: onprem",
        "gateway/standby-ready: gw-onprem-2",
    ]
    staged = [
        f"gateway/{what}: {s}" for s in SITES for what in ("failover-crash", "failover-blackhole", "no-split-brain")
    ]
    assert names[6:] == staged
    assert not gateway(planned, skipped=True)
    # every staged check runs after every other check: last in the plan, and alone (serially)
    assert [p.check.name for p in planned[-len(staged) :]] == staged
    assert Kind.GATEWAY in framework.ALONE
    by_name = {c.name: c for c in gateway(planned)}
    assert by_name["gateway/active-carries: aws-use1"].target == "gw-aws-1"  # the preferred: etcd named none
    assert by_name["gateway/failover-crash: onprem"].target == "gw-onprem-1 (preferred)"
    assert {c.port for c in gateway(planned) if "failover" in c.name} == {"5353/UDP"}  # the pods' UDP echo
    assert all(c.expected is Result.OK for c in gateway(planned))


def test_the_test_option_selects_them(ctxs: dict[str, Context]) -> None:
    ctx = ctxs["failover-agents"]
    assert len(suite.build(ctx, "^gateway/")) == 15
    assert [p.check.name for p in suite.build(ctx, "failover-crash")] == [f"gateway/failover-crash: {s}" for s in SITES]
    assert [p.check.name for p in suite.build(ctx, "no-split-brain: onprem")] == ["gateway/no-split-brain: onprem"]
    # leaving the staged failures out: every check but them
    rest = suite.build(ctx, "^(?!gateway/(failover|no-split-brain))")
    assert rest and not [p for p in rest if "failover" in p.check.name or "split-brain" in p.check.name]


def test_without_a_lab_or_agents_the_staged_checks_are_skipped_with_the_reason(ctxs: dict[str, Context]) -> None:
    none = {c.name: c.detail for c in gateway(suite.build(ctxs["failover"]), skipped=True)}
    assert none == {
        "gateway/skipped: standby-ready: the lab runs no agents, nothing keeps a standby's handshakes (lab up "
        "--agents)": "standby-ready: the lab runs no agents, nothing keeps a standby's handshakes (lab up --agents): "
        "gw-aws-2 (and 2 more)",
        "gateway/skipped: failover: no running lab to stage failures in": "failover: no running lab to stage failures "
        "in: aws-use1 (and 2 more)",
    }
    no_agents = {c.name for c in gateway(suite.build(ctxs["failover-no-agents"]), skipped=True)}
    assert "gateway/skipped: failover: the lab runs no agents, so nothing fails over (lab up --agents)" in no_agents
    # what needs no agent still runs: the preferred gateways carry their sites
    assert [c.name for c in gateway(suite.build(ctxs["failover-no-agents"]))] == [
        f"gateway/active-carries: {s}" for s in SITES
    ]


def test_a_site_with_one_gateway_is_skipped_and_a_site_without_udp_pods_streams_to_a_probe_responder(
    ctxs: dict[str, Context],
) -> None:
    ctx = ctxs["golden-agents"]
    planned = suite.build(ctx)
    skips = {c.name: c.detail for c in gateway(planned, skipped=True)}
    assert skips == {
        "gateway/skipped: standby-ready: site with one gateway, no standby": "standby-ready: site with one gateway, "
        "no standby: aws-west",
        "gateway/skipped: failover: site with one gateway, no standby to fail over to": "failover: site with one "
        "gateway, no standby to fail over to: aws-west",
    }
    names = [c.name for c in gateway(planned)]
    assert names == [
        "gateway/active-carries: aws-west",
        "gateway/active-carries: dc-east",
        "gateway/standby-ready: gw-east-1",  # gw-east-2 is preferred: public before behind NAT
        "gateway/failover-crash: dc-east",
        "gateway/failover-blackhole: dc-east",
        "gateway/no-split-brain: dc-east",
    ]
    # the golden mesh's pods serve TCP only: a worker of the site streams to the other site's gateway
    [east] = [s for s in gateways.sites(ctx.plan) if s.name == "dc-east"]
    flow = gateways.pick_flow(ctx, east)
    assert flow is not None and (flow.node, flow.remote_site, flow.address, flow.port) == (
        "east-worker-1",
        "aws-west",
        "",
        gateways.PROBE_PORT,
    )
    assert flow.namespace == ctx.topo.node_ns["east-worker-1"] and flow.size <= gateways.MAX_ECHO
    # without agents no probe responder runs: active-carries checks the device and the routes only
    assert gateways.pick_flow(dataclasses.replace(ctx, state=lab("")), east) is None


def test_the_stream_goes_between_two_workers_pods(ctxs: dict[str, Context]) -> None:
    ctx = ctxs["failover-agents"]
    flows = {s.name: gateways.pick_flow(ctx, s) for s in gateways.sites(ctx.plan)}
    labels = {s: f.label for s, f in flows.items() if f is not None}
    assert labels == {
        "aws-use1": "shop/shop/api-aws -> shop/shop/api-azure:5353/UDP",
        "azure-weu": "shop/shop/api-azure -> shop/shop/api-aws:5353/UDP",
        "onprem": "shop/shop/api-onprem -> shop/shop/api-aws:5353/UDP",
    }
    aws = flows["aws-use1"]
    assert aws is not None and aws.node == "aws-worker-1" and not ctx.plan.node(aws.node).gateway


# --- after a failover: the checks plan with etcd's active gateways ---------------------------------


def moved_context(tmp: Path, active: dict[str, str]) -> Context:
    """The gateway-failover example compiled as `crossmesh test` does when etcd names `active`."""
    work = tmp / "moved"
    if not work.exists():
        context(FAILOVER, work)
    compiled = compile_mesh(work / "mesh.yaml", work / "state", active=active)
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    topo = topology.build(compiled.plan, "t0", policy=index)
    chosen = gateways.peer_rule.active_of(gateways.gateway_order(compiled.plan), active)
    return Context(compiled.plan, topo, lab(), index, rendered(compiled), chosen)


def test_a_site_on_its_standby_is_planned_rendered_and_checked_as_etcd_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = moved_context(tmp_path, {"aws-use1": "gw-aws-2", "onprem": "gw-onprem-1", "mars": "gw-aws-1"})
    assert gateways.planned_active(ctx) == {"aws-use1": "gw-aws-2", "azure-weu": "gw-azure-1", "onprem": "gw-onprem-1"}
    assert gateways.not_preferred(ctx.plan, ctx.active) == ["site aws-use1 on gw-aws-2 (preferred gw-aws-1)"]
    by_name = {c.name: c for c in gateway(suite.build(ctx))}
    assert by_name["gateway/active-carries: aws-use1"].target == "gw-aws-2"
    assert "gateway/standby-ready: gw-aws-1" in by_name and "gateway/standby-ready: gw-aws-2" not in by_name
    # the failover still starts from the preferred gateway (the check waits for it to take back)
    assert by_name["gateway/failover-crash: aws-use1"].target == "gw-aws-1 (preferred)"
    # the files fidelity compares with give the standby the remote sites, the worker's route via it
    assert ctx.files is not None
    gw2, gw1 = readback.node_tunnel(ctx.files, "gw-aws-2"), readback.node_tunnel(ctx.files, "gw-aws-1")
    assert gw2 is not None and gw1 is not None
    nets = {"10.20.0.0/16", "10.30.0.0/16"}
    assert nets <= {str(a) for p in gw2.peers.values() for a in p.allowed_ips}
    assert not nets & {str(a) for p in gw1.peers.values() for a in p.allowed_ips}
    worker = ctx.plan.node("aws-worker-1")
    assert {str(r.gateway) for r in worker.routes if r.gateway is not None} == {"10.10.0.12"}
    # and each fidelity detail says which site runs on which gateway
    monkeypatch.setattr(fidelity, "compare_tunnel", lambda *_: [])
    monkeypatch.setattr(fidelity, "read_live", lambda _: fidelity.Live())
    monkeypatch.setattr(fidelity.wireguard, "dump", lambda _: "")
    [one, *_] = [p for p in fidelity.fidelity_checks(ctx) if p.check.name.startswith("fidelity/tunnel: ")]
    one.run(one.check)
    assert one.check.detail.endswith(
        "as rendered (with the active gateways etcd names: site aws-use1 on gw-aws-2 (preferred gw-aws-1))"
    ), one.check.detail


def test_render_and_a_plan_without_etcd_stay_on_the_preferred_gateways(ctxs: dict[str, Context]) -> None:
    ctx = ctxs["failover-agents"]
    assert gateways.not_preferred(ctx.plan, gateways.planned_active(ctx)) == []
    assert ctx.files is not None
    gw1 = readback.node_tunnel(ctx.files, "gw-aws-1")
    assert gw1 is not None and "10.20.0.0/16" in {str(a) for p in gw1.peers.values() for a in p.allowed_ips}


# --- what the staged checks measure and judge ------------------------------------------------------


def test_gaps_are_runs_of_lost_datagrams_from_the_first_lost_to_the_next_echoed() -> None:
    sent = [k * 0.01 for k in range(20)]
    echoed = set(range(20)) - {3, 4, 5, 11}
    runs = probes.gaps(sent, echoed)
    assert [(g.first, g.lost) for g in runs] == [(3, 3), (11, 1)]
    assert runs[0].seconds == pytest.approx(0.03) and runs[1].seconds == pytest.approx(0.01)
    assert [g.first for g in probes.gaps(sent, echoed, start=0.1)] == [11]  # the runs that start in the window
    assert [g.first for g in probes.gaps(sent, echoed, end=0.1)] == [3]
    [never] = probes.gaps(sent, set(range(15)))  # traffic never came back
    assert (never.first, never.lost, math.isinf(never.seconds)) == (15, 5, True)
    assert probes.gaps([], set()) == []


def sample(at: float, carriers: dict[str, tuple[str, ...]], routes: dict[str, tuple[str, ...]]) -> Sample:
    return Sample(at, carriers, routes)


def transition(gw1: str = "gw-1", gw2: str = "gw-2", settle_at: float = 0.2) -> list[Sample]:
    """Samples every 0.1 s for 2 s: the site moves from gw1 to gw2; one remote gateway follows at
    0.1 s, the other and the worker at `settle_at`."""
    out = []
    for k in range(20):
        t = k * 0.1
        first = gw1 if t < 0.1 else gw2
        second = gw1 if t < settle_at else gw2
        out.append(sample(t, {"r1": (first,), "r2": (second,)}, {"worker": (second,)}))
    return out


def test_split_brain_is_two_peers_at_once_or_a_disagreement_longer_than_a_transition() -> None:
    problems, longest = failover.split_brain(transition())
    assert problems == [] and longest == pytest.approx(0.1)
    assert failover.split_brain(transition(settle_at=0.8)) == ([], pytest.approx(0.7))  # a slow agent
    problems, longest = failover.split_brain(transition(settle_at=1.5))
    assert longest == pytest.approx(1.4)
    assert problems == ["the remote gateways or the site's nodes disagreed on its gateway for 1.40 s"]
    two = [*transition()[:3], sample(0.3, {"r1": ("gw-1", "gw-2"), "r2": ("gw-2",)}, {})]
    assert failover.split_brain(two)[0][0] == "r1 held the site network on 2 peers at once (gw-1, gw-2)"
    # nodes routing via two gateways for long is split brain too; nobody routing (an active) is not
    apart = [sample(k * 0.1, {"r1": ("gw-1",)}, {"a": ("gw-1",), "b": ("gw-2",)}) for k in range(15)]
    assert failover.split_brain(apart)[0]
    assert failover.split_brain([sample(0, {"r1": ("gw-1",)}, {})]) == ([], 0.0)
    assert failover.story(transition(), failover._carriers) == "gw-1 → gw-1+gw-2 → gw-2"
    assert failover.story([sample(0, {"r1": ()}, {})], failover._carriers) == "none"


def staged(**kw: object) -> Staged:
    st = Staged("crash", "gw-1", standby="gw-2", epoch=3, named=0.4, sent=1000, lost=40, back=12.5)
    st.window = probes.Gap(10, 38, 1.0, 0.38)
    return dataclasses.replace(st, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "result"),
    [
        ({}, Result.OK),
        ({"window": probes.Gap(10, 120, 1.0, 1.2)}, Result.TOO_SLOW),
        ({"window": probes.Gap(10, 5, 1.0, math.inf)}, Result.TOO_SLOW),
        ({"problems": ["aws-worker-1 routes 10.20.0.0/16 via 10.10.0.11, not via gw-2"]}, Result.WRONG_ANSWER),
        ({"back": None}, Result.TIMEOUT),  # the lab not left as found
        ({"result": Result.TIMEOUT, "standby": ""}, Result.TIMEOUT),  # no takeover
    ],
)
def test_a_failover_passes_within_the_loss_budget_through_the_standby_and_back(
    change: dict[str, object], result: Result
) -> None:
    assert failover.verdict(staged(**change)) is result


def test_a_failover_detail_leads_with_its_loss_window() -> None:
    text = failover.describe(staged(evidence="aws-worker-1 routes 10.20.0.0/16 via gw-2"))
    assert text.startswith("loss window 380 ms (40 of 1000 datagrams lost); gw-2 took over (epoch 3), named in etcd")
    assert "aws-worker-1 routes 10.20.0.0/16 via gw-2" in text and "gw-1 active again 12.5 s after the heal" in text
    assert failover.describe(staged(window=None, lost=0)).startswith("loss window 0 ms (0 of 1000 datagrams lost)")
    never = failover.describe(staged(window=probes.Gap(1, 9, 0.0, math.inf), problems=["no standby took over"]))
    assert never.startswith("no standby took over — loss window never resumed")


def test_a_crashed_node_recovers_without_a_lab_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab_state, "LAB_ROOT", tmp_path)
    state = LabState(tag="t0", mesh="m", mesh_name="m", state_dir="s", nodes={"gw-1": "cm-t0-n0"}, control_plane="etcd")
    agents = control_plane.agent_dir(state)
    (agents / "crashed").mkdir(parents=True)
    (agents / "crashed" / "gw-1").touch()
    (agents / "gw-1.json").write_text("{}")
    started: list[str] = []
    running: Callable[[LabState, str], bool] = lambda _, node: node in started  # noqa: E731
    monkeypatch.setattr(control_plane, "agent_running", running)
    monkeypatch.setattr(control_plane, "start_agent", lambda _, node: started.append(node) or 4242)
    assert control_plane.recover_node(state, "gw-1") == [
        "node gw-1 no longer marked crashed",
        "agent 4242 of node gw-1 started",
    ]
    assert not (agents / "crashed" / "gw-1").exists() and started == ["gw-1"]
    assert control_plane.recover_node(state, "gw-1") == []  # nothing left to do
    with pytest.raises(control_plane.UsageError, match="no node mars"):
        control_plane.recover_node(state, "mars")


def test_gateway_checks_run_alone_after_the_others_in_their_planned_order() -> None:
    ran: list[str] = []

    def planned(name: str, kind: Kind) -> Planned:
        return Planned(Check(name, kind, "x", "y", "-", Result.OK), lambda c: ran.append(c.name))

    plan = [
        planned("gateway/active-carries: s", Kind.GATEWAY),
        planned("mtu/a", Kind.MTU),
        planned("gateway/failover-crash: s", Kind.GATEWAY),
        planned("mtu/b", Kind.MTU),
        planned("gateway/no-split-brain: s", Kind.GATEWAY),
    ]
    framework.run(plan, workers=4)
    assert sorted(ran[:2]) == ["mtu/a", "mtu/b"]
    assert ran[2:] == ["gateway/active-carries: s", "gateway/failover-crash: s", "gateway/no-split-brain: s"]
