"""AgentApi is what the engine asks of an agent; AgentClient and every stand-in keep to it.

The stand-ins (tests' FakeAgent and its subclasses, the benchmarks' StandInAgent)
answer the engine in-process. If the engine's client changed a call and a
stand-in did not follow, the unit tests would go on passing against an agent
that no longer exists: these tests fail instead. The stand-ins are found by
reading the sources, so a new one is checked without being listed here.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from conftest import FakeAgent

from engine_lib.broker import AgentApi, AgentClient

ROOT = Path(__file__).resolve().parents[2]
# Where stand-ins live: the unit tests, their support code, the benchmarks.
STAND_IN_DIRS = ("tests/lib", "tests/support", "bench")
# Classes that define agent calls without being an agent: what they install instead.
NOT_AN_AGENT = {
    "Calls": "test_hibernation.py: installs its recording methods on a FakeAgent",
    "_HypervisorRecorder": "test_backing_chains.py: the agent's own hypervisor, behind its API",
}
METHODS = sorted(name for name, value in vars(AgentApi).items()
                 if not name.startswith("_") and inspect.isfunction(value))
ENGINE_DIRS = ("engine_lib/services", "engine_lib/loop")
_HAS_DEFAULT = object()


def _signature(node: ast.FunctionDef | ast.Lambda) -> inspect.Signature:
    """The parameters (names, kinds, whether they have a default) of a def read from source."""
    args, kind = node.args, inspect.Parameter
    positional = args.posonlyargs + args.args
    first_default = len(positional) - len(args.defaults)
    params = [kind(a.arg, kind.POSITIONAL_ONLY if a in args.posonlyargs
                   else kind.POSITIONAL_OR_KEYWORD,
                   default=_HAS_DEFAULT if i >= first_default else kind.empty)
              for i, a in enumerate(positional)]
    if args.vararg:
        params.append(kind(args.vararg.arg, kind.VAR_POSITIONAL))
    params += [kind(a.arg, kind.KEYWORD_ONLY,
                    default=kind.empty if d is None else _HAS_DEFAULT)
               for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        params.append(kind(args.kwarg.arg, kind.VAR_KEYWORD))
    return inspect.Signature(params)


def incompatibilities(wanted: inspect.Signature, got: inspect.Signature) -> list[str]:
    """Why a method with signature ``got`` cannot take every call ``wanted`` allows."""
    kind = inspect.Parameter
    want = [p for p in wanted.parameters.values() if p.name != "self"]
    have = [p for p in got.parameters.values() if p.name != "self"]
    var_pos = any(p.kind == kind.VAR_POSITIONAL for p in have)
    var_kw = any(p.kind == kind.VAR_KEYWORD for p in have)
    positional = [p for p in have if p.kind in (kind.POSITIONAL_ONLY,
                                                kind.POSITIONAL_OR_KEYWORD)]
    by_name = {p.name: p for p in have if p.kind in (kind.POSITIONAL_OR_KEYWORD,
                                                     kind.KEYWORD_ONLY)}
    problems, matched = [], set()
    for index, param in enumerate(want):
        if param.kind == kind.POSITIONAL_OR_KEYWORD:
            mine = positional[index] if index < len(positional) else None
            if mine is None and not (var_pos and var_kw):
                problems.append(f"takes no parameter '{param.name}' (position {index + 1})")
                continue
            if mine is not None and (mine.name != param.name
                                     or mine.kind != kind.POSITIONAL_OR_KEYWORD):
                matched.add(mine.name)
                problems.append(f"position {index + 1} is '{mine.name}', the engine's "
                                f"'{param.name}' (it may pass it by name)")
                continue
        else:  # keyword-only
            mine = by_name.get(param.name)
            if mine is None and not var_kw:
                problems.append(f"takes no keyword '{param.name}'")
                continue
        if mine is not None:
            matched.add(mine.name)
            if param.default is not kind.empty and mine.default is kind.empty:
                problems.append(f"'{param.name}' has no default (the engine may leave it out)")
    for mine in have:
        if mine.name not in matched and mine.kind not in (kind.VAR_POSITIONAL,
                                                          kind.VAR_KEYWORD) \
                and mine.default is kind.empty:
            problems.append(f"requires '{mine.name}', which the engine never passes")
    return problems


def _stand_ins() -> dict[str, tuple[str, ast.ClassDef]]:
    """Every class in the stand-in directories that defines one of AgentApi's methods,
    and every subclass of those: name -> (file, class)."""
    classes = {}
    for directory in STAND_IN_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    classes[node.name] = (str(path.relative_to(ROOT)), node)
    found = {name: entry for name, entry in classes.items() if _defined(entry[1])}
    while True:
        more = {name: entry for name, entry in classes.items() if name not in found
                and any(_base(b) in found for b in entry[1].bases)}
        if not more:
            return found
        found.update(more)


def _base(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _defined(cls: ast.ClassDef) -> dict[str, ast.FunctionDef | ast.Lambda]:
    """The AgentApi methods a class body defines (``def``, or ``name = lambda``)."""
    methods: dict[str, ast.FunctionDef | ast.Lambda] = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name in METHODS:
            methods[node.name] = node
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in METHODS:
                    methods[target.id] = node.value
    return methods


STAND_INS = _stand_ins()


def test_the_stand_ins_are_found():
    assert {"FakeAgent", "StandInAgent", "MovingAgent", "MigratingAgent", "MatchingAgent",
            "DeviceAgent"} <= set(STAND_INS)


def test_agent_client_defines_every_call_of_the_protocol_with_its_signature():
    for name in METHODS:
        assert name in vars(AgentClient), f"AgentClient has no {name}()"
        assert inspect.signature(vars(AgentClient)[name]) == \
            inspect.signature(vars(AgentApi)[name]), name
    assert set(METHODS) <= {name for name in dir(AgentClient) if not name.startswith("_")}


@pytest.mark.parametrize("name", sorted(STAND_INS))
def test_a_stand_in_declares_the_protocol(name):
    path, cls = STAND_INS[name]
    if name in NOT_AN_AGENT:
        return
    declared = {"AgentApi"} | {other for other in STAND_INS if other not in NOT_AN_AGENT}
    assert any(_base(base) in declared for base in cls.bases), \
        f"{path}: class {name} answers agent calls: declare AgentApi (or subclass FakeAgent)"


@pytest.mark.parametrize("name", sorted(STAND_INS))
def test_a_stand_in_takes_every_call_the_engine_makes(name):
    path, cls = STAND_INS[name]
    problems = [f"{path}: {name}.{method}: {problem}"
                for method, node in sorted(_defined(cls).items())
                for problem in incompatibilities(inspect.signature(vars(AgentApi)[method]),
                                                 _signature(node))]
    assert not problems, "\n".join(problems)


def test_an_unmodelled_call_says_which_one():
    with pytest.raises(NotImplementedError, match="FakeAgent does not model the agent's "
                                                  r"migrate_vm\(\)"):
        FakeAgent("h1").migrate_vm("vm", "qemu+tls://h2/system", {})
    assert isinstance(FakeAgent("h1"), AgentApi)


def test_every_agent_call_in_the_engine_is_in_the_protocol():
    """A call the engine's services or loop make on an agent client (one of AgentClient's
    methods) is part of AgentApi, so the stand-ins have to model it too."""
    client_only = {name for name in vars(AgentClient)
                   if not name.startswith("_") and name not in METHODS}
    calls = []
    for directory in ENGINE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in client_only:
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                                 f"{ast.unparse(node.func)}()")
    assert not calls, "add these to AgentApi (and the stand-ins):\n" + "\n".join(calls)


@pytest.mark.parametrize("wanted, got, problem", [
    ("def f(self, vm_id, timeout=60): ...", "def f(self, vm_id, timeout): ...",
     "'timeout' has no default"),
    ("def f(self, vm_id): ...", "def f(self, vm): ...", "position 1 is 'vm'"),
    ("def f(self, vm_id, tls=False): ...", "def f(self, vm_id): ...",
     "takes no parameter 'tls'"),
    ("def f(self, vm_id): ...", "def f(self, vm_id, mode): ...", "requires 'mode'"),
    ("def f(self, vm_id, *, tls=False): ...", "def f(self, vm_id, **kw): ...", None),
    ("def f(self, vm_id, tls=False): ...", "def f(self, vm_id, **kw): ...",
     "takes no parameter 'tls'"),
    ("def f(self, vm_id): ...", "def f(self, vm_id, mode='x'): ...", None),
    ("def f(self, vm_id, tls=False): ...", "def f(self, *args, **kwargs): ...", None),
])
def test_the_signature_comparison(wanted, got, problem):
    def parse(source):
        return _signature(ast.parse(source).body[0])

    problems = incompatibilities(parse(wanted), parse(got))
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems
