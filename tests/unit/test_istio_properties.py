"""Laws of the Istio evaluator, checked by hypothesis over generated policies and requests
(istio.gen over the pods of `istio_world`, drawn from hypothesis's seeded randoms)."""

from __future__ import annotations

import dataclasses
import random
from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st
from istio_world import EPS, TRUST_DOMAIN, doc, index, manifests

from crossmesh.istio import gen
from crossmesh.istio.index import IstioIndex, Request
from crossmesh.istio.model import Pattern
from crossmesh.istio.parse import cluster_policies

PODS = list(EPS.values())
DENY_ALL = doc("AuthorizationPolicy", "deny-all", {"action": "DENY", "rules": [{}]}, "istio-system")
ALLOW_ALL = doc("AuthorizationPolicy", "allow-all", {"rules": [{}]}, "istio-system")

cases = st.randoms(use_true_random=False).map(
    lambda rng: gen.generate(rng, PODS, count=1, trust_domain=TRUST_DOMAIN)[0]
)


def with_extra(case: gen.Case, extra: str) -> IstioIndex:
    """The case's index plus one more policy in the destination's cluster."""
    cluster = EPS[case.dst].cluster
    authz, peer = cluster_policies(cluster, [*case.manifests(), *manifests(extra)])
    return IstioIndex(authz, peer)


@settings(max_examples=300, deadline=None)
@given(cases)
def test_the_deciding_policy_applies_and_its_rule_decides_alone(case: gen.Case) -> None:
    idx = case.index(EPS)
    dst, req = EPS[case.dst], case.request(EPS, TRUST_DOMAIN)
    verdict = idx.authorize(dst, req)
    assert (verdict.policy == "") is (verdict.rule is None)
    if verdict.policy:
        (deciding,) = [p for p in idx.policies(dst) if p.ref == verdict.policy]
        assert deciding.action.value == ("ALLOW" if verdict.allowed else "DENY")
        alone = IstioIndex([dataclasses.replace(deciding, rules=(deciding.rules[verdict.rule or 0],))], [])
        assert alone.authorize(dst, req).allowed is verdict.allowed


@settings(max_examples=200, deadline=None)
@given(cases)
def test_a_mesh_wide_deny_all_denies_everything_and_allow_all_adds_no_denial(case: gen.Case) -> None:
    dst, req = EPS[case.dst], case.request(EPS, TRUST_DOMAIN)
    assert not with_extra(case, DENY_ALL).authorize(dst, req).allowed
    before = case.index(EPS).authorize(dst, req)
    after = with_extra(case, ALLOW_ALL).authorize(dst, req)
    if before.allowed:
        assert after.allowed  # an allow-all ALLOW never turns an allowed request into a denied one
    elif before.policy:  # denied by a DENY: no ALLOW overrides it
        assert not after.allowed and after.policy == before.policy
    else:  # no ALLOW matched: now one does
        assert after.allowed


@settings(max_examples=200, deadline=None)
@given(cases, st.sampled_from(["principals", "namespaces", "ipBlocks", "ports", "methods", "paths"]))
def test_a_field_and_its_not_form_split_every_request_in_two(case: gen.Case, name: str) -> None:
    """`x: V` matches exactly the requests `notX: V` does not — plaintext ones included."""
    dst = EPS[case.dst]
    req = case.request(EPS, TRUST_DOMAIN)
    if name in ("methods", "paths") and req.method is None:
        return  # HTTP-only fields: neither form applies to a TCP request
    values = {
        "principals": ["cluster.local/ns/default/*"],
        "namespaces": ["empire"],
        "ipBlocks": ["10.10.0.0/24"],
        "ports": ["80"],
        "methods": ["GET"],
        "paths": ["/api/*"],
    }[name]
    section = "to" if name in ("ports", "methods", "paths") else "from"
    key = "operation" if section == "to" else "source"
    not_name = "not" + name[0].upper() + name[1:]
    verdicts = []
    for field in (name, not_name):
        spec = {"rules": [{section: [{key: {field: values}}]}]}
        verdicts.append(
            index(doc("AuthorizationPolicy", "p", spec, "istio-system"), cluster=dst.cluster)
            .authorize(dst, req)
            .allowed
        )
    assert verdicts[0] != verdicts[1]


@given(st.text(min_size=1, max_size=12).filter(lambda t: "*" not in t), st.text(max_size=12))
def test_patterns_match_as_istio_documents(value: str, more: str) -> None:
    assert Pattern(value).matches(value)
    assert Pattern(value + "*").matches(value + more)
    assert Pattern("*" + value).matches(more + value)
    assert Pattern("*").matches(value)
    assert not Pattern("*").matches(None) and not Pattern(value).matches(None)
    assert not Pattern(value).matches(value + "x")


def test_a_request_from_outside_the_mesh_is_answered() -> None:
    req = Request(None, None, ip_address("203.0.113.9"), 80)
    idx = gen.generate(random.Random(3), PODS, count=1, trust_domain=TRUST_DOMAIN)[0].index(EPS)
    assert idx.authorize(EPS["c1/default/web-0"], req).reason
