"""`lab status`'s site-to-site VPN part: every tunnel as both its ends report it (IKE and CHILD_SA state,
bytes), each BGP session, and which tunnel the customer gateway's kernel routes the hub's prefixes into."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from crossmesh.cli.common import out
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import transit
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.workspace import Compiled


def vpn_rows(state: labs.LabState, topo: LabTopology, compiled: Compiled) -> list[dict[str, Any]]:
    """One row per tunnel of every connection whose two ends the lab runs."""
    gws = {g.key: g for g in transit.gateways(state, topo, compiled)}
    rows: list[dict[str, Any]] = []
    for conn in compiled.plan.vpn:
        customer, hub = gws.get(f"customer:{conn.site}"), gws.get(f"hub:{conn.hub}")
        if customer is None or hub is None:
            continue
        ends = {"customer": transit.attach(customer), "hub": transit.attach(hub)}
        sas = {side: gw.sas() for side, gw in ends.items()}
        sessions = {side: gw.sessions() for side, gw in ends.items()}
        toward = conn.hub_prefixes[0] if conn.hub_prefixes else None
        chosen = ends["customer"].device_for(toward) if toward is not None else None
        for t in conn.tunnels:
            row: dict[str, Any] = {"connection": conn.name, "tunnel": t.index, "standby": t.standby}
            for side, gw in (("customer", customer), ("hub", hub)):
                sa = sas[side].get(gw.spec.tunnels[gw.spec.keys.index((conn.name, t.index))].name)
                peer = (
                    next((p for p in gw.spec.router.peers if p.interface == gw.spec.device(conn.name, t.index)), None)
                    if gw.spec.router
                    else None
                )
                session = sessions[side].get(peer.name) if peer is not None else None
                row[side] = {
                    "namespace": gw.namespace,
                    "device": gw.spec.device(conn.name, t.index),
                    "ike": sa.state if sa else None,
                    "child": sa.installed if sa else False,
                    "bytesOut": sa.bytes_out if sa else 0,
                    "bytesIn": sa.bytes_in if sa else 0,
                    "bgp": (f"{session.state} {session.info}".strip() if session else None),
                }
            row["carries"] = chosen == row["customer"]["device"]
            rows.append(row)
    return rows


def print_vpn(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    t = Table(title="Site-to-site VPN (customer gateway ⇄ hub)", title_justify="left")
    for c in (
        "connection",
        "tunnel",
        "customer IKE / CHILD",
        "hub IKE / CHILD",
        "BGP customer / hub",
        "bytes out/in",
        "carries",
    ):
        t.add_column(c, overflow="fold")
    for r in rows:
        c, h = r["customer"], r["hub"]

        def ike(end: dict[str, Any]) -> str:
            state = end["ike"] or "[red]none[/red]"
            return f"{state} / {'INSTALLED' if end['child'] else '[red]none[/red]'} ({end['device']})"

        t.add_row(
            escape(r["connection"]),
            f"{r['tunnel']} ({'standby' if r['standby'] else 'active'})",
            ike(c),
            ike(h),
            f"{escape(c['bgp'] or '-')} / {escape(h['bgp'] or '-')}",
            f"{c['bytesOut']}/{c['bytesIn']}",
            "yes" if r["carries"] else "-",
        )
    out.print(t)
