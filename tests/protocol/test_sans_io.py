"""protocol/ performs no I/O: it neither imports nor loads an I/O or concurrency module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import protocol

PACKAGE_DIR = Path(protocol.__file__).parent
FORBIDDEN = frozenset(
    {
        "asyncio",
        "websockets",
        "aiosqlite",
        "sqlite3",
        "socket",
        "subprocess",
        "selectors",
        "threading",
    }
)
SOURCES = sorted(PACKAGE_DIR.glob("*.py"))
MODULES = sorted("protocol" if p.stem == "__init__" else f"protocol.{p.stem}" for p in SOURCES)


def _imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and getattr(node.func, "id", getattr(node.func, "attr", ""))
            in {"__import__", "import_module"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def test_the_package_has_the_expected_modules() -> None:
    """The scan sees every protocol module, so a new module cannot slip past it unscanned."""
    assert {p.name for p in SOURCES} >= {
        "__init__.py",
        "errors.py",
        "messages.py",
        "codec.py",
        "session.py",
        "states.py",
        "tasks.py",
    }


def test_scanner_finds_forbidden_imports() -> None:
    """The AST scanner itself catches every import form it is meant to catch."""
    source = (
        "import os, asyncio.events\n"
        "from socket import socket\n"
        "from . import sibling\n"
        "def f():\n"
        "    import threading\n"
        "    __import__('subprocess')\n"
        "    importlib.import_module('sqlite3')\n"
    )
    assert _imported_roots(ast.parse(source)) == {
        "os",
        "asyncio",
        "socket",
        "threading",
        "subprocess",
        "sqlite3",
    }


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_module_imports_io(path: Path) -> None:
    """No protocol module imports asyncio, websockets, aiosqlite, sqlite3, sockets, threads."""
    roots = _imported_roots(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    assert not roots & FORBIDDEN, f"{path.name} imports {sorted(roots & FORBIDDEN)}"


def test_importing_protocol_loads_no_io_module() -> None:
    """In a fresh interpreter, importing every protocol module loads none of the I/O modules."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert set(MODULES) <= loaded
    assert "msgpack" in loaded  # the probe really imported the codec
    bad = {m for m in loaded if m.split(".")[0] in FORBIDDEN}
    assert not bad, f"importing protocol loaded {sorted(bad)}"
