"""The ``cel-python`` engine (celpy, pure Python, always installed) behind ``cel:`` conditions.

Compiled programs are celpy's parse trees, run by celpy's tree-walking ``Evaluator``, a new one
per evaluation (never celpy's ``CompiledRunner``, which keeps per-evaluation state on a shared
object and gives wrong results across threads). Where celpy departs from the CEL spec (and from
cel-expr-python), its operators, macros and a few functions are replaced (:mod:`.engine_celpy_spec`),
so that both engines give the same answers. CEL's ``matches()`` runs RE2 without its logging and
its unbounded pattern cache (:func:`_compile_regex`).

The engine is given plain Python values and the helper table (:mod:`.helpers`) and answers as
:mod:`.outcome` says.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable

from ..boundcache import BoundedCache
from .engine_celpy_spec import evaluator_class, spec_operators
from .helpers import Helper, HelperError
from .outcome import a_type, category

# celpy logs evaluation details (arguments included) at debug and, for some failures, error level.
# Those values can be cookies or tokens: keep celpy's own logging out of mitmproxy's log entirely.
_celpy_log = logging.getLogger("celpy")
_celpy_log.setLevel(logging.CRITICAL + 10)
_celpy_log.propagate = False

# compiled patterns that are literals of a loaded expression (see _compile_regex)
_REGEX_CACHE = BoundedCache(256, 8 << 20, 1 << 20)


def _regex_options() -> Any:
    import re2
    opts = re2.Options()
    opts.log_errors = False   # RE2 would print a bad pattern (request data, perhaps) to stderr through absl
    return opts


def _compile_regex(pattern: str, keep: bool) -> Any:
    """An RE2 regex for CEL's matches(). Never through ``re2.compile``: its lru_cache keeps 128
    patterns of any size with their compiled programs, and a pattern may come from the request.
    ``keep``: the pattern is written in an expression, so caching it is bounded by the rules."""
    import re2
    cache = _REGEX_CACHE
    rx = cache.get(pattern)
    if rx is None:
        rx = re2._Regexp(pattern, _regex_options())
        if keep:
            cache.put(pattern, rx, 16384 + 64 * len(pattern))   # RE2's own memory, estimated
    return rx


class CelPyEngine:
    name = "cel-python"

    def __init__(self, helpers: dict[str, Helper], note: Callable[[str], None],
                 is_literal: Callable[[str], bool] = lambda s: False):
        # celpy and re2 are imported when the engine is first needed, not with condroute (start-up
        # time for rules without CEL)
        import celpy  # noqa: F401 - imported for its side effects on celtypes
        from celpy import celtypes
        from celpy.adapter import json_to_cel
        from celpy.evaluation import Activation, CELEvalError, Evaluator

        self._celtypes = celtypes
        self._json_to_cel = json_to_cel
        self._Activation = Activation
        self._Evaluator = evaluator_class(Evaluator, CELEvalError)
        self._CELEvalError = CELEvalError
        self._note = note
        self.functions: dict[str, Callable] = {name: self._wrap(name, h.call, h.method, h.arity)
                                               for name, h in helpers.items()}
        self.functions["matches"] = self._matches_fn(is_literal)
        self.functions.update(spec_operators(celtypes, CELEvalError))

    def _matches_fn(self, is_literal: Callable[[str], bool]) -> Callable:
        """celpy's matches() with RE2 told not to log (see _compile_regex), and an error with a
        fixed text: celpy's own would carry RE2's message, which quotes the pattern."""
        import re2
        ct, err = self._celtypes, self._CELEvalError

        def matches(text: Any, pattern: Any) -> Any:
            if not isinstance(text, str) or not isinstance(pattern, str):
                return err("no such overload", TypeError, ())
            try:
                rx = _compile_regex(str(pattern), is_literal(pattern))
            except re2.error:
                return err("bad regular expression", ValueError, ())
            try:
                return ct.BoolType(rx.search(str(text)) is not None)
            except Exception:  # noqa: BLE001 - e.g. a lone surrogate that UTF-8 cannot carry
                return err("evaluation error", ValueError, ())

        return matches

    def _wrap(self, name: str, g: Callable | None, m: Callable | None, arity: int) -> Callable:
        ct = self._celtypes
        err = self._CELEvalError

        def call(*args: Any) -> Any:
            try:
                if len(args) == arity and g is not None:
                    out = g(*args)
                elif len(args) == arity + 1 and m is not None:
                    out = m(*args)
                else:
                    return err("no such overload", TypeError, ())
            except HelperError as e:
                self._note(str(e))
                return err(str(e), ValueError, ())
            except Exception:  # noqa: BLE001 - an error value, which || and && may still absorb
                return err("evaluation error", ValueError, ())
            if isinstance(out, bool):
                return ct.BoolType(out)
            if isinstance(out, str):
                return ct.StringType(out)
            return self.convert(out)

        call.__name__ = name
        return call

    def compile(self, text: str, tree: Any) -> Any:
        return tree  # the parse tree from celpy's own parser is the program

    def convert(self, value: Any) -> Any:
        """Plain Python -> celpy values (celpy's json_to_cel, without its slow typing-based checks)."""
        ct = self._celtypes
        t = type(value)
        if t is str:
            return ct.StringType(value)
        if t is dict:
            conv = self.convert
            return ct.MapType({conv(k): conv(v) for k, v in value.items()})
        if t is list or t is tuple:
            conv = self.convert
            return ct.ListType([conv(v) for v in value])
        if t is bool:
            return ct.BoolType(value)
        if t is int:
            return ct.IntType(value)
        if t is float:
            return ct.DoubleType(value)
        if value is None:
            return None
        return self._json_to_cel(value)   # datetimes, durations, subclasses

    def run(self, program: Any, variables: dict[str, Any]) -> tuple[str, Any]:
        conv = self.convert
        act = self._Activation(vars={k: conv(v) for k, v in variables.items()}, functions=self.functions)
        try:
            value = self._Evaluator(program, act).evaluate()
        except self._CELEvalError as e:
            return "error", _celpy_error(e)
        if isinstance(value, self._CELEvalError):
            return "error", _celpy_error(value)
        if isinstance(value, self._celtypes.BoolType):
            return ("true", None) if bool(value) else ("false", None)
        return "value", a_type(_celpy_type(value, self._celtypes))


def _celpy_type(v: Any, ct: Any) -> str:
    for t, n in ((ct.StringType, "string"), (ct.IntType, "int"), (ct.UintType, "uint"), (ct.DoubleType, "double"),
                 (ct.ListType, "list"), (ct.MapType, "map"), (ct.BytesType, "bytes"),
                 (ct.TimestampType, "timestamp"), (ct.DurationType, "duration")):
        if isinstance(v, t):
            return n
    return "null" if v is None else "value of another type"


_QUOTED = re.compile(r"""['"](.*)['"]""")


def _celpy_error(e: Any) -> tuple[str, str | None]:
    args = getattr(e, "args", ())
    msg = args[0] if args and isinstance(args[0], str) else ""
    low = msg.lower()
    if low == "no such key":
        key = None
        if len(args) > 2 and isinstance(args[2], tuple) and args[2] and isinstance(args[2][0], str):
            key = str(args[2][0])
        return "no such key", key
    if low.startswith("no such member"):
        m = _QUOTED.search(msg)
        return "no such key", m.group(1) if m else None
    return category(low), None

