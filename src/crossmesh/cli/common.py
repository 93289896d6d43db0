"""Shared command-line plumbing: output format, error → exit code mapping, consoles."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from enum import StrEnum
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from crossmesh.errors import CrossmeshError, EnvironmentProblem, SpecError, StateError, UnsafePath, UsageError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


OUTPUT_OPTION = typer.Option(Output.TABLE, "-o", "--output", help="table for people, json for tools")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


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
        except (StateError, UnsafePath, EnvironmentProblem, UsageError) as e:
            err.print(f"[red]error:[/red] {escape(str(e))}")
            raise typer.Exit(2) from None
        except CrossmeshError as e:
            err.print(f"[red]error:[/red] {escape(str(e))}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
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
