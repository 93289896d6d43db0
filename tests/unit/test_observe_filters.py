"""`crossmesh observe`'s filters: what each flag matches, how flags combine (OR within a flag, AND
across flags, as hubble observe), and the messages a user gets for a value that cannot be used."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from fake_flow_relay import flow, pod
from hypothesis import given
from hypothesis import strategies as st

from crossmesh.observe import filters
from crossmesh.observe.filters import FilterError, Known
from crossmesh.observe.flows import Flow, FlowEndpoint, Verdict

NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z
XWING = pod("cluster1/default/x-wing-0", "10.11.0.5")
XWING2 = pod("cluster2/default/x-wing-1", "10.12.0.9")
DEATHSTAR = pod("cluster2/empire/deathstar-1", "10.12.0.7")
NODE = FlowEndpoint(address="10.0.1.5", kind="node", name="c1-n1", identity=1)
WORLD = FlowEndpoint(address="203.0.113.9")
KNOWN = Known(
    pods=frozenset({"cluster1/default/x-wing-0", "cluster2/default/x-wing-1", "cluster2/empire/deathstar-1"}),
    nodes=frozenset({"c1-n1", "c1-n2", "c2-n1"}),
    routers=frozenset({"router/aws-sg", "router/gcp-ew"}),
)


def parse(**kw: object) -> filters.FlowFilter:
    return filters.parse(now=NOW, tz=UTC, known=KNOWN, **kw)  # type: ignore[arg-type]


def problems(**kw: object) -> list[str]:
    with pytest.raises(FilterError) as e:
        parse(**kw)
    return e.value.problems


@pytest.mark.parametrize(
    ("value", "matching", "not_matching"),
    [
        ("cluster1/default/x-wing-0", [XWING], [XWING2, DEATHSTAR, NODE, WORLD]),
        ("default/x-wing-0", [XWING], [XWING2]),
        ("default/x-wing-*", [XWING, XWING2], [DEATHSTAR]),
        ("cluster2/default/x-wing-*", [XWING2], [XWING]),
        ("empire/*", [DEATHSTAR], [XWING]),
        ("c1-n1", [NODE], [XWING, WORLD]),
        ("c1-*", [NODE], [XWING]),
        ("10.11.0.5", [XWING], [XWING2, NODE]),
        ("10.12.0.0/16", [XWING2, DEATHSTAR], [XWING, WORLD]),
        ("0.0.0.0/0", [XWING, NODE, WORLD], []),
        ("world", [WORLD], [XWING, NODE]),
        ("WORLD", [WORLD], [XWING]),
    ],
)
def test_an_endpoint_matches_what_its_form_names(
    value: str, matching: list[FlowEndpoint], not_matching: list[FlowEndpoint]
) -> None:
    src = parse(sources=[value])
    dst = parse(destinations=[value])
    for ep in matching:
        assert src.matches(flow(NOW, ep, NODE)) and dst.matches(flow(NOW, NODE, ep))
    for ep in not_matching:
        assert not src.matches(flow(NOW, ep, ep)) and not dst.matches(flow(NOW, ep, ep))


def test_from_is_the_source_and_to_the_destination() -> None:
    f = flow(NOW, XWING, DEATHSTAR)
    assert parse(sources=["default/x-wing-0"]).matches(f)
    assert not parse(destinations=["default/x-wing-0"]).matches(f)
    assert parse(sources=["default/x-wing-0"], destinations=["empire/deathstar-1"]).matches(f)
    assert not parse(sources=["default/x-wing-0"], destinations=["default/x-wing-1"]).matches(f)


def test_namespace_port_verdict_protocol_and_node() -> None:
    f = flow(NOW, XWING, DEATHSTAR, port=443, verdict=Verdict.DROPPED, protocol="UDP", node="c2-n1")
    assert parse(namespaces=["empire"]).matches(f)  # either end
    assert parse(namespaces=["default"]).matches(f)
    assert not parse(namespaces=["default"]).matches(flow(NOW, NODE, DEATHSTAR))  # a node has none
    assert parse(ports=["443"]).matches(f) and parse(ports=["40000"]).matches(f)  # either end's port
    assert not parse(ports=["80"]).matches(f)
    assert parse(verdicts=["dropped"]).matches(f) and parse(verdicts=["DROPPED"]).matches(f)
    assert not parse(verdicts=["Forwarded"]).matches(f)
    assert parse(protocols=["udp"]).matches(f) and not parse(protocols=["tcp"]).matches(f)
    assert parse(nodes=["c2-n1"]).matches(f) and not parse(nodes=["c1-n1"]).matches(f)


def test_port_matches_the_service_port_a_flow_was_sent_to() -> None:
    f = flow(NOW, XWING, DEATHSTAR, port=8080, service="cluster2/empire/deathstar", service_address="10.96.0.10:80")
    assert parse(ports=["80"]).matches(f) and parse(ports=["8080"]).matches(f)


def test_since_and_until_bound_the_time() -> None:
    f = parse(since="5m", until="1m")
    assert f.since == NOW - 300 and f.until == NOW - 60
    assert f.matches(flow(NOW - 120, XWING, DEATHSTAR))
    assert not f.matches(flow(NOW - 301, XWING, DEATHSTAR))
    assert not f.matches(flow(NOW - 30, XWING, DEATHSTAR))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - 30),
        ("5m", NOW - 300),
        ("2h", NOW - 7200),
        ("1d", NOW - 86400),
        ("1h30m", NOW - 5400),
        ("1.5s", NOW - 1.5),
        ("2024-05-01T11:00:00Z", NOW - 3600),
        ("2024-05-01T13:00:00+02:00", NOW - 3600),
        ("2024-05-01 11:00:00+00:00", NOW - 3600),
    ],
)
def test_since_takes_durations_and_rfc3339_times(text: str, expected: float) -> None:
    assert filters.parse_time(text, now=NOW, tz=UTC) == pytest.approx(expected)


def test_a_time_without_an_offset_is_in_the_zone_given() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert filters.parse_time("2024-05-01T13:00:00", now=NOW, tz=plus2) == NOW - 3600


@pytest.mark.parametrize("text", ["5 minutes", "yesterday", "-5m", "5", "m", "2024-13-01", "5M", ""])
def test_a_malformed_since_says_what_to_write(text: str) -> None:
    (problem,) = problems(since=text)
    assert problem.startswith(f"--since {text!r}: not a duration or a time")
    assert "30s, 5m, 2h, 1d" in problem and "2024-05-01T12:00:00Z" in problem


def test_until_before_since_is_refused() -> None:
    assert problems(since="1m", until="5m") == ["--until '5m' is before --since '1m': swap them"]


def test_an_unknown_pod_is_named_with_the_close_names() -> None:
    (p,) = problems(sources=["cluster1/default/x-wnig-0"])
    assert p == (
        "--from 'cluster1/default/x-wnig-0': the lab has no pod 'cluster1/default/x-wnig-0' — "
        "did you mean cluster1/default/x-wing-0 or cluster2/default/x-wing-1?"
    )
    (p,) = problems(destinations=["default/deathstar-1"])
    assert "--to 'default/deathstar-1': the lab has no pod" in p and "empire/deathstar-1" in p


def test_a_prefix_that_matches_no_pod_is_refused() -> None:
    (p,) = problems(sources=["default/tie-*"])
    assert p.startswith("--from 'default/tie-*': the lab has no pod whose name starts with 'default/tie-'")


def test_an_unknown_node_and_a_pod_name_written_alone() -> None:
    (p,) = problems(sources=["c1-n3"])
    assert p.startswith("--from 'c1-n3': the lab has no node 'c1-n3' — did you mean")
    (p,) = problems(sources=["x-wing-0"])
    assert "pods are written NAMESPACE/POD or CLUSTER/NAMESPACE/POD, e.g. cluster1/default/x-wing-0" in p
    (p,) = problems(nodes=["c9-n9"])
    assert p.startswith("--node 'c9-n9': the lab has no node 'c9-n9'")


def test_a_site_routers_records_are_chosen_by_router_and_site() -> None:
    f = flow(NOW, WORLD, NODE, verdict=Verdict.DROPPED, node="router/aws-sg")
    assert parse(nodes=["router/aws-sg"]).matches(f) and not parse(nodes=["router/gcp-ew"]).matches(f)
    (p,) = problems(nodes=["router/aws-eu"])
    assert p.startswith("--node 'router/aws-eu': the lab has no node 'router/aws-eu' — did you mean")
    assert "router/aws-sg" in p
    (p,) = problems(nodes=["router/"])
    assert "router/SITE for a site router's firewall" in p
    (p,) = problems(sources=["router/aws-sg"])  # a router records flows; it is not one of their ends
    assert p == (
        "--from 'router/aws-sg': router/aws-sg is a site router, not an end of a flow: "
        "--node router/aws-sg shows what it dropped"
    )


def test_with_nothing_close_the_known_names_are_listed() -> None:
    (p,) = problems(sources=["zzz"])
    assert p == "--from 'zzz': the lab has no node 'zzz' (its nodes: c1-n1, c1-n2, c2-n1)"


def test_every_problem_is_reported_at_once() -> None:
    ps = problems(
        sources=["a/b/c/d"],
        destinations=["10.0.0.300"],
        namespaces=["rebels"],
        verdicts=["ALLOWED"],
        ports=["0", "80/TCP", "http"],
        protocols=["quic"],
        since="soon",
    )
    assert ps == [
        "--from 'a/b/c/d': too many parts: write " + filters.ENDPOINT_FORMS,
        "--to '10.0.0.300': not an IPv4 address or CIDR (e.g. 10.11.0.5 or 10.11.0.0/16)",
        "--namespace 'rebels': no pod of the lab is in namespace 'rebels' (its namespaces: default, empire)",
        "--verdict 'ALLOWED': write FORWARDED or DROPPED (any case)",
        "--port '0': expected a port number 1-65535, e.g. --port 80",
        "--port '80/TCP': write the port alone and the protocol apart: --port 80 --protocol tcp",
        "--port 'http': expected a port number 1-65535, e.g. --port 80",
        "--protocol 'quic': write one of tcp, udp, icmp, sctp",
        ps[-1],
    ]
    assert ps[-1].startswith("--since 'soon': not a duration")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("default/x-*-0", "a `*` may only end the name"),
        ("default//x", "'' is not a name"),
        ("fd00::1", "the lab is IPv4 only"),
        ("", "empty"),
        ("default/x wing", "'x wing' is not a name"),
    ],
)
def test_malformed_endpoints(value: str, words: str) -> None:
    (p,) = problems(sources=[value])
    assert words in p


def test_without_a_lab_names_are_not_checked() -> None:
    f = filters.parse(sources=["cluster9/ns/anything"], now=NOW, tz=UTC, known=None)
    assert f.matches(flow(NOW, pod("cluster9/ns/anything", "10.1.1.1"), WORLD))


# Laws, not examples: a flag's values are alternatives, flags all hold, order and repeats do not count.

names = st.sampled_from(["x-wing-0", "x-wing-1", "deathstar-1", "tie-3"])
namespaces = st.sampled_from(["default", "empire"])
clusters = st.sampled_from(["cluster1", "cluster2"])
endpoints = st.one_of(
    st.builds(
        lambda c, n, p, a: FlowEndpoint(address=f"10.{a}.0.5", kind="pod", cluster=c, namespace=n, name=p),
        clusters,
        namespaces,
        names,
        st.integers(10, 13),
    ),
    st.builds(lambda n: FlowEndpoint(address="10.0.1.5", kind="node", name=n), st.sampled_from(["c1-n1", "c2-n1"])),
    st.just(WORLD),
)
flows = st.builds(
    lambda s, d, port, v, t: flow(NOW - t, s, d, port=port, verdict=v),
    endpoints,
    endpoints,
    st.sampled_from([53, 80, 443]),
    st.sampled_from(list(Verdict)),
    st.integers(0, 7200),
)
endpoint_values = st.sampled_from(
    ["cluster1/default/x-wing-0", "default/x-wing-*", "empire/*", "c1-n1", "c2-*", "10.12.0.0/16", "world", "10.0.1.5"]
)
flag_values = st.fixed_dictionaries(
    {},
    optional={
        "sources": st.lists(endpoint_values, min_size=1, max_size=3),
        "destinations": st.lists(endpoint_values, min_size=1, max_size=3),
        "namespaces": st.lists(namespaces, min_size=1, max_size=2),
        "verdicts": st.lists(st.sampled_from(["forwarded", "DROPPED"]), min_size=1, max_size=2),
        "ports": st.lists(st.sampled_from(["53", "80", "443"]), min_size=1, max_size=2),
        "since": st.sampled_from(["30m", "1h", "90m"]),
    },
)


def _unchecked(**kw: object) -> filters.FlowFilter:
    return filters.parse(now=NOW, tz=UTC, known=None, **kw)  # type: ignore[arg-type]


@given(flag_values, flows)
def test_flags_all_hold(flags: dict[str, object], f: Flow) -> None:
    each = [_unchecked(**{k: v}).matches(f) for k, v in flags.items()]
    assert _unchecked(**flags).matches(f) == all(each)


@given(st.sampled_from(["sources", "destinations", "namespaces", "verdicts", "ports"]), st.data(), flows)
def test_a_flags_values_are_alternatives(flag: str, data: st.DataObject, f: Flow) -> None:
    values = data.draw(flag_values.filter(lambda d: flag in d))[flag]
    assert isinstance(values, list)
    either = any(_unchecked(**{flag: [v]}).matches(f) for v in values)
    assert _unchecked(**{flag: values}).matches(f) == either
    assert _unchecked(**{flag: values + values[::-1]}).matches(f) == either  # repeats, order


@given(flows)
def test_no_flag_matches_every_flow(f: Flow) -> None:
    assert _unchecked().matches(f)


@given(st.integers(0, 10**6), st.sampled_from(list("smhd")))
def test_a_duration_goes_back_from_now(n: int, unit: str) -> None:
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert filters.parse_time(f"{n}{unit}", now=NOW, tz=UTC) == NOW - n * seconds


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2999, 1, 1), timezones=st.just(UTC)))
def test_an_rfc3339_time_reads_back(moment: datetime) -> None:
    text = moment.isoformat().replace("+00:00", "Z")
    assert filters.parse_time(text, now=NOW, tz=UTC) == pytest.approx(moment.timestamp())
