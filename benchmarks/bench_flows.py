"""Flow logging on against off (issue 14): what the lab's flow records cost on its cross-site path,
and how many flows per second one node records before it counts losses — on one real lab.

    sudo PYTHONPATH=src python3 benchmarks/bench_flows.py [--rounds 4] [--seconds 5] [--workers 4]
        [--flood-rates 2000,4000,8000,12000,16000,24000,32000,48000] [--flood-seconds 3] [--tag b101]

The lab: examples/three-clouds under a unique mesh name and tag (`--tag`, default the first free
b1xx), with cluster2's rebel-base admitting x-wing from cluster1 on TCP 5201 (iperf3) and 5202 (the
connection server) too, so both cross the real policy tables. Client pod cluster1/default/x-wing-0
(aws-sg), server pod cluster2/default/rebel-base-0 (azure-we): pod → node → site router → the
internet → WireGuard (wireguard-go) → the other site's node → pod.

Rounds alternate in ONE run: on, off, on, off, … (`--rounds` of each). Each round first switches
the lab with the real command, `crossmesh lab up MESH --flow-logs` or `--no-flow-logs` (timed), and
checks the switch took: with logs off no flows.sock and no `log` in the client node's ruleset, with
logs on the relay answers. Then, in the round:

(a) throughput: `iperf3 -c` in x-wing-0's namespace against `iperf3 -s` in rebel-base-0's, one TCP
    stream for `--seconds`; the receiver's bits per second.
(b) new connections per second: `--workers` threads in one process in x-wing-0's namespace each
    open a TCP connection to rebel-base-0:5202 and close it (SO_LINGER 0: a reset, so no TIME_WAIT
    piles up), as fast as they can for `--seconds`; a server process in rebel-base-0's namespace
    accepts and closes. Completed connects per second. With logs on, every one is logged on both
    ends' nodes (NEW_EGRESS on aws-talos-1, NEW_INGRESS on azure-talos-1): the relay's `recorded`
    and `lost` of those two nodes over the round are kept, as proof, and the flow daemon's CPU share
    during the loop (/proc/<pid>/stat).
Ratios on/off are taken per adjacent pair of rounds (round 2k against 2k+1) and their median and
range reported, with each mode's median and range.

(c) record rate, after the rounds, logs on: a sender process in x-wing-0's namespace sends UDP
    datagrams to relay-0:9999 — which x-wing's egress policy denies, so every datagram is dropped
    and logged on x-wing-0's node — paced (bursts every millisecond) at each `--flood-rates` for
    `--flood-seconds`. The relay's status line for that node (recorded, lost, evicted:
    crossmesh.drivers.lab.relay_client.snapshot) before the step, as the sender stops (recorded/s
    while it sent: what the daemon keeps up with) and once the counts stand still (the daemon caught
    up: recorded and lost in all), and the flow daemon's CPU share while the sender sent.

The lab is removed with `crossmesh lab down --mesh` and by tag in a `finally`; never `--all`.
Writes benchmarks/results/flows.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "lab"))

from labkit import copy_example  # noqa: E402

from crossmesh.drivers.lab import lab as labs  # noqa: E402
from crossmesh.drivers.lab import netns  # noqa: E402
from crossmesh.drivers.lab.relay_client import snapshot  # noqa: E402
from crossmesh.observe import codes  # noqa: E402

CLIENT, SERVER, DENIED = "cluster1/default/x-wing-0", "cluster2/default/rebel-base-0", "cluster1/default/relay-0"
IPERF_PORT, CONN_PORT, DENIED_PORT = 5201, 5202, 9999
TICKS = os.sysconf("SC_CLK_TCK")

CONN_SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {CONN_PORT}))
s.listen(4096)
print("ready", flush=True)
while True:
    try:
        c, _ = s.accept()
        c.close()
    except OSError:
        pass
"""

CONN_CLIENT = """
import socket, struct, sys, threading, time
address, port, seconds, workers = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
linger = struct.pack("ii", 1, 0)
counts, failures = [0] * workers, [0] * workers
start = time.monotonic()
end = start + seconds
def work(i):
    while time.monotonic() < end:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.settimeout(2)
        try:
            s.connect((address, port))
            counts[i] += 1
        except OSError:
            failures[i] += 1
        finally:
            s.close()
threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(counts), sum(failures), time.monotonic() - start)
"""

