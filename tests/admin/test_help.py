"""Every flag and positional of every ``taskfleet`` command says what it is for in ``--help``:
admin verbs and roles alike, whoever registered them."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from admin.cli import build_parser


def _commands(
    parser: argparse.ArgumentParser, path: str = "taskfleet"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``parser`` and every sub-command under it, with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


def _without_help() -> list[str]:
    missing = []
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if action.help == argparse.SUPPRESS:  # hidden on purpose (simulate's --worker)
                continue
            if not (action.help or "").strip():
                name = "/".join(action.option_strings) or action.metavar or action.dest
                missing.append(f"{path}: {name}")
    return missing


def test_every_flag_and_positional_has_help():
    missing = _without_help()
    assert not missing, "no help text:\n  " + "\n  ".join(missing)


def test_the_walk_reaches_roles_and_admin_verbs():
    """The check above looks where it should: the roles' and the verbs' own flags."""
    paths = {path for path, _ in _commands(build_parser())}
    assert {"taskfleet server", "taskfleet agent", "taskfleet computers"} <= paths
    assert {"taskfleet completion", "taskfleet profiles", "taskfleet types"} <= paths
