"""Global-service benchmarks (issue 5): failover time and load-balancer cost.

    sudo python3 benchmarks/bench_services.py [--trials 20] [--lb-seconds 5] [--lb-rounds 5]
                                              [--only failover|lb]

1. Failover, on a real lab of examples/three-clouds (copied to a temporary directory
   under its own metadata.name and lab tag, removed with `lab down --mesh` in a finally).
   A client inside pod cluster1/default/x-wing-0 opens a NEW TCP connection every 50 ms
   to the ClusterIP of `relay` (affinity local: tier 1 is cluster1/default/relay-0, tier 2
   cluster2/default/relay-0; cluster3 does not share its relay) and asks which pod
   answered. The same process kills the local backend (`lab.set_killed`, what `crossmesh
   lab kill` calls), so kill time and connection times come from one monotonic clock:
     failover = kill → end of the first connection opened after the kill that a remote
                backend answered;
     return   = revive → end of the first connection opened after the revive that the
                local backend answered.
   Default health settings of the plan (TCP probe every 200 ms, 2 failures to go down,
   1 success to come back). Each trial waits a random 0.2-0.7 s of steady local answers
   before the kill, so kills fall anywhere in the probe period. The health daemon's own
   transition time (health.json `since`) splits each time into detection and table swap.

2. Load-balancer cost, without the lab (1,000 pods would measure the lab, not the
   balancer): namespaces cm-<u>-lb-c (client) and cm-<u>-lb-s (server) joined by a veth.
   The server owns 10.251.0.0/21 through an AnyIP route (`ip route add local ... dev lo`),
   so one listener on 0.0.0.0:8080 answers every backend address. The client namespace
   gets the table `servicenat.services_table` generates for a cluster with four services of
   N = 1 (the baseline), 10, 100 and 1000 backends — one `numgen random mod N map` DNAT
   rule each — loaded with nft. A client process connects and closes (SO_LINGER 0: RST, no
   TIME_WAIT) as fast as it can, sending connection i to target i mod 5: the four
   ClusterIPs and "direct", a backend address itself (no DNAT; conntrack still on), so that
   the host's other load falls on every N alike (this host is shared; separate runs per N
   differed by 5x). Each connection (socket + connect + close) is timed; rate = connections
   / time spent on them, --lb-seconds per target and round, --lb-rounds rounds; the ratio
   to N=1 is taken per round, then the median. The same from the median connection time
   (1 / median), which preemption by other work hardly moves. The server counts the
   addresses it was reached on, so every backend of every set is seen to serve.

Prints a report and writes benchmarks/results/services.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CM = [sys.executable, "-m", "crossmesh.cli.main"]
NETNS_DIR = Path("/run/netns")
WG_SOCKETS = Path("/var/run/wireguard")
LAB_ROOT = Path("/run/crossmesh")

CLIENT_POD = "cluster1/default/x-wing-0"
LOCAL_BACKEND = "cluster1/default/relay-0"
REMOTE_BACKEND = "cluster2/default/relay-0"
SERVICE = ("cluster1", "default", "relay")
INTERVAL = 0.05  # a new connection every 50 ms
ATTEMPT_TIMEOUT = 1.0
TRIAL_TIMEOUT = 15.0

LB_SIZES = (1, 10, 100, 1000)
LB_SERVICE_CIDR = IPv4Network("10.96.0.0/16")
LB_BACKENDS = IPv4Network("10.251.0.0/21")  # 1 + 10 + 100 + 1000 backends, and one address for "direct"
LB_PORT = 8080
LB_LINK = ("10.250.0.1", "10.250.0.2")  # client, server; only inside the two namespaces


def log(msg: str) -> None:
    print(f"[bench_services {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def sh(argv: list[str], *, input: str | None = None, timeout: float = 60) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --- 1. failover ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    start: float
    end: float
    who: str | None  # CLUSTER/NS/POD that answered
    error: str | None


class Client:
    """A new connection every 50 ms from inside a pod's namespace, on a thread of this process."""

    def __init__(self, netns_name: str, ip: str, port: int) -> None:
        self.ns, self.ip, self.port = netns_name, ip, port
        self.attempts: list[Attempt] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="failover-client", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Client:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        from crossmesh.drivers.lab import netns

        try:
            netns.enter(self.ns)  # this thread only; its sockets live in the pod's namespace
            asyncio.run(self._loop())
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            self.error = err

    async def _loop(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        due = time.monotonic()
        while not self.stop.is_set():
            task = asyncio.create_task(self._attempt())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due += INTERVAL
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=ATTEMPT_TIMEOUT * 3)

    async def _attempt(self) -> None:
        start = time.monotonic()
        who, error = None, None
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT):
                reader, writer = await asyncio.open_connection(self.ip, self.port)
                try:
                    writer.write(b"GET /bench-failover HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
                    data = await reader.read()
                finally:
                    writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                error = "bad answer"
            else:
                answer = json.loads(body)
                who = f"{answer['cluster']}/{answer['namespace']}/{answer['pod']}"
        except TimeoutError:
            error = "timeout"
        except (OSError, ValueError, KeyError) as err:
            error = type(err).__name__
        self.attempts.append(Attempt(start, time.monotonic(), who, error))

    def first(self, since: float, who: str, timeout: float = TRIAL_TIMEOUT) -> Attempt | None:
        """The first connection opened at or after `since` answered by `who` (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [a for a in list(self.attempts) if a.start >= since and a.who == who]
            if hits:
                return min(hits, key=lambda a: a.end)
            if self.error is not None:
                raise RuntimeError(f"client failed: {self.error!r}")
            time.sleep(0.01)
        return None

    def between(self, start: float, end: float) -> list[Attempt]:
        return [a for a in list(self.attempts) if start <= a.start and a.end <= end]


def health_since(state_dir: Path, key: str) -> tuple[bool, float] | None:
    try:
        data = json.loads((state_dir / "health.json").read_text())
        b = data["backends"][key]
        return bool(b["healthy"]), float(b["since"])
    except (OSError, ValueError, KeyError):
        return None


def wait_health(state_dir: Path, key: str, healthy: bool, timeout: float = 5.0) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health_since(state_dir, key)
        if h is not None and h[0] == healthy:
            return h[1]
        time.sleep(0.02)
    return None


def three_clouds(workdir: Path, name: str) -> Path:
    src = REPO / "examples" / "three-clouds"
    shutil.copytree(src / "apps", workdir / "apps")
    text, n = re.subn(r"(?m)^(metadata:\n  name: )three-clouds$", rf"\g<1>{name}", (src / "mesh.yaml").read_text())
    if n != 1:
        raise RuntimeError("examples/three-clouds/mesh.yaml: metadata.name not found")
    mesh = workdir / "mesh.yaml"
    mesh.write_text(text)
    return mesh


def failover(trials: int) -> dict[str, Any]:
    from crossmesh.drivers.lab import lab as labs
    from crossmesh.drivers.lab import servicenat

    tag = free_tag()
    workdir = Path(tempfile.mkdtemp(prefix=f"cm-bench-svc-{tag}-"))
    mesh = three_clouds(workdir, f"bench-svc-{tag}")
    try:
        log(f"failover: lab up {mesh} (cm-{tag})")
        t0 = time.monotonic()
        sh([*CM, "lab", "up", str(mesh), "--tag", tag, "-o", "json"], timeout=600)
        log(f"failover: lab up took {time.monotonic() - t0:.1f} s")
        state = labs.LabState.load(tag)
        if state is None:
            raise RuntimeError(f"no state for lab cm-{tag}")
        compiled, _ = labs.topology_of(state)
        plan = compiled.plan
        svc = next(s for s in plan.cluster(SERVICE[0]).services if (s.namespace, s.name) == (SERVICE[1], SERVICE[2]))
        port = svc.ports[0][0]
        pods = {p.ref: p for p in plan.pods()}
        local_key = servicenat.backend_key(LOCAL_BACKEND, str(pods[LOCAL_BACKEND].address), 8080)
        client_ns = state.pods[CLIENT_POD].namespace
        health = plan.health
        log(
            f"failover: client {CLIENT_POD} ({client_ns}) → {svc.ref} {svc.cluster_ip}:{port}; health: "
            f"{health.probe} every {health.interval_ms} ms, timeout {health.timeout_ms} ms, "
            f"down after {health.failure_threshold}, up after {health.success_threshold}"
        )
        rng = random.Random(5)
        results: list[dict[str, Any]] = []
        with Client(client_ns, str(svc.cluster_ip), port) as client:
            warm = client.first(time.monotonic(), LOCAL_BACKEND)
            if warm is None:
                raise RuntimeError(f"{LOCAL_BACKEND} never answered through {svc.cluster_ip}")
            for i in range(trials):
                # steady: the last three answers local, then a random pause
                steady_from = time.monotonic()
                while True:
                    recent = [a for a in list(client.attempts) if a.start >= steady_from][-3:]
                    if len(recent) == 3 and all(a.who == LOCAL_BACKEND for a in recent):
                        break
                    if time.monotonic() - steady_from > TRIAL_TIMEOUT:
                        raise RuntimeError("the local backend does not answer steadily before the kill")
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.2, 0.7))

                wall_kill, t_kill = time.time(), time.monotonic()
                labs.set_killed(state, LOCAL_BACKEND, True)
                hit = client.first(t_kill, REMOTE_BACKEND)
                if hit is None:
                    labs.set_killed(state, LOCAL_BACKEND, False)
                    raise RuntimeError(f"trial {i + 1}: no remote answer within {TRIAL_TIMEOUT} s of the kill")
                down_since = wait_health(state.dir, local_key, healthy=False)
                window = client.between(t_kill, hit.end)
                time.sleep(rng.uniform(0.5, 1.0))

                wall_rev, t_rev = time.time(), time.monotonic()
                labs.set_killed(state, LOCAL_BACKEND, False)
                back = client.first(t_rev, LOCAL_BACKEND)
                if back is None:
                    raise RuntimeError(f"trial {i + 1}: the local backend never answered again after revive")
                up_since = wait_health(state.dir, local_key, healthy=True)
                window_back = client.between(t_rev, back.end)
                r = {
                    "failover": round(hit.end - t_kill, 4),
                    "failover_detect": round(down_since - wall_kill, 4) if down_since else None,
                    "failover_failed_connections": sum(1 for a in window if a.who is None),
                    "failover_errors": sorted({a.error for a in window if a.error}),
                    "return": round(back.end - t_rev, 4),
                    "return_detect": round(up_since - wall_rev, 4) if up_since else None,
                    "return_failed_connections": sum(1 for a in window_back if a.who is None),
                }
                results.append(r)
                log(
                    f"trial {i + 1:2}/{trials}: failover {r['failover']:.3f} s (detected {r['failover_detect']}, "
                    f"{r['failover_failed_connections']} failed), return {r['return']:.3f} s "
                    f"(detected {r['return_detect']}, {r['return_failed_connections']} failed)"
                )
            stray = sorted({a.who for a in client.attempts if a.who not in (LOCAL_BACKEND, REMOTE_BACKEND, None)})
            total = len(client.attempts)
    finally:
        with contextlib.suppress(Exception):
            st = labs.LabState.load(tag)
            if st is not None:
                labs.set_killed(st, LOCAL_BACKEND, False)
        log(f"failover: lab down --mesh {mesh}")
        done = subprocess.run(
            [*CM, "lab", "down", "--mesh", str(mesh)], capture_output=True, text=True, timeout=180, check=False
        )
        if done.returncode != 0:
            log(f"WARNING: lab down failed: {done.stderr.strip()[-500:]}")
        with contextlib.suppress(Exception):
            from crossmesh.drivers.lab.lab import leftovers

            left = leftovers(tag)
            if left:
                log(f"WARNING: lab cm-{tag} left {len(left)} things behind: {left[:5]}")
        shutil.rmtree(workdir, ignore_errors=True)

    def summary(key: str) -> dict[str, float]:
        values = [float(r[key]) for r in results if r[key] is not None]
        return {
            "p50": round(statistics.median(values), 3),
            "p99": round(percentile(values, 99), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
        }

    return {
        "trials": len(results),
        "interval_ms": INTERVAL * 1000,
        "health": {
            "probe": health.probe,
            "interval_ms": health.interval_ms,
            "timeout_ms": health.timeout_ms,
            "failure_threshold": health.failure_threshold,
            "success_threshold": health.success_threshold,
        },
        "failover": summary("failover"),
        "failover_detect": summary("failover_detect"),
        "return": summary("return"),
        "return_detect": summary("return_detect"),
        "failed_connections_per_failover": summary("failover_failed_connections"),
        "connections": total,
        "answered_by_other_pods": stray,
        "runs": results,
    }


# --- 2. load-balancer cost --------------------------------------------------------------------

SERVER = r"""
import collections, json, socket, sys, time
port, until = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port)); s.listen(4096); s.settimeout(0.2)
print("ready", flush=True)
seen = collections.Counter()
while time.time() < until:
    try:
        c, _ = s.accept()
    except (socket.timeout, OSError):
        continue
    try:
        seen[c.getsockname()[0]] += 1
    except OSError:
        pass
    c.close()
