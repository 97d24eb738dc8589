"""The CLI as people expect it: global flags before or after the verb, ``--version``, the log
flags (on admin verbs and roles alike), and the environment variables still read."""

from __future__ import annotations

import json

from admin.cli import LOG_LEVELS, build_parser
from protocol import PROTOCOL_VERSION
from tests.admin.clirun import clean_env, taskfleet


def _parsed(*argv: str) -> dict[str, object]:
    """The settings parsed from ``argv`` (without the verb's function, made anew per parser)."""
    return {k: v for k, v in vars(build_parser().parse_args(list(argv))).items() if k != "func"}


def test_every_global_flag_reads_the_same_before_and_after_the_verb(capsys):
    """Each global flag, written before the verb or after it, gives the same settings."""
    flags = [
        "--json",
        "--insecure",
        "--server=wss://ns.example:8470",
        "--server-fingerprint",
        "sha256:ab",
        "--ca",
        "/etc/ca.pem",
        "--token-file",
        "/run/token",
        "--profile",
        "prod",
        "--log-level",
        "WARNING",
        "--log-format",
        "json",
        "--log-file",
        "/tmp/x.log",
    ]
    before = _parsed(*flags, "computers", "delete", "a", "b")
    after = _parsed("computers", "delete", "a", "b", *flags)
    assert before == after
    assert before["json"] is True and before["insecure"] is True
    assert before["server"] == "wss://ns.example:8470"
    assert before["log_level"] == "warning" and before["log_format"] == "json"
    assert before["names"] == ["b"] and before["name"] == "a"


def test_a_verb_flag_is_left_where_it_is_and_the_token_is_still_exclusive(capsys):
    """Only global flags move: a verb's own flag before the verb is refused as before, and
    ``--token`` with ``--token-file`` is refused wherever each is written."""
    parser = build_parser()
    try:
        parser.parse_args(["--token", "t", "runs", "--token-file", "/f"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--token with --token-file was accepted")
    assert "not allowed with argument" in capsys.readouterr().err


def test_role_commands_take_the_log_flags_before_the_role_too():
    args = _parsed("--log-level", "debug", "--log-file", "/tmp/ns.log", "server", "--data", "/d")
    assert (args["command"], args["log_level"], args["log_file"]) == (
        "server",
        "debug",
        "/tmp/ns.log",
    )
    assert _parsed("server", "--data", "/d")["log_level"] == "info"


async def test_json_before_and_after_the_verb_reach_the_ns_alike(fleet):
    await fleet.server()
    code, before, err = await fleet.cli("--json", "computers")
    assert code == 0, err
    code, after, err = await fleet.cli("computers", "--json")
    assert code == 0, err
    assert json.loads(before) == json.loads(after) == []


async def test_an_unknown_log_level_is_a_usage_error_naming_the_levels(tmp_path):
    for argv in (["--log-level", "loud", "runs"], ["runs", "--log-level", "loud"]):
        code, out, err = await taskfleet(*argv, env=clean_env(tmp_path))
        assert code == 2
        assert "'loud' is not a log level" in err and ", ".join(LOG_LEVELS) in err
    code, _, err = await taskfleet("runs", env=clean_env(tmp_path, TASKFLEET_LOG_LEVEL="loud"))
    assert code == 2 and "'loud' is not a log level" in err


async def test_version_names_the_package_and_the_protocol(tmp_path):
    code, out, err = await taskfleet("--version", env=clean_env(tmp_path))
    assert code == 0, err
    assert out.strip() == f"taskfleet 0.1.0 (protocol {PROTOCOL_VERSION})"


async def test_the_environment_still_gives_server_trust_and_token(fleet, tmp_path):
    await fleet.server()
    env = clean_env(
        tmp_path,
        TASKFLEET_SERVER=fleet.ns.url,
        TASKFLEET_SERVER_FINGERPRINT=fleet.fingerprint,
        TASKFLEET_TOKEN=fleet.admin_token,
    )
    code, out, err = await taskfleet("--json", "admins", "list", env=env)
    assert code == 0, err
    assert [a["name"] for a in json.loads(out)] == ["admin"]


async def test_a_role_logs_as_json_to_the_file_given_before_the_role(fleet, tmp_path):
    """``taskfleet --log-format json --log-file F server ...``: the NS's log lines are JSON
    objects in F, not text on stderr."""
    log_file = tmp_path / "ns-log.jsonl"
    ns = await fleet._proc(
        "ns",
        [
            "--log-format",
            "json",
            "--log-file",
            str(log_file),
            "server",
            "--data",
            str(tmp_path / "ns"),
            "--listen",
            "127.0.0.1:0",
        ],
    ).start()
    assert ns.url
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert lines and all("event" in line and "timestamp" in line for line in lines)


async def test_a_log_file_that_cannot_be_opened_stops_the_command(tmp_path):
    """A role cannot start (exit 4); an admin verb was given a bad argument (exit 2). Either way
    the message names the file, before anything else is done."""
    bad = str(tmp_path / "no-such-folder" / "taskfleet.log")
    env = clean_env(tmp_path)
    code, _, err = await taskfleet("--log-file", bad, "runs", env=env)
    assert code == 2 and f"cannot open the log file {bad}" in err
    data = tmp_path / "ns"
    code, _, err = await taskfleet(
        "--log-file", bad, "server", "--data", str(data), "--listen", "127.0.0.1:0", env=env
    )
    assert code == 4 and f"cannot open the log file {bad}" in err
    assert not data.exists()
