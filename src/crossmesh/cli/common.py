"""Shared command-line plumbing: output format, error → exit code mapping, consoles."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from enum import StrEnum
from json.encoder import encode_basestring_ascii as encode_string  # what json.dumps uses for text
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from crossmesh.errors import (
    CrossmeshError,
    EnvironmentProblem,
    Refused,
    SpecError,
    StateError,
    UnsafePath,
    UsageError,
)
from crossmesh.render.files import yaml_dump

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


OUTPUT_OPTION = typer.Option(Output.TABLE, "-o", "--output", help="table for people; json or yaml for tools")


def emit(data: Any, output: Output) -> None:
    """Machine output: JSON (streamed, see emit_json) or the same data as YAML (sorted keys)."""
    if output is Output.YAML:
        sys.stdout.write(yaml_dump(data))
    else:
        emit_json(data)


def emit_json(data: Any) -> None:
    """`json.dumps(data, indent=2, sort_keys=True)` to stdout, byte for byte, written as it is made.

    A plan shares one list of peers between every node of a site and one dict per route between
    every node routing there (see `serialize.plan_json`): each distinct list or dict is encoded
    once per depth and its text reused, and large lists are written item by item, so a full mesh
    of 1,000 nodes (970 MB of text, 950,000 peer entries) is written in about a second without
    ever holding the whole text (json's own indenting encoder is pure Python: 61 s, 4.9 GB)."""
    _JsonWriter(sys.stdout.write).write(data, 0)
    sys.stdout.write("\n")


class _JsonWriter:
    # Containers this shallow (the document, the plan, its node list) or this long are written piece
    # by piece, not held as one text; texts up to CACHE_UP_TO characters (a peer, a route) are kept,
    # longer ones only once met a second time (a site's shared peer list, not each node's routes).
    STREAM_DEPTH = 3
    STREAM_AT = 64
    CACHE_UP_TO = 4096

    def __init__(self, write: Callable[[str], Any]) -> None:
        self.out = write
        self.cache: dict[int, dict[int, str]] = {}  # depth → id → text; the data outlives the writer
        self.seen: set[tuple[int, int]] = set()  # (depth, id) of long texts made once

    def text(self, obj: Any, depth: int) -> str:
        if type(obj) is str:
            return encode_string(obj)
        if not isinstance(obj, dict | list) or not obj:
            return json.dumps(obj, sort_keys=True)
        cache = self.cache.setdefault(depth, {})
        done = cache.get(id(obj))
        if done is None:
            parts: list[str] = []
            self._container(obj, depth, parts.append)
            done = "".join(parts)
            if len(done) <= self.CACHE_UP_TO or (depth, id(obj)) in self.seen:
                cache[id(obj)] = done
            else:
                self.seen.add((depth, id(obj)))
        return done

    def write(self, obj: Any, depth: int) -> None:
        if isinstance(obj, dict | list) and obj and (depth < self.STREAM_DEPTH or len(obj) > self.STREAM_AT):
            self._container(obj, depth, self.out)
        else:
            self.out(self.text(obj, depth))

    def _container(self, obj: dict[str, Any] | list[Any], depth: int, emit: Callable[[str], Any]) -> None:
        inner = "\n" + "  " * (depth + 1)
        sep = "," + inner
        streaming = emit is self.out
        if isinstance(obj, dict):
            emit("{")
            for i, (k, v) in enumerate(sorted(obj.items())):
                emit(f"{sep if i else inner}{encode_string(k)}: ")
                if streaming:
                    self.write(v, depth + 1)
                else:
                    emit(self.text(v, depth + 1))
            emit("\n" + "  " * depth + "}")
        elif all(type(v) is str for v in obj):  # names (a diff lists millions): one join at C speed
            emit("[" + inner + sep.join(map(encode_string, obj)) + "\n" + "  " * depth + "]")
        elif streaming:
            emit("[")
            for i, v in enumerate(obj):
                emit(sep if i else inner)
                self.write(v, depth + 1)
            emit("\n" + "  " * depth + "]")
        else:
            known = self.cache.setdefault(depth + 1, {})
            texts = [known.get(id(v)) or self.text(v, depth + 1) for v in obj]
            emit("[" + inner + sep.join(texts) + "\n" + "  " * depth + "]")


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Map crossmesh errors to messages and exit codes: bad input and bad conditions exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SpecError as e:
            for p in e.problems:
                err.print(str(p), markup=False)
            n = sum(1 for p in e.problems if p.severity == "error")
            err.print(f"[red]{n} problem{'s' if n != 1 else ''}[/red]; nothing was written")
            raise typer.Exit(2) from None
        except (StateError, UnsafePath, EnvironmentProblem, UsageError, Refused) as e:
            err.print(f"[red]error:[/red] {escape(str(e))}")
            raise typer.Exit(2) from None
        except CrossmeshError as e:
            err.print(f"[red]error:[/red] {escape(str(e))}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:  # the reader went away (`| head`): nothing more to say to anyone
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # a bug: say so plainly, keep the traceback for whoever asks
            if os.environ.get("CROSSMESH_DEBUG"):
                traceback.print_exc()
            err.print(
                f"[red]internal error:[/red] {type(e).__name__}: {escape(str(e))} "
                "(a crossmesh bug; CROSSMESH_DEBUG=1 shows the traceback)",
                markup=True,
            )
            raise typer.Exit(70) from None

    return wrapper


def listeners_text(listeners: list[dict[str, Any]]) -> str:
    """A gateway's listeners in one line (`plan`, `lab status`): name, port, protocol, host, node port."""
    return ", ".join(
        f"{li['name']} {li['port']}/{li['protocol']} {li['hostname'] or 'any host'} → node port {li['nodePort']}"
        for li in listeners
    )