print(json.dumps(seen), flush=True)
"""

# Connections go to the targets in turn, one each, so that whatever else the host does
# falls on every N alike; each connection (socket, connect, close) is timed on its own.
CLIENT = r"""
import json, socket, struct, sys, time
targets, seconds = json.loads(sys.argv[1]), float(sys.argv[2])
linger = struct.pack("ii", 1, 0)
k = len(targets)
spent = [0.0] * k; ok = [0] * k; errors = [0] * k; samples = [[] for _ in range(k)]
addrs = [(ip, port) for _, ip, port in targets]
clock = time.perf_counter
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    j = i % k
    i += 1
    t0 = clock()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(1.0)
    try:
        s.connect(addrs[j])
        good = True
    except OSError:
        good = False
    s.close()
    dt = clock() - t0
    spent[j] += dt
    samples[j].append(dt)
    if good:
        ok[j] += 1
    else:
        errors[j] += 1
out = {}
for j, (label, _, _) in enumerate(targets):
    xs = sorted(samples[j])
    out[label] = {"ok": ok[j], "errors": errors[j], "spent": spent[j], "median_us": xs[len(xs) // 2] * 1e6,
                  "p99_us": xs[int(len(xs) * 0.99)] * 1e6}
print(json.dumps(out), flush=True)
"""


@dataclass(frozen=True)
class LbService:
    label: str
    backends: int
    cluster_ip: str
    first: int  # offset of its first backend in LB_BACKENDS


def lb_services() -> list[LbService]:
    out, offset = [], 1
    for i, n in enumerate(LB_SIZES):
        out.append(LbService(str(n), n, str(LB_SERVICE_CIDR.network_address + 11 + i), offset))
        offset += n
    return out


def lb_table(services: list[LbService]) -> str:
    """The node table `services_table` builds for a cluster with these services (N=1 first in
    the chain, N=1000 last: the rule order, if anything, costs the large sets)."""
    from crossmesh import nft
    from crossmesh.drivers.lab import servicenat
    from crossmesh.model.plan import ClusterPlan, Plan, PodPlan, ServicePlan

    pods: list[PodPlan] = []
    plans = []
    for svc in services:
        mine = [
            PodPlan(
                "c",
                "default",
                f"web{svc.label}-{i}",
                "n",
                LB_BACKENDS.network_address + svc.first + i,
                (("app", f"web{svc.label}"),),
                ((LB_PORT, "TCP", "http"),),
            )
            for i in range(svc.backends)
        ]
        pods += mine
        plans.append(
            ServicePlan(
                "c",
                "default",
                f"web{svc.label}",
                IPv4Address(svc.cluster_ip),
                ((80, "TCP", "http", "http"),),
                tuple(p.ref for p in mine),
                False,
                True,
                "none",
            )
        )
    cluster = ClusterPlan(
        "c", 1, "talos", "cilium", LB_BACKENDS, LB_SERVICE_CIDR, ("n",), ("s",), tuple(pods), tuple(plans)
    )
    plan = Plan("bench", "full-mesh", "cluster.local", 51820, (), (cluster,), ())
    return nft.render(servicenat.services_table(plan, "c", [], IPv4Address(LB_LINK[0])))


class LbLab:
    def __init__(self, tag: str) -> None:
        self.client, self.server = f"cm-{tag}-lb-c", f"cm-{tag}-lb-s"
        self.veth = (f"cm-{tag}-lbc", f"cm-{tag}-lbs")

    def up(self) -> None:
        c, s = self.client, self.server
        for ns in (c, s):
            sh(["ip", "netns", "add", ns])
        # created inside the client namespace, the peer straight into the server's: nothing in the root namespace
        sh(["ip", "-n", c, "link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1], "netns", s])
        sh(["ip", "-n", c, "addr", "add", f"{LB_LINK[0]}/30", "dev", self.veth[0]])
        sh(["ip", "-n", s, "addr", "add", f"{LB_LINK[1]}/30", "dev", self.veth[1]])
        for ns, dev in ((c, self.veth[0]), (s, self.veth[1])):
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            sh(["ip", "-n", ns, "link", "set", dev, "up"])
        sh(["ip", "-n", c, "route", "add", "default", "via", LB_LINK[1]])
        sh(["ip", "-n", s, "route", "add", "local", str(LB_BACKENDS), "dev", "lo"])  # AnyIP: every backend
        sysctls = {
            c: {"net.ipv4.ip_local_port_range": "1024 65535", "net.netfilter.nf_conntrack_tcp_timeout_close": "1"},
            s: {"net.core.somaxconn": "4096", "net.ipv4.tcp_max_syn_backlog": "4096"},
        }
        for ns, values in sysctls.items():
            for k, v in values.items():
                done = subprocess.run(in_ns(ns, ["sysctl", "-qw", f"{k}={v}"]), capture_output=True, check=False)
                if done.returncode != 0:
                    log(f"lb: sysctl {k} in {ns} not set: {done.stderr.decode().strip()}")

    def down(self) -> None:
        for ns in (self.client, self.server):
            if (NETNS_DIR / ns).exists():
                pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
                for pid in pids.stdout.split():  # only the client and server this benchmark started
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), 9)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def load(self, services: list[LbService]) -> None:
        sh(in_ns(self.client, ["nft", "-f", "-"]), input=lb_table(services))
        listed = sh(in_ns(self.client, ["nft", "list", "table", "ip", "crossmesh"]))
        for svc in services:
            rule = next((line for line in listed.splitlines() if f"ip daddr {svc.cluster_ip} " in line), "")
            elements = len(re.findall(r"\b\d+ : 10\.251\.", rule))
            if elements != svc.backends or f"mod {svc.backends} map" not in rule:
                raise RuntimeError(f"the loaded rule for {svc.cluster_ip} has {elements} backends, not {svc.backends}")

    def measure(self, services: list[LbService], seconds: float) -> dict[str, Any]:
        """One interleaved run: every target gets every k-th connection for `seconds` in all."""
        targets = [[svc.label, svc.cluster_ip, 80] for svc in services]
        targets.append(["direct", str(LB_BACKENDS.broadcast_address - 1), LB_PORT])
        server = subprocess.Popen(
            in_ns(self.server, [sys.executable, "-c", SERVER, str(LB_PORT), str(time.time() + seconds + 3)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError("lb server did not start")
            out = sh(
                in_ns(self.client, [sys.executable, "-c", CLIENT, json.dumps(targets), str(seconds)]),
                timeout=seconds + 60,
            )
            result: dict[str, Any] = json.loads(out)
            seen: dict[str, int] = json.loads(server.communicate(timeout=seconds + 10)[0].strip().splitlines()[-1])
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        for svc in services:
            lo = LB_BACKENDS.network_address + svc.first
            mine = [a for a in seen if lo <= IPv4Address(a) < lo + svc.backends]
            result[svc.label]["backends_reached"] = len(mine)
            result[svc.label]["accepted"] = sum(seen[a] for a in mine)
        for r in result.values():
            r["rate"] = r["ok"] / r["spent"] if r["spent"] else 0.0
        return result


def lb_cost(seconds: float, rounds: int) -> dict[str, Any]:
    tag = free_tag()
    lab = LbLab(tag)
    services = lb_services()
    labels = [svc.label for svc in services] + ["direct"]
    runs: list[dict[str, Any]] = []
    try:
        log(f"lb: namespaces {lab.client}, {lab.server}")
        lab.up()
        lab.load(services)
        lab.measure(services, 2.0)  # warm-up
        for r in range(rounds):
            time.sleep(1.5)  # let the last run's conntrack entries expire
            load = loadavg()
            res = lab.measure(services, seconds * len(labels))
            res["load"] = load
            runs.append(res)
            base = res["1"]["rate"]
            log(
                f"lb round {r + 1}/{rounds} (load {load:.2f}): "
                + ", ".join(
                    f"N={k} {res[k]['rate']:.0f}/s x{res[k]['rate'] / base:.3f}"
                    + (f" ({res[k]['backends_reached']} reached)" if k != "direct" else "")
                    for k in labels
                )
            )
    finally:
        lab.down()
        left = [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(f"cm-{tag}")] if NETNS_DIR.is_dir() else []
        if left:
            log(f"WARNING: left behind: {left}")
    out: dict[str, Any] = {"seconds_per_n": seconds, "rounds": rounds, "sizes": {}}
    for k in labels:
        rates = [run[k]["rate"] for run in runs]
        ratios = [run[k]["rate"] / run["1"]["rate"] for run in runs]
        out["sizes"][k] = {
            "rate_median": round(statistics.median(rates)),
            "rates": [round(x) for x in rates],
            "ratio_to_baseline": round(statistics.median(ratios), 3),
            "ratios": [round(x, 3) for x in ratios],
            "median_us": round(statistics.median(run[k]["median_us"] for run in runs), 1),
            # the same from each round's median connection time: robust to preemption by other work
            "median_rate": round(1e6 / statistics.median(run[k]["median_us"] for run in runs)),
            "median_ratio_to_baseline": round(
                statistics.median(run["1"]["median_us"] / run[k]["median_us"] for run in runs), 3
            ),
            "p99_us": round(statistics.median(run[k]["p99_us"] for run in runs), 1),
            "connections": sum(run[k]["ok"] for run in runs),
            "errors": sum(run[k]["errors"] for run in runs),
            "backends_reached": [run[k].get("backends_reached") for run in runs],
        }
    out["load"] = [run["load"] for run in runs]
    return out


# --- report -----------------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "nft": sh(["nft", "--version"]).strip(),
        "load_before": loadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def print_report(res: dict[str, Any]) -> None:
    f = res.get("failover")
    if f:
        print(
            f"\nFailover ({f['trials']} trials, new connection every {f['interval_ms']:.0f} ms, health {f['health']})"
        )
        for key in ("failover", "failover_detect", "return", "return_detect", "failed_connections_per_failover"):
            s = f[key]
            print(f"  {key:34} p50 {s['p50']:7.3f}   p99 {s['p99']:7.3f}   min {s['min']:7.3f}   max {s['max']:7.3f}")
    lb = res.get("lb")
    if lb:
        print(f"\nLoad-balancer cost ({lb['rounds']} rounds, {lb['seconds_per_n']} s per N each, interleaved)")
        for key, s in lb["sizes"].items():
            print(
                f"  N={key:>6}  {s['rate_median']:7d} conn/s   x{s['ratio_to_baseline']:.3f} {s['ratios']}   "
                f"median {s['median_us']} us = {s['median_rate']}/s x{s['median_ratio_to_baseline']:.3f}   "
                f"p99 {s['p99_us']} us   errors {s['errors']}   "
                f"backends reached {s['backends_reached']}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--lb-seconds", type=float, default=5.0)
    ap.add_argument("--lb-rounds", type=int, default=5)
    ap.add_argument("--only", choices=["failover", "lb"])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "services.json")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_services needs root (network namespaces)", file=sys.stderr)
        return 2
    res: dict[str, Any] = {"environment": environment()}
    if args.only in (None, "lb"):
        res["lb"] = lb_cost(args.lb_seconds, args.lb_rounds)
    if args.only in (None, "failover"):
        res["failover"] = failover(args.trials)
    res["environment"]["load_after"] = loadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print_report(res)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
