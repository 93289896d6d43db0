"""Traps around what `render` writes and where crossmesh keeps its keys.

Each test builds a trap someone else could have set in a folder crossmesh writes to: a
planted `.crossmesh-rendered` listing files outside, links in place of folders or of keys,
a umask of 000, a state folder others may write to. Each asserts what a user would notice:
exit 2 with the refusal naming the path and the fix, victims untouched, nothing written
outside the output folder, modes as the README states them.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from crossmesh.cli.main import app
from crossmesh.errors import UnsafePath
from crossmesh.state.disk import write_private

REPO = Path(__file__).resolve().parents[2]
MESH = REPO / "tests" / "golden" / "gateways" / "mesh.yaml"  # folders with and without keys, routes.sh
NODE = "gw-west"  # a node of MESH with a tunnel: nodes/gw-west/ holds its private key


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def render(out: Path, state: Path) -> Result:
    return run("render", MESH, "--output-dir", out, "--state", state)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every entry under `root` (links not followed): its mode and content or link target."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[path.relative_to(root).as_posix()] = (st.st_mode, os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            out[path.relative_to(root).as_posix()] = (st.st_mode, path.read_bytes())
        else:
            out[path.relative_to(root).as_posix()] = (st.st_mode, "")
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder of victims beside the output folder: nothing may touch it."""
    victims = tmp_path / "outside"
    victims.mkdir()
    (victims / "victim").write_text("keep me\n")
    (victims / "sub").mkdir()
    (victims / "sub" / "wg-crossmesh.conf").write_text("keep me too\n")
    return victims


# --- the list of files the last render wrote -----------------------------------------------


def test_render_removes_only_regular_files_it_listed_inside_its_folder(tmp_path: Path, outside: Path) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    assert render(out, state).exit_code == 0
    (out / "nodes" / "old-node").mkdir()
    (out / "nodes" / "old-node" / "wg-crossmesh.conf").write_text("stale\n")
    (out / "link-to-victim").symlink_to(outside / "victim")
    (out / "via").symlink_to(outside / "sub")
    (out / "clusters" / "a-folder").mkdir()
    listed = [
        "../outside/victim",
        str(outside / "victim"),
        "nodes/../../outside/victim",
        "./nodes/old-node/../../../outside/victim",
        "link-to-victim",
        "via/wg-crossmesh.conf",
        "clusters/a-folder",
        "nodes/old-node/wg-crossmesh.conf",  # the one stale file render made
        "nodes/never-there/wg-crossmesh.conf",
    ]
    index = out / ".crossmesh-rendered"
    index.write_text(index.read_text() + "".join(f"{e}\n" for e in listed))
    before = tree(outside)

    result = render(out, state)

    assert result.exit_code == 0, result.output
    assert tree(outside) == before
    assert not (out / "nodes" / "old-node" / "wg-crossmesh.conf").exists()
    assert (out / "link-to-victim").is_symlink() and (out / "via").is_symlink()
    assert (out / "clusters" / "a-folder").is_dir()
    for entry in listed[:7]:
        assert f"lists {entry!r}" in result.output, f"no warning names {entry}"
    assert "symbolic link" in result.output and "not a file render wrote" in result.output
    assert "'nodes/old-node/wg-crossmesh.conf'" not in result.output and "never-there" not in result.output
    assert index.read_text() == "".join(f"{rel}\n" for rel in sorted(tree_files(out)))


def tree_files(out: Path) -> list[str]:
    return [rel for rel, (m, _) in tree(out).items() if stat.S_ISREG(m) and rel != ".crossmesh-rendered"]


@pytest.mark.parametrize("planted", ["link", "fifo", "folder-link"])
def test_a_list_that_is_not_a_file_is_ignored_not_followed(tmp_path: Path, outside: Path, planted: str) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    out.mkdir()
    index = out / ".crossmesh-rendered"
    if planted == "link":
        index.symlink_to("/dev/zero")  # read through the link, it would never end
    elif planted == "fifo":
        os.mkfifo(index)  # opened for reading, it would wait for a writer forever
    else:
        (outside / "list").write_text("../outside/victim\n")
        index.symlink_to(outside / "list")
    before = tree(outside)

    result = render(out, state)

    assert result.exit_code == 0, result.output
    assert f"{index} is not a list render wrote" in result.output
    assert tree(outside) == before
    assert not index.is_symlink() and index.is_file()  # replaced by the real list


# --- links and files where the tree needs folders ------------------------------------------


