"""The iteration budget of a ``cel:`` expression: how many comprehension iterations an evaluation
can take, bounded when the rules load and, when it depends on the request, measured per request.

Every evaluation blocks the proxy's event loop, and cel-python spends ~0.3 ms per iteration, so a
100x100 comprehension held all traffic for seconds, while cel-expr-python stops at 10,000
iterations with an error: the same rules routed differently depending on the engine installed.
Both engines are now held to one budget, checked by condroute itself, identically:
- at load, the worst case is a polynomial in U, the size of the largest list or map the request
  gives the expression (headers, values of a header, query parameters, cookies, claims); its
  constant part comes from literal lists;
- U^2 or worse (a comprehension over request data inside another one) is a load error, and so is
  a worst case above the budget on the smallest request;
- per request, when the polynomial has a U term, U is measured before the cache is consulted, and
  above the budget the policy does not hold ("too costly for this request"), without evaluating.
The budget is far below cel-expr-python's own limit (10,000), which therefore never decides.
"""
from __future__ import annotations

from typing import Any, Callable

from ..request import RequestView
from .check import Analysis
from .parse import N
from .vocabulary import ROOT_VARS

CEL_MAX_ITERATIONS = 256
GEO_RECORD_BOUND = 64      # the largest list or map in a GeoIP record (names in ~10 languages)

Poly = tuple  # (constant, coefficient of U, True when U^2 or worse) - a bound, never an estimate

_P0: Poly = (0, 0, False)
_PU: Poly = (0, 1, False)
NO_COST = _P0     # no iterations


def _padd(a: Poly, b: Poly) -> Poly:
    return (a[0] + b[0], a[1] + b[1], a[2] or b[2])


def _pmax(a: Poly, b: Poly) -> Poly:
    return (max(a[0], b[0]), max(a[1], b[1]), a[2] or b[2])


def _pmul(a: Poly, b: Poly) -> Poly:
    nz_a, nz_b = a != _P0, b != _P0
    big = (a[1] > 0 and b[1] > 0) or (a[2] and nz_b) or (b[2] and nz_a)
    return (a[0] * b[0], a[0] * b[1] + a[1] * b[0], big)


# roots whose value holds no list or map
_SCALAR_ROOTS = frozenset({"req_method", "req_path", "client_ip", "now"})
_COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "map", "filter"})


class CostCheck:
    """Walks the tree once: ``size(n)`` bounds the largest list or map reachable in n's value and
    ``iters(n)`` the comprehension iterations of evaluating n (worst case, no short-circuit)."""

    def __init__(self, an: Analysis):
        self.an = an
        self.reported = False

    def _report(self, n: N, cost: Poly) -> None:
        if self.reported:
            return
        self.reported = True
        if cost[2]:
            self.an.error(n, "cel: this comprehension goes over request data and, for each item, over request "
                             "data again: its cost grows with the square of the request size (the limit is "
                             f"{CEL_MAX_ITERATIONS} iterations per evaluation); compare with a literal list instead")
        else:
            self.an.error(n, f"cel: this comprehension takes up to {cost[0] + cost[1]} iterations, more than "
                             f"the {CEL_MAX_ITERATIONS} an evaluation may take")

    def check(self, root: N) -> Poly:
        sz, it = self.walk(root, {})
        if not self.reported and (it[2] or it[0] + it[1] > CEL_MAX_ITERATIONS):
            self._report(root, it)
        return it

    def walk(self, n: N, scope: dict) -> tuple[Poly, Poly]:
        """(size bound of n's value, iterations of evaluating n)."""
        k = n.k
        if k == "lit" or k == "obj":
            return _P0, _P0
        if k == "id":
            if n.a in scope:
                return scope[n.a], _P0
            if n.a in ROOT_VARS:
                return (_P0 if n.a in _SCALAR_ROOTS else _PU), _P0
            return _P0, _P0          # a type name
        if k in ("sel", "idx"):
            s, it = self.walk(n.a, scope)
            if k == "idx":
                _, it2 = self.walk(n.b, scope)
                it = _padd(it, it2)
            return s, it             # a part of a value is no larger than its largest part
        if k == "list" or k == "map":
            items = n.a if k == "list" else [x for kv in n.a for x in kv]
            size: Poly = (len(n.a), 0, False)
            it = _P0
            for c in items:
                cs, ci = self.walk(c, scope)
                size, it = _pmax(size, cs), _padd(it, ci)
            return size, it
        if k == "op":
            sizes, it = [], _P0
            for c in n.b:
                cs, ci = self.walk(c, scope)
                sizes.append(cs)
                it = _padd(it, ci)
            if n.a == "+":               # list concatenation adds sizes
                return _padd(sizes[0], sizes[1]), it
            if n.a == "?:":
                return _pmax(sizes[1], sizes[2]), it
            return _P0, it
        if k == "call":
            name, target, args = n.a, n.b, n.c
            if target is not None and name in _COMPREHENSIONS and len(args) == 2 and args[0].k == "id":
                rs, ri = self.walk(target, scope)
                bs, bi = self.walk(args[1], {**scope, args[0].a: rs})
                it = _padd(ri, _pmul(rs, _padd((1, 0, False), bi)))
                if not self.reported and (it[2] or it[0] + it[1] > CEL_MAX_ITERATIONS):
                    self._report(n, it)
                if name == "map":
                    return _pmax(rs, bs), it
                return (rs if name == "filter" else _P0), it
            it, sizes = _P0, []
            for c in ([target] if target is not None else []) + list(args):
                cs, ci = self.walk(c, scope)
                sizes.append(cs)
                it = _padd(it, ci)
            if target is None and name == "geoIP":
                return (GEO_RECORD_BOUND, 0, False), it
            if target is None and name == "dyn" and sizes:
                return sizes[0], it
            return _P0, it
        return _P0, _P0   # pragma: no cover


def _collection_bound(v: Any, limit: int) -> int:
    """The size of the largest list or map inside a JSON value (claims), iteratively."""
    best = 0
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            best = max(best, len(x))
            stack.extend(x.values())
        elif isinstance(x, list):
            best = max(best, len(x))
            stack.extend(x)
        if best > limit:
            break
    return best


def _u_headers(r: RequestView, e: Any) -> int:
    n = len(r.headers)                    # >= the header names, and >= the values of any one header
    for v in r.header_map.get("cookie", ()):
        n = max(n, v.count(";") + 1)      # request.cookies, getCookie's receivers
    return n


def _u_query(r: RequestView, e: Any) -> int:
    return r.query_string.count("&") + 1 if r.query_string else 0


def request_size_measures(roots: set[str] | frozenset[str], token: Callable[[RequestView, Any], Any] | None
                          ) -> tuple[Callable[[RequestView, Any], int], ...]:
    """The functions (req, env) -> U that measure, per request, the lists and maps an expression
    reading ``roots`` can iterate over (U is their maximum). ``token``: the token lookup, when a root
    is jwt or JWT (see IdentityLookups)."""
    def u_claims(r: RequestView, e: Any) -> int:
        return r.memo("cel_u_claims", lambda: _collection_bound(token(r, e).claims, CEL_MAX_ITERATIONS))

    of_root: dict[str, Callable[[RequestView, Any], int]] = {
        "req_headers": _u_headers, "request": lambda r, e: max(_u_headers(r, e), _u_query(r, e)),
        "req_querystring": _u_query, "req_params": lambda r, e: len(r.params),
        "jwt": u_claims, "JWT": u_claims,
    }
    return tuple(of_root[r] for r in sorted(roots) if r in of_root)
