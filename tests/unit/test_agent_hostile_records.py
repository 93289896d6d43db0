"""Hostile node records: what anyone with write access to etcd may put under the agents' prefix.

The agent decodes every record strictly (exact types, canonical addresses, a parsed endpoint, a
size cap), holds it to what the mesh plans for that node (only key, endpoint and version may
change), and never lets one bad record disturb the others. The three records that hijacked a
running lab before (issue 18) are here, against the plan of examples/three-clouds.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from crossmesh.agent import records
from crossmesh.agent.records import NodeRecord, RecordError
from crossmesh.drivers.lab import wireguard
from crossmesh.state import keys
from crossmesh.workspace import compile_mesh

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-clouds"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, records.PlannedNode], dict[str, NodeRecord]]:
    """The intent of examples/three-clouds and the record each of its nodes publishes."""
    folder = tmp_path_factory.mktemp("mesh") / "three-clouds"
    shutil.copytree(EXAMPLE, folder)
    compiled = compile_mesh(folder / "mesh.yaml", None)
    intent = records.intent_of(compiled.plan)
    pubs = compiled.store.public_keys(list(intent))
    recs = {n.name: NodeRecord(**records.record_of(n, pubs[n.name])) for n in compiled.plan.nodes if n.tunnel}
    return intent, recs


def raw(rec: NodeRecord, **changes: object) -> bytes:
    return json.dumps({**asdict(rec), **changes}).encode()


def test_published_records_decode_and_bind(mesh: tuple[dict[str, records.PlannedNode], dict[str, NodeRecord]]) -> None:
    intent, recs = mesh
    assert set(intent) == {"aws-talos-1", "azure-talos-1", "gcp-talos-1"}
    for name, rec in recs.items():
        assert records.decode(rec.encode()) == rec
        assert records.bind(rec, intent) is None
        assert records.take(name, rec.encode(), intent, None) == (rec, None)


HOSTILE_VALUES: list[tuple[str, object]] = (
    [
        (field, value)
        for field in ("name", "cluster", "site", "public_key", "address", "pod_cidr", "tunnel_address", "endpoint")
        for value in (None, True, 7, 1.5, [], {}, "", "x" * 300, "a\n[Peer]", "10.0.0.1\nAllowedIPs = 0.0.0.0/0")
        if not (field == "endpoint" and value is None)
    ]
    + [
        (field, value)
        for field in ("listen_port", "version")
        for value in (None, True, False, "51820", 1.0, -1, 0, 65536, 2**70, [], {})
        if not (field == "version" and value == 65536)
    ]
    + [
        ("address", "010.0.1.5"),
        ("address", " 10.0.1.5"),
        ("address", "::1"),
        ("pod_cidr", "10.10.0.1/24"),
        ("pod_cidr", "10.10.0.0/33"),
        ("tunnel_address", "100.64.0.1/32"),
        ("endpoint", "192.0.2.10"),
        ("endpoint", "192.0.2.10:0"),
        ("endpoint", "192.0.2.10:70000"),
        ("endpoint", "0.0.0.0:51820"),
        ("endpoint", "127.0.0.1:51820"),
        ("endpoint", "224.0.0.1:51820"),
        ("endpoint", "169.254.1.1:51820"),
        ("endpoint", "255.255.255.255:51820"),
        ("endpoint", "[2001:db8::1]:51820"),
        ("endpoint", "example.com:51820"),
        ("name", "Aws-Talos-1"),
        ("name", "-x"),
        ("public_key", "A" * 43 + "="),  # 44 characters of base64 but not 32 bytes? (it is: still a key)
    ]
)


@pytest.mark.parametrize(("field", "value"), HOSTILE_VALUES, ids=lambda v: repr(v)[:24])
def test_a_hostile_field_is_refused_by_name(
    mesh: tuple[dict[str, records.PlannedNode], dict[str, NodeRecord]], field: str, value: object
) -> None:
    intent, recs = mesh
    good = recs["azure-talos-1"]
    data = raw(good, **{field: value})
    if field == "public_key" and value == "A" * 43 + "=":
        assert records.decode(data).public_key == value  # a well-formed key is a key
        return
    with pytest.raises(RecordError) as err:
        records.decode(data)
    message = str(err.value)
    assert "\n" not in message and len(message) < 200
    assert field.split("_")[0] in message.replace("listen port", "listen_port"), message
    # Under the node's own key, the last good record stays: the node keeps its peers.
    assert records.take("azure-talos-1", data, intent, good) == (good, f"{message}; keeping its last good record")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'"a string"',
        b"[" * 3000 + b"]" * 3000,
        b'{"name": "x"}',
        b"{" + b'"a": 1, ' * 600 + b'"b": 2}',
    ],
    ids=["empty", "text", "not-utf8", "list", "null", "string", "deep", "partial", "oversized"],
)
def test_what_is_not_a_record_is_refused(data: bytes) -> None:
    with pytest.raises(RecordError):
        records.decode(data)


def test_extra_and_missing_fields_are_named(mesh: tuple[dict[str, records.PlannedNode], dict[str, NodeRecord]]) -> None:
    good = asdict(mesh[1]["aws-talos-1"])
    with pytest.raises(RecordError, match="unknown 'private_key'"):
        records.decode(json.dumps({**good, "private_key": "x"}).encode())
    del good["site"]
    with pytest.raises(RecordError, match="missing site"):
        records.decode(json.dumps(good).encode())


def test_hijack_endpoint_with_a_peer_section(
    mesh: tuple[dict[str, records.PlannedNode], dict[str, NodeRecord]],
) -> None:
    """Issue 18's first record: an endpoint holding newlines and a [Peer] section with another
    node's key and AllowedIPs 0.0.0.0/0. Refused, and even a configuration built around it by
    mistake never reaches the device."""
    intent, recs = mesh
    victim = recs["gcp-talos-1"]
    endpoint = f"203.0.113.99:51820\n\n[Peer]\nPublicKey = {victim.public_key}\nAllowedIPs = 0.0.0.0/0"
    attacker = replace(recs["azure-talos-1"], name="zz-attacker", endpoint=endpoint)
    rec, why = records.take("zz-attacker", attacker.encode(), intent, None)
    assert rec is None and why is not None and "endpoint" in why
    peer = wireguard.PeerConf(victim.public_key, endpoint, ("10.12.0.0/24",), 0)
    with pytest.raises(ValueError, match="endpoint"):
        wireguard.reconcile("cm-nonexistent", wireguard.DeviceConf("", 51820, {victim.public_key: peer}))
    uapi = wireguard.PeerConf(victim.public_key, "203.0.113.9:1\nallowed_ip=0.0.0.0/0", ("10.12.0.0/24",), 0)
    with pytest.raises(ValueError, match="endpoint"):
        wireguard.reconcile("cm-nonexistent", wireguard.DeviceConf("", 51820, {victim.public_key: uapi}))


def test_hijack_pod_cidr_covering_everything(
    mesh: tuple[dict[str, records.PlannedNode], dict[str, NodeRecord]],
) -> None:
    """Issue 18's second record: pod_cidr 128.0.0.0/1, under a new name and under a real node's key."""
    intent, recs = mesh
    good = recs["azure-talos-1"]
    stranger = replace(good, name="aaa-intruder", pod_cidr="128.0.0.0/1")
    assert records.take("aaa-intruder", stranger.encode(), intent, None) == (
        None,
        "node aaa-intruder is not in the mesh",
    )
    hijack = replace(good, pod_cidr="128.0.0.0/1")
    rec, why = records.take(good.name, hijack.encode(), intent, good)
    assert rec == good and why is not None
    assert why.startswith("pod_cidr '128.0.0.0/1' is not the mesh's ") and why.endswith("last good record")


def test_hijack_listen_port_null_sorting_first(
    mesh: tuple[dict[str, records.PlannedNode], dict[str, NodeRecord]],
) -> None:
    """Issue 18's third record put the agents into a reconnect loop (an uncaught TypeError while
    reading the prefix). It is refused alone; the others are all applied."""
    intent, recs = mesh
    bad = raw(recs["azure-talos-1"], name="aaa", listen_port=None)
    rec, why = records.take("aaa", bad, intent, None)
    assert rec is None and why == "listen_port is None, not an integer"
    ok, rejected = records.accept(recs["aws-talos-1"], {n: r for n, r in recs.items() if n != "aws-talos-1"})
    assert set(ok) == {"azure-talos-1", "gcp-talos-1"} and rejected == {}


def test_only_key_endpoint_and_version_may_change(
    mesh: tuple[dict[str, records.PlannedNode], dict[str, NodeRecord]],
) -> None:
    intent, recs = mesh
    good = recs["aws-talos-1"]
    moved = replace(
        good, public_key=keys.public_key(keys.generate_private_key()), endpoint="198.51.100.7:4500", version=9
    )
    assert records.bind(moved, intent) is None
    for field, value in [
        ("cluster", "cluster2"),
        ("site", "azure-we"),
        ("address", "10.0.1.99"),
        ("tunnel_address", "100.64.0.99"),
        ("listen_port", 51821),
    ]:
        why = records.bind(replace(good, **{field: value}), intent)  # type: ignore[arg-type]
        assert why is not None and why.startswith(f"{field} ") and "only its key and endpoint" in why


def test_a_node_behind_nat_cannot_publish_an_endpoint() -> None:
    planned = records.PlannedNode("n", "c", "s", "10.0.0.5", "10.9.0.0/24", "100.64.0.5", 51820, None)
    rec = NodeRecord("n", "c", "s", keys.public_key(keys.generate_private_key()), "10.0.0.5", "10.9.0.0/24",
                     "100.64.0.5", 51820, "192.0.2.5:51820")  # fmt: skip
    assert (
        records.bind(rec, {"n": planned})
        == "endpoint 192.0.2.5:51820: node n is behind NAT in the mesh (no publicAddress)"
    )


def _rec(
    name: str, n: int, *, key: str | None = None, endpoint: str | None = None, address: str | None = None
) -> NodeRecord:
    return NodeRecord(name, "c", f"s{n}", key or keys.public_key(keys.generate_private_key()), address or f"10.0.{n}.5",
                      f"10.{100 + n}.0.0/24", f"100.64.0.{n}", 51820, endpoint)  # fmt: skip


def test_a_reused_public_key_is_refused_for_the_newer_record() -> None:
    own, a = _rec("own", 1), _rec("a", 2)
    copy = _rec("b", 3, key=a.public_key)
    ok, rejected = records.accept(own, {"a": a, "b": copy}, {"a": 5, "b": 9})
    assert list(ok) == ["a"] and rejected == {"b": f"public key {a.public_key[:8]}… is node a's"}
    ok, rejected = records.accept(own, {"b": _rec("b", 3, key=own.public_key)}, {"b": 1})
    assert ok == {} and "is node own's" in rejected["b"]


def test_node_addresses_are_checked_for_overlap() -> None:
    own, a = _rec("own", 1), _rec("a", 2)
    same_address = _rec("b", 3, address=a.address)
    ok, rejected = records.accept(own, {"a": a, "b": same_address}, {"a": 1, "b": 2})
    assert list(ok) == ["a"] and rejected == {"b": f"{a.address}/32 overlaps node a's {a.address}/32"}


def test_an_endpoint_routed_into_the_tunnel_is_refused() -> None:
    own, a = _rec("own", 1), _rec("a", 2)
    looping = _rec("b", 3, endpoint="10.102.0.7:51820")  # inside a's pod CIDR
    ok, rejected = records.accept(own, {"a": a, "b": looping}, {"a": 1, "b": 2})
    assert list(ok) == ["a"]
    assert rejected == {"b": "endpoint 10.102.0.7:51820 is inside node a's 10.102.0.0/24, routed through the tunnel"}


def test_records_past_the_limit_are_refused_newest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "MAX_RECORDS", 3)
    own = _rec("own", 0)
    recs = {f"n{i}": _rec(f"n{i}", i + 1) for i in range(5)}
    ok, rejected = records.accept(own, recs, {f"n{i}": 10 - i for i in range(5)})
    assert set(ok) == {"n4", "n3", "n2"} and set(rejected) == {"n1", "n0"}
    assert "more than 3 node records" in rejected["n0"]


def test_intent_round_trip(mesh: tuple[dict[str, records.PlannedNode], dict[str, NodeRecord]]) -> None:
    intent = mesh[0]
    assert records.decode_intent(records.encode_intent(intent)) == intent
    with pytest.raises(ValueError):
        records.decode_intent('{"a": {"name": "b"}}')
