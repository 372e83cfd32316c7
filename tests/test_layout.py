"""The package layout keeps its dependency order, and no module imports itself back.

The order is the one written in ``docs/architecture.md``: a package may import
its own modules and those of lower layers, never those of a higher one. Every
import counts, at module level or inside a function, except those under
``if TYPE_CHECKING:`` (types only, never run).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "marketlake"

# Lowest first; packages on one line are peers and must not import each other.
LAYERS: list[set[str]] = [
    {"errors", "config"},
    {"schema"},
    {"timeseries"},
    {"store"},
    {"providers"},
    {"quality"},
    {"ingest"},
    {"stream", "backtest"},
    {"web"},
    {"api"},
    {"client"},
    {"cli"},
    {"tools", "__main__", "__init__"},
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("marketlake"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("marketlake"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py") if "migrations" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # ``from marketlake import __version__`` reads the package face, which imports nothing
        graph[name] = {m for m in _imports(path) if m in modules and m not in (name, "marketlake")}
    return graph


GRAPH = _graph()


def test_every_package_has_a_layer() -> None:
    components = {_component(m) for m in GRAPH}
    assert components <= set(LAYER_OF), f"add to LAYERS and the docs: {components - set(LAYER_OF)}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_the_layers(module: str) -> None:
    own = _component(module)
    upward = sorted(
        target
        for target in GRAPH[module]
        if _component(target) != own and LAYER_OF[_component(target)] >= LAYER_OF[own]
    )
    assert not upward, f"{module} imports a peer or a higher layer: {upward}"


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components over the module graph.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            # a package's __init__ importing its own submodules is how it re-exports them
            if nxt.startswith(node + "."):
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_the_docs_list_every_package() -> None:
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for component in sorted({_component(m) for m in GRAPH} - {"__init__", "__main__"}):
        is_package = (SRC / component).is_dir()
        name = f"`{component}/`" if is_package else f"`{component}.py`"
        assert name in architecture, f"docs/architecture.md does not describe {name}"
        assert re.search(re.escape(name), readme), f"README's module table lacks {name}"


# -- one store boundary: SQL and the generic table gateway stay inside store/ ---------------

SQL_TEXT = re.compile(
    r"\bSELECT\b.*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b"
)
GATEWAY = {
    "insert_row",
    "insert_rows",
    "insert_new",
    "upsert_rows",
    "update_rows",
    "delete_rows",
    "select_rows",
}
RAW_SQL_CALLS = {"execute", "query", "sql"}
# modules that may write SQL outside store/: none (a new entry needs a reason beside it)
SQL_ALLOWED: set[str] = set()


def sql_outside_store(source: str) -> list[str]:
    """Where ``source`` writes SQL or calls the store's generic gateway or raw SQL methods."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if SQL_TEXT.search(node.value):
                found.append(f"line {node.lineno}: SQL text {node.value[:40]!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, receiver = node.func.attr, ast.unparse(node.func.value)
            if name in GATEWAY or (name in RAW_SQL_CALLS and "store" in receiver.lower()):
                found.append(f"line {node.lineno}: {receiver}.{name}(…)")
    return found


def test_the_boundary_check_sees_sql_and_gateway_calls() -> None:
    sample = (
        'store.query("SELECT ts FROM bars")\n'
        'ctx.store.execute("DELETE FROM jobs")\n'
        'store.select_rows("jobs")\n'
        "pipe.execute()\n"
        '"""DELETE /keys/{id} removes a key"""\n'
    )
    found = sql_outside_store(sample)
    assert len(found) == 5  # two SQL texts, three calls; not the Redis pipe nor the route doc
    assert {line.split(":")[0] for line in found} == {"line 1", "line 2", "line 3"}


@pytest.mark.parametrize(
    "path",
    sorted(
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] != "store"
    ),
)
def test_sql_lives_only_in_the_store(path: str) -> None:
    if path in SQL_ALLOWED:
        pytest.skip("allow-listed for now, see SQL_ALLOWED")
    found = sql_outside_store((SRC / path).read_text())
    assert not found, (
        f"{path} reaches SQL outside store/: {found}; add a named, typed Store method instead"
    )
