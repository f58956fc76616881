"""Conditions as KrakenD policies: CEL in KrakenD's own vocabulary (``req_headers``,
``req_querystring``, ``req_method``, ``req_path``, ``req_headers.containsCookie``), which KrakenD
Enterprise evaluates for ``backend/conditional`` ``strategy: policy`` and condroute's own CEL runs
the same way (rules format, "CEL policies").

Exact translations only:

- a header is tested on every value (``req_headers['X-Ab-Test']`` is the list of its values, keyed
  by canonical name): ``'X-A' in req_headers && req_headers['X-A'].exists(v, ...)``, so a
  missing header fails every test, as in condroute; ``not`` is ``!`` around that; the same for
  query parameters (``req_querystring``, decoded values);
- equality, ``in``, prefix/suffix/contains (``startsWith``/``endsWith``/``contains``), ``regex``
  (``matches``: an unanchored RE2 search, as condroute's), ``ignore_case`` (``matches('(?i)...')``,
  ASCII text only), ``present``, ``not``, several tests of one value (each on its own, as
  condroute's ``AllOf``); ``any``/``all``/``not`` are ``||``/``&&``/``!``;
- a cookie's equality: ``req_headers.containsCookie(NAME, VALUE)`` (KrakenD's function);
- ``method``/``path``: ``req_method``/``req_path``;
- a ``cel`` condition is kept as written when it reads only this vocabulary.

Refused (NotExported): numbers (``gt``...: KrakenD's CEL has no number parsing of a header that
matches condroute's), other cookie tests, ``host``, the client address, JWT claims (they need
``auth/validator``), GeoIP (a plugin), and a ``cel`` condition that reads anything else
(``request.*``, ``client_ip``, ``jwt``, ``now``, ``geoIP()``, ``req_params``: KrakenD capitalises
their names).
"""
from __future__ import annotations

import json
import re

from ..httptext import canonical_header
from . import ir
from .httproute_match import esc
from .ir import NotExported, Where

