"""The ``taskfleet`` command's global flags: the admin connection (``--server``, ``--token``,
``--token-file``, ``--profile``, ``--json``), the trust in the NS (``--server-fingerprint``,
``--ca``, ``--insecure``) and the log (``--log-level``, ``--log-format``, ``--log-file``).

Each verb's parser has them as its own flags, and :class:`TopParser` moves those written before
the verb to just after it, so ``taskfleet --json computers`` and ``taskfleet computers --json``
are one command (docs/cli.md). Also here: the token given on the command line, with its
warning (:class:`VisibleSecret`), and the token files read (:func:`read_secret_files`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from typing import Any

from protocol import PROTOCOL_VERSION

DEFAULT_SERVER = "wss://127.0.0.1:8470"


class VisibleSecret(argparse.Action):
    """A token given on the command line: kept, with a one-line warning that every user of the
    machine can read it (``ps``, ``/proc/PID/cmdline``), naming the file option to use instead."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        flag = self.option_strings[0]
        print(
            f"taskfleet: warning: {flag} is visible to every user of this machine (ps);"
            f" use {flag}-file FILE or TASKFLEET_{self.dest.upper()} instead",
            file=sys.stderr,
        )


_SECRET_FILES = (
    ("token_file", "token", "--token-file"),
    ("enrol_token_file", "enrol_token", "--enrol-token-file"),
)


def read_secret_files(args: argparse.Namespace) -> str | None:
    """Read ``--token-file`` / ``--enrol-token-file`` into the token they stand for (a file
    given wins over the environment variable); a problem, as a message, or None."""
    for file_dest, dest, flag in _SECRET_FILES:
        path = getattr(args, file_dest, None)
        if not path:
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            return f"cannot read {flag} {path}: {getattr(exc, 'strerror', None) or exc}"
        if not value or any(c.isspace() for c in value):
            return (
                f"{flag} {path} must hold one token (from `taskfleet tokens create`), nothing else"
            )
        setattr(args, dest, value)
    return None


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ROLES = ("server", "taskserver", "agent", "simulate", "demo")
GLOBAL_VALUE_FLAGS = frozenset(
    {
        "--token",
        "--token-file",
        "--server",
        "--server-fingerprint",
        "--ca",
        "--profile",
        "--log-level",
        "--log-format",
        "--log-file",
    }
)
"""The global flags that take a value (docs/cli.md); with ``--json`` and ``--insecure``, the
flags that may come before the verb as well as after it."""
GLOBAL_SWITCHES = frozenset({"--json", "--insecure"})


def _log_level(text: str) -> str:
    """``--log-level``: one of LOG_LEVELS (any case), else a usage error naming them."""
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level: give one of {', '.join(LOG_LEVELS)}"
        )
    return text.lower()


def version() -> str:
    """``taskfleet --version``: the installed package's version and the wire protocol's."""
    try:
        installed = importlib.metadata.version("taskfleet")
    except importlib.metadata.PackageNotFoundError:
        installed = "unknown (not installed)"
    return f"taskfleet {installed} (protocol {PROTOCOL_VERSION})"


def globals_after_verb(argv: list[str]) -> list[str]:
    """Move the global flags given before the verb (``taskfleet --json computers``) to just
    after it (``taskfleet computers --json``), where the verb's own parser takes them.

    Every verb's parser has the global flags as its own, so a flag reads the same wherever it
    is written, and a role's parser (which fills what the command line left unset from its
    configuration file, admin/config.py) sees a global flag as given on the command line, which
    wins over its file."""
    rest = list(argv)
    moved: list[str] = []
    i = 0
    while i < len(rest) and rest[i] != "--":
        word = rest[i]
        if not word.startswith("-"):  # the verb
            return rest[: i + 1] + moved + rest[i + 1 :]
        flag, has_value = word.split("=", 1)[0], "=" in word
        if flag in GLOBAL_SWITCHES and not has_value:
            moved.append(rest.pop(i))
        elif flag in GLOBAL_VALUE_FLAGS:
            take = 1 if has_value else 2
            moved += rest[i : i + take]
            del rest[i : i + take]
        else:
            i += 1
    return list(argv)  # no verb: as given, for the top parser to say what is missing


class TopParser(argparse.ArgumentParser):
    """The ``taskfleet`` parser: global flags anywhere (:func:`globals_after_verb`)."""

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(globals_after_verb(argv), namespace)


def add_log_flags(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """The log flags, on the top parser (for its help) and on every verb and role."""
    default = (lambda value: argparse.SUPPRESS) if top else (lambda value: value)
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default=default(os.environ.get("TASKFLEET_LOG_LEVEL", "info")),
        metavar="LEVEL",
        help=f"log this and above: {', '.join(LOG_LEVELS)} (default: $TASKFLEET_LOG_LEVEL or info)",
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        default=default(None),
        help="json (one object per line, for a log collector) or console (text for a person);"
        " default: console on a terminal, json otherwise",
    )
    parser.add_argument(
        "--log-file",
        metavar="FILE",
        default=default(None),
        help="append the log to FILE (made 0600) instead of stderr",
    )


def add_admin_flags(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """The global flags of the admin verbs (besides the trust flags and the log flags)."""
    env = os.environ.get

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if top else value

    parser.add_argument(
        "--server",
        default=default(env("TASKFLEET_SERVER")),
        metavar="URL",
        help=f"the NS, wss://HOST:PORT (default: $TASKFLEET_SERVER, the profile's, {DEFAULT_SERVER})",
    )
    token_given = parser.add_mutually_exclusive_group()
    token_given.add_argument(
        "--token",
        default=default(env("TASKFLEET_TOKEN")),
        action=VisibleSecret,
        help="admin token; visible in `ps`: prefer --token-file, TASKFLEET_TOKEN or a profile",
    )
    token_given.add_argument(
        "--token-file",
        metavar="FILE",
        default=default(None),
        help="read the admin token from FILE",
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    parser.add_argument(
        "--profile",
        metavar="NAME",
        default=default(None),
        help="use the named profile of the profile file (docs/cli.md); default:"
        " $TASKFLEET_PROFILE, else the file's default",
    )


def add_trust_flags(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """How a client trusts the NS (admin verbs, and the taskserver, agent and simulate roles)."""
    env = os.environ.get

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if top else value

    parser.add_argument(
        "--server-fingerprint",
        default=default(env("TASKFLEET_SERVER_FINGERPRINT")),
        metavar="SHA256",
        help="pin the server's TLS certificate (printed at its start)",
    )
    parser.add_argument(
        "--ca",
        default=default(env("TASKFLEET_CA")),
        metavar="FILE",
        help="trust this CA file instead of a pin",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=default(env("TASKFLEET_INSECURE") == "1"),
        help="allow plain ws:// (tests only; logged at every start)",
    )
