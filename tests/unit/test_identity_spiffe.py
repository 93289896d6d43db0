"""SPIFFE ids as Istio names workloads: what parses, what is refused and with which reason, and the
laws (parse ∘ uri = id; a principal is the uri without its scheme)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossmesh.identity.spiffe import SpiffeId, valid_trust_domain

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
SEGMENT = st.from_regex(r"[A-Za-z0-9._-]{1,30}", fullmatch=True).filter(lambda s: s not in (".", ".."))


def test_an_istio_id_parses_into_its_parts() -> None:
    got = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/frontend")
    assert got == SpiffeId("cluster.local", "default", "frontend")
    assert got.principal == "cluster.local/ns/default/sa/frontend"
    assert str(got) == got.uri == "spiffe://cluster.local/ns/default/sa/frontend"


@given(DOMAIN, SEGMENT, SEGMENT)
def test_parse_inverts_uri(domain: str, namespace: str, account: str) -> None:
    sid = SpiffeId(domain, namespace, account)
    assert SpiffeId.parse(sid.uri) == sid
    assert sid.uri == "spiffe://" + sid.principal


@given(st.text(max_size=80))
def test_parse_either_gives_an_id_that_prints_back_or_says_why(text: str) -> None:
    try:
        sid = SpiffeId.parse(text)
    except ValueError as err:
        assert str(err)
    else:
        assert sid.uri == text


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("https://cluster.local/ns/a/sa/b", "does not start with 'spiffe://'"),
        ("SPIFFE://cluster.local/ns/a/sa/b", "lowercase 'spiffe://'"),
        ("spiffe://Cluster.local/ns/a/sa/b", "uppercase"),
        ("spiffe://cluster.local:8443/ns/a/sa/b", "port"),
        ("spiffe://me@cluster.local/ns/a/sa/b", "user info"),
        ("spiffe://cluster.local/ns/a/sa/b?x=1", "query"),
        ("spiffe://cluster.local/ns/a/sa/b#x", "fragment"),
        ("spiffe://cluster.local", "names no workload"),
        ("spiffe://cluster.local/", "names no workload"),
        ("spiffe://cluster.local/ns//sa/b", "empty path segment"),
        ("spiffe://cluster.local/ns/a/sa/b/", "empty path segment"),
        ("spiffe://cluster.local/ns/../sa/b", "'..' path segment"),
        ("spiffe://cluster.local/ns/a b/sa/b", "may hold only letters"),
        ("spiffe://cluster.local/workload/x", "not an Istio workload id"),
        ("spiffe://cluster.local/ns/a/sa/b/extra", "not an Istio workload id"),
        ("spiffe://cluster_local/ns/a/sa/b", "not a DNS name"),
        ("spiffe:///ns/a/sa/b", "empty"),
        ("spiffe://cluster.local/ns/a/sa/" + "b" * 2100, "more than 2048"),
    ],
)
def test_each_malformed_id_is_refused_with_its_reason(uri: str, reason: str) -> None:
    with pytest.raises(ValueError) as err:
        SpiffeId.parse(uri)
    assert reason in str(err.value), str(err.value)


@pytest.mark.parametrize("name", ["cluster.local", "example.org", "a", "mesh-1.corp.example", "x" * 63])
def test_dns_names_are_trust_domains(name: str) -> None:
    assert valid_trust_domain(name) is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("Cluster.Local", "write it in lowercase ('cluster.local')"),
        ("cluster..local", "empty label"),
        (".cluster.local", "empty label"),
        ("cluster.local.", "empty label"),
        ("-mesh.local", "neither start nor end with '-'"),
        ("my_mesh", "may hold only a-z, 0-9 and '-'"),
        ("x" * 64, "longer than 63"),
        (".".join(["a" * 60] * 5), "more than 253"),
    ],
)
def test_a_trust_domain_that_is_no_dns_name_says_why(name: str, reason: str) -> None:
    got = valid_trust_domain(name)
    assert got is not None and reason in got, got


@given(DOMAIN)
def test_every_generated_dns_name_is_a_trust_domain(name: str) -> None:
    assert len(name) > 253 or valid_trust_domain(name) is None
