"""Lab tests build real namespaces, wireguard-go tunnels and nftables rules: root only.

Each test copies an example to a temporary directory under a unique mesh name, so
its lab tag (cm-<tag>) is its own, and tears the lab down afterwards, also on failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from labkit import Lab, copy_example

from crossmesh.drivers.lab import lab as labs

NEEDED = ("wireguard-go", "wg", "wg-quick", "nft", "ip")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "lab tests need root (network namespaces, nftables, TUN)"
    else:
        missing = [c for c in NEEDED if shutil.which(c) is None]
        if missing:
            reason = f"lab tests need {', '.join(missing)} (apt-get install wireguard-go wireguard-tools nftables)"
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[object]:
    made: list[Lab] = []

    def make(example: str) -> Lab:
        mesh, name = copy_example(tmp_path, example)
        lab = Lab(mesh, name)
        made.append(lab)
        return lab

    yield make
    for lab in made:
        lab.down()
        assert labs.leftovers(lab.tag) == [], f"lab cm-{lab.tag} left things behind"
