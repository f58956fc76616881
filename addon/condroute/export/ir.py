"""What every exporter reads: a rules file's conditions as plain, typed values, each with where it
was written, and the error an exporter raises for what its target cannot express.

The model (``condroute.model``) keeps conditions as the rules format wrote them (a ``Y`` mapping such
as ``{header: {X-Ab-Test: B}}``); this module reads that mapping once, with the same meaning the
condition kinds give it (``conditions/*``), into :data:`Cond` and :data:`Matcher` trees. An
exporter walks those and either writes its target's equivalent or raises :class:`NotExported` for
the part it cannot write exactly, located in the rules file.

Semantics every exporter must keep (the engine's, see ``conditions/``):

- a header/cookie/query/jwt value that is missing fails every matcher but ``Present(False)`` and
  ``MNot`` (``MNot(m)`` holds when ``m`` does not: a missing value makes ``m`` false);
- a repeated header / query parameter / list claim holds when *any* of its values matches;
- header names are case-insensitive (``Atom.name`` is lower-case for headers); cookie and query
  names are exact; ``Eq`` compares whole values, case-sensitively unless ``ignore_case``;
- ``Regex`` is an unanchored search in RE2 syntax; with ``ignore_case`` it is case-insensitive;
- ``method`` is compared upper-case; ``host`` is the request's host, lower-case, without port;
  ``path`` the normalised path without the query string.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Union

from .. import model
from ..node import Y, as_text

IPNet = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class Where:
    """A place in a rules file (1-based)."""
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def where(node: Y, file: str) -> Where:
    return Where(file, node.line, node.col)


def where_line(file: str, line: int) -> Where:
    """A place given only its line (a route or backend of the model): the column of the first thing
    written on that line after a list's ``- ``."""
    col = 1
    try:
        with open(file, encoding="utf-8", errors="replace") as f:
            for i, text in enumerate(f, 1):
                if i == line:
                    stripped = text.lstrip(" ")
                    col = len(text) - len(stripped) + 1
                    if stripped.startswith("- "):
                        col += 2
                    break
    except OSError:
        pass
    return Where(file, line, col)


class NotExported(Exception):
    """Raised by an exporter for a part of the rules its target cannot express exactly."""

    def __init__(self, at: Where, why: str):
        super().__init__(why)
        self.at = at
        self.why = why

    def line(self, target: str) -> str:
        return f"{self.at}: not exported to {target}: {self.why}"


# ---------------------------------------------------------------------------------------------- matchers
@dataclass(frozen=True)
class Eq:
    values: tuple[str, ...]          # equals one of them (scalar, list, equals, in)
    ignore_case: bool = False


@dataclass(frozen=True)
class Prefix:
    value: str
    ignore_case: bool = False


@dataclass(frozen=True)
class Suffix:
    value: str
    ignore_case: bool = False


@dataclass(frozen=True)
class Contains:
    value: str
    ignore_case: bool = False


@dataclass(frozen=True)
class Regex:
    pattern: str                     # RE2, unanchored search
    ignore_case: bool = False


@dataclass(frozen=True)
class Present:
    present: bool


@dataclass(frozen=True)
class Compare:
    op: str                          # gt | ge | lt | le
    number: float


@dataclass(frozen=True)
class MNot:
    inner: "Matcher"


@dataclass(frozen=True)
class MAll:
    parts: tuple["Matcher", ...]


Matcher = Union[Eq, Prefix, Suffix, Contains, Regex, Present, Compare, MNot, MAll]


# -------------------------------------------------------------------------------------------- conditions
@dataclass(frozen=True)
class Atom:
    """One value of the request tested by a matcher."""
    source: str        # header | cookie | query | jwt | method | host | path | port | authority
    name: str | None   # header (lower-case), cookie, query parameter or claim ("a.b"); None for the rest
    matcher: Matcher
    at: Where


@dataclass(frozen=True)
class ClientIP:
    nets: tuple[IPNet, ...]
    at: Where


@dataclass(frozen=True)
class Geo:
    spec: dict         # {country: [..], eu: bool, ...} as written (plain)
    at: Where


@dataclass(frozen=True)
class Cel:
    expr: str
    at: Where


@dataclass(frozen=True)
class And:
    parts: tuple["Cond", ...]


@dataclass(frozen=True)
class Or:
    parts: tuple["Cond", ...]


@dataclass(frozen=True)
class Not:
    inner: "Cond"


@dataclass(frozen=True)
class Opaque:
    """A condition written by an importer that the rules format cannot spell (a KrakenD token check,
    headers a gateway hides, a condition that can never hold)."""
    why: str
    at: Where


Cond = Union[Atom, ClientIP, Geo, Cel, And, Or, Not, Opaque]
TRUE = And(())


