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
_REGEX_CACHE = None   # compiled patterns that are literals of a loaded expression (see _matches)


def _regex_options() -> Any:
    import re2
    opts = re2.Options()
    opts.log_errors = False   # RE2 would print a bad pattern (request data, perhaps) to stderr through absl
    return opts


def _compile_regex(pattern: str, keep: bool) -> Any:
    """An RE2 regex for CEL's matches(). Never through ``re2.compile``: its lru_cache keeps 128
    patterns of any size with their compiled programs, and a pattern may come from the request.
    ``keep``: the pattern is written in an expression, so caching it is bounded by the rules."""
    global _REGEX_CACHE
    import re2
    cache = _REGEX_CACHE
    if cache is None:
        from ..boundcache import BoundedCache
        cache = _REGEX_CACHE = BoundedCache(256, 8 << 20, 1 << 20)
    rx = cache.get(pattern)
    if rx is None:
        rx = re2._Regexp(pattern, _regex_options())
        if keep:
            cache.put(pattern, rx, 16384 + 64 * len(pattern))   # RE2's own memory, estimated
    return rx


class CelPyEngine:
    name = "cel-python"

    def __init__(self, helpers: Helpers, note: Callable[[str], None],
                 is_literal: Callable[[str], bool] = lambda s: False):
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
        self.functions["matches"] = self._matches_fn(is_literal)
        self.functions.update(_spec_operators(celtypes, CELEvalError))

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
        return "value", _an(_celpy_type(value, self._celtypes))


