"""What the kernel logged, turned into a flow record: who the addresses are, which Service the
connection was sent to, which tunnel it took, and which policy rule dropped it.

The kernel knows addresses, ports, devices, the conntrack tuple before DNAT and, from the log
prefix of the rule that fired, the verdict and the policy direction. Everything with a name
comes from the plan, gathered once into a `Directory` (pure data): pods with their identity
labels and numbers, nodes, ClusterIPs and NodePorts, and each node's routes, which say which
WireGuard peer a packet leaving (or entering) by the tunnel or the overlay device travels with.

A drop the kernel's forwarding makes (a packet too big for the path, no route) is logged on the
ICMP error the node sends back (observe/codes.py): its record is about the packet that error
quotes, the flow the node refused, with the path MTU in its summary (`refused`).

The deciding policy is named by the evaluator `crossmesh policy trace` uses, so a drop reads
the same in `observe`, the UI and `policy trace`. The kernel is the witness of what happened: when
the evaluator disagrees (it allows a flow the kernel dropped, or names another kind of decision)
the record says so in `rule` and `summary` instead of inventing an agreement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import NamedTuple, Protocol

from crossmesh.model.plan import Plan, RouteVia
from crossmesh.observe import codes
from crossmesh.observe.flows import DropReason, Flow, FlowEndpoint, Tunnel, Verdict
from crossmesh.policy.compile import L7_PROXY_PORT
from crossmesh.policy.endpoints import world_endpoint
from crossmesh.policy.evaluator import PolicyIndex, Reason, Side, evaluate
from crossmesh.policy.model import ALL_PORTS, Endpoint, EndpointKind

PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}
HOST, WORLD, REMOTE_NODE = 1, 2, 6  # Cilium's reserved identities
VERDICTS_KEPT = 65536  # policy decisions a Directory remembers (a few MB)
POD_IDENTITY_BASE = 256  # pod identities are numbered from here (Cilium's first cluster-local one)
WIREGUARD, VXLAN = "wireguard", "vxlan"  # the kinds of device a node's flows can leave by


class Packet(Protocol):
    """What the kernel logged of one packet (drivers/nflog.py's LogPacket has these fields)."""

    @property
    def time(self) -> float: ...
    @property
    def protocol(self) -> int: ...
    @property
    def src(self) -> str: ...
    @property
    def dst(self) -> str: ...
    @property
    def sport(self) -> int: ...
    @property
    def dport(self) -> int: ...
    @property
    def orig_src(self) -> str: ...
    @property
    def orig_sport(self) -> int: ...
    @property
    def orig_dst(self) -> str: ...
    @property
    def orig_dport(self) -> int: ...
    @property
    def icmp_code(self) -> int: ...
    @property
    def mtu(self) -> int: ...
    @property
    def inner_protocol(self) -> int: ...
    @property
    def inner_src(self) -> str: ...
    @property
    def inner_dst(self) -> str: ...
    @property
    def inner_sport(self) -> int: ...
    @property
    def inner_dport(self) -> int: ...
    @property
    def inner_length(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Observed:
    """What the rule that logged the packet says: its verdict, why, and in which direction."""

    verdict: Verdict
    reason: DropReason = DropReason.NONE
    direction: str = ""  # egress / ingress for a policy drop
    quoted: bool = False  # the packet is an ICMP error the node sent: the flow is the packet it quotes


class Enriched(NamedTuple):
    flow: Flow
    match: str  # Hubble's policy match: l3-only, l3-l4, l4-only, all, l7/http, none


@dataclass(frozen=True, slots=True)
class NodeRoutes:
    """A node's routes as the plan makes them, most specific first, and its devices by name."""

    routes: tuple[tuple[IPv4Network, RouteVia, str], ...]  # (destination, via, peer node)
    devices: Mapping[str, str] = field(default_factory=dict)  # ifname → WIREGUARD | VXLAN

    def route(self, address: IPv4Address) -> tuple[RouteVia, str] | None:
        for dst, via, peer in self.routes:
            if address in dst:
                return via, peer
        return None


@dataclass(frozen=True, slots=True)
class Directory:
    """Everything with a name that a flow record needs, built from the plan (`build`)."""

    index: PolicyIndex
    endpoints: Mapping[IPv4Address, Endpoint]  # pods and nodes (site, pod-side and tunnel addresses)
    cluster_of_node: Mapping[str, str]
    site_of_node: Mapping[str, str]
    address_of_node: Mapping[str, IPv4Address]
    cluster_ips: Mapping[tuple[str, IPv4Address, int, str], str]  # (cluster, ClusterIP, port, proto) → service
    node_ports: Mapping[tuple[str, int, str], str]  # (cluster, nodePort, proto) → service
    routes: Mapping[str, NodeRoutes]  # node → its routes
    # (src, dst, dport, protocol, direction, observed) → (policy, rule, note, match): the policy part of
    # a record depends on nothing else, and the index never changes (a new one is a new daemon).
    # Evaluating it is a third of a record's cost; a connection flood repeats the same few keys.
    verdicts: dict[tuple[object, ...], tuple[str, str, str, str]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(cls, plan: Plan, index: PolicyIndex, devices: Mapping[str, Mapping[str, str]]) -> Directory:
        """`devices`: per node, the names of its WireGuard and VXLAN devices (→ WIREGUARD | VXLAN)."""
        endpoints: dict[IPv4Address, Endpoint] = {}
        for a, e in index.by_address.items():
            if isinstance(a, IPv4Address):
                endpoints[a] = e
        for n in plan.nodes:
            if n.tunnel is not None and n.name in index.endpoints:
                endpoints.setdefault(n.tunnel.address, index.endpoints[n.name])
        cluster_ips = {}
        node_ports = {}
        for c in plan.clusters:
            for s in c.services:
                for port, proto, _, _ in s.ports:
                    if s.cluster_ip is not None:
                        cluster_ips[(c.name, s.cluster_ip, port, proto)] = s.ref
                for _, proto, node_port in s.node_ports:
                    node_ports[(c.name, node_port, proto)] = s.ref
        routes = {
            n.name: NodeRoutes(
                tuple(
                    (r.dst, r.via, r.peer) for r in sorted(n.all_routes(), key=lambda r: r.dst.prefixlen, reverse=True)
                ),
                dict(devices.get(n.name, {})),
            )
            for n in plan.nodes
        }
        return cls(
            index=index,
            endpoints=endpoints,
            cluster_of_node={n.name: n.cluster for n in plan.nodes},
            site_of_node={n.name: n.site for n in plan.nodes},
            address_of_node={n.name: n.address for n in plan.nodes},
            cluster_ips=cluster_ips,
            node_ports=node_ports,
            routes=routes,
        )

    def decided(
        self, src: IPv4Address, dst: IPv4Address, dport: int, protocol: str, direction: str, observed: Observed
    ) -> tuple[str, str, str, str]:
        """(policy, rule, note, match) of a flow in `direction`, as `policy trace` decides it;
        remembered (up to VERDICTS_KEPT keys, then forgotten all at once)."""
        key = (src, dst, dport, protocol, direction, observed)
        found = self.verdicts.get(key)
        if found is None:
            verdict = evaluate(self.index, self.policy_endpoint(src), self.policy_endpoint(dst), dport, protocol)
            side = verdict.egress if direction == "egress" else verdict.ingress
            found = (*attribution(side, observed), policy_match(side))
            if len(self.verdicts) >= VERDICTS_KEPT:
                self.verdicts.clear()
            self.verdicts[key] = found
        return found

    # --- names ---------------------------------------------------------------------------------

    def policy_endpoint(self, address: IPv4Address) -> Endpoint:
        """The pod or node owning `address` (that address first, as CIDR rules read it), else world."""
        e = self.endpoints.get(address)
        if e is None:
            return world_endpoint(address)
        if e.address != address:
            e = dataclasses.replace(e, addresses=(address, *(a for a in e.addresses if a != address)))
        return e

    def flow_endpoint(self, address: IPv4Address, observer: str) -> FlowEndpoint:
        e = self.endpoints.get(address)
        if e is None:
            return FlowEndpoint(address=str(address))
        if e.kind is EndpointKind.POD:
            identity = self.index.identity_of.get(e.ref)
            return FlowEndpoint(
                address=str(address),
                kind="pod",
                cluster=e.cluster,
                namespace=e.namespace,
                name=e.ref.rsplit("/", 1)[-1],
                labels=dict(e.labels),
                identity=WORLD if identity is None else POD_IDENTITY_BASE + identity,
            )
        return FlowEndpoint(
            address=str(address),
            kind="node",
            cluster=e.cluster,
            name=e.ref,
            identity=HOST if e.ref == observer else REMOTE_NODE,
        )

    def service(self, observer: str, address: IPv4Address, port: int, protocol: str) -> str:
        """The Service a connection to `address`:`port` was sent to on node `observer`, or ""."""
        cluster = self.cluster_of_node.get(observer, "")
        found = self.cluster_ips.get((cluster, address, port, protocol))
        if found:
            return found
        owner = self.endpoints.get(address)
        if owner is not None and owner.kind is EndpointKind.NODE:
            return self.node_ports.get((cluster, port, protocol), "")
        return ""

    def tunnel(self, observer: str, device: str, address: IPv4Address) -> Tunnel | None:
        """The WireGuard peer of a packet leaving (or entering) node `observer` by `device`, to (from)
        `address`: the tunnel itself, or the overlay device whose packets the tunnel carries."""
        node = self.routes.get(observer)
        kind = node.devices.get(device) if node is not None else None
        if node is None or kind is None:
            return None
        route = node.route(address)
        if route is not None and kind == VXLAN and route[0] is RouteVia.VXLAN:
            vtep = self.address_of_node.get(route[1])
            route = node.route(vtep) if vtep is not None else None
        if route is None or route[0] is not RouteVia.WIREGUARD:
            return None
        return Tunnel(peer=route[1], site=self.site_of_node.get(route[1], ""))

    def path(self, observer: str, address: IPv4Address) -> Tunnel | None:
        """The WireGuard peer node `observer`'s routes send a packet to `address` with: directly, or
        inside the overlay whose next node the tunnel reaches. None: not through the tunnel."""
        node = self.routes.get(observer)
        route = node.route(address) if node is not None else None
        if node is not None and route is not None and route[0] is RouteVia.VXLAN:
            vtep = self.address_of_node.get(route[1])
            route = node.route(vtep) if vtep is not None else None
        if route is None or route[0] is not RouteVia.WIREGUARD:
            return None
        return Tunnel(peer=route[1], site=self.site_of_node.get(route[1], ""))


# --- enrichment --------------------------------------------------------------------------------


def enrich(  # noqa: PLR0913 - the packet, what its rule said, where it was seen
    packet: Packet,
    observed: Observed,
    *,
    node: str,
    indev: str,
    outdev: str,
    directory: Directory,
) -> Enriched:
    """The flow record of `packet`, logged on `node` (`indev`/`outdev`: device names, "" if none)."""
    if observed.quoted:
        return refused(packet, observed, node=node, directory=directory)
    protocol = PROTOCOLS.get(packet.protocol, str(packet.protocol))
    src = IPv4Address(packet.orig_src or packet.src)  # ValueError on anything else: the caller counts it
    sport = packet.orig_sport if packet.orig_src else packet.sport
    dst = IPv4Address(packet.dst)
    dport = packet.dport
    service = service_address = backend = ""
    proxied = False
    if packet.orig_dst and (packet.orig_dst, packet.orig_dport) != (packet.dst, packet.dport):
        orig = IPv4Address(packet.orig_dst)
        service = directory.service(node, orig, packet.orig_dport, protocol)
        service_address = f"{orig}:{packet.orig_dport}"
        owner = directory.endpoints.get(dst)
        if not service and dport == L7_PROXY_PORT and owner is not None and owner.kind is EndpointKind.NODE:
            # Redirected to the node's L7 proxy, which is transparent: the flow goes where it was sent.
            dst, dport, service_address, proxied = orig, packet.orig_dport, "", True
    source = directory.flow_endpoint(src, node)
    destination = directory.flow_endpoint(dst, node)
    if service and destination.kind == "pod":
        backend = destination.ref
    tunnel = directory.tunnel(node, outdev, dst) if outdev else None
    if tunnel is None and indev:
        tunnel = directory.tunnel(node, indev, src)

    direction = observed.direction
    if not direction and observed.verdict is Verdict.FORWARDED:
        # Which end's policy this node enforces: the source's egress where it lives, else the
        # destination's ingress (Hubble reports the policy verdict on each end's node).
        if source.kind == "pod" and directory.endpoints[src].node == node:
            direction = "egress"
        elif destination.kind == "pod" and directory.endpoints[dst].node == node:
            direction = "ingress"
    policy = rule = note = ""
    match = "none"
    if direction in ("egress", "ingress") and protocol in ("TCP", "UDP", "SCTP"):
        policy, rule, note, match = directory.decided(src, dst, dport, protocol, direction, observed)
    flow = Flow(
        time=packet.time,
        node=node,
        verdict=observed.verdict,
        protocol=protocol,
        source=source,
        destination=destination,
        source_port=sport,
        destination_port=dport,
        drop_reason=observed.reason,
        direction=direction,
        policy=policy,
        rule=rule,
        service=service,
        service_address=service_address,
        backend=backend,
        tunnel=tunnel,
    )
    if proxied:
        note = "through the node's L7 proxy" + (f"; {note}" if note else "")
    return Enriched(dataclasses.replace(flow, summary=summary(flow, note)), match)


def refused(packet: Packet, observed: Observed, *, node: str, directory: Directory) -> Enriched:
    """The flow record of the packet an ICMP error sent by `node` quotes: the packet it refused,
    from its sender to where it was going, with its ports. A packet too big for the path names
    the path's MTU (and the WireGuard peer the path goes through, as `tunnel`); ValueError when
    the error quotes no packet (the caller counts it)."""
    if not packet.inner_protocol or not packet.inner_src:
        raise ValueError("an ICMP error without the packet it answers")
    protocol = PROTOCOLS.get(packet.inner_protocol, str(packet.inner_protocol))
    src, dst = IPv4Address(packet.inner_src), IPv4Address(packet.inner_dst)
    dport = packet.inner_dport
    service = directory.service(node, dst, dport, protocol)
    flow = Flow(
        time=packet.time,
        node=node,
        verdict=Verdict.DROPPED,
        protocol=protocol,
        source=directory.flow_endpoint(src, node),
        destination=directory.flow_endpoint(dst, node),
        source_port=packet.inner_sport,
        destination_port=dport,
        drop_reason=observed.reason,
        service=service,
        service_address=f"{dst}:{dport}" if service else "",
        tunnel=directory.path(node, dst),
    )
    if observed.reason is DropReason.MTU:
        size = f"{packet.inner_length} bytes with DF set" if packet.inner_length else "DF set"
        note = f"{size}; {packet.mtu} is the path MTU" if packet.mtu else f"{size}; the path MTU is not given"
    elif packet.icmp_code == codes.ICMP_NET_UNREACH:
        note = f"no route to {dst}"
    elif packet.icmp_code == codes.ICMP_HOST_UNREACH:
        note = f"{dst} unreachable: no route to the host, or no answer to ARP"
    else:
        note = f"ICMP destination unreachable, code {packet.icmp_code}"
    return Enriched(dataclasses.replace(flow, summary=summary(flow, note)), "none")


def deciding(side: Side) -> tuple[str, str]:
    """(policy, rule) that decide one direction, as `policy trace` names them: a rule's policy and
    path; for a default deny, the selecting policies that make the direction default-deny, no rule;
    for an HTTP request no HTTP rule admits, the policies and rules whose HTTP rules it failed."""
    decision = side.decision
    if side.reason is Reason.DEFAULT_DENY:
        return ", ".join(str(p.id) for p in side.policies if side.direction in p.default_deny), ""
    if side.reason is Reason.L7_DENIED:
        rules = dict.fromkeys((str(r.policy), r.path) for r, _ in side.http_rules)  # once each, in order
        return ", ".join(dict.fromkeys(p for p, _ in rules)), ", ".join(dict.fromkeys(r for _, r in rules))
    if decision is None:
        return "", ""
    return str(decision.rule.policy), decision.rule.path


def attribution(side: Side, observed: Observed) -> tuple[str, str, str]:
    """(policy, rule, note) of one direction, as `policy trace` names them. A deny rule: its policy
    and the rule's path; a default deny: the selecting policies that make the direction default-deny,
    no rule (there is none). `note` is set when the kernel and the evaluator disagree."""
    policy, rule = deciding(side)
    dropped = observed.verdict is Verdict.DROPPED
    if dropped and side.allowed:
        return policy, "", f"the kernel dropped it, but policy trace allows it: {side.message}"
    if not dropped and not side.allowed:
        return policy, rule, f"the kernel let it through, but policy trace denies it: {side.message}"
    expected = {DropReason.POLICY_DENY: Reason.DENIED, DropReason.POLICY_DENIED: Reason.DEFAULT_DENY}
    want = expected.get(observed.reason)
    if dropped and want is not None and side.reason is not want and side.reason is not Reason.L7_DENIED:
        return policy, rule, f"the kernel says {observed.reason.value}, policy trace: {side.message}"
    return policy, rule, ""


def policy_match(side: Side) -> str:
    """Hubble's `match` of a policy verdict: which parts of the deciding rule matched."""
    d = side.decision
    if d is None or side.reason not in (Reason.ALLOWED, Reason.DENIED):
        return "none"
    if d.http is not None:
        return "l7/http"
    all_ports = d.port == ALL_PORTS
    if d.peer.wildcard:
        return "all" if all_ports else "l4-only"
    return "l3-only" if all_ports else "l3-l4"


def summary(flow: Flow, note: str = "") -> str:
    """One line, as Hubble prints a flow:
    `cluster1/default/a:43512 -> cluster2/default/b:80 TCP DROPPED (POLICY_DENIED by … ingress)`."""
    ports = flow.protocol in ("TCP", "UDP", "SCTP")
    src = f"{flow.source.ref}:{flow.source_port}" if ports else flow.source.ref
    dst = f"{flow.destination.ref}:{flow.destination_port}" if ports else flow.destination.ref
    text = f"{src} -> {dst}"
    if flow.service:
        text += f" (service {flow.service} {flow.service_address})"
    protocol = flow.protocol
    if flow.http is not None:
        text += f" {flow.http.method} {flow.http.path}" + (f" → {flow.http.status}" if flow.http.status else "")
        protocol += "/HTTP"
    text += f" {protocol} {flow.verdict.value}"
    if flow.verdict is Verdict.DROPPED:
        why = flow.drop_reason.value or "DROPPED"
        if flow.policy:
            why += f" by {flow.policy}" + (f" {flow.rule}" if flow.rule else "")
        if flow.direction:
            why += f" {flow.direction}"
        text += f" ({why})"
    if flow.tunnel is not None:
        text += f" via tunnel {flow.tunnel.peer} ({flow.tunnel.site})"
    if note:
        text += f" — {note}"
    return text
