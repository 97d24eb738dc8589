#!/usr/bin/env python3
"""Fail on an import circle among taskfleet's own modules, or on an import across layers.

    python .ci/check_imports.py [ROOT]

Every ``import`` and ``from ... import`` of the product's packages counts, wherever it stands:
at the top, inside a function, or under ``if TYPE_CHECKING:`` (a circle drawn only for the type
checker is still a circle a reader must hold in their head). ``from pkg import name`` counts as an
import of ``pkg.name`` when that is a module, else of ``pkg``.

The layers, lowest first; a package may import only from the packages listed for it:

    protocol    (nothing of ours: sans-I/O)
    runtime     protocol
    agent       runtime, protocol
    taskserver  runtime, protocol
    server      taskserver, runtime, protocol
    admin       server, taskserver, agent, runtime, protocol
    bench       everything

Exits 1 with every circle and every crossing listed, 0 with a one-line summary otherwise.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("protocol", "runtime", "agent", "taskserver", "server", "admin", "bench")
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "runtime": {"protocol"},
    "agent": {"runtime", "protocol"},
    "taskserver": {"runtime", "protocol"},
    "server": {"taskserver", "runtime", "protocol"},
    "admin": {"server", "taskserver", "agent", "runtime", "protocol"},
    "bench": {"admin", "server", "taskserver", "agent", "runtime", "protocol"},
}


def modules(root: Path) -> dict[str, Path]:
    """Every module of the product packages, by dotted name."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The product modules that module ``name`` (at ``path``) imports."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in known else base)
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def check(root: Path) -> list[str]:
    """Every problem found under ``root``, as lines to print (none: all is well)."""
    known = modules(root)
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    problems: list[str] = []
    for component in circles(graph):
        members = set(component)
        problems.append(f"import circle of {len(component)} modules:")
        for module in component:
            inside = sorted(graph[module] & members)
            problems.append(f"  {module} -> {', '.join(inside)}")
    for module, targets in sorted(graph.items()):
        package = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                problems.append(
                    f"{known[module].relative_to(root)}: {package}/ may not import {target} "
                    f"({package}/ may use: {', '.join(sorted(ALLOWED[package])) or 'nothing'})"
                )
    return problems


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    problems = check(root)
    for line in problems:
        print(line)
    if problems:
        print("import check failed: break the circle (a narrow interface a level below, or pass")
        print("what the lower module needs), or move the code to the layer it belongs to.")
        return 1
    print(f"import check: {len(modules(root))} modules, no circles, every import within its layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
