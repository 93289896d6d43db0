"""The ingress gateway's cost (issue 12): `local` → load balancer → HAProxy → cluster3's pods, against
the same requests sent from the gateway's node straight to the pods, alternated in one run.

    sudo python3 benchmarks/bench_ingress.py [--rounds 4] [--requests 200] [--fresh 100]
        [--concurrency 16] [--seconds 4] [--tag d12b]

ONE lab of examples/three-clouds, copied to a temporary directory and brought up under its own tag
(`--tag`, default a random one; no flow logs: the flow daemon would add its own per-connection
cost to both paths), taken down with `lab down --mesh` at the end, also on failure.

Two paths carry the same request, `GET /bench` with `Host: rebels.example.com` and
`X-Version: beta` (the route's `beta` rule: every request to rebel-base-gcp, cluster3's two pods on
gcp-talos-1, a backend in another cloud):

- **gateway**: from the client outside (`cm-<tag>-local`, the internet side) over HTTPS to the
  gateway's load balancer address (the azure-we site router's DNAT to azure-talos-1's node port,
  the node's Service NAT to pod rebels-istio-0), SNI rebels.example.com, the mesh's ingress CA
  trusted; HAProxy terminates TLS, picks the rule and connects to rebel-base-gcp's ClusterIP, and
  the mesh proxy of azure-talos-1 carries that in mTLS as `rebels-istio` through WireGuard to
  gcp-talos-1's proxy and the pod's echo app;
- **direct**: plain HTTP to the two cluster3 pods' addresses, port 80, alternately, from the
  network namespace of the gateway's pod on azure-talos-1. Not from the node's own namespace: the
  example's default deny admits only x-wing and the gateway to rebel-base (a node of cluster2 is
  not either: its connection is dropped, checked at the start), and rebel-base is mesh-wide STRICT
  with an AuthorizationPolicy for x-wing and rebels-istio alone, so no plaintext request could
  reach it anyway. From the gateway's pod the request takes exactly the leg HAProxy's takes
  (outbound capture, the node proxy's mTLS as rebels-istio, WireGuard, the far proxy, the app)
  minus what the gateway adds: the router's DNAT, the node port, TLS to the client and HAProxy.
  The difference of the two paths is the gateway's cost.

The lab's echo app answers every request with `Connection: close`, so every request opens a new
backend connection on both paths — a new mTLS connection between the two node proxies. Through the
gateway the client's connection stays open (HAProxy keeps it alive and closes only its server
side); directly, the client must reconnect for each request (counted as `reconnects`).

Per round, for each kind (the order of the two paths flips every round, so the shared host's other
load falls on both alike):
- (a) `keepalive`: `--requests` sequential requests on one kept-alive connection (latency);
- (b) `fresh`: `--fresh` sequential requests, each on a new connection (through the gateway a full
  TLS 1.3 handshake with HAProxy each: no session resumption);
- (c) `concurrent`: `--concurrency` clients, each on its own kept-alive connection, for `--seconds`
  s: requests per second (throughput).
The client is a small program of this benchmark, threads over blocking sockets, run in the client's
namespace; it reports its own CPU time. Each phase takes the CPU time of HAProxy, both node proxies,
the far echo app, both wireguard-go and the services daemon (/proc/<pid>/stat), and the host's busy
time. Ratios are taken per round (gateway against the direct visit of the same round), then the
median. Every answer must come from cluster3 (checked on its body), every request succeed.

Results: benchmarks/results/ingress.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_mesh_mtls import _host_busy, _pct, _ticks  # noqa: E402

from crossmesh.drivers.lab import firewall, ingressd, netns  # noqa: E402
from crossmesh.drivers.lab import lab as labs  # noqa: E402

ROOT = HERE.parent
GATEWAY = "cluster2/default/rebels"
GATEWAY_POD = "cluster2/default/rebels-istio-0"
BACKENDS = ("cluster3/default/rebel-base-0", "cluster3/default/rebel-base-1")
HOST, PORT = "rebels.example.com", 443
PATHS = ("gateway", "direct")
KINDS = ("keepalive", "fresh", "concurrent")

CLIENT = r"""
import json, os, socket, ssl, sys, threading, time
spec = json.loads(sys.argv[1])
REQ = ("GET /bench HTTP/1.1\r\nHost: %s\r\nX-Version: beta\r\n\r\n" % spec["host"]).encode()
ctx = None
if spec["tls"]:
    ctx = ssl.create_default_context(cafile=spec["ca"])
    ctx.options |= ssl.OP_NO_TICKET  # a full handshake on every new connection
