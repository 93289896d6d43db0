"""Truth table of the Istio evaluator, written from Istio's documentation.

Each case is one request to one pod of a small fixed mesh (`istio_world`) under the policies of
that case only, with the verdict Istio's documentation gives and a fragment of the reason. The
sources: the AuthorizationPolicy reference (evaluation order, "allow-nothing", "deny-all",
"allow-all", root namespace, value matching), the tasks "Explicit Deny" and "TCP Traffic" (HTTP
fields on TCP), ISTIO-SECURITY-2021-004 (mTLS-only fields on plaintext), and the
PeerAuthentication reference (precedence, UNSET, portLevelMtls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from istio_world import EPS, doc, index, request

from crossmesh.istio.index import Mode, Request

AP, PA = "AuthorizationPolicy", "PeerAuthentication"
WEB, XW, RB, TIE, CLIENT = (
    "c1/default/web-0",
    "c1/default/x-wing-0",
    "c1/default/rebel-base-0",
    "c1/empire/tie-0",
    "c1/foo/client-0",
)
XW_P = "cluster.local/ns/default/sa/x-wing"


def ap(name: str, spec: dict[str, Any], namespace: str = "default") -> str:
    return doc(AP, name, spec, namespace)


def rules(*rules: dict[str, Any], action: str = "ALLOW", selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"action": action, "rules": list(rules)}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return spec


def frm(**source: Any) -> dict[str, Any]:
    return {"from": [{"source": source}]}


def to(**operation: Any) -> dict[str, Any]:
    return {"to": [{"operation": operation}]}


@dataclass(frozen=True)
class Case:
    id: str
    policies: tuple[str, ...]
    dst: str
    req: Request
    allowed: bool
    reason: str  # a fragment
    rule: int | None = None


DENY_DELETE = ap("deny-delete", rules(to(methods=["DELETE"]), action="DENY"))
ALLOW_XW = ap("allow-x-wing", rules(frm(principals=[XW_P]), selector={"name": "rebel-base"}))
ALLOW_GET = ap("allow-get", rules(to(methods=["GET"], ports=["80"]), selector={"app": "web"}))

CASES = [
    # Evaluation order (reference, "Authorization Policy").
    Case("no-policy-allows", (), WEB, request(XW), True, "no AuthorizationPolicy selects this workload: allowed"),
    Case(
        "allow-nothing",
        (ap("allow-nothing", {}),),
        WEB,
        request(XW),
        False,
        "no ALLOW policy matched (1 on this workload)",
    ),
    Case(
        "allow-all",
        (ap("allow-all", {"rules": [{}]}),),
        WEB,
        request(XW),
        True,
        "allowed by ALLOW policy default/allow-all rule 0: the rule has no conditions",
        0,
    ),
    Case(
        "deny-all",
        (ap("deny-all", {"action": "DENY", "rules": [{}]}),),
        WEB,
        request(XW),
        False,
        "denied by DENY policy default/deny-all rule 0",
        0,
    ),
    Case(
        "deny-without-rules-matches-nothing",
        (ap("deny", {"action": "DENY"}),),
        WEB,
        request(XW),
        True,
        "no DENY policy matched and no ALLOW policy selects",
    ),
    Case(
        "deny-before-allow",
        (ap("allow-all", {"rules": [{}]}), DENY_DELETE),
        WEB,
        request(XW, method="DELETE", path="/"),
        False,
        "denied by DENY policy default/deny-delete rule 0: method DELETE",
        0,
    ),
    Case(
        "deny-other-method-passes",
        (ap("allow-all", {"rules": [{}]}), DENY_DELETE),
        WEB,
        request(XW, method="GET", path="/"),
        True,
        "allowed by ALLOW policy default/allow-all",
        0,
    ),
    Case(
        "allow-second-rule",
        (ap("two", rules(frm(principals=["x/ns/y/sa/z"]), to(ports=["80"]))),),
        WEB,
        request(XW),
        True,
        "rule 1: port 80",
        1,
    ),
    # Principals and namespaces; plaintext (ISTIO-SECURITY-2021-004).
    Case("principal-allowed", (ALLOW_XW,), RB, request(XW), True, f"principal {XW_P}", 0),
    Case(
        "principal-other-denied", (ALLOW_XW,), RB, request(TIE), False, "no ALLOW policy matched (1 on this workload)"
    ),
    Case("principal-plaintext-denied", (ALLOW_XW,), RB, request(XW, plaintext=True), False, "the request is plaintext"),
    Case("selector-elsewhere-untouched", (ALLOW_XW,), WEB, request(TIE), True, "no AuthorizationPolicy selects"),
    Case(
        "principal-prefix",
        (ap("p", rules(frm(principals=["cluster.local/ns/default/*"]))),),
        WEB,
        request(XW),
        True,
        "principal cluster.local/ns/default/sa/x-wing",
    ),
    Case(
        "principal-prefix-other-ns",
        (ap("p", rules(frm(principals=["cluster.local/ns/default/*"]))),),
        WEB,
        request(TIE),
        False,
        "no ALLOW policy matched",
    ),
    Case(
        "principal-suffix",
        (ap("p", rules(frm(principals=["*/sa/tie"]))),),
        WEB,
        request(TIE),
        True,
        "principal cluster.local/ns/empire/sa/tie",
    ),
    Case(
        "principal-star-needs-mtls",
        (ap("p", rules(frm(principals=["*"]))),),
        WEB,
        request(TIE, plaintext=True),
        False,
        "plaintext",
    ),
    Case(
        "principal-other-trust-domain",
        (ap("p", rules(frm(principals=["example.org/ns/default/sa/x-wing"]))),),
        WEB,
        request(XW),
        False,
        "no ALLOW",
    ),
    Case(
        "namespace-allowed", (ap("n", rules(frm(namespaces=["empire"]))),), WEB, request(TIE), True, "namespace empire"
    ),
    Case(
        "namespace-plaintext",
        (ap("n", rules(frm(namespaces=["empire"]))),),
        WEB,
        request(TIE, plaintext=True),
        False,
        "plaintext",
    ),
    Case(
        "not-namespace-plaintext-matches",
        (ap("n", rules(frm(notNamespaces=["foo"]))),),
        WEB,
        request(CLIENT, plaintext=True),
        True,
        "namespace none (plaintext) not in foo",
    ),
    Case("not-namespace-mtls", (ap("n", rules(frm(notNamespaces=["foo"]))),), WEB, request(CLIENT), False, "no ALLOW"),
    Case(
        "deny-not-principals-star-plaintext",
        (ap("d", rules(frm(notPrincipals=["*"]), action="DENY")),),
        WEB,
        request(XW, plaintext=True),
        False,
        "denied by DENY policy default/d rule 0: principal none (plaintext) not in *",
    ),
    Case(
        "deny-not-principals-star-mtls",
        (ap("d", rules(frm(notPrincipals=["*"]), action="DENY")),),
        WEB,
        request(XW),
        True,
        "no DENY policy matched",
    ),
    # Fields AND, values OR, entries OR.
    Case(
        "fields-and",
        (ap("a", rules({**frm(principals=[XW_P]), **to(ports=["8080"])})),),
        WEB,
        request(XW, 80),
        False,
        "no ALLOW",
    ),
    Case(
        "fields-and-both",
        (ap("a", rules({**frm(principals=[XW_P]), **to(ports=["8080"])})),),
        WEB,
        request(XW, 8080),
        True,
        f"principal {XW_P}, port 8080",
    ),
    Case("values-or", (ap("a", rules(to(ports=["81", "80"]))),), WEB, request(XW, 80), True, "port 80"),
    Case(
        "entries-or",
        (ap("a", rules({"from": [{"source": {"namespaces": ["x"]}}, {"source": {"namespaces": ["empire"]}}]})),),
        WEB,
        request(TIE),
        True,
        "namespace empire",
    ),
    Case("not-ports", (ap("a", rules(to(notPorts=["80"]))),), WEB, request(XW, 80), False, "no ALLOW"),
    # Addresses: ipBlocks is the direct peer's address.
    Case(
        "ip-blocks",
        (ap("a", rules(frm(ipBlocks=["10.10.1.0/24"]))),),
        WEB,
        request(TIE),
        True,
        "source 10.10.1.2 in 10.10.1.0/24",
    ),
    Case("ip-blocks-outside", (ap("a", rules(frm(ipBlocks=["10.10.1.0/24"]))),), WEB, request(XW), False, "no ALLOW"),
    Case(
        "not-ip-blocks-world",
        (ap("a", rules(frm(notIpBlocks=["10.0.0.0/8"]))),),
        WEB,
        request(None, ip="203.0.113.5"),
        True,
        "source 203.0.113.5 not in 10.0.0.0/8",
    ),
    # HTTP fields (task "TCP Traffic", pilot's rule.checkError).
    Case("allow-methods-http", (ALLOW_GET,), WEB, request(XW, method="GET", path="/"), True, "port 80, method GET"),
    Case("allow-methods-post", (ALLOW_GET,), WEB, request(XW, method="POST", path="/"), False, "no ALLOW"),
    Case(
        "allow-methods-on-tcp-skipped",
        (ALLOW_GET,),
        WEB,
        request(XW),
        False,
        "not HTTP, so rules naming methods or paths do not match",
    ),
    Case(
        "deny-methods-on-tcp-wider",
        (DENY_DELETE,),
        WEB,
        request(XW),
        False,
        "methods and paths ignored: not an HTTP request",
    ),
    Case(
        "paths-prefix",
        (ap("a", rules(to(paths=["/api/*"]))),),
        WEB,
        request(XW, method="GET", path="/api/v1"),
        True,
        "path /api/v1",
    ),
    Case(
        "paths-suffix",
        (ap("a", rules(to(paths=["*.json"]))),),
        WEB,
        request(XW, method="GET", path="/x.json"),
        True,
        "path /x.json",
    ),
    Case(
        "paths-exact-miss",
        (ap("a", rules(to(paths=["/api"]))),),
        WEB,
        request(XW, method="GET", path="/api/v1"),
        False,
        "no ALLOW",
    ),
    Case(
        "not-paths",
        (ap("a", rules(to(notPaths=["/admin*"]))),),
        WEB,
        request(XW, method="GET", path="/admin/x"),
        False,
        "no ALLOW",
    ),
    Case(
        "not-methods-other",
        (ap("a", rules(to(notMethods=["DELETE"]))),),
        WEB,
        request(XW, method="GET", path="/"),
        True,
        "method GET not in DELETE",
    ),
    # Where a policy applies: its namespace, or everywhere from the root namespace.
    Case(
        "other-namespace-untouched",
        (ap("deny-all", {"action": "DENY", "rules": [{}]}, "empire"),),
        WEB,
        request(XW),
        True,
        "no AuthorizationPolicy",
    ),
    Case(
        "root-namespace-everywhere",
        (ap("deny-all", {"action": "DENY", "rules": [{}]}, "istio-system"),),
        WEB,
        request(XW),
        False,
        "denied by DENY policy istio-system/deny-all rule 0",
    ),
    Case(
        "root-namespace-selector",
        (ap("a", rules(frm(namespaces=["nope"]), selector={"name": "tie"}), "istio-system"),),
        TIE,
        request(XW),
        False,
        "no ALLOW policy matched (1 on this workload)",
    ),
    Case(
        "other-cluster-untouched",
        (ap("deny-all", {"action": "DENY", "rules": [{}]}),),
        "c2/default/web-0",
        request(XW),
        True,
        "no AuthorizationPolicy",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_authorization(case: Case) -> None:
    verdict = index(*case.policies).authorize(EPS[case.dst], case.req)
    assert verdict.allowed is case.allowed, verdict
    assert case.reason in verdict.reason, verdict.reason
    if case.rule is not None:
        assert verdict.rule == case.rule
    assert (verdict.policy == "") is (verdict.rule is None)


def pa(
    name: str,
    mode: str | None,
    namespace: str = "default",
    selector: dict[str, str] | None = None,
    ports: dict[str, str] | None = None,
) -> str:
    spec: dict[str, Any] = {}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {p: {"mode": m} for p, m in ports.items()}
    return doc(PA, name, spec, namespace)


MESH_STRICT = pa("default", "STRICT", "istio-system")
NS_PERMISSIVE = pa("default", "PERMISSIVE")
WEB_PORTS = pa("web", "UNSET", selector={"app": "web"}, ports={"8080": "DISABLE", "9090": "UNSET"})

MODES = [
    ("none", (), WEB, 80, Mode.PERMISSIVE, "no PeerAuthentication: PERMISSIVE"),
    ("mesh", (MESH_STRICT,), WEB, 80, Mode.STRICT, "PeerAuthentication istio-system/default"),
    ("mesh-unset", (pa("default", "UNSET", "istio-system"),), WEB, 80, Mode.PERMISSIVE, "no PeerAuthentication"),
    (
        "namespace-over-mesh",
        (MESH_STRICT, NS_PERMISSIVE),
        WEB,
        80,
        Mode.PERMISSIVE,
        "PeerAuthentication default/default",
    ),
    ("namespace-elsewhere", (MESH_STRICT, NS_PERMISSIVE), TIE, 80, Mode.STRICT, "istio-system/default"),
    ("namespace-unset-inherits", (MESH_STRICT, pa("default", None)), WEB, 80, Mode.STRICT, "istio-system/default"),
    (
        "workload-over-namespace",
        (NS_PERMISSIVE, pa("rb", "STRICT", selector={"name": "rebel-base"})),
        RB,
        80,
        Mode.STRICT,
        "default/rb",
    ),
    (
        "workload-other-pod",
        (NS_PERMISSIVE, pa("rb", "STRICT", selector={"name": "rebel-base"})),
        WEB,
        80,
        Mode.PERMISSIVE,
        "default/default",
    ),
    ("port-level", (MESH_STRICT, WEB_PORTS), WEB, 8080, Mode.DISABLE, "PeerAuthentication default/web port 8080"),
    ("port-level-other-port-inherits", (MESH_STRICT, WEB_PORTS), WEB, 80, Mode.STRICT, "istio-system/default"),
    ("port-level-unset-inherits", (MESH_STRICT, WEB_PORTS), WEB, 9090, Mode.STRICT, "istio-system/default"),
    (
        "two-workload-policies",
        (pa("a", "STRICT", selector={"app": "web"}), pa("b", "DISABLE", selector={"app": "web"})),
        WEB,
        80,
        Mode.STRICT,
        "also selected by default/b",
    ),
]


@pytest.mark.parametrize(
    ("policies", "dst", "port", "mode", "source"), [m[1:] for m in MODES], ids=[m[0] for m in MODES]
)
def test_mtls_mode(policies: tuple[str, ...], dst: str, port: int, mode: Mode, source: str) -> None:
    decision = index(*policies).mode(EPS[dst], port)
    assert decision.mode is mode
    assert source in decision.source


def test_mode_of_another_clusters_pod_ignores_this_clusters_policies() -> None:
    assert index(MESH_STRICT).mode(EPS["c2/default/web-0"], 80).mode is Mode.PERMISSIVE
    assert index(MESH_STRICT, cluster="c2").mode(EPS["c2/default/web-0"], 80).mode is Mode.STRICT


def test_needs_http_only_where_a_policy_reads_methods_or_paths_on_that_port() -> None:
    idx = index(ALLOW_GET, DENY_DELETE)
    assert idx.needs_http(EPS[WEB], 80)
    assert idx.needs_http(EPS[RB], 80)  # the DENY has no selector and no ports
    only_ports = index(ap("p", rules(to(ports=["80"]))), ap("h", rules(to(ports=["8080"], paths=["/x"]))))
    assert not only_ports.needs_http(EPS[WEB], 80)
    assert only_ports.needs_http(EPS[WEB], 8080)
    assert not index().needs_http(EPS[WEB], 80)
