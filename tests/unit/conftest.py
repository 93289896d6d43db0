"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask of 000, which would leave everything world-writable: modes seen under it are crossmesh's doing."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)
