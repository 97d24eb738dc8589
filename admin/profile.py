"""Admin profiles: named sets of connection settings in ``~/.config/taskfleet/config.toml``
(``$XDG_CONFIG_HOME/taskfleet/config.toml`` when that is set), so an operator does not export
three variables in every shell::

    default = "prod"
    [profiles.prod]
    server = "wss://ns.example:8470"
    server_fingerprint = "sha256:..."   # or ca = "/path/ca.pem"
    token_file = "~/.config/taskfleet/prod.token"

``--profile NAME`` or ``TASKFLEET_PROFILE`` picks one, else the file's ``default``. Each setting
is taken from the first of: the command line, the environment, the profile, the built-in
default (:func:`apply`). Secrets only by file: an inline ``token`` is refused, so the file can
be shown (``taskfleet profiles``) and shared without leaking anything. A mistake in the file is
a usage error naming the key and the file (:class:`ProfileError`, exit 2).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admin.common import EXIT_OK, EXIT_USAGE, _print_json
from admin.output import table

PROFILE_KEYS = {
    "server": "the NS URL, wss://HOST:PORT",
    "server_fingerprint": "the NS certificate's pin (printed at its start)",
    "ca": "a CA file to trust instead of a pin",
    "token_file": "a file holding the admin token (mode 0600)",
}
"""What a profile may set, with what each is (``taskfleet profiles`` and docs/cli.md)."""
TOP_KEYS = {"default", "profiles"}


class ProfileError(Exception):
    """The profile file or the profile asked for cannot be used: a usage error (exit 2); the
    message names the file and what to fix."""


def config_path() -> Path:
    """Where the profile file is: under ``$XDG_CONFIG_HOME`` if set (and absolute, as the XDG
    rules say), else ``~/.config``."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "taskfleet" / "config.toml"


@dataclass(frozen=True)
class Profile:
    """One named profile, its paths made absolute (``~`` expanded, relative to the file)."""

    name: str
    server: str | None = None
    server_fingerprint: str | None = None
    ca: str | None = None
    token_file: str | None = None


@dataclass(frozen=True)
class Profiles:
    """The profile file as read: its profiles by name and its ``default`` (None: no file)."""

    path: Path
    profiles: dict[str, Profile]
    default: str | None
    exists: bool


def _path_value(value: str, base: Path) -> str:
    """A path from the file: ``~`` expanded, relative ones taken from the file's folder."""
    expanded = Path(value).expanduser()
    return str(expanded if expanded.is_absolute() else base / expanded)


def _profile(name: str, table_: Any, path: Path) -> Profile:
    where = f"[profiles.{name}] in {path}"
    if not isinstance(table_, dict):
        raise ProfileError(f"{where}: must be a table of settings")
    if "token" in table_:
        raise ProfileError(
            f"{where}: an inline token is not allowed (a secret in a file that is shown and"
            " copied): put the token in a file of its own (mode 0600) and name it with"
            ' token_file = "PATH"'
        )
    values: dict[str, str] = {}
    for key, value in table_.items():
        if key not in PROFILE_KEYS:
            raise ProfileError(
                f"{where}: unknown key {key!r}; known: {', '.join(sorted(PROFILE_KEYS))}"
            )
        if not isinstance(value, str) or not value:
            raise ProfileError(f"{where}: {key} must be a non-empty string")
        values[key] = value
    for key in ("ca", "token_file"):
        if key in values:
            values[key] = _path_value(values[key], path.parent)
    return Profile(name=name, **values)


def load(path: Path | None = None) -> Profiles:
    """Read the profile file; no file is no profiles (not an error)."""
    path = path or config_path()
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        return Profiles(path, {}, None, exists=False)
    except OSError as exc:
        raise ProfileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path} is not valid TOML: {exc}") from None
    for key in doc:
        if key not in TOP_KEYS:
            hint = " (settings go under [profiles.NAME])" if key in PROFILE_KEYS else ""
            raise ProfileError(
                f"{path}: unknown key {key!r}{hint}; known at the top: default, [profiles.NAME]"
            )
    tables = doc.get("profiles", {})
    if not isinstance(tables, dict):
        raise ProfileError(f"{path}: profiles must be tables, [profiles.NAME]")
    profiles = {name: _profile(name, t, path) for name, t in tables.items()}
    default = doc.get("default")
    if default is not None and not isinstance(default, str):
        raise ProfileError(f"{path}: default must be a profile's name (a string)")
    if default is not None and default not in profiles:
        raise ProfileError(f"{path}: default = {default!r} names no profile; {_known(profiles)}")
    return Profiles(path, profiles, default, exists=True)


