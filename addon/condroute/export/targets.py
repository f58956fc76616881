"""The export targets, by name, and reading a rules file for an exporter."""
from __future__ import annotations

import importlib

from .. import model
from ..load.ctx import CompileCtx
from ..load.rulesfile import read_rules_file
from ..load.yamlpos import parse_bytes
from ..rules import Rules, load_model, load_rules_bytes
from .base import Target

# --to NAME -> the module (condroute.export.NAME) that defines TARGET
NAMES = ("envoy", "nginx", "haproxy", "httproute", "krakend")


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
