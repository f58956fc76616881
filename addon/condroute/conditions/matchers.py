"""Value matchers (the MATCHER forms of the rules format).

A matcher is tested against the *list* of values a request has for one thing (a header may be
repeated, a JWT claim may be a list): it holds when any value matches. An empty list means the
value is missing, which fails every matcher except ``{present: false}`` and ``{not: ...}``.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Sequence

import re2

from ..load.ctx import CompileCtx
from ..load.yamlpos import Y
from ..node import as_text  # noqa: F401 - re-exported: the text of a value as written

STRING_FORMS = ("equals", "in", "prefix", "suffix", "contains", "regex")
NUMBER_FORMS = ("gt", "ge", "lt", "le")
MATCHER_KEYS = STRING_FORMS + NUMBER_FORMS + ("present", "not", "ignore_case")


def show(v: Any, limit: int = 64) -> str:
    """A value as it appears in a reason: quoted, truncated."""
    s = v if isinstance(v, str) else as_text(v)
    if len(s) > limit:
        s = s[:limit] + "…"
    if s.isprintable() and '"' not in s and "\\" not in s:
        return '"' + s + '"'
    return json.dumps(s, ensure_ascii=False)


def show_values(values: Sequence[Any]) -> str:
    if not values:
        return "missing"
    if len(values) == 1:
        return show(values[0])
    return "[" + ", ".join(show(v) for v in values[:5]) + (", …" if len(values) > 5 else "") + "]"


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        f = float(as_text(v).strip())
    except ValueError:
        return None
    return None if math.isnan(f) else f


class Matcher:
    """Base class. ``want`` describes what is wanted, for reasons: ``"B"``, ``prefix "/a"``."""

    want: str = ""

    def holds(self, values: Sequence[Any]) -> bool:
        raise NotImplementedError


class _StrMatcher(Matcher):
    def __init__(self, test: Callable[[str], bool], want: str, ignore_case: bool):
        self._test = test
        self._ic = ignore_case
        self.want = want + (" (ignoring case)" if ignore_case else "")

    def holds(self, values: Sequence[Any]) -> bool:
        test, ic = self._test, self._ic
        for v in values:
            s = v if v.__class__ is str else as_text(v)
            if test(s.lower() if ic else s):
                return True
        return False


class _InSet(_StrMatcher):
    """equals and in: a set lookup per value, no call."""

    def __init__(self, targets: frozenset[str], want: str, ignore_case: bool):
        super().__init__(targets.__contains__, want, ignore_case)
        self._set = targets

    def holds(self, values: Sequence[Any]) -> bool:
        ts, ic = self._set, self._ic
        for v in values:
            s = v if v.__class__ is str else as_text(v)
            if (s.lower() if ic else s) in ts:
                return True
        return False


class Present(Matcher):
    def __init__(self, present: bool):
        self.present = present
        self.want = "present" if present else "absent"

    def holds(self, values: Sequence[Any]) -> bool:
        return bool(values) == self.present


class Compare(Matcher):
    OPS = {"gt": (lambda a, b: a > b, ">"), "ge": (lambda a, b: a >= b, ">="),
           "lt": (lambda a, b: a < b, "<"), "le": (lambda a, b: a <= b, "<=")}

    def __init__(self, op: str, n: float):
        self._fn, sym = self.OPS[op]
        self._n = n
        self.want = f"a number {sym} {as_text(n)}"

    def holds(self, values: Sequence[Any]) -> bool:
        for v in values:
            x = _number(v)
            if x is not None and self._fn(x, self._n):
                return True
        return False


class Not(Matcher):
    def __init__(self, inner: Matcher):
        self.inner = inner
        self.want = f"not {inner.want}"

    def holds(self, values: Sequence[Any]) -> bool:
        return not self.inner.holds(values)


class AllOf(Matcher):
    def __init__(self, parts: list[Matcher]):
        self.parts = parts
        self.want = " and ".join(p.want for p in parts)

    def holds(self, values: Sequence[Any]) -> bool:
        return all(p.holds(values) for p in self.parts)


def _scalar_text(node: Y, cc: CompileCtx, what: str) -> str:
    if isinstance(node.v, (dict, list)):
        cc.error(node, f"{what} must be a single value, not a {'mapping' if isinstance(node.v, dict) else 'list'}")
        return ""
    return as_text(node)


def _eq(target: str, ic: bool) -> Matcher:
    return _InSet(frozenset((target.lower() if ic else target,)), show(target), ic)


def _in(targets: list[str], ic: bool) -> Matcher:
    ts = frozenset(t.lower() for t in targets) if ic else frozenset(targets)
    return _InSet(ts, "one of [" + ", ".join(show(t) for t in targets) + "]", ic)


class Regex:
    """A regular expression run by RE2, a linear-time engine: no pattern in a rules file can make
    the proxy hang on a hostile header (Python's backtracking `re` can: ``(a+)+$``)."""

    def __init__(self, pattern: str, ignore_case: bool):
        opts = re2.Options()
        opts.log_errors = False
        opts.case_sensitive = not ignore_case
        self.pattern = pattern
        self._rx = re2.compile(pattern, options=opts)

    def search(self, s: str) -> bool:
        try:
            return self._rx.search(s) is not None
        except UnicodeError:  # lone surrogates from undecodable bytes
            return self._rx.search(s.encode("utf-8", "replace").decode("utf-8")) is not None


def compile_regex(node: Y, cc: CompileCtx, ignore_case: bool = False) -> Regex | None:
    src = _scalar_text(node, cc, "regex")
    try:
        return Regex(src, ignore_case)
    except re2.error as e:
        why = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        cc.error(node, f"bad regular expression {show(src)}: {why} (condroute uses RE2 syntax: "
                       "no backreferences or lookaround)")
        return None


def compile_matcher(node: Y, cc: CompileCtx, what: str = "value") -> Matcher | None:
    """Compile a MATCHER node. Returns None (after recording an error) when it is invalid."""
    v = node.v
    if isinstance(v, list):
        if not v:
            cc.error(node, f"{what}: an empty list can never match")
            return None
        return _in([_scalar_text(n, cc, what) for n in v], False)
    if not isinstance(v, dict):
        if v is None and node.text is None:     # nothing written (`~` is the text "~")
            cc.error(node, f"{what}: a matcher is missing here (use {{present: true}} to test for presence)")
            return None
        text = as_text(node)
        return cc.share(("eq", text), lambda: _eq(text, False))

    unknown = [k for k in v if k not in MATCHER_KEYS]
    for k in unknown:
        cc.error_key(node, k, f"unknown matcher {k!r}; expected one of: {', '.join(MATCHER_KEYS)}")
    if unknown:
        return None
    ic = False
    if "ignore_case" in v:
        icn = v["ignore_case"]
        if not isinstance(icn.v, bool):
            cc.error(icn, "ignore_case must be true or false")
        ic = icn.v is True
        if not any(k in v for k in STRING_FORMS):
            cc.error_key(node, "ignore_case", "ignore_case goes beside a string matcher (equals, in, prefix, suffix, contains, regex)")
            return None
    parts: list[Matcher] = []
    for key, sub in v.items():
        if key == "ignore_case":
            continue
        if key == "equals":
            parts.append(_eq(_scalar_text(sub, cc, what), ic))
        elif key == "in":
            if not isinstance(sub.v, list) or not sub.v:
                cc.error(sub, "in: takes a non-empty list")
                continue
            parts.append(_in([_scalar_text(n, cc, what) for n in sub.v], ic))
        elif key in ("prefix", "suffix", "contains"):
            t = _scalar_text(sub, cc, what)
            tt = t.lower() if ic else t
            if key == "prefix":
                parts.append(_StrMatcher(lambda s, tt=tt: s.startswith(tt), f"prefix {show(t)}", ic))
            elif key == "suffix":
                parts.append(_StrMatcher(lambda s, tt=tt: s.endswith(tt), f"suffix {show(t)}", ic))
            else:
                parts.append(_StrMatcher(lambda s, tt=tt: tt in s, f"containing {show(t)}", ic))
        elif key == "regex":
            rx = compile_regex(sub, cc, ic)
            if rx is not None:
                parts.append(_StrMatcher(rx.search, f"matching /{rx.pattern}/", False))
        elif key == "present":
            if not isinstance(sub.v, bool):
                cc.error(sub, "present must be true or false")
                continue
            parts.append(Present(sub.v))
        elif key in NUMBER_FORMS:
            n = _number(sub.v) if not isinstance(sub.v, (dict, list)) else None
            if n is None:
                cc.error(sub, f"{key} takes a number")
                continue
            parts.append(Compare(key, n))
        elif key == "not":
            inner = compile_matcher(sub, cc, what)
            if inner is not None:
                parts.append(Not(inner))
    if not parts:
        if not v:
            cc.error(node, f"{what}: an empty matcher")
        return None
    return parts[0] if len(parts) == 1 else AllOf(parts)