@pytest.mark.parametrize("planted", ["nodes", "clusters", f"nodes/{NODE}", "clusters/core"])
def test_render_refuses_a_linked_folder_inside_the_output_and_writes_nothing(
    tmp_path: Path, outside: Path, planted: str
) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    (out / planted).symlink_to(outside / "sub")
    before_out, before_outside = tree(out), tree(outside)

    result = render(out, state)

    assert result.exit_code == 2, result.output
    assert f"{out / planted} is a symbolic link (to {outside / 'sub'}), not a folder" in result.output
    assert f"nothing was written to {out}" in result.output
    assert "Traceback" not in result.output
    assert tree(outside) == before_outside
    assert tree(out) == before_out


def test_render_names_every_refusal_at_once(tmp_path: Path, outside: Path) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    (out / "nodes" / "gw-east-1" / "wg-crossmesh.conf").mkdir(parents=True)
    (out / "nodes" / NODE).write_text("a file where a folder goes\n")
    (out / "clusters").symlink_to(outside)

    result = render(out, state)

    assert result.exit_code == 2, result.output
    assert f"{out / 'clusters'} is a symbolic link" in result.output
    assert f"{out / 'nodes' / NODE} is a regular file, not a folder — remove it" in result.output
    assert f"{out / 'nodes/gw-east-1/wg-crossmesh.conf'} is a folder where render writes a file" in result.output
    assert not (out / ".crossmesh-rendered").exists()


def test_a_link_where_a_file_goes_is_replaced_not_followed(tmp_path: Path, outside: Path) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    conf = out / "nodes" / NODE / "wg-crossmesh.conf"
    conf.parent.mkdir(parents=True)
    conf.symlink_to(outside / "victim")
    before = tree(outside)

    assert render(out, state).exit_code == 0

    assert tree(outside) == before
    assert not conf.is_symlink() and mode(conf) == 0o600
    assert "PrivateKey = " in conf.read_text()


def test_an_output_folder_named_as_a_link_is_followed(tmp_path: Path) -> None:
    # As `cp -r src link/` does: the folder the user names is theirs to choose.
    real, link, state = tmp_path / "real", tmp_path / "link", tmp_path / "state"
    real.mkdir()
    link.symlink_to(real)
    result = render(link, state)
    assert result.exit_code == 0, result.output
    assert (real / "nodes" / NODE / "wg-crossmesh.conf").is_file()
    assert link.is_symlink()


# --- modes whatever the umask ----------------------------------------------------------------


def test_modes_under_umask_000(tmp_path: Path, open_umask: None) -> None:
    out, state = tmp_path / "new" / "out", tmp_path / "new" / "state"
    assert render(out, state).exit_code == 0
    first = tree(out)
    # A folder left open (say by an older crossmesh under this umask) is closed again.
    (out / "nodes" / NODE).chmod(0o777)
    (out / "clusters").chmod(0o777)
    assert render(out, state).exit_code == 0
    assert tree(out) == first

    assert mode(tmp_path / "new") == 0o755
    assert mode(state) == 0o700 and mode(state / "keys") == 0o700
    for key in (state / "keys").glob("*.key"):
        assert mode(key) == 0o600, key
    assert mode(state / "pki") == 0o700
    for key in (state / "pki").glob("*.key"):
        assert mode(key) == 0o600, key
    for name in ("allocations.json", "applied-plan.json"):
        assert mode(state / name) == 0o644
    assert mode(out) == 0o755
    expected = {
        "clusters": 0o755,
        "clusters/core": 0o700,  # holds the clustermesh-apiserver's private keys
        "clusters/core/cilium-values.yaml": 0o644,
        "clusters/core/clustermesh-secrets.yaml": 0o600,
        "nodes": 0o755,
        f"nodes/{NODE}": 0o700,  # holds the node's private key
        f"nodes/{NODE}/wg-crossmesh.conf": 0o600,
        f"nodes/{NODE}/k3s-config.yaml": 0o644,
        f"nodes/{NODE}/routes.sh": 0o755,
        "nodes/east-worker-1": 0o755,  # no tunnel, no key
        ".crossmesh-rendered": 0o644,
    }
    assert {rel: stat.S_IMODE(first[rel][0]) for rel in expected} == expected
    assert not [rel for rel, (m, _) in first.items() if m & 0o002], "something is world-writable"


def test_write_private_is_0600_and_follows_no_link(tmp_path: Path, outside: Path, open_umask: None) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    folder.chmod(0o700)
    write_private(folder / "a.key", "secret\n")
    assert mode(folder / "a.key") == 0o600
    (folder / "b.key").symlink_to(outside / "victim")
    write_private(folder / "b.key", "secret\n")
    assert (outside / "victim").read_text() == "keep me\n"
    assert not (folder / "b.key").is_symlink() and mode(folder / "b.key") == 0o600
    (tmp_path / "linked").symlink_to(outside)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        write_private(tmp_path / "linked" / "c.key", "secret\n")
    assert not (outside / "c.key").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["a.key", "b.key"]  # no temporary file left


