"""Lab benchmarks (issue 3): bring-up time, throughput and latency of the real lab.

    sudo python3 benchmarks/bench_lab.py [--runs 3] [--nodes 30] [--iperf-seconds 10]
        [--iperf-runs 5] [--pings 1000] [--skip-bringup] [--skip-network] [--meshes ...] [--no-perf]

1. Bring-up: for examples/three-clouds (as committed, `git archive HEAD`, into a fresh
   temporary directory, so its state directory and keys are new) and for a generated mesh
   (benchmarks/gen_lab_mesh.py: 30 nodes, 4 sites, 4 clusters), each run times a cold
   `crossmesh lab up -o json` (wall clock of the command, its CPU, and its own per-phase
   seconds), a second `lab up` (should change nothing), `crossmesh test` and `lab down`;
   median of `--runs` runs.
2. Network, in one run: the three-clouds lab, and a bare baseline — two namespaces
   cm-<u>-bare-a/-b joined by a veth, each running wireguard-go with a tunnel to the other,
   tunnel MTU = the lab's pod MTU. iperf3 TCP (`--iperf-seconds`) pod→pod across sites
   (cluster1/x-wing-0 → cluster2/rebel-base-0) and over the bare tunnel, alternated
   `--iperf-runs` times; the CPU of the path's processes and of the host during each run
   (/proc), a `top` frame, and in the last run of each a `perf record -g` profile classified
   by stack. Then a UDP ping-pong (Python, inside the namespaces, `--pings` round trips of
   64 bytes) both ways for each. The example denies by default, so its copy gets a policy
   allowing the benchmark's two ports between those two pods.

Every lab gets its own tag (`lab up --tag`, checked free) and mesh name, and is removed
with `crossmesh lab down --mesh MESH` in a `finally`; the bare namespaces and their
wireguard-go processes too. Never `--all`: other labs on this host are left alone.

Prints a table and writes benchmarks/results/lab.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import gen_lab_mesh  # noqa: E402

CM = [sys.executable, "-m", "crossmesh.cli.main"]
NETNS_DIR = Path("/run/netns")
WG_SOCKETS = Path("/var/run/wireguard")
LAB_ROOT = Path("/run/crossmesh")
CLK_TCK = os.sysconf("SC_CLK_TCK")
IPERF_PORT = 5201
PING_PORT = 9000
BARE_UNDERLAY = ("192.0.2.1", "192.0.2.2")  # only inside the two bare namespaces
BARE_TUNNEL = ("10.99.0.1", "10.99.0.2")
LAB_CLIENT_POD = "cluster1/default/x-wing-0"  # AWS
LAB_SERVER_POD = "cluster2/default/rebel-base-0"  # Azure


def log(msg: str) -> None:
    print(f"[bench_lab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- helpers ----------------------------------------------------------------------------------


def free_tag() -> str:
    """4 hex digits no lab, namespace, socket or state directory on this host uses."""
    rng = random.SystemRandom()
    for _ in range(1000):
        tag = f"{rng.randrange(0x10000):04x}"
        prefix = f"cm-{tag}"
        taken = (
            (NETNS_DIR.is_dir() and any(p.name.startswith(prefix) for p in NETNS_DIR.iterdir()))
            or (LAB_ROOT / prefix).exists()
            or (WG_SOCKETS.is_dir() and any(WG_SOCKETS.glob(f"{prefix}*")))
        )
        if not taken:
            return tag
    raise RuntimeError("no free lab tag")


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_times() -> list[int]:
    """Host-wide jiffies: user, nice, system, idle, iowait, irq, softirq, steal."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def host_busy(before: list[int], after: list[int]) -> dict[str, float]:
    """Host CPU over an interval in % of one core (2 cores = 200 %)."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    cores = os.cpu_count() or 1
    pct = [100.0 * cores * x / total for x in d]
    return {
        "user": round(pct[0] + pct[1], 1),
        "system": round(pct[2], 1),
        "softirq": round(pct[5] + pct[6], 1),
        "idle": round(pct[3] + pct[4], 1),
        "steal": round(pct[7], 1),
    }


@dataclass
class Timed:
    rc: int
    wall: float
    stdout: str
    stderr: str
    child_cpu: float  # user+sys of the command and the children it waited for
    busy: dict[str, float]  # host CPU during the command
    load: float  # 1-minute load average before it

    def json(self) -> Any:
        return json.loads(self.stdout)


def timed(argv: list[str], *, cwd: Path | None = None, timeout: float = 600) -> Timed:
    load = loadavg()
    r0 = os.times()
    c0 = cpu_times()
    t0 = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.monotonic() - t0
    c1 = cpu_times()
    r1 = os.times()
    cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    return Timed(done.returncode, wall, done.stdout, done.stderr, cpu, host_busy(c0, c1), load)


def must(t: Timed, what: str) -> Timed:
    if t.rc != 0:
        tail = "\n".join((t.stderr or t.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {t.rc}):\n{tail}")
    return t


def sh(argv: list[str], *, input: str | None = None, timeout: float = 30) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def lab_leftovers(tag: str) -> list[str]:
    from crossmesh.drivers.lab.lab import leftovers

    return [str(x) for x in leftovers(tag)]


# --- meshes -----------------------------------------------------------------------------------


# The example denies by default (apps/common/policies.yaml): the benchmark's two pods get
# an allow for its own ports, iperf3 from x-wing to rebel-base and the ping-pong both ways.
BENCH_POLICY = {
    "cluster1": ("x-wing", "rebel-base", "cluster2"),
    "cluster2": ("rebel-base", "x-wing", "cluster1"),
}


def _bench_policy(me: str, peer: str, peer_cluster: str) -> str:
    inbound = [f"{IPERF_PORT}/TCP", f"{PING_PORT}/UDP"] if me == "rebel-base" else [f"{PING_PORT}/UDP"]
    outbound = [f"{IPERF_PORT}/TCP", f"{PING_PORT}/UDP"] if me == "x-wing" else [f"{PING_PORT}/UDP"]

    def ports(items: list[str]) -> str:
        return "".join(
            f'            - {{port: "{p}", protocol: {proto}}}\n' for p, proto in (i.split("/") for i in items)
        )

    peer_sel = f"            name: {peer}\n            io.cilium.k8s.policy.cluster: {peer_cluster}\n"
    return (
        "# Added by benchmarks/bench_lab.py to its copy of the example: the benchmark's ports only.\n"
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n"
        f"  name: bench-lab-{me}\n  namespace: default\nspec:\n"
        f"  endpointSelector:\n    matchLabels:\n      name: {me}\n"
        f"  ingress:\n    - fromEndpoints:\n        - matchLabels:\n{peer_sel}"
        f"      toPorts:\n        - ports:\n{ports(inbound)}"
        f"  egress:\n    - toEndpoints:\n        - matchLabels:\n{peer_sel}"
        f"      toPorts:\n        - ports:\n{ports(outbound)}"
    )


def three_clouds(workdir: Path, name: str) -> Path:
    """The committed examples/three-clouds (not whatever is uncommitted in the tree), renamed,
    with the benchmark's allow policy added to cluster1 and cluster2."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "HEAD", "examples/three-clouds"], capture_output=True, check=False
    )
    if archive.returncode == 0:
        subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive.stdout, check=True)
        src = workdir / "examples" / "three-clouds"
        shutil.move(src / "apps", workdir / "apps")
        text = (src / "mesh.yaml").read_text()
        shutil.rmtree(workdir / "examples")
    else:  # not a git checkout
        src = REPO / "examples" / "three-clouds"
        shutil.copytree(src / "apps", workdir / "apps")
        text = (src / "mesh.yaml").read_text()
    text, n = re.subn(r"(?m)^(metadata:\n  name: )three-clouds$", rf"\g<1>{name}", text)
    if n != 1:
        raise RuntimeError("examples/three-clouds/mesh.yaml: metadata.name not found")
    for cluster, (me, peer, peer_cluster) in BENCH_POLICY.items():
        (workdir / "apps" / cluster / "bench-lab-policy.yaml").write_text(_bench_policy(me, peer, peer_cluster))
    mesh = workdir / "mesh.yaml"
    mesh.write_text(text)
    return mesh


