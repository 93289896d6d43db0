"""`crossmesh test`: checks built from the plan, run against the running lab.

Builders are pure (plan + lab topology → list of `Check` with expectations);
`run` executes them in the lab's namespaces. Pairs are chosen so that every pair
class (same node, same site, cross site same cluster, cross cluster), every
tunnel (node pair across sites) and every site pair is exercised, without
testing all n² pod pairs.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from crossmesh.checks import fidelity, probes
from crossmesh.checks.results import Check, Result
from crossmesh.drivers.lab.lab import LabState
from crossmesh.drivers.lab.servicesd import ECHO_PORT
from crossmesh.drivers.lab.topology import PRIVATE_RANGES, LabTopology, PodEndpoint, spoof_comment
from crossmesh.model.plan import NodePlan, Plan, PodPlan
from crossmesh.plan import datapath
from crossmesh.policy.evaluator import PolicyIndex, Reason, Verdict, evaluate
from crossmesh.policy.model import HttpRequest
from crossmesh.services.backends import backend_sets

PAIR_CLASSES = ("same-node", "same-site", "cross-site", "cross-cluster")
DENIED_TIMEOUT = 1.5
CHECK_PATH = "/crossmesh-check"
MAX_POLICY_CHECKS = 2000


@dataclass(frozen=True, slots=True)
class Context:
    plan: Plan
    topo: LabTopology
    state: LabState | None = None  # needed by checks that stage failures (kill / revive)
    policy: PolicyIndex | None = None  # expectations of pod-to-pod flows come from the evaluator
    files: Mapping[str, Any] | None = None  # what `render` writes for this mesh: the fidelity checks

    def site_of(self, pod: PodPlan) -> str:
        return self.plan.node(pod.node).site

    def verdict(self, src: PodPlan, dst: PodPlan, port: int, protocol: str) -> Verdict | None:
        if self.policy is None or not self.policy.policies:
            return None
        return evaluate(self.policy, self.policy.endpoints[src.ref], self.policy.endpoints[dst.ref], port, protocol)

    def allowed(self, src: PodPlan, dst: PodPlan, port: int, protocol: str) -> bool:
        """Whether the checks' own request gets through (for TCP: GET CHECK_PATH, HTTP rules included)."""
        if protocol == "TCP":
            return self.expect_http(src, dst, port) is Result.OK
        v = self.verdict(src, dst, port, protocol)
        return v is None or v.allowed

    def expect_http(self, src: PodPlan, dst: PodPlan, port: int, method: str = "GET", path: str = "") -> Result:
        """What an HTTP request should meet: an answer, the L7 proxy's 403, or a drop."""
        if self.policy is None or not self.policy.policies:
            return Result.OK
        request = HttpRequest(method, path or CHECK_PATH, (("Host", str(dst.address)),))
        v = evaluate(self.policy, self.policy.endpoints[src.ref], self.policy.endpoints[dst.ref], port, "TCP", request)
        if v.allowed:
            return Result.OK
        sides = (v.egress, v.ingress)
        if any(x.reason is Reason.L7_DENIED for x in sides) and all(
            x.allowed or x.reason is Reason.L7_DENIED for x in sides
        ):
            return Result.FORBIDDEN
        return Result.TIMEOUT

    def connected(self, src: PodPlan, dst: PodPlan) -> bool:
        """Whether the plan's datapath connects the two pods' clusters (plan/datapath.py)."""
        return datapath.connects(self.plan.cluster(src.cluster), self.plan.cluster(dst.cluster))

    def ep(self, pod: PodPlan) -> PodEndpoint:
        return self.topo.pod(pod.ref)


def pair_class(ctx: Context, a: PodPlan, b: PodPlan) -> str:
    if a.cluster != b.cluster:
        return "cross-cluster"
    if a.node == b.node:
        return "same-node"
    if ctx.site_of(a) == ctx.site_of(b):
        return "same-site"
    return "cross-site"


def _ports(pod: PodPlan, proto: str) -> list[int]:
    return [p for p, pr, _ in pod.ports if pr == proto]


