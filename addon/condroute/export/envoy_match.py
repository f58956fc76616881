"""Conditions as Envoy route matchers: a condroute condition tree (``export.ir``) in disjunctive
normal form, each term a list of Envoy ``HeaderMatcher`` s (all must hold), for the Envoy exporter.

Envoy's ``RouteMatch`` is a conjunction: ``headers`` (each a HeaderMatcher) all hold. An OR is
therefore several Envoy routes with the same action, in order (first match keeps condroute's
order), and a NOT is pushed down to the matchers (De Morgan) where Envoy's ``invert_match`` does the
rest. What Envoy's matchers do, measured on the binary (tests/test_export_envoy.py):

- a header matcher tests every value of a repeated header separately and holds when one matches
  (condroute: any value); ``invert_match`` on a missing header is *false*, so condroute's
  ``not`` (true when the value is missing) is ``present_match: false`` OR the inverted matcher;
- ``string_match.safe_regex`` is a full match, so condroute's unanchored search ``R`` is
  ``.*(?:R).*``; a Cookie header is matched value by value (two Cookie headers stay two);
- ``query_parameters`` matchers compare the raw, undecoded value of the first parameter of that
  name only; condroute decodes (``+``, ``%XX``) and tests every value, so a query condition is a
  regular expression on ``:path`` that accepts every percent-encoding of the wanted text instead;
- cookies: a regular expression on each ``cookie`` header value that reads the pairs as condroute
  does (split on ``;``, name and value stripped, one pair of double quotes removed);
- ``host``: on ``:authority``, case-insensitively, without the port and trailing dots;
- ``method``: ``:method``; ``path``: ``:path`` up to the ``?`` (normalised by the first filter);
- ``port`` and ``authority``: ``:authority``, 80 when it names no port (the listener is plain HTTP).

Why this module is long: one small Source class per part of the request (header, cookie, query,
claim, method, host, path, port, authority), all on the DNF conventions above; the CEL subset is
in ``envoy_cel``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from .ir import (And, Atom, Cel, ClientIP, Compare, Cond, Contains, Eq, Geo, Matcher, MAll, MNot, Not,
                 NotExported, Opaque, Or, Prefix, Present, Regex, Suffix, Where)

MAX_TERMS = 64          # OR branches one condroute route/backend may expand to
Term = list[dict]       # Envoy HeaderMatchers, all must hold
DNF = list[Term]        # any term holds
TRUE: DNF = [[]]
FALSE: DNF = []

NET_HEADER = "x-condroute-client-net-"     # + n: set by the client-address Lua filter when inside net set n
CLIENT_HEADER = "x-condroute-client-ip"    # the client address the Lua filter found (sticky client_ip splits)
JWT_HEADER = "x-condroute-jwt-"            # + n: a verified token's claim (jwt_authn claim_to_headers)


@dataclass
class Ctx:
    """What the conditions of one export need besides themselves: where claims and client networks
    are written as internal headers (collected for the filters the exporter emits)."""
    file: str
    nets: list[tuple] = field(default_factory=list)             # index -> tuple of networks
    claims: list[str] = field(default_factory=list)             # index -> claim path
    jwt_ok: Callable[[Where], None] = lambda at: None           # raises NotExported when jwt cannot be exported
    cel: Callable | None = None        # (expr, at, ctx) -> DNF: the CEL subset (envoy_cel.cel_dnf), built on this module

    def net_header(self, nets: tuple) -> str:
        if nets not in self.nets:
            self.nets.append(nets)
        return NET_HEADER + str(self.nets.index(nets))

    def claim_header(self, claim: str) -> str:
        if claim not in self.claims:
            self.claims.append(claim)
        return JWT_HEADER + str(self.claims.index(claim))


def product(a: DNF, b: DNF) -> DNF:
    out = [x + y for x in a for y in b]
    if len(out) > MAX_TERMS:
        raise OverflowError
    return out


def product_all(parts: list[DNF]) -> DNF:
    out = TRUE
    for p in parts:
        out = product(out, p)
        if not out:
            return FALSE
    return out


# ------------------------------------------------------------------------------------- condition trees
def cond_dnf(c: Cond | None, ctx: Ctx, at: Where) -> DNF:
    """``c`` as OR-of-AND of Envoy header matchers. Raises NotExported (located) for what Envoy
    cannot match exactly."""
    if c is None:
        return TRUE
    try:
        return _dnf(c, False, ctx)
    except OverflowError:
        raise NotExported(at, f"the condition expands to more than {MAX_TERMS} Envoy routes "
                              "(any/not over many alternatives)") from None


def _dnf(c: Cond, neg: bool, ctx: Ctx) -> DNF:
    if isinstance(c, Atom):
        return atom_dnf(c.source, c.name, MNot(c.matcher) if neg else c.matcher, c.at, ctx)
    if isinstance(c, ClientIP):
        h = ctx.net_header(c.nets)
        return [[{"name": h, "present_match": not neg}]]
    if isinstance(c, Not):
        return _dnf(c.inner, not neg, ctx)
    if isinstance(c, (And, Or)):
        parts = [_dnf(p, neg, ctx) for p in c.parts]
        if isinstance(c, And) != neg:        # an AND, or a negated OR
            return product_all(parts)
        out: DNF = [t for p in parts for t in p]
        if len(out) > MAX_TERMS:
            raise OverflowError
        return out
    if isinstance(c, Geo):
        raise NotExported(c.at, "geo: Envoy has no GeoIP database lookup in its route match "
                                "(the geoip HTTP filter needs a MaxMind provider build and writes headers)")
    if isinstance(c, Cel):
        if ctx.cel is None:
            raise NotExported(c.at, "cel: Envoy's route match cannot evaluate CEL")
        d = ctx.cel(c.expr, c.at, ctx)
        return negate(d) if neg else d
    if isinstance(c, Opaque):
        raise NotExported(c.at, c.why)
    raise NotExported(Where(ctx.file, 1, 1), f"unknown condition {c!r}")     # pragma: no cover


def negate(d: DNF) -> DNF:
    """NOT of a DNF of header matchers: each matcher inverted (present_match flipped)."""
    out: DNF = TRUE
    for term in d:
        alts: DNF = []
        for hm in term:
            if "present_match" in hm:
                alts.append([{**hm, "present_match": not hm["present_match"]}])
            elif hm["name"].startswith(":"):            # always there: the inverted matcher says it all
                alts.append([{**hm, "invert_match": not hm.get("invert_match", False)}])
            else:
                alts.append([{"name": hm["name"], "present_match": False}])
                alts.append([{**hm, "invert_match": not hm.get("invert_match", False)}])
        out = product(out, alts)
    return out


# ------------------------------------------------------------------------------------------- matchers
# A matcher over the values of one source, in DNF over primitives:
#   ("pos", m): some value matches the simple matcher m;  ("neg", m): there is a value and none matches m;
#   ("present",) / ("absent",): there is a value / there is none.
def matcher_dnf(m: Matcher, at: Where) -> list[list[tuple]]:
    if isinstance(m, (Eq, Prefix, Suffix, Contains, Regex)):
        return [[("pos", m)]]
    if isinstance(m, Present):
        return [[("present",) if m.present else ("absent",)]]
    if isinstance(m, MAll):
        out: list[list[tuple]] = [[]]
        for p in m.parts:
            out = [x + y for x in out for y in matcher_dnf(p, at)]
        return out
    if isinstance(m, MNot):
        return _matcher_neg(m.inner, at)
    raise NotExported(at, _compare_why(m))


def _matcher_neg(m: Matcher, at: Where) -> list[list[tuple]]:
    if isinstance(m, (Eq, Prefix, Suffix, Contains, Regex)):
        return [[("absent",)], [("neg", m)]]
    if isinstance(m, Present):
        return [[("absent",) if m.present else ("present",)]]
    if isinstance(m, MNot):
        return matcher_dnf(m.inner, at)
    if isinstance(m, MAll):
        return [t for p in m.parts for t in _matcher_neg(p, at)]
    raise NotExported(at, _compare_why(m))


def _ascii_fold(m, at: Where) -> None:
    """ignore_case is exact only on ASCII text: Envoy's ignore_case folds ASCII letters only, its
    RE2 ``(?i)`` folds Unicode otherwise than condroute's str.lower()."""
    text = "".join(getattr(m, "values", ()) or (getattr(m, "value", "") or getattr(m, "pattern", ""),))
    if getattr(m, "ignore_case", False) and not text.isascii():
        raise NotExported(at, "ignore_case on non-ASCII text: Envoy folds case otherwise than condroute")


