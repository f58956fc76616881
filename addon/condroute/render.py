"""Every text a decision is shown as, in one place.

A condition says why it failed (its reason, kept in ``Decision.trail`` and ``routes_passed``); this
module turns a :class:`~condroute.engine.Decision` into what people and programs read:

* :func:`header_value`   the X-Condroute debug header
* :func:`outcome_text`   what became of the request; :func:`summary` is the log line
* :func:`comment`        flow.comment (shown by mitmweb): the decision first, then the backends skipped
* :func:`error_body`     the body of condroute's own 400/502 answers
* :func:`to_dict`        the decision as plain data (flow.metadata["condroute"])
* :func:`decision_data`  ``to_dict`` plus what ``condroute explain`` shows (``--json``)
* :func:`render_decision` the ``condroute explain`` table, one line per item

It sits below the engine (floor F7): it only reads a decision's attributes, and imports the engine's
types for type checking only. What only ``condroute explain`` says (the client address and how it
was found, which clause of a CEL policy failed) is computed here at explain time, never per request.

Why this module is long: it is the one place for every text of a decision (log line, comment,
header, answers, explain table, JSON), so that their wording stays consistent; each is short.
"""
from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING, Any

from .cel.clauses import FailedClause, failed_clause
from .cel.policy import CelCond
from .conditions.base import AllCond, AnyCond
from .httptext import authority
from .localfiles import shown_name
from .redact import REDACTED, header_shower, redact_url

if TYPE_CHECKING:
    from .compile.runtime import Route, Rules
    from .conditions.base import Cond
    from .engine import Decision
    from .request import RequestView

LABEL = 10   # width of the label column of the explain table
_DEFAULT_RETRY_ON = frozenset({"connect-failure"})   # (model.DEFAULT_RETRY_ON: shown only when another)


# -- one line ------------------------------------------------------------------------------------
def header_value(d: Decision) -> str:
    """The X-Condroute debug header."""
    if d.outcome == "routed":
        if d.fault_delay is not None:
            return f"{d.route}/{d.backend} -> {d.upstream or 'original destination'} ({fault_delayed(d)})"
        return f"{d.route}/{d.backend} -> {d.upstream or 'original destination'}"
    if d.outcome == "respond":
        if d.fault_abort is not None:
            return f"{d.route}/{d.backend} -> {fault_aborted(d)}"
        if d.fault_delay is not None:
            return f"{d.route}/{d.backend} -> respond {d.status}{local_text(d)} ({fault_delayed(d)})"
        return f"{d.route}/{d.backend} -> respond {d.status}{local_text(d)}"
    if d.outcome == "no_match" and d.status:
        return f"{d.route} -> error {d.status}"
    if d.outcome == "unavailable":
        if d.backend is not None:     # failover: false
            return f"{d.route}/{d.backend} -> error {d.status} (upstream unavailable, failover: false)"
        return f"{d.route} -> error {d.status} (no upstream available)"
    if d.outcome == "bad_request":
        return f"{d.route or 'request'} -> refused {d.status}"
    return "passthrough"


def outcome_text(d: Decision) -> str:
    """What became of the request: the part of the log line after the request."""
    if d.outcome == "routed":
        text = f"{d.route}/{d.backend} -> {d.upstream} ({redact_url(d.url)})"
        if d.backend_obj.extra:
            if d.mirrors:
                text += f", {mirrored(d)}"
            if d.fault_delay is not None:
                text += f", {fault_delayed(d)}"
            if d.sni is not None or d.throttle is not None:
                text += f", {shaped(d)}"
        return text
    if d.outcome == "respond":
        if d.fault_abort is not None:
            return f"{d.route}/{d.backend} -> {fault_aborted(d)}, nothing forwarded"
        if d.fault_delay is not None:
            return f"{d.route}/{d.backend} -> respond {d.status}{redirect_text(d)}{local_text(d)}, {fault_delayed(d)}"
        return f"{d.route}/{d.backend} -> respond {d.status}{redirect_text(d)}{local_text(d)}"
    if d.outcome == "no_match":
        what = f"answered {d.status}" if d.status else "passthrough"
        return f"{d.route}: no backend holds, {what}"
    if d.outcome == "unavailable":
        if d.backend is not None:     # failover: false
            return f"{d.route}/{d.backend}: answered {d.status}: {d.reason}"
        return f"{d.route}: no upstream available, answered {d.status}"
    if d.outcome == "bad_request":
        return f"{d.route + ': ' if d.route else ''}refused {d.status}: {d.reason}"
    return "no route, passthrough"


def shaped(d: Decision) -> str:
    """How the upstream connection is shaped: the TLS server name sent, the response's pace."""
    parts = []
    if d.sni is not None:
        parts.append("sni " + ("preserved (the client's)" if d.sni == "preserve" else d.sni))
    if d.throttle is not None:
        parts.append(f"throttled to {d.throttle:g} kbps")
    return ", ".join(parts)


def mirrored(d: Decision) -> str:
    """The mirrors a copy of the request goes to (log line, comment)."""
    return "mirrored to " + ", ".join(m.upstream.name for m, _, _ in d.mirrors)


