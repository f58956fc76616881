"""``method: MATCHER``: the request method (compared upper-case)."""
from __future__ import annotations

from ..load.ctx import CompileCtx
from ..node import Y
from .base import MATCHER_SCHEMA, Cond, Kind, SubCompiler, single_value


def compile_method(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    return single_value("method", lambda r: r.method, node, cc, upper=True)


# in a route's match, `method`/`methods` is match's own key (a list of methods)
KINDS = [Kind("method", 70, compile_method, MATCHER_SCHEMA, "the request method", in_match=False)]
