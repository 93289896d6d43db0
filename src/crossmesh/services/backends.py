"""Backends of a Service as seen from its cluster (Cilium Cluster Mesh semantics, seed 003).

- a plain Service load-balances over its own cluster's backends;
- `service.cilium.io/global: "true"`: the backends of the same-named Service (same
  namespace) in every cluster that also declares it global, except clusters that
  set `service.cilium.io/shared: "false"` — those keep their backends to themselves
  but still use the remote ones;
- `service.cilium.io/affinity: local|remote|none`: local (remote) backends form the
  first tier and the others are used only when no backend of the first tier is healthy.
"""

from __future__ import annotations

from dataclasses import dataclass

from crossmesh.model.plan import Plan, PodPlan, ServicePlan


@dataclass(frozen=True, slots=True)
class Backend:
    pod: str  # CLUSTER/NS/POD
    cluster: str
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class BackendSet:
    service: str  # CLUSTER/NS/NAME
    port: int
    protocol: str
    tiers: tuple[tuple[Backend, ...], ...]  # first non-empty healthy tier serves
    excluded: tuple[str, ...] = ()  # clusters declaring the global service with shared: "false"

    @property
    def all(self) -> tuple[Backend, ...]:
        return tuple(b for tier in self.tiers for b in tier)


def _target_port(pod: PodPlan, target: str) -> int | None:
    if target.isdigit():
        return int(target)
    for port, _, name in pod.ports:
        if name == target:
            return port
    return None


def _same_port_target(service: ServicePlan, name: str, protocol: str) -> str | None:
    for _, proto, target, port_name in service.ports:
        if port_name == name and proto == protocol:
            return target
    return None


def backend_sets(plan: Plan, service: ServicePlan) -> list[BackendSet]:
    pods = {p.ref: p for p in plan.pods()}
    sources: list[ServicePlan] = [service]
    excluded: list[str] = []
    if service.is_global:
        for c in plan.clusters:
            if c.name == service.cluster:
                continue
            for other in c.services:
                same = other.namespace == service.namespace and other.name == service.name
                if same and other.is_global and other.shared:
                    sources.append(other)
                elif same and other.is_global:
                    excluded.append(c.name)
    out = []
    for port, proto, target, name in service.ports:
        local: list[Backend] = []
        remote: list[Backend] = []
        for src in sources:
            # A remote cluster's backends come with that cluster's own targetPort for the
            # service port of the same name and protocol (as Cilium merges endpoint ports).
            src_target = target if src is service else _same_port_target(src, name, proto)
            if src_target is None:
                continue
            for ref in src.backends:
                pod = pods[ref]
                tp = _target_port(pod, src_target)
                if tp is None:
                    continue
                b = Backend(ref, pod.cluster, str(pod.address), tp)
                (local if pod.cluster == service.cluster else remote).append(b)
        if service.affinity == "local" and local:
            tiers: tuple[tuple[Backend, ...], ...] = (tuple(local), tuple(remote))
        elif service.affinity == "remote" and remote:
            tiers = (tuple(remote), tuple(local))
        else:
            tiers = (tuple(local + remote),)
        out.append(BackendSet(service.ref, port, proto, tiers, tuple(sorted(excluded))))
    return out
