"""Truth table of the policy evaluator, written from the Kubernetes and Cilium documentation.

Each case is one flow against a small fixed mesh (`policy_world`) under the policies of
that case only, with the verdict the documentation gives and, where it matters, the
reason. The first block replays ahmetb's NetworkPolicy recipes (the YAML files under
tests/reference/netpol-recipes/, loaded through its manifest.json) with the
behaviour each recipe's "Try it out" section shows; recipe 14's prose says `app=foo`
still reaches `web`, but its YAML allows only DNS egress, and Kubernetes follows the
YAML (see the reference's SOURCES.md). The other blocks quote the documentation section
they come from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from policy_world import build, flow

from crossmesh.policy.evaluator import Reason, Side, Verdict

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "tests" / "reference" / "netpol-recipes"

Policies = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Case:
    id: str
    policies: Policies
    src: str
    dst: str
    port: str = "80/TCP"
    expect: str = "allowed"
    reason: Reason | None = None  # of the side that decided (the denying one, else the ingress)
    http: tuple[str, ...] | None = None


def _doc(api: str, kind: str, name: str, spec: dict[str, Any], namespace: str | None) -> str:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return yaml.safe_dump({"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}, sort_keys=False)


def np(spec: dict[str, Any], *, name: str = "np", namespace: str = "default", cluster: str = "c1") -> Policies:
    return ((cluster, _doc("networking.k8s.io/v1", "NetworkPolicy", name, spec, namespace)),)


def cnp(spec: dict[str, Any], *, name: str = "cnp", namespace: str = "default", cluster: str = "c1") -> Policies:
    return ((cluster, _doc("cilium.io/v2", "CiliumNetworkPolicy", name, spec, namespace)),)


def ccnp(spec: dict[str, Any], *, name: str = "ccnp", cluster: str = "c1") -> Policies:
    return ((cluster, _doc("cilium.io/v2", "CiliumClusterwideNetworkPolicy", name, spec, None)),)


def recipe(*files: str) -> Policies:
    """Recipe policies by file name, checked against the recipes' manifest.json index."""
    assert RECIPES.exists(), f"netpol recipes are missing from the repository ({RECIPES})"
    index = {p["file"]: p for r in json.loads((RECIPES / "manifest.json").read_text()) for p in r["policies"]}
    out = []
    for f in files:
        text = (RECIPES / f).read_text()
        assert yaml.safe_load(text)["metadata"]["name"] == index[f]["name"]
        out.append(("c1", text))
    return tuple(out)


def sel(**labels: str) -> dict[str, Any]:
    return {"matchLabels": labels}


WEB = sel(app="web")
DENY, ALLOW = "denied", "allowed"

# --- ahmetb/kubernetes-network-policy-recipes -----------------------------------------------------

R01 = recipe("01-deny-all-traffic-to-an-application.yaml")
R02 = recipe("02-limit-traffic-to-an-application.yaml")
R02A = recipe("01-deny-all-traffic-to-an-application.yaml", "02a-allow-all-traffic-to-an-application.yaml")
R03 = recipe("03-deny-all-non-whitelisted-traffic-in-the-namespace.yaml")
R04 = recipe("04-deny-traffic-from-other-namespaces.yaml")
R05 = recipe("05-allow-traffic-from-all-namespaces.yaml")
R06 = recipe("06-allow-traffic-from-a-namespace.yaml")
R07 = recipe("07-allow-traffic-from-some-pods-in-another-namespace.yaml")
R08 = recipe("08-allow-external-traffic.yaml")
R09 = recipe("09-allow-traffic-only-to-a-port.yaml")
R10 = recipe("10-allowing-traffic-with-multiple-selectors.yaml")
R11A = recipe("11-deny-egress-traffic-from-an-application.1.yaml")
R11B = recipe("11-deny-egress-traffic-from-an-application.2.yaml")
R12 = recipe("12-deny-all-non-whitelisted-traffic-from-the-namespace.yaml")
R14 = recipe("14-deny-external-egress-traffic.yaml")

