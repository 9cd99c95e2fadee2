"""The adapters import downwards only: no cycle among lipcert.adapters.* or between them and lipcert.loading.

Every import statement counts, also those inside functions (a lazy import still ties the modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"lipcert": REPO / "lipcert", "lipcert.adapters": REPO / "adapters", "lipcert.datasets": REPO / "datasets"}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join([package, *parts[:-1]] if is_package else [package, *parts])] = (path, is_package)
    return found


def _imports(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports anywhere in its file (parent packages not counted)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".") if is_package else name.split(".")[:-1]
            if node.level:
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    out.add(f"{source}.{alias.name}")
                elif source in known:
                    out.add(source)
    return out - {name}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_cycle_finder_sees_a_function_local_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n")
    (tmp_path / "b.py").write_text("from . import a\n")
    known = {"p.a", "p.b"}
    graph = {n: _imports(n, tmp_path / f"{n[2:]}.py", False, known) for n in known}
    assert graph == {"p.a": {"p.b"}, "p.b": {"p.a"}}
    assert _cycles(graph) == [{"p.a", "p.b"}]


def test_no_import_cycle_among_the_adapters_and_loading() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, is_package, set(modules)) for name, (path, is_package) in modules.items()}
    assert graph["lipcert.adapters.rebuild"] >= {"lipcert.adapters.files", "lipcert.adapters.modules"}
    assert "lipcert.adapters.files" in graph["lipcert.loading"]
    ours = {n for n in modules if n.startswith("lipcert.adapters.")} | {"lipcert.loading"}
    tangled = [sorted(c) for c in _cycles(graph) if len(c & ours) > 1]
    assert not tangled, f"import cycles through the adapters: {tangled}"
