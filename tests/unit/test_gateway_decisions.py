"""A gateway agent's failover decisions (issue 16), pure: the value of a site's active-gateway key as
etcd holds it (hostile values refused, field named), the preference order, and the Judge's rules —
a standby takes over only on MISSES rounds of evidence against the active, never from a fault of its
own; the preferred gateway takes back only after HOLD_DOWN seconds of health."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossmesh.agent.gateways import (
    ACTIVE_MAX_BYTES,
    HOLD_DOWN,
    MAX_EPOCH,
    MISSES,
    ActiveGateway,
    GatewayError,
    Health,
    Judge,
    Remote,
    decode_active,
)
from crossmesh.plan import peers as peer_rule

SITE = "aws"
GATEWAYS = ["gw-a", "gw-b", "gw-c"]  # in order: gw-a preferred
EPOCH_1 = ActiveGateway(active="gw-a", epoch=1, since=100.0, by="operator", reason="preferred gateway")
TICK = 0.125  # a round every 125 ms: exact in binary, so times add up without rounding

# Evidence against the active: two remote sites answer on the direct path, both lost through it.
AGAINST = Health(True, True, {"x": Remote(direct=True, via=False), "y": Remote(direct=True, via=False)})
FINE = Health(True, True, {"x": Remote(direct=True, via=True), "y": Remote(direct=True, via=True)})


# Most tests judge evidence alone: grace=0.0 (the grace for an active never seen forwarding: below).


def run(judge: Judge, rounds: list[Health], current: ActiveGateway, *, start: float = 1000.0) -> list[ActiveGateway]:
    """Feed `rounds` one per TICK, asking after each; every proposal made."""
    out = []
    for i, health in enumerate(rounds):
        now = start + i * TICK
        judge.observe(now, health)
        got = judge.decide(now, current, GATEWAYS)
        if got is not None:
            out.append(got)
    return out


# The value in etcd


def raw(**change: object) -> bytes:
    value = json.loads(EPOCH_1.encode())
    value.update(change)
    return json.dumps({k: v for k, v in value.items() if v is not DROP}).encode()


DROP = object()

printable = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), max_size=300)


@given(
    active=st.sampled_from(GATEWAYS),
    epoch=st.integers(1, MAX_EPOCH),
    since=st.floats(min_value=0, max_value=2e10, allow_nan=False, allow_infinity=False),
    by=printable.filter(lambda s: 0 < len(s) <= 253 and s.isprintable()),
    reason=printable.filter(str.isprintable),
)
def test_encode_decode_round_trip(active: str, epoch: int, since: float, by: str, reason: str) -> None:
    value = ActiveGateway(active=active, epoch=epoch, since=since, by=by, reason=reason)
    encoded = value.encode()
    assert list(json.loads(encoded)) == sorted(json.loads(encoded))
    assert decode_active(encoded, SITE, GATEWAYS) == value


def test_an_integer_since_is_a_time() -> None:
    assert decode_active(raw(since=1700000000), SITE, GATEWAYS).since == 1700000000.0


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (b"{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 2048 + b"]" * 2048, "not JSON"),
        (b'["gw-a"]', "a JSON list, not an object"),
        (b" " * ACTIVE_MAX_BYTES + EPOCH_1.encode(), "over the 4096-byte cap"),
        (raw(leader="gw-b"), "unknown field 'leader'"),
        (raw(epoch=DROP), "missing field epoch"),
        (raw(active=7), "active is 7, not a string"),
        (raw(active="gw-z"), "active 'gw-z' is not a gateway of site aws"),
        (raw(epoch="2"), "epoch is '2', not an integer"),
        (raw(epoch=True), "epoch is True, not an integer"),
        (raw(epoch=2.0), "epoch is 2.0, not an integer"),
        (raw(epoch=0), "epoch 0 out of range"),
        (raw(epoch=MAX_EPOCH + 1), "epoch 9007199254740993 out of range"),
        (raw(since="now"), "since is 'now', not a number"),
        (raw(since=False), "since is False, not a number"),
        (raw(since=-1.0), "since -1.0 is not a time"),
        (raw(since=10**400), f"since {str(10**400)[:45]}... is not a time"),
        (raw(since=DROP) + b"", "missing field since"),
        (raw(by=None), "by is None, not a string"),
        (raw(by=""), "by '' is empty"),
        (raw(by="gw-b\nforged log line"), "by 'gw-b\\nforged log line' is empty or holds control characters"),
        (raw(by="n" * 254), "by is 254 characters, over 253"),
        (raw(reason=["a"]), "reason is ['a'], not a string"),
        (raw(reason="r" * 1025), "reason is 1025 characters, over 1024"),
        (raw(reason="\x1b[2J"), "reason '\\x1b[2J' is empty or holds control characters"),
    ],
)
def test_decode_refuses_a_bad_value_naming_the_field(value: bytes, says: str) -> None:
    with pytest.raises(GatewayError, match="^active gateway of site aws: ") as err:
        decode_active(value, SITE, GATEWAYS)
    assert says in str(err.value)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_decode_refuses_a_since_that_is_no_number(constant: bytes) -> None:
    value = raw(since=12345).replace(b"12345", constant)
    with pytest.raises(GatewayError, match="since .* is not a time"):
        decode_active(value, SITE, GATEWAYS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
fields = st.fixed_dictionaries(
    {},
    optional={k: json_values | st.sampled_from(GATEWAYS) for k in ("active", "epoch", "since", "by", "reason")},
)


@settings(max_examples=300)
@given(value=st.binary(max_size=200) | fields.map(lambda d: json.dumps(d).encode()))
def test_decode_is_total(value: bytes) -> None:
    """Anything etcd may hold decodes or raises GatewayError, nothing else."""
    try:
        got = decode_active(value, SITE, GATEWAYS)
    except GatewayError:
        return
    assert got.active in GATEWAYS and 1 <= got.epoch <= MAX_EPOCH


# Preference order


def gateway_order(members: Iterable[tuple[str, bool]]) -> list[str]:
    """One site's order by the one rule (plan/peers.py), from (name, behind NAT)."""
    site = peer_rule.gateway_order(peer_rule.Member(n, "s", natted, True) for n, natted in members)
    return list(site.get("s", ()))


