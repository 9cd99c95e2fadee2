"""The package's shape: imports go down the layers of docs/code-map.md, no cycles, no module over 500 lines.

Imports are read from the source (``ast``), function-local ones included, so a cycle hidden behind a
late import fails too.  Modules: lipcert/ as ``lipcert``, adapters/ as ``lipcert.adapters`` and
datasets/ as ``lipcert.datasets`` (their installed names).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = {"lipcert": ROOT / "lipcert", "lipcert.adapters": ROOT / "adapters", "lipcert.datasets": ROOT / "datasets"}
MAX_LINES = 500

# docs/code-map.md: a module may import from its own layer and the layers before it (prefixes of dotted names)
LAYERS = (
    ("vocabulary", ("lipcert.errors", "lipcert.norms", "lipcert.rounding", "lipcert.batch", "lipcert.results",
                    "lipcert.memory")),
    ("representation", ("lipcert.activations", "lipcert.network", "lipcert.npz", "lipcert.random_nets",
                        "lipcert.reference_models", "lipcert.sorting",
                        "lipcert.operators", "lipcert.norm_pool", "lipcert.norm_residual", "lipcert.graph",
                        "lipcert.graph_chain", "lipcert.graph_rounding")),
    ("bounds", ("lipcert.bounds",)),
    ("radii", ("lipcert.radii", "lipcert.local")),
    ("loading", ("lipcert.loading", "lipcert.adapters", "lipcert.datasets")),
    ("certification", ("lipcert.records", "lipcert.runfolder", "lipcert.certification", "lipcert.attacks",
                       "lipcert.distributed")),
    ("applications", ("lipcert.verbs", "lipcert.combination", "lipcert.vnncomp", "lipcert.demo", "lipcert.report",
                      "lipcert.cli", "lipcert.__main__")),
)


def layer(name: str) -> int:
    """Index in :data:`LAYERS` of a module (the package ``lipcert`` itself, which exports everything, is last)."""
    if name == "lipcert":
        return len(LAYERS) - 1
    hits = [i for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes if name == p or name.startswith(p + ".")]
    assert hits, f"module {name} has no layer: add it to LAYERS here and to docs/code-map.md"
    return hits[0]


def modules() -> dict[str, Path]:
    """Dotted name -> source file of every module (a package is named by its ``__init__.py``)."""
    out = {}
    for prefix, tree in TREES.items():
        for path in sorted(tree.rglob("*.py")):
            parts = list(path.relative_to(tree).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The lipcert modules that importing ``name`` runs.

    ``import a.b.c`` and ``from a.b.c import x`` run a, a.b and a.b.c (each package's ``__init__``), and
    the submodule a.b.c.x when x is one; the packages that contain ``name`` are already being imported
    and give no edge (so ``from . import x`` is an edge to the submodule x only).
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ancestors = set(_prefixes(name))
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            bases, names = [alias.name for alias in node.names], []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            bases, names = [base], [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for base in bases:
            targets.update(p for p in _prefixes(base) if p in known)
        targets.update(n for n in names if n in known)
    return targets - ancestors


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components with more than one module (every import cycle lies in one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def a_cycle(edges: dict[str, set[str]], component: set[str]) -> list[str]:
    """One import cycle inside a strongly connected component, as a path that returns to its start."""
    start = min(component)
    previous = {start: ""}
    queue = [start]
    while queue:  # breadth-first from start, inside the component, until an edge leads back to start
        v = queue.pop(0)
        for w in sorted(edges[v] & component):
            if w == start:
                path = [v]
                while previous[path[-1]]:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if w not in previous:
                previous[w] = v
                queue.append(w)
    raise AssertionError(f"{sorted(component)} is not strongly connected")  # pragma: no cover


def test_no_import_cycles() -> None:
    edges = graph()
    assert "lipcert.adapters.lirpa" in edges and "lipcert.datasets.loader" in edges
    cycles = [" -> ".join(a_cycle(edges, c)) for c in strongly_connected(edges)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_imports_go_down_the_layers() -> None:
    """No module imports one of a later layer (bounds know nothing of radii, certification or adapters)."""
    up = sorted(f"{m} ({LAYERS[layer(m)][0]}) imports {t} ({LAYERS[layer(t)][0]})"
                for m, targets in graph().items() for t in targets if layer(t) > layer(m))
    assert not up, "imports against the layers of docs/code-map.md:\n" + "\n".join(up)


def test_modules_are_at_most_500_lines() -> None:
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """Function-local, relative (to a sibling, a parent, a submodule of a package) and absolute imports."""
    sources = {"lipcert.pkg": ("__init__.py", "from .a import f\n"),
               "lipcert.pkg.a": ("a.py", "def f():\n    from . import b\n"),
               "lipcert.pkg.b": ("b.py", "from .sub import g\n"),
               "lipcert.pkg.sub": ("sub/__init__.py", "from . import c\n"),
               "lipcert.pkg.sub.c": ("sub/c.py", "import lipcert.pkg.a\nfrom .. import b\n"),
               "lipcert.pkg.d": ("d.py", "from lipcert.pkg.sub import c\n")}
    known = {}
    for name, (rel, text) in sources.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        known[name] = path
    got = {name: imports(name, path, known) for name, path in known.items()}
    assert got == {"lipcert.pkg": {"lipcert.pkg.a"}, "lipcert.pkg.a": {"lipcert.pkg.b"},
                   "lipcert.pkg.b": {"lipcert.pkg.sub"}, "lipcert.pkg.sub": {"lipcert.pkg.sub.c"},
                   "lipcert.pkg.sub.c": {"lipcert.pkg.a", "lipcert.pkg.b"},
                   "lipcert.pkg.d": {"lipcert.pkg.sub", "lipcert.pkg.sub.c"}}
    (component,) = strongly_connected(got)
    assert component == {"lipcert.pkg.a", "lipcert.pkg.b", "lipcert.pkg.sub", "lipcert.pkg.sub.c"}
    cycle = a_cycle(got, component)
    assert cycle[0] == cycle[-1] and all(w in got[v] for v, w in zip(cycle, cycle[1:]))