VOCABULARY = frozenset({"req_headers", "req_querystring", "req_method", "req_path"})
# CEL's own functions, macros and literals
CEL_WORDS = frozenset({
    "has", "exists", "exists_one", "all", "map", "filter", "size", "matches", "startsWith", "endsWith", "contains",
    "in", "int", "uint", "double", "string", "bool", "bytes", "true", "false", "null", "type", "containsCookie",
    "lowerAscii", "upperAscii",
})
_TOKEN = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[A-Za-z_][A-Za-z0-9_]*)""")


def lit(s: str) -> str:
    """A CEL string literal."""
    return json.dumps(s, ensure_ascii=False)


def _ascii(texts, at: Where, what: str) -> None:
    if any(not t.isascii() for t in texts):
        raise NotExported(at, f"{what}: ignore_case on text beyond ASCII: KrakenD's regular expressions fold case "
                              f"differently from condroute")


def pred(m: ir.Matcher, v: str, at: Where, what: str) -> str:
    """A CEL test of the string ``v`` that holds exactly when ``m`` holds for it."""
    ic = getattr(m, "ignore_case", False)
    if isinstance(m, ir.Eq):
        if ic:
            _ascii(m.values, at, what)
            return f"{v}.matches({lit('(?i)^(?:' + '|'.join(esc(x) for x in m.values) + ')$')})"
        if len(m.values) == 1:
            return f"{v} == {lit(m.values[0])}"
        return f"{v} in [{', '.join(lit(x) for x in m.values)}]"
    if isinstance(m, (ir.Prefix, ir.Suffix, ir.Contains)):
        if ic:
            _ascii((m.value,), at, what)
            rx = {ir.Prefix: f"^{esc(m.value)}", ir.Suffix: f"{esc(m.value)}$", ir.Contains: esc(m.value)}[type(m)]
            return f"{v}.matches({lit('(?i)' + rx)})"
        fn = {ir.Prefix: "startsWith", ir.Suffix: "endsWith", ir.Contains: "contains"}[type(m)]
        return f"{v}.{fn}({lit(m.value)})"
    if isinstance(m, ir.Regex):
        return f"{v}.matches({lit(('(?i)' if ic else '') + m.pattern)})"
    if isinstance(m, ir.Compare):
        raise NotExported(at, f"{what}: a number comparison has no exact KrakenD policy (its CEL does not read "
                              f"numbers the way condroute does)")
    raise NotExported(at, f"{what}: this test has no KrakenD policy")


def _listed(source: str, key: str, m: ir.Matcher, at: Where, what: str) -> str:
    """A test of a name whose values are a list (req_headers, req_querystring)."""
    has = f"{lit(key)} in {source}"
    if isinstance(m, ir.Present):
        return has if m.present else f"!({has})"
    if isinstance(m, ir.MNot):
        return f"!({_listed(source, key, m.inner, at, what)})"
    if isinstance(m, ir.MAll):
        return " && ".join(f"({_listed(source, key, p, at, what)})" for p in m.parts)
    return f"{has} && {source}[{lit(key)}].exists(v, {pred(m, 'v', at, what)})"


def _single(v: str, m: ir.Matcher, at: Where, what: str) -> str:
    if isinstance(m, ir.Present):
        return "true" if m.present else "false"
    if isinstance(m, ir.MNot):
        return f"!({_single(v, m.inner, at, what)})"
    if isinstance(m, ir.MAll):
        return " && ".join(f"({_single(v, p, at, what)})" for p in m.parts)
    return pred(m, v, at, what)


def policy(c: ir.Cond) -> str:
    """``c`` as a KrakenD policy expression."""
    if isinstance(c, ir.And):
        return "true" if not c.parts else " && ".join(f"({policy(p)})" for p in c.parts)
    if isinstance(c, ir.Or):
        return "false" if not c.parts else " || ".join(f"({policy(p)})" for p in c.parts)
    if isinstance(c, ir.Not):
        return f"!({policy(c.inner)})"
    if isinstance(c, ir.ClientIP):
        raise NotExported(c.at, "the client address has no KrakenD policy variable")
    if isinstance(c, ir.Geo):
        raise NotExported(c.at, "GeoIP needs KrakenD's geoip plugin and its database; not exported")
    if isinstance(c, ir.Opaque):
        raise NotExported(c.at, c.why)
    if isinstance(c, ir.Cel):
        return _cel(c)
    assert isinstance(c, ir.Atom)
    m, at = c.matcher, c.at
    if c.source == "header":
        return _listed("req_headers", canonical_header(c.name or ""), m, at, f"header {c.name}")
    if c.source == "query":
        return _listed("req_querystring", c.name or "", m, at, f"query parameter {c.name}")
    if c.source == "method":
        return _single("req_method", m, at, "method")
    if c.source == "path":
        return _single("req_path", m, at, "path")
    if c.source == "cookie":
        if isinstance(m, ir.Eq) and not m.ignore_case:
            return " || ".join(f"req_headers.containsCookie({lit(c.name or '')}, {lit(v)})" for v in m.values)
        raise NotExported(at, f"cookie {c.name}: KrakenD's policies test a cookie's value for equality only "
                              f"(req_headers.containsCookie)")
    if c.source == "jwt":
        raise NotExported(at, "JWT claims need KrakenD's auth/validator (verification keys) to be read in a "
                              "policy; not exported")
    raise NotExported(at, f"the condition {c.source} has no KrakenD policy variable")


def _cel(c: ir.Cel) -> str:
    """A ``cel`` condition kept as written when every name it reads is KrakenD's."""
    for tok in _TOKEN.findall(c.expr):
        if tok[0] in "\"'":
            continue
        if tok not in VOCABULARY and tok not in CEL_WORDS:
            raise NotExported(c.at, f"the CEL expression reads {tok}, which a KrakenD policy does not have (its "
                                    f"vocabulary: {', '.join(sorted(VOCABULARY))})")
    return c.expr
