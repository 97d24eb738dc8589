"""The access rule of ``/metrics`` (``runtime.metrics.may_read``), its token file, and the log
set-up (``runtime.logs.configure``).

The e2e test (tests/e2e/test_metrics.py) reads /metrics from this machine's non-loopback address;
these cover the decision itself for every kind of address and header, including the ones a
sandbox cannot give (IPv4-mapped IPv6, scoped IPv6, garbage)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import structlog

from runtime import logs
from runtime.metrics import bearer, is_loopback, may_read, token_file_check


@pytest.mark.parametrize(
    "address, loopback",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.5", False),
        ("192.0.2.2", False),
        ("::ffff:10.0.0.5", False),
        ("fe80::1%eth0", False),
        ("2001:db8::1", False),
        ("", False),
        ("localhost", False),  # the listener sees addresses, never names
    ],
)
def test_loopback_addresses(address, loopback):
    assert is_loopback(address) is loopback


@pytest.mark.parametrize(
    "header, token",
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_header(header, token):
    assert bearer(header) == token


async def test_may_read_open_on_loopback_token_elsewhere(tmp_path):
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    check = token_file_check(str(path))
    assert check is not None
    # Loopback: no token needed, whatever the header says.
    assert await may_read("127.0.0.1", None, check)
    assert await may_read("::1", "Bearer wrong", None)
    # Elsewhere: only the right bearer token.
    assert not await may_read("10.0.0.5", None, check)
    assert not await may_read("10.0.0.5", "Bearer wrong", check)
    assert not await may_read("10.0.0.5", "Basic s3cret", check)
    assert await may_read("10.0.0.5", "Bearer s3cret", check)
    # No token file: loopback only, even with a header.
    assert not await may_read("10.0.0.5", "Bearer s3cret", None)


def test_token_file_problems_name_the_file(tmp_path):
    assert token_file_check(None) is None
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=f"cannot read --metrics-token-file {missing}"):
        token_file_check(str(missing))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        token_file_check(str(empty))


@pytest.fixture
def restore_logs():
    yield
    logs.configure("info", fmt="console")
    structlog.contextvars.clear_contextvars()


def test_log_file_is_private_and_json(tmp_path, restore_logs):
    path = tmp_path / "role.log"
    logs.configure("info", file=str(path))  # a file is no terminal: JSON by default
    logs.bind_role("taskserver", "ts-a")
    logs.get("taskserver").info("ns_connected", run_id=7)
    logs.get("taskserver").debug("not_at_info")
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "ns_connected" and event["run_id"] == 7
    assert event["role"] == "taskserver" and event["name"] == "ts-a"
    assert event["level"] == "info" and event["timestamp"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_log_file_that_cannot_open(tmp_path, restore_logs):
    where = tmp_path / "no-such-folder" / "x.log"
    with pytest.raises(logs.LogFileError, match=f"cannot open the log file {where}"):
        logs.configure("info", file=str(where))


def test_console_format_and_the_old_keyword(tmp_path, restore_logs, capsys):
    logs.configure("info", fmt="console")
    logs.get("x").info("hello_console", computer="pc-1")
    assert "hello_console" in capsys.readouterr().err
    logs.configure("info", json=True)
    logs.get("x").info("hello_json", computer="pc-1")
    err = capsys.readouterr().err.strip()
    assert json.loads(err)["computer"] == "pc-1"
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        logs.configure("info", fmt="xml")
