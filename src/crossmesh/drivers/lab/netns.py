"""Network namespaces: create, remove, list, and run code or processes inside one.

`run_in` enters a namespace on a short-lived thread with setns(2): a socket opened
there stays in that namespace, and /proc/sys/net written there is the namespace's
own. That lets one Python process probe and serve many namespaces without forking.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
NETNS_DIR = Path("/run/netns")
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def create(name: str) -> bool:
    """Create the namespace if missing; True when it was created."""
    if exists(name):
        return False
    from pyroute2 import netns  # imported when used: the agents never need it

    netns.create(name)
    return True


def remove(name: str) -> None:
    if exists(name):
        from pyroute2 import netns

        netns.remove(name)


def pids(name: str) -> list[int]:
    """The processes in namespace `name` (`ip netns pids`)."""
    import subprocess

    done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def listing(prefix: str = "cm-") -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def enter(name: str) -> None:
    """Move the calling thread into the namespace."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a thread that lives in namespace `name`; exceptions propagate."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            enter(name)
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name=f"netns-{name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def read_sysctl(name: str, key: str) -> str:
    return run_in(name, lambda: Path("/proc/sys", key).read_text().strip())


def write_sysctl(name: str, key: str, value: str) -> None:
    run_in(name, lambda: Path("/proc/sys", key).write_text(value))


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", name, *argv]


def run(
    name: str, argv: Sequence[str], *, input: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        exec_argv(name, argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
    )


def open_ns(name: str) -> IPRoute:
    """An rtnetlink handle on namespace `name` (which must exist).

    The netlink socket is opened on a thread inside the namespace (`run_in`) and handed to
    pyroute2: its own `NetNS(name)` forks a child process per socket to do the same, ≈20 ms
    each, and `lab up` of a 30-node mesh opens a few hundred of them.
    """
    from pyroute2 import IPRoute

    sock = run_in(name, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))
    return IPRoute(fileno=sock.detach())
