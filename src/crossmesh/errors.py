"""One exception tree for crossmesh, so the command line can map each to an exit code.

CrossmeshError
├── SpecError        the mesh file (or a manifest) is wrong: exit 2, lists every problem
├── StateError       the state directory is unreadable or inconsistent: exit 2
├── UnsafePath       a link, a non-file or a folder open to others where crossmesh reads or writes: exit 2
└── EnvironmentProblem  this host cannot do what was asked (not root, missing package): exit 2
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input, pointing at its source."""

    file: str
    line: int
    column: int
    path: str
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        field = f" {self.path}:" if self.path else ""
        tag = "" if self.severity == "error" else " warning:"
        return f"{where}:{tag}{field} {self.message}"

    def as_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "severity": self.severity,
        }


class CrossmeshError(Exception):
    """Base of every error crossmesh raises on purpose."""


class SpecError(CrossmeshError):
    """The mesh file or its manifests are invalid; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StateError(CrossmeshError):
    """The state directory cannot be read or written."""


class UnsafePath(CrossmeshError):
    """A path crossmesh would read or write could redirect it or expose a secret: refused, nothing done."""


class UsageError(CrossmeshError):
    """The command names something that does not exist (a pod, a running lab)."""


class EnvironmentProblem(CrossmeshError):
    """This host lacks something the command needs (root, a package)."""


class Refused(CrossmeshError):
    """A running system refused the request for a reason the user must fix first (a certificate etcd
    does not accept, an apply that raced another): exit 2, nothing changed."""
