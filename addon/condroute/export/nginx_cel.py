"""The CEL the nginx export can write: the helper calls importers emit (an HTTPRoute's query
matches: ``hasQuery("animal") && getQuery("animal") == "whale"``; Istio's scheme match:
``request.scheme == "http"``) and their obvious relatives, joined with ``&&``, ``||``, ``!`` and
parentheses. Anything else is refused (``NotExported``).

Read as the CEL helpers read a request (``cel/helpers.py``): ``hasQuery``/``hasHeader``/
``hasCookie`` test presence; ``getQuery``/``getHeader``/``getCookie`` give the *first* value, or
"" without one; ``containsCookie(N, V)`` holds when any cookie N has the value V;
``request.scheme`` is nginx's ``$scheme`` (the configuration listens on plain HTTP).
"""
from __future__ import annotations

import re

from . import ir
from .ir import NotExported, Where

_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>&&|\|\||==|!=|[!().,])|(?P<id>[A-Za-z_][A-Za-z0-9_]*))""")
_ESC = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}
HAS = {"hasQuery": "query", "hasHeader": "header", "hasCookie": "cookie"}
GET = {"getQuery": "query_first", "getHeader": "header", "getCookie": "cookie_first"}


class _Refused(Exception):
    pass


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise _Refused
        pos = m.end()
        kind = m.lastgroup or ""
        text = m.group(kind)
        if kind == "str":
            body, s, i = text[1:-1], [], 0
            while i < len(body):
                if body[i] == "\\":
                    if body[i + 1] not in _ESC:
                        raise _Refused
                    s.append(_ESC[body[i + 1]])
                    i += 2
                else:
                    s.append(body[i])
                    i += 1
            text = "".join(s)
        out.append((kind, text))
    return out


class _Parser:
    def __init__(self, toks: list[tuple[str, str]], at: Where):
        self.t, self.i, self.at = toks, 0, at

    def peek(self) -> tuple[str, str] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, text: str | None = None, kind: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (text is not None and tok[1] != text) or (kind is not None and tok[0] != kind):
            raise _Refused
        self.i += 1
        return tok[1]

    def expr(self) -> ir.Cond:
        parts = [self.conj()]
        while self.peek() == ("op", "||"):
            self.take("||")
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else ir.Or(tuple(parts))

    def conj(self) -> ir.Cond:
        parts = [self.unary()]
        while self.peek() == ("op", "&&"):
            self.take("&&")
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else ir.And(tuple(parts))

    def unary(self) -> ir.Cond:
        if self.peek() == ("op", "!"):
            self.take("!")
            return ir.Not(self.unary())
        if self.peek() == ("op", "("):
            self.take("(")
            c = self.expr()
            self.take(")")
            return c
        return self.atom()

    def call_args(self, n: int) -> list[str]:
        self.take("(")
        args = [self.take(kind="str")]
        while len(args) < n:
            self.take(",")
            args.append(self.take(kind="str"))
        self.take(")")
        return args

    def atom(self) -> ir.Cond:
        name = self.take(kind="id")
        if name in ("true", "false"):
            return ir.TRUE if name == "true" else ir.Or(())
        if name in HAS:
            (arg,) = self.call_args(1)
            src = HAS[name]
            return ir.Atom(src, arg.lower() if src == "header" else arg, ir.Present(True), self.at)
        if name == "containsCookie":
            n, v = self.call_args(2)
            return ir.Atom("cookie", n, ir.Eq((v,)), self.at)
        if name in GET:
            (arg,) = self.call_args(1)
            return self.compare(GET[name], arg.lower() if name == "getHeader" else arg)
        if name == "request":
            self.take(".")
            field = self.take(kind="id")
            if field not in ("scheme", "method"):
                raise _Refused
            return self.compare(field, None)
        raise _Refused

    def compare(self, source: str, name: str | None) -> ir.Cond:
        op = self.take(kind="op")
        if op not in ("==", "!="):
            raise _Refused
        value = self.take(kind="str")
        if source in ("scheme", "method"):
            c: ir.Cond = ir.Atom(source, None, ir.Eq((value,)), self.at)
        elif value == "":           # "" is also what a missing value reads as
            present = ir.Atom(source.replace("_first", ""), name, ir.Present(True), self.at)
            c = ir.Not(present) if source == "header" else \
                ir.Or((ir.Not(present), ir.Atom(source, name, ir.Eq(("",)), self.at)))
        else:
            c = ir.Atom(source, name, ir.Eq((value,)), self.at)
        return ir.Not(c) if op == "!=" else c


def translate(c: ir.Cel) -> ir.Cond:
    """``c`` as a condition tree of the sources nginx reads, or NotExported."""
    try:
        p = _Parser(_tokens(c.expr), c.at)
        tree = p.expr()
        if p.peek() is not None:
            raise _Refused
        return tree
    except _Refused:
        raise NotExported(c.at, "cel: only hasQuery/getQuery, hasHeader/getHeader, hasCookie/getCookie/"
                                "containsCookie, request.scheme and request.method compared with strings, "
                                "joined by &&, || and !, are exported to nginx") from None
