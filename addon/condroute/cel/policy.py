"""``cel:`` conditions: CEL policies, KrakenD's vocabulary included.

At load, each expression is parsed (celpy's grammar) and checked by our own walk over the tree:
a syntax error, an unknown variable or function, a wrong number of arguments or a bad literal CIDR
is a load error with its line and column. The walk also finds exactly which inputs the expression
reads (``req_headers['X-Ab']`` reads one header, ``jwt.role`` one claim, ``hasCookie('uid')`` one
cookie; a bare ``req_headers`` reads them all), and the program is compiled once by the engine
(see :mod:`condroute.celengines`) and shared by every condition with the same text.

Per request, those inputs are read into a key; a result already known for that key (bounded
cache, per loaded rules) is returned without evaluating. Otherwise only the variables the
expression reads are built, the engine evaluates, and the outcome is remembered. The result is a
pure function of those inputs (CEL has no side effects; ``now`` is the request time to the second
and is part of the key), so a cached answer is always the answer evaluation would give.

Anything but the boolean ``true`` means "does not hold"; the reason names the expression and a
fixed category ("is false", "could not be evaluated: no such key "X-Ab"", ...) and never a value
from the request: a key is named only when it is written in the expression itself.
"""
from __future__ import annotations

import datetime
import difflib
import ipaddress
import threading
import time
from typing import Any, Callable

from ..boundcache import BoundedCache
from .engines import HelperError, available_engines, canonical_name, default_engine_name
from ..load.ctx import CompileCtx, kind
from ..conditions.base import Cond
from ..request import RequestView, parse_cookie_header, parse_ip
from ..load.yamlpos import Y

# variables an expression may read
ROOT_VARS = ("req_headers", "req_method", "req_path", "req_querystring", "req_params", "request", "client_ip",
             "jwt", "JWT", "now")
REQUEST_FIELDS = ("method", "scheme", "host", "port", "path", "query", "headers", "cookies")
TYPE_NAMES = frozenset({"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"})

# helper functions: name -> arity of the global form (the method form has a receiver in front)
HELPER_ARITY = {"hasHeader": 1, "getHeader": 1, "hasCookie": 1, "getCookie": 1, "containsCookie": 2,
                "hasQuery": 1, "getQuery": 1, "ipInCidr": 2, "geoIP": 0}
HEADER_HELPERS = frozenset({"hasHeader", "getHeader"})
COOKIE_HELPERS = frozenset({"hasCookie", "getCookie", "containsCookie"})
QUERY_HELPERS = frozenset({"hasQuery", "getQuery"})

# the standard CEL functions both engines support: name -> allowed argument counts
STD_GLOBAL = {"size": {1}, "int": {1}, "uint": {1}, "double": {1}, "string": {1}, "bytes": {1}, "bool": {1},
              "duration": {1}, "timestamp": {1}, "type": {1}, "dyn": {1}, "has": {1}, "matches": {2}}
_TS_METHODS = ("getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getHours",
               "getMinutes", "getSeconds", "getMilliseconds")
STD_METHODS: dict[str, set[int]] = {"size": {0}, "contains": {1}, "startsWith": {1}, "endsWith": {1}, "matches": {1},
                                    **{m: {0, 1} for m in _TS_METHODS}}
MACROS = {"all": 2, "exists": 2, "exists_one": 2, "map": 2, "filter": 2}

RESULT_CACHE_SIZE = 4096
RESULT_CACHE_BYTES = 4 << 20       # per policy; an entry (the inputs read + the reason) above 8 KiB is not kept
RESULT_ENTRY_BYTES = 8 << 10
PROGRAM_CACHE_SIZE = 4096
PROGRAM_CACHE_BYTES = 32 << 20     # estimated: a celpy parse tree keeps ~1.2 KB per character of text
SHOW_EXPR = 80


# ------------------------------------------------------------------------------------------------
# helper functions (the same Python code for both engines)
# ------------------------------------------------------------------------------------------------
class _Ctx(threading.local):
    req: RequestView | None = None
    env: Any = None
    note: str | None = None
    literals: frozenset = frozenset()    # the string literals of the expression being evaluated


_ctx = _Ctx()


def _set_note(text: str) -> None:
    _ctx.note = text


def _is_literal(text: str) -> bool:
    return text in _ctx.literals


def _req() -> RequestView:
    req = _ctx.req
    if req is None:  # pragma: no cover - only when called outside an evaluation
        raise HelperError("no request")
    return req


