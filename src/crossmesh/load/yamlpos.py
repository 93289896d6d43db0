"""YAML documents as plain Python data plus the source position of every node.

Pydantic validates plain data and reports errors by path (`spec.clusters.2.podCIDR`);
to turn that into `mesh.yaml:14:5` we keep a map path → (line, column) built while
converting ruamel's round-trip nodes. The conversion counts nodes so that an alias
bomb ("billion laughs") fails fast with a clear message instead of eating memory.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate, islice
from pathlib import Path
from typing import Any

import yaml as libyaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.scalarbool import ScalarBoolean

from crossmesh.errors import Problem
from crossmesh.state import disk

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_NODES = 200_000
# Above this size a document is composed by libyaml (C) and converted here with YAML 1.2's rules:
# ruamel's pure-Python round-trip parser takes ~4.5 s for a 10,000-node mesh file, libyaml 0.1 s.
# Smaller files, and any file with tags, aliases, merge keys or directives, keep ruamel's path,
# whose error messages the fast path falls back to.
FAST_PATH_BYTES = 64 * 1024
_FAST_PATH_REFUSES = ("!", "<<", "\n%")  # tags, merge keys, directives; aliases are found while converting
# Characters of all keys and scalars once aliases are expanded; a file without aliases holds at most a
# quarter of it. Counting nodes alone lets one 3 MB string aliased 2,000 times through (6 GB of copies).
MAX_CHARS = 4 * MAX_FILE_BYTES
MAX_DEPTH = 100  # flow collections inside each other
_DEPTH = {"[": 1, "{": 1, "]": -1, "}": -1}
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")

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


class _Slow(Exception):
    """The fast path met something only ruamel handles (or words) exactly: use ruamel."""


_SCALAR_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null")}
_STR = "tag:yaml.org,2002:str"


class _FastConverter:
    """libyaml's node tree → the same plain data and positions as `_Converter` gives from ruamel.

    libyaml resolves plain scalars by YAML 1.1 (`yes` is true, `012` octal); they are resolved
    again here by ruamel's YAML 1.2 resolver and built by its constructor, so values match."""

    def __init__(self) -> None:
        self.count = 0
        self.positions: dict[PathKey, tuple[int, int]] = {}
        self.seen: set[int] = set()  # an alias is a node met twice: ruamel expands and counts it
        # ruamel's YAML 1.2 implicit resolvers by first character, read once (its `resolve` looks
        # the version up again for every scalar, a third of this conversion's time).
        implicit = VersionedResolver(version=(1, 2)).versioned_resolver
        self.implicit: dict[str, list[tuple[str, Any]]] = {
            first: [(str(tag), regexp) for tag, regexp in (*rules, *implicit.get(None, []))]
            for first, rules in implicit.items()
            if first is not None
        }
        self.constructor = _yaml().constructor

    def tag(self, value: str) -> str:
        for tag, regexp in self.implicit.get(value[:1], ()):
            if regexp.match(value):
                return tag
        return _STR

    def scalar(self, node: libyaml.ScalarNode) -> Any:
        if node.style:  # quoted or block: a string (explicit tags never reach here); plain is "" in C, None in Python
            return node.value
        tag = self.tag(node.value)
        if tag == _STR:
            return node.value
        if tag not in _SCALAR_TAGS:
            raise _Slow  # timestamps and the like: ruamel's objects
        value = self.constructor.construct_object(ScalarNode(tag, node.value), deep=True)
        for plain in (bool, int, float):
            if isinstance(value, plain):
                return plain(value)
        return value

    def convert(self, node: libyaml.Node, path: PathKey) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig
        if id(node) in self.seen:
            raise _Slow
        self.seen.add(id(node))
        if isinstance(node, libyaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, libyaml.ScalarNode):
                    raise _Slow
                key = str(self.scalar(key_node))
                if key in out:
                    raise _Slow  # a duplicate key: ruamel's message names both places
                self.positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.convert(value_node, (*path, key))
            return out
        if isinstance(node, libyaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.positions[(*path, i)] = (item.start_mark.line + 1, item.start_mark.column + 1)
                items.append(self.convert(item, (*path, i)))
            return items
        return self.scalar(node)


_NODE_EVENTS = (libyaml.ScalarEvent, libyaml.MappingStartEvent, libyaml.SequenceStartEvent, libyaml.AliasEvent)


class _Composer(libyaml.CSafeLoader):  # type: ignore[misc]  # PyYAML has no type hints
    """libyaml's composer without PyYAML's (YAML 1.1) implicit resolvers: `_FastConverter`
    resolves plain scalars itself."""

    yaml_implicit_resolvers: dict[Any, Any] = {}


def _fast_documents(text: str, shown: str) -> list[Document] | None:
    """The documents through libyaml, or None when ruamel must read this text."""
    if len(text) < FAST_PATH_BYTES or text.startswith("%") or any(mark in text for mark in _FAST_PATH_REFUSES):
        return None
    docs = []
    try:
        # A million-item list would be composed in full (seconds) before the node cap could refuse it.
        # Every node but the first follows a newline or one of `,:-[{?` (a mapping's value a `:`, and
        # its key whatever precedes it): when that bound is under the cap, nothing to count. Else count
        # the nodes from libyaml's event stream (lazy, no objects built).
        bound = text.count(":") + sum(map(text.count, ",:-[{?\n")) + 1
        if bound > MAX_NODES:
            nodes = (e for e in libyaml.parse(text, Loader=_Composer) if isinstance(e, _NODE_EVENTS))
            if sum(1 for _ in islice(nodes, MAX_NODES + 1)) > MAX_NODES:
                raise _TooBig
        for root in libyaml.compose_all(text, Loader=_Composer):
            conv = _FastConverter()
            start = 1
            if isinstance(root, libyaml.MappingNode | libyaml.SequenceNode):
                start = root.start_mark.line + 1
                conv.positions[()] = (start, root.start_mark.column + 1)
            data = None if root is None else conv.convert(root, ())
            docs.append(Document(file=shown, data=data, positions=conv.positions, start_line=start))
    except (libyaml.YAMLError, _Slow, RecursionError):
        return None  # _TooBig goes to the caller: ruamel would only take longer to say the same
    return docs


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def _read_regular(path: Path) -> tuple[bytes | None, str | None]:
    """The bytes of `path` if it is a regular file within the bound, else why not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, "file not found — check the path"
    except OSError as err:
        if err.errno == errno.ENXIO:  # a socket (or a FIFO that no one can write to): not a file either way
            try:
                return None, f"is {disk.describe(os.stat(path))}, not a regular file — crossmesh reads only files"
            except OSError:
                pass
        return None, f"cannot read file: {err.strerror}"
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return None, "is a directory, expected a YAML file"
        if not stat.S_ISREG(st.st_mode):
            return None, f"is {disk.describe(st)}, not a regular file — crossmesh reads only files"
        data = disk.read_bounded(fd, MAX_FILE_BYTES)
    except OSError as err:
        return None, f"cannot read file: {err.strerror}"
    finally:
        os.close(fd)
    if data is None:
        return None, (
            f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB, the most crossmesh reads — "
            "split it into several files"
        )
    return data, None


def read_text(path: Path, shown: str) -> tuple[str | None, Problem | None]:
    """The text of a regular file of at most MAX_FILE_BYTES, or the problem that stops it.

    The file is opened before it is judged, so what is judged is what is read: a FIFO opens at
    once (O_NONBLOCK) instead of waiting forever for a writer, a terminal is not made ours
    (O_NOCTTY), and a device reports size 0, so the bound is on the bytes read, not the size.
    """
    raw, refusal = _read_regular(path)
    if raw is None:
        return None, Problem(shown, 1, 1, "", str(refusal))
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


def _too_deep(text: str, shown: str) -> Problem | None:
    """Flow collections nested deeper than MAX_DEPTH (`[[[[…`), found before any parser sees them:
    ruamel takes minutes over 10,000 levels, and no Kubernetes object or mesh nests past a few dozen.
    Brackets inside quoted strings count too; a real file never holds a hundred unclosed ones."""
    brackets = _NOT_BRACKETS.sub("", text)
    if not brackets or max(accumulate(map(_DEPTH.__getitem__, brackets))) <= MAX_DEPTH:
        return None
    depth = 0
    for i, ch in enumerate(text):  # hostile input only: stops at the first bracket too many
        depth += _DEPTH.get(ch, 0)
        if depth > MAX_DEPTH:
            line = text.count("\n", 0, i) + 1
            col = i - (text.rfind("\n", 0, i) + 1) + 1
            return Problem(shown, line, col, "", f"YAML nested deeper than {MAX_DEPTH} levels — flatten the document")
    return None


def parse_documents(text: str, shown: str) -> tuple[list[Document], list[Problem]]:
    """Every document of a (multi-document) YAML stream, or the problem that stopped parsing."""
    deep = _too_deep(text, shown)
    if deep is not None:
        return [], [deep]
    try:
        fast = _fast_documents(text, shown)
    except _TooBig:
        return [], [_too_big(shown, 1)]
    if fast is not None:
        return fast, []
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
            return [], [_too_big(shown, start)]
        except RecursionError:
            return [], [Problem(shown, start, 1, "", "YAML nested too deeply — flatten the document")]
        docs.append(Document(file=shown, data=data, positions=conv.positions, start_line=start))
    return docs, []


def _too_big(shown: str, line: int) -> Problem:
    return Problem(
        shown,
        line,
        1,
        "",
        f"document expands to more than {MAX_NODES} YAML nodes or {MAX_CHARS} characters (an alias bomb?) — "
        "write the values out instead of nesting aliases, or split the file",
    )


def _iter_raw(text: str) -> Iterator[Any]:
    yield from _yaml().load_all(text)
