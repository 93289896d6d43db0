"""Benchmark of issue 4's data plane: pod → pod through a node's nftables policy, 1,000 rules vs none.

Not the lab (a lab of 1,000 policies would measure everything else too): namespaces of
our own, `cm-<u>-pd-*` (4 hex digits no lab uses), joined by veths, nothing in the root
namespace. A client namespace (the source pod) and a server namespace (the destination
pod) are joined by five paths, each through its own forwarding "node" namespace:

    none   the node has no table at all (no conntrack either);
    nopol  crossmesh's table for a node whose pods no policy selects, as topology.node_nft
           makes it (anti-spoofing, NAT hooks, so conntrack; no sets): the lab's "none";
    base   the node has crossmesh's table for a namespace with a default deny and the one
           policy that allows client → server (and the client's egress to it);
    1000   the same plus 1,000 policies selecting the server, none of which matches the
           flow: 700 CiliumNetworkPolicies allowing other pod identities (on the same port
           or others), 100 ingressDeny from other identities, 100 NetworkPolicies from
           other pods on the connection-rate port, 100 ipBlock rules (world);
    hash   a prototype, not crossmesh's output: the `1000` table with its (local . peer .
           protocol . port) sets as plain hash sets (no `flags interval`), to show where
           `1000`'s extra cost per new connection goes (see `hash_sets`).

The tables are crossmesh's own: the policies go through `parse_manifest`, `PolicyIndex`,
`compile.compile_node` + `nft_sets` + `nft_chains`, assembled as topology.node_nft does
(anti-spoofing and `jump netpol` from the forward and input hooks; no ClusterIP services),
with the 1,000 other pod identities in `map ident`. Before measuring, the client checks
that a port no policy allows (5202, with a listener) is dropped on `base` and `1000` and
open on `none`, and that the loaded 1,000-rule table has its elements.

Each run, every path in turn (the order rotates between runs):
- throughput: `iperf3 -c` for --seconds (one TCP stream), bits/s received;
- connection rate: one client process connects and closes (SO_LINGER 0: RST, no
  TIME_WAIT) as fast as it can, connection i on path i mod 5, --seconds per path, so the
  host's other load falls on every path alike; rate = connections / time spent on them,
  and 1 / the median connection time, which preemption by other work hardly moves.
Policy is evaluated on a connection's first packet (the sets are looked up for new
flows; `ct state established` accepts the rest), so its cost shows in the rate, hardly
in the throughput. --runs runs (default 3); medians, ratio to `none` taken per run.

With --scale 0,1000,10000: afterwards, `1000` and `hash` are reloaded with each number of
other rules in turn and the median connection time of every path measured again.

Usage: python3 benchmarks/bench_policy_dataplane.py [--seconds 5] [--runs 3] [--scale N,N,...]   (root)
Results: a table on stdout and benchmarks/results/policy_dataplane.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from crossmesh.model import k8s
from crossmesh.policy import compile as compile_policy
from crossmesh.policy.endpoints import node_endpoint, pod_endpoint
from crossmesh.policy.evaluator import PolicyIndex
from crossmesh.policy.model import CILIUM_DOMAIN, Endpoint
from crossmesh.policy.parse import parse_manifest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_policy_compile  # noqa: E402  (a sibling script, not a package: node_table)

RESULTS = HERE / "results" / "policy_dataplane.json"
NETNS_DIR = Path("/run/netns")
WG_SOCKETS = Path("/var/run/wireguard")
LAB_ROOT = Path("/run/crossmesh")
PATHS = ("none", "nopol", "base", "1000", "hash")
IDENTITY_SETS = ("allow_ingress", "allow_egress", "deny_ingress", "deny_egress")
IPERF_PORT, RATE_PORT, CLOSED_PORT = 5201, 5300, 5202
NS, CLUSTER, NODE = "bench", "c1", "node"
PREFIX = "cm-pd"  # the node-side veths: cm-pd-v0 (client side), cm-pd-v1 (server side) in every node namespace


def log(msg: str) -> None:
    print(f"[bench_policy_dataplane {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
    raise RuntimeError("no free tag")


def sh(argv: list[str], *, input: str | None = None, timeout: float = 60) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --- addresses ----------------------------------------------------------------------------------


def client_addr(p: int) -> str:
    return f"10.250.{10 + 2 * p}.2"


def server_addr(p: int) -> str:
    return f"10.250.{11 + 2 * p}.2"


def node_addrs(p: int) -> tuple[str, str]:
    return f"10.250.{10 + 2 * p}.1", f"10.250.{11 + 2 * p}.1"


# --- policies -----------------------------------------------------------------------------------


def _manifest(raw: dict[str, Any]) -> k8s.Manifest:
    return k8s.Manifest(
        "generated.yaml", 1, raw["kind"], raw["metadata"]["name"], NS, raw, k8s.MODELS[raw["kind"]].model_validate(raw)
    )


def _cnp(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}  # fmt: skip


def _np(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}  # fmt: skip


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"ports": [{"port": str(p), "protocol": "TCP"} for p in ports]}]


def policies(others: int) -> list[dict[str, Any]]:
    """The namespace's default deny, the allow for the measured flows, and `others` policies
    that select the server but do not match the client (in the mix of the module docstring)."""
    server = {"matchLabels": {"app": "server"}}
    out = [
        _np("default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        _cnp("client-to-server", {"endpointSelector": server,
                                  "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                               "toPorts": _tcp(IPERF_PORT, RATE_PORT)}]}),
        _cnp("client-egress", {"endpointSelector": {"matchLabels": {"app": "client"}},
                               "egress": [{"toEndpoints": [server], "toPorts": _tcp(IPERF_PORT, RATE_PORT)}]}),
    ]  # fmt: skip
    for k in range(others):
        peer = {"matchLabels": {"app": f"peer-{k}"}}
        if k < others * 7 // 10:
            port = IPERF_PORT if k % 2 else 8000 + k % 1000
            spec = {"endpointSelector": server, "ingress": [{"fromEndpoints": [peer], "toPorts": _tcp(port)}]}
            out.append(_cnp(f"allow-peer-{k}", spec))
        elif k < others * 8 // 10:
            spec = {"endpointSelector": server, "ingressDeny": [{"fromEndpoints": [peer], "toPorts": _tcp(IPERF_PORT)}]}
            out.append(_cnp(f"deny-peer-{k}", spec))
        elif k < others * 9 // 10:
            ports = [{"port": RATE_PORT, "protocol": "TCP"}]
            spec = {"podSelector": server, "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": peer}], "ports": ports}]}  # fmt: skip
            out.append(_np(f"np-peer-{k}", spec))
        else:
            block = f"198.51.{100 + k // 250}.{k % 250}/32"
            spec = {"podSelector": server, "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"ipBlock": {"cidr": block}}], "ports": [{"port": IPERF_PORT}]}]}  # fmt: skip
            out.append(_np(f"world-{k}", spec))
    return out


def hash_sets(table: str) -> str:
    """A prototype, not crossmesh's output: the (local . peer . protocol . port) sets without
    `flags interval`, so that nftables keeps them in a hash instead of its interval structure
    for concatenations (pipapo), whose lookup walks bitmaps as long as the set. Valid only
    when every element is a single port, as here (checked)."""
    out = table
    for name in IDENTITY_SETS:
        head = f"  set {name} {{ type mark . mark . inet_proto . inet_service; flags interval; "
        line = next(x for x in table.splitlines(keepends=True) if x.startswith(head))
        if re.search(r"\. \d+-\d+", line):
            raise RuntimeError(f"{name} has port ranges: a hash set cannot hold them")
        out = out.replace(line, line.replace("flags interval; ", ""))
    return out


def node_table(p: int, others: int) -> tuple[str, int]:
    """Path p's node table (crossmesh's compiler on `others` + 3 policies) and its rule count."""
    ns_labels = {"kubernetes.io/metadata.name": NS}
    client = pod_endpoint(cluster=CLUSTER, namespace=NS, name="client", labels={"app": "client"}, node=NODE,
                          address=IPv4Address(client_addr(p)), namespace_labels=ns_labels)  # fmt: skip
    server = pod_endpoint(cluster=CLUSTER, namespace=NS, name="server", labels={"app": "server"}, node=NODE,
                          address=IPv4Address(server_addr(p)), namespace_labels=ns_labels)  # fmt: skip
    # The other identities run elsewhere: they only need addresses (they are in `map ident`).
    peers: list[Endpoint] = [
        pod_endpoint(cluster=CLUSTER, namespace=NS, name=f"peer-{k}", labels={"app": f"peer-{k}"}, node="far",
                     address=IPv4Address(f"10.251.{k // 250}.{k % 250 + 2}"), namespace_labels=ns_labels)
        for k in range(others)
    ]  # fmt: skip
    addresses = {NODE: tuple(IPv4Address(a) for a in node_addrs(p)), "far": (IPv4Address("10.250.99.1"),)}
    nodes = [node_endpoint(name=n, cluster=CLUSTER, addresses=a) for n, a in addresses.items()]
    parsed = []
    for raw in policies(others) if PATHS[p] != "nopol" else []:
        got, issues = parse_manifest(_manifest(raw), cluster=CLUSTER)
        if any(i.severity == "error" for i in issues):
            raise SystemExit(f"generated policy {raw['metadata']['name']} is invalid: {issues}")
        parsed.extend(got)
    index = PolicyIndex(parsed, [client, server, *peers, *nodes], {CLUSTER: CILIUM_DOMAIN})
    compiled = compile_policy.compile_node(index, NODE, addresses)
    table = bench_policy_compile.node_table(compiled, [(0, client), (1, server)], prefix=PREFIX)
    return hash_sets(table) if PATHS[p] == "hash" else table, sum(len(x.rules) for x in parsed)


# --- namespaces ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, tag: str) -> None:
        self.client, self.server = f"cm-{tag}-pd-cl", f"cm-{tag}-pd-sv"
        self.nodes = [f"cm-{tag}-pd-{name}" for name in PATHS]
        self.procs: list[subprocess.Popen[str]] = []

    def up(self) -> None:
        for ns in (self.client, self.server, *self.nodes):
            sh(["ip", "netns", "add", ns])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        for p, node in enumerate(self.nodes):
            c_if, s_if = f"cm-cl{p}", f"cm-sv{p}"
            # made in the node namespace, the peer straight into the pod's: nothing in the root namespace
            for node_if, pod_if, pod_ns in ((f"{PREFIX}-v0", c_if, self.client), (f"{PREFIX}-v1", s_if, self.server)):
                sh(["ip", "-n", node, "link", "add", node_if, "type", "veth", "peer", "name", pod_if, "netns", pod_ns])
            gw_c, gw_s = node_addrs(p)
            sh(["ip", "-n", node, "addr", "add", f"{gw_c}/24", "dev", f"{PREFIX}-v0"])
            sh(["ip", "-n", node, "addr", "add", f"{gw_s}/24", "dev", f"{PREFIX}-v1"])
            sh(["ip", "-n", self.client, "addr", "add", f"{client_addr(p)}/24", "dev", c_if])
            sh(["ip", "-n", self.server, "addr", "add", f"{server_addr(p)}/24", "dev", s_if])
            for ns, dev in ((node, f"{PREFIX}-v0"), (node, f"{PREFIX}-v1"), (self.client, c_if), (self.server, s_if)):
                sh(["ip", "-n", ns, "link", "set", dev, "up"])
            sh(["ip", "-n", self.client, "route", "add", f"10.250.{11 + 2 * p}.0/24", "via", gw_c])
            sh(["ip", "-n", self.server, "route", "add", f"10.250.{10 + 2 * p}.0/24", "via", gw_s])
            sh(in_ns(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        sysctls = {
            self.client: {"net.ipv4.ip_local_port_range": "1024 65535"},
            self.server: {"net.core.somaxconn": "4096", "net.ipv4.tcp_max_syn_backlog": "4096"},
        }
        for ns, values in sysctls.items():
            for k, v in values.items():
                done = subprocess.run(in_ns(ns, ["sysctl", "-qw", f"{k}={v}"]), capture_output=True, check=False)
                if done.returncode != 0:
                    log(f"sysctl {k} in {ns} not set: {done.stderr.decode().strip()}")

    def load(self, p: int, table: str) -> float:
        start = time.perf_counter()
        sh(in_ns(self.nodes[p], ["nft", "-f", "-"]), input=table)
        took = time.perf_counter() - start
        # conntrack on from here: its entries of closed connections go after 1 s, not 10
        subprocess.run(in_ns(self.nodes[p], ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_close=1"]),
                       capture_output=True, check=False)  # fmt: skip
        return took

    def start(self, ns: str, argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(in_ns(ns, argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(proc)
        return proc

    def down(self) -> None:
        for proc in self.procs:  # only the servers this benchmark started
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        for ns in (self.client, self.server, *self.nodes):
            if (NETNS_DIR / ns).exists():
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in sys.argv[1].split(","):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port))); s.listen(4096); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        while True:
            try:
                c, _ = key.fileobj.accept()
            except OSError:
                break
            c.close()
"""

