"""The plumbing of the Gateway API parser (`gateway.parse`): field checks, names, hostnames, references
and the problems found so far, so the Gateway and HTTPRoute readers say only what those kinds mean."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from crossmesh.load.fields import FieldReader, brief

Path = tuple[str | int, ...]

HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

WHY = {
    "queryParams": "query-parameter matches are not supported by crossmesh; it matches path (Exact, PathPrefix), "
    "headers (Exact) and method — remove 'queryParams' or match on a header instead",
    "path": "redirect paths (ReplaceFullPath, ReplacePrefixMatch) are not supported by crossmesh; a redirect sets "
    "scheme, hostname, port and statusCode and keeps the path — remove 'path'",
    "filters": "filters on a backendRef are not supported by crossmesh — move RequestHeaderModifier to the rule's "
    "filters",
}


@dataclass(slots=True)
class ParserBase(FieldReader):
    """The state of parsing one object: where it is and what went wrong so far."""

    namespace: str
    name: str

    def unsupported(self, key: str, known: tuple[str, ...]) -> str:
        return WHY.get(key) or (
            f"{key!r} is not supported by crossmesh, which runs only {', '.join(known)} here — remove it"
        )

    def items(self, value: Any, path: Path, what: str) -> list[tuple[Path, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, f"found {brief(value)}, expected a list of {what}")
            return []
        return [((*path, i), item) for i, item in enumerate(value)]

    def string(self, value: Any, path: Path, what: str, *, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.error(path, f"{what} is required — add it")
            return None
        if not isinstance(value, str) or not value:
            self.error(path, f"found {brief(value)}, expected {what} as a non-empty string")
            return None
        return value

    def integer(self, value: Any, path: Path, what: str, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.error(path, f"{what} {brief(value)} must be a whole number from {low} to {high}")
            return None
        return value

    def hostname(self, value: Any, path: Path, *, wildcard: bool = True) -> str | None:
        """A DNS name as Gateway API takes it: lower case, a leading `*.` where a pattern is allowed,
        not an IP address (Gateway API matches names, never addresses)."""
        text = self.string(value, path, "a hostname")
        if text is None:
            return None
        form = "lower-case letters, digits, '-' and '.'" + (", optionally after a leading '*.'" if wildcard else "")
        if _is_address(text):
            self.error(path, f"hostname {text!r} is an IP address; Gateway API matches DNS names only — write a name")
        elif len(text) > 253 or not HOSTNAME.fullmatch(text) or (not wildcard and text.startswith("*.")):
            near = text.lower().replace("_", "-")
            fix = f"write {near!r}" if HOSTNAME.fullmatch(near) and len(near) <= 253 else "use only those characters"
            self.error(path, f"hostname {text!r} is not a DNS name ({form}, at most 253) — {fix}")
        else:
            return text
        return None

    def object_name(self, value: Any, path: Path, what: str) -> str | None:
        text = self.string(value, path, f"the {what}'s name", required=True)
        if text is not None and (len(text) > 253 or not NAME.fullmatch(text)):
            self.error(path, f"{text!r} is not a Kubernetes name (lower-case letters, digits, '-', '.')")
            return None
        return text

    def namespace_of(self, value: Any, path: Path, what: str) -> str:
        """A reference's namespace; only the object's own is supported (others need a ReferenceGrant)."""
        if value is None or value == self.namespace:
            return self.namespace
        self.error(
            path,
            f"a {what} in another namespace ({brief(value)}) needs a ReferenceGrant, which crossmesh does not support "
            f"— put it in {self.namespace!r} or remove 'namespace'",
        )
        return self.namespace

    def group_kind(self, data: dict[str, Any], path: Path, group: str, kind: str) -> bool:
        """Whether a reference names `kind` of `group` (the defaults); another kind is refused."""
        ok = True
        if data.get("group", group) != group:
            self.error(
                (*path, "group"), f"group {brief(data['group'])}: crossmesh supports {kind!r} of group {group!r}"
            )
            ok = False
        if data.get("kind", kind) != kind:
            self.error((*path, "kind"), f"kind {brief(data['kind'])}: crossmesh supports only {kind!r} here")
            ok = False
        return ok


def _is_address(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True
