"""The web console's files, served by the NS itself, and the Origin check of browser sockets.

The console is static: HTML, CSS and ES modules in ``static/`` beside this file, shipped inside
the package (no build step, no CDN: an air-gapped site works). The browser then opens a
WebSocket to the same origin and speaks the existing admin protocol (``static/js/api.js``), so
there is no second API: the same operations, roles and audit as the CLI.

Files are answered through the listener's plain-HTTP hook (``runtime.gate.Gate.http``, the
websockets ``process_request`` hook), after the handshake gate and TLS like any connection.
``http_hook`` chains, for one listener:

1. the **Origin check**: a WebSocket upgrade whose ``Origin`` header is present and is not this
   listener's own origin (``https://`` + the ``Host`` it was asked for) is refused with 403
   before the upgrade. A page of another site could otherwise open a socket to the NS from an
   administrator's browser (cross-site WebSocket hijacking). Agents, task servers and the CLI
   send no Origin and are not affected;
2. the console's paths, where the console is served (the admin listener, or the main one with
   ``taskfleet server --console``): ``/`` and ``/index.html`` (not a WebSocket upgrade), and
   ``/static/...``: a file under the static root with a known extension, else 404. A path with
   anything but ``[A-Za-z0-9._-]`` segments (``..``, ``%2e%2e``, a backslash) is 404 before any
   file is looked at, and the resolved file must still lie under the root (no symlink out);
3. the metrics endpoint (``/metrics``, ``/healthz``, ``/readyz``), where it is served;
4. anything else: None, the WebSocket upgrade.

Every console answer carries a strict Content-Security-Policy (only this origin's scripts,
styles and sockets; no inline script or style, no framing), ``X-Content-Type-Options: nosniff``,
``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-cache``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

Hook = Callable[[Any, Request], Awaitable[Response | None]]

STATIC_ROOT = Path(__file__).resolve().parent / "static"
"""The console's files, inside the installed package."""

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".woff2": "font/woff2",
}
"""The only files served, by extension; anything else under ``static/`` (a README) is 404."""

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
"""Only this origin's files and socket; no inline script or style (server data is text)."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

STATIC_PREFIX = "/static/"
INDEX_PATHS = ("/", "/index.html")
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
"""One path segment of a static file: no empty, ``.``, ``..`` or hidden segment, no escapes."""


def _response(status: int, reason: str, body: bytes, content_type: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    for key, value in SECURITY_HEADERS.items():
        headers[key] = value
    headers["Connection"] = "close"
    return Response(status, reason, headers, body)


def _not_found() -> Response:
    return _response(404, "Not Found", b"not found\n", "text/plain; charset=utf-8")


MAX_PATH = 256
"""No file of the console has a longer path; a longer one is refused before the file system
sees it."""


def static_file(root: Path, path: str) -> Path | None:
    """The file ``path`` (relative to ``root``, ``/``-separated) names, if it may be served:
    every segment plain, a known extension, and the resolved file under the resolved root."""
    parts = path.split("/")
    if len(path) > MAX_PATH or not parts or not all(_SEGMENT.fullmatch(p) for p in parts):
        return None
    if Path(parts[-1]).suffix not in CONTENT_TYPES:
        return None
    base = root.resolve()
    try:
        candidate = base.joinpath(*parts).resolve()
        if not candidate.is_relative_to(base) or not candidate.is_file():
            return None
    except OSError:  # a name the file system refuses (too long, ...): not ours either
        return None
    return candidate


class Console:
    """Answers the console's paths from ``root`` (default: the files shipped in the package)."""

    def __init__(self, root: Path = STATIC_ROOT):
        self.root = root

    def answer(self, request: Request) -> Response | None:
        """The response for a console path; None for any other path (or a WebSocket upgrade)."""
        path = request.path.split("?", 1)[0].split("#", 1)[0]
        if path in INDEX_PATHS:
            if _is_upgrade(request):
                return None  # the console's own socket: wss://host/
            return self._file("index.html")
        if path.startswith(STATIC_PREFIX):
            return self._file(path[len(STATIC_PREFIX) :])
        return None

    def _file(self, relative: str) -> Response:
        found = static_file(self.root, relative)
        if found is None:
            return _not_found()
        try:
            body = found.read_bytes()  # small files, read only when a browser asks
        except OSError:
            return _not_found()
        return _response(200, "OK", body, CONTENT_TYPES[found.suffix])


def _is_upgrade(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


def foreign_origin(request: Request, secure: bool) -> str | None:
    """The ``Origin`` of a WebSocket upgrade that is not this listener's own origin, else None.

    Same origin means the scheme of the listener (``https`` with TLS) and the ``Host`` the
    browser asked for (host and port, as the browser wrote both). No Origin header: not a
    browser (agents, task servers, the CLI), nothing to check.
    """
    origin = request.headers.get("Origin")
    if origin is None or not _is_upgrade(request):
        return None
    host = request.headers.get("Host", "")
    own = f"{'https' if secure else 'http'}://{host}"
    if host and origin.lower() == own.lower():
        return None
    return origin


def http_hook(
    *,
    secure: bool,
    console: Console | None,
    metrics: Hook | None,
    log: Any,
) -> Hook:
    """One listener's ``process_request`` chain: Origin check, console, metrics, upgrade."""

    async def process_request(connection: Any, request: Request) -> Response | None:
        origin = foreign_origin(request, secure)
        if origin is not None:
            peer = connection.remote_address
            log.warning(
                "foreign_origin",
                origin=origin[:200],
                host=request.headers.get("Host", "")[:200],
                address=str(peer[0]) if peer else "?",
            )
            body = (
                f"a page from {origin[:200]} may not open a connection to this server; open the "
                "console from this server's own address\n"
            ).encode()
            return _response(403, "Forbidden", body, "text/plain; charset=utf-8")
        if console is not None and (answer := console.answer(request)) is not None:
            return answer
        if metrics is not None:
            return await metrics(connection, request)
        return None

    return process_request
