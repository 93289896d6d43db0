"""Node records as agents publish them in etcd, and the desired WireGuard state derived
from them. Pure: the agent loop feeds records in and applies what comes out.

A record carries only what peers need — public key, endpoint, addresses, pod CIDR, site
— never a private key. Records are validated one by one: a record an agent cannot apply
(malformed key, pod CIDR overlapping another node's) is rejected with a reason and the
rest of the mesh keeps working.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from crossmesh.model.plan import NodePlan
from crossmesh.state.keys import is_valid_key


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    cluster: str
    site: str
    public_key: str
    address: str
    pod_cidr: str
    tunnel_address: str
    listen_port: int
    endpoint: str | None  # "public:port", None behind NAT
    version: int = 1  # bumped on key rotation, so watchers see a change

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @property
    def natted(self) -> bool:
        return self.endpoint is None


def record_of(node: NodePlan, public_key: str) -> dict[str, Any]:
    """The record a planned node publishes (as a dict: the agent's configuration carries it)."""
    assert node.tunnel is not None  # noqa: S101 - only tunnel nodes run agents
    port = node.tunnel.listen_port
    return asdict(
        NodeRecord(
            name=node.name,
            cluster=node.cluster,
            site=node.site,
            public_key=public_key,
            address=str(node.address),
            pod_cidr=str(node.pod_cidr),
            tunnel_address=str(node.tunnel.address),
            listen_port=port,
            endpoint=f"{node.public_address}:{port}" if node.public_address else None,
        )
    )


class RecordError(ValueError):
    """A record that cannot be applied; the message says why."""


def decode(raw: bytes) -> NodeRecord:
    try:
        data: dict[str, Any] = json.loads(raw)
        rec = NodeRecord(**data)
    except (ValueError, TypeError) as err:
        raise RecordError(f"not a node record: {err}") from err
    if not is_valid_key(rec.public_key):
        raise RecordError(f"public key {rec.public_key[:12]!r}… is not a 32-byte base64 WireGuard key")
    try:
        IPv4Address(rec.address)
        IPv4Address(rec.tunnel_address)
        IPv4Network(rec.pod_cidr)
    except ValueError as err:
        raise RecordError(f"bad address in record: {err}") from err
    if not 1 <= rec.listen_port <= 65535:
        raise RecordError(f"listen port {rec.listen_port} out of range")
    return rec


@dataclass(frozen=True, slots=True)
class DesiredPeer:
    node: str
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    keepalive: int


def accept(
    own: NodeRecord, records: dict[str, NodeRecord], created: dict[str, int] | None = None
) -> tuple[dict[str, NodeRecord], dict[str, str]]:
    """Records this node can apply, and the rejected ones with their reason.

    Overlaps are resolved by age: `created` is each record's etcd create revision, the same for
    every agent, and the record published first keeps its addresses — a newcomer cannot take an
    existing node's pod CIDR, whatever its name. Name order breaks ties (and stands in for
    missing revisions), so every agent rejects the same record."""
    age = created or {}
    taken: list[tuple[IPv4Network, str]] = [
        (IPv4Network(own.pod_cidr), own.name),
        (IPv4Network(f"{own.tunnel_address}/32"), own.name),
    ]
    ok: dict[str, NodeRecord] = {}
    rejected: dict[str, str] = {}
    for name in sorted(records, key=lambda n: (age.get(n, 0), n)):
        rec = records[name]
        if name == own.name:
            continue
        nets = [IPv4Network(rec.pod_cidr), IPv4Network(f"{rec.tunnel_address}/32")]
        clash = next(((n, t, who) for n in nets for t, who in taken if n.overlaps(t)), None)
        if clash is not None:
            rejected[name] = f"{clash[0]} overlaps node {clash[2]}'s {clash[1]}"
            continue
        taken += [(n, name) for n in nets]
        ok[name] = rec
    return ok, rejected


def desired_peers(own: NodeRecord, records: dict[str, NodeRecord], keepalive: int) -> list[DesiredPeer]:
    """Full mesh: every node of every other site, except where both ends are behind NAT."""
    out = []
    for name, rec in sorted(records.items()):
        if rec.site == own.site or (own.natted and rec.natted):
            continue
        out.append(
            DesiredPeer(
                node=name,
                public_key=rec.public_key,
                endpoint=rec.endpoint,
                allowed_ips=(f"{rec.tunnel_address}/32", f"{rec.address}/32", rec.pod_cidr),
                keepalive=keepalive if own.natted else 0,
            )
        )
    return out


def setconf(private_key: str, listen_port: int, peers: list[DesiredPeer]) -> str:
    """The `wg setconf` form of the desired device."""
    lines = ["[Interface]", f"PrivateKey = {private_key}", f"ListenPort = {listen_port}"]
    for p in peers:
        lines += ["", "[Peer]", f"PublicKey = {p.public_key}", f"AllowedIPs = {', '.join(p.allowed_ips)}"]
        if p.endpoint:
            lines.append(f"Endpoint = {p.endpoint}")
        if p.keepalive:
            lines.append(f"PersistentKeepalive = {p.keepalive}")
    return "\n".join(lines) + "\n"
