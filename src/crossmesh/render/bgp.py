"""BIRD 2 configuration: eBGP over each IPsec tunnel, active/standby the way AWS does it.

AWS's preference rules for a dynamic (BGP) Site-to-Site VPN (AWS re:Post knowledge center
"vpn-configure-tunnel-preference"; Site-to-Site VPN user guide "vpn-route-priority"):
- AWS → customer: the transit gateway prefers the path with the shortest AS path, then the
  lowest MED. AWS itself sets equal MEDs on both tunnels (and raises one while it updates that
  endpoint), so a customer gateway makes tunnel 2 the standby by prepending its own AS on what
  it announces there (`BgpPeerSpec.prepend`);
- customer → AWS: the gateway's own choice, with local preference (`local_pref`) — higher on
  tunnel 1 — since weight and local preference come before AS path and MED.

Each peer imports and exports exactly the listed prefixes (BIRD prefix sets without `+`: the
prefix itself, nothing longer), so a gateway never learns or leaks more than the plan says.
Prefixes this router announces are `originate`d as unreachable static routes that BIRD keeps to
itself (only BGP-learned routes go to the kernel): forwarding to them uses the kernel's own
routes. A dead tunnel is noticed by BGP's hold timer (3 s with keepalives every second, the
smallest BIRD allows) or, faster, BFD; AWS's endpoints do no BFD on VPN tunnels, so BFD is an
option the planner turns on only where both ends run this configuration.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import PurePosixPath

AMAZON_ASN = 64512
"""The transit gateway's default Amazon-side ASN (seed 001)."""
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


@dataclass(frozen=True, slots=True)
class BgpTimers:
    """Seconds. BIRD's `connect retry` and `error wait` are short so a healed tunnel is used again
    within seconds."""

    hold_s: int = 3
    keepalive_s: int = 1
    connect_retry_s: int = 1
    error_wait_s: tuple[int, int] = (1, 5)


@dataclass(frozen=True, slots=True)
class BfdSpec:
    interval_ms: int = 100
    multiplier: int = 3


@dataclass(frozen=True, slots=True)
class BgpPeerSpec:
    """One eBGP session, over one tunnel: its inside addresses and what crosses it."""

    name: str
    local_address: IPv4Address
    neighbor_address: IPv4Address
    neighbor_as: int
    interface: str
    import_prefixes: tuple[IPv4Network, ...]
    export_prefixes: tuple[IPv4Network, ...]
    local_pref: int = 100
    prepend: int = 0
    med: int | None = None
    local_as: int | None = None  # this session's own AS when not the router's (a second customer gateway's ASN)


@dataclass(frozen=True, slots=True)
class KernelTable:
    """A kernel routing table that receives the routes learned over `sessions` (a transit gateway's
    route table: the sessions of the connections it propagates)."""

    table: int
    sessions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BgpRouterSpec:
    router_id: IPv4Address
    local_as: int
    originate: tuple[IPv4Network, ...]
    peers: tuple[BgpPeerSpec, ...]
    timers: BgpTimers = field(default_factory=BgpTimers)
    bfd: BfdSpec | None = None
    # Empty: every learned route goes to the main table. Otherwise each table gets its sessions' routes.
    kernel_tables: tuple[KernelTable, ...] = ()


def _prefix_set(prefixes: Sequence[IPv4Network]) -> str:
    return "[ " + ", ".join(str(p) for p in sorted(set(prefixes))) + " ]"


def _check(router: BgpRouterSpec) -> None:
    names = [p.name for p in router.peers]
    if len(set(names)) != len(names):
        raise ValueError(f"peer names repeat: {names}")
    for p in router.peers:
        if not _NAME.match(p.name):
            raise ValueError(f"peer name {p.name!r}: letters, digits and _ only, 32 at most")
        if p.neighbor_as == (p.local_as or router.local_as):
            raise ValueError(f"{p.name}: eBGP only, the neighbour's AS {p.neighbor_as} is this router's")
        missing = set(p.export_prefixes) - set(router.originate)
        if missing:
            raise ValueError(f"{p.name}: exports {sorted(map(str, missing))}, which this router does not originate")
        if not 0 <= p.prepend <= 8:
            raise ValueError(f"{p.name}: prepend {p.prepend}: 0 to 8")


