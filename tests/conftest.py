"""Shared fixtures: real processes and real servers on loopback port 0, real SQLite files."""

from __future__ import annotations

import pytest

from server.core import NotificationServer
from tests.helpers import Fleet


@pytest.fixture
async def fleet(tmp_path):
    """A place to start real ``taskfleet`` processes; everything is killed at the end."""
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        await f.close()


@pytest.fixture
async def ns(tmp_path):
    """An in-process NS on loopback port 0, plain ws:// (``insecure``), with its first admin token."""
    server = NotificationServer(data_dir=str(tmp_path / "ns"), insecure=True)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
