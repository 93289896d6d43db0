"""`policy trace` and the lab agree on generated (AuthorizationPolicy set, request) pairs (issue 11,
item 5): the evaluator's verdict (istio.gen.expected), the verdict `policy trace -o json` prints,
and what the lab's mesh proxies answer (200, 403 or a closed connection) must be one verdict.

The mesh: the hybrid example's three nodes with seven single-replica workloads in three
namespaces, several service accounts (two workloads share one, two run as `default`), each
listening on port 80 and on a port of its own. No network policy: the Istio layer alone decides.

Many pairs share one lab build. A round applies the policies of several generated cases whose
footprints (the pods their policies select, and their destination) are disjoint, so every pod is
governed by at most one case's policies; then it replays that round's requests: the cases' own
and others' (a generated request paired with another case's generated policies — what decides it
is the policy set that applies to its destination, exactly as when generated together). Plaintext
requests: the round gives the destination's port mTLS mode DISABLE (a workload PeerAuthentication
with portLevelMtls), so the source pod's proxy sends plaintext — a peer without a principal, which
`policy trace` models too (the brief suggested a capture-bypassing socket against a PERMISSIVE
pod; `policy trace` cannot express that client, DISABLE it can).

A disagreement is printed with the request and the YAML of the policies on its destination.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from labkit import Lab, copy_example
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns
from crossmesh.istio import gen
from crossmesh.istio.index import istio_index, principal
from crossmesh.policy import trace as traces
from crossmesh.policy.endpoints import mesh_endpoints, mesh_index
from crossmesh.policy.model import Endpoint, EndpointKind, HttpRequest
from crossmesh.workspace import compile_mesh

pytestmark = pytest.mark.lab

SEED = 11
CASES = 640
ROUNDS = 24
PER_ROUND = 24  # ROUNDS * PER_ROUND pairs at most: 576
TRUST_DOMAIN = "cluster.local"
TCP_PROBE = b"HELLO-TCP\r\n\r\n"  # not HTTP to the proxy; ends a "head" for the echo app, which answers it
# (namespace, workload, service account or None for `default`, node, its own port)
WORKLOADS = (
    ("demo", "web", "web", "openstack-worker", 8080),
    ("demo", "api", "api", "openstack-master", 9090),
    ("demo", "batch", None, "aws-worker-1", 8080),
    ("microservices", "tkb", "tkb-service", "aws-worker-1", 3000),
    ("microservices", "orders", "tkb-service", "openstack-worker", 3000),
    ("payments", "pay", "pay", "aws-worker-1", 8443),
    ("payments", "ledger", None, "openstack-master", 9090),
)


def workloads_yaml() -> str:
    namespaces = sorted({w[0] for w in WORKLOADS})
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in namespaces]
    for namespace, name, account, node, port in WORKLOADS:
        spec: dict[str, Any] = {"nodeName": node}
        if account is not None:
            spec["serviceAccountName"] = account
        ports = [{"containerPort": 80, "protocol": "TCP", "name": "web"}, {"containerPort": port, "protocol": "TCP"}]
        spec["containers"] = [{"name": name, "image": f"registry.example/{name}:1.0", "ports": ports}]
        tier = "front" if port == 8080 else "back"
        docs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name, "tier": tier}}, "spec": spec},
                },
            }
        )
    return str(yaml.safe_dump_all(docs, sort_keys=False))


# --- planning (pure) -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Round:
    """The policies one lab build carries and the pairs replayed against them. Each pair is a Case
    whose `policies` are the round's AuthorizationPolicies (gen.expected evaluates it as the lab
    runs it); `peer` holds the PeerAuthentications that make its plaintext requests plaintext."""

    owners: tuple[int, ...]  # the cases whose policies the round applies
    policies: tuple[dict[str, Any], ...]
    peer: tuple[dict[str, Any], ...]
    pairs: tuple[gen.Case, ...]

    def yaml(self) -> str:
        return str(yaml.safe_dump_all([*self.policies, *self.peer], sort_keys=False))


def footprint(case: gen.Case, pods: dict[str, Endpoint]) -> frozenset[str]:
    index = case.index(pods)
    return frozenset(ref for ref, ep in pods.items() if index.policies(ep)) | {case.dst}


def plan_rounds(cases: Sequence[gen.Case], pods: dict[str, Endpoint], rounds: int, per_round: int) -> list[Round]:
    """Rounds of pairs: first-fit packing of cases with policies into rounds with disjoint
    footprints, then the requests of the cases left over, those aimed at a pod some policy of
    the round governs first. A (destination, port) is plaintext or mTLS for a whole round."""
    feet = {c.number: footprint(c, pods) for c in cases}
    left = list(cases)
    packed: list[list[gen.Case]] = []
    for _ in range(rounds):
        owners: list[gen.Case] = []
        used: set[str] = set()
        for case in left:
            if case.policies and feet[case.number].isdisjoint(used):
                owners.append(case)
                used |= feet[case.number]
        left = [c for c in left if c not in owners]
        packed.append(owners)
    out = []
    for owners in packed:
        plain: dict[tuple[str, int], bool] = {(c.dst, c.port): c.plaintext for c in owners}
        chosen = list(owners)
        policies = tuple(p for c in owners for p in c.policies)
        index = dataclasses.replace(owners[0], policies=policies).index(pods) if owners else None
        governed = {ref for ref, ep in pods.items() if index is not None and index.policies(ep)}
        for prefer in (True, False):
            for case in list(left):
                if len(chosen) >= per_round:
                    break
                key = (case.dst, case.port)
                if (case.dst in governed) is prefer and plain.get(key, case.plaintext) == case.plaintext:
                    chosen.append(case)
                    plain[key] = case.plaintext
                    left.remove(case)
        out.append(
            Round(
                tuple(c.number for c in owners),
                policies,
                _disable(sorted(k for k, v in plain.items() if v), pods),
                tuple(dataclasses.replace(c, policies=policies) for c in chosen),
            )
        )
    return out


def _disable(keys: list[tuple[str, int]], pods: dict[str, Endpoint]) -> tuple[dict[str, Any], ...]:
    """One PeerAuthentication per destination with plaintext requests: DISABLE on their ports."""
    ports: dict[str, list[int]] = {}
    for dst, port in keys:
        ports.setdefault(dst, []).append(port)
    return tuple(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": f"plaintext-{pods[dst].labels['app']}", "namespace": pods[dst].namespace},
            "spec": {
                "selector": {"matchLabels": {"app": pods[dst].labels["app"]}},
                "portLevelMtls": {p: {"mode": "DISABLE"} for p in sorted(ps)},
            },
        }
        for dst, ps in sorted(ports.items())
    )


def expected_form(pair: gen.Case, allowed: bool, reads_http: bool) -> str:
    """What the client sees: the app's 200; for a denial, Envoy's 403 when the proxy read an HTTP
    request (always over mTLS; in plaintext when a policy on the port reads methods or paths),
    else the connection closed without an answer."""
    if allowed:
        return "200"
    return "403" if pair.method is not None and (not pair.plaintext or reads_http) else "closed"


def make_mesh(tmp: Path) -> tuple[Path, str]:
    """The hybrid example (spec.istio) with WORKLOADS instead of its apps, no policy yet."""
    mesh, name = copy_example(tmp, "tests/meshes/hybrid-wireguard")
    for old in (mesh.parent / "apps").iterdir():
        old.unlink()
    (mesh.parent / "apps" / "workloads.yaml").write_text(workloads_yaml())
    (mesh.parent / "apps" / "policies.yaml").write_text("")
    return mesh, name


def pod_endpoints(mesh: Path) -> dict[str, Endpoint]:
    compiled = compile_mesh(mesh)
    return {e.ref: e for e in mesh_endpoints(compiled.plan, compiled.loaded.manifests) if e.kind is EndpointKind.POD}


# --- the lab (imperative) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    mesh, name = make_mesh(tmp_path_factory.mktemp("differential"))
    made = Lab(mesh, name)
    try:
        yield made
    finally:
        made.down()
        assert labs.leftovers(made.tag) == [], f"lab cm-{made.tag} left things behind"


@dataclasses.dataclass(frozen=True, slots=True)
class Traced:
    json: dict[str, Any]
    reads_http: bool  # some policy on the destination's port reads methods or paths


def trace_round(mesh: Path, pairs: Sequence[gen.Case]) -> list[Traced]:
    """`policy trace -o json` of every pair, through the function the command calls (the mesh
    compiled once); the first pair also through the command itself, which must print the same."""
    compiled = compile_mesh(mesh)
    plan, manifests = compiled.plan, compiled.loaded.manifests
    assert plan.istio is not None
    index, istio = mesh_index(plan, manifests), istio_index(plan, manifests)
    out = []
    for pair in pairs:
        request = HttpRequest(pair.method, pair.path or "/") if pair.method is not None else None
        td = plan.istio.trust_domain
        port = f"{pair.port}/TCP"
        result = traces.trace(plan, index, pair.src, pair.dst, port, request, istio=istio, trust_domain=td)
        dst = index.endpoints[pair.dst]
        out.append(Traced(result.as_json(index.by_policy_id), istio.needs_http(dst, pair.port)))
    if pairs:
        first = pairs[0]
        http = ["--http-method", first.method, "--http-path", first.path or "/"] if first.method is not None else []
        args = ["policy", "trace", str(mesh), "--from", first.src, "--to", first.dst, "--port", f"{first.port}/TCP"]
        done = CliRunner().invoke(app, [*args, *http, "-o", "json"])
        assert done.exit_code in (0, 1), done.output
        assert json.loads(done.stdout) == out[0].json
    return out


def replay(st: labs.LabState, pair: gen.Case) -> tuple[str, bytes]:
    """The pair's request from its source pod, as the app there would send it: ("200" | "403" |
    "closed" | "other", the whole answer)."""
    address = str(st.pods[pair.dst].address)
    if pair.method is None:
        head = TCP_PROBE
    else:
        head = f"{pair.method} {pair.path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n".encode()
        head += b"Connection: close\r\n\r\n"

    def go() -> bytes:
        data = b""
        with socket.create_connection((address, pair.port), timeout=10) as s, contextlib.suppress(OSError):
            s.sendall(head)
            while chunk := s.recv(65536):
                data += chunk
        return data

    data = netns.run_in(st.pods[pair.src].namespace, go)
    if not data:
        return "closed", data
    return {b"HTTP/1.1 200": "200", b"HTTP/1.1 403": "403"}.get(data[:12], "other"), data


def problems(pair: gen.Case, pods: dict[str, Endpoint], traced: Traced, form: str, answer: bytes) -> list[str]:
    """Where the evaluator, the trace and the lab differ on one pair (empty: they agree)."""
    verdict = gen.expected(pair, pods, TRUST_DOMAIN)
    istio = traced.json.get("istio") or {}
    authz = istio.get("authorization") or {}
    out = []
    if (traced.json["verdict"] == "allowed") != verdict.allowed:
        out.append(f"policy trace says {traced.json['verdict']}: {istio.get('reason')}")
    if (authz.get("policy") or "") != verdict.policy:
        out.append(f"policy trace names policy {authz.get('policy')!r}, the evaluator {verdict.policy!r}")
    if (istio.get("principal") is None) != pair.plaintext:
        out.append(f"policy trace's client principal is {istio.get('principal')!r} (mTLS mode {istio.get('mtls')})")
    want = expected_form(pair, verdict.allowed, traced.reads_http)
    if form != want:
        out.append(f"the lab answered {form} ({answer[:120]!r}), expected {want}")
    elif form == "200":
        seen = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        src = pods[pair.src]
        # The server's proxy adds X-Forwarded-Client-Cert to the HTTP requests it gets over mTLS.
        who = "" if pair.plaintext or pair.method is None else f"URI=spiffe://{principal(src, TRUST_DOMAIN)}"
        if seen["pod"] != pair.dst.rsplit("/", 1)[1] or seen["clientIP"] != str(src.addresses[0]):
            out.append(f"the answer came from {seen['pod']} seeing client {seen['clientIP']}")
        if not seen["xfcc"].endswith(who) or (not who and seen["xfcc"]):
            out.append(f"the app saw X-Forwarded-Client-Cert {seen['xfcc']!r}, expected …{who!r}")
    return [f"evaluator: {'allowed' if verdict.allowed else 'denied'} — {verdict.reason}", *out] if out else []


def report(number: int, rnd: Round, pair: gen.Case, pods: dict[str, Endpoint], found: list[str]) -> str:
    """A disagreement, with what reproduces it: the request and the policies on its destination."""
    on_dst = {p.ref for p in pair.index(pods).policies(pods[pair.dst])}
    docs = [p for p in rnd.policies if f"{p['metadata']['namespace']}/{p['metadata']['name']}" in on_dst]
    docs += [p for p in rnd.peer if p["spec"]["selector"]["matchLabels"]["app"] == pods[pair.dst].labels["app"]]
    what = f"{pair.method} {pair.path}" if pair.method else "TCP"
    return "\n".join(
        [
            f"round {number}, request of case {pair.number} (policies of cases {list(rnd.owners)}): "
            f"{pair.src} → {pair.dst}:{pair.port} {what} {'plaintext' if pair.plaintext else 'mTLS'}",
            *(f"  {line}" for line in found),
            "  policies on the destination:",
            *(f"    {line}" for line in yaml.safe_dump_all(docs, sort_keys=False).splitlines()),
        ]
    )


def test_policy_trace_and_the_lab_agree_on_generated_pairs(lab: Lab) -> None:
    started = time.monotonic()
    pods = pod_endpoints(lab.mesh)
    cases = gen.generate(random.Random(SEED), list(pods.values()), count=CASES, trust_domain=TRUST_DOMAIN)
    rounds = plan_rounds(cases, pods, ROUNDS, PER_ROUND)
    disagreements: list[str] = []
    forms: Counter[str] = Counter()
    ups: list[float] = []
    pairs = 0
    with ThreadPoolExecutor(4) as pool:
        for number, rnd in enumerate(rounds):
            (lab.mesh.parent / "apps" / "policies.yaml").write_text(rnd.yaml())
            t = time.monotonic()
            lab.up()
            ups.append(time.monotonic() - t)
            st = labs.LabState.load(lab.tag)
            assert st is not None
            traced = trace_round(lab.mesh, rnd.pairs)
            answers = list(pool.map(lambda p, st=st: replay(st, p), rnd.pairs))
            for pair, tr, (form, answer) in zip(rnd.pairs, traced, answers, strict=True):
                pairs += 1
                forms[form + (" plaintext" if pair.plaintext else "")] += 1
                if found := problems(pair, pods, tr, form, answer):
                    disagreements.append(report(number, rnd, pair, pods, found))
    took = time.monotonic() - started
    summary = (
        f"{pairs} pairs in {len(rounds)} lab builds, {took:.0f} s (lab up {sum(ups):.0f} s, "
        f"{min(ups):.1f}–{max(ups):.1f} s each); lab answers {dict(sorted(forms.items()))}; "
        f"{pairs - len(disagreements)} agree, {len(disagreements)} disagree"
    )
    print(summary)
    assert not disagreements, summary + "\n\n" + "\n\n".join(disagreements[:15])
    assert pairs >= 500, summary
    # Every kind of answer was exercised, over mTLS and in plaintext.
    for form in ("200", "403", "closed", "200 plaintext", "closed plaintext"):
        assert forms[form] >= 10, summary
