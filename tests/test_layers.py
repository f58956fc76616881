"""The layers of addon/condroute/, checked from the source (issue #12).

Every module under addon/condroute/ is parsed with ``ast`` (nothing is imported) and every import
statement in it is read: at module level, in class bodies, inside functions (a *lazy* import) and
under ``if TYPE_CHECKING:``. Relative imports are resolved; ``from pkg import name`` is an import
of the submodule ``pkg.name`` when that module exists, else of ``pkg``. The checks:

a. No import cycles between condroute modules (imports under ``if TYPE_CHECKING:`` do not run and
   are left out; lazy imports are counted). The message gives the cycle's path.
b. Floors (FLOORS below, as in the project's layout): a module imports only condroute modules on
   its own floor or lower. Every module must match a row of FLOORS; a new module that matches none
   fails until it is added. Imports under ``if TYPE_CHECKING:`` are exempt.
c. No lazy imports of condroute modules (an import inside a function: they were used to dodge
   loops). Lazy imports of third-party modules are allowed. A computed import
   (``importlib.import_module(name)``, ``__import__(name)``) is allowed only in the modules of
   DISCOVERS, whose discovery is counted as importing every module of its package at import time.
d. The pure core does not import mitmproxy: only condroute.mitm.* and condroute.cli.* (which reads
   flow files) may, counting every import, even under ``if TYPE_CHECKING:``. condroute.model loads
   neither yaml, re2 nor mitmproxy, directly or through the condroute modules it imports.
e. A module of more than MAX_LINES lines says why at its top: its docstring has a line starting
   with "Why this module is long:" followed by the reason, e.g.

       Why this module is long: one grammar walk; split, its checks would need a shared visitor.
"""
from __future__ import annotations

import ast
import fnmatch
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "addon" / "condroute"
ROOT_NAME = "condroute"
MAX_LINES = 500
LONG_MARK = "Why this module is long:"
BODIES = ("body", "orelse", "finalbody", "handlers", "cases")    # the fields of a node holding statements

# (module-name pattern, floor). A name matches "x.*" when it is x or below x; an exact row wins over
# a pattern, and the longest pattern wins over a shorter one.
FLOORS: list[tuple[str, int]] = [
    ("condroute", 0),
    ("condroute.errors", 0),
    ("condroute.httptext", 0),
    ("condroute.model", 0),
    ("condroute.node", 0),               # the positioned values loaders build and the model keeps
    ("condroute.boundcache", 0),
    ("condroute.redact", 0),
    ("condroute.request", 1),
    ("condroute.localfiles", 1),         # Map Local: a respond file/dir read at answer time (no mitmproxy)
    ("condroute.load.*", 2),
    ("condroute.conditions.base", 3),
    ("condroute.conditions.matchers", 3),
    ("condroute.cel.*", 4),
    ("condroute.conditions.*", 5),       # the condition kinds and their registry
    ("condroute.compile.*", 6),
    ("condroute.rules", 6),             # the pipeline: read, load, compile (what the adapters call)
    ("condroute.render", 7),
    ("condroute.engine", 8),
    ("condroute.explain", 9),
    ("condroute.mitm.*", 10),
    ("condroute.cli.*", 10),
    ("condroute.export.*", 10),
]
FLOOR_NAMES = {0: "base", 1: "request", 2: "loaders", 3: "condition base", 4: "CEL", 5: "condition kinds",
               6: "compiler", 7: "render", 8: "engine", 9: "explain", 10: "adapters and front ends"}

# module -> package whose every module it imports at import time by a computed name
DISCOVERS = {"condroute.conditions.registry": "condroute.conditions", "condroute.export.targets": "condroute.export"}

MITMPROXY_ALLOWED = ("condroute.mitm.*", "condroute.cli.*")
MODEL = "condroute.model"
MODEL_MUST_NOT_LOAD = ("yaml", "re2", "mitmproxy")


# -- reading the source ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Imp:
    target: str             # a condroute module (resolved), or a third-party/stdlib top-level name
    line: int
    lazy: bool              # inside a function
    type_checking: bool     # under `if TYPE_CHECKING:`
    internal: bool          # target is (meant to be) a condroute module
    computed: bool = False  # importlib.import_module / __import__ with a name not written out


