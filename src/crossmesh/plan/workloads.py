"""Pods and services from a cluster's manifests: expansion, placement, addresses.

Replica i of workload `web` is pod `web-i`. Placement is round-robin over the
cluster's nodes (sorted by name), starting at an offset derived from the
workload's name, so replicas spread and a workload's placement does not depend on
which other workloads exist. `spec.nodeName` pins a pod to a node.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from ipaddress import IPv4Address, IPv4Network

from crossmesh.model import k8s
from crossmesh.model.plan import PodPlan, ServicePlan

RESERVED_SERVICE_IPS = 16  # .1 is the kubernetes service, .10 the DNS service in most clusters
NODE_PORT_RANGE = range(30000, 32768)  # the API server's default --service-node-port-range
NODE_PORT_TYPES = ("NodePort", "LoadBalancer")  # the types the control plane gives node ports


class PlacementError(ValueError):
    """A cluster's pods or services do not fit its address ranges: names the manifest at fault."""

    def __init__(self, manifest: k8s.Manifest, path: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.manifest = manifest
        self.path = path


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())


def expand_pods(
    cluster: str, manifests: list[k8s.Manifest], nodes: list[str], placements: dict[str, str] | None = None
) -> list[tuple[k8s.PodInstance, str]]:
    """Every pod of the cluster with the node it runs on.

    `placements` (pod ref → node) are kept while their node exists, as a scheduler keeps
    running pods where they are: a node joining does not move anybody."""
    ordered = sorted(nodes)
    placed = placements or {}
    out: list[tuple[k8s.PodInstance, str]] = []
    for m in manifests:
        obj = m.obj
        if isinstance(obj, k8s.Workload):
            spec = obj.spec.template.spec
            labels = tuple(sorted(obj.spec.template.metadata.labels.items()))
            pinned = getattr(spec, "nodeName", None)
            start = _stable_hash(f"{m.namespace}/{m.name}")
            for i in range(obj.spec.replicas):
                node = pinned if pinned in ordered else ordered[(start + i) % len(ordered)]
                kept = placed.get(f"{cluster}/{m.namespace}/{m.name}-{i}")
                if pinned not in ordered and kept in ordered:
                    node = kept
                out.append((_instance(cluster, m.namespace, f"{m.name}-{i}", m.name, labels, spec), node))
        elif isinstance(obj, k8s.Pod):
            pinned = getattr(obj.spec, "nodeName", None)
            node = pinned if pinned in ordered else ordered[_stable_hash(f"{m.namespace}/{m.name}") % len(ordered)]
            kept = placed.get(f"{cluster}/{m.namespace}/{m.name}")
            if pinned not in ordered and kept in ordered:
                node = kept
            labels = tuple(sorted(obj.metadata.labels.items()))
            out.append((_instance(cluster, m.namespace, m.name, m.name, labels, obj.spec), node))
    out.sort(key=lambda t: (t[0].namespace, t[0].name))
    return out


def _instance(
    cluster: str, namespace: str, name: str, workload: str, labels: tuple[tuple[str, str], ...], spec: k8s.PodSpec
) -> k8s.PodInstance:
    ports = tuple(k8s.PortSpec(p.container_port, p.protocol, p.name) for c in spec.containers for p in c.ports)
    return k8s.PodInstance(
        cluster=cluster,
        namespace=namespace,
        name=name,
        workload=workload,
        labels=labels,
        service_account=spec.service_account_name or "default",
        ports=ports,
    )


