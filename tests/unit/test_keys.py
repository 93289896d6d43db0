"""WireGuard keys: the same keys `wg` makes and derives, stored 0600, and never leaked.

A private key may appear in exactly two places outside the key store: the node's own
wg-quick file and its Talos documents, both mode 0600. Not in `plan` output, not in
another node's files, not in the cluster-wide files that are meant to be shared.
"""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from crossmesh.cli.main import app
from crossmesh.errors import StateError, UnsafePath
from crossmesh.state import keys
from crossmesh.state.store import StateStore

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*/mesh.yaml"))
WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None, reason="wireguard-tools (`wg`) is not installed: cannot compare with it")


def wg(*args: str, stdin: str = "") -> str:
    assert WG is not None
    return subprocess.run([WG, *args], input=stdin, capture_output=True, text=True, check=True).stdout.strip()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the keys themselves -------------------------------------------------------------------


@needs_wg
def test_public_key_is_what_wg_pubkey_prints_for_our_keys() -> None:
    for _ in range(10):
        private = keys.generate_private_key()
        assert keys.public_key(private) == wg("pubkey", stdin=private + "\n")


@needs_wg
def test_public_key_is_what_wg_pubkey_prints_for_wg_genkey_keys() -> None:
    for _ in range(5):
        private = wg("genkey")
        assert keys.is_valid_key(private)
        assert keys.public_key(private) == wg("pubkey", stdin=private + "\n")


@needs_wg
@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32) | st.sampled_from([bytes(32), b"\xff" * 32]))
def test_public_key_is_what_wg_pubkey_prints_for_any_32_bytes(raw: bytes) -> None:
    # Keys written by hand or by other tools need not be clamped; wg clamps when it derives.
    private = base64.b64encode(raw).decode()
    assert keys.public_key(private) == wg("pubkey", stdin=private + "\n")


def test_generated_keys_are_clamped_like_wg_genkey() -> None:
    # The kernel stores the private key clamped, and `wg show`/`wg showconf` print it so: an
    # unclamped key in the file would never match what the device reports.
    for _ in range(50):
        raw = base64.b64decode(keys.generate_private_key())
        assert raw[0] & 7 == 0
        assert raw[31] & 0x80 == 0
        assert raw[31] & 0x40 == 0x40


def test_generated_keys_differ() -> None:
    assert len({keys.generate_private_key() for _ in range(20)}) == 20


def test_key_syntax() -> None:
    good = keys.generate_private_key()
    assert keys.is_valid_key(good)
    assert keys.is_valid_key(keys.public_key(good))
    for bad in ["", "not a key", good[:-4], good + "AAAA", base64.b64encode(bytes(31)).decode(), "!" * 44]:
        assert not keys.is_valid_key(bad), bad
    with pytest.raises(ValueError):
        keys.public_key(base64.b64encode(bytes(16)).decode())


# --- the key store -------------------------------------------------------------------------


def test_store_writes_private_keys_0600_in_a_0700_directory(tmp_path: Path, open_umask: None) -> None:
    store = StateStore(tmp_path / "state")
    public = store.ensure_keys(["n2", "n1"])
    assert sorted(public) == ["n1", "n2"]
    assert mode(store.key_dir) == 0o700
    for node, pub in public.items():
        key_file = store.key_dir / f"{node}.key"
        assert mode(key_file) == 0o600
        private = key_file.read_text().strip()
        assert keys.public_key(private) == pub
        assert (store.key_dir / f"{node}.pub").read_text().strip() == pub
    # Nothing else in the key directory, not even a temporary file from the atomic write.
    assert sorted(p.name for p in store.key_dir.iterdir()) == ["n1.key", "n1.pub", "n2.key", "n2.pub"]


def test_store_keeps_keys_across_runs(tmp_path: Path) -> None:
    first = StateStore(tmp_path).ensure_keys(["a", "b"])
    again = StateStore(tmp_path).ensure_keys(["a", "b", "c"])
    assert {k: again[k] for k in first} == first
    assert StateStore(tmp_path).public_keys(["a", "b", "c"]) == again


