"""From a plan to what the agents read: one intent per node that runs an agent, written only
where it changed, then the rollout record naming the revision and the nodes it expects.

Agents watch the mesh's keys in revision order, so an agent that sees the rollout record has
seen every intent written before it."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from crossmesh.agent.gateways import MAX_EPOCH, ActiveGateway, GatewayError, decode_active
from crossmesh.agent.intents import NodeIntent
from crossmesh.agent.records import GatewayView, intent_of
from crossmesh.kv.api import MAX_TXN_OPS, Compare, Delete, Kv, KvError, Put
from crossmesh.kv.layout import Layout
from crossmesh.model.mesh import WireGuard, duration_seconds
from crossmesh.model.plan import Plan


@dataclass(frozen=True, slots=True)
class Rollout:
    revision: int  # the desired revision the intents are at
    digest: str
    nodes: list[str]  # the nodes expected to run it (those with a tunnel)
    error: str | None  # why the operator could not publish this revision (the intents stay as they were)
    leader: str
    at: float

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()


def decode_rollout(raw: bytes) -> Rollout:
    data = json.loads(raw)
    nodes = data["nodes"]
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise ValueError("rollout: nodes is not a list of names")
    error = data["error"]
    return Rollout(
        revision=int(data["revision"]),
        digest=str(data["digest"]),
        nodes=nodes,
        error=None if error is None else str(error),
        leader=str(data["leader"]),
        at=float(data["at"]),
    )


def intents_for(plan: Plan, revision: int, wireguard: WireGuard) -> dict[str, NodeIntent]:
    """What each node that runs an agent must run, as of desired revision `revision`
    (`wireguard`: the mesh's spec.wireguard, for the keepalive and key rotation)."""
    # A node without a tunnel (topology gateways) runs an agent for its routes only: its site's MTU.
    mtu = {n.name: n.tunnel.mtu.value if n.tunnel is not None else plan.site(n.site).mtu for n in plan.nodes}
    rotation = duration_seconds(wireguard.key_rotation) if wireguard.key_rotation else 0
    return {
        name: NodeIntent(revision, planned, mtu[name], wireguard.persistent_keepalive, rotation)
        for name, planned in intent_of(plan).items()
    }


def _same(old: bytes, new: NodeIntent) -> bool:
    """Whether the stored intent says what `new` says (the revision aside: an unchanged node is not rewritten)."""
    try:
        data = json.loads(old)
    except ValueError:
        return False
    mine = json.loads(new.encode())
    return {k: v for k, v in data.items() if k != "revision"} == {k: v for k, v in mine.items() if k != "revision"}


async def publish(kv: Kv, layout: Layout, intents: dict[str, NodeIntent], fence: list[Compare]) -> tuple[int, int]:
    """Make `intents/` hold exactly `intents`, rewriting only what changed; (written, deleted).
    Every write holds only under `fence` (the leader key still ours): a deposed leader writes nothing."""
    snap = await kv.range(layout.intents)
    stored = {e.key[len(layout.intents) :].decode(errors="replace"): e.value for e in snap.entries}
    ops: list[Put | Delete] = [
        Put(layout.intent(name), intent.encode())
        for name, intent in sorted(intents.items())
        if name not in stored or not _same(stored[name], intent)
    ]
    written = len(ops)
    ops += [Delete(layout.intent(name)) for name in sorted(set(stored) - set(intents))]
    for i in range(0, len(ops), MAX_TXN_OPS):
        await fenced(kv, fence, ops[i : i + MAX_TXN_OPS])
    return written, len(ops) - written


async def gateways(kv: Kv, layout: Layout, intents: dict[str, NodeIntent], fence: list[Compare], by: str) -> int:
    """Under topology gateways, make sure every site has its active gateway in `gateways/<site>`: the
    preferred one where the key is missing or names no gateway of the site any more (a removed node);
    a site gone loses its key. A valid choice is never touched: it is the site's gateways' to move
    (failover). Each write compares the key's revision with the one read, so a takeover racing this
    wins and the next reconcile looks again. The keys written."""
    order = GatewayView.of({n: i.node for n, i in intents.items()}, {}).order
    snap = await kv.range(layout.gateways)
    stored = {e.key[len(layout.gateways) :].decode(errors="replace"): e for e in snap.entries}
    written = 0
    for site, gws in sorted(order.items()):
        entry = stored.get(site)
        epoch = 0
        if entry is not None:
            try:
                decode_active(entry.value, site, gws)
                continue
            except GatewayError as err:
                why = f"the key named no gateway of the site ({err})"
                epoch = _epoch(entry.value)
        else:
            why = "first rollout of the site"
        value = ActiveGateway(gws[0], min(epoch + 1, MAX_EPOCH), now(), by, f"preferred gateway: {why}"[:1024])
        key = layout.gateway(site)
        guard = Compare(key, "mod", entry.mod_revision if entry is not None else 0)
        got = await kv.txn([*fence, guard], [Put(key, value.encode())])
        written += got.succeeded
    gone: list[Put | Delete] = [Delete(layout.gateway(site)) for site in sorted(set(stored) - set(order))]
    if gone:
        await fenced(kv, fence, gone)
    return written


def _epoch(raw: bytes) -> int:
    """The epoch of a value that is no longer valid, where it still says one (the next is above it)."""
    try:
        epoch = json.loads(raw).get("epoch")
    except (ValueError, AttributeError, RecursionError):
        return 0
    return epoch if type(epoch) is int and 0 <= epoch < MAX_EPOCH else 0


async def finish(kv: Kv, layout: Layout, rollout: Rollout, fence: list[Compare]) -> None:
    await fenced(kv, fence, [Put(layout.rollout, rollout.encode())])


class Deposed(KvError):
    """The leader key is no longer this operator's: it must stop writing."""


async def fenced(kv: Kv, fence: list[Compare], ops: list[Put | Delete]) -> int:
    got = await kv.txn(fence, ops)
    if not got.succeeded:
        raise Deposed("this operator no longer holds the leader key: it writes nothing more")
    return got.revision


def now() -> float:
    return time.time()


def leader_id(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["id"])[:64]
    except (ValueError, KeyError, TypeError):
        return "(unreadable leader key)"
