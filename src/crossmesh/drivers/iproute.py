"""iproute2 (`ip`) as a library: JSON reads and batched changes, in a namespace or on the host.

The agents use it instead of pyroute2: one short process per read or per batch of changes
costs a few milliseconds of CPU, where pyroute2 costs tens of milliseconds to import and to
parse a dump in Python — and in the lab thirty agents react to the same event on two CPUs.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any


def _argv(namespace: str | None, args: list[str]) -> list[str]:
    return ["ip", *(["-n", namespace] if namespace else []), *args]


def show(namespace: str | None, args: list[str]) -> list[dict[str, Any]] | None:
    """`ip -j ARGS` parsed; None when ip fails (a device that does not exist)."""
    done = subprocess.run(_argv(namespace, ["-j", *args]), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    data: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return data


def batch(namespace: str | None, commands: list[str]) -> None:
    """Run `commands` (lines of `ip -batch`) in one process; stops at the first that fails."""
    if not commands:
        return
    done = subprocess.run(
        _argv(namespace, ["-batch", "-"]), input="\n".join(commands) + "\n", capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"ip -batch: {done.stderr.strip()}")


# --- routes over rtnetlink, without a process ------------------------------------------------
# The agents' hot path (a peer joins or leaves: a few routes) speaks rtnetlink itself: one
# socket, one message per route, acknowledged — what `ip route replace/del` sends.
_NLMSG_ERROR = 2
_RTM_NEWROUTE, _RTM_DELROUTE = 24, 25
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_REPLACE, _NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
_RTA_DST, _RTA_OIF, _RTA_GATEWAY = 1, 4, 5
_RT_TABLE_MAIN, _RT_SCOPE_UNIVERSE, _RT_SCOPE_LINK, _RT_SCOPE_NOWHERE, _RTN_UNICAST = 254, 0, 253, 255, 1


def _route_message(seq: int, add: bool, dst: IPv4Network, oif: int | None, proto: int, via: str | None = None) -> bytes:
    if add:
        kind, flags = _RTM_NEWROUTE, _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_REPLACE
        scope = _RT_SCOPE_LINK if via is None else _RT_SCOPE_UNIVERSE
        rtm = struct.pack("BBBBBBBBI", 2, dst.prefixlen, 0, 0, _RT_TABLE_MAIN, proto, scope, _RTN_UNICAST, 0)
        attrs = struct.pack("HH4s", 8, _RTA_DST, dst.network_address.packed)
        if oif is not None:
            attrs += struct.pack("HHI", 8, _RTA_OIF, oif)
        if via is not None:
            attrs += struct.pack("HH4s", 8, _RTA_GATEWAY, IPv4Address(via).packed)
    else:  # any scope and type, this protocol: what `ip route del DST proto P` matches
        kind, flags = _RTM_DELROUTE, _NLM_F_REQUEST | _NLM_F_ACK
        rtm = struct.pack("BBBBBBBBI", 2, dst.prefixlen, 0, 0, _RT_TABLE_MAIN, proto, _RT_SCOPE_NOWHERE, 0, 0)
        attrs = struct.pack("HH4s", 8, _RTA_DST, dst.network_address.packed)
    body = rtm + attrs
    return struct.pack("IHHII", 16 + len(body), kind, flags, seq, 0) + body


def set_routes(namespace: str | None, ifname: str, replace: list[str], delete: list[str], proto: int) -> None:
    """`ip route replace DST dev IFNAME proto P scope link` for each of `replace` and
    `ip route del DST proto P` for each of `delete`, in the main table; raises on the first
    route the kernel refuses (a route already gone counts as deleted)."""
    if replace or delete:
        messages: list[tuple[bool, IPv4Network, str | None]] = [(True, IPv4Network(d), None) for d in replace]
        _send(namespace, messages + [(False, IPv4Network(d), None) for d in delete], proto, ifname)


def set_via_routes(namespace: str | None, replace: Mapping[str, str], delete: list[str], proto: int) -> None:
    """`ip route replace DST via GATEWAY proto P` for each DST → GATEWAY of `replace` (the kernel
    picks the device that reaches GATEWAY) and `ip route del DST proto P` for each of `delete`."""
    if replace or delete:
        messages: list[tuple[bool, IPv4Network, str | None]] = [(True, IPv4Network(d), v) for d, v in replace.items()]
        _send(namespace, messages + [(False, IPv4Network(d), None) for d in delete], proto, None)


def _send(
    namespace: str | None, messages: list[tuple[bool, IPv4Network, str | None]], proto: int, ifname: str | None
) -> None:
    def work() -> None:
        oif = socket.if_nametoindex(ifname) if ifname is not None else None  # in this thread's namespace
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
            sock.settimeout(5)
            sock.bind((0, 0))
            for seq, (add, dst, via) in enumerate(messages, start=1):
                sock.send(_route_message(seq, add, dst, oif, proto, via))
            pending = set(range(1, len(messages) + 1))
            while pending:
                data = sock.recv(65536)
                offset = 0
                while offset + 16 <= len(data):
                    length, kind, _, seq, _ = struct.unpack_from("IHHII", data, offset)
                    if kind == _NLMSG_ERROR:
                        (errno_,) = struct.unpack_from("i", data, offset + 16)
                        add, dst, via = messages[seq - 1]
                        if errno_ and not (not add and -errno_ == errno.ESRCH):
                            verb = "replace" if add else "del"
                            how = f"via {via}" if via is not None else f"dev {ifname}"
                            raise RuntimeError(f"ip route {verb} {dst} {how}: {os.strerror(-errno_)}")
                        pending.discard(seq)
                    offset += (length + 3) & ~3

    if namespace is None:
        work()
    else:
        from crossmesh.drivers.lab import netns

        netns.run_in(namespace, work)
