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
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

from crossmesh.agent.untrusted import json_object, shown
from crossmesh.model.mesh import MAX_SITES
from crossmesh.model.plan import NodePlan, Plan
from crossmesh.plan import hubs as hub_rule
from crossmesh.plan import peers as peer_rule
from crossmesh.render.etcd import records_prefix
from crossmesh.state.keys import is_valid_key

_IP = TypeVar("_IP", IPv4Address, IPv4Network)


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
    return asdict(record_from(planned_of(node), public_key))


def record_from(planned: PlannedNode, public_key: str, version: int = 1) -> NodeRecord:
    """The record a node publishes: what the mesh plans for it, its public key and key version."""
    port = planned.listen_port
    return NodeRecord(
        name=planned.name,
        cluster=planned.cluster,
        site=planned.site,
        public_key=public_key,
        address=planned.address,
        pod_cidr=planned.pod_cidr,
        tunnel_address=planned.tunnel_address,
        listen_port=port,
        endpoint=f"{planned.public_address}:{port}" if planned.public_address else None,
        version=version,
    )


class RecordError(ValueError):
    """A record that cannot be applied; the message says why."""


RECORD_MAX_BYTES = 4096  # a record is ~400 bytes; anything much larger is not one
MAX_RECORDS = 10_000  # the documented node limit of a mesh: records past it are refused, newest first
ROUTES_PER_PEER = 3  # tunnel address, node address, pod CIDR: at most 30,000 agent routes

_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "cluster": (str,),
    "site": (str,),
    "public_key": (str,),
    "address": (str,),
    "pod_cidr": (str,),
    "tunnel_address": (str,),
    "listen_port": (int,),
    "endpoint": (str, type(None)),
    "version": (int,),
}
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ENDPOINT = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})")


def decode(raw: bytes) -> NodeRecord:
    """A record as etcd holds it → a NodeRecord whose every field is what it claims to be, or
    RecordError. Total: nothing a record holds raises anything else (the agent decodes records
    anyone with write access to etcd may have put there)."""
    try:
        data = json_object(raw, RECORD_MAX_BYTES)
    except ValueError as err:
        raise RecordError(f"not a node record: {err}") from None
    missing, unknown = sorted(set(_FIELDS) - set(data)), sorted(set(data) - set(_FIELDS))
    if missing or unknown:
        what = [f"missing {', '.join(missing)}"] if missing else []
        what += [f"unknown {', '.join(repr(k[:40]) for k in unknown[:5])}"] if unknown else []
        raise RecordError(f"not a node record: {'; '.join(what)}")
    for name, types in _FIELDS.items():
        value = data[name]
        if type(value) not in types:  # exact: JSON true is not the integer 1
            want = " or ".join("null" if t is type(None) else {str: "a string", int: "an integer"}[t] for t in types)
            raise RecordError(f"{name} is {shown(value)}, not {want}")
    rec = NodeRecord(**data)
    for name in ("name", "cluster", "site"):
        value = getattr(rec, name)
        if len(value) > 63 or not _DNS1123.fullmatch(value):
            raise RecordError(f"{name} {shown(value)} is not a DNS-1123 label")
    if not is_valid_key(rec.public_key):
        raise RecordError(f"public key {shown(rec.public_key)} is not a 32-byte base64 WireGuard key")
    for name in ("address", "tunnel_address"):
        _canonical(name, getattr(rec, name), IPv4Address)
    _canonical("pod_cidr", rec.pod_cidr, IPv4Network)
    if not 1 <= rec.listen_port <= 65535:
        raise RecordError(f"listen port {rec.listen_port} out of range 1..65535")
    if not 1 <= rec.version <= 2**53:
        raise RecordError(f"version {rec.version} out of range")
    if rec.endpoint is not None:
        parse_endpoint(rec.endpoint)
    return rec


def parse_endpoint(text: str) -> tuple[IPv4Address, int]:
    """`a.b.c.d:port` with an address WireGuard can send to; RecordError otherwise."""
    m = _ENDPOINT.fullmatch(text) if len(text) <= 21 else None
    if m is None:
        raise RecordError(f"endpoint {shown(text)} is not IPv4-address:port")
    address = _canonical("endpoint", m.group(1), IPv4Address)
    port = int(m.group(2))
    if not 1 <= port <= 65535:
        raise RecordError(f"endpoint port {port} out of range 1..65535")
    if address.is_unspecified or address.is_loopback or address.is_multicast or address.is_link_local:
        raise RecordError(f"endpoint {text} is not an address a peer can be reached at")
    if address.is_reserved:  # 240.0.0.0/4 and the broadcast address
        raise RecordError(f"endpoint {text} is in reserved space")
    return address, port


