"""Every hostile variant against every file-facing command: exit 0 or 2, file:line, no traceback,
no hang, nothing written outside the output (contract.py). Cases that fail today for a reason
another part of issue 18 is fixing are strict xfails (known.py): when the fix lands, the XPASS
fails the run and the mark is removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostile import known
from hostile.contract import check
from hostile.corpus import FULL, Case, all_cases
from hostile.runner import crossmesh


def _param(case: Case) -> object:
    reason = known.reason(case)
    # The full corpus is an exploration: a case the table does not predict exactly is reported, not fatal.
    marks = [pytest.mark.xfail(strict=not FULL, reason=reason)] if reason else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in all_cases()])
def test_hostile_input(case: Case, tmp_path: Path) -> None:
    problems, _ = check(case, tmp_path)
    assert not problems, "\n".join(problems)


def test_schema_is_json_schema_whatever_the_folder(tmp_path: Path) -> None:
    run = crossmesh(["schema"], cwd=tmp_path)
    assert run.code == 0, run.shown()
    doc = json.loads(run.out)
    assert doc["$schema"].startswith("https://json-schema.org/")
    assert set(doc["required"]) == {"apiVersion", "kind", "metadata", "spec"}
    assert list(tmp_path.iterdir()) == []


def test_the_corpus_covers_every_class() -> None:
    classes = {c.klass for c in all_cases()}
    assert classes >= {
        "type-swap",
        "address",
        "name",
        "manifest-path",
        "mesh-file",
        "yaml",
        "yaml-manifest",
        "k8s",
        "scale",
        "output",
        "argument",
    }


def test_every_known_failure_names_a_case() -> None:
    """A pattern that matches no case of the full corpus is stale: its case was renamed or removed."""
    ids = [c.id for c in all_cases(full=True)]
    assert [pattern for pattern, _ in known.KNOWN if not known.matching(pattern, ids)] == []
