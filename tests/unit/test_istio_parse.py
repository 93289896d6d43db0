"""PeerAuthentication and AuthorizationPolicy as `crossmesh validate` reads them: what Istio accepts
is read into the IR (and passes Istio's own CRD schema), what Istio refuses or crossmesh cannot
evaluate is refused at its field with the fix."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import pytest
import yaml
from istio_crd import schema_problems

from crossmesh.istio import parse
from crossmesh.istio.model import Action, AuthorizationPolicy, Mode, Pattern, PeerAuthentication
from crossmesh.load.fields import dotted
from crossmesh.model import k8s

EXAMPLES = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: legacy, namespace: default}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: UNSET}
  portLevelMtls:
    8080: {mode: DISABLE}
    "9090": {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: rebel-base, namespace: default}
spec:
  selector: {matchLabels: {name: rebel-base}}
  action: ALLOW
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/default/sa/x-wing", "cluster.local/ns/empire/*"]
        - source:
            namespaces: ["rebels", "*-ops"]
            notIpBlocks: ["10.0.0.0/8"]
      to:
        - operation:
            ports: ["80"]
            methods: ["GET", "HEAD"]
            paths: ["/v1/*", "*.json", "/exact"]
            notPaths: ["/admin*"]
    - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: istio-system}
spec:
  action: DENY
  rules:
    - to:
        - operation:
            methods: ["DELETE"]
            notPorts: ["8080"]
      from:
        - source:
            notPrincipals: ["*"]
            ipBlocks: ["192.0.2.7", "198.51.100.0/24"]
"""


def objects(text: str) -> list[k8s.Manifest]:
    out = []
    for raw in yaml.safe_load_all(text):
        obj = k8s.MODELS[raw["kind"]].model_validate(raw)
        namespace = str(raw["metadata"].get("namespace") or "default")
        out.append(k8s.Manifest("p.yaml", 1, raw["kind"], raw["metadata"]["name"], namespace, raw, obj))
    return out


def problems(
    spec: dict[str, Any], kind: str = "AuthorizationPolicy", namespace: str = "default"
) -> list[tuple[str, str]]:
    raw = {"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": {"name": "p", "namespace": namespace}}
    raw["spec"] = spec
    (m,) = objects(yaml.safe_dump(raw))
    return [(dotted(i.path), i.message) for i in parse.check_manifest(m)]


