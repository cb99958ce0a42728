"""The import graph of edgerun/ and scheduler/, read from the source with ast (nothing is imported).

Every `import` and `from ... import` counts, at module level or inside a function; `from package
import name` counts as an import of `package.name` when that is a module of the tree, nothing when it
is the compiled extension, else of `package`. Relative imports are resolved against the importing module.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edgerun", "scheduler")
# compiled from edgerun/kernels/native/*.c; a leaf that imports nothing of the tree
EXTENSION_MODULES = ("edgerun.kernels._cpu", "edgerun.kernels._native_avx512", "edgerun.kernels._native_avx2",
                     "edgerun.kernels._native_sse2", "edgerun.kernels._native_generic", "edgerun.kernels._native_native")


def module_files() -> dict[str, Path]:
    """{dotted module name: file} for every .py file under the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _absolute(node: ast.ImportFrom, importer: str, modules: dict[str, Path]) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer, modules):
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is a module of the tree."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(name: str, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module of the tree, line, at module level?) for every import statement of `name`."""
    tree = ast.parse(modules[name].read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, name, modules)
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names if f"{source}.{alias.name}" not in EXTENSION_MODULES]
        for target in targets:
            known = _known(target, modules)
            if known is not None and known != name:
                found.append((known, node.lineno, id(node) in top_level))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: {target for target, _, _ in imports_of(name, modules)} for name in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(result)
