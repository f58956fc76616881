"""The compiled rules: what the engine runs. Built from the model by ``compile.compiler``.

``Route``, ``Backend``, ``PathPattern`` hold compiled conditions (:class:`~condroute.conditions.base.Cond`)
and matchers; upstreams, splits, templates and answers are the model's own values."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .. import model
from ..conditions.base import Cond
from ..conditions.matchers import Matcher
from ..model import IPNet, PathTemplate, Respond, Split, Upstream
from ..request import lazy

__all__ = ["Backend", "PathPattern", "PathTemplate", "Respond", "Route", "Rules", "Settings", "Split", "Upstream"]


@dataclass(frozen=True)
class Backend(model.Backend):
    """A model backend with its ``when`` compiled. A ``rewrite`` is also in ``path``, compiled
    (compile.rewrite.RewriteTemplate: the engine renders it as a template); a redirect's regex path
    is compiled once (``redirect_rx``)."""
    when: Cond | None = None     # type: ignore[assignment]
    # any of add_headers, host_rewrite, rewrite, redirect, mirrors, fault, sni, throttle, or the
    # route's propagate (one test per request for the rest)
    extra: bool = field(default=False, compare=False)
    redirect_rx: Any = field(default=None, compare=False)
    # why it is skipped now (``enabled: false`` in the file, or a run-time switch: compile.switches),
    # None while it is on; ``when_on`` is its compiled ``when`` for when it is switched on again
    off: str | None = field(default=None, compare=False)
    when_on: Any = field(default=None, compare=False)

    @lazy
    def held_reason(self) -> str:
        """Why this backend is the one, when it is."""
        if self.fallback:
            return "fallback: no other backend held"
        if self.when is None:
            return "unconditional"
        return "when holds: " + self.when.text


@dataclass(frozen=True)
class PathPattern:
    text: str
    regex: re.Pattern | None = None        # template form with a parameter inside a segment
    matcher: Matcher | None = None         # mapping form
    params: tuple[str, ...] = ()
    has_rest: bool = False
    literal_prefix: str = ""               # for indexing: the leading literal segments
    segs: tuple[tuple[bool, str], ...] | None = None   # whole-segment templates: (is_param, text)

    def match(self, path: str) -> dict[str, str | None] | None:
        segs = self.segs
        if segs is not None:
            if not path.startswith("/"):
                return None
            parts = path[1:].split("/")
            n = len(segs)
            if len(parts) != n and not (self.has_rest and len(parts) >= n):
                return None
            params: dict[str, str | None] = {}
            for (is_param, text), part in zip(segs, parts):
                if is_param:
                    if not part:
                        return None
                    params[text] = part
                elif part != text:
                    return None
            if self.has_rest:
                params["rest"] = "/".join(parts[n:]) if len(parts) > n else None
            return params
        if self.regex is not None:
            m = self.regex.match(path)
            return m.groupdict() if m else None
        assert self.matcher is not None
        return {} if self.matcher.holds((path,)) else None


@dataclass(frozen=True)
class Route:
    name: str
    line: int
    hosts: tuple[str, ...] = ()                # exact hosts and "*.suffix" patterns; () = any
    methods: frozenset[str] | None = None
    path: PathPattern | None = None
    cond: Cond | None = None                   # extra conditions in match (extension)
    backends: tuple[Backend, ...] = ()         # in file order, fallback included
    fallback: Backend | None = None
    routing_headers: tuple[str, ...] = ()      # header names its conditions read (strip_routing_headers)
    file: str = ""                             # the file it was written in, when imported
    origin: str = ""                           # an imported rule's source label (model.Route.origin)
    on_no_match: str | None = None             # model.Route.on_no_match
    propagate: Any = None                      # the compiled token check (jwtvalidator.Validator) of model.Route.propagate
    enabled: bool = True                       # model.Route.enabled (the file's; ``off`` says what is in force)
    off: str | None = field(default=None, compare=False)    # why it owns no request now (compile.switches)
    cond_on: Cond | None = field(default=None, compare=False)   # its ``cond`` for when it is switched on again

    def host_ok(self, host: str) -> bool:
        if not self.hosts:
            return True
        for h in self.hosts:
            if h == host or h == "*" or (h.startswith("*.") and host.endswith(h[1:])):
                return True
        return False


@dataclass(frozen=True)
class Settings:
    on_no_match: str = "passthrough"
    trusted_proxies: tuple[IPNet, ...] = ()
    jwt: Any = None
    geoip: Any = None
    strip_routing_headers: bool = False


@dataclass(frozen=True)
class Rules:
    file: str
    routes: tuple[Route, ...]
    upstreams: dict[str, Upstream]
    settings: Settings
    warnings: tuple = ()
    source_format: str = "condroute"
    index: Any = field(default=None, compare=False)
    imports: tuple = field(default=(), compare=False)   # (path, stat key) of each imported file (rules.py)

    @lazy
    def has_timeouts(self) -> bool:
        return any(b.timeout for r in self.routes for b in r.backends)

    def summary(self) -> str:
        nb = sum(len(r.backends) for r in self.routes)
        return (f"{len(self.routes)} route{'s' * (len(self.routes) != 1)}, {nb} backend{'s' * (nb != 1)}, "
                f"{len(self.upstreams)} upstream{'s' * (len(self.upstreams) != 1)}")