def fault_delayed(d: Decision) -> str:
    """"fault: delayed 2s": an injected delay drawn for this request (log line, comment, header)."""
    return f"fault: delayed {d.fault_delay:g}s"


def fault_aborted(d: Decision) -> str:
    """"fault: abort 503", with "after a delay of 2s" when a delay was drawn too (the delay comes
    first, as in Istio): the answer of an injected abort."""
    if d.fault_delay is not None:
        return f"fault: abort {d.fault_abort} after a delay of {d.fault_delay:g}s"
    return f"fault: abort {d.fault_abort}"


def redirect_text(d: Decision) -> str:
    """", redirect to LOCATION" for a redirect's answer (secret-named query parameters redacted);
    "" for any other answer."""
    b = d.backend_obj
    if b is None or b.redirect is None:
        return ""
    return f", redirect to {redact_url(location(d))}"


def local_file(d: Decision) -> str | None:
    """The file a Map Local answer (respond.file / respond.dir) is read from, relative to the rules
    file's folder, as the request names it (``localfiles.shown_name``); None for any other answer."""
    r = d.respond
    if r is None or not (r.file or r.dir) or d.fault_abort is not None:
        return None
    return shown_name(r, d._req.rest if d._req is not None else None)


def local_text(d: Decision) -> str:
    """" from file mocks/users.json" for a Map Local answer; "" for any other."""
    name = local_file(d)
    return "" if name is None else f" from file {name}"


def local_served(status: int, planned: int, name: str, note: str) -> str:
    """What a Map Local answer turned out to be when the file was read (added to the comment and
    the X-Condroute header when it is not the planned answer, even with the planned status: a
    missing error page of status 404 is answered 404 too): "304 not modified", "404: mocks/x.json:
    there is no such file"."""
    if status == planned and not note:      # served (a file of an error page has a note when it is not)
        return ""
    if status == 304:
        return f"served {name}: 304 not modified"
    return f"answered {status}: {note}"


def summary(d: Decision) -> str:
    """One log line: the request, then what became of it."""
    return f"{d.request} -> {outcome_text(d)}"


# -- flow.comment ---------------------------------------------------------------------------------
# One line (rules-format "Seeing decisions"), led by the decision:
#
#     shop.example/cart → shop-ab-test/variant-b-by-header [header X-Ab-Test "B"] | to http://127.0.0.1:9002/cart (upstream variant-b)
#
# the original destination (host[:port]/path, no query), the arrow, ROUTE/BACKEND (or ROUTE alone when
# no backend was selected, "(no route)" when none owns the request), the reason in brackets, then
# " | " and the rest: where it went or who answered, the split, the backends skipped with why.
# The arrow (U+2192) is written once and only there: the destination has no whitespace and no arrow
# (escaped as %XX), names with whitespace, "/", '"', "\" or an arrow are JSON-quoted, and an arrow in
# any later text is written "->". So ``~comment "→ ROUTE/BACKEND "`` selects exactly the flows sent
# to that backend and ``~comment "→ ROUTE[/ ]"`` those of a route, whatever the names, reasons or
# request (README: "Finding flows in mitmweb").
ARROW = "→"
NO_ROUTE = "(no route)"
_QUOTE_NAME = re.compile(r'[\s/"\\→]')
_names: dict[tuple[str | None, str | None], str] = {}


def comment_name(name: str) -> str:
    """A route or backend name as the comment writes it: as it is, or JSON-quoted (ASCII) when it
    has whitespace, "/", '"', "\\", an arrow or anything unprintable, or is empty."""
    if name and name.isprintable() and _QUOTE_NAME.search(name) is None:
        return name
    return json.dumps(name)


def comment_target(route: str | None, backend: str | None) -> str:
    """ROUTE/BACKEND, ROUTE, or "(no route)", as the comment writes it after the arrow (memoised:
    a handful of names)."""
    key = (route, backend)
    t = _names.get(key)
    if t is None:
        t = NO_ROUTE if route is None else comment_name(route)
        if route is not None and backend is not None:
            t += "/" + comment_name(backend)
        if len(_names) >= 4096:
            _names.clear()
        _names[key] = t
    return t


def _escape_dest(s: str) -> str:
    out = []
    for c in s:
        if c.isprintable() and not c.isspace() and c != ARROW:
            out.append(c)
        else:
            try:
                b = c.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                b = b"?"
            out.append("".join(f"%{x:02X}" for x in b))
    return "".join(out)


def comment_dest(req: RequestView | None) -> str:
    """The original destination as the comment leads with it: host[:port]/path, no query string,
    the port only when it is not the scheme's default; never whitespace or an arrow. (Per routed
    request: httptext.authority written inline.)"""
    if req is None:
        return "?"
    host = req.host
    if ":" in host:
        host = f"[{host}]"
    port = req.dest_port
    if port != (443 if req.scheme in ("https", "wss") else 80):
        host = f"{host}:{port}"
    s = host + (req.raw_path or req.path)
    if s.isascii() and s.isprintable() and " " not in s:
        return s
    return _escape_dest(s)