FLOOD = """
import socket, sys, time
address, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"x" * 32
sent, failed, start = 0, 0, time.monotonic()
while True:
    now = time.monotonic() - start
    if now >= seconds:
        break
    due = int(rate * now) + 1
    while sent + failed < due:
        try:
            s.sendto(payload, (address, port))
            sent += 1
        except OSError:
            failed += 1
    time.sleep(0.001)
print(sent, failed, time.monotonic() - start)
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def crossmesh(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """This worktree's crossmesh (not whatever `crossmesh` is on PATH)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "crossmesh", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"crossmesh {' '.join(args)} → {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def spread(xs: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(xs), 3),
        "min": round(min(xs), 3),
        "max": round(max(xs), 3),
        "n": len(xs),
    }


def free_tag() -> str:
    taken = {s.tag for s in labs.running_labs()} | {n.split("-")[1] for n in netns.listing() if n.startswith("cm-")}
    for k in range(1, 256):
        tag = f"b1{k:02x}"
        if tag not in taken and not (labs.LAB_ROOT / f"cm-{tag}").exists():
            return tag
    raise RuntimeError("no free b1xx lab tag")


def make_mesh(tmp: Path) -> Path:
    mesh, _ = copy_example(tmp, "three-clouds")
    policy = mesh.parent / "apps" / "cluster2" / "rebel-base.yaml"
    http = '            - {port: "80", protocol: TCP}\n'
    extra = "".join(f'            - {{port: "{p}", protocol: TCP}}\n' for p in (IPERF_PORT, CONN_PORT))
    policy.write_text(policy.read_text().replace(http, http + extra))
    return mesh


def ruleset(ns: str) -> str:
    return netns.run(ns, ["nft", "list", "ruleset"]).stdout


def switch(mesh: Path, tag: str, on: bool) -> dict[str, Any]:
    """`lab up` with the switch; checks that it took."""
    t0 = time.monotonic()
    crossmesh("lab", "up", str(mesh), "--tag", tag, "--flow-logs" if on else "--no-flow-logs", "-o", "json")
    took = time.monotonic() - t0
    st = labs.LabState.load(tag)
    assert st is not None and st.flow_logs is on  # noqa: S101
    client_node = st.nodes[st.pods[CLIENT].node]
    logs_in_table = " log " in ruleset(client_node)
    sock = (st.dir / "flows.sock").exists()
    if on and not (logs_in_table and sock and snapshot(st.dir / "flows.sock", since=time.time()).status):
        raise RuntimeError("flow logs on, but the tables do not log or the relay does not answer")
    if not on and (logs_in_table or sock):
        raise RuntimeError("flow logs off, but a table still logs or flows.sock is there")
    return {"lab_up_s": round(took, 1)}


