"""Shell completion: ``taskfleet completion bash|zsh`` prints a script to source, and the hidden
``taskfleet __complete KIND [PREFIX]`` is what that script calls for names the server holds.

The script is written from the parser itself (:func:`script`), so every verb and flag is in it
without a second list to keep in step; only which names a verb's positional takes
(:data:`NAMES`) and which flags take names (:data:`NAME_FLAGS`) are said here. Names come from the
NS with the user's usual settings (token, server, profile); when it cannot answer (no token, not
reachable, a refusal), ``__complete`` prints nothing and exits 0: a completion must never print
an error into the middle of a command line being typed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
from collections.abc import Callable

from admin.client import AdminClient
from admin.common import EXIT_OK, _trust

NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    # verb: {its action word ("" for a verb without one): the kind of each positional after it;
    # a kind ending in "..." repeats}. Kinds joined with "," offer the names of both.
    "run": {"": ("tasks,jobs",)},
    "inventory": {"": ("computers",)},
    "stop": {"": ("runs",)},
    "watch": {"": ("runs",)},
    "types": {"": ("types",)},
    "computers": {"delete": ("computers...",)},
    "task": {"show": ("tasks",), "history": ("tasks",), "delete": ("tasks",), "add": ("@file",)},
    "job": {"show": ("jobs",), "history": ("jobs",), "delete": ("jobs",), "add": ("@file",)},
    "groups": {
        "show": ("groups",),
        "delete": ("groups",),
        "add-member": ("groups", "computers..."),
        "remove-member": ("groups", "computers..."),
    },
    "filters": {"show": ("filters",), "delete": ("filters",)},
    "filter": {"add": ("@file",)},
    "report": {"add": ("@file",)},
    "policy": {
        "enable": ("policies",),
        "disable": ("policies",),
        "delete": ("policies",),
        "add": ("@file",),
    },
    "runs": {"show": ("runs",)},
    "children": {"show": ("children",)},
}
"""What a verb's positionals name. ``@file`` completes local file names."""
NAME_FLAGS = {
    "--computer": "computers",
    "--group": "groups",
    "--filter": "filters",
    "--parent": "groups",
    "--profile": "profiles",
    "--child": "children",
}
"""Flags whose value is a name the server (or the profile file) holds."""
FILE_FLAGS = (
    "--token-file",
    "--ca",
    "--log-file",
    "--data",
    "--tls-cert",
    "--tls-key",
    "--commands",
    "--enrol-token-file",
    "--parent-ca",
)
CONNECTION_FLAGS = ("--profile", "--server", "--server-fingerprint", "--ca", "--token-file")
"""Flags of the line being typed that ``__complete`` is given too, so names come from the
server (and with the token) that command will use."""
KINDS = {
    # kind: (the op that lists them, the field that names each)
    "tasks": ("tasks.list", "name"),
    "jobs": ("jobs.list", "name"),
    "computers": ("computers.list", "name"),
    "groups": ("groups.list", "name"),
    "filters": ("filters.list", "name"),
    "policies": ("policies.list", "name"),
    "runs": ("runs.list", "id"),
    "types": ("types.list", "id"),
    "children": ("children.list", "name"),
}
"""The kinds ``__complete`` knows besides ``profiles`` (read from the local profile file)."""
ASK_TIMEOUT_S = 3.0
"""A completion waits this long for the server at most: a slow answer is no answer."""


# -- the script -------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {k: v for k, v in action.choices.items() if not k.startswith("__")}
    return {}


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(
        s
        for a in parser._actions
        if a.help != argparse.SUPPRESS
        for s in a.option_strings
        if s.startswith("--")
    )


def _value_flags(parsers: list[argparse.ArgumentParser]) -> list[str]:
    """Flags that take a value (``nargs`` not 0) in any parser: the script skips their value
    when it looks for the verb and its positionals."""
    return sorted(
        {
            s
            for p in parsers
            for a in p._actions
            if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._VersionAction)
            for s in a.option_strings
        }
    )


def _choices(parser: argparse.ArgumentParser) -> list[str]:
    """The action words of a verb (``computers add|delete``): its first positional's choices."""
    for a in parser._actions:
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction):
            return [str(c) for c in a.choices or ()]
    return []


def _names_case(verb: str, actions: list[str]) -> list[str]:
    """The bash lines completing positional ``n`` (after the verb) of ``verb``."""
    table = NAMES.get(verb, {})
    lines = []
    if actions:
        lines.append(
            f'            if (( n == 0 )); then _taskfleet_words "{" ".join(actions)}"; return; fi'
        )
    cases = []
    for action, kinds in table.items():
        if bool(action) != bool(actions):
            continue
        first = 1 if actions else 0
        for i, kind in enumerate(kinds):
            repeat = kind.endswith("...")
            kind = kind.removesuffix("...")
            test = f"n >= {first + i}" if repeat else f"n == {first + i}"
            call = "_taskfleet_files" if kind == "@file" else f"_taskfleet_names {kind}"
            cases.append(f"                {action or '*'}) if (( {test} )); then {call}; fi;;&")
    if cases:
        lines += ['            case "$action" in', *cases, "            esac"]
    return lines


def bash_script(parser: argparse.ArgumentParser) -> str:
    """The bash completion script for ``parser`` (the whole ``taskfleet`` command)."""
    verbs = _subcommands(parser)
    value_flags = "|".join(_value_flags([parser, *verbs.values()]))
    name_flags = "\n".join(
        f"        {flag}) _taskfleet_names {kind}; return;;" for flag, kind in NAME_FLAGS.items()
    )
    verb_cases = []
    for name, sub in verbs.items():
        flags = " ".join(_flags(sub))
        verb_cases += [
            f"        {name})",
            f'            if [[ "$cur" == -* ]]; then _taskfleet_words "{flags}"; return; fi',
            *_names_case(name, _choices(sub)),
            "            ;;",
        ]
    return _BASH.format(
        verbs=" ".join(sorted(verbs)),
        globals=" ".join(_flags(parser)),
        value_flags=value_flags,
        name_flags=name_flags,
        file_flags="|".join(FILE_FLAGS),
        connection_flags="|".join(CONNECTION_FLAGS),
        verb_cases="\n".join(verb_cases),
    )


