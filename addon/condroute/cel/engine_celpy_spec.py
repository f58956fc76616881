"""Where celpy departs from the CEL spec (and from cel-expr-python), the replacements the
cel-python engine (:mod:`.engine_celpy`) runs with: the comparison, arithmetic and logical
operators, indexing, ``in``, ``string(double)`` (:func:`spec_operators`), and the comprehension
macros, ``has()`` and indexing of errors (:func:`evaluator_class`). tests/test_cel_differential.py
holds the two engines to the same answers.
"""
from __future__ import annotations

import math
import operator
from decimal import Decimal
from typing import Any, Callable


def spec_operators(ct: Any, Err: Any) -> dict[str, Callable]:
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

    from celpy.evaluation import base_functions   # (celpy: imported by CelPyEngine, which calls this)
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


def evaluator_class(Evaluator: Any, CELEvalError: Any) -> Any:
    """celpy's Evaluator, except that indexing an error gives that error (``m['a'][0]`` without
    ``a`` is "no such key", not celpy's "no matching overload" for indexing an error value)."""

    from celpy import celtypes as ct   # (celpy: imported by CelPyEngine, which calls this)
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