PROBE = r"""
import socket, sys
s = socket.socket(); s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open")
except socket.timeout:
    print("dropped")
except OSError as e:
    print(f"error {e}")
"""

# Connection i on path i mod k, each (socket, connect, close) timed on its own.
CLIENT = r"""
import json, socket, struct, sys, time
addrs, seconds = [tuple(a) for a in json.loads(sys.argv[1])], float(sys.argv[2])
linger = struct.pack("ii", 1, 0)
k = len(addrs)
spent = [0.0] * k; ok = [0] * k; errors = [0] * k; samples = [[] for _ in range(k)]
clock = time.perf_counter
end = time.monotonic() + seconds * k
i = 0
while time.monotonic() < end:
    j = i % k
    i += 1
    t0 = clock()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(1.0)
    try:
        s.connect(addrs[j]); good = True
    except OSError:
        good = False
    s.close()
    dt = clock() - t0
    spent[j] += dt; samples[j].append(dt)
    if good:
        ok[j] += 1
    else:
        errors[j] += 1
out = []
for j in range(k):
    xs = sorted(samples[j])
    out.append({"ok": ok[j], "errors": errors[j], "spent": spent[j], "median_us": xs[len(xs) // 2] * 1e6,
                "p99_us": xs[int(len(xs) * 0.99)] * 1e6})
print(json.dumps(out), flush=True)
"""