def generated(workdir: Path, name: str, nodes: int) -> Path:
    return gen_lab_mesh.write(workdir, nodes=nodes, natted=3, name=name)


@contextlib.contextmanager
def lab_dir(kind: str, nodes: int) -> Iterator[tuple[Path, str]]:
    """A fresh directory with the mesh (fresh state dir, fresh keys) and a free tag."""
    tag = free_tag()
    workdir = Path(tempfile.mkdtemp(prefix=f"cm-bench-{tag}-"))
    try:
        name = f"bench-{kind}-{tag}"
        mesh = three_clouds(workdir, name) if kind == "three-clouds" else generated(workdir, name, nodes)
        yield mesh, tag
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def describe(kind: str, nodes: int) -> str:
    """Size of the mesh from its plan: nodes, sites, clusters, pods, tunnels."""
    with lab_dir(kind, nodes) as (mesh, _):
        plan = json.loads(sh([*CM, "plan", str(mesh), "-o", "json"], timeout=120))["plan"]
    natted = sum(1 for n in plan["nodes"] if not n.get("publicAddress"))
    tunnels = sum(len(n["tunnel"]["peers"]) for n in plan["nodes"] if n.get("tunnel")) // 2
    pods = sum(len(c["pods"]) for c in plan["clusters"])
    return (
        f"{len(plan['nodes'])} nodes ({natted} behind NAT) in {len(plan['sites'])} sites, "
        f"{len(plan['clusters'])} clusters, {pods} pods, {tunnels} tunnels"
    )


