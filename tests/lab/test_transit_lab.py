"""Seed 001's hub in the lab, what only a running lab shows: the daemons run where the plan puts them,
a daemon that fails to start is named with its log line and leaves no lab behind, and a second `lab up`
leaves running gateways alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from labkit import Lab, copy_example, crossmesh

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns

pytestmark = pytest.mark.lab

EXAMPLE = "hybrid-openstack-aws"


@pytest.fixture
def lab(tmp_path: Path):  # type: ignore[no-untyped-def]
    mesh, name = copy_example(tmp_path, EXAMPLE)
    made = Lab(mesh, name)
    yield made
    made.down()
    assert labs.leftovers(made.tag) == [], f"lab cm-{made.tag} left things behind"


def test_gateways_run_in_the_router_and_the_hub_and_a_second_up_leaves_them(lab: Lab) -> None:
    first = lab.up()
    started = [c for c in first["changes"] if "VPN gateway" in c]  # type: ignore[union-attr]
    assert len(started) == 2, started  # the hub's endpoints, then the customer gateway
    state = labs.LabState.load(lab.tag)
    assert state is not None
    _, topo = labs.topology_of(state)
    (link,) = topo.hubs.values()
    router = topo.site_ns["openstack"]
    # The customer gateway is the OpenStack router (seed 001's r1 with ipsec0), its BGP route to the VPC
    # points into tunnel 1; the hub's route table sends the OpenStack network back into tunnel 1.
    routes = netns.run(router, ["ip", "route", "show", "10.100.0.0/16"]).stdout
    assert "dev ipsec0" in routes and "proto bird" in routes, routes
    table = netns.run(link.namespace, ["ip", "route", "show", "table", "100"]).stdout
    assert "10.0.1.0/24 via 169.254.10.2 dev ipsec0 proto bird" in table, table
    assert "blackhole default" in table, table  # what the route table does not route is dropped
    pids = sorted(netns.pids(router) + netns.pids(link.namespace))
    assert len(pids) >= 6  # two charons and one BIRD at each end

    again = lab.up()
    assert not [c for c in again["changes"] if "VPN gateway" in c]  # type: ignore[union-attr]
    assert sorted(netns.pids(router) + netns.pids(link.namespace)) == pids


def test_a_daemon_that_fails_is_named_with_its_log_line_and_nothing_is_left(lab: Lab, tmp_path: Path) -> None:
    # BIRD refuses to start: a `bird` first on PATH that fails as BIRD does on a bad configuration.
    fake = tmp_path / "bin"
    fake.mkdir()
    script = fake / "bird"
    why = "bird: /etc/bird.conf:1:1 syntax error, unexpected CF_SYM_UNDEFINED"
    script.write_text(f'#!/bin/sh\necho "{why}" >&2\nexit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    done = crossmesh("lab", "up", str(lab.mesh), env=env)
    assert done.returncode != 0
    assert "bird in cm-" in done.stderr and "syntax error, unexpected CF_SYM_UNDEFINED" in done.stderr, done.stderr
    assert labs.leftovers(lab.tag) == []  # charons started before BIRD failed are gone too
