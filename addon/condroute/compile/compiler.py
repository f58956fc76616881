"""Model → compiled rules: conditions through the kind registry, path patterns, settings.

Routes are compiled one at a time as a loader reads them (``compile_rules``), so that a big file's
tree and its compiled routes are never whole in memory at once. Problems go to the same
:class:`~condroute.load.ctx.CompileCtx` as the loader's, located in the file."""
from __future__ import annotations

import re
from typing import Any, Iterable

from .. import model
from ..conditions import restrict
from ..conditions.base import Cond
from ..conditions.geo import open_geoip_db
from ..conditions.jwtauth import compile_jwt_settings
from ..conditions.jwtvalidator import compile_token_check
from ..conditions.matchers import compile_matcher
from ..conditions.registry import compile_condition, compile_match_conditions
from ..load.ctx import CompileCtx
from ..node import Y
from .rewrite import compile_backend_extras
from .runtime import Backend, PathPattern, Route, Rules, Settings
from .switches import fallback_of, file_off_reason, index_of, turn_off, turn_off_route

# never stripped by strip_routing_headers: the upstream needs them whatever they routed on
NEVER_STRIP = frozenset({"host", "authorization", "cookie", "content-type", "content-length", "transfer-encoding"})


def compile_settings(s: model.Settings, cc: CompileCtx) -> Settings:
    kw: dict[str, Any] = {}
    if s.jwt is not None:
        kw["jwt"] = compile_jwt_settings(s.jwt, cc)
    if s.geoip_db is not None:
        kw["geoip"] = open_geoip_db(s.geoip_db, cc)
    return Settings(on_no_match=s.on_no_match, trusted_proxies=s.trusted_proxies,
                    strip_routing_headers=s.strip_routing_headers, **kw)


def compile_path(p: model.RoutePath, cc: CompileCtx) -> PathPattern | None:
    if p.matcher is not None:
        m = compile_matcher(p.matcher, cc, "path")
        return PathPattern(text=p.text, matcher=m, literal_prefix=p.literal_prefix) if m else None
    if p.segs is not None:
        return PathPattern(text=p.text, params=p.params, has_rest=p.has_rest, literal_prefix=p.literal_prefix,
                           segs=p.segs)
    assert p.pattern is not None
    return PathPattern(text=p.text, regex=re.compile(p.pattern), params=p.params, has_rest=p.has_rest,
                       literal_prefix=p.literal_prefix)


def compile_when(w: model.When, cc: CompileCtx) -> Cond | None:
    if isinstance(w, Y):
        return compile_condition(w, cc)
    if isinstance(w, model.Never):
        return restrict.NeverCond(w.text, w.reason)
    return restrict.compile_visible(w, cc, compile_condition)


def compile_route(r: model.Route, cc: CompileCtx) -> Route | None:
    """One route, its problems located in ``r.file`` when it was written in an imported file (an
    import is compiled with the importing file's context)."""
    if not r.file or r.file == cc.file:
        return _compile_route(r, cc)
    saved = cc.file
    cc.file = r.file
    try:
        return _compile_route(r, cc)
    finally:
        cc.file = saved


def _compile_route(r: model.Route, cc: CompileCtx) -> Route | None:
    cc.header_names = set()
    path = compile_path(r.path, cc) if r.path is not None else None
    cond = compile_match_conditions(r.conditions, cc) if r.conditions is not None else None
    backends: list[Backend] = []
    ok = (r.path is None or path is not None) and (r.conditions is None or cond is not None)
    for b in r.backends:
        when = compile_when(b.when, cc) if b.when is not None else None
        if b.when is not None and when is None:
            ok = False
            continue
        extras: dict | None = {}
        if b.add_headers or b.host_rewrite is not None or b.rewrite is not None or b.redirect is not None \
                or b.mirrors:
            extras = compile_backend_extras(b, cc)
            if extras is None:
                ok = False
                continue
            extras["extra"] = True
        elif r.propagate is not None or b.fault is not None or b.sni is not None or b.throttle is not None:
            # per-request work beyond the plain fields (engine.select): the route adds the token's
            # claim headers, a fault is drawn, the TLS name or the pace of the response is set
            extras["extra"] = True
        be = Backend(**{**{f: getattr(b, f) for f in _BACKEND_FIELDS}, **extras}, when=when)
        backends.append(be if b.enabled else turn_off(be, file_off_reason(cc.file, b.line)))
    if not ok:
        return None     # the problems are recorded: the load fails
    seen_h: dict[str, str] = {}
    for h in sorted(cc.header_names):
        if h.lower() not in NEVER_STRIP:
            seen_h.setdefault(h.lower(), h)
    route = Route(name=r.name, line=r.line, hosts=r.hosts, methods=r.methods, path=path, cond=cond,
                  backends=tuple(backends), fallback=fallback_of(backends),
                  routing_headers=tuple(seen_h.values()), file=r.file, origin=r.origin, on_no_match=r.on_no_match,
                  propagate=compile_token_check(r.propagate, cc) if r.propagate is not None else None,
                  enabled=r.enabled)
    # enabled: false: compiled off (a condition that never holds, saying why), its own kept for a
    # run-time switch (compile.switches)
    return route if r.enabled else turn_off_route(route, file_off_reason(cc.file, r.line))


_BACKEND_FIELDS = tuple(f for f in model.Backend.__dataclass_fields__ if f != "when")


def compile_rules(file: str, fmt: str, upstreams: dict, settings: model.Settings, routes: Iterable[model.Route],
                  cc: CompileCtx) -> Rules:
    """Compile a loader's output (routes as they are read) into the rules the engine runs."""
    cc.settings = compiled_settings = compile_settings(settings, cc)
    out: list[Route] = []
    for r in routes:
        c = compile_route(r, cc)
        if c is not None:
            out.append(c)
    cc.raise_if_errors()
    rules = Rules(file=file, routes=tuple(out), upstreams=dict(upstreams), settings=compiled_settings,
                  warnings=tuple(cc.warnings), source_format=fmt)
    object.__setattr__(rules, "index", index_of(rules.routes))
    return rules
