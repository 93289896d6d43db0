"""Control-plane benchmarks (issue 6): failure detection against the lease TTL, agents at rest,
packets lost to a key rotation, add-node convergence, and agents under churn — all on real labs.

    sudo python3 benchmarks/bench_control_plane.py [--ttls 1,2,3,5] [--crashes 5] [--rest 10]
        [--rotations 5] [--add-node-sizes 6,30] [--joins 3] [--churn-nodes 60] [--churn-seconds 30]
        [--settle 10] [--only detection,rest,rotation,add-node,churn] [--replace]

1. Failure detection: examples/three-clouds (copied under a unique mesh name) with
   `lab up --agents --lease-ttl T` for each T. Each trial crashes one node (the lab's
   `crash_node`: SIGKILL of its agent and wireguard-go, no cleanup) and polls every 10 ms
   until every other node has dropped its WireGuard peer and its agent routes (protocol
   100); `lab up` brings it back before the next trial. Target: TTL + 1 s.
2. At rest: the same lab at the default TTL (3 s), settled; CPU of each agent over `--rest`
   seconds from /proc/<pid>/stat (utime+stime, and cutime+cstime: the `wg` commands it ran
   and reaped) and its memory (VmRSS, VmHWM) from /proc/<pid>/status. etcd members too.
3. Key rotation: a UDP stream from cluster1/x-wing-0 (aws) to cluster2/rebel-base-0 (azure)
   port 5353, one datagram per 10 ms from a Python sender in the client pod's namespace
   counting echoes (the example's copy allows that flow); `crossmesh lab rotate-keys` (every
   node, one after the other) one second in; losses counted. Also with `--node azure-talos-1`
   alone, and with every agent signalled at the same moment (both ends of each tunnel re-key
   together, as independent agents could).
4. add-node convergence, when `crossmesh lab add-node` exists: a generated mesh of N-1 nodes
   in 3 sites (public addresses from 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24; one
   cluster per site, no workloads), `lab up --agents`; then `crossmesh lab add-node` of the
   N-th node is issued and every node of another site is polled (a `get` on its device's
   control socket) until it has the new node's key as a peer with a completed handshake.
   `lab remove-node` between joins.
5. Churn: a generated mesh of `--churn-nodes` nodes, `lab up --agents`; CPU and memory of every
   agent and etcd member over `--rest` s at rest; then for `--churn-seconds` one `lab add-node`
   a second — back to back when a command takes longer (lab commands of one lab share its state
   file and must not overlap), so the join rate achieved is reported — and after each join past
   3 joined nodes the `lab remove-node` of the oldest. Meanwhile: CPU of the original agents and
   etcd over the window, their peak RSS (sampled each second), and each join's convergence as in
   4 (polled in a thread through the devices' control sockets). Then `--settle` s and another
   `--rest` s: do CPU and RSS come back?

Every lab has its own mesh name (so its own cm-<tag>) and is removed with `crossmesh lab
down --mesh` in a `finally`; never `--all`: other labs on this host are left alone.
Prints a table and writes benchmarks/results/control_plane.json, merged into what is there (a
run of some parts keeps the others; `run_of` says when and on which commit each was measured).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "lab"))

from agentkit import (  # noqa: E402
    UdpStream,
    agent_config,
    agent_routes,
    etcdctl,
    ifname,
    node_record,
    peers,
    public_key,
    state,
)
from labkit import Lab, copy_example, crossmesh  # noqa: E402

from crossmesh.drivers import etcd  # noqa: E402
from crossmesh.drivers.lab import lab as labs  # noqa: E402
from crossmesh.drivers.lab import topology, wireguard  # noqa: E402

NODES = ("aws-talos-1", "azure-talos-1", "gcp-talos-1")
CLIENT, SERVER = "cluster1/default/x-wing-0", "cluster2/default/rebel-base-0"
TICK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def summary(xs: list[float]) -> dict[str, float]:
    return {
        "min": round(min(xs), 3),
        "median": round(statistics.median(xs), 3),
        "max": round(max(xs), 3),
        "n": len(xs),
    }


def wait(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> float:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"not within {timeout} s: {what}")
        time.sleep(interval)
    return time.monotonic() - t0


@contextmanager
def running(lab: Lab, *up_args: str) -> Iterator[Lab]:
    try:
        t0 = time.monotonic()
        # 60 nodes take a minute or two on a busy host: the timeouts leave room for that
        crossmesh("lab", "up", str(lab.mesh), "-o", "json", *up_args, check=True, timeout=900)
        log(f"lab {lab.name} (cm-{lab.tag}) up in {time.monotonic() - t0:.1f} s")
        yield lab
    finally:
        bring_down(lab)


def bring_down(lab: Lab) -> None:
    """`lab down --mesh`, then by tag whatever that could not find; says what is left."""
    with suppress(subprocess.TimeoutExpired):
        crossmesh("lab", "down", "--mesh", str(lab.mesh), timeout=600)
    labs.down(lab.tag)
    left = labs.leftovers(lab.tag)
    if left:
        log(f"WARNING: cm-{lab.tag} left {left}")


def free_name(make: Callable[[str], tuple[Path, str]]) -> tuple[Path, str]:
    """A mesh whose lab tag is not in use on this host (tags are 4 hex digits of the name)."""
    for _ in range(20):
        mesh, name = make(f"b{uuid.uuid4().hex[:10]}")
        tag = topology.lab_tag(name)
        if labs.LabState.load(tag) is None and not any(n.startswith(f"cm-{tag}-") for n in os.listdir("/run/netns")):
            return mesh, name
    raise RuntimeError("no free lab tag")


def three_clouds(tmp: Path) -> Lab:
    def make(_: str) -> tuple[Path, str]:
        d = Path(tempfile.mkdtemp(dir=tmp))
        mesh, name = copy_example(d, "three-clouds")
        policy = mesh.parent / "apps" / "cluster2" / "rebel-base.yaml"
        http = '            - {port: "80", protocol: TCP}\n'
        policy.write_text(policy.read_text().replace(http, http + '            - {port: "5353", protocol: UDP}\n'))
        return mesh, name

    mesh, name = free_name(make)
    return Lab(mesh, name)


def converged(lab: Lab, nodes: tuple[str, ...] = NODES, sites: dict[str, str] | None = None) -> bool:
    """Every agent runs with etcd and has exactly the other nodes as WireGuard peers — those of
    other sites, when `sites` (node → site) is given: a site's own nodes talk over VXLAN."""
    st = state(lab.tag)
    for node in nodes:
        s = labs.agent_status(st, node)
        if not labs.alive(int(s.get("pid", 0))) or not s.get("etcd"):
            return False
        want = sorted(public_key(st, n) for n in nodes if n != node and (sites is None or sites[n] != sites[node]))
        if sorted(peers(ifname(st, node))) != want:
            return False
    return True


