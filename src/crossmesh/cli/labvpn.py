"""`crossmesh lab cut-tunnel` and `lab heal-tunnel`: an outage of one IPsec tunnel of a site-to-site VPN
(drivers/lab/tunnelcut.py), beside `lab cut-site` and `lab cut-uplink` of cli/lab.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from crossmesh.cli.common import OUTPUT_OPTION, Output, emit, friendly, out
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import transit, tunnelcut
from crossmesh.drivers.lab.topology import LabTopology
from crossmesh.workspace import Compiled

MESH_OPTION = typer.Option(None, "--mesh", help="the lab's mesh file (default: the only running lab)")
CONNECTION_OPTION = typer.Option(
    None, "--connection", help="the VPN connection (spec.vpnConnections[].name; default: the first one)"
)
TUNNEL_OPTION = typer.Option(1, "--tunnel", help="the connection's tunnel: 1 (active) or 2 (standby)")


def cut_tunnel(
    connection: str | None = CONNECTION_OPTION,
    tunnel: int = TUNNEL_OPTION,
    mesh: Path | None = MESH_OPTION,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Cut one IPsec tunnel on the wire, as an outage between the customer gateway and AWS's tunnel
    endpoint would: the lab's internet drops the tunnel's IKE (UDP 500) and ESP-in-UDP (UDP 4500)
    between the two outside addresses, both ways, with a counter each (nftables table
    crossmesh_tunnel_cuts of the internet namespace). strongSwan and BIRD keep running: DPD and BGP's
    3 s hold timer notice the dead tunnel and traffic moves to the other tunnel of the connection.
    `lab heal-tunnel` (or any `lab up`) heals it; `lab status` shows cut tunnels.

    Example: crossmesh lab cut-tunnel --mesh examples/hybrid-openstack-aws/mesh.yaml --tunnel 1
    """
    _tunnel_fault(mesh, output, connection, tunnel, cut=True)


def heal_tunnel(
    connection: str | None = CONNECTION_OPTION,
    tunnel: int = TUNNEL_OPTION,
    mesh: Path | None = MESH_OPTION,
    output: Output = OUTPUT_OPTION,
) -> None:
    """Heal a tunnel cut with `lab cut-tunnel`: the internet passes its packets again. Returns then: the
    customer gateway's charon, which kept retrying, re-establishes the tunnel within a second or two,
    BIRD its BGP session, and traffic comes back to tunnel 1, the preferred one."""
    _tunnel_fault(mesh, output, connection, tunnel, cut=False)


def _tunnel_fault(mesh: Path | None, output: Output, connection: str | None, tunnel: int, *, cut: bool) -> None:
    state = labs.find_lab(mesh)
    act = tunnelcut.cut_tunnel if cut else tunnelcut.heal_tunnel
    found, changes = act(state, connection, tunnel)
    if output is not Output.TABLE:
        emit({"connection": found.connection, "tunnel": found.index, "cut": cut, "changes": changes}, output)
        return
    for line in changes:
        out.print(line, markup=False)
    what = f"tunnel {found.index} of VPN connection {found.connection}"
    if changes:
        out.print(f"{what} {'cut' if cut else 'healed'}", markup=False)
    else:
        out.print(f"{what} {'was already cut' if cut else 'was not cut: nothing to heal'}", markup=False)


def register(app: typer.Typer) -> None:
    """Add the commands to `crossmesh lab`."""
    app.command("cut-tunnel")(friendly(cut_tunnel))
    app.command("heal-tunnel")(friendly(heal_tunnel))


def vpn_rows(state: labs.LabState, topo: LabTopology, compiled: Compiled) -> list[dict[str, Any]]:
    """One row per tunnel of every connection whose two ends the lab runs."""
    gws = {g.key: g for g in transit.gateways(state, topo, compiled)}
    dropped = tunnelcut.dropped(state) if state.cut_tunnels else {}
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
            row["cut"] = f"{conn.name}/{t.index}" in state.cut_tunnels
            row["cutDropped"] = dropped.get(f"{conn.name}/{t.index}", 0) if row["cut"] else 0
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
            f"[red]cut[/red], {r['cutDropped']} packets dropped (`lab heal-tunnel`)" if r["cut"] else "-",
        )
    out.print(t)