C = "c1/default/"
RECIPE_CASES = [
    Case("r01-web-denies-all", R01, C + "client-0", C + "web-0", expect=DENY, reason=Reason.DEFAULT_DENY),
    Case("r01-web-egress-untouched", R01, C + "web-0", C + "client-0"),
    Case("r01-other-pods-untouched", R01, C + "client-0", C + "api-0", "8080/TCP", reason=Reason.DEFAULT_ALLOW),
    Case("r02-bookstore-reaches-api", R02, C + "search-0", C + "api-0", "8080/TCP", reason=Reason.ALLOWED),
    Case("r02-others-cannot", R02, C + "client-0", C + "api-0", "8080/TCP", expect=DENY),
    Case("r02-podselector-is-same-namespace", R02, "c1/other/bookstore-0", C + "api-0", "8080/TCP", expect=DENY),
    Case("r02a-allow-all-wins-over-deny-all", R02A, C + "client-0", C + "web-0", reason=Reason.ALLOWED),
    Case("r02a-empty-rule-admits-other-clusters", R02A, "c2/default/x-wing-0", C + "web-0"),
    Case("r02a-empty-rule-admits-world", R02A, "8.8.8.8", C + "web-0"),
    Case("r03-namespace-default-deny", R03, C + "api-0", C + "db-0", "6379/TCP", expect=DENY),
    Case("r03-web-too", R03, C + "client-0", C + "web-0", expect=DENY),
    Case("r03-kube-system-untouched", R03, C + "client-0", "c1/kube-system/coredns-0", "53/UDP"),
    Case("r03-egress-untouched", R03, C + "client-0", "8.8.8.8", "443/TCP"),
    Case("r04-same-namespace-allowed", R04, C + "client-0", C + "web-0", reason=Reason.ALLOWED),
    Case("r04-other-namespace-denied", R04, "c1/other/client-0", C + "web-0", expect=DENY),
    Case("r04-prod-namespace-denied", R04, "c1/prod/client-0", C + "api-0", "8080/TCP", expect=DENY),
    Case("r05-any-namespace", R05, "c1/other/client-0", C + "web-0", reason=Reason.ALLOWED),
    Case("r05-kube-system", R05, "c1/kube-system/coredns-0", C + "web-0"),
    Case("r05-not-world", R05, "8.8.8.8", C + "web-0", expect=DENY),
    Case("r05-local-cluster-only", R05, "c2/default/web-0", C + "web-0", expect=DENY),
    Case("r05-flannel-cluster-is-world", R05, "c3/default/legacy-0", C + "web-0", expect=DENY),
    Case("r06-prod-allowed", R06, "c1/prod/client-0", C + "web-0"),
    Case("r06-other-denied", R06, "c1/other/client-0", C + "web-0", expect=DENY),
    Case("r06-own-namespace-denied", R06, C + "client-0", C + "web-0", expect=DENY),
    Case("r07-monitoring-in-operations", R07, "c1/ops/monitor-0", C + "web-0"),
    Case("r07-other-pod-in-operations", R07, "c1/ops/other-0", C + "web-0", expect=DENY),
    Case("r07-monitoring-elsewhere", R07, C + "monitor-0", C + "web-0", expect=DENY),
    Case("r08-external-allowed", R08, "8.8.8.8", C + "web-0"),
    Case("r08-other-cluster-allowed", R08, "c2/default/x-wing-0", C + "web-0"),
    Case("r09-monitoring-on-5000", R09, C + "monitor-0", C + "apiserver-0", "5000/TCP"),
    Case("r09-monitoring-on-8000", R09, C + "monitor-0", C + "apiserver-0", "8000/TCP", expect=DENY),
    Case("r09-others-on-5000", R09, C + "client-0", C + "apiserver-0", "5000/TCP", expect=DENY),
    Case("r10-search", R10, C + "search-0", C + "db-0", "6379/TCP"),
    Case("r10-api", R10, C + "api-0", C + "db-0", "6379/TCP"),
    Case("r10-inventory", R10, C + "inventory-0", C + "db-0", "6379/TCP"),
    Case("r10-web-denied", R10, C + "web-0", C + "db-0", "6379/TCP", expect=DENY),
    Case("r11-deny-egress", R11A, C + "foo-0", C + "web-0", expect=DENY, reason=Reason.DEFAULT_DENY),
    Case("r11-deny-egress-dns-too", R11A, C + "foo-0", "c1/kube-system/coredns-0", "53/UDP", expect=DENY),
    Case("r11-ingress-untouched", R11A, C + "client-0", C + "foo-0"),
    Case("r11b-dns-udp", R11B, C + "foo-0", "c1/kube-system/coredns-0", "53/UDP"),
    Case("r11b-dns-tcp", R11B, C + "foo-0", "c1/kube-system/coredns-0", "53/TCP"),
    Case("r11b-web-denied", R11B, C + "foo-0", C + "web-0", expect=DENY),
    Case("r11b-outside-dns-denied", R11B, C + "foo-0", "8.8.8.8", "53/UDP", expect=DENY),
    Case("r12-namespace-egress-denied", R12, C + "client-0", C + "web-0", expect=DENY),
    Case("r12-world-denied", R12, C + "web-0", "8.8.8.8", "443/TCP", expect=DENY),
    Case("r12-other-namespace-untouched", R12, "c1/other/client-0", C + "web-0"),
    Case("r14-external-denied", R14, C + "foo-0", "8.8.8.8", expect=DENY),
    Case("r14-in-cluster-web-denied-too", R14, C + "foo-0", C + "web-0", expect=DENY),  # the YAML, not the prose
    Case("r14-dns-allowed", R14, C + "foo-0", "c1/kube-system/coredns-0", "53/UDP"),
]

# --- Kubernetes: Network Policies (kubernetes.io/docs/concepts/services-networking/network-policies) --