def rule_with(source: dict[str, Any] | None = None, operation: dict[str, Any] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if source is not None:
        rule["from"] = [{"source": source}]
    if operation is not None:
        rule["to"] = [{"operation": operation}]
    return {"rules": [rule]}


def test_examples_are_read_without_problems_and_pass_istios_crd_schema() -> None:
    for m in objects(EXAMPLES):
        assert parse.check_manifest(m) == [], m.name
        assert schema_problems(m.raw) == [], m.name


def test_examples_become_the_ir_istio_means() -> None:
    authz, peer = parse.cluster_policies("c1", objects(EXAMPLES))
    assert [p.ref for p in authz] == ["default/allow-nothing", "default/rebel-base", "istio-system/deny-delete"]
    nothing, rebel, deny = authz
    assert nothing.action is Action.ALLOW and nothing.rules == () and nothing.selector is None
    assert rebel.selector == {"name": "rebel-base"}
    first = rebel.rules[0]
    assert first.sources[0].principals == (
        Pattern("cluster.local/ns/default/sa/x-wing"),
        Pattern("cluster.local/ns/empire/*"),
    )
    assert first.sources[1].not_ip_blocks == (ip_network("10.0.0.0/8"),)
    assert first.operations[0].ports == (80,) and first.http_only
    assert rebel.rules[1].sources == () and rebel.rules[1].operations == ()
    assert deny.action is Action.DENY and deny.rules[0].operations[0].not_ports == (8080,)
    assert deny.rules[0].sources[0].ip_blocks == (ip_network("192.0.2.7/32"), ip_network("198.51.100.0/24"))
    mesh, legacy = sorted(peer, key=lambda p: p.name)
    assert isinstance(mesh, PeerAuthentication) and mesh.mode is Mode.STRICT and mesh.selector is None
    assert legacy.mode is None and legacy.port_modes == {8080: Mode.DISABLE, 9090: Mode.PERMISSIVE}
    assert all(isinstance(p, AuthorizationPolicy) for p in authz)


BAD: list[tuple[str, dict[str, Any], str, list[str]]] = [
    ("unknown-action", {"action": "REJECT"}, "spec.action", ["'REJECT'", "ALLOW, DENY"]),
    ("custom-action", {"action": "CUSTOM", "provider": {"name": "x"}}, "spec.action", ["CUSTOM is not supported"]),
    ("audit-action", {"action": "AUDIT"}, "spec.action", ["AUDIT is not supported", "use ALLOW or DENY"]),
    ("provider", {"provider": {"name": "x"}}, "spec.provider", ["not supported"]),
    ("target-ref", {"targetRef": {"kind": "Gateway", "name": "g"}}, "spec.targetRef", ["not supported"]),
    (
        "principal-no-sa",
        rule_with({"principals": ["cluster.local/ns/default"]}),
        "principals[0]",
        ["<trust-domain>/ns/"],
    ),
    (
        "principal-spiffe",
        rule_with({"principals": ["spiffe://cluster.local/ns/a/sa/b"]}),
        "principals[0]",
        ["omit 'spiffe://'", "'cluster.local/ns/a/sa/b'"],
    ),
    (
        "principal-middle-star",
        rule_with({"principals": ["cluster.local/ns/*/sa/web"]}),
        "principals[0]",
        ["'*' elsewhere matches nothing"],
    ),
    ("principal-both-stars", rule_with({"notPrincipals": ["*web*"]}), "notPrincipals[0]", ["prefix ('abc*')"]),
    ("principal-empty", rule_with({"principals": [""]}), "principals[0]", ["empty principal"]),
    (
        "principal-not-list",
        rule_with({"principals": "cluster.local/ns/a/sa/b"}),
        "source.principals",
        ["expected a list"],
    ),
    ("namespace-bad", rule_with({"namespaces": ["Default"]}), "namespaces[0]", ["not a namespace name"]),
    ("cidr-bad", rule_with({"ipBlocks": ["10.0.0.0/33"]}), "ipBlocks[0]", ["not an address or CIDR"]),
    ("cidr-words", rule_with({"notIpBlocks": ["office"]}), "notIpBlocks[0]", ["not an address or CIDR"]),
    (
        "request-principals",
        rule_with({"requestPrincipals": ["*"]}),
        "source.requestPrincipals",
        ["not supported", "principals"],
    ),
    ("remote-ip", rule_with({"remoteIpBlocks": ["1.2.3.4"]}), "source.remoteIpBlocks", ["not supported"]),
    ("service-accounts", rule_with({"serviceAccounts": ["a/b"]}), "source.serviceAccounts", ["not supported"]),
    ("unknown-source-field", rule_with({"principal": ["x"]}), "source.principal", ["did you mean 'principals'"]),
    ("port-range", rule_with(operation={"ports": ["70000"]}), "ports[0]", ["1 to 65535"]),
    ("port-zero", rule_with(operation={"notPorts": ["0"]}), "notPorts[0]", ["1 to 65535"]),
    ("port-name", rule_with(operation={"ports": ["http"]}), "ports[0]", ["not a number"]),
    ("port-unquoted", rule_with(operation={"ports": [80]}), "ports[0]", ["quote it ('80')"]),
    ("method-lower", rule_with(operation={"methods": ["get"]}), "methods[0]", ["write 'GET'"]),
    ("method-unknown", rule_with(operation={"notMethods": ["FETCH"]}), "notMethods[0]", ["not an HTTP method"]),
    ("path-relative", rule_with(operation={"paths": ["api/v1"]}), "paths[0]", ["start with '/'", "'/api/v1'"]),
    ("path-template", rule_with(operation={"paths": ["/v1/{*}/x"]}), "paths[0]", ["templates"]),
    ("hosts", rule_with(operation={"hosts": ["a.example"]}), "operation.hosts", ["not supported"]),
    (
        "when",
        {"rules": [{"when": [{"key": "source.ip", "values": ["1.2.3.4"]}]}]},
        "rules[0].when",
        ["'when' conditions are not supported", "remove 'when'"],
    ),
    ("empty-from", {"rules": [{"from": []}]}, "rules[0].from", ["empty 'from'"]),
    ("empty-source", {"rules": [{"from": [{"source": {}}]}]}, "from[0].source", ["must not be empty"]),
    ("empty-operation", {"rules": [{"to": [{}]}]}, "to[0].operation", ["must not be empty"]),
    ("rules-not-list", {"rules": {"from": []}}, "spec.rules", ["expected a list"]),
    ("selector-expressions", {"selector": {"matchExpressions": []}}, "selector.matchExpressions", ["unknown field"]),
    ("selector-wildcard", {"selector": {"matchLabels": {"app": "web-*"}}}, "matchLabels.app", ["no '*'"]),
]


@pytest.mark.parametrize(("spec", "where", "fragments"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_malformed_authorization_policy_is_refused_at_its_field(
    spec: dict[str, Any], where: str, fragments: list[str]
) -> None:
    found = problems(spec)
    hits = [msg for path, msg in found if path.endswith(where)]
    assert hits, found
    for fragment in fragments:
        assert any(fragment in msg for msg in hits), (fragment, hits)


PA_BAD: list[tuple[str, dict[str, Any], str, list[str]]] = [
    ("mode-unknown", {"mtls": {"mode": "strict"}}, "spec.mtls.mode", ["did you mean 'STRICT'"]),
    (
        "port-level-without-selector",
        {"portLevelMtls": {"8080": {"mode": "DISABLE"}}},
        "spec.portLevelMtls",
        ["requires a workload selector"],
    ),
    (
        "port-level-port-range",
        {"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"0": {"mode": "DISABLE"}}},
        "portLevelMtls.0",
        ["between 1 and 65535"],
    ),
    (
        "port-level-mode",
        {"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {"80": {"mode": "OFF"}}},
        "portLevelMtls.80.mode",
        ["unknown"],
    ),
    (
        "port-level-empty",
        {"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {}},
        "spec.portLevelMtls",
        ["at least one"],
    ),
    ("unknown-field", {"mtls": {"mode": "STRICT"}, "mTLS": {}}, "spec.mTLS", ["did you mean 'mtls'"]),
]


@pytest.mark.parametrize(("spec", "where", "fragments"), [c[1:] for c in PA_BAD], ids=[c[0] for c in PA_BAD])
def test_malformed_peer_authentication_is_refused_at_its_field(
    spec: dict[str, Any], where: str, fragments: list[str]
) -> None:
    found = problems(spec, "PeerAuthentication")
    hits = [msg for path, msg in found if path.endswith(where)]
    assert hits, found
    for fragment in fragments:
        assert any(fragment in msg for msg in hits), (fragment, hits)


def test_what_istios_crd_refuses_crossmesh_refuses_too() -> None:
    """The enum and structure checks of the CRD agree with the parser on the same objects."""
    cases = [("AuthorizationPolicy", {"action": "REJECT"}), ("PeerAuthentication", {"mtls": {"mode": "STRIC"}})]
    cases += [("AuthorizationPolicy", rule_with({"principal": ["x"]}))]
    for kind, spec in cases:
        raw = {"apiVersion": "security.istio.io/v1", "kind": kind, "metadata": {"name": "p"}, "spec": spec}
        assert schema_problems(raw), spec
        assert problems(spec, kind), spec


def test_a_selector_in_the_root_namespace_is_ignored_with_a_warning() -> None:
    found = problems(
        {"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "DISABLE"}}, "PeerAuthentication", "istio-system"
    )
    assert found == [("spec.selector", found[0][1])] and "ignored by Istio" in found[0][1]
    (m,) = objects(
        yaml.safe_dump(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "p", "namespace": "istio-system"},
                "spec": {"selector": {"matchLabels": {"app": "web"}}},
            }
        )
    )
    assert parse.cluster_policies("c1", [m]) == ([], [])


def test_two_namespace_wide_peer_authentications_in_one_namespace_are_ambiguous() -> None:
    text = (
        EXAMPLES
        + "---\n"
        + yaml.safe_dump(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "second", "namespace": "istio-system"},
                "spec": {"mtls": {"mode": "PERMISSIVE"}},
            }
        )
    )
    ms = objects(text)
    found = parse.conflicts({"c1": ms, "c2": ms})
    assert len(found) == 1  # common manifests repeat in every cluster: reported once
    assert "second mesh-wide policy besides istio-system/default" in found[0].message
    assert "keep one" in found[0].message
    # Selector policies and other namespaces do not conflict.
    assert parse.conflicts({"c1": objects(EXAMPLES)}) == []