def _clean(s: str) -> str:
    """A text in the comment after the decision: printable, one line, no arrow."""
    if s.isprintable() and ARROW not in s:
        return s
    s = s.replace(ARROW, "->")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


_cleaned: dict[str, str] = {}
_held_texts: dict[str, str] = {}


def _c(s: str, memo: dict[str, str] = _cleaned) -> str:
    """:func:`_clean`, memoised: reasons and names repeat (the same string objects, whose hash is kept)."""
    r = memo.get(s)
    if r is None:
        r = _clean(s[12:] if memo is _held_texts and s.startswith("when holds: ") else s)
        if len(s) <= 1024:
            if len(memo) >= 4096:
                memo.clear()
            memo[s] = r
    return r


def _held(why: str) -> str:
    """A selected backend's reason as the comment's brackets show it ("when holds: " left out)."""
    return _c(why, _held_texts)


def comment(d: Decision) -> str:
    """flow.comment: one line led by the decision (see above). Built for every routed request, so
    written for speed: the texts that repeat (names, reasons) are cleaned once (memoised lookups
    inline), the request's own destination and path checked with the fast string methods."""
    o = d.outcome
    trail = d.trail
    status = d.status
    cleaned = _cleaned.get
    if o == "routed":
        up = d.upstream_obj
        path = d.path or "/"
        if "?" in path:
            path = path.partition("?")[0]
        if not (path.isascii() and path.isprintable()):
            path = _escape_dest(path)
        if up is None:
            rest = f" | to {d.scheme}://{authority(d.scheme or '', d.host or '', d.port)}{path} (original destination)"
        elif up.name == up.url:
            rest = f" | to {up.origin}{path}"
        else:
            rest = f" | to {up.origin}{path} (upstream {cleaned(up.name) or _c(up.name)})"
        if d.split:
            rest += f" | split {_c(d.split)}"
        if d.mirrors:
            rest += f" | {_clean(mirrored(d))}"
        if d.fault_delay is not None:
            rest += f" | {fault_delayed(d)}"
        if d.sni is not None or d.throttle is not None:
            rest += f" | {_clean(shaped(d))}"
        why = trail[-1][2] if trail else ""
        rest = f" [{_held_texts.get(why) or _held(why)}]{rest}"
    elif o == "respond":
        why = trail[-1][2] if trail else ""
        if d.fault_abort is not None:   # an injected abort: condroute answered in the backend's place
            rest = f" [{_held_texts.get(why) or _held(why)}] | {fault_aborted(d)}: condroute answered {status}"
        else:
            rest = f" [{_held_texts.get(why) or _held(why)}] | condroute answered {status}"
            if d.backend_obj is not None and d.backend_obj.redirect is not None:
                rest += _clean(redirect_text(d))
            rest += _clean(local_text(d))
            if d.fault_delay is not None:
                rest += f" | {fault_delayed(d)}"
    elif o == "no_match":
        rest = " [no backend holds] | " + (f"condroute answered {status}" if status else "passed through unchanged")
    elif o == "unavailable":
        if d.reason:                  # failover: false
            rest = f" [{_c(d.reason)}] | condroute answered {status}"
        else:
            rest = f" [no upstream available] | condroute answered {status}"
    elif o == "bad_request":
        rest = f" [refused: {_c(d.reason or '')}] | condroute answered {status}"
    else:
        rest = " | passed through unchanged"
    if len(trail) > 1 or (trail and not trail[0][1]):
        skipped = [f"{cleaned(b) or _c(b)}: {cleaned(why) or _c(why)}" for b, held, why, _ in trail if not held]
        if skipped:
            rest += " | skipped " + "; ".join(skipped)
    target = _names.get((d.route, d.backend)) or comment_target(d.route, d.backend)
    return f"{comment_dest(d._req)} {ARROW} {target}{rest}"


def internal_error_comment(req: RequestView | None) -> str:
    """flow.comment when deciding failed with an internal error (condroute answers 502)."""
    return f"{comment_dest(req)} {ARROW} {NO_ROUTE} [internal error while routing] | condroute answered 502"


# -- condroute's own answers ---------------------------------------------------------------------
def error_body(d: Decision) -> str:
    """The text/plain body of a 400 (bad_request) or 502 (no backend holds, or none can serve)."""
    if d.outcome == "bad_request":
        return f"condroute: bad request: {d.reason}\n"
    if d.outcome == "unavailable" and d.reason:     # failover: false
        return f"condroute: route {d.route!r}: {d.reason}\n  (for {d.request})\n"
    lines = [f"condroute: no backend of route {d.route!r} holds for {d.request}"
             if d.outcome != "unavailable" else
             f"condroute: no upstream of route {d.route!r} can serve {d.request}; tried:"]
    for b, _, why, _ in d.trail:
        lines.append(f"  {b}: {why}")
    if not d.trail:
        lines.append("  (the route has no backends)")
    return "\n".join(lines) + "\n"