def _name(v: Any, fn: str) -> str:
    if not isinstance(v, str):
        raise HelperError(f"{fn}: the name must be a string")
    return str(v)


def _map_values(m: Any, name: str, fold: bool) -> list:
    """Values under ``name`` in a CEL map of lists (req_headers) or of strings (request.headers)."""
    if not isinstance(m, dict):
        raise HelperError("the receiver is not a map")
    v = m[name] if name in m else None      # (celpy's map type raises on .get of a missing key)
    if v is None and fold:
        low = name.lower()
        for k, val in m.items():
            if isinstance(k, str) and k.lower() == low:
                v = val
                break
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


def _hdr(name: Any, fn: str) -> list[str]:
    return _req().header_map.get(_name(name, fn).lower(), [])


def _cookies_of(m: Any) -> dict[str, list[str]]:
    return parse_cookie_header(_map_values(m, "Cookie", True))


def _first(vals: list) -> str:
    return str(vals[0]) if vals else ""


def g_hasHeader(name: Any) -> bool:
    return bool(_hdr(name, "hasHeader"))


def m_hasHeader(m: Any, name: Any) -> bool:
    return bool(_map_values(m, _name(name, "hasHeader"), True))


def g_getHeader(name: Any) -> str:
    return _first(_hdr(name, "getHeader"))


def m_getHeader(m: Any, name: Any) -> str:
    return _first(_map_values(m, _name(name, "getHeader"), True))


def g_hasCookie(name: Any) -> bool:
    return _name(name, "hasCookie") in _req().cookies


def m_hasCookie(m: Any, name: Any) -> bool:
    return _name(name, "hasCookie") in _cookies_of(m)


def g_getCookie(name: Any) -> str:
    return _first(_req().cookies.get(_name(name, "getCookie"), []))


def m_getCookie(m: Any, name: Any) -> str:
    return _first(_cookies_of(m).get(_name(name, "getCookie"), []))


def g_containsCookie(name: Any, value: Any) -> bool:
    return _name(value, "containsCookie") in _req().cookies.get(_name(name, "containsCookie"), ())


def m_containsCookie(m: Any, name: Any, value: Any) -> bool:
    return _name(value, "containsCookie") in _cookies_of(m).get(_name(name, "containsCookie"), ())


def g_hasQuery(name: Any) -> bool:
    return _name(name, "hasQuery") in _req().query


def m_hasQuery(m: Any, name: Any) -> bool:
    return bool(_map_values(m, _name(name, "hasQuery"), False))


def g_getQuery(name: Any) -> str:
    return _first(_req().query.get(_name(name, "getQuery"), []))


def m_getQuery(m: Any, name: Any) -> str:
    return _first(_map_values(m, _name(name, "getQuery"), False))


_nets = BoundedCache(1024, 1 << 20)


def _net(text: str) -> Any:
    net = _nets.get(text, _MISSING)
    if net is not _MISSING:
        return net
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        net = None
    if len(text) <= 64:         # a CIDR is at most 43 characters; longer text (from a request) is not kept
        _nets.put(text, net, 256)
    return net


