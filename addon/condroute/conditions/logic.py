"""``any: [...]``, ``all: [...]``, ``not: {...}``: conditions made of conditions. (Three kinds in
one module: they are one idea, and each is a few lines.)"""
from __future__ import annotations

from ..load.ctx import CompileCtx
from ..node import Y
from .base import AllCond, AnyCond, Cond, Kind, NotCond, SubCompiler


def _list(key: str, node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    if not cc.expect_list(node, key):
        return None
    if not node.v:
        cc.error(node, f"{key}: an empty list")
    inner = [sub(n, f"{key} item") for n in node.v]
    ok = [i for i in inner if i is not None]
    if ok and len(ok) == len(inner):
        return AnyCond(ok) if key == "any" else AllCond(ok)
    return None


def compile_any(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    return _list("any", node, cc, sub)


def compile_all(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    return _list("all", node, cc, sub)


def compile_not(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    inner = sub(node, "not")
    return NotCond(inner) if inner is not None else None


_LIST = {"type": "array", "items": {"$ref": "#/$defs/condition"}, "minItems": 1}
KINDS = [
    Kind("any", 110, compile_any, {**_LIST, "description": "at least one holds"}, "at least one holds", nests=True),
    Kind("all", 120, compile_all, {**_LIST, "description": "every one holds"}, "every one holds", nests=True),
    Kind("not", 130, compile_not, {"$ref": "#/$defs/condition"}, "does not hold", nests=True),
]