def _compare_why(m: Matcher) -> str:
    if isinstance(m, Compare):
        return (f"the number comparison {m.op}: {m.number:g} has no Envoy matcher (range_match compares "
                "integers only, condroute any decimal number)")
    return f"the matcher {m!r} has no Envoy equivalent"


def atom_dnf(source: str, name: str | None, m: Matcher, at: Where, ctx: Ctx) -> DNF:
    src = SOURCES.get(source)
    if src is None:
        raise NotExported(at, f"the {source} condition has no Envoy route matcher "
                              "(the port and authority of the request are not exported yet)")
    s = src(name, at, ctx)
    out: DNF = FALSE
    for term in matcher_dnf(m, at):
        alts: DNF = TRUE
        for prim in term:
            if prim[0] in ("pos", "neg"):
                _ascii_fold(prim[1], at)
            if prim[0] == "pos":
                alts = product(alts, s.pos(prim[1]))
            elif prim[0] == "neg":
                alts = product(alts, s.neg(prim[1]))
            elif prim[0] == "present":
                alts = product(alts, s.present())
            else:
                alts = product(alts, s.absent())
        out = out + alts
        if len(out) > MAX_TERMS:
            raise OverflowError
    return out


def rx_escape(s: str) -> str:
    """A literal for RE2 (Envoy's safe_regex)."""
    return "".join("\\" + c if c in r"\.+*?()|[]{}^$" else c for c in s)