AND_PEER = np(
    {
        "podSelector": WEB,
        "ingress": [{"from": [{"namespaceSelector": sel(user="alice"), "podSelector": sel(role="client")}]}],
    }
)
OR_PEERS = np(
    {
        "podSelector": WEB,
        "ingress": [{"from": [{"namespaceSelector": sel(user="alice")}, {"podSelector": sel(role="client")}]}],
    }
)
IPBLOCK = np(
    {"podSelector": WEB, "ingress": [{"from": [{"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}}]}]}
)
IPBLOCK_PODS = np({"podSelector": WEB, "ingress": [{"from": [{"ipBlock": {"cidr": "10.10.0.0/16"}}]}]})
IPBLOCK_FLANNEL = np({"podSelector": WEB, "ingress": [{"from": [{"ipBlock": {"cidr": "10.12.0.0/16"}}]}]})
NAMED_IN = np({"podSelector": WEB, "ingress": [{"ports": [{"port": "http"}]}]})
NAMED_OUT = np(
    {
        "podSelector": sel(app="foo"),
        "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}],
    }
)
NAMED_PROTO = np(
    {
        "podSelector": sel(app="foo"),
        "policyTypes": ["Egress"],
        "egress": [{"ports": [{"port": "dns", "protocol": "TCP"}]}],
    }
)
END_PORT = np(
    {
        "podSelector": sel(app="foo"),
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}],
            }
        ],
    }
)
UDP_ONLY = np(
    {"podSelector": sel(app="foo"), "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}
)
UDP_ANY_PORT = np(
    {"podSelector": sel(app="foo"), "policyTypes": ["Egress"], "egress": [{"ports": [{"protocol": "UDP"}]}]}
)
EGRESS_ONLY = np({"podSelector": sel(app="foo"), "policyTypes": ["Egress"], "egress": []})
EGRESS_RULES_DEFAULT_TYPES = np({"podSelector": sel(app="foo"), "egress": [{"to": [{"podSelector": WEB}]}]})
INGRESS_RULES_ONLY = np({"podSelector": sel(app="foo"), "ingress": [{"from": [{"podSelector": sel(app="client")}]}]})
TYPES_INGRESS_WITH_EGRESS = np(
    {"podSelector": sel(app="foo"), "policyTypes": ["Ingress"], "egress": [{"to": [{"podSelector": WEB}]}]}
)
EMPTY_SELECTOR = np({"podSelector": {}, "policyTypes": ["Ingress"]})
EXPR_IN = np(
    {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "foo"]}]}, "ingress": []}
)
EXPR_NOT_IN = np(
    {
        "podSelector": WEB,
        "ingress": [
            {
                "from": [
                    {
                        "podSelector": {
                            "matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["monitoring"]}]
                        }
                    }
                ]
            }
        ],
    }
)
EXPR_DNE = np({"podSelector": {"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]}, "ingress": []})
NS_EXISTS = np(
    {
        "podSelector": WEB,
        "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]}}]}],
    }
)
NS_BY_NAME = np(
    {
        "podSelector": WEB,
        "ingress": [{"from": [{"namespaceSelector": sel(**{"kubernetes.io/metadata.name": "other"})}]}],
    }
)
DENY_ALL_DEFAULT = np({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
UNION = R01 + np({"podSelector": WEB, "ingress": [{"from": [{"podSelector": sel(app="client")}]}]}, name="allow-client")
FLANNEL_DENY_EGRESS = np({"podSelector": {}, "policyTypes": ["Egress"]}, cluster="c3")

K = "c1/default/"
K8S_CASES = [
    Case("k-and-in-one-peer", AND_PEER, "c1/alice/client-0", K + "web-0"),
    Case("k-and-needs-the-namespace", AND_PEER, K + "client-0", K + "web-0", expect=DENY),
    Case("k-and-needs-the-pod", AND_PEER, "c1/alice/server-0", K + "web-0", expect=DENY),
    Case("k-or-namespace-peer", OR_PEERS, "c1/alice/server-0", K + "web-0"),
    Case("k-or-pod-peer", OR_PEERS, K + "client-0", K + "web-0"),
    Case("k-or-neither", OR_PEERS, "c1/other/client-0", K + "web-0", expect=DENY),
    Case("k-ipblock-inside", IPBLOCK, "172.17.2.5", K + "web-0"),
    Case("k-ipblock-except", IPBLOCK, "172.17.1.5", K + "web-0", expect=DENY),
    Case("k-ipblock-outside", IPBLOCK, "8.8.8.8", K + "web-0", expect=DENY),
    Case("k-ipblock-not-cluster-pods", IPBLOCK_PODS, K + "client-0", K + "web-0", expect=DENY),
    Case("k-ipblock-matches-non-mesh-pods", IPBLOCK_FLANNEL, "c3/default/legacy-0", K + "web-0"),
    Case("k-named-port", NAMED_IN, K + "client-0", K + "web-0", "80/TCP"),
    Case("k-named-port-other-number", NAMED_IN, K + "client-0", K + "web-0", "8080/TCP", expect=DENY),
    Case("k-named-port-egress-on-destination", NAMED_OUT, K + "foo-0", "c1/kube-system/coredns-0", "53/UDP"),
    Case("k-named-port-world-has-none", NAMED_OUT, K + "foo-0", "8.8.8.8", "53/UDP", expect=DENY),
    Case("k-named-port-protocol-mismatch", NAMED_PROTO, K + "foo-0", "c1/kube-system/coredns-0", "53/TCP", expect=DENY),
    Case("k-endport-inside", END_PORT, K + "foo-0", "8.8.8.8", "32500/TCP"),
    Case("k-endport-end-inclusive", END_PORT, K + "foo-0", "8.8.8.8", "32768/TCP"),
    Case("k-endport-above", END_PORT, K + "foo-0", "8.8.8.8", "32769/TCP", expect=DENY),
    Case("k-endport-below", END_PORT, K + "foo-0", "8.8.8.8", "31999/TCP", expect=DENY),
    Case("k-protocol-udp-only", UDP_ONLY, K + "foo-0", "8.8.8.8", "53/TCP", expect=DENY),
    Case("k-protocol-udp", UDP_ONLY, K + "foo-0", "8.8.8.8", "53/UDP"),
    Case("k-protocol-without-port", UDP_ANY_PORT, K + "foo-0", "8.8.8.8", "4444/UDP"),
    Case("k-egress-only-leaves-ingress", EGRESS_ONLY, K + "client-0", K + "foo-0", reason=Reason.DEFAULT_ALLOW),
    Case("k-egress-only-denies-egress", EGRESS_ONLY, K + "foo-0", K + "client-0", expect=DENY),
    Case("k-default-types-include-ingress", EGRESS_RULES_DEFAULT_TYPES, K + "client-0", K + "foo-0", expect=DENY),
    Case("k-default-types-egress-rule", EGRESS_RULES_DEFAULT_TYPES, K + "foo-0", K + "web-0"),
    Case("k-ingress-rules-leave-egress", INGRESS_RULES_ONLY, K + "foo-0", "8.8.8.8", "443/TCP"),
    Case("k-ingress-rules-allow", INGRESS_RULES_ONLY, K + "client-0", K + "foo-0"),
    Case("k-types-ingress-ignores-egress", TYPES_INGRESS_WITH_EGRESS, K + "foo-0", "8.8.8.8", "443/TCP"),
    Case("k-empty-selector-all-pods", EMPTY_SELECTOR, K + "search-0", K + "db-0", "6379/TCP", expect=DENY),
    Case("k-empty-selector-own-namespace", EMPTY_SELECTOR, K + "client-0", "c1/other/client-0"),
    Case("k-expression-in", EXPR_IN, K + "client-0", K + "foo-0", expect=DENY),
    Case("k-expression-in-not-selected", EXPR_IN, K + "client-0", K + "api-0", "8080/TCP"),
    Case("k-notin-matches-missing-label", EXPR_NOT_IN, K + "foo-0", K + "web-0"),
    Case("k-notin-excludes", EXPR_NOT_IN, K + "monitor-0", K + "web-0", expect=DENY),
    Case("k-doesnotexist-selects", EXPR_DNE, K + "client-0", K + "web-0", expect=DENY),
    Case("k-doesnotexist-skips", EXPR_DNE, K + "client-0", K + "api-0", "8080/TCP"),
    Case("k-namespace-exists", NS_EXISTS, "c1/ops/other-0", K + "web-0"),
    Case("k-namespace-exists-not", NS_EXISTS, "c1/prod/client-0", K + "web-0", expect=DENY),
    Case("k-namespace-without-manifest-has-name", NS_BY_NAME, "c1/other/client-0", K + "web-0"),
    Case("k-pod-reaches-itself", DENY_ALL_DEFAULT, K + "web-0", K + "web-0", reason=Reason.SELF),
    Case("k-own-node-reaches-pod", DENY_ALL_DEFAULT, "node-a", K + "web-0", reason=Reason.LOCAL_HOST),
    Case("k-remote-node-denied", DENY_ALL_DEFAULT, "node-b", K + "web-0", expect=DENY),
    Case("k-policies-are-additive", UNION, K + "client-0", K + "web-0"),
    Case("k-additive-others-still-denied", UNION, K + "foo-0", K + "web-0", expect=DENY),
    Case(
        "k-outside-cilium-node-always-allowed",
        FLANNEL_DENY_EGRESS,
        "c3/default/legacy-0",
        "node-d",
        "53/UDP",
        reason=Reason.LOCAL_HOST,
    ),
    Case("k-outside-cilium-egress-denied", FLANNEL_DENY_EGRESS, "c3/default/legacy-0", "c3/default/web-0", expect=DENY),
]

# --- Cilium: Layer 3/4/7, Deny, Kubernetes constructs, Cluster Mesh (docs.cilium.io) ---------------

SEED_003 = cnp(
    {
        "endpointSelector": sel(name="x-wing", **{"io.cilium.k8s.policy.cluster": "c1"}),
        "egress": [{"toEndpoints": [sel(name="rebel-base", **{"io.cilium.k8s.policy.cluster": "c2"})]}],
    }
)
LOCAL_DEFAULT = cnp({"endpointSelector": sel(name="x-wing"), "egress": [{"toEndpoints": [sel(name="rebel-base")]}]})
ANY_CLUSTER = cnp(
    {
        "endpointSelector": sel(name="x-wing"),
        "egress": [
            {
                "toEndpoints": [
                    {
                        "matchLabels": {"name": "rebel-base"},
                        "matchExpressions": [{"key": "io.cilium.k8s.policy.cluster", "operator": "Exists"}],
                    }
                ]
            }
        ],
    }
)
C2_INGRESS = cnp(
    {
        "endpointSelector": sel(name="rebel-base"),
        "ingress": [{"fromEndpoints": [sel(name="x-wing", **{"io.cilium.k8s.policy.cluster": "c1"})]}],
    },
    cluster="c2",
)
C2_INGRESS_LOCAL = cnp(
    {"endpointSelector": sel(name="rebel-base"), "ingress": [{"fromEndpoints": [sel(name="x-wing")]}]}, cluster="c2"
)
C2_NP_CLUSTER = np(
    {
        "podSelector": sel(name="rebel-base"),
        "ingress": [{"from": [{"podSelector": sel(name="x-wing", **{"io.cilium.k8s.policy.cluster": "c1"})}]}],
    },
    cluster="c2",
)
SAME_NS = cnp({"endpointSelector": WEB, "ingress": [{"fromEndpoints": [sel(app="client")]}]})
OTHER_NS = cnp(
    {
        "endpointSelector": WEB,
        "ingress": [{"fromEndpoints": [sel(app="client", **{"k8s:io.kubernetes.pod.namespace": "other"})]}],
    }
)
# Cilium adds the policy's namespace only when the selector names neither the namespace nor a
# namespace label (getEndpointSelector), so namespace labels reach other namespaces.
NS_LABELS_CNP = cnp(
    {
        "endpointSelector": WEB,
        "ingress": [{"fromEndpoints": [sel(**{"io.cilium.k8s.namespace.labels.team": "operations"})]}],
    }
)
CCNP_ANY_NS = ccnp({"endpointSelector": sel(app="client"), "ingress": [{"fromEndpoints": [sel(type="monitoring")]}]})
CNP_OWN_NS = cnp({"endpointSelector": {}, "ingress": [{"fromEntities": ["world"]}]})
FROM_WORLD = cnp({"endpointSelector": WEB, "ingress": [{"fromEntities": ["world"]}]})
FROM_CLUSTER = cnp({"endpointSelector": WEB, "ingress": [{"fromEntities": ["cluster"]}]})
FROM_ALL = cnp({"endpointSelector": WEB, "ingress": [{"fromEntities": ["all"]}]})
TO_HOST = cnp(
    {
        "endpointSelector": WEB,
        "egress": [{"toEntities": ["host"], "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]}],
    }
)
TO_REMOTE_NODE = cnp({"endpointSelector": WEB, "egress": [{"toEntities": ["remote-node"]}]})
TO_MESH = cnp({"endpointSelector": WEB, "egress": [{"toEntities": ["cluster-mesh"]}]})
TO_CIDR = cnp({"endpointSelector": WEB, "egress": [{"toCIDR": ["8.8.8.0/24"]}]})
TO_CIDRSET = cnp(
    {"endpointSelector": WEB, "egress": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]}]}
)
TO_CIDR_PODS = cnp({"endpointSelector": WEB, "egress": [{"toCIDR": ["10.10.0.0/16"]}]})
TO_CIDR_FLANNEL = cnp({"endpointSelector": WEB, "egress": [{"toCIDR": ["10.12.0.0/16"]}]})
TO_FLANNEL_LABELS = cnp({"endpointSelector": WEB, "egress": [{"toEndpoints": [sel(app="legacy")]}]})
RANGE = cnp(
    {
        "endpointSelector": WEB,
        "egress": [{"toPorts": [{"ports": [{"port": "8000", "endPort": 8100, "protocol": "TCP"}]}]}],
    }
)
ANY_PROTO = cnp({"endpointSelector": WEB, "egress": [{"toPorts": [{"ports": [{"port": "53"}]}]}]})
L4_ONLY = cnp({"endpointSelector": WEB, "egress": [{"toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]})
EMPTY_RULE = cnp({"endpointSelector": WEB, "egress": [{}]})
EMPTY_PEERS = cnp(
    {"endpointSelector": WEB, "ingress": [{"fromEndpoints": [], "toPorts": [{"ports": [{"port": "80"}]}]}]}
)
DENY_WINS = cnp(
    {
        "endpointSelector": WEB,
        "ingress": [{"fromEntities": ["all"]}],
        "ingressDeny": [{"fromEndpoints": [sel(app="client")]}],
    }
)
DENY_PORT = cnp(
    {
        "endpointSelector": WEB,
        "ingress": [{"fromEndpoints": [{}]}],
        "ingressDeny": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}],
    }
)
K8S_ALLOW_CILIUM_DENY = np({"podSelector": WEB, "ingress": [{}]}) + cnp(
    {"endpointSelector": WEB, "ingressDeny": [{"fromEndpoints": [sel(app="client")]}]}
)
DENY_ONLY = cnp({"endpointSelector": WEB, "ingressDeny": [{"fromEntities": ["world"]}]})
FROM_WORLD_DENY = cnp(
    {"endpointSelector": {}, "ingress": [{"fromEntities": ["all"]}], "ingressDeny": [{"fromEntities": ["world"]}]}
)
NO_DEFAULT_DENY = cnp(
    {"endpointSelector": WEB, "enableDefaultDeny": {"ingress": False}, "ingress": [{"fromEndpoints": [sel(app="foo")]}]}
)
EGRESS_DENY_WORLD = cnp(
    {"endpointSelector": WEB, "egress": [{"toEntities": ["all"]}], "egressDeny": [{"toEntities": ["world"]}]}
)
CILIUM_NAMED = cnp(
    {
        "endpointSelector": WEB,
        "ingress": [{"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}]}]}],
    }
)

X = "c1/default/"
CILIUM_CASES = [
    Case("c-seed-003-cross-cluster", SEED_003, X + "x-wing-0", "c2/default/rebel-base-0", reason=Reason.ALLOWED),
    Case("c-seed-003-not-local-rebel-base", SEED_003, X + "x-wing-0", X + "rebel-base-0", expect=DENY),
    Case("c-local-cluster-by-default", LOCAL_DEFAULT, X + "x-wing-0", X + "rebel-base-0"),
    Case("c-local-cluster-not-remote", LOCAL_DEFAULT, X + "x-wing-0", "c2/default/rebel-base-0", expect=DENY),
    Case("c-cluster-exists-any-cluster", ANY_CLUSTER, X + "x-wing-0", "c2/default/rebel-base-0"),
    Case(
        "c-ingress-names-remote-cluster",
        SEED_003 + C2_INGRESS,
        X + "x-wing-0",
        "c2/default/rebel-base-0",
        reason=Reason.ALLOWED,
    ),
    Case("c-ingress-remote-only", C2_INGRESS, "c2/default/x-wing-0", "c2/default/rebel-base-0", expect=DENY),
    Case("c-ingress-local-by-default", C2_INGRESS_LOCAL, X + "x-wing-0", "c2/default/rebel-base-0", expect=DENY),
    Case("c-ingress-local-allowed", C2_INGRESS_LOCAL, "c2/default/x-wing-0", "c2/default/rebel-base-0"),
    Case("c-k8s-podselector-names-cluster", C2_NP_CLUSTER, X + "x-wing-0", "c2/default/rebel-base-0"),
    Case("c-peer-same-namespace", SAME_NS, X + "client-0", X + "web-0"),
    Case("c-peer-not-other-namespace", SAME_NS, "c1/other/client-0", X + "web-0", expect=DENY),
    Case("c-peer-names-namespace", OTHER_NS, "c1/other/client-0", X + "web-0"),
    Case("c-peer-names-namespace-only-that", OTHER_NS, X + "client-0", X + "web-0", expect=DENY),
    Case("c-namespace-labels-reach-other-namespace", NS_LABELS_CNP, "c1/ops/other-0", X + "web-0"),
    Case("c-namespace-labels-only-those", NS_LABELS_CNP, X + "client-0", X + "web-0", expect=DENY),
    Case("c-clusterwide-selects-every-namespace", CCNP_ANY_NS, "c1/ops/monitor-0", "c1/other/client-0"),
    Case("c-clusterwide-peer-any-namespace", CCNP_ANY_NS, X + "monitor-0", "c1/prod/client-0"),
    Case("c-clusterwide-denies-others", CCNP_ANY_NS, X + "foo-0", "c1/prod/client-0", expect=DENY),
    Case("c-namespaced-subject-own-namespace", CNP_OWN_NS, X + "client-0", "c1/other/client-0"),
    Case("c-namespaced-subject-selected", CNP_OWN_NS, X + "client-0", X + "web-0", expect=DENY),
    Case("c-from-world", FROM_WORLD, "8.8.8.8", X + "web-0"),
    Case("c-from-world-not-pods", FROM_WORLD, X + "client-0", X + "web-0", expect=DENY),
    Case("c-from-cluster-pod", FROM_CLUSTER, X + "client-0", X + "web-0"),
    Case("c-from-cluster-not-remote-pods", FROM_CLUSTER, "c2/default/x-wing-0", X + "web-0", expect=DENY),
    Case("c-from-cluster-remote-node", FROM_CLUSTER, "node-b", X + "web-0"),
    Case("c-from-cluster-not-world", FROM_CLUSTER, "8.8.8.8", X + "web-0", expect=DENY),
    Case("c-from-all-remote-cluster", FROM_ALL, "c2/default/x-wing-0", X + "web-0"),
    Case("c-from-all-world", FROM_ALL, "8.8.8.8", X + "web-0"),
    Case("c-to-host", TO_HOST, X + "web-0", "10.10.0.1", "53/UDP"),
    Case("c-egress-to-own-node-needs-rule", TO_HOST, X + "web-0", "10.10.0.1", "53/TCP", expect=DENY),
    Case("c-to-host-not-other-node", TO_HOST, X + "web-0", "node-b", "53/UDP", expect=DENY),
    Case("c-to-remote-node", TO_REMOTE_NODE, X + "web-0", "node-b", "10250/TCP"),
    Case("c-to-remote-node-not-host", TO_REMOTE_NODE, X + "web-0", "node-a", "10250/TCP", expect=DENY),
    Case("c-to-cluster-mesh", TO_MESH, X + "web-0", "c2/default/rebel-base-0"),
    Case("c-to-cluster-mesh-not-world", TO_MESH, X + "web-0", "8.8.8.8", expect=DENY),
    Case("c-to-cidr", TO_CIDR, X + "web-0", "8.8.8.8", "443/TCP"),
    Case("c-to-cidr-outside", TO_CIDR, X + "web-0", "1.1.1.1", "443/TCP", expect=DENY),
    Case("c-to-cidrset", TO_CIDRSET, X + "web-0", "10.50.0.1", "443/TCP"),
    Case("c-to-cidrset-except", TO_CIDRSET, X + "web-0", "10.100.0.1", "443/TCP", expect=DENY),
    Case("c-cidr-not-cilium-pods", TO_CIDR_PODS, X + "web-0", X + "client-0", expect=DENY),
    Case("c-cidr-matches-non-mesh-pods", TO_CIDR_FLANNEL, X + "web-0", "c3/default/legacy-0"),
    Case("c-labels-not-non-mesh-pods", TO_FLANNEL_LABELS, X + "web-0", "c3/default/legacy-0", expect=DENY),
    Case("c-port-range", RANGE, X + "web-0", "8.8.8.8", "8050/TCP"),
    Case("c-port-range-above", RANGE, X + "web-0", "8.8.8.8", "8101/TCP", expect=DENY),
    Case("c-protocol-any-udp", ANY_PROTO, X + "web-0", "8.8.8.8", "53/UDP"),
    Case("c-protocol-any-tcp", ANY_PROTO, X + "web-0", "8.8.8.8", "53/TCP"),
    Case("c-l4-only-any-peer", L4_ONLY, X + "web-0", "8.8.8.8", "443/TCP"),
    Case("c-l4-only-other-port", L4_ONLY, X + "web-0", "8.8.8.8", "80/TCP", expect=DENY),
    Case("c-empty-rule-denies", EMPTY_RULE, X + "web-0", "8.8.8.8", "443/TCP", expect=DENY, reason=Reason.DEFAULT_DENY),
    Case("c-empty-peer-list-selects-nothing", EMPTY_PEERS, X + "client-0", X + "web-0", expect=DENY),
    Case("c-deny-wins", DENY_WINS, X + "client-0", X + "web-0", expect=DENY, reason=Reason.DENIED),
    Case("c-deny-wins-others-allowed", DENY_WINS, X + "foo-0", X + "web-0"),
    Case("c-deny-port", DENY_PORT, X + "client-0", X + "web-0", "80/TCP", expect=DENY, reason=Reason.DENIED),
    Case("c-deny-port-other-port", DENY_PORT, X + "client-0", X + "web-0", "81/TCP"),
    Case("c-cilium-deny-beats-k8s-allow", K8S_ALLOW_CILIUM_DENY, X + "client-0", X + "web-0", expect=DENY),
    Case(
        "c-deny-only-is-default-deny", DENY_ONLY, X + "client-0", X + "web-0", expect=DENY, reason=Reason.DEFAULT_DENY
    ),
    Case("c-from-world-deny-pods-allowed", FROM_WORLD_DENY, X + "client-0", X + "web-0"),
    Case("c-from-world-deny-world-denied", FROM_WORLD_DENY, "8.8.8.8", X + "web-0", expect=DENY, reason=Reason.DENIED),
    Case("c-enable-default-deny-false", NO_DEFAULT_DENY, X + "client-0", X + "web-0", reason=Reason.DEFAULT_ALLOW),
    Case("c-enable-default-deny-false-rule", NO_DEFAULT_DENY, X + "foo-0", X + "web-0", reason=Reason.ALLOWED),
    Case(
        "c-egress-deny-world", EGRESS_DENY_WORLD, X + "web-0", "8.8.8.8", "443/TCP", expect=DENY, reason=Reason.DENIED
    ),
    Case("c-egress-deny-world-pods-allowed", EGRESS_DENY_WORLD, X + "web-0", X + "client-0"),
    Case("c-named-port", CILIUM_NAMED, X + "client-0", X + "web-0", "80/TCP"),
    Case("c-named-port-other", CILIUM_NAMED, X + "client-0", X + "web-0", "81/TCP", expect=DENY),
]

# --- Cilium Layer 7 (HTTP): "Allow GET /public", headers, and L4 rules that disable L7 --------------

L7_PUBLIC = cnp(
    {
        "endpointSelector": WEB,
        "ingress": [
            {
                "fromEndpoints": [sel(app="client")],
                "toPorts": [
                    {
                        "ports": [{"port": "80", "protocol": "TCP"}],
                        "rules": {"http": [{"method": "GET|HEAD", "path": "/public"}]},
                    }
                ],
            }
        ],
    }
)
L7_HEADER = cnp(
    {
        "endpointSelector": WEB,
        "ingress": [
            {
                "toPorts": [
                    {
                        "ports": [{"port": "80", "protocol": "TCP"}],
                        "rules": {
                            "http": [
                                {"method": "GET", "path": "/path1"},
                                {"method": "PUT", "path": "/path2", "headers": ["X-My-Header: true"]},
                            ]
                        },
                    }
                ]
            }
        ],
    }
)
L7_AND_L4 = L7_PUBLIC + cnp(
    {
        "endpointSelector": WEB,
        "ingress": [
            {"fromEndpoints": [sel(app="client")], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}
        ],
    },
    name="l4",
)

L7_CASES = [
    Case("l7-get-public", L7_PUBLIC, X + "client-0", X + "web-0", http=("GET", "/public"), reason=Reason.ALLOWED),
    Case(
        "l7-get-private-403",
        L7_PUBLIC,
        X + "client-0",
        X + "web-0",
        http=("GET", "/private"),
        expect=DENY,
        reason=Reason.L7_DENIED,
    ),
    Case("l7-post-public-403", L7_PUBLIC, X + "client-0", X + "web-0", http=("POST", "/public"), expect=DENY),
    Case("l7-method-regex", L7_PUBLIC, X + "client-0", X + "web-0", http=("HEAD", "/public")),
    Case("l7-path-is-a-full-match", L7_PUBLIC, X + "client-0", X + "web-0", http=("GET", "/public/x"), expect=DENY),
    Case("l7-no-request-is-l4", L7_PUBLIC, X + "client-0", X + "web-0", reason=Reason.ALLOWED),
    Case(
        "l7-l3-still-applies",
        L7_PUBLIC,
        X + "foo-0",
        X + "web-0",
        http=("GET", "/public"),
        expect=DENY,
        reason=Reason.DEFAULT_DENY,
    ),
    Case("l7-header-present", L7_HEADER, X + "foo-0", X + "web-0", http=("PUT", "/path2", "X-My-Header: true")),
    Case("l7-header-missing", L7_HEADER, X + "foo-0", X + "web-0", http=("PUT", "/path2"), expect=DENY),
    Case(
        "l7-header-wrong-value",
        L7_HEADER,
        X + "foo-0",
        X + "web-0",
        http=("PUT", "/path2", "X-My-Header: no"),
        expect=DENY,
    ),
    Case("l7-second-rule", L7_HEADER, X + "foo-0", X + "web-0", http=("GET", "/path1")),
    Case("l7-l4-rule-disables-l7", L7_AND_L4, X + "client-0", X + "web-0", http=("POST", "/private")),
]

CASES = RECIPE_CASES + K8S_CASES + CILIUM_CASES + L7_CASES


def deciding(v: Verdict) -> Side:
    """The denying side, else the side where a policy (or an exception) decided, else ingress."""
    for side in (v.egress, v.ingress):
        if not side.allowed:
            return side
    for side in (v.ingress, v.egress):
        if side.reason not in (Reason.DEFAULT_ALLOW, Reason.NOT_A_POD):
            return side
    return v.ingress


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_truth_table(case: Case) -> None:
    index = build(case.policies)
    verdict = flow(index, case.src, case.dst, case.port, case.http)
    sides = f"egress: {verdict.egress.message} | ingress: {verdict.ingress.message}"
    assert verdict.verdict == case.expect, sides
    if case.reason is not None:
        assert deciding(verdict).reason is case.reason, sides


def test_l7_without_request_lists_the_http_rules() -> None:
    v = flow(build(L7_PUBLIC), X + "client-0", X + "web-0")
    assert v.allowed
    assert [str(h) for _, h in v.ingress.http_rules] == ["toPorts[0].rules.http[0] (method GET|HEAD, path /public)"]
    assert "HTTP requests must match" in v.ingress.message


def test_verdict_names_the_selecting_policies_and_the_rule() -> None:
    index = build(SEED_003 + C2_INGRESS)
    v = flow(index, X + "x-wing-0", "c2/default/rebel-base-0")
    assert [str(p.id) for p in v.egress.policies] == ["CiliumNetworkPolicy c1/default/cnp"]
    assert [str(p.id) for p in v.ingress.policies] == ["CiliumNetworkPolicy c2/default/cnp"]
    assert v.egress.decision is not None and v.egress.decision.rule.path == "spec.egress[0]"
    assert v.egress.decision.peer.path == "toEndpoints[0]"
    assert v.ingress.decision is not None and v.ingress.decision.rule.path == "spec.ingress[0]"


def test_no_policy_message() -> None:
    v = flow(build(()), X + "client-0", X + "web-0")
    assert v.egress.message == v.ingress.message == "no policy selects it: allowed by default"


def test_identities_group_pods_with_equal_labels() -> None:
    index = build(())
    web = {index.identity_of["c1/default/web-0"], index.identity_of["c2/default/web-0"]}
    assert len(web) == 2  # the cluster label differs
    assert all(len(i.endpoints) == 1 for i in index.identities)
