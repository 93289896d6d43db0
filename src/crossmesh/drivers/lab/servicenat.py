"""Plan → a node's service NAT in nftables: ClusterIPs and NodePorts, as kube-proxy programs them.
Pure: a table as data (`crossmesh.nft`), applied by `reconcile` (at `lab up`) and by the service
daemon (on health changes).

- ClusterIP: `ip daddr <ClusterIP> <proto> dport <port>` DNATs to a healthy backend of the first
  tier that has one (Cilium's affinity semantics), or is rejected when none is healthy. A
  headless Service (`clusterIP: None`) has no VIP and no rule: its name resolves to its pods.
- NodePort: every node of the cluster answers `<any of its addresses>:<nodePort>` with the same
  backend map — also a node without a local backend, whose connection then crosses to one — and
  source-NATs those connections to its pod-side address (kube-proxy's masquerade for
  `externalTrafficPolicy: Cluster`), so that the answer comes back through the node that
  translated the request. Nothing listens on a node port: with no healthy backend, the node's
  own stack refuses it (TCP reset, ICMP port unreachable).
  A local pod's connection to *another* node's node port is translated on the pod's own node, as
  Cilium's socket load balancer does (kube-proxy replacement: Talos, K3s): it then travels pod to
  pod in the VXLAN. (Under kube-proxy, the packet would cross to that node inside Cilium's tunnel
  and be translated there: the same answer; the lab does not route pods to node addresses through
  its VXLAN, and wg-crossmesh rightly refuses a pod source address.)
"""

from __future__ import annotations

from ipaddress import IPv4Address

from crossmesh import nft
from crossmesh.model.plan import NodePlan, Plan, PodPlan
from crossmesh.observe import codes
from crossmesh.services.backends import Backend, backend_sets


def backend_key(pod: str, address: str, port: int) -> str:
    return f"{pod}@{address}:{port}"


def node_addresses(node: NodePlan) -> tuple[IPv4Address, ...]:
    """The addresses a node answers its node ports on: site network, pod side, tunnel."""
    out = [node.address, node.pod_cidr.network_address + 1]
    if node.tunnel is not None:
        out.append(node.tunnel.address)
    return tuple(out)


F = nft.Field
NAT_PREROUTING = nft.Base(nft.ChainType.NAT, nft.Hook.PREROUTING, nft.Priority.DSTNAT)
NAT_OUTPUT = nft.Base(nft.ChainType.NAT, nft.Hook.OUTPUT, -100)
NAT_POSTROUTING = nft.Base(nft.ChainType.NAT, nft.Hook.POSTROUTING, nft.Priority.SRCNAT)
FILTER_FORWARD = nft.Base(nft.ChainType.FILTER, nft.Hook.FORWARD, 0)
FILTER_INPUT = nft.Base(nft.ChainType.FILTER, nft.Hook.INPUT, 0)
FILTER_OUTPUT = nft.Base(nft.ChainType.FILTER, nft.Hook.OUTPUT, 0)
TABLE = "crossmesh"
# Every translated connection's first packet is logged before its DNAT: the flow daemon learns
# the service address it was sent to (`observe.codes.NAT`); a rejected one is a drop.
NAT_LOG = nft.Log(codes.GROUP, codes.NAT)
NO_BACKEND = nft.Log(codes.GROUP, codes.NO_BACKEND)


def node_port_comment(key: str) -> str:
    """The comment of a node port's DNAT rules, `key` "SERVICE PORT/PROTO": `crossmesh trace` reads
    their counter (how many connections the node port translated) by it."""
    return nft.comment(f"nodeport {key}")


def _serve(daddr: IPv4Address | nft.AnonSet, proto: str, port: int, *also: nft.Expr) -> nft.Rule:
    """`ip daddr <daddr> <proto> dport <port> …`."""
    return nft.Rule((nft.Match(F.IP_DADDR, daddr), nft.Match(nft.dport(proto), port), *also))


SERVICE_LOOPBACK = IPv4Address("169.254.42.1")  # Cilium's ipv4-service-loopback-address default


def _logged(rule: nft.Rule, log: nft.Log) -> tuple[nft.Rule, nft.Rule]:
    """The rule, after one with its matches that logs the packet. Two rules rather than one with
    both: readers of the listing (the checks, the tests) find the rule as it was, and the cost is
    on a connection's first packet only (nat chains), or a rejected packet."""
    matches = tuple(e for e in rule.exprs if isinstance(e, nft.Match))
    return nft.Rule((*matches, log)), rule


