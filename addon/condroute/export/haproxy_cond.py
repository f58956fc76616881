"""condroute conditions as HAProxy ACLs: each atom one named ``acl``, a condition an OR of ANDs of
possibly negated ACL names (HAProxy's ``if a b || !c``), for the HAProxy exporter.

Why this is exact (see /work/notes/readme-haproxy.md for the edge cases HAProxy reads otherwise):

- HAProxy evaluates a multi-valued fetch in an ACL over *every* value and the ACL holds when any
  value matches (``req.fhdr``: every header line, whole, commas kept; ``req.cook``: every cookie of
  that name on every Cookie line; ``url_param``: every occurrence) — condroute's any-value rule.
- A missing value makes every ACL false, so ``!acl`` holds: condroute's ``not`` and ``{not: M}``
  (a missing value makes ``M`` false, the negation true). ``{present: false}`` is ``!acl -m found``.
- ``{prefix: ..., suffix: ...}`` (MAll) is an AND of ACLs, each over any value, as condroute's
  matchers are (each part holds for some value, not necessarily the same one).
"""
from __future__ import annotations

import math
import re
from typing import Iterable

from . import ir
from .haproxy_text import pcre, regex_problem, word
from .nginx_cel import translate as translate_cel
from .nginx_match import cookie_rx, query_rx

Literal = tuple[str, bool]          # (acl name, negated)
Term = tuple[Literal, ...]          # AND
Dnf = list[Term]                    # OR; [] is false, [()] is true

MAX_TERMS = 256                     # a condition that expands to more is refused, not written
_NAME = re.compile(r"[A-Za-z0-9_.~-]+\Z")
_METHODS = {ir.Eq: "str", ir.Prefix: "beg", ir.Suffix: "end", ir.Contains: "sub", ir.Regex: "reg"}


class Acls:
    """The ``acl`` lines of the frontend, one name per distinct definition."""

    def __init__(self) -> None:
        self.by_key: dict[tuple, str] = {}
        self.lines: list[str] = []

    def define(self, fetch: str, method: str, ic: bool, patterns: Iterable[str], hint: str) -> str:
        pats = tuple(patterns)
        key = (fetch, method, ic, pats)
        name = self.by_key.get(key)
        if name is None:
            name = f"cr_{len(self.by_key) + 1}_{re.sub(r'[^a-z0-9]+', '_', hint.lower()).strip('_')[:24]}"
            self.by_key[key] = name
            flags = f"-m {method}" + (" -i" if ic else "")
            fetch = word(fetch)
            if not pats:
                self.lines.append(f"acl {name} {fetch} {flags}")
            # a line holds at most 64 words: many patterns go on several lines of the same name (ORed)
            for i in range(0, len(pats), 40):
                self.lines.append(f"acl {name} {fetch} {flags} -- " + " ".join(word(p) for p in pats[i:i + 40]))
        return name


def fetch_of(a: ir.Atom) -> str:
    """The sample expression for an atom's value(s); NotExported when there is none."""
    s, name = a.source, a.name
    if s in ("header", "header_first", "cookie", "query") and (name is None or not _NAME.match(name)):
        raise ir.NotExported(a.at, f"the {s} name {name!r} has characters HAProxy's fetch arguments "
                                   "cannot carry unchanged (only letters, digits and _ . ~ -)")
    if s == "header":
        return f"req.fhdr({name})"
    if s == "header_first":
        return f"req.fhdr({name},1)"
    if s == "cookie":
        # condroute takes the quotes off a "quoted" cookie value; HAProxy keeps them
        return f"req.cook({name}),regsub('^\"(.*)\"$','\\1')"
    if s == "query":
        return f"url_param({name}),url_dec(1)"
    if s == "method":
        return "method,upper"
    if s == "host":
        return "var(txn.cr_host)"
    if s == "path":
        return "path"
    if s == "port":
        return "var(txn.cr_port)"
    if s == "authority":
        return "var(txn.cr_authority)"
    raise ir.NotExported(a.at, f"the {s} condition is not exported to HAProxy yet")