def _ic(rx: str, ic: bool) -> str:
    return f"(?i:{rx})" if ic else rx


def search(pattern: str, ic: bool) -> str:
    """condroute's unanchored search as a full-match RE2 pattern."""
    return ("(?i)" if ic else "") + f".*(?:{pattern}).*"


class Source:
    def __init__(self, name: str | None, at: Where, ctx: Ctx):
        self.name, self.at, self.ctx = name, at, ctx

    def pos(self, m) -> DNF:
        raise NotImplementedError

    def neg(self, m) -> DNF:
        raise NotImplementedError

    def present(self) -> DNF:
        return TRUE

    def absent(self) -> DNF:
        return FALSE


# ---- request headers (and a verified token's claims, written to headers by jwt_authn)
class HeaderSource(Source):
    def header(self) -> str:
        n = (self.name or "").lower()
        return ":authority" if n == "host" else n

    def string_match(self, m) -> dict:
        if isinstance(m, Eq):
            if len(m.values) == 1:
                return {"exact": m.values[0], **({"ignore_case": True} if m.ignore_case else {})}
            return {"safe_regex": {"regex": _ic("|".join(rx_escape(v) for v in m.values), m.ignore_case)}}
        if isinstance(m, Regex):
            return {"safe_regex": {"regex": search(m.pattern, m.ignore_case)}}
        key = {Prefix: "prefix", Suffix: "suffix", Contains: "contains"}[type(m)]
        return {key: m.value, **({"ignore_case": True} if m.ignore_case else {})}

    def pos(self, m) -> DNF:
        return [[{"name": self.header(), "string_match": self.string_match(m)}]]

    def neg(self, m) -> DNF:
        return [[{"name": self.header(), "string_match": self.string_match(m), "invert_match": True}]]

    def present(self) -> DNF:
        return [[{"name": self.header(), "present_match": True}]]

    def absent(self) -> DNF:
        return [[{"name": self.header(), "present_match": False}]]


class JwtSource(HeaderSource):
    """A verified token's claim: the client filter writes each element of a list claim as its own
    value of an internal header (so any element may match, as in condroute)."""

    def __init__(self, name, at, ctx):
        super().__init__(name, at, ctx)
        ctx.jwt_ok(at)
        self.hdr = ctx.claim_header(name or "")

    def header(self) -> str:
        return self.hdr


# ---- cookies: a regular expression on each Cookie header value
_WS = "[ \\t]*"


