"""The nginx exporter's matching: condroute's value matchers written as PCRE (nginx's ``map``
regular expressions) over the variable nginx has for each part of a request, and condition trees
(AND/OR/NOT) written as one regular expression over a string of atom bits.

Each *leaf* (one value matcher on one part of the request) becomes ``map SOURCE $cr_aN { "~RX" 1;
default 0; }``. How SOURCE and RX keep condroute's meaning:

- header: ``$http_NAME`` is the whole value (nginx joins a repeated header with ``", "``); nginx
  reads an empty header as a missing one, so a leaf that holds on "" also asks njs whether the
  header was sent (``nginx_parts``);
- cookie: a search of the whole ``$http_cookie`` (nginx joins Cookie headers with ``"; "``) for
  a pair with exactly that name (condroute's parsing: split on ``;``, name and value stripped,
  one pair of surrounding quotes removed) whose value matches: *any* pair, as condroute;
- query: a search of the raw ``$args`` for a parameter whose URL-decoded name and value match:
  every literal character is written as itself or as any %XX spelling of its UTF-8 bytes
  (``+`` and ``%20`` for a space), so that the raw query is matched as condroute matches the
  decoded one (``$arg_NAME`` is neither decoded nor exact: its name is case-insensitive);
- method, host, path, port: single values, always present.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from . import ir
from .ir import NotExported, Where
from .nginx_cel import translate

WS = r"[\t-\r\x1c-\x20]"            # what Python's str.strip() strips (ASCII)
HEX = "[0-9A-Fa-f]"
QTOK = rf"(?:%{HEX}{{2}}|%(?!{HEX}{{2}})|[^&%])"   # one decoded character of a raw query value


def esc(s: str) -> str:
    """``s`` as a PCRE literal (nginx compiles without UTF mode: non-ASCII as its UTF-8 bytes)."""
    out = []
    for c in s:
        if c.isascii() and c.isalnum():
            out.append(c)
        elif c.isascii() and c not in "\n\r\t\x0b\x0c\x00" and c.isprintable():
            out.append("\\" + c)
        else:
            out.append("".join(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogateescape")))
    return "".join(out)


def _hexci(b: int) -> str:
    def d(c: str) -> str:
        return f"[{c.upper()}{c.lower()}]" if c.isalpha() else c
    h = f"{b:02X}"
    return "%" + d(h[0]) + d(h[1])


def qchar(c: str, ignore_case: bool, name: bool) -> str:
    """A decoded query character: every raw spelling of it (itself, %XX, ``+`` for a space)."""
    variants = {c.lower(), c.upper()} if ignore_case and c.isascii() else {c}
    alts: list[str] = []
    for v in sorted(variants):
        if v == " ":
            alts += [r"\+", "%20", r"\ "]
            continue
        bs = v.encode("utf-8", "surrogateescape")
        if len(bs) == 1:
            if v == "%":
                alts.append(f"%(?!{HEX}{{2}})")
            elif v not in "&+#" and not (name and v == "=") and v.isprintable():
                alts.append(esc(v))
            alts.append(_hexci(bs[0]))
        else:   # a multi-byte character: each byte raw or escaped
            alts.append("".join(f"(?:\\x{b:02x}|{_hexci(b)})" for b in bs))
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


def qlit(s: str, ignore_case: bool = False, name: bool = False) -> str:
    return "".join(qchar(c, ignore_case, name) for c in s)


# ------------------------------------------------------------------------------------- leaf matchers
Leaf = Union[ir.Eq, ir.Prefix, ir.Suffix, ir.Contains, ir.Regex, ir.Present]


@dataclass(frozen=True)
class Test:
    """One leaf of a condition: ``matcher`` (never MNot/MAll) on ``source``/``name``."""
    source: str
    name: str | None
    matcher: Leaf
    at: Where


def leaf_holds_empty(m: Leaf) -> bool:
    """Whether the leaf holds for the empty value."""
    if isinstance(m, ir.Eq):
        return "" in m.values
    if isinstance(m, (ir.Prefix, ir.Suffix, ir.Contains)):
        return m.value == ""
    if isinstance(m, ir.Present):
        return m.present
    return False


def _ic(m: Leaf) -> bool:
    return getattr(m, "ignore_case", False)


def _check_ic(m: Leaf, at: Where, texts: tuple[str, ...]) -> None:
    if _ic(m) and not all(t.isascii() for t in texts):
        raise NotExported(at, "ignore_case on a non-ASCII value: nginx's regular expressions fold "
                              "ASCII letters only")


def translate_regex(pattern: str, at: Where) -> str:
    """An RE2 pattern as PCRE: the same syntax for what rules files use; named groups become plain
    groups (nginx would make each name a variable, clashing with its own: ``(?P<host>...)``)."""
    out, i, n = [], 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            if pattern[i + 1] == "C":
                raise NotExported(at, "the regular expression uses \\C (a byte), which PCRE reads differently")
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]":
                out.append("[]")
                i += 2
                continue
        elif c == "(" and pattern.startswith(("(?P<", "(?<"), i) and not pattern.startswith(("(?<=", "(?<!"), i):
            j = pattern.index(">", i)
            out.append("(")
            i = j + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def whole_rx(m: Leaf, at: Where) -> str | None:
    """A regex that holds for a whole single value when leaf ``m`` does (None: always)."""
    ic = "(?i)" if _ic(m) else ""
    if isinstance(m, ir.Eq):
        _check_ic(m, at, m.values)
        return f"{ic}^(?:{'|'.join(esc(v) for v in m.values)})$"
    if isinstance(m, ir.Prefix):
        _check_ic(m, at, (m.value,))
        return f"{ic}^{esc(m.value)}"
    if isinstance(m, ir.Suffix):
        _check_ic(m, at, (m.value,))
        return f"{ic}{esc(m.value)}$"
    if isinstance(m, ir.Contains):
        _check_ic(m, at, (m.value,))
        return f"{ic}{esc(m.value)}"
    if isinstance(m, ir.Regex):
        return f"{ic}{translate_regex(m.pattern, at)}"
    if isinstance(m, ir.Present):
        return None
    raise NotExported(at, f"{type(m).__name__.lower()}: no nginx form")


def cookie_pair(name: str) -> str:
    return f"(?:^|;){WS}*{esc(name)}{WS}*="


def cookie_first(name: str) -> str:
    """The first pair of cookie ``name``: ``$1$2`` is its value as condroute reads it."""
    return (f'{cookie_pair(name)}{WS}*(?:"([^;]*)"|(?!"[^;]*"{WS}*(?:;|$))([^;]*?)){WS}*(?:;|$)')


def cookie_rx(name: str, m: Leaf, at: Where) -> str:
    """Some pair of cookie ``name`` has a value that leaf ``m`` holds for."""
    if isinstance(m, ir.Present):
        return cookie_pair(name)
    ic = _ic(m)

    def lit(s: str) -> str:
        return esc(s)
    if isinstance(m, ir.Eq):
        _check_ic(m, at, m.values)
        vals = [v for v in m.values if ";" not in v]
        if not vals:
            return "(?!)"
        vq = "|".join(lit(v) for v in vals)
        vu_vals = [v for v in vals if v and v.strip(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f") == v]
        vu = "|".join(lit(v) for v in vu_vals) if vu_vals else None
    elif isinstance(m, (ir.Prefix, ir.Suffix, ir.Contains)):
        _check_ic(m, at, (m.value,))
        v = lit(m.value)
        if ";" in m.value:
            return "(?!)"
        vq = {ir.Prefix: f"{v}[^;]*", ir.Suffix: f"[^;]*{v}", ir.Contains: f"[^;]*{v}[^;]*"}[type(m)]
        vu = {ir.Prefix: f"{v}[^;]*?", ir.Suffix: f"[^;]*?{v}", ir.Contains: f"[^;]*?{v}[^;]*?"}[type(m)]
    else:
        raise NotExported(at, "a regular expression on a cookie is tested on its first value only")
    wrap = (lambda s: f"(?i:{s})") if ic else (lambda s: f"(?:{s})")
    unq = []
    if vu is not None:
        unq.append(f"(?![\\t-\\r\\x1c-\\x20]){wrap(vu)}(?<![\\t-\\r\\x1c-\\x20])")
    if leaf_holds_empty(m):
        unq.append("")
    unquoted = f'(?!"[^;]*"{WS}*(?:;|$))(?:{"|".join(unq)})' if unq else "(?!)"
    return f'{cookie_pair(name)}{WS}*(?:"{wrap(vq)}"|{unquoted}){WS}*(?:;|$)'


def query_rx(name: str, m: Leaf, at: Where) -> str:
    """Some parameter of the raw query decodes to ``name`` and to a value leaf ``m`` holds for."""
    n = qlit(name, name=True)
    start = f"(?:^|&){n}"
    if isinstance(m, ir.Present):
        return f"{start}(?:=|&|$)"
    ic = _ic(m)
    if isinstance(m, ir.Eq):
        _check_ic(m, at, m.values)
        v = "|".join(qlit(x, ic) for x in m.values if x)
    elif isinstance(m, ir.Prefix):
        _check_ic(m, at, (m.value,))
        v = f"{qlit(m.value, ic)}{QTOK}*"
    elif isinstance(m, ir.Suffix):
        _check_ic(m, at, (m.value,))
        v = f"{QTOK}*?{qlit(m.value, ic)}"
    elif isinstance(m, ir.Contains):
        _check_ic(m, at, (m.value,))
        v = f"{QTOK}*?{qlit(m.value, ic)}{QTOK}*"
    else:
        raise NotExported(at, "a regular expression on a query parameter: nginx sees the query "
                              "string raw (not URL-decoded), condroute matches the decoded value")
    alts = [f"={'(?:' + v + ')' if v else '(?!)'}(?=&|$)"]
    if leaf_holds_empty(m):
        alts.append("=?(?=&|$)")
    return f"{start}(?:{'|'.join(alts)})"


def first_of(rx: str, sep: str, name_rx: str) -> str:
    """``rx`` (a search for some pair, from ``(?:^|SEP)``) held by the *first* pair of that name."""
    start = f"(?:^|{sep})"
    assert rx.startswith(start)
    return f"^(?:(?!{name_rx})[^{sep}]*{sep})*" + rx[len(start):]


def cookie_first_rx(name: str, m: Leaf, at: Where) -> str:
    return first_of(cookie_rx(name, m, at), ";", f"{WS}*{esc(name)}{WS}*=")


def query_first_rx(name: str, m: Leaf, at: Where) -> str:
    return first_of(query_rx(name, m, at), "&", f"{qlit(name, name=True)}(?:=|&|$)")


def query_first(name: str) -> str:
    """The first parameter ``name`` of the raw query: ``$1`` its raw value."""
    return f"(?:^|&){qlit(name, name=True)}(?:=([^&]*))?(?:&|$)"


# ------------------------------------------------------------------------------ conditions as bits
def leaves(c: ir.Cond) -> ir.Cond:
    """``c`` with every Atom's matcher split into leaf Tests (MNot -> Not, MAll -> And,
    Present(False) -> Not(Present(True)))."""
    if isinstance(c, ir.And):
        return ir.And(tuple(leaves(p) for p in c.parts))
    if isinstance(c, ir.Or):
        return ir.Or(tuple(leaves(p) for p in c.parts))
    if isinstance(c, ir.Not):
        return ir.Not(leaves(c.inner))
    if isinstance(c, ir.Atom):
        return _split(c.source, c.name, c.matcher, c.at)
    if isinstance(c, ir.Cel):
        return leaves(translate(c))
    return c


def _split(source: str, name: str | None, m: ir.Matcher, at: Where):
    if isinstance(m, ir.MNot):
        return ir.Not(_split(source, name, m.inner, at))
    if isinstance(m, ir.MAll):
        return ir.And(tuple(_split(source, name, p, at) for p in m.parts))
    if isinstance(m, ir.Present) and not m.present:
        return ir.Not(Test(source, name, ir.Present(True), at))
    if isinstance(m, ir.Compare):
        raise NotExported(at, f"{source} {name or ''}: a numeric comparison ({m.op}) has no nginx "
                              "map form".replace("  ", " "))
    return Test(source, name, m, at)


def bits_rx(c, index: dict) -> str:
    """A PCRE over the string of atom bits (one character per atom, ``index`` its position) that
    holds when ``c`` does: every part a zero-width look-ahead, so AND is concatenation."""
    if isinstance(c, ir.And):
        return "".join(bits_rx(p, index) for p in c.parts)
    if isinstance(c, ir.Or):
        if not c.parts:
            return "(?!)"
        return "(?:" + "|".join(bits_rx(p, index) or "" for p in c.parts) + ")"
    if isinstance(c, ir.Not):
        return f"(?!{bits_rx(c.inner, index)})"
    i = index[id(c)]
    return f"(?=.{{{i}}}1)" if i else "(?=1)"


def tree_atoms(c) -> list:
    if isinstance(c, (ir.And, ir.Or)):
        return [a for p in c.parts for a in tree_atoms(p)]
    if isinstance(c, ir.Not):
        return tree_atoms(c.inner)
    return [c]
