"""A compiled ``cel:`` policy: what it reads per request, its result cache, its evaluation; and the
``cel:`` condition of a rules file.

At load, :func:`compile_policy` parses the expression (:mod:`.parse`), checks it and finds exactly
which inputs it reads (:mod:`.check`), bounds its iterations (:mod:`.cost`), and has the engine
(:mod:`.engines`) compile it once for every condition with the same text.
:func:`compile_cel_condition` does that for a ``cel:`` value of a rules file, its problems located
in the file.

Per request, those inputs are read into a key; a result already known for that key (bounded
cache, per loaded rules) is returned without evaluating. Otherwise only the variables the
expression reads are built (:data:`VARIABLES`), the engine evaluates, and the outcome is
remembered. The result is a pure function of those inputs (CEL has no side effects; ``now`` is the
request time to the second and is part of the key), so a cached answer is always the answer
evaluation would give.

Anything but the boolean ``true`` means "does not hold"; the reason names the expression and a
fixed category ("is false", "could not be evaluated: no such key "X-Ab"", ...) and never a value
from the request: a key is named only when it is written in the expression itself.
"""
from __future__ import annotations

import datetime
import time
from typing import Any, Callable

from ..boundcache import BoundedCache
from ..conditions.base import Cond
from ..load.ctx import CompileCtx, kind
from ..node import Y
from ..request import RequestView
from .check import Analysis, Checker
from .context import IdentityLookups, TokenLike, current
from .cost import CEL_MAX_ITERATIONS, NO_COST, CostCheck, Poly, request_size_measures
from .engines import available_engines, get_engine  # noqa: F401 - available_engines: tests read it here
from .helpers import _net, _nets  # noqa: F401 - tests read the CIDR cache here
from .parse import CelSyntaxError, parse

RESULT_CACHE_SIZE = 4096
RESULT_CACHE_BYTES = 4 << 20       # per policy; an entry (the inputs read + the reason) above 8 KiB is not kept
RESULT_ENTRY_BYTES = 8 << 10
PROGRAM_CACHE_SIZE = 4096
PROGRAM_CACHE_BYTES = 32 << 20     # estimated: a celpy parse tree keeps ~1.2 KB per character of text
SHOW_EXPR = 80


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


def _key_fn(atom: tuple, token: Callable[[RequestView, Any], TokenLike] | None) -> Callable[[RequestView, Any], Any]:
    """The function (req, env) -> the part of the cache key for one atom (see check.Analysis);
    ``token``: the token lookup, for the claim atoms."""
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
        return lambda r, e: _freeze(token(r, e).claims.get(name, _MISSING))
    if k == "J":
        def whole_claims(r: RequestView, e: Any) -> Any:
            st = token(r, e)
            return st.token if st.claims else None
        return whole_claims
    if k == "jerr":
        return lambda r, e: token(r, e).error
    if k == "now":
        return lambda r, e: _now_s(r)
    raise AssertionError(atom)  # pragma: no cover


