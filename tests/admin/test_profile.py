"""Admin profiles (``$XDG_CONFIG_HOME/taskfleet/config.toml``): a verb with no flags reaches the
NS through the profile in use; the command line beats the environment, which beats the profile;
mistakes in the file are usage errors naming the key and the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

from admin.profile import ProfileError, config_path, load
from tests.admin.clirun import clean_env, taskfleet
from tests.helpers import free_port


def _write(home: Path, text: str) -> Path:
    path = home / ".config" / "taskfleet" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _token_file(home: Path, token: str, name: str = "prod.token", mode: int = 0o600) -> Path:
    path = home / ".config" / "taskfleet" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def _profiles(fleet, home: Path, *, default: str = "prod", mode: int = 0o600) -> None:
    """A file with ``prod`` (the fleet's NS, a token file beside the file, named relative to
    it) and ``down`` (a port where nothing listens)."""
    _token_file(home, fleet.admin_token, mode=mode)
    _write(
        home,
        f'default = "{default}"\n'
        "[profiles.prod]\n"
        f'server = "{fleet.ns.url}"\n'
        f'server_fingerprint = "{fleet.fingerprint}"\n'
        'token_file = "prod.token"\n'
        "[profiles.down]\n"
        f'server = "wss://127.0.0.1:{free_port()}"\n'
        f'server_fingerprint = "{fleet.fingerprint}"\n'
        'token_file = "~/.config/taskfleet/prod.token"\n',
    )


async def test_a_verb_with_no_flags_reaches_the_ns_through_the_default_profile(fleet, tmp_path):
    await fleet.server()
    _profiles(fleet, tmp_path)
    code, out, err = await taskfleet("admins", "list", "--json", env=clean_env(tmp_path))
    assert code == 0, err
    assert [a["name"] for a in json.loads(out)] == ["admin"]
    assert err == ""


async def test_profile_flag_beats_env_beats_default(fleet, tmp_path):
    """``down`` is the default here: TASKFLEET_PROFILE=prod picks prod, --profile down beats
    the variable (exit 3: nothing listens there), and --server beats the profile's server."""
    await fleet.server()
    _profiles(fleet, tmp_path, default="down")
    env = clean_env(tmp_path)
    code, _, err = await taskfleet("tasks", env=env)
    assert code == 3, err
    code, _, err = await taskfleet("tasks", env={**env, "TASKFLEET_PROFILE": "prod"})
    assert code == 0, err
    code, _, err = await taskfleet(
        "--profile", "down", "tasks", env={**env, "TASKFLEET_PROFILE": "prod"}
    )
    assert code == 3, err
    # A server that is not the profile's takes nothing of it, above all not its token...
    code, _, err = await taskfleet("tasks", "--server", fleet.ns.url, env=env)
    assert code == 2 and "the profile 'down' names another server" in err, err
    code, _, err = await taskfleet("tasks", env={**env, "TASKFLEET_SERVER": fleet.ns.url})
    assert code == 2, err
    # ... and the profile's own server, given again, is still the profile's.
    code, _, err = await taskfleet("tasks", "--profile", "prod", "--server", fleet.ns.url, env=env)
    assert code == 0, err


async def test_a_profiles_token_never_goes_to_another_server(fleet, tmp_path):
    """The default profile's admin token is a bearer secret: `--server` naming another server (a
    lab NS, a demo, a typo) must not receive it. A listener there sees no connection at all."""
    await fleet.server()
    _profiles(fleet, tmp_path)
    seen: list[str] = []

    async def capture(ws) -> None:
        seen.append(str(await ws.recv()))

    async with serve(capture, "127.0.0.1", 0) as other:
        port = other.sockets[0].getsockname()[1]
        code, _, err = await taskfleet(
            "--server", f"ws://127.0.0.1:{port}", "--insecure", "tasks", env=clean_env(tmp_path)
        )
    assert code == 2 and "its token goes only there" in err, err
    assert seen == []


async def test_a_token_from_the_command_line_or_environment_beats_the_profiles(fleet, tmp_path):
    await fleet.server()
    _profiles(fleet, tmp_path)
    env = clean_env(tmp_path, TASKFLEET_TOKEN="tfa_not-a-token")
    code, _, err = await taskfleet("tasks", env=env)
    assert code == 3 and "admin token refused" in err, "the environment's token was not used"
    wrong = _token_file(tmp_path, "tfa_wrong", name="wrong.token")
    code, _, err = await taskfleet("tasks", "--token-file", str(wrong), env=clean_env(tmp_path))
    assert code == 3 and "admin token refused" in err, "the flag's token file was not used"


