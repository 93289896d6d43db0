"""Bad input and bad conditions: a clear message and exit 2 before anything is built."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from labkit import copy_example, crossmesh

from crossmesh.drivers.lab import lab as labs
from crossmesh.drivers.lab import netns, topology


def test_not_root(tmp_path: Path) -> None:
    mesh, name = copy_example(tmp_path, "three-clouds")
    # In a new user namespace without a mapping we are uid 65534: exactly "not root" to the lab.
    done = subprocess.run(
        ["unshare", "--user", "crossmesh", "lab", "up", str(mesh)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "needs root" in done.stderr and "Traceback" not in done.stderr
    assert not netns.listing(f"cm-{topology.lab_tag(name)}")


def test_missing_package(tmp_path: Path) -> None:
    mesh, name = copy_example(tmp_path, "three-clouds")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("ip", "nft", "wg", "wg-quick", "python3", "env", "bash"):  # everything but wireguard-go
        found = shutil.which(tool)
        if found:
            (bindir / tool).symlink_to(found)
    env = dict(os.environ, PATH=f"{bindir}:{Path(shutil.which('crossmesh') or '').parent}")
    done = subprocess.run(
        [shutil.which("crossmesh") or "crossmesh", "lab", "up", str(mesh)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    if shutil.which("wireguard-go", path=env["PATH"]):
        return  # wireguard-go sits beside crossmesh on this machine; nothing to hide
    assert done.returncode == 2, done.stderr
    assert "wireguard-go" in done.stderr and "apt-get install" in done.stderr
    assert not netns.listing(f"cm-{topology.lab_tag(name)}")


def test_invalid_mesh_builds_nothing(tmp_path: Path) -> None:
    mesh, name = copy_example(tmp_path, "three-clouds")
    mesh.write_text(mesh.read_text().replace("address: 10.1.1.5", "address: 10.9.1.5"))
    done = crossmesh("lab", "up", str(mesh))
    assert done.returncode == 2
    assert "10.9.1.5 is outside site azure-we's network" in done.stderr
    assert not netns.listing(f"cm-{topology.lab_tag(name)}")
    assert not (mesh.parent / ".crossmesh").exists()


def test_second_lab_with_clashing_names(make_lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab("three-clouds")
    lab.up()
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    shutil.copytree(lab.mesh.parent / "apps", other_dir / "apps")
    other = other_dir / "mesh.yaml"
    other.write_text(lab.mesh.read_text())  # same mesh name → same cm-<tag> names
    done = crossmesh("lab", "up", str(other))
    assert done.returncode == 2
    assert "already running" in done.stderr
    # The running lab is untouched.
    code, report = lab.test("--test", "cross-cluster/http")
    assert code == 0


def test_unknown_pod_in_exec(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab("three-clouds")
    lab.up()
    done = crossmesh("lab", "exec", "--mesh", str(lab.mesh), "cluster1/default/nope-0", "--", "true")
    assert done.returncode == 2
    assert "no pod cluster1/default/nope-0" in done.stderr


def test_killed_halfway_then_down_leaves_nothing(tmp_path: Path) -> None:
    mesh, name = copy_example(tmp_path, "three-clouds")
    tag = topology.lab_tag(name)
    proc = subprocess.Popen(
        ["crossmesh", "lab", "up", str(mesh)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        # Wait until the build is under way: namespaces exist, tunnels not yet all up.
        while time.monotonic() < deadline and len(netns.listing(f"cm-{tag}-")) < 5:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert netns.listing(f"cm-{tag}-"), "the kill came too late to leave anything"
    finally:
        # By this mesh, not --all: other labs on this host are left alone.
        done = crossmesh("lab", "down", "--mesh", str(mesh))
    assert done.returncode == 0, done.stderr
    assert labs.leftovers(tag) == []