def module_files(pkg: Path = PKG) -> dict[str, tuple[Path, bool]]:
    """Every module under ``pkg``: dotted name -> (file, is_package)."""
    out = {}
    for f in sorted(pkg.rglob("*.py")):
        parts = list(f.relative_to(pkg.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts.pop()
        out[".".join(parts)] = (f, is_pkg)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_computed_import(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Name) and f.id in ("__import__", "import_module")) or (
        isinstance(f, ast.Attribute) and f.attr == "import_module")


def _literal_name(call: ast.Call) -> str | None:
    arg = call.args[0] if call.args else None
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def scan(name: str, is_package: bool, source: str, modules: set[str], tree: ast.Module | None = None) -> list[Imp]:
    """Every import in one module's source (or its ``tree``, parsed already), condroute targets
    resolved against ``modules``."""
    package = name if is_package else name.rpartition(".")[0]
    found: list[Imp] = []

    def add(target: str, line: int, lazy: bool, tc: bool, computed: bool = False) -> None:
        internal = target == ROOT_NAME or target.startswith(ROOT_NAME + ".")
        found.append(Imp(target if internal else target.split(".")[0], line, lazy, tc, internal, computed))

    def calls(e: ast.AST, lazy: bool, tc: bool) -> None:
        if isinstance(e, ast.Call) and _is_computed_import(e):
            lit = _literal_name(e)
            add(lit or "?", e.lineno, lazy, tc, computed=lit is None)
        for child in ast.iter_child_nodes(e):
            calls(child, lazy or isinstance(e, ast.Lambda), tc)

    def visit(node: ast.AST, lazy: bool, tc: bool) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, node.lineno, lazy, tc)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                add(sub if sub in modules else mod, node.lineno, lazy, tc)
            return
        if computed:                  # calls of importlib.import_module / __import__ in its expressions
            for field, value in ast.iter_fields(node):
                if field not in BODIES:
                    for e in value if isinstance(value, list) else [value]:
                        if isinstance(e, ast.AST):
                            calls(e, lazy, tc)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, lazy, True)
            for child in node.orelse:
                visit(child, lazy, tc)
            return
        inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for field in BODIES:          # the statements inside
            for child in getattr(node, field, ()):
                if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                    visit(child, inner, tc)

    # only statements are walked (imports are statements); expressions only when a computed
    # import is written somewhere in the module
    computed = "import_module" in source or "__import__" in source
    visit(tree or ast.parse(source), False, False)
    return list(dict.fromkeys(found))     # `from x import a, b` once


@dataclass(frozen=True)
class Code:
    files: dict[str, tuple[Path, bool]]
    imports: dict[str, list[Imp]]
    sources: dict[str, str]
    unparsable: dict[str, str]      # module -> the syntax error (its imports are not read)
    docstrings: dict[str, str]


@functools.lru_cache(maxsize=None)
def code() -> Code:
    files = module_files()
    names = set(files)
    sources = {n: f.read_text(encoding="utf-8") for n, (f, _) in files.items()}
    imports, unparsable, docstrings = {}, {}, {}
    for n in files:
        try:
            tree = ast.parse(sources[n])
        except SyntaxError as e:
            imports[n], unparsable[n], docstrings[n] = [], f"{e.msg} (line {e.lineno})", ""
            continue
        imports[n] = scan(n, files[n][1], sources[n], names, tree)
        docstrings[n] = ast.get_docstring(tree) or ""
    return Code(files, imports, sources, unparsable, docstrings)


def edges(c: Code, with_type_checking: bool = False) -> dict[str, list[tuple[str, str]]]:
    """module -> [(condroute module it imports, where)], the DISCOVERS imports included."""
    out: dict[str, list[tuple[str, str]]] = {n: [] for n in c.files}
    for n, imps in c.imports.items():
        for i in imps:
            if i.internal and i.target in c.files and i.target != n and (with_type_checking or not i.type_checking):
                out[n].append((i.target, f"line {i.line}"))
    for n, pkg in DISCOVERS.items():
        if n in out:
            out[n] += [(m, f"discovers {pkg}") for m in sorted(c.files)
                       if m.rpartition(".")[0] == pkg and m != n]
    return out


def floor_of(name: str) -> int | None:
    exact = [f for p, f in FLOORS if p == name]
    if exact:
        return exact[0]
    best = None
    for p, f in FLOORS:
        if p.endswith(".*") and (name == p[:-2] or name.startswith(p[:-1])):
            if best is None or len(p) > len(best[0]):
                best = (p, f)
    return best[1] if best else None