def test_gateway_order_public_first_then_by_name() -> None:
    assert gateway_order([("gw-c", False), ("gw-a", True), ("gw-b", False)]) == ["gw-b", "gw-c", "gw-a"]


@given(st.dictionaries(st.text(min_size=1, max_size=6), st.booleans(), max_size=8))
def test_gateway_order_is_the_planners(members: dict[str, bool]) -> None:
    order = gateway_order(members.items())
    assert sorted(order) == sorted(members)
    public = [n for n in order if not members[n]]
    assert order == public + [n for n in order if members[n]]  # public first
    assert public == sorted(public) and order[len(public) :] == sorted(order[len(public) :])


# The Judge: a standby taking over


def test_no_decision_from_a_single_lost_round() -> None:
    judge = Judge("gw-b", grace=0.0)
    assert run(judge, [AGAINST], EPOCH_1) == []


def test_a_standby_takes_over_after_misses_rounds_with_the_reason() -> None:
    judge = Judge("gw-b", grace=0.0)
    got = run(judge, [AGAINST] * MISSES, EPOCH_1)
    assert got == [
        ActiveGateway(
            active="gw-b",
            epoch=2,
            since=1000.0 + (MISSES - 1) * TICK,
            by="gw-b",
            reason="active gw-a not forwarding: 3 probes through it to sites x, y lost while the tunnels answered",
        )
    ]
    assert decode_active(got[0].encode(), SITE, GATEWAYS) == got[0]


def test_one_good_round_starts_the_count_again() -> None:
    judge = Judge("gw-b", grace=0.0)
    assert run(judge, [AGAINST, AGAINST, FINE, AGAINST, AGAINST], EPOCH_1) == []


def test_two_standbys_on_the_same_evidence_propose_the_same_next_epoch() -> None:
    """Both write with a compare on the value they read: etcd lets one of them win."""
    current = ActiveGateway(active="gw-a", epoch=7, since=1.0, by="gw-a", reason="")
    b, c = (
        run(Judge("gw-b", grace=0.0), [AGAINST] * MISSES, current),
        run(Judge("gw-c", grace=0.0), [AGAINST] * MISSES, current),
    )
    assert [p.epoch for p in b + c] == [8, 8]
    assert (b[0].active, c[0].active) == ("gw-b", "gw-c")


@pytest.mark.parametrize(
    ("health", "why"),
    [
        (Health(False, True, AGAINST.remotes), "its own forwarding is off"),
        (Health(True, False, AGAINST.remotes), "its device is down"),
        (Health(True, True, {"x": Remote(direct=False, via=False)}), "no remote site answers it directly"),
        (Health(True, True, {}), "no remote site probed"),
        (Health(True, True, {"x": Remote(direct=None, via=False)}), "no direct probe"),
        (Health(True, True, {"x": Remote(direct=True, via=None)}), "no via probe: no evidence"),
        (
            Health(True, True, {"x": Remote(direct=True, via=False), "y": Remote(direct=True, via=True)}),
            "one remote site still answers through the active",
        ),
    ],
)
def test_no_takeover_without_evidence_against_the_active(health: Health, why: str) -> None:
    assert run(Judge("gw-b", grace=0.0), [health] * (MISSES * 3), EPOCH_1) == [], why


