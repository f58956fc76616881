"""The forwarded path in an HAProxy backend section (``engine.build_target``): a route path template
as one anchored PCRE pattern with numbered groups, a backend's path template or an imported rewrite
as ``http-request`` lines (``set-var-fmt``, ``set-path``/``set-pathq``), the "must start with /"
fix, the escape check (400), the upstream's base path and the query string."""
from __future__ import annotations

import re

import re2

from .. import model
from . import ir
from ..compile.rewrite import parse_replacement
from .haproxy_text import arg, lf, pcre, pcre_literal, regex_problem, word


def path_regex(rp: model.RoutePath, at: ir.Where) -> tuple[str, dict[str, int]]:
    """A route path template as one anchored PCRE pattern, and the group number of each parameter
    ("rest" included), as ``compile.runtime.PathPattern.match`` reads it."""
    groups: dict[str, int] = {}
    if rp.segs is not None:
        if not rp.segs and not rp.has_rest:
            return "^\\b\\B", {}         # matches nothing, as the template matches nothing
        parts = []
        for is_param, text in rp.segs:
            if is_param:
                groups[text] = len(groups) + 1
                parts.append("([^/]+)")
            else:
                parts.append(pcre_literal(text))
        rx = "^/" + "/".join(parts)
        if rp.has_rest:
            groups["rest"] = len(groups) + 1
            rx += "(?:/(.*))?$" if rp.segs else "(.*)$"
        else:
            rx += "$"
        return rx, groups
    assert rp.pattern is not None
    pat = rp.pattern
    if pat.endswith("\\Z"):
        pat = pat[:-2]
    why = regex_problem(pat)
    if why:
        raise ir.NotExported(at, f"path {rp.text!r}: {why}")
    for m in re.finditer(r"\(\?P<(\w+)>", pat):
        groups[m.group(1)] = len(groups) + 1
    if re.search(r"\((?!\?)", pat):
        raise ir.NotExported(at, f"path {rp.text!r}: an unnamed group in the path pattern")
    return "^" + pat.replace("'", "\\x27") + "$", groups


def path_lines(r: model.Route, b: model.Backend, up: model.Upstream, at: ir.Where) -> list[str]:
    """The backend's ``http-request`` lines that write the forwarded path (engine.build_target):
    a template or a rewrite, the "must start with /" fix, the escape check (400), the base path,
    and the query string (kept; joined with & when the template has its own)."""
    out: list[str] = []
    base = up.base_path
    tpl = b.path
    if b.rewrite is not None:
        fmt = rewrite_fmt(b.rewrite, at, out)
        has_q = False
    elif tpl is not None:
        groups: dict[str, int] = {}
        rx = ""
        if r.path is not None and r.path.matcher is None:
            rx, groups = path_regex(r.path, at)
        fmt_parts = []
        for is_ph, s in tpl.parts:
            if not is_ph:
                fmt_parts.append(lf(s))
            elif s == "path":
                fmt_parts.append("%[path]")
            elif s in groups:
                out.append(f"http-request set-var(txn.cr_p_{s}) {word('path,regsub(' + arg(rx) + ',' + arg(chr(92) + str(groups[s])) + ')')}")
                fmt_parts.append(f"%[var(txn.cr_p_{s})]")
            # a placeholder the route does not capture renders as "" in condroute
        fmt = "".join(fmt_parts)
        has_q = "?" in "".join(s for is_ph, s in tpl.parts if not is_ph)
    else:
        if base:
            out.append(f"http-request set-path {word(lf(base) + '%[path]')}")
        out += _empty_query()
        return out
    out.append(f"http-request set-var-fmt(txn.cr_np) {word(fmt)}")
    out.append("http-request set-var-fmt(txn.cr_np) /%[var(txn.cr_np)] unless { var(txn.cr_np) -m beg / }")
    out.append("http-request deny deny_status 400 if { var(txn.cr_np) -m reg -- '(^|/)\\.\\.?(;[^/]*)?(/|$)' }")
    np = lf(base) + "%[var(txn.cr_np)]"
    if has_q:
        out.append(f"http-request set-pathq {word(np + '&%[query]')} if {{ query -m len gt 0 }}")
        out.append(f"http-request set-pathq {word(np)} unless {{ query -m len gt 0 }}")
    else:
        out.append(f"http-request set-path {word(np)}")
        out += _empty_query()
    return out


def _empty_query() -> list[str]:
    # "/a?" is forwarded as "/a" by condroute (an empty query string is no query string)
    return ["http-request set-pathq %[path] if { query -m found } { query -m len 0 }"]


def re2_matches_empty(pattern: str) -> bool:
    try:
        return re2.search(pattern, "") is not None
    except Exception:   # noqa: BLE001 - the rules loaded, so RE2 compiled it; be safe anyway
        return True


def rewrite_fmt(rw: model.PathRewrite, at: ir.Where, out: list[str], var: str = "txn.cr_np",
                guard: str = "") -> str:
    """A log-format string for an imported rewrite (compile.rewrite.rewrite_path); lines it needs
    first go to ``out`` (each ending in ``guard``, a condition)."""
    if rw.kind == "full":
        return lf(rw.value)
    if rw.kind == "prefix":
        return lf(rw.value) + f"%[path,bytes({len(rw.prefix.encode())})]"
    if rw.kind == "segments":
        p = rw.prefix.rstrip("/")
        rv = rw.value.rstrip("/")
        if not p:                   # every path is under "/": "/" + rest is the whole path
            return lf(rv) + "%[path]"
        # the prefix itself becomes the value ("/" for none); under it, the value + the rest
        out.append(f"http-request set-var-fmt({var}) {word(lf(rv or '/'))} if {{ path -m str -- {word(p)} }}"
                   f" {guard}".rstrip())
        out.append(f"http-request set-var-fmt({var}) {word(lf(rv) + f'%[path,bytes({len(p.encode())})]')} "
                   f"if !{{ path -m str -- {word(p)} }} {guard}".rstrip())
        return f"%[var({var})]"
    if rw.kind == "regex":
        why = regex_problem(rw.pattern)
        if why:
            raise ir.NotExported(at, f"regex rewrite {rw.pattern!r}: {why}")
        if re2_matches_empty(rw.pattern):
            raise ir.NotExported(at, f"regex rewrite {rw.pattern!r}: a pattern that matches the empty string "
                                     "is replaced at other places by HAProxy's regsub than by RE2")
        subst = []
        for part in parse_replacement(rw.value):
            if isinstance(part, int):
                subst.append(f"\\{part}")
            elif "\\" in part or "'" in part:
                raise ir.NotExported(at, "regex rewrite: a backslash or quote in the replacement")
            else:
                subst.append(part)
        out.append(f"http-request set-var({var}) "
                   + word("path,regsub(" + arg(pcre(rw.pattern)) + "," + arg("".join(subst)) + ",g)")
                   + f" {guard}".rstrip())
        return f"%[var({var})]"
    raise ir.NotExported(at, f"a {rw.kind} path rewrite: not exported to HAProxy yet")


