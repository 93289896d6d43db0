"""Plan → a node's service NAT in nftables: ClusterIPs and NodePorts, as kube-proxy programs them.
Pure: text only, applied by `reconcile` (at `lab up`) and by the service daemon (on health changes).

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

from crossmesh.model.plan import NodePlan, Plan, PodPlan
from crossmesh.services.backends import Backend, backend_sets


def backend_key(pod: str, address: str, port: int) -> str:
    return f"{pod}@{address}:{port}"


def node_addresses(node: NodePlan) -> tuple[IPv4Address, ...]:
    """The addresses a node answers its node ports on: site network, pod side, tunnel."""
    out = [node.address, node.pod_cidr.network_address + 1]
    if node.tunnel is not None:
        out.append(node.tunnel.address)
    return tuple(out)


def _set(addresses: tuple[IPv4Address, ...]) -> str:
    return "{ " + ", ".join(str(a) for a in addresses) + " }"


def services_nft(  # noqa: PLR0913 - the parts of a node's table
    plan: Plan,
    cluster: str,
    local_pods: list[PodPlan],
    node_side: IPv4Address,
    unhealthy: frozenset[str] = frozenset(),
    spoof: str = "",
    extra: str = "",
    l7_rule: str = "",
    *,
    node: NodePlan | None = None,
) -> str:
    """Service DNAT on a node: each ClusterIP port, and with `node` each node port, to a random
    healthy backend of the first tier that has one, or a reset when none is healthy.

    One rule per service port with a numgen map: the cost per new connection does not
    grow with the number of backends. `unhealthy` holds `POD@ADDRESS:PORT` keys from the
    health checker; the whole table is replaced atomically when it changes.
    """
    rules = []
    rejects = []
    own = _set(node_addresses(node)) if node is not None else ""
    others = ""
    if node is not None:
        peers = [a for n in plan.cluster(cluster).nodes if n != node.name for a in node_addresses(plan.node(n))]
        pods = _set(tuple(p.address for p in local_pods)) if local_pods else ""
        others = f"ip saddr {pods} ip daddr {_set(tuple(peers))} " if peers and pods else ""
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
                reset = "tcp reset" if proto == "tcp" else "icmp type port-unreachable"
                if svc.cluster_ip is not None:
                    rejects.append(f"    ip daddr {svc.cluster_ip} {proto} dport {bs.port} reject with {reset}\n")
                continue
            targets = ", ".join(f"{i} : {b.address} . {b.port}" for i, b in enumerate(tier))
            to = f"dnat ip addr . port to numgen random mod {len(tier)} map {{ {targets} }}\n"
            if svc.cluster_ip is not None:
                rules.append(f"    ip daddr {svc.cluster_ip} {proto} dport {bs.port} {to}")
            if node_port is not None:
                rules.append(f"    ip daddr {own} {proto} dport {node_port} {to}")
                if others:
                    rules.append(f"    {others}{proto} dport {node_port} {to}")
    # Hairpin: a pod reaching itself through its service would see its own address as
    # source and drop the packet as martian; like kube-proxy, masquerade that case.
    hairpin = "".join(
        f"    ct status dnat ip saddr {p.address} ip daddr {p.address} snat to {node_side}\n" for p in local_pods
    )
    if node is not None and any(s.node_ports for s in plan.cluster(cluster).services):
        hairpin += f"    ct status dnat ct original ip daddr {own} snat to {node_side}\n"
    return (
        "table ip crossmesh {\n" + extra + "  chain services {\n" + "".join(rules) + "  }\n"
        "  chain no_endpoints {\n" + "".join(rejects) + "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n" + hairpin + "  }\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n" + l7_rule + "    jump services\n"
        "  }\n"
        "  chain output {\n"
        "    type nat hook output priority -100; policy accept;\n"
        "    jump services\n"
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n    jump no_endpoints\n" + spoof + "  }\n"
        "  chain local_in {\n"
        "    type filter hook input priority 0; policy accept;\n" + spoof + "  }\n"
        "  chain local_out {\n"
        "    type filter hook output priority 0; policy accept;\n"
        "    jump no_endpoints\n"
        "  }\n"
        "}\n"
    )
