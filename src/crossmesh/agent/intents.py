"""What the operator tells each node (`intents/<node>`) and what the node's agent answers
(`status/<node>`), as etcd holds them. Pure, and total on input: both are read from a store
others can write, so decoding checks every field and raises IntentError, nothing else.

An intent carries the node's planned record (what its own and everyone's records must agree
with, `records.PlannedNode`, with the sites a hub carries its site to), the tunnel MTU and
keepalive, and the desired revision it was computed from; a status, the revision the node runs,
whether its last apply succeeded and when it next rotates its key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from crossmesh.agent.records import OPTIONAL_PLANNED, PlannedNode, apart_sites, planned_json
from crossmesh.agent.untrusted import json_object
from crossmesh.model.mesh import MAX_SITES

# An intent is ~500 bytes; one whose site a hub joins to every other site of the largest mesh, each
# name 63 characters, holds (MAX_SITES − 1) × 67 more in `apart_sites`.
MAX_BYTES = 4096 + MAX_SITES * 67


class IntentError(ValueError):
    """An intent or status that is not one; the message says which field."""


@dataclass(frozen=True, slots=True)
class NodeIntent:
    revision: int  # the applied (desired) revision this intent was computed from
    node: PlannedNode
    mtu: int
    keepalive: int
    key_rotation: int = 0  # seconds between the node's key rotations (spec.wireguard.keyRotation); 0: off

    def encode(self) -> bytes:
        node = planned_json(self.node)
        data = {"revision": self.revision, "node": node, "mtu": self.mtu, "keepalive": self.keepalive}
        if self.key_rotation:
            data["key_rotation"] = self.key_rotation
        return json.dumps(data, sort_keys=True).encode()

    def rotation_period(self) -> float:
        return rotation_period(self.key_rotation, self.node.name)


def rotation_period(key_rotation: int, node: str) -> float:
    """Node `node`'s period for keyRotation `key_rotation` seconds (0: off), jittered by ±10 % from its
    name: the mesh never re-keys all at once, and a restarted agent keeps the same period."""
    if not key_rotation:
        return 0.0
    spread = int.from_bytes(hashlib.sha256(node.encode()).digest()[:8], "big") / 2**64
    return key_rotation * (0.9 + 0.2 * spread)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    revision: int  # the intent revision the node has applied (0: none yet)
    ok: bool
    error: str | None  # why the last apply failed, or why the node's intent is refused
    peers: int
    public_key: str
    at: float  # unix time of the report
    next_rotation: float | None = None  # unix time of the next scheduled key rotation; None: not scheduled

    def encode(self) -> bytes:
        data = asdict(self)
        if self.next_rotation is None:
            del data["next_rotation"]  # as agents without scheduled rotation wrote it
        return json.dumps(data, sort_keys=True).encode()


def _load(raw: bytes, what: str) -> dict[str, Any]:
    try:
        return json_object(raw, MAX_BYTES)
    except ValueError as err:
        raise IntentError(f"{what}: {err}") from None


def _field(data: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    if name not in data:
        raise IntentError(f"{what}: missing {name}")
    value = data[name]
    if type(value) not in kinds:
        raise IntentError(f"{what}: {name} is {type(value).__name__}, not {' or '.join(k.__name__ for k in kinds)}")
    return value


def _int(data: dict[str, Any], name: str, low: int, high: int, what: str) -> int:
    value: int = _field(data, name, (int,), what)
    if not low <= value <= high:
        raise IntentError(f"{what}: {name} {value} out of range {low}..{high}")
    return value


def _addresses(planned: PlannedNode, what: str) -> None:
    """Addresses are addresses: they reach `ip` commands and routes. Only a node without a tunnel
    (topology gateways: it runs an agent for its routes) has no tunnel address, and port 0."""
    checks: list[tuple[str, str | None, type]] = [
        ("address", planned.address, IPv4Address),
        ("pod_cidr", planned.pod_cidr, IPv4Network),
        ("public_address", planned.public_address, IPv4Address),
        ("tunnel_address", planned.tunnel_address or None, IPv4Address),
        ("site_network", planned.site_network or None, IPv4Network),
    ]
    for name, value, kind in checks:
        if value is None:
            continue
        try:
            kind(value)
        except ValueError:
            raise IntentError(f"{what}: {name} {value[:40]!r} is not an IPv4 {kind.__name__[4:].lower()}") from None
    tunnel = bool(planned.tunnel_address)
    if not (1 <= planned.listen_port <= 65535 if tunnel else planned.listen_port == 0):
        want = "1..65535" if tunnel else "0 (the node has no tunnel)"
        raise IntentError(f"{what}: listen_port {planned.listen_port} out of range {want}")
    if not tunnel and not planned.site_network:
        raise IntentError(f"{what}: no tunnel_address (only a node of a gateways mesh has none)")


def decode_intent(raw: bytes, key_node: str) -> NodeIntent:
    """The intent stored under `intents/<key_node>`."""
    what = f"intent of {key_node[:63]!r}"
    data = _load(raw, what)
    node = _field(data, "node", (dict,), what)
    kinds = {f.name: (str,) for f in fields(PlannedNode) if f.name != "apart_sites"} | {  # a list: below
        "listen_port": (int,),
        "public_address": (str, type(None)),
        "gateway": (bool,),
        "preferred": (bool,),
    }
    unknown = sorted(set(node) - set(kinds) - {"apart_sites"})
    if unknown:
        raise IntentError(f"{what}: node has unknown field {unknown[0][:40]!r}")
    given = {**OPTIONAL_PLANNED, **node}
    values = {name: _field(given, name, k, what) for name, k in kinds.items()}
    try:
        values["apart_sites"] = apart_sites(given["apart_sites"], values["site"])
    except ValueError as err:
        raise IntentError(f"{what}: {err}") from None
    planned = PlannedNode(**values)
    _addresses(planned, what)
    if planned.name != key_node:
        raise IntentError(f"{what}: names node {planned.name[:63]!r}")
    return NodeIntent(
        revision=_int(data, "revision", 1, 2**53, what),
        node=planned,
        mtu=_int(data, "mtu", 576, 9000, what),
        keepalive=_int(data, "keepalive", 0, 65535, what),
        key_rotation=_int(data, "key_rotation", 60, 365 * 86400, what) if "key_rotation" in data else 0,
    )


def judge(key_node: str, raw: bytes | None, previous: NodeIntent | None) -> tuple[NodeIntent | None, str | None]:
    """The intent to follow for node `key_node` after `raw` was put under its key (None: deleted),
    and why `raw` is refused (None when it is not). As with records, a refused intent never
    replaces the last good one: a bad write to a node's key does not take the node off the mesh;
    a delete does (the operator removed the node)."""
    if raw is None:
        return None, None
    try:
        return decode_intent(raw, key_node), None
    except IntentError as err:
        return previous, str(err) + ("; keeping its last good intent" if previous is not None else "")


def decode_status(raw: bytes, key_node: str) -> NodeStatus:
    """A node's status; `next_rotation` is optional (agents before scheduled rotation wrote none)."""
    what = f"status of {key_node[:63]!r}"
    data = _load(raw, what)
    error = _field(data, "error", (str, type(None)), what)
    rotation = _field(data, "next_rotation", (int, float, type(None)), what) if "next_rotation" in data else None
    return NodeStatus(
        revision=_int(data, "revision", 0, 2**53, what),
        ok=_field(data, "ok", (bool,), what),
        error=None if error is None else error[:500],
        peers=_int(data, "peers", 0, 2**31, what),
        public_key=_field(data, "public_key", (str,), what)[:64],
        at=float(_field(data, "at", (int, float), what)),
        next_rotation=None if rotation is None else float(rotation),
    )
