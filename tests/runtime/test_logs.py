"""The log file (``--log-file``): never opened through a symlink, never left readable by others."""

from __future__ import annotations

import os
import stat

import pytest

from runtime import logs


@pytest.fixture(autouse=True)
def _back_to_stderr():
    yield
    logs.configure("info")  # closes the file a test opened


def test_a_symlink_is_refused_with_what_to_do(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    link = tmp_path / "agent.log"
    link.symlink_to(target)
    with pytest.raises(logs.LogFileError, match="it is a symlink"):
        logs.configure("info", file=str(link))
    assert target.read_text() == "precious\n"


def test_an_existing_file_readable_by_others_is_made_private(tmp_path):
    path = tmp_path / "ns.log"
    path.write_text("")
    os.chmod(path, 0o644)
    logs.configure("info", fmt="json", file=str(path))
    logs.get("test").info("hello")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert '"event": "hello"' in path.read_text()


def test_a_new_file_is_made_private(tmp_path):
    path = tmp_path / "new.log"
    logs.configure("info", fmt="json", file=str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
