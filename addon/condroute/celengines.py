"""The CEL engines behind ``cel:`` conditions, one interface for both.

- ``cel-python`` (celpy, pure Python, always installed): compiled programs are parse trees run by
  celpy's tree-walking ``Evaluator``, a new one per evaluation (never celpy's ``CompiledRunner``,
  which keeps per-evaluation state on a shared object and gives wrong results across threads).
- ``cel-expr-python`` (Google's C++ CEL, optional extra ``condroute[fast-cel]``): chosen
  automatically when installed, or with ``CONDROUTE_CEL_ENGINE``.

Both are given plain Python values (dicts, lists, strings, numbers, datetimes) and the same helper
functions, and both answer with ``(code, info)``: ``("true", None)``, ``("false", None)``,
``("value", "a string")`` or ``("error", (category, key))``. An engine's own error text is never
passed on: it may embed values from the request (celpy's embeds the whole activation).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable

# celpy logs evaluation details (arguments included) at debug and, for some failures, error level.
# Those values can be cookies or tokens: keep celpy's own logging out of mitmproxy's log entirely.
_celpy_log = logging.getLogger("celpy")
_celpy_log.setLevel(logging.CRITICAL + 10)
_celpy_log.propagate = False

ENGINE_ENV = "CONDROUTE_CEL_ENGINE"
ENGINE_NAMES = ("cel-python", "cel-expr-python")
_ALIASES = {"celpy": "cel-python", "cel-python": "cel-python", "python": "cel-python",
            "cel-expr-python": "cel-expr-python", "cel-expr": "cel-expr-python", "fast": "cel-expr-python",
            "cpp": "cel-expr-python"}


class HelperError(Exception):
    """Raised by a helper function (``geoIP()``, ``ipInCidr``): its text is safe to show."""


# helpers: name -> (global implementation or None, method implementation or None, arity of the global form)
Helpers = dict[str, tuple[Callable | None, Callable | None, int]]


def _an(type_name: str) -> str:
    return ("an " if type_name[:1] in "aeiou" else "a ") + type_name


# -- cel-python -------------------------------------------------------------------------------------
class CelPyEngine:
    name = "cel-python"

    def __init__(self, helpers: Helpers, note: Callable[[str], None]):
        import celpy  # noqa: F401 - imported for its side effects on celtypes
        from celpy import celtypes
        from celpy.adapter import json_to_cel
        from celpy.evaluation import Activation, CELEvalError, Evaluator

        self._celtypes = celtypes
        self._json_to_cel = json_to_cel
        self._Activation = Activation
        self._Evaluator = _evaluator_class(Evaluator, CELEvalError)
        self._CELEvalError = CELEvalError
        self._note = note
        self.functions: dict[str, Callable] = {name: self._wrap(name, g, m, n) for name, (g, m, n) in helpers.items()}

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
        return "value", _an(_celpy_type(value, self._celtypes))


def _evaluator_class(Evaluator: Any, CELEvalError: Any) -> Any:
    """celpy's Evaluator, except that indexing an error gives that error (``m['a'][0]`` without
    ``a`` is "no such key", not celpy's "no matching overload" for indexing an error value)."""

    macros = frozenset({"map", "filter", "all", "exists", "exists_one", "reduce", "min"})

    class _Evaluator(Evaluator):  # type: ignore[misc, valid-type]
        def sub_evaluator(self, ast: Any) -> Any:
            return _Evaluator(ast, activation=self.activation)

        def member_dot_arg(self, tree: Any) -> Any:
            # celpy's own version builds a typing.Callable[...] on every call (a quarter of the
            # evaluation time); a method call that is not a macro is just this:
            if tree.children[1].value in macros:
                return super().member_dot_arg(tree)
            values = self.visit_children(tree)
            return self.method_eval(*values)

        def member_index(self, tree: Any) -> Any:
            member, index = self.visit_children(tree)
            if isinstance(member, CELEvalError):
                return member
            if isinstance(index, CELEvalError):
                return index
            func = self.activation.resolve_function("_[_]")
            try:
                return func(member, index)
            except TypeError as ex:
                return CELEvalError("found no matching overload for _[_]", ex.__class__, (), tree=tree)
            except KeyError as ex:
                return CELEvalError("no such key", ex.__class__, ex.args, tree=tree)
            except IndexError as ex:
                return CELEvalError("invalid_argument", ex.__class__, (), tree=tree)

    return _Evaluator


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
    return _category(low), None


