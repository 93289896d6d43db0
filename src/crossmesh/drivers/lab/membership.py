"""Membership changes of a running lab: `add-node` and `remove-node` change the lab's
overlay on the mesh file and bring only the namespaces that changed to the new plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossmesh.drivers.lab.desired import built_mesh
from crossmesh.drivers.lab.state import LabState, Progress, find_lab, quiet
from crossmesh.drivers.lab.up import UpResult, up
from crossmesh.errors import UsageError


def add_node(mesh: Path | None, node: dict[str, Any], cluster: str, progress: Progress = quiet) -> UpResult:
    """Add a node to the running lab; returns once every tunnel (its own too) has a handshake."""
    state = find_lab(mesh)
    if node["name"] in state.nodes:
        raise UsageError(f"node {node['name']} is already in lab {state.mesh_name}")
    if node.get("site") in state.cut_sites:
        raise UsageError(
            f"site {node['site']} is cut off from the internet (lab cut-site): a node there could not reach "
            f"its peers — heal it first with `crossmesh lab heal-site {node['site']}`"
        )
    overlay = {"add": list(state.overlay.get("add", [])), "remove": list(state.overlay.get("remove", []))}
    if node["name"] in overlay["remove"]:
        overlay["remove"].remove(node["name"])
    overlay["add"].append({"cluster": cluster, "node": node})
    return _up(state, overlay, progress)


def remove_node(mesh: Path | None, name: str, progress: Progress = quiet) -> UpResult:
    state = find_lab(mesh)
    if name not in state.nodes:
        raise UsageError(f"no node {name} in lab {state.mesh_name}")
    added = [e for e in state.overlay.get("add", []) if e["node"]["name"] != name]
    removed = list(state.overlay.get("remove", []))
    if len(added) == len(state.overlay.get("add", [])):
        removed.append(name)
    return _up(state, {"add": added, "remove": removed}, progress)


def _up(state: LabState, overlay: dict[str, Any], progress: Progress) -> UpResult:
    """The change on what the lab was last built from (an applied revision stays the base)."""
    source = built_mesh(state) if state.built_from else None
    return up(
        Path(state.mesh), Path(state.state_dir), overlay=overlay, changed_only=True, progress=progress, source=source
    )
