"""Every invalid input in tests/bad/ fails `crossmesh validate` the way SPEC §1 promises.

Each case is a directory with a `mesh.yaml` (and manifests under it) and an `expect.yaml`
naming the file, line, column, field path and message fragments of one problem the
validator must report. The command runs as a real subprocess, as a user or CI would run
it, in a copy of the case, so that "nothing written" can be checked by comparing the
directory before and after. Inputs too large to commit (a 10 MB file) are made at run time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

BAD = Path(__file__).resolve().parents[1] / "bad"
CASES = sorted(p for p in BAD.iterdir() if p.is_dir())
TIME_LIMIT = 15.0  # seconds; a hang guard (an alias bomb that expands would take minutes), not a benchmark
HARD_TIMEOUT = 60.0

# A small valid mesh for the cases built at run time.
VALID = """\
apiVersion: crossmesh.io/v1alpha1
kind: Mesh
metadata:
  name: ok
spec:
  sites:
    - name: site-a
      provider: aws
      network: 10.0.0.0/16
    - name: site-b
      provider: gcp
      network: 10.1.0.0/16
  clusters:
    - name: one
      id: 1
      podCIDR: 10.10.0.0/16
      nodes:
        - name: a-1
          site: site-a
          address: 10.0.1.5
          publicAddress: 203.0.113.10
        - name: b-1
          site: site-b
          address: 10.1.1.5
          publicAddress: 198.51.100.20
