"""The export targets, by name, and reading a rules file for an exporter."""
from __future__ import annotations

import importlib
import importlib.util

from .. import model
from ..cli.cases import load_cases
from ..load.ctx import CompileCtx
from ..load.rulesfile import read_rules_file
from ..load.yamlpos import parse_bytes
from ..node import Y
from ..rules import Rules, compile_tree, load_model
from .base import Target
from .verify import Result, run, wire

# --to NAME -> the module (condroute.export.NAME) that defines TARGET
NAMES = tuple(n for n in ("envoy", "nginx", "haproxy", "httproute", "krakend")
              if importlib.util.find_spec(f"{__package__}.{n}") is not None)


def target(name: str) -> Target:
    """The target called ``name`` (one of NAMES)."""
    if name not in NAMES:
        raise KeyError(name)
    return importlib.import_module(f"{__package__}.{name}").TARGET


def read(path: str, upstreams: dict[str, str] | None = None) -> tuple[Rules, model.Rules]:
    """A rules file compiled (every condition checked, as ``validate`` does; for ``--verify``'s own
    decisions) and as its model (what exporters read). Raises RulesError with located problems.

    ``upstreams`` (``export --upstream NAME=URL``) replaces the URLs of named upstreams in both, as
    if the file said so: the laptop's ``127.0.0.1:9001`` becomes production's service. Raises
    ValueError naming an upstream the file does not have."""
    raw = read_rules_file(path).data
    trees = [parse_bytes(raw, path) for _ in range(2)]   # compiling may keep parts of its tree
    for root, _ in trees:
        _replace_upstreams(root, upstreams or {}, path)
    (root1, text1), (root2, text2) = trees
    return compile_tree(root1, CompileCtx(path, text1)), load_model(root2, CompileCtx(path, text2))


def _replace_upstreams(root: Y, upstreams: dict[str, str], path: str) -> None:
    if not upstreams:
        return
    node = root.v.get("upstreams") if isinstance(root.v, dict) else None
    have = node.v if node is not None and isinstance(node.v, dict) else {}
    for name, url in upstreams.items():
        if name not in have:
            known = ", ".join(have) or "none"
            raise ValueError(f"{path} has no upstream {name!r} to replace (its upstreams: {known})")
        old = have[name]
        have[name] = Y(url, old.line, old.col)


def read_model(path: str) -> model.Rules:
    return read(path)[1]


def verify_file(target_name: str, rules_path: str, cases_path: str | None = None,
                allow_partial: bool = False, upstreams: dict[str, str] | None = None) -> Result:
    """``condroute export --to TARGET --verify RULES --cases CASES``, as a function (for tests)."""
    t = target(target_name)
    compiled, m = read(rules_path, upstreams)
    wires = [wire(c.name, f"{cases_path}:{c.line}", c.request, m) for c in load_cases(cases_path)] if cases_path else []
    if t.document:
        return t.roundtrip(compiled, m, wires)
    return run(t, compiled, m, wires, allow_partial=allow_partial)
