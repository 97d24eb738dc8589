"""Configuration files for the long-running roles (``server``, ``taskserver``, ``agent``).

A role reads a TOML file holding any of its flags: ``--config FILE``, or else
``/etc/taskfleet/ROLE.toml`` when it exists (the folder can be moved with
``TASKFLEET_CONFIG_DIR``, for tests and packagers). A key is a flag's long name with ``-`` or
``_`` (``max_handshakes = 512``); a table prefixes its keys (``[retention] runs = "90d"`` is
``--retention-runs 90d``). Values are typed as the flag is: integers, numbers, booleans for
switches, arrays for repeatable flags, strings for the rest.

Precedence, highest first: a flag on the command line, then an environment variable a flag
reads (``TASKFLEET_ENROL_TOKEN``, ``TASKFLEET_SERVER_FINGERPRINT``...), then the file, then the
default. The file is read *before* argparse parses (by :class:`RoleParser`), so a flag argparse
calls required (``--data``, ``--server``) may come from the file alone.

Secrets are never written in the file: a key that would carry one (``enrol_token``, ``token``,
``smtp_password``) is refused with the ``_file`` key to use instead, and
``taskfleet ROLE --print-config`` shows every setting with secrets masked.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from admin.tomlout import dumps

CONFIG_DIR_ENV = "TASKFLEET_CONFIG_DIR"
DEFAULT_CONFIG_DIR = "/etc/taskfleet"
MASK = "***"

SECRET_KEYS = {
    "enrol_token": "enrol_token_file",
    "token": "token_file",
    "smtp_password": "smtp_password_file",
}
"""Keys that would hold a secret inline → the key naming a file that holds it instead."""

ENV_DEFAULTS = {
    "server_fingerprint": "TASKFLEET_SERVER_FINGERPRINT",
    "ca": "TASKFLEET_CA",
    "insecure": "TASKFLEET_INSECURE",
    "enrol_token": "TASKFLEET_ENROL_TOKEN",
    "log_level": "TASKFLEET_LOG_LEVEL",
    "database": "TASKFLEET_DATABASE",
}
"""Flags whose default comes from an environment variable (set in :mod:`admin.cli`): when the
variable is set, it wins over the file (and ``--print-config`` says ``env``)."""

DATABASE_ENV = ENV_DEFAULTS["database"]
"""The NS's PostgreSQL URL (``--database``; ``[database] url`` in the file)."""

TABLE_KEYS = {
    "hierarchy_parent": "parent",
    "hierarchy_parent_fingerprint": "parent_fingerprint",
    "hierarchy_parent_ca": "parent_ca",
    "hierarchy_enrol_token_file": "enrol_token_file",
    "hierarchy_enrol_token": "enrol_token",
}
"""Keys of a table that stand for a flag of another name: a child NS's ``[hierarchy] parent``
is its ``--parent`` (docs/hierarchy.md)."""

