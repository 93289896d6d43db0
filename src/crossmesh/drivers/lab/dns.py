"""The lab's service names, as CoreDNS's kubernetes plugin answers them. Pure: the service daemon
(servicesd.py) serves them on every node, with the health it tracks.

    <svc>.<ns>.svc.cluster.local      → the ClusterIP in the asking pod's cluster; for a headless
                                         Service (clusterIP: None), the addresses of its ready pods
    <svc>.<ns>.svc.clusterset.local   → a global service (MCS convention): the local ClusterIP,
                                         whose backends span the clusters; headless, the ready pods
                                         of every cluster that shares it

A pod of a headless Service is ready while every one of its backend entries (one per service
port) passes its health check, as a readiness probe covers the whole pod.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping

from crossmesh.drivers.lab.servicenat import backend_key
from crossmesh.model.plan import Plan
from crossmesh.services.backends import backend_sets

TTL = 5

# name → the ready pods of a headless Service: (pod address, the backend keys it must pass)
Headless = dict[str, tuple[tuple[str, frozenset[str]], ...]]


def dns_records(plan: Plan) -> dict[str, dict[str, str]]:
    """cluster → name → ClusterIP: the names of the Services that have one."""
    out: dict[str, dict[str, str]] = {}
    for c in plan.clusters:
        names = out.setdefault(c.name, {})
        for s in c.services:
            if s.cluster_ip is None:
                continue
            names[f"{s.name}.{s.namespace}.svc.cluster.local"] = str(s.cluster_ip)
            if s.is_global:
                names[f"{s.name}.{s.namespace}.svc.clusterset.local"] = str(s.cluster_ip)
    return out


def headless_records(plan: Plan) -> dict[str, Headless]:
    """cluster → name → pods of each headless Service: its own cluster's under cluster.local, and
    for a global one under clusterset.local those of every cluster sharing it (shared: "false"
    kept out, as for a ClusterIP's backends)."""
    out: dict[str, Headless] = {}
    for c in plan.clusters:
        names = out.setdefault(c.name, {})
        for s in c.services:
            if s.cluster_ip is not None:
                continue
            local: dict[str, set[str]] = {}
            every: dict[str, set[str]] = {}
            for bs in backend_sets(plan, s):
                for b in bs.all:
                    key = backend_key(b.pod, b.address, b.port)
                    every.setdefault(b.address, set()).add(key)
                    if b.cluster == s.cluster:
                        local.setdefault(b.address, set()).add(key)
            names[f"{s.name}.{s.namespace}.svc.cluster.local"] = _pods(local)
            if s.is_global:
                names[f"{s.name}.{s.namespace}.svc.clusterset.local"] = _pods(every)
    return out


def _pods(keys: dict[str, set[str]]) -> tuple[tuple[str, frozenset[str]], ...]:
    return tuple((a, frozenset(k)) for a, k in sorted(keys.items(), key=lambda t: socket.inet_aton(t[0])))


def ready(headless: Headless, unhealthy: frozenset[str] | set[str]) -> dict[str, tuple[str, ...]]:
    """name → addresses of the pods whose every backend entry is healthy."""
    return {name: tuple(a for a, keys in pods if not keys & unhealthy) for name, pods in headless.items()}


def dns_answer(records: Mapping[str, str | tuple[str, ...]], query: bytes) -> bytes | None:
    """The reply to one DNS query (RFC 1035 wire format) from `records` (name → IPv4 address, or
    the addresses of a headless Service's ready pods).

    A known name answers A (and ANY) with its addresses, TTL 5 s, and any other type with an
    empty answer (the name exists, no such record: AAAA must not fail the lookup); an unknown
    name under cluster.local or clusterset.local is NXDOMAIN, and so is a headless Service with
    no ready pod (as CoreDNS answers it), any other name SERVFAIL (this resolver knows nothing
    else). Responses (QR set), queries without exactly one question and truncated queries get
    no reply.
    """
    if len(query) < 12:
        return None
    ident, flags, qd = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qd != 1:
        return None
    pos, labels = 12, []
    while pos < len(query) and query[pos]:
        n = query[pos]
        labels.append(query[pos + 1 : pos + 1 + n].decode("ascii", "replace").lower())
        pos += 1 + n
    pos += 1
    if pos + 4 > len(query):
        return None
    qtype, _ = struct.unpack("!HH", query[pos : pos + 4])
    question = query[12 : pos + 4]
    name = ".".join(labels)
    found = records.get(name)
    addresses = (found,) if isinstance(found, str) else found
    rd = flags & 0x0100
    if not addresses:
        rcode = 3 if name.endswith((".cluster.local", ".clusterset.local")) else 2  # NXDOMAIN / SERVFAIL
        return struct.pack("!HHHHHH", ident, 0x8080 | rd | rcode, 1, 0, 0, 0) + question
    if qtype not in (1, 255):  # AAAA and others: the name exists, no such record
        return struct.pack("!HHHHHH", ident, 0x8480 | rd, 1, 0, 0, 0) + question
    answer = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, TTL, 4) + socket.inet_aton(a) for a in addresses)
    return struct.pack("!HHHHHH", ident, 0x8480 | rd, 1, len(addresses), 0, 0) + question + answer