def ip_in_cidr(ip: Any, cidr: Any) -> bool:
    if not isinstance(ip, str) or not isinstance(cidr, str):
        raise HelperError("ipInCidr: wants two strings, an address and a CIDR")
    addr = parse_ip(ip)
    if addr is None:
        raise HelperError("ipInCidr: the first argument is not an IP address")
    net = _net(str(cidr))
    if net is None:
        raise HelperError("ipInCidr: the second argument is not a CIDR")
    if net.version == 6 and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
        net = _net(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return addr.version == net.version and addr in net


def g_geoIP() -> dict:
    from ..conditions.geo import client_cel_record
    rec, why = client_cel_record(_req(), _ctx.env)
    if rec is None:
        raise HelperError(f"geoIP(): {why}")
    return rec


HELPERS = {
    "hasHeader": (g_hasHeader, m_hasHeader, 1), "getHeader": (g_getHeader, m_getHeader, 1),
    "hasCookie": (g_hasCookie, m_hasCookie, 1), "getCookie": (g_getCookie, m_getCookie, 1),
    "containsCookie": (g_containsCookie, m_containsCookie, 2),
    "hasQuery": (g_hasQuery, m_hasQuery, 1), "getQuery": (g_getQuery, m_getQuery, 1),
    "ipInCidr": (ip_in_cidr, ip_in_cidr, 2), "geoIP": (g_geoIP, None, 0),
}


# ------------------------------------------------------------------------------------------------
# engines
# ------------------------------------------------------------------------------------------------
_engines: dict[str, Any] = {}
_engine_lock = threading.Lock()


def get_engine(name: str | None = None) -> Any:
    """The engine by name (cel-python | cel-expr-python); default: ``CONDROUTE_CEL_ENGINE`` or the
    fastest installed one."""
    name = canonical_name(name) if name else default_engine_name()
    eng = _engines.get(name)
    if eng is None:
        with _engine_lock:
            eng = _engines.get(name)
            if eng is None:
                if name == "cel-expr-python":
                    if name not in available_engines():
                        raise ValueError("the CEL engine cel-expr-python is not installed "
                                         "(pip install 'condroute[fast-cel]'), or unset CONDROUTE_CEL_ENGINE")
                    from .engines import CelExprEngine
                    eng = CelExprEngine(HELPERS, _set_note)
                else:
                    from .engines import CelPyEngine
                    eng = CelPyEngine(HELPERS, _set_note, _is_literal)
                _engines[name] = eng
    return eng


# ------------------------------------------------------------------------------------------------
# parsing into a small tree, and checking it
# ------------------------------------------------------------------------------------------------
class N:
    """A node of the simplified tree: ``k`` is one of lit, id, sel, idx, call, op, list, map, obj."""

    __slots__ = ("k", "a", "b", "c", "line", "col")

    def __init__(self, k: str, a: Any = None, b: Any = None, c: Any = None, line: int = 1, col: int = 1):
        self.k, self.a, self.b, self.c, self.line, self.col = k, a, b, c, line, col

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"N({self.k}, {self.a!r}, {self.b!r}, {self.c!r})"


class CelSyntaxError(Exception):
    def __init__(self, message: str, line: int, col: int):
        super().__init__(message)
        self.line, self.col = line, col


_parser_lock = threading.Lock()


def _parse(text: str) -> Any:
    import lark
    from celpy.celparser import CELParser
    if CELParser.CEL_PARSER is None:
        CELParser()
    with _parser_lock:  # lark's LALR parser object is shared: parse one expression at a time
        try:
            return CELParser.CEL_PARSER.parse(text)
        except lark.exceptions.UnexpectedCharacters as e:
            ch = text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(text) else "?"
            raise CelSyntaxError(f"CEL syntax error: unexpected character {ch!r}", e.line, e.column) from None
        except lark.exceptions.UnexpectedToken as e:
            tok = e.token
            if tok.type == "$END":
                lines = text.splitlines() or [""]
                raise CelSyntaxError("CEL syntax error: the expression ends too early", len(lines),
                                     len(lines[-1]) + 1) from None
            shown = str(tok)[:30]
            raise CelSyntaxError(f"CEL syntax error: unexpected {shown!r}", tok.line, tok.column) from None
        except lark.exceptions.UnexpectedEOF:
            lines = text.splitlines() or [""]
            raise CelSyntaxError("CEL syntax error: the expression ends too early", len(lines),
                                 len(lines[-1]) + 1) from None
        except lark.exceptions.LarkError as e:  # pragma: no cover - any other parser complaint
            raise CelSyntaxError(f"CEL syntax error: {type(e).__name__}", 1, 1) from None


_BINOPS = {"relation_lt": "<", "relation_le": "<=", "relation_gt": ">", "relation_ge": ">=", "relation_eq": "==",
           "relation_ne": "!=", "relation_in": "in", "addition_add": "+", "addition_sub": "-",
           "multiplication_mul": "*", "multiplication_div": "/", "multiplication_mod": "%"}
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _pos(t: Any) -> tuple[int, int]:
    meta = getattr(t, "meta", None)
    if meta is not None and not getattr(meta, "empty", True):
        return meta.line, meta.column
    line = getattr(t, "line", None)
    if line is not None:
        return line, t.column
    for ch in getattr(t, "children", ()):
        p = _pos(ch)
        if p != (1, 1):
            return p
    return 1, 1


def _conv(t: Any) -> N:
    """lark tree -> N."""
    import lark
    d = t.data
    ch = t.children
    line, col = _pos(t)
    if d in ("expr",):
        if len(ch) == 1:
            return _conv(ch[0])
        return N("op", "?:", [_conv(c) for c in ch], line=line, col=col)
    if d in ("conditionalor", "conditionaland"):
        if len(ch) == 1:
            return _conv(ch[0])
        return N("op", "||" if d == "conditionalor" else "&&", [_conv(ch[0]), _conv(ch[1])], line=line, col=col)
    if d in ("relation", "addition", "multiplication"):
        if len(ch) == 1:
            return _conv(ch[0])
        optree, right = ch
        return N("op", _BINOPS[optree.data], [_conv(optree.children[0]), _conv(right)], line=line, col=col)
    if d == "unary":
        if len(ch) == 1:
            return _conv(ch[0])
        return N("op", "!" if ch[0].data == "unary_not" else "neg", [_conv(ch[1])], line=line, col=col)
    if d in ("member", "primary", "paren_expr"):
        return _conv(ch[0])
    if d == "member_dot":
        tok = ch[1]
        return N("sel", _conv(ch[0]), str(tok), line=tok.line, col=tok.column)
    if d == "member_dot_arg":
        tok = ch[1]
        args = [_conv(c) for c in ch[2].children] if len(ch) > 2 else []
        return N("call", str(tok), _conv(ch[0]), args, line=tok.line, col=tok.column)
    if d == "member_index":
        return N("idx", _conv(ch[0]), _conv(ch[1]), line=line, col=col)
    if d == "member_object":
        return N("obj", line=line, col=col)
    if d in ("ident", "dot_ident"):
        tok = ch[0]
        return N("id", str(tok), line=tok.line, col=tok.column)
    if d in ("ident_arg", "dot_ident_arg"):
        tok = ch[0]
        args = [_conv(c) for c in ch[1].children] if len(ch) > 1 else []
        return N("call", str(tok), None, args, line=tok.line, col=tok.column)
    if d == "list_lit":
        return N("list", [_conv(c) for c in ch[0].children] if ch else [], line=line, col=col)
    if d == "map_lit":
        items = [_conv(c) for c in ch[0].children] if ch else []
        return N("map", list(zip(items[0::2], items[1::2])), line=line, col=col)
    if d == "literal":
        tok = ch[0]
        return _literal(tok)
    if isinstance(t, lark.Tree) and len(ch) == 1:  # pragma: no cover - any other wrapper
        return _conv(ch[0])
    raise CelSyntaxError(f"unsupported CEL construct {d}", line, col)  # pragma: no cover


def _literal(tok: Any) -> N:
    from celpy.evaluation import celbytes, celstr
    ty, text, line, col = tok.type, str(tok), tok.line, tok.column
    try:
        if ty in ("STRING_LIT", "MLSTRING_LIT"):
            return N("lit", str(celstr(tok)), "string", line=line, col=col)
        if ty == "BYTES_LIT":
            return N("lit", bytes(celbytes(tok)), "bytes", line=line, col=col)
        if ty == "INT_LIT":
            v = int(text, 0) if not text.lstrip("-").startswith("0x") else int(text, 16)
            if not _INT64[0] <= v <= _INT64[1]:
                raise CelSyntaxError(f"integer literal {text} is out of range (64-bit)", line, col)
            return N("lit", v, "int", line=line, col=col)
        if ty == "UINT_LIT":
            body = text[:-1]
            v = int(body, 16) if body.lstrip("-").startswith("0x") else int(body)
            if not 0 <= v < 2 ** 64:
                raise CelSyntaxError(f"unsigned literal {text} is out of range (64-bit)", line, col)
            return N("lit", v, "uint", line=line, col=col)
        if ty == "FLOAT_LIT":
            return N("lit", float(text), "double", line=line, col=col)
        if ty == "BOOL_LIT":
            return N("lit", text == "true", "bool", line=line, col=col)
        if ty == "NULL_LIT":
            return N("lit", None, "null", line=line, col=col)
    except CelSyntaxError:
        raise
    except Exception:
        raise CelSyntaxError(f"bad literal {text[:30]!r}", line, col) from None
    raise CelSyntaxError(f"bad literal {text[:30]!r}", line, col)  # pragma: no cover


def _str_lit(n: N | None) -> str | None:
    return n.a if n is not None and n.k == "lit" and n.b == "string" else None


class Analysis:
    """What the checker found: problems (line, col, message), the inputs the expression reads
    (atoms), the variables to build, and the names and literals written in it."""

    def __init__(self) -> None:
        self.errors: list[tuple[int, int, str]] = []
        self.atoms: set[tuple] = set()
        self.roots: set[str] = set()
        self.literals: set[str] = set()
        self.uses_geo: N | None = None
        self.uses_jwt: N | None = None
        self.uses_now = False

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
        if root == "now":
            an.uses_now = True

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

    def _helper_receiver(self, name: str, target: N, scope: frozenset) -> str | None:
        """For ``X.hasHeader(...)`` and friends: 'headers' when X is req_headers / request.headers,
        'query' when X is req_querystring."""
        root = self._root(target, scope)
        if name in HEADER_HELPERS or name in COOKIE_HELPERS:
            if root == "req_headers":
                return "req_headers"
            if self._request_part(target, scope, "headers"):
                return "request"
        if name in QUERY_HELPERS and root == "req_querystring":
            return "req_querystring"
        return None

    def _helper_atoms(self, name: str, args: list[N]) -> list[tuple]:
        lit = _str_lit(args[0]) if args else None
        if name in HEADER_HELPERS:
            return [("h", lit.lower())] if lit is not None else [("H",)]
        if name in COOKIE_HELPERS:
            return [("c", lit)] if lit is not None else [("h", "cookie")]
        if name in QUERY_HELPERS:
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
            if name in HELPER_ARITY or name in STD_GLOBAL:
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
        if target is None:
            if name in HELPER_ARITY:
                want = HELPER_ARITY[name]
                if nargs != want:
                    an.error(n, f"{name}() takes {want} argument{'s' * (want != 1)}, not {nargs}")
                    return
                if name == "geoIP":
                    an.uses_geo = an.uses_geo or n
                    an.atoms.add(("ip",))
                    return
                if name == "ipInCidr":
                    self._check_cidr(args[1])
                    for a in args:
                        self.visit(a, scope)
                    return
                an.atoms.update(self._helper_atoms(name, args))
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
            an.error(n, f"unknown function {name!r}" + _suggest(name, list(HELPER_ARITY) + list(STD_GLOBAL)))
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
        if name in HELPER_ARITY:
            want = HELPER_ARITY[name]
            if name == "geoIP":
                an.error(n, "geoIP() is a function, not a method: write geoIP()")
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
            recv = self._helper_receiver(name, target, scope)
            if recv is not None:
                self._use(recv, self._helper_atoms(name, args), n)
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
                 + _suggest(name, list(STD_METHODS) + list(MACROS) + list(HELPER_ARITY)))

    def _check_cidr(self, n: N) -> None:
        text = _str_lit(n)
        if text is not None and _net(text) is None:
            self.an.error(n, f"ipInCidr: {text!r} is not a CIDR such as 10.0.0.0/8")