async def test_a_pin_given_on_the_command_line_is_not_mixed_with_the_profiles_ca(fleet, tmp_path):
    """The trust settings go together: a profile with a CA file does not override a pin given
    on the command line (the CA, a file that does not exist, would fail the connection)."""
    await fleet.server()
    _token_file(tmp_path, fleet.admin_token)
    _write(
        tmp_path,
        'default = "p"\n[profiles.p]\n'
        f'server = "{fleet.ns.url}"\nca = "/nonexistent/ca.pem"\ntoken_file = "prod.token"\n',
    )
    env = clean_env(tmp_path)
    code, _, err = await taskfleet("tasks", env=env)
    assert code == 3 and "No such file" in err
    code, _, err = await taskfleet("tasks", "--server-fingerprint", fleet.fingerprint, env=env)
    assert code == 0, err


async def test_a_token_file_others_can_read_gets_a_warning(fleet, tmp_path):
    await fleet.server()
    _profiles(fleet, tmp_path, mode=0o644)
    code, _, err = await taskfleet("tasks", env=clean_env(tmp_path))
    assert code == 0, err
    token_path = tmp_path / ".config" / "taskfleet" / "prod.token"
    assert f"token file {token_path} can be read by other users (mode 0644)" in err
    assert f"chmod 600 {token_path}" in err
    assert fleet.admin_token not in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[profiles.p]\nserver = "wss://a:1"\ntoken = "tfa_secret"\n',
            "an inline token is not allowed",
        ),
        ('[profiles.p]\nserver = "wss://a:1"\nfingerprint = "x"\n', "unknown key 'fingerprint'"),
        ('server = "wss://a:1"\n', "unknown key 'server' (settings go under [profiles.NAME])"),
        ('default = "q"\n[profiles.p]\nserver = "wss://a:1"\n', "default = 'q' names no profile"),
        ("[profiles.p\n", "is not valid TOML"),
        ("[profiles.p]\nserver = 8470\n", "server must be a non-empty string"),
    ],
)
async def test_a_mistake_in_the_file_is_a_usage_error_naming_key_and_file(tmp_path, text, expected):
    path = _write(tmp_path, text)
    code, out, err = await taskfleet("tasks", "--profile", "p", env=clean_env(tmp_path))
    assert code == 2
    assert expected in err and str(path) in err
    assert "tfa_secret" not in err


async def test_an_unknown_profile_is_a_usage_error_naming_the_known_ones(tmp_path):
    env = clean_env(tmp_path)
    code, _, err = await taskfleet("tasks", "--profile", "prod", env=env)
    assert code == 2 and "no profile 'prod': there is no profile file" in err
    path = _write(tmp_path, '[profiles.a]\nserver = "wss://a:1"\n[profiles.b]\n')
    code, _, err = await taskfleet("tasks", env={**env, "TASKFLEET_PROFILE": "prod"})
    assert code == 2 and f"no profile 'prod' in {path}; known: a, b" in err


async def test_profiles_lists_them_with_the_one_in_use(fleet, tmp_path):
    await fleet.server()
    _profiles(fleet, tmp_path)
    env = clean_env(tmp_path)
    code, out, err = await taskfleet("profiles", env=env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"profiles in {tmp_path / '.config' / 'taskfleet' / 'config.toml'}:"
    used = [line for line in lines[2:] if line.startswith("*")]
    assert len(used) == 1 and used[0].split()[1] == "prod"
    code, out, err = await taskfleet("--json", "profiles", "--profile", "down", env=env)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["in_use"] == "down"
    token_file = str(tmp_path / ".config" / "taskfleet" / "prod.token")
    assert {p["name"]: p["token_file"] for p in shown["profiles"]} == {
        "prod": token_file,
        "down": token_file,
    }


def test_the_file_is_under_xdg_config_home_else_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path() == tmp_path / "xdg" / "taskfleet" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_path() == tmp_path / ".config" / "taskfleet" / "config.toml"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert config_path() == tmp_path / ".config" / "taskfleet" / "config.toml"
    assert not load().exists and load().profiles == {}


def test_paths_in_a_profile_are_taken_from_the_files_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "taskfleet" / "config.toml"
    path.parent.mkdir()
    path.write_text('[profiles.p]\nca = "ca.pem"\ntoken_file = "~/t"\n')
    p = load().profiles["p"]
    assert p.ca == str(tmp_path / "taskfleet" / "ca.pem")
    assert p.token_file == os.path.join(str(tmp_path / "home"), "t")
    with pytest.raises(ProfileError, match="must be a table"):
        path.write_text("[profiles]\np = 1\n")
        load()


async def test_a_token_file_that_cannot_be_read_is_a_usage_error_naming_it(tmp_path):
    _write(tmp_path, 'default = "p"\n[profiles.p]\ntoken_file = "missing.token"\n')
    code, _, err = await taskfleet("tasks", env=clean_env(tmp_path))
    missing = tmp_path / ".config" / "taskfleet" / "missing.token"
    assert code == 2 and f"cannot read the profile's token_file {missing}" in err
