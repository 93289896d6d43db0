"""The rendered tree written into its output folder, and nowhere else.

The folder the user names is followed if it is a link, as `cp -r src link/` does: naming it
is choosing it. Inside it nothing is followed. Every folder the tree needs is opened name by
name with O_NOFOLLOW (see `state.disk`), and before anything is written every folder and file
position is judged, so a planted `nodes -> /elsewhere` is refused, named, with nothing
written. A link where a file goes is replaced, not followed (the write is a rename).

`.crossmesh-rendered` lists what the last render wrote, so that files the mesh no longer
produces go away. It sits where others may have written, so it is input like any other: an
entry is removed only if it is a plain relative path reached through real folders and names
a regular file; any other entry is left alone and named in a warning. (Whoever can write the
list can delete those files directly: the list gives no power beyond the folder.)

Folders holding a private key are made 0700, other folders 0755, and files get the mode the
renderer gives them (0600 for a private key), whatever the umask.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from crossmesh.errors import UnsafePath
from crossmesh.render.files import RenderedFile
from crossmesh.state import disk

INDEX = ".crossmesh-rendered"
INDEX_LIMIT = 64 << 20  # 10,000 nodes list about 1 MB


def write_tree(output_dir: Path, files: dict[str, RenderedFile]) -> list[str]:
    """Write `files` (relative path → content and mode) into `output_dir`, then remove what the
    last render wrote and this one does not; the warnings are the entries of that list left
    alone. UnsafePath, with nothing written, when a folder or file position inside `output_dir`
    is not what the tree needs."""
    modes = _folder_modes(files)
    top = disk.make_dirs(output_dir, disk.SHARED_DIR)
    try:
        refusals = _refusals(top, output_dir, files, modes)
        if refusals:
            raise UnsafePath("\n".join(refusals) + f"\nnothing was written to {output_dir}")
        warnings: list[str] = []
        previous = _previous(top, output_dir, warnings)
        folder, fd = "", -1
        try:
            for rel, f in sorted(files.items()):  # sorted: a folder's files come together
                parent, _, name = rel.rpartition("/")
                if fd < 0 or parent != folder:
                    if fd >= 0:
                        os.close(fd)
                        fd = -1
                    folder, fd = parent, _open_folder(top, output_dir, parent, modes)
                disk.write_at(fd, name, f.content.encode(), f.mode, output_dir / rel)
        finally:
            if fd >= 0:
                os.close(fd)
        for rel in sorted(previous - set(files)):
            _remove(top, output_dir, rel, warnings)
        index = "".join(f"{rel}\n" for rel in sorted(files)).encode()
        disk.write_at(top, INDEX, index, disk.SHARED, output_dir / INDEX)
        return warnings
    finally:
        os.close(top)


def _folder_modes(files: dict[str, RenderedFile]) -> dict[str, int]:
    """Every folder the tree needs (relative), 0700 where it holds a private key, else 0755."""
    modes: dict[str, int] = {}
    for rel, f in files.items():
        parts = rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            modes.setdefault("/".join(parts[:depth]), disk.SHARED_DIR)
        if f.secret and parts:
            modes["/".join(parts)] = disk.PRIVATE_DIR
    return modes


def _refusals(top: int, out: Path, files: dict[str, RenderedFile], modes: dict[str, int]) -> list[str]:
    """Each place where the tree needs a folder or a file and something else stands."""
    refused: list[str] = []
    skip: set[str] = set()  # missing or refused: what lies beneath is not looked at
    for rel in sorted({*modes, *files, INDEX}):  # a folder sorts before what it holds
        parent = rel.rpartition("/")[0]
        if parent in skip:
            skip.add(rel)
            continue
        st = disk.lstat_at(rel, top)
        if st is None:
            skip.add(rel)
        elif rel in modes and not stat.S_ISDIR(st.st_mode):
            refused.append(disk.not_a(rel, top, out / rel, "folder"))
            skip.add(rel)
        elif rel not in modes and stat.S_ISDIR(st.st_mode):
            refused.append(f"{out / rel} is a folder where render writes a file — remove it")
    return refused


def _open_folder(top: int, out: Path, rel: str, modes: dict[str, int] | None) -> int:
    """A descriptor of the folder `rel` inside the output folder, reached through real folders
    only; with `modes`, missing folders are made and each gets its mode, else FileNotFoundError."""
    fd, done = os.dup(top), ""
    for name in rel.split("/") if rel else []:
        done = f"{done}/{name}" if done else name
        try:
            child = disk.open_dir(name, out / done, dir_fd=fd, create=None if modes is None else modes[done])
        finally:
            os.close(fd)
        fd = child
        if modes is not None and stat.S_IMODE(os.fstat(fd).st_mode) != modes[done]:
            try:
                os.fchmod(fd, modes[done])  # a folder an earlier render made under another umask
            except BaseException:
                os.close(fd)
                raise
    return fd


def _previous(top: int, out: Path, warnings: list[str]) -> set[str]:
    """The entries of the last render's list; none (with a warning) if it is not a readable file."""
    try:
        got = disk.read_at(top, INDEX, out / INDEX, limit=INDEX_LIMIT)
        text = "" if got is None else got[0].decode("utf-8")
    except (UnsafePath, UnicodeDecodeError, OSError) as err:
        warnings.append(f"{out / INDEX} is not a list render wrote ({err}): it is replaced, no earlier file removed")
        return set()
    return {line for line in text.splitlines() if line}


