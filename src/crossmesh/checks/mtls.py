"""`mtls/…` and `authz/…`: Istio's layer in the lab (issue 11), checked from outside the proxies.

- `mtls/encrypted`: a random marker POSTed between two pods (one pair per cluster/site pair, and
  pods on one node) is echoed back, and never shows in clear in any namespace but the two pods' own:
  every node, router and the internet capture while it crosses (the pods' veths are in their nodes);
- `mtls/identity`: the server sees the client's SPIFFE id (the `X-Forwarded-Client-Cert` its proxy
  adds, as an Envoy sidecar does) and its own;
- `mtls/strict-refuses-plaintext`: a client that bypasses its proxy (a socket with the proxy's own
  mark, as a pod without a sidecar) is reset by a STRICT workload the network lets it reach;
- `authz/allowed`, `authz/denied`: requests built from the AuthorizationPolicies selecting a workload
  (their methods and paths) meet what `policy trace` says: an answer, Envoy's 403 or a reset;
- `mtls/rotation`: certificates renewed on every node (`crossmesh lab rotate-certs`) while a request
  body streams: the stream completes on its connection, and the client's certificate is new after;
- `mtls/expired-refused`: a client certificate for the same identity, from the same intermediate,
  is taken while valid and refused once expired — the expiry alone decides.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from crossmesh.checks import probes
from crossmesh.checks.framework import CHECK_PATH, Context, Planned, Runner, Skips, ports, register
from crossmesh.checks.results import Check, Kind, Result
from crossmesh.drivers.lab import meshd, netns
from crossmesh.drivers.lab.meshcapture import PROXY_MARK
from crossmesh.drivers.lab.meshtls import contexts, spiffe_of
from crossmesh.identity.svid import make_csr, sign_csr
from crossmesh.istio.index import Mode
from crossmesh.model.plan import PodPlan
from crossmesh.plan.ingress import gateway_of
from crossmesh.policy.model import HttpRequest
from crossmesh.state.certs import new_key
from crossmesh.state.store import StateStore

STREAM_SECONDS = 2.0  # how long the rotation check's request body takes to send
EXPIRED_AGO = timedelta(days=1)


def _istio(ctx: Context) -> bool:
    return ctx.istio is not None and ctx.plan.istio is not None and ctx.state is not None


def _spiffe(ctx: Context, pod: PodPlan) -> str:
    assert ctx.policy is not None and ctx.plan.istio is not None  # noqa: S101 - builders check _istio first
    return spiffe_of(ctx.policy.endpoints[pod.ref], ctx.plan.istio.trust_domain).uri


def _mtls_port(ctx: Context, src: PodPlan, dst: PodPlan) -> int | None:
    """A TCP port of `dst` that `src`'s request reaches over mutual TLS: allowed by both layers, and
    not a port whose PeerAuthentication is DISABLE (the client's proxy would send it in clear)."""
    assert ctx.istio is not None and ctx.policy is not None  # noqa: S101
    dst_ep = ctx.policy.endpoints[dst.ref]
    for port in ports(dst, "TCP"):
        if ctx.istio.mode(dst_ep, port).mode is not Mode.DISABLE and ctx.allowed(src, dst, port, "TCP"):
            return port
    return None


def _pairs(ctx: Context) -> list[tuple[PodPlan, PodPlan, int]]:
    """One mTLS pair per (cluster, site) → (cluster, site) and one per node with two pods that talk."""
    out: list[tuple[PodPlan, PodPlan, int]] = []
    done: set[tuple[str, ...]] = set()
    pods = ctx.pods()
    for src in pods:
        for dst in pods:
            if src.ref == dst.ref or not ctx.connected(src, dst) or gateway_of(dst):
                continue  # a gateway pod takes no mesh proxy inbound: its own listener terminates TLS
            key = (
                ("node", src.node)
                if src.node == dst.node
                else (src.cluster, ctx.site_of(src), dst.cluster, ctx.site_of(dst))
            )
            if key in done:
                continue
            port = _mtls_port(ctx, src, dst)
            if port is not None:
                done.add(key)
                out.append((src, dst, port))
    return out


def _check(name: str, kind: Kind, src: PodPlan, dst: PodPlan | str, port: int | str, expected: Result) -> Check:
    target = dst if isinstance(dst, str) else dst.ref
    shown = port if isinstance(port, str) else f"{port}/TCP"
    return Check(
        name=f"{name}: {src.ref} -> {target}:{shown}",
        kind=kind,
        source=src.ref,
        target=target,
        port=shown,
        expected=expected,
    )


# --- mtls/encrypted ----------------------------------------------------------------------------
def _encrypted_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int) -> Runner:
    watched = sorted(ns.name for ns in ctx.topo.namespaces if ns.role != "pod")

    def run(check: Check) -> None:
        marker = f"cm-marker-{secrets.token_hex(12)}"
        caps = [probes.Capture(ns) for ns in watched]
        for c in caps:
            c.__enter__()
        try:
            result, answer, detail = probes.http(
                ctx.ep(src).namespace, str(dst.address), port, path=f"{CHECK_PATH}/{marker}", body=marker.encode()
            )
        finally:
            for c in caps:
                c.__exit__()
        broken = [c.ns for c in caps if c.error]
        if result is not Result.OK or answer is None or answer.get("body") != marker:
            check.actual, check.detail = Result.WRONG_ANSWER, f"the request itself: {result.value} {detail}".strip()
            return
        ends = {str(src.address), str(dst.address)}
        seen = [c.ns for c in caps if any({str(p.src), str(p.dst)} == ends and p.proto == 6 for p in c.packets)]
        clear = [c.ns for c in caps if any(marker.encode() in p.raw for p in c.packets)]
        if broken or not seen:
            check.actual = Result.ERROR
            check.detail = f"capture failed in {', '.join(broken)}" if broken else "no capture saw the connection"
        elif clear:
            check.actual, check.detail = Result.LEAK, f"the marker crossed in clear in {', '.join(clear)}"
        else:
            check.actual = Result.CLEAN
            check.detail = f"answered; the marker in no capture of {len(watched)} namespaces ({len(seen)} saw the TLS)"

    return run


