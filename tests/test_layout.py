"""The import check (.ci/check_imports.py): it finds a circle and a crossing, and the tree has none."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "check_imports.py"


def _checker():
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_circle_drawn_only_for_the_type_checker_is_found(tmp_path):
    """server.a imports server.b at the top; server.b imports server.a under TYPE_CHECKING."""
    _write(
        tmp_path,
        {
            "server/__init__.py": "",
            "server/a.py": "from server.b import thing\n",
            "server/b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from server.a import Other\n"
                "thing = 1\n"
            ),
        },
    )
    problems = _checker().check(tmp_path)
    assert problems[0] == "import circle of 2 modules:"
    assert "  server.a -> server.b" in problems
    assert "  server.b -> server.a" in problems


def test_an_import_across_layers_is_found(tmp_path):
    """The TS may not import the agent, even inside a function; ``from pkg import module``
    counts as importing the module."""
    _write(
        tmp_path,
        {
            "agent/__init__.py": "",
            "agent/store.py": "",
            "taskserver/__init__.py": "",
            "taskserver/relay.py": "def f():\n    from agent import store\n",
        },
    )
    (problem,) = _checker().check(tmp_path)
    assert problem.startswith("taskserver/relay.py: taskserver/ may not import agent.store")


def test_relative_imports_resolve_inside_the_package(tmp_path):
    _write(
        tmp_path,
        {
            "runtime/__init__.py": "from . import link\n",
            "runtime/link.py": "from .tls import x\n",
            "runtime/tls.py": "from .link import y\n",
        },
    )
    problems = _checker().check(tmp_path)
    assert "  runtime.link -> runtime.tls" in problems
    assert "  runtime.tls -> runtime.link" in problems


def test_the_tree_has_no_circle_and_no_crossing():
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no circles" in done.stdout


PRODUCT = ("protocol", "runtime", "agent", "taskserver", "server", "admin")
MODULE_LINES_AT_MOST = 800


def test_no_product_module_is_longer_than_a_reader_can_hold():
    """The layout's rule (docs/architecture.md): no module of the product over 800 lines; a
    longer one is split by concern (as server/store/ and server/runs.py were)."""
    long = {
        str(path.relative_to(ROOT)): n
        for package in PRODUCT
        for path in (ROOT / package).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MODULE_LINES_AT_MOST
    }
    assert long == {}, f"split these by concern: {long}"