def _spec_operators(ct: Any, Err: Any) -> dict[str, Callable]:
    """celpy's comparison and logical operators, replaced so that cel-python answers what the CEL
    spec (and cel-expr-python) answers: heterogeneous equality (``dyn(1) == 1.0`` and ``1 == 1u``
    are true, ``dyn(1) == 'a'`` is false, lists and maps compare element-wise that way), numeric
    ordering across int/uint/double (int vs double compares as doubles, like cel-cpp), ``in`` and
    map indexing with an equal number of another type (``{1: 'a'}[1.0]``), and ``||``/``&&`` that
    absorb errors without formatting them: celpy builds a message from the repr of both operands,
    which doubles with every error combined (30 errors in an exists() took minutes and gigabytes).
    The differential test in tests/test_cel_differential.py holds the two engines to the same answers."""
    B, I, U, D, L, M = ct.BoolType, ct.IntType, ct.UintType, ct.DoubleType, ct.ListType, ct.MapType  # noqa: E741
    ORDERED = (str, bytes, int, ct.TimestampType, ct.DurationType)   # int: bools here (numbers are above)
    KEY_TYPES = (str, int, float)                                     # map keys (bool is an int; double: lookup)
    overload = "no such overload"

    def num(x: Any) -> bool:   # (celpy's double + double is a plain float: numbers of any class count)
        return isinstance(x, (int, float)) and not isinstance(x, (B, bool))

    def kind(x: Any) -> type:
        return U if isinstance(x, U) else D if isinstance(x, float) else I

    def no_overload() -> Any:
        return Err(overload, TypeError, ())

    def key_of(m: Any, k: Any) -> Any:
        """The key of ``m`` equal to ``k`` (numbers across types), or _NOKEY."""
        if num(k):
            if isinstance(k, float):
                if not k.is_integer():
                    return _NOKEY
                k = int(k)
            for cand in (I(k), U(k) if k >= 0 else None):
                if cand is not None and cand in m:
                    return cand
            return _NOKEY
        try:
            return k if k in m else _NOKEY
        except TypeError:
            return _NOKEY

    def eq(a: Any, b: Any) -> Any:
        """True/False, or an error value when an operand is one."""
        if isinstance(a, Err):
            return a
        if isinstance(b, Err):
            return b
        if num(a) and num(b):
            if isinstance(a, float) or isinstance(b, float):
                return float(a) == float(b)
            return int(a) == int(b)
        if isinstance(a, L) and isinstance(b, L):
            if len(a) != len(b):
                return False
            for x, y in zip(a, b):
                r = eq(x, y)
                if r is not True:
                    return r
            return True
        if isinstance(a, M) and isinstance(b, M):
            if len(a) != len(b):
                return False
            for k, v in a.items():
                kb = key_of(b, k)
                if kb is _NOKEY:
                    return False
                r = eq(v, b[kb])
                if r is not True:
                    return r
            return True
        if a is None or b is None:
            return a is b
        if isinstance(a, B) != isinstance(b, B) or num(a) != num(b) or not (
                isinstance(a, type(b)) or isinstance(b, type(a))):
            return False                        # values of different types are not equal
        try:
            return bool(a == b)
        except TypeError:
            return False

    def f_eq(a: Any, b: Any) -> Any:
        r = eq(a, b)
        return B(r) if r is True or r is False else r

    def f_ne(a: Any, b: Any) -> Any:
        r = eq(a, b)
        return B(not r) if r is True or r is False else r

    def order(op: Callable[[Any, Any], bool]) -> Callable:
        def compare(a: Any, b: Any) -> Any:
            if isinstance(a, Err):
                return a
            if isinstance(b, Err):
                return b
            if num(a) and num(b):
                if isinstance(a, float) or isinstance(b, float):
                    return B(op(float(a), float(b)))
                return B(op(int(a), int(b)))
            for kind in ORDERED:           # (celpy's str + str is a plain str: compare by kind)
                if isinstance(a, kind) and isinstance(b, kind):
                    if isinstance(a, B) != isinstance(b, B):
                        return no_overload()
                    try:
                        return B(op(a, b))
                    except TypeError:
                        return no_overload()
            return no_overload()
        return compare

    def f_in(item: Any, container: Any) -> Any:
        if isinstance(item, Err):
            return item
        if isinstance(container, Err):
            return container
        if isinstance(container, M):
            if not isinstance(item, KEY_TYPES):       # (list, map, null, bytes, time: not a key type)
                return no_overload()
            return B(key_of(container, item) is not _NOKEY)
        if isinstance(container, L):
            err = None
            for x in container:
                r = eq(item, x)
                if r is True:
                    return B(True)
                if r is not False:
                    err = err or r
            return err if err is not None else B(False)
        return no_overload()

    def f_index(container: Any, key: Any) -> Any:
        if isinstance(container, M):
            if not isinstance(key, KEY_TYPES):
                raise TypeError("key type")
            k = key_of(container, key)
            if k is _NOKEY:
                raise KeyError(key)
            return container[k]
        if isinstance(container, L):
            if not num(key) or (isinstance(key, float) and not key.is_integer()):
                raise TypeError("index")
            i = int(key)
            if not 0 <= i < len(container):
                raise IndexError(i)
            return container[i]
        raise TypeError("index")

    def logic(absorbing: bool) -> Callable:
        def f(x: Any, y: Any) -> Any:
            if isinstance(x, B) and bool(x) is absorbing:
                return x
            if isinstance(y, B) and bool(y) is absorbing:
                return y
            if isinstance(x, B) and isinstance(y, B):
                return B(not absorbing)
            for v in (x, y):
                if isinstance(v, Err):
                    return v
            return no_overload()
        return f

    def arith(base: Callable) -> Callable:
        """int, uint and double do not mix in arithmetic (``1 + 1u``, ``2.5 + size(x)`` are errors,
        as in cel-cpp; celpy computed them), and ``+`` gives CEL values (celpy's str + str is a plain
        str, on which ``.contains()`` then failed)."""
        def f(a: Any, b: Any) -> Any:
            if isinstance(a, Err):
                return a
            if isinstance(b, Err):
                return b
            if num(a) or num(b):
                if not (num(a) and num(b)) or kind(a) is not kind(b):
                    return no_overload()
                r = base(a, b)
                return kind(a)(r) if r.__class__ is float or r.__class__ is int else r
            r = base(a, b)
            if r.__class__ is str:
                return ct.StringType(r)
            if r.__class__ is bytes:
                return ct.BytesType(r)
            if r.__class__ is list:
                return L(r)
            return r
        return f

    import operator

    from celpy.evaluation import base_functions
    ops = {name: arith(base_functions[name]) for name in ("_+_", "_-_", "_*_", "_/_", "_%_")}
    base_string = base_functions["string"]

    def f_string(v: Any) -> Any:
        if isinstance(v, float):
            return ct.StringType(_double_text(float(v)))
        return base_string(v)

    return {**ops, "string": f_string, "_==_": f_eq, "_!=_": f_ne, "_<_": order(operator.lt), "_<=_": order(operator.le),
            "_>_": order(operator.gt), "_>=_": order(operator.ge), "_in_": f_in, "_[_]": f_index,
            "_||_": logic(True), "_&&_": logic(False)}


_NOKEY = object()