# ------------------------------------------------------------------------------------------------
# cost: how many comprehension iterations an evaluation can take, known when the file loads
# ------------------------------------------------------------------------------------------------
# Every evaluation blocks the proxy's event loop, and cel-python spends ~0.3 ms per iteration, so a
# 100x100 comprehension held all traffic for seconds, while cel-expr-python stops at 10,000
# iterations with an error: the same rules routed differently depending on the engine installed.
# Both engines are now held to one budget, checked by condroute itself, identically:
# - at load, the worst case is a polynomial in U, the size of the largest list or map the request
#   gives the expression (headers, values of a header, query parameters, cookies, claims); its
#   constant part comes from literal lists;
# - U^2 or worse (a comprehension over request data inside another one) is a load error, and so is
#   a worst case above the budget on the smallest request;
# - per request, when the polynomial has a U term, U is measured before the cache is consulted, and
#   above the budget the policy does not hold ("too costly for this request"), without evaluating.
# The budget is far below cel-expr-python's own limit (10,000), which therefore never decides.
CEL_MAX_ITERATIONS = 256
GEO_RECORD_BOUND = 64      # the largest list or map in a GeoIP record (names in ~10 languages)

Poly = tuple  # (constant, coefficient of U, True when U^2 or worse) - a bound, never an estimate