NOT_IN_FILE = frozenset({"help", "config", "print_config", "config_view"})


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file, the key and the fix."""


@dataclass
class Effective:
    """What a role runs with: each setting's value and where it came from (``default``,
    ``file``, ``flag``, ``env``), for ``--print-config``."""

    role: str
    path: str | None
    entries: list[tuple[str, Any, str]] = field(default_factory=list)


class _Unset:
    """Put in the namespace before parsing: a dest still holding it was not given as a flag."""

    def __repr__(self) -> str:
        return "<unset>"


_UNSET = _Unset()


class _UnsetList(list[Any]):
    """A repeatable flag's default before parsing: argparse copies it before appending, and the
    copy is a plain list, so a dest still of this type was not given as a flag."""

    def __copy__(self) -> list[Any]:
        return list(self)


class RoleParser(argparse.ArgumentParser):
    """A role's sub-command parser that reads the role's configuration file first.

    argparse gives a sub-command parser a fresh namespace; this one pre-fills it with a marker,
    so argparse leaves the defaults out and the flags given on the command line are told apart
    from the rest, which then come from the environment, the file or the default.
    """

    role = ""

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        path = given_config(argv) or default_config(self.role)
        try:
            settings = load(path, self._actions) if path else {}
        except ConfigError as exc:
            self.exit(2, f"taskfleet: {exc}\n")
        relaxed = self._relax_required(settings, everything="--print-config" in argv)
        if namespace is None:
            namespace = argparse.Namespace()
        for action in self._settings():
            if not hasattr(namespace, action.dest):
                setattr(namespace, action.dest, _before_parse(action))
        try:
            parsed, extras = super().parse_known_args(argv, namespace)
        finally:
            for action in relaxed:
                action.required = True
        parsed.config_view = self._fill(parsed, settings, path)
        return parsed, extras

    def _settings(self) -> list[argparse.Action]:
        """The actions a file may set (every flag but --help, --config, --print-config)."""
        return [a for a in self._actions if a.option_strings and _settable(a)]

    def _relax_required(self, settings: dict[str, Any], everything: bool) -> list[argparse.Action]:
        """Required flags the file gives (all of them for ``--print-config``, which shows what
        is missing instead of failing) are not required on the command line for this parse."""
        relaxed = []
        for action in self._actions:
            if action.required and (everything or action.dest in settings):
                action.required = False
                relaxed.append(action)
        return relaxed

    def _fill(
        self, parsed: argparse.Namespace, settings: dict[str, Any], path: str | None
    ) -> Effective:
        """Give every setting not given as a flag its value from env, file or default."""
        view = Effective(self.role, path)
        for action in self._settings():
            value = getattr(parsed, action.dest, None)
            if isinstance(value, _Unset | _UnsetList):
                value, source = self._unflagged(action, settings)
                setattr(parsed, action.dest, value)
            else:
                source = "flag"
            view.entries.append((action.dest, value, source))
        return view

    def _unflagged(self, action: argparse.Action, settings: dict[str, Any]) -> tuple[Any, str]:
        env = ENV_DEFAULTS.get(action.dest)
        if env is not None and env in os.environ:
            return action.default, "env"
        if action.dest in settings:
            return settings[action.dest], "file"
        default = action.default
        if isinstance(default, str) and callable(action.type):
            default = action.type(default)  # as argparse does for a string default
        return default, "default"


def _settable(action: argparse.Action) -> bool:
    """A flag that holds a setting (not --help, --version, --config, --print-config)."""
    return (
        action.dest not in NOT_IN_FILE
        and action.dest != argparse.SUPPRESS
        and not isinstance(action, argparse._HelpAction | argparse._VersionAction)
    )


def _before_parse(action: argparse.Action) -> Any:
    if isinstance(action, argparse._AppendAction):
        return _UnsetList(action.default or [])
    if isinstance(action, argparse._CountAction):
        return action.default  # counted from its default; not told apart (no role has one)
    return _UNSET


def role_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], role: str, **kwargs: Any
) -> RoleParser:
    """Add the sub-command ``role`` as a :class:`RoleParser`, with ``--config`` and
    ``--print-config``. (``add_subparsers`` makes every sub-command of one parser class; the
    role's parser is turned into this subclass, which adds no state of its own but ``role``.)"""
    parser = sub.add_parser(role, **kwargs)
    parser.__class__ = RoleParser
    assert isinstance(parser, RoleParser)
    parser.role = role
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file of settings (keys: this command's flags; flags given here win);"
        f" default: {DEFAULT_CONFIG_DIR}/{role}.toml when it exists",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings as TOML (secrets masked), each with where it came"
        " from, and exit",
    )
    return parser


def given_config(argv: list[str]) -> str | None:
    """The file named by ``--config FILE`` / ``--config=FILE`` (or an unambiguous prefix of
    it, as argparse accepts) in a role's arguments, before they are parsed."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if len(name) >= len("--conf") and "--config".startswith(name):
            if eq:
                return value
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


def default_config(role: str) -> str | None:
    """``$TASKFLEET_CONFIG_DIR/ROLE.toml`` (default folder ``/etc/taskfleet``) if it exists."""
    path = os.path.join(os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR, f"{role}.toml")
    return path if os.path.isfile(path) else None


def load(path: str, actions: list[argparse.Action]) -> dict[str, Any]:
    """The settings in ``path``, checked against the role's flags: dest → typed value."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the configuration file {path}: {exc.strerror or exc}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the configuration file {path} is not valid TOML: {exc}") from None
    by_key = _by_key(actions)
    settings: dict[str, Any] = {}
    for key, value in _flatten(doc):
        name = key.replace("-", "_")
        name = TABLE_KEYS.get(name, name)
        if name in SECRET_KEYS:
            raise ConfigError(
                f"{path}: {key} would hold a secret in the configuration file; put it alone in a"
                f" file only this role's user can read and name that file with"
                f" {SECRET_KEYS[name]}"
            )
        action = by_key.get(name)
        if action is None:
            close = difflib.get_close_matches(name, list(by_key), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"{path}: unknown key {key}{hint}; the keys are this role's flags, see `--help`"
            )
        settings[action.dest] = _typed(action, value, key, path)
    return settings


def _by_key(actions: list[argparse.Action]) -> dict[str, argparse.Action]:
    """Each long flag's name as a key (``--smtp-from`` → ``smtp_from``), an alias too."""
    keys: dict[str, argparse.Action] = {}
    for action in actions:
        if not _settable(action):
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                keys[option[2:].replace("-", "_")] = action
    return keys


def _flatten(doc: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"retention": {"runs": "90d"}}`` → ``[("retention_runs", "90d")]``."""
    out: list[tuple[str, Any]] = []
    for key, value in doc.items():
        name = f"{prefix}_{key}" if prefix else key
        if isinstance(value, dict):
            out.extend(_flatten(value, name))
        else:
            out.append((name, value))
    return out


def _typed(action: argparse.Action, value: Any, key: str, path: str) -> Any:
    """``value`` as the flag would have parsed it, or ConfigError naming key, file and type."""
    if action.nargs == 0:  # a switch: store_true / store_false / store_const
        if not isinstance(value, bool):
            raise _wrong(key, path, "true or false", value)
        return action.const if value else action.default
    if isinstance(action, argparse._AppendAction) or action.nargs in ("*", "+"):
        if not isinstance(value, list):
            raise _wrong(key, path, "an array (this flag can be repeated)", value)
        return [_scalar(action, v, key, path) for v in value]
    return _scalar(action, value, key, path)


def _scalar(action: argparse.Action, value: Any, key: str, path: str) -> Any:
    if action.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong(key, path, "an integer", value)
        result: Any = value
    elif action.type is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(key, path, "a number", value)
        result = float(value)
    elif callable(action.type):  # a parsing function of its own: give it the text
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _wrong(key, path, "a string or a number", value)
        try:
            result = action.type(str(value))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: {key} = {value!r}: {exc}") from None
    else:
        if (
            action.dest == "server"
            and isinstance(value, list)
            and all(isinstance(v, str) for v in value)
        ):
            value = ",".join(value)  # the two NS of an active/standby pair, as an array
        if not isinstance(value, str):
            raise _wrong(key, path, "a string", value)
        result = value
    if action.choices is not None and result not in action.choices:
        choices = ", ".join(repr(c) for c in action.choices)
        raise ConfigError(f"{path}: {key} = {value!r}: expected one of {choices}")
    return result


def _wrong(key: str, path: str, expected: str, value: Any) -> ConfigError:
    got = "a table" if isinstance(value, dict) else type(value).__name__
    return ConfigError(f"{path}: {key} must be {expected}, not {got} ({value!r})")


def render(view: Effective) -> str:
    """The effective configuration as TOML a role can read back: one line per setting with
    its source as a comment; secrets masked; a setting with no value as a comment."""
    lines = [
        f"# taskfleet {view.role}: effective configuration",
        f"# configuration file: {view.path or 'none'}",
        "# precedence: flag > env > file > default",
    ]
    if view.role == "server" and os.environ.get("TASKFLEET_SMTP_PASSWORD"):
        lines.append(
            f"# SMTP password: {MASK} from TASKFLEET_SMTP_PASSWORD (smtp_password_file wins)"
        )
    for dest, value, source in sorted(view.entries):
        if value is None or value == []:
            lines.append(f"# {dest} = (not set)  # {source}")
            continue
        if _secret(dest):
            value = MASK
        elif dest == "database" and isinstance(value, str):
            value = _without_password(value)
        lines.append(f"{dumps({dest: value}).strip()}  # {source}")
    return "\n".join(lines) + "\n"


def _without_password(url: str) -> str:
    """A database URL with its password (if any) masked."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:{MASK}@{parts.hostname or ''}"
    netloc += f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _secret(dest: str) -> bool:
    """A setting holding a secret itself (not a file that holds one)."""
    return dest in SECRET_KEYS or (dest.endswith(("token", "password")))


def print_config(args: argparse.Namespace) -> int:
    """``--print-config``: the settings, then exit 0."""
    print(render(args.config_view), end="", flush=True)
    return 0
