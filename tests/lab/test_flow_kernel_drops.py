"""Drops no rule makes, on a real lab: a packet too big for the path (FRAG_NEEDED) and one for a
neighbour that never answers (NO_ROUTE) are refused by the node's forwarding, which answers with
an ICMP error; the node's output hook logs that error and the flow daemon records the refused
flow — its sender, destination and ports, with the path MTU — read here through the relay.

examples/three-clouds: the pods' MTU is the VXLAN path's (1330, the plan's), so a pod cannot send
the node anything too big: its own stack refuses (EMSGSIZE) and the node sees nothing. The node
refuses what arrives bigger than the path from an interface with a larger MTU: here the pod's
veth pair raised to 1500 (a pod whose MTU is not the plan's, as with a CNI that ignores it).
Default deny everywhere: x-wing is given a policy to send UDP 9999 to two addresses outside the
mesh, one unused in its node's site network, one private and routed nowhere."""

from __future__ import annotations

import errno
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from labkit import Lab, copy_example

from crossmesh.checks.probes import IP_MTU_DISCOVER, IP_PMTUDISC_DO
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns, relay_client
from crossmesh.drivers.lab.desired import topology_of
from crossmesh.observe.flows import DropReason, Flow, Verdict

CLIENT, SERVER = "cluster1/default/x-wing-0", "cluster2/default/rebel-base-0"
PORT = 9999
NO_NEIGHBOUR, NOWHERE = "10.0.1.99", "172.20.0.1"  # aws-sg's site network; no network of the mesh
OUTSIDE = f"""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: x-wing-outside
  namespace: default
spec:
  endpointSelector:
    matchLabels: {{name: x-wing}}
  egress:
    - toCIDR: [{NO_NEIGHBOUR}/32, {NOWHERE}/32]
      toPorts:
        - ports:
            - {{port: "{PORT}", protocol: UDP}}
"""
IP_MTU = 14  # linux/in.h: a connected socket's path MTU


def send(ns: str, dst: str, sport: int, size: int = 5) -> tuple[int, int]:
    """One UDP datagram of `size` bytes of IP with DF set, from `ns`, source port `sport`: (errno or 0,
    the socket's path MTU after it)."""

    def go() -> tuple[int, int]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("", sport))
            s.connect((dst, PORT))
            try:
                s.send(b"x" * (size - 28))
                err = 0
            except OSError as e:
                err = e.errno or -1
            time.sleep(0.2)  # the node's answer, if any, updates the path MTU
            return err, s.getsockopt(socket.IPPROTO_IP, IP_MTU)

    return netns.run_in(ns, go)


def wait_for(st: labs.LabState, since: float, found: Callable[[list[Flow]], bool], timeout: float = 10) -> list[Flow]:
    deadline = time.monotonic() + timeout
    while True:
        flows = relay_client.snapshot(relay_client.socket_path(st.dir), since=since).flows
        if found(flows) or time.monotonic() > deadline:
            return flows
        time.sleep(0.3)


def drops(flows: list[Flow], reason: DropReason, sport: int) -> list[Flow]:
    return [f for f in flows if f.verdict is Verdict.DROPPED and f.drop_reason is reason and f.source_port == sport]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    mesh, name = copy_example(tmp_path, "three-clouds")
    (mesh.parent / "apps" / "cluster1" / "x-wing-outside.yaml").write_text(OUTSIDE)
    lab = Lab(mesh, name, tag="e502")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
        assert labs.leftovers(lab.tag) == [], f"lab cm-{lab.tag} left things behind"


@pytest.mark.lab
def test_packets_too_big_for_the_path_and_without_a_neighbour_are_recorded_as_the_refused_flow(lab: Lab) -> None:
    st = labs.LabState.load(lab.tag)
    assert st is not None
    plan, topo = topology_of(st)[0].plan, topology_of(st)[1]
    client, server = st.pods[CLIENT], st.pods[SERVER]
    node = plan.node(client.node)
    assert node.vxlan is not None
    path_mtu, pod_mtu = node.vxlan.mtu.value, node.pod_mtu.value
    assert pod_mtu == path_mtu == 1330  # the plan's: the pod's MTU is the smallest path's
    start = time.time() - 1

    # --- with the plan's MTU the pod's own stack refuses: the node never sees the packet ----------
    assert send(client.namespace, str(server.address), 41000, size=pod_mtu + 1) == (errno.EMSGSIZE, pod_mtu)

    # --- a pod whose interface is bigger than the path: the node refuses, and says so --------------
    ep = topo.pod(CLIENT)
    node_side = next(link.ifname for link in topo.namespace(ep.node_namespace).links if link.peer == ep.ifname)
    for ns, ifname in ((ep.namespace, ep.ifname), (ep.node_namespace, node_side)):
        subprocess.run(["ip", "-n", ns, "link", "set", ifname, "mtu", "1500"], check=True)
    sent, learned = send(client.namespace, str(server.address), 41001, size=1400)
    assert sent == 0, "the pod's 1500-byte interface lets 1400 bytes go"
    assert learned == path_mtu, "the node's fragmentation-needed reached the pod (path MTU discovery works)"

    flows = wait_for(st, start, lambda fs: bool(drops(fs, DropReason.MTU, 41001)))
    (mtu,) = drops(flows, DropReason.MTU, 41001)
    assert (mtu.node, mtu.protocol) == (client.node, "UDP"), mtu.summary
    assert (mtu.source.ref, mtu.destination.ref, mtu.destination_port) == (CLIENT, SERVER, PORT), mtu.summary
    assert mtu.tunnel is not None and mtu.tunnel.peer == server.node, mtu.summary
    assert f"1400 bytes with DF set; {path_mtu} is the path MTU" in mtu.summary, mtu.summary
    assert not drops(flows, DropReason.MTU, 41000), "the packet the pod refused itself is nobody's drop"
    # Refused before the forward hook: no FORWARDED record of it either.
    assert not [f for f in flows if f.source_port == 41001 and f.verdict is Verdict.FORWARDED]

    # --- no route: a private address the mesh does not have goes to the site router, which drops it -
    assert send(client.namespace, NOWHERE, 41002)[0] == 0
    # --- no neighbour: an unused address of the node's site network never answers ARP ------------
    assert send(client.namespace, NO_NEIGHBOUR, 41003)[0] == 0

    def both(fs: list[Flow]) -> bool:
        return bool(drops(fs, DropReason.NO_ROUTE, 41002) and drops(fs, DropReason.NO_ROUTE, 41003))

    flows = wait_for(st, start, both, timeout=15)  # the kernel gives up on ARP after 3 probes, 1 s apart
    (routed,) = drops(flows, DropReason.NO_ROUTE, 41002)
    assert routed.node == f"router/{node.site}", "the node has a default route: its site router drops it"
    assert (routed.source.ref, routed.destination.address) == (CLIENT, NOWHERE)
    (neighbour,) = drops(flows, DropReason.NO_ROUTE, 41003)
    assert (neighbour.node, neighbour.source.ref, neighbour.destination.address) == (
        client.node,
        CLIENT,
        NO_NEIGHBOUR,
    )
    assert neighbour.destination_port == PORT and "no answer to ARP" in neighbour.summary, neighbour.summary
    assert IPv4Address(NO_NEIGHBOUR) in plan.site(node.site).network
