"""YAML documents as plain Python data plus the source position of every node.

Pydantic validates plain data and reports errors by path (`spec.clusters.2.podCIDR`);
to turn that into `mesh.yaml:14:5` we keep a map path → (line, column) built while
converting ruamel's round-trip nodes. The conversion counts nodes so that an alias
bomb ("billion laughs") fails fast with a clear message instead of eating memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from crossmesh.errors import Problem

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_NODES = 200_000
# Characters of all keys and scalars once aliases are expanded; a file without aliases holds at most a
# quarter of it. Counting nodes alone lets one 3 MB string aliased 2,000 times through (6 GB of copies).
MAX_CHARS = 4 * MAX_FILE_BYTES

PathKey = tuple[str | int, ...]


@dataclass(slots=True)
class Document:
    """One YAML document: its data and where each part came from."""

    file: str
    data: Any
    positions: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    start_line: int = 1

    def where(self, path: PathKey) -> tuple[int, int]:
        """Position of `path`, or of its nearest ancestor that has one."""
        probe = tuple(path)
        while probe:
            pos = self.positions.get(probe)
            if pos is not None:
                return pos
            probe = probe[:-1]
        return self.positions.get((), (self.start_line, 1))

    def problem(self, path: PathKey, message: str, *, severity: str = "error", label: str = "") -> Problem:
        line, column = self.where(path)
        return Problem(
            file=self.file,
            line=line,
            column=column,
            path=label or dotted(path),
            message=message,
            severity=severity,
        )


def dotted(path: PathKey) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class _TooBig(Exception):
    pass


class _Converter:
    def __init__(self) -> None:
        self.count = 0
        self.chars = 0
        self.positions: dict[PathKey, tuple[int, int]] = {}

    def _text(self, text: str) -> None:
        self.chars += len(text)
        if self.chars > MAX_CHARS:
            raise _TooBig

    def convert(self, node: Any, path: PathKey) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig
        if isinstance(node, str):
            self._text(node)
        if isinstance(node, CommentedMap):
            out: dict[str, Any] = {}
            for key, value in node.items():
                skey = str(key)
                self._text(skey)
                try:
                    line, col = node.lc.key(key)
                    self.positions[(*path, skey)] = (line + 1, col + 1)
                except (KeyError, TypeError):
                    pass
                out[skey] = self.convert(value, (*path, skey))
            return out
        if isinstance(node, CommentedSeq):
            items = []
            for i, value in enumerate(node):
                try:
                    line, col = node.lc.item(i)
                    self.positions[(*path, i)] = (line + 1, col + 1)
                except (KeyError, TypeError, IndexError):
                    pass
                items.append(self.convert(value, (*path, i)))
            return items
        if isinstance(node, ScalarBoolean):  # an anchored `true`: an int subclass, so test it before int
            return bool(node)
        if hasattr(node, "__str__") and type(node).__module__.startswith("ruamel"):
            # ScalarString / ScalarFloat / ScalarBoolean subclasses: keep plain values.
            for plain in (bool, int, float, str):
                if isinstance(node, plain):
                    return plain(node)
        return node


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def read_text(path: Path, shown: str) -> tuple[str | None, Problem | None]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None, Problem(shown, 1, 1, "", "file not found — check the path")
    except OSError as err:
        return None, Problem(shown, 1, 1, "", f"cannot read file: {err.strerror}")
    if path.is_dir():
        return None, Problem(shown, 1, 1, "", "is a directory, expected a YAML file")
    if size > MAX_FILE_BYTES:
        return None, Problem(
            shown,
            1,
            1,
            "",
            f"file is {size / 1e6:.1f} MB; crossmesh reads YAML files up to "
            f"{MAX_FILE_BYTES // (1024 * 1024)} MiB — split it into several files",
        )
    try:
        raw = path.read_bytes()
    except OSError as err:
        return None, Problem(shown, 1, 1, "", f"cannot read file: {err.strerror}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        # Point at the first bad byte, so the user need not hunt for it.
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - raw.rfind(b"\n", 0, err.start)
        return None, Problem(
            shown, line, column, "", f"not UTF-8 text ({err.reason} at byte {err.start}) — save the file as UTF-8"
        )
    return text.replace("\r\n", "\n").replace("\r", "\n"), None  # newlines as text mode reads them


def parse_documents(text: str, shown: str) -> tuple[list[Document], list[Problem]]:
    """Every document of a (multi-document) YAML stream, or the problem that stopped parsing."""
    docs: list[Document] = []
    try:
        raw_docs = list(_iter_raw(text))
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = (err.problem or err.context or "malformed YAML").strip()
        start = err.context_mark
        if err.problem and err.context and start is not None and start.line + 1 != line:
            # An unclosed bracket is noticed lines later; say where the construct began.
            what += f" ({err.context.strip()} that starts at line {start.line + 1}, column {start.column + 1})"
        return [], [Problem(shown, line, col, "", f"malformed YAML: {what} — fix the syntax here")]
    except YAMLError as err:
        return [], [Problem(shown, 1, 1, "", f"malformed YAML: {str(err).splitlines()[0]}")]
    except ValueError as err:
        # A scalar the constructor cannot turn into its type — an integer of 5,000 digits, a date
        # 2024-13-01 — fails without a position; say what it was so it can be found.
        what = str(err).split(";")[0]
        return [], [Problem(shown, 1, 1, "", f"malformed YAML: a value cannot be read ({what}) — quote it")]
    except RecursionError:
        return [], [Problem(shown, 1, 1, "", "YAML nested too deeply — flatten the document")]
    for raw in raw_docs:
        conv = _Converter()
        start = 1
        if isinstance(raw, CommentedMap | CommentedSeq):
            start = raw.lc.line + 1
            conv.positions[()] = (start, raw.lc.col + 1)
        try:
            data = conv.convert(raw, ())
        except _TooBig:
            return [], [
                Problem(
                    shown,
                    start,
                    1,
                    "",
                    f"document expands to more than {MAX_NODES} YAML nodes or {MAX_CHARS} characters "
                    "(an alias bomb?) — "
                    "write the values out instead of nesting aliases",
                )
            ]
        except RecursionError:
            return [], [Problem(shown, start, 1, "", "YAML nested too deeply — flatten the document")]
        docs.append(Document(file=shown, data=data, positions=conv.positions, start_line=start))
    return docs, []


def _iter_raw(text: str) -> Iterator[Any]:
    yield from _yaml().load_all(text)