def services_table(  # noqa: PLR0913 - the parts of a node's table
    plan: Plan,
    cluster: str,
    local_pods: list[PodPlan],
    node_side: IPv4Address,
    unhealthy: frozenset[str] = frozenset(),
    spoof: tuple[nft.Rule, ...] = (),
    extra: tuple[nft.Item, ...] = (),
    l7_rule: nft.Rule | None = None,
    *,
    node: NodePlan | None = None,
    local_out: tuple[nft.Rule, ...] = (),
) -> nft.Table:
    """Service DNAT on a node: each ClusterIP port, and with `node` each node port, to a random
    healthy backend of the first tier that has one, or a reset when none is healthy.

    One rule per service port with a numgen map: the cost per new connection does not
    grow with the number of backends. `unhealthy` holds `POD@ADDRESS:PORT` keys from the
    health checker; the whole table is replaced atomically when it changes. `local_out`: rules for
    what the node itself sends, after the rejects (the log rules of the ICMP errors it sends).
    """
    rules: list[nft.Rule] = []
    rejects: list[nft.Rule] = []
    own = nft.AnonSet(node_addresses(node)) if node is not None else None
    others: tuple[nft.Match, ...] = ()
    if node is not None:
        peers = [a for n in plan.cluster(cluster).nodes if n != node.name for a in node_addresses(plan.node(n))]
        if peers and local_pods:
            pods = nft.AnonSet(tuple(p.address for p in local_pods))
            others = (nft.Match(F.IP_SADDR, pods), nft.Match(F.IP_DADDR, nft.AnonSet(tuple(peers))))
    for svc in plan.cluster(cluster).services:
        for bs in backend_sets(plan, svc):
            if bs.protocol not in ("TCP", "UDP"):
                continue  # a service without any backend is rejected below, as kube-proxy does
            proto = bs.protocol.lower()
            tier: tuple[Backend, ...] = ()
            for candidate in bs.tiers:
                tier = tuple(b for b in candidate if backend_key(b.pod, b.address, b.port) not in unhealthy)
                if tier:
                    break
            node_port = svc.node_port(bs.port, bs.protocol) if node is not None else None
            if not tier:
                reset = nft.RejectWith.TCP_RESET if proto == "tcp" else nft.RejectWith.PORT_UNREACHABLE
                if svc.cluster_ip is not None:
                    rejects += _logged(_serve(svc.cluster_ip, proto, bs.port, nft.Reject(reset)), NO_BACKEND)
                continue
            to = nft.RandomDnat(tuple((IPv4Address(b.address), b.port) for b in tier))
            if svc.cluster_ip is not None:
                rules += _logged(_serve(svc.cluster_ip, proto, bs.port, to), NAT_LOG)
            if node_port is not None and own is not None:
                note = node_port_comment(f"{svc.ref} {node_port}/{bs.protocol}")
                served = _serve(own, proto, node_port, nft.Counter(), to)
                rules += _logged(nft.Rule(served.exprs, note), NAT_LOG)
                if others:
                    port_match = nft.Match(nft.dport(proto), node_port)
                    from_pods: tuple[nft.Expr, ...] = (*others, port_match, nft.Counter(), to)
                    rules += _logged(nft.Rule(from_pods, note), NAT_LOG)
    # Hairpin: a pod reaching itself through its service would see its own address as
    # source and drop the packet as martian. Cilium translates the source to its service loopback
    # address (`ipv4-service-loopback-address`, 169.254.42.1), not to the node: so does the lab — a
    # node address would be taken for the node's own health probes, which a mesh proxy lets by.
    dnatted = nft.Match(F.CT_STATUS, nft.CtStatus.DNAT)
    snat = nft.Nat(nft.NatKind.SNAT, node_side)
    loopback = nft.Nat(nft.NatKind.SNAT, SERVICE_LOOPBACK)
    hairpin = [
        nft.Rule((dnatted, nft.Match(F.IP_SADDR, p.address), nft.Match(F.IP_DADDR, p.address), loopback))
        for p in local_pods
    ]
    if own is not None and any(s.node_ports for s in plan.cluster(cluster).services):
        hairpin.append(nft.Rule((dnatted, nft.Match(F.CT_ORIGINAL_IP_DADDR, own), snat)))
    to_services = nft.Rule((nft.Jump("services"),))
    to_no_endpoints = nft.Rule((nft.Jump("no_endpoints"),))
    prerouting = (l7_rule, to_services) if l7_rule is not None else (to_services,)
    return nft.Table(
        TABLE,
        (
            *extra,
            nft.Chain("services", tuple(rules)),
            nft.Chain("no_endpoints", tuple(rejects)),
            nft.Chain("postrouting", tuple(hairpin), NAT_POSTROUTING),
            nft.Chain("prerouting", prerouting, NAT_PREROUTING),
            nft.Chain("output", (to_services,), NAT_OUTPUT),
            nft.Chain("forward", (to_no_endpoints, *spoof), FILTER_FORWARD),
            nft.Chain("local_in", spoof, FILTER_INPUT),
            nft.Chain("local_out", (to_no_endpoints, *local_out), FILTER_OUTPUT),
        ),
    )
