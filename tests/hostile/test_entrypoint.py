"""The worst inputs through the real `crossmesh` entry point in a fresh interpreter, as a user runs it:
with an address-space limit and a timeout, so that a command that reads a FIFO or expands a bomb is
stopped by the test rather than by the machine. (The corpus runs the same `app` in forked children;
this checks nothing in a fresh process — imports, signal handling, the console script — changes it.)"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from hostile.corpus import BASES, Workspace, _bomb
from hostile.runner import MEMORY_LIMIT, POSITIONED, TIME_LIMIT

ENTRY = "from crossmesh.cli.main import main; main()"  # what pyproject's [project.scripts] runs
STARTUP = 3.0  # seconds for a fresh interpreter to import crossmesh on a busy machine


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CROSSMESH_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # this checkout's crossmesh, as pytest sees it
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=STARTUP + TIME_LIMIT,
        preexec_fn=_limits,  # noqa: PLW1509 - no threads in the test process at this point
        env=env,
        check=False,
    )


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    w = Workspace(tmp_path)
    w.prepare(BASES["hybrid"])
    return w


def test_alias_bomb_is_refused_with_its_line(ws: Workspace) -> None:
    ws.mesh.write_text(ws.mesh.read_text() + _bomb(12, 10))
    proc = _run(["validate", "mesh.yaml"], ws.project)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert any(m["file"] == "mesh.yaml" for m in POSITIONED.finditer(proc.stderr)), proc.stderr


def test_fifo_mesh_is_refused(ws: Workspace) -> None:
    ws.mesh.unlink()
    os.mkfifo(ws.mesh)
    try:
        proc = _run(["plan", "mesh.yaml", "-o", "json"], ws.project)
    except subprocess.TimeoutExpired:
        pytest.fail("crossmesh plan of a FIFO is still waiting after the timeout")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "mesh.yaml:1:1:" in proc.stderr


def test_dev_zero_mesh_is_refused(ws: Workspace) -> None:
    ws.mesh.unlink()
    ws.mesh.symlink_to("/dev/zero")
    proc = _run(["validate", "mesh.yaml"], ws.project)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "mesh.yaml:1:1:" in proc.stderr
