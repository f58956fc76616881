"""Switches: routes and backends turned off while the proxy runs (``condroute.disable ROUTE[/BACKEND]``).

Turning something off builds new rules from the rules as loaded, in which a switched-off route or
backend has a condition that never holds, saying why. The engine is not asked anything more per
request, and a decision reads as usual: ``skipped beta: switched off (condroute.disable shop/beta)``.
A switched-off fallback is not tried. Switches are kept by name across reloads; a name the new file
no longer has is kept too (it applies again when the name comes back).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from ..conditions.restrict import NeverCond
from .index import build_index
from .runtime import Route, Rules


class UnknownSwitch(ValueError):
    pass


def resolve(rules: Rules | None, spec: str) -> str:
    """The switch name for ``spec`` (``ROUTE`` or ``ROUTE/BACKEND``, a route name containing ``/``
    taken whole first); UnknownSwitch with a sentence when the rules have no such route or backend."""
    spec = spec.strip()
    routes = {r.name: r for r in rules.routes} if rules is not None else {}
    if spec in routes:
        return spec
    route, sep, backend = spec.rpartition("/")
    if sep and route in routes:
        names = [b.name for b in routes[route].backends]
        if backend in names:
            return spec
        raise UnknownSwitch(f"route {route!r} has no backend {backend!r}; its backends are {', '.join(names)}")
    known = ", ".join(routes) or "none (no rules are loaded)"
    raise UnknownSwitch(f"there is no route {spec!r}; the routes are {known}")


def _off(name: str) -> NeverCond:
    return NeverCond("switched off", f"switched off (condroute.disable {name})")


def _switch_route(route: Route, off: frozenset[str]) -> Route:
    if route.name in off:
        return replace(route, cond=_off(route.name))
    names = {f"{route.name}/{b.name}" for b in route.backends} & off
    if not names:
        return route
    backends = tuple(replace(b, when=_off(f"{route.name}/{b.name}")) if f"{route.name}/{b.name}" in names else b
                     for b in route.backends)
    fallback = route.fallback
    if fallback is not None:
        fallback = None if f"{route.name}/{fallback.name}" in names else \
            next(b for b in backends if b.name == fallback.name)
    return replace(route, backends=backends, fallback=fallback)


def switched(rules: Rules, off: Iterable[str]) -> Rules:
    """``rules`` with the routes and backends named in ``off`` switched off (``rules`` itself when
    none of them is in it)."""
    off = frozenset(off)
    if not off:
        return rules
    routes = tuple(_switch_route(r, off) for r in rules.routes)
    if all(a is b for a, b in zip(routes, rules.routes)):
        return rules
    out = replace(rules, routes=routes)
    object.__setattr__(out, "index", build_index(out.routes))
    return out
