"""Tunnel health from WireGuard's own counters: how long since the last handshake, how many bytes.

WireGuard has no "up" bit: a session is alive while handshakes keep succeeding. It renews the
session every REKEY_AFTER_TIME (120 s) while traffic flows and gives up on one after
REJECT_AFTER_TIME (180 s), so a handshake younger than 180 s means the tunnel carries packets,
an older one that it is idle or broken, and none at all that it never came up. Both ends of a
tunnel count; the picture (`render/graph.py`) and the UI show the pair, so the two views are
merged here: the youngest handshake and the larger byte count win.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from crossmesh.model.plan import Plan

REJECT_AFTER_TIME = 180  # seconds: WireGuard's limit on a session's age (whitepaper §6.1)


class Health(StrEnum):
    UP = "up"  # a handshake within REJECT_AFTER_TIME
    STALE = "stale"  # the last handshake is older: idle, or the path broke
    DOWN = "down"  # no handshake ever
    UNKNOWN = "unknown"  # not read (no lab, or the node's device could not be read)


@dataclass(frozen=True, slots=True)
class TunnelHealth:
    handshake_age: float | None  # seconds since the latest handshake of either end; None: never
    rx: int  # bytes, as the end with the most traffic counts them
    tx: int

    @property
    def health(self) -> Health:
        if self.handshake_age is None:
            return Health.DOWN
        return Health.UP if self.handshake_age <= REJECT_AFTER_TIME else Health.STALE

    def as_json(self) -> dict[str, object]:
        return {"health": self.health.value, "handshakeAge": self.handshake_age, "rx": self.rx, "tx": self.tx}


Pair = tuple[str, str]  # two node names, sorted


def pair(a: str, b: str) -> Pair:
    return (a, b) if a <= b else (b, a)


def tunnel_pairs(plan: Plan) -> list[tuple[Pair, bool]]:
    """Every WireGuard tunnel of the plan once, as (sorted node pair, standby), sorted: a pair is a
    tunnel when either end lists the other as a peer; it is standby when either end lists the other as a
    standby peer (a second gateway of its site, which carries only its own addresses)."""
    standby: dict[Pair, bool] = {}
    for n in plan.nodes:
        if n.tunnel is None:
            continue
        for p in n.tunnel.peers:
            key = pair(n.name, p.node)
            standby[key] = standby.get(key, False) or p.standby
    return sorted(standby.items())


Stats = tuple[int, int, int, str | None]  # (latest handshake, epoch s or 0; rx; tx; endpoint): `wg show dump`


def merge(plan: Plan, stats: Mapping[str, Mapping[str, Stats]], now: float) -> dict[Pair, TunnelHealth]:
    """Per tunnel pair, the health both ends report (`stats`: node → peer public key → counters, as
    the lab driver's `tunnel_status` reads them). Pairs no end reported are absent (unknown)."""
    key_node = {p.public_key: p.node for n in plan.nodes if n.tunnel for p in n.tunnel.peers}
    out: dict[Pair, TunnelHealth] = {}
    for node, peers in stats.items():
        for key, (handshake, rx, tx, _) in peers.items():
            peer = key_node.get(key)
            if peer is None:
                continue
            age = max(now - handshake, 0.0) if handshake else None
            out[pair(node, peer)] = _better(out.get(pair(node, peer)), TunnelHealth(age, rx, tx))
    return out


def _better(old: TunnelHealth | None, new: TunnelHealth) -> TunnelHealth:
    if old is None:
        return new
    ages = [a for a in (old.handshake_age, new.handshake_age) if a is not None]
    busiest = max((old, new), key=lambda h: h.rx + h.tx)
    return TunnelHealth(min(ages) if ages else None, busiest.rx, busiest.tx)


def counts(healths: Iterable[Health]) -> dict[str, int]:
    """How many tunnels are in each state, every state named (zeros included), for a summary line."""
    out = dict.fromkeys((h.value for h in Health), 0)
    for h in healths:
        out[h.value] += 1
    return out


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