def _double_text(x: float) -> str:
    """string(double) as cel-cpp (and Go's %g, shortest) writes it: 1.0 -> "1", 1234567.0 ->
    "1.234567e+06", 1e-07 -> "1e-07" (celpy wrote Python's repr: "1.0")."""
    import math
    from decimal import Decimal
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    t = Decimal(repr(abs(x))).normalize().as_tuple()
    digits = "".join(map(str, t.digits))
    nd, dp = len(digits), len(digits) + int(t.exponent)
    exp = dp - 1
    sign = "-" if x < 0 else ""
    if exp < -4 or exp >= 6:
        mant = digits[0] + ("." + digits[1:] if nd > 1 else "")
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= nd:
        return sign + digits + "0" * (dp - nd)
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def _evaluator_class(Evaluator: Any, CELEvalError: Any) -> Any:
    """celpy's Evaluator, except that indexing an error gives that error (``m['a'][0]`` without
    ``a`` is "no such key", not celpy's "no matching overload" for indexing an error value)."""

    from celpy import celtypes as ct
    macros = frozenset({"map", "filter", "all", "exists", "exists_one", "reduce", "min"})
    own_macros = frozenset({"map", "filter", "all", "exists", "exists_one"})

    class _Evaluator(Evaluator):  # type: ignore[misc, valid-type]
        def sub_evaluator(self, ast: Any) -> Any:
            return _Evaluator(ast, activation=self.activation)

        def member_dot_arg(self, tree: Any) -> Any:
            # celpy's own version builds a typing.Callable[...] on every call (a quarter of the
            # evaluation time); a method call that is not a macro is just this:
            name = tree.children[1].value
            if name in own_macros:
                return self._macro(tree, name)
            if name in macros:
                return super().member_dot_arg(tree)
            values = self.visit_children(tree)
            return self.method_eval(*values)

        def macro_has_eval(self, exprlist: Any) -> Any:
            """has(e.f) as the spec and cel-cpp say: an error when e is an error or not a map
            (celpy's own answers false for any error, e.g. has(jwt.org.team) without jwt.org)."""
            node = exprlist.children[0] if exprlist.children else None
            while node is not None and getattr(node, "data", None) != "member_dot" and len(node.children) == 1:
                node = node.children[0]
            if getattr(node, "data", None) != "member_dot":
                return super().macro_has_eval(exprlist)
            base = self.visit(node.children[0])
            if isinstance(base, CELEvalError):
                return base
            if not isinstance(base, ct.MapType):
                return CELEvalError("no such field", TypeError, ())
            return ct.BoolType(ct.StringType(node.children[1].value) in base)

        def _macro(self, tree: Any, name: str) -> Any:
            """The comprehension macros as cel-cpp runs them: all/exists stop at the first
            false/true and otherwise give an error met on the way (errors are absorbed only by a
            decisive value); exists_one, map and filter give the first error. celpy's own
            combine errors through celtypes.logical_or, whose message doubles per error."""
            rng = self.visit(tree.children[0])
            if isinstance(rng, CELEvalError):
                return rng
            if not isinstance(rng, (ct.ListType, ct.MapType)):
                return CELEvalError("no such overload", TypeError, ())
            var_tree, expr_tree = tree.children[2].children
            ident = next(iter(var_tree.find_data("ident"))).children[0].value
            nested = self.sub_evaluator(ast=expr_tree)

            def body(v: Any) -> Any:
                try:
                    return nested.evaluate({ident: v})
                except CELEvalError as ex:
                    return ex

            B = ct.BoolType
            if name == "map":
                out = []
                for v in list(rng):
                    r = body(v)
                    if isinstance(r, CELEvalError):
                        return r
                    out.append(r)
                return ct.ListType(out)
            err = None
            count = 0
            kept = []
            for v in list(rng):
                r = body(v)
                if not isinstance(r, B):
                    if name != "all" and name != "exists":
                        return r if isinstance(r, CELEvalError) else CELEvalError("no such overload", TypeError, ())
                    err = err or (r if isinstance(r, CELEvalError) else CELEvalError("no such overload", TypeError, ()))
                elif name == "all":
                    if not r:
                        return B(False)
                elif name == "exists":
                    if r:
                        return B(True)
                elif r:
                    count += 1
                    kept.append(v)
            if err is not None:
                return err
            if name == "all":
                return B(True)
            if name == "exists":
                return B(False)
            if name == "exists_one":
                return B(count == 1)
            return ct.ListType(kept)

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
        from .policy import ROOT_VARS  # the variables every expression may read
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
