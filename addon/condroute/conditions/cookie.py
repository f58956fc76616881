"""``cookie: {NAME: MATCHER}``: cookies, parsed from the Cookie header."""
from __future__ import annotations

from ..load.ctx import CompileCtx
from ..node import Y
from ..redact import cookie_shower
from .base import Cond, Kind, Matcher, SubCompiler, ValuesCond, jwt_settings, named_schema, named_values


def _cond(name: str, m: Matcher, cc: CompileCtx) -> Cond:
    return ValuesCond(f"cookie {name}", lambda r, e: r.cookies.get(name, ()), m, cookie_shower(name, jwt_settings(cc)))


def compile_cookie(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    return named_values(node, cc, "cookie", _cond)


KINDS = [Kind("cookie", 20, compile_cookie, named_schema("cookie (parsed from Cookie)"), "cookies")]
