"""The state directory (default `.crossmesh/` beside the mesh file).

    allocations.json      cluster ids, pod CIDRs, tunnel addresses (stable across runs)
    keys/<node>.key       WireGuard private keys, mode 0600, directory 0700
    keys/<node>.pub       public keys
    applied-plan.json     the plan last rendered or applied, for `plan`'s difference

In a full mesh of n nodes every node lists ~n peers and ~3n routes: written out per
node, applied-plan.json grows as n² (810 MB in the 1,000-node benchmark). They are few distinct
objects, though, shared by all nodes (see `serialize.plan_json`), so the file holds
each distinct peer and route once and the nodes refer to them by index ("packed"),
written without indentation.

Writes are atomic (temporary file + rename) so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from crossmesh.errors import StateError
from crossmesh.ipam.allocate import Allocations
from crossmesh.state import keys as wgkeys


def atomic_write(path: Path, data: str | bytes, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StateStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def beside(cls, mesh_path: Path, override: Path | None = None) -> StateStore:
        # realpath, not Path.resolve: a mesh path that is a link loop must reach the reader, which names it
        return cls(override if override is not None else Path(os.path.realpath(mesh_path)).parent / ".crossmesh")

    # allocations ------------------------------------------------------------------------
    def load_allocations(self) -> Allocations:
        data = self._read_json("allocations.json")
        if data is None:
            return Allocations()
        try:
            return Allocations.from_json(data)
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise StateError(f"{self.root / 'allocations.json'} is corrupt ({err}) — fix or delete it") from err

    def save_allocations(self, alloc: Allocations) -> None:
        self._write_json("allocations.json", alloc.to_json())

    # keys -------------------------------------------------------------------------------
    @property
    def key_dir(self) -> Path:
        return self.root / "keys"

    def private_key_path(self, node: str) -> Path:
        return self.key_dir / f"{node}.key"

    def ensure_keys(self, nodes: list[str]) -> dict[str, str]:
        """Public key per node, generating a private key (0600) where none exists yet."""
        out = {}
        for node in sorted(nodes):
            out[node] = wgkeys.public_key(self._private_key(node, create=True))
        return out

    def public_keys(self, nodes: list[str]) -> dict[str, str]:
        return {n: wgkeys.public_key(self._private_key(n, create=False)) for n in sorted(nodes)}

    def private_key(self, node: str) -> str:
        return self._private_key(node, create=False)

    def rotate_key(self, node: str) -> str:
        priv = wgkeys.generate_private_key()
        self._write_private(node, priv)
        return wgkeys.public_key(priv)

    def _private_key(self, node: str, *, create: bool) -> str:
        path = self.private_key_path(node)
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            if not create:
                raise StateError(
                    f"no key for node {node} in {self.key_dir} — run `crossmesh plan` or `render` first"
                ) from None
            text = wgkeys.generate_private_key()
            self._write_private(node, text)
            return text
        except OSError as err:
            raise StateError(f"cannot read {path}: {err.strerror}") from err
        if not wgkeys.is_valid_key(text):
            raise StateError(f"{path} does not hold a WireGuard private key — delete it to generate a new one")
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return text

    def _write_private(self, node: str, text: str) -> None:
        self.key_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.key_dir, 0o700)
        atomic_write(self.private_key_path(node), text + "\n", mode=0o600)
        atomic_write(self.key_dir / f"{node}.pub", wgkeys.public_key(text) + "\n", mode=0o644)

    # applied plan -----------------------------------------------------------------------
    def load_applied_plan(self) -> dict[str, Any] | None:
        data = self._read_json("applied-plan.json")
        if not isinstance(data, dict):
            return None
        try:
            return _unpack_plan(data)
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise StateError(f"{self.root / 'applied-plan.json'} is corrupt ({err}) — fix or delete it") from err

    def save_applied_plan(self, data: dict[str, Any]) -> None:
        self._write_json("applied-plan.json", _pack_plan(data), compact=True)

    # helpers ----------------------------------------------------------------------------
    def _read_json(self, name: str) -> Any:
        path = self.root / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise StateError(f"{path} is unreadable ({err}) — fix or delete it") from err

    def _write_json(self, name: str, data: Any, *, compact: bool = False) -> None:
        # json's C encoder only runs without indentation: big files are written compact.
        text = (
            json.dumps(data, sort_keys=True, separators=(",", ":"))
            if compact
            else json.dumps(data, indent=2, sort_keys=True)
        )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / name, text + "\n")
        except OSError as err:
            raise StateError(f"cannot write {self.root / name}: {err.strerror}") from err


# packed applied plan ----------------------------------------------------------------------
PACKED = "packed"  # {"peers": [...], "routes": [...]}: the distinct peer and route entries


def _pack_plan(data: dict[str, Any]) -> dict[str, Any]:
    """Each distinct peer and route dict once, nodes referring to them by index (first-seen order)."""
    peers, routes = _Interned(), _Interned()
    nodes = []
    for node in data.get("nodes", []):
        node = dict(node)
        if node.get("tunnel"):
            node["tunnel"] = {**node["tunnel"], "peers": peers.indices(node["tunnel"]["peers"])}
        node["routes"] = routes.indices(node.get("routes", []))
        nodes.append(node)
    return {**data, "nodes": nodes, PACKED: {"peers": peers.table, "routes": routes.table}}


class _Interned:
    """Distinct objects by identity, in first-seen order; lists of them as lists of indices."""

    def __init__(self) -> None:
        self.table: list[Any] = []
        self._index: dict[int, int] = {}
        self._lists: dict[int, list[int]] = {}  # a list that nodes share (see plan_json) is indexed once

    def indices(self, items: list[Any]) -> list[int]:
        out = self._lists.get(id(items))
        if out is None:
            try:
                out = [self._index[id(x)] for x in items]
            except KeyError:
                for x in items:
                    if id(x) not in self._index:
                        self._index[id(x)] = len(self.table)
                        self.table.append(x)
                out = [self._index[id(x)] for x in items]
            self._lists[id(items)] = out
        return out


def _unpack_plan(data: dict[str, Any]) -> dict[str, Any]:
    """`_pack_plan` undone (entries shared, not copied); an unpacked file is returned as it is."""
    packed = data.pop(PACKED, None)
    if packed is None:
        return data
    peer_table, route_table = packed["peers"], packed["routes"]
    for node in data["nodes"]:
        if node.get("tunnel"):
            node["tunnel"]["peers"] = [peer_table[i] for i in node["tunnel"]["peers"]]
        node["routes"] = [route_table[i] for i in node["routes"]]
    return data