def test_sites_not_reached_directly_are_no_evidence_either_way() -> None:
    """Site z is down altogether (its direct probe lost too): not held against the active."""
    health = Health(True, True, {**AGAINST.remotes, "z": Remote(direct=False, via=False)})
    [got] = run(Judge("gw-b", grace=0.0), [health] * MISSES, EPOCH_1)
    assert "to sites x, y lost" in got.reason


def test_a_reason_names_a_few_sites_and_counts_the_rest() -> None:
    many = Health(True, True, {f"site-{i:03d}": Remote(direct=True, via=False) for i in range(500)})
    [got] = run(Judge("gw-b", grace=0.0), [many] * MISSES, EPOCH_1)
    assert got.reason.endswith("site-006, site-007 and 492 more lost while the tunnels answered")
    assert decode_active(got.encode(), SITE, GATEWAYS) == got


def test_a_new_epoch_starts_the_count_again() -> None:
    judge = Judge("gw-c", grace=0.0)
    assert run(judge, [AGAINST] * (MISSES - 1), EPOCH_1) == []
    moved = ActiveGateway(active="gw-b", epoch=2, since=1000.2, by="gw-b", reason="")
    # The round in which it sees gw-b active was taken through gw-a: it counts for nothing.
    assert run(judge, [AGAINST] * MISSES, moved, start=1001.0) == []
    assert [p.epoch for p in run(judge, [AGAINST], moved, start=1002.0)] == [3]


def test_the_active_never_writes() -> None:
    judge = Judge("gw-b", grace=0.0)
    current = ActiveGateway(active="gw-b", epoch=4, since=1.0, by="gw-b", reason="")
    assert run(judge, [AGAINST] * 10 + [FINE] * 200, current) == []


def test_a_node_that_is_no_gateway_never_writes() -> None:
    assert run(Judge("node-1", grace=0.0), [AGAINST] * 10, EPOCH_1) == []


def test_no_key_nothing_to_do() -> None:
    judge = Judge("gw-b", grace=0.0)
    for i in range(10):
        judge.observe(i * TICK, AGAINST)
        assert judge.decide(i * TICK, None, GATEWAYS) is None


def test_an_active_that_is_no_longer_a_gateway_is_the_operators_to_replace() -> None:
    gone = ActiveGateway(active="gw-old", epoch=3, since=1.0, by="operator", reason="")
    assert run(Judge("gw-b", grace=0.0), [AGAINST] * 10, gone) == []


remotes = st.dictionaries(
    st.sampled_from(["x", "y", "z"]),
    st.builds(Remote, direct=st.sampled_from([True, False, None]), via=st.sampled_from([True, False, None])),
)
healths = st.builds(Health, forwarding=st.booleans(), device_up=st.booleans(), remotes=remotes) | st.sampled_from(
    [AGAINST, AGAINST, FINE]  # runs of evidence are rare at random
)


@given(st.lists(healths, max_size=30))
def test_a_standby_takes_over_only_after_misses_rounds_of_evidence(rounds: list[Health]) -> None:
    """The law behind the examples: gw-c (not preferred) proposes at a round only if that round
    and the MISSES - 1 before it all held evidence against the active."""
    judge = Judge("gw-c", grace=0.0)
    for i, health in enumerate(rounds):
        judge.observe(i * TICK, health)
        got = judge.decide(i * TICK, EPOCH_1, GATEWAYS)
        last = rounds[max(0, i - MISSES + 1) : i + 1]
        assert (got is not None) == (len(last) == MISSES and all(h.active_failing() for h in last))


def forwarding(remotes: dict[str, Remote]) -> Health:
    """A round in which the active forwards: every site answered directly answers through it too."""
    return Health(True, True, {s: Remote(r.direct, True if r.direct else r.via) for s, r in remotes.items()})


@given(st.lists(remotes.map(forwarding), max_size=40))
def test_a_healthy_active_is_never_replaced_by_a_standby(rounds: list[Health]) -> None:
    assert run(Judge("gw-b", grace=0.0), rounds, EPOCH_1) == []
    assert run(Judge("gw-c", grace=0.0), rounds, EPOCH_1) == []


# The Judge: the preferred gateway taking back


def healthy_for(seconds: float) -> list[Health]:
    return [FINE] * (round(seconds / TICK) + 1)