def rel(c: Code, name: str) -> str:
    return str(c.files[name][0].relative_to(PKG.parent.parent))


def find_cycles(graph: dict[str, list[tuple[str, str]]]) -> list[list[tuple[str, str]]]:
    """One cycle per strongly connected component with more than one module, as
    [(module, how it imports the next)...], the last entry's import leading back to the first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def strong(v: str) -> None:          # Tarjan's algorithm (the graph has about 60 nodes)
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _ in graph.get(v, ()):
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
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    cycles = []
    for comp in sorted(comps):
        members, start = set(comp), comp[0]
        prev: dict[str, tuple[str, str]] = {}
        queue, seen, end = [start], {start}, None
        while queue and end is None:          # shortest way from start back to start
            v = queue.pop(0)
            for w, how in sorted(graph[v]):
                if w == start:
                    prev[start], end = (v, how), v
                    break
                if w in members and w not in seen:
                    seen.add(w)
                    prev[w] = (v, how)
                    queue.append(w)
        path, w = [], start
        while True:
            v, how = prev[w]
            path.append((v, how))
            w = v
            if w == start:
                break
        cycles.append(path[::-1])
    return cycles


def show_cycle(cycle: list[tuple[str, str]]) -> str:
    return "".join(f"{m} --{how}--> " for m, how in cycle) + cycle[0][0]


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p[:-2] or fnmatch.fnmatchcase(name, p) for p in patterns)


def report(problems: list[str], what: str, hint: str = "") -> None:
    assert not problems, f"{len(problems)} {what}{f' ({hint})' if hint else ''}:\n  " + "\n  ".join(problems)


# -- the checker checks itself on small made-up modules -------------------------------------------

def test_scan_reads_every_kind_of_import():
    src = '''
from __future__ import annotations
import os, condroute.request as rq
from typing import TYPE_CHECKING
from . import base, nothere
from .. import model
from ..load.ctx import CompileCtx
try:
    import re2
except ImportError:
    re2 = None
if TYPE_CHECKING:
    from ..engine import Decision
else:
    from ..errors import RulesError
class K:
    import json
    def m(self):
        from ..cel import policy
def f():
    import yaml
    g = lambda: __import__("condroute.render")
    importlib.import_module(name)
h = lambda: __import__("condroute.explain")
importlib.import_module("maxminddb")
'''
    mods = {"condroute", "condroute.model", "condroute.request", "condroute.errors", "condroute.engine",
            "condroute.load.ctx", "condroute.conditions", "condroute.conditions.base", "condroute.cel.policy"}
    got = {(i.target, i.lazy, i.type_checking, i.computed) for i in scan("condroute.conditions.geo", False, src, mods)}
    assert got == {
        ("__future__", False, False, False), ("os", False, False, False), ("typing", False, False, False),
        ("condroute.request", False, False, False), ("condroute.conditions.base", False, False, False),
        ("condroute.conditions", False, False, False),          # nothere: a name in the package
        ("condroute.model", False, False, False), ("condroute.load.ctx", False, False, False),
        ("re2", False, False, False), ("condroute.engine", False, True, False),
        ("condroute.errors", False, False, False), ("json", False, False, False),
        ("condroute.cel.policy", True, False, False), ("yaml", True, False, False),
        ("condroute.render", True, False, False), ("?", True, False, True),
        ("condroute.explain", True, False, False), ("maxminddb", False, False, False)}
    # in a package's __init__, one dot is the package itself
    (i,) = scan("condroute.conditions", True, "from .base import X, Y\n", mods)
    assert i.target == "condroute.conditions.base" and i.internal


def test_floors_cycles_and_patterns_of_the_checker():
    assert floor_of("condroute.conditions.base") == 3
    assert floor_of("condroute.conditions.header") == 5
    assert floor_of("condroute.conditions") == 5
    assert floor_of("condroute.load") == 2 and floor_of("condroute.load.krakend") == 2
    assert floor_of("condroute.loader") is None and floor_of("condroute.newthing") is None
    assert matches("condroute.mitm", MITMPROXY_ALLOWED) and matches("condroute.cli.main", MITMPROXY_ALLOWED)
    assert not matches("condroute.mitmx", MITMPROXY_ALLOWED)
    g = {"a": [("b", "line 1")], "b": [("c", "line 2"), ("d", "line 9")], "c": [("a", "line 3")], "d": []}
    assert [show_cycle(c) for c in find_cycles(g)] == ["a --line 1--> b --line 2--> c --line 3--> a"]
    assert find_cycles({"a": [("b", "x")], "b": []}) == []


def test_the_modules_are_found():
    c = code()
    assert {"condroute", "condroute.engine", "condroute.request", "condroute.mitm.addon"} <= set(c.files)
    assert any(i.target == "condroute.request" for i in c.imports["condroute.engine"])
    report([f"{rel(c, n)} does not parse: {e}" for n, e in sorted(c.unparsable.items())], "unreadable modules")


# -- the layers ---------------------------------------------------------------------------------

def test_no_import_cycles():
    cycles = find_cycles(edges(code()))
    report([show_cycle(cy) for cy in cycles], "import cycles between condroute modules")


def test_every_module_has_a_floor():
    c = code()
    problems = [f"{n} ({rel(c, n)}) has no floor: add it to FLOORS in tests/test_layers.py"
                for n in sorted(c.files) if floor_of(n) is None]
    problems += [f"FLOORS names {p}, which is not a module: remove or correct the row"
                 for p, _ in FLOORS if not p.endswith(".*") and p not in c.files]
    report(problems, "problems with the table of floors")


def test_modules_import_only_their_floor_or_lower():
    c = code()
    problems = []
    for n in sorted(c.files):
        mine = floor_of(n)
        for i in c.imports[n]:
            if not i.internal or i.type_checking or i.computed:
                continue
            if i.target not in c.files:
                problems.append(f"{n} imports {i.target} (line {i.line}), which is not a module under addon/condroute/")
                continue
            theirs = floor_of(i.target)
            if mine is not None and theirs is not None and theirs > mine:
                problems.append(f"{n} (floor {mine}, {FLOOR_NAMES[mine]}) imports {i.target} "
                                f"(floor {theirs}) at line {i.line}")
    report(problems, "imports from a higher floor")


def test_no_lazy_imports_of_condroute_modules():
    c = code()
    problems = []
    for n in sorted(c.files):
        for i in c.imports[n]:
            if i.computed and n not in DISCOVERS:
                problems.append(f"{n} imports a computed name at line {i.line}: import it by name (or, for a "
                                f"discovery of plugins, add the module to DISCOVERS)")
            elif i.lazy and i.internal:
                problems.append(f"{n} imports {i.target} inside a function (line {i.line})")
    report(problems, "lazy imports of condroute modules",
           "import at the top; if that makes a loop, something is on the wrong floor")


def test_only_the_mitmproxy_adapter_and_the_cli_import_mitmproxy():
    c = code()
    problems = [f"{n} imports mitmproxy at line {i.line}{' (under TYPE_CHECKING)' if i.type_checking else ''}"
                for n in sorted(c.files) if not matches(n, MITMPROXY_ALLOWED)
                for i in c.imports[n] if not i.internal and i.target == "mitmproxy"]
    report(problems, "imports of mitmproxy outside condroute.mitm and condroute.cli")


def test_the_model_loads_no_parser_no_re2_no_mitmproxy():
    c = code()
    if MODEL not in c.files:
        pytest.skip("addon/condroute/model.py does not exist yet (issue #12)")
    graph = edges(c)
    problems = []
    chain: dict[str, list[str]] = {MODEL: [MODEL]}   # every condroute module the model loads, and how
    todo = [MODEL]
    while todo:
        n = todo.pop(0)
        for i in c.imports[n]:
            if not i.internal and i.target in MODEL_MUST_NOT_LOAD:
                via = "".join(f" via {m}" for m in chain[n][1:])
                problems.append(f"{MODEL} loads {i.target}{via} (line {i.line} of {rel(c, n)})")
        for m, _ in graph[n]:
            if m not in chain:
                chain[m] = chain[n] + [m]
                todo.append(m)
    report(problems, f"imports {MODEL} must not make")


def test_long_modules_say_why():
    c = code()
    problems = []
    for n in sorted(c.files):
        lines = len(c.sources[n].splitlines())
        if lines <= MAX_LINES:
            continue
        said = [ln.strip()[len(LONG_MARK):].strip() for ln in c.docstrings[n].splitlines()
                if ln.strip().startswith(LONG_MARK)]
        if not any(said):
            problems.append(f"{rel(c, n)} has {lines} lines (over {MAX_LINES}) and its docstring has no "
                            f"line '{LONG_MARK} <the reason>'")
    report(problems, f"modules over {MAX_LINES} lines without a stated reason")
