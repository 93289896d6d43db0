"""/metrics of the agents (port 9962) and of the service daemon (9963) on a real lab, scraped as
Prometheus would from inside a node's namespace (`ip netns exec <ns> curl http://<node>:996x/metrics`).

examples/three-clouds under a unique name, `lab up --agents`: three nodes, each the two others'
peer; its policies deny by default, so a datagram between two of its pods makes a drop to count."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterator

import pytest
from agentkit import udp_echo
from labkit import Lab, copy_example
from prometheus_client.parser import text_string_to_metric_families

from crossmesh.drivers.lab import lab as labs

NODES = ("aws-talos-1", "azure-talos-1", "gcp-talos-1")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    mesh, name = copy_example(tmp_path_factory.mktemp("metrics"), "three-clouds")
    lab = Lab(mesh, name)
    try:
        lab.up("--agents")
        yield lab
    finally:
        lab.down()
        assert labs.leftovers(lab.tag) == [], f"lab cm-{lab.tag} left things behind"


def where(lab: Lab, node: str) -> tuple[str, str]:
    """The node's namespace and site address, as its agent's configuration has them."""
    state = labs.LabState.load(lab.tag)
    assert state is not None
    cfg = json.loads((state.dir / "agents" / f"{node}.json").read_text())
    return cfg["namespace"], cfg["metricsAddress"].rsplit(":", 1)[0]


def scrape(namespace: str, address: str, port: int) -> tuple[Samples, float]:
    t0 = time.monotonic()
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, "curl", "-sS", "--max-time", "5", f"http://{address}:{port}/metrics"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
    }
    return samples, took


def until(check: object, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = check()  # type: ignore[operator]
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def test_agents_serve_peers_and_handshakes(lab: Lab) -> None:
    lab.test()  # traffic across every tunnel
    for node in NODES:
        ns, address = where(lab, node)

        def handshaken(ns: str = ns, address: str = address) -> Samples | None:
            got, _ = scrape(ns, address, 9962)
            ages = [v for (name, _), v in got.items() if name == "crossmesh_wireguard_peer_handshake_age_seconds"]
            return got if len(ages) == 2 and all(not math.isinf(a) for a in ages) else None

        got = until(handshaken)
        assert isinstance(got, dict), f"{node}: no handshake with both peers in /metrics"
        others = [n for n in NODES if n != node]
        assert got[("crossmesh_wireguard_peers", ())] == 2
        for peer in others:
            age = got[("crossmesh_wireguard_peer_handshake_age_seconds", (("peer", peer),))]
            assert 0 <= age < 180, f"{node} → {peer}: handshake {age} s old"
            assert got[("crossmesh_wireguard_peer_received_bytes_total", (("peer", peer),))] > 0
            assert got[("crossmesh_wireguard_peer_transmitted_bytes_total", (("peer", peer),))] > 0
        assert got[("crossmesh_applies_total", (("outcome", "success"),))] >= 1
        assert got[("crossmesh_reconcile_duration_seconds_count", ())] >= 1
        assert got[("crossmesh_etcd_lease_renewals_total", ())] >= 0
        assert 0 < got[("crossmesh_etcd_lease_ttl_remaining_seconds", ())] <= 60
        expiry = got[("crossmesh_certificate_expiry_timestamp_seconds", (("cert", "etcd-client"),))]
        assert expiry > time.time() + 86400  # the lab's node certificates last longer than a day


def test_service_daemon_serves_backends_and_policy_drops(lab: Lab) -> None:
    # A flow the example denies by default (x-wing-1 → x-wing-0, UDP 5353; `crossmesh test` checks it
    # too, but a backend health change during its run replaces the table and so its counters).
    st = labs.LabState.load(lab.tag)
    assert st is not None
    assert not udp_echo(st, "cluster1/default/x-wing-1", "cluster1/default/x-wing-0")
    seen_backends, drops = 0.0, 0.0
    for node in NODES:
        ns, address = where(lab, node)
        got, took = scrape(ns, address, 9963)
        print(f"\n[metrics] {node}: service daemon scrape {1000 * took:.0f} ms (curl in the namespace included)")
        seen_backends += sum(
            v
            for (name, labels), v in got.items()
            if name == "crossmesh_service_backends" and ("state", "healthy") in labels
        )
        assert got[("crossmesh_service_health_check_duration_seconds_count", ())] >= 0
        kinds = {labels for (name, labels), _ in got.items() if name == "crossmesh_policy_drops_packets_total"}
        assert (("direction", "ingress"), ("kind", "default")) in kinds, kinds
        drops += sum(v for (name, _), v in got.items() if name == "crossmesh_policy_drops_packets_total")
    assert seen_backends >= 1  # the example's services have healthy backends, each checked on its node
    assert drops >= 1  # the default deny counted the datagram
