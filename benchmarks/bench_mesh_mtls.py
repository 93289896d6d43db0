"""The service mesh's cost (issue 11): plain vs mTLS pod → pod, across sites and on one site, in one run.

    sudo python3 benchmarks/bench_mesh_mtls.py [--rounds 4] [--workloads 16] [--mb-across 30]
        [--mb-same 200] [--requests 200] [--keepalive 500] [--conn-seconds 3] [--concurrency 16]

ONE lab of tests/meshes/hybrid-wireguard (the hybrid example's nodes and apps joined by WireGuard, as it was when
these numbers were first taken), copied to a temporary directory under its own name (so
its own lab tag) and removed by that tag at the end, also on failure. The example has spec.istio
and a mesh-wide STRICT PeerAuthentication; the copy runs `--workloads` replicas of tkb on
aws-worker-1 (the rotation's "node with N workloads") and no flow logs (`--no-flow-logs`: the
flow daemon would add its own per-connection cost to both states).

"Plain" means what the issue means, the same pods WITHOUT the mesh: the mesh file without
`spec.istio`, brought up with `crossmesh lab up` on the running lab, which stops the CA and the
node proxies and removes every pod's capture table (checked: no `cm_mesh` table in the client's
pod, and the echo workload reports no X-Forwarded-Client-Cert). "mTLS" is the file with it again
(capture, both node proxies, TLS 1.3 with the pods' SVIDs, transparent connection to the app; the
echo workload reports the client's SPIFFE id). The two states alternate `--rounds` times (mTLS,
plain, mTLS, plain, …) on the same pods, so the shared 2-CPU host's other load falls on both alike;
ratios are taken per round (each mTLS visit against the plain visit after it), then the median.
Each `lab up` that switches is timed (the reconcile).

Client: pod demo-app-0 (openstack-worker). Servers, a small asyncio program of this benchmark run
in the server pod's namespace (`ip netns exec`): tkb-0 on aws-worker-1 ("across sites": the sites'
WireGuard, wireguard-go) and monitoring-0 on openstack-master ("same site": another node, the site
network, no tunnel). It serves 5001 (a sink: reads the announced byte count, answers it), 5002
(HTTP/1.1 with keep-alive, a 2-byte body; `Connection: close` honoured) and 5003 (a paced stream).
The lab's own echo workload answers `Connection: close` always, hence our server for keep-alive.

In every visit, for each path (order alternating per round):
- throughput: 2 transfers (`--mb-across` / `--mb-same` MB), connect → the sink's count;
- latency: `--requests` sequential GETs, each on a fresh connection (connect, request, answer,
  close), and `--keepalive` sequential GETs on one kept-alive connection; p50 / p99 of all visits;
- new connections/s: a client process in the client pod keeps `--concurrency` connections going
  for `--conn-seconds` s: connect, GET, read the answer, close with a reset (SO_LINGER 0: no
  TIME_WAIT to exhaust ports). Under mTLS every one is a TLS 1.3 handshake with client
  certificates on both node proxies (openstack-worker's originates, the server node's terminates).
Every phase takes the CPU time (/proc/<pid>/stat utime+stime, threads and children included) of
each wireguard-go, node proxy, the CA, each echo workload process, our server and client, this
process, and the host's busy time (/proc/stat).

Rotation (mTLS, before the rounds): a stream tkb-0 → demo-app-0 (across sites, 1 KiB every 10 ms
on one connection) runs through: 3 s untouched, then `crossmesh lab rotate-certs` (timed from the
command line, and as it reports itself), SIGUSR1 to aws-worker-1's proxy alone (N workloads) and
to openstack-worker's alone (2), each timed to its "rotation done" log line, 1.5 s apart, repeated
`--rotations` times. The client records when each read returns; the largest gap between reads
before the first rotation is compared with the largest inside a rotation (signal → done + 0.3 s).
The stream must end complete on its one connection (no error, no reconnect).

Results: benchmarks/results/mesh_mtls.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns, topology
from crossmesh.drivers.lab.state import LAB_ROOT

ROOT = Path(__file__).resolve().parents[1]
CLIENT_POD = "k3s/demo/demo-app-0"
PATHS = {"across sites": "k3s/microservices/tkb-0", "same site": "k3s/demo/monitoring-0"}
SINK, HTTP, STREAM = 5001, 5002, 5003
ECHO_PORT = {"k3s/microservices/tkb-0": 3000, "k3s/demo/monitoring-0": 9090}

SERVER = r"""
import asyncio
async def sink(r, w):
    try:
        size, got = int((await r.readline()).strip()), 0
        while got < size and (b := await r.read(1 << 16)):
            got += len(b)
        w.write(b"%d\n" % got)
        await w.drain()
    finally:
        w.close()