def probe(bench: Bench, p: int, port: int) -> str:
    return sh(in_ns(bench.client, [sys.executable, "-c", PROBE, server_addr(p), str(port), "1.5"]), timeout=30).strip()


def check(bench: Bench) -> dict[str, Any]:
    """The policy is in force: the allowed port opens, a port no policy allows is dropped
    (it is open on `none`), and the 1,000-rule table holds its elements."""
    out: dict[str, Any] = {}
    for p, name in enumerate(PATHS):
        allowed, closed = probe(bench, p, RATE_PORT), probe(bench, p, CLOSED_PORT)
        want = "open" if name in ("none", "nopol") else "dropped"
        if allowed != "open" or closed != want:
            raise RuntimeError(f"path {name}: port {RATE_PORT} {allowed}, port {CLOSED_PORT} {closed} (want {want})")
        out[name] = {str(RATE_PORT): allowed, str(CLOSED_PORT): closed}
    node = bench.nodes[PATHS.index("1000")]
    listed = sh(in_ns(node, ["nft", "list", "table", "ip", "crossmesh"]))
    counted = {}
    for name in ("allow_ingress", "deny_ingress", "allow_ingress_world", "allow_egress"):
        body = re.search(rf"set {name} {{(.*?)\n\t}}", listed, re.S)
        elements = re.search(r"elements = {(.*?)}", body.group(1), re.S) if body else None
        counted[name] = len(elements.group(1).split(",")) if elements else 0
    denied = re.findall(r'counter packets (\d+) bytes \d+ drop comment "policy-denied (?:egress|ingress)"', listed)
    out["elements_1000"] = counted  # (world: the 100 ipBlock /32s are consecutive, merged into one interval)
    out["policy_denied_packets"] = sum(int(n) for n in denied)
    if counted["allow_ingress"] < 700 or not out["policy_denied_packets"]:
        raise RuntimeError(f"the 1,000-rule table does not look in force: {counted}, {out}")
    return out