class CookieSource(Source):
    def regex(self, value_rx: str) -> str:
        n = self.name or ""
        return f"(?:.*;)?{_WS}{rx_escape(n)}{_WS}={_WS}(?:{value_rx}){_WS}(?:;.*)?"

    def _check(self) -> bool:
        n = self.name or ""
        return bool(n) and not any(c in n for c in "=;") and n == n.strip()

    def value_rx(self, m) -> str | None:
        """The text of the pair between '=' and ';' (around the blanks) for a value that m accepts:
        None when no cookie value can match."""
        if isinstance(m, Eq):
            alts = []
            for v in m.values:
                if ";" in v:
                    continue
                alts.append('"' + rx_escape(v) + '"')
                if not (len(v) >= 2 and v[0] == '"' and v[-1] == '"') and v == v.strip():
                    alts.append(rx_escape(v))
            return _ic("|".join(alts), m.ignore_case) if alts else None
        if isinstance(m, Regex):
            raise NotExported(self.at, "a regular expression on a cookie value: one regular expression on the "
                                       "Cookie header cannot also undo the optional double quotes exactly")
        v = m.value
        if ";" in v:
            return None
        if '"' in v or v != v.strip():
            raise NotExported(self.at, "a cookie prefix/suffix/contains with a double quote or surrounding "
                                       "blanks cannot be matched exactly on the Cookie header")
        e = rx_escape(v)
        if isinstance(m, Prefix):
            rx = f'"{e}[^;]*"|{e}[^;]*' if v else '[^;]*'
        elif isinstance(m, Suffix):
            rx = f'"[^;]*{e}"|[^;]*{e}' if v else '[^;]*'
        else:
            rx = f"[^;]*{e}[^;]*"
        return _ic(rx, m.ignore_case)

    def pos(self, m) -> DNF:
        rx = self.value_rx(m)
        if rx is None or not self._check():
            return FALSE
        return [[{"name": "cookie", "string_match": {"safe_regex": {"regex": self.regex(rx)}}}]]

    def neg(self, m) -> DNF:
        rx = self.value_rx(m)
        if rx is None or not self._check():
            return self.present()
        return [[{"name": "cookie", "string_match": {"safe_regex": {"regex": self.regex(rx)}},
                  "invert_match": True}]]

    def present(self) -> DNF:
        if not self._check():
            return FALSE
        return [[{"name": "cookie", "string_match": {"safe_regex": {"regex": self.regex("[^;]*")}}}]]

    def absent(self) -> DNF:
        if not self._check():
            return TRUE
        return [[{"name": "cookie", "present_match": False}],
                [{"name": "cookie", "string_match": {"safe_regex": {"regex": self.regex("[^;]*")}},
                  "invert_match": True}]]


# ---- query parameters: a regular expression on :path that accepts every encoding of the text
_UNRESERVED_RAW = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$'()*,;:@/?=")


def _hexrx(b: int) -> str:
    out = "%"
    for d in f"{b:02X}":
        out += f"[{d}{d.lower()}]" if d.isalpha() else d
    return out


class QuerySource(Source):
    def enc(self, text: str, ic: bool, in_name: bool) -> str:
        out = []
        for c in text:
            if ord(c) < 0x20 or ord(c) > 0x7e or c == "%":
                raise NotExported(self.at, "a query name or value with '%', a control or non-ASCII character: "
                                           "its encodings in the raw query string are not matched exactly")
            chars = {c.lower(), c.upper()} if ic and c.isalpha() else {c}
            forms = []
            for ch in sorted(chars):
                if ch == " ":
                    forms.append("\\+")
                elif ch in _UNRESERVED_RAW and not (in_name and ch == "="):
                    forms.append(rx_escape(ch))
                forms.append(_hexrx(ord(ch)))
            out.append("(?:" + "|".join(forms) + ")")
        return "".join(out)

    def value(self, m) -> tuple[str, bool] | None:
        """The raw value's regular expression, and whether m accepts the empty value."""
        if isinstance(m, Eq):
            return "|".join(self.enc(v, m.ignore_case, False) for v in m.values), "" in m.values
        if isinstance(m, Regex):
            raise NotExported(self.at, "a regular expression on a query value: Envoy matches the raw, "
                                       "percent-encoded query string, which a pattern for the decoded value "
                                       "does not describe")
        e = self.enc(m.value, m.ignore_case, False)
        rx = {Prefix: f"{e}[^&]*", Suffix: f"[^&]*{e}", Contains: f"[^&]*{e}[^&]*"}[type(m)]
        return rx, m.value == ""

    def regex(self, vrx: str | None, empty: bool) -> str:
        name = self.enc(self.name or "", False, True)
        pair = name + (f"(?:=(?:{vrx}))?" if empty else f"=(?:{vrx})")
        return f"[^?]*\\?(?:[^&]*&)*{pair}(?:&.*)?"

    def pos(self, m) -> DNF:
        vrx, empty = self.value(m)
        return [[{"name": ":path", "string_match": {"safe_regex": {"regex": self.regex(vrx, empty)}}}]]

    def neg(self, m) -> DNF:
        vrx, empty = self.value(m)
        return [[{"name": ":path", "string_match": {"safe_regex": {"regex": self.regex(vrx, empty)}},
                  "invert_match": True}]]

    def _any(self) -> dict:
        return {"name": ":path", "string_match": {"safe_regex": {"regex": self.regex("[^&]*", True)}}}

    def present(self) -> DNF:
        return [[self._any()]]

    def absent(self) -> DNF:
        return [[{**self._any(), "invert_match": True}]]