def test_store_refuses_a_private_key_left_readable(tmp_path: Path) -> None:
    # Others may have read it already: tightening it in silence would hide that.
    store = StateStore(tmp_path)
    store.ensure_keys(["a"])
    path = store.private_key_path("a")
    path.chmod(0o644)
    with pytest.raises(UnsafePath, match=rf"{path} is readable by other users \(mode 0644\) — run `chmod 600 {path}`"):
        store.private_key("a")
    assert mode(path) == 0o644


def test_store_rotate_key_writes_0600(tmp_path: Path, open_umask: None) -> None:
    store = StateStore(tmp_path)
    old = store.ensure_keys(["a"])["a"]
    new = store.rotate_key("a")
    assert new != old
    assert store.public_keys(["a"]) == {"a": new}
    assert mode(store.private_key_path("a")) == 0o600


def test_store_refuses_a_broken_or_missing_key(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with pytest.raises(StateError, match="no key for node a"):
        store.public_keys(["a"])
    store.key_dir.mkdir(parents=True)
    store.private_key_path("a").write_text("hunter2\n")
    store.private_key_path("a").chmod(0o600)
    with pytest.raises(StateError, match="does not hold a WireGuard private key"):
        store.public_keys(["a"])


# --- no leaks ------------------------------------------------------------------------------


def private_keys(state: Path) -> dict[str, str]:
    return {p.stem: p.read_text().strip() for p in sorted((state / "keys").glob("*.key"))}


@pytest.mark.parametrize("mesh", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_private_keys_stay_out_of_plan_output(mesh: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    state = tmp_path / "state"
    result = runner.invoke(app, ["plan", str(mesh), "-o", "json", "--state", str(state)])
    assert result.exit_code == 0, result.output
    table = runner.invoke(app, ["plan", str(mesh), "--state", str(state)])
    assert table.exit_code == 0, table.output
    secrets = private_keys(state)
    assert secrets, "plan created no keys"
    plan = json.loads(result.output)["plan"]
    tunnels = {n["name"] for n in plan["nodes"] if n.get("tunnel")}  # under gateways, not every node's
    for node, private in secrets.items():
        assert private not in result.output, f"{node}'s private key in `plan -o json`"
        assert private not in table.output, f"{node}'s private key in `plan`"
        if node in tunnels:
            assert keys.public_key(private) in result.output  # the plan does show the public half


@pytest.mark.parametrize("mesh", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_private_keys_only_in_the_nodes_own_files_which_are_0600(mesh: Path, tmp_path: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "out"
    result = CliRunner().invoke(app, ["render", str(mesh), "--output-dir", str(out), "--state", str(state)])
    assert result.exit_code == 0, result.output
    secrets = private_keys(state)
    assert secrets
    holders: dict[str, set[str]] = {node: set() for node in secrets}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        text = path.read_text()
        for node, private in secrets.items():
            if private in text:
                assert rel in (f"nodes/{node}/wg-crossmesh.conf", f"nodes/{node}/talos.yaml"), (
                    f"{node}'s private key leaked into {rel}"
                )
                assert mode(path) == 0o600, f"{rel} holds a private key but is {oct(mode(path))}"
                holders[node].add(rel)
    for node, files in holders.items():
        folder = out / "nodes" / node
        if not (folder / "wg-crossmesh.conf").exists() and not (folder / "talos.yaml").exists():
            continue  # no tunnel (a plain node under topology gateways): no device, so no file holds its key
        # A Talos node's key is in its WireguardConfig document; it gets no wg-quick file.
        talos = (out / "nodes" / node / "talos.yaml").exists()
        own = f"nodes/{node}/talos.yaml" if talos else f"nodes/{node}/wg-crossmesh.conf"
        assert own in files, f"{node}'s {own} lacks its key"
        assert not (talos and (out / "nodes" / node / "wg-crossmesh.conf").exists()), f"Talos node {node} got a .conf"
    # The state directory's shared files (allocations, applied plan) hold no private key either.
    for name in ("allocations.json", "applied-plan.json"):
        text = (state / name).read_text()
        for node, private in secrets.items():
            assert private not in text, f"{node}'s private key in {name}"
