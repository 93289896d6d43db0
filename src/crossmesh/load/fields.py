"""Reading a manifest object's fields with every problem at its path: the plumbing the NetworkPolicy
and CiliumNetworkPolicy, Istio and Gateway API parsers share.

A parser walks the raw object once; each check reports an `Issue` at a path relative to the object
(the manifest loader turns it into `file:line:column`) and goes on, so that one run names every
problem. What differs between the kinds — which fields exist, which crossmesh refuses and why — is
the parsers' own; how a mapping, a list or a string is checked is here, once.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, NamedTuple

Path = tuple[str | int, ...]


class Issue(NamedTuple):
    """A problem in one object: where (relative to the object), what, and how bad."""

    path: Path
    message: str
    severity: str = "error"


def brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out


@dataclass(slots=True)
class FieldReader:
    """The problems found so far in one object, and the checks of its fields' shapes."""

    issues: list[Issue] = field(default_factory=list, kw_only=True)

    def error(self, path: Path, message: str) -> None:
        self.issues.append(Issue(path, message))

    def warn(self, path: Path, message: str) -> None:
        self.issues.append(Issue(path, message, "warning"))

    @property
    def failed(self) -> bool:
        return any(i.severity == "error" for i in self.issues)

    def unsupported(self, key: str, known: tuple[str, ...]) -> str:
        """Why field `key`, which the kind has, is refused (a parser says what crossmesh does instead)."""
        return f"{key!r} is not supported by crossmesh, which reads only {', '.join(known)} here — remove it"

    def mapping(
        self, value: Any, path: Path, known: tuple[str, ...], unsupported: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """`value` as a mapping; None (absent) reads as {}. A key of `unsupported` is refused with
        `unsupported()`'s reason, any other key not `known` as unknown, with the nearest known name
        (compared without case: `matchlabels` is `matchLabels`)."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"found {brief(value)}, expected a mapping")
            return None
        for key in value:
            if key in unsupported:
                self.error((*path, key), self.unsupported(key, known))
            elif key not in known:
                by_lower = {k.lower(): k for k in (*known, *unsupported)}
                near = difflib.get_close_matches(str(key).lower(), list(by_lower), n=1)
                hint = f"did you mean {by_lower[near[0]]!r}?" if near else "remove it"
                self.error((*path, key), f"unknown field {key!r} — {hint} (known: {', '.join(sorted(known))})")
        return value
