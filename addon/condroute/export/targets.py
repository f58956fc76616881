"""The export targets, by name, and reading a rules file for an exporter."""
from __future__ import annotations

import importlib
import importlib.util

from .. import model
from ..cli.cases import load_cases
from ..load.ctx import CompileCtx
from ..load.rulesfile import read_rules_file
from ..load.yamlpos import parse_bytes
from ..rules import Rules, load_model, load_rules_bytes
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


def read(path: str) -> tuple[Rules, model.Rules]:
    """A rules file compiled (every condition checked, as ``validate`` does; for ``--verify``'s own
    decisions) and as its model (what exporters read). Raises RulesError with located problems."""
    raw = read_rules_file(path).data
    compiled = load_rules_bytes(raw, path)
    root, text = parse_bytes(raw, path)
    return compiled, load_model(root, CompileCtx(path, text))


def read_model(path: str) -> model.Rules:
    return read(path)[1]


def verify_file(target_name: str, rules_path: str, cases_path: str | None = None,
                allow_partial: bool = False) -> Result:
    """``condroute export --to TARGET --verify RULES --cases CASES``, as a function (for tests)."""
    t = target(target_name)
    compiled, m = read(rules_path)
    wires = [wire(c.name, f"{cases_path}:{c.line}", c.request, m) for c in load_cases(cases_path)] if cases_path else []
    if t.document:
        return t.roundtrip(compiled, m, wires)
    return run(t, compiled, m, wires, allow_partial=allow_partial)
