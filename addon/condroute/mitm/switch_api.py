"""The status page's switches: each route's and backend's state in ``/api/status``, and
``POST /api/switch`` that flips one (the page's buttons), answered by the proxy on the status host.

``POST /api/switch`` takes a JSON object: ``{"name": "ROUTE" or "ROUTE/BACKEND", "enabled": true or
false}`` puts it on or off (the same as ``condroute.enable``/``condroute.disable``; the file's own
state drops the switch), ``{"reset": true}`` drops every run-time switch. The answer is JSON:
``{"name", "enabled", "state", "changed", "reason"}`` (or ``{"reset": N}``), and for a mistake a
4xx with ``{"error": SENTENCE}``. Nothing is written to the rules file.

Only the page or a deliberate client can switch. The status host is answered for every client of
the proxy, so a page browsed *through* the proxy could try to POST to it; a browser sends such a
cross-site request only as a "simple" one (a form: ``application/x-www-form-urlencoded``,
``multipart/form-data`` or ``text/plain``) unless a CORS preflight allows more, and the status host
never allows one (``OPTIONS`` gets 405 with no ``Access-Control-*`` header). So:

* the body must be ``Content-Type: application/json`` (415 otherwise: no form can send it);
* an ``Origin`` header, when there is one, must be the status host's own (403 otherwise; browsers
  send it with every POST), and ``Sec-Fetch-Site``, when sent, must be ``same-origin``;
* GET, HEAD and anything else never change anything (405, ``Allow: POST``).

A client that is not a browser (curl, a script) sends no Origin: ``curl --json '{"name": "shop/beta",
"enabled": false}' -x 127.0.0.1:8080 http://condroute.mitm.it/api/switch``.
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import http

from ..compile.switches import UnknownSwitch, find, state

SWITCH_PATH = "/api/switch"
MAX_BODY = 16 * 1024


def switch_fields(name: str, item: Any, live: Any) -> dict[str, Any]:
    """The switch keys of a route or backend (in force) in ``/api/status``: ``switch`` (its name
    for POST /api/switch), ``enabled`` (in force now), ``enabled_in_file``, ``state`` (``on``,
    ``off`` (the file's enabled: false), ``switched off``, ``switched on``), ``switched_off``,
    ``switched_on`` (a run-time switch against the file) and ``off_reason`` (why it is off, or null)."""
    st = state(item)
    sw = getattr(live, "switches", {}).get(name)
    out = {"switch": name, "enabled": item.off is None, "enabled_in_file": item.enabled, "state": st,
           "switched_off": st == "switched off", "switched_on": st == "switched on", "off_reason": item.off}
    if sw is not None:
        out["switched_at"] = sw.at
        out["switched_by"] = sw.by
    return out


def switches_list(live: Any) -> list[dict[str, Any]]:
    """``/api/status``'s ``switches``: every run-time switch, also those whose name is not in the rules now."""
    rules = getattr(live, "loaded", None)
    return [{"name": n, "enabled": sw.enabled, "at": sw.at, "by": sw.by, "in_rules": find(rules, n) is not None}
            for n, sw in getattr(live, "switches", {}).items()]


def _json(status: int, data: dict[str, Any], headers: dict[str, str]) -> http.Response:
    return http.Response.make(status, json.dumps(data).encode("ascii") + b"\n",
                              {**headers, "Content-Type": "application/json"})


def _error(status: int, sentence: str, headers: dict[str, str]) -> http.Response:
    return _json(status, {"error": sentence}, headers)


def _foreign(req: http.Request, host: str) -> str | None:
    """Why this request comes from a page that is not the status page (None when it does not)."""
    origin = req.headers.get("origin")
    if origin is not None:
        try:
            u = urlsplit(origin)
            ok = u.scheme in ("http", "https") and (u.hostname or "").lower().rstrip(".") == host
        except ValueError:
            ok = False
        if not ok:
            return f"a page of {origin} cannot switch routes: only the status page (http://{host}/) can"
    site = req.headers.get("sec-fetch-site")
    if site is not None and site.lower() != "same-origin":
        return f"a {site} request cannot switch routes: only the status page (http://{host}/) can"
    return None


def answer(flow: http.HTTPFlow, host: str, live: Any, headers: dict[str, str]) -> http.Response:
    """The answer to a request for ``/api/switch`` on the status host (see the module docstring)."""
    req = flow.request
    method = req.method.upper()
    if method != "POST":
        return http.Response.make(405, f"condroute: {SWITCH_PATH} switches a route or backend with POST (a JSON "
                                       f"body); it answers nothing to {method}\n",
                                  {**headers, "Allow": "POST", "Content-Type": "text/plain; charset=utf-8"})
    why = _foreign(req, host)
    if why is not None:
        return _error(403, why, headers)
    ctype = req.headers.get("content-type", "").partition(";")[0].strip().lower()
    if ctype != "application/json":
        return _error(415, f"{SWITCH_PATH} takes a JSON body: send Content-Type: application/json (curl --json "
                           f"'{{\"name\": \"ROUTE/BACKEND\", \"enabled\": false}}'), not {ctype or 'none'}", headers)
    raw = req.raw_content or b""
    if len(raw) > MAX_BODY:
        return _error(413, f"the body is {len(raw)} bytes; {SWITCH_PATH} takes at most {MAX_BODY}", headers)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return _error(400, f"the body is not JSON: {e}", headers)
    if not isinstance(data, dict):
        return _error(400, 'the body must be a JSON object: {"name": "ROUTE/BACKEND", "enabled": false}', headers)
    if getattr(live, "set_switch", None) is None:
        return _error(404, "switches are not available here", headers)
    unknown = sorted(set(data) - {"name", "enabled", "reset"})
    if unknown:
        return _error(400, f"unknown key{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}: give "
                           '"name" and "enabled", or "reset": true', headers)
    if "reset" in data:
        if data["reset"] is not True or len(data) > 1:
            return _error(400, '"reset" is given alone, as {"reset": true}', headers)
        n = len(live.switches)
        live.reset_switches()
        return _json(200, {"reset": n}, headers)
    name, enabled = data.get("name"), data.get("enabled")
    if not isinstance(name, str) or not name.strip():
        return _error(400, '"name" must be a route ("ROUTE") or a backend ("ROUTE/BACKEND")', headers)
    if not isinstance(enabled, bool):
        return _error(400, '"enabled" must be true or false', headers)
    if live.loaded is None:
        return _error(409, "no rules are loaded: there is nothing to switch", headers)
    try:
        got, changed, phrase = live.set_switch(name, enabled, "status page")
    except UnknownSwitch as e:
        return _error(404, str(e), headers)
    item = find(live.rules, got)
    out: dict[str, Any] = {"name": got, "changed": changed, "reason": phrase}
    if item is not None:
        out.update(enabled=item.off is None, state=state(item))
    return _json(200, out, headers)
