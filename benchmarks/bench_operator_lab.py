"""`crossmesh apply` of one added node → converged, on a real lab of 30 nodes (issue 15).

    sudo python3 benchmarks/bench_operator_lab.py [--nodes 30] [--joins 8]

A generated mesh of `--nodes` - 1 nodes round-robin over 3 sites (bench_control_plane's
`generated_mesh`: one cluster per site, every node public), `lab up --agents` (TLS etcd, two
operator replicas, etcd-fed agents). Then, `--joins` times: one node is added to the mesh file and
`crossmesh apply` is run against the lab's etcd with the admin certificate; the clock runs from the
apply until `crossmesh status` says converged — every node online, at its intent's revision, with
every peer the intents give it (the lab's provisioner builds the node's namespace and agent, the
operator publishes its intent, every agent adds the peer). The node is then removed the same way
(apply of the file without it) and timed too. Baseline in the same run: `crossmesh status` itself
(one read of the mesh's keys, the floor of any poll), as a ratio. Results: benchmarks/results/operator_lab.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_control_plane import generated_mesh, log, running  # noqa: E402

from crossmesh.drivers import etcd  # noqa: E402
from crossmesh.drivers.lab import lab as labs  # noqa: E402
from crossmesh.kv.layout import ADMIN_USER  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def flags(tag: str) -> list[str]:
    me = etcd.identity(etcd.pki_dir(labs.LAB_ROOT / f"cm-{tag}"), ADMIN_USER)
    return ["--etcd-endpoints", ",".join(etcd.endpoints(tag)), "--cacert", str(me.ca), "--cert", str(me.cert),
            "--key", str(me.key)]  # fmt: skip


def converged(name: str, tag: str) -> bool:
    done = subprocess.run(["crossmesh", "status", "--mesh", name, *flags(tag), "-o", "json"], capture_output=True)
    return done.returncode == 0 and json.loads(done.stdout)["converged"]


def timed_apply(mesh: Path, name: str, tag: str, timeout: float = 180) -> float:
    t0 = time.monotonic()
    subprocess.run(["crossmesh", "apply", str(mesh), *flags(tag)], check=True, capture_output=True)
    while time.monotonic() - t0 < timeout:
        if converged(name, tag):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise TimeoutError(f"not converged {timeout} s after the apply")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=30)
    ap.add_argument("--joins", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cm-bench-oplab-") as tmp:
        lab = generated_mesh(Path(tmp), args.nodes - 1)
        with running(lab, "--agents"):
            time.sleep(3)
            floor = []
            for _ in range(10):
                t0 = time.monotonic()
                converged(lab.name, lab.tag)
                floor.append(time.monotonic() - t0)
            doc = yaml.safe_load(lab.mesh.read_text())
            base = yaml.safe_dump(doc, sort_keys=False)
            cluster = doc["spec"]["clusters"][1]
            first = cluster["nodes"][0]
            joins, leaves = [], []
            for j in range(args.joins):
                added = dict(first, name=f"late-{j}", address=first["address"].rsplit(".", 1)[0] + f".{200 + j}")
                added["publicAddress"] = first["publicAddress"].rsplit(".", 1)[0] + f".{180 + j}"
                cluster["nodes"].append(added)
                lab.mesh.write_text(yaml.safe_dump(doc, sort_keys=False))
                joins.append(timed_apply(lab.mesh, lab.name, lab.tag))
                cluster["nodes"].pop()
                lab.mesh.write_text(base)
                leaves.append(timed_apply(lab.mesh, lab.name, lab.tag))
                log(f"join {j}: converged {joins[-1]:.2f} s after apply; leave {leaves[-1]:.2f} s")
                if joins[-1] > 20:  # say where the time went
                    logs = labs.LAB_ROOT / f"cm-{lab.tag}" / "logs"
                    for name in ("provisioner.log", f"agent-late-{j}.log"):
                        with suppress(OSError):
                            log(f"{name}:\n" + "\n".join((logs / name).read_text().splitlines()[-25:]))
    result = {
        "nodes_after_join": args.nodes,
        "join_p50_s": round(pct(joins, 50), 2),
        "join_p99_s": round(pct(joins, 99), 2),
        "leave_p50_s": round(pct(leaves, 50), 2),
        "leave_p99_s": round(pct(leaves, 99), 2),
        "status_read_p50_s": round(statistics.median(floor), 3),
        "join_p50_over_status_read": round(pct(joins, 50) / statistics.median(floor), 1),
        "joins": [round(x, 2) for x in joins],
        "leaves": [round(x, 2) for x in leaves],
    }
    log(json.dumps(result))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "operator_lab.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
