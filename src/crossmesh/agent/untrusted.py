"""Reading values others wrote into etcd (records, intents, active gateways): a JSON object under a
size cap, or ValueError saying why — never anything else, whatever the bytes hold — and a value
quoted short for a message or log line."""

from __future__ import annotations

import json
from typing import Any


def json_object(raw: bytes, cap: int) -> dict[str, Any]:
    """The JSON object `raw` holds; ValueError (its message says why) when it is over `cap` bytes, not
    UTF-8, not JSON (or nested deeper than Python reads) or not an object."""
    if len(raw) > cap:
        raise ValueError(f"{len(raw)} bytes, over the {cap}-byte cap")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"not JSON: {str(err)[:80]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    return data


def shown(value: object) -> str:
    """A value from etcd, quoted and cut short for a message (newlines and all escaped)."""
    text = repr(value)
    return text if len(text) <= 48 else text[:45] + "..."