def place_pods(
    cluster: str,
    expanded: list[tuple[k8s.PodInstance, str]],
    node_cidrs: dict[str, IPv4Network],
    manifests: list[k8s.Manifest] | None = None,
) -> tuple[PodPlan, ...]:
    """Addresses from each node's pod CIDR: .1 is the node's side, pods from .2 in name order."""
    counters: dict[str, int] = defaultdict(int)
    pods = []
    for pod, node in expanded:
        cidr = node_cidrs[node]
        counters[node] += 1
        index = 1 + counters[node]
        if index >= cidr.num_addresses - 1:
            room = max(cidr.num_addresses - 3, 0)
            message = (
                f"node {node}'s pod CIDR {cidr} has no address left for pod {pod.ref} (it holds {room} pods) — "
                "use a larger ipam.nodePrefix or node podCIDR, fewer replicas, or pin pods to other nodes"
            )
            source = next((m for m in manifests or [] if m.name == pod.workload and m.namespace == pod.namespace), None)
            if source is None:
                raise ValueError(message)
            path = ("spec", "replicas") if isinstance(source.obj, k8s.Workload) else ("metadata", "name")
            raise PlacementError(source, path, message)
        pods.append(
            PodPlan(
                cluster=cluster,
                namespace=pod.namespace,
                name=pod.name,
                node=node,
                address=cidr.network_address + index,
                labels=pod.labels,
                ports=tuple((p.port, p.protocol.value, p.name or "") for p in pod.ports),
            )
        )
    return tuple(pods)


def plan_services(
    cluster: str, manifests: list[k8s.Manifest], pods: tuple[PodPlan, ...], service_cidr: IPv4Network
) -> tuple[ServicePlan, ...]:
    services = sorted(
        ((m, m.obj) for m in manifests if isinstance(m.obj, k8s.Service)),
        key=lambda t: (t[0].namespace, t[0].name),
    )
    stated: dict[IPv4Address, k8s.Manifest] = {}
    for m, svc in services:
        if svc.spec.cluster_ip == "None" and svc.spec.type in NODE_PORT_TYPES:
            raise PlacementError(
                m,
                ("spec", "clusterIP"),
                f"a {svc.spec.type} Service cannot be headless (clusterIP: None), as the API server refuses it "
                "— leave clusterIP out, or make it type ClusterIP",
            )
        if svc.spec.cluster_ip and svc.spec.cluster_ip != "None":
            ip = IPv4Address(svc.spec.cluster_ip)
            where = ("spec", "clusterIP")
            if ip not in service_cidr or ip in (service_cidr.network_address, service_cidr.broadcast_address):
                raise PlacementError(
                    m,
                    where,
                    f"clusterIP {ip} is not a host address of cluster {cluster}'s service CIDR "
                    f"{service_cidr} — use one inside it, or leave clusterIP out to allocate one",
                )
            if ip in stated:
                first = stated[ip]
                raise PlacementError(
                    m,
                    where,
                    f"clusterIP {ip} is already Service {first.namespace}/{first.name}'s "
                    f"({first.file}:{first.line}) — give each Service its own, or leave it out",
                )
            stated[ip] = m
    used = set(stated)
    size = service_cidr.num_addresses - RESERVED_SERVICE_IPS - 1
    low = int(service_cidr.network_address) + RESERVED_SERVICE_IPS
    taken = sum(1 for ip in used if low <= int(ip) < low + size)
    allocated = [m for m, svc in services if not svc.spec.cluster_ip]
    if allocated and len(allocated) > size - taken:
        raise PlacementError(
            allocated[0],
            ("metadata", "name"),
            f"cluster {cluster}'s service CIDR {service_cidr} has room for "
            f"{max(size, 0)} ClusterIPs (the first {RESERVED_SERVICE_IPS} are reserved); {len(allocated) + len(used)} "
            "Services need one — use a larger serviceCIDR",
        )
    node_ports = _node_ports(cluster, services)
    out = []
    for m, svc in services:
        cluster_ip: IPv4Address | None = None
        if svc.spec.cluster_ip and svc.spec.cluster_ip != "None":
            cluster_ip = IPv4Address(svc.spec.cluster_ip)
        elif svc.spec.cluster_ip != "None":  # "None" is headless: no ClusterIP at all
            # Hash, then probe: a service keeps its address when others are added.
            offset = _stable_hash(f"{m.namespace}/{m.name}") % size
            while service_cidr.network_address + RESERVED_SERVICE_IPS + offset in used:
                offset = (offset + 1) % size
            cluster_ip = service_cidr.network_address + RESERVED_SERVICE_IPS + offset
            used.add(cluster_ip)
        selector = svc.spec.selector
        backends = tuple(
            p.ref
            for p in pods
            if p.namespace == m.namespace and selector and all(dict(p.labels).get(k) == v for k, v in selector.items())
        )
        ports = tuple(
            (p.port, p.protocol.value, str(p.target_port if p.target_port is not None else p.port), p.name or "")
            for p in svc.spec.ports
        )
        out.append(
            ServicePlan(
                cluster=cluster,
                namespace=m.namespace,
                name=m.name,
                cluster_ip=cluster_ip,
                ports=ports,
                backends=backends,
                is_global=svc.is_global,
                shared=svc.is_shared,
                affinity=svc.affinity,
                type=svc.spec.type,
                node_ports=node_ports.get((m.namespace, m.name), ()),
            )
        )
    return tuple(out)


