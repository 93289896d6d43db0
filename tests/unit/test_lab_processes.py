"""The lab finds its processes by command line: the wireguard-go of device cm-x-g5 must not
be mistaken for that of cm-x-g50 (crash-node and remove-node kill by this)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from crossmesh.drivers.lab import lab as labs


@pytest.fixture
def fake_devices() -> Iterator[dict[str, int]]:
    procs = {}
    for ifname in ("cm-zq9x-g5", "cm-zq9x-g50"):
        # A process whose command line reads `wireguard-go - -f IFNAME`, as the lab's do.
        procs[ifname] = subprocess.Popen(
            ["bash", "-c", f'exec -a wireguard-go python3 - -f {ifname} <<< "import time; time.sleep(30)"']
        )
    time.sleep(0.3)
    try:
        yield {k: p.pid for k, p in procs.items()}
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_wireguard_pids_match_the_exact_device(fake_devices: dict[str, int]) -> None:
    assert labs.wireguard_pids("cm-zq9x-g5") == [fake_devices["cm-zq9x-g5"]]
    assert labs.wireguard_pids("cm-zq9x-g50") == [fake_devices["cm-zq9x-g50"]]
    assert labs.wireguard_pids("cm-zq9x-g") == []
