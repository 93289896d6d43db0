"""The agent's decisions on a fake dataplane (no root, no etcd, no wireguard-go): what it applies
from the records it read, what it refuses, when it starts handshakes, and what it leaves alone.
The lab tests (tests/lab/test_agents.py) prove the same against the kernel."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from crossmesh.agent import config as agent_config
from crossmesh.agent import dataplane, records
from crossmesh.agent.daemon import Agent
from crossmesh.kv.api import Entry
from crossmesh.workspace import compile_mesh

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "three-clouds"
ME, AZURE, GCP = "aws-talos-1", "azure-talos-1", "gcp-talos-1"


class World:
    """examples/three-clouds compiled in a temporary folder (with `keyRotation` when given): each
    node's config and record."""

    def __init__(self, tmp: Path, key_rotation: str | None = None) -> None:
        shutil.copytree(EXAMPLE, tmp / "mesh")
        if key_rotation is not None:
            mesh, keepalive = tmp / "mesh" / "mesh.yaml", "    persistentKeepalive: 25\n"
            mesh.write_text(mesh.read_text().replace(keepalive, f"{keepalive}    keyRotation: {key_rotation}\n", 1))
        self.compiled = compile_mesh(tmp / "mesh" / "mesh.yaml", None)
        self.tmp = tmp
        plan, store = self.compiled.plan, self.compiled.store
        self.pubs = store.public_keys([n.name for n in plan.nodes])
        self.records = {n.name: records.NodeRecord(**records.record_of(n, self.pubs[n.name])) for n in plan.nodes}
        self.intent = tmp / "intent.json"
        self.intent.write_text(records.encode_intent(records.intent_of(plan)))

    def config(self, node: str) -> agent_config.AgentConfig:
        return agent_config.build(
            self.compiled,
            node,
            namespace=None,
            ifname="wg-fake",
            etcd=[],
            ttl=2,
            status=self.tmp / f"{node}.status.json",
            wireguard_log=self.tmp / "wg.log",
            intent_path=self.intent,
        )

    def items(self, *nodes: str, rev: int = 10) -> list[Entry]:
        prefix = records.prefix(self.compiled.plan.mesh).encode()
        return [Entry(prefix + n.encode(), self.records[n].encode(), rev + i, rev + i, 1) for i, n in enumerate(nodes)]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def agent(world: World, node: str = ME) -> tuple[Agent, dataplane.Fake]:
    fake = dataplane.Fake()
    return Agent(world.config(node), fake), fake


def test_nothing_is_applied_before_etcd_was_read(world: World) -> None:
    """An agent started while etcd is down keeps the device as it found it (it used to empty it)."""
    a, fake = agent(world)
    a.apply()
    assert fake.reconciles == 0 and fake.table == {} and fake.pokes == []


def test_a_full_read_builds_the_device_and_routes(world: World) -> None:
    a, fake = agent(world)
    a.load(world.items(ME, AZURE, GCP))
    a.apply()
    assert set(fake.peers) == {world.pubs[AZURE], world.pubs[GCP]}
    azure = world.records[AZURE]
    peer = fake.peers[world.pubs[AZURE]]
    assert peer.endpoint == azure.endpoint
    # node addresses only: pods travel in the CNI's VXLAN between them (plan/datapath.py)
    assert set(peer.allowed_ips) == {f"{azure.tunnel_address}/32", f"{azure.address}/32"}
    assert len(fake.table) == 4 and set(fake.table.values()) == {"wg-fake"}
    assert fake.up and fake.mtu == world.config(ME).mtu and world.records[ME].tunnel_address in fake.addresses
    a.apply()
    assert fake.reconciles == 2 and len(fake.table) == 4  # a second apply changes nothing


def test_hostile_records_leave_the_device_alone(world: World) -> None:
    a, fake = agent(world)
    a.load(world.items(ME, AZURE, GCP))
    a.apply()
    before = (fake.peers, dict(fake.table))
    victim = world.pubs[GCP]
    hostile = {
        "aaa": json.dumps({**asdict(world.records[AZURE]), "name": "aaa", "listen_port": None}).encode(),
        "aaa-hijack": replace(
            world.records[AZURE], name="aaa-hijack", endpoint=f"203.0.113.9:1\n[Peer]\nPublicKey = {victim}"
        ).encode(),
        GCP: replace(world.records[GCP], pod_cidr="128.0.0.0/1").encode(),
    }
    for name, raw in hostile.items():
        a._take(name, raw)
    a.apply()
    assert (fake.peers, fake.table) == before
    assert set(a.rejected) == set(hostile)
    assert a.rejected[GCP].endswith("keeping its last good record")


