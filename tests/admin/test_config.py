"""Configuration files of the roles (admin/config.py): precedence flag > env > file > default,
the default file in TASKFLEET_CONFIG_DIR, tables as prefixed flags, the errors that name key
and file, secrets refused inline, and ``--print-config`` with secrets masked."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from admin.cli import build_parser
from admin.config import render, role_parser
from runtime.sdnotify import Notifier


@pytest.fixture(autouse=True)
def _no_host_config(tmp_path, monkeypatch):
    """Never read this machine's /etc/taskfleet, nor a variable a flag reads, in these tests."""
    monkeypatch.setenv("TASKFLEET_CONFIG_DIR", str(tmp_path / "no-such-dir"))
    for name in (
        "TASKFLEET_SERVER_FINGERPRINT",
        "TASKFLEET_CA",
        "TASKFLEET_INSECURE",
        "TASKFLEET_ENROL_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def sources(args: argparse.Namespace) -> dict[str, str]:
    return {dest: source for dest, _, source in args.config_view.entries}


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_flag_beats_the_file_which_beats_the_default(tmp_path):
    conf = write(
        tmp_path / "server.toml",
        f'data = "{tmp_path}/ns"\nlisten = "0.0.0.0:9000"\nname = "from-file"\nflush-ms = 25\n',
    )
    args = parse("server", "--config", conf, "--name", "from-flag")
    assert (args.name, args.listen, args.flush_ms, args.data) == (
        "from-flag",
        "0.0.0.0:9000",
        25,
        f"{tmp_path}/ns",
    )
    assert args.max_pending_keys == 1_000  # nobody set it: the default
    seen = sources(args)
    assert (seen["name"], seen["listen"], seen["flush_ms"], seen["max_pending_keys"]) == (
        "flag",
        "file",
        "file",
        "default",
    )


def test_an_environment_variable_beats_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKFLEET_SERVER_FINGERPRINT", "SHA256:from-env")
    conf = write(
        tmp_path / "agent.toml",
        'server = "wss://ns:8470"\ndata = "/d"\nserver_fingerprint = "SHA256:from-file"\n',
    )
    args = parse("agent", "--config", conf)
    assert args.server_fingerprint == "SHA256:from-env"
    assert sources(args)["server_fingerprint"] == "env"


def test_the_default_file_is_read_from_the_config_dir_and_gives_required_flags(
    tmp_path, monkeypatch
):
    etc = tmp_path / "etc"
    etc.mkdir()
    write(etc / "agent.toml", 'server = "wss://ns:8470"\ndata = "/var/lib/taskfleet/agent"\n')
    monkeypatch.setenv("TASKFLEET_CONFIG_DIR", str(etc))
    args = parse("agent")  # --server and --data are required flags: the file gave them
    assert (args.server, args.data) == ("wss://ns:8470", "/var/lib/taskfleet/agent")
    assert args.config_view.path == str(etc / "agent.toml")


def test_without_a_file_a_required_flag_is_still_required(capsys):
    with pytest.raises(SystemExit) as ended:
        parse("taskserver", "--name", "ts-1")
    assert ended.value.code == 2
    assert "the following arguments are required: --server, --data" in capsys.readouterr().err


def test_a_table_gives_prefixed_flags_and_dashes_equal_underscores(tmp_path):
    conf = write(
        tmp_path / "server.toml",
        f'data = "{tmp_path}"\nmax-handshakes = 512\n'
        '[smtp]\nfrom = "fleet@example.org"\nsecurity = "tls"\n',
    )
    args = parse("server", "--config", conf)
    assert (args.smtp_from, args.smtp_security, args.max_handshakes) == (
        "fleet@example.org",
        "tls",
        512,
    )


def test_an_unknown_key_names_the_key_and_the_file(tmp_path, capsys):
    conf = write(tmp_path / "server.toml", '[smtp]\nfrm = "x"\n')
    with pytest.raises(SystemExit) as ended:
        parse("server", "--config", conf, "--data", str(tmp_path))
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert f"{conf}: unknown key smtp_frm (did you mean smtp_from?)" in err


def test_a_key_of_another_role_is_unknown_here(tmp_path, capsys):
    conf = write(tmp_path / "agent.toml", 'server = "wss://ns:8470"\ndata = "/d"\nlisten = "x"\n')
    with pytest.raises(SystemExit):
        parse("agent", "--config", conf)
    assert "unknown key listen" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("role", "text", "use"),
    [
        ("agent", 'enrol_token = "tfe_x"\n', "enrol_token_file"),
        ("taskserver", 'enrol-token = "tfe_x"\n', "enrol_token_file"),
        ("agent", 'token = "tfa_x"\n', "token_file"),
        ("server", '[smtp]\npassword = "hunter2"\n', "smtp_password_file"),
    ],
)
def test_a_secret_written_inline_is_refused_with_the_file_key_to_use(
    tmp_path, capsys, role, text, use
):
    conf = write(tmp_path / f"{role}.toml", text)
    with pytest.raises(SystemExit) as ended:
        parse(role, "--config", conf, "--data", "/d", "--server", "wss://ns:1")
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert conf in err and f"name that file with {use}" in err
    assert "tfe_x" not in err and "tfa_x" not in err and "hunter2" not in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('max_handshakes = "512"\n', "max_handshakes must be an integer, not str"),
        ("max_handshakes = true\n", "max_handshakes must be an integer, not bool"),
        ('min_free_mb = "lots"\n', "min_free_mb must be a number, not str"),
        ('insecure = "yes"\n', "insecure must be true or false, not str"),
        ("listen = 8470\n", "listen must be a string, not int"),
        ("[listen]\nport = 1\n", "unknown key listen_port"),
        ('smtp_security = "ssl"\n', "smtp_security = 'ssl': expected one of"),
    ],
)
def test_a_value_of_the_wrong_type_names_key_file_and_type(tmp_path, capsys, text, expected):
    conf = write(tmp_path / "server.toml", text)
    with pytest.raises(SystemExit) as ended:
        parse("server", "--config", conf, "--data", str(tmp_path))
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert conf in err and expected in err


