"""What an agent touches on its node, behind one small protocol: the WireGuard device, the
device's link settings, the agent's routes, and the datagrams that start handshakes.

`Kernel` is the real thing (wireguard-go's control socket or `wg`, rtnetlink, a namespace in
the lab); `Fake` keeps the same state in memory, so the agent's decisions — what it applies,
when it initiates, what it refuses — are tested without root, as httpx ships MockTransport.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, Protocol

from crossmesh.drivers import iproute
from crossmesh.drivers.lab import wireguard
from crossmesh.drivers.lab.wireguard import DeviceConf, PeerConf

AGENT_ROUTE_PROTO = 100  # the lab's own routes use 99; these belong to the agent
AGENT_VIA_PROTO = 101  # the agent's routes via its site's active gateway (topology gateways)
FORWARDING = "net/ipv4/ip_forward"

PeerStats = dict[str, wireguard.PeerStats]  # public key → (handshake, rx, tx, endpoint)


class Dataplane(Protocol):
    def running(self) -> bool:
        """Whether the WireGuard device answers."""

    def start(self) -> None:
        """Start the device (the lab's wireguard-go); raise where the agent cannot (a real node)."""

    def reconcile(self, desired: DeviceConf) -> list[str]:
        """Bring the device's key, port and peers to `desired`, changing only the difference."""

    def peer_stats(self) -> PeerStats:
        """Each peer's latest handshake, bytes and endpoint ({} when the device does not answer)."""

    def link(self) -> dict[str, Any] | None:
        """The device's link as `ip -j addr show dev` gives it (mtu, flags, addr_info), None if absent."""

    def link_commands(self, commands: list[str]) -> None:
        """`ip -batch` lines for the device (mtu, up, address)."""

    def routes(self) -> dict[str, str | None]:
        """The agent's routes (destination → device) as the kernel has them."""

    def set_routes(self, replace: list[str], delete: list[str]) -> None:
        """Routes of `replace` through the device, `delete` withdrawn, in one go."""

    def poke(self, addresses: list[str]) -> None:
        """One datagram to each address through the device: WireGuard initiates a handshake."""

    def via_routes(self) -> dict[str, str]:
        """The agent's routes via a gateway (destination → gateway address) as the kernel has them."""

    def set_via_routes(self, replace: dict[str, str], delete: list[str]) -> None:
        """Routes of `replace` (destination → gateway address), `delete` withdrawn, in one go."""

    def forwarding(self) -> bool:
        """Whether the node forwards IPv4 (a gateway that does not carries nothing)."""


@dataclass
class Kernel:
    """The node's real device and routes; `namespace` None on a real node (the agent runs where
    the device is)."""

    ifname: str
    namespace: str | None
    log: Path

    def running(self) -> bool:
        return wireguard.is_running(self.ifname)

    def start(self) -> None:
        if not self.namespace:
            raise RuntimeError(f"WireGuard device {self.ifname} does not answer")
        wireguard.start(self.namespace, self.ifname, self.log)

    def reconcile(self, desired: DeviceConf) -> list[str]:
        return wireguard.reconcile(self.ifname, desired)

    def peer_stats(self) -> PeerStats:
        return wireguard.peer_stats(self.ifname) or {}

    def link(self) -> dict[str, Any] | None:
        shown = iproute.show(self.namespace, ["addr", "show", "dev", self.ifname])
        return shown[0] if shown else None

    def link_commands(self, commands: list[str]) -> None:
        iproute.batch(self.namespace, commands)

    def routes(self) -> dict[str, str | None]:
        shown = iproute.show(self.namespace, ["route", "show", "table", "main", "proto", str(AGENT_ROUTE_PROTO)])
        return {str(IPv4Network(r["dst"])): r.get("dev") for r in shown or []}

    def set_routes(self, replace: list[str], delete: list[str]) -> None:
        iproute.set_routes(self.namespace, self.ifname, replace, delete, AGENT_ROUTE_PROTO)

    def poke(self, addresses: list[str]) -> None:
        wireguard.poke(self.namespace, addresses)

    def via_routes(self) -> dict[str, str]:
        shown = iproute.show(self.namespace, ["route", "show", "table", "main", "proto", str(AGENT_VIA_PROTO)])
        return {str(IPv4Network(r["dst"])): r.get("gateway", "") for r in shown or []}

    def set_via_routes(self, replace: dict[str, str], delete: list[str]) -> None:
        iproute.set_via_routes(self.namespace, replace, delete, AGENT_VIA_PROTO)

    def forwarding(self) -> bool:
        if self.namespace:
            from crossmesh.drivers.lab import netns

            return netns.read_sysctl(self.namespace, FORWARDING) == "1"
        return Path("/proc/sys", FORWARDING).read_text().strip() == "1"


@dataclass
class Fake:
    """A device and routing table in memory, with what the agent did to them recorded."""

    ifname: str = "wg-fake"
    alive: bool = True
    device: DeviceConf = field(default_factory=lambda: DeviceConf("", 0, {}))
    mtu: int = 1420
    up: bool = False
    addresses: set[str] = field(default_factory=set)
    table: dict[str, str | None] = field(default_factory=dict)
    stats: PeerStats = field(default_factory=dict)
    pokes: list[list[str]] = field(default_factory=list)
    via: dict[str, str] = field(default_factory=dict)  # the agent's routes via a gateway
    forwards: bool = True
    reconciles: int = 0
    starts: int = 0

    def running(self) -> bool:
        return self.alive

    def start(self) -> None:
        self.alive, self.device, self.starts = True, DeviceConf("", 0, {}), self.starts + 1

    def reconcile(self, desired: DeviceConf) -> list[str]:
        wireguard.check(desired)  # what the real device would refuse, refused here too
        self.reconciles += 1
        before, self.device = self.device, desired
        changes = [f"peer {k[:8]}… added or updated" for k, p in desired.peers.items() if before.peers.get(k) != p]
        changes += [f"peer {k[:8]}… removed" for k in before.peers.keys() - desired.peers.keys()]
        if before.private_key != desired.private_key or before.listen_port != desired.listen_port:
            changes.append("key or port set")
        return changes

    def peer_stats(self) -> PeerStats:
        return dict(self.stats)

    def link(self) -> dict[str, Any] | None:
        if not self.alive:
            return None
        info = [{"family": "inet", "local": a} for a in sorted(self.addresses)]
        return {"mtu": self.mtu, "flags": ["UP"] if self.up else [], "addr_info": info}

    def link_commands(self, commands: list[str]) -> None:
        for c in commands:
            words = c.split()
            if words[:2] == ["link", "set"] and "mtu" in words:
                self.mtu = int(words[words.index("mtu") + 1])
            elif words[:2] == ["link", "set"] and words[-1] == "up":
                self.up = True
            elif words[:2] == ["addr", "replace"]:
                self.addresses.add(words[2].split("/")[0])

    def routes(self) -> dict[str, str | None]:
        return dict(self.table)

    def set_routes(self, replace: list[str], delete: list[str]) -> None:
        for dst in delete:
            self.table.pop(dst, None)
        self.table.update(dict.fromkeys(replace, self.ifname))

    def poke(self, addresses: list[str]) -> None:
        if addresses:
            self.pokes.append(list(addresses))

    def via_routes(self) -> dict[str, str]:
        return dict(self.via)

    def set_via_routes(self, replace: dict[str, str], delete: list[str]) -> None:
        for dst in delete:
            self.via.pop(dst, None)
        self.via.update(replace)

    def forwarding(self) -> bool:
        return self.forwards

    @property
    def peers(self) -> dict[str, PeerConf]:
        return dict(self.device.peers)