def test_a_joining_node_is_taken_once_the_intent_names_it(world: World) -> None:
    """A record of a node the intent does not know is refused until the intent file names it (the
    lab rewrites it before a node joins); then it is a peer."""
    a, fake = agent(world)
    a.load(world.items(ME, AZURE))
    a.apply()
    intent = records.decode_intent(world.intent.read_text())
    gcp = intent.pop(GCP)
    world.intent.write_text(records.encode_intent(intent))
    a._reload_intent()
    a._take(GCP, world.records[GCP].encode())
    a.apply()
    assert world.pubs[GCP] not in fake.peers and "not in the mesh" in a.rejected[GCP]
    world.intent.write_text(records.encode_intent({**intent, GCP: gcp}))
    a._take(GCP, world.records[GCP].encode())  # the next event (or the maintain tick) reloads it
    a.apply()
    assert world.pubs[GCP] in fake.peers and GCP not in a.rejected


def test_the_older_node_initiates_a_join(world: World) -> None:
    """Between a node that joins and one already there, only the older record initiates at once: two
    initiations that cross both fail (WireGuard retries after 5 s)."""
    old, old_fake = agent(world, ME)
    old.load(world.items(ME, AZURE, rev=10))  # aws published at 10
    old.apply()
    old_fake.pokes.clear()
    old.created[GCP] = 50
    old._take(GCP, world.records[GCP].encode())
    old.apply()
    assert old_fake.pokes == [[world.records[GCP].tunnel_address]]

    # The joining node applies the whole mesh before it publishes: it pokes nobody (its peers, which
    # do not know its key yet, could not answer); the older nodes initiate once they learn of it.
    new, new_fake = agent(world, GCP)
    new.load(world.items(ME, AZURE, rev=10))
    new.apply()
    assert set(new_fake.peers) == {world.pubs[ME], world.pubs[AZURE]} and new_fake.pokes == []


def test_a_dead_device_is_restarted_and_reconfigured(world: World) -> None:
    a, fake = agent(world)
    a.namespace = "cm-fake"  # the lab: the agent owns wireguard-go
    a.load(world.items(ME, AZURE, GCP))
    a.apply()
    fake.alive = False
    assert a._check_device() is True and fake.starts == 1
    assert fake.peers == {}  # a new device
    a.apply()
    assert set(fake.peers) == {world.pubs[AZURE], world.pubs[GCP]}


def test_a_value_that_would_break_out_of_its_line_never_reaches_the_device() -> None:
    fake = dataplane.Fake()
    key = "A" * 43 + "="
    bad = dataplane.DeviceConf("", 51820, {key: dataplane.PeerConf(key, "192.0.2.1:1\nremove=true", (), 0)})
    with pytest.raises(ValueError, match="endpoint"):
        fake.reconcile(bad)
    assert fake.reconciles == 0


def test_the_configuration_round_trips_and_a_wrong_one_is_named(world: World) -> None:
    """The lab writes the agent's configuration as JSON and the agent process reads it back: the same
    typed data, and a file that is not one is refused naming its field (never a KeyError deep inside)."""
    from crossmesh.agent.config import AgentConfig, ConfigError

    cfg = world.config(ME)
    assert AgentConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    for broken, field in (
        ({**cfg.to_json(), "ttl": "3"}, "ttl"),
        ({**cfg.to_json(), "ttl": True}, "ttl"),
        ({**cfg.to_json(), "etcd": "http://x"}, "etcd"),
        ({k: v for k, v in cfg.to_json().items() if k != "node"}, "node"),
        ({**cfg.to_json(), "intent": {}}, "intent"),  # both intent and intentPath
    ):
        with pytest.raises(ConfigError, match=field):
            AgentConfig.from_json(broken)
    with pytest.raises(ConfigError, match="record"):
        Agent(AgentConfig.from_json({**cfg.to_json(), "record": {"nonsense": 1}}), dataplane.Fake())


def test_a_mesh_files_key_rotation_schedules_its_agent(tmp_path: Path) -> None:
    """`crossmesh agent MESH`: keyRotation comes from the mesh file (etcd-fed agents take their intent's)."""
    cfg = World(tmp_path / "rotating", "2h").config(ME)
    assert cfg.key_rotation == 7200 and agent_config.AgentConfig.from_json(cfg.to_json()) == cfg
    a = Agent(cfg, dataplane.Fake())
    period = a.schedule.period
    assert 0.9 * 7200 <= period <= 1.1 * 7200
    assert a.schedule.next_at == cfg.private_key_path.stat().st_mtime + period
    with pytest.raises(agent_config.ConfigError, match="keyRotation is not read with intentSource etcd"):
        replace(cfg, intent_source="etcd", record=None, keepalive=None, mtu=None, intent_path=None)
    # without keyRotation: only when asked (SIGUSR1)
    assert Agent(World(tmp_path / "plain").config(ME), dataplane.Fake()).schedule.next_at is None