def lab_down(mesh: Path, tag: str) -> Timed:
    """`lab down --mesh` for this lab only (never --all); returns its timing."""
    t = timed([*CM, "lab", "down", "--mesh", str(mesh)], timeout=120)
    left = lab_leftovers(tag)
    if left:
        log(f"WARNING: lab cm-{tag} left {len(left)} things behind: {left[:5]}")
    return t


# --- 1. bring-up ------------------------------------------------------------------------------


def bringup_run(kind: str, nodes: int) -> dict[str, Any]:
    with lab_dir(kind, nodes) as (mesh, tag):
        run: dict[str, Any] = {"tag": tag}
        try:
            up = must(timed([*CM, "lab", "up", str(mesh), "--tag", tag, "-o", "json"], timeout=600), "lab up")
            up_out = up.json()
            run["up"] = {
                "wall": round(up.wall, 3),
                "total": round(up_out["total"], 3),
                "phases": {k: round(v, 3) for k, v in up_out["seconds"].items()},
                "changes": len(up_out["changes"]),
                "cpu": round(up.child_cpu, 2),
                "host": up.busy,
                "load": up.load,
            }
            again = must(timed([*CM, "lab", "up", str(mesh), "--tag", tag, "-o", "json"], timeout=600), "2nd lab up")
            again_out = again.json()
            run["up_again"] = {
                "wall": round(again.wall, 3),
                "total": round(again_out["total"], 3),
                "phases": {k: round(v, 3) for k, v in again_out["seconds"].items()},
                "changes": len(again_out["changes"]),
                "change_sample": again_out["changes"][:5],
                "cpu": round(again.child_cpu, 2),
            }
            test = timed([*CM, "test", str(mesh), "-o", "json"], timeout=900)
            if test.rc not in (0, 1):
                must(test, "crossmesh test")
            report = test.json()
            run["test"] = {
                "wall": round(test.wall, 3),
                "passed": report["summary"]["passed"],
                "failed": report["summary"]["failed"],
                "failed_sample": [c["name"] for c in report["checks"] if not c["passed"]][:5],
                "cpu": round(test.child_cpu, 2),
            }
        finally:
            down = lab_down(mesh, tag)
            run["down"] = {"wall": round(down.wall, 3), "rc": down.rc, "leftovers": len(lab_leftovers(tag))}
        return run


def summarize_bringup(runs: list[dict[str, Any]]) -> dict[str, Any]:
    phases = sorted({p for r in runs for p in r["up"]["phases"]})
    return {
        "up_wall": median([r["up"]["wall"] for r in runs]),
        "up_total": median([r["up"]["total"] for r in runs]),
        "up_phases": {p: median([r["up"]["phases"].get(p, 0.0) for r in runs]) for p in phases},
        "up_again_wall": median([r["up_again"]["wall"] for r in runs]),
        "up_again_phases": {p: median([r["up_again"]["phases"].get(p, 0.0) for r in runs]) for p in phases},
        "up_again_changes": max(r["up_again"]["changes"] for r in runs),
        "test_wall": median([r["test"]["wall"] for r in runs]),
        "test_passed": min(r["test"]["passed"] for r in runs),
        "test_failed": max(r["test"]["failed"] for r in runs),
        "down_wall": median([r["down"]["wall"] for r in runs]),
    }


# --- 2. network: CPU accounting ---------------------------------------------------------------


def _proc_table() -> dict[int, tuple[str, int]]:
    """pid → (label, utime+stime jiffies) for every process."""
    out: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
        args = [a.decode(errors="replace") for a in argv if a]
        if args and os.path.basename(args[0]) == "wireguard-go":
            label = f"wireguard-go {args[-1]}"
        elif args and os.path.basename(args[0]) == "iperf3":
            label = "iperf3 " + ("server" if "-s" in args else "client")
        elif args and "crossmesh.drivers.lab.workload" in args:
            label = "lab echo workload"
        elif comm.startswith(("ksoftirqd", "kworker")):
            label = comm.split("/")[0] + " (kernel)"
        else:
            label = comm
        out[int(entry.name)] = (label, ticks)
    return out


def cpu_by_process(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], wall: float) -> list[Any]:
    """[(label, % of one core)] over the interval, largest first (processes alive at the end)."""
    acc: dict[str, float] = {}
    for pid, (label, ticks) in after.items():
        start = before.get(pid, (label, 0))[1] if pid in before else 0
        acc[label] = acc.get(label, 0.0) + (ticks - start) / CLK_TCK / wall * 100
    return sorted(([k, round(v, 1)] for k, v in acc.items() if v >= 0.5), key=lambda kv: -kv[1])


