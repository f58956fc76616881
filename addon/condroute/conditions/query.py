"""``query: {NAME: MATCHER}``: query-string parameters."""
from __future__ import annotations

from ..load.ctx import CompileCtx
from ..node import Y
from ..redact import query_shower
from .base import Cond, Kind, Matcher, SubCompiler, ValuesCond, named_schema, named_values


def _cond(name: str, m: Matcher, cc: CompileCtx) -> Cond:
    return ValuesCond(f"query {name}", lambda r, e: r.query.get(name, ()), m, query_shower(name))


def compile_query(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    return named_values(node, cc, "query", _cond)


KINDS = [Kind("query", 30, compile_query, named_schema("query parameter"), "query parameters")]
