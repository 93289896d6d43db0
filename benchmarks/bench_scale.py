"""Benchmark of issue 18 (bounded work): `validate` and `plan` of the largest meshes crossmesh documents.

Meshes (gen_mesh.py), each in its own temporary directory with its own state:
- full-1000: 1,000 nodes in 20 sites, one cluster per site, topology full-mesh (950,000 peer entries);
- gateways-10000: 10,000 nodes in 50 sites and 500 clusters (20 nodes each), topology gateways;
- over-limit: the same with one node more than the documented 10,000, which validate must refuse (exit 2).

Commands, each as a real `crossmesh` subprocess (interpreter start included), repeated (default 3)
with the median reported: `validate`, `plan` (the table) and `plan -o json` (stdout to a file, whose
size is reported). The first `plan` of a mesh makes its keys and allocations; a warm-up `plan -o json`
runs before the timed ones so that every timed `plan` sees the same state. Wall time and peak RSS come
from os.wait4 on each child. The baseline, run in the same session, is `crossmesh validate` of
examples/three-clouds (3 nodes): the floor of any command here (interpreter start and imports),
so that ratios say how much a large mesh adds on a machine shared with other work.

Targets (issue 18): every command on both meshes under 5 s and 1 GB peak RSS.

Usage: python3 benchmarks/bench_scale.py [--repeat 3] [--only full-1000,gateways-10000,over-limit]
Results: a table on stdout and benchmarks/results/scale.json.
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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen_mesh  # noqa: E402  (a sibling script, not a package)

RESULTS = HERE / "results" / "scale.json"
EXAMPLE = HERE.parent / "examples" / "three-clouds" / "mesh.yaml"
MiB = 1024 * 1024
TARGET_S = 5.0
TARGET_MB = 1024.0

MESHES: dict[str, dict[str, Any]] = {
    "full-1000": {"sites": 20, "nodes": 1000},
    "gateways-10000": {"sites": 50, "nodes": 10_000, "clusters": 500, "topology": "gateways"},
    "over-limit": {"sites": 50, "nodes": 10_001, "clusters": 500, "topology": "gateways"},
}
COMMANDS = {
    "validate": ["validate", "mesh.yaml"],
    "plan": ["plan", "mesh.yaml"],
    "plan -o json": ["plan", "-o", "json", "mesh.yaml"],
}


def crossmesh_cmd() -> list[str]:
    exe = shutil.which("crossmesh")
    return [exe] if exe else [sys.executable, "-m", "crossmesh.cli.main"]


def run_child(args: list[str], cwd: Path, stdout: Path) -> dict[str, Any]:
    """One `crossmesh` run: exit code, wall time, peak RSS of that child (os.wait4), output size."""
    env = {**os.environ, "COLUMNS": "200"}
    with stdout.open("wb") as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([*crossmesh_cmd(), *args], cwd=cwd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return {
        "code": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "peak_mb": usage.ru_maxrss * 1024 / MiB,  # KiB on Linux
        "output_mb": stdout.stat().st_size / MiB,
        "stderr_tail": stderr[-500:],
    }


def measure(args: list[str], cwd: Path, repeat: int, expect: int) -> dict[str, Any]:
    runs = [run_child(args, cwd, cwd / "stdout") for _ in range(repeat)]
    for r in runs:
        if r["code"] != expect:
            raise RuntimeError(f"crossmesh {' '.join(args)} exited {r['code']}, expected {expect}:\n{r['stderr_tail']}")
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "output_mb": runs[-1]["output_mb"],
        "runs_s": [round(r["wall_s"], 3) for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default=",".join(MESHES), help="meshes to run, comma-separated")
    args = parser.parse_args(argv)
    chosen = [m for m in args.only.split(",") if m]
    unknown = set(chosen) - set(MESHES)
    if unknown:
        parser.error(f"unknown mesh {', '.join(sorted(unknown))}; known: {', '.join(MESHES)}")

    results: dict[str, Any] = {
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
        "meshes": {},
    }
    with tempfile.TemporaryDirectory(prefix="cm-bench-scale-") as tmp:
        base_dir = Path(tmp) / "baseline"
        base_dir.mkdir()
        shutil.copytree(EXAMPLE.parent, base_dir, dirs_exist_ok=True)
        baseline = measure(["validate", "mesh.yaml"], base_dir, args.repeat, 0)
        results["baseline"] = baseline
        print(
            f"baseline: crossmesh validate examples/three-clouds: {baseline['wall_s']:.2f} s, "
            f"{baseline['peak_mb']:.0f} MB"
        )
        print(f"{'mesh':<16} {'command':<14} {'wall s':>7} {'× base':>7} {'peak MB':>8} {'output MB':>10}  target")
        for name in chosen:
            params = dict(MESHES[name])
            work = Path(tmp) / name
            work.mkdir()
            text = gen_mesh.mesh_yaml(
                params["sites"],
                params["nodes"],
                clusters=params.get("clusters"),
                topology=params.get("topology", "full-mesh"),
                name=name,
            )
            (work / "mesh.yaml").write_text(text)
            over = name == "over-limit"
            commands = {"validate": COMMANDS["validate"]} if over else COMMANDS
            if not over:
                run_child(COMMANDS["plan -o json"], work, work / "stdout")  # keys and allocations, once
            mesh_results: dict[str, Any] = {"params": params, "file_mb": len(text) / MiB}
            for label, command in commands.items():
                r = measure(command, work, args.repeat, 2 if over else 0)
                r["ratio_to_baseline"] = r["wall_s"] / baseline["wall_s"]
                r["target_met"] = r["wall_s"] < TARGET_S and r["peak_mb"] < TARGET_MB
                mesh_results[label] = r
                print(
                    f"{name:<16} {label:<14} {r['wall_s']:>7.2f} {r['ratio_to_baseline']:>7.1f} "
                    f"{r['peak_mb']:>8.0f} {r['output_mb']:>10.1f}  {'met' if r['target_met'] else 'MISSED'}"
                )
            results["meshes"][name] = mesh_results
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
