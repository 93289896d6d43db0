"""Confirm a planned trace on the running lab: snapshot the counters of every hop's
device, send one real request along the path, snapshot again. A hop is confirmed
when its counter moved (interface packets, WireGuard peer bytes)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crossmesh.drivers.lab import netns, servicenat, vpn, wireguard
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.model.plan import Plan
from crossmesh.plan import vpngw
from crossmesh.plan.trace import Hop, Trace

# A hub's hops counted by a tunnel's CHILD_SA at one end (`transit.gateways` key side), in or out.
SA_HOPS = {
    "esp-out": (vpngw.CUSTOMER, "out"),
    "esp-cgw-in": (vpngw.CUSTOMER, "in"),
    "reply-cgw-in": (vpngw.CUSTOMER, "in"),
    "reply-cgw-out": (vpngw.CUSTOMER, "out"),
    "esp-in": (vpngw.HUB, "in"),
    "esp-hub-out": (vpngw.HUB, "out"),
    "reply-hub-out": (vpngw.HUB, "out"),
    "reply-hub-in": (vpngw.HUB, "in"),
}


@dataclass(frozen=True, slots=True)
class Counter:
    kind: str  # "link", "wg", "nft" or "sa" (a tunnel's CHILD_SA packets; namespace: the gateway's key)
    namespace: str
    device: str  # for "nft": the comment of the rule of table crossmesh whose packets are counted
    field: str  # rx_packets / tx_packets, rx / tx bytes for a WireGuard peer, "packets" for a rule
    peer_key: str = ""


def _index(name: str) -> str:
    return name.rsplit("-", 1)[1][1:]


def counter_for(hop: Hop, trace: Trace, plan: Plan, topo: LabTopology, first: bool, last: bool) -> Counter | None:
    p = topo.prefix
    if hop.device == "local":  # the client outside's veth to the internet, and its far end
        return Counter("link", topo.local_ns, f"{p}-lc", "tx_packets")
    if hop.device == "internet":
        return Counter("link", f"{p}-inet", f"{p}-li", "rx_packets")
    found = _hub_counter(hop, trace, plan, topo)
    if found is not None:
        return found
    if hop.device == "veth" and first:
        ep = topo.pod(trace.source)
        return Counter("link", ep.namespace, ep.ifname, "tx_packets")
    if hop.device == "veth" and last:
        ep = topo.pod(trace.backend)
        return Counter("link", ep.namespace, ep.ifname, "rx_packets")
    if hop.device in ("vxlan", "site"):
        ns = topo.node_ns[hop.node]
        dev = f"{p}-{'x' if hop.device == 'vxlan' else 'e'}{_index(ns)}"
        return Counter("link", ns, dev, "tx_packets")
    if hop.device == "wireguard":
        wg = next(d for d in topo.wireguard if d.node == hop.node)
        tunnel = plan.node(hop.node).tunnel
        key = next((q.public_key for q in (tunnel.peers if tunnel else ()) if q.node == hop.peer), "")
        return Counter("wg", wg.namespace, wg.ifname, "tx" if "encrypts" in hop.action else "rx", key)
    if hop.device == "nat":
        site = hop.where.removeprefix("router ")
        ns = topo.site_ns[site]
        wan = f"{p}-w{_index(ns)}"
        return Counter("link", ns, wan, "tx_packets" if hop.action.startswith("leaves") else "rx_packets")
    return None


def _hub_counter(hop: Hop, trace: Trace, plan: Plan, topo: LabTopology) -> Counter | None:
    """The counters of the hops through a hub (plan/hubtrace.py) and of a node port's DNAT."""
    p = topo.prefix
    if hop.device == "nodeport-nat":
        return Counter("nft", topo.node_ns[hop.node], servicenat.node_port_comment(hop.key), "packets")
    if hop.device == "ipsec-route":  # the customer gateway's TUN device of the tunnel its route uses
        return Counter("link", topo.site_ns[hop.where.removeprefix("router ")], hop.key, "tx_packets")
    if hop.device in SA_HOPS:
        side, way = SA_HOPS[hop.device]
        name, index = hop.key.rsplit(":", 1)
        conn = next(c for c in plan.vpn if c.name == name)
        gateway = f"customer:{conn.site}" if side == vpngw.CUSTOMER else f"hub:{conn.hub}"
        return Counter("sa", gateway, vpngw.tunnel_name(name, int(index)), f"packets_{way}")
    if hop.device == "inet":  # the internet's veth towards the hub's outside addresses
        return Counter("link", f"{p}-inet", topo.hubs[hop.key].inet_if, "tx_packets")
    if hop.device == "tgw-vpc":
        link = topo.hubs[hop.key]
        return Counter("link", link.namespace, link.vpc_if, "tx_packets")
    if hop.device == "vpc-in":  # the VPC router's port to the node
        return Counter(
            "link", topo.site_ns[topo.hubs[hop.key].site], f"{p}-s{_index(topo.node_ns[hop.peer])}", "tx_packets"
        )
    if hop.device == "veth-back":
        ep = topo.pod(trace.source)
        return Counter("link", ep.namespace, ep.ifname, "rx_packets")
    return None


def rule_packets(namespace: str, comment: str) -> int:
    """Packets counted by the rules of table crossmesh in `namespace` whose comment is `comment`."""
    done = netns.run(namespace, ["nft", "-j", "list", "table", "ip", "crossmesh"])
    if done.returncode != 0:
        return -1
    total = 0
    for item in json.loads(done.stdout).get("nftables", []):
        rule = item.get("rule")
        if rule and rule.get("comment") == comment:
            total += sum(int(e["counter"]["packets"]) for e in rule.get("expr", []) if "counter" in e)
    return total


def read(counter: Counter, gateways: Mapping[str, vpn.Gateway] | None = None) -> int:
    """The counter's value, -1 when it cannot be read. `gateways`: the lab's VPN gateways by key
    (`transit.gateways`, attached), for "sa" counters."""
    if counter.kind == "sa":
        gw = (gateways or {}).get(counter.namespace)
        sa = gw.sas().get(counter.device) if gw is not None else None
        if sa is None:
            return -1
        return sum(getattr(c, counter.field) for c in sa.children)
    if counter.kind == "nft":
        return rule_packets(counter.namespace, counter.device)
    if counter.kind == "wg":
        text = wireguard.dump(counter.device)
        if not text:
            return -1
        stats = wireguard.parse_dump(text)[1].get(counter.peer_key)
        if stats is None:
            return -1
        return stats[1] if counter.field == "rx" else stats[2]
    with netns.open_ns(counter.namespace) as ipr:
        idx = ipr.link_lookup(ifname=counter.device)
        if not idx:
            return -1
        link: Any = ipr.get_links(idx[0])[0]
        stats = link.get_attr("IFLA_STATS64")
        return int(stats[counter.field]) if stats else -1


def snapshot(counters: list[Counter | None], gateways: Mapping[str, vpn.Gateway] | None = None) -> list[int | None]:
    return [None if c is None else read(c, gateways) for c in counters]
