"""The shared ground of the admin operations: :class:`ApiError` (a refused request, with a
``code`` for scripts and a message for people), the op registry (``_OPS`` and the :func:`op`
decorator every operation module registers through), and the small helpers several concerns use:
``_arg`` (one checked request argument), ``_document`` (a YAML/JSON document given as text or as
a mapping) and ``_refuse_unknown`` (targets naming what does not exist). It imports no operation
module; ``server.admin_api`` imports every one, so they register, and dispatches through
:func:`server.admin_api.handle`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from protocol.errors import ValidationError
from protocol.tasks import parse_document
from runtime.link import Link
from server.interface import NS


class ApiError(Exception):
    """A refused admin request: ``code`` for scripts, the message for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


Handler = Callable[["NS", Link, dict[str, Any]], Awaitable[Any]]
_OPS: dict[str, Handler] = {}


def op(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _OPS[name] = fn
        return fn

    return register


def _arg(args: dict[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    value = args.get(key, default)
    if value is None and default is not ...:
        value = default
    if value is ... or value is None:
        raise ApiError("bad_request", f"argument {key!r} is required")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError("bad_request", f"argument {key!r} must be {kind.__name__}")
    return value


def _document(args: dict[str, Any]) -> Any:
    if "text" in args:
        try:
            return parse_document(
                _arg(args, "text", str), filename=_arg(args, "filename", str, "") or ""
            )
        except ValidationError as exc:
            raise ApiError("invalid_document", str(exc)) from None
    return _arg(args, "document", dict)


async def refuse_read_only(ns: NS, kind: str, name: str) -> None:
    """Refuse to change an item that came from the parent NS (``server.store.hierarchy``):
    the parent would overwrite the change, so it is made there."""
    origin = await ns.db.item_origin(kind, name)
    if origin:
        raise ApiError(
            "read_only", f"{kind} {name} comes from the parent NS {origin}: change it there"
        )


def _refuse_unknown(kind: str, asked: list[str], known: set[str]) -> None:
    """Refuse a run whose targets name a computer, group or filter that does not exist."""
    missing = sorted(set(asked) - known)
    if missing:
        raise ApiError(
            f"unknown_{kind}",
            f"unknown {kind}(s): {', '.join(missing)}; `taskfleet {kind}s` lists them",
        )