targets = [tuple(t) for t in spec["targets"]]
class Conn:
    def __init__(self, n):
        self.sock, self.buf, self.n = None, b"", n
    def open(self):
        s = socket.create_connection(targets[self.n % len(targets)], timeout=10)
        self.n += 1
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(s, server_hostname=spec["host"]) if ctx else s
        self.buf = b""
    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None
    def request(self):
        # one request and its whole answer; True if the server keeps the connection
        self.sock.sendall(REQ)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the answer's head")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        low = head.lower()
        length = int(low.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the body")
            rest += chunk
        body, self.buf = rest[:length], rest[length:]
        if not head.startswith(b"HTTP/1.1 200") or b'"cluster": "cluster3"' not in body:
            raise ValueError(head.split(b"\r\n", 1)[0] + b" " + body[:80])
        return b"connection: close" not in low
def run(kind, count, deadline, n, out):
    c, ms, errors, reconnects = Conn(n), [], [], 0
    i = 0
    while (i < count) if deadline is None else (time.monotonic() < deadline):
        i += 1
        t0 = time.perf_counter()
        try:
            if c.sock is None:
                c.open()
                reconnects += 1
            keep = c.request()
            ms.append((time.perf_counter() - t0) * 1000)
            if kind == "fresh" or not keep:
                c.close()
        except (OSError, ValueError, IndexError) as err:
            errors.append(repr(err)[:200])
            c.close()
    c.close()
    out.append((ms, errors, reconnects))
out, t0 = [], time.monotonic()
deadline = None if spec["seconds"] is None else t0 + spec["seconds"]
threads = [threading.Thread(target=run, args=(spec["kind"], spec["count"], deadline, i, out))
           for i in range(spec["concurrency"])]
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.monotonic() - t0
cpu = os.times()
print(json.dumps({"ms": [x for o in out for x in o[0]], "errors": [x for o in out for x in o[1]][:20],
                  "error_count": sum(len(o[1]) for o in out), "reconnects": sum(o[2] for o in out),
                  "wall_s": wall, "client_cpu_s": cpu.user + cpu.system}))
"""


# --- the lab ----------------------------------------------------------------------------------------
def _mesh(tmp: Path) -> Path:
    target = tmp / "three-clouds"
    shutil.copytree(ROOT / "examples/three-clouds", target, ignore=shutil.ignore_patterns(".crossmesh"))
    return target / "mesh.yaml"


def _crossmesh(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "crossmesh", *args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"crossmesh {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def load_balancer(st: labs.LabState, gateway: str, port: int) -> str:
    """The gateway's public address: the daddr of its DNAT rule on a site router (by its comment)."""
    comment = firewall.load_balancer_comment(gateway, port)
    for router in st.sites.values():
        listing = subprocess.run(
            ["ip", "netns", "exec", router, "nft", "-j", "list", "ruleset"], capture_output=True, text=True, check=True
        ).stdout
        for item in json.loads(listing)["nftables"]:
            rule = item.get("rule")
            if rule is None or rule.get("comment") != comment:
                continue
            for e in rule["expr"]:
                m = e.get("match", {})
                if m.get("left", {}).get("payload", {}).get("field") == "daddr":
                    return str(m["right"])
    raise SystemExit(f"no load balancer rule {comment!r} on any site router of cm-{st.tag}")


def _node_is_refused(st: labs.LabState, node: str, address: str) -> bool:
    """Whether a plain connection from the gateway's node to a backend pod gets nowhere (the policy drops it)."""

    def probe() -> bool:
        try:
            with socket.create_connection((address, 80), timeout=1.5):
                return False
        except OSError:
            return True

    return netns.run_in(st.nodes[node], probe)


# --- one measurement --------------------------------------------------------------------------------
def _roles(st: labs.LabState) -> dict[str, int]:
    """The processes on the two paths whose CPU each phase records."""
    gw_node, far = st.pods[GATEWAY_POD].node, st.pods[BACKENDS[0]].node
    roles = {"haproxy (gateway)": st.ingress[GATEWAY_POD]}
    roles |= {f"mesh proxy {n}": st.mesh_proxies[n] for n in (gw_node, far)}
    roles[f"echo app {far}"] = st.workloads[far]
    roles |= {f"wireguard-go {d.node}": d.pid for d in st.wireguard.values() if d.node in (gw_node, far)}
    if st.services_pid:
        roles["services daemon"] = st.services_pid
    return roles


def _measure(spec: dict[str, Any], ns: str, roles: dict[str, int]) -> dict[str, Any]:
    """Run the client once in `ns`; its answer with the CPU per role over the run (CPU s per wall s)."""
    hz = os.sysconf("SC_CLK_TCK")
    before = {k: _ticks(p) for k, p in roles.items()}
    host0, t0 = _host_busy(), time.monotonic()
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=(spec["seconds"] or 0) + 300)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"client in {ns} failed: {done.stderr}")
    out: dict[str, Any] = json.loads(done.stdout)
    cpu = {k: (_ticks(p) - before[k]) / hz / wall for k, p in roles.items()}
    cpu["benchmark client"] = out["client_cpu_s"] / wall
    cpu["host busy (of 2 CPUs)"] = (_host_busy() - host0) / hz / wall
    out["cpu"] = {k: round(v, 3) for k, v in cpu.items()}
    return out


