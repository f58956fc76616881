"""What the export tests share: the shipped rules files and their golden cases, the imported
fixtures, a gateway's binary (or a skip with the reason) and a file verified on a gateway."""
from __future__ import annotations

import glob
import os
import re

import pytest

from condroute.export import ir
from condroute.export.targets import target, verify_file
from condroute.export.verify import Result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AT = ir.Where("t.yaml", 1, 1)
SHIPPED = sorted(f for f in glob.glob(os.path.join(ROOT, "rules", "*.yaml"))
                 + glob.glob(os.path.join(ROOT, "rules", "recipes", "*.yaml")) if not f.endswith(".cases.yaml"))
# the HTTPRoute and Istio fixtures of the import tests, each with its cases
IMPORTED = sorted(p for p in glob.glob(os.path.join(ROOT, "tests", "fixtures", "*", "*.rules.yaml"))
                  if os.path.exists(p.replace(".rules.yaml", ".cases.yaml")))


def cases_of(path: str) -> str | None:
    """A rules file's golden cases: X.cases.yaml beside X.yaml (X.rules.yaml: X.cases.yaml)."""
    c = path.replace(".rules.yaml", ".cases.yaml") if path.endswith(".rules.yaml") else path[:-5] + ".cases.yaml"
    return c if os.path.exists(c) else None


def binary_or_skip(name: str) -> str:
    exe, why = target(name).binary()
    if exe is None:
        pytest.skip(why)
    return exe


def assert_verifies(name: str, path: str) -> Result:
    """``export --to NAME --verify PATH --cases ... --allow-partial``: no difference, and anything
    skipped is skipped because a part was refused, each refusal located in a rules file."""
    binary_or_skip(name)
    r = verify_file(name, path, cases_of(path), allow_partial=True)
    assert r.failed == 0, "\n".join(r.lines)
    assert r.passed + r.skipped > 0
    refused_skips = [ln for ln in r.lines if ln.startswith("skip") and "was not exported" in ln]
    if refused_skips:
        assert r.refused and all(re.match(rf".+\.yaml:\d+:\d+: not exported to {name}: ", x) for x in r.refused)
    return r
