"""Switches: routes and backends turned off in the file (``enabled: false``) or on and off while the
proxy runs (``condroute.disable ROUTE[/BACKEND]``, ``condroute.enable``, the status page).

Both are compiled, never asked per request. A route or backend that is off has a condition that
never holds, saying why, and the compiled ``when``/``cond`` it has when on is kept beside it
(``Backend.when_on``, ``Route.cond_on``), so that a switch rebuilds the rules without compiling
anything again. A decision reads as usual: ``skipped beta: enabled: false (rules.yaml:14)`` or
``skipped beta: switched off (condroute.disable shop/beta)``. An off route lets the request go on to
the next route (explain: ``no match shop: enabled: false (rules.yaml:5)``) and is left out of the
route index; an off fallback is not tried (``Route.fallback`` is None; explain says why).

Run-time switches are *overrides* of the file's state, by name (``ROUTE`` or ``ROUTE/BACKEND``):
``{name: enabled}``. The addon keeps them across reloads and never writes them to the file; one
the file comes to agree with is dropped at reload (the file has taken over), one whose name the
new file no longer has is kept (it applies again when the name comes back).
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Iterable, Mapping

from ..conditions.restrict import NeverCond
from .index import build_index
from .runtime import Backend, Route, Rules


class UnknownSwitch(ValueError):
    pass


def file_off_reason(file: str, line: int) -> str:
    """``enabled: false (rules.yaml:14)``: why a route or backend the file turns off is skipped."""
    return f"enabled: false ({os.path.basename(file)}:{line})" if file else f"enabled: false (line {line})"


def switched_off_reason(name: str) -> str:
    return f"switched off (condroute.disable {name})"


def off_cond(reason: str) -> NeverCond:
    return NeverCond(reason.partition(" (")[0], reason)


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


def find(rules: Rules | None, name: str) -> Route | Backend | None:
    """The route or backend a switch name names in ``rules`` (None when there is none)."""
    if rules is None:
        return None
    routes = {r.name: r for r in rules.routes}
    if name in routes:
        return routes[name]
    route, sep, backend = name.rpartition("/")
    if sep and route in routes:
        return next((b for b in routes[route].backends if b.name == backend), None)
    return None


def state(item: Route | Backend) -> str:
    """What a route or backend in force is: ``on``, ``off`` (the file says enabled: false),
    ``switched off`` or ``switched on`` (at run time, against the file)."""
    on = item.off is None
    if on == item.enabled:
        return "on" if on else "off"
    return "switched on" if on else "switched off"


# -- building the rules in force -------------------------------------------------------------------
def turn_off(b: Backend, reason: str) -> Backend:
    """``b`` (on) turned off for ``reason``: its ``when`` never holds; the one it has is kept."""
    return replace(b, when=off_cond(reason), off=reason, when_on=b.when)


def turn_off_route(r: Route, reason: str) -> Route:
    return replace(r, cond=off_cond(reason), off=reason, cond_on=r.cond)


def fallback_of(backends: Iterable[Backend]) -> Backend | None:
    """The route's fallback that is on (an off fallback is not tried)."""
    return next((b for b in backends if b.fallback and b.off is None), None)


def _switch_route(route: Route, ov: Mapping[str, bool]) -> Route:
    name = route.name
    out = route
    want = ov.get(name, route.enabled)
    if want != route.enabled:
        out = (replace(route, cond=route.cond_on, off=None, cond_on=None) if want
               else turn_off_route(route, switched_off_reason(name)))
    backends, changed = [], False
    for b in route.backends:
        key = f"{name}/{b.name}"
        want = ov.get(key, b.enabled)
        if want == b.enabled:
            backends.append(b)
            continue
        changed = True
        backends.append(replace(b, when=b.when_on, off=None, when_on=None) if want
                        else turn_off(b, switched_off_reason(key)))
    if changed:
        out = replace(out, backends=tuple(backends), fallback=fallback_of(backends))
    return out


def index_of(routes: Iterable[Route]):
    """The route index of the routes that are on (an off route never owns a request; explain,
    which walks every route, still shows why it did not)."""
    return build_index(tuple(r for r in routes if r.off is None))


def switched(rules: Rules, overrides: Mapping[str, bool] | Iterable[str]) -> Rules:
    """``rules`` as compiled from the file, with the run-time ``overrides`` applied (``{name:
    enabled}``; an iterable of names switches them off). ``rules`` itself when nothing changes."""
    ov = dict(overrides) if isinstance(overrides, Mapping) else dict.fromkeys(overrides, False)
    if not ov:
        return rules
    routes = tuple(_switch_route(r, ov) for r in rules.routes)
    if all(a is b for a, b in zip(routes, rules.routes)):
        return rules
    out = replace(rules, routes=routes)
    object.__setattr__(out, "index", index_of(out.routes))
    return out
