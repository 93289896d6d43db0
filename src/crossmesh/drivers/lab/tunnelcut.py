"""One IPsec tunnel of a site-to-site VPN cut on the wire, as an outage between the customer gateway
and one of AWS's tunnel endpoints would: `lab cut-tunnel`, `lab heal-tunnel`.

The cut is made where neither end can see it coming — in the lab's internet namespace, which carries
every packet between the customer gateway's public address and each tunnel's outside address. A table
of its own there (TABLE), in the forward hook before anything else, drops the tunnel's IKE (UDP 500)
and ESP-in-UDP (UDP 4500: kernel-libipsec always encapsulates) in both directions, with a counter per
direction. Both daemons keep running with their SAs; the tunnel dies the way a real one does: DPD on
the IKE side, BGP's hold timer on the routing side (plan/vpngw.py), and the standby tunnel takes the
traffic. Healing removes the rules; the customer's charon, which keeps retrying (keyingtries 0),
re-establishes the tunnel and BIRD its session, and the routes come back to tunnel 1 by preference.

The cut tunnels are recorded in the lab state (`cut_tunnels`, "<connection>/<tunnel>") so that
`lab status` shows them. Every `lab up` heals them first (`clear`): it waits for every tunnel and
BGP session, which a cut tunnel never brings up.

The pure part (`resolve`, `cut_table`) reads the plan and the lab topology; the rest changes one table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Address

from crossmesh import nft
from crossmesh.drivers.lab import netns, reconcile
from crossmesh.drivers.lab.desired import topology_of
from crossmesh.drivers.lab.state import LabState
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.errors import UsageError
from crossmesh.model.plan import Plan

TABLE = "crossmesh_tunnel_cuts"  # beside the internet's own `crossmesh` table, which reconcile owns
IKE_PORT, NATT_PORT = 500, 4500
# Before the internet's own forward chain (priority 0), so that the counters see every dropped packet.
FIRST_FORWARD = nft.Base(nft.ChainType.FILTER, nft.Hook.FORWARD, -10)


@dataclass(frozen=True, slots=True)
class TunnelCut:
    """A tunnel's two ends on the internet: the customer gateway's public address and the tunnel's
    outside address at the hub."""

    connection: str
    index: int
    customer: IPv4Address
    hub: IPv4Address

    @property
    def key(self) -> str:
        return f"{self.connection}/{self.index}"


def resolve(plan: Plan, topo: LabTopology, connection: str | None, index: int, lab: str) -> TunnelCut:
    """The tunnel `index` of `connection` (None: the plan's first connection); UsageError saying what
    the lab has when there is no such tunnel."""
    if not plan.vpn:
        raise UsageError(
            f"lab {lab} has no VPN connection (spec.vpnConnections): there is no IPsec tunnel to cut — "
            "`lab cut-site` or `lab cut-uplink` stage outages of a WireGuard mesh"
        )
    names = [c.name for c in plan.vpn]
    name = connection if connection is not None else names[0]
    conn = next((c for c in plan.vpn if c.name == name), None)
    if conn is None:
        raise UsageError(f"no VPN connection {name} in lab {lab} — its connections are: {', '.join(names)}")
    indices = [t.index for t in conn.tunnels]
    if index not in indices:
        raise UsageError(
            f"VPN connection {name} has no tunnel {index} — its tunnels are {', '.join(map(str, indices))} "
            "(1: the active one, 2: the standby)"
        )
    return TunnelCut(name, index, conn.customer_address, topo.vpn_outside[(name, index)])


def cut_table(cuts: list[TunnelCut]) -> nft.Table | None:
    """The internet's TABLE dropping IKE and ESP-in-UDP of every tunnel in `cuts`, each direction
    on its own counter; None when no tunnel is cut."""
    if not cuts:
        return None
    f = nft.Field
    ports = nft.AnonSet((IKE_PORT, NATT_PORT))
    rules = []
    for c in sorted(cuts, key=lambda c: c.key):
        for src, dst, way in ((c.customer, c.hub, "customer gateway → hub"), (c.hub, c.customer, "hub → customer")):
            rules.append(
                nft.Rule(
                    (
                        nft.Match(f.IP_SADDR, src),
                        nft.Match(f.IP_DADDR, dst),
                        nft.Match(f.UDP_DPORT, ports),
                        nft.Counter(),
                        nft.Verdict.DROP,
                    ),
                    f"cut-tunnel {c.key}: {way}",
                )
            )
    return nft.Table(TABLE, (nft.Chain("forward", tuple(rules), FIRST_FORWARD),))


def _cuts(plan: Plan, topo: LabTopology, keys: list[str], lab: str) -> list[TunnelCut]:
    """The recorded `keys` resolved against the running lab (a key the plan lost is left out)."""
    out = []
    for key in keys:
        conn, _, index = key.rpartition("/")
        if index.isdigit() and (conn, int(index)) in topo.vpn_outside:
            out.append(resolve(plan, topo, conn, int(index), lab))
    return out


def _apply(state: LabState, plan: Plan, topo: LabTopology, keys: list[str]) -> bool:
    """The internet's TABLE cutting exactly `keys`; True when it changed."""
    if not netns.exists(state.inet):
        raise UsageError(f"the internet namespace {state.inet} is missing: run `crossmesh lab up` first")
    table = cut_table(_cuts(plan, topo, keys, state.mesh_name))
    if table is None:
        return reconcile.remove_table(state.inet, TABLE)
    return reconcile.apply_table(state.inet, table) is not None


def cut_tunnel(state: LabState, connection: str | None, index: int) -> tuple[TunnelCut, list[str]]:
    """Drop the tunnel's IKE and ESP-in-UDP between its two ends from now on."""
    compiled, topo = topology_of(state)
    cut = resolve(compiled.plan, topo, connection, index, state.mesh_name)
    keys = sorted({*state.cut_tunnels, cut.key})
    changes = []
    if _apply(state, compiled.plan, topo, keys):
        changes.append(
            f"{state.inet}: drops UDP 500/4500 between {cut.customer} and {cut.hub} (tunnel {cut.key}; "
            f"nftables table {TABLE})"
        )
    if state.cut_tunnels != keys:
        state.cut_tunnels = keys
        state.save()
    return cut, changes


def heal_tunnel(state: LabState, connection: str | None, index: int) -> tuple[TunnelCut, list[str]]:
    """Pass the tunnel's packets again; the customer's charon re-establishes it by itself."""
    compiled, topo = topology_of(state)
    cut = resolve(compiled.plan, topo, connection, index, state.mesh_name)
    keys = [k for k in state.cut_tunnels if k != cut.key]
    changes = []
    if _apply(state, compiled.plan, topo, keys):
        changes.append(f"{state.inet}: passes UDP 500/4500 between {cut.customer} and {cut.hub} again")
    if state.cut_tunnels != keys:
        state.cut_tunnels = keys
        state.save()
    return cut, changes


def clear(state: LabState) -> list[str]:
    """No tunnel cut (every `lab up`, before it waits for the tunnels)."""
    changes = []
    if state.inet and netns.exists(state.inet) and reconcile.remove_table(state.inet, TABLE):
        changes.append(f"{state.inet}: nftables table {TABLE} removed: tunnels cut with `lab cut-tunnel` healed")
    if state.cut_tunnels:
        state.cut_tunnels = []
        state.save()
    return changes


def dropped(state: LabState) -> dict[str, int]:
    """Packets each cut tunnel's rules dropped so far ("<connection>/<tunnel>" → packets), from the
    kernel's counters; {} when no tunnel is cut."""
    if not state.inet or not netns.exists(state.inet):
        return {}
    done = netns.run(state.inet, ["nft", "-j", "list", "table", "ip", TABLE])
    if done.returncode != 0:
        return {}
    out: dict[str, int] = {}
    for item in json.loads(done.stdout).get("nftables", []):
        rule = item.get("rule")
        comment = (rule or {}).get("comment", "")
        if comment.startswith("cut-tunnel "):
            key = comment.split()[1].rstrip(":")
            packets = sum(int(e["counter"]["packets"]) for e in rule.get("expr", []) if "counter" in e)
            out[key] = out.get(key, 0) + packets
    return out