# ---- method, host, path: always there
class MethodSource(Source):
    """``:method`` (Envoy answers 400 to a method that is not upper-case, condroute upper-cases it)."""

    def pos(self, m) -> DNF:
        return [[{"name": ":method", "string_match": {"safe_regex": {"regex": _plain_rx(m)}}}]]

    def neg(self, m) -> DNF:
        return [[{"name": ":method", "string_match": {"safe_regex": {"regex": _plain_rx(m)}}, "invert_match": True}]]


def _plain_rx(m) -> str:
    """A full-match RE2 pattern for a simple matcher on a whole value."""
    if isinstance(m, Eq):
        return _ic("|".join(rx_escape(v) for v in m.values), m.ignore_case)
    if isinstance(m, Regex):
        return search(m.pattern, m.ignore_case)
    e = rx_escape(m.value)
    return _ic({Prefix: f"{e}.*", Suffix: f".*{e}", Contains: f".*{e}.*"}[type(m)], m.ignore_case)


HOST_TAIL = "\\.*(?::[0-9]*)?"


def host_rx(hosts: tuple[str, ...]) -> str:
    """A route's hosts (exact, lower-case, or ``*.suffix``; ``*`` any) on ``:authority``."""
    alts = []
    for h in hosts:
        if h == "*":
            alts.append("[^:]*")
        elif h.startswith("*."):
            alts.append("[^:]*" + rx_escape(h[1:]))
        else:
            alts.append(rx_escape(h))
    return "(?i:" + "|".join(alts) + ")" + HOST_TAIL


class HostSource(Source):
    """The request's host: lower-cased ``:authority`` without its port and trailing dots."""

    def rx(self, m) -> str | None:
        if isinstance(m, Regex):
            raise NotExported(self.at, "a regular expression on the host: Envoy cannot lower-case the "
                                       "authority or drop its port before the expression searches it")
        vals = m.values if isinstance(m, Eq) else (m.value,)
        ok = [v for v in vals if (m.ignore_case or v == v.lower()) and ":" not in v]
        if isinstance(m, Eq):
            ok = [v for v in ok if v and not v.endswith(".")]
            return "(?i:" + "|".join(rx_escape(v) for v in ok) + ")" + HOST_TAIL if ok else None
        if not ok:
            return None
        v = ok[0]
        e = rx_escape(v)
        if isinstance(m, Prefix):
            body = f"{e}(?:[^:]*[^:.])?" if not v.endswith(".") else f"{e}[^:]*[^:.]"
        elif isinstance(m, Suffix):
            if v.endswith("."):
                return None
            body = f"[^:]*{e}"
        else:
            body = f"[^:]*{e}(?:[^:]*[^:.])?" if not v.endswith(".") else f"[^:]*{e}[^:]*[^:.]"
        return f"(?i:{body})" + HOST_TAIL

    def pos(self, m) -> DNF:
        rx = self.rx(m)
        if rx is None:
            return FALSE
        return [[{"name": ":authority", "string_match": {"safe_regex": {"regex": rx}}}]]

    def neg(self, m) -> DNF:
        rx = self.rx(m)
        if rx is None:
            return TRUE
        return [[{"name": ":authority", "string_match": {"safe_regex": {"regex": rx}}, "invert_match": True}]]


PATH_TAIL = "(?:\\?.*)?"


