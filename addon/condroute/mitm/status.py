"""The status page: ``http://condroute.mitm.it/`` (option ``condroute_status_host``) and
``/api/status``, answered by the addon itself, never forwarded and never counted as traffic.

The addon (mitm/addon.py) flags a request whose host is :attr:`Status.host` and answers it in its
``request`` hook with :meth:`Status.response`; it calls :meth:`Status.record` for every decision
it makes (routed, answered, passthrough), not for status-page requests.

* ``GET /`` (and ``HEAD``): the page (status_page.py), which draws itself from ``/api/status``
  every two seconds. ``GET /api/status``: the JSON below. ``POST /api/switch`` switches a route or
  backend on or off (switch_api.py: JSON only, same origin only). Any other path: 404; any other
  method on these paths: 405. Every answer has ``Cache-Control: no-store``.
* **Cost per request**: :meth:`record` keeps the Decision and a timestamp in a 50-entry deque and
  adds one to a per-name count; nothing is rendered until the page is asked for.
* **Counts** are per route name and backend name within it, since the proxy started. A reload
  keeps the counts of names that are still in the rules; the counts of names a reload removed are
  dropped when the status is next asked for. A request decided again after a failed connection
  (failover) is counted again: counts are decisions.

``/api/status``::

    {"rules": {"path", "generation", "loaded_at", "error", "summary", "format"},
     "routes": [{"name", "line", "origin", "file", "hits", "unserved", SWITCH...,
                 "backends": [{"name", "hits", "target", SWITCH...}]}],
     "switches": [{"name", "enabled", "at", "by", "in_rules"}],
     "upstreams": [{"name", "url", "state", ...}],
     "recent": [{"time", "method", "url", "outcome", "route", "backend", "upstream", "target",
                 "status", "reason", "skipped": [{"backend", "reason"}], "split"?,
                 "tries"?: [{"upstream", "address", "outcome", "reason"}]}],
     "mirrors": {"sent", "failed", "dropped", "in_flight", "failing",
                 "upstreams": [{"name", "url", "sent", "failed", "dropped", "in_flight", "failing"}]},
     "passthrough", "decisions", "recent_max", "cooldown", "status_host", "now"}

``path`` is null (``generation`` 0) while no rules are loaded; ``loaded_at`` and ``time`` are Unix
times in seconds; ``error`` is the last reload's error (null once a reload succeeds). A route's
``hits`` counts every request it owned, ``unserved`` those no backend served (no match,
unavailable, refused before a backend was chosen); a backend's ``hits`` the requests it was chosen
for. A route's ``origin`` names an imported rule by its source (``httproute header-matching, rule 3
(routes.yaml:27)``; "" for a route of the rules file itself), ``file`` the imported file its ``line``
is in ("" likewise). ``mirrors`` counts the copies sent to mirrors since the proxy started: answered
(``sent``), failed, dropped (too many under way, or a streamed body), under way now, and the mirrors whose
last copy failed; ``upstreams`` the same per mirror upstream drawn for a request (order of first use;
a mirror a reload removed is dropped once none of its copies is under way).
``state`` is one of ``up`` (a connection is open, ``connections``, or the last one succeeded,
``ok_ago`` seconds ago), ``down`` (it refused or timed out a connection: passed over for
``cooldown_left`` more seconds; ``error``, ``failed_ago``, ``attempts``), ``retrying`` (the
cool-down is over: the next request tries it; ``error``, ``failed_ago``) or ``unknown`` (no
connection to it seen). ``SWITCH...`` are a route's or backend's state (switch_api.switch_fields:
``switch``, ``enabled``, ``enabled_in_file``, ``state``, ``switched_off``, ``switched_on``,
``off_reason``); ``switches`` the run-time switches. ``recent`` is newest first; ``url`` is the request as the log line shows
it (secret-named query parameters redacted), ``target`` where it was sent (likewise redacted) or
null, ``reason`` why: the held backend's condition, or why nothing served.
"""
from __future__ import annotations

import json
import re
import time
from collections import deque
from typing import Any

from mitmproxy import ctx, http

from ..engine import Decision
from ..redact import redact_query_string
from .status_page import CSP, PAGE
from .switch_api import SWITCH_PATH, answer as answer_switch, switch_fields, switches_list

DEFAULT_HOST = "condroute.mitm.it"
RECENT = 50
PATHS = ("/", "/api/status", SWITCH_PATH)

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")

_NO_REASON = {
    "passthrough": "no route matched: the request went on unchanged",
    "no_match": "no backend of the route holds",
    "unavailable": "no upstream of the route is available",
}

