"""iproute2 (`ip`) as a library: JSON reads and batched changes, in a namespace or on the host.

The agents use it instead of pyroute2: one short process per read or per batch of changes
costs a few milliseconds of CPU, where pyroute2 costs tens of milliseconds to import and to
parse a dump in Python — and in the lab thirty agents react to the same event on two CPUs.
"""

from __future__ import annotations

import json
import subprocess
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
