"""The differential test's generator (istio.gen) over the three-clouds example's pods: every policy
it makes is valid for crossmesh and for Istio's CRD, the evaluator answers every pair, and the
pairs reach every kind of verdict (so the lab replay exercises them all)."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
from istio_crd import schema_problems

from crossmesh.istio import gen, parse
from crossmesh.policy.endpoints import mesh_endpoints
from crossmesh.policy.model import Endpoint, EndpointKind
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]
TRUST_DOMAIN = "cluster.local"
COUNT = 600


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Endpoint]:
    root = tmp_path_factory.mktemp("gen")
    shutil.copytree(ROOT / "examples" / "three-clouds", root / "m", ignore=shutil.ignore_patterns(".crossmesh"))
    compiled = compile_mesh(root / "m" / "mesh.yaml", root / "state")
    eps = mesh_endpoints(compiled.plan, compiled.loaded.manifests)
    return {e.ref: e for e in eps if e.kind is EndpointKind.POD}


@pytest.fixture(scope="module")
def cases(pods: dict[str, Endpoint]) -> list[gen.Case]:
    return gen.generate(random.Random(11), list(pods.values()), count=COUNT, trust_domain=TRUST_DOMAIN)


def test_the_evaluator_is_total_over_generated_pairs(cases: list[gen.Case], pods: dict[str, Endpoint]) -> None:
    kinds: Counter[str] = Counter()
    for case in cases:
        verdict = gen.expected(case, pods, TRUST_DOMAIN)
        assert verdict.reason, case
        assert (verdict.policy == "") is (verdict.rule is None), verdict
        if verdict.policy:
            names = {f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in case.policies}
            assert verdict.policy in names
        kinds[verdict.reason.split(" policy")[0].split(" (")[0].split(":")[0]] += 1
    assert len(cases) >= 500
    assert {"denied by DENY", "allowed by ALLOW", "no ALLOW", "no AuthorizationPolicy selects this workload"} <= set(
        kinds
    ), kinds
    allowed = sum(gen.expected(c, pods, TRUST_DOMAIN).allowed for c in cases)
    assert 0.2 < allowed / len(cases) < 0.8  # both verdicts are common, not one rare corner


def test_generated_policies_are_valid_for_crossmesh_and_istio(cases: list[gen.Case]) -> None:
    for case in cases[:200]:
        for m in case.manifests():
            assert [i for i in parse.check_manifest(m) if i.severity == "error"] == [], case.yaml()
            assert schema_problems(m.raw) == [], case.yaml()


def test_generation_is_reproducible_from_its_seed(pods: dict[str, Endpoint], cases: list[gen.Case]) -> None:
    again = gen.generate(random.Random(11), list(pods.values()), count=50, trust_domain=TRUST_DOMAIN)
    assert again == cases[:50]
    assert all(c.src != c.dst and c.src in pods and c.dst in pods for c in cases)


def test_the_pairs_exercise_http_plaintext_and_every_field(cases: list[gen.Case]) -> None:
    text = "".join(c.yaml() for c in cases)
    for field in ("principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks"):
        assert f"{field}:" in text, field
    for field in ("ports", "notPorts", "methods", "notMethods", "paths", "notPaths", "istio-system", "DENY"):
        assert field in text, field
    assert any(c.plaintext for c in cases) and any(c.method is None for c in cases)
    assert any(c.method is not None for c in cases)
