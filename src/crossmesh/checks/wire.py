"""What the plan lets cross the internet, packet by packet (pure: a captured packet in, a name out).

Between sites the internet may carry only the tunnels the plan makes:

- **WireGuard**: UDP on the mesh's listen port between the public addresses of the sites that run
  WireGuard (a node's own public address, or its site router's when it is behind NAT);
- for every VPN connection, between its customer gateway's public address and its hub's outside
  address of one of its tunnels: **IKE** (UDP 500, or 4500 with RFC 3948's four zero bytes, the
  non-ESP marker), **NAT-T keepalives** (one 0xff byte on 4500) and **ESP in UDP 4500** (anything else
  on 4500 begins with an SPI, never zero).

Both the underlay capture (`encryption/internet-carries-only-planned-tunnels`) and `vpn/encrypted`
read packets through `carrier`, so the two cannot disagree about what a packet is.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address

from crossmesh.checks.probes import Packet
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.model.plan import Plan

UDP = 17
IKE_PORT, NAT_T_PORT = 500, 4500
NON_ESP_MARKER = b"\x00\x00\x00\x00"
KEEPALIVE = b"\xff"


class Carrier(StrEnum):
    WIREGUARD = "WireGuard"
    IKE = "IKE"
    KEEPALIVE = "NAT-T keepalive"
    ESP = "ESP-in-UDP"


@dataclass(frozen=True, slots=True)
class IpsecPeers:
    """One tunnel's two outside addresses: the customer gateway and the hub's endpoint."""

    connection: str
    tunnel: int
    customer: IPv4Address
    hub: IPv4Address

    def holds(self, p: Packet) -> bool:
        return {p.src, p.dst} == {self.customer, self.hub}


@dataclass(frozen=True, slots=True)
class Planned:
    """The plan's tunnels as the internet sees them."""

    wireguard: frozenset[IPv4Address]
    listen_port: int
    ipsec: tuple[IpsecPeers, ...]


def planned(plan: Plan, topo: LabTopology) -> Planned:
    wg_sites = {n.site for n in plan.nodes if n.tunnel is not None}
    publics = {n.public_address for n in plan.nodes if n.tunnel is not None and n.public_address}
    publics |= {a for s, a in topo.site_wan.items() if s in wg_sites}
    ipsec = tuple(
        IpsecPeers(c.name, t.index, c.customer_address, topo.vpn_outside[c.name, t.index])
        for c in plan.vpn
        for t in c.tunnels
        if (c.name, t.index) in topo.vpn_outside
    )
    return Planned(frozenset(publics), plan.listen_port, ipsec)


def nat_t(p: Packet) -> Carrier | None:
    """What an IKE-port UDP packet carries (RFC 3948 §2.2), or None when it is not one."""
    if p.proto != UDP:
        return None
    if p.sport == p.dport == IKE_PORT:
        return Carrier.IKE
    if p.sport != NAT_T_PORT or p.dport != NAT_T_PORT:
        return None
    ihl = (p.raw[0] & 0x0F) * 4
    payload = p.raw[ihl + 8 :]
    if payload == KEEPALIVE:
        return Carrier.KEEPALIVE
    if payload[:4] == NON_ESP_MARKER:
        return Carrier.IKE
    return Carrier.ESP if len(payload) >= 8 else None


def carrier(allowed: Planned, p: Packet) -> tuple[Carrier, IpsecPeers | None] | None:
    """What the packet is, and for IPsec whose tunnel; None: nothing the plan makes."""
    if (
        p.proto == UDP
        and allowed.listen_port in (p.sport, p.dport)
        and p.src in allowed.wireguard
        and p.dst in allowed.wireguard
    ):
        return Carrier.WIREGUARD, None
    kind = nat_t(p)
    if kind is None:
        return None
    peers = next((t for t in allowed.ipsec if t.holds(p)), None)
    return (kind, peers) if peers is not None else None


def describe(p: Packet) -> str:
    return f"proto {p.proto} {p.src}:{p.sport} -> {p.dst}:{p.dport}"
