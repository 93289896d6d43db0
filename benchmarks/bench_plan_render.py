"""Benchmark of issue 2: `plan` + `render` of a large full mesh, against wg-meshconf.

For each size (default 250, 500 and 1,000 nodes over 20 sites, every node public, one
cluster per site) this generates a mesh file with gen_mesh.py and measures, each in a
fresh subprocess, repeated (default 3 times) and reported as the median:

- cold:    `crossmesh render MESH --output-dir DIR` with an empty state directory (generates keys);
- stages:  in one process, the YAML load alone (ruamel round-trip + positions), then
           `compile_mesh` (load, validate, allocate, keys, plan: what `crossmesh plan`
           computes) and `render.tree.render` (all files in memory, nothing written);
- cli:     `crossmesh render MESH --output-dir DIR` with the state of a previous run (keys exist),
           end to end: interpreter start, compile, render, writing files, applied plan;
- wg-meshconf: `wg-meshconf -d DB.csv genconfig -o DIR` on the same nodes. DB.csv is
           written directly (its `addpeer` rewrites the whole CSV per peer) with the
           columns of wg_meshconf.database_manager.KEY_TYPE: the node's tunnel address as
           Address, its public address as Endpoint, its node address and pod CIDR as
           AllowedIPs, the same private key and MTU as crossmesh.

Wall time, CPU time (user + sys) and peak RSS come from os.wait4 on each child (the
stages also report their own CPU time; the table shows CPU seconds for yaml, plan and
render, which other work on a shared machine disturbs less than wall time). The
two tools write different numbers of peer entries (wg-meshconf peers every node with
every other node, n − 1 each; crossmesh's full mesh peers across sites only), so the
entries are counted in the written files and the comparison is also made per entry.

Usage: python3 benchmarks/bench_plan_render.py [--sizes 250,500,1000] [--repeat 3] [--profile]
Results: a table on stdout and benchmarks/results/plan_render.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen_mesh  # noqa: E402  (a sibling script, not a package)

RESULTS = HERE / "results" / "plan_render.json"
MiB = 1024 * 1024


# --- children -----------------------------------------------------------------------------


def run_child(cmd: list[str], *, cwd: Path | None = None) -> dict[str, Any]:
    """Run cmd; wall time, CPU time and peak RSS of that child alone (os.wait4), and its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{stderr[-2000:]}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_mb": usage.ru_maxrss * 1024 / MiB,  # ru_maxrss is in KiB on Linux
        "stdout": stdout,
    }


def crossmesh_cmd() -> list[str]:
    exe = shutil.which("crossmesh")
    return [exe] if exe else [sys.executable, "-m", "crossmesh.cli.main"]


def stages_worker(mesh: Path, state: Path) -> None:
    """Runs in a child: time the YAML load, compile_mesh and render separately; print JSON."""
    from crossmesh.load.mesh import parse_mesh_document
    from crossmesh.render.tree import render
    from crossmesh.workspace import compile_mesh

    c0, t0 = time.process_time(), time.perf_counter()
    parse_mesh_document(mesh)  # measured on its own; compile_mesh loads the file again
    c1, t1 = time.process_time(), time.perf_counter()
    compiled = compile_mesh(mesh, state)
    c2, t2 = time.process_time(), time.perf_counter()
    files = render(compiled.plan, compiled.loaded.manifests, compiled.store.private_key)
    c3, t3 = time.process_time(), time.perf_counter()
    peers = sum(len(n.tunnel.peers) for n in compiled.plan.nodes if n.tunnel is not None)
    result = {
        "yaml_load_s": t1 - t0,
        "compile_s": t2 - t1,
        "render_s": t3 - t2,
        "yaml_load_cpu_s": c1 - c0,
        "compile_cpu_s": c2 - c1,
        "render_cpu_s": c3 - c2,
        "peer_entries": peers,
        "files": len(files),
        "rendered_mb": sum(len(f.content.encode()) for f in files.values()) / MiB,
    }
    print(json.dumps(result))


def profile_worker(mesh: Path, state: Path) -> None:
    """Runs in a child: cProfile of compile_mesh + render, top functions by own time."""
    import cProfile
    import pstats

    from crossmesh.render.tree import render
    from crossmesh.workspace import compile_mesh

    prof = cProfile.Profile()
    prof.enable()
    compiled = compile_mesh(mesh, state)
    render(compiled.plan, compiled.loaded.manifests, compiled.store.private_key)
    prof.disable()
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(25)
    stats.sort_stats("tottime").print_stats(15)


# --- wg-meshconf --------------------------------------------------------------------------


