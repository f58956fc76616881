"""``host: MATCHER``: the host the request goes to (see the README on host exactness)."""
from __future__ import annotations

from ..load.ctx import CompileCtx
from ..node import Y
from .base import MATCHER_SCHEMA, Cond, Kind, SubCompiler, single_value


def compile_host(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    return single_value("host", lambda r: r.host, node, cc)


# in a route's match, `host` is match's own key (hosts and *.wildcards)
KINDS = [Kind("host", 80, compile_host, MATCHER_SCHEMA, "the request's host", in_match=False)]