def matcher_dnf(acls: Acls, a: ir.Atom, m: ir.Matcher, fetch: str | None) -> Dnf:
    """One atom's matcher as ACL literals: each leaf one ACL over any value (``fetch``: the native
    sample expression, worked out when a leaf needs it)."""
    if isinstance(m, ir.MNot):
        return negate(matcher_dnf(acls, a, m.inner, fetch))
    if isinstance(m, ir.MAll):
        out: Dnf = [()]
        for p in m.parts:
            out = conj(out, matcher_dnf(acls, a, p, fetch), a.at)
        return out
    hint = f"{a.source}_{a.name or ''}"
    if fetch is None and (a.source not in ("cookie", "query") or isinstance(m, ir.Regex)):
        fetch = fetch_of(a)
    if isinstance(m, ir.Present) and a.source not in ("cookie", "query"):
        lit = acls.define(fetch, "found", False, (), hint)
        return [((lit, not m.present),)]
    if isinstance(m, ir.Compare) and a.source == "port":
        # a port is an integer: the comparison with a (possibly fractional) number as HAProxy's -m int
        op, n = m.op, m.number
        bound = {"gt": math.floor(n), "ge": math.ceil(n), "lt": math.ceil(n), "le": math.floor(n)}[op]
        return [((acls.define(fetch, "int", False, (f"{op}", str(bound)), hint), False),)]
    if isinstance(m, ir.Compare):
        raise ir.NotExported(a.at, "a number comparison (gt/ge/lt/le): HAProxy's integer match reads "
                                   "values otherwise (no decimals, exponents or spaces) than condroute")
    if a.source in ("cookie", "query") and not isinstance(m, ir.Regex):
        # exact: a search of each raw Cookie line / the raw query for a pair that condroute's own
        # parsing would read as this name and a matching value (the nginx exporter's expressions)
        leaf = ir.Present(True) if isinstance(m, ir.Present) else m
        rx = cookie_rx(a.name, leaf, a.at) if a.source == "cookie" else query_rx(a.name, leaf, a.at)
        raw = "req.fhdr(cookie)" if a.source == "cookie" else "query"
        absent = isinstance(m, ir.Present) and not m.present
        return [((acls.define(raw, "reg", False, (rx,), hint), absent),)]
    method = _METHODS[type(m)]
    pats: tuple[str, ...]
    if isinstance(m, ir.Eq):
        pats = m.values
    elif isinstance(m, ir.Regex):
        why = regex_problem(m.pattern)
        if why:
            raise ir.NotExported(a.at, f"regex {m.pattern!r}: {why}")
        pats = (pcre(m.pattern),)
    else:
        pats = (m.value,)
    if m.ignore_case and not all(p.isascii() for p in pats):
        raise ir.NotExported(a.at, "ignore_case with non-ASCII text: HAProxy's -i folds ASCII letters only")
    if method != "str" and "" in pats:
        # an empty prefix/suffix/substring/regex holds for every value that is there
        return [((acls.define(fetch, "found", False, (), hint), False),)]
    out: Dnf = []
    if any(p != "" for p in pats):
        out.append(((acls.define(fetch, method, m.ignore_case, tuple(p for p in pats if p != ""), hint), False),))
    if "" in pats:      # HAProxy drops an empty string pattern: the empty value is "length 0"
        out.append(((acls.define(fetch, "len", False, ("0",), hint), False),))
    return out


def cond_dnf(acls: Acls, c: ir.Cond | None, jwt=None) -> Dnf:
    """``c`` as an OR of ANDs of ACL literals; NotExported for a part HAProxy cannot express.
    ``jwt(atom)`` gives the number of a jwt atom evaluated by the Lua action (haproxy_jwt)."""
    if c is None:
        return [()]
    if isinstance(c, ir.Atom) and (c.source in LUA_FIRST or c.source == "jwt"
                                   or c.source in ("cookie", "query") and _has_regex(c.matcher)):
        if jwt is None:
            raise ir.NotExported(c.at, f"{c.source} conditions need the Lua helper")
        n = jwt(c)
        return [((acls.define(f"var(txn.cr_lua_{n})", "found", False, (), f"{c.source}_{c.name}"), False),)]
    if isinstance(c, ir.Atom):
        return matcher_dnf(acls, c, c.matcher, None)
    if isinstance(c, ir.ClientIP):
        return [((acls.define("src", "ip", False, (str(n) for n in c.nets), "client_ip"), False),)]
    if isinstance(c, ir.And):
        out: Dnf = [()]
        for p in c.parts:
            out = conj(out, cond_dnf(acls, p, jwt), _at(p))
        return out
    if isinstance(c, ir.Or):
        out = []
        for p in c.parts:
            out = disj(out, cond_dnf(acls, p, jwt), _at(p))
        return out
    if isinstance(c, ir.Not):
        return negate(cond_dnf(acls, c.inner, jwt))
    if isinstance(c, ir.Geo):
        raise ir.NotExported(c.at, "geo: HAProxy has no MaxMind lookup of its own (a map file of CIDRs "
                                   "per country would be a copy of the database, not the database)")
    if isinstance(c, ir.Cel):
        return cond_dnf(acls, cel_tree(c), jwt)
    if isinstance(c, ir.Opaque):
        raise ir.NotExported(c.at, c.why)
    raise TypeError(c)