def write_wg_meshconf_db(mesh: Path, state: Path, db: Path) -> None:
    """wg-meshconf's CSV database for the same nodes, keys and addresses as crossmesh's plan."""
    from wg_meshconf.database_manager import KEY_TYPE

    from crossmesh.workspace import compile_mesh

    compiled = compile_mesh(mesh, state, persist=False)
    with db.open("w", encoding="utf-8", newline="") as fh:
        # The same dialect as DatabaseManager.write_database: every field quoted, lists joined by ",".
        writer = csv.DictWriter(fh, list(KEY_TYPE), quoting=csv.QUOTE_ALL)
        writer.writeheader()
        for node in compiled.plan.nodes:
            if node.tunnel is None or node.public_address is None:
                raise RuntimeError(f"{node.name} has no tunnel or no public address: not a public full mesh")
            writer.writerow(
                {
                    "Name": node.name,
                    "Address": f"{node.tunnel.address}/32",
                    "Endpoint": str(node.public_address),
                    "AllowedIPs": f"{node.address}/32,{node.pod_cidr}",
                    "ListenPort": str(node.tunnel.listen_port),
                    "PrivateKey": compiled.store.private_key(node.name),
                    "MTU": str(node.tunnel.mtu.value),
                }
            )


def count_peer_entries(root: Path, pattern: str) -> int:
    return sum(p.read_text().count("\n[Peer]\n") for p in root.glob(pattern))


# --- driver -------------------------------------------------------------------------------


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def bench_size(nodes: int, sites: int, repeat: int, work: Path, wg: str | None) -> dict[str, Any]:
    base = work / f"n{nodes}"
    base.mkdir()
    mesh = base / "mesh.yaml"
    mesh.write_text(gen_mesh.mesh_yaml(sites, nodes))
    expected = gen_mesh.peer_entries(gen_mesh.site_sizes(sites, nodes))
    cm = crossmesh_cmd()
    me = [sys.executable, str(Path(__file__).resolve())]
    row: dict[str, Any] = {"nodes": nodes, "sites": sites, "mesh_file_kb": mesh.stat().st_size / 1024}

    def fresh(name: str) -> Path:
        path = base / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    cold = [run_child([*cm, "render", str(mesh), "--state", str(fresh("state")), "--output-dir", str(fresh("out"))])]
    for _ in range(repeat - 1):
        cold.append(
            run_child([*cm, "render", str(mesh), "--state", str(fresh("state")), "--output-dir", str(fresh("out"))])
        )
    state = base / "state"  # from the last cold run: keys and allocations exist from here on

    stages = []
    for _ in range(repeat):
        child = run_child([*me, "--worker", "stages", str(mesh), str(state)])
        stages.append({**json.loads(child["stdout"]), "wall_s": child["wall_s"], "peak_mb": child["peak_mb"]})
    cli = [
        run_child([*cm, "render", str(mesh), "--state", str(state), "--output-dir", str(fresh("out"))])
        for _ in range(repeat)
    ]
    peers_cm = count_peer_entries(base / "out", "nodes/*/*.conf")
    if peers_cm != expected or stages[0]["peer_entries"] != expected:
        raise RuntimeError(f"{nodes} nodes: expected {expected} peer entries, wrote {peers_cm}")
    row["crossmesh"] = {
        "peer_entries": peers_cm,
        "files": stages[0]["files"],
        "rendered_mb": stages[0]["rendered_mb"],
        "applied_plan_mb": (state / "applied-plan.json").stat().st_size / MiB,
        "yaml_load_s": median(stages, "yaml_load_s"),
        "compile_s": median(stages, "compile_s"),
        "render_s": median(stages, "render_s"),
        "yaml_load_cpu_s": median(stages, "yaml_load_cpu_s"),
        "compile_cpu_s": median(stages, "compile_cpu_s"),
        "render_cpu_s": median(stages, "render_cpu_s"),
        "stages_peak_mb": max(r["peak_mb"] for r in stages),
        "cli_wall_s": median(cli, "wall_s"),
        "cli_cpu_s": median(cli, "cpu_s"),
        "cli_wall_min_s": min(r["wall_s"] for r in cli),
        "cli_cpu_min_s": min(r["cpu_s"] for r in cli),
        "cli_peak_mb": max(r["peak_mb"] for r in cli),
        "cold_cli_wall_s": median(cold, "wall_s"),
        "cold_cli_peak_mb": max(r["peak_mb"] for r in cold),
    }
    row["crossmesh"]["us_per_peer_entry"] = row["crossmesh"]["cli_wall_s"] / peers_cm * 1e6
    row["crossmesh"]["plan_render_us_per_peer_entry"] = (
        (row["crossmesh"]["compile_s"] + row["crossmesh"]["render_s"]) / peers_cm * 1e6
    )
    shutil.rmtree(base / "out")

    if wg is not None:
        db = base / "db.csv"
        write_wg_meshconf_db(mesh, state, db)
        runs = [run_child([wg, "-d", str(db), "genconfig", "-o", str(fresh("wg-out"))]) for _ in range(repeat)]
        peers_wg = count_peer_entries(base / "wg-out", "*.conf")
        row["wg_meshconf"] = {
            "peer_entries": peers_wg,
            "wall_s": median(runs, "wall_s"),
            "cpu_s": median(runs, "cpu_s"),
            "wall_min_s": min(r["wall_s"] for r in runs),
            "cpu_min_s": min(r["cpu_s"] for r in runs),
            "peak_mb": max(r["peak_mb"] for r in runs),
            "us_per_peer_entry": median(runs, "wall_s") / peers_wg * 1e6,
        }
        row["ratio_wall"] = row["wg_meshconf"]["wall_s"] / row["crossmesh"]["cli_wall_s"]
        row["ratio_per_peer_entry"] = row["wg_meshconf"]["us_per_peer_entry"] / row["crossmesh"]["us_per_peer_entry"]
        # CPU time is less disturbed than wall time by other work on the machine
        row["ratio_cpu_per_peer_entry"] = (row["wg_meshconf"]["cpu_s"] / peers_wg) / (
            row["crossmesh"]["cli_cpu_s"] / peers_cm
        )
        shutil.rmtree(base / "wg-out")
    shutil.rmtree(base)
    return row