_BASH = """\
# taskfleet completion for bash: source <(taskfleet completion bash)
# Names (tasks, jobs, computers, ...) come from the server through `taskfleet __complete`,
# with your usual settings (token, server, profile); without a server, nothing is offered.

_taskfleet_words() {{
    local IFS=$' \\t\\n'
    COMPREPLY=($(compgen -W "$1" -- "$cur"))
}}

_taskfleet_files() {{
    local IFS=$'\\n'
    COMPREPLY=($(compgen -f -- "$cur"))
}}

_taskfleet_names() {{
    local IFS=$'\\n'
    COMPREPLY=($(compgen -W "$(command "${{COMP_WORDS[0]}}" __complete "$1" "$cur" "${{conn[@]}}" 2>/dev/null)" -- "$cur"))
}}

_taskfleet() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" verb="" action="" w i n
    local -a pos=() conn=()
    (( COMP_CWORD > 0 )) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    COMPREPLY=()
    for (( i = 1; i < COMP_CWORD; i++ )); do
        w="${{COMP_WORDS[i]}}"
        case "$w" in
            {connection_flags}) conn+=("$w" "${{COMP_WORDS[i+1]}}"); (( i++ ));;
            --insecure) conn+=("$w");;
            {value_flags}) (( i++ ));;
            -*) ;;
            *) pos+=("$w");;
        esac
    done
    case "$prev" in
{name_flags}
        {file_flags}) _taskfleet_files; return;;
        --log-level) _taskfleet_words "debug info warning error critical"; return;;
        --log-format) _taskfleet_words "json console"; return;;
        {value_flags}) return;;
    esac
    if (( ${{#pos[@]}} == 0 )); then
        if [[ "$cur" == -* ]]; then _taskfleet_words "{globals}"; else _taskfleet_words "{verbs}"; fi
        return
    fi
    verb="${{pos[0]}}"
    action="${{pos[1]:-}}"
    n=$(( ${{#pos[@]}} - 1 ))
    case "$verb" in
{verb_cases}
    esac
}}

complete -F _taskfleet taskfleet
"""


def zsh_script(parser: argparse.ArgumentParser) -> str:
    """The zsh script: zsh's own bash-completion layer (``bashcompinit``) running the bash
    function, so both shells complete the same words from one script."""
    return (
        "#compdef taskfleet\n"
        "# taskfleet completion for zsh: source <(taskfleet completion zsh)\n"
        "autoload -U +X compinit && { (( ${+_comps} )) || compinit; }\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + bash_script(parser)
    )


SCRIPTS: dict[str, Callable[[argparse.ArgumentParser], str]] = {
    "bash": bash_script,
    "zsh": zsh_script,
}


# -- names from the server --------------------------------------------------------------


def _profile_names() -> list[str]:
    from admin.profile import ProfileError, load

    try:
        return sorted(load().profiles)
    except ProfileError:
        return []


async def _ask(args: argparse.Namespace, kinds: list[str]) -> list[str]:
    names: list[str] = []
    async with AdminClient(args.server, args.token, _trust(args), busy_retry_s=0) as client:
        for kind in kinds:
            op, field = KINDS[kind]
            names += [str(row[field]) for row in await client.call(op, timeout_s=ASK_TIMEOUT_S)]
    return names


def names(args: argparse.Namespace, default_server: str) -> list[str]:
    """The names of ``args.kind`` starting with ``args.prefix``; [] whenever they cannot be had."""
    from admin.profile import apply

    kinds = [k for k in args.kind.split(",") if k]
    if kinds == ["profiles"]:
        found = _profile_names()
    elif not kinds or any(k not in KINDS for k in kinds):
        return []
    else:
        try:
            apply(args, default_server, warn=False)
            if not args.token:
                return []
            found = asyncio.run(asyncio.wait_for(_ask(args, kinds), ASK_TIMEOUT_S))
        except Exception:  # a completion says nothing rather than print into the command line
            return []
    return sorted({n for n in found if n.startswith(args.prefix)})


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
    top: argparse.ArgumentParser,
    default_server: str,
) -> None:
    """Register ``completion`` and the hidden ``__complete`` on ``top``'s sub-commands."""
    v = sub.add_parser(
        "completion",
        help="print a shell completion script: source <(taskfleet completion bash)",
        description="Print a completion script for bash or zsh; source it, or save it where"
        " your shell loads completions (docs/cli.md).",
    )
    v.add_argument("shell", choices=sorted(SCRIPTS), help="the shell to complete for")

    def print_script(args: argparse.Namespace) -> int:
        print(SCRIPTS[args.shell](top), end="")
        return EXIT_OK

    v.set_defaults(func=print_script)

    c = sub.add_parser("__complete", parents=parents)  # no help=: hidden from the verb list
    c.add_argument("kind", help="what to list: " + ", ".join([*KINDS, "profiles"]))
    c.add_argument("prefix", nargs="?", default="", help="list only names starting with it")

    def print_names(args: argparse.Namespace) -> int:
        with contextlib.redirect_stderr(io.StringIO()):  # warnings too: never into the line
            found = names(args, default_server)
        for name in found:
            print(name)
        return EXIT_OK

    c.set_defaults(func=print_names)
