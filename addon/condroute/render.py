"""Every text a decision is shown as, in one place.

A condition says why it failed (its reason, kept in ``Decision.trail`` and ``routes_passed``); this
module turns a :class:`~condroute.engine.Decision` into what people and programs read:

* :func:`header_value`   the X-Condroute debug header
* :func:`outcome_text`   what became of the request; :func:`summary` is the log line
* :func:`comment`        flow.comment (shown by mitmweb), with the backends skipped
* :func:`error_body`     the body of condroute's own 400/502 answers
* :func:`to_dict`        the decision as plain data (flow.metadata["condroute"])
* :func:`decision_data`  ``to_dict`` plus what ``condroute explain`` shows (``--json``)
* :func:`render_decision` the ``condroute explain`` table, one line per item

It sits below the engine (floor F7): it only reads a decision's attributes, and imports the engine's
types for type checking only.
"""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from .httptext import authority

if TYPE_CHECKING:
    from .compile.runtime import Rules
    from .engine import Decision
    from .request import RequestView

LABEL = 10   # width of the label column of the explain table


# -- one line ------------------------------------------------------------------------------------
def header_value(d: Decision) -> str:
    """The X-Condroute debug header."""
    if d.outcome == "routed":
        return f"{d.route}/{d.backend} -> {d.upstream or 'original destination'}"
    if d.outcome == "respond":
        return f"{d.route}/{d.backend} -> respond {d.status}"
    if d.outcome == "no_match" and d.status:
        return f"{d.route} -> error {d.status}"
    if d.outcome == "unavailable":
        return f"{d.route} -> error {d.status} (no upstream available)"
    if d.outcome == "bad_request":
        return f"{d.route or 'request'} -> refused {d.status}"
    return "passthrough"


def outcome_text(d: Decision) -> str:
    """What became of the request: the part of the log line after the request."""
    if d.outcome == "routed":
        return f"{d.route}/{d.backend} -> {d.upstream} ({d.url})"
    if d.outcome == "respond":
        return f"{d.route}/{d.backend} -> respond {d.status}"
    if d.outcome == "no_match":
        what = f"answered {d.status}" if d.status else "passthrough"
        return f"{d.route}: no backend holds, {what}"
    if d.outcome == "unavailable":
        return f"{d.route}: no upstream available, answered {d.status}"
    if d.outcome == "bad_request":
        return f"{d.route + ': ' if d.route else ''}refused {d.status}: {d.reason}"
    return "no route, passthrough"


def summary(d: Decision) -> str:
    """One log line: the request, then what became of it."""
    return f"{d.request} -> {outcome_text(d)}"


def comment(d: Decision) -> str:
    """One line for flow.comment (shown by mitmweb)."""
    s = "condroute: " + outcome_text(d)
    skipped = [f"{b}: {why}" for b, held, why, _ in d.trail if not held]
    if skipped:
        s += " | skipped " + "; ".join(skipped)
    return s


# -- condroute's own answers ---------------------------------------------------------------------
def error_body(d: Decision) -> str:
    """The text/plain body of a 400 (bad_request) or 502 (no backend holds, or none can serve)."""
    if d.outcome == "bad_request":
        return f"condroute: bad request: {d.reason}\n"
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
    if d.outcome == "routed":
        return d.url
    return original_url(req) if passes_through(d) else None


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


def decision_data(rules: Rules, d: Decision, req: RequestView) -> dict[str, Any]:
    """The decision as plain data: :func:`to_dict` plus what the human table shows."""
    out: dict[str, Any] = {"request": d.request}
    out.update(to_dict(d))
    out["final_url"] = final_url(d, req)
    if d.outcome == "routed":
        out["host_header"] = d.host_header if d.host_header is not None else req.header_map.get("host", [None])[0]
    if d.respond is not None:
        out["respond"] = {"status": d.respond.status, "body": d.respond.body, "headers": dict(d.respond.headers)}
    if d.timeout is not None:
        out["timeout"] = d.timeout
    if d.retries:
        out["retries"] = d.retries
    nt = not_tried(rules, d) if d.outcome != "bad_request" else []
    if nt:
        out["not_tried"] = nt
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
    for name, why in d.routes_passed:
        lines.append(_row("passed", f"{name}: {why}"))
    if d.route is None:
        lines.append(_row("route", "none: passthrough, the request goes on unchanged"))
        lines.append(_row("url", original_url(req)))
        return lines
    route = next((r for r in rules.routes if r.name == d.route), None)
    lines.append(_row("route", d.route + (f" (line {route.line})" if route is not None else "")))
    if d.outcome == "bad_request" and not d.trail:   # refused before any backend was looked at
        lines.append(_row("result", f"refused: answered {d.status}, {d.reason}"))
        return lines
    names = [a.backend for a in d.attempts] + not_tried(rules, d)
    width = max((len(n) for n in names), default=0)
    for a in d.attempts:
        lines.append(_row("backend", f"{ok if a.held else no} {a.backend:<{width}}  {a.reason}"))
    for n in not_tried(rules, d):
        lines.append(_row("backend", f"{dot} {n:<{width}}  not tried: an earlier backend was selected"))
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
    if d.outcome == "respond" and d.respond is not None:
        body = d.respond.body
        shown = json.dumps(body if len(body) <= 60 else body[:60] + "…", ensure_ascii=ok != "✓")
        lines.append(_row("respond", f"{d.respond.status} {shown}"))
        for k, v in d.respond.headers:
            lines.append(_row("header", f"{k}: {v}"))
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
    if d.host_header is not None:
        lines.append(_row("set", f"Host: {d.host_header}"))
    for k, v in d.set_headers:
        lines.append(_row("set", f"{k}: {v}"))
    for k in d.remove_headers:
        lines.append(_row("removed", k))
    extra = []
    if d.timeout is not None:
        extra.append(f"timeout {d.timeout:g}s")
    if d.retries:
        extra.append(f"retries {d.retries}")
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
    return (f"condroute: upstream {d.upstream} ({d.url}) stopped sending the response body for {timeout:g}s; "
            f"route {d.route!r}, backend {d.backend!r}")


def timeout_header(d: Decision, timeout: float) -> str:
    """The X-Condroute debug header of condroute's 504."""
    return f"{d.route}/{d.backend} -> {d.upstream} (timeout {timeout:g}s: 504)"


def timeout_comment(d: Decision, phase: str, timeout: float, sent: bool) -> str:
    """What is added to flow.comment when the request timed out."""
    return f"upstream {d.upstream} {_timeout_what(phase, timeout)}: {'cutting the response' if sent else 'answering 504'}"


def timeout_line(d: Decision, request: str, phase: str, timeout: float, sent: bool) -> str:
    """The log line when the request timed out (``request``: "METHOD URL" as forwarded)."""
    outcome = "cutting the response (it had started)" if sent else "answering 504"
    return f"{request}: {d.route}/{d.backend}: upstream {d.upstream} {_timeout_what(phase, timeout)}, {outcome}"
