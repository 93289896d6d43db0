"""Starting the lab's daemons from `up`: the service daemon (servicesd.py) with the pods'
resolv.conf, and the flow daemon (flowsd.py); each (re)started when what it reads of the plan,
the policies or its own code changed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crossmesh.drivers import nflog
from crossmesh.drivers.lab import dns, flowrelay, flowsd, l7log, reconcile, servicenat, servicesd
from crossmesh.drivers.lab.processes import alive, stop_group
from crossmesh.drivers.lab.state import LabError, LabState
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.model.plan import Plan
from crossmesh.observe import codes, enrich, l7, ring, wire
from crossmesh.plan.serialize import plan_json

SERVICES_START = 30.0  # seconds for the service daemon to start and write its first health file
FLOWS_START = 30.0  # seconds for the flow daemon to open every node's NFLOG socket and its relay


def plan_services_view(plan: Plan) -> list[Any]:
    """What the service daemon depends on: services, their backends and ClusterIPs, pods, nodes."""
    data = plan_json(plan)
    return [
        [c["name"], c["services"], [(p["ref"], p["address"], p["node"]) for p in c["pods"]], c["nodes"]]
        for c in data["clusters"]
    ]


def resolv_conf(plan: Plan, topo: LabTopology) -> dict[str, str]:
    """/etc/netns/<pod namespace>/resolv.conf for every pod: the node's address as resolver."""
    out = {}
    for ep in topo.pods:
        node = plan.node(ep.pod.node)
        server = node.pod_cidr.network_address + 1
        ns = ep.pod.namespace
        out[ep.namespace] = (
            f"# crossmesh lab: pod {ep.pod.ref}\n"
            f"nameserver {server}\n"
            f"search {ns}.svc.cluster.local svc.cluster.local cluster.local\n"
            "options ndots:5 timeout:1 attempts:2\n"
        )
    return out


def start_services(state: LabState, topo: LabTopology, plan: Plan, manifests: dict[str, list[Any]]) -> list[str]:
    # The daemon rewrites node tables with its own reading of the policies: a new one restarts it.
    policies = sorted(json.dumps(m.raw, sort_keys=True) for ms in manifests.values() for m in ms)

    changes = []
    for ns, text in resolv_conf(plan, topo).items():
        path = Path("/etc/netns") / ns / "resolv.conf"
        if path.exists() and path.read_text() == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        changes.append(f"{ns}: resolv.conf")
    # A new daemon (its names and its tables included) restarts it too.
    code = hashlib.sha256(
        b"".join(
            Path(f).read_bytes()
            for f in (servicesd.__file__, dns.__file__, servicenat.__file__, l7log.__file__, l7.__file__)
        )
    ).hexdigest()
    digest = reconcile.nft_digest(
        json.dumps(
            [plan_services_view(plan), dataclasses.asdict(plan.health), code, policies, state.flow_logs],
            sort_keys=True,
            default=str,
        )
    )  # it rewrites node tables with the lab's flow logs on or off: turning them restarts it
    if alive(state.services_pid) and state.services_digest == digest:
        return changes
    if alive(state.services_pid):
        stop_group(state.services_pid)
        changes.append("service daemon stopped (the services changed)")
    proc, log = _spawn(state, "servicesd")
    state.services_pid = proc.pid
    state.services_digest = digest
    state.save()
    deadline = time.monotonic() + SERVICES_START  # importing crossmesh alone took 5 s at load 15–24
    while not (state.dir / "health.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the service daemon did not start; see {log}")
        time.sleep(0.02)
    changes.append("service daemon started")
    return changes


def _spawn(state: LabState, daemon: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`python -m crossmesh.drivers.lab.<daemon> LAB_DIR` in a session of its own (stopped as a
    group), its output appended to logs/<daemon>.log."""
    log = state.dir / "logs" / f"{daemon}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"crossmesh.drivers.lab.{daemon}", str(state.dir)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc, log


def start_flows(state: LabState, topo: LabTopology, plan: Plan, manifests: dict[str, list[Any]]) -> list[str]:
    """The flow daemon, (re)started when the nodes, pods, services, policies or its code changed
    (it names flows by them); `up` returns once its relay socket, flows.sock, is there. A lab whose
    flow logs are off runs none: a running one is stopped."""
    if not state.flow_logs:
        return stop_flows(state)
    policies = sorted(json.dumps(m.raw, sort_keys=True) for ms in manifests.values() for m in ms)
    modules = (flowsd, flowrelay, nflog, codes, enrich, ring, wire, l7, l7log)
    code = hashlib.sha256(b"".join(Path(str(m.__file__)).read_bytes() for m in modules)).hexdigest()
    digest = reconcile.nft_digest(
        json.dumps(
            [plan_services_view(plan), sorted(topo.node_ns.items()), sorted(topo.site_ns.items()), code, policies],
            sort_keys=True,
        )
    )
    sock = state.dir / "flows.sock"
    if alive(state.flows_pid) and state.flows_digest == digest and sock.exists():
        return []
    changes = []
    if alive(state.flows_pid):
        stop_group(state.flows_pid)
        changes.append("flow daemon stopped (the plan or the policies changed)")
    sock.unlink(missing_ok=True)
    proc, log = _spawn(state, "flowsd")
    state.flows_pid = proc.pid
    state.flows_digest = digest
    state.save()
    deadline = time.monotonic() + FLOWS_START
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the flow daemon did not start; see {log}")
        time.sleep(0.02)
    changes.append("flow daemon started")
    return changes


def stop_flows(state: LabState) -> list[str]:
    """The flow daemon stopped and its socket gone (flow logs turned off): `crossmesh observe` then
    says the lab records no flows rather than reading a relay nothing feeds."""
    changes = []
    if alive(state.flows_pid):
        stop_group(state.flows_pid)
        changes.append("flow daemon stopped (flow logs are off)")
    (state.dir / "flows.sock").unlink(missing_ok=True)
    if state.flows_pid or state.flows_digest:
        state.flows_pid, state.flows_digest = 0, ""
        state.save()
    return changes
