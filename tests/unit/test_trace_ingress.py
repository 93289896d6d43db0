"""`trace --from local --to https://…`: seed 000's path from a user outside, from the plan alone — the load
balancer's DNAT, the node port, the gateway's listener, rule (and why) and backendRef by weight, the mesh
leg in mTLS as the gateway's identity, the Service NAT and WireGuard to the pod — on a copy of
three-clouds (gateway default/rebels in cluster2: rule beta on X-Version: beta → cluster3, canary 90/10)."""

from __future__ import annotations

import json
import shutil
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.plan.ingress_trace import IngressTrace, parse_target, trace_url
from crossmesh.plan.trace import TraceError
from crossmesh.workspace import Compiled, compile_mesh

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-clouds"
URL = "https://rebels.example.com/x"
IDENTITY = "spiffe://cluster.local/ns/default/sa/rebels-istio"
REDIRECT = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: old-paths, namespace: default}
spec:
  parentRefs: [{name: rebels}]
  hostnames: [rebels.example.com]
  rules:
    - name: moved
      matches: [{path: {type: Exact, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {hostname: www.example.com, statusCode: 301}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("three-clouds")
    shutil.copytree(EXAMPLE, work / "mesh", ignore=shutil.ignore_patterns(".crossmesh"))
    return work / "mesh" / "mesh.yaml"


@pytest.fixture(scope="module")
def compiled(mesh: Path) -> Compiled:
    return compile_mesh(mesh)


def traced(compiled: Compiled, url: str = URL, *headers: str, **kw: object) -> IngressTrace:
    return trace_url(compiled.plan, compiled.loaded.manifests, parse_target(url, headers), **kw)  # type: ignore[arg-type]


def test_the_beta_header_takes_rule_beta_to_cluster3_through_wireguard_in_mtls(compiled: Compiled) -> None:
    t = traced(compiled, URL, "X-Version: beta")
    assert t.arrives and t.outcome == "delivered to pod cluster3/default/rebel-base-0"
    devices = [h.device for h in t.hops]
    assert devices[:8] == ["local", "internet", "lb", "nodeport", "gateway", "route", "weights", "mesh"]
    assert devices[-1] == "mesh-in" and "wireguard" in devices
    assert t.decision is not None and t.decision.rule.name == "beta"
    route = t.hops[devices.index("route")]
    assert "route default/rebel-base rule 0 (beta) matches" in route.action
    assert "header X-Version: beta" in route.details
    assert any("chosen over default/rebel-base rule 1 (canary)" in line for line in route.details)
    weights = t.hops[devices.index("weights")].action
    assert "set X-Route: beta" in weights and "backendRef rebel-base-gcp:80" in weights and "(100%)" in weights
    assert t.identity == IDENTITY and IDENTITY in t.hops[devices.index("mesh")].action
    wg = next(h for h in t.hops if h.device == "wireguard")
    assert (wg.node, wg.peer) == ("azure-talos-1", "gcp-talos-1")
    assert t.response.startswith("Response → reverse path with same security")


def test_without_the_header_the_canary_rule_shows_its_weights_and_the_local_tier(compiled: Compiled) -> None:
    t = traced(compiled)
    assert t.decision is not None and t.decision.rule.name == "canary"
    shares = [(b.name, b.weight, round(s, 2)) for b, s in t.shares]
    assert shares == [("rebel-base", 90, 0.9), ("rebel-base-gcp", 10, 0.1)]
    weights = next(h for h in t.hops if h.device == "weights").action
    assert "rebel-base:80 weight 90 (90%), rebel-base-gcp:80 weight 10 (10%)" in weights and "likeliest" in weights
    # rebel-base is global with affinity local: cluster2's own pods first, no WireGuard
    assert t.leg is not None and t.leg.backend.startswith("cluster2/default/rebel-base-")
    assert "wireguard" not in [h.device for h in t.hops]
    # the 10 %: what the lab saw take it is shown, across WireGuard to cluster3
    gcp = traced(compiled, backend_ref="default/rebel-base-gcp:80")
    assert gcp.backend is not None and gcp.backend.name == "rebel-base-gcp"
    assert "took this request" in next(h for h in gcp.hops if h.device == "weights").action
    assert gcp.leg is not None and gcp.leg.backend.startswith("cluster3/")
    assert "wireguard" in [h.device for h in gcp.hops]


def test_the_load_balancer_hop_names_its_address_node_port_and_target(compiled: Compiled) -> None:
    (g,) = compiled.plan.ingress
    t = traced(compiled, addresses={g.ref: IPv4Address("192.0.2.250")})
    lb = next(h for h in t.hops if h.device == "lb")
    node_port = g.listeners[0].node_port
    assert f"DNAT 192.0.2.250:443 → 10.1.1.5:{node_port}" in lb.action and lb.where == "router azure-we"
    nodeport = next(h for h in t.hops if h.device == "nodeport")
    assert f"node port {node_port} → gateway pod rebels-istio-0" in nodeport.action
    assert t.gateway_pod == "cluster2/default/rebels-istio-0" and "192.0.2.250:443" in t.response


@pytest.mark.parametrize(
    ("url", "verdict", "says"),
    [
        ("https://rebels.example.com:80/x", "dropped", "port 80 is not published: the load balancer forwards only 443"),
        ("http://rebels.example.com/x", "dropped", "port 80 is not published"),
        ("http://rebels.example.com:443/x", "no HTTP answer", "plain HTTP to HTTPS listener https"),
        ("https://other.example.com/", "no listener", "no gateway of the mesh serves host other.example.com"),
    ],
)
def test_a_request_that_does_not_arrive_ends_where_it_stops(
    compiled: Compiled, url: str, verdict: str, says: str
) -> None:
    t = traced(compiled, url)
    assert not t.arrives and t.hops[-1].verdict == verdict and says in t.outcome
    assert all(h.verdict == "forwarded" for h in t.hops[:-1]) and not t.response


@pytest.mark.parametrize(
    ("url", "headers", "says"),
    [
        ("ftp://rebels.example.com/", (), "the scheme must be http or https"),
        ("https://rebels.example.com:99999/", (), "Port out of range"),
        ("https:///x", (), "names no host"),
        ("https://rebels_example.com/", (), "neither a DNS name nor an IPv4 address"),
        ("https://user@rebels.example.com/", (), "user info"),
        (URL, ("X-Version beta",), "write a header as 'Name: value'"),
        (URL, ("Host: evil.example.com",), "the Host header (and SNI) come from the URL"),
    ],
)
def test_bad_urls_and_headers_are_refused_with_the_fix(url: str, headers: tuple[str, ...], says: str) -> None:
    with pytest.raises(TraceError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_target(url, headers)


def test_parse_target_keeps_port_path_query_and_method() -> None:
    t = parse_target("HTTPS://Rebels.Example.com.:8443/a/b?c=1", ["X-Version: beta"], "post")
    assert (t.scheme, t.host, t.port, t.path, t.method, t.headers) == (
        "https",
        "rebels.example.com",
        8443,
        "/a/b?c=1",
        "POST",
        (("X-Version", "beta"),),
    )
    assert t.request.bare_path == "/a/b" and t.request.header("x-version") == "beta"


def test_a_redirect_rule_answers_at_the_gateway_and_wins_by_its_exact_path(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "mesh", ignore=shutil.ignore_patterns(".crossmesh"))
    (tmp_path / "mesh" / "apps" / "cluster2" / "old-paths.yaml").write_text(REDIRECT)
    compiled = compile_mesh(tmp_path / "mesh" / "mesh.yaml")
    t = traced(compiled, "https://rebels.example.com/old")
    assert t.arrives and t.hops[-1].device == "redirect" and t.hops[-1].verdict == "301"
    assert "host www.example.com" in t.hops[-1].action and t.leg is None
    route = next(h for h in t.hops if h.device == "route")
    assert "route default/old-paths rule 0 (moved) matches" in route.action
    assert any("Exact path /old over path prefix /" in line for line in route.details)


def cli(mesh: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["trace", str(mesh), "--from", "local", *args, "--no-probe"])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_trace_command_json_for_a_url(mesh: Path) -> None:
    code, output = cli(mesh, "--to", URL, "-H", "X-Version: beta", "-o", "json")
    assert code == 0, output
    data = json.loads(output)
    assert (data["gateway"], data["listener"], data["route"], data["rule"]) == (
        "cluster2/default/rebels",
        "https",
        "default/rebel-base",
        "beta",
    )
    assert data["backend_ref"] == "default/rebel-base-gcp:80" and data["backend"] == "cluster3/default/rebel-base-0"
    assert data["identity"] == IDENTITY and data["arrives"] is True and data["probe"] is None
    assert all(h["confirmed"].startswith("not probed") for h in data["hops"])
    assert [p["verdict"] for p in data["policy"]] == ["allowed", "allowed"]
    code, output = cli(mesh, "--to", URL, "-o", "json")
    canary = json.loads(output)
    assert canary["rule"] == "canary" and [w["weight"] for w in canary["weights"]] == [90, 10]


def test_trace_command_exit_codes_for_urls(mesh: Path) -> None:
    code, output = cli(mesh, "--to", URL)
    assert code == 0 and "planned, unconfirmed" in output and "Response → reverse path with same security" in output
    code, output = cli(mesh, "--to", "https://rebels.example.com:80/x")
    assert code == 1 and "does not arrive: port 80 is not published" in output
    code, output = cli(mesh, "--to", "https://rebels.example.com:0/")
    assert code == 2 and "port 0 is not a port" in output
    code, output = cli(mesh, "--to", URL, "--port", "443/TCP")
    assert code == 2 and "a URL names its port itself" in output
    result = CliRunner().invoke(app, ["trace", str(mesh), "--from", "cluster1/default/x-wing-0", "--to", URL])
    assert result.exit_code == 2 and "a URL is traced from local" in result.output
