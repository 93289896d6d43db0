"""What every file-facing command promises on any input (README, *Commands*), checked on one case.

- it ends within the time limit and the memory limit, exit 0 or 2 (1 only for a denied policy trace;
  never 70 or a signal);
- no traceback, on either stream;
- exit 2 names where: a `file:line:col:` problem in a file that exists, or an `error: …` refusal;
- validate writes nothing; plan and the traces write only the state directory, render only that
  and its output folder; a command that fails writes nothing at all;
- render's files holding a private key, and the state's keys, are 0600 (folders not group- or
  world-writable), and nothing of a file outside the project reaches the output;
- validate, plan and render agree: a mesh validate accepts is planned and rendered, and one it
  refuses is refused by all (`reject` cases must be refused).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hostile.corpus import BASES, FULL, SECRET, Case, Workspace
from hostile.runner import POSITIONED, REFUSAL, TIME_LIMIT, Run, Tree, crossmesh

MEMORY_LIMIT_MB = 200  # the budget for a refusal: peak resident memory beyond the forked parent's
SLOW_LIMIT = 6.0  # scale cases: the budget is 5 s for validate and plan at the documented maximum


def commands(case: Case, ws: Workspace) -> list[tuple[str, tuple[str, ...]]]:
    base = BASES[case.base]
    mesh = case.args.get("mesh", ("mesh.yaml",))[0]
    flow = ("--from", base.source, "--to", base.target, "--port", base.port)
    out = os.path.relpath(ws.out, ws.project)
    return [
        ("validate", ("validate", mesh)),
        ("plan", ("plan", mesh, *case.args.get("plan", ()))),
        ("plan-json", ("plan", mesh, "-o", "json")),
        ("render", ("render", mesh, *case.args.get("render", ("--output-dir", out)))),
        ("policy-trace", ("policy", "trace", mesh, *case.args.get("policy", flow), *case.http)),
        ("trace", ("trace", mesh, *case.args.get("trace", flow))),
    ]


def check(case: Case, root: Path, only: tuple[str, ...] = ()) -> tuple[list[str], dict[str, Run]]:
    """Make the case under `root`, run every command (or `only` those), and list what broke the contract."""
    ws = Workspace(root)
    ws.prepare(BASES[case.base])
    case.make(ws)
    problems: list[str] = []
    runs: dict[str, Run] = {}
    limit = SLOW_LIMIT if case.slow else TIME_LIMIT
    state = (ws.project / case.args.get("mesh", ("mesh.yaml",))[0]).parent / ".crossmesh"  # beside the mesh
    skip: set[str] = set()
    for name, args in commands(case, ws):
        if only and name not in only or name in skip:
            continue
        before = Tree.of(root)
        run = crossmesh(args, cwd=ws.project, time_limit=limit, umask=case.umask)
        runs[name] = run
        after = Tree.of(root)
        problems += [f"{name}: {p} — {run.shown()}" for p in _run_problems(name, run, ws)]
        if not case.slow and run.rss_growth_mb > MEMORY_LIMIT_MB:
            problems += [f"{name}: grew by {run.rss_growth_mb:.0f} MB, over {MEMORY_LIMIT_MB} MB — {run.shown()}"]
        if run.timed_out:
            problems += [f"{name}: still running after {limit:.0f} s (killed) — {run.shown()}"]
            break  # the next commands read the same file the same way: one hang is enough to know
        if name == "validate" and run.code == 2 and not FULL and not case.args:
            # A refused mesh is refused by the same code in every command: in CI, plan -o json and policy
            # trace stand for plan and trace too (the full corpus runs all six).
            skip = {"plan", "trace"}
        if "MemoryError" in run.err:
            break  # likewise: the next commands would each fill the memory limit again
        changes = before.changes(after, _may_write(name, run, state, ws.out))
        shown = changes if len(changes) <= 4 else [*changes[:3], f"and {len(changes) - 3} more"]
        problems += [f"{name}: {c} (outside what it may write) — {run.shown()}" for c in shown]
        if name == "render" and run.code == 0:
            problems += [f"render: {p}" for p in _output_problems(ws, state)]
        if run.timed_out:
            break  # the next commands read the same file the same way: one hang is enough to know
    problems += _agreement(case, runs)
    return problems, runs


def _may_write(command: str, run: Run, state: Path, out: Path) -> list[Path]:
    """Where a command may write: validate nowhere; a mesh refused, nowhere; a command that compiled
    the mesh and then refused something else by name (`--from` names no pod, a linked output folder)
    may keep the allocations it made in the state directory, but writes no output."""
    if command == "validate" or run.code not in _ok(command) or run.code == 2 and not REFUSAL.search(run.err):
        return []
    return [state, out] if command == "render" and run.code == 0 else [state]


def _ok(command: str) -> tuple[int, ...]:
    """The exit codes a command may end with: policy trace says a denied flow with 1 (SPEC §2)."""
    return (0, 1, 2) if command == "policy-trace" else (0, 2)


def _run_problems(command: str, run: Run, ws: Workspace) -> list[str]:
    if run.timed_out:
        return []  # reported by the caller
    found = []
    if run.code not in _ok(command):
        found.append(f"exit {run.code}, expected {' or '.join(map(str, _ok(command)))}")
    if "Traceback" in run.both:
        found.append("printed a traceback")
    if run.code == 2 and not REFUSAL.search(run.err):
        named = [m for m in POSITIONED.finditer(run.err) if os.path.lexists(ws.project / m["file"])]
        if not named:
            found.append("exit 2 without a file:line:col: naming an existing file, nor an `error:` refusal")
    if SECRET in run.both:
        found.append("printed the content of a file outside the project")
    return found


def _output_problems(ws: Workspace, state: Path) -> list[str]:
    found = []
    for folder in (ws.out, state):
        for dirpath, dirnames, filenames in os.walk(folder):
            for d in dirnames:
                mode = os.lstat(os.path.join(dirpath, d)).st_mode
                if mode & 0o022 and not stat.S_ISLNK(mode):
                    found.append(f"folder {os.path.relpath(os.path.join(dirpath, d), ws.root)} is {mode & 0o777:o}")
            for f in filenames:
                p = Path(dirpath, f)
                if p.is_symlink():
                    continue
                mode = p.stat().st_mode & 0o777
                text = p.read_bytes()
                private = p.suffix == ".key" or b"PrivateKey" in text or b"privateKey" in text
                if private and mode != 0o600:
                    found.append(f"{p.relative_to(ws.root)} holds a private key and is {mode:o}, not 600")
                elif mode & 0o022:
                    found.append(f"{p.relative_to(ws.root)} is {mode:o}: writable by others")
                if SECRET.encode() in text:
                    found.append(f"{p.relative_to(ws.root)} holds the content of a file outside the project")
    return found


def _agreement(case: Case, runs: dict[str, Run]) -> list[str]:
    # A named refusal of something other than the mesh (a linked output folder) is not a verdict on the mesh.
    mesh_runs = {n: r for n, r in runs.items() if n in ("validate", "plan", "plan-json", "render")}
    codes = {n: r.code for n, r in mesh_runs.items() if not (r.code == 2 and REFUSAL.search(r.err))}
    if not all(c in (0, 2) for c in codes.values()):
        return []  # already reported
    if case.expect == "reject" and any(c != 2 for c in codes.values()):
        return [f"must be refused (exit 2) by validate, plan and render; exit codes {codes}"]
    if len(set(codes.values())) > 1:
        return [f"validate, plan and render disagree: exit codes {codes}"]
    return []