async def http(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            close = b"connection: close" in head.lower()
            extra = b"Connection: close\r\n" if close else b""
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + extra + b"\r\nok")
            await w.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        w.close()
async def stream(r, w):
    period, seconds = (float(x) for x in (await r.readline()).split())
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(int(seconds * 1000 / period)):
        await asyncio.sleep(max(0.0, start + i * period / 1000 - loop.time()))
        w.write(b"x" * 1024)
        await w.drain()
    w.close()
async def main():
    for handler, port in ((sink, 5001), (http, 5002), (stream, 5003)):
        await asyncio.start_server(handler, "0.0.0.0", port, backlog=1024)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

CONNECTOR = r"""
import asyncio, socket, struct, sys, time
host, port, conc, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
REQ = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
async def worker(stop, counts):
    while time.monotonic() < stop:
        w = None
        try:
            r, w = await asyncio.open_connection(host, port)
            w.write(REQ)
            data = await asyncio.wait_for(r.readuntil(b"\r\n\r\nok"), 10)
            counts[0 if data.startswith(b"HTTP/1.1 200") else 1] += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            counts[1] += 1
        finally:
            if w is not None:
                w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
async def main():
    counts, t0 = [0, 0], time.monotonic()
    await asyncio.gather(*(worker(t0 + secs, counts) for _ in range(conc)))
    print(counts[0], counts[1], time.monotonic() - t0)
asyncio.run(main())
"""


# --- the lab and its two states -------------------------------------------------------------------
def _mesh(tmp: Path, workloads: int) -> tuple[Path, str]:
    target = tmp / "mesh"
    shutil.copytree(ROOT / "tests/meshes/hybrid-wireguard", target, ignore=shutil.ignore_patterns(".crossmesh"))
    name = f"b{uuid.uuid4().hex[:10]}"
    mesh = target / "mesh.yaml"
    mesh.write_text(mesh.read_text().replace("  name: hybrid-wireguard", f"  name: {name}", 1))
    demo = target / "apps" / "demo.yaml"
    text = demo.read_text()
    tkb = text.index("  name: tkb\n")
    at = text.index("  replicas: 2", tkb)
    demo.write_text(text[:at] + f"  replicas: {workloads}" + text[at + len("  replicas: 2") :])
    return mesh, name


def _lab_up(mesh: Path, istio: bool) -> dict[str, Any]:
    """Bring the lab to the state with (istio) or without spec.istio; the reconcile's times."""
    text = mesh.read_text()
    block = "  istio:                           # seed 001's Istio: mTLS STRICT between workloads (apps/istio.yaml)\n    workloadCertTTL: 24h\n"  # noqa: E501
    saved = mesh.with_suffix(".istio")
    if not saved.exists():
        assert block in text, "the example's spec.istio block changed: update this benchmark"
        saved.write_text(text)
    mesh.write_text(saved.read_text() if istio else saved.read_text().replace(block, ""))
    started = time.monotonic()
    cmd = ["crossmesh", "lab", "up", str(mesh), "--state", str(mesh.parent / "state"), "--no-flow-logs"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"lab up failed:\n{done.stdout}\n{done.stderr}")
    m = re.search(r"(\d+) changes in ([\d.]+) s", done.stdout)
    return {"wall_s": round(wall, 3), "changes": int(m[1]) if m else None, "reported_s": float(m[2]) if m else None}


