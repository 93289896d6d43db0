"""What every rule module needs: duplicates reported at the second one, naming the first's line."""

from __future__ import annotations

from collections.abc import Iterable

from crossmesh.errors import Problem
from crossmesh.load.yamlpos import Document, PathKey


def dupes(doc: Document, items: Iterable[tuple[object, PathKey]], what: str, fix: str) -> list[Problem]:
    seen: dict[object, PathKey] = {}
    out = []
    for value, path in items:
        if value in seen:
            line = doc.where(seen[value])[0]
            out.append(doc.problem(path, f"duplicate {what} {value} (first at line {line}) — {fix}"))
        else:
            seen[value] = path
    return out