# --- the state folder and its keys -----------------------------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A state folder someone else prepared: its keys would be used to encrypt the mesh."""
    other = tmp_path / "planted"
    assert render(tmp_path / "planted-out", other).exit_code == 0
    return other


def planted_key_used(out: Path, planted: Path) -> bool:
    keys = [p.read_text().strip() for p in (planted / "keys").glob("*.key")]
    return any(k in p.read_text() for p in out.rglob("*") if p.is_file() for k in keys)


def test_a_linked_state_folder_is_refused(tmp_path: Path, planted: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "out"
    state.symlink_to(planted)
    result = render(out, state)
    assert result.exit_code == 2, result.output
    assert f"{state} is a symbolic link (to {planted}), not a folder" in result.output
    assert "--state" in result.output
    assert not out.exists()
    assert run("validate", MESH, "--state", state).exit_code == 2  # reading it is refused too


def test_a_linked_keys_folder_is_refused(tmp_path: Path, planted: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "out"
    state.mkdir(mode=0o700)
    (state / "keys").symlink_to(planted / "keys")
    result = render(out, state)
    assert result.exit_code == 2, result.output
    assert f"{state / 'keys'} is a symbolic link (to {planted / 'keys'})" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("folder", "bits"),
    [("", 0o777), ("", 0o720), ("keys", 0o707), ("keys", 0o770)],
    ids=["777", "720", "keys-707", "keys-770"],
)
def test_a_state_folder_others_may_write_to_is_refused(tmp_path: Path, folder: str, bits: int) -> None:
    state, out = tmp_path / "state", tmp_path / "out"
    assert render(out, state).exit_code == 0
    (state / folder).chmod(bits)
    before = tree(out)
    result = render(out, state)
    assert result.exit_code == 2, result.output
    shown = state / folder if folder else state
    assert f"{shown} is writable by other users (mode {bits:04o}) — run `chmod 700 {shown}`" in result.output
    assert tree(out) == before


@pytest.mark.parametrize("trap", ["link", "readable", "fifo", "folder", "other-owner"])
def test_a_planted_key_is_refused(tmp_path: Path, planted: Path, trap: str) -> None:
    state, out = tmp_path / "state", tmp_path / "out"
    (state / "keys").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    key = state / "keys" / f"{NODE}.key"
    if trap == "link":
        key.symlink_to(planted / "keys" / f"{NODE}.key")
        expected = f"{key} is a symbolic link (to {planted / 'keys' / f'{NODE}.key'}), not a regular file"
    elif trap == "readable":
        key.write_text((planted / "keys" / f"{NODE}.key").read_text())
        key.chmod(0o644)
        expected = f"{key} is readable by other users (mode 0644) — run `chmod 600 {key}`"
    elif trap == "fifo":
        os.mkfifo(key, 0o600)
        expected = f"{key} is a FIFO (named pipe), not a regular file"
    elif trap == "folder":
        key.mkdir()
        expected = f"{key} is a folder, not a regular file"
    else:
        if os.geteuid() != 0:
            pytest.skip("only root can give a file to another user")
        key.write_text((planted / "keys" / f"{NODE}.key").read_text())
        key.chmod(0o600)
        os.chown(key, 4321, -1)
        expected = f"{key} belongs to uid 4321, not to you (uid 0)"
    if trap == "fifo":  # in a child process with a deadline: a FIFO opened the old way blocks forever
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "crossmesh.cli.main",
                "render",
                str(MESH),
                "--output-dir",
                str(out),
                "--state",
                str(state),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        code, output = proc.returncode, proc.stdout + proc.stderr
    else:
        result = render(out, state)
        code, output = result.exit_code, result.output
    assert code == 2, output
    assert expected in output
    assert "Traceback" not in output
    assert not out.exists() or not planted_key_used(out, planted)


@pytest.mark.parametrize("where", ["under-a-file", "dangling-link", "proc"])
def test_an_output_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    out = {
        "under-a-file": tmp_path / "a-file" / "out",
        "dangling-link": tmp_path / "dangling",
        "proc": Path("/proc/crossmesh-cannot-make-this"),  # not even root makes folders there
    }[where]
    result = render(out, tmp_path / "state")
    assert result.exit_code == 2, result.output
    assert f"{out}" in result.output and "folder" in result.output
    assert "internal error" not in result.output
    assert not (tmp_path / "nowhere").exists()