# -- data ----------------------------------------------------------------------------------------
def to_dict(d: Decision) -> dict[str, Any]:
    """The decision as plain, JSON-serialisable data."""
    skipped, attempts = [], []
    for b, held, why, fb in d.trail:
        attempts.append({"backend": b, "held": held, "reason": why, "fallback": fb})
        if not held:
            skipped.append({"backend": b, "reason": why})
    out: dict[str, Any] = {
        "outcome": d.outcome, "route": d.route, "backend": d.backend,
        "upstream": d.upstream, "url": d.url, "path": d.path, "status": d.status,
        "skipped": skipped, "attempts": attempts,
    }
    if d.reason:
        out["reason"] = d.reason
    if d.respond is not None and (d.respond.file or d.respond.dir) and d.fault_abort is None:
        out["file"] = local_file(d)
    if d.split:
        out["split"] = d.split
    if d.timeout:
        out["timeout"] = d.timeout
    if d.retries:
        out["retries"] = d.retries
    if d.set_headers:
        out["set_headers"] = dict(d.set_headers)
    if d.remove_headers:
        out["remove_headers"] = list(d.remove_headers)
    b = d.backend_obj
    if b is not None and b.extra:      # (an attribute of the backend: a Decision's unset fields cost more to test)
        if d.add_headers:
            out["add_headers"] = [list(h) for h in d.add_headers]
        if d.mirrors:
            out["mirrors"] = [{"upstream": m.upstream.name, "url": m.upstream.origin + path}
                              for m, path, _ in d.mirrors]
        if d.fault_delay is not None:
            out["fault_delay"] = d.fault_delay
        if d.sni is not None:
            out["sni"] = d.sni
        if d.throttle is not None:
            out["throttle_kbps"] = d.throttle
        if d.fault_abort is not None:
            out["fault_abort"] = d.fault_abort
    if d.routes_passed:
        out["routes_passed"] = [{"route": r, "reason": why} for r, why in d.routes_passed]
    return out


def original_url(req: RequestView) -> str:
    """The request's URL as it came (its path not normalised), for a request that goes on unchanged."""
    q = f"?{req.query_string}" if req.query_string else ""
    return f"{req.scheme}://{authority(req.scheme, req.host, req.port)}{req.raw_path or req.path}{q}"


def passes_through(d: Decision) -> bool:
    """The request goes on unchanged: no route, or no backend and on_no_match: passthrough."""
    return d.outcome == "passthrough" or (d.outcome == "no_match" and d.status is None)


def final_url(d: Decision, req: RequestView) -> str | None:
    """Where the request goes: the forwarded URL, the original one (passthrough), or where a
    redirect sends the client (its Location)."""
    if d.outcome == "routed":
        return d.url
    if d.outcome == "respond":
        return location(d)
    return original_url(req) if passes_through(d) else None


def location(d: Decision) -> str | None:
    """The Location header of a direct answer (a redirect), or None."""
    if d.respond is None:
        return None
    return next((v for k, v in d.respond.headers if k.lower() == "location"), None)


def forwarded_headers(d: Decision, req: RequestView) -> list[tuple[str, str]] | None:
    """The request headers as they are sent upstream, in order, as the addon's ``apply`` writes
    them: the Host the decision sends (the client's, ``host_rewrite``, or the upstream's
    authority), then ``remove_headers``, ``set_headers`` (replacing every value of the name, in
    the place of its first), ``add_headers`` (appended). A request that goes on unchanged keeps its
    headers; None when nothing is forwarded (condroute answers). For ``condroute check`` and
    ``export --verify``: never computed per request."""
    if d.outcome != "routed":
        return list(req.headers) if passes_through(d) else None
    h = list(req.headers)
    if d.host_header is not None:
        h = _set_all(h, "Host", d.host_header)
    if d.remove_headers:
        drop = {n.lower() for n in d.remove_headers}
        h = [(k, v) for k, v in h if k.lower() not in drop]
    for name, value in d.set_headers:
        h = _set_all(h, name, value)
    h.extend(d.add_headers)
    return h


