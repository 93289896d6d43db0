"""What a running lab is to be: its compiled mesh and its topology, as `up`, the service
daemon and the faults read them, and the digest of a namespace's spec."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from crossmesh.drivers.lab import topology
from crossmesh.drivers.lab.spec import Namespace
from crossmesh.drivers.lab.state import LAB_ROOT, LabError, LabState
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.policy.endpoints import mesh_index
from crossmesh.policy.evaluator import PolicyIndex
from crossmesh.workspace import Compiled, compile_mesh

APPLIED = "applied"  # the lab's folder of revisions the provisioner materialized


def namespace_digest(spec: Namespace) -> str:
    """What a namespace is to be brought to, as a digest (specs are frozen dataclasses of
    strings, numbers and addresses: their repr is stable)."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:16]


def policy_index(compiled: Compiled) -> PolicyIndex:
    """The policies of every cluster, read as `policy trace` reads them, for the data plane."""
    return mesh_index(compiled.plan, compiled.loaded.manifests)


def unhealthy_backends(tag: str) -> frozenset[str]:
    """Backends the running service daemon found dead, so that `up` keeps its tables."""
    try:
        data = json.loads((LAB_ROOT / f"cm-{tag}" / "health.json").read_text())
    except (OSError, ValueError):
        return frozenset()
    return frozenset(k for k, b in data.get("backends", {}).items() if not b.get("healthy", True))


def built_mesh(state: LabState) -> Path:
    """The mesh file the lab was last built from: the revision `crossmesh apply` published, which the
    provisioner wrote under the lab's folder, or the lab's own file. A lab.json naming a file elsewhere
    is refused: the lab's daemons and checks would enforce and expect what nobody applied."""
    if not state.built_from:
        return Path(state.mesh)
    path = Path(state.built_from)
    if not path.is_relative_to(state.dir / APPLIED) or ".." in path.parts:
        raise LabError(
            f"{state.dir / 'lab.json'}: built_from: {state.built_from!r} is not under {state.dir / APPLIED} — a "
            "damaged lab state file; bring the lab back to its mesh file with `crossmesh lab up MESH`"
        )
    return path


def compiled_of(state: LabState, active: Mapping[str, str] | None = None) -> Compiled:
    """The revision the running lab was last built from, compiled with the lab's own allocations,
    placements and membership changes; nothing is written. `active`: topology gateways, each site's
    active gateway as etcd names it (the checks'; the lab itself is built on the preferred ones)."""
    return compile_mesh(
        built_mesh(state),
        Path(state.state_dir),
        persist=False,
        overlay=state.overlay,
        placements=state.placements,
        active=active,
    )


def topology_of(state: LabState, active: Mapping[str, str] | None = None) -> tuple[Compiled, LabTopology]:
    """What the running lab is: the revision it was last built from, compiled with the lab's own
    allocations, placements and membership changes — what `up`, the service daemon, the faults and
    the checks all read (`active`: see `compiled_of`)."""
    compiled = compiled_of(state, active)
    return compiled, topology.build(
        compiled.plan,
        state.tag,
        unhealthy_backends(state.tag),
        policy_index(compiled),
        agent_routes=state.control_plane == "etcd",
        indices=state.indices or None,
        flow_logs=state.flow_logs,
    )
