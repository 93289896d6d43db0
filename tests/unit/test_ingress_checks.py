"""The `ingress/*` builders without a lab: from examples/three-clouds (gateway `rebels` in cluster2,
HTTPS rebels.example.com, rule `beta` on X-Version: beta → cluster3, rule `canary` 90/10), which
checks are planned and what each expects — the expectations are `gateway.match.select`'s and
`policy trace`'s, so a route or policy edit moves them. And the rest of the suite with a gateway pod
among the pods: it runs HAProxy, not the echo app, and takes no mesh proxy inbound."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest

from crossmesh import nft
from crossmesh.checks import connectivity, framework, ingress, ingressedge, ingressfailover, mtls, service_types
from crossmesh.checks.framework import Context
from crossmesh.checks.ingressclient import Answer
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import firewall, topology
from crossmesh.drivers.lab.state import LabState
from crossmesh.istio.index import istio_index
from crossmesh.nft import text as nft_text
from crossmesh.plan import prerequisites
from crossmesh.policy.endpoints import mesh_index
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]
GW = "cluster2/default/rebels"
ROUTE = "default/rebel-base"
CLUSTER2 = {"cluster2/default/rebel-base-0", "cluster2/default/rebel-base-1"}
CLUSTER3 = {"cluster3/default/rebel-base-0", "cluster3/default/rebel-base-1"}


def context(work: Path, *, edit: tuple[str, str, str] | None = None) -> Context:
    """A Context as `crossmesh test` builds it (`edit`: in file PATH, OLD becomes NEW)."""
    shutil.copytree(ROOT / "examples" / "three-clouds", work, ignore=shutil.ignore_patterns(".crossmesh", "state"))
    if edit is not None:
        path, old, new = edit
        text = (work / path).read_text()
        assert old in text
        (work / path).write_text(text.replace(old, new, 1))
    compiled = compile_mesh(work / "mesh.yaml", work / "state")
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    istio = istio_index(compiled.plan, compiled.loaded.manifests)
    topo = topology.build(compiled.plan, "t0", policy=index)
    views = ingress.views(compiled, work / "state")
    return Context(compiled.plan, topo, None, index, None, None, istio, views)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Context:
    return context(tmp_path_factory.mktemp("ingress") / "m")


def ran(planned: list[framework.Planned]) -> list[Check]:
    return [p.check for p in planned if not p.check.skipped]


def test_every_rule_gets_a_request_built_to_match_it_and_expects_select_s_backends(ctx: Context) -> None:
    checks = ran(ingress.routes(ctx))
    assert [c.name for c in checks] == [
        f"ingress/route: {GW} {ROUTE} rule 0 (beta): GET https://rebels.example.com/crossmesh-ingress-check "
        "X-Version: beta",
        f"ingress/route: {GW} {ROUTE} rule 1 (canary): GET https://rebels.example.com/crossmesh-ingress-check",
    ]
    beta, canary = checks
    assert all(c.kind is Kind.INGRESS and c.source == "local" and c.port == "443/TCP" for c in checks)
    # beta: rebel-base-gcp alone, cluster3's pods; canary: rebel-base (cluster2's tier first) and rebel-base-gcp
    assert (beta.extra["rule"], set(beta.extra["pods"]), beta.extra["statuses"]) == ((ROUTE, 0), CLUSTER3, [200])
    assert (canary.extra["rule"], set(canary.extra["pods"])) == ((ROUTE, 1), CLUSTER2 | CLUSTER3)


def test_weights_and_header_match_are_planned_for_the_rules_that_have_them(ctx: Context) -> None:
    [weights] = ran(ingress.weights(ctx))
    assert weights.name == f"ingress/weights: {GW} {ROUTE} rule 1 (canary): 90/10 over 1000 requests"
    assert weights.extra["want"] == {"default/rebel-base:80": 90.0, "default/rebel-base-gcp:80": 10.0}
    [header] = ran(ingress.header_match(ctx))
    assert header.name.endswith("rule 0 (beta): X-Version: beta")
    # with the header rule 0 takes it; without, the canary rule does
    assert (header.extra["with"], header.extra["without"]) == ((ROUTE, 0), (ROUTE, 1))


def test_tls_checks_each_https_listener_and_the_unpublished_port_80(ctx: Context) -> None:
    checks = {c.name.split(": ", 2)[-1]: c.expected for c in ran(ingressedge.tls(ctx))}
    assert checks == {
        "certificate for rebels.example.com": Result.OK,
        "unknown SNI unknown.crossmesh.invalid refused (strict-sni)": Result.RESET,
        "plain HTTP gets no HTTP answer": Result.RESET,
        "port 80 not published (no listener declares it)": Result.TIMEOUT,
    }


def test_exposure_covers_every_public_address_and_only_the_listener_may_answer(ctx: Context) -> None:
    checks = ran(ingressedge.no_public_exposure(ctx))
    lb = str(ctx.topo.load_balancers[GW])
    addresses = {c.target for c in checks}
    assert addresses == set(ingressedge.public_addresses(ctx))
    assert lb in addresses and {str(a) for a in ctx.topo.site_wan.values()} <= addresses
    assert {c.target: c.port for c in checks if c.port != "-"} == {lb: "443"}
    ports = ingressedge.known_ports(ctx)
    gateway_node_port = ctx.plan.ingress[0].listeners[0].node_port
    assert {22, 80, 443, 6443, 2379, 4240, 8080, gateway_node_port} <= ports


def test_failover_is_planned_for_the_backend_with_a_next_tier_only(tmp_path: Path, ctx: Context) -> None:
    assert ingressfailover.failover(ctx)[0].check.skipped  # no lab to stage failures in
    state = LabState(tag="t0", mesh=str(tmp_path / "mesh.yaml"), mesh_name="three-clouds", state_dir=str(tmp_path))
    with_lab = dataclasses.replace(ctx, state=state)
    [check] = ran(ingressfailover.failover(with_lab))
    # rebel-base (affinity local: cluster2's pods, then cluster3's); rebel-base-gcp has one tier
    assert check.name == (
        f"ingress/failover: {GW} {ROUTE} rule 1 (canary) -> default/rebel-base:80: preferred tier (2 pods) killed"
    )


def test_a_rule_whose_backends_policy_refuses_expects_the_gateway_s_5xx(tmp_path: Path) -> None:
    # cluster3's rebel-base no longer admits cluster2's gateway: beta's backends are all refused,
    # and canary's are allowed in cluster2 and refused in cluster3 — a coin toss, skipped.
    edit = (
        "apps/cluster3/rebel-base.yaml",
        "gateway-name: rebels\n            io.cilium.k8s.policy.cluster: cluster2",
        "gateway-name: rebels\n            io.cilium.k8s.policy.cluster: cluster1",
    )
    planned = ingress.routes(context(tmp_path / "m", edit=edit))
    [beta] = ran(planned)
    assert beta.extra["statuses"] == [502, 503, 504] and beta.extra["pods"] == []
    [skip] = [p.check for p in planned if p.check.skipped]
    assert "some backends of the rule and not others" in skip.detail and "canary" in skip.detail


def test_a_redirect_rule_expects_its_status_and_location(tmp_path: Path) -> None:
    rule = (
        "    - name: old\n"
        "      matches: [{path: {type: PathPrefix, value: /old}}]\n"
        "      filters:\n"
        "        - type: RequestRedirect\n"
        "          requestRedirect: {hostname: new.example.com, statusCode: 301}\n"
        "    - name: canary\n"
    )
    planned = ingress.routes(context(tmp_path / "m", edit=("apps/cluster2/ingress.yaml", "    - name: canary\n", rule)))
    [old] = [c for c in ran(planned) if "(old)" in c.name]
    assert old.name.endswith("GET https://rebels.example.com/old/crossmesh-ingress-check")
    assert old.extra["statuses"] == [301]
    judge = ingress.Expect((301,), location="https://new.example.com/old/x")
    assert judge.judge(Answer(Result.OK, 301, {"location": "https://new.example.com/old/x"}))[0] is Result.OK
    assert (
        judge.judge(Answer(Result.OK, 301, {"location": "https://rebels.example.com/old/x"}))[0] is Result.WRONG_ANSWER
    )


def test_an_answer_is_judged_by_status_and_the_pod_that_gave_it() -> None:
    exp = ingress.Expect((200,), frozenset({"c/ns/a"}))
    assert exp.judge(Answer(Result.OK, 200, body={"cluster": "c", "namespace": "ns", "pod": "a"}))[0] is Result.OK
    wrong = exp.judge(Answer(Result.OK, 200, body={"cluster": "c", "namespace": "ns", "pod": "b"}))
    assert wrong == (Result.WRONG_ANSWER, "answered by c/ns/b, not a backend")
    assert exp.judge(Answer(Result.OK, 503))[0] is Result.WRONG_ANSWER
    assert exp.judge(Answer(Result.TIMEOUT, detail="timed out")) == (Result.TIMEOUT, "timed out")


def test_the_failover_gap_is_the_longest_run_of_failures_until_the_next_success() -> None:
    s = ingressfailover.Sent
    sent = [s(0.0, True, "a"), s(0.1, False, None), s(0.2, False, None), s(0.5, True, "b"), s(0.6, False, None)]
    gap = ingressfailover.longest_gap([*sent, s(0.7, True, "b")])
    assert (gap.failed, round(gap.seconds, 3)) == (2, 0.4)
    assert math.isinf(ingressfailover.longest_gap(sent[:3]).seconds)  # never resumed
    assert ingressfailover.longest_gap([s(0.0, True, "a")]).failed == 0


def test_the_rest_of_the_suite_knows_a_gateway_pod_runs_haproxy(ctx: Context) -> None:
    gateway_pod = "cluster2/default/rebels-istio-0"
    pods = {p.ref: p for p in ctx.plan.pods()}
    assert ctx.gateway_view(pods[gateway_pod]) is ctx.ingress[GW]  # type: ignore[index]
    # no pod-to-pod check sends the echo app's request to it, and no mTLS pair ends at it
    assert not [c for c in ran(connectivity.pod_to_pod(ctx)) if c.target == gateway_pod]
    assert not [c for c in ran(mtls.identity(ctx)) if c.target == gateway_pod]
    # no mesh proxy inbound: what the network lets through reaches its listener
    assert ctx.mesh_proxy(pods["cluster2/default/hq-0"], pods[gateway_pod], 443, None) is None
    # its node port, from the site network (allowed by its policy): the listener answers TLS
    from_site = [c for c in ran(service_types.node_ports(ctx)) if c.target == "cluster2/default/rebels-istio"]
    assert from_site and all(c.expected is Result.OK for c in from_site)


def test_the_router_takes_a_gateway_node_port_only_through_its_load_balancer(ctx: Context) -> None:
    """A node's own public address does not publish the gateway's node port (the exposure check
    found it open on azure-talos-1's 1:1 NAT): the accept names the balancer's address."""
    lb = ctx.topo.load_balancers[GW]
    [site] = [s for s in prerequisites.derive(ctx.plan) if s.load_balancers]
    text = nft_text.render(
        nft.Table("crossmesh", (nft.Chain("forward", firewall.inbound_accepts("w0", site, ctx.topo.load_balancers)),))
    )
    [accept] = [line for line in text.splitlines() if "allow ingress-" in line]
    node_port = ctx.plan.ingress[0].listeners[0].node_port
    assert f"ct original ip daddr {{ {lb} }}" in accept and f"tcp dport {node_port} accept" in accept
    # other prerequisites (WireGuard from the peers) are not tied to a balancer
    assert all("ct original" not in line for line in text.splitlines() if "allow ingress-" not in line)
