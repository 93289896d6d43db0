"""crossmesh.nft: rulesets as data and their one serialiser. What the lab's tables are made of
renders to the exact nft syntax; a value of the wrong type or a bad name fails when the table is
built, in a unit test, not at `nft -f`; and no text a user wrote (pod, namespace and rule names in
comments) can break a ruleset — checked by nft itself when root and nft are there."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossmesh import nft
from crossmesh.drivers.lab import firewall, topology
from crossmesh.model.plan import Plan, PodPlan
from crossmesh.plan import prerequisites
from crossmesh.policy import compile as compile_policy
from crossmesh.policy.model import Direction
from crossmesh.workspace import compile_mesh

ROOT = Path(__file__).resolve().parents[2]
F = nft.Field
A = IPv4Address
T = nft.Type
HAS_NFT = os.geteuid() == 0 and shutil.which("nft") is not None and shutil.which("unshare") is not None
needs_nft = pytest.mark.skipif(not HAS_NFT, reason="nft --check needs root, nft and unshare (the lab's requirements)")


def nft_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "--net", "nft", "--check", "-f", "-"], input=text, capture_output=True, text=True, check=False
    )


def sample() -> nft.Table:
    """One of everything the lab uses."""
    key = (T.MARK, T.IPV4_ADDR, T.INET_PROTO, T.INET_SERVICE)
    block = nft.elements(key, [(257, (A("10.0.0.0"), A("10.0.0.255")), nft.Proto.TCP, (80, 90))])
    ident = nft.elements((T.IPV4_ADDR,), [(A("10.1.0.2"), 257)], data=T.MARK)
    chain = nft.Chain(
        "c",
        (
            nft.Rule((nft.Match(F.CT_STATE, (nft.CtState.ESTABLISHED, nft.CtState.RELATED)), nft.Verdict.ACCEPT)),
            nft.Rule(
                (
                    nft.Match(F.IIFNAME, "cm-1-v0"),
                    nft.Match(F.IP_SADDR, A("10.1.0.2"), negate=True),
                    nft.Counter(),
                    nft.Verdict.DROP,
                ),
                'say "hi"\n',
            ),  # fmt: skip
            nft.Rule(
                (nft.Match((F.META_MARK, F.IP_DADDR, F.META_L4PROTO, F.TH_DPORT), nft.SetRef("s")), nft.Verdict.RETURN)
            ),
            nft.Rule((nft.SetMark(F.CT_MARK, nft.MapLookup(F.CT_ORIGINAL_IP_DADDR, "m")),)),
            nft.Rule((nft.Match(F.IP_DADDR, nft.AnonSet((IPv4Network("10.0.0.0/8"), A("192.0.2.1")))), nft.Jump("d"))),
            nft.Rule(
                (
                    nft.Match(F.IP_DADDR, A("10.96.0.1")),
                    nft.Match(nft.dport("TCP"), 80),
                    nft.RandomDnat(((A("10.1.0.2"), 8080), (A("10.1.0.3"), 8080))),
                )
            ),  # fmt: skip
            nft.Rule((nft.Match(nft.dport("udp"), 53), nft.Reject(nft.RejectWith.PORT_UNREACHABLE))),
            nft.Rule((nft.Match(F.CT_STATUS, nft.CtStatus.DNAT), nft.Nat(nft.NatKind.SNAT, A("10.1.0.1")))),
            nft.Rule((nft.Match(nft.dport("tcp"), 8080), nft.Counter(), nft.Redirect(15001))),
            nft.Rule((nft.Match(F.CT_STATE, (nft.CtState.NEW,)), nft.Log(100, "cm:new:egress"), nft.Verdict.DROP)),
        ),
        nft.Base(nft.ChainType.NAT, nft.Hook.PREROUTING, nft.Priority.DSTNAT),
    )
    return nft.Table(
        "crossmesh",
        (
            nft.Map("m", (T.IPV4_ADDR,), T.MARK, (ident,)),
            nft.Set("s", key, (block,), interval=True, counter=True),
            nft.Set("e", (T.IFNAME,)),
            chain,
            nft.Chain("d"),
            nft.Chain("o", (), nft.Base(nft.ChainType.FILTER, nft.Hook.OUTPUT, -100)),
        ),
        comment="crossmesh:0123",
    )


EXPECTED = """table ip crossmesh {
  comment "crossmesh:0123"
  map m { type ipv4_addr : mark; elements = { 10.1.0.2 : 257 }; }
  set s { type mark . ipv4_addr . inet_proto . inet_service; flags interval; counter; \
elements = { 257 . 10.0.0.0-10.0.0.255 . tcp . 80-90 }; }
  set e { type ifname; }
  chain c {
    type nat hook prerouting priority dstnat; policy accept;
    ct state established,related accept
    iifname "cm-1-v0" ip saddr != 10.1.0.2 counter drop comment "say 'hi' "
    meta mark . ip daddr . meta l4proto . th dport @s return
    ct mark set ct original ip daddr map @m
    ip daddr { 10.0.0.0/8, 192.0.2.1 } jump d
    ip daddr 10.96.0.1 tcp dport 80 dnat ip addr . port to numgen random mod 2 \
map { 0 : 10.1.0.2 . 8080, 1 : 10.1.0.3 . 8080 }
    udp dport 53 reject with icmp type port-unreachable
    ct status dnat snat to 10.1.0.1
    tcp dport 8080 counter redirect to :15001
    ct state new log prefix "cm:new:egress" group 100 drop
  }
  chain d {
  }
  chain o {
    type filter hook output priority -100; policy accept;
  }
}
"""


def test_every_construct_renders_as_nft_writes_it() -> None:
    assert nft.render(sample()) == EXPECTED


@needs_nft
def test_the_sample_passes_nft_check() -> None:
    done = nft_check(nft.render(sample()))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "build",
    [
        lambda: nft.Chain("two words"),
        lambda: nft.Chain("c", (nft.Rule((nft.Jump("x; flush ruleset"),)),)),
        lambda: nft.Chain("c", (nft.Rule((nft.Match(F.IIFNAME, 'eth0" accept'),)),)),
        lambda: nft.Chain("c", (nft.Rule((nft.Match(F.IIFNAME, "a-name-over-15-bytes"),)),)),
        lambda: nft.Chain("c", (nft.Rule((nft.Match(F.IP_DADDR, nft.AnonSet(())),)),)),
        lambda: nft.Chain("c", (nft.Rule((nft.RandomDnat(()),)),)),
        lambda: nft.Set("s", (T.INET_SERVICE,), (nft.elements((T.INET_SERVICE,), [((1, 9),)]),)),
        lambda: nft.Set("s", (T.MARK,), (nft.elements((T.INET_SERVICE,), [(1,)]),)),
        lambda: nft.Chain("c", (nft.Rule((nft.Log(100, 'x" accept'),)),)),
        lambda: nft.Chain("c", (nft.Rule((nft.Log(100, "x" * 128),)),)),
        lambda: nft.Chain("c", (nft.Rule((nft.Log(100, ""),)),)),
        lambda: nft.Chain("c", (nft.Rule((nft.Log(65536, "cm:x"),)),)),
        lambda: nft.Chain("c", (nft.Rule((nft.Log(True, "cm:x"),)),)),
    ],
    ids=[
        "name",
        "jump",
        "quote-in-ifname",
        "long-ifname",
        "empty-set",
        "no-target",
        "interval-flag",
        "element-type",
        "quote-in-log-prefix",
        "long-log-prefix",
        "empty-log-prefix",
        "log-group",
        "log-group-bool",
    ],
)
def test_what_nft_would_refuse_fails_at_render(build: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each says why in its message
        nft.render(nft.Table("t", (build(),)))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("key", "row"),
    [
        ((T.MARK,), (-1,)),
        ((T.MARK,), ("257",)),
        ((T.INET_SERVICE,), (65536,)),
        ((T.INET_SERVICE,), ((90, 80),)),
        ((T.IPV4_ADDR,), ("10.0.0.1",)),
        ((T.INET_PROTO,), ("tcp",)),
        ((T.IFNAME,), ('a"b',)),
        ((T.MARK, T.MARK), (1,)),
        ((T.MARK, T.MARK, T.MARK), (1, 2, 3, 4)),
    ],
)
def test_an_element_of_the_wrong_type_or_width_is_refused(key: tuple[nft.Type, ...], row: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        nft.elements(key, [row])  # type: ignore[list-item]


# --- comments: where user text enters a ruleset ------------------------------------------------

odd = st.text(max_size=300)  # any code point but a surrogate


@given(odd)
def test_a_comment_is_always_valid_and_stable(text: str) -> None:
    got = nft.comment(text)
    assert len(got.encode()) <= nft.COMMENT_MAX
    assert '"' not in got and not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", got)
    assert nft.comment(got) == got  # idempotent: what the lab reads back is what it wrote
    if len(text.encode()) <= nft.COMMENT_MAX and not re.search(r'["\x00-\x1f\x7f-\x9f\u2028\u2029]', text):
        assert got == text


@given(st.text(min_size=1, max_size=40))
def test_long_comments_that_share_their_beginning_stay_apart(tail: str) -> None:
    start = "é" * 100
    a, b = nft.comment(start + tail), nft.comment(start + tail + "x")
    assert a != b


def _spoof_table(plan: Plan, name: str, namespace: str) -> nft.Table:
    node = plan.nodes[0]
    pods = [p for c in plan.clusters for p in c.pods if p.node == node.name]
    renamed = [(j, dataclasses.replace(p, name=f"{name}{j}", namespace=namespace)) for j, p in enumerate(pods)]
    return topology.node_nft(plan, node, renamed, node.pod_cidr.network_address + 1, frozenset(), "cm-ffff", None)


def _firewall_table(plan: Plan, name: str) -> nft.Table:
    """The forward accepts of every site's router, each prerequisite renamed `name` + its number."""
    accepts: list[nft.Rule] = []
    for k, site in enumerate(prerequisites.derive(plan)):
        renamed = tuple(dataclasses.replace(r, name=f"{name}{i}") for i, r in enumerate(site.inbound))
        accepts += firewall.inbound_accepts(f"cm-ffff-w{k}", dataclasses.replace(site, inbound=renamed))
    assert accepts
    return nft.Table("crossmesh", (nft.Chain("forward", tuple(accepts)),))