Runner = Callable[[Check], None]


@dataclass(slots=True)
class Planned:
    check: Check
    run: Runner


def pod_to_pod(ctx: Context) -> list[Planned]:
    pods = sorted(ctx.plan.pods(), key=lambda p: p.ref)
    out = []
    for i, src in enumerate(pods):
        for cls in PAIR_CLASSES:
            for proto in ("TCP", "UDP"):
                candidates = [
                    d for d in pods if d.ref != src.ref and pair_class(ctx, src, d) == cls and _ports(d, proto)
                ]
                if not candidates:
                    continue
                dst = candidates[i % len(candidates)]  # rotate so that sources spread over destinations
                port = _ports(dst, proto)[0]
                kind = "http" if proto == "TCP" else "udp"
                if not ctx.connected(src, dst):
                    expected = Result.TIMEOUT  # the plan's datapath does not connect them (Flannel across clusters)
                elif proto == "TCP":
                    expected = ctx.expect_http(src, dst, port)
                else:
                    expected = Result.OK if ctx.allowed(src, dst, port, proto) else Result.TIMEOUT
                check = Check(
                    name=f"pod-to-pod/{cls}/{kind}: {src.ref} -> {dst.ref}:{port}",
                    kind="pod-to-pod",
                    source=src.ref,
                    target=dst.ref,
                    port=f"{port}/{proto}",
                    expected=expected,
                )
                out.append(
                    Planned(
                        check, _http_runner(ctx, src, dst, port) if proto == "TCP" else _udp_runner(ctx, src, dst, port)
                    )
                )
    return out


def _timeout(check: Check) -> float:
    # A flow the policy denies is dropped: waiting for it is the cost of checking it.
    return DENIED_TIMEOUT if check.expected is Result.TIMEOUT else probes.TIMEOUT


def _http_runner(
    ctx: Context, src: PodPlan, dst: PodPlan, port: int, method: str = "GET", path: str = CHECK_PATH
) -> Runner:
    def run(check: Check) -> None:
        result, answer, detail = probes.http(
            ctx.ep(src).namespace, str(dst.address), port, path=path, method=method, timeout=_timeout(check)
        )
        seen = (answer or {}).get("pod"), (answer or {}).get("clientIP")
        if result is Result.OK and seen != (dst.name, str(src.address)):
            # The answer must come from the planned pod and see the client's own address: no NAT inside the mesh.
            result = Result.WRONG_ANSWER
            detail = f"answered by {seen[0]} seeing client {seen[1]}"
        check.actual, check.detail = result, detail

    return run


def _udp_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int) -> Runner:
    def run(check: Check) -> None:
        check.actual, check.detail = probes.udp_echo(
            ctx.ep(src).namespace, str(dst.address), port, timeout=_timeout(check)
        )

    return run


def pod_to_service(ctx: Context) -> list[Planned]:
    out = []
    for cluster in ctx.plan.clusters:
        clients = _one_pod_per_node(cluster.pods)
        for svc in cluster.services:
            for bs in backend_sets(ctx.plan, svc):
                tier = next((t for t in bs.tiers if t), ())
                if bs.protocol != "TCP" or not tier or svc.cluster_ip is None:
                    continue  # a headless Service has no ClusterIP: `headless/dns` checks its name
                allowed = {b.pod for b in tier}
                pods = {p.ref: p for p in ctx.plan.pods()}
                for src in clients:
                    permitted = {b.pod for b in tier if ctx.allowed(src, pods[b.pod], b.port, "TCP")}
                    if permitted and permitted != allowed:
                        continue  # policy allows some backends and not others: the answer would be a coin toss
                    check = Check(
                        name=f"pod-to-service/http: {src.ref} -> {svc.ref} ({svc.cluster_ip}:{bs.port})",
                        kind="pod-to-service",
                        source=src.ref,
                        target=svc.ref,
                        port=f"{bs.port}/TCP",
                        expected=Result.OK if permitted else Result.TIMEOUT,
                    )
                    out.append(Planned(check, _service_runner(ctx, src, str(svc.cluster_ip), bs.port, allowed)))
    return out


