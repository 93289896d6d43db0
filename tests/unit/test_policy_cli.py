"""Policy input through `crossmesh validate` (positioned problems, all at once, exit 2) and the
`crossmesh policy trace` command (SPEC §2's JSON shape) on the three-clouds example."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from policy_world import issues
from typer.testing import CliRunner

from crossmesh.cli.main import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MESH = """\
apiVersion: crossmesh.io/v1alpha1
kind: Mesh
metadata:
  name: policies
spec:
  sites:
    - name: site-a
      provider: aws
      network: 10.0.0.0/16
  clusters:
    - name: one
      id: 1
      cni: {cni}
      podCIDR: 10.10.0.0/16
      nodes:
        - name: a-1
          site: site-a
          address: 10.0.1.5
      manifests: [apps/]
"""

NP_HEAD = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: np
  namespace: default
spec:
"""
CNP_HEAD = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: cnp
  namespace: default
spec:
  endpointSelector: {}
"""

# Each case: the policy, the field path the problem names, and words of its message. The line
# marked `# <-` is where the problem must point.
BAD = [
    (
        "unknown-field-in-spec",
        NP_HEAD + "  podSelector: {}\n  ingres: []  # <-\n",
        "spec.ingres",
        ["unknown field 'ingres'", "did you mean 'ingress'?"],
    ),
    (
        "bad-regex-in-http-rule",
        CNP_HEAD
        + "  ingress:\n    - toPorts:\n        - ports: [{port: '80', protocol: TCP}]\n"
        + "          rules:\n            http:\n              - method: GET\n"
        + "                path: '/api/(v1'  # <-\n",
        "spec.ingress[0].toPorts[0].rules.http[0].path",
        ["not a valid regular expression"],
    ),
    (
        "regex-re2-cannot-run",
        CNP_HEAD
        + "  ingress:\n    - toPorts:\n        - ports: [{port: '80'}]\n"
        + "          rules:\n            http:\n              - path: '/(?!admin).*'  # <-\n",
        "spec.ingress[0].toPorts[0].rules.http[0].path",
        ["lookaround"],
    ),
    (
        "bad-cidr",
        NP_HEAD
        + "  podSelector: {}\n  ingress:\n    - from:\n        - ipBlock:\n            cidr: 10.0.0.0/33  # <-\n",
        "spec.ingress[0].from[0].ipBlock.cidr",
        ["'10.0.0.0/33' is not a CIDR"],
    ),
    (
        "cidr-without-prefix",
        CNP_HEAD + "  egress:\n    - toCIDR:\n        - 192.0.2.1  # <-\n",
        "spec.egress[0].toCIDR[0]",
        ["lacks a prefix length", "192.0.2.1/32"],
    ),
    (
        "except-outside-block",
        NP_HEAD
        + "  podSelector: {}\n  ingress:\n    - from:\n        - ipBlock:\n            cidr: 172.17.0.0/16\n"
        + "            except:\n              - 10.0.0.0/24  # <-\n",
        "spec.ingress[0].from[0].ipBlock.except[0]",
        ["is not inside 172.17.0.0/16"],
    ),
    (
        "port-out-of-range",
        NP_HEAD + "  podSelector: {}\n  ingress:\n    - ports:\n        - port: 70000  # <-\n",
        "spec.ingress[0].ports[0].port",
        ["port 70000 is out of range"],
    ),
    (
        "cilium-port-out-of-range",
        CNP_HEAD + "  ingress:\n    - toPorts:\n        - ports:\n            - port: '70000'  # <-\n",
        "spec.ingress[0].toPorts[0].ports[0].port",
        ["out of range"],
    ),
    (
        "cilium-port-unquoted",
        CNP_HEAD + "  ingress:\n    - toPorts:\n        - ports:\n            - port: 80  # <-\n",
        "spec.ingress[0].toPorts[0].ports[0].port",
        ["a Cilium port is a string", 'write "80"'],
    ),
    (
        "bad-operator",
        NP_HEAD
        + "  podSelector:\n    matchExpressions:\n      - key: app\n        operator: Equals  # <-\n"
        + "        values: [web]\n",
        "spec.podSelector.matchExpressions[0].operator",
        ["'Equals' is not one of In, NotIn, Exists, DoesNotExist"],
    ),
    (
        "in-without-values",
        NP_HEAD + "  podSelector:\n    matchExpressions:\n      - {key: app, operator: In}  # <-\n",
        "spec.podSelector.matchExpressions[0]",
        ["needs a non-empty 'values' list"],
    ),
    (
        "end-port-below-port",
        NP_HEAD + "  podSelector: {}\n  ingress:\n    - ports:\n        - port: 8080\n          endPort: 80  # <-\n",
        "spec.ingress[0].ports[0].endPort",
        ["endPort 80 is below port 8080"],
    ),
    (
        "end-port-with-named-port",
        NP_HEAD + "  podSelector: {}\n  ingress:\n    - ports:\n        - port: http\n          endPort: 90  # <-\n",
        "spec.ingress[0].ports[0].endPort",
        ["needs a numeric port"],
    ),
    (
        "ipblock-with-selector",
        NP_HEAD
        + "  podSelector: {}\n  ingress:\n    - from:\n        - ipBlock: {cidr: 10.0.0.0/8}  # <-\n"
        + "          podSelector: {}\n",
        "spec.ingress[0].from[0]",
        ["ipBlock cannot be combined"],
    ),
    (
        "label-value-not-a-string",
        NP_HEAD + "  podSelector:\n    matchLabels:\n      version: 2  # <-\n",
        "spec.podSelector.matchLabels.version",
        ["must be a string", "'2'"],
    ),
    (
        "unknown-entity",
        CNP_HEAD + "  egress:\n    - toEntities:\n        - internet  # <-\n",
        "spec.egress[0].toEntities[0]",
        ["entity 'internet' is unknown"],
    ),
    (
        "combined-l3-fields",
        CNP_HEAD + "  egress:\n    - toEndpoints: [{}]  # <-\n      toCIDR: [10.0.0.0/8]\n",
        "spec.egress[0]",
        ["combining toEndpoints and toCIDR"],
    ),
    (
        "endpoint-selector-other-namespace",
        CNP_HEAD.replace("  endpointSelector: {}\n", "")
        + "  endpointSelector:\n    matchLabels:\n      k8s:io.kubernetes.pod.namespace: other  # <-\n",
        "spec.endpointSelector.matchLabels.k8s:io.kubernetes.pod.namespace",
        ["cannot select another namespace"],
    ),
    (
        "deny-has-no-l7",
        CNP_HEAD + "  ingressDeny:\n    - toPorts:\n        - ports: [{port: '80'}]\n          rules: {}  # <-\n",
        "spec.ingressDeny[0].toPorts[0].rules",
        ["unknown field 'rules'"],
    ),
    (
        "dns-rules-on-ingress",
        CNP_HEAD
        + "  ingress:\n    - toPorts:\n        - ports: [{port: '53', protocol: UDP}]\n"
        + "          rules:\n            dns:  # <-\n              - matchPattern: '*'\n",
        "spec.ingress[0].toPorts[0].rules.dns",
        ["DNS is not supported on ingress"],
    ),
]


def _mesh(tmp_path: Path, policy: str, cni: str = "cilium") -> Path:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "policy.yaml").write_text(policy)
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(MESH.format(cni=cni))
    return mesh


def _validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, Any]]:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "mesh.yaml", "-o", "json"])
    return result.exit_code, json.loads(result.stdout)


def _marked_line(text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if "# <-" in line)


@pytest.mark.parametrize(("policy", "path", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_policy_is_reported_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, path: str, words: list[str]
) -> None:
    _mesh(tmp_path, policy)

    code, data = _validate(tmp_path, monkeypatch)

    assert code == 2
    assert data["valid"] is False
    errors = [p for p in data["problems"] if p["severity"] == "error"]
    assert len(errors) == 1, errors
    (problem,) = errors
    assert problem["file"] == "apps/policy.yaml"
    assert problem["line"] == _marked_line(policy)
    assert problem["path"] == path
    for w in words:
        assert w in problem["message"]


def test_every_policy_problem_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One object per name, as the API server keeps them.
    docs = [
        b[1].replace("name: np\n", f"name: np-{i}\n").replace("name: cnp\n", f"name: cnp-{i}\n")
        for i, b in enumerate(BAD)
    ]
    _mesh(tmp_path, "---\n".join(docs))

    code, data = _validate(tmp_path, monkeypatch)

    assert code == 2
    errors = [p for p in data["problems"] if p["severity"] == "error"]
    assert len(errors) == len(BAD)
    assert sorted(p["path"] for p in errors) == sorted(b[2] for b in BAD)


def test_validate_text_output_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = BAD[0][1]
    _mesh(tmp_path, policy)
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(app, ["validate", "mesh.yaml"])

    assert result.exit_code == 2
    assert f"apps/policy.yaml:{_marked_line(policy)}:3: spec.ingres: unknown field 'ingres'" in result.stderr


def test_cilium_policy_without_cilium_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _mesh(tmp_path, CNP_HEAD + "  ingress: [{}]\n", cni="flannel")

    code, data = _validate(tmp_path, monkeypatch)

    assert code == 0
    (warning,) = data["problems"]
    assert warning["severity"] == "warning"
    assert "not enforced in cluster one" in warning["message"]


def test_ignored_egress_rules_are_a_warning() -> None:
    found = issues(NP_HEAD + "  podSelector: {}\n  policyTypes: [Ingress]\n  egress: [{}]\n")
    assert [(i.path, i.severity) for i in found] == [(("spec", "egress"), "warning")]
    assert "policyTypes does not list Egress" in found[0].message


def test_unmodelled_cilium_fields_are_warnings() -> None:
    found = issues(CNP_HEAD + "  egress:\n    - toFQDNs: [{matchName: example.com}]\n")
    assert [(i.path, i.severity) for i in found] == [(("spec", "egress", 0, "toFQDNs"), "warning")]


# --- policy trace ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_clouds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("policy") / "three-clouds"
    shutil.copytree(EXAMPLES / "three-clouds", copy, ignore=shutil.ignore_patterns(".crossmesh"))
    return copy / "mesh.yaml"


def _trace(mesh: Path, *args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, ["policy", "trace", str(mesh), *args, "-o", "json"])
    return result.exit_code, json.loads(result.stdout) if result.exit_code in (0, 1) else result.stderr


def test_trace_json_shape_cross_cluster_allowed(three_clouds: Path) -> None:
    code, data = _trace(
        three_clouds, "--from", "cluster1/default/x-wing-0", "--to", "cluster2/default/rebel-base-0", "--port", "80/TCP"
    )

    assert code == 0
    assert {"verdict", "ingress", "egress"} <= set(data)
    assert data["verdict"] == "allowed"
    for side in ("egress", "ingress"):
        s = data[side]
        assert s["verdict"] == "allowed"
        assert {"endpoint", "policies", "rule", "reason", "message"} <= set(s)
        assert all({"kind", "name", "namespace", "cluster", "file", "line"} <= set(p) for p in s["policies"])
    egress, ingress = data["egress"], data["ingress"]
    assert egress["endpoint"] == "cluster1/default/x-wing-0"
    assert {p["name"] for p in egress["policies"]} >= {"allow-cross-cluster", "allow-dns", "default-deny"}
    assert egress["rule"]["name"] == "allow-cross-cluster"
    assert egress["rule"]["rule"] == "spec.egress[0]"
    assert ingress["endpoint"] == "cluster2/default/rebel-base-0"
    assert ingress["rule"]["name"] == "allow-x-wing-from-cluster1"
    assert ingress["rule"]["file"].endswith("apps/cluster2/rebel-base.yaml")


def test_trace_json_denied_by_default(three_clouds: Path) -> None:
    code, data = _trace(
        three_clouds, "--from", "cluster1/default/x-wing-0", "--to", "cluster3/default/rebel-base-0", "--port", "80/TCP"
    )

    assert code == 1  # denied, as `kubectl auth can-i` says no
    assert data["verdict"] == "denied"
    assert data["egress"]["verdict"] == "denied"
    assert data["egress"]["reason"] == "default-deny"
    assert data["egress"]["rule"] is None
    assert data["ingress"]["verdict"] == "denied"  # cluster3's default deny: nothing admits x-wing there


def test_trace_service_lists_every_backend(three_clouds: Path) -> None:
    code, data = _trace(
        three_clouds, "--from", "cluster1/default/x-wing-0", "--to", "default/rebel-base", "--port", "80/TCP"
    )

    assert code == 0
    assert data["service"] == "cluster1/default/rebel-base"
    verdicts = {b["backend"]: b["verdict"] for b in data["backends"]}
    assert verdicts == {
        "cluster2/default/rebel-base-0": "allowed",
        "cluster2/default/rebel-base-1": "allowed",
        "cluster3/default/rebel-base-0": "denied",
        "cluster3/default/rebel-base-1": "denied",
    }
    assert data["destination"] == data["backends"][0]["backend"]
    assert data["verdict"] == data["backends"][0]["verdict"]


def test_trace_no_policy_message_and_dns_to_node(three_clouds: Path) -> None:
    code, data = _trace(three_clouds, "--from", "cluster1/default/x-wing-0", "--to", "10.10.0.1", "--port", "53/UDP")

    assert code == 0
    assert data["verdict"] == "allowed"
    assert data["egress"]["rule"]["name"] == "allow-dns"
    assert data["ingress"]["kind"] == "node"


def test_trace_from_the_world_with_no_policy(three_clouds: Path) -> None:
    code, data = _trace(three_clouds, "--from", "cluster1/default/x-wing-0", "--to", "192.0.2.10", "--port", "443/TCP")

    assert code == 1  # denied, as `kubectl auth can-i` says no
    assert data["verdict"] == "denied"
    assert data["ingress"]["message"].endswith("is not a pod: no policy applies to it")


@pytest.mark.parametrize(
    "args",
    [
        ["--from", "cluster1/default/nope-0", "--to", "cluster2/default/rebel-base-0", "--port", "80/TCP"],
        ["--from", "cluster1/default/x-wing-0", "--to", "cluster2/default/rebel-base-0", "--port", "80"],
        ["--from", "cluster1/default/x-wing-0", "--to", "default/rebel-base", "--port", "81/TCP"],
    ],
    ids=["unknown-pod", "port-without-protocol", "service-without-that-port"],
)
def test_trace_usage_errors_exit_2(three_clouds: Path, args: list[str]) -> None:
    code, err = _trace(three_clouds, *args)
    assert code == 2
    assert "error:" in err
