"""Checking a parsed ``cel:`` expression, and finding exactly which inputs it reads.

The checker walks the tree of :mod:`.parse` once. It reports, located: an unknown variable,
function or method (with a suggestion), a wrong number of arguments, a field ``request`` does
not have, ``has()`` without a field selection, a bad literal CIDR, message construction. And it
records what the expression reads, as *atoms* (see :class:`Analysis`): ``req_headers['X-Ab']``
reads one header, ``jwt.role`` one claim, ``hasCookie('uid')`` one cookie; a bare
``req_headers`` reads them all. A policy's result cache is keyed by exactly those inputs.
"""
from __future__ import annotations

import difflib
from typing import Any

from .helpers import HELPERS, Helper, is_cidr
from .parse import N, string_literal as _str_lit
from .vocabulary import MACROS, REQUEST_FIELDS, ROOT_VARS, STD_GLOBAL, STD_METHODS, TYPE_NAMES


class Analysis:
    """What the checker found: problems (line, col, message), the inputs the expression reads
    (atoms), the variables to build (roots), and the string literals and names written in it.

    Atoms: ``("h", name)`` one header (lower-case name), ``("H",)`` all headers, ``("c", name)``
    one cookie, ``("q", name)`` one query parameter, ``("Q",)`` the whole query string, ``("P",)``
    the route parameters, ``("method",)``, ``("scheme",)``, ``("host",)``, ``("port",)``,
    ``("path",)``, ``("ip",)`` the client IP, ``("j", name)`` one claim, ``("J",)`` all claims,
    ``("now",)`` the time to the second."""

    def __init__(self) -> None:
        self.errors: list[tuple[int, int, str]] = []
        self.atoms: set[tuple] = set()
        self.roots: set[str] = set()
        self.literals: set[str] = set()
        self.uses_geo: N | None = None
        self.uses_jwt: N | None = None

    def error(self, n: N, msg: str) -> None:
        self.errors.append((n.line, n.col, msg))


_WHOLE = {"req_headers": [("H",)], "req_method": [("method",)], "req_path": [("path",)],
          "req_querystring": [("Q",)], "req_params": [("P",)], "client_ip": [("ip",)], "jwt": [("J",)],
          "JWT": [("J",)], "now": [("now",)],
          "request": [("method",), ("scheme",), ("host",), ("port",), ("path",), ("Q",), ("H",)]}
_REQUEST_FIELD_ATOM = {"method": ("method",), "scheme": ("scheme",), "host": ("host",), "port": ("port",),
                       "path": ("path",), "query": ("Q",), "headers": ("H",), "cookies": ("h", "cookie")}