def _one_pod_per_node(pods: Iterable[PodPlan]) -> list[PodPlan]:
    seen: dict[str, PodPlan] = {}
    for p in sorted(pods, key=lambda p: p.ref):
        seen.setdefault(p.node, p)
    return list(seen.values())


def _service_runner(ctx: Context, src: PodPlan, ip: str, port: int, allowed: set[str]) -> Runner:
    def run(check: Check) -> None:
        result, answer, detail = probes.http(ctx.ep(src).namespace, ip, port, timeout=_timeout(check))
        if result is Result.OK and answer is not None:
            ref = f"{answer.get('cluster')}/{answer.get('namespace')}/{answer.get('pod')}"
            if ref not in allowed:
                result, detail = Result.WRONG_ANSWER, f"answered by {ref}, not a backend"
            else:
                detail = f"answered by {ref}"
        check.actual, check.detail = result, detail

    return run


def node_pair_class(a: NodePlan, b: NodePlan) -> str:
    """The plan's pair class of pods on nodes `a` and `b` (plan/datapath.py)."""
    if a.cluster != b.cluster:
        return "cross-cluster"
    if a.name == b.name:
        return "same-node"
    return "same-site" if a.site == b.site else "cross-site"


def mtu(ctx: Context) -> list[Planned]:
    """The pod MTU of every pair class the plan states (same node, same site, cross site, cross cluster):
    for every node pair across sites and one pair of each other class per cluster, exactly the pod MTU
    passes with DF (inner and VXLAN outer); one byte more is refused."""
    out = []
    by_node: dict[str, list[PodPlan]] = {}
    for p in sorted(ctx.plan.pods(), key=lambda p: p.ref):
        by_node.setdefault(p.node, []).append(p)
    nodes = {n.name: n for n in ctx.plan.nodes}
    clusters = {c.name: c for c in ctx.plan.clusters}
    seen: set[tuple[str, str]] = set()  # (cluster, class) probed once, except cross-site: every node pair
    for a in sorted(by_node):
        for b in sorted(by_node):
            kind = node_pair_class(nodes[a], nodes[b])
            if not datapath.connects(clusters[nodes[a].cluster], clusters[nodes[b].cluster]):
                continue
            if kind != "cross-site" and (nodes[a].cluster, kind) in seen:
                continue
            pair = next(
                (
                    (s, d)
                    for s in by_node[a]
                    for d in by_node[b]
                    if s.ref != d.ref and _ports(d, "UDP") and ctx.allowed(s, d, _ports(d, "UDP")[0], "UDP")
                ),
                None,
            )
            if pair is None:
                continue
            seen.add((nodes[a].cluster, kind))
            src, dst = pair
            size = min(nodes[a].pod_mtu.value, nodes[b].pod_mtu.value)
            port = _ports(dst, "UDP")[0]
            for total, expected, label in ((size, Result.OK, "fits"), (size + 1, Result.MSG_TOO_LONG, "one-byte-over")):
                check = Check(
                    name=f"mtu/{label}: {src.ref} -> {dst.ref} ({kind}, {total} bytes, DF)",
                    kind="mtu",
                    source=src.ref,
                    target=dst.ref,
                    port=f"{port}/UDP",
                    expected=expected,
                    extra={"packetSize": total, "arithmetic": nodes[a].pod_mtu.arithmetic, "pairClass": kind},
                )
                out.append(Planned(check, _mtu_runner(ctx, src, dst, port, total)))
    return out


