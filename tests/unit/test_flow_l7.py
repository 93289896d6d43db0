"""HTTP flow records: the proxy's judgement of a request, its datagram (checked as untrusted), its record."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from crossmesh.observe import l7
from crossmesh.observe.enrich import Directory
from crossmesh.observe.flows import DropReason, Flow, Http, Verdict
from crossmesh.policy.endpoints import mesh_index
from crossmesh.policy.evaluator import PolicyIndex, evaluate
from crossmesh.policy.model import HttpRequest
from crossmesh.workspace import compile_mesh

# examples/three-clouds before Istio: hq keeps its Cilium HTTP rule (tests/meshes/cilium-l7/mesh.yaml)
CILIUM_L7 = Path(__file__).resolve().parents[2] / "tests" / "meshes" / "cilium-l7"
X_WING, HQ = "cluster1/default/x-wing-0", "cluster2/default/hq-0"
HQ_POLICY = "CiliumNetworkPolicy cluster2/default/hq-read-only"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> tuple[PolicyIndex, Directory]:
    tmp = tmp_path_factory.mktemp("mesh")
    shutil.copytree(CILIUM_L7, tmp / "m", ignore=shutil.ignore_patterns("state", ".crossmesh"))
    compiled = compile_mesh(tmp / "m" / "mesh.yaml", tmp / "state", dry_run=True)
    index = mesh_index(compiled.plan, compiled.loaded.manifests)
    return index, Directory.build(compiled.plan, index, {})


def event(**kw: object) -> l7.HttpEvent:
    base = l7.HttpEvent(
        time=1000.5,
        node="azure-talos-1",
        source="10.10.0.3",
        source_port=41000,
        destination="10.11.0.2",
        destination_port=80,
        method="GET",
        path="/public",
        status=200,
        verdict=Verdict.FORWARDED,
        direction="ingress",
        policy=HQ_POLICY,
        rule="spec.ingress[0]",
        match="l7/http",
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def judge(index: PolicyIndex, method: str, path: str) -> l7.Judgement:
    src, dst = index.endpoints[X_WING], index.endpoints[HQ]
    return l7.judge(evaluate(index, src, dst, 80, "TCP", HttpRequest(method, path, ())))


def test_an_allowed_request_names_the_http_rule_that_admitted_it(mesh: tuple[PolicyIndex, Directory]) -> None:
    assert judge(mesh[0], "GET", "/public/plans") == l7.Judgement(
        Verdict.FORWARDED, DropReason.NONE, "ingress", HQ_POLICY, "spec.ingress[0]", "l7/http"
    )


def test_a_refused_request_is_dropped_by_the_policies_whose_http_rules_it_failed(
    mesh: tuple[PolicyIndex, Directory],
) -> None:
    # policy trace: "the HTTP request matches none of the HTTP rules on this port (hq-read-only spec.ingress[0] …)"
    assert judge(mesh[0], "POST", "/public") == l7.Judgement(
        Verdict.DROPPED, DropReason.POLICY_DENIED, "ingress", HQ_POLICY, "spec.ingress[0]", "l7/http"
    )


def test_an_event_survives_its_datagram() -> None:
    e = event(verdict=Verdict.DROPPED, drop_reason=DropReason.POLICY_DENIED, status=403, method="POST")
    assert l7.decode(l7.encode(e)) == e


def test_a_long_path_is_clipped_so_that_the_datagram_is_accepted() -> None:
    decoded = l7.decode(l7.encode(event(path="/" + "a" * 5000)))
    assert len(decoded.path) == 1024 and decoded.path.endswith("…")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"method": "GE T"}, "method: 'GE T' is not an HTTP method"),
        ({"source": "10.0.0.300"}, "source: '10.0.0.300' is not an IPv4 address"),
        ({"status": 42}, "status: 42 is not an HTTP status"),
        ({"status": 70000}, "status: expected an integer 0-65535"),
        ({"verdict": "MAYBE"}, "verdict: 'MAYBE' is not FORWARDED or DROPPED"),
        ({"drop_reason": "BECAUSE"}, "drop_reason: 'BECAUSE' is not a known reason"),
        ({"direction": "sideways"}, "direction: 'sideways' is not egress or ingress"),
        ({"time": "now"}, "time: expected a number"),
        ({"v": 2}, "v: version 2, this flow daemon reads 1"),
        ({"node": ["x"]}, "node: expected a string"),
    ],
)
def test_a_datagram_that_is_not_an_event_is_refused_naming_the_field(change: dict[str, object], problem: str) -> None:
    data = json.loads(l7.encode(event()))
    data.update(change)
    with pytest.raises(ValueError, match="^" + re.escape(problem)):
        l7.decode(json.dumps(data).encode())


def test_oversized_or_garbage_datagrams_are_refused() -> None:
    with pytest.raises(ValueError, match="at most 8192"):
        l7.decode(b"{" + b" " * 9000 + b"}")
    with pytest.raises(ValueError, match="not JSON"):
        l7.decode(b"\xff\xfe")
    with pytest.raises(ValueError, match="event: expected an object"):
        l7.decode(b"[1]")


def test_the_backends_status_is_read_from_its_status_line() -> None:
    assert l7.response_status(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == 200
    assert l7.response_status(b"HTTP/1.0 404\r\n") == 404
    assert l7.response_status(b"SSH-2.0-OpenSSH\r\n") == 0


def test_the_record_names_both_ends_and_carries_the_request(mesh: tuple[PolicyIndex, Directory]) -> None:
    e = event(verdict=Verdict.DROPPED, drop_reason=DropReason.POLICY_DENIED, status=403, method="POST")
    record = l7.to_flow(e, mesh[1])
    f = record.flow
    assert (f.source.ref, f.destination.ref, f.node) == (X_WING, HQ, "azure-talos-1")
    assert f.http == Http("POST", "/public", 403) and f.protocol == "TCP"
    assert (f.policy, f.rule, f.drop_reason) == (HQ_POLICY, "spec.ingress[0]", DropReason.POLICY_DENIED)
    assert record.match == "l7/http"
    assert f.summary == (
        f"{X_WING}:41000 -> {HQ}:80 POST /public → 403 TCP/HTTP DROPPED "
        f"(POLICY_DENIED by {HQ_POLICY} spec.ingress[0] ingress) — the node's L7 proxy answered 403"
    )
    assert Flow.from_json(json.loads(json.dumps(f.to_json()))) == f
