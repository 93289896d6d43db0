"""A broken gateway, staged on the golden gateways mesh (no agents: the planner's active gateway
carries its site): `lab stop-forwarding` (alive but not forwarding) and `lab cut-uplink` (its path
to the internet cut at its site router) each cut the site's other nodes off the other site while
the gateway itself still answers on its own address; `lab heal-node` and a plain `lab up` undo
them. One lab for the module, brought down by its own tag."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from agentkit import http_ok, lab_status, udp_answers, until
from labkit import Lab, copy_example, crossmesh

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns

SITE = "dc-east"  # two gateways: the public one is active although the other sorts first by name
ECHO_PORT = 4795


@dataclass(frozen=True)
class World:
    lab: Lab
    gateway: str  # the active gateway of SITE
    gateway_address: str
    worker: str  # a node of SITE that is no gateway, hosting a pod
    remote: str  # a node of another site that is no gateway, hosting a pod
    remote_address: str
    pod: str  # on `worker`
    remote_pod: str  # on `remote`
    port: int  # `remote_pod`'s HTTP port


class _Echo:
    """A UDP echo on every address of one namespace: what a node answers with, on its own address."""

    def __init__(self, namespace: str) -> None:
        def bound() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", ECHO_PORT))  # noqa: S104 - inside the lab's namespace
            s.settimeout(0.1)
            return s

        self.sock = netns.run_in(namespace, bound)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(OSError):
                data, peer = self.sock.recvfrom(64)
                self.sock.sendto(data, peer)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)
        self.sock.close()


def _answers(namespace: str, address: str) -> bool:
    """One datagram from `namespace` to `address`'s echo: did it come back?"""
    return udp_answers(namespace, address, ECHO_PORT, timeout=0.5)


def _never(check: Callable[[], bool], tries: int = 3) -> bool:
    """`check` failed `tries` times in a row (one lost datagram on a loaded machine proves no cut)."""
    return not any(check() for _ in range(tries))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    mesh, name = copy_example(tmp_path_factory.mktemp("gateway-faults"), "tests/golden/gateways")
    lab = Lab(mesh, name)
    echoes: list[_Echo] = []
    try:
        lab.up()
        plan = json.loads(crossmesh("plan", str(mesh), "-o", "json", "--dry-run", check=True).stdout)["plan"]
        nodes = {n["name"]: n for n in plan["nodes"]}
        gateways = [n for n in nodes.values() if n["site"] == SITE and n["gateway"]]
        # The planner's choice: public first, then by name.
        active = sorted(gateways, key=lambda n: (n.get("publicAddress") is None, n["name"]))[0]
        st = labs.LabState.load(lab.tag)
        assert st is not None
        hosts = {p.node: ref for ref, p in sorted(st.pods.items())}
        worker = next(n for n in sorted(nodes) if nodes[n]["site"] == SITE and not nodes[n]["gateway"] and n in hosts)
        remote = next(n for n in sorted(nodes) if nodes[n]["site"] != SITE and not nodes[n]["gateway"] and n in hosts)
        assert {r["gateway"] for r in nodes[worker]["routes"]} == {active["address"]}  # what the planner says
        port = next(p for p, proto in st.pods[hosts[remote]].ports if proto == "TCP")
        w = World(
            lab, active["name"], active["address"], worker, remote, nodes[remote]["address"], hosts[worker],
            hosts[remote], port,
        )  # fmt: skip
        echoes += [_Echo(st.nodes[w.gateway]), _Echo(st.nodes[w.remote])]
        yield w
    finally:
        for e in echoes:
            e.close()
        lab.down()
        assert labs.leftovers(lab.tag) == [], f"lab cm-{lab.tag} left things behind"


@pytest.fixture(autouse=True)
def _healed_after(world: World) -> Iterator[None]:
    """A test that failed half-way leaves no fault to the next."""
    yield
    crossmesh("lab", "heal-node", world.gateway, "--mesh", str(world.lab.mesh))


def _state(w: World) -> labs.LabState:
    st = labs.LabState.load(w.lab.tag)
    assert st is not None
    return st


def _reaches_remote(w: World) -> bool:
    """the worker reaches the remote node, and its pod the remote pod"""
    st = _state(w)
    return _answers(st.nodes[w.worker], w.remote_address) and http_ok(st, w.pod, w.remote_pod, w.port)


def _cut_off(w: World) -> bool:
    """the worker reaches neither the remote node nor, from its pod, the remote pod"""
    st = _state(w)
    return _never(lambda: _answers(st.nodes[w.worker], w.remote_address)) and _never(
        lambda: http_ok(st, w.pod, w.remote_pod, w.port)
    )


def _gateway_answers(w: World, source: str) -> bool:
    """the gateway answers on its own address, asked from node `source`"""
    return _answers(_state(w).nodes[source], w.gateway_address)


def _fault(w: World, command: str, *, changed: bool) -> list[str]:
    done = crossmesh("lab", command, w.gateway, "--mesh", str(w.lab.mesh), check=True)
    lines = done.stdout.strip().splitlines()
    assert ("nothing changed" not in lines[-1]) == changed, done.stdout
    assert len(lines) > 1 if changed else len(lines) == 1, done.stdout
    return lines


def _node_row(w: World) -> dict[str, object]:
    row: dict[str, object] = next(n for n in lab_status(w.lab.mesh)["nodes"] if n["node"] == w.gateway)
    return row


def _healed(w: World, started: float) -> float:
    """Seconds from `started` until the worker reaches the remote site again (at most 15)."""
    until(lambda: _reaches_remote(w), 15, interval=0.05)
    return time.monotonic() - started