def test_a_number_is_taken_where_a_float_is_expected(tmp_path):
    conf = write(
        tmp_path / "server.toml", f'data = "{tmp_path}"\nmin_free_mb = 64\nts_grace_s = 2.5\n'
    )
    args = parse("server", "--config", conf)
    assert (args.min_free_mb, args.ts_grace_s) == (64.0, 2.5)


def test_a_repeatable_flag_takes_an_array_and_its_own_parsing(tmp_path, capsys):
    """A role flag with action=append and a type function: an array of values, each parsed."""
    top = argparse.ArgumentParser(prog="taskfleet")
    sub = top.add_subparsers(dest="command")
    p = role_parser(sub, "server")
    p.add_argument("--peer", action="append", type=lambda s: s.upper(), help="repeatable")
    conf = write(tmp_path / "server.toml", 'peer = ["a", "b"]\n')
    args = top.parse_args(["server", "--config", conf])
    assert args.peer == ["A", "B"] and sources(args)["peer"] == "file"
    args = top.parse_args(["server", "--config", conf, "--peer", "c"])
    assert args.peer == ["C"] and sources(args)["peer"] == "flag"  # replaces the file's list
    write(tmp_path / "server.toml", 'peer = "a"\n')
    with pytest.raises(SystemExit):
        top.parse_args(["server", "--config", conf])
    assert "peer must be an array" in capsys.readouterr().err


def test_a_broken_file_is_a_usage_error_naming_it(tmp_path, capsys):
    conf = write(tmp_path / "server.toml", "data = \n")
    with pytest.raises(SystemExit) as ended:
        parse("server", "--config", conf)
    assert ended.value.code == 2
    assert f"the configuration file {conf} is not valid TOML" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("server", "--config", str(tmp_path / "missing.toml"))
    assert "cannot read the configuration file" in capsys.readouterr().err


def test_print_config_shows_every_setting_with_its_source_and_masks_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKFLEET_ENROL_TOKEN", "tfe_secret_value")
    conf = write(
        tmp_path / "agent.toml", 'server = "wss://ns:8470"\ndata = "/d"\nconcurrency = 8\n'
    )
    args = parse("agent", "--config", conf, "--name", "pc-9", "--print-config")
    text = render(args.config_view)
    assert "tfe_secret_value" not in text
    assert 'enrol_token = "***"  # env' in text
    assert 'server = "wss://ns:8470"  # file' in text
    assert 'name = "pc-9"  # flag' in text
    assert "compression = false  # default" in text
    assert f"# configuration file: {conf}" in text
    shown = tomllib.loads(text)  # it reads back as TOML
    assert shown["concurrency"] == 8 and "config" not in shown and "print_config" not in shown
    every = {a.dest for a in args.config_view.entries for a in [argparse.Namespace(dest=a[0])]}
    assert {"server", "data", "name", "concurrency", "commands", "ca", "insecure"} <= every


def test_print_config_needs_no_required_flag(tmp_path, capsys):
    from admin.cli import main

    with pytest.raises(SystemExit) as ended:
        main(["server", "--print-config"])
    assert ended.value.code == 0
    out = capsys.readouterr().out
    assert "# data = (not set)  # default" in out
    assert 'listen = "127.0.0.1:8470"  # default' in out


def test_the_notify_socket_is_read_once_and_taken_out_of_the_environment():
    env = {"NOTIFY_SOCKET": "@taskfleet/notify", "WATCHDOG_USEC": "30000000", "OTHER": "x"}
    n = Notifier.from_environ(env)
    assert n.address == "\0taskfleet/notify" and n.watchdog_s == 30.0
    assert env == {"OTHER": "x"}  # scripts the agent starts must not speak for the service
    foreign = Notifier.from_environ(
        {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}
    )
    assert foreign.address == "/run/x" and foreign.watchdog_s is None
    off = Notifier.from_environ({})
    assert not off.enabled and off.send(READY="1") is False


def test_the_smtp_server_and_its_password_file_come_from_the_smtp_table(tmp_path, monkeypatch):
    from admin.roles import _smtp

    monkeypatch.setenv("TASKFLEET_SMTP_PASSWORD", "from-env")
    secret = tmp_path / "smtp.password"
    secret.write_text("s3cret pass\n")
    conf = write(
        tmp_path / "server.toml",
        f'data = "{tmp_path}"\n[smtp]\nserver = "mail.example.org:587"\nuser = "tf"\n'
        f'password_file = "{secret}"\n',
    )
    args = parse("server", "--config", conf)
    assert _smtp(args) == {
        "host": "mail.example.org",
        "port": 587,
        "security": "starttls",
        "user": "tf",
        "password": "s3cret pass",  # the file wins over the variable
        "sender": "",
    }
    assert "s3cret" not in render(args.config_view)
    assert "SMTP password: *** from TASKFLEET_SMTP_PASSWORD" in render(args.config_view)
