"""CEL policy conditions (issue: identity-aware routing). Placeholder until implemented."""
from __future__ import annotations

from .compile_ctx import CompileCtx
from .yamlpos import Y


def compile_cel_condition(node: Y, cc: CompileCtx):
    cc.error(node, "cel conditions are not supported yet")
    return None
