"""``header: {NAME: MATCHER}``: request headers (names case-insensitive; every value is tested)."""
from __future__ import annotations

from ..load.ctx import CompileCtx
from ..node import Y
from ..redact import header_shower
from .base import Cond, Kind, Matcher, SubCompiler, ValuesCond, jwt_settings, named_schema, named_values


def _cond(name: str, m: Matcher, cc: CompileCtx) -> Cond:
    low = name.lower()
    return ValuesCond(f"header {name}", lambda r, e: r.header(low), m, header_shower(low, jwt_settings(cc)))


def compile_header(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    return named_values(node, cc, "header", _cond)


KINDS = [Kind("header", 10, compile_header, named_schema("request header (names are case-insensitive)"),
              "request headers")]