def _specs(st: labs.LabState, lb: str, ca: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """Per path: the namespace the client runs in and what it connects to."""
    pods = [(str(st.pods[b].address), 80) for b in BACKENDS]
    return {
        "gateway": (st.local, {"tls": True, "ca": str(ca), "targets": [(lb, PORT)], "host": HOST}),
        "direct": (st.pods[GATEWAY_POD].namespace, {"tls": False, "ca": None, "targets": pods, "host": HOST}),
    }


def visit(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """The client's arguments for one kind of measurement."""
    if kind == "concurrent":
        return {"kind": kind, "count": 0, "seconds": args.seconds, "concurrency": args.concurrency}
    count = args.requests if kind == "keepalive" else args.fresh
    return {"kind": kind, "count": count, "seconds": None, "concurrency": 1}


# --- report -----------------------------------------------------------------------------------------
def summary(res: dict[str, Any]) -> dict[str, Any]:
    """Per kind: p50/p99 and requests/s per path, the gateway's added ms and its throughput ratio
    (per round, then the median), CPU per role, and the busiest process of the gateway's phase."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        runs = {p: res["runs"][kind][p] for p in PATHS}
        row: dict[str, Any] = {}
        for p in PATHS:
            ms = [x for r in runs[p] for x in r["ms"]]
            row[p] = {
                "requests": len(ms),
                "errors": sum(r["error_count"] for r in runs[p]),
                "reconnects": sum(r["reconnects"] for r in runs[p]),
                "p50_ms": round(_pct(ms, 50), 3),
                "p99_ms": round(_pct(ms, 99), 3),
                "rps": round(statistics.median(len(r["ms"]) / r["wall_s"] for r in runs[p]), 1),
                "cpu": {k: round(statistics.median(r["cpu"][k] for r in runs[p]), 3) for k in runs[p][0]["cpu"]},
                "cpu_ms_per_request": {
                    k: round(
                        statistics.median(r["cpu"][k] * r["wall_s"] * 1000 / max(1, len(r["ms"])) for r in runs[p]), 3
                    )
                    for k in runs[p][0]["cpu"]
                    if not k.startswith("host")
                },
            }
        g, d = row["gateway"], row["direct"]
        pairs = list(zip(runs["gateway"], runs["direct"], strict=True))
        row["added_p50_ms"] = round(g["p50_ms"] - d["p50_ms"], 3)
        row["added_p99_ms"] = round(g["p99_ms"] - d["p99_ms"], 3)
        row["added_p50_ms_median_of_rounds"] = round(
            statistics.median(statistics.median(a["ms"]) - statistics.median(b["ms"]) for a, b in pairs), 3
        )
        row["rps_ratio"] = round(
            statistics.median((len(a["ms"]) / a["wall_s"]) / (len(b["ms"]) / b["wall_s"]) for a, b in pairs), 3
        )
        # The process that spends the most CPU per request caps the rate first once the host has a
        # CPU for it: the Python ones (proxies, echo app) are single-threaded, so 1 CPU s per s at most.
        per_req = {k: v for k, v in g["cpu_ms_per_request"].items() if k != "benchmark client"}
        top = max(per_req, key=lambda k: per_req[k])
        row["bottleneck"] = {
            "process": top,
            "cpu_ms_per_request": per_req[top],
            "rps_at_one_cpu": round(1000 / per_req[top]),
        }
        out[kind] = row
    return out


def markdown(s: dict[str, Any]) -> str:
    """The summary as the README's table."""
    lines = [
        "| kind | gateway p50 / p99 | direct p50 / p99 | added p50 / p99 | gateway req/s | direct req/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, r in s.items():
        g, d = r["gateway"], r["direct"]
        lines.append(
            f"| {kind} | {g['p50_ms']:.2f} / {g['p99_ms']:.2f} ms | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} ms "
            f"| {r['added_p50_ms']:+.2f} / {r['added_p99_ms']:+.2f} ms | {g['rps']:,.0f} | {d['rps']:,.0f} "
            f"| {r['rps_ratio']:.2f} |"
        )
    lines += ["", "| CPU s per s (ms per request) | " + " | ".join(f"{k} {p}" for k in s for p in PATHS) + " |"]
    lines.append("| --- |" + " ---: |" * (len(s) * len(PATHS)))
    for role in next(iter(s.values()))["gateway"]["cpu"]:
        cells = []
        for k in s:
            for p in PATHS:
                per = s[k][p]["cpu_ms_per_request"].get(role)
                cells.append(f"{s[k][p]['cpu'][role]:.2f}" + ("" if per is None else f" ({per:.2f})"))
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=200, help="(a) sequential requests on one connection")
    ap.add_argument("--fresh", type=int, default=100, help="(b) sequential requests, a new connection each")
    ap.add_argument("--concurrency", type=int, default=16, help="(c) concurrent kept-alive clients")
    ap.add_argument("--seconds", type=float, default=4.0, help="(c) seconds per visit")
    ap.add_argument("--tag", default=None, help="lab tag, 4 hex digits (default: a random one)")
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    tag = args.tag or secrets.token_hex(2)
    started = time.monotonic()
    res: dict[str, Any] = {"args": vars(args) | {"tag": tag}, "load_before": os.getloadavg()}
    res["runs"] = {k: {p: [] for p in PATHS} for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="bench-ingress-") as tmp:
        mesh = _mesh(Path(tmp))
        state = mesh.parent / "state"
        try:
            t0 = time.monotonic()
            _crossmesh("lab", "up", str(mesh), "--state", str(state), "--tag", tag, "--no-flow-logs")
            res["lab_up_s"] = round(time.monotonic() - t0, 2)
            st = labs.LabState.load(tag)
            assert st is not None
            lb = load_balancer(st, GATEWAY, PORT)
            node = st.pods[GATEWAY_POD].node
            res["node_to_pod_dropped"] = _node_is_refused(st, node, str(st.pods[BACKENDS[0]].address))
            specs, roles = _specs(st, lb, state / "ingress-pki" / "ca.crt"), _roles(st)
            stats0 = ingressd.read_stats(st, GATEWAY_POD)
            print(
                f"lab cm-{tag} up in {res['lab_up_s']} s; load balancer {lb}; {node} → pod plain: "
                f"{'dropped' if res['node_to_pod_dropped'] else 'answered'}",
                flush=True,
            )
            for rnd in range(args.rounds):
                for kind in KINDS:
                    for path in PATHS if rnd % 2 == 0 else PATHS[::-1]:
                        ns, target = specs[path]
                        run = _measure(visit(kind, args) | target, ns, roles)
                        res["runs"][kind][path].append(run)
                        ms = run["ms"]
                        print(
                            f"  round {rnd + 1} {kind:10} {path:7}: {len(ms) / run['wall_s']:7.1f} req/s, "
                            f"p50 {_pct(ms, 50):6.2f} ms, p99 {_pct(ms, 99):6.2f} ms, "
                            f"{run['error_count']} errors, {run['reconnects']} connections",
                            flush=True,
                        )
            stats1 = ingressd.read_stats(st, GATEWAY_POD)
            res["haproxy_requests"] = {
                f"{b} {s}": c.sessions - stats0.get((b, s), c).sessions
                for (b, s), c in stats1.items()
                if c.sessions != stats0.get((b, s), c).sessions or (b, s) not in stats0
            }
        finally:
            subprocess.run([sys.executable, "-m", "crossmesh", "lab", "down", "--mesh", str(mesh)], capture_output=True)
            labs.down(tag)  # what a `lab up` that failed before writing its state left, by this lab's tag
    res["summary"] = summary(res)
    res["load_after"] = os.getloadavg()
    res["seconds"] = round(time.monotonic() - started, 1)
    table = markdown(res["summary"])
    print(table)
    print(f"HAProxy requests by (backend, server): {res['haproxy_requests']}")
    print(f"load average before {res['load_before']}, after {res['load_after']}; {res['seconds']:.0f} s")
    out = ROOT / "benchmarks" / "results" / "ingress.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res | {"markdown": table}, indent=1, default=str))


if __name__ == "__main__":
    main()
