"""Agent /metrics scrape time (issue 14): a scrape under 50 ms with 60 nodes.

    python3 benchmarks/bench_metrics.py [--nodes 60] [--scrapes 200]

A generated full mesh (gen_mesh.py) of N nodes, one per site, so every node peers with every
other (N − 1 peers), compiled in a temporary folder. The first node's real `Agent` runs on the
fake dataplane (no root): it reads every node's record, applies them (its device has N − 1
peers) and goes through its metrics hooks as in a session — applies, watch batches, an etcd
session, lease refreshes — so the histograms hold samples; the fake device reports a handshake
and byte counters for every peer. Then the agent's own metrics server (`AgentMetrics.serve`, on
127.0.0.1, a free port) is scraped over HTTP `--scrapes` times, one new connection each, as
Prometheus does: the time from connect to the last byte of the body. The same registry's
exposition without HTTP (`generate_latest`) is timed too. What the scrape costs is what the
agent does at scrape time: the per-peer families built from the device's counters (one UAPI
`get` on a real node; here the fake's dictionary, so add ≈1 ms for a real wireguard-go).

Prints median, p95 and max, the series count and body size; writes benchmarks/results/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen_mesh  # noqa: E402  (a sibling script, not a package)
from prometheus_client import generate_latest  # noqa: E402

from crossmesh.agent import config as agent_config  # noqa: E402
from crossmesh.agent import dataplane, records  # noqa: E402
from crossmesh.agent.daemon import Agent  # noqa: E402
from crossmesh.drivers.lab.wireguard import PeerStats  # noqa: E402
from crossmesh.kv.api import Entry, Event  # noqa: E402
from crossmesh.workspace import compile_mesh  # noqa: E402

RESULTS = HERE / "results" / "metrics.json"
TARGET_MS = 50.0


def build(tmp: Path, nodes: int) -> tuple[Agent, dataplane.Fake]:
    mesh = tmp / "mesh.yaml"
    mesh.write_text(gen_mesh.mesh_yaml(nodes, nodes, name="benchmetrics"))
    compiled = compile_mesh(mesh, tmp / "state")
    plan, store = compiled.plan, compiled.store
    names = [n.name for n in plan.nodes]
    pubs = store.public_keys(names)
    intent = tmp / "intent.json"
    intent.write_text(records.encode_intent(records.intent_of(plan)))
    me = names[0]
    cfg = agent_config.build(
        compiled,
        me,
        namespace=None,
        ifname="wg-bench",
        etcd=[],
        ttl=10,
        status=tmp / "status.json",
        wireguard_log=tmp / "wg.log",
        intent_path=intent,
        metrics="off",
    )
    fake = dataplane.Fake()
    agent = Agent(cfg, fake)
    prefix = records.prefix(plan.mesh).encode()
    rec = {n.name: records.NodeRecord(**records.record_of(n, pubs[n.name])) for n in plan.nodes}
    entries = [Entry(prefix + n.encode(), rec[n].encode(), 10 + i, 10 + i, 1) for i, n in enumerate(names)]
    agent.load(entries)
    agent.apply()
    m = agent.metrics
    m.etcd_session()
    m.lease_granted(10)
    for e in entries[1:]:  # every record delivered again by the watch, an apply after each batch
        m.watched(agent.record_events)([Event("put", e)])
        agent.apply()
        m.lease_renewed(time.monotonic())
    now = int(time.time())
    fake.stats = {
        pubs[n]: PeerStats(now - i % 120, 10_000 * i, 20_000 * i, f"198.18.{i}.1:51820")
        for i, n in enumerate(names[1:])
    }
    agent.chosen = {plan.nodes[1].site: names[1]}
    return agent, fake


def scrape(host: str, port: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        body = bytearray()
        while chunk := s.recv(65536):
            body += chunk
    return time.perf_counter() - t0, len(body)


def summary(samples: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in samples)
    return {
        "median_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
        "max_ms": round(ms[-1], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=60)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cm-bench-metrics-") as tmp:
        t0 = time.perf_counter()
        agent, fake = build(Path(tmp), args.nodes)
        setup = time.perf_counter() - t0
        peers = len(fake.peers)
        text = generate_latest(agent.metrics.registry).decode()
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        direct = []
        for _ in range(args.scrapes):
            t = time.perf_counter()
            generate_latest(agent.metrics.registry)
            direct.append(time.perf_counter() - t)
        server = agent.metrics.serve("127.0.0.1", 0)
        try:
            host, port = server.address
            scrape(host, port)  # the first connection warms the server's thread
            http, size = [], 0
            for _ in range(args.scrapes):
                took, size = scrape(host, port)
                http.append(took)
        finally:
            server.close()
    result: dict[str, Any] = {
        "nodes": args.nodes,
        "peers": peers,
        "series": series,
        "body_bytes": size,
        "scrapes": args.scrapes,
        "http": summary(http),
        "exposition_only": summary(direct),
        "setup_s": round(setup, 2),
        "target_ms": TARGET_MS,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load": [round(x, 2) for x in os.getloadavg()],
    }
    h = result["http"]
    print(
        f"{args.nodes} nodes ({peers} peers, {series} series, {size} bytes): scrape over HTTP median "
        f"{h['median_ms']} ms, p95 {h['p95_ms']} ms, max {h['max_ms']} ms; exposition alone median "
        f"{result['exposition_only']['median_ms']} ms (target < {TARGET_MS:.0f} ms; load {result['load'][0]})"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if h["p95_ms"] < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
