"""Per-namespace reconcile: observe links, addresses, routes, neighbours, sysctls and
nftables through netlink, compare with the desired `Namespace`, change only the difference.

Every function returns the list of changes it made, so that a second `lab up`
can show (and a test can assert) that nothing changed. Routes the lab owns carry
protocol number ROUTE_PROTO; routes it does not own are never touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from pyroute2 import NetlinkError, NetNS

from crossmesh import nft
from crossmesh.drivers.lab import meshcapture, netns
from crossmesh.drivers.lab.spec import Link, Namespace, Route
from crossmesh.drivers.lab.topology import ROUTE_PROTO

OPTIONAL_SYSCTLS = ("net/bridge/",)


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _links(ipr: NetNS) -> dict[str, Any]:
    return {_attr(m, "IFLA_IFNAME"): m for m in ipr.get_links()}


def _kind(msg: Any) -> str | None:
    info = _attr(msg, "IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def ensure_namespaces(names: list[str]) -> list[str]:
    return [f"namespace {n} created" for n in names if netns.create(n)]


def reconcile(spec: Namespace, *, wireguard_ifnames: tuple[str, ...] = ()) -> list[str]:
    changes: list[str] = []
    changes += _sysctls(spec)
    with netns.open_ns(spec.name) as ipr:
        changes += _links_step(ipr, spec)
        changes += _up(ipr, spec, wireguard_ifnames)
        changes += _addresses(ipr, spec)
        changes += _neighbours(ipr, spec)
        changes += _routes(ipr, spec)
        if spec.role == "pod":
            changes += _transparent(ipr, spec)
    if spec.nft is not None:
        changes += _nft(spec)
    elif spec.role == "pod" and remove_table(spec.name, meshcapture.TABLE):
        changes.append(f"nftables table {meshcapture.TABLE} removed")  # the mesh lost its `spec.istio`
    return [f"{spec.name}: {c}" for c in changes]


def nft_only(spec: Namespace) -> list[str]:
    """Just the nftables table of a namespace (the service daemon's fast path)."""
    return [f"{spec.name}: {c}" for c in _nft(spec)] if spec.nft is not None else []


def _sysctls(spec: Namespace) -> list[str]:
    out = []
    for key, value in spec.sysctls:
        if key.startswith(OPTIONAL_SYSCTLS) and not Path("/proc/sys", key).exists():
            continue  # br_netfilter not loaded on this host: nothing to switch off
        if netns.read_sysctl(spec.name, key) != value:
            netns.write_sysctl(spec.name, key, value)
            out.append(f"sysctl {key}={value}")
    return out


def _links_step(ipr: NetNS, spec: Namespace) -> list[str]:
    out: list[str] = []
    links = _links(ipr)
    for link in spec.links:
        current = links.get(link.ifname)
        if link.kind == "tun":
            # wireguard-go makes its TUN device; we only hold it to the planned MTU.
            if current is not None and _attr(current, "IFLA_MTU") != link.mtu:
                ipr.link("set", index=current["index"], mtu=link.mtu)
                out.append(f"link {link.ifname} mtu {link.mtu}")
            continue
        if current is not None and not _link_matches(ipr, link, current):
            ipr.link("del", index=current["index"])
            out.append(f"link {link.ifname} replaced")
            current = None
        if current is None:
            _create_link(ipr, spec, link)
            out.append(f"link {link.ifname} ({link.kind}) created")
            links = _links(ipr)
            current = links[link.ifname]
        idx = current["index"]
        if _attr(current, "IFLA_MTU") != link.mtu:
            ipr.link("set", index=idx, mtu=link.mtu)
            out.append(f"link {link.ifname} mtu {link.mtu}")
        if link.master is not None:
            master = links.get(link.master)
            if master is not None and _attr(current, "IFLA_MASTER") != master["index"]:
                ipr.link("set", index=idx, master=master["index"])
                out.append(f"link {link.ifname} master {link.master}")
        if link.mac is not None and _attr(current, "IFLA_ADDRESS") != link.mac:
            ipr.link("set", index=idx, address=link.mac)
            out.append(f"link {link.ifname} mac {link.mac}")
    return out


def _link_matches(ipr: NetNS, link: Link, current: Any) -> bool:
    if _kind(current) != link.kind:
        return False
    if link.kind == "veth" and link.peer and link.peer_ns:
        # The pair is whole only if the peer still exists in its namespace.
        if not netns.exists(link.peer_ns):
            return False
        with netns.open_ns(link.peer_ns) as peer_ipr:
            return bool(peer_ipr.link_lookup(ifname=link.peer))
    if link.kind == "vxlan":
        data = _attr(current, "IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        return bool(
            data is not None
            and data.get_attr("IFLA_VXLAN_ID") == link.vxlan_id
            and data.get_attr("IFLA_VXLAN_PORT") == link.vxlan_port
            and data.get_attr("IFLA_VXLAN_LOCAL") == str(link.vxlan_local)
            and bool(data.get_attr("IFLA_VXLAN_LINK")) == (link.vxlan_dev is not None)
        )
    return True


def _create_link(ipr: NetNS, spec: Namespace, link: Link) -> None:
    if link.kind == "bridge":
        ipr.link("add", ifname=link.ifname, kind="bridge", mtu=link.mtu)
    elif link.kind == "veth":
        assert link.peer is not None and link.peer_ns is not None  # noqa: S101 - topology invariant
        netns.create(link.peer_ns)
        with netns.open_ns(link.peer_ns) as peer_ipr:
            stale = peer_ipr.link_lookup(ifname=link.peer)
            if stale:
                peer_ipr.link("del", index=stale[0])
        ipr.link(
            "add",
            ifname=link.ifname,
            kind="veth",
            mtu=link.mtu,
            peer={"ifname": link.peer, "net_ns_fd": link.peer_ns, "mtu": link.peer_mtu or link.mtu},
        )
    elif link.kind == "vxlan":
        # Bound to an interface (Flannel) or routed by the kernel's table like Cilium's
        # cilium_vxlan, whose packets to another site's node then take that node's route into wg.
        bound = {} if link.vxlan_dev is None else {"vxlan_link": ipr.link_lookup(ifname=link.vxlan_dev)[0]}
        ipr.link(
            "add",
            ifname=link.ifname,
            kind="vxlan",
            mtu=link.mtu,
            vxlan_id=link.vxlan_id,
            vxlan_port=link.vxlan_port,
            vxlan_local=str(link.vxlan_local),
            vxlan_learning=0,
            # DF on the outer packet: one that outgrows a hop (wg-crossmesh) fails loudly instead of
            # being fragmented, so the pod-MTU probes of `crossmesh test` prove the whole budget.
            vxlan_df=1,
            **bound,
        )
    else:
        raise ValueError(f"cannot create link kind {link.kind}")


def _up(ipr: NetNS, spec: Namespace, extra: tuple[str, ...]) -> list[str]:
    out = []
    wanted = {"lo"} | {link.ifname for link in spec.links} | {a[0] for a in spec.addresses} | set(extra)
    for name, msg in _links(ipr).items():
        if name in wanted and not (msg["flags"] & 1):
            ipr.link("set", index=msg["index"], state="up")
            out.append(f"link {name} up")
    return out


def _addresses(ipr: NetNS, spec: Namespace) -> list[str]:
    out: list[str] = []
    links = _links(ipr)
    desired: dict[str, set[IPv4Interface]] = {}
    for ifname, addr in spec.addresses:
        desired.setdefault(ifname, set()).add(addr)
    for ifname, addrs in desired.items():
        link = links.get(ifname)
        if link is None:
            continue  # a WireGuard device not started yet; the next pass sets it
        idx = link["index"]
        have = {IPv4Interface(f"{_attr(a, 'IFA_ADDRESS')}/{a['prefixlen']}") for a in ipr.get_addr(index=idx, family=2)}
        for a in sorted(addrs - have):
            # replace, not add: a node's agent may set its tunnel address at the same moment
            ipr.addr("replace", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
            out.append(f"address {a} on {ifname}")
        for a in sorted(have - addrs):
            ipr.addr("del", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
            out.append(f"address {a} removed from {ifname}")
    return out


def _route_key(dst: IPv4Network) -> str:
    return str(dst)


def _routes(ipr: NetNS, spec: Namespace) -> list[str]:
    out: list[str] = []
    links = _links(ipr)
    index_name = {m["index"]: n for n, m in links.items()}
    have: dict[str, tuple[str | None, str | None]] = {}
    found: dict[str, Any] = {}
    for r in ipr.get_routes(family=2, table=254):
        if r["proto"] != ROUTE_PROTO:
            continue
        dst = _attr(r, "RTA_DST") or "0.0.0.0"
        key = f"{dst}/{r['dst_len']}"
        have[key] = (index_name.get(_attr(r, "RTA_OIF")), _attr(r, "RTA_GATEWAY"))
        found[key] = r
    want: dict[str, Route] = {}
    for route in spec.routes:
        if route.dev in links:
            want[_route_key(route.dst)] = route
    for key, route in want.items():
        target = (route.dev, str(route.gateway) if route.gateway else None)
        if have.get(key) == target:
            continue
        kwargs: dict[str, Any] = {
            "dst": str(route.dst),
            "oif": links[route.dev]["index"],
            "proto": ROUTE_PROTO,
            "table": 254,
        }
        if route.gateway is not None:
            kwargs["gateway"] = str(route.gateway)
            if route.onlink:
                kwargs["flags"] = 4  # RTNH_F_ONLINK
        else:
            kwargs["scope"] = 253  # link
        try:
            ipr.route("replace", **kwargs)
        except NetlinkError as err:
            raise RuntimeError(f"{spec.name}: route {route.dst} via {route.gateway} dev {route.dev}: {err}") from err
        out.append(f"route {route.dst} {'via ' + str(route.gateway) + ' ' if route.gateway else ''}dev {route.dev}")
    for key in sorted(set(have) - set(want)):
        r = found[key]
        # Delete exactly the route seen (scope and device too): a looser match is refused.
        ipr.route("del", dst=key, table=254, proto=ROUTE_PROTO, scope=r["scope"], oif=_attr(r, "RTA_OIF"))
        out.append(f"route {key} removed")
    return out


def _transparent(ipr: NetNS, spec: Namespace) -> list[str]:
    """A mesh pod's policy routing (meshcapture): packets marked TRANSPARENT_MARK look up table
    ROUTE_TABLE, where every address is local — the app's answers to the proxy's transparent
    connections stay in the pod. Removed when the pod is no longer in a mesh."""
    out: list[str] = []
    mark, table = meshcapture.TRANSPARENT_MARK, meshcapture.ROUTE_TABLE
    rules = [r for r in ipr.get_rules(family=2) if _attr(r, "FRA_TABLE") == table]
    routes = [
        r
        for r in ipr.get_routes(family=2, table=table)
        if _attr(r, "RTA_TABLE") == table and r["dst_len"] == 0 and r["type"] == 2  # RTN_LOCAL
    ]
    if spec.transparent:
        if not any(_attr(r, "FRA_FWMARK") == mark for r in rules):
            ipr.rule("add", table=table, fwmark=mark, priority=meshcapture.RULE_PRIORITY)
            out.append(f"rule fwmark {mark:#x} lookup {table}")
        if not routes:
            ipr.route(
                "replace", dst="0.0.0.0/0", type="local", scope=254, oif=ipr.link_lookup(ifname="lo")[0], table=table
            )
            out.append(f"route local 0.0.0.0/0 dev lo table {table}")
        return out
    for r in rules:
        ipr.rule("del", table=table, priority=_attr(r, "FRA_PRIORITY"), fwmark=_attr(r, "FRA_FWMARK"))
        out.append(f"rule lookup {table} removed")
    for r in routes:
        ipr.route("del", dst="0.0.0.0/0", type="local", scope=254, table=table, oif=_attr(r, "RTA_OIF"))
        out.append(f"route local 0.0.0.0/0 table {table} removed")
    return out


def _neighbours(ipr: NetNS, spec: Namespace) -> list[str]:
    """Static ARP entries and VXLAN forwarding entries; each device's tables are read once."""
    out: list[str] = []
    if not spec.neighbours:
        return out
    links = _links(ipr)
    fdb: dict[int, set[tuple[str, str]]] = {}
    arp: dict[int, dict[str, str]] = {}
    for n in spec.neighbours:
        link = links.get(n.dev)
        if link is None:
            continue
        idx = link["index"]
        if idx not in fdb:
            fdb[idx] = {(_attr(m, "NDA_LLADDR"), _attr(m, "NDA_DST")) for m in ipr.fdb("dump", ifindex=idx)}
            arp[idx] = {_attr(m, "NDA_DST"): _attr(m, "NDA_LLADDR") for m in ipr.get_neighbours(ifindex=idx, family=2)}
        if (n.mac, str(n.vtep)) not in fdb[idx]:
            ipr.fdb("append", ifindex=idx, lladdr=n.mac, dst=str(n.vtep), state=0x80)
            out.append(f"fdb {n.mac} -> {n.vtep} on {n.dev}")
        if arp[idx].get(str(n.address)) != n.mac:
            ipr.neigh("replace", ifindex=idx, dst=str(n.address), lladdr=n.mac, state=0x80)  # NUD_PERMANENT
            out.append(f"neighbour {n.address} lladdr {n.mac} on {n.dev}")
    return out


HASH_RE = re.compile(r'comment "crossmesh:([0-9a-f]+)"')


def nft_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _nft(spec: Namespace) -> list[str]:
    assert spec.nft is not None  # noqa: S101 - caller checked
    digest = apply_table(spec.name, spec.nft)
    return [f"nftables table {spec.nft.name} ({digest})"] if digest else []


def apply_table(namespace: str, table: nft.Table) -> str | None:
    """Bring table `table.name` of `namespace` to `table`, replaced in one transaction; its digest
    when it changed, None when it already was (the digest rides in the table's comment)."""
    digest = nft_digest(nft.render(table))
    listed = list_table(namespace, table.name)
    found = HASH_RE.search(listed) if listed is not None else None
    if found and found.group(1) == digest:
        return None
    body = nft.render(dataclasses.replace(table, comment=f"crossmesh:{digest}"))
    script = f"table ip {table.name}\ndelete table ip {table.name}\n{body}"
    done = netns.run(namespace, ["nft", "-f", "-"], input=script)
    if done.returncode != 0:
        raise RuntimeError(f"{namespace}: nft rejected the ruleset: {done.stderr.strip()}")
    return digest


def list_table(namespace: str, name: str) -> str | None:
    """Table `name` of `namespace` as `nft list` prints it; None when there is none."""
    listed = netns.run(namespace, ["nft", "list", "table", "ip", name])
    return listed.stdout if listed.returncode == 0 else None


def remove_table(namespace: str, name: str) -> bool:
    """Delete table `name` of `namespace`; True when there was one."""
    if list_table(namespace, name) is None:
        return False
    done = netns.run(namespace, ["nft", "delete", "table", "ip", name])
    if done.returncode != 0:
        raise RuntimeError(f"{namespace}: nft could not delete table {name}: {done.stderr.strip()}")
    return True
