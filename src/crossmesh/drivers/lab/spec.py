"""The lab's desired state of one namespace, as data: its links, addresses, routes, neighbours,
sysctls and nftables table (topology.py builds them, reconcile.py applies them)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from crossmesh import nft


@dataclass(frozen=True, slots=True)
class Link:
    ifname: str
    kind: str  # veth | bridge | vxlan | tun (wireguard-go's device: only its MTU is ours)
    mtu: int = 1500
    master: str | None = None
    peer: str | None = None  # veth: peer name, created in peer_ns
    peer_ns: str | None = None
    peer_mtu: int | None = None
    vxlan_id: int | None = None
    vxlan_port: int | None = None
    vxlan_local: IPv4Address | None = None
    vxlan_dev: str | None = None
    mac: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    dst: IPv4Network
    dev: str
    gateway: IPv4Address | None = None
    onlink: bool = False


@dataclass(frozen=True, slots=True)
class Neighbour:
    dev: str
    address: IPv4Address
    mac: str
    vtep: IPv4Address  # FDB: where frames for `mac` go


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    role: str  # inet | router | node | pod | local
    links: tuple[Link, ...] = ()  # links this namespace creates (veth peers land elsewhere)
    addresses: tuple[tuple[str, IPv4Interface], ...] = ()
    routes: tuple[Route, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    nft: nft.Table | None = None  # serialised by `nft.render`
    owner: str = ""  # node or pod ref / site name this namespace stands for
    transparent: bool = False  # a mesh pod: the policy route of the proxy's transparent connections (meshcapture)