def tunnel_mtu(ctx: Context) -> list[Planned]:
    """Every tunnel, node to node (the lab's UDP echo on port 7, whatever pod policies say):
    a packet of exactly the tunnel MTU with DF crosses; one byte more is refused locally."""
    out = []
    nodes = {n.name: n for n in ctx.plan.nodes}
    for a in ctx.plan.nodes:
        if a.tunnel is None:
            continue
        for peer in a.tunnel.peers:
            b = nodes[peer.node]
            if b.tunnel is None or peer.standby:
                continue
            size = a.tunnel.mtu.value
            for total, expected, label in ((size, Result.OK, "fits"), (size + 1, Result.MSG_TOO_LONG, "one-byte-over")):
                check = Check(
                    name=f"mtu/tunnel-{label}: {a.name} -> {b.name} ({total} bytes, DF)",
                    kind="mtu",
                    source=a.name,
                    target=b.name,
                    port=f"{ECHO_PORT}/UDP",
                    expected=expected,
                    extra={"packetSize": total, "arithmetic": a.tunnel.mtu.arithmetic},
                )

                def run(c: Check, a: str = a.name, b: str = str(b.tunnel.address), total: int = total) -> None:
                    result, detail = probes.udp_echo(
                        ctx.topo.node_ns[a], b, ECHO_PORT, size=total - 28, dont_fragment=True
                    )
                    c.actual, c.detail = result, detail or f"IP packet of {total} bytes through the tunnel"

                out.append(Planned(check, run))
    return out


def _mtu_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int, total: int) -> Runner:
    def run(check: Check) -> None:
        result, detail = probes.udp_echo(
            ctx.ep(src).namespace, str(dst.address), port, size=total - 28, dont_fragment=True
        )
        check.actual, check.detail = result, detail or f"IP packet of {total} bytes"

    return run


@dataclass(frozen=True, slots=True)
class Crossing:
    """One site pair's marked request: pod to pod over HTTP where policy allows one, else
    node to node over the lab's UDP echo (so that strict policies do not hide the proof)."""

    source: str
    target: str
    namespace: str
    address: str
    port: int
    protocol: str


def site_crossings(ctx: Context) -> list[Crossing]:
    by_site: dict[str, list[PodPlan]] = {}
    for p in sorted(ctx.plan.pods(), key=lambda p: p.ref):
        by_site.setdefault(ctx.site_of(p), []).append(p)
    tunnel_nodes: dict[str, list[str]] = {}
    for n in ctx.plan.nodes:
        if n.tunnel is not None:
            tunnel_nodes.setdefault(n.site, []).append(n.name)
    sites = sorted(set(by_site) | set(tunnel_nodes))
    out = []
    for a in sites:
        for b in sites:
            if a == b:
                continue
            pair = next(
                (
                    (s, d)
                    for s in by_site.get(a, [])
                    for d in by_site.get(b, [])
                    if _ports(d, "TCP") and ctx.expect_http(s, d, _ports(d, "TCP")[0], "POST", "/") is Result.OK
                ),
                None,
            )
            if pair is not None:
                s, d = pair
                out.append(Crossing(s.ref, d.ref, ctx.ep(s).namespace, str(d.address), _ports(d, "TCP")[0], "TCP"))
                continue
            node_a = next(iter(tunnel_nodes.get(a, [])), None)
            tunnel_a = ctx.plan.node(node_a).tunnel if node_a else None
            peers = tunnel_a.peers if tunnel_a is not None else ()
            node_b = next((p.node for p in peers if p.site == b and not p.standby), None)
            if node_a and node_b:
                tb = ctx.plan.node(node_b).tunnel
                assert tb is not None  # noqa: S101 - a peer has a tunnel
                out.append(Crossing(node_a, node_b, ctx.topo.node_ns[node_a], str(tb.address), ECHO_PORT, "UDP"))
    return out


