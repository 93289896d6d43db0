"""`spec.istio` in the mesh file: Go durations as Istio reads them, the SVID lifetime's range, the
trust domain held to a DNS name, and `plan.istio` — present in the plan and its JSON only for a
mesh with a service mesh, so every other mesh plans exactly as before."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from crossmesh.ipam.allocate import Allocations, allocate
from crossmesh.model.durations import format_go, parse_go
from crossmesh.model.mesh import Mesh
from crossmesh.model.plan import IstioPlan
from crossmesh.plan import serialize
from crossmesh.plan.planner import build_plan

MESH: dict[str, Any] = {
    "apiVersion": "crossmesh.io/v1alpha1",
    "kind": "Mesh",
    "metadata": {"name": "demo"},
    "spec": {
        "sites": [{"name": "east", "provider": "aws", "network": "10.1.0.0/16"}],
        "clusters": [{"name": "one", "nodes": [{"name": "e1", "site": "east", "address": "10.1.0.11"}]}],
    },
}


def with_spec(**spec: Any) -> dict[str, Any]:
    data = copy.deepcopy(MESH)
    data["spec"].update(spec)
    return data


def plan_json(data: dict[str, Any]) -> dict[str, Any]:
    mesh = Mesh.model_validate(data)
    alloc, problems = allocate(mesh, Allocations())
    assert problems == []
    plan = build_plan(mesh, alloc, {"e1": "pub-e1"})
    return {"plan": plan, "json": serialize.plan_json(plan)}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("24h", timedelta(hours=24)),
        ("90m", timedelta(minutes=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        (".5m", timedelta(seconds=30)),
        ("2h45m30.5s", timedelta(hours=2, minutes=45, seconds=30.5)),
        ("1500ms", timedelta(seconds=1.5)),
        ("3us", timedelta(microseconds=3)),
        ("3µs", timedelta(microseconds=3)),
        ("0", timedelta(0)),
        ("+10m", timedelta(minutes=10)),
        ("-10m", timedelta(minutes=-10)),
    ],
)
def test_go_durations_parse_as_go_reads_them(text: str, want: timedelta) -> None:
    assert parse_go(text) == want


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("7d", "Go has no unit 'd' — write 168h"),
        ("24", "24 has no unit"),
        ("1 h", "1 has no unit"),
        ("", "is not a Go duration"),
        ("h", "is not a Go duration"),
        (".h", "is not a Go duration"),
        ("1y", "unknown unit 'y'"),
        ("1H", "is not a Go duration"),
    ],
)
def test_what_go_would_refuse_is_refused_with_a_hint(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_go(text)
    assert reason in str(err.value)
    assert "24h, 90m, 1h30m" in str(err.value) or "write 168h" in str(err.value)


@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_format_go_is_read_back_exactly(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_go(format_go(value)) == value


def test_go_writes_durations_the_same() -> None:
    assert [format_go(timedelta(seconds=s)) for s in (86400, 5400, 600, 59, 0)] == [
        "24h0m0s",
        "1h30m0s",
        "10m0s",
        "59s",
        "0s",
    ]


@pytest.mark.parametrize("ttl", ["10m", "24h", "1h30m", "2160h", "0.25h"])
def test_a_lifetime_from_ten_minutes_to_ninety_days_is_taken(ttl: str) -> None:
    mesh = Mesh.model_validate(with_spec(istio={"workloadCertTTL": ttl}))
    assert mesh.spec.istio is not None and mesh.spec.istio.cert_ttl == parse_go(ttl)


@pytest.mark.parametrize(("ttl", "reason"), [("9m59s", "out of range"), ("2161h", "out of range"), ("24", "no unit")])
def test_a_lifetime_out_of_range_or_malformed_is_refused(ttl: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Mesh.model_validate(with_spec(istio={"workloadCertTTL": ttl}))


def test_an_istio_setting_istio_does_not_have_is_refused() -> None:
    with pytest.raises(ValidationError, match="workloadCertTtl|Extra inputs"):
        Mesh.model_validate(with_spec(istio={"workloadCertTtl": "24h"}))


@pytest.mark.parametrize(
    ("domain", "ok"), [("cluster.local", True), ("mesh.example.com", True), ("Cluster.local", False)]
)
def test_the_trust_domain_is_a_dns_name(domain: str, ok: bool) -> None:
    data = with_spec(trustDomain=domain)
    if ok:
        assert Mesh.model_validate(data).spec.trust_domain == domain
    else:
        with pytest.raises(ValidationError, match="write it in lowercase"):
            Mesh.model_validate(data)


def test_the_plan_has_istio_only_with_spec_istio() -> None:
    without = plan_json(MESH)
    assert without["plan"].istio is None and "istio" not in without["json"]
    default = plan_json(with_spec(istio={}))
    assert default["plan"].istio == IstioPlan("cluster.local", "demo", timedelta(hours=24))
    assert default["json"]["istio"] == {"trustDomain": "cluster.local", "meshID": "demo", "certTTL": "24h0m0s"}
    chosen = plan_json(with_spec(trustDomain="corp.example", istio={"workloadCertTTL": "1h30m"}))
    assert chosen["plan"].istio == IstioPlan("corp.example", "demo", timedelta(minutes=90))
    # everything else is as without a service mesh
    rest = {k: v for k, v in chosen["json"].items() if k not in ("istio", "trustDomain")}
    assert rest == {k: v for k, v in without["json"].items() if k != "trustDomain"}
