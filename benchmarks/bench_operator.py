"""Operator benchmarks (issue 15): IPAM transactions as 1,000 nodes join, and leader failover.

    python3 benchmarks/bench_operator.py [--nodes 1000] [--joins 100] [--ttls 2,5] [--kills 5]

Each run starts its own single-member etcd on loopback (crossmesh.kv.testing) and compares
against a baseline measured in the same run, because the machine is shared and noisy:

1. IPAM: a generated mesh (benchmarks/gen_mesh.py, 20 sites) of `--nodes` nodes is applied and
   the leader reconciles it: the allocations of every cluster and node are written in guarded
   transactions of at most 127 operations (etcd's --max-txn-ops is 128), then the intents.
   Then `--joins` nodes join one at a time on top (each: read the allocations, allocate the new
   node with the pure allocator, commit it in one guarded transaction). Reported: the bulk
   commit's transactions per second and allocations per second, and each join's commit latency
   p50/p99 — against the baseline of a plain `put` of one key (p50), as a ratio.
2. Failover: two `crossmesh operator` replicas with `--lease-ttl T`; the leader is killed with
   SIGKILL (no goodbye, the lease must run out) and the time until the other holds the leader key
   is measured by a watch, `--kills` times per TTL; then the same with SIGTERM (a clean stop
   revokes the lease: the handover is immediate). Target: within the TTL (+ the standby's
   reaction).

Results go to benchmarks/results/operator.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from crossmesh.ipam.allocate import allocate
from crossmesh.kv.etcd import EtcdKv, connect
from crossmesh.kv.layout import Layout
from crossmesh.kv.testing import etcd
from crossmesh.load.mesh import load_mesh_model
from crossmesh.model.mesh import Mesh
from crossmesh.operator import apply as apply_mod
from crossmesh.operator import ipam
from crossmesh.operator.run import Operator

HERE = Path(__file__).resolve().parent


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def baseline_put(kv: EtcdKv, n: int = 200) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        await kv.put(b"/bench/baseline", str(i).encode())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def bench_ipam(endpoint: str, work: Path, nodes: int, joins: int) -> dict[str, object]:
    mesh_path = work / "mesh.yaml"
    subprocess.run(
        [sys.executable, str(HERE / "gen_mesh.py"), "--sites", "20", "--nodes", str(nodes), "-o", str(mesh_path)],
        check=True,
    )
    doc = yaml.safe_load(mesh_path.read_text())
    name = doc["metadata"]["name"]
    layout = Layout(name)
    kv = await connect([endpoint], None)
    op = Operator(lambda: connect([endpoint], None), name, "bench", say=lambda _: None)
    lease = await kv.grant(60)
    await op._campaign(kv, lease)
    put_p50 = await baseline_put(kv)

    t0 = time.perf_counter()
    await apply_mod.apply(kv, await apply_mod.propose(kv, mesh_path), "bench")
    applied = time.perf_counter() - t0
    before = await kv.range(b"/")
    t0 = time.perf_counter()
    await op.reconcile(kv)
    reconcile = time.perf_counter() - t0
    allocated, guard = await ipam.read(kv, layout)
    after = await kv.range(b"/")
    revisions = after.revision - before.revision  # one per transaction

    # Joins: one node at a time, allocated on top of what etcd holds, committed in one transaction.
    clusters = doc["spec"]["clusters"]
    for j in range(joins):
        cluster = clusters[j % len(clusters)]
        first = cluster["nodes"][0]
        address = first["address"].rsplit(".", 1)[0] + f".{200 + j // len(clusters)}"
        cluster["nodes"].append({"name": f"join-{j}", "site": first["site"], "address": address})
    mesh_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    _, grown, _ = load_mesh_model(mesh_path)
    assert grown is not None
    joined = [n.name for n in grown.spec.clusters[0].nodes if n.name.startswith("join-")]
    latencies = []
    for j in range(joins):
        step = _only_joined(grown, {f"join-{k}" for k in range(j + 1)})
        t0 = time.perf_counter()
        previous, guard = await op.ipam.read(kv)
        alloc, problems = allocate(step, previous)
        assert not problems, problems
        ok = await op.ipam.commit(kv, previous, guard, alloc, op.fence)
        latencies.append(time.perf_counter() - t0)
        assert ok
    assert joined
    await kv.revoke(lease.id)
    await kv.close()
    p50, p99 = pct(latencies, 50), pct(latencies, 99)
    return {
        "nodes": nodes,
        "allocations": len(allocated.nodes) + len(allocated.clusters),
        "apply_s": round(applied, 3),
        "reconcile_s": round(reconcile, 3),
        "store_revisions_in_reconcile": revisions,
        "allocations_per_s": round((len(allocated.nodes) + len(allocated.clusters)) / reconcile),
        "join_commit_p50_ms": round(p50 * 1000, 2),
        "join_commit_p99_ms": round(p99 * 1000, 2),
        "baseline_put_p50_ms": round(put_p50 * 1000, 3),
        "join_p50_over_put": round(p50 / put_p50, 1),
    }


def _only_joined(mesh: Mesh, keep: set[str]) -> Mesh:
    """`mesh` with only the joined nodes named in `keep` (the mesh file's own nodes all stay)."""
    clusters = [
        c.model_copy(update={"nodes": [n for n in c.nodes if not n.name.startswith("join-") or n.name in keep]})
        for c in mesh.spec.clusters
    ]
    return mesh.model_copy(update={"spec": mesh.spec.model_copy(update={"clusters": clusters})})


async def watch_leader(endpoint: str, mesh: str, want: str, timeout: float) -> float:
    kv = await connect([endpoint], None)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            got = await kv.get(Layout(mesh).leader)
            if got is not None and json.loads(got.value)["id"] == want:
                return time.monotonic() - t0
            await asyncio.sleep(0.01)
    finally:
        await kv.close()
    raise TimeoutError(f"{want} did not lead within {timeout} s")


def bench_failover(endpoint: str, work: Path, ttl: int, kills: int, sig: int) -> list[float]:
    mesh = f"failover-{ttl}-{sig}"
    flags = ["--etcd-endpoints", endpoint, "--insecure-plaintext", "--lease-ttl", str(ttl), "--mesh", mesh]
    times = []
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> None:
        log = (work / f"{mesh}-{name}.log").open("ab")
        procs[name] = subprocess.Popen(["crossmesh", "operator", "--id", name, *flags], stdout=log, stderr=log)

    try:
        start("r0")
        asyncio.run(watch_leader(endpoint, mesh, "r0", 30))
        leader, standby = "r0", "r1"
        start("r1")
        time.sleep(1.5)  # the standby is connected and watching
        for k in range(kills):
            procs[leader].send_signal(sig)
            procs[leader].wait()
            times.append(asyncio.run(watch_leader(endpoint, mesh, standby, ttl + 30)))
            restarted = f"r{k + 2}"
            start(restarted)
            time.sleep(1.5)
            leader, standby = standby, restarted
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--joins", type=int, default=100)
    ap.add_argument("--ttls", default="2,5")
    ap.add_argument("--kills", type=int, default=5)
    args = ap.parse_args()
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="cm-bench-operator-") as tmp, etcd(Path(tmp)) as server:
        work = Path(tmp)
        out["ipam"] = asyncio.run(bench_ipam(server.endpoint, work, args.nodes, args.joins))
        print(json.dumps(out["ipam"], indent=2), flush=True)
        failover = {}
        for ttl in (int(t) for t in args.ttls.split(",")):
            killed = bench_failover(server.endpoint, work, ttl, args.kills, signal.SIGKILL)
            failover[f"ttl{ttl}_sigkill"] = {
                "ttl_s": ttl,
                "median_s": round(statistics.median(killed), 2),
                "max_s": round(max(killed), 2),
                "median_over_ttl": round(statistics.median(killed) / ttl, 2),
                "runs": [round(t, 2) for t in killed],
            }
            print(ttl, failover[f"ttl{ttl}_sigkill"], flush=True)
        stopped = bench_failover(server.endpoint, work, 5, args.kills, signal.SIGTERM)
        failover["ttl5_sigterm"] = {"median_s": round(statistics.median(stopped), 3), "max_s": round(max(stopped), 3)}
        print(failover["ttl5_sigterm"], flush=True)
        out["failover"] = failover
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "operator.json").write_text(json.dumps(out, indent=2) + "\n")
    os.sync()


if __name__ == "__main__":
    main()
