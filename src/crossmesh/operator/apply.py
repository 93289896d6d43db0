"""`apply`, `diff` and `status` against the store: publish a validated mesh as the next desired
revision (only if nobody applied meanwhile), compare a mesh with the applied one, and read the
rollout back — which nodes run which revision, which failed and why."""

from __future__ import annotations

import contextlib
import difflib
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crossmesh.agent import intents as agent_intents
from crossmesh.agent import records
from crossmesh.agent.gateways import GatewayError, decode_active
from crossmesh.errors import CrossmeshError, Refused, SpecError
from crossmesh.ipam.allocate import Allocations
from crossmesh.kv.api import Compare, Kv, Put
from crossmesh.kv.layout import Layout
from crossmesh.load.mesh import load_mesh_model
from crossmesh.operator import desired as desired_mod
from crossmesh.operator import ipam, publish
from crossmesh.plan import peers as peer_rule
from crossmesh.workspace import plan_against

# A node without a tunnel (topology gateways) publishes no record: it is online while its status is
# this fresh (agents report with every lease refresh, a third of their TTL).
ROUTES_ONLY_FRESH = 30.0


class ApplyConflict(Refused):
    """Another apply landed between our read and our write: nothing was changed."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """A mesh file validated against what the store holds, ready to be applied."""

    files: dict[str, str]
    mesh: str
    mesh_file: str
    intents: dict[str, agent_intents.NodeIntent]
    base: desired_mod.Desired | None  # the applied revision it was checked against
    base_mod: int  # that value's etcd mod revision (0: nothing applied yet)


async def propose(kv: Kv, path: Path) -> Proposal:
    """Validate `path` with the allocations etcd holds (placement and the stability law as the
    operator will see them). SpecError when the file is wrong; UsageError when agents cannot run it."""
    _, named, problems = load_mesh_model(path)
    if named is None:
        raise SpecError([p for p in problems if p.severity == "error"])
    layout = Layout(named.metadata.name)
    previous, _ = await ipam.read(kv, layout)
    loaded, _, plan = plan_against(path, previous)
    entry = await kv.get(layout.desired)
    base = desired_mod.decode(entry.value) if entry is not None else None
    return Proposal(
        files=desired_mod.bundle(path, loaded.doc, loaded.mesh),
        mesh=plan.mesh,
        mesh_file=path.name,
        intents=publish.intents_for(plan, (base.revision if base else 0) + 1, loaded.mesh.spec.wireguard),
        base=base,
        base_mod=entry.mod_revision if entry is not None else 0,
    )


async def propose_files(kv: Kv, files: dict[str, str], mesh_file: str) -> Proposal:
    """`propose` for a mesh held as files (the lab's, with its membership changes written in):
    validated from a private copy, exactly as the operator will read the revision back."""
    probe = desired_mod.Desired(1, desired_mod.digest(files), "", "", "", mesh_file, files)
    with tempfile.TemporaryDirectory(prefix="crossmesh-apply-") as tmp:
        return await propose(kv, desired_mod.materialize(probe, Path(tmp)))


async def apply(kv: Kv, proposal: Proposal, who: str) -> tuple[desired_mod.Desired, bool]:
    """Publish `proposal` as the next revision; (the applied revision, whether it is new). An
    unchanged mesh is not re-applied. ApplyConflict when another apply landed since `propose`."""
    digest = desired_mod.digest(proposal.files)
    if proposal.base is not None and proposal.base.digest == digest:
        return proposal.base, False
    layout = Layout(proposal.mesh)
    new = desired_mod.Desired(
        revision=(proposal.base.revision if proposal.base else 0) + 1,
        digest=digest,
        applied_by=who,
        applied_at=datetime.now(UTC).isoformat(timespec="seconds"),
        mesh=proposal.mesh,
        mesh_file=proposal.mesh_file,
        files=proposal.files,
    )
    got = await kv.txn([Compare(layout.desired, "mod", proposal.base_mod)], [Put(layout.desired, new.encode())])
    if not got.succeeded:
        now = await kv.get(layout.desired)
        theirs = desired_mod.decode(now.value) if now is not None else None
        landed = f"revision {theirs.revision} by {theirs.applied_by} at {theirs.applied_at}" if theirs else "a delete"
        raise ApplyConflict(
            f"another apply landed meanwhile ({landed}); nothing was changed — run `crossmesh diff` and apply again"
        )
    return new, True


def diff(proposal: Proposal) -> dict[str, Any]:
    """What applying `proposal` would change: nodes added, removed and re-planned, and the files' text."""
    old_files = proposal.base.files if proposal.base else {}
    text: list[str] = []
    for name in sorted(set(old_files) | set(proposal.files)):
        a, b = old_files.get(name, ""), proposal.files.get(name, "")
        if a != b:
            text += difflib.unified_diff(
                a.splitlines(keepends=True), b.splitlines(keepends=True), f"applied/{name}", f"local/{name}"
            )
    return {
        "applied": proposal.base.summary() if proposal.base else None,
        "changed": bool(text),
        "files": "".join(text),
        "nodes": _node_changes(proposal),
    }


def _node_changes(proposal: Proposal) -> dict[str, list[str]]:
    """Nodes added and removed by the files' change (intents are recomputed by the operator)."""
    if proposal.base is None:
        return {"added": sorted(proposal.intents), "removed": []}
    with tempfile.TemporaryDirectory(prefix="crossmesh-diff-") as tmp:
        try:
            _, _, old_plan = plan_against(desired_mod.materialize(proposal.base, Path(tmp)), Allocations())
        except CrossmeshError:
            return {"added": sorted(proposal.intents), "removed": []}
    old = {n.name for n in old_plan.nodes if n.tunnel is not None}
    return {"added": sorted(set(proposal.intents) - old), "removed": sorted(old - set(proposal.intents))}


@dataclass(slots=True)
class NodeRow:
    name: str
    online: bool  # its record is in etcd (its agent holds a lease)
    revision: int  # the intent revision it runs (0: none reported)
    want_revision: int  # its intent's revision
    ok: bool
    error: str | None
    peers: int
    want_peers: int  # the peers its intent and the others' give it
    age: float | None  # seconds since its last status
    next_rotation: float | None = None  # unix time of its next scheduled key rotation (None: none scheduled)

    @property
    def converged(self) -> bool:
        return self.online and self.ok and self.revision >= self.want_revision and self.peers == self.want_peers


@dataclass(slots=True)
class Status:
    mesh: str
    desired: dict[str, Any] | None
    rollout: dict[str, Any] | None
    leader: str | None
    nodes: list[NodeRow] = field(default_factory=list)
    gateways: dict[str, str] = field(default_factory=dict)  # topology gateways: site → its active gateway

    @property
    def converged(self) -> bool:
        if self.desired is None or self.rollout is None or self.rollout.get("error"):
            return False
        return self.rollout["revision"] == self.desired["revision"] and all(n.converged for n in self.nodes)

    def to_json(self) -> dict[str, Any]:
        return {
            "mesh": self.mesh,
            "converged": self.converged,
            "desired": self.desired,
            "rollout": self.rollout,
            "leader": self.leader,
            "gateways": dict(sorted(self.gateways.items())),
            "nodes": [
                {
                    "name": n.name,
                    "online": n.online,
                    "converged": n.converged,
                    "revision": n.revision,
                    "intentRevision": n.want_revision,
                    "ok": n.ok,
                    "error": n.error,
                    "peers": n.peers,
                    "expectedPeers": n.want_peers,
                    "reportedSecondsAgo": None if n.age is None else round(n.age, 1),
                    "nextKeyRotation": n.next_rotation,
                }
                for n in self.nodes
            ],
        }


def _intents(by_key: dict[bytes, bytes], layout: Layout) -> dict[str, agent_intents.NodeIntent]:
    out = {}
    for key, raw in by_key.items():
        if key.startswith(layout.intents):
            name = key[len(layout.intents) :].decode(errors="replace")
            with contextlib.suppress(agent_intents.IntentError):
                out[name] = agent_intents.decode_intent(raw, name)
    return out


def expected_peers(intents: dict[str, agent_intents.NodeIntent], chosen: dict[str, str]) -> dict[str, int]:
    """How many peers the agents give each node: the one peer rule, on their intents (each node's
    sites a hub carries, and under topology gateways each site's active gateway as etcd names it)."""
    planned = {n: i.node for n, i in intents.items()}
    if records.is_gateways(planned):
        view = records.GatewayView.of(planned, chosen)
        natted = {n: m.natted for n, m in view.members.items()}
        return {
            n: len(peer_rule.gateway_peers(m, natted, view.order, view.active, records.apart_of(planned, n)))
            for n, m in view.members.items()
        }
    groups: dict[tuple[str, bool], list[str]] = {}
    for p in planned.values():
        groups.setdefault((p.site, p.public_address is None), []).append(p.name)
    out = {}
    for p in planned.values():
        apart = records.apart_of(planned, p.name)
        out[p.name] = sum(
            len(names) - (p.name in names)
            for (site, natted), names in groups.items()
            if peer_rule.is_peer(p.site, p.public_address is None, site, natted, apart)
        )
    return out


def _chosen(by_key: dict[bytes, bytes], layout: Layout, intents: dict[str, agent_intents.NodeIntent]) -> dict[str, str]:
    """Each site's active gateway as etcd names it, read as the agents read it (a value they refuse
    names none)."""
    order = records.GatewayView.of({n: i.node for n, i in intents.items()}, {}).order
    out = {}
    for key, raw in by_key.items():
        if key.startswith(layout.gateways):
            site = key[len(layout.gateways) :].decode(errors="replace")
            with contextlib.suppress(GatewayError):
                out[site] = decode_active(raw, site, order.get(site, ())).active
    return out


async def status(kv: Kv, mesh: str) -> Status:
    layout = Layout(mesh)
    snap = await kv.range(layout.root)
    by_key = {e.key: e.value for e in snap.entries}
    out = Status(mesh, None, None, None)
    if layout.desired in by_key:
        try:
            out.desired = desired_mod.decode(by_key[layout.desired]).summary()
        except desired_mod.DesiredError as err:
            out.desired = {"revision": 0, "error": str(err)}
    expected: list[str] = []
    if layout.rollout in by_key:
        try:
            r = publish.decode_rollout(by_key[layout.rollout])
            out.rollout = {"revision": r.revision, "error": r.error, "leader": r.leader, "nodes": len(r.nodes)}
            expected = r.nodes
        except (ValueError, KeyError, TypeError):
            out.rollout = {"revision": 0, "error": "the rollout record is unreadable", "nodes": 0}
    if layout.leader in by_key:
        out.leader = publish.leader_id(by_key[layout.leader])
    intents = _intents(by_key, layout)
    chosen = _chosen(by_key, layout, intents)
    peers = expected_peers(intents, chosen)
    out.gateways = chosen
    for name in expected:
        mine = intents.get(name)
        routes_only = mine is not None and not mine.node.tunnel_address
        raw = by_key.get(layout.status(name))
        row = NodeRow(
            name, layout.node(name) in by_key, 0, mine.revision if mine else 0, False, None, 0, peers.get(name, 0), None
        )
        row.error = "no status reported yet"
        if raw is not None:
            try:
                s = agent_intents.decode_status(raw, name)
                row.revision, row.ok, row.error, row.peers = s.revision, s.ok, s.error, s.peers
                row.age = max(0.0, time.time() - s.at)
                row.next_rotation = s.next_rotation
            except agent_intents.IntentError as err:
                row.error = str(err)
        if routes_only:  # no tunnel, no record: online while it reports
            row.online = row.age is not None and row.age <= ROUTES_ONLY_FRESH
        if not row.online:
            why = f"no status for {ROUTES_ONLY_FRESH:.0f} s" if routes_only else "no record in etcd"
            row.ok, row.error = False, f"offline: {why} (its agent is down or has not published)"
        elif row.ok and not row.converged:
            row.error = f"converging: revision {row.revision}/{row.want_revision}, peers {row.peers}/{row.want_peers}"
        out.nodes.append(row)
    return out