def _remove(top: int, out: Path, rel: str, warnings: list[str]) -> None:
    """Remove the regular file `rel` inside the output folder; anything else is left alone."""
    parts = rel.split("/")
    if "\0" in rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        warnings.append(f"{out / INDEX} lists {rel!r}, which is not a plain path inside {out} — left alone")
        return
    try:
        fd = _open_folder(top, out, "/".join(parts[:-1]), None)
    except FileNotFoundError:
        return
    except UnsafePath as err:
        warnings.append(f"{out / INDEX} lists {rel!r}, left alone: {err}")
        return
    try:
        st = disk.lstat_at(parts[-1], fd)
        if st is None:
            return
        if not stat.S_ISREG(st.st_mode):
            what = disk.describe(st)
            warnings.append(f"{out / INDEX} lists {rel!r}, which is {what}, not a file render wrote — left alone")
            return
        os.unlink(parts[-1], dir_fd=fd)  # removes the name: never follows anything
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class TreeDiff:
    added: list[str]
    changed: list[tuple[str, str, str | None]]  # path, what is there now, its mode when only that differs
    removed: list[str]  # listed by the last render and no longer produced

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def diff_tree(output_dir: Path, files: dict[str, RenderedFile]) -> TreeDiff:
    """What `write_tree(output_dir, files)` would change, reading the folder as write_tree would
    (nothing followed inside it, UnsafePath where it would refuse) and writing nothing."""
    if not output_dir.exists():
        return TreeDiff(sorted(files), [], [])
    top = disk.open_dir(output_dir, output_dir)  # the named folder is followed, as write_tree does
    try:
        refusals = _refusals(top, output_dir, files, _folder_modes(files))
        if refusals:
            raise UnsafePath("\n".join(refusals))
        added: list[str] = []
        changed: list[tuple[str, str, str | None]] = []
        for rel, f in sorted(files.items()):
            parent, _, name = rel.rpartition("/")
            try:
                fd = _open_folder(top, output_dir, parent, None)
            except FileNotFoundError:
                added.append(rel)
                continue
            try:
                got = disk.read_at(fd, name, output_dir / rel, limit=max(len(f.content.encode()) * 2, 1 << 20))
            finally:
                os.close(fd)
            if got is None:
                added.append(rel)
                continue
            data, st = got
            mode = stat.S_IMODE(st.st_mode)
            if data != f.content.encode():
                changed.append((rel, data.decode("utf-8", "replace"), None))
            elif mode != f.mode:
                changed.append((rel, "", f"{mode:04o} → {f.mode:04o}"))
        warnings: list[str] = []
        removed = sorted(p for p in _previous(top, output_dir, warnings) - set(files))
        return TreeDiff(added, changed, removed)
    finally:
        os.close(top)