def test_the_preferred_takes_back_only_after_hold_down() -> None:
    by_b = ActiveGateway(active="gw-b", epoch=2, since=50.0, by="gw-b", reason="")
    judge = Judge("gw-a", grace=0.0)
    assert run(judge, healthy_for(HOLD_DOWN - TICK), by_b) == []
    [got] = run(judge, [FINE], by_b, start=1000.0 + HOLD_DOWN)
    assert got == ActiveGateway(
        active="gw-a", epoch=3, since=1000.0 + HOLD_DOWN, by="gw-a", reason="preferred gateway back, healthy for 10 s"
    )


def test_one_unhealthy_round_restarts_the_hold_down() -> None:
    by_b = ActiveGateway(active="gw-b", epoch=2, since=50.0, by="gw-b", reason="")
    flap = Health(True, True, {"x": Remote(direct=False, via=None)})
    judge = Judge("gw-a", grace=0.0)
    rounds = healthy_for(HOLD_DOWN - 1) + [flap] + healthy_for(HOLD_DOWN - TICK)
    assert run(judge, rounds, by_b) == []
    after_flap = 1000.0 + (len(healthy_for(HOLD_DOWN - 1)) + 1) * TICK
    [got, _] = run(judge, [FINE, FINE], by_b, start=1000.0 + len(rounds) * TICK)
    assert got.since == after_flap + HOLD_DOWN


def test_health_seen_before_a_pause_is_not_continuous() -> None:
    by_b = ActiveGateway(active="gw-b", epoch=2, since=50.0, by="gw-b", reason="")
    judge = Judge("gw-a", grace=0.0)
    assert run(judge, healthy_for(5), by_b) == []
    assert run(judge, healthy_for(HOLD_DOWN - TICK), by_b, start=1010.0) == []


@pytest.mark.parametrize(
    "health",
    [
        Health(False, True, FINE.remotes),
        Health(True, False, FINE.remotes),
        Health(True, True, {}),
        Health(True, True, {"x": Remote(direct=True, via=True), "y": Remote(direct=False, via=None)}),
    ],
)
def test_the_preferred_does_not_take_back_unless_healthy(health: Health) -> None:
    by_b = ActiveGateway(active="gw-b", epoch=2, since=50.0, by="gw-b", reason="")
    assert run(Judge("gw-a", grace=0.0), [health] * 300, by_b) == []


def test_a_standby_that_is_not_preferred_never_takes_back() -> None:
    by_b = ActiveGateway(active="gw-b", epoch=2, since=50.0, by="gw-b", reason="")
    assert run(Judge("gw-c", grace=0.0), [FINE] * 300, by_b) == []


def test_the_preferred_takes_over_at_once_from_an_active_that_does_not_forward() -> None:
    by_b = ActiveGateway(active="gw-b", epoch=2, since=50.0, by="gw-b", reason="")
    [got] = run(Judge("gw-a", grace=0.0), [AGAINST] * MISSES, by_b)
    assert got.reason.startswith("active gw-b not forwarding")


def test_a_judge_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="misses 0 must be"):
        Judge("gw-a", misses=0)
    with pytest.raises(ValueError, match="hold_down -1.0 ≥ 0"):
        Judge("gw-a", hold_down=-1.0)
    with pytest.raises(ValueError, match="max_gap 0.0 > 0"):
        Judge("gw-a", max_gap=0.0)


# The grace for an active gateway never seen forwarding


def test_an_active_never_seen_forwarding_is_given_the_grace_while_the_site_comes_up() -> None:
    """At `lab up` a standby probes before the active's routes exist: lost probes then are no evidence
    until one probe through the active has answered, or GRACE has passed."""
    judge = Judge("gw-b", grace=5.0)
    assert run(judge, [AGAINST] * 20, EPOCH_1) == []  # 2.5 s: within the grace
    [got] = run(judge, [AGAINST] * 30, EPOCH_1, start=1000.0 + 20 * TICK)[:1]  # past 5 s: taken over
    assert got.active == "gw-b" and got.epoch == 2


def test_once_seen_forwarding_the_active_is_judged_at_once() -> None:
    judge = Judge("gw-b", grace=60.0)
    assert run(judge, [FINE, *([AGAINST] * (MISSES - 1))], EPOCH_1) == []
    [got] = run(judge, [AGAINST], EPOCH_1, start=1000.0 + MISSES * TICK)
    assert got.active == "gw-b"


def test_a_new_active_must_be_seen_forwarding_again() -> None:
    judge = Judge("gw-c", grace=60.0)
    run(judge, [FINE], EPOCH_1)
    by_b = ActiveGateway(active="gw-b", epoch=2, since=101.0, by="gw-b", reason="takeover")
    assert run(judge, [AGAINST] * 10, by_b, start=1001.0) == []  # gw-b not yet seen forwarding
