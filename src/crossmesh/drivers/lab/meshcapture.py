"""The service mesh's traffic capture in a pod's network namespace, as data. Pure: no nft, no netlink.

Istio ambient's "in-pod redirection" (istio-cni): the node proxy (meshproxy.py) opens its
listening sockets inside each pod's namespace, and nftables there hands it the pod's traffic:

- outbound: a TCP connection the app opens to a mesh pod or Service address is redirected to
  the proxy's port 15001 (SO_ORIGINAL_DST tells it where it was going), unless the proxy itself
  opened it (its sockets carry `PROXY_MARK`) or it goes to the pod itself;
- inbound: a TCP connection arriving on the pod's interface is redirected to port 15006 — but
  not one from the pod's own node (the kubelet's health probes, the lab's health checks: Istio
  leaves those to the app too);
- transparent source: the proxy connects to the app from the client's own address
  (IP_TRANSPARENT, its socket marked `TRANSPARENT_MARK`), so the app sees who called it. The
  app's answers go to that client address, which the pod's routes would send out of the pod:
  the connection carries the mark in conntrack, the answers get it back, and a policy rule
  (`fwmark TRANSPARENT_MARK lookup ROUTE_TABLE`, a table that says every address is local)
  delivers them to the proxy's socket instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network

from crossmesh import nft
from crossmesh.model.plan import Plan, PodPlan
from crossmesh.plan import ingress

TABLE = "cm_mesh"
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
PROXY_MARK = 0x539  # the proxy's own outbound connections: never captured again
TRANSPARENT_MARK = 0x111  # the proxy's connections to the app from the client's address
ROUTE_TABLE = 100  # `local 0.0.0.0/0 dev lo`: where answers to a transparent connection go
RULE_PRIORITY = 32764  # the `ip rule` sending TRANSPARENT_MARK to ROUTE_TABLE (before main, 32766)

F = nft.Field
TCP = 6
NAT_OUTPUT = nft.Base(nft.ChainType.NAT, nft.Hook.OUTPUT, -100)
NAT_PREROUTING = nft.Base(nft.ChainType.NAT, nft.Hook.PREROUTING, nft.Priority.DSTNAT)
ROUTE_OUTPUT = nft.Base(nft.ChainType.ROUTE, nft.Hook.OUTPUT, -150)  # mangle: after conntrack (-200)


def mesh_destinations(plan: Plan) -> tuple[IPv4Network, ...]:
    """Where captured connections may go: every cluster's pod and Service CIDR (sorted, unique)."""
    nets = {c.pod_cidr for c in plan.clusters} | {c.service_cidr for c in plan.clusters}
    nets |= {n.pod_cidr for n in plan.nodes}
    return tuple(sorted(nets, key=lambda n: (int(n.network_address), n.prefixlen)))


def node_addresses(plan: Plan) -> tuple[IPv4Address, ...]:
    """Every node's own addresses (site side, pod side, tunnel): never captured as a destination,
    and a pod's own node is never captured as a source."""
    return tuple(sorted({a for n in plan.nodes for a in _own(plan, n.name)}))


def own_node_addresses(plan: Plan, pod: PodPlan) -> tuple[IPv4Address, ...]:
    return tuple(sorted(_own(plan, pod.node)))


def _own(plan: Plan, node: str) -> set[IPv4Address]:
    """A node's addresses: site network, pod side, VXLAN (its pod CIDR's first), tunnel."""
    n = plan.node(node)
    out = {n.address, n.pod_cidr.network_address, n.pod_cidr.network_address + 1}
    if n.tunnel is not None:
        out.add(n.tunnel.address)
    return out


def _set(values: Iterable[IPv4Address | IPv4Network]) -> nft.AnonSet:
    return nft.AnonSet(tuple(values))


def capture_table(plan: Plan, pod: PodPlan, ifname: str) -> nft.Table:
    """Table `cm_mesh` of the pod's namespace (`ifname`: the pod's end of its veth)."""
    proxy = nft.AnonSet((PROXY_MARK, TRANSPARENT_MARK))
    outbound = nft.Rule(
        (
            nft.Match(F.META_L4PROTO, TCP),
            nft.Match(F.META_MARK, proxy, negate=True),
            nft.Match(F.IP_DADDR, pod.address, negate=True),
            nft.Match(F.IP_DADDR, _set(node_addresses(plan)), negate=True),
            nft.Match(F.IP_DADDR, _set(mesh_destinations(plan))),
            nft.Counter(),
            nft.Redirect(OUTBOUND_PORT),
        ),
        "to the mesh: the node proxy's outbound port",
    )
    inbound = nft.Rule(
        (
            nft.Match(F.IIFNAME, ifname),
            nft.Match(F.META_L4PROTO, TCP),
            nft.Match(F.IP_DADDR, pod.address),
            nft.Match(F.IP_SADDR, _set(own_node_addresses(plan, pod)), negate=True),
            nft.Match(F.TCP_DPORT, nft.AnonSet((OUTBOUND_PORT, INBOUND_PORT)), negate=True),
            nft.Counter(),
            nft.Redirect(INBOUND_PORT),
        ),
        "to the pod: the node proxy's inbound port",
    )
    transparent = (
        nft.Rule((nft.Match(F.META_MARK, TRANSPARENT_MARK), nft.SetMark(F.CT_MARK, TRANSPARENT_MARK))),
        nft.Rule(
            (nft.Match(F.CT_MARK, TRANSPARENT_MARK), nft.SetMark(F.META_MARK, TRANSPARENT_MARK)),
            "the app's answers to a transparent connection: back to the proxy",
        ),
    )
    # An ingress gateway's pod is the mesh's edge: its own proxy takes what arrives (plain HTTP or
    # the users' TLS), and only what it sends on into the mesh goes through the mesh proxy.
    edge = ingress.gateway_of(pod) is not None
    return nft.Table(
        TABLE,
        (
            nft.Chain("output", (outbound,), NAT_OUTPUT),
            nft.Chain("prerouting", () if edge else (inbound,), NAT_PREROUTING),
            nft.Chain("transparent", transparent, ROUTE_OUTPUT),
        ),
    )
