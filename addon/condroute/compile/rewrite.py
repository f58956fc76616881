"""Path rewrites and redirects of imported gateways (model ``PathRewrite``, ``Redirect``, ``Mirror``):
checked and compiled once here, applied per request by :func:`rewrite_path` (called by the engine).

A regex rewrite (Istio ``uriRegexRewrite``, Envoy ``regex_rewrite``) runs on RE2, like every
pattern in a rules file, and replaces every non-overlapping match. Its replacement is read the way
Envoy reads it (RE2's rewrite string): ``\\0``-``\\9`` are the whole match and its groups, ``\\\\`` a
backslash; any other backslash is refused when the rules load, as is a group the pattern lacks."""
from __future__ import annotations

from typing import Any

import re2

from .. import model
from ..conditions.matchers import Regex
from ..load.ctx import CompileCtx

REWRITE_KINDS = ("segments", "prefix", "full", "regex")
PORT_FROM = ("request", "scheme")


class RewriteRegex(Regex):
    """An RE2 pattern and its replacement, parsed into literal parts and group numbers."""

    def __init__(self, pattern: str, replacement: str):
        super().__init__(pattern, False)
        self.groups: int = self._rx.groups
        self.parts: tuple[str | int, ...] = parse_replacement(replacement)
        bad = [g for g in self.parts if isinstance(g, int) and g > self.groups]
        if bad:
            raise ValueError(f"the replacement refers to group \\{bad[0]}, but the pattern has "
                             f"{self.groups} group{'s' * (self.groups != 1)}")

    def sub(self, s: str) -> str:
        try:
            matches = list(self._rx.finditer(s))
        except UnicodeError:   # lone surrogates from undecodable bytes
            s = s.encode("utf-8", "replace").decode("utf-8")
            matches = list(self._rx.finditer(s))
        if not matches:
            return s
        out, at = [], 0
        for m in matches:
            out.append(s[at:m.start()])
            for p in self.parts:
                out.append(p if isinstance(p, str) else (m.group(p) or ""))
            at = m.end()
        out.append(s[at:])
        return "".join(out)


def parse_replacement(text: str) -> tuple[str | int, ...]:
    """RE2's rewrite string: ``\\N`` (a digit) is group N, ``\\\\`` a backslash. ValueError otherwise."""
    parts: list[str | int] = []
    lit: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            lit.append(c)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt == "\\":
            lit.append("\\")
        elif nxt.isdigit() and nxt.isascii():
            if lit:
                parts.append("".join(lit))
                lit = []
            parts.append(int(nxt))
        else:
            raise ValueError("a backslash in the replacement must be followed by a digit (a group, "
                             f"as in \\1) or another backslash, not {nxt!r}" if nxt else
                             "the replacement ends in a lone backslash")
        i += 2
    if lit:
        parts.append("".join(lit))
    return tuple(parts)


class RewriteTemplate:
    """A backend's ``rewrite`` in the place of its ``path`` template (the runtime Backend's ``path``):
    the engine renders it like a template, so that a backend without a rewrite pays nothing for it."""

    __slots__ = ("rewrite", "rx", "text")

    def __init__(self, rewrite: model.PathRewrite, rx: RewriteRegex | None):
        self.rewrite, self.rx, self.text = rewrite, rx, rewrite_text(rewrite)

    def render(self, params: Any, path: str, rest: str | None) -> str:
        return rewrite_path(self.rewrite, self.rx, path)


def rewrite_text(rw: model.PathRewrite) -> str:
    """A PathRewrite as explain and reasons name it."""
    if rw.kind == "segments":
        return f"prefix {rw.prefix or '/'} -> {rw.value or '/'} (by segment)"
    if rw.kind == "prefix":
        return f"prefix {rw.prefix} -> {rw.value}"
    if rw.kind == "regex":
        return f"regex {rw.pattern} -> {rw.value}"
    return f"full path -> {rw.value}"


def rewrite_path(rw: model.PathRewrite, rx: RewriteRegex | None, path: str) -> str:
    """The path (no query) after ``rw`` (see :class:`condroute.model.PathRewrite`)."""
    k = rw.kind
    if k == "full":
        return rw.value
    if k == "segments":
        p = rw.prefix.rstrip("/")
        if path == p:
            rest = None
        elif p == "" or path.startswith(p + "/"):
            rest = path[len(p) + 1:]
        else:               # not under the prefix (cannot happen for the route it came with)
            return path
        r = rw.value.rstrip("/")
        return (r or "/") if rest is None else f"{r}/{rest}"
    if k == "prefix":
        return rw.value + path[len(rw.prefix):]
    assert rx is not None
    return rx.sub(path)


def _compile_rewrite(rw: model.PathRewrite, what: str, line: int, cc: CompileCtx) -> tuple[bool, RewriteRegex | None]:
    if rw.kind not in REWRITE_KINDS:
        cc.error_at(line, 1, f"{what}: unknown rewrite kind {rw.kind!r}; expected one of: {', '.join(REWRITE_KINDS)}")
        return False, None
    if rw.kind != "regex":
        return True, None
    try:
        return True, RewriteRegex(rw.pattern, rw.value)
    except (re2.error, ValueError) as e:
        why = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        cc.error_at(line, 1, f"{what}: bad regular expression rewrite {rw.pattern!r} -> {rw.value!r}: {why} "
                             "(RE2 syntax; in the replacement \\1 is a group, \\\\ a backslash)")
        return False, None


def compile_backend_extras(b: model.Backend, cc: CompileCtx) -> dict[str, Any] | None:
    """The compiled parts of ``b``'s rewrite and redirect (keyword arguments of the runtime Backend:
    a rewrite takes the place of ``path``), after checking its rewrite, redirect and mirrors; None
    after recording a problem."""
    kw: dict[str, Any] = {}
    ok = True
    where = f"backend {b.name!r}"
    if b.rewrite is not None:
        good, rx = _compile_rewrite(b.rewrite, f"{where}: rewrite", b.line, cc)
        ok = ok and good
        kw["path"] = RewriteTemplate(b.rewrite, rx)     # instead of the path template
    r = b.redirect
    if r is not None:
        if not 300 <= r.status <= 399:
            cc.error_at(b.line, 1, f"{where}: a redirect's status must be 3xx, not {r.status}")
            ok = False
        if r.scheme not in (None, "http", "https"):
            cc.error_at(b.line, 1, f"{where}: a redirect's scheme must be http or https, not {r.scheme!r}")
            ok = False
        if r.port is not None and not 1 <= r.port <= 65535:
            cc.error_at(b.line, 1, f"{where}: a redirect's port must be 1-65535, not {r.port}")
            ok = False
        if r.port is None and r.port_from not in PORT_FROM:
            cc.error_at(b.line, 1, f"{where}: a redirect's port_from must be one of {', '.join(PORT_FROM)}, "
                                   f"not {r.port_from!r}")
            ok = False
        if r.path is not None:
            good, kw["redirect_rx"] = _compile_rewrite(r.path, f"{where}: redirect path", b.line, cc)
            ok = ok and good
    for m in b.mirrors:
        if not 0 <= m.percent <= 100:
            cc.error_at(b.line, 1, f"{where}: a mirror's percent must be 0-100, not {m.percent:g}")
            ok = False
    return kw if ok else None