_P0: Poly = (0, 0, False)
_PU: Poly = (0, 1, False)


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


def _u_claims(r: RequestView, e: Any) -> int:
    return r.memo("cel_u_claims", lambda: _collection_bound(_claims(r, e).claims, CEL_MAX_ITERATIONS))


_U_OF_ROOT: dict[str, Callable[[RequestView, Any], int]] = {
    "req_headers": _u_headers, "request": lambda r, e: max(_u_headers(r, e), _u_query(r, e)),
    "req_querystring": _u_query, "req_params": lambda r, e: len(r.params),
    "jwt": _u_claims, "JWT": _u_claims,
}


# ------------------------------------------------------------------------------------------------
# per-request inputs: the cache key, and the variables
# ------------------------------------------------------------------------------------------------
_MISSING = object()


def _freeze(v: Any) -> Any:
    """A hashable stand-in for a JSON value, equal only for values CEL cannot tell apart."""
    t = type(v)
    if t is str or t is int or v is None:
        return v
    if t is bool:
        return ("\0b", v)
    if t is float:
        return ("\0f", v)
    if t is list:
        return ("\0l",) + tuple(_freeze(x) for x in v)
    if t is dict:
        return ("\0d",) + tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    return ("\0?", repr(v))


_clock = time.time   # `now` (tests move it)


