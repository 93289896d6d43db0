"""Graphviz's `dot`, the one program that lays the mesh's picture out (`render/graph.py` writes its input).

A subprocess with a time limit: a layout of a very large mesh can take long, and a UI request
must not hang on it. `dot` reads the text on stdin, so nothing of the mesh touches a command line.
"""

from __future__ import annotations

import shutil
import subprocess

from crossmesh.errors import CrossmeshError, EnvironmentProblem

TIMEOUT = 60.0  # seconds; a 30-node full mesh lays out in well under one


def svg(dot_text: str, *, timeout: float = TIMEOUT) -> str:
    """The SVG document `dot -Tsvg` makes of `dot_text`.

    EnvironmentProblem when Graphviz is missing or too slow (both fixed outside crossmesh);
    CrossmeshError when `dot` refuses the text (a crossmesh bug: the text is generated)."""
    exe = shutil.which("dot")
    if exe is None:
        raise EnvironmentProblem(
            "Graphviz's `dot` was not found on PATH: install graphviz (`apt-get install graphviz`), "
            "or write DOT text with `-o dot` and lay it out elsewhere"
        )
    try:
        done = subprocess.run(
            [exe, "-Tsvg"], input=dot_text, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(
            f"`dot -Tsvg` took more than {timeout:.0f} s to lay the mesh out: write DOT text with `-o dot` "
            "and lay it out with `sfdp -Tsvg`, which is faster on large graphs"
        ) from None
    if done.returncode != 0:
        raise CrossmeshError(f"`dot -Tsvg` failed (exit {done.returncode}): {done.stderr.strip()[:500]}")
    return done.stdout
