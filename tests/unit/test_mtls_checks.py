"""The `mtls/…` and `authz/…` builders without a lab: from examples/three-clouds (STRICT mesh-wide,
hq's read-only AuthorizationPolicy, rebel-base for x-wing only), which checks are planned and what
each expects — the expectations are `policy trace`'s, so a policy edit moves them."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from crossmesh.checks import mtls
from crossmesh.checks.framework import Context
from crossmesh.checks.results import Kind, Result
from crossmesh.drivers.lab import topology
from crossmesh.drivers.lab.state import LabState
from crossmesh.istio.index import istio_index
from crossmesh.policy.endpoints import mesh_index
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]


def context(work: Path, *, edit: tuple[str, str] | None = None) -> Context:
    shutil.copytree(ROOT / "examples" / "three-clouds", work, ignore=shutil.ignore_patterns(".crossmesh", "state"))
    if edit is not None:
        path, text = edit
        (work / path).write_text(text)
    compiled = compile_mesh(work / "mesh.yaml", work / "state")
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    state = LabState(tag="t0", mesh=str(work / "mesh.yaml"), mesh_name="three-clouds", state_dir=str(work / "state"))
    istio = istio_index(compiled.plan, compiled.loaded.manifests)
    return Context(compiled.plan, topology.build(compiled.plan, "t0", policy=index), state, index, None, None, istio)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Context:
    return context(tmp_path_factory.mktemp("mtls") / "m")


def test_encryption_and_identity_cover_every_site_pair_and_a_node(ctx: Context) -> None:
    planned = mtls.encrypted(ctx)
    assert {p.check.kind for p in planned} == {Kind.MTLS}
    assert all(p.check.expected is Result.CLEAN for p in planned)
    pairs = {(p.check.source.split("/")[0], p.check.target.split("/")[0]) for p in planned}
    clusters = {"cluster1", "cluster2", "cluster3"}
    # Each cluster is one site and one node here: every ordered pair of clusters, and within each.
    assert pairs == {(a, b) for a in clusters for b in clusters}, sorted(pairs)
    assert [p.check.name.replace("mtls/identity", "") for p in mtls.identity(ctx)] == [
        p.check.name.replace("mtls/encrypted", "") for p in planned
    ]


def test_strict_refusal_expects_a_reset_and_rotation_runs_across_sites(ctx: Context) -> None:
    strict = mtls.strict_refuses_plaintext(ctx)
    assert strict and all(p.check.expected is Result.RESET for p in strict)
    assert len({p.check.target for p in strict}) == len(strict)  # one per destination workload
    [rotation] = mtls.rotation(ctx)
    src, dst = rotation.check.source, rotation.check.target
    pods = {p.ref: p for p in ctx.plan.pods()}
    assert ctx.site_of(pods[src]) != ctx.site_of(pods[dst])
    expired = mtls.expired_refused(ctx)
    assert sorted(p.check.target.split("/")[0] for p in expired) == ["cluster1", "cluster2", "cluster3"]


def test_authorization_requests_come_from_the_policies_and_expect_what_trace_says(ctx: Context) -> None:
    planned = [p.check for p in mtls.authorization(ctx) if not p.check.skipped]
    hq = {(c.source, c.port): (c.name.split(":")[0], c.expected) for c in planned if c.target.endswith("/hq-0")}
    # hq-read-only: x-wing may GET /public and /public/*; anything else is Envoy's 403.
    assert hq[("cluster1/default/x-wing-0", "80/TCP GET /public")] == ("authz/allowed", Result.OK)
    assert hq[("cluster1/default/x-wing-0", "80/TCP GET /public/check")] == ("authz/allowed", Result.OK)
    assert hq[("cluster1/default/x-wing-0", "80/TCP DELETE /public")] == ("authz/denied", Result.FORBIDDEN)
    assert hq[("cluster1/default/x-wing-0", "80/TCP GET /crossmesh-check")] == ("authz/denied", Result.FORBIDDEN)
    # rebel-base admits x-wing's identity on port 80, whatever the request.
    rebel = [c for c in planned if "rebel-base" in c.target]
    assert rebel and all(c.expected is Result.OK and c.name.startswith("authz/allowed") for c in rebel)
    # Flows the network layer drops never reach a proxy: skipped with the reason, not planned.
    skipped = [p.check for p in mtls.authorization(ctx) if p.check.skipped]
    assert skipped and "network layer drops it" in skipped[0].detail


def test_a_deny_policy_moves_the_expectations(tmp_path: Path) -> None:
    deny = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-public-deletes, namespace: default}
spec:
  selector: {matchLabels: {name: rebel-base}}
  action: DENY
  rules:
    - to: [{operation: {methods: [DELETE]}}]
"""
    ctx = context(tmp_path / "m", edit=("apps/common/deny-deletes.yaml", deny))
    rebel = [c for p in mtls.authorization(ctx) if "rebel-base" in (c := p.check).target and not c.skipped]
    deletes = [c for c in rebel if " DELETE " in c.port]
    assert deletes and all(c.expected is Result.FORBIDDEN and c.name.startswith("authz/denied") for c in deletes)
    assert all(c.expected is Result.OK for c in rebel if " GET " in c.port)


def test_nothing_without_istio(ctx: Context) -> None:
    plain = dataclasses.replace(ctx, istio=None)
    builders = (mtls.encrypted, mtls.identity, mtls.strict_refuses_plaintext, mtls.authorization, mtls.rotation)
    assert all(b(plain) == [] for b in builders)
    assert mtls.expired_refused(plain) == []