def top_snapshot() -> list[str]:
    """The busiest lines of a 2-second `top` frame (the second frame: per-interval %CPU)."""
    try:
        text = sh(["top", "-b", "-d", "2", "-n", "2", "-w", "160"], timeout=15)
    except (RuntimeError, subprocess.TimeoutExpired, FileNotFoundError):
        return []
    frames = text.split("top - ")
    lines = ("top - " + frames[-1]).splitlines()
    head = [ln for ln in lines[:5] if ln.startswith(("top", "%Cpu", "Tasks"))]
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("PID"))
    except StopIteration:
        return head
    return head + [ln.rstrip() for ln in lines[start : start + 11]]


# --- 2. network: endpoints --------------------------------------------------------------------


@dataclass
class Endpoint:
    name: str  # what the report calls it
    ns: str  # network namespace
    ip: str  # address the peer dials


@dataclass
class NetPath:
    kind: str  # "lab" | "bare"
    a: Endpoint
    b: Endpoint
    mtu: int
    description: str
    wg_ifnames: list[str] = field(default_factory=list)


PING_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    while True:
        data, addr = s.recvfrom(2048)
        if data == b"quit":
            break
        s.sendto(data, addr)
except socket.timeout:
    pass
"""

PING_CLIENT = r"""
import json, socket, sys, time
host, port, n, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, port))
s.settimeout(1.0)
rtts, lost = [], 0
for i in range(warm + n):
    msg = i.to_bytes(4, "big") + b"x" * 60
    t0 = time.perf_counter_ns()
    s.send(msg)
    try:
        while s.recv(2048)[:4] != msg[:4]:
            pass
    except (socket.timeout, ConnectionRefusedError):
        lost += i >= warm
        continue
    if i >= warm:
        rtts.append((time.perf_counter_ns() - t0) / 1000)
