"""The document targets' ``--verify`` on files: ``roundtrip(target_name, rules_path, cases_path)``.

``httproute`` and ``krakend`` have no binary to run: their export is imported again with
condroute's own importer and every case decided by both (``httproute_roundtrip``). This module
names the two targets, so that neither imports the other, and reads the files itself: an export
module cannot import ``export.targets`` (it discovers every module of the package)."""
from __future__ import annotations

from ..cli.cases import load_cases
from ..load.ctx import CompileCtx
from ..load.rulesfile import read_rules_file
from ..load.yamlpos import parse_bytes
from ..rules import load_model, load_rules_bytes
from . import httproute, krakend
from .verify import wire

DOCUMENTS = {"httproute": httproute.TARGET, "krakend": krakend.TARGET}


def roundtrip(target_name: str, rules_path: str, cases_path: str) -> tuple[int, int, list[str]]:
    """(passed, failed, lines) of the round trip of ``rules_path`` to ``target_name`` (httproute |
    krakend) over every case of ``cases_path``: the refusals first in ``lines``, then a line per
    skipped (decided by a part not exported: neither passed nor failed) or failed case."""
    raw = read_rules_file(rules_path).data
    compiled = load_rules_bytes(raw, rules_path)
    root, text = parse_bytes(raw, rules_path)
    m = load_model(root, CompileCtx(rules_path, text))
    wires = [wire(c.name, f"{cases_path}:{c.line}", c.request, m) for c in load_cases(cases_path)]
    res = DOCUMENTS[target_name].roundtrip(compiled, m, wires)
    return res.passed, res.failed, list(res.refused) + list(res.lines)
