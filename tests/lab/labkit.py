"""Helpers for lab tests: run the real `crossmesh` command, copy an example under a unique name."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns, topology

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def crossmesh(*args: str, check: bool = False, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["crossmesh", *args], capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    assert "Traceback" not in done.stderr, done.stderr
    if check:
        assert done.returncode == 0, f"crossmesh {' '.join(args)} → {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


class Lab:
    def __init__(self, mesh: Path, name: str, tag: str | None = None) -> None:
        self.mesh = mesh
        self.name = name
        self.tag = tag or topology.lab_tag(name)  # a given tag: `lab up --tag`
        self._tag_args = ("--tag", tag) if tag else ()

    def up(self, *extra: str) -> dict[str, object]:
        done = crossmesh("lab", "up", str(self.mesh), "-o", "json", *self._tag_args, *extra, check=True)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def test(self, *extra: str) -> tuple[int, dict[str, object]]:
        done = crossmesh("test", str(self.mesh), "-o", "json", *extra)
        return done.returncode, json.loads(done.stdout)

    def down(self) -> None:
        crossmesh("lab", "down", "--mesh", str(self.mesh))
        # Whatever `down --mesh` could not find through the state (a half-built lab), remove by tag.
        labs.down(self.tag)


def copy_example(tmp: Path, example: str) -> tuple[Path, str]:
    """A copy of examples/EXAMPLE (or of a repository folder such as tests/golden/gateways) under a
    unique mesh name, without state or expected output."""
    source = EXAMPLES / example if "/" not in example else EXAMPLES.parent / example
    target = tmp / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".crossmesh", "state", "expected"))
    mesh = target / "mesh.yaml"
    name = f"t{uuid.uuid4().hex[:10]}"
    text = mesh.read_text()
    original = next(line for line in text.splitlines() if line.startswith("  name: "))
    mesh.write_text(text.replace(original, f"  name: {name}", 1))
    return mesh, name


@contextlib.contextmanager
def running_lab(tmp: Path, example: str, prepare: Callable[[Path], None] | None = None) -> Iterator[Lab]:
    """A copy of `example` (copy_example) brought up, then taken down however the block ends, and
    checked for leftovers: what a module's shared lab fixture needs. `prepare` edits the copy (its
    mesh file's path) before it is brought up."""
    mesh, name = copy_example(tmp, example)
    if prepare is not None:
        prepare(mesh)
    made = Lab(mesh, name)
    try:
        made.up()
        yield made
    finally:
        made.down()
        assert labs.leftovers(made.tag) == [], f"lab cm-{made.tag} left things behind"


def connect(st: labs.LabState, pod: str, address: str, port: int, sport: int) -> None:
    """One TCP connection attempt from `pod`'s namespace, from source port `sport` (so its flow
    records can be told apart), given half a second; refused or dropped is fine."""

    def go() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("", sport))
            s.settimeout(0.5)
            with contextlib.suppress(OSError):
                s.connect((address, port))

    netns.run_in(st.pods[pod].namespace, go)