s.send(b"quit")
print(json.dumps({"rtts": rtts, "lost": lost}))
"""


def wait_listening(ns: str, port: int, proto: str, timeout: float = 10) -> None:
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(in_ns(ns, ["ss", flag, f"sport = :{port}"]), capture_output=True, text=True)
        if out.stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}/{proto} in {ns} after {timeout:.0f} s")


def stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=3)


def iperf(path: NetPath, seconds: int, *, profile: bool = False) -> dict[str, Any]:
    """TCP a → b for `seconds`: throughput, retransmits and where the CPU went.

    CPU is in % of one core (2 cores = 200 %): the path's wireguard-go processes (from
    /proc), the iperf3 client and server (from iperf3's own report, as they exit before
    the end can be read), kernel threads; `rest` is whatever else the host ran (other
    labs, tests, interrupts). `mbps_per_core` = throughput ÷ the path's own CPU, which
    moves less than throughput when other work competes for the two cores.
    """
    server: subprocess.Popen[Any] | None = None
    try:
        server = subprocess.Popen(
            in_ns(path.b.ns, ["iperf3", "-s", "-1", "-p", str(IPERF_PORT)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_listening(path.b.ns, IPERF_PORT, "tcp")
        snapshot: list[list[str]] = []
        sampler = threading.Timer(seconds / 2, lambda: snapshot.append(top_snapshot()))
        profiled: list[dict[str, Any]] = []
        profiler = threading.Timer(1.0, lambda: profiled.append(perf_profile(max(1, seconds - 3))))
        procs0, host0, t0 = _proc_table(), cpu_times(), time.monotonic()
        sampler.start()
        if profile:
            profiler.start()
        client = subprocess.run(
            in_ns(path.a.ns, ["iperf3", "-c", path.b.ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]),
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        wall, procs1, host1 = time.monotonic() - t0, _proc_table(), cpu_times()
        sampler.join()
        if profile:
            profiler.join()
        report = json.loads(client.stdout or "{}")
        if client.returncode != 0 or "end" not in report:
            raise RuntimeError(f"iperf3 {path.kind}: {report.get('error') or client.stderr.strip()}")
        end = report["end"]
        mbps = end["sum_received"]["bits_per_second"] / 1e6
        procs = cpu_by_process(procs0, procs1, wall)
        wg = {label.split()[-1]: pct for label, pct in procs if label.split()[-1] in path.wg_ifnames}
        kthreads = sum(pct for label, pct in procs if label.endswith("(kernel)"))
        util = end.get("cpu_utilization_percent", {})
        iperf3 = util.get("host_total", 0.0) + util.get("remote_total", 0.0)
        host = host_busy(host0, host1)
        busy = host["user"] + host["system"] + host["softirq"] + host["steal"]
        own = sum(wg.values()) + iperf3 + kthreads
        out = {
            "mbps": round(mbps, 1),
            "sent_mbps": round(end["sum_sent"]["bits_per_second"] / 1e6, 1),
            "retransmits": end["sum_sent"].get("retransmits"),
            "cpu": {
                "wireguard-go": {k: round(v, 1) for k, v in sorted(wg.items())},
                "iperf3": round(iperf3, 1),
                "kernel threads": round(kthreads, 1),
                "path total": round(own, 1),
                "rest of host": round(max(0.0, busy - own), 1),
                "host": host,
            },
            "mbps_per_core": round(mbps / (own / 100), 1) if own else None,
            "processes": procs[:10],
            "top": snapshot[0] if snapshot else [],
        }
        if profiled:
            out["profile"] = profiled[0]
        return out
    finally:
        stop(server)


# perf profile: which kernel/user code the samples of the path fall in ---------------------------

OUR_COMMS = ("wireguard-go", "iperf3", "ksoftirqd", "kworker", "swapper")
FORWARDING = {"ip_forward", "br_handle_frame", "br_forward", "br_nf_pre_routing"}
NETFILTER = ("nf_", "nft_", "__nf", "ipv4_conntrack", "br_nf", "nf_nat")


def _classify(comm: str, frames: list[tuple[str, str]]) -> str:
    """Category of one sample. Forwarding work counts for the path whatever process the
    softirq that did it interrupted (a packet crossing the lab's routers is ours)."""
    names = {n for n, _ in frames}
    if names & {"skb_segment", "__skb_gso_segment"}:
        return "kernel: software GSO + checksum (TCP segments into the TUN)"
    netfilter = any(n.startswith(NETFILTER) for n in names)
    if names & FORWARDING:
        if netfilter:
            return "kernel: netfilter on forwarded packets (nft, conntrack, NAT)"
        return "kernel: forwarding between namespaces (routing, bridge, veth)"
    if not comm.startswith(OUR_COMMS):
        return "other processes on the host"
    if netfilter:  # hooks on the packets a node sends or receives itself (its nft tables: policy, services)
        return "kernel: netfilter on local packets (conntrack, NAT, policy)"
    if comm == "swapper" and "net_rx_action" not in names:
        return "idle"
    kernel_leaf = bool(frames) and "kernel" in frames[0][1]
    if comm.startswith("wireguard-go"):
        if not kernel_leaf:
            return "wireguard-go user space (ChaCha20-Poly1305, Go runtime)"
        if any(n.startswith("tun_") for n in names):
            return "wireguard-go: TUN read/write"
        if any("sendmsg" in n or "recvmsg" in n or "recvmmsg" in n or n.startswith("udp_") for n in names):
            return "wireguard-go: UDP send/receive"
        return "wireguard-go: other kernel (scheduler, futex, timers)"
    if comm.startswith("iperf3"):
        return "iperf3 and its TCP"
    return "kernel threads, softirq"


def perf_profile(seconds: float) -> dict[str, Any]:
    """System-wide `perf record -g` for `seconds`; shares of the samples per category."""
    if shutil.which("perf") is None:
        return {"error": "perf is not installed"}
    with tempfile.TemporaryDirectory(prefix="cm-bench-perf-") as tmp:
        data = Path(tmp) / "perf.data"
        rec = subprocess.run(
            ["perf", "record", "-a", "-g", "-F", "499", "-o", str(data), "--", "sleep", str(seconds)],
            capture_output=True,
            text=True,
            check=False,
        )
        if rec.returncode != 0:
            return {"error": rec.stderr.strip()[-300:]}
        text = subprocess.run(
            ["perf", "script", "-i", str(data)], capture_output=True, text=True, check=False, timeout=120
        ).stdout
    counts: dict[str, int] = {}
    for block in text.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        frames = []
        for ln in lines[1:]:
            parts = ln.strip().split(None, 1)
            if len(parts) == 2:
                sym, _, dso = parts[1].rpartition(" (")
                frames.append((sym.split("+0x")[0], dso))
        cat = _classify(lines[0].split()[0], frames)
        counts[cat] = counts.get(cat, 0) + 1
    total = sum(counts.values()) or 1
    ours = sum(v for k, v in counts.items() if k not in ("other processes on the host", "idle")) or 1
    return {
        "samples": total,
        "of_host": {k: round(100 * v / total, 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])},
        "of_path": {
            k: round(100 * v / ours, 1)
            for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
            if k not in ("other processes on the host", "idle")
        },
    }


