"""What an apply changes in the node's kernel besides the WireGuard peers: the device's settings, the
routes through the tunnel, and (topology gateways) the routes via the site's active gateway. Each
step compares what is wanted with what the kernel has — read back (`last` None) or as the last apply
left it — changes only the difference, and returns the changes as log lines."""

from __future__ import annotations

from ipaddress import IPv4Network

from crossmesh.agent.dataplane import Dataplane


def device_settings(dp: Dataplane, ifname: str, mtu: int, tunnel_address: str) -> list[str]:
    """MTU, up, and the node's tunnel address on the device."""
    link = dp.link()
    if link is None:
        return [f"device {ifname} missing"]
    out: list[str] = []
    commands: list[str] = []
    if link.get("mtu") != mtu:
        commands.append(f"link set dev {ifname} mtu {mtu}")
        out.append(f"{ifname} mtu {mtu}")
    if "UP" not in link.get("flags", []):
        commands.append(f"link set dev {ifname} up")
        out.append(f"{ifname} up")
    have = {a.get("local") for a in link.get("addr_info", []) if a.get("family") == "inet"}
    if tunnel_address not in have:
        commands.append(f"addr replace {tunnel_address}/32 dev {ifname}")
        out.append(f"{ifname} address {tunnel_address}/32")
    dp.link_commands(commands)
    return out


def tunnel_routes(dp: Dataplane, ifname: str, wanted: set[str], last: set[str] | None) -> list[str]:
    """The agent's routes (protocol 100) to every peer's addresses through the tunnel, over one
    rtnetlink socket, no process."""
    want = {str(IPv4Network(a)) for a in wanted}
    have = dp.routes() if last is None else {str(IPv4Network(a)): ifname for a in last}
    replace = [dst for dst in sorted(want) if have.get(dst) != ifname]
    delete = sorted(set(have) - want)
    dp.set_routes(replace, delete)
    return [f"route {dst} dev {ifname}" for dst in replace] + [f"route {dst} withdrawn" for dst in delete]


def via_routes(dp: Dataplane, want: dict[str, str], last: dict[str, str] | None) -> list[str]:
    """The agent's routes (protocol 101) to the other sites via the site's active gateway: moved
    in one rtnetlink exchange when the gateway fails over."""
    have = dp.via_routes() if last is None else last
    replace = {dst: via for dst, via in sorted(want.items()) if have.get(dst) != via}
    delete = sorted(set(have) - set(want))
    dp.set_via_routes(replace, delete)
    return [f"route {dst} via {via}" for dst, via in replace.items()] + [f"route {dst} withdrawn" for dst in delete]
