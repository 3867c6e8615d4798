"""The layers stay apart: no import cycles among rtsql's modules, counting imports anywhere in
a file (a lazy import inside a function is still a dependency a reader must follow)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rtsql"


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the rtsql modules it imports (relative or absolute, at any depth)."""
    files = {}
    for f in root.rglob("*.py"):
        name = ".".join(f.relative_to(root.parent).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = f
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, f in files.items():
        package = module if f.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rsplit(".", 1)[0]
                target = ((f"{base}.{node.module}" if node.module else base) if node.level
                          else node.module)
                for alias in node.names:  # `from . import x` names a module; else the target
                    found = next((c for c in (f"{target}.{alias.name}", target) if c in files),
                                 None)
                    if found and found != module:
                        graph[module].add(found)
            elif isinstance(node, ast.Import):
                graph[module].update(a.name for a in node.names if a.name in files)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = import_graph(PACKAGE)
    assert "rtsql.measures.engine" in graph["rtsql.measures.base"]  # the walk sees imports
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_engine_shipped_to_spark_imports_only_itself():
    """spark_job.ship_engine zips a few files of measures/ for executors without rtsql: their
    relative imports must stay among them (a lazy import of the numba kernel excepted, which
    only local full builds reach)."""
    from rtsql.spark_job import SHIPPED_ENGINE

    shipped = {name.removesuffix(".py") for name in SHIPPED_ENGINE}
    for name in SHIPPED_ENGINE:
        tree = ast.parse((PACKAGE / "measures" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and (node.module in shipped | {"kernel"}), \
                    (name, node.module)
