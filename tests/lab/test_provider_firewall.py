"""The site routers enforce the provider prerequisites: a rule deleted from the data leaves its tunnel
without traffic, as a missing security-group rule would, and putting it back restores it.

The hybrid example: openstack-worker is behind NAT, so it is always the side that sends first to
aws-worker-1, whose site admits it only by the rule `wireguard-from-behind-nat` (0.0.0.0/0: its
NAT's address is not in the mesh file). Firewalls are stateful, so the router's connection tracking
is flushed after the rule goes: what the tunnel sent before must not keep it open."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import replace

from labkit import Lab

from crossmesh.checks import probes
from crossmesh.checks.results import Result
from crossmesh.drivers.lab import netns, reconcile, topology
from crossmesh.drivers.lab.desired import topology_of
from crossmesh.drivers.lab.servicesd import ECHO_PORT
from crossmesh.drivers.lab.state import LabState
from crossmesh.plan import prerequisites

RULE = "wireguard-from-behind-nat"


def _flush_conntrack(namespace: str) -> None:
    code = "from pyroute2 import NFCTSocket; NFCTSocket().flush()"
    done = netns.run(namespace, [sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr


def _dropped(namespace: str) -> int:
    """Packets the router's firewall dropped as unsolicited from the internet."""
    listed = netns.run(namespace, ["nft", "list", "chain", "ip", "crossmesh", "forward"]).stdout
    found = re.search(r"counter packets (\d+) bytes \d+ drop comment \"unsolicited-from-internet\"", listed)
    assert found is not None, listed
    return int(found.group(1))


def test_a_rule_deleted_from_the_prerequisites_cuts_the_tunnel(make_lab: Callable[[str], Lab]) -> None:
    lab = make_lab("tests/meshes/hybrid-wireguard")
    lab.up()
    state = LabState.load(lab.tag)
    assert state is not None
    compiled, topo = topology_of(state)
    plan = compiled.plan
    client = topo.node_ns["openstack-worker"]
    target = plan.node("aws-worker-1").tunnel
    assert target is not None

    def echo() -> Result:
        return probes.udp_echo(client, str(target.address), ECHO_PORT, timeout=2)[0]

    assert echo() is Result.OK
    router = topo.site_ns["aws"]
    full = {p.site.name: p for p in prerequisites.derive(plan)}
    aws = full["aws"]
    assert RULE in {r.name for r in aws.inbound}
    cut = {**full, "aws": replace(aws, inbound=tuple(r for r in aws.inbound if r.name != RULE))}
    without = topology.build(plan, lab.tag, indices=state.indices, prerequisites=cut).namespace(router)
    try:
        assert reconcile.nft_only(without)
        _flush_conntrack(router)
        dropped = _dropped(router)
        assert echo() is not Result.OK, "the tunnel still carries traffic with its firewall rule gone"
        assert _dropped(router) > dropped, "the router's firewall did not drop it"
    finally:
        reconcile.nft_only(topo.namespace(router))
    assert echo() is Result.OK  # the rule back: the next packet of the tunnel passes