# --- 1. failure detection ---------------------------------------------------------------------
def detection(lab: Lab, ttls: list[int], crashes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ttl in ttls:
        lab.up("--lease-ttl", str(ttl))
        wait(lambda: converged(lab), 20, "agents converged")
        times: list[float] = []
        for k in range(crashes):
            st = state(lab.tag)
            victim = NODES[k % len(NODES)]
            others = [n for n in NODES if n != victim]
            key = public_key(st, victim)
            rec = node_record(st, victim)
            gone = {rec["pod_cidr"], rec["tunnel_address"], rec["address"]}

            def withdrawn(n: str, st: labs.LabState = st, key: str = key, gone: set[str] = gone) -> bool:
                return key not in peers(ifname(st, n)) and not gone & set(agent_routes(st.nodes[n]))

            time.sleep(0.37 * (k + 1) % 1.0)  # crash at different points of the refresh cycle
            labs.crash_node(st, victim)
            t0 = time.monotonic()
            pending = set(others)
            while pending:
                for n in list(pending):
                    if withdrawn(n):
                        pending.discard(n)
                if time.monotonic() - t0 > ttl + 30:
                    raise RuntimeError(f"ttl {ttl}: {victim} not withdrawn on {pending}")
                time.sleep(0.01)
            took = time.monotonic() - t0
            times.append(took)
            log(f"ttl {ttl} s: crash of {victim} → withdrawn on every other node after {took:.2f} s")
            lab.up()
            wait(lambda: converged(lab), 20, "agents converged after lab up")
        out[str(ttl)] = {
            **summary(times),
            "all": [round(t, 3) for t in times],
            "target": ttl + 1,
            "granted_ttl": granted_ttl(state(lab.tag)),
        }
    return out


def granted_ttl(st: labs.LabState) -> int | None:
    """The lease TTL etcd granted, from the last "published" line of an agent's log."""
    lines = (st.dir / "logs" / f"agent-{NODES[0]}.log").read_text().splitlines()
    line = next((ln for ln in reversed(lines) if " published " in ln), "")
    m = re.search(r"ttl (\d+)s", line)
    return int(m.group(1)) if m else None


# --- 2. at rest -----------------------------------------------------------------------------
def proc_sample(pid: int) -> dict[str, float]:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {
        "self": (int(f[11]) + int(f[12])) / TICK,
        "children": (int(f[13]) + int(f[14])) / TICK,
        "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
        "hwm_mib": int(status["VmHWM"].split()[0]) / 1024,
    }


def samples(pids: dict[str, int]) -> dict[str, dict[str, float]]:
    """proc_sample of each process still there."""
    out = {}
    for k, pid in pids.items():
        with suppress(OSError, KeyError, IndexError):
            out[k] = proc_sample(pid)
    return out


def usage(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], seconds: float) -> dict[str, Any]:
    """CPU (% of one core) between two samples, and memory at the second."""
    return {
        k: {
            "cpu_percent": round(100 * (after[k]["self"] - before[k]["self"]) / seconds, 2),
            "children_cpu_percent": round(100 * (after[k]["children"] - before[k]["children"]) / seconds, 2),
            "rss_mib": round(after[k]["rss_mib"], 1),
            "hwm_mib": round(after[k]["hwm_mib"], 1),
        }
        for k in after
        if k in before
    }


def at_rest(lab: Lab, seconds: float) -> dict[str, Any]:
    lab.up("--lease-ttl", "3")
    wait(lambda: converged(lab), 20, "agents converged")
    time.sleep(5)
    st = state(lab.tag)
    pids = {f"agent {n}": int(labs.agent_status(st, n)["pid"]) for n in NODES}
    pids.update({f"etcd {m}": pid for m, pid in st.etcd_pids.items()})
    before = samples(pids)
    reconciles = {n: labs.agent_status(st, n).get("reconciles", 0) for n in NODES}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    out: dict[str, Any] = {"seconds": round(elapsed, 1), "ttl": 3, "processes": usage(before, samples(pids), elapsed)}
    out["reconciles_during"] = {n: labs.agent_status(st, n).get("reconciles", 0) - reconciles[n] for n in NODES}
    for k, v in out["processes"].items():
        log(f"at rest: {k}: {v}")
    return out


