"""engine_lib's import graph: no cycles, and no imports hidden inside functions.

An import inside a function hides a dependency from the reader and usually hides a
cycle too. Read from the sources with ast, so nothing is imported. Which layer may
import which is import-linter's job (the contracts in pyproject.toml, `make lint`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "engine_lib"

# The command line imports what a subcommand needs when it runs: `kestrel --help` and the
# offline commands never load the database layer.
LAZY_BY_DESIGN = ("engine_lib.cli",)
# More, each with its reason at the import: the agent package loads its daemon only
# when run, its API loads the libvirt-backed Hypervisor only when first asked, and the
# API client loads its disk transfers (built on it) only for a disk's content.
DELIBERATE = {
    ("engine_lib.agent", "engine_lib.agent.daemon"),
    ("engine_lib.agent.api", "engine_lib.agent.vms"),
    ("engine_lib.client.remote", "engine_lib.client.transfers"),
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The engine_lib module that ``import name`` loads last (itself, or its package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else \
                module.rpartition(".")[0]
            parts = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        # `from package import module` imports the module; `from module import name`, the module.
        names = [f"{base}.{alias.name}" if _resolve(f"{base}.{alias.name}") ==
                 f"{base}.{alias.name}" else base for alias in node.names]
    return {target for target in map(_resolve, names)
            if target and target.startswith("engine_lib") and target != module}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return getattr(test, "id", None) == "TYPE_CHECKING" or \
        getattr(test, "attr", None) == "TYPE_CHECKING"


def _imports() -> tuple[dict[str, set[str]], set[tuple[str, str, int]]]:
    """Module -> what it imports at module level; (module, target, line) imported in a
    function. Imports under `if TYPE_CHECKING:` are for the type checker only."""
    top: dict[str, set[str]] = {module: set() for module in MODULES}
    nested: set[tuple[str, str, int]] = set()

    def visit(node: ast.AST, module: str, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module):
                    if in_function:
                        nested.add((module, target, child.lineno))
                    else:
                        top[module].add(target)
            visit(child, module, in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    for module, path in MODULES.items():
        visit(ast.parse(path.read_text(), str(path)), module, False)
    return top, nested


TOP, NESTED = _imports()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                strong(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strong(node)
    return found


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_cycles_at_module_level():
    assert cycles(TOP) == []


def test_no_import_cycles_counting_imports_inside_functions():
    """A cycle closed by an import inside a function is a cycle all the same."""
    graph = {module: set(targets) for module, targets in TOP.items()}
    for module, target, _ in NESTED:
        if (module, target) not in DELIBERATE:
            graph[module].add(target)
    assert cycles(graph) == []


def test_imports_inside_functions_only_where_lazy_by_design():
    hidden = sorted(f"{module}:{line} imports {target}" for module, target, line in NESTED
                    if not _in(module, LAZY_BY_DESIGN)
                    and (module, target) not in DELIBERATE)
    assert not hidden, "import at module level instead:\n" + "\n".join(hidden)


def test_the_graph_reader_sees_imports():
    """The reader itself: it finds engine.py's services and the CLI's lazy imports."""
    assert "engine_lib.services.vms" in TOP["engine_lib.engine"]
    assert any(_in(module, LAZY_BY_DESIGN) for module, _, _ in NESTED)