def _canonical(name: str, text: str, kind: type[_IP]) -> _IP:
    """The address or network `text` names, written the one way Python writes it back (no
    leading zeros, spaces or host bits: what the agent compares is what it applies)."""
    try:
        value = kind(text)
    except ValueError:
        raise RecordError(f"{name} {shown(text)} is not an IPv4 {kind.__name__[4:].lower()}") from None
    if str(value) != text:
        raise RecordError(f"{name} {shown(text)} is not written as {value}")
    return value


@dataclass(frozen=True, slots=True)
class PlannedNode:
    """What the mesh says of a node that runs an agent: a record must agree with it on all but
    its public key, endpoint and version."""

    name: str
    cluster: str
    site: str
    address: str
    pod_cidr: str
    tunnel_address: str
    listen_port: int
    public_address: str | None
    # Under `topology: gateways` only (their defaults otherwise, and left out of intents then, so a
    # full mesh's intents read as before): whether the node is a gateway, and its site's network —
    # what the site's active gateway carries for it.
    gateway: bool = False
    site_network: str = ""
    preferred: bool = False  # the mesh file's preferred gateway of its site
    # With hubs only (empty otherwise, and left out of intents then): the other sites a hub carries this
    # node's site to over IPsec (plan/hubs.py) — no WireGuard peers there, no routes via the gateway.
    apart_sites: tuple[str, ...] = ()


OPTIONAL_PLANNED: dict[str, object] = {  # fields an intent may leave out
    "gateway": False,
    "site_network": "",
    "preferred": False,
    "apart_sites": (),
}

BOUND_FIELDS = ("cluster", "site", "address", "pod_cidr", "tunnel_address", "listen_port")


def prefix(mesh: str) -> str:
    """The etcd prefix under which the nodes of mesh `mesh` publish their records (key: prefix + node)."""
    return records_prefix(mesh)


def planned_of(
    node: NodePlan, site_network: IPv4Network | None = None, apart_sites: tuple[str, ...] = ()
) -> PlannedNode:
    """A node of the plan that runs an agent, as records must match it; `site_network` under
    `topology: gateways` (the node's gateway flag and site network go with it, and a node without a
    tunnel runs an agent too, for its routes via the site's gateway: no tunnel address, port 0);
    `apart_sites`, the sites a hub carries its site to."""
    assert node.tunnel is not None or site_network is not None  # noqa: S101 - see intent_of
    return PlannedNode(
        name=node.name,
        cluster=node.cluster,
        site=node.site,
        address=str(node.address),
        pod_cidr=str(node.pod_cidr),
        tunnel_address="" if node.tunnel is None else str(node.tunnel.address),
        listen_port=0 if node.tunnel is None else node.tunnel.listen_port,
        public_address=None if node.public_address is None else str(node.public_address),
        gateway=site_network is not None and node.gateway,
        preferred=site_network is not None and node.preferred,
        site_network="" if site_network is None else str(site_network),
        apart_sites=apart_sites,
    )


def intent_of(plan: Plan) -> dict[str, PlannedNode]:
    """The nodes of the plan that run agents, as records must match them, each told the sites a hub
    carries its site to (the plan's site pairs: the planner's `apart`)."""
    gateways = plan.topology == "gateways"
    nets = {s.name: s.network for s in plan.sites}
    partners = hub_rule.partners(plan.site_pairs)
    return {
        node.name: planned_of(node, nets[node.site] if gateways else None, partners.get(node.site, ()))
        for node in plan.nodes
        if node.tunnel is not None or gateways
    }


def planned_json(planned: PlannedNode) -> dict[str, Any]:
    """A planned node as intents carry it: the gateway fields only where they are set."""
    data = asdict(planned)
    for name, default in OPTIONAL_PLANNED.items():
        if data[name] == default:
            del data[name]
    return data


def encode_intent(intent: dict[str, PlannedNode]) -> str:
    return json.dumps({name: planned_json(p) for name, p in sorted(intent.items())}, indent=0, sort_keys=True)