def _check_state(st: labs.LabState, istio: bool) -> None:
    """The state is what it claims: capture table present or not, xfcc or not at the echo workload."""
    client = st.pods[CLIENT_POD]
    tables = subprocess.run(
        ["ip", "netns", "exec", client.namespace, "nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert ("cm_mesh" in tables) == istio, f"capture table in {client.namespace}: {tables!r} (istio={istio})"
    for to, port in ECHO_PORT.items():
        answer = json.loads(_get(client.namespace, str(st.pods[to].address), port).split(b"\r\n\r\n", 1)[1])
        assert bool(answer["xfcc"]) == istio, f"{to}: xfcc {answer['xfcc']!r} (istio={istio})"


def _get(ns: str, host: str, port: int) -> bytes:
    def call() -> bytes:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"GET /check HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data

    return netns.run_in(ns, call)


# --- CPU per process ------------------------------------------------------------------------------
def _ticks(pid: int, children: bool = True) -> int:
    """utime+stime of a process (all threads) and of its live descendants, in clock ticks. For this
    process: its own and that of its reaped children (the connection client), not the live ones
    (the servers are counted apart)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        total = int(fields[11]) + int(fields[12])
        if not children:
            return total + int(fields[13]) + int(fields[14])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _ticks(int(child))
        return total
    except (OSError, IndexError, ValueError):
        return 0


def _host_busy() -> int:
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + nice + system + irq + softirq + steal


class Cpu:
    """CPU seconds per process role over a phase (roles with the node they serve)."""

    HZ = os.sysconf("SC_CLK_TCK")

    def __init__(self, st: labs.LabState, extra: dict[str, int]) -> None:
        self.pids = {f"wireguard-go {d.node}": d.pid for d in st.wireguard.values()}
        self.pids |= {f"echo workload {n}": p for n, p in st.workloads.items()}
        self.pids |= {f"mesh proxy {n}": p for n, p in st.mesh_proxies.items()}
        if st.mesh_ca_pid:
            self.pids["mesh CA"] = st.mesh_ca_pid
        self.pids |= extra | {"benchmark client": -os.getpid()}

    def __enter__(self) -> Cpu:
        self.t0, self.host0 = time.monotonic(), _host_busy()
        self.before = {k: _ticks(abs(p), p > 0) for k, p in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.used = {k: (_ticks(abs(p), p > 0) - self.before[k]) / self.HZ for k, p in self.pids.items()}
        self.used["host busy (all processes, 2 CPUs)"] = (_host_busy() - self.host0) / self.HZ


def _add_cpu(into: dict[str, Any], cpu: Cpu) -> None:
    into["wall_s"] = into.get("wall_s", 0.0) + cpu.wall
    for k, v in cpu.used.items():
        into.setdefault("cpu_s", {})[k] = into.get("cpu_s", {}).get(k, 0.0) + v


# --- measurements ---------------------------------------------------------------------------------
def _transfer(ns: str, host: str, size: int) -> float:
    block = b"\0" * (1 << 16)

    def send() -> float:
        started = time.perf_counter()
        with socket.create_connection((host, SINK), timeout=60) as s:
            s.sendall(f"{size}\n".encode())
            sent = 0
            while sent < size:
                n = min(len(block), size - sent)
                s.sendall(block[:n])
                sent += n
            assert s.recv(64).strip() == str(size).encode(), "the sink did not get every byte"
        return time.perf_counter() - started

    return netns.run_in(ns, send)


def _read_answer(s: socket.socket) -> None:
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        chunk = s.recv(4096)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data


def _latencies(ns: str, host: str, fresh: int, kept: int, errors: list[str]) -> tuple[list[float], list[float]]:
    """Milliseconds per request: on fresh connections, then on one kept-alive connection."""

    def measure() -> tuple[list[float], list[float]]:
        a: list[float] = []
        b: list[float] = []
        for _ in range(fresh):
            t0 = time.perf_counter()
            try:
                with socket.create_connection((host, HTTP), timeout=10) as s:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                    _read_answer(s)
            except OSError as err:  # counted and reported (the proxies' logs say why: see `refusals`)
                errors.append(f"fresh connection: {err!r}")
                continue
            a.append((time.perf_counter() - t0) * 1000)
        with socket.create_connection((host, HTTP), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(kept):
                t0 = time.perf_counter()
                s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                _read_answer(s)
                b.append((time.perf_counter() - t0) * 1000)
        return a, b

    return netns.run_in(ns, measure)


def _connections(ns: str, host: str, concurrency: int, seconds: float) -> dict[str, Any]:
    cmd = netns.exec_argv(ns, [sys.executable, "-c", CONNECTOR, host, str(HTTP), str(concurrency), str(seconds)])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout.split()
    ok, errors, wall = int(out[0]), int(out[1]), float(out[2])
    return {"ok": ok, "errors": errors, "per_s": ok / wall}


def _visit(
    st: labs.LabState, istio: bool, rnd: int, args: argparse.Namespace, servers: dict[str, int], res: dict
) -> None:  # noqa: E501
    client = st.pods[CLIENT_POD].namespace
    state = "mtls" if istio else "plain"
    order = list(PATHS.items()) if rnd % 2 == 0 else list(reversed(PATHS.items()))
    for path, to in order:
        host = str(st.pods[to].address)
        here = res["paths"].setdefault(path, {}).setdefault(state, {})
        size = (args.mb_across if path == "across sites" else args.mb_same) * 1_000_000
        with Cpu(st, servers) as cpu:
            mbps = [size / 1e6 / _transfer(client, host, size) for _ in range(2)]
        here.setdefault("MB_per_s", []).append(mbps)
        _add_cpu(here.setdefault("cpu_throughput", {}), cpu)
        fresh, kept = _latencies(client, host, args.requests, args.keepalive, here.setdefault("errors", []))
        here.setdefault("fresh_ms", []).extend(fresh)
        here.setdefault("keepalive_ms", []).extend(kept)
        here.setdefault("fresh_p50_by_round", []).append(statistics.median(fresh))
        here.setdefault("keepalive_p50_by_round", []).append(statistics.median(kept))
        with Cpu(st, servers) as cpu:
            conns = _connections(client, host, args.concurrency, args.conn_seconds)
        here.setdefault("connections", []).append(conns)
        _add_cpu(here.setdefault("cpu_connections", {}), cpu)
        print(
            f"  round {rnd + 1} {state:5} {path}: {statistics.median(mbps):7.1f} MB/s; "
            f"fresh p50 {statistics.median(fresh):.2f} ms, kept-alive p50 {statistics.median(kept):.2f} ms; "
            f"{conns['per_s']:.0f} new connections/s ({conns['errors']} errors)",
            flush=True,
        )


# --- rotation -------------------------------------------------------------------------------------
def _signal_rotation(st: labs.LabState, node: str) -> float:
    """SIGUSR1 to one node's proxy; seconds until its log says the rotation is done."""
    log = st.dir / "logs" / f"meshproxy-{node}.log"
    since = log.stat().st_size
    started = time.monotonic()
    os.kill(st.mesh_proxies[node], signal.SIGUSR1)
    while True:
        with log.open("rb") as fh:
            fh.seek(since)
            if b"rotation done: " in fh.read():
                return time.monotonic() - started
        if time.monotonic() - started > 30:
            raise SystemExit(f"no rotation done in {log}")
        time.sleep(0.002)


def _rotation(st: labs.LabState, mesh: Path, rotations: int, workloads: int) -> dict[str, Any]:
    server = st.pods[PATHS["across sites"]]
    period_ms, seconds = 10.0, 3.0 + rotations * 3 * 1.6 + 2.0
    reads: list[tuple[float, int]] = []

    def receive() -> None:
        with socket.create_connection((str(server.address), STREAM), timeout=30) as s:
            s.sendall(f"{period_ms} {seconds}\n".encode())
            while chunk := s.recv(65536):
                reads.append((time.monotonic(), len(chunk)))

    def run() -> None:
        netns.run_in(st.pods[CLIENT_POD].namespace, receive)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(3.0)
    windows, cli, nodes = [], [], {"aws-worker-1": [], "openstack-worker": []}
    for _ in range(rotations):
        t0 = time.monotonic()
        done = subprocess.run(
            ["crossmesh", "lab", "rotate-certs", "--mesh", str(mesh)], capture_output=True, text=True, check=True
        )
        wall = time.monotonic() - t0
        m = re.search(r"rotated in ([\d.]+) s", done.stdout)
        cli.append({"wall_s": wall, "reported_s": float(m[1]) if m else None})
        windows.append((t0, time.monotonic() + 0.3))
        time.sleep(1.5)
        for node, times in nodes.items():
            t0 = time.monotonic()
            times.append(_signal_rotation(st, node))
            windows.append((t0, time.monotonic() + 0.3))
            time.sleep(1.5)
    thread.join(seconds + 30)
    expected = int(seconds * 1000 / period_ms) * 1024
    got = sum(n for _, n in reads)
    gaps = [(b[0], (b[0] - a[0]) * 1000) for a, b in zip(reads, reads[1:], strict=False)]
    before = [g for t, g in gaps if t < windows[0][0]]
    during = [g for t, g in gaps if any(a <= t <= b for a, b in windows)]
    return {
        "workloads": {"aws-worker-1": workloads, "openstack-worker": 2, "openstack-master": 1},
        "cli": cli,
        "per_node_s": nodes,
        "stream": {"bytes": got, "expected": expected, "complete": got == expected, "period_ms": period_ms},
        "max_gap_before_ms": max(before),
        "p99_gap_before_ms": _pct(before, 99),
        "max_gap_during_ms": max(during),
        "p99_gap_during_ms": _pct(during, 99),
    }


def _refusals(tag: str) -> list[str]:
    """The proxies' log lines about connections they refused or could not make (the last 30)."""
    lines = []
    for log in sorted((LAB_ROOT / f"cm-{tag}" / "logs").glob("meshproxy-*.log")):
        lines += [
            f"{log.stem}: {x}"
            for x in log.read_text(errors="replace").splitlines()
            if re.search(r"refused|failed|does not answer", x)
        ]  # noqa: E501
    return lines[-30:]


# --- report ---------------------------------------------------------------------------------------
def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, states in res["paths"].items():
        m, p = states["mtls"], states["plain"]
        tp = {s: [statistics.median(r) for r in states[s]["MB_per_s"]] for s in ("mtls", "plain")}
        cps = {s: [c["per_s"] for c in states[s]["connections"]] for s in ("mtls", "plain")}
        row: dict[str, Any] = {
            "MB_per_s": {s: statistics.median(v) for s, v in tp.items()},
            "throughput_ratio": statistics.median(a / b for a, b in zip(tp["mtls"], tp["plain"], strict=True)),
            "connections_per_s": {s: statistics.median(v) for s, v in cps.items()},
            "connections_ratio": statistics.median(a / b for a, b in zip(cps["mtls"], cps["plain"], strict=True)),
            "connection_errors": {s: sum(c["errors"] for c in states[s]["connections"]) for s in ("mtls", "plain")},
        }
        for kind in ("fresh", "keepalive"):
            row[kind] = {
                s: {"p50_ms": _pct(x[f"{kind}_ms"], 50), "p99_ms": _pct(x[f"{kind}_ms"], 99)} for s, x in states.items()
            }  # noqa: E501
            row[kind]["added_p50_ms"] = row[kind]["mtls"]["p50_ms"] - row[kind]["plain"]["p50_ms"]
            pairs = zip(m[f"{kind}_p50_by_round"], p[f"{kind}_p50_by_round"], strict=True)
            row[kind]["added_p50_ms_median_of_rounds"] = statistics.median(a - b for a, b in pairs)
        for phase in ("cpu_throughput", "cpu_connections"):
            row[phase] = {
                s: {k: round(v / states[s][phase]["wall_s"], 3) for k, v in states[s][phase]["cpu_s"].items() if v}
                for s in ("mtls", "plain")
            }
        out[path] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workloads", type=int, default=16, help="tkb replicas on aws-worker-1")
    ap.add_argument("--mb-across", type=int, default=30)
    ap.add_argument("--mb-same", type=int, default=200)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--keepalive", type=int, default=500)
    ap.add_argument("--conn-seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rotations", type=int, default=3)
    args = ap.parse_args()
    started = time.monotonic()
    res: dict[str, Any] = {"args": vars(args), "load_before": os.getloadavg(), "paths": {}, "reconcile": []}
    servers: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mtls-") as tmp:
        mesh, name = _mesh(Path(tmp), args.workloads)
        tag = topology.lab_tag(name)
        try:
            res["lab_up"] = _lab_up(mesh, istio=True)
            st = labs.LabState.load(tag)
            assert st is not None
            for to in PATHS.values():
                proc = subprocess.Popen(
                    netns.exec_argv(st.pods[to].namespace, [sys.executable, "-u", "-c", SERVER]), stdout=subprocess.PIPE
                )
                assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
                servers[f"bench server {st.pods[to].node}"] = proc
            pids = {k: p.pid for k, p in servers.items()}
            _check_state(st, istio=True)
            print(f"lab {name} (cm-{tag}) up in {res['lab_up']['wall_s']:.1f} s; rotation phase", flush=True)
            res["rotation"] = _rotation(st, mesh, args.rotations, args.workloads)
            print(json.dumps(res["rotation"], indent=1), flush=True)
            for rnd in range(args.rounds):
                for istio in (True, False):
                    if rnd or not istio:
                        rec = _lab_up(mesh, istio)
                        res["reconcile"].append({"to": "mtls" if istio else "plain"} | rec)
                        print(f"reconcile to {'mTLS' if istio else 'plain'}: {rec}", flush=True)
                    st = labs.LabState.load(tag)
                    assert st is not None
                    _check_state(st, istio)
                    _visit(st, istio, rnd, args, pids, res)
        finally:
            res["refusals"] = _refusals(tag)
            for proc in servers.values():
                proc.kill()
                with contextlib.suppress(Exception):
                    proc.wait(5)
            labs.down(tag)
    res["summary"] = _summary(res)
    res["load_after"] = os.getloadavg()
    res["seconds"] = time.monotonic() - started
    print(json.dumps(res["summary"], indent=1))
    print(f"load average before {res['load_before']}, after {res['load_after']}; {res['seconds']:.0f} s")
    out = ROOT / "benchmarks" / "results" / "mesh_mtls.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
