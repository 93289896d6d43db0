"""Rendered files read back the way their consumers read them — the other half of "the lab runs
what gets deployed".

- A node's tunnel: from its wg-quick file (`[Interface]` Address, MTU, ListenPort; every peer's
  AllowedIPs is also a route, as wg-quick installs them), or from its Talos `WireguardConfig`
  document (`routes` are the only routes Talos makes).
- A cluster's datapath: from its Cilium values, with Cilium's own MTU rules (pkg/mtu: a tunnel
  takes 50, WireGuard encryption 80 more, IPsec 77).

The lab configures every tunnel from these, the fidelity checks of `crossmesh test` compare the
running devices with them, and tests derive each pair class's encapsulation, encryption and MTU from
them alone. Pure: text in, data out; a file that does not parse raises ReadbackError.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

CILIUM_TUNNEL_OVERHEAD = 50  # pkg/mtu TunnelOverhead
CILIUM_ENCRYPTION_OVERHEAD = {"wireguard": 80, "ipsec": 77}  # pkg/mtu WireguardOverhead, EncryptionIPsecOverhead


class ReadbackError(ValueError):
    """A rendered file that does not read back."""


@dataclass(frozen=True, slots=True)
class RenderedPeer:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]  # sorted
    keepalive: int


@dataclass(frozen=True, slots=True)
class RenderedTunnel:
    node: str
    source: str  # the file it was read from
    private_key: str
    listen_port: int
    mtu: int
    addresses: tuple[str, ...]
    peers: dict[str, RenderedPeer]  # by public key
    routes: tuple[str, ...]  # destinations routed into the device, sorted


@dataclass(frozen=True, slots=True)
class RenderedDatapath:
    cluster: str
    source: str
    routing: str  # tunnel | native
    encapsulation: str | None  # vxlan | geneve; None when native
    encryption: str | None  # Cilium's own: wireguard | ipsec; None when off
    base_mtu: int  # the `MTU` value
    pod_mtu: int  # what Cilium gives the pods' routes


def _text(files: Mapping[str, Any], path: str) -> str | None:
    f = files.get(path)
    if f is None:
        return None
    return f if isinstance(f, str) else str(f.content)


def node_tunnel(files: Mapping[str, Any], node: str, interface: str = "wg-crossmesh") -> RenderedTunnel | None:
    """The node's tunnel as its rendered files give it, None when they give it none."""
    talos = _text(files, f"nodes/{node}/talos.yaml")
    if talos is not None:
        for doc in yaml.safe_load_all(talos):
            if isinstance(doc, dict) and doc.get("kind") == "WireguardConfig" and doc.get("name") == interface:
                return _from_talos(node, f"nodes/{node}/talos.yaml", doc)
    conf = _text(files, f"nodes/{node}/{interface}.conf")
    if conf is not None:
        return _from_wg_quick(node, f"nodes/{node}/{interface}.conf", conf)
    return None