@pytest.fixture(scope="module")
def three_clouds(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    tmp = tmp_path_factory.mktemp("m")
    shutil.copytree(ROOT / "examples/three-clouds", tmp / "m", ignore=shutil.ignore_patterns(".crossmesh", "expected"))
    return compile_mesh(tmp / "m" / "mesh.yaml").plan


def _outside_comments(text: str) -> list[str]:
    return [re.sub(r' comment "[^"\n]*"$', "", line) for line in text.split("\n")]


@settings(max_examples=60, deadline=None)
@given(name=odd, namespace=odd, rule_name=odd)
def test_user_names_change_only_the_comments(three_clouds: Plan, name: str, namespace: str, rule_name: str) -> None:
    """Whatever a name holds, the table has the same lines, differing only inside their comments;
    and nft itself accepts it."""
    tables = (_spoof_table(three_clouds, name, namespace), _firewall_table(three_clouds, rule_name))
    plain = (_spoof_table(three_clouds, "web-", "default"), _firewall_table(three_clouds, "wireguard"))
    for table, reference in zip(tables, plain, strict=True):
        text = nft.render(table)
        assert _outside_comments(text) == _outside_comments(nft.render(reference))
        if HAS_NFT:
            done = nft_check(text)
            assert done.returncode == 0, done.stderr


def test_the_anti_spoofing_comment_is_the_one_nft_keeps() -> None:
    """`crossmesh test` reads the counter back by comment: what the rule carries is `spoof_comment`."""
    pod = PodPlan("c", "ns", 'we"ird\n' + "x" * 200, "n", A("10.1.0.2"), (), ())
    rule = nft.Rule((nft.Counter(),), topology.spoof_comment(pod))
    assert nft.rule(rule) == f'counter comment "{topology.spoof_comment(pod)}"'


def test_blocks_cut_and_joined_keep_their_elements_and_type() -> None:
    block = nft.elements((T.MARK,), [(1,), (2,), (3,)])
    assert nft.Elements.concat([block.part(2, 3), block.part(0, 2)]).printed == ("3", "1", "2")
    with pytest.raises(ValueError):  # noqa: PT011
        nft.Elements.concat([block, nft.elements((T.INET_SERVICE,), [(1,)])])


def test_the_identity_map_is_in_address_order_and_a_node_entry_wins() -> None:
    """A node's own addresses merge into the domain's pod entries in address order; an address
    both hold is the node's (as `{**pods, **nodes}` reads)."""
    pods = compile_policy._PodMarks({A("10.0.0.3"): 300, A("10.0.0.1"): 257, A("10.0.0.9"): 301})  # noqa: SLF001
    nodes = {A("10.0.0.1"): compile_policy.HOST, A("10.0.0.5"): compile_policy.REMOTE_NODE}
    policy = compile_policy.NodePolicy(pods, nodes, {d: set() for d in Direction}, {}, set())
    ident = compile_policy.nft_sets(policy)[0]
    assert isinstance(ident, nft.Map)
    assert nft.Elements.concat(ident.elements).printed == (
        "10.0.0.1 : 1",
        "10.0.0.3 : 300",
        "10.0.0.5 : 6",
        "10.0.0.9 : 301",
    )


# --- log prefixes: codes the flow daemon reads back -------------------------------------------


@given(st.text(max_size=200))
def test_a_log_prefix_is_taken_unchanged_or_refused(text: str) -> None:
    try:
        got = nft.log_prefix(text)
    except ValueError as err:
        assert "log prefix" in str(err)
        assert not re.fullmatch(r"[A-Za-z0-9:._-]{1,127}", text)
    else:
        assert got == text


@needs_nft
def test_nft_takes_the_longest_log_prefix_and_refuses_one_more() -> None:
    def table(prefix: str) -> str:
        base = nft.Base(nft.ChainType.FILTER, nft.Hook.OUTPUT, 0)
        text = nft.render(nft.Table("t", (nft.Chain("c", (nft.Rule((nft.Log(100, "x"),)),), base),)))
        return text.replace('"x"', f'"{prefix}"')

    done = nft_check(table("c" * 127))
    assert done.returncode == 0, done.stderr
    assert nft_check(table("c" * 128)).returncode != 0