@contextmanager
def server(ns: str, argv: list[str]) -> Iterator[None]:
    proc = subprocess.Popen(netns.exec_argv(ns, argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(argv)} did not start in {ns}")
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def iperf(ns: str, address: str, seconds: float) -> dict[str, float]:
    argv = ["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    done = netns.run(ns, argv, timeout=seconds + 60)
    end = json.loads(done.stdout)["end"]
    return {
        "mbit_s": round(end["sum_received"]["bits_per_second"] / 1e6, 1),
        "retransmits": end["sum_sent"].get("retransmits", 0),
    }


def connections(ns: str, address: str, seconds: float, workers: int) -> dict[str, float]:
    argv = [sys.executable, "-c", CONN_CLIENT, address, str(CONN_PORT), str(seconds), str(workers)]
    done = netns.run(ns, argv, timeout=seconds + 60)
    count, failed, took = done.stdout.split()
    return {"per_s": round(int(count) / float(took), 1), "connections": int(count), "failed": int(failed)}


def node_counts(st: labs.LabState, nodes: list[str]) -> dict[str, dict[str, int]]:
    status = snapshot(st.dir / "flows.sock", since=time.time()).status
    assert status is not None  # noqa: S101
    return {n: {"recorded": status.nodes[n].recorded, "lost": status.nodes[n].lost} for n in nodes}


def drained(
    st: labs.LabState, nodes: list[str], expected: dict[str, int] | None = None, timeout: float = 30.0
) -> dict[str, dict[str, int]]:
    """The nodes' counts once the daemon has caught up: recorded + lost reached `expected` (by node),
    or nothing changed for 3 s."""
    last = node_counts(st, nodes)
    still = time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if expected and all(last[n]["recorded"] + last[n]["lost"] >= expected[n] for n in nodes):
            return last
        time.sleep(0.25)
        now = node_counts(st, nodes)
        if now != last:
            last, still = now, time.monotonic()
        elif time.monotonic() - still > 3.0:
            break
    return last


def kernel_logged(ns: str, prefix: str) -> int:
    """Packets the node's rules logged with `prefix`: the counters of the rules that log it (a
    logged drop is `log … counter … drop`)."""
    data = json.loads(netns.run(ns, ["nft", "-j", "list", "ruleset"]).stdout)
    total = 0
    for item in data["nftables"]:
        exprs = item.get("rule", {}).get("expr", [])
        if any(e.get("log", {}).get("prefix") == prefix for e in exprs):
            total += sum(e["counter"]["packets"] for e in exprs if "counter" in e)
    return total


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


def rounds(mesh: Path, tag: str, n: int, seconds: float, workers: int) -> dict[str, Any]:
    st = labs.LabState.load(tag)
    assert st is not None  # noqa: S101
    client_ns, server_ns = st.pods[CLIENT].namespace, st.pods[SERVER].namespace
    address = str(st.pods[SERVER].address)
    ends = [st.pods[CLIENT].node, st.pods[SERVER].node]
    out: list[dict[str, Any]] = []
    iperf_server = ["iperf3", "-s", "-p", str(IPERF_PORT)]
    with server(server_ns, iperf_server), server(server_ns, [sys.executable, "-c", CONN_SERVER]):
        for r in range(2 * n):
            on = r % 2 == 0
            row: dict[str, Any] = {"flow_logs": on, **switch(mesh, tag, on)}
            st = labs.LabState.load(tag)
            assert st is not None  # noqa: S101
            time.sleep(2.0)  # the daemons (re)started by `up` settle
            row["load1"] = round(os.getloadavg()[0], 2)
            row["iperf"] = iperf(client_ns, address, seconds)
            before = node_counts(st, ends) if on else None
            ticks0 = cpu_ticks(st.flows_pid) if on else 0
            row["conn"] = connections(client_ns, address, seconds, workers)
            if before is not None:
                row["flowsd_cpu_share"] = round((cpu_ticks(st.flows_pid) - ticks0) / TICKS / seconds, 3)
                after = drained(st, ends)
                row["recorded"] = {k: {m: after[k][m] - before[k][m] for m in after[k]} for k in ends}
            out.append(row)
            log(f"round {r + 1}/{2 * n}: {json.dumps(row)}")
    pairs = [(out[i], out[i + 1]) for i in range(0, len(out) - 1, 2)]
    result: dict[str, Any] = {"client": CLIENT, "server": SERVER, "seconds": seconds, "workers": workers, "rounds": out}
    for key, metric in (("throughput_mbit_s", ("iperf", "mbit_s")), ("connections_per_s", ("conn", "per_s"))):
        on_x = [float(r[metric[0]][metric[1]]) for r in out if r["flow_logs"]]
        off_x = [float(r[metric[0]][metric[1]]) for r in out if not r["flow_logs"]]
        ratios = [a[metric[0]][metric[1]] / b[metric[0]][metric[1]] for a, b in pairs]
        result[key] = {"on": spread(on_x), "off": spread(off_x), "ratio_on_off": spread(ratios)}
    return result


def flood(tag: str, rates: list[int], seconds: float) -> dict[str, Any]:
    st = labs.LabState.load(tag)
    assert st is not None and st.flow_logs  # noqa: S101
    node = st.pods[CLIENT].node
    address = str(st.pods[DENIED].address)
    steps = []
    node_ns = st.nodes[node]
    for rate in rates:
        before = node_counts(st, [node])[node]
        logged0 = kernel_logged(node_ns, codes.DEFAULT_EGRESS)
        evicted0 = _evicted(st, node)
        t0 = cpu_ticks(st.flows_pid)
        argv = [sys.executable, "-c", FLOOD, address, str(DENIED_PORT), str(rate), str(seconds)]
        done = netns.run(st.pods[CLIENT].namespace, argv, timeout=seconds + 60)
        sent, failed, took = done.stdout.split()
        cpu = (cpu_ticks(st.flows_pid) - t0) / TICKS
        during = node_counts(st, [node])[node]
        logged = kernel_logged(node_ns, codes.DEFAULT_EGRESS) - logged0
        after = drained(st, [node], {node: before["recorded"] + before["lost"] + logged})[node]
        step = {
            "asked_per_s": rate,
            "sent": int(sent),
            "send_failed": int(failed),
            "sent_per_s": round(int(sent) / float(took), 1),
            "logged_by_kernel": logged,
            "recorded": after["recorded"] - before["recorded"],
            "recorded_per_s": round((during["recorded"] - before["recorded"]) / float(took), 1),
            "lost": after["lost"] - before["lost"],
            "unaccounted": logged - (after["recorded"] - before["recorded"]) - (after["lost"] - before["lost"]),
            "evicted": _evicted(st, node) - evicted0,
            "flowsd_cpu_share": round(cpu / float(took), 3),
            "load1": round(os.getloadavg()[0], 2),
        }
        steps.append(step)
        log(f"flood {json.dumps(step)}")
    clean = [s for s in steps if s["lost"] == 0 and s["unaccounted"] <= 0]
    return {
        "node": node,
        "to": f"{DENIED}:{DENIED_PORT}/UDP (denied by x-wing's egress policy)",
        "seconds": seconds,
        "steps": steps,
        "highest_rate_without_loss_per_s": max((s["sent_per_s"] for s in clean), default=0.0),
        "highest_recorded_per_s": max(s["recorded_per_s"] for s in steps),
    }


def _evicted(st: labs.LabState, node: str) -> int:
    status = snapshot(st.dir / "flows.sock", since=time.time()).status
    assert status is not None  # noqa: S101
    return status.nodes[node].evicted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each mode (on, off, on, off, …)")
    parser.add_argument("--seconds", type=float, default=5.0, help="of iperf3 and of the connection loop")
    parser.add_argument("--workers", type=int, default=4, help="connecting threads")
    parser.add_argument("--flood-rates", default="2000,4000,8000,12000,16000,24000,32000,48000")
    parser.add_argument("--flood-seconds", type=float, default=3.0)
    parser.add_argument("--only", default="rounds,flood", help="parts to run: rounds, flood")
    parser.add_argument("--tag", default=None, help="lab tag (default: the first free b1xx)")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "results" / "flows.json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("iperf3") is None:
        print("bench_flows: needs root (the lab) and iperf3", file=sys.stderr)
        return 2
    tag = args.tag or free_tag()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result: dict[str, Any] = {
        "run": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "commit": head.stdout.strip(),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "load_at_start": Path("/proc/loadavg").read_text().strip(),
            "other_labs_at_start": len(labs.running_labs()),
            "lab": f"cm-{tag}",
        }
    }
    tmp = Path(tempfile.mkdtemp(prefix="cm-bench-flows-"))
    mesh = make_mesh(tmp)
    try:
        log(f"lab cm-{tag}: building three-clouds ({mesh})")
        t0 = time.monotonic()
        crossmesh("lab", "up", str(mesh), "--tag", tag, "-o", "json")
        result["run"]["first_up_s"] = round(time.monotonic() - t0, 1)
        only = set(args.only.split(","))
        if "rounds" in only:
            result["cross_site"] = rounds(mesh, tag, args.rounds, args.seconds, args.workers)
            switch(mesh, tag, True)
        if "flood" in only:
            result["record_rate"] = flood(tag, [int(x) for x in args.flood_rates.split(",")], args.flood_seconds)
    finally:
        with suppress(Exception):
            crossmesh("lab", "down", "--mesh", str(mesh))
        labs.down(tag)
        left = labs.leftovers(tag)
        if left:
            log(f"WARNING: cm-{tag} left {left}")
        shutil.rmtree(tmp, ignore_errors=True)
    result["run"]["load_at_end"] = Path("/proc/loadavg").read_text().strip()
    for part in ("cross_site", "record_rate"):
        if part in result:
            result[part]["run"] = result["run"]
    if args.output.exists():  # the parts not run this time are kept
        result = {**json.loads(args.output.read_text()), **result}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {args.output}")
    print_summary(result)
    return 0


def print_summary(result: dict[str, Any]) -> None:
    c = result.get("cross_site", {})
    for key, unit in (("throughput_mbit_s", "Mbit/s"), ("connections_per_s", "connections/s")):
        if key not in c:
            continue
        s = c[key]
        print(
            f"{key}: on {s['on']['median']} [{s['on']['min']}–{s['on']['max']}] {unit}, off {s['off']['median']} "
            f"[{s['off']['min']}–{s['off']['max']}], ratio on/off {s['ratio_on_off']['median']} "
            f"[{s['ratio_on_off']['min']}–{s['ratio_on_off']['max']}]"
        )
    f = result.get("record_rate")
    if f:
        print(
            f"record rate on {f['node']}: highest without loss {f['highest_rate_without_loss_per_s']}/s, "
            f"highest recorded {f['highest_recorded_per_s']}/s"
        )


if __name__ == "__main__":
    sys.exit(main())