@register(114)
def encrypted(ctx: Context) -> list[Planned]:
    """Between pods on every cluster/site pair and on one node: answered, and TLS on every wire."""
    if not _istio(ctx):
        return []
    return [
        Planned(_check("mtls/encrypted", Kind.MTLS, s, d, p, Result.CLEAN), _encrypted_runner(ctx, s, d, p))
        for s, d, p in _pairs(ctx)
    ]


# --- mtls/identity -----------------------------------------------------------------------------
def _identity_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int) -> Runner:
    want = f"By={_spiffe(ctx, dst)};"
    client = f";URI={_spiffe(ctx, src)}"

    def run(check: Check) -> None:
        result, answer, detail = probes.http(ctx.ep(src).namespace, str(dst.address), port, path=CHECK_PATH)
        xfcc = str(answer.get("xfcc", "")) if answer else ""
        ok = result is Result.OK and xfcc.startswith(want) and xfcc.endswith(client)
        check.actual = Result.OK if ok else Result.WRONG_ANSWER
        check.detail = f"the server saw {xfcc}" if result is Result.OK else f"{result.value} {detail}".strip()

    return run


@register(115)
def identity(ctx: Context) -> list[Planned]:
    """The server's app sees, from its proxy, the client's SPIFFE id and its own."""
    if not _istio(ctx):
        return []
    return [
        Planned(_check("mtls/identity", Kind.MTLS, s, d, p, Result.OK), _identity_runner(ctx, s, d, p))
        for s, d, p in _pairs(ctx)
    ]


# --- mtls/strict-refuses-plaintext --------------------------------------------------------------
def _plaintext_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int) -> Runner:
    def run(check: Check) -> None:
        ns = ctx.ep(src).namespace
        result, _, detail = probes.http(ns, str(dst.address), port, path=CHECK_PATH, mark=PROXY_MARK)
        check.actual = result
        check.detail = (detail or "answered in clear") if result is not Result.RESET else f"reset ({detail})"

    return run


@register(116)
def strict_refuses_plaintext(ctx: Context) -> list[Planned]:
    """Per STRICT workload port that a pod's request reaches (both layers), the same request in clear,
    from that pod past its own proxy: reset."""
    if not _istio(ctx):
        return []
    assert ctx.istio is not None and ctx.policy is not None  # noqa: S101
    out, done = [], set()
    for src, dst, port in _pairs(ctx):
        if ctx.istio.mode(ctx.policy.endpoints[dst.ref], port).mode is not Mode.STRICT or dst.ref in done:
            continue
        done.add(dst.ref)
        check = _check("mtls/strict-refuses-plaintext", Kind.MTLS, src, dst, port, Result.RESET)
        out.append(Planned(check, _plaintext_runner(ctx, src, dst, port)))
    return out


