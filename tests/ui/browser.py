"""Headless Debian Chromium driven by /usr/bin/chromedriver (selenium), and `crossmesh ui` run as a
user runs it (a subprocess on a free port): shared by the browser tests and benchmarks/bench_ui.py."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import crossmesh

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


def missing() -> str:
    """Why the browser tests cannot run here ("" when they can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return ""


@contextmanager
def chromium() -> Iterator[object]:
    """A fresh headless Chromium (its own profile folder, removed afterwards)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cm-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def ui_server(*args: str, timeout: float = 90.0, src: Path | None = None) -> Iterator[str]:
    """`crossmesh ui ARGS --port 0` as a subprocess (crossmesh from `src`, default this one's);
    yields its URL, stops it afterwards."""
    env = dict(os.environ, PYTHONPATH=str(src or Path(crossmesh.__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "crossmesh", "ui", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + timeout
        seen = []
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            m = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if m:
                yield m.group(0)
                return
        raise RuntimeError("crossmesh ui did not start: " + "".join(seen))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait(driver: Any, condition: str, timeout: float = 30.0) -> float:
    """Seconds until the JavaScript `condition` holds in the page; TimeoutError after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if driver.execute_script(f"return Boolean({condition});"):
            return time.monotonic() - start
        time.sleep(0.02)
    raise TimeoutError(f"not within {timeout} s: {condition}")


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, decompressed scanlines) of a PNG: enough to tell a blank picture from a drawn one."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)
