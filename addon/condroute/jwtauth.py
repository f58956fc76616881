"""JWT conditions and settings (issue: identity-aware routing). Placeholder until implemented."""
from __future__ import annotations

from typing import Any

from .compile_ctx import CompileCtx
from .yamlpos import Y


def compile_jwt_settings(node: Y | None, cc: CompileCtx) -> Any:
    if node is not None:
        cc.error(node, "settings.jwt is not supported yet")
    return None


def compile_jwt_condition(node: Y, cc: CompileCtx):
    cc.error(node, "jwt conditions are not supported yet")
    return None


def claim_values(req, env, claim: str) -> list:
    return []