def iperf(bench: Bench, p: int, seconds: float) -> float:
    out = sh(in_ns(bench.client, ["iperf3", "-c", server_addr(p), "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]),
             timeout=seconds + 60)  # fmt: skip
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])


def conn_rate(bench: Bench, seconds: float) -> list[dict[str, Any]]:
    addrs = [[server_addr(p), RATE_PORT] for p in range(len(PATHS))]
    out = sh(in_ns(bench.client, [sys.executable, "-c", CLIENT, json.dumps(addrs), str(seconds)]),
             timeout=seconds * len(PATHS) + 60)  # fmt: skip
    result: list[dict[str, Any]] = json.loads(out)
    for r in result:
        r["rate"] = r["ok"] / r["spent"] if r["spent"] else 0.0
        r["median_rate"] = 1e6 / r["median_us"]
    return result


def scale(bench: Bench, sizes: list[int], seconds: float) -> list[dict[str, Any]]:
    """Median connection time against the number of other rules: path `1000` and `hash`
    reloaded with each size in turn, every path measured interleaved, twice."""
    out = []
    for others in sizes:
        for name in ("1000", "hash"):
            p = PATHS.index(name)
            subprocess.run(in_ns(bench.nodes[p], ["nft", "delete", "table", "ip", "crossmesh"]), capture_output=True)
            bench.load(p, node_table(p, others)[0])
        time.sleep(1.5)
        res = [conn_rate(bench, seconds / 2) for _ in range(2)]
        med = {name: statistics.median(r[i]["median_us"] for r in res) for i, name in enumerate(PATHS)}
        out.append({"rules": others, "median_connect_us": med})
        log(f"scale: {others} other rules: " + ", ".join(f"{n} {v:.1f} us" for n, v in med.items()))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = free_tag()
    bench = Bench(tag)
    tables = {name: node_table(PATHS.index(name), 0 if name == "base" else args.rules) for name in PATHS[1:]}
    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "nft": sh(["nft", "--version"]).strip(),
        "iperf3": sh(["iperf3", "--version"]).splitlines()[0],
        "seconds": args.seconds,
        "rules": {name: rules for name, (_, rules) in tables.items()},
        "table_bytes": {name: len(text) for name, (text, _) in tables.items()},
    }
    try:
        log(f"namespaces cm-{tag}-pd-*")
        bench.up()
        result["nft_load_seconds"] = {name: bench.load(PATHS.index(name), text) for name, (text, _) in tables.items()}
        for proc in (bench.start(bench.server, [sys.executable, "-c", SERVER, f"{RATE_PORT},{CLOSED_PORT}"]),):
            assert proc.stdout is not None  # noqa: S101
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("connection server did not start")
        bench.start(bench.server, ["iperf3", "-s", "-p", str(IPERF_PORT)])
        time.sleep(0.5)
        result["check"] = check(bench)
        log(f"policy in force: {result['check']}")
        conn_rate(bench, 1.0)  # warm-up
        for r in range(args.runs):
            load = loadavg()
            order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]
            bps = {name: iperf(bench, PATHS.index(name), args.seconds) for name in order}
            time.sleep(1.5)  # the last connections' conntrack entries go
            rates = dict(zip(PATHS, conn_rate(bench, args.seconds), strict=True))
            runs.append({"load": load, "bps": bps, "conn": rates})
            log(
                f"run {r + 1}/{args.runs} (load {load:.2f}): "
                + ", ".join(f"{n} {bps[n] / 1e9:.2f} Gbit/s {rates[n]['rate']:.0f} conn/s" for n in PATHS)
            )
        if args.scale:
            result["scale"] = scale(bench, [int(n) for n in args.scale.split(",")], args.seconds)
    finally:
        bench.down()
        left = [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(f"cm-{tag}")] if NETNS_DIR.is_dir() else []
        if left:
            log(f"WARNING: left behind: {left}")
    result["runs"] = runs
    summary: dict[str, Any] = {}
    for name in PATHS:
        summary[name] = {
            "gbit_s": statistics.median(run["bps"][name] for run in runs) / 1e9,
            "gbit_s_runs": [round(run["bps"][name] / 1e9, 3) for run in runs],
            "throughput_ratio": statistics.median(run["bps"][name] / run["bps"]["none"] for run in runs),
            "conn_s": statistics.median(run["conn"][name]["rate"] for run in runs),
            "conn_s_runs": [round(run["conn"][name]["rate"]) for run in runs],
            "conn_ratio": statistics.median(run["conn"][name]["rate"] / run["conn"]["none"]["rate"] for run in runs),
            "median_connect_us": statistics.median(run["conn"][name]["median_us"] for run in runs),
            "median_ratio": statistics.median(
                run["conn"]["none"]["median_us"] / run["conn"][name]["median_us"] for run in runs
            ),
            "throughput_ratio_nopol": statistics.median(run["bps"][name] / run["bps"]["nopol"] for run in runs),
            "conn_ratio_nopol": statistics.median(
                run["conn"][name]["rate"] / run["conn"]["nopol"]["rate"] for run in runs
            ),
            "connect_errors": sum(run["conn"][name]["errors"] for run in runs),
        }
    result["summary"] = summary
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rules", type=int, default=1000, help="policies that select the server but not the flow")
    p.add_argument("--scale", default="", help="also: connection time with these numbers of rules, e.g. 0,1000,10000")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    result = run(args)
    s = result["summary"]
    print(
        f"{'path':6} {'Gbit/s':>8} {'x none':>7} {'x nopol':>7} {'conn/s':>8} {'x none':>7} {'x nopol':>7} "
        f"{'median connect':>15} {'x none':>7}"
    )
    for name in PATHS:
        r = s[name]
        print(
            f"{name:6} {r['gbit_s']:8.2f} {r['throughput_ratio']:7.3f} {r['throughput_ratio_nopol']:7.3f} "
            f"{r['conn_s']:8.0f} {r['conn_ratio']:7.3f} {r['conn_ratio_nopol']:7.3f} "
            f"{r['median_connect_us']:12.1f} us {r['median_ratio']:7.3f}"
        )
    print(f"rules: {result['rules']}, tables {result['table_bytes']} bytes, nft -f {result['nft_load_seconds']}")
    for row in result.get("scale", []):
        med = row["median_connect_us"]
        print(
            f"{row['rules']:6} other rules: median connect {med['1000']:.1f} us ({med['1000'] - med['base']:+.1f} "
            f"vs base), hash sets {med['hash']:.1f} us ({med['hash'] - med['base']:+.1f})"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