def _suggest(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class Checker:
    def __init__(self, an: Analysis):
        self.an = an

    # -- recognised reads of a root variable --------------------------------------------------------
    def _root(self, n: N, scope: frozenset) -> str | None:
        if n.k == "id" and n.a in ROOT_VARS and n.a not in scope:
            return n.a
        return None

    def _request_part(self, n: N, scope: frozenset, part: str) -> bool:
        """Is ``n`` ``request.<part>`` (or ``request['<part>']``)?"""
        if n.k == "sel" and n.b == part or n.k == "idx" and _str_lit(n.b) == part:
            return self._root(n.a, scope) == "request"
        return False

    def _use(self, root: str, atoms: list[tuple], n: N) -> None:
        an = self.an
        an.roots.add(root)
        an.atoms.update(atoms)
        if root in ("jwt", "JWT"):
            an.uses_jwt = an.uses_jwt or n

    def _keyed(self, n: N, scope: frozenset) -> bool:
        """``X.key`` or ``X['key']`` where X is a root map, request.headers or request.cookies:
        record the one input it reads. False when ``n`` is not such a read."""
        key = n.b if n.k == "sel" else _str_lit(n.b)
        if key is None:
            return False
        base = n.a
        root = self._root(base, scope)
        if root == "req_headers":
            self._use(root, [("h", key.lower())], base)
        elif root == "req_querystring":
            self._use(root, [("q", key)], base)
        elif root in ("jwt", "JWT"):
            self._use(root, [("j", key)], base)
        elif root == "req_params":
            self._use(root, [("P",)], base)
        elif root == "request":
            if key not in REQUEST_FIELDS:
                self.an.error(n, f"request has no field {key!r} (fields: {', '.join(REQUEST_FIELDS)})"
                              + _suggest(key, REQUEST_FIELDS))
                return True
            self._use(root, [_REQUEST_FIELD_ATOM[key]], base)
        elif self._request_part(base, scope, "headers"):
            self._use("request", [("h", key.lower())], n)
        elif self._request_part(base, scope, "cookies"):
            self._use("request", [("c", key)], n)
        else:
            return False
        return True

    def _container_key(self, cont: N, key: str, scope: frozenset) -> bool:
        """``'key' in X``: the same single input as X['key']."""
        if self._root(cont, scope) == "request":
            return False
        return self._keyed(N("idx", cont, N("lit", key, "string"), line=cont.line, col=cont.col), scope)

    def _helper_receiver(self, h: Helper, target: N, scope: frozenset) -> str | None:
        """For ``X.hasHeader(...)`` and friends, the variable whose part X is: req_headers or
        request (request.headers) for the header and cookie helpers, req_querystring for the query
        helpers; None when X is something else."""
        root = self._root(target, scope)
        if h.reads == "header" or h.reads == "cookie":
            if root == "req_headers":
                return "req_headers"
            if self._request_part(target, scope, "headers"):
                return "request"
        if h.reads == "query" and root == "req_querystring":
            return "req_querystring"
        return None

    def _helper_atoms(self, h: Helper, args: list[N]) -> list[tuple]:
        lit = _str_lit(args[0]) if args else None
        if h.reads == "header":
            return [("h", lit.lower())] if lit is not None else [("H",)]
        if h.reads == "cookie":
            return [("c", lit)] if lit is not None else [("h", "cookie")]
        if h.reads == "query":
            return [("q", lit)] if lit is not None else [("Q",)]
        return []

    # -- the walk -----------------------------------------------------------------------------------
    def visit(self, n: N, scope: frozenset = frozenset()) -> None:
        an = self.an
        k = n.k
        if k == "lit":
            if n.b == "string":
                an.literals.add(n.a)
            return
        if k == "id":
            name = n.a
            if name in scope or name in TYPE_NAMES:
                return
            if name in ROOT_VARS:
                self._use(name, _WHOLE[name], n)
                return
            if name in HELPERS or name in STD_GLOBAL:
                an.error(n, f"{name} is a function: call it, as in {name}(...)")
                return
            an.error(n, f"unknown variable {name!r}; the variables are {', '.join(ROOT_VARS)}"
                     + _suggest(name, ROOT_VARS + tuple(scope)))
            return
        if k in ("sel", "idx"):
            if k == "sel":
                an.literals.add(n.b)
            elif _str_lit(n.b) is not None:
                an.literals.add(n.b.a)
            if self._keyed(n, scope):
                return
            self.visit(n.a, scope)
            if k == "idx":
                self.visit(n.b, scope)
            return
        if k == "op":
            if n.a == "in" and len(n.b) == 2:
                key = _str_lit(n.b[0])
                if key is not None and self._container_key(n.b[1], key, scope):
                    an.literals.add(key)
                    return
            for c in n.b:
                self.visit(c, scope)
            return
        if k == "list":
            for c in n.a:
                self.visit(c, scope)
            return
        if k == "map":
            for kk, vv in n.a:
                self.visit(kk, scope)
                self.visit(vv, scope)
            return
        if k == "obj":
            an.error(n, "message construction (Type{field: ...}) is not supported here")
            return
        if k == "call":
            self.call(n, scope)
            return
        raise AssertionError(k)  # pragma: no cover

    def call(self, n: N, scope: frozenset) -> None:
        an = self.an
        name, target, args = n.a, n.b, n.c
        nargs = len(args)
        h = HELPERS.get(name)
        if target is None:
            if h is not None:
                want = h.arity
                if nargs != want:
                    an.error(n, f"{name}() takes {want} argument{'s' * (want != 1)}, not {nargs}")
                    return
                if h.reads == "geo":          # geoIP(): the client's address
                    an.uses_geo = an.uses_geo or n
                    an.atoms.add(("ip",))
                    return
                if name == "ipInCidr":
                    self._check_cidr(args[1])
                    for a in args:
                        self.visit(a, scope)
                    return
                an.atoms.update(self._helper_atoms(h, args))
                for a in args:
                    if _str_lit(a) is None:
                        self.visit(a, scope)
                    else:
                        an.literals.add(a.a)
                return
            if name in STD_GLOBAL:
                if nargs not in STD_GLOBAL[name]:
                    an.error(n, f"{name}() takes {min(STD_GLOBAL[name])} argument(s), not {nargs}")
                    return
                if name == "has" and args[0].k != "sel":
                    an.error(args[0], "has() takes a field selection, as in has(jwt.role) or has(request.headers.x)")
                    return
                for a in args:
                    self.visit(a, scope)
                return
            if name in MACROS or name in STD_METHODS:
                an.error(n, f"{name}() is a method: write it after a value, as in x.{name}(...)")
                return
            an.error(n, f"unknown function {name!r}" + _suggest(name, list(HELPERS) + list(STD_GLOBAL)))
            return
        # method form
        if name in MACROS:
            if nargs != MACROS[name]:
                an.error(n, f"{name}() takes {MACROS[name]} arguments (a variable name and an expression), not {nargs}")
                return
            var = args[0]
            if var.k != "id":
                an.error(var, f"the first argument of {name}() must be a variable name")
                return
            self.visit(target, scope)
            self.visit(args[1], scope | {var.a})
            return
        if h is not None:
            want = h.arity
            if h.method is None:
                an.error(n, f"{name}() is a function, not a method: write {name}()")
                return
            if name == "ipInCidr":
                if nargs != 1:
                    an.error(n, f"ip.ipInCidr() takes 1 argument (a CIDR), not {nargs}")
                    return
                self._check_cidr(args[0])
                self.visit(target, scope)
                self.visit(args[0], scope)
                return
            if nargs != want:
                an.error(n, f"{name}() takes {want} argument{'s' * (want != 1)}, not {nargs}")
                return
            recv = self._helper_receiver(h, target, scope)
            if recv is not None:
                self._use(recv, self._helper_atoms(h, args), n)
                for a in args:
                    if _str_lit(a) is None:
                        self.visit(a, scope)
                    else:
                        an.literals.add(a.a)
                return
            self.visit(target, scope)
            for a in args:
                self.visit(a, scope)
            return
        if name in STD_METHODS:
            if nargs not in STD_METHODS[name]:
                an.error(n, f".{name}() takes {min(STD_METHODS[name])} argument(s), not {nargs}")
                return
            self.visit(target, scope)
            for a in args:
                self.visit(a, scope)
            return
        an.error(n, f"unknown method {name!r}"
                 + _suggest(name, list(STD_METHODS) + list(MACROS) + list(HELPERS)))

    def _check_cidr(self, n: N) -> None:
        text = _str_lit(n)
        if text is not None and not is_cidr(text):
            self.an.error(n, f"ipInCidr: {text!r} is not a CIDR such as 10.0.0.0/8")
