"""Shell completion: the scripts ``taskfleet completion bash|zsh`` print, run in a real bash,
and the hidden ``taskfleet __complete KIND [PREFIX]`` asking a real NS for names."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from admin.cli import build_parser
from admin.completion import bash_script, zsh_script
from tests.admin.clirun import clean_env, taskfleet
from tests.helpers import free_port, task_doc

BASH = shutil.which("bash") or "/bin/bash"
REPO = Path(__file__).resolve().parents[2]


def _complete(script: Path, words: list[str], env: dict[str, str] | None = None) -> list[str]:
    """What bash offers for the last of ``words`` (the word being completed)."""
    line = " ".join(f"'{w}'" for w in words)
    probe = (
        f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1};"
        ' _taskfleet; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    return [w for w in done.stdout.splitlines() if w]


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "taskfleet.bash"
    path.write_text(bash_script(build_parser()))
    return path


def test_completion_bash_prints_a_script_bash_accepts(tmp_path):
    printed = subprocess.run(
        [sys.executable, "-m", "admin", "completion", "bash"],
        capture_output=True,
        text=True,
        env=clean_env(tmp_path),
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    out = printed.stdout
    path = tmp_path / "printed.bash"
    path.write_text(out)
    checked = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "complete -F _taskfleet taskfleet" in out


def test_verbs_flags_and_action_words_complete_in_bash(tmp_path):
    script = _script(tmp_path)
    assert _complete(script, ["taskfleet", "ru"]) == ["run", "runs"]
    assert _complete(script, ["taskfleet", "--json", "comp"]) == ["completion", "computers"]
    assert "--profile" in _complete(script, ["taskfleet", "--pro"])
    assert _complete(script, ["taskfleet", "computers", "--off"]) == ["--offline-for"]
    assert _complete(script, ["taskfleet", "run", "--onl"]) == ["--online-only"]
    assert _complete(script, ["taskfleet", "groups", "add-"]) == ["add-member"]
    assert _complete(script, ["taskfleet", "--log-level", "w"]) == ["warning"]
    assert _complete(script, ["taskfleet", "runs", "--log-format", ""]) == ["json", "console"]
    assert _complete(script, ["taskfleet", "completion", ""]) == ["bash", "zsh"]
    assert "__complete" not in _complete(script, ["taskfleet", "__"])


def test_the_zsh_script_runs_the_same_function_through_bashcompinit():
    """zsh is not installed here, so the text is checked: zsh's bash layer, then the bash
    function and its registration."""
    text = zsh_script(build_parser())
    assert text.startswith("#compdef taskfleet\n")
    lines = text.splitlines()
    assert lines.index("autoload -U +X bashcompinit && bashcompinit") < lines.index(
        "_taskfleet() {"
    )
    assert lines[-1] == "complete -F _taskfleet taskfleet"
    assert text.endswith(bash_script(build_parser()))


async def test_complete_lists_names_from_the_ns_with_the_usual_settings(fleet, tmp_path):
    await fleet.server()
    for name in ("hello", "health", "other"):
        (tmp_path / f"{name}.toml").write_text(task_doc(name, "echo hi"))
        code, _, err = await fleet.cli("task", "add", str(tmp_path / f"{name}.toml"))
        assert code == 0, err
    env = clean_env(
        tmp_path,
        TASKFLEET_SERVER=fleet.ns.url,
        TASKFLEET_SERVER_FINGERPRINT=fleet.fingerprint,
        TASKFLEET_TOKEN=fleet.admin_token,
    )
    code, out, err = await taskfleet("__complete", "tasks", env=env)
    assert (code, out.split(), err) == (0, ["health", "hello", "other"], "")
    code, out, err = await taskfleet("__complete", "tasks,jobs", "hel", env=env)
    assert (code, out.split()) == (0, ["hello"])
    code, out, err = await taskfleet("__complete", "types", "run-script-on-s", env=env)
    assert out.split() == ["run-script-on-server"]

    # The same, end to end: bash's completion of `taskfleet run he` runs `taskfleet`
    # (here a wrapper around this interpreter) and offers the saved names.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "taskfleet"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m admin "$@"\n')
    wrapper.chmod(0o755)
    env_path = {**env, "PATH": f"{bin_dir}:{env['PATH']}", "PYTHONPATH": str(REPO)}
    offered = _complete(_script(tmp_path), ["taskfleet", "run", "he"], env_path)
    assert offered == ["health", "hello"]

    # Connection flags on the line being typed reach `__complete` (nothing in the environment).
    token_file = tmp_path / "admin.token"
    token_file.write_text(fleet.admin_token)
    token_file.chmod(0o600)
    bare = {**clean_env(tmp_path), "PATH": env_path["PATH"], "PYTHONPATH": str(REPO)}
    line = ["taskfleet", "--server", fleet.ns.url, "run", "--token-file", str(token_file)]
    line += ["--server-fingerprint", fleet.fingerprint, "--wait", "o"]
    assert _complete(_script(tmp_path), line, bare) == ["other"]
    assert _complete(_script(tmp_path), ["taskfleet", "run", "o"], bare) == []


async def test_complete_prints_nothing_without_a_token_or_a_server(fleet, tmp_path):
    await fleet.server()
    unreachable = clean_env(
        tmp_path,
        TASKFLEET_SERVER=f"wss://127.0.0.1:{free_port()}",
        TASKFLEET_SERVER_FINGERPRINT=fleet.fingerprint,
        TASKFLEET_TOKEN=fleet.admin_token,
    )
    no_token = clean_env(
        tmp_path, TASKFLEET_SERVER=fleet.ns.url, TASKFLEET_SERVER_FINGERPRINT=fleet.fingerprint
    )
    refused = {**no_token, "TASKFLEET_TOKEN": "tfa_not-a-token"}
    for env in (unreachable, no_token, refused):
        assert await taskfleet("__complete", "computers", env=env) == (0, "", "")
    assert await taskfleet("__complete", "nonsense", env=refused) == (0, "", "")


async def test_complete_offers_the_profiles_of_the_file(tmp_path):
    path = tmp_path / ".config" / "taskfleet" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('[profiles.prod]\nserver = "wss://a:1"\n[profiles.staging]\n')
    code, out, _ = await taskfleet("__complete", "profiles", "st", env=clean_env(tmp_path))
    assert (code, out) == (0, "staging\n")
