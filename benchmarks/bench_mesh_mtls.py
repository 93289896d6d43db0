"""Throughput of one TCP transfer across sites with and without the service mesh's mTLS (issue 11).

Two labs of examples/hybrid-openstack-aws under unique names: one as it is (no spec.istio: pod to
pod over WireGuard), one with spec.istio and a mesh-wide STRICT PeerAuthentication (the same path,
plus both node proxies: capture, TLS 1.3 with the pods' SVIDs, transparent connection to the app).
In each, a sink in a pod's namespace on port 5001 — tkb-0 (aws site: across the sites' WireGuard)
or monitoring-0 (another node of the client's site: no tunnel) — reads until the end and answers
the byte count; a client in demo-app-0's namespace (openstack site) sends MB megabytes and waits
for the count. Time from connect to the count; the median of REPEAT runs. Each lab is torn down
by its own tag, also on failure.

    sudo python3 benchmarks/bench_mesh_mtls.py [--mb 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns, topology

ROOT = Path(__file__).resolve().parents[1]
PORT = 5001
STRICT = """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"""


def _mesh(tmp: Path, istio: bool) -> tuple[Path, str]:
    target = tmp / ("istio" if istio else "plain")
    shutil.copytree(ROOT / "examples/hybrid-openstack-aws", target, ignore=shutil.ignore_patterns(".crossmesh"))
    name = f"b{uuid.uuid4().hex[:10]}"
    mesh = target / "mesh.yaml"
    text = mesh.read_text().replace("  name: hybrid-openstack-aws", f"  name: {name}", 1)
    if istio:
        text = text.replace("spec:\n  wireguard:", "spec:\n  istio: {}\n  wireguard:", 1)
        (target / "apps" / "demo.yaml").write_text((target / "apps" / "demo.yaml").read_text() + STRICT)
    mesh.write_text(text)
    return mesh, name


PATHS = {  # the client is demo-app-0 (openstack-worker)
    "across sites": "k3s/demo/tkb-0",  # on aws-worker-1: WireGuard (wireguard-go) between the sites
    "same site": "k3s/demo/monitoring-0",  # on openstack-master: the site network, no tunnel
}


def _transfer(st: labs.LabState, size: int, to: str) -> float:
    server, client = st.pods[to], st.pods["k3s/demo/demo-app-0"]

    def listen() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", PORT))
        s.listen(1)
        return s

    lsock = netns.run_in(server.namespace, listen)

    def sink() -> None:
        conn, _ = lsock.accept()
        got = 0
        while got < size and (chunk := conn.recv(1 << 16)):
            got += len(chunk)
        conn.sendall(f"{got}\n".encode())
        conn.close()

    thread = threading.Thread(target=sink)
    thread.start()
    block = b"\0" * (1 << 16)

    def send() -> float:
        started = time.monotonic()
        with socket.create_connection((str(server.address), PORT), timeout=60) as s:
            sent = 0
            while sent < size:
                s.sendall(block[: min(len(block), size - sent)])
                sent += min(len(block), size - sent)
            assert s.recv(64).strip() == str(size).encode()
        return time.monotonic() - started

    try:
        return netns.run_in(client.namespace, send)
    finally:
        thread.join(60)
        lsock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.mb * 1_000_000
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for istio in (False, True):
            mesh, name = _mesh(Path(tmp), istio)
            tag = topology.lab_tag(name)
            try:
                subprocess.run(["crossmesh", "lab", "up", str(mesh)], check=True, capture_output=True, timeout=300)
                st = labs.LabState.load(tag)
                assert st is not None
                for path, to in PATHS.items():
                    runs = [_transfer(st, size, to) for _ in range(args.repeat)]
                    median = statistics.median(runs)
                    key = f"{'mtls' if istio else 'plain'}, {path}"
                    results[key] = {"seconds": runs, "median_s": median, "MB_per_s": args.mb / median}
                    rate = args.mb / median
                    print(f"{key}: {args.mb} MB in {median:.2f} s (median of {args.repeat}) = {rate:.1f} MB/s")
            finally:
                labs.down(tag)
    out = ROOT / "benchmarks" / "results" / "mesh_mtls.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
