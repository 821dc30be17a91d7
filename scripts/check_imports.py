"""Lint the package's import structure (``make lint`` runs it): no import cycle among the package's modules,
function-level imports included, and no method package importing the benchmark world.

Reads the source with :mod:`ast` only (nothing is imported or run). Exit status 1 with one line per problem.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "promptweave"
#: Folders that are not part of the product's import graph.
SKIP = {"tests", "scripts", ".venv", ".cache", "out", "build", "docs", "web", "workflows", "weights"}
WORLD = f"{PACKAGE}.prompt_modules.world"
#: Library packages that must never import the benchmark world (it provides data sources to them, not back).
METHODS_AND_CORE = ("core", "inversion", "adaptation", "dual_prompt", "pretraining", "diff_prompt")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts])


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (top level, functions, ``TYPE_CHECKING`` blocks)."""
    name = module_name(path, root)
    package = name if is_package(path) else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            submodules = [f"{stem}.{alias.name}" for alias in node.names]
            # ``from pkg import submodule`` depends on the submodule, not on everything in pkg/__init__
            targets = submodules if all(m in modules for m in submodules) else [stem, *submodules]
        for target in targets:
            # the longest prefix that is one of our modules
            parts = target.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in modules:
                    if candidate != name:
                        found.add(candidate)
                    break
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each a cycle to report."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def problems_in(root: Path = ROOT) -> list[str]:
    """One line per import cycle and per method module importing the world, for the package rooted at ``root``."""
    files = [p for p in root.rglob("*.py") if not (set(p.relative_to(root).parts[:-1]) & SKIP)]
    modules = {module_name(p, root) for p in files}
    graph = {module_name(p, root): imported_modules(p, modules, root) for p in files}
    problems = []
    for cycle in find_cycles(graph):
        problems.append("import cycle: " + " <-> ".join(cycle))
    for name, deps in sorted(graph.items()):
        inside = name.split(".")
        if len(inside) > 2 and inside[1] == "prompt_modules" and inside[2] in METHODS_AND_CORE:
            for dep in sorted(deps):
                if dep == WORLD or dep.startswith(WORLD + "."):
                    problems.append(f"{name} imports the benchmark world ({dep}): take a data source argument instead")
    return problems


def main() -> int:
    problems = problems_in()
    for line in problems:
        print(line)
    if not problems:
        print("imports ok: no cycle among the package's modules, no method imports the benchmark world")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