def test_the_active_gateway_carries_the_site(world: World) -> None:
    assert (world.gateway, world.worker, world.remote) == ("gw-east-2", "east-worker-1", "west-worker-1")
    until(lambda: _reaches_remote(world), 15)
    assert _gateway_answers(world, world.worker) and _gateway_answers(world, world.remote)


def test_a_gateway_that_stops_forwarding_cuts_its_site_off_but_answers_itself(world: World) -> None:
    w = world
    lines = _fault(w, "stop-forwarding", changed=True)
    assert "net.ipv4.ip_forward=0" in lines[0] and lines[-1] == f"node {w.gateway} stopped forwarding"
    assert _cut_off(w)
    # Alive: it answers on its own address, on its site network and over its tunnel from the other site.
    assert until(lambda: _gateway_answers(w, w.worker), 5)[0] and until(lambda: _gateway_answers(w, w.remote), 5)[0]
    st = _state(w)
    assert netns.read_sysctl(st.nodes[w.gateway], "net/ipv4/ip_forward") == "0"
    assert all(netns.read_sysctl(ns, "net/ipv4/ip_forward") == "1" for n, ns in st.nodes.items() if n != w.gateway)
    assert st.stopped_forwarding == [w.gateway]
    row = _node_row(w)
    assert (row["forwarding"], row["stoppedForwarding"], row["uplink"]) == (False, True, "up"), row
    _fault(w, "stop-forwarding", changed=False)  # idempotent

    started = time.monotonic()
    lines = _fault(w, "heal-node", changed=True)
    assert lines[-1] == f"node {w.gateway} healed"
    print(f"stop-forwarding healed: traffic back {_healed(w, started):.2f} s after heal-node was issued")
    assert _state(w).stopped_forwarding == [] and _node_row(w)["forwarding"] is True
    _fault(w, "heal-node", changed=False)


def test_a_gateway_cut_at_its_uplink_cuts_its_site_off_but_answers_on_the_site(world: World) -> None:
    w = world
    lines = _fault(w, "cut-uplink", changed=True)
    assert "crossmesh_faults" in lines[0] and lines[-1] == f"node {w.gateway} cut off at its site router"
    assert _cut_off(w)
    assert until(lambda: _gateway_answers(w, w.worker), 5)[0]  # still on its site network
    assert _never(lambda: _gateway_answers(w, w.remote))  # but not from the internet side
    st = _state(w)
    assert st.cut_uplinks == [w.gateway] and netns.read_sysctl(st.nodes[w.gateway], "net/ipv4/ip_forward") == "1"
    row = _node_row(w)
    assert (row["forwarding"], row["uplink"], row["uplinkCut"]) == (True, "cut", True), row
    _fault(w, "cut-uplink", changed=False)

    started = time.monotonic()
    lines = _fault(w, "heal-node", changed=True)
    assert lines[-1] == f"node {w.gateway} healed"
    print(f"cut-uplink healed: traffic back {_healed(w, started):.2f} s after heal-node was issued")
    assert _state(w).cut_uplinks == [] and _node_row(w)["uplink"] == "up"
    assert until(lambda: _gateway_answers(w, w.remote), 5)[0]
    _fault(w, "heal-node", changed=False)


def test_a_plain_lab_up_heals_both(world: World) -> None:
    w = world
    _fault(w, "stop-forwarding", changed=True)
    _fault(w, "cut-uplink", changed=True)
    assert _cut_off(w)
    changes = w.lab.up()["changes"]
    assert isinstance(changes, list)
    st = _state(w)
    assert f"{st.nodes[w.gateway]}: sysctl net/ipv4/ip_forward=1" in changes, changes
    assert any("crossmesh_faults removed" in c for c in changes), changes
    assert (st.stopped_forwarding, st.cut_uplinks) == ([], [])
    print(f"lab up healed: traffic back {_healed(w, time.monotonic()):.2f} s after it returned")
    assert w.lab.up()["changes"] == []  # and a second one finds nothing to do
    _fault(w, "heal-node", changed=False)


def test_a_membership_change_keeps_both(world: World) -> None:
    """add-node and remove-node bring only what changed to the plan: the gateway stays stopped (its
    ip_forward never 1, sampled all along) and cut, and the records stay."""
    w = world
    _fault(w, "stop-forwarding", changed=True)
    _fault(w, "cut-uplink", changed=True)
    st = _state(w)
    namespace = st.nodes[w.gateway]
    seen: set[str] = set()
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            seen.add(netns.read_sysctl(namespace, "net/ipv4/ip_forward"))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        m = ("--mesh", str(w.lab.mesh))
        crossmesh("lab", "add-node", *m, "--cluster", "core", "--site", "aws-west", "--name", "joiner-9",
                  "--address", "10.40.1.99", check=True)  # fmt: skip
        st = _state(w)
        assert "joiner-9" in st.nodes and (st.stopped_forwarding, st.cut_uplinks) == ([w.gateway], [w.gateway])
        assert _cut_off(w)
        crossmesh("lab", "remove-node", *m, "joiner-9", check=True)
    finally:
        sampling.set()
        sampler.join(timeout=5)
    st = _state(w)
    assert "joiner-9" not in st.nodes and (st.stopped_forwarding, st.cut_uplinks) == ([w.gateway], [w.gateway])
    assert seen == {"0"}, seen
    row = _node_row(w)
    assert (row["forwarding"], row["uplink"]) == (False, "cut"), row
    assert _cut_off(w)
    _fault(w, "heal-node", changed=True)
    _healed(w, time.monotonic())


def test_the_faults_need_a_node_of_the_lab(world: World) -> None:
    done = crossmesh("lab", "cut-uplink", "mars", "--mesh", str(world.lab.mesh))
    text = " ".join(done.stderr.split())
    assert done.returncode == 2 and f"no node mars in lab {world.lab.name} — its nodes are: east-worker-1," in text
