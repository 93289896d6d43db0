"""The agent's log: one line per event on standard output, with the time to the millisecond (the
lab collects each agent's output in its log folder)."""

from __future__ import annotations

import time


def log(msg: str) -> None:
    now = time.time()
    print(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d} {msg}", flush=True)