def _node_ports(
    cluster: str, services: list[tuple[k8s.Manifest, k8s.Service]]
) -> dict[tuple[str, str], tuple[tuple[int, str, int], ...]]:
    """(namespace, name) → (port, protocol, nodePort) of every NodePort and LoadBalancer Service.

    As the API server does: a stated nodePort must lie in 30000-32767 and be free in the cluster
    (one Service may use a number once per protocol); a port without one gets one. Allocation is
    hash-then-probe over the range in name order, so a port keeps its number when Services are
    added (the API server picks at random; a plan must be reproducible)."""
    owner: dict[int, tuple[k8s.Manifest, str]] = {}  # node port → the Service holding it, its protocol
    wanted: list[tuple[k8s.Manifest, int, k8s.ServicePort]] = []
    for m, svc in services:
        for i, p in enumerate(svc.spec.ports):
            where = ("spec", "ports", str(i), "nodePort")
            if p.node_port is None:
                continue
            if svc.spec.type not in NODE_PORT_TYPES:
                raise PlacementError(
                    m,
                    where,
                    f"nodePort {p.node_port} on a Service of type {svc.spec.type}: only NodePort and LoadBalancer "
                    "Services have node ports — set type: NodePort, or remove nodePort",
                )
            if p.node_port not in NODE_PORT_RANGE:
                raise PlacementError(
                    m,
                    where,
                    f"nodePort {p.node_port} is outside the node port range {NODE_PORT_RANGE.start}-"
                    f"{NODE_PORT_RANGE.stop - 1} — use one inside it, or leave nodePort out to allocate one",
                )
            held = owner.get(p.node_port)
            if held is not None and (held[0] is not m or held[1] == p.protocol.value):
                first = held[0]
                raise PlacementError(
                    m,
                    where,
                    f"nodePort {p.node_port} is already used by Service {first.namespace}/{first.name} "
                    f"({first.file}:{first.line}) in cluster {cluster} — give each port its own, or leave it out",
                )
            owner[p.node_port] = (m, p.protocol.value)
    for m, svc in services:
        if svc.spec.type in NODE_PORT_TYPES:
            wanted += [(m, i, p) for i, p in enumerate(svc.spec.ports) if p.node_port is None]
    if len(wanted) > len(NODE_PORT_RANGE) - len(owner):
        m = wanted[0][0]
        raise PlacementError(
            m,
            ("spec", "ports"),
            f"cluster {cluster} has {len(NODE_PORT_RANGE)} node ports ({NODE_PORT_RANGE.start}-"
            f"{NODE_PORT_RANGE.stop - 1}); {len(wanted) + len(owner)} Service ports need one — "
            "use type ClusterIP for some",
        )
    allocated: dict[tuple[str, str, int], int] = {}
    for m, i, p in wanted:
        offset = _stable_hash(f"{m.namespace}/{m.name}/{p.port}/{p.protocol.value}") % len(NODE_PORT_RANGE)
        while NODE_PORT_RANGE[offset] in owner:
            offset = (offset + 1) % len(NODE_PORT_RANGE)
        owner[NODE_PORT_RANGE[offset]] = (m, p.protocol.value)
        allocated[(m.namespace, m.name, i)] = NODE_PORT_RANGE[offset]
    out: dict[tuple[str, str], tuple[tuple[int, str, int], ...]] = {}
    for m, svc in services:
        if svc.spec.type in NODE_PORT_TYPES:
            out[(m.namespace, m.name)] = tuple(
                (p.port, p.protocol.value, p.node_port or allocated[(m.namespace, m.name, i)])
                for i, p in enumerate(svc.spec.ports)
            )
    return out
