"""The rendered tree as data: relative path → content and mode. Writing is the caller's job."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import yaml
from ruamel.yaml import YAML

# libyaml's emitter when PyYAML was built with it: ~10x faster than the pure-Python one on
# large values files; both give canonical output for the same data (keys sorted, no aliases).
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _NoAliases(_Dumper):  # type: ignore[misc]
    def ignore_aliases(self, data: Any) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class RenderedFile:
    content: str
    mode: int = 0o644  # 0o600 for files that hold a node's private key
    secret: bool = False


def yaml_dump(*docs: Any) -> str:
    """YAML with sorted keys and no anchors, so identical data gives identical bytes."""
    text: str = yaml.dump_all(
        list(docs), Dumper=_NoAliases, sort_keys=True, default_flow_style=False, width=4096, allow_unicode=True
    )
    return text


def yaml_dump_pure(*docs: Any) -> str:
    """The same through ruamel (kept for hosts whose PyYAML lacks libyaml, and for comparison)."""
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