def _known(profiles: dict[str, Profile]) -> str:
    return f"known: {', '.join(sorted(profiles))}" if profiles else "the file defines none"


def chosen(found: Profiles, asked: str | None) -> Profile | None:
    """The profile in use: ``asked`` (``--profile``, else ``TASKFLEET_PROFILE``), else the
    file's default, else none. Asking for one the file does not have is an error."""
    name = asked or found.default
    if name is None:
        return None
    if name not in found.profiles:
        if not found.exists:
            raise ProfileError(
                f"no profile {name!r}: there is no profile file {found.path}"
                " (docs/cli.md shows its form)"
            )
        raise ProfileError(f"no profile {name!r} in {found.path}; {_known(found.profiles)}")
    return found.profiles[name]


def _asked(args: argparse.Namespace) -> str | None:
    return getattr(args, "profile", None) or os.environ.get("TASKFLEET_PROFILE") or None


def read_token_file(path: str, *, warn: bool = True) -> str:
    """The admin token in a profile's ``token_file``; a warning when others may read it."""
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(
            f"cannot read the profile's token_file {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if not token or any(c.isspace() for c in token):
        raise ProfileError(f"token_file {path} must hold one admin token, nothing else")
    if warn and mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(
            f"taskfleet: warning: token file {path} can be read by other users"
            f" (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}",
            file=sys.stderr,
        )
    return token


def apply(args: argparse.Namespace, default_server: str, *, warn: bool = True) -> Profile | None:
    """Fill the connection settings the command line and the environment left unset from the
    profile in use, then the built-in default; return that profile (or None).

    The trust settings go together: a ``--server-fingerprint`` or ``--ca`` given (or set in the
    environment) takes neither from the profile, so a pin given never loses to a profile's CA.

    A server given on the command line or in the environment that is not the profile's takes
    nothing from it, above all not its token: an admin token is a bearer secret that the hello
    hands to whatever server it reaches (a lab NS, a demo, a typo), so it goes only to the
    server its profile names. ``args.profile_elsewhere`` then names the profile, for the message.
    """
    profile = chosen(load(), _asked(args))
    args.profile_elsewhere = None
    if profile is not None and args.server and args.server != profile.server:
        args.profile_elsewhere = profile.name
        profile = None
    if profile is not None:
        if not args.server:
            args.server = profile.server
        if not (args.server_fingerprint or args.ca):
            args.server_fingerprint = profile.server_fingerprint
            args.ca = profile.ca
        if not args.token and profile.token_file:
            args.token = read_token_file(profile.token_file, warn=warn)
    if not args.server:
        args.server = default_server
    return profile


def v_profiles(args: argparse.Namespace) -> int:
    """``taskfleet profiles``: the profiles of the file, the one in use marked. Nothing is
    masked: a profile holds no secret, only the path of its token file."""
    try:
        found = load()
        used = chosen(found, _asked(args))
    except ProfileError as exc:
        print(f"taskfleet: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rows = [
        {
            "name": p.name,
            "in_use": used is not None and p.name == used.name,
            "default": p.name == found.default,
            "server": p.server,
            "server_fingerprint": p.server_fingerprint,
            "ca": p.ca,
            "token_file": p.token_file,
        }
        for p in sorted(found.profiles.values(), key=lambda p: p.name)
    ]
    if args.json:
        _print_json({"file": str(found.path), "in_use": used and used.name, "profiles": rows})
        return EXIT_OK
    if not found.exists:
        print(f"no profile file ({found.path}); docs/cli.md shows its form")
        return EXIT_OK
    print(f"profiles in {found.path}:")
    for r in rows:
        r["use"] = "*" if r["in_use"] else ""
        r["trust"] = f"ca {r['ca']}" if r["ca"] else r["server_fingerprint"] or "-"
    print(
        table(
            rows,
            [
                ("use", ""),
                ("name", "name"),
                ("server", "server"),
                ("trust", "trust"),
                ("token_file", "token file"),
            ],
        )
    )
    return EXIT_OK


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[Any]
) -> None:
    """Register ``taskfleet profiles`` (it reads the file only, it needs no server)."""
    v = sub.add_parser(
        "profiles",
        parents=parents,
        help=f"list the admin profiles of {config_path()} with the one in use (docs/cli.md)",
    )
    v.set_defaults(func=v_profiles)