# -- cel-expr-python --------------------------------------------------------------------------------
class CelExprEngine:
    name = "cel-expr-python"

    # declared argument types of the helpers' global forms; the method forms take a map receiver
    # (ipInCidr: a string receiver)
    SIGNATURES = {"hasHeader": ("S", "B"), "getHeader": ("S", "S"), "hasCookie": ("S", "B"), "getCookie": ("S", "S"),
                  "containsCookie": ("SS", "B"), "hasQuery": ("S", "B"), "getQuery": ("S", "S"),
                  "ipInCidr": ("SS", "B"), "geoIP": ("", "D")}

    def __init__(self, helpers: Helpers, note: Callable[[str], None]):
        from cel_expr_python import cel

        self._cel = cel
        T = cel.Type
        self._BOOL, self._ERROR = T.BOOL, T.ERROR
        types = {"S": T.STRING, "B": T.BOOL, "D": T.DYN}
        map_t = T.Map(T.STRING, T.DYN)
        self._note = note
        decls = []
        for name, (g, m, _arity) in helpers.items():
            params, ret = self.SIGNATURES[name]
            overloads = []
            if g is not None:
                overloads.append(cel.Overload(f"{name}_global", types[ret], [types[p] for p in params],
                                              impl=self._wrap(g)))
            if m is not None:
                receiver = T.STRING if name == "ipInCidr" else map_t
                mparams = [receiver] + [types[p] for p in (params[1:] if name == "ipInCidr" else params)]
                overloads.append(cel.Overload(f"{name}_member", types[ret], mparams, is_member=True,
                                              impl=self._wrap(m)))
            decls.append(cel.FunctionDecl(name, overloads))
        from .celpolicy import ROOT_VARS  # the variables every expression may read
        variables = {v: (T.TIMESTAMP if v == "now" else T.DYN) for v in ROOT_VARS}
        self.env = cel.NewEnv(variables=variables, functions=decls)

    def _wrap(self, fn: Callable) -> Callable:
        def call(*args: Any) -> Any:
            try:
                return fn(*args)
            except HelperError as e:
                self._note(str(e))
                raise ValueError("helper error") from None
            except Exception:  # noqa: BLE001 - becomes an error value
                raise ValueError("evaluation error") from None
        return call

    def compile(self, text: str, tree: Any) -> Any:
        # Type checking is off: our own checker has already validated names, and both engines then
        # treat a type mismatch the same way, as an evaluation error (the backend is skipped).
        return self.env.compile(text, disable_check=True)

    def convert(self, value: Any) -> Any:
        return value

    def run(self, program: Any, variables: dict[str, Any]) -> tuple[str, Any]:
        r = program.eval(data=variables)
        v = r.value()
        if v is True:
            return "true", None
        t = r.type()
        if t == self._BOOL:
            return "false", None
        if t == self._ERROR:
            return "error", _cpp_error(v if isinstance(v, str) else "")
        name = t.name().lower()
        name = {"int64": "int", "uint64": "uint", "null_type": "null"}.get(name, name)
        name = name.split("(")[0].split("<")[0]
        return "value", _an(name)


_CPP_KEY = re.compile(r'not found in map\s*:\s*"(.*)"', re.IGNORECASE)


def _cpp_error(msg: str) -> tuple[str, str | None]:
    low = msg.lower()
    m = _CPP_KEY.search(msg)
    if m:
        return "no such key", m.group(1)
    if "no such key" in low or "key not found" in low:
        return "no such key", None
    return _category(low), None


def _category(low: str) -> str:
    """A fixed phrase for an engine's error message (which is never shown itself)."""
    if "overload" in low:
        return "no matching overload (wrong argument types)"
    if "by zero" in low:
        return "division by zero"
    if "return error for overflow" in low:          # celpy: any ValueError inside a function
        return "bad value for a conversion, or overflow"
    if "overflow" in low:
        return "integer overflow"
    if "index" in low or low == "invalid_argument":
        return "index out of range"
    if "select" in low or "no such field" in low or "does not support" in low:
        return "field selection on a value that is not a map"
    if "regular expression" in low or "regex" in low:
        return "bad regular expression"
    if "conver" in low or "parse" in low or "invalid" in low:
        return "bad value for a conversion"
    return "evaluation error"


# -- choosing ---------------------------------------------------------------------------------------
def available_engines() -> list[str]:
    out = ["cel-python"]
    try:
        import cel_expr_python.cel  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or not loadable on this platform
        pass
    else:
        out.append("cel-expr-python")
    return out


def default_engine_name() -> str:
    """``CONDROUTE_CEL_ENGINE`` if set (cel-python | cel-expr-python | auto), else the fastest installed."""
    want = os.environ.get(ENGINE_ENV, "").strip().lower()
    if want and want != "auto":
        name = _ALIASES.get(want)
        if name is None:
            raise ValueError(f"{ENGINE_ENV}={want!r}: expected cel-python, cel-expr-python or auto")
        return name
    return available_engines()[-1]


def canonical_name(name: str) -> str:
    n = _ALIASES.get(name.strip().lower())
    if n is None:
        raise ValueError(f"unknown CEL engine {name!r}: expected one of {', '.join(ENGINE_NAMES)}")
    return n
