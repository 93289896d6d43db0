"""The rendered tree as data: relative path → content and mode. Writing is the caller's job."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML


@dataclass(frozen=True, slots=True)
class RenderedFile:
    content: str
    mode: int = 0o644  # 0o600 for files that hold a node's private key
    secret: bool = False


def yaml_dump(*docs: Any) -> str:
    """YAML with sorted keys and no anchors, so identical data gives identical bytes."""
    y = YAML(typ="safe", pure=True)
    y.default_flow_style = False
    y.representer.ignore_aliases = lambda _data: True
    y.width = 4096
    buf = io.StringIO()
    y.dump_all([_sorted(d) for d in docs], buf)
    return buf.getvalue()


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted(v) for v in value]
    return value
