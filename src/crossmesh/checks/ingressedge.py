"""`ingress/tls` and `ingress/no-public-exposure`: what a gateway's load balancer shows the internet,
seen from the lab's client outside (`local`).

- `ingress/tls`: per HTTPS listener, the certificate verifies (the mesh's ingress CA or the
  listener Secret's own certificates) for its hostname as SNI; an unknown SNI is refused on a
  strict-sni port (no listener of the port without hostname); plain HTTP to the port gets no HTTP
  answer; per gateway, port 80 of the balancer is not published when no listener declares it;
- `ingress/no-public-exposure`: every public address of the lab — site routers, nodes with a public
  address, load balancers — on every TCP port the mesh knows, in one scan of parallel connects
  (a router that drops in silence costs one timeout in all): only the balancers' listener ports
  answer. One check per address, sharing the scan.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from crossmesh.checks import ingressclient
from crossmesh.checks.framework import Context, GatewayView, Planned, Runner, Skips, register
from crossmesh.checks.ingress import SCAN_TIMEOUT, Target, first_hop, target
from crossmesh.checks.ingress import check_of as _check
from crossmesh.checks.ingressclient import Ask
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.gateway.model import Listener, Protocol

WELL_KNOWN = (22, 80, 443, 2379, 4240, 6443)  # ssh, http(s), etcd, Cilium health, the API server
UNKNOWN_SNI = "unknown.crossmesh.invalid"


# --- ingress/tls -----------------------------------------------------------------------------------
@register(124)
def tls(ctx: Context) -> list[Planned]:
    """Per HTTPS listener: the chain verifies for its hostname, an unknown SNI is refused where the
    port is strict-sni, plain HTTP gets no HTTP answer; per gateway, port 80 is not published
    unless a listener declares it."""
    out: list[Planned] = []
    skips = Skips(Kind.INGRESS)
    for view in (ctx.ingress or {}).values():
        t = target(ctx, view)
        if isinstance(t, str):
            skips.add(t, view.plan.ref)
            continue
        listeners = view.gateway.listeners
        for li in (li for li in listeners if li.protocol is Protocol.HTTPS):
            if first_hop(ctx, view, li.port) is not None:
                skips.add("policy drops the client outside on the way to the gateway", f"{view.plan.ref} {li.name}")
                continue
            head = f"ingress/tls: {view.plan.ref} listener {li.name} ({li.port}/HTTPS)"
            host = ingressclient.host_for(li.hostname) if li.hostname else None
            out.append(
                Planned(
                    _check(f"{head}: certificate for {host or 'any name'}", view, li.port), _chain(t, view, li, host)
                )
            )
            strict = all(
                o.hostname is not None for o in listeners if o.port == li.port and o.protocol is Protocol.HTTPS
            )
            if strict and li == next(o for o in listeners if o.port == li.port):
                check = _check(f"{head}: unknown SNI {UNKNOWN_SNI} refused (strict-sni)", view, li.port, Result.RESET)
                out.append(Planned(check, _unknown_sni(t, li.port)))
            if li == next(o for o in listeners if o.port == li.port):
                check = _check(f"{head}: plain HTTP gets no HTTP answer", view, li.port, Result.RESET)
                out.append(Planned(check, _plaintext(t, li.port, host or t.address)))
        if not any(li.port == 80 for li in listeners):
            check = _check(
                f"ingress/tls: {view.plan.ref}: port 80 not published (no listener declares it)",
                view,
                80,
                Result.TIMEOUT,
            )
            out.append(Planned(check, _unpublished(t, 80)))
    return out + skips.planned()


def _chain(t: Target, view: GatewayView, li: Listener, host: str | None) -> Runner:
    def run(check: Check) -> None:
        trust = view.trust.get(li.name)
        if trust is None:
            check.actual, check.detail = (
                Result.ERROR,
                "no certificate to trust: no ingress CA in the state, or no Secret",
            )
            return
        context = ingressclient.tls_context(trust)
        context.check_hostname = host is not None
        got = ingressclient.handshake(t.ns, t.address, li.port, tls=context, server_name=host)
        check.actual = got.result
        check.detail = got.detail or (
            f"verified for {host or 'the default certificate'}: {', '.join(got.names)} issued by {got.issuer} "
            f"({got.version})"
        )

    return run


def _unknown_sni(t: Target, port: int) -> Runner:
    def run(check: Check) -> None:
        got = ingressclient.handshake(
            t.ns, t.address, port, tls=ingressclient.tls_context(None), server_name=UNKNOWN_SNI
        )
        check.actual = got.result
        check.detail = (
            f"handshake refused ({got.detail})"
            if got.result is Result.RESET
            else (got.detail or f"a certificate for {', '.join(got.names)} answered")
        )

    return run


def _plaintext(t: Target, port: int, host: str) -> Runner:
    def run(check: Check) -> None:
        got = ingressclient.request(t.ns, t.address, port, Ask(host, "/crossmesh-check"), tls=None)
        check.actual = got.result if got.result is not Result.OK else Result.WRONG_ANSWER
        check.detail = got.detail if got.result is not Result.OK else f"an HTTP answer in clear: {got.status}"

    return run


def _unpublished(t: Target, port: int) -> Runner:
    def run(check: Check) -> None:
        found = ingressclient.scan(t.ns, [(t.address, port)], timeout=SCAN_TIMEOUT)[(t.address, port)]
        check.actual = Result.WRONG_ANSWER if found is Result.OK else found
        check.detail = {Result.OK: "a connection was taken", Result.TIMEOUT: "dropped in silence"}.get(
            found, found.value
        )

    return run


# --- ingress/no-public-exposure ----------------------------------------------------------------------
def public_addresses(ctx: Context) -> dict[str, str]:
    """Every public address of the lab → what holds it: site routers, nodes, load balancers."""
    out = {str(a): f"site {s} router" for s, a in ctx.topo.site_wan.items()}
    out |= {str(n.public_address): f"node {n.name}" for n in ctx.plan.nodes if n.public_address is not None}
    out |= {str(a): f"load balancer of {ref}" for ref, a in ctx.topo.load_balancers.items()}
    return out


def known_ports(ctx: Context) -> set[int]:
    """Every TCP port the mesh knows: Service ports, node ports, listener ports, pods' ports, and
    the well-known ports of the machines (ssh, HTTP(S), etcd, Cilium's health, the API server)."""
    out = set(WELL_KNOWN)
    for c in ctx.plan.clusters:
        for s in c.services:
            out |= {p for p, proto, _, _ in s.ports if proto == "TCP"}
            out |= {n for _, proto, n in s.node_ports if proto == "TCP"}
        for p in c.pods:
            out |= {port for port, proto, _ in p.ports if proto == "TCP"}
    out |= {li.port for g in ctx.plan.ingress for li in g.listeners}
    return out


@register(126)
def no_public_exposure(ctx: Context) -> list[Planned]:
    """From `local`: every public address on every port the mesh knows; only the listeners answer."""
    if not ctx.topo.local_ns or not ctx.plan.ingress:
        return []
    addresses, ports = public_addresses(ctx), sorted(known_ports(ctx))
    allowed = {
        (str(ctx.topo.load_balancers[g.ref]), li.port)
        for g in ctx.plan.ingress
        if g.ref in ctx.topo.load_balancers
        for li in g.listeners
    }
    scan = _SharedScan(ctx.topo.local_ns, [(a, p) for a in addresses for p in ports])
    out = []
    for address, what in sorted(addresses.items()):
        mine = sorted(p for a, p in allowed if a == address)
        name = f"ingress/no-public-exposure: local -> {address} ({what}), {len(ports)} ports"
        check = Check(
            name=name,
            kind=Kind.INGRESS,
            source="local",
            target=address,
            port=",".join(map(str, mine)) or "-",
            expected=Result.OK,
        )
        out.append(Planned(check, _exposure(scan, address, ports, set(mine))))
    return out


class _SharedScan:
    """One scan of every public address for all the exposure checks: the first to run makes it."""

    def __init__(self, ns: str, targets: list[tuple[str, int]]) -> None:
        self.ns, self.targets = ns, targets
        self._lock = threading.Lock()
        self._found: dict[tuple[str, int], Result] | None = None
        self.seconds = 0.0

    def found(self) -> dict[tuple[str, int], Result]:
        with self._lock:
            if self._found is None:
                started = time.monotonic()
                self._found = ingressclient.scan(self.ns, self.targets, timeout=SCAN_TIMEOUT)
                self.seconds = time.monotonic() - started
            return self._found


def _exposure(scan: _SharedScan, address: str, ports: list[int], allowed: set[int]) -> Runner:
    def run(check: Check) -> None:
        found = scan.found()
        answered = {p for p in ports if found.get((address, p)) is Result.OK}
        extra, missing = sorted(answered - allowed), sorted(allowed - answered)
        check.actual = Result.WRONG_ANSWER if extra or missing else Result.OK
        kinds = Counter(found.get((address, p), Result.ERROR).value for p in ports if p not in answered)
        parts = [f"answered: {', '.join(map(str, sorted(answered))) or 'nothing'}"]
        if extra:
            parts.insert(0, f"exposed: {', '.join(map(str, extra))}")
        if missing:
            parts.insert(0, f"listener ports not answering: {', '.join(map(str, missing))}")
        parts.append("the rest " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
        check.detail = "; ".join(parts) + f" (one scan of {len(scan.targets)} address:ports in {scan.seconds:.1f} s)"

    return run
