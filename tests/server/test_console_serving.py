"""The web console's serving (``server/console``): the NS answers its files on the admin listener
(and on the main one only with ``--console``), with the security headers, never a file outside
the static folder; every listener refuses a browser socket from another origin; the admin's
``welcome`` carries the op -> role table the console hides buttons by. And the browser's msgpack
codec (``static/js/msgpack.js``) reads what msgpack-python writes, and back, in Chromium."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import msgpack
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from server.auth import OP_ROLE
from server.console import CSP, STATIC_ROOT, Console, static_file
from server.core import NotificationServer

CONSOLE_FILES = [
    "index.html",
    "app.css",
    "js/app.js",
    "js/api.js",
    "js/msgpack.js",
    "js/ui.js",
]


def no_verify() -> ssl.SSLContext:
    """TLS without checking the NS's self-made certificate: these tests are about what the NS
    answers; trusting it is the e2e tests' and the browser tests' subject."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """One raw GET (the path sent exactly as given, no client-side clean-up) over TLS to
    127.0.0.1:``port``; returns (status, headers with lower-case names, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=no_verify())
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@pytest.fixture
async def ns_admin(tmp_path):
    """An in-process NS with TLS (its self-made certificate) and an admin listener."""
    server = NotificationServer(data_dir=str(tmp_path / "ns"), admin_port=0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_the_admin_listener_serves_the_console_with_its_security_headers(ns_admin):
    """GET / is index.html with the CSP and the other headers; each shipped file comes with
    its content type and the bytes of the file in the package."""
    port = ns_admin.admin_port
    status, headers, body = await http_get(port, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CSP
    assert "default-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-cache"
    assert body == (STATIC_ROOT / "index.html").read_bytes()
    assert b'<script type="module" src="/static/js/app.js">' in body

    for name in CONSOLE_FILES:
        status, headers, body = await http_get(port, f"/static/{name}")
        assert status == 200, name
        assert body == (STATIC_ROOT / name).read_bytes(), name
        assert headers["content-security-policy"] == CSP, name
    _, headers, _ = await http_get(port, "/static/js/api.js")
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    _, headers, _ = await http_get(port, "/static/app.css")
    assert headers["content-type"] == "text/css; charset=utf-8"
    # The metrics endpoint is still there, after the console in the chain.
    status, _, body = await http_get(port, "/healthz")
    assert (status, body) == (200, b"ok\n")


@pytest.mark.parametrize(
    "path",
    [
        "/static/../core.py",
        "/static/../../server/core.py",
        "/static/js/../../__init__.py",
        "/static/%2e%2e/__init__.py",
        "/static/%2e%2e/%2e%2e/core.py",
        "/static/..%2f__init__.py",
        "/static/js%2f..%2f..%2f__init__.py",
        "/static/..\\__init__.py",
        "/static//etc/passwd",
        "/static/js/nothing.js",
        "/static/.hidden.js",
        "/static/js/",
        "/static/",
        "/static/" + "a" * 300 + ".js",  # longer than a file name may be: not a 500
        "/static/" + "d/" * 200 + "x.js",
    ],
)
async def test_no_path_leaves_the_static_folder(ns_admin, path):
    """Traversal, plain or percent-encoded, and anything not a known shipped file: 404, with
    the security headers, and never the contents of a Python file."""
    status, headers, body = await http_get(ns_admin.admin_port, path)
    assert status == 404, (path, body[:200])
    assert headers["x-content-type-options"] == "nosniff"
    assert b"import" not in body


def test_a_symlink_out_of_the_root_and_unknown_extensions_are_not_served(tmp_path):
    """The resolved file must lie under the root: a link inside the folder that points out of
    it is refused; a file with an extension not in the table (a README, a .py) is refused."""
    root = tmp_path / "static"
    (root / "js").mkdir(parents=True)
    (root / "js" / "ok.js").write_text("export {};\n")
    (root / "README.md").write_text("not served\n")
    (root / "tool.py").write_text("import os\n")
    (tmp_path / "secret.js").write_text("secret\n")
    (root / "js" / "leak.js").symlink_to(tmp_path / "secret.js")
    assert static_file(root, "js/ok.js") == (root / "js" / "ok.js").resolve()
    assert static_file(root, "js/leak.js") is None
    assert static_file(root, "README.md") is None
    assert static_file(root, "tool.py") is None
    assert Console(root)._file("js/leak.js").status_code == 404


async def test_the_main_listener_serves_the_console_only_with_console(tmp_path):
    """With an admin port and no ``console``, GET / on the agents' port is a failed WebSocket
    upgrade (426), not the console; with ``console=True`` it is the console there too."""
    ns = NotificationServer(data_dir=str(tmp_path / "ns"), admin_port=0)
    await ns.start()
    try:
        status, headers, body = await http_get(ns.port, "/")
        assert status == 426 and b"<html" not in body
        assert (await http_get(ns.port, "/static/js/api.js"))[0] == 426
        assert (await http_get(ns.admin_port, "/"))[0] == 200
    finally:
        await ns.stop()
    ns = NotificationServer(data_dir=str(tmp_path / "ns"), admin_port=0, console=True)
    await ns.start()
    try:
        status, headers, body = await http_get(ns.port, "/")
        assert status == 200 and headers["content-security-policy"] == CSP
        assert body == (STATIC_ROOT / "index.html").read_bytes()
    finally:
        await ns.stop()


async def test_the_console_flag_of_taskfleet_server(fleet):
    """The ``taskfleet server --console`` process serves the console on its main listener."""
    proc = await fleet.server("ns", 0, "--console")
    port = int(proc.url.rsplit(":", 1)[1])
    status, headers, body = await http_get(port, "/static/js/app.js")
    assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
    assert body == (STATIC_ROOT / "js" / "app.js").read_bytes()


async def admin_hello(ws, token: str) -> dict:
    """Say hello as the console does (``static/js/api.js``); return the NS's answer."""
    hello = {
        "type": "hello",
        "id": "1",
        "version": 1,
        "role": "admin",
        "identity": "console",
        "credentials": {"token": token},
        "capabilities": [],
        "info": {},
    }
    await ws.send(msgpack.packb(hello, use_bin_type=True))
    return msgpack.unpackb(await asyncio.wait_for(ws.recv(), 10), raw=False)


@pytest.mark.parametrize("listener", ["admin", "main"])
async def test_a_browser_socket_from_another_origin_is_refused(ns_admin, listener):
    """A WebSocket upgrade whose Origin is not the listener's own (https + the Host asked for)
    is refused with 403 before the upgrade, on both listeners; the same origin, and no Origin
    (the CLI, agents), get the admin handshake."""
    port = ns_admin.admin_port if listener == "admin" else ns_admin.port
    url = f"wss://127.0.0.1:{port}/"
    for foreign in (
        "https://evil.example",
        f"http://127.0.0.1:{port}",  # another scheme is another origin
        f"https://127.0.0.1:{port + 1}",
        "null",
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(url, ssl=no_verify(), origin=foreign, open_timeout=10):
                pass
        assert refused.value.response.status_code == 403, foreign
        assert foreign.encode() in refused.value.response.body
    for origin in (f"https://127.0.0.1:{port}", None):
        async with ws_connect(url, ssl=no_verify(), origin=origin, open_timeout=10) as ws:
            welcome = await admin_hello(ws, ns_admin.first_admin_token)
        assert welcome["type"] == "welcome", welcome
        assert welcome["config"]["admin"] == "admin" and welcome["config"]["role"] == "admin"


async def test_the_welcome_tells_an_admin_the_op_roles(ns_admin):
    """``welcome.config.op_roles`` is the NS's table (ops not in it need admin), so the console
    offers a viewer no Run button; a wrong token gets ``unauthorized``."""
    url = f"wss://127.0.0.1:{ns_admin.admin_port}/"
    async with ws_connect(url, ssl=no_verify(), open_timeout=10) as ws:
        welcome = await admin_hello(ws, ns_admin.first_admin_token)
    roles = welcome["config"]["op_roles"]
    assert roles == OP_ROLE
    assert roles["run.start"] == "operator" and roles["runs.list"] == "viewer"
    assert "keys.accept" not in roles
    async with ws_connect(url, ssl=no_verify(), open_timeout=10) as ws:
        refused = await admin_hello(ws, "tfa_not-a-token")
    assert refused["type"] == "error" and refused["code"] == "unauthorized"


HEX_JS = """
const fromHex = (h) => new Uint8Array(h.match(/../g)?.map((b) => parseInt(b, 16)) ?? []);
const toHex = (u8) => Array.from(u8, (b) => b.toString(16).padStart(2, "0")).join("");
"""


async def in_browser(ns: NotificationServer, body: str, arg: object) -> object:
    """Run ``body`` (JS statements using ``codec``, ``arg``, ``fromHex``, ``toHex``; ending in
    ``return``) in the system's headless Chromium, on a page of the NS's console origin, with
    ``codec`` the module the console itself loads (``/static/js/msgpack.js``, under the NS's
    CSP). Chromium is what the console runs in and what CI installs (.ci/run)."""
    from playwright.async_api import async_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser_path, "the codec tests run in the system's Chromium: apt-get install chromium"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=browser_path, headless=True)
        try:
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            await page.goto(f"https://127.0.0.1:{ns.admin_port}/static/favicon.svg")
            return await page.evaluate(
                "async (arg) => { const codec = await import('/static/js/msgpack.js');"
                f"{HEX_JS}\n{body}\n}}",
                arg,
            )
        finally:
            await browser.close()


async def test_the_browser_codec_reads_and_writes_what_msgpack_python_does(ns_admin):
    """msgpack.js, in the browser, decodes a message msgpack-python encoded, with every type the
    protocol uses, and encodes it back to what msgpack-python decodes as the same value;
    integers beyond 2^53 come through exactly, as BigInt, the others as numbers."""
    message = {
        "type": "event",
        "id": "7",
        "run_id": 12,
        "kind": "instances",
        "small": -5,
        "neg32": -70_000,
        "u32": 4_000_000_000,
        "id64": (9000 << 40) | 123_456,  # an instance id past 2^53
        "max64": 2**64 - 1,
        "min64": -(2**63),
        "float": 1.5,
        "text": "héllo ✓ " + "x" * 300,
        "bin": bytes(range(256)) * 2,
        "none": None,
        "flags": [True, False],
        "data": {"items": [{"instance_id": 1, "state": "succeeded"}] * 20, "__proto__": 1},
        "long": list(range(70_000)),
    }
    out = await in_browser(
        ns_admin,
        """
        const value = codec.decode(fromHex(arg));
        const kinds = {};
        for (const [k, v] of Object.entries(value)) kinds[k] = typeof v;
        kinds.proto_is_data = Object.getPrototypeOf(value.data) === Object.prototype;
        return { echo: toHex(codec.encode(value)), kinds, id64: String(value.id64) };
        """,
        msgpack.packb(message, use_bin_type=True).hex(),
    )
    assert isinstance(out, dict)
    assert msgpack.unpackb(bytes.fromhex(out["echo"]), raw=False) == message
    kinds = out["kinds"]
    assert kinds["id64"] == kinds["max64"] == kinds["min64"] == "bigint"
    assert out["id64"] == str(message["id64"])
    assert kinds["u32"] == kinds["run_id"] == kinds["neg32"] == "number"
    assert kinds["bin"] == "object" and kinds["none"] == "object"
    assert kinds["proto_is_data"] is True  # "__proto__" stayed a key, not a prototype


async def test_the_browser_codec_refuses_what_the_protocol_does_not_use(ns_admin):
    """An extension type, trailing bytes, a map key that is not a string and a cut value are
    refused with ``bad_frame``, as the NS's own codec refuses them."""
    cases = {
        "ext": msgpack.packb(msgpack.ExtType(1, b"x")).hex(),
        "trailing": (msgpack.packb({"a": 1}) + b"\x00").hex(),
        "int_key": msgpack.packb({1: "a"}).hex(),
        "short": msgpack.packb({"a": "abc"})[:-1].hex(),
        "bad_utf8": msgpack.packb({"a": b"\xff"}, use_bin_type=False).hex(),
    }
    out = await in_browser(
        ns_admin,
        """
        const out = {};
        for (const [name, hex] of Object.entries(arg)) {
          try { codec.decode(fromHex(hex)); out[name] = "decoded"; }
          catch (e) { out[name] = e.code || e.message; }
        }
        return out;
        """,
        cases,
    )
    assert out == dict.fromkeys(cases, "bad_frame")


def test_the_package_data_names_the_console_files():
    """``pip install .`` ships the console: pyproject's package data covers every file under
    static/ (checked here by the pattern; a real non-editable install was checked by hand,
    see the notes)."""
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"server.console" = ["static/**/*"]' in text
    assert all((STATIC_ROOT / name).is_file() for name in CONSOLE_FILES)
