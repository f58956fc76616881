"""Explaining decisions: requests built from plain arguments, and a decision as a table or as data.

Shared by ``condroute explain``, ``condroute check`` and ``condroute explain --flows``. The reasons
shown are the engine's own (``Decision.attempts`` and ``routes_passed``): the same text the addon
logs, from one implementation.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any, Sequence
from urllib.parse import urlsplit

from .engine import Decision
from .request import RequestView, parse_ip
from .compile.runtime import Rules

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
LABEL = 10   # width of the label column of the table


def _stdout_marks() -> tuple[str, str, str]:
    enc = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗·".encode(enc)
        return "✓", "✗", "·"
    except (UnicodeEncodeError, LookupError):
        return "+", "x", "-"


def build_request(url: str, method: str = "GET", headers: Sequence[tuple[str, str]] = (),
                  cookies: Sequence[str] = (), client_ip: str | None = None,
                  jwt: str | None = None) -> RequestView:
    """A RequestView as the addon would build it for this request. Raises ValueError with a sentence."""
    if not isinstance(method, str) or not _TOKEN.match(method):
        raise ValueError(f"{method!r} is not an HTTP method")
    full = url if "://" in url else "http://" + url.lstrip("/")
    try:
        u = urlsplit(full)
        _ = u.port   # raises ValueError for a bad port
    except ValueError as e:
        raise ValueError(f"bad URL {url!r}: {e}") from None
    if not u.hostname:
        raise ValueError(f"the URL {url!r} needs a host, as in http://shop.example/cart")
    if u.scheme.lower() not in ("http", "https", "ws", "wss"):
        raise ValueError(f"the URL {url!r} must be http:// or https://")
    peer = None
    if client_ip is not None:
        ip = parse_ip(str(client_ip))
        if ip is None:
            raise ValueError(f"{client_ip!r} is not an IP address")
        peer = str(ip)
    hdrs = list(headers)
    if cookies:
        hdrs.append(("Cookie", "; ".join(cookies)))
    # The URL is the request's target, as in an absolute-form request to the proxy: its host is the
    # host (rules-format "What is matched"), and a Host header is replaced with the URL's authority,
    # as the proxy does (RFC 9112 §3.2.2). Two Host headers get 400 from the proxy.
    if sum(k.lower() == "host" for k, _ in hdrs) > 1:
        raise ValueError("two Host headers: the proxy answers 400 Bad Request to such a request")
    hdrs = [(k, v) for k, v in hdrs if k.lower() != "host"]
    return RequestView.from_url(full, method, hdrs, peer=peer, jwt_token=jwt)


def original_url(req: RequestView) -> str:
    h = f"[{req.host}]" if ":" in req.host else req.host
    default = 443 if req.scheme in ("https", "wss") else 80
    auth = h if req.port == default else f"{h}:{req.port}"
    q = f"?{req.query_string}" if req.query_string else ""
    return f"{req.scheme}://{auth}{req.raw_path or req.path}{q}"


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
    """The decision as plain data: Decision.to_dict() plus what the human table shows."""
    out: dict[str, Any] = {"request": d.request}
    out.update(d.to_dict())
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


def _row(label: str, text: str) -> str:
    return f"{label:<{LABEL}}{text}"


def render_decision(rules: Rules, d: Decision, req: RequestView) -> list[str]:
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