# --- 3. key rotation ------------------------------------------------------------------------
def rotate_at_once(st: labs.LabState) -> None:
    """SIGUSR1 to every agent at the same moment (both ends of every tunnel re-key together, as
    agents of a real deployment could), then wait for every device to have the new keys and a
    handshake with each."""
    old = {n: public_key(st, n) for n in NODES}
    for n in NODES:
        os.kill(int(labs.agent_status(st, n)["pid"]), signal.SIGUSR1)
    wait(lambda: all(public_key(st, n) != old[n] for n in NODES), 10, "keys rotated")
    new = {n: public_key(st, n) for n in NODES}

    def handshaken() -> bool:
        for n in NODES:
            text = wireguard.dump(ifname(st, n))
            stats = wireguard.parse_dump(text)[1] if text else {}
            if any(not stats.get(new[o], (0, 0, 0, None))[0] for o in NODES if o != n):
                return False
        return True

    wait(handshaken, 30, "handshakes with the new keys")


def rotation(lab: Lab, trials: int, nodes: list[str], at_once: bool = False) -> dict[str, Any]:
    st = state(lab.tag)
    runs = []
    for _ in range(trials):
        wait(lambda: converged(lab), 20, "agents converged")
        stream = UdpStream(st.pods[CLIENT].namespace, str(st.pods[SERVER].address), 5353)
        try:
            time.sleep(1.0)
            asked = time.time()
            if at_once:
                rotate_at_once(st)
            else:
                only = [a for n in nodes for a in ("--node", n)]
                crossmesh("lab", "rotate-keys", "--mesh", str(lab.mesh), *only, check=True)
            returned = time.time()
            time.sleep(1.0)
            result = stream.stop()
        except BaseException:
            stream.kill()
            raise
        lost = result["lost"]
        before = sum(1 for _, t in lost if t < asked)
        run = {
            "sent": result["sent"],
            "lost": len(lost),
            "lost_before_rotation": before,
            "gap_ms": round(result["gap"] * 1000),
            "command_s": round(returned - asked, 2),
            "first_loss_after_ms": round((min(t for _, t in lost) - asked) * 1000) if lost else None,
        }
        runs.append(run)
        log(f"rotate {'all at once' if at_once else 'all' if not nodes else ','.join(nodes)}: {run}")
        time.sleep(0.5)
    return {
        "nodes": nodes or list(NODES),
        "runs": runs,
        "lost": summary([r["lost"] for r in runs]),
        "gap_ms": summary([r["gap_ms"] for r in runs]),
    }


# --- 4. add-node ------------------------------------------------------------------------------
SITES = (("aws-sg", "aws", "192.0.2"), ("azure-we", "azure", "198.51.100"), ("gcp-ew", "gcp", "203.0.113"))


def generated_mesh(tmp: Path, nodes: int) -> Lab:
    """`nodes` nodes round-robin over 3 sites, one cluster per site, every node public."""

    def make(name: str) -> tuple[Path, str]:
        d = Path(tempfile.mkdtemp(dir=tmp))
        lines = [
            "apiVersion: crossmesh.io/v1alpha1",
            "kind: Mesh",
            "metadata:",
            f"  name: {name}",
            "spec:",
            "  wireguard: {topology: full-mesh, listenPort: 51820, persistentKeepalive: 25}",
            "  ipam: {podPool: 10.240.0.0/12, clusterPrefix: 16, nodePrefix: 24}",
            "  sites:",
        ]
        for s, (site, provider, _) in enumerate(SITES):
            lines += [f"    - {{name: {site}, provider: {provider}, region: r{s}, network: 10.{s}.0.0/16, mtu: 1500}}"]
        lines.append("  clusters:")
        for s, (site, provider, prefix) in enumerate(SITES):
            lines += [f"    - name: c{s}", f"      id: {s + 1}", "      nodes:"]
            for i in range(s, nodes, len(SITES)):
                k = i // len(SITES)
                lines.append(
                    f"        - {{name: {provider}-{k + 1:02d}, site: {site}, address: 10.{s}.1.{10 + k}, "
                    f"publicAddress: {prefix}.{10 + k}}}"
                )
        (d / "mesh.yaml").write_text("\n".join(lines) + "\n")
        return d / "mesh.yaml", name

    mesh, name = free_name(make)
    return Lab(mesh, name)


def published_at(log: Path, near: float) -> float | None:
    """Wall time of the agent's first "published" line (its log has local HH:MM:SS.mmm)."""
    try:
        line = next(ln for ln in log.read_text().splitlines() if " published " in ln)
    except (OSError, StopIteration):
        return None
    h, m, s = line.split()[0].split(":")
    day = time.localtime(near)
    midnight = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0, 0, 0, -1))
    at = midnight + int(h) * 3600 + int(m) * 60 + float(s)
    return min((at - 86400, at, at + 86400), key=lambda x: abs(x - near))  # across midnight


def key_hex(keyfile: Path) -> str:
    """The public key of a node's private key file, in hex as the control socket has it; "" while
    the file is being written."""
    from crossmesh.state import keys

    with suppress(ValueError):
        return base64.b64decode(keys.public_key(keyfile.read_text().strip())).hex()
    return ""