"""


def _command() -> list[str]:
    """The installed `crossmesh` script of this interpreter, else the same entry point through -m."""
    script = Path(sys.executable).parent / "crossmesh"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "crossmesh.cli.main"]


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def both(self) -> str:
        return self.out + self.err


def crossmesh(*args: str, cwd: Path) -> Run:
    start = time.monotonic()
    proc = subprocess.run(
        [*_command(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=HARD_TIMEOUT,
        env=_env(),
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CROSSMESH_DEBUG"}
    env["COLUMNS"] = "500"  # rich must not wrap a problem line
    return env


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@dataclass(frozen=True)
class Expect:
    file: str
    line: int
    column: int | None
    path: str
    message: tuple[str, ...]

    @classmethod
    def read(cls, case: Path) -> Expect:
        data: dict[str, Any] = yaml.safe_load((case / "expect.yaml").read_text())
        message = data["message"]
        return cls(
            file=data["file"],
            line=int(data["line"]),
            column=int(data["column"]) if data.get("column") is not None else None,
            path=str(data.get("path", "")),
            message=tuple([message] if isinstance(message, str) else message),
        )

    @property
    def prefix(self) -> str:
        where = f"{self.file}:{self.line}:"
        return where if self.column is None else f"{where}{self.column}:"

    def matches(self, line: str) -> bool:
        return (
            line.startswith(self.prefix)
            and (not self.path or self.path in line)
            and all(fragment in line for fragment in self.message)
        )


SLOWEST: list[tuple[float, str]] = []


CopyOf = Callable[[Path], Path]


@pytest.fixture
def copy_of(tmp_path: Path) -> CopyOf:
    def make(case: Path) -> Path:
        target = tmp_path / case.name
        shutil.copytree(case, target)
        (target / "expect.yaml").unlink()  # not part of the input
        return target

    return make


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 35
    for case in CASES:
        assert (case / "mesh.yaml").is_file(), case
        assert (case / "expect.yaml").is_file(), case
        expect = Expect.read(case)
        assert (case / expect.file).is_file(), f"{case.name}: expect.yaml names a file that is not there"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_reported_with_its_position(case: Path, copy_of: CopyOf) -> None:
    expect = Expect.read(case)
    work = copy_of(case)
    before = _tree(work)

    run = crossmesh("validate", "mesh.yaml", cwd=work)
    SLOWEST.append((run.seconds, case.name))

    assert "Traceback" not in run.both
    assert run.code == 2, run.both
    assert f"{expect.file}:{expect.line}:" in run.err, run.err
    hits = [line for line in run.err.splitlines() if expect.matches(line)]
    assert hits, f"no problem line matches {expect}:\n{run.err}"
    assert not (work / ".crossmesh").exists(), "validate created the state directory"
    assert _tree(work) == before, "validate wrote files"
    assert run.seconds < TIME_LIMIT, f"{case.name} took {run.seconds:.2f}s"


JSON_CASES = [
    "01-unknown-field-did-you-mean",
    "24-nat-both-ends-full-mesh",
    "31-yaml-unclosed-bracket",
    "40-manifest-container-port-70000",
    "45-pod-pool-exhausted",
]


@pytest.mark.parametrize("name", JSON_CASES)
def test_json_output_has_the_spec_shape(name: str, copy_of: CopyOf) -> None:
    case = BAD / name
    expect = Expect.read(case)
    work = copy_of(case)

    run = crossmesh("validate", "-o", "json", "mesh.yaml", cwd=work)

    assert "Traceback" not in run.both
    assert run.code == 2
    data = json.loads(run.out)  # stdout is the JSON document and nothing else
    assert set(data) == {"valid", "problems"}
    assert data["valid"] is False
    assert data["problems"]
    for problem in data["problems"]:
        assert {"file", "line", "column", "path", "message"} <= set(problem)
        assert isinstance(problem["file"], str)
        assert isinstance(problem["line"], int) and problem["line"] >= 1
        assert isinstance(problem["column"], int) and problem["column"] >= 1
        assert isinstance(problem["path"], str)
        assert isinstance(problem["message"], str) and problem["message"]
    assert any(
        p["file"] == expect.file
        and p["line"] == expect.line
        and (expect.column is None or p["column"] == expect.column)
        and expect.path in p["path"]
        and all(f in p["message"] for f in expect.message)
        for p in data["problems"]
    ), data
    assert not (work / ".crossmesh").exists()


def test_every_independent_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        VALID.replace("      network: 10.0.0.0/16\n", "      network: 10.0.0.0/16\n      mtuu: 1400\n")
        .replace("          address: 10.1.1.5\n", "          address: 10.9.1.5\n")
        .replace("publicAddress: 198.51.100.20", "publicAddress: 203.0.113.10")
        .replace("      nodes:\n", "      manifests: [apps/]\n      nodes:\n")
    )
    (tmp_path / "mesh.yaml").write_text(text)
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n"
        "  containers:\n    - name: c\n      ports:\n        - containerPort: 0\n"
    )

    run = crossmesh("validate", "mesh.yaml", cwd=tmp_path)

    assert run.code == 2
    problems = [line for line in run.err.splitlines() if line.startswith(("mesh.yaml:", "apps/pod.yaml:"))]
    assert len(problems) == 4, run.err
    assert any(line.startswith("mesh.yaml:10:7:") and "did you mean 'mtu'" in line for line in problems)
    assert any(line.startswith("mesh.yaml:26:11:") and "10.9.1.5 is outside site site-b" in line for line in problems)
    assert any(line.startswith("mesh.yaml:27:11:") and "duplicate public address" in line for line in problems)
    assert any(line.startswith("apps/pod.yaml:8:11:") and "containerPort" in line for line in problems)
    assert "4 problems" in run.err
    assert not (tmp_path / ".crossmesh").exists()


def test_every_schema_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        VALID.replace("      provider: gcp\n", "      provider: gcp\n      mtu: big\n")
        .replace("      id: 1\n", "      id: 600\n")
        .replace("          address: 10.0.1.5\n", "          address: 10.0.1\n")
    )
    (tmp_path / "mesh.yaml").write_text(text)

    run = crossmesh("validate", "-o", "json", "mesh.yaml", cwd=tmp_path)

    assert run.code == 2
    got = sorted((p["line"], p["path"]) for p in json.loads(run.out)["problems"])
    assert got == [
        (12, "spec.sites[1].mtu"),
        (16, "spec.clusters[0].id"),
        (21, "spec.clusters[0].nodes[0].address"),
    ]


def test_unknown_manifest_kind_is_a_warning_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(VALID + "      manifests: [apps/]\n")
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "widget.yaml").write_text(
        "# not a kind crossmesh models\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {}\n"
    )
    before = _tree(tmp_path)

    run = crossmesh("validate", "mesh.yaml", cwd=tmp_path)

    assert "Traceback" not in run.both
    assert run.code == 0, run.both
    assert "apps/widget.yaml:3:1: warning:" in run.err
    assert "kind 'Widget' is not modelled" in run.err
    assert "valid" in run.out and "1 warnings" in run.out
    assert _tree(tmp_path) == before

    run = crossmesh("validate", "-o", "json", "mesh.yaml", cwd=tmp_path)
    data = json.loads(run.out)
    assert run.code == 0
    assert data["valid"] is True
    assert [(p["file"], p["line"], p["severity"]) for p in data["problems"]] == [("apps/widget.yaml", 3, "warning")]


def test_a_10_mb_file_is_refused_quickly(tmp_path: Path) -> None:
    padding = "# " + "x" * 97 + "\n"  # 100 bytes a line
    size = 10 * 1024 * 1024
    (tmp_path / "mesh.yaml").write_text(VALID + padding * (size // len(padding)))
    assert (tmp_path / "mesh.yaml").stat().st_size >= size - len(padding)

    run = crossmesh("validate", "mesh.yaml", cwd=tmp_path)

    assert "Traceback" not in run.both
    assert run.code == 2
    assert "mesh.yaml:1:1:" in run.err
    assert "split it into several files" in run.err
    assert not (tmp_path / ".crossmesh").exists()
    assert run.seconds < TIME_LIMIT


@pytest.mark.parametrize(("target", "message"), [("absent.yaml", "file not found"), ("folder", "is a directory")])
def test_mesh_path_that_is_not_a_file(tmp_path: Path, target: str, message: str) -> None:
    (tmp_path / "folder").mkdir()

    run = crossmesh("validate", target, cwd=tmp_path)

    assert "Traceback" not in run.both
    assert run.code == 2
    assert f"{target}:1:1: {message}" in run.err
    assert _tree(tmp_path) == {"folder"}


def test_report_slowest_case() -> None:
    """Not a check: prints the slowest case when run after the corpus (`pytest -s`)."""
    if SLOWEST:
        seconds, name = max(SLOWEST)
        print(f"\nslowest bad input: {name} in {seconds:.2f}s")
