"""Run one crossmesh command the way a user would, but isolated and bounded, and read its effects.

Each command runs in a child forked from the test process: the child already holds every
crossmesh module, so a run costs what the command costs (~0.1 s), not a fresh interpreter's
import (~0.6 s), and it is still a separate process — an address-space limit, a CPU limit and a
kill after the time limit protect the suite from a command that hangs in a regular expression
or reads /dev/zero, which a SIGALRM in the test process could not interrupt. The child runs
the same `app` the `crossmesh` script runs; a Python exception that escapes it is printed as a
traceback, as the real script would print it.

`Tree` snapshots a folder (names, kinds, sizes, mtimes, modes, without following links) so a
test can say exactly what a command wrote or deleted.
"""

from __future__ import annotations

import io
import os
import re
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

TIME_LIMIT = 3.0  # seconds per command: the issue asks for 2 s; CI machines are shared (~0.1-0.3 s is usual)
MEMORY_LIMIT = 1 << 30  # bytes of address space a command may add to what it starts with
OUTPUT_KEPT = 1 << 20  # characters of stdout/stderr kept for the checks

# `file:line:col: ` — the form of every positioned problem (errors.Problem.__str__).
POSITIONED = re.compile(r"^(?P<file>\S(?:.*?\S)?):(?P<line>\d+):(?P<column>\d+): ", re.MULTILINE)
# A refusal that is not about a place in a file (no such pod, a bad --port): `error: …`.
REFUSAL = re.compile(r"^error: \S", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Run:
    args: tuple[str, ...]
    code: int  # exit status; -9 when killed at the time limit
    out: str
    err: str
    seconds: float
    timed_out: bool
    rss_growth_mb: float  # peak resident memory above the test process's at the fork

    @property
    def both(self) -> str:
        return self.out + self.err

    def shown(self) -> str:
        """The command and a little of what it said, for an assertion message."""
        said = (self.err or self.out).strip().splitlines()
        head = " | ".join(line[:200] for line in said[:4])
        return f"crossmesh {' '.join(_short(a) for a in self.args)} → exit {self.code} in {self.seconds:.2f}s: {head}"


def _short(arg: str) -> str:
    return arg if len(arg) <= 40 else f"{arg[:20]}…({len(arg)} chars)"


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def crossmesh(args: Sequence[str], *, cwd: Path, time_limit: float = TIME_LIMIT, umask: int | None = None) -> Run:
    """`crossmesh ARGS` in `cwd`, killed after `time_limit` seconds, with at most MEMORY_LIMIT more memory."""
    from crossmesh.cli.main import app

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        limit = _vm_bytes() + MEMORY_LIMIT
        start_rss = _rss_kb()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.chdir(cwd)
                if umask is not None:
                    os.umask(umask)
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                cpu = int(time_limit) + 2  # a backstop: the parent kills at the time limit
                resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the child exits with os._exit
                sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8", write_through=True)  # noqa: SIM115
                sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), encoding="utf-8", write_through=True)  # noqa: SIM115
                os.environ.pop("CROSSMESH_DEBUG", None)
                os.environ["COLUMNS"] = "200"
                try:
                    app(args=list(args), prog_name="crossmesh")
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # what the real script would show: a traceback, exit 1
                traceback.print_exc()
                code = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        timed_out, status, usage = _wait(pid, time_limit)
        seconds = time.monotonic() - start
        return Run(
            args=tuple(args),
            code=-9 if timed_out else os.waitstatus_to_exitcode(status),
            out=_read(out),
            err=_read(err),
            seconds=seconds,
            timed_out=timed_out,
            rss_growth_mb=max(0, usage.ru_maxrss - start_rss) / 1024,
        )


def _wait(pid: int, time_limit: float) -> tuple[bool, int, resource.struct_rusage]:
    deadline = time.monotonic() + time_limit
    pause = 0.001
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return False, status, usage
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            return True, status, usage
        time.sleep(pause)
        pause = min(pause * 2, 0.02)


def _read(f: io.BufferedRandom | tempfile._TemporaryFileWrapper[bytes]) -> str:
    f.seek(0)
    return f.read(OUTPUT_KEPT * 4).decode("utf-8", "replace")[:OUTPUT_KEPT]


# --- what a command did to the files around it ---------------------------------------------------

Entry = tuple[str, int, int, int]  # kind, size, mtime_ns, mode


@dataclass(frozen=True, slots=True)
class Tree:
    root: Path
    entries: dict[str, Entry]

    @classmethod
    def of(cls, root: Path) -> Tree:
        entries: dict[str, Entry] = {}
        for dirpath, dirnames, filenames in os.walk(root):  # os.walk does not follow links to folders
            for name in (*dirnames, *filenames):
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                kind = "link:" + os.readlink(p) if os.path.islink(p) else _kind(st.st_mode)
                # A folder's size and mtime change with its entries, which are compared one by one.
                size, mtime = (0, 0) if kind == "dir" else (st.st_size, st.st_mtime_ns)
                entries[os.path.relpath(p, root)] = (kind, size, mtime, st.st_mode & 0o7777)
        return cls(root, entries)

    def changes(self, after: Tree, allowed: Iterable[Path] = ()) -> list[str]:
        """Paths created, deleted or modified outside the `allowed` folders (and not those folders' own entries)."""
        keep = [os.path.relpath(a, self.root) for a in allowed]

        def inside(rel: str) -> bool:
            return any(rel == k or rel.startswith(k + os.sep) for k in keep)

        out = []
        for rel in sorted(set(self.entries) | set(after.entries)):
            was, now = self.entries.get(rel), after.entries.get(rel)
            if was == now or inside(rel):
                continue
            what = "created" if was is None else "deleted" if now is None else "modified"
            out.append(f"{what} {rel}")
        return out


def _kind(mode: int) -> str:
    import stat

    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISFIFO, "fifo")):
        if test(mode):
            return name
    return "other"
