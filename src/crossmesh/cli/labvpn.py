"""`crossmesh lab cut-tunnel` and `lab heal-tunnel`: an outage of one IPsec tunnel of a site-to-site VPN
(drivers/lab/tunnelcut.py), beside `lab cut-site` and `lab cut-uplink` of cli/lab.py."""

from __future__ import annotations

from pathlib import Path

import typer

from crossmesh.cli.common import OUTPUT_OPTION, Output, emit, friendly, out
from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import tunnelcut

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