LUA_FIRST = ("query_first", "cookie_first")     # CEL's getQuery/getCookie: the first value, in Lua


def cel_tree(c: ir.Cel) -> ir.Cond:
    """The CEL importers write (an HTTPRoute's query matches, Istio's scheme) as a condition tree
    (the nginx export's reading of that subset, ``nginx_cel.translate``), with what HAProxy reads:
    ``getHeader`` is the *first* header line (``req.fhdr(NAME,1)``), ``getQuery``/``getCookie`` the
    first value (Lua), ``request.scheme`` is ``http`` (the frontend listens on plain HTTP)."""
    try:
        tree = translate_cel(c)
    except ir.NotExported:
        raise ir.NotExported(c.at, "cel: HAProxy has no CEL evaluator; only hasQuery/getQuery, hasHeader/"
                                   "getHeader, hasCookie/getCookie/containsCookie, request.scheme and "
                                   "request.method compared with strings, joined by &&, || and !, are "
                                   "exported") from None
    return _cel_sources(tree)


def _cel_sources(t: ir.Cond) -> ir.Cond:
    if isinstance(t, ir.And):
        return ir.And(tuple(_cel_sources(p) for p in t.parts))
    if isinstance(t, ir.Or):
        return ir.Or(tuple(_cel_sources(p) for p in t.parts))
    if isinstance(t, ir.Not):
        return ir.Not(_cel_sources(t.inner))
    if isinstance(t, ir.Atom):
        if t.source == "scheme":
            return ir.TRUE if isinstance(t.matcher, ir.Eq) and "http" in t.matcher.values else ir.Or(())
        if t.source == "header" and not isinstance(t.matcher, ir.Present):
            return ir.Atom("header_first", t.name, t.matcher, t.at)
    return t


def _has_regex(m: ir.Matcher) -> bool:
    if isinstance(m, ir.MNot):
        return _has_regex(m.inner)
    if isinstance(m, ir.MAll):
        return any(_has_regex(p) for p in m.parts)
    return isinstance(m, ir.Regex)


def _at(c: ir.Cond) -> ir.Where | None:
    for a in ir.atoms(c):
        return a.at
    return None


def _check(d: Dnf, at: ir.Where | None) -> Dnf:
    if len(d) > MAX_TERMS:
        raise ir.NotExported(at or ir.Where("?", 0, 0),
                             f"the condition expands to more than {MAX_TERMS} HAProxy rules (an OR of ANDs)")
    return d


def simplify_term(t: Iterable[Literal]) -> Term | None:
    """A term without repeated literals; None when it holds ``x`` and ``!x`` (never true)."""
    seen: dict[str, bool] = {}
    for name, neg in t:
        if seen.get(name, neg) != neg:
            return None
        seen[name] = neg
    return tuple(seen.items())


def conj(a: Dnf, b: Dnf, at: ir.Where | None) -> Dnf:
    out: Dnf = []
    for x in a:
        for y in b:
            t = simplify_term(x + y)
            if t is not None and t not in out:
                out.append(t)
        _check(out, at)
    return out


def disj(a: Dnf, b: Dnf, at: ir.Where | None) -> Dnf:
    out = list(a)
    for t in b:
        if t not in out:
            out.append(t)
    return _check(out, at)


def negate(d: Dnf) -> Dnf:
    """NOT (t1 OR t2 ...) = AND of (NOT t_i), each NOT t_i an OR of negated literals."""
    out: Dnf = [()]
    for t in d:
        out = conj(out, [((n, not neg),) for n, neg in t], None)
    return out


def term_text(t: Term) -> str:
    return " ".join(("!" if neg else "") + n for n, neg in t)