# --- authz/allowed, authz/denied ------------------------------------------------------------------
def _requests(ctx: Context, dst: PodPlan) -> list[tuple[str, str]]:
    """(method, path) pairs that exercise the policies selecting `dst`: each method and path they name
    (a prefix `x*` as `x` + "check", a suffix `*x` as "/check" + `x`), DELETE and the checks' own path."""
    assert ctx.istio is not None and ctx.policy is not None  # noqa: S101
    methods, paths = {"GET", "DELETE"}, {CHECK_PATH}
    for policy in ctx.istio.policies(ctx.policy.endpoints[dst.ref]):
        for rule in policy.rules:
            for op in rule.operations:
                methods.update(m.text for m in (*(op.methods or ()), *(op.not_methods or ())) if "*" not in m.text)
                for pattern in (*(op.paths or ()), *(op.not_paths or ())):
                    p = pattern.text
                    if p == "*":
                        continue
                    paths.add(p[:-1] + "check" if p.endswith("*") else "/check" + p[1:] if p.startswith("*") else p)
    return sorted((m, p) for m in methods for p in paths)


def _authz_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int, method: str, path: str) -> Runner:
    def run(check: Check) -> None:
        body = b"{}" if method in ("POST", "PUT", "PATCH") else b""
        result, _, detail = probes.http(
            ctx.ep(src).namespace, str(dst.address), port, path=path, method=method, body=body
        )
        check.actual, check.detail = result, detail

    return run


@register(117)
def authorization(ctx: Context) -> list[Planned]:
    """For each pod pair the network lets through to a workload with AuthorizationPolicies: the
    requests its policies speak of, each expected as `policy trace` judges it."""
    if not _istio(ctx):
        return []
    assert ctx.istio is not None and ctx.policy is not None  # noqa: S101
    out: list[Planned] = []
    skips = Skips(Kind.AUTHZ)
    pods = ctx.pods()
    for dst in pods:
        if not ctx.istio.policies(ctx.policy.endpoints[dst.ref]):
            continue
        if gateway_of(dst):
            # Istio's gateway Envoy would apply them; the lab's HAProxy does not: nothing to expect
            skips.add("AuthorizationPolicy on an ingress gateway: the lab's HAProxy does not apply it", dst.ref)
            continue
        requests = _requests(ctx, dst)
        for src in pods:
            if src.ref == dst.ref or not ctx.connected(src, dst):
                continue
            for port in ports(dst, "TCP"):
                verdict = ctx.verdict(src, dst, port, "TCP")
                if verdict is not None and not verdict.allowed:
                    skips.add("the network layer drops it before any mesh proxy: policy/denied checks it", dst.ref)
                    continue
                for method, path in requests:
                    request = HttpRequest(method, path, (("Host", str(dst.address)),))
                    refused = ctx.mesh_proxy(src, dst, port, request)
                    expected = ctx.expect_http(src, dst, port, method, path)
                    name = "authz/allowed" if refused is None and expected is Result.OK else "authz/denied"
                    check = _check(name, Kind.AUTHZ, src, dst, f"{port}/TCP {method} {path}", expected)
                    out.append(Planned(check, _authz_runner(ctx, src, dst, port, method, path)))
    return out + skips.planned()


# --- mtls/rotation ---------------------------------------------------------------------------
def _xfcc_hash(ctx: Context, src: PodPlan, dst: PodPlan, port: int) -> str:
    _, answer, _ = probes.http(ctx.ep(src).namespace, str(dst.address), port, path=CHECK_PATH)
    xfcc = str(answer.get("xfcc", "")) if answer else ""
    return next((f[5:] for f in xfcc.split(";") if f.startswith("Hash=")), "")


def _stream(ns: str, ip: str, port: int, chunks: int, on_first: threading.Event) -> tuple[bool, str]:
    """One POST whose body goes out in `chunks` pieces over STREAM_SECONDS on one connection; (the
    whole body came back in the answer, detail)."""
    piece = b"x" * 1024

    def run() -> tuple[bool, str]:
        try:
            with socket.create_connection((ip, port), timeout=10) as s:
                s.sendall(
                    f"POST {CHECK_PATH} HTTP/1.1\r\nHost: {ip}\r\nContent-Length: {len(piece) * chunks}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                for i in range(chunks):
                    s.sendall(piece)
                    if i == 0:
                        on_first.set()
                    time.sleep(STREAM_SECONDS / chunks)
                raw = b""
                while chunk := s.recv(65536):
                    raw += chunk
        except OSError as err:
            on_first.set()
            return False, f"the stream broke: {err}"
        whole = raw.startswith(b"HTTP/1.1 200") and raw.count(b"x") >= len(piece) * chunks
        return whole, "the whole body came back on its connection" if whole else raw[:80].decode(errors="replace")

    return netns.run_in(ns, run)


def _rotation_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int) -> Runner:
    def run(check: Check) -> None:
        assert ctx.state is not None  # noqa: S101
        before = _xfcc_hash(ctx, src, dst, port)
        started, box = threading.Event(), dict[str, tuple[bool, str]]()
        thread = threading.Thread(
            target=lambda: box.setdefault("r", _stream(ctx.ep(src).namespace, str(dst.address), port, 20, started))
        )
        thread.start()
        started.wait(10)
        try:
            renewed = meshd.rotate_certs(ctx.state)
            rotation = f"renewed on {len(renewed)} nodes"
        except Exception as err:  # noqa: BLE001 - a failed rotation is this check's finding
            rotation = f"rotation failed: {err}"
        thread.join(STREAM_SECONDS + 15)
        ok, detail = box.get("r", (False, "the stream did not finish"))
        after = _xfcc_hash(ctx, src, dst, port)
        new_cert = bool(before) and bool(after) and before != after
        check.actual = Result.OK if ok and new_cert else Result.WRONG_ANSWER
        cert = (
            "a new client certificate after" if new_cert else f"client certificate hash {before[:12]} -> {after[:12]}"
        )
        check.detail = f"{rotation}; {detail}; {cert}"

    return run