def _canonical_header(name_lower: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey for a lower-case name: x-ab-test -> X-Ab-Test; a name
    with a space, tab or colon stays as it is (as in Go; httptext.canonical_header capitalises it)."""
    if not name_lower or any(c in name_lower for c in " \t:"):
        return name_lower
    return "-".join(p[:1].upper() + p[1:] for p in name_lower.split("-"))


def _v_req_headers(r: RequestView, e: Any) -> dict:
    return {_canonical_header(k): list(v) for k, v in r.header_map.items()}


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


def _v_claims(r: RequestView, e: Any) -> dict:
    return current.lookups.token(r, e).claims     # (the lookups of the policy being evaluated)


# name -> (req, env) -> the variable's value, as plain Python (each engine converts it)
VARIABLES: dict[str, Callable[[RequestView, Any], Any]] = {
    "req_headers": _v_req_headers,
    "req_method": lambda r, e: r.method,
    "req_path": lambda r, e: r.path,
    "req_querystring": lambda r, e: {k: list(v) for k, v in r.query.items()},
    "req_params": _v_params,
    "request": _v_request,
    "client_ip": _v_client_ip,
    "jwt": _v_claims,
    "JWT": _v_claims,
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

    def __init__(self, text: str, engine: Any, program: Any, an: Analysis, cost: Poly = NO_COST,
                 lookups: IdentityLookups | None = None):
        self.text = text
        token = lookups.token if lookups is not None else None
        # (constant, per-U) iterations, when they depend on the request: U is measured per request
        self.cost_per_u = cost[1]
        self.cost_const = cost[0]
        self._u_fns = request_size_measures(an.roots, token) if cost[1] else ()
        self.engine = engine
        self.program = program
        self.lookups = lookups
        self._token = token
        self.label = f"cel `{_show(text)}`"
        self.atoms = tuple(sorted(an.atoms, key=repr))
        if an.uses_jwt:
            self.atoms += (("jerr",),)
        self._keyfns = tuple(_key_fn(a, token) for a in self.atoms)
        self.variables = tuple(sorted(an.roots))
        self._builders = tuple((v, VARIABLES[v]) for v in self.variables)
        self.literals = frozenset(an.literals)
        self.uses_jwt = an.uses_jwt is not None
        self.cache = BoundedCache(RESULT_CACHE_SIZE, RESULT_CACHE_BYTES, RESULT_ENTRY_BYTES)
        self.evaluations = 0            # how many times the engine actually ran

    def headers_read(self) -> tuple[frozenset[str], bool]:
        """The request headers the expression reads (lower-case names; a cookie counts as the
        Cookie header), and whether it reads every header (``req_headers`` or ``request.headers``
        as a whole, ``size(req_headers)``, a header named by a computed value...). The header a
        token is taken from (settings.jwt) is not counted: it is read by the token lookup."""
        names, everything = set(), False
        for a in self.atoms:
            if a[0] == "H":
                everything = True
            elif a[0] == "h":
                names.add(a[1])
            elif a[0] == "c":
                names.add("cookie")
        return frozenset(names), everything

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
        ctx = current
        ctx.req, ctx.env, ctx.lookups, ctx.note, ctx.literals = req, env, self.lookups, None, self.literals
        try:
            variables = {name: build(req, env) for name, build in self._builders}
            code, info = self.engine.run(self.program, variables)
        except RecursionError:
            code, info = "error", ("the expression is nested too deeply", None)
        except Exception:  # noqa: BLE001 - an evaluation problem is a skip, never a 500
            code, info = "error", ("evaluation error", None)
        finally:
            note = ctx.note
            ctx.req = ctx.env = ctx.lookups = ctx.note = None
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
            st = self._token(req, env)
            if st.error is not None:
                reason += f" (the token was rejected: {st.error})"
        return reason


class CelCond(Cond):
    def __init__(self, policy: CelPolicy):
        self.policy = policy
        self.text = policy.label

    def fail(self, req: RequestView, env: Any) -> str | None:
        return self.policy.evaluate(req, env)

    def headers_read(self) -> frozenset[str]:
        """The request headers (lower-case) the policy reads by name (see CelPolicy.headers_read,
        which also says whether it reads them all)."""
        return self.policy.headers_read()[0]


class CelLoadProblem:
    __slots__ = ("line", "col", "message")

    def __init__(self, line: int, col: int, message: str):
        self.line, self.col, self.message = line, col, message


def compile_policy(text: str, engine: str | None = None, geo: bool = True, jwt: bool = True, *,
                   lookups: IdentityLookups | None = None) -> tuple[CelPolicy | None, list[CelLoadProblem]]:
    """Check and compile one expression. Problems are located in the expression (1-based line and
    column). ``geo``/``jwt``: whether geoIP() and the jwt variable can have data (settings.geoip_db,
    settings.jwt). ``lookups``: where the token's claims and the GeoIP record come from; needed
    (TypeError without) when the expression reads jwt or calls geoIP()."""
    eng = get_engine(engine)
    if not text.strip():
        return None, [CelLoadProblem(1, 1, "cel: the expression is empty")]
    try:
        tree, root = parse(text)
    except CelSyntaxError as e:
        return None, [CelLoadProblem(e.line, e.col, str(e))]
    except RecursionError:
        return None, [CelLoadProblem(1, 1, "cel: the expression is nested too deeply")]
    an = Analysis()
    try:
        Checker(an).visit(root)
    except RecursionError:
        return None, [CelLoadProblem(1, 1, "cel: the expression is nested too deeply")]
    cost = NO_COST
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
    if lookups is None and (an.uses_geo is not None or an.uses_jwt is not None):
        raise TypeError("compile_policy: this expression reads jwt or calls geoIP(): pass lookups=IdentityLookups(...)")
    pkey = (eng.name, text)
    program = _programs.get(pkey)
    if program is None:
        try:
            program = eng.compile(text, tree)
        except Exception as e:  # noqa: BLE001 - the engine refused what our checker accepted
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            return None, [CelLoadProblem(1, 1, f"cel: {eng.name} does not accept this expression: {first[:200]}")]
        _programs.put(pkey, program, 4096 + 1200 * len(text))
    return CelPolicy(text, eng, program, an, cost, lookups), []


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


def compile_cel_condition(node: Y, cc: CompileCtx, lookups: IdentityLookups) -> CelCond | None:
    """The ``cel:`` condition written at ``node``; problems are recorded in ``cc``, located in the
    file. ``lookups``: the token and GeoIP lookups (see IdentityLookups; the ``cel`` condition
    kind, conditions/cel.py, passes those of the jwt and geo kinds)."""
    if not isinstance(node.v, str):
        cc.error(node, f"cel must be a CEL expression (a string), not {kind(node.v)}")
        return None
    geo = getattr(cc.settings, "geoip", None) is not None or cc.geoip_declared
    jwt = getattr(cc.settings, "jwt", None) is not None or cc.jwt_declared
    try:
        policy, problems = compile_policy(node.v, geo=geo, jwt=jwt, lookups=lookups)
    except ValueError as e:  # a bad CONDROUTE_CEL_ENGINE
        cc.error(node, str(e))
        return None
    for p in problems:
        line, col, where = _locate(node, cc, p.line, p.col)
        cc.error_at(line, col, p.message + where)
    if policy is None:
        return None
    return CelCond(policy)


__all__ = ["compile_cel_condition", "compile_policy", "CelPolicy", "CelCond", "CelLoadProblem", "IdentityLookups",
           "VARIABLES"]
