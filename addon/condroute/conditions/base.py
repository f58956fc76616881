"""Conditions (``when``): compiled once at load into small objects with one method; and
:class:`Kind`, what a condition kind module registers (see ``conditions.registry``).

``cond.fail(req, env)`` returns ``None`` when the condition holds, or a short human reason when
it does not. Reasons are built only on failure, so a holding condition costs no string work.
``env`` is the compiled :class:`~condroute.rules.Rules` (settings: trusted proxies, JWT, GeoIP).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..load.ctx import CompileCtx
from ..node import Y
from ..request import RequestView
from .matchers import Matcher, compile_matcher, show_values

# Compiles a nested condition mapping (for any/all/not): (node, what) -> Cond | None
SubCompiler = Callable[[Y, str], "Cond | None"]


@dataclass(frozen=True)
class Kind:
    """One condition kind, as its module registers it (a module-level ``KINDS`` list).

    ``compile(node, cc, sub)`` reads the value written under the key (errors go to ``cc``, located)
    and returns a :class:`Cond` whose ``fail`` gives the reason when it does not hold; ``sub``
    compiles a nested condition mapping. ``schema`` is the JSON Schema of the value (for
    ``condroute schema``); ``rank`` orders the kinds wherever they are listed; ``nests`` tells
    tools that walk conditions as written (``condroute validate``'s lint) to look inside."""
    name: str
    rank: int
    compile: Callable[[Y, CompileCtx, SubCompiler], "Cond | None"]
    schema: dict = field(compare=False)
    doc: str = ""
    in_match: bool = True      # also allowed among a route's match keys (not when match has its own)
    nests: bool = False        # its value holds conditions (a mapping, or a list of mappings): any, all, not


def named_schema(what: str) -> dict:
    """The schema of {NAME: MATCHER}."""
    return {"type": "object", "description": f"{{NAME: MATCHER}}: each named {what} must match",
            "minProperties": 1, "additionalProperties": {"$ref": "#/$defs/matcher"}}


MATCHER_SCHEMA = {"$ref": "#/$defs/matcher"}


# a ValuesCond remembers the reason for up to SEEN_ENTRIES single values of up to SEEN_VALUE_CHARS
# characters: ~256 * (0.3 + 0.2) KB at most per condition, whatever the requests
SEEN_ENTRIES = 256
SEEN_VALUE_CHARS = 256


class Cond:
    text: str = ""

    def fail(self, req: RequestView, env: Any) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError


class ValuesCond(Cond):
    """A matcher applied to values pulled out of the request by ``get``."""

    def __init__(self, label: str, get: Callable[[RequestView, Any], Sequence[Any]], m: Matcher,
                 redact: Callable[[Sequence[Any]], Any] | None = None):
        self.label = label
        self.get = get
        self.m = m
        self.redact = redact      # None: values are shown (cut at 64 characters); else how they are hidden
        self.text = f"{label} {m.want}"
        # the reason is "<label> is <values>, wanted <want>": its fixed parts are built once, and the
        # whole text is remembered for a single text value (most failures repeat: "A" is not "B")
        self._head = f"{label} is "
        self._tail = f", wanted {m.want}"
        self._missing = f"{label} is missing, wanted {m.want}"
        self._seen: dict[str, str] = {}

    def fail(self, req: RequestView, env: Any) -> str | None:
        values = self.get(req, env)
        if self.m.holds(values):
            return None
        if not values:
            return self._missing
        v0 = values[0]
        if len(values) == 1 and v0.__class__ is str and len(v0) <= SEEN_VALUE_CHARS:
            # bounded in bytes too: at most SEEN_ENTRIES short keys (the reason shows 64 characters)
            seen = self._seen
            r = seen.get(v0)
            if r is None:
                if len(seen) >= SEEN_ENTRIES:
                    seen.clear()
                r = seen[v0] = self._reason(values)
            return r
        return self._reason(values)

    def _reason(self, values: Sequence[Any]) -> str:
        shown = values if self.redact is None else self.redact(values)
        return self._head + (shown if isinstance(shown, str) else show_values(shown)) + self._tail


class AllCond(Cond):
    def __init__(self, parts: list[Cond]):
        self.parts = parts
        self.text = " and ".join(p.text for p in parts)

    def fail(self, req: RequestView, env: Any) -> str | None:
        for p in self.parts:
            r = p.fail(req, env)
            if r is not None:
                return r
        return None


class AnyCond(Cond):
    def __init__(self, parts: list[Cond]):
        self.parts = parts
        self.text = "any of (" + "; ".join(p.text for p in parts) + ")"

    def fail(self, req: RequestView, env: Any) -> str | None:
        reasons = []
        for p in self.parts:
            r = p.fail(req, env)
            if r is None:
                return None
            reasons.append(r)
        return "none of any: " + "; ".join(reasons)


class NotCond(Cond):
    def __init__(self, inner: Cond):
        self.inner = inner
        self.text = f"not ({inner.text})"

    def fail(self, req: RequestView, env: Any) -> str | None:
        if self.inner.fail(req, env) is None:
            return f"not: {self.inner.text} holds"
        return None


def named_values(node: Y, cc: CompileCtx, what: str, make: Callable[[str, Matcher, CompileCtx], Cond]) -> Cond | None:
    """{NAME: MATCHER, ...}: every named value must match (header, cookie, query)."""
    if not cc.expect_map(node, what):
        return None
    if not node.v:
        cc.error(node, f"{what}: name at least one {what}")
        return None
    parts = []
    for name, sub in node.v.items():
        if what == "header":
            cc.header_names.add(name)
        m = compile_matcher(sub, cc, f"{what} {name}")
        if m is not None:
            parts.append(cc.share((what, name, id(m)), lambda name=name, m=m: make(name, m, cc)))   # m: shared or new
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AllCond(parts)


def single_value(label: str, get: Callable[[RequestView], Any], node: Y, cc: CompileCtx,
                 upper: bool = False) -> Cond | None:
    """A matcher on one value of the request (method, host, path, port)."""
    if upper and node.text:
        node = Y(node.text.upper(), node.line, node.col)
    elif upper and isinstance(node.v, list):
        node = Y([Y(n.text.upper(), n.line, n.col) if n.text else n for n in node.v], node.line, node.col)
    m = compile_matcher(node, cc, label)
    if m is None:
        return None
    return ValuesCond(label, lambda r, e: (get(r),), m)


def jwt_settings(cc: CompileCtx) -> Any:
    """settings.jwt (compiled before the routes): its token source is redacted like a password."""
    return getattr(cc.settings, "jwt", None)