def underlay(ctx: Context) -> list[Planned]:
    """Encryption and NAT proofs from one capture on the internet router."""
    pairs = site_crossings(ctx)
    if not pairs:
        return []
    inet = f"{ctx.topo.prefix}-inet"
    checks = [
        Check(
            name=f"encryption/marker: {x.source} -> {x.target}",
            kind="encryption",
            source=x.source,
            target=x.target,
            port=f"{x.port}/{x.protocol}",
            expected=Result.CLEAN,
        )
        for x in pairs
    ]
    only_wg = Check(
        name="encryption/internet-carries-only-wireguard",
        kind="encryption",
        source="internet",
        target="*",
        port=f"{ctx.plan.listen_port}/UDP",
        expected=Result.CLEAN,
    )
    no_private = Check(
        name="nat/internet-never-sees-a-private-address",
        kind="nat",
        source="internet",
        target="*",
        port="*",
        expected=Result.CLEAN,
    )
    publics = {n.public_address for n in ctx.plan.nodes if n.public_address} | set(ctx.topo.site_wan.values())

    def send(x: Crossing, marker: bytes) -> tuple[Result, str]:
        if x.protocol == "TCP":
            result, answer, detail = probes.http(x.namespace, x.address, x.port, body=marker)
            if result is Result.OK and (answer is None or answer.get("body") != marker.decode()):
                return Result.WRONG_ANSWER, "the answer did not echo the marker"
            return result, detail
        return probes.udp_echo(x.namespace, x.address, x.port, payload=b"crossmesh-marker " + marker)

    def run_all(_: Check) -> None:
        markers = {c.name: secrets.token_hex(16).encode() for c in checks}
        with probes.Capture(inet) as cap:
            answers = {c.name: send(x, markers[c.name]) for c, x in zip(checks, pairs, strict=True)}
        if cap.error:
            for c in [*checks, only_wg, no_private]:
                c.actual, c.detail = Result.ERROR, f"capture failed: {cap.error}"
            return
        for c in checks:
            result, detail = answers[c.name]
            seen = [p for p in cap.packets if markers[c.name] in p.raw]
            if result is not Result.OK:
                c.actual, c.detail = result, detail
            elif seen:
                c.actual, c.detail = Result.LEAK, f"marker seen in clear in {len(seen)} packets on the internet"
            else:
                c.actual, c.detail = Result.CLEAN, f"marker crossed; {len(cap.packets)} packets captured, none holds it"
        bad = [
            p
            for p in cap.packets
            if p.proto != 17
            or p.src not in publics
            or p.dst not in publics
            or ctx.plan.listen_port not in (p.sport, p.dport)
        ]
        wg = len(cap.packets) - len(bad)
        only_wg.actual = Result.LEAK if bad else Result.CLEAN
        only_wg.detail = (
            f"{wg} WireGuard packets between public addresses"
            if not bad
            else f"{len(bad)} other packets, e.g. proto {bad[0].proto} {bad[0].src}:{bad[0].sport} -> "
            f"{bad[0].dst}:{bad[0].dport}"
        )
        private = [
            p
            for p in cap.packets
            if probes.is_private(p.src, PRIVATE_RANGES) or probes.is_private(p.dst, PRIVATE_RANGES)
        ]
        no_private.actual = Result.LEAK if private else Result.CLEAN
        no_private.detail = (
            f"{len(cap.packets)} packets, no private address"
            if not private
            else f"{len(private)} packets with a private address, e.g. {private[0].src} -> {private[0].dst}"
        )

    # One runner does the capture for all; the other checks are filled in by it.
    group = [*checks, only_wg, no_private]
    return [Planned(group[0], run_all), *[Planned(c, _filled_by_capture) for c in group[1:]]]


def _filled_by_capture(_: Check) -> None:
    """The capture runner of the first underlay check sets this check's result."""


def nat(ctx: Context) -> list[Planned]:
    """A node behind NAT is reached through its tunnel, never from the internet directly."""
    out = []
    inet = f"{ctx.topo.prefix}-inet"
    pods = sorted(ctx.plan.pods(), key=lambda p: p.ref)
    for node in ctx.plan.nodes:
        if node.public_address is not None:
            continue
        target = next((p for p in pods if p.node == node.name and _ports(p, "TCP")), None)
        if target is None:
            continue
        port = _ports(target, "TCP")[0]
        wan = str(ctx.topo.site_wan[node.site])
        direct = Check(
            name=f"nat/unsolicited-from-internet: internet -> {wan}:{port} ({node.name} behind NAT)",
            kind="nat",
            source="internet",
            target=target.ref,
            port=f"{port}/TCP",
            expected=Result.TIMEOUT,
        )

        def run_direct(check: Check, wan: str = wan, port: int = port) -> None:
            result, _, detail = probes.http(inet, wan, port, timeout=1.5)
            check.actual, check.detail = result, detail

        out.append(Planned(direct, run_direct))
        remote = next((p for p in pods if ctx.site_of(p) != node.site and ctx.allowed(p, target, port, "TCP")), None)
        if remote is not None:
            via = Check(
                name=f"nat/reached-through-tunnel: {remote.ref} -> {target.ref}:{port}",
                kind="nat",
                source=remote.ref,
                target=target.ref,
                port=f"{port}/TCP",
                expected=Result.OK,
            )
            out.append(Planned(via, _http_runner(ctx, remote, target, port)))
    return out


