"""`policy trace` with the Istio layer: both verdicts, what decided each, and the overall verdict, in
text and JSON; without Istio the trace is what it was. Runs on a copy of three-clouds with Istio
policies added to its common manifests (seed 003's x-wing → rebel-base is allowed by Cilium)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.istio.index import istio_index
from crossmesh.policy import trace as traces
from crossmesh.policy.endpoints import mesh_index
from crossmesh.state.store import StateStore
from crossmesh.workspace import Compiled, check, compile_mesh

ROOT = Path(__file__).resolve().parents[2]
XW, RB = "cluster1/default/x-wing-0", "cluster2/default/rebel-base-0"

ISTIO = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: rebel-base, namespace: default}
spec:
  selector: {matchLabels: {name: rebel-base}}
  rules:
    - from:
        - source: {namespaces: [default]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: default}
spec:
  action: DENY
  rules:
    - to:
        - operation: {methods: [DELETE]}
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    root = tmp_path_factory.mktemp("istio-trace")
    shutil.copytree(ROOT / "examples" / "three-clouds", root / "m", ignore=shutil.ignore_patterns(".crossmesh"))
    (root / "m" / "apps" / "common" / "istio.yaml").write_text(ISTIO)
    return compile_mesh(root / "m" / "mesh.yaml", root / "state")


def run(compiled: Compiled, src: str, dst: str, *, method: str | None = None, istio: bool = True) -> traces.Trace:
    plan, manifests = compiled.plan, compiled.loaded.manifests
    request = traces.http_request(method, "/" if method else None, [])
    return traces.trace(
        plan,
        mesh_index(plan, manifests),
        src,
        dst,
        "80/TCP",
        request,
        istio=istio_index(plan, manifests) if istio else None,
    )


def test_both_layers_allow_seed_003s_flow(compiled: Compiled) -> None:
    result = run(compiled, XW, RB, method="GET")
    assert result.allowed
    text = "\n".join(result.lines())
    assert f"→ {RB}" in text.splitlines()[0] and text.splitlines()[0].endswith(": allowed")
    assert "network policy (Cilium/Kubernetes): allowed" in text
    assert "mTLS mode: STRICT (PeerAuthentication istio-system/default)" in text
    assert "client principal: cluster.local/ns/default/sa/" in text
    assert "allowed by ALLOW policy default/rebel-base rule 0: namespace default" in text
    data = result.as_json({})
    assert data["verdict"] == "allowed" and data["network_verdict"] == "allowed"
    assert data["istio"]["mtls"] == {"mode": "STRICT", "source": "PeerAuthentication istio-system/default"}
    assert data["istio"]["authorization"]["policy"] == "default/rebel-base"
    assert data["istio"]["authorization"]["rule"] == 0


def test_istio_denies_what_network_policy_allows_and_the_trace_says_which_layer(compiled: Compiled) -> None:
    result = run(compiled, XW, RB, method="DELETE")
    assert result.first.allowed and not result.allowed
    text = "\n".join(result.lines())
    assert text.splitlines()[0].endswith(": denied")
    assert "network policy (Cilium/Kubernetes): allowed" in text
    assert f"istio at {RB} port 80: denied" in text
    assert "denied by DENY policy default/deny-delete rule 0: method DELETE" in text
    data = result.as_json({})
    assert (data["verdict"], data["network_verdict"], data["istio"]["verdict"]) == ("denied", "allowed", "denied")


def test_a_deny_naming_methods_denies_every_tcp_connection_as_istio_does(compiled: Compiled) -> None:
    """Istio drops the HTTP-only fields of a DENY rule for TCP traffic (a wider deny): deny-delete,
    which names only a method, refuses every plain TCP connection to the workload."""
    result = run(compiled, XW, RB)
    assert result.first.allowed and not result.allowed
    text = "\n".join(result.lines())
    assert "denied by DENY policy default/deny-delete rule 0: methods and paths ignored: not an HTTP request" in text
    assert "traced as a TCP connection (give --http-method/--http-path" in text


def test_strict_mtls_refuses_a_node_which_has_no_proxy(compiled: Compiled) -> None:
    node = compiled.plan.nodes[0].name
    result = run(compiled, node, RB)
    layer = result.istio[0]
    assert layer.principal is None and layer.authz is None and not layer.allowed
    assert "STRICT mTLS refuses the plaintext connection" in "\n".join(result.lines())
    assert result.as_json({})["istio"]["authorization"] is None


def test_without_istio_the_trace_is_unchanged(compiled: Compiled) -> None:
    result = run(compiled, XW, RB, istio=False)
    assert result.istio == ()
    data = result.as_json({})
    assert "istio" not in data and "network_verdict" not in data
    assert not any("istio at" in line or "network policy (" in line for line in result.lines())
    assert result.allowed  # the network layer alone decides (deny-delete would deny this TCP flow)


def test_validate_reads_istio_policies_without_the_pass_through_warning(compiled: Compiled) -> None:
    assert not [w for w in compiled.loaded.warnings if "not modelled" in w.message]


def test_validate_refuses_two_mesh_wide_peer_authentications(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples" / "three-clouds", tmp_path / "m", ignore=shutil.ignore_patterns(".crossmesh"))
    second = ISTIO.split("---")[0].replace("name: default,", "name: second,").replace("STRICT", "PERMISSIVE")
    (tmp_path / "m" / "apps" / "common" / "istio.yaml").write_text(ISTIO + "---\n" + second)
    _, problems = check(tmp_path / "m" / "mesh.yaml", StateStore.beside(tmp_path / "m" / "mesh.yaml", tmp_path / "s"))
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1, errors
    assert errors[0].file.endswith("istio.yaml") and errors[0].line == 25
    assert "second mesh-wide policy besides istio-system/default" in errors[0].message


def test_policy_trace_command_shows_both_layers_for_a_mesh_with_spec_istio(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples" / "three-clouds", tmp_path / "m", ignore=shutil.ignore_patterns(".crossmesh"))
    mesh = tmp_path / "m" / "mesh.yaml"
    text = mesh.read_text().replace("  trustDomain: cluster.local\n", "  trustDomain: cluster.local\n  istio: {}\n")
    mesh.write_text(text)
    (tmp_path / "m" / "apps" / "common" / "istio.yaml").write_text(ISTIO)
    args = ["policy", "trace", str(mesh), "--from", XW, "--to", RB, "--port", "80/TCP"]
    denied = CliRunner().invoke(app, [*args, "--http-method", "DELETE", "-o", "json"])
    assert denied.exit_code == 1, denied.output
    data = json.loads(denied.output)
    assert (data["verdict"], data["network_verdict"]) == ("denied", "allowed")
    assert data["istio"]["authorization"] == {
        "allowed": False,
        "policy": "default/deny-delete",
        "rule": 0,
        "reason": "denied by DENY policy default/deny-delete rule 0: method DELETE",
    }
    allowed = CliRunner().invoke(app, [*args, "--http-method", "GET"])
    assert allowed.exit_code == 0, allowed.output
    assert "istio at cluster2/default/rebel-base-0 port 80: allowed" in allowed.output
    assert "client principal: cluster.local/ns/default/sa/x-wing" in allowed.output