def _peer(router: BgpRouterSpec, p: BgpPeerSpec) -> str:
    t = router.timers
    imports = (
        f"      if net ~ {_prefix_set(p.import_prefixes)} then {{ bgp_local_pref = {p.local_pref}; accept; }}\n"
        if p.import_prefixes
        else ""
    ) + "      reject;\n"
    actions = "".join(f"bgp_path.prepend({p.local_as or router.local_as}); " for _ in range(p.prepend))
    if p.med is not None:
        actions += f"bgp_med = {p.med}; "
    exports = (
        f"      if net ~ {_prefix_set(p.export_prefixes)} then {{ {actions}accept; }}\n" if p.export_prefixes else ""
    ) + "      reject;\n"
    bfd = "  bfd on;\n" if router.bfd else ""
    return (
        f"protocol bgp {p.name} {{\n"
        f"  local {p.local_address} as {p.local_as or router.local_as};\n"
        f"  neighbor {p.neighbor_address} as {p.neighbor_as};\n"
        f'  interface "{p.interface}";\n'
        "  direct;\n"
        f"  hold time {t.hold_s};\n"
        f"  startup hold time {t.hold_s};\n"
        f"  keepalive time {t.keepalive_s};\n"
        f"  connect retry time {t.connect_retry_s};\n"
        "  connect delay time 1;\n"
        f"  error wait time {t.error_wait_s[0]}, {t.error_wait_s[1]};\n"
        f"{bfd}"
        "  ipv4 {\n"
        f"    import filter {{\n{imports}    }};\n"
        f"    export filter {{\n{exports}    }};\n"
        "  };\n"
        "}\n"
    )


def _kernel(router: BgpRouterSpec) -> list[str]:
    """The kernel protocols: BGP-learned routes only (the originated ones stay in BIRD). BIRD attaches
    one kernel protocol to a table of its own, so each kernel table gets a BIRD table, filled from
    master4 by a pipe that passes its sessions' routes."""
    if not router.kernel_tables:
        return ["protocol kernel {\n  ipv4 {\n    import none;\n    export where source = RTS_BGP;\n  };\n}\n\n"]
    known = {p.name for p in router.peers}
    out = []
    for k in router.kernel_tables:
        unknown = set(k.sessions) - known
        if unknown:
            raise ValueError(f"kernel table {k.table}: no session {sorted(unknown)}")
        names = " || ".join(f'proto = "{s}"' for s in sorted(k.sessions))
        export = f"export where source = RTS_BGP && ({names});" if names else "export none;"
        out.append(
            f"ipv4 table t{k.table};\n\n"
            f"protocol pipe pipe{k.table} {{\n  table master4;\n  peer table t{k.table};\n"
            f"  import none;\n  {export}\n}}\n\n"
            f"protocol kernel kernel{k.table} {{\n  kernel table {k.table};\n"
            f"  ipv4 {{\n    table t{k.table};\n    import none;\n    export all;\n  }};\n}}\n\n"
        )
    return out


def bird_conf(router: BgpRouterSpec, *, log: PurePosixPath) -> str:
    """bird.conf for `router`; BIRD logs to `log`."""
    _check(router)
    parts = [
        f'log "{log}" all;\n',
        f"router id {router.router_id};\n\n",
        "protocol device {\n  scan time 1;\n}\n\n",
    ]
    parts.extend(_kernel(router))
    if router.originate:
        routes = "".join(f"  route {n} unreachable;\n" for n in sorted(set(router.originate)))
        parts.append(f"protocol static owned {{\n  ipv4;\n{routes}}}\n\n")
    if router.bfd:
        b = router.bfd
        ifaces = " ".join(f'"{p.interface}"' for p in router.peers)
        parts.append(
            "protocol bfd {\n"
            f"  interface {', '.join(ifaces.split())} {{\n"
            f"    interval {b.interval_ms} ms;\n"
            f"    multiplier {b.multiplier};\n"
            "  };\n}\n\n"
        )
    parts.extend(_peer(router, p) + "\n" for p in router.peers)
    return "".join(parts)