_time = time.time


def check_host(value: str) -> str:
    """The status host an option value names (lower case, no trailing dot; "" = off), or ValueError."""
    v = value.strip().lower()
    if v.endswith("."):
        v = v[:-1]
    if v and (len(v) > 253 or not _HOST.fullmatch(v)):
        raise ValueError(f"condroute_status_host must be a host name such as {DEFAULT_HOST} (no scheme, port "
                         f"or path), or empty for no status page; not {value!r}")
    return v


def _redact_url(url: str | None) -> str | None:
    if url is None or "?" not in url:
        return url
    base, _, q = url.partition("?")
    return f"{base}?{redact_query_string(q)}"


def _target(b: Any) -> str:
    """What a backend serves with, for the page."""
    if b.respond is not None:
        return f"respond {b.respond.status}"
    if b.redirect is not None:
        return f"redirect {b.redirect.status}"
    if b.split is not None:
        by = "weighted random" if b.split.kind == "random" else f"by {b.split.by}"
        out = f"split {by}: " + ", ".join(f"{up.name} {w:g}" for up, w in b.split.arms)
    elif b.upstream is not None:
        out = b.upstream.name
    else:
        out = "original destination"
    if b.mirrors:
        out += "; mirrored to " + ", ".join(m.upstream.name + ("" if m.percent >= 100 else f" {m.percent:g}%")
                                           for m in b.mirrors)
    return out


def _reason(d: Decision) -> str:
    if d.reason:
        return d.reason
    if d.outcome in ("routed", "respond"):
        for _b, held, why, _ in reversed(d.trail):
            if held:
                return why + (f"; split {d.split}" if d.split else "")
    if d.outcome == "no_match" and d.status:
        return _NO_REASON["no_match"] + f": answered {d.status}"
    return _NO_REASON.get(d.outcome, "")


def recent_entry(at: float, d: Decision) -> dict[str, Any]:
    """One decision of ``recent`` (see the module docstring)."""
    method, _, url = d.request.partition(" ")
    out: dict[str, Any] = {
        "time": at, "method": method, "url": url, "outcome": d.outcome, "route": d.route, "backend": d.backend,
        "upstream": d.upstream, "target": _redact_url(d.url) if d.outcome == "routed" else None,
        "status": d.status, "reason": _reason(d),
        "skipped": [{"backend": b, "reason": why} for b, held, why, _ in d.trail if not held],
    }
    if d.split:
        out["split"] = d.split
    if d.tries:     # requests condroute sent itself (retry_on beyond connect-failure)
        out["tries"] = [{k: t[k] for k in ("upstream", "address", "outcome", "reason")} for t in d.tries]
    return out


