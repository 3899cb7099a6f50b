"""Print moram's internal import graph: who imports whom, cycles, and what the leaf modules import.

    python benchmarks/import_graph.py [ROOT]        # ROOT: a checkout (default: this one)

Reads the source with ``ast`` (nothing is imported). ``callbacks/`` is read as ``moram.callbacks``.
Imports inside functions are counted apart ("lazy"): they do not run at import time, so they cannot
make an import-time cycle, but they are still dependencies.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "callbacks":
        parts = ["moram", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, name: str, modules: set[str]) -> tuple[set[str], set[str]]:
    """(import-time, lazy) moram modules imported by the file at ``path``.

    ``from package import submodule`` counts as an import of the submodule (``modules``: all names).
    """
    tree = ast.parse(path.read_text())
    eager: set[str] = set()
    lazy: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST, inside_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = inside_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            target = lazy if nested else eager
            if isinstance(child, ast.Import):
                target.update(a.name for a in child.names if a.name.startswith("moram"))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + [base]).strip(".")
                if base.startswith("moram"):
                    subs = {f"{base}.{a.name}" for a in child.names} & modules
                    target.update(subs)
                    if len(subs) < len(child.names):  # some names are attributes of ``base`` itself
                        target.add(base)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # typing-only imports
            visit(child, nested)

    visit(tree, False)
    eager.discard(name)
    lazy.discard(name)
    return eager, lazy - eager


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:  # noqa: C901 - Tarjan in one piece
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    files = [p for folder in ("moram", "callbacks") for p in sorted((root / folder).rglob("*.py"))]
    eager: dict[str, set[str]] = {}
    both: dict[str, set[str]] = {}
    modules = {module_name(root, path) for path in files}
    for path in files:
        name = module_name(root, path)
        e, lazy = imports(path, name, modules)
        eager[name], both[name] = e, e | lazy
    print(f"{len(files)} modules, {sum(map(len, eager.values()))} import-time edges, "
          f"{sum(map(len, both.values()))} edges with lazy imports")
    print("import-time cycles:", cycles(eager) or "none")
    print("cycles counting lazy imports:", cycles(both) or "none")
    for leaf in ("moram.protocols", "moram.distributed"):
        print(f"{leaf} imports:", sorted(both.get(leaf, set())) or "nothing from moram")
    for name in sorted(n for n in both if n.startswith("moram.callbacks")):
        print(f"{name} imports:", sorted(both[name]))


if __name__ == "__main__":
    main()