def _now_s(req: RequestView) -> int:
    return req.memo("now_s", lambda: int(_clock()))


def _claims(req: RequestView, env: Any) -> Any:
    from ..conditions.jwtauth import token_state
    return token_state(req, env)


def _key_fn(atom: tuple) -> Callable[[RequestView, Any], Any]:
    k = atom[0]
    if k == "h":
        name = atom[1]
        return lambda r, e: tuple(r.header_map.get(name, ()))
    if k == "H":
        return lambda r, e: tuple((n, tuple(v)) for n, v in r.header_map.items())
    if k == "c":
        name = atom[1]
        return lambda r, e: tuple(r.cookies.get(name, ()))
    if k == "q":
        name = atom[1]
        return lambda r, e: tuple(r.query.get(name, ()))
    if k == "Q":
        return lambda r, e: r.query_string
    if k == "method":
        return lambda r, e: r.method
    if k == "path":
        return lambda r, e: r.path
    if k == "host":
        return lambda r, e: r.host
    if k == "scheme":
        return lambda r, e: r.scheme
    if k == "port":
        return lambda r, e: r.port
    if k == "P":
        return lambda r, e: tuple(r.params.items())
    if k == "ip":
        return lambda r, e: r.client_ip(e.settings.trusted_proxies)
    if k == "j":
        name = atom[1]
        return lambda r, e: _freeze(_claims(r, e).claims.get(name, _MISSING))
    if k == "J":
        def whole_claims(r: RequestView, e: Any) -> Any:
            st = _claims(r, e)
            return st.token if st.claims else None
        return whole_claims
    if k == "jerr":
        return lambda r, e: _claims(r, e).error
    if k == "now":
        return lambda r, e: _now_s(r)
    raise AssertionError(atom)  # pragma: no cover