class PathSource(Source):
    """The normalised path: ``:path`` up to the first ``?``."""

    def rx(self, m) -> str | None:
        if isinstance(m, Regex):
            raise NotExported(self.at, "a regular expression on the path in a condition: Envoy searches a "
                                       "path expression only as the route's own path (match.path: {regex: ...}); "
                                       "on :path it would also see the query string")
        vals = m.values if isinstance(m, Eq) else (m.value,)
        vals = [v for v in vals if "?" not in v]
        if not vals:
            return None
        if isinstance(m, Eq):
            return _ic("|".join(rx_escape(v) for v in vals), m.ignore_case) + PATH_TAIL
        e = rx_escape(vals[0])
        body = {Prefix: f"{e}[^?]*", Suffix: f"[^?]*{e}", Contains: f"[^?]*{e}[^?]*"}[type(m)]
        return _ic(body, m.ignore_case) + PATH_TAIL

    def pos(self, m) -> DNF:
        rx = self.rx(m)
        if rx is None:
            return FALSE
        return [[{"name": ":path", "string_match": {"safe_regex": {"regex": rx}}}]]

    def neg(self, m) -> DNF:
        rx = self.rx(m)
        if rx is None:
            return TRUE
        return [[{"name": ":path", "string_match": {"safe_regex": {"regex": rx}}, "invert_match": True}]]


_HOSTPART = "(?:\\[[^\\]]*\\]|[^:\\[]*)"     # an :authority's host: a bracketed IPv6 address or up to the ':'


class PortSource(Source):
    """The port the client asked for: the ``:authority``'s, 80 when it names none (the listener is
    plain HTTP)."""

    def rx(self, m) -> str | None:
        if isinstance(m, Eq):
            vals = [v for v in m.values if v.isdigit()]
            pr = "|".join(rx_escape(v) for v in vals) if vals else None
            default = "80" in vals
        else:
            pr = _plain_rx(m)
            try:
                default = re.fullmatch(pr, "80") is not None
            except re.error:
                raise NotExported(self.at, "a regular expression on the port that Python's re cannot read "
                                           "to tell whether it matches the default port") from None
        alts = ([f"{_HOSTPART}:(?:{pr})"] if pr else []) + ([_HOSTPART] if default else [])
        return "|".join(alts) if alts else None

    def pos(self, m) -> DNF:
        rx = self.rx(m)
        return FALSE if rx is None else [[{"name": ":authority", "string_match": {"safe_regex": {"regex": rx}}}]]

    def neg(self, m) -> DNF:
        rx = self.rx(m)
        return TRUE if rx is None else [[{"name": ":authority", "string_match": {"safe_regex": {"regex": rx}},
                                          "invert_match": True}]]


class AuthoritySource(PortSource):
    """``host[:port]`` as condroute reads it: the host lower-cased without trailing dots, the port
    left out when it is 80 (the listener is plain HTTP)."""

    def rx(self, m) -> str | None:
        if not isinstance(m, (Eq, Prefix)):
            raise NotExported(self.at, "only equals/in and prefix are exported for the authority condition "
                                       "(Envoy cannot lower-case it or drop a default port before matching)")
        vals = m.values if isinstance(m, Eq) else (m.value,)
        alts = []
        for v in vals:
            if not m.ignore_case and v != v.lower():
                continue
            host, colon, port = v.rpartition(":") if ":" in v and not v.endswith("]") else (v, "", "")
            if colon and not port.isdigit() and not (isinstance(m, Prefix) and port == ""):
                continue
            h = f"(?i:{rx_escape(host)})"
            if isinstance(m, Eq):
                if not host or host.endswith("."):
                    continue
                if not colon:
                    alts.append(f"{h}\\.*(?::80)?")
                elif port != "80":
                    alts.append(f"{h}\\.*:{port}")
            elif not colon:
                alts.append(HostSource(None, self.at, self.ctx).rx(Prefix(v, True)) or "(?!)")
            else:
                if "80".startswith(port):
                    raise NotExported(self.at, f"an authority prefix {v!r} whose port could be 80, which "
                                               "condroute leaves out")
                alts.append(f"{h}\\.*:{port}[0-9]*")
        alts = [a for a in alts if a != "(?!)"]
        return "|".join(f"(?:{a})" for a in alts) if alts else None


SOURCES: dict[str, type[Source]] = {
    "header": HeaderSource, "cookie": CookieSource, "query": QuerySource, "jwt": JwtSource,
    "method": MethodSource, "host": HostSource, "path": PathSource, "port": PortSource,
    "authority": AuthoritySource,
}