def _from_talos(node: str, source: str, doc: dict[str, Any]) -> RenderedTunnel:
    try:
        peers = {}
        for p in doc.get("peers") or []:
            keepalive = str(p.get("persistentKeepaliveInterval", "0s"))
            peers[p["publicKey"]] = RenderedPeer(
                p["publicKey"],
                p.get("endpoint"),
                tuple(sorted(p.get("allowedIPs") or [])),
                int(keepalive.removesuffix("s") or 0),
            )
        return RenderedTunnel(
            node=node,
            source=source,
            private_key=doc["privateKey"],
            listen_port=int(doc["listenPort"]),
            mtu=int(doc["mtu"]),
            addresses=tuple(a["address"] for a in doc.get("addresses") or []),
            peers=peers,
            routes=tuple(sorted(r["destination"] for r in doc.get("routes") or [])),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ReadbackError(f"{source}: WireguardConfig does not read back: {err}") from err


def _from_wg_quick(node: str, source: str, text: str) -> RenderedTunnel:
    iface: dict[str, str] = {}
    peers: dict[str, RenderedPeer] = {}
    current: dict[str, str] | None = None

    def flush() -> None:
        if current is not None:
            key = current.get("PublicKey")
            if not key:
                raise ReadbackError(f"{source}: a [Peer] without PublicKey")
            allowed = tuple(sorted(a.strip() for a in current.get("AllowedIPs", "").split(",") if a.strip()))
            peers[key] = RenderedPeer(
                key, current.get("Endpoint"), allowed, int(current.get("PersistentKeepalive", "0"))
            )

    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line in ("[Interface]", "[Peer]"):
            flush()
            current = {} if line == "[Peer]" else None
            continue
        if "=" not in line:
            raise ReadbackError(f"{source}: line {line!r} is neither a section nor KEY = VALUE")
        key, value = (p.strip() for p in line.split("=", 1))
        (iface if current is None else current)[key] = value
    flush()
    try:
        routes = (
            () if iface.get("Table") == "off" else tuple(sorted({a for p in peers.values() for a in p.allowed_ips}))
        )
        return RenderedTunnel(
            node=node,
            source=source,
            private_key=iface["PrivateKey"],
            listen_port=int(iface.get("ListenPort", "0")),
            # crossmesh always states it; without, wg-quick takes its endpoint route's MTU − 80
            mtu=int(iface["MTU"]),
            addresses=tuple(a.strip() for a in iface.get("Address", "").split(",") if a.strip()),
            peers=peers,
            routes=routes,
        )
    except (KeyError, ValueError) as err:
        raise ReadbackError(f"{source}: [Interface] does not read back: {err}") from err


def cluster_datapath(files: Mapping[str, Any], cluster: str) -> RenderedDatapath | None:
    """The cluster's datapath as Cilium reads its values, None for a cluster without Cilium values."""
    source = f"clusters/{cluster}/cilium-values.yaml"
    text = _text(files, source)
    if text is None:
        return None
    values = yaml.safe_load(text) or {}
    routing = values.get("routingMode") or "tunnel"  # the chart's "" means tunnel
    encapsulation = (values.get("tunnelProtocol") or "vxlan") if routing == "tunnel" else None
    enc = values.get("encryption") or {}
    encryption = (enc.get("type") or "ipsec") if enc.get("enabled") else None
    base = values.get("MTU") or 0
    if not base:
        raise ReadbackError(f"{source}: no MTU — Cilium would guess it from the node's devices")
    pod = base - (CILIUM_TUNNEL_OVERHEAD if encapsulation else 0) - CILIUM_ENCRYPTION_OVERHEAD.get(encryption or "", 0)
    return RenderedDatapath(cluster, source, routing, encapsulation, encryption, base, pod)


@dataclass(frozen=True, slots=True)
class InventoryNode:
    """What the mesh file says of a node — the one input besides the rendered files."""

    name: str
    cluster: str
    site: str
    address: str


@dataclass(frozen=True, slots=True)
class DerivedClass:
    cluster: str
    name: str  # same-node | same-site | cross-site | cross-cluster
    encapsulation: str  # none | vxlan | geneve
    encryptions: int  # how many layers encrypt a pod packet of this class
    mtu: int  # the largest pod packet every pair of the class carries


def _carrier(src: InventoryNode, dst: InventoryNode, site_mates: list[str], routed: dict[str, Any]) -> Any:
    """The tunnel that carries packets from node `src` to node `dst`'s address: src's own when it routes
    that address, else that of the node of src's site that does (its gateway); None when none does.
    `routed`: node → (its tunnel, the networks routed into it)."""
    target = ipaddress.ip_address(dst.address)
    for name in [src.name, *(n for n in site_mates if n != src.name)]:
        tunnel, nets = routed.get(name, (None, ()))
        if tunnel is not None and any(target in net for net in nets):
            return tunnel
    return None


def derive(files: Mapping[str, Any], inventory: list[InventoryNode]) -> list[DerivedClass]:
    """Each pair class of each Cilium cluster as the rendered files make it: encapsulation and encryption
    from the Cilium values, the pod MTU by Cilium's rules, bounded by every WireGuard tunnel a pair's
    VXLAN packets cross (the wg-quick / Talos MTU of the node or of its site's gateway)."""
    tunnels = {n.name: node_tunnel(files, n.name) for n in inventory}
    routed = {
        name: (t, tuple(ipaddress.ip_network(r) for r in t.routes)) for name, t in tunnels.items() if t is not None
    }
    site_mates: dict[str, list[str]] = {}
    for n in inventory:
        site_mates.setdefault(n.site, []).append(n.name)
    datapaths = {c: cluster_datapath(files, c) for c in sorted({n.cluster for n in inventory})}
    out = []
    for cluster, dp in datapaths.items():
        if dp is None:
            continue
        cni_overhead = dp.base_mtu - dp.pod_mtu
        cni_encrypts = 1 if dp.encryption else 0
        encap = dp.encapsulation or "none"
        mine = [n for n in inventory if n.cluster == cluster]
        found: dict[str, tuple[int, int]] = {"same-node": (dp.pod_mtu, 0)}  # never leaves the node
        for a in mine:
            for b in inventory:
                if b.name == a.name or datapaths.get(b.cluster) is None:
                    continue
                kind = "cross-cluster" if b.cluster != cluster else "same-site" if a.site == b.site else "cross-site"
                mtu, layers = dp.pod_mtu, cni_encrypts
                if a.site != b.site:
                    carrier = _carrier(a, b, site_mates[a.site], routed)
                    if carrier is None:
                        continue  # not connected (both behind NAT): no class member
                    mtu, layers = min(mtu, carrier.mtu - cni_overhead), layers + 1
                low, most = found.get(kind, (mtu, layers))
                found[kind] = (min(low, mtu), max(most, layers))
        out += [DerivedClass(cluster, k, "none" if k == "same-node" else encap, e, m) for k, (m, e) in found.items()]
    return out