def apart_sites(value: object, site: str) -> tuple[str, ...]:
    """A node's `apart_sites` as an intent holds it (etcd's, the lab's file, a configuration: written by
    others) → the sites, or ValueError saying why: a list of at most MAX_SITES site names (DNS-1123
    labels), the node's own site not among them."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"apart_sites is {shown(value)}, not a list of site names")
    if len(value) > MAX_SITES:
        raise ValueError(f"apart_sites names {len(value)} sites, over the {MAX_SITES} of a mesh")
    for other in value:
        if type(other) is not str or len(other) > 63 or not _DNS1123.fullmatch(other):
            raise ValueError(f"apart_sites holds {shown(other)}, not a site name (a DNS-1123 label)")
        if other == site:
            raise ValueError(f"apart_sites names the node's own site {site!r}")
    return tuple(value)


def planned_from(fields: Mapping[str, Any]) -> PlannedNode:
    """A planned node from its fields as a file or configuration holds them (JSON: a list where the
    node holds a tuple); TypeError for missing or unknown fields, ValueError for bad `apart_sites`."""
    planned = PlannedNode(**fields)
    return replace(planned, apart_sites=apart_sites(planned.apart_sites, planned.site))


def decode_intent(text: str) -> dict[str, PlannedNode]:
    """The intent file the lab (or `crossmesh agent`) wrote; ValueError when it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the mesh intent is not a JSON object")
    try:
        out = {name: planned_from(fields) for name, fields in data.items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"the mesh intent is malformed: {err}") from None
    if any(p.name != name for name, p in out.items()):
        raise ValueError("the mesh intent names a node under another node's key")
    return out


def bind(rec: NodeRecord, intent: dict[str, PlannedNode]) -> str | None:
    """Why `rec` is not a record of the mesh, or None: a record may carry only a planned node's
    name with that node's planned cluster, site, addresses, pod CIDR and port."""
    planned = intent.get(rec.name)
    if planned is None:
        return f"node {rec.name} is not in the mesh"
    for name in BOUND_FIELDS:
        got, want = getattr(rec, name), getattr(planned, name)
        if got != want:
            return f"{name} {shown(got)} is not the mesh's {want} (a record may change only its key and endpoint)"
    if planned.public_address is None and rec.endpoint is not None:
        return f"endpoint {rec.endpoint}: node {rec.name} is behind NAT in the mesh (no publicAddress)"
    return None


