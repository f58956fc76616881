"""``condroute export --to krakend``: the rules as a KrakenD configuration (``version: 3``), whose
conditional backends (``backend/conditional``) are KrakenD Enterprise's.

What becomes what (/work/notes/readme-documents.md has the table):

- each route → one endpoint per method (its ``methods``; without: GET, POST, PUT, PATCH and DELETE,
  the methods a KrakenD endpoint takes), ``endpoint`` its path with ``{params}`` as written,
  ``input_headers: ["*"]`` and ``input_query_strings: ["*"]`` (KrakenD passes on only what these
  list; condroute forwards every header and the whole query), ``output_encoding: no-op`` and
  ``encoding: no-op`` (the upstream's answer as it is, as condroute returns it);
- each backend → a backend: ``host`` the upstream's origin, ``url_pattern`` its path template (route
  parameters as ``{params}``, ``{path}`` is the route's path, the upstream's base path before it);
  ``set_headers``/``remove_headers`` → ``modifier/martian`` (``header.Blacklist`` then
  ``header.Modifier``, request scope); ``timeout`` → the endpoint's ``timeout``;
- **first match.** KrakenD calls *every* backend whose condition holds and merges the answers;
  condroute selects the first. So each conditional backend's ``policy`` is its own condition AND
  NOT every earlier backend's (``krakend_cel``): at most one holds, and it is condroute's choice.
  A backend without ``when`` after conditional ones gets the policy "none of the earlier holds";
  backends after it are never selected and are not written (a note). ``fallback: true`` →
  ``strategy: fallback``;
- **routes.** KrakenD's router picks the endpoint by path (a literal segment before a parameter),
  never by order: where it would pick a later route than condroute does, the later one is
  refused; a route an earlier one covers (same method, every path) is never reached and is left
  out (a note). Routes without a path or with ``/*`` are refused
  (KrakenD's wildcard endpoints are an Enterprise feature that condroute's KrakenD import does not
  read, so the export could not be verified), as are hosts (KrakenD routes by path) and a route's
  own conditions (an endpoint owns its path whatever the request says);
- a request an endpoint has no backend for: KrakenD answers an error (502 in condroute's import),
  which is condroute's ``on_no_match: error``; with ``passthrough`` such a route is refused.
  No route at all: KrakenD's own 404.

Refused (NotExported, located): direct answers, redirects, splits (KrakenD balances its hosts
evenly, never by weight or key), mirrors, retries, ``preserve_host`` and Host rewrites (KrakenD
sends the backend's host), added headers, and what ``krakend_cel`` cannot write.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .. import model
from . import ir, toolbox
from .base import Exported, ExportOptions, Target
from .httproute_roundtrip import decided_by_refused
from .httproute_roundtrip import run as run_roundtrip
from .httproute_roundtrip import workdir_file
from .ir import NotExported, Where, where_line
from .krakend_cel import policy

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
SCHEMA = "https://www.krakend.io/schema/v2.11/krakend.json"


def go_duration(secs: float) -> str:
    ms = round(secs * 1000)
    if abs(ms - secs * 1000) < 1e-6:
        return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
    return f"{round(secs * 1_000_000)}us"


@dataclass
class Endpoint:
    route: int
    method: str
    segs: tuple[tuple[bool, str], ...]
    at: Where
    body: dict = field(default_factory=dict)


class _Export:
    def __init__(self, rules: model.Rules):
        self.prepared = toolbox.prepare(rules, "krakend")     # enabled, the toolbox fields (export.toolbox)
        self.rules = self.prepared.rules
        self.refused: list[NotExported] = list(self.prepared.refused)
        self.notes: list[str] = list(self.prepared.notes)
        self.parts: set[tuple[int, int | None]] = set()
        self.endpoints: list[Endpoint] = []

    def refuse(self, e: NotExported, route: int, backend: int | None = None) -> None:
        self.refused.append(e)
        self.parts.add((route, backend))

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # ------------------------------------------------------------------------------ backends
    def url_pattern(self, r: model.Route, b: model.Backend, up: model.Upstream, at: Where) -> str:
        out = [up.base_path]
        parts = b.path.parts if b.path is not None else ((True, "path"),)
        for is_ph, s in parts:
            if not is_ph:
                if "{" in s or "}" in s:
                    raise NotExported(at, f"the forwarded path has a brace KrakenD would read as a parameter: {s!r}")
                out.append(s)
            elif s == "path":
                assert r.path is not None
                out.append(r.path.text)
            elif s == "rest":
                raise NotExported(at, "{rest} has no KrakenD equivalent")
            else:
                out.append("{" + s + "}")
        return "".join(out) or "/"

    def backend(self, r: model.Route, b: model.Backend, at: Where) -> dict:
        if b.respond is not None:
            raise NotExported(at, f"a direct answer ({b.respond.status}) has no KrakenD equivalent (an endpoint "
                                  f"answers from its backends)")
        if b.redirect is not None:
            raise NotExported(at, "a redirect has no KrakenD equivalent")
        if b.split is not None:
            raise NotExported(at, "a split has no KrakenD equivalent: KrakenD balances a backend's hosts evenly, "
                                  "never by weight or by a key")
        if b.upstream is None:
            raise NotExported(at, "the backend forwards to the request's original destination: KrakenD has none")
        assert not b.mirrors        # refused by toolbox.prepare, located at the mirror key
        if b.retries:
            raise NotExported(at, "retries are not exported to KrakenD (it does not retry a backend)")
        if b.preserve_host or b.host_rewrite is not None:
            raise NotExported(at, "KrakenD sends the backend's own host as Host: the client's Host, or another "
                                  "one, cannot be sent")
        if b.add_headers:
            raise NotExported(at, "added headers (a second value) are not exported to KrakenD")
        if b.rewrite is not None:
            raise NotExported(at, "the path rewrite is not exported to KrakenD")
        up = b.upstream
        d: dict[str, Any] = {"host": [up.origin], "url_pattern": self.url_pattern(r, b, up, at),
                             "encoding": "no-op"}
        sets = list(b.set_headers)
        names = {k.lower() for k, _ in sets}
        removes = [h for h in b.remove_headers if h.lower() not in names]
        mods: list[dict] = []
        if removes:
            mods.append({"header.Blacklist": {"scope": ["request"], "names": list(dict.fromkeys(removes))}})
        for k, v in sets:
            mods.append({"header.Modifier": {"scope": ["request"], "name": k, "value": v}})
        if mods:
            d["extra_config"] = {"modifier/martian": mods[0] if len(mods) == 1 else
                                 {"fifo.Group": {"scope": ["request"], "aggregateErrors": True, "modifiers": mods}}}
        return d

    # ------------------------------------------------------------------------------ routes
    def route(self, ri: int, r: model.Route) -> None:
        file = ir.route_file(self.rules, r)
        at = where_line(file, r.line)
        try:
            if r.hosts:
                raise NotExported(at, "KrakenD routes by path only: a route for some hosts cannot be written "
                                      "(run one KrakenD per host)")
            if r.path is None or r.path.has_rest:
                raise NotExported(at, "a KrakenD endpoint is a declared path: a route "
                                      + ("for every path" if r.path is None else f"for {r.path.text}")
                                      + " needs a wildcard endpoint (KrakenD Enterprise), which condroute's KrakenD "
                                        "import does not read, so it is not exported")
            if r.path.segs is None:
                raise NotExported(at, f"the path {r.path.text} has a parameter inside a segment or is a matcher: a "
                                      f"KrakenD endpoint's parameters are whole segments")
            if r.conditions is not None:
                raise NotExported(at, "a route's own conditions: a KrakenD endpoint owns its path and method whatever "
                                      "the request says (put the conditions on the backends)")
            if r.propagate is not None:
                raise NotExported(at, "a token check that sets headers from claims is not exported")
            if any(s in seg for is_p, seg in r.path.segs if not is_p for s in "{}:*"):
                raise NotExported(at, f"the path {r.path.text} has a character KrakenD's router reads specially")
        except NotExported as e:
            self.refuse(e, ri)
            return
        nm = r.on_no_match or self.rules.settings.on_no_match
        order = [i for i, b in enumerate(r.backends) if not b.fallback] + \
                [i for i, b in enumerate(r.backends) if b.fallback]
        backends: list[dict] = []
        earlier: list[str] = []            # policies of the earlier conditional backends
        covered = False
        timeouts: set[float | None] = set()
        for bi in order:
            b = r.backends[bi]
            bat = where_line(file, b.line)
            if covered:
                self._note(f"{bat}: route {r.name}: backend {b.name} is never selected (an earlier backend always "
                           f"holds): not written")
                continue
            if isinstance(b.when, model.Never):
                self._note(f"{bat}: route {r.name}: backend {b.name} can never hold ({b.when.reason}): not written")
                continue
            try:
                d = self.backend(r, b, bat)
                c = ir.when(b, file)
                own = None if c is None or b.fallback else policy(c)
                if timeouts and b.timeout not in timeouts:
                    raise NotExported(bat, "KrakenD has one timeout per endpoint: this backend's differs from "
                                           "an earlier one's")
            except NotExported as e:
                self.refuse(e, ri, bi)
                continue
            timeouts.add(b.timeout)
            extra = d.setdefault("extra_config", {})
            if b.fallback:
                extra["backend/conditional"] = {"strategy": "fallback"}
                covered = True
            else:
                parts = ([f"({own})"] if own else []) + [f"!({p})" for p in earlier]
                if parts:
                    extra["backend/conditional"] = {"strategy": "policy", "value": " && ".join(parts)}
                if own is None:
                    covered = True
                else:
                    earlier.append(own)
            d["extra_config"] = _ordered(extra)
            if not d["extra_config"]:
                del d["extra_config"]
            backends.append(d)
        if not covered and nm != "error":
            self.refuse(NotExported(at, f"route {r.name} can select no backend, and condroute then passes the request "
                                        f"through; a KrakenD endpoint answers an error: add a fallback backend or "
                                        f"set on_no_match: error"), ri, -1)
        if not backends:
            return
        body: dict[str, Any] = {"endpoint": r.path.text, "method": "", "input_headers": ["*"],
                                "input_query_strings": ["*"], "output_encoding": "no-op"}
        t = next(iter(timeouts), None) if timeouts else None
        if t:
            body["timeout"] = go_duration(t)
        body["backend"] = backends
        methods = sorted(r.methods) if r.methods else list(METHODS)
        if not r.methods:
            self._note(f"{at}: route {r.name} has no methods: written for {', '.join(METHODS)} (the methods a KrakenD "
                       f"endpoint takes); KrakenD does not route other methods (HEAD, OPTIONS, ...)")
        for m in methods:
            if m not in METHODS:
                self.refuse(NotExported(at, f"KrakenD endpoints take {', '.join(METHODS)}, not {m}"), ri)
                continue
            self.endpoints.append(Endpoint(ri, m, r.path.segs, at, dict(body, method=m)))

    def router(self) -> None:
        """Leave out an endpoint condroute never reaches (an earlier route of its method matches every
        path it does); refuse the later of two endpoints where KrakenD's router would pick it for a
        request that condroute gives to the earlier (a literal segment wins over a parameter), or
        whose parameters are named apart at one place."""
        kept: list[Endpoint] = []
        for e in self.endpoints:
            why = None
            shadow = next((k for k in kept if k.method == e.method and k.route != e.route and _covers(k.segs, e.segs)),
                          None)
            if shadow is not None:
                # condroute never reaches it: the earlier route owns every such request
                self._note(f"{e.at}: route {self.rules.routes[e.route].name} is never reached for {e.method}: route "
                           f"{self.rules.routes[shadow.route].name} ({shadow.at}) matches every request it does; "
                           f"not written")
                continue
            for k in kept:
                if k.method != e.method or k.route == e.route:
                    continue
                rel = _relation(k.segs, e.segs)
                if rel == "later":
                    why = (f"KrakenD's router prefers this path's literal segment over the parameter of route "
                           f"{self.rules.routes[k.route].name} ({k.at}), which comes first in condroute")
                elif rel == "names":
                    why = (f"a parameter named differently from route {self.rules.routes[k.route].name}'s at the "
                           f"same place ({k.at}): KrakenD's router refuses that")
                if why:
                    break
            if why:
                self.refuse(NotExported(e.at, f"{e.method} {self.rules.routes[e.route].path.text}: {why}"), e.route)
            else:
                kept.append(e)
        self.endpoints = kept

    def run(self, opts: ExportOptions | None) -> Exported:
        if self.rules.settings.strip_routing_headers:
            self.refused.append(NotExported(where_line(self.rules.file, 1),
                                            "settings.strip_routing_headers is not exported to KrakenD"))
            self.parts.update((i, None) for i in range(len(self.rules.routes)))
        for ri, r in enumerate(self.rules.routes):
            self.route(ri, r)
        self.router()
        if any("timeout" not in e.body for e in self.endpoints):
            self._note("an endpoint without a timeout gets KrakenD's default (2 s, then an error); condroute waits "
                       "for the upstream as long as it takes")
        self.refused.sort(key=lambda e: (e.at.file, e.at.line, e.at.col))
        doc: dict[str, Any] = {
            "$schema": SCHEMA, "version": 3,
            "name": f"condroute export of {os.path.basename(self.rules.file)}",
            "port": opts.listen_port if opts is not None else 8080,
            "extra_config": {"router": {"disable_redirect_trailing_slash": True, "disable_redirect_fixed_path": True}},
            "endpoints": [e.body for e in self.endpoints],
        }
        return Exported(text=json.dumps(doc, indent=2, ensure_ascii=False) + "\n", refused=self.refused,
                        notes=self.notes)

    def skipped(self, d) -> bool:
        """A decision made by a part that was not exported (its route, or its backend)."""
        return self.prepared.decided_by_refused(d) or decided_by_refused(self.rules.routes, self.parts, d)


def _ordered(extra: dict | None) -> dict:
    """``backend/conditional`` first (it decides whether the rest applies)."""
    if not extra:
        return {}
    return {k: extra[k] for k in sorted(extra, key=lambda k: k != "backend/conditional")}


def _covers(a: tuple, b: tuple) -> bool:
    """Every path the segments ``b`` match, ``a`` matches too (a parameter: any non-empty segment)."""
    return len(a) == len(b) and all((pa and (pb or tb)) or (not pa and not pb and ta == tb)
                                    for (pa, ta), (pb, tb) in zip(a, b))


def _relation(a: tuple, b: tuple) -> str | None:
    """How KrakenD's router treats two endpoints' paths (segments ``(is_param, text)``; ``a`` comes
    first in condroute): None when no request path matches both, or the router picks ``a`` for them
    (a literal segment is tried before a parameter); "same" for one path; "later" when it picks ``b``
    where condroute picks ``a``; "names" for parameters named apart at one place (the router refuses
    that)."""
    for (pa, ta), (pb, tb) in zip(a, b):
        if pa and pb:
            if ta != tb:
                return "names"
            continue
        if not pa and not pb:
            if ta != tb:
                return None
            continue
        if not pa:
            return None
        return "later" if tb and len(a) == len(b) else None     # a parameter never matches ""
    return "same" if len(a) == len(b) else None


class KrakenDTarget(Target):
    name = "krakend"
    config_name = "krakend.json"
    document = True

    def export(self, rules: model.Rules, opts: ExportOptions | None = None) -> Exported:
        return _Export(rules).run(opts)

    def roundtrip(self, compiled, m: model.Rules, wires: list):
        """``--verify``: the export loaded with condroute's own KrakenD import and every wire
        decided by both (``httproute_roundtrip``)."""
        ex = _Export(m)
        exp = ex.run(None)

        def write(tmp: str) -> str | None:
            if not ex.endpoints:
                return None
            return workdir_file(tmp, self.config_name, exp.text)

        return run_roundtrip(self.name, compiled, wires, exp.refused, write, lambda d: False, ex.skipped)


TARGET = KrakenDTarget()