def _set_all(h: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    """mitmproxy's ``headers[name] = value``: the first header of that name keeps its place (and
    its spelling) with the new value, the others go; appended when there is none."""
    low = name.lower()
    out, done = [], False
    for k, v in h:
        if k.lower() != low:
            out.append((k, v))
        elif not done:
            out.append((k, value))
            done = True
    if not done:
        out.append((name, value))
    return out


def shown_header(name: str, value: str, rules: Rules | None) -> str:
    """A header value as explain and log lines show it: secret ones (Authorization, cookies,
    tokens, the header settings.jwt reads) as <redacted>."""
    jwt = rules.settings.jwt if rules is not None else None
    return REDACTED if header_shower(name.lower(), jwt) is not None else value


def route_named(rules: Rules | None, name: str | None) -> Route | None:
    if rules is None or name is None:
        return None
    return next((r for r in rules.routes if r.name == name), None)


def route_label(route: Route | None, name: str) -> str:
    """A route as people read its name: ``NAME (ORIGIN)`` for an imported rule (its source, e.g.
    ``httproute header-matching, rule 3 (routes.yaml:27)``), ``NAME (FILE:LINE)`` for a route of an
    imported file without one, else the name."""
    if route is None:
        return name
    if route.origin:
        return f"{name} ({route.origin})"
    if route.file:
        return f"{name} ({route.file}:{route.line})"
    return name


def final_path(d: Decision, req: RequestView) -> str | None:
    if d.outcome == "routed":
        return d.path
    if passes_through(d):   # forwarded as it came (a normalised path is forwarded only when routed)
        return (req.raw_path or req.path) + (f"?{req.query_string}" if req.query_string else "")
    return None


def not_tried(rules: Rules, d: Decision) -> list[str]:
    route = next((r for r in rules.routes if r.name == d.route), None)
    if route is None:
        return []
    tried = {a.backend for a in d.attempts}
    return [b.name for b in route.backends if b.name not in tried]


def _not_tried_why(route: Route | None, name: str) -> str:
    """Why a backend was not tried: it is off (enabled: false, a switch; an off fallback is never
    tried), or an earlier one was selected."""
    b = next((b for b in route.backends if b.name == name), None) if route is not None else None
    return b.off if b is not None and b.off else "an earlier backend was selected"


# -- what only explain says (never computed per request) -----------------------------------------
def cond_clause(cond: Cond | None, req: RequestView, rules: Rules) -> FailedClause | None:
    """When ``cond`` fails because of a ``cel:`` policy that is a top-level ``&&`` chain, its first
    false clause (evaluated again, clause by clause: ``condroute explain`` only)."""
    if cond is None:
        return None
    if isinstance(cond, CelCond):
        return failed_clause(cond.policy, req, rules)
    if isinstance(cond, AllCond):       # the first part that fails is the one the reason names
        for p in cond.parts:
            if p.fail(req, rules) is not None:
                return cond_clause(p, req, rules)
    elif isinstance(cond, AnyCond):     # every part failed: the first CEL one explained
        for p in cond.parts:
            fc = cond_clause(p, req, rules)
            if fc is not None:
                return fc
    return None


def backend_clause(rules: Rules, d: Decision, req: RequestView, backend: str) -> FailedClause | None:
    route = next((r for r in rules.routes if r.name == d.route), None)
    b = next((b for b in route.backends if b.name == backend), None) if route is not None else None
    return cond_clause(b.when, req, rules) if b is not None else None


def route_clause(route: Route, why: str, req: RequestView, rules: Rules) -> FailedClause | None:
    """The failed clause of a route whose ``match`` conditions did not hold (with the route's own
    path parameters, as when it was tried)."""
    if route.cond is None:
        return None
    saved = req.params, req.rest
    try:
        if route.path is not None:
            params = route.path.match(req.path)
            if params is None:
                return None
            req.rest = params.pop("rest", None)
            req.params = params
        else:
            req.params, req.rest = {}, None
        if route.cond.fail(req, rules) != why:
            return None
        return cond_clause(route.cond, req, rules)
    finally:
        req.params, req.rest = saved


def with_clause(why: str, fc: FailedClause | None) -> str:
    """A reason with the failed clause named: 'cel `a && b` is false at clause 2 of 2: b', or, when
    no clause is false but one could not be evaluated, '... could not be evaluated: ... (clause 2
    of 2: b)'."""
    if fc is None:
        return why
    at = f"clause {fc.index} of {fc.count}: {fc.shown}"
    i = why.find("` is false")
    if fc.false and i >= 0:
        i += len("` is false")
        return f"{why[:i]} at {at}{why[i:]}"
    return f"{why} ({at})"


def client_text(rules: Rules, req: RequestView) -> str | None:
    """The explain table's client line, when the request carries X-Forwarded-For or X-Real-IP: the
    address the rules see and why ("127.0.0.1 (X-Forwarded-For ignored: 127.0.0.1 is not a trusted
    proxy)"); None otherwise."""
    if not (req.header("x-forwarded-for") or req.header("x-real-ip")):
        return None
    ip, how = req.client_explained(rules.settings.trusted_proxies)
    if ip is None:
        return how
    return f"{ip} ({how})"


def decision_data(rules: Rules, d: Decision, req: RequestView) -> dict[str, Any]:
    """The decision as plain data: :func:`to_dict` plus what the human table shows."""
    out: dict[str, Any] = {"request": d.request}
    out.update(to_dict(d))
    if d.routes_passed:
        routes = {r.name: r for r in rules.routes}
        for item in out["routes_passed"]:
            r = routes.get(item["route"])
            fc = route_clause(r, item["reason"], req, rules) if r is not None else None
            if fc is not None:
                item["clause"] = fc.to_dict()
    for a in out["attempts"]:
        if not a["held"]:
            fc = backend_clause(rules, d, req, a["backend"])
            if fc is not None:
                a["clause"] = fc.to_dict()
    if req.header("x-forwarded-for") or req.header("x-real-ip"):
        ip, how = req.client_explained(rules.settings.trusted_proxies)
        out["client"] = {"ip": None if ip is None else str(ip), "how": how}
    out["final_url"] = final_url(d, req)
    route = route_named(rules, d.route)
    if route is not None and (route.origin or route.file):
        out["route_origin"] = route.origin or f"{route.file}:{route.line}"
    if d.set_headers:
        out["set_headers"] = {k: shown_header(k, v, rules) for k, v in d.set_headers}
    if d.add_headers:
        out["add_headers"] = [[k, shown_header(k, v, rules)] for k, v in d.add_headers]
    b = d.backend_obj
    if d.outcome == "routed":
        out["host_header"] = d.host_header if d.host_header is not None else req.header_map.get("host", [None])[0]
        if b is not None and b.host_rewrite is not None:
            out["host_rewrite"] = b.host_rewrite
        if b is not None and b.rewrite is not None:
            out["rewrite"] = b.path.text        # the rewrite, compiled into the path's place
        if b is not None and b.mirrors:
            sent = [m for m, _, _ in d.mirrors]
            out["mirrors"] = [{"upstream": m.upstream.name, "url": m.upstream.url, "percent": m.percent,
                               "sent": any(m is s for s in sent)} for m in b.mirrors]
        if d.sni is not None:
            out["sni"] = d.sni
        if d.throttle is not None:
            out["throttle_kbps"] = d.throttle
    if b is not None and b.fault is not None:
        out["fault"] = fault_data(d, b.fault)
    if d.respond is not None:
        out["respond"] = {"status": d.respond.status, "body": d.respond.body,
                          "headers": {k: shown_header(k, v, rules) for k, v in d.respond.headers}}
        name = local_file(d)
        if name is not None:
            out["respond"]["file"] = name
        loc = location(d)
        if loc is not None:
            out["location"] = loc
    if d.timeout is not None:
        out["timeout"] = d.timeout
    if d.retries:
        out["retries"] = d.retries
    if b is not None and d.outcome == "routed":
        if b.retry_on != _DEFAULT_RETRY_ON:
            out["retry_on"] = sorted(b.retry_on)
        if not b.failover:
            out["failover"] = False
    nt = not_tried(rules, d) if d.outcome != "bad_request" else []
    if nt:
        out["not_tried"] = nt
    return out


def fault_text(d: Decision, f: Any) -> str:
    """The explain table's fault line: each part of the backend's fault, its percent, and whether
    it was drawn for this request (explain draws as a live request would)."""
    parts = []
    if f.delay is not None:
        pct = "" if f.delay_percent >= 100 else f" ({f.delay_percent:g}% of requests)"
        what = ("drawn: waits before the upstream is asked (or the answer given)" if d.fault_delay is not None
                else "not drawn for this request")
        parts.append(f"delay {f.delay:g}s{pct}: {what}")
    if f.abort is not None:
        pct = "" if f.abort_percent >= 100 else f" ({f.abort_percent:g}% of requests)"
        what = ("drawn: condroute answers it, nothing is forwarded" if d.fault_abort is not None
                else "not drawn for this request")
        parts.append(f"abort {f.abort}{pct}: {what}")
    if any(v is not None and 0 < p < 100 for v, p in ((f.delay, f.delay_percent), (f.abort, f.abort_percent))):
        parts.append("each request is drawn anew")
    return "; ".join(parts)


def fault_data(d: Decision, f: Any) -> dict[str, Any]:
    """The backend's fault and what was drawn for this request (``explain --json``)."""
    out: dict[str, Any] = {}
    if f.delay is not None:
        out["delay"] = {"seconds": f.delay, "percent": f.delay_percent, "drawn": d.fault_delay is not None}
    if f.abort is not None:
        out["abort"] = {"status": f.abort, "percent": f.abort_percent, "drawn": d.fault_abort is not None}
    return out


# -- the explain table ---------------------------------------------------------------------------
def _stdout_marks() -> tuple[str, str, str]:
    enc = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗·".encode(enc)
        return "✓", "✗", "·"
    except (UnicodeEncodeError, LookupError):
        return "+", "x", "-"


def _row(label: str, text: str) -> str:
    return f"{label:<{LABEL}}{text}"


def render_decision(rules: Rules, d: Decision, req: RequestView) -> list[str]:
    """The ``condroute explain`` table: one line per item, marks as stdout can print them."""
    ok, no, dot = _stdout_marks()
    lines = [_row("request", d.request)]
    client = client_text(rules, req)
    if client is not None:
        lines.append(_row("client", client))
    routes = {r.name: r for r in rules.routes} if d.routes_passed else {}
    for name, why in d.routes_passed:   # "no match": the route does not own the request
        r = routes.get(name)
        lines.append(_row("no match", f"{route_label(r, name)}: "
                                      f"{with_clause(why, route_clause(r, why, req, rules) if r else None)}"))
    if d.route is None:
        lines.append(_row("route", "none: passthrough, the request goes on unchanged"))
        lines.append(_row("url", original_url(req)))
        return lines
    route = route_named(rules, d.route)
    if route is not None and (route.origin or route.file):
        lines.append(_row("route", route_label(route, d.route)))
    else:
        lines.append(_row("route", d.route + (f" (line {route.line})" if route is not None else "")))
    if d.outcome == "bad_request" and not d.trail:   # refused before any backend was looked at
        lines.append(_row("result", f"refused: answered {d.status}, {d.reason}"))
        return lines
    names = [a.backend for a in d.attempts] + not_tried(rules, d)
    width = max((len(n) for n in names), default=0)
    for a in d.attempts:
        why = a.reason if a.held else with_clause(a.reason, backend_clause(rules, d, req, a.backend))
        lines.append(_row("backend", f"{ok if a.held else no} {a.backend:<{width}}  {why}"))
    for n in not_tried(rules, d):
        lines.append(_row("backend", f"{dot} {n:<{width}}  not tried: {_not_tried_why(route, n)}"))
    if d.outcome == "bad_request":   # the selected backend's path template would climb out
        lines.append(_row("result", f"refused: answered {d.status}, {d.reason}"))
        return lines
    if d.outcome == "no_match":
        if d.status is not None:
            lines.append(_row("result", f"no backend holds: answered {d.status} (on_no_match: error)"))
        else:
            lines.append(_row("result", "no backend holds: passthrough, the request goes on unchanged"))
            lines.append(_row("url", original_url(req)))
        return lines
    b = d.backend_obj
    if b is not None and b.fault is not None:
        lines.append(_row("fault", fault_text(d, b.fault)))
    if d.outcome == "respond" and b is not None and b.redirect is not None and d.respond is not None \
            and d.fault_abort is None:
        lines.append(_row("redirect", f"{d.respond.status} to {location(d)}"))
        return lines
    if d.outcome == "respond" and d.respond is not None:
        body = d.respond.body
        shown = json.dumps(body if len(body) <= 60 else body[:60] + "…", ensure_ascii=ok != "✓")
        name = local_file(d)
        if name is not None:   # Map Local: the file is read when the request is answered
            shown = f"from file {name}" + (f" (the file {{rest}} names in {shown_name(d.respond, None)})"
                                           if d.respond.dir else "")
        lines.append(_row("respond", f"{d.respond.status} {shown}"))
        for k, v in d.respond.headers:
            lines.append(_row("header", f"{k}: {shown_header(k, v, rules)}"))
        return lines
    if d.split:
        lines.append(_row("split", d.split))
    up = d.upstream_obj
    if up is None:
        lines.append(_row("upstream", "none: the original destination"))
    elif up.name == up.url:
        lines.append(_row("upstream", up.url))
    else:
        lines.append(_row("upstream", f"{up.name} ({up.url})"))
    lines.append(_row("url", d.url or ""))
    if b is not None and b.rewrite is not None:     # (compiled into the path's place: its text)
        lines.append(_row("rewrite", f"{b.path.text}: {req.path} -> {(d.path or '').partition('?')[0]}"))
    if d.host_header is not None:
        how = " (host rewrite)" if b is not None and b.host_rewrite is not None else ""
        lines.append(_row("set", f"Host: {d.host_header}{how}"))
    for k, v in d.set_headers:
        lines.append(_row("set", f"{k}: {shown_header(k, v, rules)}"))
    for k in d.remove_headers:
        lines.append(_row("removed", k))
    for k, v in d.add_headers:
        lines.append(_row("added", f"{k}: {shown_header(k, v, rules)}"))
    if b is not None and b.mirrors:
        for m in b.mirrors:
            up = m.upstream
            name = up.url if up.name == up.url else f"{up.name} ({up.url})"
            pct = "" if m.percent >= 100 else f", {m.percent:g}% of requests"
            path = next((p for s, p, _ in d.mirrors if s is m), None)
            if path is not None:
                lines.append(_row("mirror", f"{name}{pct}: a copy goes to {up.origin}{path} (its answer is dropped)"))
            else:
                lines.append(_row("mirror", f"{name}{pct}: not drawn for this request"))
    if d.outcome == "routed" and d.sni is not None:
        lines.append(_row("sni", "the client's own TLS server name (sni: preserve)" if d.sni == "preserve"
                          else f"{d.sni} (the TLS server name sent to the upstream, and checked in its certificate)"))
    if d.outcome == "routed" and d.throttle is not None:
        lines.append(_row("throttle", f"the response reaches the client at {d.throttle:g} kbps "
                                      f"({d.throttle * 125:g} bytes/s)"))
    extra = []
    if d.timeout is not None:
        extra.append(f"timeout {d.timeout:g}s")
    if d.retries:
        extra.append(f"retries {d.retries} on {', '.join(sorted(b.retry_on))}"
                     if b is not None and b.retry_on != _DEFAULT_RETRY_ON else f"retries {d.retries}")
    if b is not None and not b.failover:
        extra.append("failover: false (answers 502/503 instead of failing over)")
    if extra:
        lines.append(_row("limits", ", ".join(extra)))
    return lines


# -- what the mitmproxy adapter says about upstreams (condroute.mitm) ------------------------------
def skipped_lines(d: Decision) -> list[str]:
    """The verbose log's lines under a decision: each backend passed over, and why."""
    return [f"skipped {b}: {why}" for b, held, why, _ in d.trail if not held]


def connect_failed(d: Decision, address: str, error: str, attempts: int, cooldown: float) -> str:
    """The log line when a routed request's upstream cannot be connected to (it is decided again)."""
    tries = f" ({attempts} attempts)" if attempts > 1 else ""
    return (f"{d.route}/{d.backend}: upstream {d.upstream} ({address}) {error}{tries}; passing it over for "
            f"{cooldown:g}s and deciding again")


def failed_over(d: Decision, address: str, error: str, attempts: int) -> dict[str, Any]:
    """The metadata's record of an upstream passed over after it could not be connected to."""
    return {"upstream": d.upstream, "address": address, "error": error, "attempts": attempts}


def timeout_reason(phase: str, timeout: float) -> str:
    """Why a routed request timed out (the decision's reason): ``phase`` "headers" or "body"."""
    if phase == "headers":
        return f"no response headers within {timeout:g}s"
    return f"the response body stalled for {timeout:g}s"


def _timeout_what(phase: str, timeout: float) -> str:
    if phase == "headers":
        return f"did not respond within {timeout:g}s"
    return f"stopped sending the response body for {timeout:g}s"


def timeout_body(d: Decision, timeout: float) -> str:
    """The body of condroute's 504 when an upstream sent no response headers in time."""
    return (f"condroute: upstream {d.upstream} ({d.url}) did not respond within {timeout:g}s\n"
            f"  route {d.route!r}, backend {d.backend!r}\n")


def timeout_error(d: Decision, timeout: float) -> str:
    """The protocol error that ends a response whose body stalled."""
    return (f"condroute: upstream {d.upstream} ({redact_url(d.url)}) stopped sending the response body for {timeout:g}s; "
            f"route {d.route!r}, backend {d.backend!r}")


def timeout_header(d: Decision, timeout: float) -> str:
    """The X-Condroute debug header of condroute's 504."""
    return f"{d.route}/{d.backend} -> {d.upstream} (timeout {timeout:g}s: 504)"


def error_comment(error: str) -> str:
    """What is added to a routed flow's comment when it failed (mitmproxy's error message)."""
    return "failed: " + _clean(error)


def timeout_comment(d: Decision, phase: str, timeout: float, sent: bool) -> str:
    """What is added to flow.comment when the request timed out."""
    return f"upstream {d.upstream} {_timeout_what(phase, timeout)}: {'cutting the response' if sent else 'answering 504'}"


def timeout_line(d: Decision, request: str, phase: str, timeout: float, sent: bool) -> str:
    """The log line when the request timed out (``request``: "METHOD URL" as forwarded)."""
    outcome = "cutting the response (it had started)" if sent else "answering 504"
    return f"{request}: {d.route}/{d.backend}: upstream {d.upstream} {_timeout_what(phase, timeout)}, {outcome}"


# -- requests condroute sent itself, retried (mitm/retry.py): Decision.tries ------------------------
def try_entry(d: Decision, address: str, outcome: str, reason: str) -> dict[str, Any]:
    """One request condroute sent to the decision's upstream: ``outcome`` answered | reset |
    timeout | 5xx | connect-failure | too-large, ``reason`` what happened (the status line or why it
    failed). The record of Decision.tries and of flow.metadata["condroute"]["tries"]."""
    return {"upstream": d.upstream, "address": address, "backend": d.backend, "outcome": outcome, "reason": reason}


def tries_text(tries: Any) -> str:
    """The attempts in one line: "upstream primary (127.0.0.1:9101): 1 reset before a response
    head; 2 answered 200 OK" (consecutive attempts of one upstream share its name)."""
    parts, last = [], None
    for i, t in enumerate(tries, 1):
        who = f"{t.get('upstream')} ({t.get('address')})"
        text = f"{i} {t.get('reason')}"
        parts.append(text if who == last else f"upstream {who}: {text}")
        last = who
    return "; ".join(parts)


def tries_comment(tries: Any, then: str) -> str:
    """What is added to flow.comment for a request condroute sent itself: the attempts, then what
    came of them (``then``: "answered 200", "failing over", "answering 502 (failover: false)")."""
    return _clean(f"tried {tries_text(tries)}: {then}")


def try_failed_line(d: Decision, request: str, address: str, n: int, of: int, reason: str, then: str) -> str:
    """The log line for one failed attempt (``then``: "retrying in 0.05s", "failing over", ...)."""
    return (f"{request}: {d.route}/{d.backend}: upstream {d.upstream} ({address}) attempt {n} of {of}: "
            f"{reason}; {then}")


def retry_failed_body(d: Decision, address: str, reason: str, attempts: int, why_here: str) -> str:
    """The text/plain body of condroute's 502/504 when every attempt failed and nothing else serves
    (``why_here``: "failover: false", or "no other backend can serve")."""
    tries = f" ({attempts} attempts)" if attempts > 1 else ""
    return (f"condroute: upstream {d.upstream} ({address}) {reason}{tries}; {why_here}\n"
            f"  route {d.route!r}, backend {d.backend!r}, {d.request}\n")


def retry_header(d: Decision, status: int, attempts: int) -> str:
    """The X-Condroute debug header of an answer after spent retries."""
    return f"{d.route}/{d.backend} -> {d.upstream} (gave up after {attempts} attempts: {status})"


def failover_refused(d: Decision, address: str, error: str, attempts: int) -> str:
    """Why a refused connection is answered 502 instead of failing over (failover: false)."""
    tries = f" ({attempts} attempts)" if attempts > 1 else ""
    return (f"backend {d.backend!r} does not fail over (failover: false): upstream {d.upstream} ({address}) "
            f"{error}{tries}")