def handshaken(ifn: str, key_hex: str) -> bool:
    """Whether device `ifn` has peer `key_hex` with a completed handshake: one `get` on its control
    socket, parsed for the handshake times only (cheap enough to poll forty devices)."""
    key = base64.b64encode(bytes.fromhex(key_hex)).decode()
    return (wireguard.peer_stats(ifn) or {}).get(key, (0, 0, 0, None))[0] > 0


def add_node(tmp: Path, size: int, joins: int) -> dict[str, Any]:
    lab = generated_mesh(tmp, size - 1)
    runs = []
    with running(lab, "--agents"):
        for j in range(joins):
            st = state(lab.tag)
            s = (size - 1 + j) % len(SITES)
            site, provider, prefix = SITES[s]
            name = f"{provider}-join{j + 1}"
            holders = [ifn for ifn, d in st.wireguard.items() if node_record(st, d.node)["site"] != site]
            keyfile = Path(st.state_dir) / "keys" / f"{name}.key"
            t0, wall0 = time.monotonic(), time.time()
            proc = subprocess.Popen(
                [
                    "crossmesh", "lab", "add-node", "--mesh", str(lab.mesh), "--cluster", f"c{s}", "--site", site,
                    "--name", name, "--address", f"10.{s}.1.{200 + j}", "--public-address", f"{prefix}.{200 + j}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            key = ""
            done: dict[str, float] = {}
            while len(done) < len(holders):
                if not key and keyfile.exists():
                    key = key_hex(keyfile)
                if key:
                    for ifn in holders:
                        if ifn not in done and handshaken(ifn, key):
                            done[ifn] = time.monotonic() - t0
                if time.monotonic() - t0 > 300:
                    proc.kill()
                    raise RuntimeError(f"add-node {name}: {len(done)}/{len(holders)} peers after 300 s")
                if proc.poll() is not None and proc.returncode != 0:
                    raise RuntimeError(f"add-node {name} failed: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.01)
            converged_s = max(done.values())
            proc.wait(timeout=300)
            command_s = time.monotonic() - t0
            published = published_at(state(lab.tag).dir / "logs" / f"agent-{name}.log", wall0)
            run = {
                "node": name,
                "peers": len(holders),
                "converged_s": round(converged_s, 3),
                "first_peer_s": round(min(done.values()), 3),
                "command_s": round(command_s, 2),
                # the control plane's share: the new agent's record in etcd → the last peer's handshake
                "published_to_converged_s": round(wall0 + converged_s - published, 3) if published else None,
            }
            runs.append(run)
            log(f"add-node to {size - 1}-node mesh: {run}")
            t1 = time.monotonic()
            crossmesh("lab", "remove-node", "--mesh", str(lab.mesh), name, check=True, timeout=300)
            log(f"remove-node {name}: {time.monotonic() - t1:.1f} s")
    return {
        "nodes_before": size - 1,
        "nodes_after": size,
        "runs": runs,
        "converged_s": summary([r["converged_s"] for r in runs]),
        "published_to_converged_s": summary([r["published_to_converged_s"] or 0.0 for r in runs]),
    }


# --- 5. churn -----------------------------------------------------------------------------------
CHURN_KEEP = 3  # joined nodes kept before the oldest is removed: the mesh stays near its size


def host_busy() -> tuple[float, float]:
    """Busy and total jiffies of all CPUs (/proc/stat): how loaded the shared host was."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


class RssPeaks(threading.Thread):
    """The largest RSS of each process, sampled every second while the churn runs."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            for k, s in samples(self.pids).items():
                self.peak[k] = max(self.peak.get(k, 0.0), s["rss_mib"])


class JoinWatch(threading.Thread):
    """Issued → every node of another site has the new node's key as a peer with a completed
    handshake (as add_node measures it), polled in a thread so that the churn loop issues its
    next command on time. Peers removed meanwhile (`gone`) no longer count."""

    def __init__(self, st: labs.LabState, name: str, site: str, t0: float, gone: set[str], sites: dict[str, str]):
        super().__init__(daemon=True)
        self.name_, self.t0, self.gone = name, t0, gone
        self.keyfile = Path(st.state_dir) / "keys" / f"{name}.key"
        self.pending = {ifn: d.node for ifn, d in st.wireguard.items() if sites.get(d.node) != site}
        self.peers = len(self.pending)
        self.done: dict[str, float] = {}
        self.outcome = "pending"

    def run(self) -> None:
        key = ""
        while self.pending:
            if self.name_ in self.gone:
                self.outcome = "removed before converging"
                return
            if time.monotonic() - self.t0 > 300:
                self.outcome = f"not converged after 300 s on {len(self.pending)} peers"
                return
            if not key and self.keyfile.exists():
                key = key_hex(self.keyfile)
            for ifn, node in list(self.pending.items()) if key else ():
                if node in self.gone:
                    del self.pending[ifn]
                elif handshaken(ifn, key):
                    self.done[ifn] = time.monotonic() - self.t0
                    del self.pending[ifn]
            time.sleep(0.05)
        self.outcome = "converged"

    @property
    def converged_s(self) -> float | None:
        return max(self.done.values()) if self.outcome == "converged" and self.done else None


def timed(argv: list[str], on_start: Callable[[float, float], None] = lambda t0, wall0: None) -> dict[str, Any]:
    """Run one lab command to its end: when it started (monotonic, wall) and how it went."""
    t0, wall0 = time.monotonic(), time.time()
    proc = subprocess.Popen(["crossmesh", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    on_start(t0, wall0)
    _, err = proc.communicate(timeout=600)
    return {"t0": t0, "wall0": wall0, "seconds": time.monotonic() - t0, "rc": proc.returncode, "stderr": err}


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


def spread(xs: list[float]) -> dict[str, float] | None:
    return {**summary(xs), "p90": quantile(xs, 0.9)} if xs else None


def settled_lab(lab: Lab) -> tuple[labs.LabState, dict[str, str], dict[str, int], dict[str, int]]:
    """A lab just up with agents, once every node has its peers: its state, each node's site,
    each agent's pid, and the pids to sample (agents and etcd members by name)."""
    st = state(lab.tag)
    sites = {n: node_record(st, n)["site"] for n in st.nodes}
    time.sleep(5)
    wait(lambda: converged(lab, tuple(st.nodes), dict(sites)), 120, "agents converged", interval=1.0)
    agents = {n: int(labs.agent_status(st, n)["pid"]) for n in st.nodes}
    pids = {**{f"agent {n}": p for n, p in agents.items()}, **{f"etcd {m}": p for m, p in st.etcd_pids.items()}}
    return st, sites, agents, pids


def sampled(pids: dict[str, int], seconds: float) -> dict[str, Any]:
    """CPU and memory of `pids` over `seconds` from now."""
    b0, t0 = samples(pids), time.monotonic()
    time.sleep(seconds)
    return usage(b0, samples(pids), time.monotonic() - t0)


def churn(tmp: Path, size: int, seconds: float, rest: float, settle: float) -> dict[str, Any]:
    """`size` nodes with agents; at rest for `rest` s, then one `lab add-node` a second (back to
    back when a command takes longer: lab commands of one lab must not overlap) for `seconds`,
    each join past CHURN_KEEP joined nodes followed by the `lab remove-node` of the oldest; then
    `settle` s and another `rest` s to see whether CPU and memory come back."""
    lab = generated_mesh(tmp, size)
    with running(lab, "--agents"):
        st, sites, agents, pids = settled_lab(lab)

        log(f"churn: {size} nodes at rest for {rest:.0f} s")
        at_rest_ = sampled(pids, rest)

        log(f"churn: one join a second for {seconds:.0f} s (a remove after each join past {CHURN_KEEP})")
        peaks = RssPeaks(pids)
        peaks.start()
        ops: list[dict[str, Any]] = []
        watches: list[JoinWatch] = []
        joined: deque[str] = deque()
        gone: set[str] = set()
        before, (busy0, total0), self0 = samples(pids), host_busy(), os.times()
        start = next_at = time.monotonic()
        k = 0
        while k < 149:
            if max(next_at, time.monotonic()) - start >= seconds:
                break
            time.sleep(max(0.0, next_at - time.monotonic()))
            k += 1
            s = k % len(SITES)
            site, provider, prefix = SITES[s]
            name = f"{provider}-churn{k:03d}"
            st = state(lab.tag)
            sites[name] = site

            def watch(t0: float, _: float, st: labs.LabState = st, name: str = name, site: str = site) -> None:
                watches.append(JoinWatch(st, name, site, t0, gone, sites))
                watches[-1].start()

            run = timed(
                ["lab", "add-node", "--mesh", str(lab.mesh), "--cluster", f"c{s}", "--site", site, "--name", name,
                 "--address", f"10.{s}.2.{k}", "--public-address", f"{prefix}.{100 + k}"],
                watch,
            )  # fmt: skip
            next_at = run["t0"] + 1.0
            published = published_at(st.dir / "logs" / f"agent-{name}.log", run["wall0"])
            ops.append({"op": "join", "node": name, "watch": watches[-1], "published": published, **run})
            log(f"churn: join {name}: {run['seconds']:.2f} s" + (" FAILED" if run["rc"] else ""))
            if run["rc"]:
                break
            joined.append(name)
            if len(joined) > CHURN_KEEP:
                old = joined.popleft()
                gone.add(old)
                run = timed(["lab", "remove-node", "--mesh", str(lab.mesh), old])
                ops.append({"op": "remove", "node": old, **run})
                log(f"churn: remove {old}: {run['seconds']:.2f} s" + (" FAILED" if run["rc"] else ""))
                if run["rc"]:
                    break
        window = time.monotonic() - start
        during = usage(before, samples(pids), window)
        busy1, total1 = host_busy()
        self1 = os.times()
        peaks.stop.set()
        peaks.join()
        for w in watches:
            w.join(timeout=max(0.0, 300 - (time.monotonic() - w.t0)))
        after = samples(pids)

        log(f"churn: settling for {settle:.0f} s, then {rest:.0f} s at rest again")
        time.sleep(settle)
        settled = sampled(pids, rest)
        st = state(lab.tag)
        restarted = sorted(n for n, p in agents.items() if int(labs.agent_status(st, n).get("pid", 0)) != p)

    joins = [o for o in ops if o["op"] == "join"]
    removes = [o for o in ops if o["op"] == "remove"]
    for o in joins:
        w = o.pop("watch")
        conv = None if w.converged_s is None else round(w.converged_s, 3)
        o.update(peers=w.peers, outcome=w.outcome, converged_s=conv, published_to_converged_s=None)
        if w.converged_s is not None and o["published"]:
            o["published_to_converged_s"] = round(o["wall0"] + w.converged_s - o["published"], 3)
    parts = {"at_rest": at_rest_, "churn": during, "after_churn": usage(before, after, window), "settled": settled}

    def side(kind: str) -> dict[str, Any]:
        """CPU and RSS of the agents (those not restarted meanwhile) or etcd members, per part."""

        def of(part: dict[str, Any], field: str) -> dict[str, float] | None:
            return spread([v[field] for k, v in part.items() if k.startswith(kind) and k[len(kind) :] not in restarted])

        out = {f: {p: of(parts[p], f) for p in ("at_rest", "churn", "settled")} for f in ("cpu_percent", "rss_mib")}
        out["children_cpu_percent"] = {p: of(parts[p], "children_cpu_percent") for p in ("at_rest", "churn")}
        out["rss_mib"]["churn"] = spread([v for k, v in peaks.peak.items() if k.startswith(kind)])  # peak
        out["rss_mib"]["after_churn"] = of(parts["after_churn"], "rss_mib")
        return out

    agents_ = side("agent ")
    cpu = agents_["cpu_percent"]
    cpu_self = self1.user + self1.system - self0.user - self0.system
    cpu_children = self1.children_user + self1.children_system - self0.children_user - self0.children_system
    result: dict[str, Any] = {
        "nodes": size,
        "keep_joined": CHURN_KEEP,
        "rest_s": rest,
        "settle_s": settle,
        "window_s": round(window, 2),
        "joins": len(joins),
        "removes": len(removes),
        "failed": [{"op": o["op"], "node": o["node"], "stderr": o["stderr"][-500:]} for o in ops if o["rc"]],
        "joins_per_s": round(len(joins) / window, 3),
        "join_command_s": spread([o["seconds"] for o in joins]),
        "remove_command_s": spread([o["seconds"] for o in removes]),
        "converged_s": spread([o["converged_s"] for o in joins if o["converged_s"] is not None]),
        "not_converged": [f"{o['node']}: {o['outcome']}" for o in joins if o["converged_s"] is None],
        "published_to_converged_s": spread(
            [o["published_to_converged_s"] for o in joins if o["published_to_converged_s"] is not None]
        ),
        "agents": agents_,
        "agent_cpu_ratio_median": None,
        "agents_restarted": restarted,
        "etcd": side("etcd "),
        "host_busy_percent": round(100 * (busy1 - busy0) / max(1, total1 - total0), 1),
        # this process (its convergence threads), and the lab commands it ran and reaped
        "bench_cpu_percent": round(100 * cpu_self / window, 1),
        "commands_cpu_percent": round(100 * cpu_children / window, 1),
        "ops": [
            {
                "op": o["op"],
                "node": o["node"],
                "at_s": round(o["t0"] - start, 2),
                "seconds": round(o["seconds"], 2),
                **{k: o[k] for k in ("peers", "converged_s", "published_to_converged_s") if k in o},
            }
            for o in ops
        ],
    }
    if cpu["at_rest"] and cpu["churn"] and cpu["at_rest"]["median"]:
        result["agent_cpu_ratio_median"] = round(cpu["churn"]["median"] / cpu["at_rest"]["median"], 1)
    churn_table(result)
    return result


def churn_records(tmp: Path, size: int, seconds: float, rest: float, keep: int = 3) -> dict[str, Any]:
    """The agents' side of churn at exactly one join a second, which `lab add-node` cannot issue
    on two CPUs at 60 nodes: records of nodes that do not exist (fresh keys, addresses outside
    the lab's) are put into etcd one a second, the oldest deleted past `keep`, as a real join
    and leave would publish and withdraw them. Every agent applies each (a peer, three routes,
    a handshake it starts that nobody answers). Measured: agents' and etcd's CPU and RSS at
    rest and during, and per join the time until every node of another site has the peer."""
    from crossmesh.agent import intents
    from crossmesh.agent import records as recs
    from crossmesh.state import keys

    lab = generated_mesh(tmp, size)
    with running(lab, "--agents"):
        st, sites, agents, pids = settled_lab(lab)
        prefix = agent_config(st, next(iter(st.nodes)))["prefix"]
        devices = {d.node: ifn for ifn, d in st.wireguard.items()}
        # A real join is planned by the operator: each synthetic node gets an intent like a real one's.
        template = intents.decode_intent(
            etcdctl(lab.tag, "get", prefix.replace("/nodes/", "/intents/") + next(iter(st.nodes)), "--print-value-only")
            .stdout.strip()
            .encode(),
            next(iter(st.nodes)),
        )

        def write_intent(planned: recs.PlannedNode) -> None:
            told = intents.NodeIntent(template.revision, planned, template.mtu, template.keepalive)
            key = prefix.replace("/nodes/", "/intents/") + planned.name
            done = etcdctl(lab.tag, "put", key, told.encode().decode())
            if done.returncode != 0:
                raise RuntimeError(f"etcdctl put: {done.stderr}")

        log(f"churn (records): {size} nodes at rest for {rest:.0f} s")
        at_rest_ = sampled(pids, rest)

        log(f"churn (records): one join a second for {seconds:.0f} s, the oldest leaves past {keep}")
        peaks = RssPeaks(pids)
        peaks.start()
        live: deque[str] = deque()
        joins: list[dict[str, Any]] = []
        before, t0 = samples(pids), time.monotonic()
        k = 0
        while time.monotonic() - t0 < seconds and k < 200:
            due = t0 + k
            time.sleep(max(0.0, due - time.monotonic()))
            k += 1
            site, _, public = SITES[k % len(SITES)]
            pub = keys.public_key(keys.generate_private_key())
            rec = recs.NodeRecord(
                name=f"synthetic-{k:03d}", cluster=f"c{k % len(SITES)}", site=site, public_key=pub,
                address=f"10.{k % len(SITES)}.3.{k}", pod_cidr=f"10.250.{k}.0/24", tunnel_address=f"100.64.1.{k}",
                listen_port=51820, endpoint=f"{public}.{50 + k}:51820",
            )  # fmt: skip
            write_intent(recs.PlannedNode(
                name=rec.name, cluster=rec.cluster, site=site, address=rec.address, pod_cidr=rec.pod_cidr,
                tunnel_address=rec.tunnel_address, listen_port=51820, public_address=f"{public}.{50 + k}",
            ))  # fmt: skip
            issued = time.monotonic()
            done = etcdctl(lab.tag, "put", prefix + rec.name, rec.encode().decode())
            if done.returncode != 0:
                raise RuntimeError(f"etcdctl put: {done.stderr}")
            live.append(rec.name)
            holders = [devices[n] for n, s in sites.items() if s != site and n in devices]
            pending = set(holders)
            while pending and time.monotonic() - issued < 30:
                for ifn in list(pending):
                    if pub in (wireguard.peer_stats(ifn) or {}):
                        pending.discard(ifn)
                time.sleep(0.01)
            joins.append({"node": rec.name, "peers": len(holders), "applied_s": round(time.monotonic() - issued, 3),
                          "missing": len(pending)})  # fmt: skip
            if len(live) > keep:
                gone = live.popleft()
                etcdctl(lab.tag, "del", prefix + gone)
                etcdctl(lab.tag, "del", prefix.replace("/nodes/", "/intents/") + gone)
        window = time.monotonic() - t0
        during = usage(before, samples(pids), window)
        peaks.stop.set()
        peaks.join()
        for name in live:
            etcdctl(lab.tag, "del", prefix + name)
            etcdctl(lab.tag, "del", prefix.replace("/nodes/", "/intents/") + name)
        applied = [j["applied_s"] for j in joins]
        agent_cpu = [v["cpu_percent"] for n, v in during.items() if n.startswith("agent")]
        rest_cpu = [v["cpu_percent"] for n, v in at_rest_.items() if n.startswith("agent")]
        result = {
            "nodes": size,
            "joins": len(joins),
            "joins_per_s": round(len(joins) / window, 2),
            "applied_by_every_other_site_node_s": spread(applied),
            "not_applied": sum(j["missing"] for j in joins),
            "agent_cpu_percent": {"at_rest": spread(rest_cpu), "churn": spread(agent_cpu)},
            "etcd_cpu_percent": {
                "at_rest": spread([v["cpu_percent"] for n, v in at_rest_.items() if n.startswith("etcd")]),
                "churn": spread([v["cpu_percent"] for n, v in during.items() if n.startswith("etcd")]),
            },
            "agent_rss_mib": {
                "at_rest": spread([v["rss_mib"] for n, v in at_rest_.items() if n.startswith("agent")]),
                "peak": spread([v for n, v in peaks.peak.items() if n.startswith("agent")]),
            },
            "runs": joins,
        }
        log(f"churn (records): {json.dumps({k: v for k, v in result.items() if k != 'runs'})}")
        return result


def churn_table(r: dict[str, Any]) -> None:
    def mm(d: dict[str, float] | None, unit: str) -> str:
        return f"{d['median']:.2f} / {d['max']:.2f}{unit}" if d else "–"

    print(
        f"\nchurn, {r['nodes']} nodes: {r['joins']} joins + {r['removes']} removes in {r['window_s']} s = "
        f"{r['joins_per_s']} joins/s (target 1); agent CPU x{r['agent_cpu_ratio_median']} (medians); "
        f"host busy {r['host_busy_percent']} %, this script {r['bench_cpu_percent']} %"
    )
    print(f"{'median / max':28}{'at rest':>22}{'churn (RSS: peak)':>22}{'settled':>22}")
    for who in ("agents", "etcd"):
        for field, unit in (("cpu_percent", " %"), ("children_cpu_percent", " %"), ("rss_mib", " MiB")):
            if who == "etcd" and field == "children_cpu_percent":
                continue
            row = r[who][field]
            cols = [mm(row.get(p), unit) for p in ("at_rest", "churn", "settled")]
            print(f"{who + ' ' + field:28}" + "".join(f"{c:>22}" for c in cols))
    c, j = r["converged_s"], r["join_command_s"]
    if c:
        print(f"issued → every other-site peer handshaken: median {c['median']} s, p90 {c['p90']} s, max {c['max']} s")
    print(f"not converged: {r['not_converged'] or 'none'}; restarted agents: {r['agents_restarted'] or 'none'}")
    if j:
        print(f"add-node command: median {j['median']} s, max {j['max']} s; failed: {r['failed'] or 'none'}\n")


def run_of(results: dict[str, Any]) -> dict[str, Any]:
    """Part → the start and environment of the run that measured it."""
    meta = {"started", "environment", "etcd_members", "run_of"}
    return {k: {"started": results.get("started"), **results.get("environment", {})} for k in results if k not in meta}


# --- 6. a site cut off from the internet and healed ---------------------------------------------
def cutoff(tmp: Path, trials: int = 5, durations: tuple[float, ...] = (5.0, 17.0)) -> dict[str, Any]:
    """`crossmesh lab cut-site azure-we` (the site of the stream's server) under the UDP stream of the
    rotation part, then `lab heal-site` after each duration; at the start of each cut one HTTP request
    azure → gcp puts data on the site's other tunnel too. Seconds from issuing heal-site to: its
    return, the first echo, and (cuts over 15 s, after which WireGuard retries handshakes every 5 s)
    a fresh handshake on both tunnels of the site, seen from both ends."""
    from agentkit import cut_off, http_ok

    lab = three_clouds(tmp)
    out: dict[str, Any] = {}
    with running(lab, "--agents", "--lease-ttl", "3"):
        st = state(lab.tag)
        for seconds in durations:
            runs = []
            for _ in range(trials):
                wait(lambda: converged(lab), 20, "agents converged")
                probed: list[bool] = []

                def probe(probed: list[bool] = probed) -> None:
                    if not probed:
                        probed.append(http_ok(st, "cluster2/default/rebel-base-1", "cluster3/default/relay-0", 8080))

                m = cut_off(
                    st,
                    "azure-we",
                    "azure-talos-1",
                    nodes=NODES,
                    seconds=seconds,
                    stream=(CLIENT, SERVER),
                    while_cut=probe,
                )
                run = {k: round(v, 3) if isinstance(v, float) else v for k, v in m.items() if k not in ("stale", "cut")}
                runs.append({**run, "crossed_the_cut": probed})
                log(f"cut-site for {seconds:.0f} s: {runs[-1]}")
                time.sleep(1.0)
            fresh = [r["handshakes"] for r in runs if r["handshakes"] is not None]
            out[f"{seconds:g}s"] = {
                "runs": runs,
                "returned_s": summary([r["returned"] for r in runs]),
                "first_echo_s": summary([r["echo"] for r in runs]),
                "stream_resumed_s": summary([r["resumed"] for r in runs]),
                "handshakes_s": summary(fresh) if fresh else None,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttls", default="1,2,3,5")
    parser.add_argument("--crashes", type=int, default=5, help="crashes per TTL")
    parser.add_argument("--rest", type=float, default=10.0, help="seconds of the at-rest sample")
    parser.add_argument("--rotations", type=int, default=5)
    parser.add_argument("--add-node-sizes", default="6,30")
    parser.add_argument("--joins", type=int, default=3, help="add-node trials per size")
    parser.add_argument("--churn-nodes", type=int, default=60)
    parser.add_argument("--churn-seconds", type=float, default=30.0, help="joins are issued for this long")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after the churn, then --rest again")
    parser.add_argument("--only", default="detection,rest,rotation,add-node,churn,churn-records")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "results" / "control_plane.json")
    parser.add_argument("--replace", action="store_true", help="write only this run's parts (default: merge)")
    parser.add_argument("--merge", action="store_true", help=argparse.SUPPRESS)  # the default now
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_control_plane: needs root (the lab)", file=sys.stderr)
        return 2
    only = set(args.only.split(","))
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "etcd": subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
            "load_at_start": Path("/proc/loadavg").read_text().strip(),
            "commit": head.stdout.strip(),
            "other_labs": len(labs.running_labs()),
        },
    }
    tmp = Path(tempfile.mkdtemp(prefix="cm-bench-cp-"))
    try:
        if only & {"detection", "rest", "rotation"}:
            lab = three_clouds(tmp)
            with running(lab, "--agents", "--lease-ttl", "3"):
                if "detection" in only:
                    results["detection"] = detection(lab, [int(t) for t in args.ttls.split(",")], args.crashes)
                if "rest" in only:
                    results["rest"] = at_rest(lab, args.rest)
                if "rotation" in only:
                    lab.up("--lease-ttl", "3")
                    results["rotation"] = {
                        "all": rotation(lab, args.rotations, []),
                        "one": rotation(lab, args.rotations, ["azure-talos-1"]),
                        "at_once": rotation(lab, args.rotations, [], at_once=True),
                    }
        if "add-node" in only:
            help_ = subprocess.run(["crossmesh", "lab", "add-node", "--help"], capture_output=True, text=True)
            if help_.returncode != 0:
                results["add_node"] = "pending: `crossmesh lab add-node` is not there yet"
            else:
                results["add_node"] = {
                    s: add_node(tmp, int(s), args.joins) for s in args.add_node_sizes.split(",") if s
                }
        if "churn" in only:
            results["churn"] = churn(tmp, args.churn_nodes, args.churn_seconds, args.rest, args.settle)
        if "churn-records" in only:
            results["churn_records"] = churn_records(tmp, args.churn_nodes, args.churn_seconds, args.rest)
        if "cutoff" in only:  # not in the default --only: sudo python3 benchmarks/bench_control_plane.py --only cutoff
            results["cutoff"] = cutoff(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["etcd_members"] = etcd.MEMBERS
    results["run_of"] = run_of(results)
    if not args.replace and args.output.exists():
        # a run of some parts keeps the others' results (and add-node's other sizes); run_of says
        # when and on which commit and load each part was measured
        old = json.loads(args.output.read_text())
        if isinstance(old.get("add_node"), dict) and isinstance(results.get("add_node"), dict):
            results["add_node"] = {**old["add_node"], **results["add_node"]}
        results = {**old, **results, "run_of": {**(old.get("run_of") or run_of(old)), **results["run_of"]}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.output}")
    print(json.dumps({k: v for k, v in results.items() if k != "environment"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
