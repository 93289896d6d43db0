"""Go durations ("24h", "90m", "1h30m", "1.5h"), as Istio's settings take them (`time.ParseDuration`):
a mesh file's Istio settings are written as Istio's own, so a value copied from an Istio manual
means the same here. Parsed exactly (fractions, no float rounding) down to the microsecond."""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction

_NANOS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([a-zµμ]*)")
_DAYS = re.compile(r"([0-9]+)d")
HINT = "write it as Go does: 24h, 90m, 1h30m (units h, m, s, ms, us, ns)"


def parse_go(text: str) -> timedelta:
    """The duration `text` names in Go's syntax; ValueError saying what is wrong otherwise."""
    shown = repr(text[:30])
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return timedelta(0)
    days = _DAYS.fullmatch(body)
    if days:
        raise ValueError(f"{shown} is not a Go duration: Go has no unit 'd' — write {int(days.group(1)) * 24}h")
    if not body:
        raise ValueError(f"{shown} is not a Go duration — {HINT}")
    total, at = Fraction(0), 0
    while at < len(body):
        m = _PART.match(body, at)
        assert m is not None  # noqa: S101 - the pattern matches the empty string
        number, unit = m.groups()
        if number in ("", "."):
            raise ValueError(f"{shown} is not a Go duration — {HINT}")
        if not unit:
            raise ValueError(f"{shown} is not a Go duration: {number} has no unit — {HINT}")
        if unit not in _NANOS:
            raise ValueError(f"{shown} is not a Go duration: unknown unit {unit!r} — {HINT}")
        total += Fraction(number) * _NANOS[unit]
        at = m.end()
    micros = round(total / 1000)
    return timedelta(microseconds=-micros if text.startswith("-") else micros)


def format_go(value: timedelta) -> str:
    """`value` as Go's `Duration.String` writes whole seconds: 24h0m0s, 1h30m0s, 10m0s, 0s."""
    seconds = int(value.total_seconds())
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"
