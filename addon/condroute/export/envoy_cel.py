"""The CEL that importers write for query parameters, as Envoy header matchers (for envoy_match).

HTTPRoute ``queryParams`` and Istio ``queryParams`` become CEL: ``hasQuery("n")``,
``getQuery("n") == "v"`` (the FIRST value of that decoded name), ``.startsWith("p")``, joined with
``&&`` (and parentheses). That subset is exported as regular expressions on ``:path``; any other
CEL is refused, located, with the reason.
"""
from __future__ import annotations

import json
import re

from .envoy_match import DNF, Ctx, QuerySource, product
from .ir import Eq, NotExported, Prefix, Where

_CEL_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<op>&&|==|\(|\)|\.)|(?P<id>[A-Za-z_][A-Za-z_0-9.]*))')


def _cel_tokens(expr: str) -> list[tuple[str, str]] | None:
    out, pos = [], 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _CEL_TOKEN.match(expr, pos)
        if m is None:
            return None
        kind = m.lastgroup
        text = m.group(kind)
        out.append((kind, json.loads(text) if kind == "str" else text))
        pos = m.end()
    return out


class _CelParser:
    def __init__(self, toks, at: Where, ctx: Ctx):
        self.t, self.i, self.at, self.ctx = toks, 0, at, ctx

    def peek(self):
        return self.t[self.i] if self.i < len(self.t) else (None, None)

    def take(self, kind: str, text: str | None = None):
        k, v = self.peek()
        if k != kind or (text is not None and v != text):
            raise ValueError
        self.i += 1
        return v

    def conj(self) -> DNF:
        out = self.term()
        while self.peek() == ("op", "&&"):
            self.i += 1
            out = product(out, self.term())
        return out

    def term(self) -> DNF:
        if self.peek() == ("op", "("):
            self.i += 1
            d = self.conj()
            self.take("op", ")")
            return d
        name = self.take("id")
        if name == "hasQuery":
            self.take("op", "(")
            q = self.take("str")
            self.take("op", ")")
            return QuerySource(q, self.at, self.ctx).present()
        if name == "getQuery":
            self.take("op", "(")
            q = self.take("str")
            self.take("op", ")")
            src = FirstQuery(q, self.at, self.ctx)
            if self.peek() == ("op", "=="):
                self.i += 1
                return src.test(Eq((self.take("str"),)))
            self.take("op", ".")
            fn = self.take("id")
            self.take("op", "(")
            arg = self.take("str")
            self.take("op", ")")
            if fn == "startsWith":
                return src.test(Prefix(arg))
            raise NotExported(self.at, f"cel: getQuery(...).{fn}(...): Envoy matches the raw, percent-encoded "
                                       "query string, which a pattern for the decoded value does not describe")
        if name == "request.scheme":
            raise NotExported(self.at, "cel: request.scheme: the exported listener is plain HTTP, so Envoy does "
                                       "not know the scheme a client used in front of it")
        raise ValueError


def cel_dnf(expr: str, at: Where, ctx: Ctx) -> DNF:
    toks = _cel_tokens(expr)
    try:
        if toks is None:
            raise ValueError
        p = _CelParser(toks, at, ctx)
        d = p.conj()
        if p.i != len(toks):
            raise ValueError
        return d
    except ValueError:
        raise NotExported(at, "cel: Envoy's route match cannot evaluate CEL; only the query tests "
                              "that imported routes write (hasQuery, getQuery(...) == / startsWith, "
                              "joined with &&) are exported") from None


class FirstQuery(QuerySource):
    """``getQuery(NAME)``: the FIRST value of the parameter, decoded ("" when it is missing)."""

    def not_name(self) -> str:
        """A raw parameter name that does not decode to NAME (the empty one included)."""
        n = self.name or ""
        alts = []
        for i, c in enumerate(n):
            pre = self.enc(n[:i], False, True)
            alts.append(pre)                                   # the name ends early
            good = ({c} if c not in "+%&=" else set()) | ({"+"} if c == " " else set())
            bad1 = "[^&=%" + "".join("\\" + g if g in "\\]^-" else g for g in good) + "]"
            h1, h2 = f"{ord(c):02X}"
            c1 = f"{h1}{h1.lower()}" if h1.isalpha() else h1
            c2 = f"{h2}{h2.lower()}" if h2.isalpha() else h2
            bad = f"(?:{bad1}[^&=]*|%|%[^{c1}&=][^&=]*|%[{c1}]|%[{c1}][^{c2}&=][^&=]*)"
            alts.append(pre + bad)
        alts.append(self.enc(n, False, True) + "[^&=]+")      # a longer name
        return "(?:" + "|".join(alts) + ")"

    def test(self, m) -> DNF:
        vrx, empty = self.value(m)
        name = self.enc(self.name or "", False, True)
        pair = name + (f"(?:=(?:{vrx}))?" if empty else f"=(?:{vrx})")
        rx = f"[^?]*\\?(?:(?:{self.not_name()}(?:=[^&]*)?)?&)*{pair}(?:&.*)?"
        first = [[{"name": ":path", "string_match": {"safe_regex": {"regex": rx}}}]]
        return first + self.absent() if empty else first
