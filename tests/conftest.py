"""Shared fixtures: real processes and real servers on loopback port 0, real SQLite files."""

from __future__ import annotations

import pytest

from tests.helpers import TOKEN, Fleet


@pytest.fixture
def token() -> str:
    return TOKEN


@pytest.fixture
async def fleet(tmp_path):
    """A place to start real ``taskfleet`` processes; everything is killed at the end."""
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        await f.close()
