"""structlog set-up shared by every role: the format (console or JSON), the destination (stderr
or a file), the level, and the fields every event carries.

A role binds its ``role`` and ``name`` once at its start (:func:`bind_role`, through structlog's
context variables), so every event it logs says which process of the fleet it came from, in a
file or a log collector that gathers many. Events about a run carry ``run_id``, about one
instance ``instance_id`` and ``computer``: the call sites pass them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from typing import Any, TextIO

import structlog

FORMATS = ("json", "console")

_opened: TextIO | None = None
"""The log file this process appends to (kept open for the life of the process)."""


class LogFileError(RuntimeError):
    """The log file cannot be opened; the message names it and says what to do (the role
    ends with exit 4)."""


def configure(
    level: str = "info",
    *,
    fmt: str | None = None,
    file: str | None = None,
    json: bool | None = None,
) -> None:
    """Configure structlog once per process.

    ``fmt`` is ``"json"`` (one object per line, for a log collector) or ``"console"`` (key=value
    text for a person); by default console when stderr is a terminal, JSON otherwise (a service
    manager's journal, a pipe). ``file``: append there (created 0600) instead of stderr; raises
    :class:`LogFileError` when it cannot be opened. ``json`` is the older spelling of
    ``fmt="json"`` (``json=False``: console), kept for callers that still use it.
    """
    if fmt is None and json is not None:
        fmt = "json" if json else "console"
    stream = _open(file) if file else _no_file()
    if fmt is None:
        fmt = "console" if _is_terminal(stream) else "json"
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: give one of {', '.join(FORMATS)}")
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer(default=str)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if fmt == "json" else _keep,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def set_level(level: str) -> None:
    """Change only the level, keeping the format and destination ``configure`` chose (``demo``
    and ``simulate`` log warnings only, also into a ``--log-file`` given to them)."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(numeric))


def _keep(logger: Any, method: str, event: Any) -> Any:
    """No change (the console renderer formats exceptions itself)."""
    return event


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _open(path: str) -> TextIO:
    """Open ``path`` to append, line-buffered; a new file is made 0600 (logs name computers,
    addresses and errors: for the service's user only)."""
    global _opened
    try:
        # Never through a symlink (a root agent's log in a folder others can write would append
        # to whatever file the link names), and a file found readable by others is made 0600.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        why = "it is a symlink" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise LogFileError(
            f"cannot open the log file {path}: {why}; give --log-file a file in"
            " a folder this user can write (or leave it out to log on stderr)"
        ) from None
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    stream = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
    if _opened is not None:
        _opened.close()
    _opened = stream
    return stream


class _Stderr:
    """Whatever ``sys.stderr`` is when an event is written, not when logging was configured: a
    stream swapped since (a test's captured stderr, closed at its end) is never written to."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def _no_file() -> Any:
    """Log on stderr again (closing a log file opened before)."""
    global _opened
    if _opened is not None:
        _opened.close()
        _opened = None
    return _Stderr()


def bind_role(role: str, name: str) -> None:
    """Make every event logged from here on (in this context and the tasks it starts) carry
    ``role`` and ``name``. Called once by each role at its start."""
    structlog.contextvars.bind_contextvars(role=role, name=name)


def get(name: str, **bound: Any) -> Any:
    """A logger bound to a component name."""
    return structlog.get_logger().bind(component=name, **bound)