def anti_spoofing(ctx: Context) -> list[Planned]:
    """A pod cannot send from an address that is not its own: the node drops it and counts it."""
    out = []
    pods = sorted(ctx.plan.pods(), key=lambda p: p.ref)
    for node in ctx.plan.nodes:
        src = next((p for p in pods if p.node == node.name), None)
        dst = next((p for p in pods if p.ref != (src.ref if src else "") and _ports(p, "UDP")), None)
        if src is None or dst is None:
            continue
        forged = str(node.pod_cidr.broadcast_address - 1)
        check = Check(
            name=f"security/anti-spoofing: {src.ref} sends as {forged}",
            kind="security",
            source=src.ref,
            target=dst.ref,
            port=f"{_ports(dst, 'UDP')[0]}/UDP",
            expected=Result.DROPPED,
        )

        def run(c: Check, src: PodPlan = src, dst: PodPlan = dst, forged: str = forged) -> None:
            ep = ctx.ep(src)
            comment = spoof_comment(src)
            before = probes.nft_counter(ep.node_namespace, comment)
            probes.spoofed_udp(ep.namespace, forged, str(dst.address), _ports(dst, "UDP")[0])
            time.sleep(0.1)
            after = probes.nft_counter(ep.node_namespace, comment)
            c.actual = Result.DROPPED if after > before >= 0 else Result.LEAK
            c.detail = f"anti-spoofing counter {before} -> {after} on node {src.node}"

        out.append(Planned(check, run))
    return out


def policy_matrix(ctx: Context) -> list[Planned]:
    """Differential check: for every pod pair and every declared port, the data plane does
    what the policy evaluator (`policy trace`) says — allowed connects, denied is dropped."""
    if ctx.policy is None or not ctx.policy.policies:
        return []
    out: list[Planned] = []
    pods = sorted(ctx.plan.pods(), key=lambda p: p.ref)
    for src in pods:
        for dst in pods:
            if src.ref == dst.ref:
                continue
            for port, proto, _ in dst.ports:
                if proto not in ("TCP", "UDP") or len(out) >= MAX_POLICY_CHECKS:
                    continue
                verdict = ctx.verdict(src, dst, port, proto)
                assert verdict is not None  # noqa: S101 - policies exist
                if not ctx.connected(src, dst):
                    expected = Result.TIMEOUT  # the plan's datapath does not connect them (Flannel across clusters)
                elif proto == "TCP":
                    expected = ctx.expect_http(src, dst, port)
                else:
                    expected = Result.OK if verdict.allowed else Result.TIMEOUT
                word = {Result.OK: "allowed", Result.FORBIDDEN: "http-403"}.get(expected, "denied")
                check = Check(
                    name=f"policy/{word}: {src.ref} -> {dst.ref}:{port}/{proto}",
                    kind="policy",
                    source=src.ref,
                    target=dst.ref,
                    port=f"{port}/{proto}",
                    expected=expected,
                )
                runner = _http_runner(ctx, src, dst, port) if proto == "TCP" else _udp_runner(ctx, src, dst, port)
                out.append(Planned(check, _explained(runner, verdict)))
    return out


