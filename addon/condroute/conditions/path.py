"""``path: MATCHER``: the request path, normalised, without the query string."""
from __future__ import annotations

from ..load.ctx import CompileCtx
from ..node import Y
from .base import MATCHER_SCHEMA, Cond, Kind, SubCompiler, single_value


def compile_path(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    return single_value("path", lambda r: r.path, node, cc)


# in a route's match, `path` is match's own key (a template such as /users/{id})
KINDS = [Kind("path", 90, compile_path, MATCHER_SCHEMA, "the request path", in_match=False)]
