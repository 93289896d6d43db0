"""Files and folders on disk without being redirected or exposed.

crossmesh writes private keys, so a link planted where it expects a folder or a file
(`nodes -> /elsewhere` in the output folder, a linked `.crossmesh/keys`) would carry
them elsewhere or feed it a key it did not make, and a umask of 000 would leave them
readable by everyone. Hence:

- folders are opened one name at a time, relative to their parent's descriptor, with
  O_DIRECTORY|O_NOFOLLOW: what is judged is what is used, and a link is refused, not followed;
- a file is written to a new temporary name beside it (O_CREAT|O_EXCL|O_NOFOLLOW), given its
  mode with fchmod (the umask plays no part) and renamed over the final name: a rename replaces
  a link there instead of following it, and a crash never leaves half a file;
- a file is read only if it is a regular file (a FIFO would block, a device never ends).

Only the folder a user names (an output folder, a state folder's parents) is followed if it
is a link, as `cp` and `mkdir -p` do.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from contextlib import suppress
from pathlib import Path

from crossmesh.errors import UnsafePath

PRIVATE = 0o600  # a file holding a private key
PRIVATE_DIR = 0o700  # a folder holding such files
SHARED = 0o644
SHARED_DIR = 0o755

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def describe(st: os.stat_result) -> str:
    """What a directory entry is, for messages (here and where user files are read, load/yamlpos)."""
    mode = st.st_mode
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
    ):
        if test(mode):
            return name
    return "a block device"


def read_bounded(fd: int, limit: int) -> bytes | None:
    """At most `limit` bytes of the open file `fd`; None when it holds more (a device never ends)."""
    chunks, got = [], 0
    while chunk := os.read(fd, limit + 1 - got):
        chunks.append(chunk)
        got += len(chunk)
        if got > limit:
            return None
    return b"".join(chunks)


def lstat_at(name: str, dir_fd: int) -> os.stat_result | None:
    """The entry `name` in the folder `dir_fd` itself (a link is not followed), None if absent."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def not_a(name: str, dir_fd: int | None, shown: Path, want: str, fix: str = "remove it") -> str:
    """Why the entry `name` is not the `want` ("folder", "regular file") crossmesh expected there."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as err:
        return f"{shown}: {err.strerror}"
    what = describe(st)
    if stat.S_ISLNK(st.st_mode):
        with suppress(OSError):
            what += f" (to {os.readlink(name, dir_fd=dir_fd)})"
        what += f", not a {want}: crossmesh does not follow links here"
    else:
        what += f", not a {want}"
    return f"{shown} is {what} — {fix}"


def open_dir(
    name: str | Path, shown: Path, *, dir_fd: int | None = None, create: int | None = None, fix: str = "remove it"
) -> int:
    """A descriptor of the folder `name` (relative to `dir_fd`), refusing a link in its place
    (UnsafePath ending in `fix`). A missing folder is made with mode `create`, or, when that is
    None, FileNotFoundError."""
    try:
        return os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        if create is None:
            raise
        with suppress(FileExistsError):  # made by someone else meanwhile: judged by the open below
            os.mkdir(name, create, dir_fd=dir_fd)
        fd = open_dir(name, shown, dir_fd=dir_fd)
        os.fchmod(fd, create)
        return fd
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.ELOOP):
            raise UnsafePath(not_a(str(name), dir_fd, shown, "folder", fix)) from None
        raise


def make_dirs(path: Path, mode: int) -> int:
    """A descriptor of the folder the user named, following links on the way (as `mkdir -p`
    does); the folders it makes get `mode` whatever the umask."""
    try:
        return os.open(path, _DIR)
    except FileNotFoundError:
        if path.parent == path:
            raise
    except OSError as err:
        raise UnsafePath(f"cannot use {path} as a folder: {err.strerror}") from None
    os.close(make_dirs(path.parent, mode))
    try:
        with suppress(FileExistsError):  # made meanwhile (or a link to nowhere, refused below)
            os.mkdir(path, mode)
        fd = os.open(path, _DIR)
    except OSError as err:
        raise UnsafePath(f"cannot make the folder {path}: {err.strerror}") from None
    os.fchmod(fd, mode)
    return fd


def refuse_shared(st: os.stat_result, shown: Path, *, bits: int, chmod: str) -> None:
    """Refuse a file or folder that belongs to another user (root aside, as ssh does) or has `bits` set."""
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise UnsafePath(
            f"{shown} belongs to uid {st.st_uid}, not to you (uid {me}) — `chown {me} {shown}` if it is yours"
        )
    if st.st_mode & bits:
        others = "writable" if stat.S_ISDIR(st.st_mode) else "readable"
        raise UnsafePath(
            f"{shown} is {others} by other users (mode {stat.S_IMODE(st.st_mode):04o}) — run `chmod {chmod} {shown}`"
        )


def read_at(dir_fd: int, name: str, shown: Path, *, limit: int) -> tuple[bytes, os.stat_result] | None:
    """The bytes of the regular file `name` in `dir_fd` and its status; None if it does not exist.

    Refused (UnsafePath): a link, anything but a regular file, more than `limit` bytes.
    """
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENXIO):  # a link; a socket
            raise UnsafePath(not_a(name, dir_fd, shown, "regular file")) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(not_a(name, dir_fd, shown, "regular file"))
        data = read_bounded(fd, limit)
        if data is None:
            raise UnsafePath(f"{shown} is larger than the {limit} bytes crossmesh reads from it — remove it")
    finally:
        os.close(fd)
    return data, st


def write_at(dir_fd: int, name: str, data: bytes, mode: int, shown: Path) -> None:
    """`data` into `name` in the folder `dir_fd`, atomically, with exactly `mode`."""
    tmp = f".{name}.{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, _CREATE, mode, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as err:
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        if isinstance(err, IsADirectoryError):
            raise UnsafePath(f"{shown} is a folder where crossmesh writes a file — remove it") from None
        raise


def write_private(path: Path, text: str, *, folder: int | None = None) -> None:
    """`text` into `path`, mode 0600 whatever the umask, atomically, through no link at the file
    or at its folder (which must exist; `folder` is its descriptor if the caller holds it): the
    one way a private key, or a file holding one, reaches disk outside the rendered tree."""
    fd = open_dir(path.parent, path.parent) if folder is None else folder
    try:
        write_at(fd, path.name, text.encode(), PRIVATE, path)
    finally:
        if folder is None:
            os.close(fd)


def read_private(path: Path, *, limit: int = 4096) -> str:
    """The text of a private file (a key) that only this user can read: a regular file reached
    through no link at the file or its folder; UnsafePath otherwise (a missing file included)."""
    fd = open_dir(path.parent, path.parent)
    try:
        got = read_at(fd, path.name, path, limit=limit)
    finally:
        os.close(fd)
    if got is None:
        raise UnsafePath(f"{path} does not exist")
    data, st = got
    refuse_shared(st, path, bits=0o077, chmod="600")
    return data.decode("utf-8", errors="replace")
