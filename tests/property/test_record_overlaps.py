"""The law of the agents' overlap check (src/crossmesh/agent/records.py `accept`): the sorted
interval index gives exactly the verdicts of checking every accepted network against every
other, on records drawn from a small address space so that overlaps and nesting (a tunnel
address inside a pod CIDR, a /23 over two /24s) are common. Every agent must reject the same
records for the same reasons, whatever order etcd delivered them in."""

from __future__ import annotations

from ipaddress import IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from crossmesh.agent import records


def reference(
    own: records.NodeRecord, recs: dict[str, records.NodeRecord], created: dict[str, int]
) -> tuple[list[str], dict[str, set[str]]]:
    """Every candidate network against every network taken so far: O(n²), obviously right.
    A rejected record maps to every node it clashes with (the message names one of them)."""
    taken = [(n, own.name) for n in claims(own)]
    ok: list[str] = []
    rejected: dict[str, set[str]] = {}
    for name in sorted(recs, key=lambda n: (created.get(n, 0), n)):
        if name == own.name:
            continue
        nets = claims(recs[name])
        clashes = {who for n in nets for t, who in taken if n.overlaps(t)}
        if clashes:
            rejected[name] = clashes
            continue
        taken += [(n, name) for n in nets]
        ok.append(name)
    return ok, rejected


def claims(rec: records.NodeRecord) -> list[IPv4Network]:
    return [IPv4Network(a, strict=False) for a in (rec.pod_cidr, rec.tunnel_address, rec.address)]


def record(name: str, cidr: tuple[int, int], tunnel: int) -> records.NodeRecord:
    """Node addresses from 10.0.0.0/21 too, so they clash with pod CIDRs and tunnel addresses."""
    third, prefix = cidr
    return records.NodeRecord(
        name=name,
        cluster="c",
        site="s",
        public_key=f"{name:x>43}=",
        address=f"10.0.{(tunnel * 7 + 3) % 2048 // 256}.{(tunnel * 7 + 3) % 256}",
        pod_cidr=str(IPv4Network(f"10.0.{third}.0/{prefix}", strict=False)),
        tunnel_address=f"10.0.{tunnel // 256}.{tunnel % 256}",
        listen_port=51820,
        endpoint=None,
    )


cidrs = st.tuples(st.integers(0, 7), st.sampled_from([22, 23, 24, 25]))
entries = st.lists(st.tuples(cidrs, st.integers(0, 8 * 256 - 1), st.integers(0, 50)), min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(own=st.tuples(cidrs, st.integers(0, 8 * 256 - 1)), drawn=entries)
def test_accept_matches_pairwise_check(
    own: tuple[tuple[int, int], int], drawn: list[tuple[tuple[int, int], int, int]]
) -> None:
    me = record("own", *own)
    recs = {f"n{i}": record(f"n{i}", c, t) for i, (c, t, _) in enumerate(drawn)}
    created = {f"n{i}": rev for i, (_, _, rev) in enumerate(drawn)}
    ok, rejected = records.accept(me, recs, created)
    want_ok, want_rejected = reference(me, recs, created)
    assert sorted(ok) == sorted(want_ok)
    assert set(rejected) == set(want_rejected)
    for name, why in rejected.items():
        assert any(f"overlaps node {who}'s" in why for who in want_rejected[name]), why
