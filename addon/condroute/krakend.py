"""KrakenD configuration import (issue: traffic management). Placeholder until implemented."""
from __future__ import annotations

from .compile_ctx import CompileCtx
from .yamlpos import Y


def import_krakend(root: Y, cc: CompileCtx):
    cc.error(root, "KrakenD configuration files are not supported yet")
    cc.raise_if_errors()
