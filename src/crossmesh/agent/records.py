"""Node records as agents publish them in etcd, and the desired WireGuard state derived
from them. Pure: the agent loop feeds records in and applies what comes out.

A record carries only what peers need — public key, endpoint, addresses, pod CIDR, site
— never a private key. Records are validated one by one: a record an agent cannot apply
(malformed key, pod CIDR overlapping another node's) is rejected with a reason and the
rest of the mesh keeps working.
"""

from __future__ import annotations

import bisect
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
    taken = _Intervals()
    taken.add(IPv4Network(own.pod_cidr), own.name)
    taken.add(IPv4Network(f"{own.tunnel_address}/32"), own.name)
    ok: dict[str, NodeRecord] = {}
    rejected: dict[str, str] = {}
    for name in sorted(records, key=lambda n: (age.get(n, 0), n)):
        rec = records[name]
        if name == own.name:
            continue
        nets = [IPv4Network(rec.pod_cidr), IPv4Network(f"{rec.tunnel_address}/32")]
        clash = next(((n, hit) for n in nets if (hit := taken.overlap(n)) is not None), None)
        if clash is not None:
            net, (other, who) = clash
            rejected[name] = f"{net} overlaps node {who}'s {other}"
            continue
        for n in nets:
            taken.add(n, name)
        ok[name] = rec
    return ok, rejected


class _Intervals:
    """Disjoint address ranges, sorted: overlap lookups in O(log n) (a mesh of 1,000 nodes
    is checked in milliseconds, not seconds)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.items: list[tuple[int, IPv4Network, str]] = []  # (last address, network, owner) by start

    def overlap(self, net: IPv4Network) -> tuple[IPv4Network, str] | None:
        first, last = int(net.network_address), int(net.broadcast_address)
        i = bisect.bisect_right(self.starts, last) - 1  # the range starting at or before `last`
        if i >= 0 and self.items[i][0] >= first:
            return self.items[i][1], self.items[i][2]
        return None

    def add(self, net: IPv4Network, owner: str) -> None:
        """Add `net`; where it overlaps (CIDRs nest: a node's tunnel address inside its own pod
        CIDR), the larger network stands for both, so the ranges stay disjoint."""
        first, last = int(net.network_address), int(net.broadcast_address)
        hit = self.overlap(net)
        if hit is not None and hit[0].prefixlen <= net.prefixlen:
            return  # inside a network already there
        lo = bisect.bisect_left(self.starts, first)
        hi = bisect.bisect_right(self.starts, last)
        del self.starts[lo:hi], self.items[lo:hi]  # networks inside `net`
        self.starts.insert(lo, first)
        self.items.insert(lo, (last, net, owner))


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
