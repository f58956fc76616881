"""``cel: EXPRESSION``: a CEL policy over the request (see ``condroute.cel``)."""
from __future__ import annotations

from ..cel.policy import compile_cel_condition
from ..load.ctx import CompileCtx
from ..node import Y
from .base import Cond, Kind, SubCompiler


def compile_cel(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    return compile_cel_condition(node, cc)


KINDS = [Kind("cel", 100, compile_cel, {"type": "string", "description": "a CEL expression that must evaluate to true"},
              "a CEL expression over the request")]