# ------------------------------------------------------------------------------------------------ reading
def _texts(node: Y) -> tuple[str, ...]:
    items = node.v if isinstance(node.v, list) else [node]
    return tuple(as_text(n) for n in items)


def matcher(node: Y, upper: bool = False) -> Matcher:
    """A MATCHER as ``conditions.matchers.compile_matcher`` reads it (the model loaded, so it is valid).
    ``upper`` (a method): a scalar or list is upper-cased, as ``conditions.base.single_value`` does;
    ``{equals: get}`` is not, so it never holds for a method, exactly as in the engine."""
    def up(t: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(s.upper() for s in t) if upper else t
    v = node.v
    if not isinstance(v, dict):
        return Eq(up(_texts(node)))
    ic = v.get("ignore_case") is not None and v["ignore_case"].v is True
    parts: list[Matcher] = []
    for key, sub in v.items():
        if key == "ignore_case":
            continue
        if key in ("equals", "in"):
            parts.append(Eq(_texts(sub), ic))    # the engine upper-cases only the scalar and list forms
        elif key == "prefix":
            parts.append(Prefix(as_text(sub), ic))
        elif key == "suffix":
            parts.append(Suffix(as_text(sub), ic))
        elif key == "contains":
            parts.append(Contains(as_text(sub), ic))
        elif key == "regex":
            parts.append(Regex(as_text(sub), ic))
        elif key == "present":
            parts.append(Present(sub.v is True))
        elif key in ("gt", "ge", "lt", "le"):
            parts.append(Compare(key, float(as_text(sub))))
        elif key == "not":
            parts.append(MNot(matcher(sub, upper)))
    return parts[0] if len(parts) == 1 else MAll(tuple(parts))


def _cidrs(node: Y) -> tuple[IPNet, ...]:
    out: list[IPNet] = []
    for n in (node.v if isinstance(node.v, list) else [node]):
        net = ipaddress.ip_network(str(n.v).strip(), strict=False)
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        out.append(net)
    return tuple(out)


NAMED = ("header", "cookie", "query", "jwt")
SINGLE = ("method", "host", "path", "port", "authority")


def condition(node: Y, file: str) -> Cond:
    """A condition mapping (``when``, or the condition keys of a route's ``match``): every key must
    hold."""
    parts: list[Cond] = []
    for key, sub in node.v.items():
        at = where(sub, file)
        kp = node.key_pos
        if kp is not None and key in kp:
            at = Where(file, *kp[key])
        if key in NAMED:
            for name, m in sub.v.items():
                parts.append(Atom(key, name.lower() if key == "header" else name, matcher(m),
                                  Where(file, *(sub.key_pos[name] if sub.key_pos and name in sub.key_pos
                                                else (m.line, m.col)))))
        elif key in SINGLE:
            parts.append(Atom(key, None, matcher(sub, upper=key == "method"), at))
        elif key == "client_ip":
            parts.append(ClientIP(_cidrs(sub), at))
        elif key == "geo":
            parts.append(Geo(sub.plain(), at))
        elif key == "cel":
            parts.append(Cel(as_text(sub), at))
        elif key == "any":
            parts.append(Or(tuple(condition(n, file) for n in sub.v)))
        elif key == "all":
            parts.append(And(tuple(condition(n, file) for n in sub.v)))
        elif key == "not":
            parts.append(Not(condition(sub, file)))
        else:
            parts.append(Opaque(f"the condition {key!r} has no export", at))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def when(b: model.Backend, file: str) -> Cond | None:
    """A backend's ``when`` (None: it has none)."""
    w = b.when
    if w is None:
        return None
    if isinstance(w, Y):
        return condition(w, file)
    at = where_line(file, b.line)
    if isinstance(w, model.Never):
        return Opaque(f"the condition {w.text} can never hold ({w.reason})", at)
    if isinstance(w, model.VisibleHeaders):
        return Opaque(f"{w.label}: the gateway passes on only some headers", at)
    return Opaque("a gateway token check (KrakenD auth/validator)", at)


def route_conditions(r: model.Route, file: str) -> Cond | None:
    """The condition keys of a route's ``match`` (header, cookie, cel, ...), None without any.
    Host, methods and path are the route's own fields (``r.hosts``, ``r.methods``, ``r.path``)."""
    return None if r.conditions is None else condition(r.conditions, file)


def route_file(rules: model.Rules, r: model.Route) -> str:
    """The file a route was written in (an imported route's own file)."""
    return r.file or rules.file


def atoms(c: Cond | None):
    """Every Atom, ClientIP, Geo, Cel and Opaque in ``c``, depth first."""
    if c is None:
        return
    if isinstance(c, (And, Or)):
        for p in c.parts:
            yield from atoms(p)
    elif isinstance(c, Not):
        yield from atoms(c.inner)
    else:
        yield c
