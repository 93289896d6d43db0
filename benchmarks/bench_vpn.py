"""Seed 001's site-to-site VPN against the WireGuard mesh (issue 13): the same pods, both labs up at once.

    sudo python3 benchmarks/bench_vpn.py [--rounds 4] [--seconds 5] [--pings 300] [--trials 12]

TWO labs, copied to a temporary directory under names of their own (so tags of their own) and removed by
those tags at the end, also on failure:
- "ipsec": examples/hybrid-openstack-aws — seed 001 as drawn: OpenStack's router is the customer gateway,
  two IPsec tunnels (strongSwan, kernel-libipsec: ESP in userspace on TUN devices, ESP-in-UDP 4500) to
  the transit-gateway namespace, eBGP over each, the VPC behind it; Flannel VXLAN between the nodes over it.
- "wireguard": tests/meshes/hybrid-wireguard — the same nodes, addresses and pods, joined node to node
  by WireGuard (wireguard-go: userspace as well), no hub.
Both copies lose spec.istio (mTLS STRICT would put the node proxies on every TCP path, measuring Envoy's
stand-in rather than the transport) and run with `--no-flow-logs`. Nothing else differs from the files.

Path: pod demo-app-0 (openstack-worker) → pod tkb-0 (aws-worker-1). Per round, each lab in turn (order
alternating per round, so the shared 2-CPU host's other load falls on both alike):
- throughput: `iperf3 -c` for `--seconds` s (TCP, one stream) from the client pod to `iperf3 -s` in the
  server pod; the receiver's rate;
- latency: `--pings` sequential UDP datagrams (64 B) to tkb-0's echo (30053/UDP), each awaited: RTT.
Ratios are per round (ipsec / wireguard), then the median; latency percentiles over all rounds.

Failover (ipsec lab, after the rounds): `--trials` times the vpn/failover check's own staging
(checks/vpnfailover.stage): a stream of 100 datagrams/s demo-app-0 → tkb-0:30053 echoed back, tunnel 1
cut on the wire (`lab cut-tunnel`'s table in the internet namespace), the loss window (first datagram
lost → next one echoed, 10 ms resolution), the customer route's move to tunnel 2, the heal, the move back
and what it lost. Between trials every tunnel and BGP session is up again and the routes are on tunnel 1.

Results: benchmarks/results/vpn.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from crossmesh.checks import vpnfailover
from crossmesh.checks.framework import Context
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns, topology, transit

ROOT = Path(__file__).resolve().parents[1]
LABS = {"ipsec": "examples/hybrid-openstack-aws", "wireguard": "tests/meshes/hybrid-wireguard"}
CLIENT, SERVER, ECHO = "k3s/demo/demo-app-0", "k3s/microservices/tkb-0", 30053
ISTIO = re.compile(r"^  istio:.*\n(    .*\n)*", re.MULTILINE)


def _copy(tmp: Path, which: str) -> tuple[Path, str]:
    target = tmp / which
    shutil.copytree(ROOT / LABS[which], target, ignore=shutil.ignore_patterns(".crossmesh", "state", "expected"))
    mesh, name = target / "mesh.yaml", f"b{uuid.uuid4().hex[:10]}"
    text = mesh.read_text()
    original = next(line for line in text.splitlines() if line.startswith("  name: "))
    text, n = ISTIO.subn("", text.replace(original, f"  name: {name}", 1))
    assert n == 1, f"{LABS[which]}: no spec.istio block to take out (update this benchmark)"
    mesh.write_text(text)
    return mesh, name


def _up(mesh: Path) -> float:
    started = time.monotonic()
    cmd = ["crossmesh", "lab", "up", str(mesh), "--state", str(mesh.parent / "state"), "--no-flow-logs"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"lab up {mesh} failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - started


def _iperf(st: labs.LabState, seconds: float) -> float:
    """Mbit/s received by the server pod's iperf3 from the client pod's."""
    argv = ["iperf3", "-c", str(st.pods[SERVER].address), "-t", str(seconds), "-J"]
    done = subprocess.run(
        netns.exec_argv(st.pods[CLIENT].namespace, argv), capture_output=True, text=True, timeout=seconds + 30
    )
    report = json.loads(done.stdout)
    if "error" in report:
        raise SystemExit(f"iperf3: {report['error']}")
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6


def _rtts(st: labs.LabState, count: int) -> list[float]:
    """Milliseconds per awaited UDP echo (a lost one is retried, not counted)."""
    target = (str(st.pods[SERVER].address), ECHO)

    def measure() -> list[float]:
        out = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            s.connect(target)
            for i in range(count):
                payload = os.urandom(8) + i.to_bytes(56, "big")
                t0 = time.perf_counter()
                s.send(payload)
                try:
                    while s.recv(2048) != payload:
                        pass
                except TimeoutError:
                    continue
                out.append((time.perf_counter() - t0) * 1000)
        return out

    return netns.run_in(st.pods[CLIENT].namespace, measure)


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def _all_up(st: labs.LabState, timeout: float = 60) -> None:
    compiled, topo = labs.topology_of(st)
    gws = [transit.attach(g) for g in transit.gateways(st, topo, compiled)]
    deadline = time.monotonic() + timeout
    while not all(g.up() for g in gws):
        if time.monotonic() > deadline:
            raise SystemExit("VPN tunnels or BGP sessions not all up between trials")
        time.sleep(0.2)


def _failover(st: labs.LabState, trials: int) -> list[dict[str, Any]]:
    compiled, topo = labs.topology_of(st)
    ctx = Context(compiled.plan, topo, st)
    conn = compiled.plan.vpn[0]
    flow = vpnfailover.pick_flow(ctx, conn)
    assert flow is not None
    out = []
    for k in range(trials):
        _all_up(st)
        time.sleep(2.0)  # the hub's routes follow its own sessions
        r = vpnfailover.stage(ctx, conn, flow)
        window = None if r.window is None else r.window.seconds
        row = {
            "trial": k + 1,
            "result": r.result.value,
            "window_s": None if window is None or math.isinf(window) else round(window, 3),
            "moved_s": r.moved,
            "back_s": r.back,
            "lost": r.lost,
            "lost_after_heal": r.lost_back,
            "sent": r.sent,
            "detail": vpnfailover.describe(r, conn.name),
        }
        print(
            f"  trial {k + 1}: {row['result']} window {row['window_s']} s, moved {r.moved} s, back {r.back} s, "
            f"{r.lost_back} lost after the heal",
            flush=True,
        )
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pings", type=int, default=300)
    ap.add_argument("--trials", type=int, default=12)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-vpn-"))
    tags: list[str] = []
    servers: list[subprocess.Popen[bytes]] = []
    res: dict[str, Any] = {"args": vars(args), "load_before": os.getloadavg()}
    try:
        states = {}
        for which in LABS:
            mesh, name = _copy(tmp, which)
            tags.append(topology.lab_tag(name))
            res.setdefault("up_s", {})[which] = round(_up(mesh), 2)
            states[which] = labs.find_lab(mesh)
        for st in states.values():
            argv = netns.exec_argv(st.pods[SERVER].namespace, ["iperf3", "-s"])
            servers.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        tp: dict[str, list[float]] = {w: [] for w in LABS}
        rtt: dict[str, list[list[float]]] = {w: [] for w in LABS}
        for r in range(args.rounds):
            for which in list(LABS) if r % 2 == 0 else list(reversed(LABS)):
                tp[which].append(_iperf(states[which], args.seconds))
                rtt[which].append(_rtts(states[which], args.pings))
                p50 = statistics.median(rtt[which][-1])
                print(f"round {r + 1} {which}: {tp[which][-1]:.0f} Mbit/s, RTT p50 {p50:.3f} ms", flush=True)
        every = {w: [x for visit in rtt[w] for x in visit] for w in LABS}
        res["throughput_mbit_s"] = tp
        res["rtt_ms"] = {w: {"p50": _pct(every[w], 50), "p99": _pct(every[w], 99), "n": len(every[w])} for w in LABS}
        res["throughput_ratio_ipsec_over_wireguard"] = statistics.median(
            a / b for a, b in zip(tp["ipsec"], tp["wireguard"], strict=True)
        )
        res["rtt_p50_ratio_ipsec_over_wireguard"] = statistics.median(
            statistics.median(a) / statistics.median(b) for a, b in zip(rtt["ipsec"], rtt["wireguard"], strict=True)
        )
        print("failover trials (ipsec):", flush=True)
        trials = _failover(states["ipsec"], args.trials)
        windows = [t["window_s"] for t in trials if t["window_s"] is not None]
        res["failover"] = {
            "trials": trials,
            "window_p50_s": _pct(windows, 50) if windows else None,
            "window_p99_s": _pct(windows, 99) if windows else None,
            "window_max_s": max(windows) if windows else None,
            "moved_p50_s": statistics.median(t["moved_s"] for t in trials if t["moved_s"] is not None),
            "back_p50_s": statistics.median(t["back_s"] for t in trials if t["back_s"] is not None),
            "lost_after_heal": sum(t["lost_after_heal"] for t in trials),
            "ok": sum(t["result"] == "ok" for t in trials),
        }
        res["load_after"] = os.getloadavg()
    finally:
        for p in servers:
            p.terminate()
            p.wait(5)
        for tag in tags:
            labs.down(tag)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {k: v for k, v in res.items() if k not in ("failover",)}
    summary["failover"] = {k: v for k, v in res["failover"].items() if k != "trials"}
    print(json.dumps(summary, indent=2))
    out = ROOT / "benchmarks" / "results" / "vpn.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
