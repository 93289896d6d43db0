"""The one serialiser of `model` rulesets: nft's text syntax, as `nft -f` reads it.

Text, not nft's JSON (`nft -j -f`), for three reasons measured on the lab's nft (1.0.6): its JSON
reader silently drops `addr . port` from the service DNAT (`dnat ip addr . port to numgen …`
comes back as `dnat ip to …`), so the service tables could not be written in it; the policy
sets hold up to millions of elements, cheaper as strings than as JSON objects; and the text is
byte-for-byte what the lab loaded before, so its digest (`reconcile`) is unchanged. Reading back
needs no JSON input: `nft -j list` answers in JSON whatever the table was loaded from.

Every name and value passes through here: names are checked identifiers, interface names are
checked before they are quoted, and comments — the one place where text a user wrote (pod
names, rule names) enters a ruleset — are made valid (`comment`), so no input breaks a table.
Output is deterministic: items, rules and elements in the order the builder gave them.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import cast

from crossmesh.nft import model
from crossmesh.nft.model import Elements, Type

COMMENT_MAX = 128  # bytes of UTF-8: nft refuses a longer comment, and with it the whole table
_DIGEST = 12
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
LOG_PREFIX_MAX = 127
_LOG_PREFIX = re.compile(rf"[A-Za-z0-9:._-]{{1,{LOG_PREFIX_MAX}}}")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # IFNAMSIZ - 1; no quote, no `*` (nft's wildcard)
# C0 and C1 controls and the Unicode line separators: nothing that ends or breaks a line.
_CONTROL = {c: " " for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)} | {ord('"'): "'"}

Atom = int | IPv4Address | model.Proto | str | tuple[int, int] | tuple[IPv4Address, IPv4Address]
"""One part of a set element: a mark or port (int), an address, a protocol, an interface name,
or an interval (low, high) of ports or addresses."""


def comment(text: str) -> str:
    """`text` as a comment nft accepts and lists back unchanged.

    nft's quoted strings have no escapes: a double quote becomes `'`, control characters (a NUL
    ends the string early) and line separators spaces. At most 128 bytes: a longer text is cut
    and ends in `~` and a digest of the whole (12 hex digits of SHA-256), so that two long texts
    that share their beginning stay apart — the lab reads counters back by comment. Idempotent."""
    clean = text.translate(_CONTROL).encode("utf-8", "replace")
    if len(clean) <= COMMENT_MAX:
        return clean.decode()
    digest = hashlib.sha256(clean).hexdigest()[:_DIGEST]
    return clean[: COMMENT_MAX - _DIGEST - 1].decode("utf-8", "ignore") + "~" + digest


def log_prefix(text: str) -> str:
    """A log prefix as nft takes it and lists it back: 1 to 127 ASCII letters, digits or `:._-`
    (nft's limit, NF_LOG_PREFIXLEN with its NUL; nothing its string syntax reads otherwise),
    or ValueError. Unlike a comment it is not mended: prefixes are codes the reader decodes."""
    if not _LOG_PREFIX.fullmatch(text):
        raise ValueError(f"not a log prefix (1-{LOG_PREFIX_MAX} of A-Z a-z 0-9 : . _ -): {text!r}")
    return text


def name(text: str) -> str:
    """A table, chain, set or map name: a plain identifier, or ValueError."""
    if not _NAME.fullmatch(text):
        raise ValueError(f"not an nftables name: {text!r}")
    return text


def ifname(text: str) -> str:
    """An interface name, quoted; ValueError for one Linux or nft would not take as it is."""
    if not _IFNAME.fullmatch(text):
        raise ValueError(f"not an interface name: {text!r}")
    return f'"{text}"'


# --- set elements ----------------------------------------------------------------------------


def _bad(t: Type, v: object) -> ValueError:
    return ValueError(f"not a {t.value} element: {v!r}")


def _service(v: Atom) -> str:
    if type(v) is int and 0 <= v <= 0xFFFF:
        return str(v)
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int and 0 <= v[0] <= v[1] <= 0xFFFF:
        return str(v[0]) if v[0] == v[1] else f"{v[0]}-{v[1]}"
    raise _bad(Type.INET_SERVICE, v)


def _address(v: Atom) -> str:
    if type(v) is IPv4Address:
        return str(v)
    if type(v) is tuple and len(v) == 2 and type(v[0]) is IPv4Address and type(v[1]) is IPv4Address:
        lo, hi = v
        if lo <= hi:
            return str(lo) if lo == hi else f"{lo}-{hi}"
    raise _bad(Type.IPV4_ADDR, v)


def _ifname(v: Atom) -> str:
    if type(v) is str:
        return ifname(v)
    raise _bad(Type.IFNAME, v)


# A column at a time: policy sets hold up to millions of elements. A column's types and bounds
# are checked with `set(map(type, …))`, `min` and `max` (a fraction of a call per element);
# integers and protocols go to `str.format` as they are, the rest is printed first.


def _integers(col: tuple[Atom, ...], t: Type, top: int) -> bool:
    """Whether the column holds only integers (then all within 0..top, or ValueError)."""
    if set(map(type, col)) != {int}:
        return False
    ints = cast("tuple[int, ...]", col)
    if min(ints) < 0 or max(ints) > top:
        raise _bad(t, min(ints) if min(ints) < 0 else max(ints))
    return True


def _marks(col: tuple[Atom, ...]) -> Sequence[Atom]:
    if not _integers(col, Type.MARK, 0xFFFFFFFF):
        raise _bad(Type.MARK, next(v for v in col if type(v) is not int))
    return col


def _services(col: tuple[Atom, ...]) -> Sequence[Atom]:
    if _integers(col, Type.INET_SERVICE, 0xFFFF):
        return col
    if set(map(type, col)) == {tuple}:  # intervals only: the policy sets
        ends = cast("tuple[tuple[int, int], ...]", col)  # pairs of integers: checked here
        if set(map(len, ends)) == {2}:
            los, his = zip(*ends, strict=True)
            ints = set(map(type, los)) | set(map(type, his)) == {int}
            if ints and all(map(operator.le, los, his)) and min(los) >= 0 and max(his) <= 0xFFFF:
                return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ends]
    return list(map(_service, col))


def _protos(col: tuple[Atom, ...]) -> Sequence[Atom]:
    if not set(map(type, col)) <= {model.Proto}:
        raise _bad(Type.INET_PROTO, next(v for v in col if type(v) is not model.Proto))
    return col  # a StrEnum formats as its value


_COLUMNS: dict[Type, Callable[[tuple[Atom, ...]], Sequence[Atom]]] = {
    Type.MARK: _marks,
    Type.INET_SERVICE: _services,
    Type.IPV4_ADDR: lambda col: list(map(_address, col)),
    Type.INET_PROTO: _protos,
    Type.IFNAME: lambda col: list(map(_ifname, col)),
}


def elements(key: tuple[Type, ...], rows: Iterable[tuple[Atom, ...]], data: Type | None = None) -> Elements:
    """Elements of a set of type `key` (with `data`, of a map: each row ends with its value),
    serialised now; ValueError for a row whose parts are not of the types'."""
    if not key:
        raise ValueError("a set needs a type")
    types = (*key, data) if data is not None else key
    table = tuple(rows)
    if not table:
        return _empty(key, data)
    if set(map(len, table)) != {len(types)}:
        raise ValueError(f"an element does not have {len(types)} parts: {min(table, key=len)!r}")
    cols = [_COLUMNS[t](col) for t, col in zip(types, zip(*table, strict=True), strict=True)]
    pattern = " . ".join(["{}"] * len(key)) + (" : {}" if data is not None else "")
    return Elements(key, data, tuple(itertools.starmap(pattern.format, zip(*cols, strict=True))))


@functools.cache
def _empty(key: tuple[Type, ...], data: Type | None) -> Elements:
    # Most of a large policy's sets are empty for a given identity: one shared value each, not
    # tens of thousands of objects for the garbage collector to walk.
    return Elements(key, data, ())


def _elements(owner: model.Set | model.Map, data: Type | None) -> str:
    key = owner.key
    for block in owner.elements:
        # `is` first: blocks usually share their set's type object, and maps have thousands of blocks
        if (block.key is not key and block.key != key) or block.data is not data:
            raise ValueError(f"elements of another type in {owner.name}")
    printed = ", ".join(itertools.chain.from_iterable(block.printed for block in owner.elements))
    return f"elements = {{ {printed} }}; " if printed else ""


def _types(key: tuple[Type, ...]) -> str:
    if not key:
        raise ValueError("a set needs a type")
    return " . ".join(t.value for t in key)


def _set(s: model.Set) -> str:
    flags = "flags interval; " if s.interval else ""
    counter = "counter; " if s.counter else ""
    if not s.interval and any(_intervals(b) for b in s.elements):
        raise ValueError(f"set {s.name} holds intervals: it needs the interval flag")
    return f"  set {name(s.name)} {{ type {_types(s.key)}; {flags}{counter}{_elements(s, None)}}}\n"


def _intervals(block: Elements) -> bool:
    """Whether the block holds an interval (`lo-hi`: no other port or address has a dash)."""
    ranged = any(t in (Type.INET_SERVICE, Type.IPV4_ADDR) for t in block.key)
    return ranged and any("-" in e for e in block.printed)


def _map(m: model.Map) -> str:
    return f"  map {name(m.name)} {{ type {_types(m.key)} : {m.data.value}; {_elements(m, m.data)}}}\n"


# --- rules -----------------------------------------------------------------------------------


def _value(v: model.Value) -> str:
    if isinstance(v, bool):
        raise ValueError(f"not an nftables value: {v!r}")
    if isinstance(v, int | IPv4Address | IPv4Network):
        return str(v)
    if isinstance(v, model.CtStatus):
        return v.value
    if isinstance(v, str):
        return ifname(v)
    if isinstance(v, model.SetRef):
        return "@" + name(v.name)
    if isinstance(v, model.AnonSet):
        if not v.values:
            raise ValueError("an empty anonymous set")
        return "{ " + ", ".join(_value(x) for x in v.values) + " }"
    if not v:
        raise ValueError("a ct state match needs a state")
    return ",".join(s.value for s in v)


def _key(k: model.Field | tuple[model.Field, ...]) -> str:
    return k.value if isinstance(k, model.Field) else " . ".join(f.value for f in k)


def _expr(e: model.Expr) -> str:  # noqa: PLR0911 - one answer per kind of expression
    if isinstance(e, model.Match):
        return f"{_key(e.key)} {'!= ' if e.negate else ''}{_value(e.value)}"
    if isinstance(e, model.Verdict):
        return e.value
    if isinstance(e, model.Counter):
        return "counter"
    if isinstance(e, model.Log):
        if isinstance(e.group, bool) or not isinstance(e.group, int) or not 0 <= e.group <= 0xFFFF:
            raise ValueError(f"not an NFLOG group (0-65535): {e.group!r}")
        return f'log prefix "{log_prefix(e.prefix)}" group {e.group}'
    if isinstance(e, model.Jump):
        return f"jump {name(e.chain)}"
    if isinstance(e, model.SetMark):
        v = e.value
        value = f"{_key(v.key)} map @{name(v.map)}" if isinstance(v, model.MapLookup) else _value(v)
        return f"{e.target.value} set {value}"
    if isinstance(e, model.Nat):
        port = "" if e.port is None else f":{_service(e.port)}"
        return f"{e.kind.value} to {e.to}{port}"
    if isinstance(e, model.RandomDnat):
        if not e.targets:
            raise ValueError("a random DNAT needs a target")
        targets = ", ".join(f"{i} : {a} . {_service(p)}" for i, (a, p) in enumerate(e.targets))
        return f"dnat ip addr . port to numgen random mod {len(e.targets)} map {{ {targets} }}"
    if isinstance(e, model.Redirect):
        return f"redirect to :{_service(e.port)}"
    return f"reject with {e.with_.value}"


def rule(r: model.Rule) -> str:
    """One rule, as a line of its chain (without indentation)."""
    text = " ".join(_expr(e) for e in r.exprs)
    if r.comment is not None:
        text += f' comment "{comment(r.comment)}"'
    return text


def _base(b: model.Base) -> str:
    priority = b.priority if isinstance(b.priority, int) else b.priority.value
    return f"    type {b.type.value} hook {b.hook.value} priority {priority}; policy accept;\n"


def _chain(c: model.Chain) -> str:
    base = _base(c.base) if c.base is not None else ""
    return f"  chain {name(c.name)} {{\n{base}" + "".join(f"    {rule(r)}\n" for r in c.rules) + "  }\n"


def render(table: model.Table) -> str:
    """The table as `nft -f` reads it."""
    out = [f"table {table.family.value} {name(table.name)} {{\n"]
    if table.comment is not None:
        out.append(f'  comment "{comment(table.comment)}"\n')
    for item in table.items:
        if isinstance(item, model.Set):
            out.append(_set(item))
        elif isinstance(item, model.Map):
            out.append(_map(item))
        else:
            out.append(_chain(item))
    out.append("}\n")
    return "".join(out)
