"""The matching side of the HTTPRoute export: a route's path and methods and a backend's ``when``
as Gateway API ``matches``, the precedence the gateway ranks them by, and whether two of them can
both match one request.

A condition becomes a list of matches (ORed; each match's fields ANDed): ``any`` multiplies out
into several matches, ``all`` and the keys of a mapping add fields to each. What a match cannot
say exactly raises :class:`~condroute.export.ir.NotExported` (cookies, client address, JWT, GeoIP,
CEL, ``not``, numbers, absent headers, two tests of one header).

Values (header, query parameter, path) are matched whole by the gateway; condroute's forms are
written as ``Exact`` or as a ``RegularExpression`` that matches the whole value exactly when
condroute's matcher holds (RE2, as Envoy-based gateways and condroute's importer run it):
``prefix P`` → ``P.*``, ``suffix`` → ``.*S``, ``contains`` → ``.*C.*``, ``regex R`` (an
unanchored search) → ``.*(?:R).*``, ``in``/a list → ``(?:A|B)``, ``ignore_case`` → ``(?i)``
(only for ASCII text: condroute lower-cases with Python, RE2 folds case its own way beyond ASCII).
Query values use ``(?s:.*)`` (a decoded value may hold a line break); header values cannot.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import re2

from .. import model
from ..httptext import canonical_header
from . import ir
from .ir import NotExported, Where

PATH_RANK = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}
MAX_MATCHES = 64                  # per rule (the CRD)
_SPECIAL = set("\\.+*?()|[]{}^$")
_PATH_OK = re2.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})+$")


def esc(s: str) -> str:
    """``s`` as an RE2 literal."""
    out = []
    for c in s:
        if c in _SPECIAL:
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


@dataclass(frozen=True)
class PathM:
    """A match's path. ``segs``/``rest``: the path as segments (a literal or a ``{param}``, which
    matches one non-empty segment) and whether more may follow, for the overlap test; None for a
    free regular expression."""
    ptype: str
    value: str
    segs: tuple[tuple[bool, str], ...] | None = None
    rest: bool = False
    more: bool = False      # with rest: at least one more segment (the bare prefix is another rule's)

    @property
    def plen(self) -> int:
        return len(self.value.rstrip("/")) if self.ptype == "PathPrefix" else len(self.value)

    def to_dict(self) -> dict:
        return {"type": self.ptype, "value": self.value}


ANY_PATH = PathM("PathPrefix", "/", (), True)


def exact_path(text: str) -> PathM:
    segs = tuple((False, s) for s in text.split("/")[1:])
    if _PATH_OK.match(text) and "%2f" not in text.lower():
        return PathM("Exact", text, segs, False)
    return PathM("RegularExpression", esc(text), segs, False)


def prefix_path(prefix: str) -> PathM:
    """``/prefix/*`` (``prefix`` without the trailing ``/``; "" for everything)."""
    segs = tuple((False, s) for s in prefix.split("/")[1:]) if prefix else ()
    if not prefix:
        return ANY_PATH
    if _PATH_OK.match(prefix) and "%2f" not in prefix.lower():
        return PathM("PathPrefix", prefix, segs, True)
    return PathM("RegularExpression", esc(prefix) + "(?:/.*)?", segs, True)


def route_path(p: model.RoutePath | None, at: Where) -> PathM:
    """A route's ``match.path`` (a template) as a match path; the mapping form is read as a ``path``
    condition by the caller."""
    if p is None:
        return ANY_PATH
    if p.segs is not None:
        if all(not is_p for is_p, _ in p.segs):
            lit = "/" + "/".join(t for _, t in p.segs) if p.segs else ""
            if p.has_rest:
                return prefix_path(lit)
            return exact_path(lit or "/")
        rx = "".join("/" + ("[^/]+" if is_p else esc(t)) for is_p, t in p.segs)
        if p.has_rest:
            rx += "(?:/.*)?"
        return PathM("RegularExpression", rx or "/", p.segs, p.has_rest)
    if p.pattern is not None:
        rx = p.pattern
        if rx.endswith(r"\Z"):
            rx = rx[:-2]
        try:
            re2.compile(rx)
        except re2.error:
            raise NotExported(at, f"the path {p.text} has no RE2 equivalent") from None
        return PathM("RegularExpression", rx, None, p.has_rest)
    raise NotExported(at, f"the path {p.text} cannot be written as an HTTPRoute path")


# ------------------------------------------------------------------------------------------- values
def _ascii_only(texts, at: Where, what: str) -> None:
    if any(not t.isascii() for t in texts):
        raise NotExported(at, f"{what}: ignore_case on text beyond ASCII: the gateway's regular expressions "
                              f"fold case differently from condroute")


def value_match(m: ir.Matcher, at: Where, what: str, anyc: str = ".*") -> tuple[str, str]:
    """(type, value) of a header/query value match that holds exactly when ``m`` does."""
    ic = getattr(m, "ignore_case", False)
    flag = "(?i)" if ic else ""
    if isinstance(m, ir.Eq):
        if ic:
            _ascii_only(m.values, at, what)
        if len(m.values) == 1 and not ic and m.values[0]:
            return "Exact", m.values[0]
        alts = "|".join(esc(v) for v in m.values)
        return "RegularExpression", f"{flag}(?:{alts})"
    if isinstance(m, (ir.Prefix, ir.Suffix, ir.Contains)):
        if ic:
            _ascii_only((m.value,), at, what)
        v = esc(m.value)
        body = {ir.Prefix: f"{v}{anyc}", ir.Suffix: f"{anyc}{v}", ir.Contains: f"{anyc}{v}{anyc}"}[type(m)]
        return "RegularExpression", flag + body
    if isinstance(m, ir.Regex):
        try:
            re2.compile(m.pattern)
        except re2.error:
            raise NotExported(at, f"{what}: the regular expression {m.pattern!r} is not RE2") from None
        return "RegularExpression", f"{anyc}(?:{flag}{m.pattern}){anyc}"
    if isinstance(m, ir.Present) and m.present:
        return "RegularExpression", anyc
    why = {ir.Present: "an absent value (present: false) cannot be matched: a match only tests what is there",
           ir.Compare: "a number comparison has no HTTPRoute match",
           ir.MNot: "`not` has no HTTPRoute match",
           ir.MAll: "several tests of one value: an HTTPRoute match tests a name once"}[type(m)]
    raise NotExported(at, f"{what}: {why}")


# ------------------------------------------------------------------------------------------ matches
@dataclass
class Match:
    path: PathM
    method: str | None = None
    headers: dict[str, tuple[str, str, str]] = field(default_factory=dict)   # lower -> (name, type, value)
    query: dict[str, tuple[str, str]] = field(default_factory=dict)          # name -> (type, value)
    path_set: bool = False            # the path came from a `path` condition

    def copy(self) -> "Match":
        return Match(self.path, self.method, dict(self.headers), dict(self.query), self.path_set)

    def key(self) -> tuple:
        """The gateway's precedence (smaller first): Exact, longest prefix, RegularExpression (Istio's
        and condroute's importer's ranking; the specification leaves regex to the implementation),
        then a method, most headers, most query parameters."""
        return (PATH_RANK[self.path.ptype], -self.path.plen, 0 if self.method else 1, -len(self.headers),
                -len(self.query))

    def to_dict(self) -> dict:
        d: dict = {"path": self.path.to_dict()}
        if self.headers:
            d["headers"] = [{"name": canonical_header(n), "type": t, "value": v} if t != "Exact"
                            else {"name": canonical_header(n), "value": v}
                            for n, t, v in self.headers.values()]
        if self.query:
            d["queryParams"] = [{"name": n, "type": t, "value": v} if t != "Exact" else {"name": n, "value": v}
                                for n, (t, v) in self.query.items()]
        if self.method:
            d["method"] = self.method
        return d


def dnf(c: ir.Cond) -> list[list[ir.Cond]]:
    """``c`` as an OR of ANDs of leaves (Atom, ClientIP, ...); ``not`` refused."""
    if isinstance(c, ir.Or):
        return [conj for p in c.parts for conj in dnf(p)]
    if isinstance(c, ir.And):
        out: list[list[ir.Cond]] = [[]]
        for p in c.parts:
            out = [a + b for a in out for b in dnf(p)]
            if len(out) > MAX_MATCHES:
                break
        return out
    if isinstance(c, ir.Not):
        first = next(ir.atoms(c.inner), None)
        at = getattr(first, "at", None) or Where("?", 0, 0)
        raise NotExported(at, "`not` has no HTTPRoute equivalent (a match cannot exclude requests)")
    return [[c]]


_REFUSED_SOURCE = {
    "cookie": "cookies cannot be matched by an HTTPRoute (no cookie match in the Gateway API)",
    "jwt": "JWT claims cannot be matched by an HTTPRoute",
    "port": "the request's port cannot be matched by an HTTPRoute (attach the route to a listener instead)",
    "authority": "the authority cannot be matched by an HTTPRoute",
    "host": "a `host` condition inside `when` cannot be matched by an HTTPRoute match (hosts are the "
            "route's hostnames: put it in the route's match)",
}


_JSTR = r'"(?:[^"\\]|\\.)*"'
_QUERY_TEST = re2.compile(rf'hasQuery\(({_JSTR})\) && getQuery\(({_JSTR})\)(?: == ({_JSTR})|\.matches\(({_JSTR})\))')


def query_tests(expr: str) -> list[tuple[str, str, str]] | None:
    """The ``queryParams`` of condroute's HTTPRoute import, which writes them as CEL testing a
    parameter's first value (``hasQuery("q") && getQuery("q") == "v"``, ``.matches("^(?:R)$")``),
    read back as (name, type, value); None for any other expression."""
    out = []
    for part in expr.split(" && hasQuery("):
        if out or not part.startswith("hasQuery("):
            part = "hasQuery(" + part if out else part
        m = _QUERY_TEST.fullmatch(part)
        if m is None:
            return None
        name, again = json.loads(m.group(1)), json.loads(m.group(2))
        if name != again:
            return None
        if m.group(3) is not None:
            out.append((name, "Exact", json.loads(m.group(3))))
        else:
            rx = json.loads(m.group(4))
            if not (rx.startswith("^(?:") and rx.endswith(")$")):
                return None
            out.append((name, "RegularExpression", rx[4:-2]))
    return out


def apply(base: Match, conj: list[ir.Cond]) -> list[Match]:
    """The matches for ``base`` AND every leaf of ``conj`` ([] when they can never hold together)."""
    out = [base.copy()]
    for leaf in conj:
        if isinstance(leaf, ir.ClientIP):
            raise NotExported(leaf.at, "the client address cannot be matched by an HTTPRoute")
        if isinstance(leaf, ir.Geo):
            raise NotExported(leaf.at, "GeoIP cannot be matched by an HTTPRoute")
        if isinstance(leaf, ir.Cel):
            qs = query_tests(leaf.expr)
            if qs is None:
                raise NotExported(leaf.at, "a CEL expression cannot be matched by an HTTPRoute")
            for m in out:
                for name, t, v in qs:
                    if name in m.query:
                        raise NotExported(leaf.at, f"query parameter {name} is tested twice in one match")
                    m.query[name] = (t, v)
            continue
        if isinstance(leaf, ir.Opaque):
            raise NotExported(leaf.at, leaf.why)
        assert isinstance(leaf, ir.Atom)
        if leaf.source in _REFUSED_SOURCE:
            raise NotExported(leaf.at, _REFUSED_SOURCE[leaf.source])
        nxt: list[Match] = []
        for m in out:
            nxt.extend(_one(m, leaf))
        out = nxt
    return out


def _one(m: Match, a: ir.Atom) -> list[Match]:
    if a.source == "header":
        if a.name in m.headers:
            raise NotExported(a.at, f"header {a.name} is tested twice in one match: an HTTPRoute match tests a "
                                    f"header once")
        t, v = value_match(a.matcher, a.at, f"header {a.name}")
        m.headers[a.name] = (a.name, t, v)
        return [m]
    if a.source == "query":
        if a.name in m.query:
            raise NotExported(a.at, f"query parameter {a.name} is tested twice in one match")
        m.query[a.name] = value_match(a.matcher, a.at, f"query parameter {a.name}", "(?s:.*)")
        return [m]
    if a.source == "method":
        mt = a.matcher
        if not isinstance(mt, ir.Eq):
            raise NotExported(a.at, "a method is matched by name only (one of a list)")
        out = []
        for meth in dict.fromkeys(mt.values):
            if m.method is None or m.method == meth:
                c = m.copy()
                c.method = meth
                out.append(c)
        return out
    if a.source == "path":
        if m.path_set or m.path is not ANY_PATH:
            raise NotExported(a.at, "a `path` condition on a route that has a path: an HTTPRoute match has one path")
        mt = a.matcher
        if isinstance(mt, ir.Eq) and not mt.ignore_case:
            out = []
            for v in dict.fromkeys(mt.values):
                c = m.copy()
                c.path, c.path_set = exact_path(v), True
                out.append(c)
            return out
        t, v = value_match(mt, a.at, "path")
        m.path, m.path_set = PathM(t if t != "Exact" else "Exact", v, None, False), True
        return [m]
    raise NotExported(a.at, f"the condition {a.source} has no HTTPRoute match")


# ----------------------------------------------------------------------------------------- overlap
def _segs_disjoint(a: PathM, b: PathM) -> bool:
    assert a.segs is not None and b.segs is not None
    for (pa, ta), (pb, tb) in zip(a.segs, b.segs):
        if not pa and not pb and ta != tb:
            return True
        if (pa and not pb and tb == "") or (pb and not pa and ta == ""):
            return True                  # a parameter never matches an empty segment
    na, nb = len(a.segs) + a.more, len(b.segs) + b.more
    if not a.rest and not b.rest:
        return na != nb
    if a.rest and not b.rest:
        return nb < na
    if b.rest and not a.rest:
        return na < nb
    return False


def paths_disjoint(a: PathM, b: PathM) -> bool:
    """No request path matches both (False when it cannot be told)."""
    if a.segs is not None and b.segs is not None:
        return _segs_disjoint(a, b)
    for x, y in ((a, b), (b, a)):
        if x.ptype == "Exact" and y.ptype == "RegularExpression":
            try:
                return re2.fullmatch(y.value, x.value) is None
            except re2.error:
                return False
    return False


def disjoint(a: Match, b: Match) -> bool:
    """No request matches both ``a`` and ``b``. Headers never tell: a repeated header matches a test
    when any of its values does, so two different values of one header can both hold; a query
    parameter is tested on its first value, so two Exact values of one parameter cannot."""
    if a.method and b.method and a.method != b.method:
        return True
    if paths_disjoint(a.path, b.path):
        return True
    for name, (ta, va) in a.query.items():
        if name in b.query:
            tb, vb = b.query[name]
            if ta == tb == "Exact" and va != vb:
                return True
    return False


def _path_covers(a: PathM, b: PathM) -> bool:
    """Every path ``b`` matches, ``a`` matches too (False when it cannot be told)."""
    if a.segs is None or b.segs is None:
        return a == b
    na, nb = len(a.segs), len(b.segs)
    if nb < na:
        return False
    for (pa, ta), (pb, tb) in zip(a.segs, b.segs):
        if pa:
            if not pb and tb == "":
                return False
        elif pb or ta != tb:
            return False
    if not a.rest:
        return nb == na and not b.rest
    if a.more:
        return nb > na or b.more
    return True


def covers(a: Match, b: Match) -> bool:
    """Every request ``b`` matches, ``a`` matches too (False when it cannot be told)."""
    if a.method is not None and a.method != b.method:
        return False
    if any(b.headers.get(k) != v for k, v in a.headers.items()):
        return False
    if any(b.query.get(k) != v for k, v in a.query.items()):
        return False
    return _path_covers(a.path, b.path)
