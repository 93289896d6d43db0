"""The applied mesh as one etcd value (`desired`): the mesh file and every manifest it names,
with the revision, a digest, who applied it and when.

Read back by the operator, `diff` and `status`, and written by others: decoding checks every
field, and the files land only under a fresh private directory — a path that would leave it
(absolute, `..`, NUL) refuses the whole revision.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from crossmesh.load.mesh import manifest_files
from crossmesh.load.yamlpos import Document
from crossmesh.model.mesh import Mesh

MAX_BYTES = 1 << 20  # etcd refuses a request over 1.5 MiB; the mesh and its manifests stay well under
MAX_FILES = 2000


class DesiredError(ValueError):
    """A desired revision that is not one (or a mesh too large to be one)."""


@dataclass(frozen=True, slots=True)
class Desired:
    revision: int
    digest: str  # sha256 of the files: equal digests, equal meshes
    applied_by: str
    applied_at: str  # ISO 8601, UTC
    mesh: str  # the mesh's name
    mesh_file: str  # the mesh file's path among `files`
    files: dict[str, str]  # relative path → text

    def encode(self) -> bytes:
        raw = json.dumps(asdict(self), sort_keys=True).encode()
        if len(raw) > MAX_BYTES:
            raise DesiredError(
                f"the mesh file and its manifests are {len(raw) >> 10} KiB, over the {MAX_BYTES >> 10} KiB "
                "one etcd value may hold — split the manifests out of the mesh (apply them with kubectl)"
            )
        return raw

    def summary(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "digest": self.digest,
            "appliedBy": self.applied_by,
            "appliedAt": self.applied_at,
            "mesh": self.mesh,
            "files": len(self.files),
        }


def digest(files: dict[str, str]) -> str:
    canonical = json.dumps(sorted(files.items()), separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def bundle(path: Path, doc: Document, mesh: Mesh) -> dict[str, str]:
    """The mesh file and every manifest file it names, by path relative to the mesh file's folder
    (the manifest entries resolve the same way there). The mesh validated first: its manifest
    paths stay inside that folder."""
    base = path.resolve().parent
    files = {path.name: path.read_text(encoding="utf-8")}
    entries = list(mesh.spec.manifests) + [e for c in mesh.spec.clusters for e in c.manifests]
    for entry in entries:
        found, _ = manifest_files(base, entry)
        for f in found:
            files[f.resolve().relative_to(base).as_posix()] = f.read_text(encoding="utf-8")
    return files


def _safe(name: str) -> bool:
    p = PurePosixPath(name)
    return (
        bool(name)
        and "\0" not in name
        and "\\" not in name
        and not p.is_absolute()
        and all(part not in ("", ".", "..") for part in name.split("/"))
        and len(name) <= 255
    )


def decode(raw: bytes) -> Desired:
    if len(raw) > MAX_BYTES + 4096:
        raise DesiredError(f"desired: {len(raw)} bytes, over the cap")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise DesiredError(f"desired: not JSON ({str(err)[:80]})") from None
    kinds = {
        "revision": int,
        "digest": str,
        "applied_by": str,
        "applied_at": str,
        "mesh": str,
        "mesh_file": str,
        "files": dict,
    }
    if not isinstance(data, dict) or set(data) != set(kinds):
        raise DesiredError("desired: not a desired revision (fields differ)")
    for name, kind in kinds.items():
        if type(data[name]) is not kind:
            raise DesiredError(f"desired: {name} is not a {kind.__name__}")
    files = data["files"]
    if len(files) > MAX_FILES or not all(isinstance(v, str) for v in files.values()):
        raise DesiredError("desired: files is not a map of paths to texts")
    bad = next((k for k in files if not _safe(k)), None)
    if bad is not None:
        raise DesiredError(f"desired: file path {bad[:80]!r} would leave the mesh's folder")
    if data["mesh_file"] not in files or "/" in data["mesh_file"]:
        raise DesiredError("desired: mesh_file is not one of its files")
    desired = Desired(**data)
    if desired.revision < 1 or digest(desired.files) != desired.digest:
        raise DesiredError(f"desired: revision {desired.revision} does not match its digest")
    return desired


def materialize(desired: Desired, directory: Path) -> Path:
    """Write the revision's files under `directory` (which must be empty and private); the mesh file's path."""
    for name, text in sorted(desired.files.items()):
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    return directory / desired.mesh_file
