"""The agent's /metrics, scraped over real HTTP from the server the agent's metrics module starts
(127.0.0.1, a free port), with values that went in through the agent's own hooks: its applies on a
fake dataplane, watch batches, etcd sessions and lease refreshes."""

from __future__ import annotations

import math
import shutil
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from crossmesh.agent import config as agent_config
from crossmesh.agent import dataplane, records
from crossmesh.agent.daemon import Agent
from crossmesh.drivers.lab.wireguard import PeerStats
from crossmesh.kv.api import Entry, Event
from crossmesh.observe import metrics as catalogue
from crossmesh.state import certs
from crossmesh.workspace import compile_mesh

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-clouds"
ME, AZURE, GCP = "aws-talos-1", "azure-talos-1", "gcp-talos-1"


class Node:
    """examples/three-clouds compiled in a temporary folder (keys rotate every 2 h), this node's agent
    on a fake device, with an etcd client certificate on disk."""

    def __init__(self, tmp: Path) -> None:
        shutil.copytree(EXAMPLE, tmp / "mesh")
        mesh, keepalive = tmp / "mesh" / "mesh.yaml", "    persistentKeepalive: 25\n"
        mesh.write_text(mesh.read_text().replace(keepalive, f"{keepalive}    keyRotation: 2h\n", 1))
        compiled = compile_mesh(mesh, None)
        plan, store = compiled.plan, compiled.store
        self.pubs = store.public_keys([n.name for n in plan.nodes])
        self.records = {n.name: records.NodeRecord(**records.record_of(n, self.pubs[n.name])) for n in plan.nodes}
        self.prefix = records.prefix(plan.mesh).encode()
        intent = tmp / "intent.json"
        intent.write_text(records.encode_intent(records.intent_of(plan)))
        self.ca = certs.new_ca(plan.mesh, datetime.now(UTC), purpose="etcd")
        cert = tmp / "etcd-client.crt"
        cert.write_text(certs.cert_pem(self.ca.cert))
        cfg = agent_config.build(
            compiled,
            ME,
            namespace=None,
            ifname="wg-fake",
            etcd=[],
            ttl=9,
            status=tmp / "status.json",
            wireguard_log=tmp / "wg.log",
            intent_path=intent,
            metrics="off",  # served by the test on a free port instead
        )
        tls = {"ca": str(cert), "cert": str(cert), "key": str(tmp / "unused.key")}
        self.fake = dataplane.Fake()
        self.agent = Agent(replace(cfg, tls=tls), self.fake)

    def entry(self, name: str, rev: int) -> Entry:
        return Entry(self.prefix + name.encode(), self.records[name].encode(), rev, rev, 1)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def scrape(node: Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    server = node.agent.metrics.serve("127.0.0.1", 0)
    try:
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            assert response.status == 200
            text = response.read().decode()
    finally:
        server.close()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_peers_handshakes_and_bytes_are_read_from_the_device_at_scrape_time(node: Node) -> None:
    a = node.agent
    a.load([node.entry(ME, 10), node.entry(AZURE, 11), node.entry(GCP, 12)])
    a.apply()
    node.fake.stats = {node.pubs[AZURE]: PeerStats(int(time.time()) - 30, 1500, 2500, "198.51.100.7:51820")}
    got = scrape(node)
    assert got[("crossmesh_wireguard_peers", ())] == 2
    age = got[("crossmesh_wireguard_peer_handshake_age_seconds", (("peer", AZURE),))]
    assert 29 <= age <= 35
    assert math.isinf(got[("crossmesh_wireguard_peer_handshake_age_seconds", (("peer", GCP),))])  # none yet
    assert got[("crossmesh_wireguard_peer_received_bytes_total", (("peer", AZURE),))] == 1500
    assert got[("crossmesh_wireguard_peer_transmitted_bytes_total", (("peer", AZURE),))] == 2500
    assert ("crossmesh_wireguard_peer_received_bytes_total", (("peer", GCP),)) not in got  # the device has none


def test_applies_watch_lag_and_etcd_hooks(node: Node) -> None:
    a, m = node.agent, node.agent.metrics
    a.load([node.entry(ME, 10), node.entry(AZURE, 11)])
    a.apply()
    m.watched(a.record_events)([Event("put", node.entry(GCP, 12))])  # as session.follow delivers it
    time.sleep(0.02)
    a.apply()  # takes the event: its lag ends here

    class Refusing(dataplane.Fake):
        def reconcile(self, desired: object) -> list[str]:
            raise RuntimeError("device refused")

    a.dp, a.applied_private = Refusing(), None
    with pytest.raises(RuntimeError):
        a.apply()
    for _ in range(3):
        m.etcd_session()
    m.lease_granted(9)
    m.lease_renewed(time.monotonic())
    got = scrape(node)
    assert got[("crossmesh_applies_total", (("outcome", "success"),))] == 2
    assert got[("crossmesh_applies_total", (("outcome", "failure"),))] == 1
    assert got[("crossmesh_reconcile_duration_seconds_count", ())] == 3
    assert got[("crossmesh_etcd_watch_lag_seconds_count", ())] == 1
    assert 0.02 <= got[("crossmesh_etcd_watch_lag_seconds_sum", ())] < 5
    assert got[("crossmesh_etcd_reconnects_total", ())] == 2  # three sessions: two reconnects
    assert got[("crossmesh_etcd_lease_renewals_total", ())] == 1
    assert 8 < got[("crossmesh_etcd_lease_ttl_remaining_seconds", ())] <= 9


def test_rotation_certificate_and_gateways(node: Node) -> None:
    a = node.agent
    a.chosen = {"aws": ME, "azure": AZURE}
    a.failover.takeovers = 2
    got = scrape(node)
    assert got[("crossmesh_key_rotation_next_timestamp_seconds", ())] == a.schedule.next_at
    assert got[("crossmesh_key_rotation_next_timestamp_seconds", ())] > time.time() + 3600
    expiry = got[("crossmesh_certificate_expiry_timestamp_seconds", (("cert", "etcd-client"),))]
    assert expiry == node.ca.cert.not_valid_after_utc.timestamp()
    assert got[("crossmesh_gateway_active", (("gateway", AZURE), ("site", "azure")))] == 1
    assert got[("crossmesh_gateway_takeovers_total", ())] == 2
    assert got[("crossmesh_etcd_lease_ttl_remaining_seconds", ())] == 0  # no lease yet


def test_every_served_series_is_in_the_catalogue(node: Node) -> None:
    """The dashboard is checked against the catalogue: the agent serves nothing outside it."""
    a = node.agent
    a.load([node.entry(ME, 10), node.entry(AZURE, 11)])
    a.apply()
    node.fake.stats = {node.pubs[AZURE]: PeerStats(int(time.time()), 1, 1, None)}
    a.chosen = {"aws": ME}
    names = {name for name, _ in scrape(node)}  # no `*_created` series either: exposition turns them off
    assert names <= catalogue.SERIES
    agent_series = {s for m in catalogue.CATALOGUE if m.source is catalogue.Source.AGENT for s in m.series}
    assert agent_series == names  # and everything the catalogue gives the agent is served


def test_the_metrics_address_is_checked_with_the_configuration(node: Node) -> None:
    cfg = node.agent.cfg
    assert replace(cfg, metrics=":9962").metrics_listen == ("", 9962)
    assert replace(cfg, metrics="10.1.0.5:9962").metrics_listen == ("10.1.0.5", 9962)
    assert replace(cfg, metrics="off").metrics_listen is None
    assert replace(cfg, metrics="10.1.0.5:0").metrics_listen is None  # port 0: not served
    back = agent_config.AgentConfig.from_json({**cfg.to_json(), "metricsAddress": "10.1.0.5:9962"})
    assert back.metrics == "10.1.0.5:9962"
    assert (
        agent_config.AgentConfig.from_json({k: v for k, v in cfg.to_json().items() if k != "metricsAddress"}).metrics
        == ":9962"
    )
    for bad in ("9962", "node-a:9962", "10.1.0.5:99999", "10.1.0.5:"):
        with pytest.raises(agent_config.ConfigError, match=r"metricsAddress .* is not HOST:PORT, :PORT or off"):
            replace(cfg, metrics=bad)