class Status:
    """The status page's state and answers (see the module docstring)."""

    def __init__(self, live: Any, upstreams: Any) -> None:
        self.live = live              # reload.LiveRules: rules, path, generation, loaded_at, last_error
        self.upstreams = upstreams    # upstreams.Upstreams: health
        self.host = DEFAULT_HOST
        self.hits: dict[tuple[str | None, str | None], int] = {}
        self.recent: deque[tuple[float, Decision]] = deque(maxlen=RECENT)
        self._counted_for: Any = None   # the rules the counts were last pruned for

    # -- the option (declared with the others in options.py) ----------------------------------
    def configure(self, updated: set[str]) -> None:
        if "condroute_status_host" in updated:
            self.host = check_host(ctx.options.condroute_status_host)

    # -- per request: cheap ---------------------------------------------------------------------
    def record(self, d: Decision) -> None:
        """Count a decision and keep it among the recent ones (rendered only when asked for)."""
        self.recent.append((_time(), d))
        k = (d.route, d.backend)
        h = self.hits
        h[k] = h.get(k, 0) + 1

    def latest(self) -> Decision | None:
        """The decision recorded last (retry.py adds its attempts to a decision made again)."""
        return self.recent[-1][1] if self.recent else None

    # -- when asked -----------------------------------------------------------------------------
    def _prune(self, rules: Any) -> None:
        """Drop the counts of route and backend names the rules in force no longer have."""
        if rules is None or rules is self._counted_for:
            return
        names = {r.name: {b.name for b in r.backends} for r in rules.routes}
        self.hits = {k: n for k, n in self.hits.items()
                     if k[0] is None or (k[0] in names and (k[1] is None or k[1] in names[k[0]]))}
        self._counted_for = rules

    def _upstreams(self, rules: Any) -> list[dict[str, Any]]:
        ups: dict[tuple[str, str], Any] = {}
        for up in rules.upstreams.values():
            ups.setdefault((up.name, up.url), up)
        for r in rules.routes:
            for b in r.backends:
                for up in ([b.upstream] if b.upstream is not None else []) + \
                          ([u for u, _ in b.split.arms] if b.split is not None else []) + \
                          [m.upstream for m in b.mirrors]:
                    ups.setdefault((up.name, up.url), up)
        health = self.upstreams.health
        now = health.clock()
        out = []
        for up in ups.values():
            k = (up.host.lower().strip("[]"), int(up.port))
            e: dict[str, Any] = {"name": up.name, "url": up.url}
            f = health.failures.get(k)
            opened = health.open.get(k, 0)
            ok = health.last_ok.get(k)
            if f is not None:
                age = now - f.at
                e["state"] = "down" if age < health.cooldown else "retrying"
                e.update(error=f.error, failed_ago=round(age, 3), attempts=f.attempts)
                if age < health.cooldown:
                    e["cooldown_left"] = round(health.cooldown - age, 3)
            elif opened > 0 or ok is not None:
                e["state"] = "up"
                e["connections"] = opened
                if ok is not None:
                    e["ok_ago"] = round(now - ok, 3)
            else:
                e["state"] = "unknown"
            out.append(e)
        return out

    def _mirrors(self, rules: Any) -> dict[str, Any]:
        m = getattr(self.live, "mirrors", None)     # mitm/mirror.py (absent from bare test harnesses)
        if m is None:
            return {"sent": 0, "failed": 0, "dropped": 0, "in_flight": 0, "failing": [], "upstreams": []}
        return {"sent": m.sent, "failed": m.failed, "dropped": m.dropped, "in_flight": m.under_way,
                "failing": sorted(m.failing), "upstreams": m.rows(rules)}

    def snapshot(self) -> dict[str, Any]:
        """The status as plain data: the JSON of ``/api/status``."""
        live = self.live
        rules = live.rules
        self._prune(rules)
        hits = self.hits
        routes = []
        if rules is not None:
            for r in rules.routes:
                backends = [{"name": b.name, "hits": hits.get((r.name, b.name), 0), "target": _target(b),
                             **switch_fields(f"{r.name}/{b.name}", b, live)}
                            for b in r.backends]
                unserved = hits.get((r.name, None), 0)
                routes.append({"name": r.name, "line": r.line, "origin": r.origin, "file": r.file,
                               "hits": unserved + sum(b["hits"] for b in backends),
                               "unserved": unserved, **switch_fields(r.name, r, live), "backends": backends})
        return {
            "rules": {"path": live.path or None, "generation": live.generation, "loaded_at": live.loaded_at,
                      "error": live.last_error, "summary": rules.summary() if rules is not None else None,
                      "format": rules.source_format if rules is not None else None},
            "routes": routes,
            "upstreams": self._upstreams(rules) if rules is not None else [],
            "recent": [recent_entry(at, d) for at, d in reversed(self.recent)],
            "switches": switches_list(live),
            "mirrors": self._mirrors(rules),
            "passthrough": hits.get((None, None), 0),
            "decisions": sum(hits.values()),
            "recent_max": RECENT,
            "cooldown": self.upstreams.health.cooldown,
            "status_host": self.host,
            "now": _time(),
        }

    def response(self, flow: http.HTTPFlow) -> http.Response:
        """The answer to a request for the status host (never forwarded)."""
        req = flow.request
        path = req.path.partition("?")[0]
        method = req.method.upper()
        flow.comment = "condroute: status page (answered by the proxy)"
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer"}
        if path not in PATHS:
            return http.Response.make(404, f"condroute: no such page; the status page is http://{self.host}/ "
                                           f"and its data http://{self.host}/api/status\n",
                                      {**headers, "Content-Type": "text/plain; charset=utf-8"})
        if path == SWITCH_PATH:     # POST only, JSON, same origin (switch_api.py)
            return answer_switch(flow, self.host, self.live, headers)
        if method not in ("GET", "HEAD"):
            return http.Response.make(405, f"condroute: the status page answers GET and HEAD, not {method}\n",
                                      {**headers, "Allow": "GET, HEAD", "Content-Type": "text/plain; charset=utf-8"})
        if path == "/":
            body = PAGE
            headers.update({"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": CSP,
                            "X-Frame-Options": "DENY"})
        else:
            body = json.dumps(self.snapshot()).encode("ascii") + b"\n"   # no indent: the C encoder
            headers["Content-Type"] = "application/json"
        resp = http.Response.make(200, body, headers)
        if method == "HEAD":
            resp.content = b""
            resp.headers["Content-Length"] = str(len(body))
        return resp