def l7(ctx: Context) -> list[Planned]:
    """HTTP rules: for every flow they filter, the requests their rules name get through
    (200) and others are refused by the L7 proxy with 403, as the evaluator says."""
    if ctx.policy is None or not ctx.policy.policies:
        return []
    out: list[Planned] = []
    pods = sorted(ctx.plan.pods(), key=lambda p: p.ref)
    for dst in pods:
        for port in _ports(dst, "TCP"):
            for src in pods:
                if src.ref == dst.ref:
                    continue
                v = ctx.verdict(src, dst, port, "TCP")
                if v is None or not v.allowed or not (v.ingress.http_rules or v.egress.http_rules):
                    continue
                requests = {("POST", "/crossmesh-admin"), ("DELETE", "/")}
                for _rule, h in (*v.egress.http_rules, *v.ingress.http_rules):
                    method = h.method if h.method and h.method.isalpha() else "GET"
                    path = h.url_path if h.url_path and re.fullmatch(r"[\w/.-]*", h.url_path) else "/"
                    requests.add((method, path))
                for method, path in sorted(requests):
                    expected = ctx.expect_http(src, dst, port, method, path)
                    check = Check(
                        name=f"l7/{method} {path}: {src.ref} -> {dst.ref}:{port}",
                        kind="l7",
                        source=src.ref,
                        target=dst.ref,
                        port=f"{port}/TCP",
                        expected=expected,
                    )
                    out.append(Planned(check, _http_runner(ctx, src, dst, port, method, path)))
    return out


def _explained(runner: Runner, verdict: Verdict) -> Runner:
    def run(check: Check) -> None:
        runner(check)
        if not check.passed:
            check.detail = (
                f"data plane: {check.actual.value} ({check.detail}); policy: {verdict.verdict} — "
                f"egress: {verdict.egress.message}; ingress: {verdict.ingress.message}"
            )
        else:
            check.detail = verdict.egress.message if not verdict.egress.allowed else verdict.ingress.message

    return run


def services(ctx: Context) -> list[Planned]:
    from crossmesh.checks import services as service_checks

    if ctx.state is None:
        return []
    return [Planned(c, r) for c, r in service_checks.build(ctx, ctx.state)]


def fidelity_checks(ctx: Context) -> list[Planned]:
    if ctx.files is None:
        return []
    pairs = fidelity.tunnel_checks(ctx.plan, ctx.topo, ctx.files) + fidelity.pod_mtu_checks(
        ctx.plan, ctx.topo, ctx.files
    )
    return [Planned(check, run) for check, run in pairs]


def node_ports(ctx: Context) -> list[Planned]:
    from crossmesh.checks import service_types

    return [Planned(c, r) for c, r in service_types.node_ports(ctx)]


def headless(ctx: Context) -> list[Planned]:
    from crossmesh.checks import service_types

    return [Planned(c, r) for c, r in service_types.headless(ctx)]


BUILDERS = (
    fidelity_checks,
    pod_to_pod,
    pod_to_service,
    node_ports,
    headless,
    tunnel_mtu,
    mtu,
    underlay,
    nat,
    anti_spoofing,
    policy_matrix,
    l7,
    services,
)


def build(ctx: Context, pattern: str | None = None) -> list[Planned]:
    rx = re.compile(pattern) if pattern else None
    out: list[Planned] = []
    for builder in BUILDERS:
        items = builder(ctx)
        if rx is None:
            out += items
        elif builder is underlay:
            # These share one capture: selecting any of them runs them all.
            if any(rx.search(p.check.name) for p in items):
                out += items
        else:
            out += [p for p in items if rx.search(p.check.name)]
    return out


def run(planned: list[Planned], *, workers: int = 8, progress: Callable[[Check], None] | None = None) -> list[Check]:
    # Captures and staged failures run alone, so that other checks' traffic and kills do not mix in.
    alone = ("encryption", "nat", "service")
    parallel = [p for p in planned if p.check.kind not in alone]
    serial = [p for p in planned if p.check.kind in alone]

    def one(p: Planned) -> Check:
        t = time.monotonic()
        try:
            p.run(p.check)
        except Exception as err:  # a probe bug must show as a failed check, not stop the run
            p.check.actual, p.check.detail = Result.ERROR, f"{type(err).__name__}: {err}"
        p.check.seconds = time.monotonic() - t
        if progress:
            progress(p.check)
        return p.check

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, parallel))
    for p in serial:
        one(p)
    return [p.check for p in planned]