@register(118)
def rotation(ctx: Context) -> list[Planned]:
    """Certificates renewed on every node while one cross-site stream runs."""
    if not _istio(ctx):
        return []
    pairs = [(s, d, p) for s, d, p in _pairs(ctx) if s.node != d.node]
    if not pairs:
        return []
    src, dst, port = pairs[0]
    return [
        Planned(_check("mtls/rotation", Kind.MTLS, src, dst, port, Result.OK), _rotation_runner(ctx, src, dst, port))
    ]


# --- mtls/expired-refused ---------------------------------------------------------------------
def _client_context(ctx: Context, src: PodPlan, now: datetime) -> ssl.SSLContext:
    """A TLS client presenting `src`'s SPIFFE id, issued by its cluster's intermediate as of `now`
    (for the mesh's certificate lifetime): the key lives in memory only."""
    assert ctx.state is not None and ctx.plan.istio is not None  # noqa: S101
    store = StateStore(Path(ctx.state.state_dir))
    root, cas = store.istio_cas(ctx.plan.mesh, ctx.plan.istio.trust_domain, [c.name for c in ctx.plan.clusters], now)
    key = new_key()
    spiffe = spiffe_of(ctx.policy.endpoints[src.ref], ctx.plan.istio.trust_domain)  # type: ignore[union-attr]
    lifetime = min(ctx.plan.istio.cert_ttl, EXPIRED_AGO / 2)
    chain = sign_csr(cas[src.cluster], make_csr(key, spiffe), lambda s: s == spiffe, now, lifetime)
    return contexts(chain, key, (root,))[1]


def _proxy_refusal(log: Path, since: int) -> str:
    """The first refusal the node proxy logged after byte `since` of its log ("" if none)."""
    try:
        with log.open("rb") as fh:
            fh.seek(since)
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line for line in lines if "refused" in line), "")


def _expired_runner(ctx: Context, src: PodPlan, dst: PodPlan, port: int) -> Runner:
    def run(check: Check) -> None:
        assert ctx.state is not None  # noqa: S101
        ns, now = ctx.ep(src).namespace, datetime.now(UTC)
        valid = _client_context(ctx, src, now)
        expired = _client_context(ctx, src, now - EXPIRED_AGO)
        ip = str(dst.address)
        fresh, _, why = probes.http(ns, ip, port, path=CHECK_PATH, mark=PROXY_MARK, tls=valid)
        if fresh is not Result.OK:
            check.actual, check.detail = Result.ERROR, f"a valid certificate was not taken either: {fresh.value} {why}"
            return
        log = ctx.state.dir / "logs" / f"meshproxy-{dst.node}.log"
        since = log.stat().st_size if log.exists() else 0
        old, _, detail = probes.http(ns, ip, port, path=CHECK_PATH, mark=PROXY_MARK, tls=expired)
        # TLS 1.3: the client's handshake is done before the server judges its certificate; the
        # refusal is an alert or a close without an answer, and the server's proxy says why.
        refused = old is Result.RESET
        time.sleep(0.2)
        reason = _proxy_refusal(log, since)
        check.actual = Result.RESET if refused and "expired" in reason else old if not refused else Result.WRONG_ANSWER
        check.detail = f"valid: answered; expired: refused — {reason or 'the proxy logged no reason'}"
        if not refused:
            check.detail = f"valid: answered; expired: {old.value} {detail}".strip()

    return run


@register(119)
def expired_refused(ctx: Context) -> list[Planned]:
    """One workload per cluster: a client certificate valid a day ago only is refused; a valid one of
    the same identity and intermediate is taken."""
    if not _istio(ctx):
        return []
    out, done = [], set()
    for src, dst, port in _pairs(ctx):
        if dst.cluster in done:
            continue
        done.add(dst.cluster)
        check = _check("mtls/expired-refused", Kind.MTLS, src, dst, port, Result.RESET)
        out.append(Planned(check, _expired_runner(ctx, src, dst, port)))
    return out