def take(
    name: str, raw: bytes, intent: dict[str, PlannedNode], previous: NodeRecord | None
) -> tuple[NodeRecord | None, str | None]:
    """The record to apply for the key of node `name` after `raw` was put there, and why `raw`
    was refused (None when it was not). A refused record never replaces the last good record
    of that node: a bad write to a node's key does not take the node off its peers."""
    try:
        rec = decode(raw)
        if rec.name != name:
            raise RecordError(f"record names {shown(rec.name)} under the key of {name!r}")
        why = bind(rec, intent)
        if why is not None:
            raise RecordError(why)
    except RecordError as err:
        keep = previous if previous is not None and bind(previous, intent) is None else None
        return keep, str(err) + ("; keeping its last good record" if keep is not None else "")
    return rec, None


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

    Records are taken oldest first: `created` is each record's etcd create revision, the same for
    every agent, and the record published first keeps what it claims — a newcomer cannot take an
    existing node's pod CIDR, tunnel or node address, or public key, whatever its name. Name order
    breaks ties (and stands in for missing revisions), so every agent rejects the same record.
    Past MAX_RECORDS the newest are refused; an endpoint inside an address the mesh routes
    through the tunnel (WireGuard's own datagrams would loop into it) is refused."""
    age = created or {}
    taken = _Intervals()
    for net in _networks(own):
        taken.add(net, own.name)
    keys = {own.public_key: own.name}
    ok: dict[str, NodeRecord] = {}
    rejected: dict[str, str] = {}
    for name in sorted(records, key=lambda n: (age.get(n, 0), n)):
        rec = records[name]
        if name == own.name:
            continue
        if len(ok) >= MAX_RECORDS:
            rejected[name] = f"more than {MAX_RECORDS} node records (the limit of a mesh): the newest are refused"
            continue
        nets = _networks(rec)
        clash = next(((n, hit) for n in nets if (hit := taken.overlap(n)) is not None), None)
        if clash is not None:
            net, (other, who) = clash
            rejected[name] = f"{net} overlaps node {who}'s {other}"
            continue
        if rec.public_key in keys:
            rejected[name] = f"public key {rec.public_key[:8]}… is node {keys[rec.public_key]}'s"
            continue
        for n in nets:
            taken.add(n, name)
        keys[rec.public_key] = name
        ok[name] = rec
    for name, rec in list(ok.items()):
        if rec.endpoint is None:
            continue
        host = IPv4Network(rec.endpoint.rsplit(":", 1)[0])
        hit = taken.overlap(host)
        if hit is not None:
            del ok[name]
            rejected[name] = f"endpoint {rec.endpoint} is inside node {hit[1]}'s {hit[0]}, routed through the tunnel"
    return ok, rejected


def _networks(rec: NodeRecord) -> list[IPv4Network]:
    """What a record claims: its pod CIDR, its tunnel address and its node address."""
    return [IPv4Network(rec.pod_cidr), IPv4Network(f"{rec.tunnel_address}/32"), IPv4Network(f"{rec.address}/32")]


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


def is_gateways(planned: Mapping[str, PlannedNode]) -> bool:
    """Whether the mesh runs `topology: gateways` (its intents mark gateways; a full mesh's never do)."""
    return any(p.gateway for p in planned.values())


@dataclass(frozen=True, slots=True)
class GatewayView:
    """The gateways of a mesh as the agents hold them: from the intents, with each site's active
    gateway (etcd's choice where it names one of the site's gateways, else the preferred one)."""

    members: dict[str, peer_rule.Member]
    order: dict[str, tuple[str, ...]]
    active: dict[str, str]
    networks: dict[str, str]  # site → its network, as its gateways' intents give it

    @classmethod
    def of(cls, planned: Mapping[str, PlannedNode], chosen: Mapping[str, str]) -> GatewayView:
        members = {
            n: peer_rule.Member(p.name, p.site, p.public_address is None, p.gateway, p.preferred)
            for n, p in planned.items()
        }
        order = peer_rule.gateway_order(members.values())
        networks = {p.site: p.site_network for p in planned.values() if p.gateway}
        return cls(members, order, peer_rule.active_of(order, chosen), networks)

    def routes(self, node: str, planned: Mapping[str, PlannedNode]) -> dict[str, str]:
        """What `node` routes via its site's active gateway: each other site's network but those a hub
        carries → that gateway's node address ({} for the active gateway itself, and for a node the
        intents lack)."""
        me = self.members.get(node)
        gw = None if me is None else peer_rule.via_gateway(me, self.active)
        if me is None or gw is None:
            return {}
        apart = apart_of(planned, node)
        return {
            net: planned[gw].address
            for site, net in sorted(self.networks.items())
            if site != me.site and frozenset((me.site, site)) not in apart
        }


def apart_of(planned: Mapping[str, PlannedNode] | None, node: str) -> frozenset[frozenset[str]]:
    """The site pairs `node` leaves to the hubs, for the peer rule: from its own intent (the operator's
    word for this node), none without one — a mesh without hubs, or intents from before them."""
    me = None if planned is None else planned.get(node)
    return peer_rule.NOT_APART if me is None else peer_rule.apart_of(me.site, me.apart_sites)


def desired_peers(
    own: NodeRecord,
    records: dict[str, NodeRecord],
    keepalive: int,
    planned: Mapping[str, PlannedNode] | None = None,
    chosen: Mapping[str, str] | None = None,
) -> list[DesiredPeer]:
    """The planner's own rule (plan/peers.py): a full mesh, or under `topology: gateways` (the intents
    `planned` say so) the gateway rule with each site's active gateway from `chosen` (etcd's); either
    way no peer in a site a hub carries this node's site to (its intent's `apart_sites`)."""
    apart = apart_of(planned, own.name)
    if planned is not None and is_gateways(planned) and own.name in planned:
        return _gateway_peers(own, records, keepalive, planned, GatewayView.of(planned, chosen or {}), apart)
    out = []
    for name, rec in sorted(records.items()):
        if not peer_rule.is_peer(own.site, own.natted, rec.site, rec.natted, apart):
            continue
        out.append(
            DesiredPeer(
                node=name,
                public_key=rec.public_key,
                endpoint=rec.endpoint,
                allowed_ips=tuple(f"{a}/32" for a in peer_rule.carried(rec.tunnel_address, rec.address)),
                keepalive=peer_rule.keepalive(own.natted, keepalive),
            )
        )
    return out


def _gateway_peers(
    own: NodeRecord,
    records: dict[str, NodeRecord],
    keepalive: int,
    planned: Mapping[str, PlannedNode],
    view: GatewayView,
    apart: frozenset[frozenset[str]],
) -> list[DesiredPeer]:
    natted = {n: m.natted for n, m in view.members.items()}
    out = []
    for g in peer_rule.gateway_peers(view.members[own.name], natted, view.order, view.active, apart):
        rec = records.get(g.node)
        if rec is None:
            continue  # not published (yet), or refused
        carried = (f"{rec.tunnel_address}/32",) + ((planned[g.node].site_network,) if g.carries else ())
        out.append(
            DesiredPeer(g.node, rec.public_key, rec.endpoint, carried, peer_rule.keepalive(own.natted, keepalive))
        )
    return out
