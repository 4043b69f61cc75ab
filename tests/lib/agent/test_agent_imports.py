"""The agent package's boundaries, read from its source (ast): what it imports and how.

A host runs the agent from a wheel that carries only engine_lib.agent and
engine_lib.protocol, so anything else of engine_lib fails there, not here.
Inside the package, a module uses another's public names only, and the
modules form no import cycle: a cycle is what function-level imports used
to hide, and a private name borrowed across modules is a seam in the wrong place.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import engine_lib.agent

AGENT = Path(engine_lib.agent.__file__).parent
ALLOWED_THIRD_PARTY = {"libvirt", "libvirtaio"}
# Imports inside functions, each on purpose; anything else belongs at the top.
DELIBERATE_LATE_IMPORTS = {
    # Importing any agent module imports the package: it must stay light for the engine.
    ("__init__", "engine_lib.agent.daemon"),
    # The API answers (OpenAPI, validation) on a host where libvirt-python is missing.
    ("api", "engine_lib.agent.vms"),
}


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path))
            for path in sorted(AGENT.glob("*.py"))}


def _imports(tree: ast.Module):
    """(imported module, names, at module level) for every import statement."""
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names], id(node) in top


def _agent_targets(module: str, names: list[str]) -> list[str]:
    """The agent modules an import statement loads."""
    if module == "engine_lib.agent":
        return [name for name in names if (AGENT / f"{name}.py").exists()]
    if module.startswith("engine_lib.agent."):
        return [module.split(".")[2]]
    return []


def test_the_agent_imports_only_the_standard_library_libvirt_and_its_shared_packages():
    wrong = []
    for name, tree in _modules().items():
        for module, names, _ in _imports(tree):
            root = module.split(".")[0]
            if root in sys.stdlib_module_names or root in ALLOWED_THIRD_PARTY:
                continue
            if module.startswith(("engine_lib.agent", "engine_lib.protocol")):
                continue
            if module == "engine_lib" and names in ([], ["__version__"]):
                continue  # engine_lib/__init__.py holds only the version
            wrong.append(f"{name}: {module} {names}")
    assert wrong == []


def test_no_module_borrows_another_modules_private_names():
    borrowed = []
    for name, tree in _modules().items():
        imported_modules = set()
        for module, names, _ in _imports(tree):
            borrowed += [f"{name}: from {module} import {n}" for n in names
                         if n.startswith("_") and module.startswith("engine_lib")]
            imported_modules |= set(_agent_targets(module, names))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                continue
            owner = node.value
            # self._x, cls._x and super()._x are the object's own; anything else is another's.
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super":
                continue
            if isinstance(owner, ast.Name) and owner.id not in imported_modules \
                    and owner.id not in ("hv", "hypervisor"):
                continue  # a local's private attribute is its class's business (e.g. os._exit)
            borrowed.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert borrowed == []


def test_function_level_imports_are_the_deliberate_ones():
    late = set()
    for name, tree in _modules().items():
        for module, names, top in _imports(tree):
            if not top:
                targets = _agent_targets(module, names)
                late |= {(name, f"engine_lib.agent.{t}") for t in targets} if targets \
                    else {(name, module)}
    assert late == DELIBERATE_LATE_IMPORTS


def test_the_agent_modules_form_no_import_cycle():
    graph = {name: set() for name in _modules()}
    for name, tree in _modules().items():
        for module, names, _ in _imports(tree):
            graph[name] |= set(_agent_targets(module, names)) - {name}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(graph[node]):
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            elif target not in done:
                visit(target, path + [target])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert cycles == []