def machine() -> dict[str, Any]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    git = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return {
        "crossmesh_commit": git.stdout.strip() or "unknown",
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


def linear_fit(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Least squares time = fixed + per_entry × peer entries, over the sizes run."""
    xs = [float(r["crossmesh"]["peer_entries"]) for r in rows]
    ys = [float(r["crossmesh"][key]) for r in rows]
    if len(xs) < 2:
        return {}
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    fixed = my - slope * mx
    ss_res = sum((y - fixed - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"fixed_s": fixed, "us_per_peer_entry": slope * 1e6, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def table(rows: list[dict[str, Any]]) -> str:
    nan = float("nan")
    head = (
        f"{'nodes':>6} {'peers cm':>9} {'peers wg':>9} {'yaml':>6} {'plan':>6} {'render':>6} "
        f"{'cm s':>6} {'cm cpu':>6} {'wg s':>6} {'wg cpu':>6} {'ratio':>5} {'/entry':>6} {'cpu/entry':>9} "
        f"{'peak MB':>7} {'cm us/entry':>11} {'wg us/entry':>11}"
    )
    lines = [head]
    for r in rows:
        c, w = r["crossmesh"], r.get("wg_meshconf", {})
        lines.append(
            f"{r['nodes']:>6} {c['peer_entries']:>9} {w.get('peer_entries', '-'):>9} {c['yaml_load_cpu_s']:>6.2f} "
            f"{c['compile_cpu_s']:>6.2f} {c['render_cpu_s']:>6.2f} {c['cli_wall_s']:>6.2f} {c['cli_cpu_s']:>6.2f} "
            f"{w.get('wall_s', nan):>6.2f} {w.get('cpu_s', nan):>6.2f} {r.get('ratio_wall', nan):>5.1f} "
            f"{r.get('ratio_per_peer_entry', nan):>6.1f} {r.get('ratio_cpu_per_peer_entry', nan):>9.1f} "
            f"{max(c['stages_peak_mb'], c['cli_peak_mb']):>7.0f} {c['us_per_peer_entry']:>11.2f} "
            f"{w.get('us_per_peer_entry', nan):>11.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plan + render benchmark against wg-meshconf (issue 2)")
    parser.add_argument("--sizes", default="250,500,1000", help="node counts, comma-separated")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-wg-meshconf", action="store_true", help="skip the wg-meshconf comparison")
    parser.add_argument("--profile", action="store_true", help="also cProfile compile + render at the largest size")
    parser.add_argument("-o", "--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "MESH", "STATE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, mesh, state = args.worker
        {"stages": stages_worker, "profile": profile_worker}[kind](Path(mesh), Path(state))
        return 0

    wg = None if args.no_wg_meshconf else shutil.which("wg-meshconf")
    if wg is None and not args.no_wg_meshconf:
        print("wg-meshconf not found (pip install wg-meshconf): comparison skipped", file=sys.stderr)
    sizes = [int(s) for s in args.sizes.split(",")]
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="crossmesh-bench-") as tmp:
        work = Path(tmp)
        for nodes in sizes:
            print(f"{nodes} nodes ...", file=sys.stderr, flush=True)
            rows.append(bench_size(nodes, args.sites, args.repeat, work, wg))
        if args.profile:
            nodes = max(sizes)
            mesh, state = work / "profile.yaml", work / "profile-state"
            mesh.write_text(gen_mesh.mesh_yaml(args.sites, nodes))
            run_child(
                [
                    *crossmesh_cmd(),
                    "render",
                    str(mesh),
                    "--state",
                    str(state),
                    "--output-dir",
                    str(work / "profile-out"),
                ]
            )
            prof = run_child(
                [sys.executable, str(Path(__file__).resolve()), "--worker", "profile", str(mesh), str(state)]
            )
            print(prof["stdout"])
    info["loadavg_end"] = list(os.getloadavg())
    print(table(rows))
    fits = {key: linear_fit(rows, key) for key in ("cli_wall_s", "cli_cpu_s", "compile_cpu_s", "render_cpu_s")}
    for key, fit in fits.items():
        if fit:
            fixed, slope, r2 = fit["fixed_s"], fit["us_per_peer_entry"], fit["r2"]
            print(f"fit {key}: {fixed:.2f} s + {slope:.2f} us x peer entries (R² {r2:.4f})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "plan_render",
        "repeat": args.repeat,
        "statistic": "median",
        "machine": info,
        "sizes": rows,
        "linear_fit": fits,
    }
    args.output.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