def ping_pong(src: Endpoint, dst: Endpoint, count: int, warmup: int = 50) -> dict[str, Any]:
    server: subprocess.Popen[Any] | None = None
    try:
        server = subprocess.Popen(
            in_ns(dst.ns, [sys.executable, "-c", PING_SERVER, str(PING_PORT), "30"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_listening(dst.ns, PING_PORT, "udp")
        out = sh(
            in_ns(src.ns, [sys.executable, "-c", PING_CLIENT, dst.ip, str(PING_PORT), str(count), str(warmup)]),
            timeout=count * 1.2 + 60,
        )
        data = json.loads(out)
        rtts = sorted(data["rtts"])
        if not rtts:
            raise RuntimeError(f"ping-pong {src.name} → {dst.name}: every datagram lost")
        return {
            "from": src.name,
            "to": dst.name,
            "count": len(rtts),
            "lost": data["lost"],
            "p50_us": round(percentile(rtts, 50), 1),
            "p90_us": round(percentile(rtts, 90), 1),
            "p99_us": round(percentile(rtts, 99), 1),
            "min_us": round(rtts[0], 1),
            "max_us": round(rtts[-1], 1),
        }
    finally:
        stop(server)


# --- 2. network: the bare baseline ------------------------------------------------------------


class Bare:
    """Two namespaces joined by a veth, wireguard-go in each, one tunnel between them."""

    def __init__(self, tag: str, mtu: int, workdir: Path) -> None:
        self.tag = tag
        self.mtu = mtu
        self.workdir = workdir
        self.ns = (f"cm-{tag}-bare-a", f"cm-{tag}-bare-b")
        self.veth = (f"cm-{tag}-ea", f"cm-{tag}-eb")
        self.wg = (f"cm-{tag}-wa", f"cm-{tag}-wb")
        self.procs: list[subprocess.Popen[Any]] = []

    def path(self) -> NetPath:
        return NetPath(
            "bare",
            Endpoint("bare-a", self.ns[0], BARE_TUNNEL[0]),
            Endpoint("bare-b", self.ns[1], BARE_TUNNEL[1]),
            self.mtu,
            f"2 namespaces, veth, wireguard-go each side, tunnel MTU {self.mtu}",
            list(self.wg),
        )

    def up(self) -> None:
        for ns in self.ns:
            sh(["ip", "netns", "add", ns])
        # Created inside bare-a with its peer placed straight into bare-b: never in the root namespace.
        sh(
            [
                "ip",
                "-n",
                self.ns[0],
                "link",
                "add",
                self.veth[0],
                "type",
                "veth",
                "peer",
                "name",
                self.veth[1],
                "netns",
                self.ns[1],
            ]
        )
        keys = []
        for i in (0, 1):
            priv = sh(["wg", "genkey"]).strip()
            key_file = self.workdir / f"{self.wg[i]}.key"
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(priv + "\n")
            keys.append((key_file, sh(["wg", "pubkey"], input=priv + "\n").strip()))
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        for i in (0, 1):
            ns = self.ns[i]
            sh(["ip", "-n", ns, "addr", "add", f"{BARE_UNDERLAY[i]}/24", "dev", self.veth[i]])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            sh(["ip", "-n", ns, "link", "set", self.veth[i], "up"])
            self.procs.append(
                subprocess.Popen(
                    in_ns(ns, ["wireguard-go", "-f", self.wg[i]]),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            )
        for i in (0, 1):
            deadline = time.monotonic() + 10
            while subprocess.run(["wg", "show", self.wg[i]], capture_output=True).returncode != 0:
                if time.monotonic() > deadline or self.procs[i].poll() is not None:
                    raise RuntimeError(f"wireguard-go {self.wg[i]} did not come up")
                time.sleep(0.02)
        for i, j in ((0, 1), (1, 0)):
            ns = self.ns[i]
            sh(
                [
                    "wg",
                    "set",
                    self.wg[i],
                    "private-key",
                    str(keys[i][0]),
                    "listen-port",
                    "51820",
                    "peer",
                    keys[j][1],
                    "allowed-ips",
                    f"{BARE_TUNNEL[j]}/32",
                    "endpoint",
                    f"{BARE_UNDERLAY[j]}:51820",
                ]
            )
            sh(["ip", "-n", ns, "addr", "add", f"{BARE_TUNNEL[i]}/24", "dev", self.wg[i]])
            sh(["ip", "-n", ns, "link", "set", self.wg[i], "mtu", str(self.mtu), "up"])

    def down(self) -> None:
        for proc in self.procs:
            stop(proc)
        for ifname in self.wg:
            (WG_SOCKETS / f"{ifname}.sock").unlink(missing_ok=True)
        for ns in self.ns:
            if (NETNS_DIR / ns).exists():
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        left = [n for n in self.ns if (NETNS_DIR / n).exists()] + [str(p.pid) for p in self.procs if p.poll() is None]
        if left:
            log(f"WARNING: the bare baseline left {left}")


# --- 2. network: the run ----------------------------------------------------------------------


def lab_path(mesh: Path) -> NetPath:
    status = json.loads(sh([*CM, "lab", "status", "--mesh", str(mesh), "-o", "json"]))
    pods = status["pods"]
    a, b = pods[LAB_CLIENT_POD], pods[LAB_SERVER_POD]
    links = json.loads(sh(["ip", "-n", a["namespace"], "-j", "link", "show"]))
    mtu = next(int(link["mtu"]) for link in links if link["ifname"] != "lo")
    wg = [d["device"] for d in status["wireguard"] if d["node"] in (a["node"], b["node"])]
    return NetPath(
        "lab",
        Endpoint(LAB_CLIENT_POD, a["namespace"], a["address"]),
        Endpoint(LAB_SERVER_POD, b["namespace"], b["address"]),
        mtu,
        f"pod {LAB_CLIENT_POD} ({a['node']}) → pod {LAB_SERVER_POD} ({b['node']}): veth, node, VPC NAT, "
        f"internet, NAT, node, veth; WireGuard between the nodes; pod MTU {mtu}",
        wg,
    )


def network(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with lab_dir("three-clouds", 0) as (mesh, tag):
        bare: Bare | None = None
        try:
            log(f"network: lab up {mesh} (cm-{tag})")
            must(timed([*CM, "lab", "up", str(mesh), "--tag", tag, "-o", "json"]), "lab up")
            lab = lab_path(mesh)
            bare_tag = free_tag()
            bare = Bare(bare_tag, lab.mtu, mesh.parent)
            log(f"network: bare baseline cm-{bare_tag}-bare-a/-b (MTU {lab.mtu})")
            bare.up()
            paths = {"lab": lab, "bare": bare.path()}
            for p in paths.values():  # first handshake and ARP out of the way
                ping_pong(p.a, p.b, 5, warmup=5)
            result["paths"] = {k: p.description for k, p in paths.items()}
            runs: dict[str, list[dict[str, Any]]] = {"bare": [], "lab": []}
            for i in range(args.iperf_runs):
                for kind in ("bare", "lab"):
                    log(f"network: iperf3 {kind} run {i + 1}/{args.iperf_runs} ({args.iperf_seconds} s)")
                    last = i == args.iperf_runs - 1
                    runs[kind].append(iperf(paths[kind], args.iperf_seconds, profile=last and args.perf))
            med = {k: statistics.median([r["mbps"] for r in v]) for k, v in runs.items()}
            per_core = {k: statistics.median([r["mbps_per_core"] or 0.0 for r in v]) for k, v in runs.items()}
            result["iperf"] = {
                "seconds": args.iperf_seconds,
                "median_mbps": med,
                "lab_vs_bare": round(med["lab"] / med["bare"], 3) if med["bare"] else None,
                "median_mbps_per_core": per_core,
                "lab_vs_bare_per_core": round(per_core["lab"] / per_core["bare"], 3) if per_core["bare"] else None,
                "median_rest_of_host": {
                    k: statistics.median([r["cpu"]["rest of host"] for r in v]) for k, v in runs.items()
                },
                "runs": runs,
            }
            latency: dict[str, list[dict[str, Any]]] = {}
            for kind, p in paths.items():
                log(f"network: UDP ping-pong {kind}, {args.pings} round trips each way")
                latency[kind] = [ping_pong(p.a, p.b, args.pings), ping_pong(p.b, p.a, args.pings)]
            result["latency"] = latency
        finally:
            if bare is not None:
                bare.down()
            lab_down(mesh, tag)
    return result


# --- report -----------------------------------------------------------------------------------


def fmt(v: float | None, unit: str = "s") -> str:
    return "-" if v is None else f"{v:.2f} {unit}"


def print_report(res: dict[str, Any]) -> None:
    targets = res.get("targets", {})
    for kind, b in res.get("bringup", {}).items():
        m = b["median"]
        print(f"\n== lab bring-up: {kind} ({b['size']}), median of {len(b['runs'])} runs")
        print(f"  {'lab up (cold), wall':34s} {fmt(m['up_wall']):>10s}   target < {targets.get(kind, '?')} s")
        print(f"  {'  of which in lab up (-o json)':34s} {fmt(m['up_total']):>10s}")
        for p, v in sorted(m["up_phases"].items(), key=lambda kv: -kv[1]):
            print(f"  {'    ' + p:34s} {fmt(v):>10s}")
        again = f"{fmt(m['up_again_wall']):>10s}   changes: {m['up_again_changes']}"
        print(f"  {'lab up again (no changes), wall':34s} {again}")
        for p, v in sorted(m["up_again_phases"].items(), key=lambda kv: -kv[1])[:3]:
            print(f"  {'    ' + p:34s} {fmt(v):>10s}")
        print(
            f"  {'crossmesh test, wall':34s} {fmt(m['test_wall']):>10s}   "
            f"{m['test_passed']} passed, {m['test_failed']} failed"
        )
        print(f"  {'lab down, wall':34s} {fmt(m['down_wall']):>10s}")
    net = res.get("network")
    if net:
        ip = net["iperf"]
        print(f"\n== iperf3 TCP {ip['seconds']} s, median of {len(ip['runs']['lab'])} runs each (alternated)")
        for kind in ("bare", "lab"):
            r = ip["runs"][kind]
            each = ", ".join(f"{x['mbps']:.0f}" for x in r)
            print(
                f"  {kind:5s} {ip['median_mbps'][kind]:7.1f} Mbit/s, {ip['median_mbps_per_core'][kind]:6.1f} Mbit/s "
                f"per core of its own CPU   (runs: {each} Mbit/s; rest of host {ip['median_rest_of_host'][kind]:.0f} %)"
            )
        print(
            f"  lab / bare = {ip['lab_vs_bare']:.1%} (target >= 90 %); per core of own CPU: "
            f"{ip['lab_vs_bare_per_core']:.1%}"
        )
        for kind in ("bare", "lab"):
            r = ip["runs"][kind][-1]
            c = r["cpu"]
            wg = ", ".join(f"{k} {v:.0f}" for k, v in c["wireguard-go"].items())
            print(
                f"  CPU, last {kind} run (% of one core; 2 cores = 200): wireguard-go {wg}; iperf3 {c['iperf3']:.0f}; "
                f"rest of host {c['rest of host']:.0f}; idle {c['host']['idle']:.0f}"
            )
            prof = r.get("profile", {}).get("of_path")
            if prof:
                print("    perf, share of the path's samples: " + "; ".join(f"{k} {v:.0f} %" for k, v in prof.items()))
        print("\n== UDP ping-pong (64 B, Python in the namespaces), round trip")
        for kind in ("bare", "lab"):
            for r in net["latency"][kind]:
                print(
                    f"  {kind:5s} {r['from']:30s} → {r['to']:30s} p50 {r['p50_us']:7.0f} µs  "
                    f"p99 {r['p99_us']:7.0f} µs  lost {r['lost']}/{r['count'] + r['lost']}"
                )


def environment() -> dict[str, Any]:
    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.splitlines()[0].strip()
        except (OSError, IndexError):
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wireguard-go": version(["wireguard-go", "--version"]),
        "iperf3": version(["iperf3", "--version"]),
        "load_at_start": Path("/proc/loadavg").read_text().strip(),
        "commit": version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        # Other engineers work in the same tree: what of the lab code was uncommitted during the run.
        "uncommitted": subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=False
        ).stdout.split("\n")[:-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="bring-up runs per mesh (median)")
    parser.add_argument("--nodes", type=int, default=30, help="nodes of the generated mesh")
    parser.add_argument(
        "--meshes",
        default="three-clouds,generated",
        help="bring-up of which meshes (comma-separated: three-clouds, generated)",
    )
    parser.add_argument("--iperf-seconds", type=int, default=10)
    parser.add_argument("--iperf-runs", type=int, default=5, help="iperf3 runs per path, alternated (median)")
    parser.add_argument("--pings", type=int, default=1000, help="UDP round trips per direction")
    parser.add_argument(
        "--no-perf", dest="perf", action="store_false", help="no `perf record` profile during the last iperf3 runs"
    )
    parser.add_argument("--skip-bringup", action="store_true")
    parser.add_argument("--skip-network", action="store_true")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "results" / "lab.json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_lab: the lab needs root", file=sys.stderr)
        return 2
    missing = [t for t in ("wireguard-go", "wg", "iperf3", "nft", "ip", "ss", "top") if shutil.which(t) is None]
    if missing:
        print(f"bench_lab: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2

    res: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(),
        "targets": {"three-clouds": 15, f"generated-{args.nodes}": 60},
    }
    if not args.skip_bringup:
        res["bringup"] = {}
        kinds = ["three-clouds", f"generated-{args.nodes}"]
        wanted = {m.strip() for m in args.meshes.split(",")}
        for kind in [k for k in kinds if k.split("-")[0] in wanted or k in wanted]:
            mesh_kind = "three-clouds" if kind == "three-clouds" else "generated"
            runs = []
            for i in range(args.runs):
                log(f"bring-up {kind}: run {i + 1}/{args.runs}")
                runs.append(bringup_run(mesh_kind, args.nodes))
            size = describe(mesh_kind, args.nodes)
            res["bringup"][kind] = {"size": size, "runs": runs, "median": summarize_bringup(runs)}
    if not args.skip_network:
        res["network"] = network(args)
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    print_report(res)
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