def canonical_header(name_lower: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey for a lower-case name: x-ab-test -> X-Ab-Test."""
    if not name_lower or any(c in name_lower for c in " \t:"):
        return name_lower
    return "-".join(p[:1].upper() + p[1:] for p in name_lower.split("-"))


def _v_req_headers(r: RequestView, e: Any) -> dict:
    return {canonical_header(k): list(v) for k, v in r.header_map.items()}


def _v_params(r: RequestView, e: Any) -> dict:
    out = dict(r.params)
    for k, v in r.params.items():   # KrakenD writes route parameters capitalised: req_params.Id
        out.setdefault(k[:1].upper() + k[1:], v)
    return out


def _v_request(r: RequestView, e: Any) -> dict:
    return {
        "method": r.method, "scheme": r.scheme, "host": r.host, "port": int(r.port or 0), "path": r.path,
        "query": r.query_string,
        "headers": {k: ("; " if k == "cookie" else ", ").join(v) for k, v in r.header_map.items()},
        "cookies": {k: v[0] for k, v in r.cookies.items() if v},
    }


def _v_client_ip(r: RequestView, e: Any) -> str:
    ip = r.client_ip(e.settings.trusted_proxies)
    return "" if ip is None else str(ip)


VARIABLES: dict[str, Callable[[RequestView, Any], Any]] = {
    "req_headers": _v_req_headers,
    "req_method": lambda r, e: r.method,
    "req_path": lambda r, e: r.path,
    "req_querystring": lambda r, e: {k: list(v) for k, v in r.query.items()},
    "req_params": _v_params,
    "request": _v_request,
    "client_ip": _v_client_ip,
    "jwt": lambda r, e: _claims(r, e).claims,
    "JWT": lambda r, e: _claims(r, e).claims,
    "now": lambda r, e: datetime.datetime.fromtimestamp(_now_s(r), datetime.timezone.utc),
}


# ------------------------------------------------------------------------------------------------
# compiled policies
# ------------------------------------------------------------------------------------------------
_programs = BoundedCache(PROGRAM_CACHE_SIZE, PROGRAM_CACHE_BYTES)


def _show(text: str) -> str:
    s = " ".join(text.split())
    return s if len(s) <= SHOW_EXPR else s[:SHOW_EXPR - 1] + "…"


class CelPolicy:
    """A checked, compiled expression. ``evaluate(req, env)`` returns None when it holds, else a
    reason; results are cached by the exact inputs the expression reads."""

    def __init__(self, text: str, engine: Any, program: Any, an: Analysis, cost: Poly = _P0):
        self.text = text
        # (constant, per-U) iterations, when they depend on the request: U is measured per request
        self.cost_per_u = cost[1]
        self.cost_const = cost[0]
        self._u_fns = tuple(_U_OF_ROOT[r] for r in sorted(an.roots) if r in _U_OF_ROOT) if cost[1] else ()
        self.engine = engine
        self.program = program
        self.label = f"cel `{_show(text)}`"
        self.atoms = tuple(sorted(an.atoms, key=repr))
        if an.uses_jwt:
            self.atoms += (("jerr",),)
        self._keyfns = tuple(_key_fn(a) for a in self.atoms)
        self.variables = tuple(sorted(an.roots))
        self._builders = tuple((v, VARIABLES[v]) for v in self.variables)
        self.literals = frozenset(an.literals)
        self.uses_jwt = an.uses_jwt is not None
        self.cache = BoundedCache(RESULT_CACHE_SIZE, RESULT_CACHE_BYTES, RESULT_ENTRY_BYTES)
        self.evaluations = 0            # how many times the engine actually ran

    def key(self, req: RequestView, env: Any) -> tuple:
        return tuple([f(req, env) for f in self._keyfns])

    def evaluate(self, req: RequestView, env: Any) -> str | None:
        if self.cost_per_u:
            u = max([f(req, env) for f in self._u_fns], default=0)
            if self.cost_const + self.cost_per_u * u > CEL_MAX_ITERATIONS:
                return (f"{self.label} could not be evaluated: too costly for this request (a list or map "
                        f"of {u} items; the limit is {CEL_MAX_ITERATIONS} iterations)")
        try:
            key = tuple([f(req, env) for f in self._keyfns])
            hit = self.cache.get(key, _MISSING)
        except Exception:  # noqa: BLE001 - an unusual input: evaluate without the cache
            return self._run(req, env)
        if hit is not _MISSING:
            return hit
        reason = self._run(req, env)
        self.cache.put(key, reason)
        return reason

    def _run(self, req: RequestView, env: Any) -> str | None:
        self.evaluations += 1
        ctx = _ctx
        ctx.req, ctx.env, ctx.note, ctx.literals = req, env, None, self.literals
        try:
            variables = {name: build(req, env) for name, build in self._builders}
            code, info = self.engine.run(self.program, variables)
        except RecursionError:
            code, info = "error", ("the expression is nested too deeply", None)
        except Exception:  # noqa: BLE001 - an evaluation problem is a skip, never a 500
            code, info = "error", ("evaluation error", None)
        finally:
            note = ctx.note
            ctx.req = ctx.env = ctx.note = None
        if code == "true":
            return None
        if code == "false":
            reason = f"{self.label} is false" + (f" ({note})" if note else "")
        elif code == "value":
            reason = f"{self.label} gave {info}, not true"
        else:
            category, key = info
            if note:
                category = note
            elif key is not None and key in self.literals:
                category = f'{category} "{key}"'
            reason = f"{self.label} could not be evaluated: {category}"
        if self.uses_jwt:
            st = _claims(req, env)
            if st.error is not None:
                reason += f" (the token was rejected: {st.error})"
        return reason


class CelCond(Cond):
    def __init__(self, policy: CelPolicy):
        self.policy = policy
        self.text = policy.label

    def fail(self, req: RequestView, env: Any) -> str | None:
        return self.policy.evaluate(req, env)


class CelLoadProblem:
    __slots__ = ("line", "col", "message")

    def __init__(self, line: int, col: int, message: str):
        self.line, self.col, self.message = line, col, message


def compile_policy(text: str, engine: str | None = None, geo: bool = True,
                   jwt: bool = True) -> tuple[CelPolicy | None, list[CelLoadProblem]]:
    """Check and compile one expression. Problems are located in the expression (1-based line and
    column). ``geo``/``jwt``: whether geoIP() and the jwt variable can have data."""
    eng = get_engine(engine)
    if not text.strip():
        return None, [CelLoadProblem(1, 1, "cel: the expression is empty")]
    try:
        tree = _parse(text)
        root = _conv(tree)
    except CelSyntaxError as e:
        return None, [CelLoadProblem(e.line, e.col, str(e))]
    except RecursionError:
        return None, [CelLoadProblem(1, 1, "cel: the expression is nested too deeply")]
    an = Analysis()
    try:
        Checker(an).visit(root)
    except RecursionError:
        return None, [CelLoadProblem(1, 1, "cel: the expression is nested too deeply")]
    cost = _P0
    if not an.errors:
        try:
            cost = CostCheck(an).check(root)
        except RecursionError:
            an.error(root, "cel: the expression is nested too deeply")
    problems = [CelLoadProblem(*e) for e in an.errors]
    if an.uses_geo is not None and not geo:
        problems.append(CelLoadProblem(an.uses_geo.line, an.uses_geo.col,
                                       "geoIP() needs a GeoIP database: set settings.geoip_db to a MaxMind DB file"))
    if an.uses_jwt is not None and not jwt:
        problems.append(CelLoadProblem(an.uses_jwt.line, an.uses_jwt.col,
                                       "jwt needs settings.jwt: where the token is and how it is verified"))
    if problems:
        return None, problems
    pkey = (eng.name, text)
    program = _programs.get(pkey)
    if program is None:
        try:
            program = eng.compile(text, tree)
        except Exception as e:  # noqa: BLE001 - the engine refused what our checker accepted
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            return None, [CelLoadProblem(1, 1, f"cel: {eng.name} does not accept this expression: {first[:200]}")]
        _programs.put(pkey, program, 4096 + 1200 * len(text))
    return CelPolicy(text, eng, program, an, cost), []


# ------------------------------------------------------------------------------------------------
# the rules-file side
# ------------------------------------------------------------------------------------------------
def _locate(node: Y, cc: CompileCtx, eline: int, ecol: int) -> tuple[int, int, str]:
    """Map a position inside the expression to the rules file; the suffix says where in the
    expression when that cannot be done exactly."""
    text = node.v
    lines = text.splitlines() or [""]
    try:
        src = cc.lines[node.line - 1]
        ch = src[node.col - 1]
    except IndexError:
        src, ch = "", ""
    if ch == "|":  # a literal block: the expression's lines are the file's lines, indented
        fl = node.line + eline
        if node.line < len(cc.lines) and 1 <= fl <= len(cc.lines) and 1 <= eline <= len(lines):
            first = cc.lines[node.line]
            indent = len(first) - len(first.lstrip(" "))
            if cc.lines[fl - 1][indent:].rstrip() == lines[eline - 1].rstrip():
                return fl, indent + ecol, ""
    elif "\n" not in text and ch != ">":
        offset = 1 if ch in "'\"" else 0
        start = node.col - 1 + offset
        if src[start:start + len(text)] == text:
            return node.line, node.col + offset + ecol - 1, ""
    return node.line, node.col, f" (at line {eline}, column {ecol} of the expression)"


def compile_cel_condition(node: Y, cc: CompileCtx):
    if not isinstance(node.v, str):
        cc.error(node, f"cel must be a CEL expression (a string), not {kind(node.v)}")
        return None
    cc.cel_used = True
    settings = getattr(cc, "settings", None)
    geo = getattr(settings, "geoip", None) is not None or getattr(cc, "geoip_declared", False)
    jwt = getattr(settings, "jwt", None) is not None or getattr(cc, "jwt_declared", False)
    try:
        policy, problems = compile_policy(node.v, geo=geo, jwt=jwt)
    except ValueError as e:  # a bad CONDROUTE_CEL_ENGINE
        cc.error(node, str(e))
        return None
    for p in problems:
        line, col, where = _locate(node, cc, p.line, p.col)
        cc.error_at(line, col, p.message + where)
    if policy is None:
        return None
    return CelCond(policy)


__all__ = ["compile_cel_condition", "compile_policy", "CelPolicy", "CelCond", "get_engine", "available_engines",
           "ROOT_VARS", "HELPERS"]
