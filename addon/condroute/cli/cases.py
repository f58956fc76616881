"""Golden cases for ``condroute check``: a YAML (or JSON) list of requests and expected decisions.

    - name: variant B by header            # optional
      request: {method: GET, url: "http://shop.example/cart", headers: {X-Ab-Test: B},
                cookies: {uid: "42"}, client_ip: 10.1.2.3, jwt: "eyJ..."}   # all but url optional
      expect: {route: checkout, backend: force-b, upstream: canary, path: /v2/checkout/42}

Every key under ``expect`` is optional; each one given must equal the decision. ``null`` expects
nothing there (``backend: null``: no backend selected). ``status`` expects a direct answer (a
``respond`` backend, or 502 for no backend with ``on_no_match: error``). ``path``, ``url`` and
``location`` without a ``?`` are compared without the query string. ``headers: {NAME: VALUE |
[V1, V2] | null}`` expects the request headers as forwarded upstream (after remove, set and add,
with the Host the decision sends; names in any case): a text is exactly one value, a list the
values in order, null no such header. ``location`` is the Location of a direct answer (a
redirect), whose ``url`` is that Location too. For a Map Local answer (``respond: {file}`` or
``{dir}``) the file is looked up and read as the proxy would when answering (localfiles.serve, with
the case's method and If-None-Match/If-Modified-Since headers): ``status`` is what the proxy would
answer (404 for a missing mock, 304 when revalidated), and ``file`` the file it answers with,
relative to the rules file's folder (null when none); the body itself is not compared. A cases file that is wrong is reported with
``FILE:LINE:COLUMN`` like a rules file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine import Decision, decide
from ..explain import build_request
from ..localfiles import serve
from ..render import final_path, final_url, forwarded_headers, local_file, location, route_label, route_named
from ..errors import RulesError
from ..load.ctx import CompileCtx
from ..conditions.matchers import as_text
from ..request import RequestView, parse_ip
from ..compile.runtime import Rules
from ..load.yamlpos import Y, load_file

CASE_KEYS = ("name", "request", "expect")
REQUEST_KEYS = ("method", "url", "headers", "cookies", "client_ip", "jwt")
EXPECT_KEYS = ("route", "backend", "upstream", "path", "url", "status", "outcome", "headers", "location", "file")
OUTCOMES = ("routed", "respond", "passthrough", "no_match", "bad_request")


class CasesError(RulesError):
    """A cases file that cannot be used; carries located problems."""


@dataclass
class Case:
    name: str
    line: int
    request: RequestView
    expect: dict[str, Any] = field(default_factory=dict)


def _unknown_keys(pr: CompileCtx, node: Y, allowed: tuple[str, ...], what: str) -> None:
    """``CompileCtx.check_keys``, but naming the keys in the order this format lists them (that one
    sorts them)."""
    for k in node.v:
        if k not in allowed:
            pr.error_key(node, k, f"unknown key {k!r} in {what}; expected one of: {', '.join(allowed)}")


def _is_scalar(v: Any) -> bool:
    return v is not None and not isinstance(v, (dict, list))


def _request(node: Y, pr: CompileCtx) -> RequestView | None:
    if not isinstance(node.v, dict):
        pr.error(node, "request must be a mapping such as {url: \"http://shop.example/cart\"}")
        return None
    _unknown_keys(pr, node, REQUEST_KEYS, "request")
    v = node.v
    before = len(pr.problems)
    if "url" not in v:
        pr.error(node, "request needs a url")
    elif not isinstance(v["url"].v, str) or not v["url"].v:
        pr.error(v["url"], "request.url must be a URL such as http://shop.example/cart")
    method = "GET"
    if "method" in v:
        if not isinstance(v["method"].v, str) or not v["method"].v:
            pr.error(v["method"], "request.method must be an HTTP method such as GET")
        else:
            method = v["method"].v.upper()
    headers: list[tuple[str, str]] = []
    if "headers" in v:
        hn = v["headers"]
        if not isinstance(hn.v, dict):
            pr.error(hn, "request.headers must be a mapping of header names to values")
        else:
            for name, val in hn.v.items():
                items = val.v if isinstance(val.v, list) else [val]
                for item in items:
                    if not _is_scalar(item.v):
                        pr.error(item, f"request.headers: the value of {name} must be text (or a list of texts)")
                    else:
                        headers.append((name, as_text(item)))
    cookies: list[str] = []
    if "cookies" in v:
        cn = v["cookies"]
        if not isinstance(cn.v, dict):
            pr.error(cn, "request.cookies must be a mapping of cookie names to values")
        else:
            for name, val in cn.v.items():
                if not _is_scalar(val.v):
                    pr.error(val, f"request.cookies: the value of {name} must be text")
                else:
                    cookies.append(f"{name}={as_text(val)}")
    client_ip = None
    if "client_ip" in v:
        ipn = v["client_ip"]
        if not isinstance(ipn.v, str) or parse_ip(ipn.v) is None:
            pr.error(ipn, f"request.client_ip must be an IP address, not {as_text(ipn.v)!r}")
        else:
            client_ip = ipn.v
    jwt = None
    if "jwt" in v:
        jn = v["jwt"]
        if not isinstance(jn.v, str) or not jn.v:
            pr.error(jn, "request.jwt must be a token (text)")
        else:
            jwt = jn.v
    if len(pr.problems) > before:
        return None
    try:
        return build_request(v["url"].v, method, headers, cookies, client_ip, jwt)
    except ValueError as e:
        pr.error(v.get("method", v["url"]) if "method" in str(e) and "method" in v else v["url"], str(e))
        return None


def _expect(node: Y, pr: CompileCtx) -> dict[str, Any]:
    if not isinstance(node.v, dict):
        pr.error(node, "expect must be a mapping such as {route: checkout, backend: default}")
        return {}
    if not node.v:
        pr.error(node, f"expect is empty: name at least one of {', '.join(EXPECT_KEYS)}")
    _unknown_keys(pr, node, EXPECT_KEYS, "expect")
    out: dict[str, Any] = {}
    for k, sub in node.v.items():
        if k not in EXPECT_KEYS:
            continue
        val = sub.v
        if k == "status":
            if val is not None and (isinstance(val, bool) or not isinstance(val, int) or not 100 <= val <= 599):
                pr.error(sub, f"expect.status must be an HTTP status code (100-599) or null, not {as_text(val)!r}")
                continue
        elif k == "outcome":
            if val not in OUTCOMES:
                pr.error(sub, f"expect.outcome must be one of {', '.join(OUTCOMES)}")
                continue
        elif k == "headers":
            want = _expect_headers(sub, pr)
            if want is not None:
                out[k] = want
            continue
        elif isinstance(val, (dict, list)):
            pr.error(sub, f"expect.{k} must be a single value or null")
            continue
        out[k] = val if val is None or k == "status" else as_text(sub)
    return out


def _expect_headers(node: Y, pr: CompileCtx) -> dict[str, tuple[str, list[str] | None]] | None:
    """expect.headers: lower-case name -> (the name as written, the values wanted; None = absent)."""
    if not isinstance(node.v, dict) or not node.v:
        pr.error(node, "expect.headers must be a mapping of header names to a value, a list of values "
                       "or null (absent), such as {X-Variant: B, X-Debug: null}")
        return None
    out: dict[str, tuple[str, list[str] | None]] = {}
    for name, val in node.v.items():
        if val.v is None:
            values = None
        elif isinstance(val.v, list):
            values = []
            for item in val.v:
                if not _is_scalar(item.v):
                    pr.error(item, f"expect.headers: the values of {name} must be texts")
                else:
                    values.append(as_text(item))
        elif _is_scalar(val.v):
            values = [as_text(val)]
        else:
            pr.error(val, f"expect.headers: the value of {name} must be a text, a list of texts or null")
            continue
        if name.lower() in out:
            pr.error_key(node, name, f"expect.headers names {name} twice (header names are compared "
                                     "without case)")
            continue
        out[name.lower()] = (name, values)
    return out


def load_cases(path: str) -> list[Case]:
    """Read a cases file. Raises :class:`CasesError` with located problems."""
    try:
        root, _ = load_file(path)
    except RulesError as e:
        raise CasesError(e.problems) from None
    pr = CompileCtx(path)
    if not isinstance(root.v, list):
        pr.error(root, "a cases file must be a list of cases, each {name, request, expect}")
        raise CasesError(pr.problems)
    if not root.v:
        pr.error(root, "the cases file has no cases")
    cases: list[Case] = []
    for i, node in enumerate(root.v):
        if not isinstance(node.v, dict):
            pr.error(node, "a case must be a mapping with request and expect")
            continue
        _unknown_keys(pr, node, CASE_KEYS, "a case")
        v = node.v
        req = None
        if "request" not in v:
            pr.error(node, "a case needs a request (at least {url: ...})")
        else:
            req = _request(v["request"], pr)
        expect: dict[str, Any] = {}
        if "expect" not in v:
            pr.error(node, "a case needs expect (route, backend, upstream, path, url, status or outcome)")
        else:
            expect = _expect(v["expect"], pr)
        name = f"case {i + 1}"
        if "name" in v:
            if not _is_scalar(v["name"].v):
                pr.error(v["name"], "a case name must be text")
            else:
                name = as_text(v["name"])
        elif req is not None:
            name = f"case {i + 1}: {req.describe()}"
        if req is not None:
            cases.append(Case(name, node.line, req, expect))
    if pr.problems:   # sorted, each kept (CompileCtx.raise_if_errors would drop repeats)
        raise CasesError(sorted(pr.problems, key=lambda p: (p.line, p.col)))
    return cases


# --------------------------------------------------------------------------------------------------
def actual(d: Decision, req: RequestView) -> dict[str, Any]:
    out = {"route": d.route, "backend": d.backend, "upstream": d.upstream, "path": final_path(d, req),
           "url": final_url(d, req), "status": d.status, "outcome": d.outcome, "location": location(d),
           "file": None}
    if local_file(d) is not None:      # Map Local: looked up as the proxy would when answering
        got = serve(d.respond, req.method, req.rest, req.header("if-none-match"), req.header("if-modified-since"))
        out["status"] = got.status
        out["file"] = got.name if not got.note or got.status == 304 else None   # served (any status), or revalidated
    return out


def _show_values(v: list[str] | None) -> str:
    if v is None:
        return "absent"
    if len(v) == 1:
        return _show(v[0])
    return "[" + ", ".join(_show(x) for x in v) + "]"


def header_diffs(want: dict[str, tuple[str, list[str] | None]], d: Decision, req: RequestView) -> list[str]:
    """What differs between expect.headers and the headers the request is forwarded with."""
    sent = forwarded_headers(d, req)
    if sent is None:
        return [f"headers: nothing is forwarded ({d.outcome}{f' {d.status}' if d.status else ''})"]
    diffs = []
    for low, (name, values) in want.items():
        got = [v for k, v in sent if k.lower() == low] or None
        if got != values:
            diffs.append(f"headers.{name}: wanted {_show_values(values)}, got {_show_values(got)}")
    return diffs


def _same(key: str, want: Any, got: Any) -> bool:
    if want is None or got is None:
        return want is None and got is None
    if key in ("path", "url", "location") and "?" not in want and "?" in got:
        got = got.split("?", 1)[0]
    return as_text(want) == as_text(got)


def _show(v: Any) -> str:
    return "null" if v is None else (str(v) if isinstance(v, int) else f'"{v}"')


def run_case(rules: Rules, case: Case) -> list[str]:
    """What differs between the case's expectations and the decision ([] = the case passes)."""
    req = case.request
    d = decide(rules, req, explain=True)
    got = actual(d, req)
    diffs: list[str] = []
    for key, want in case.expect.items():
        if key == "headers":
            diffs.extend(header_diffs(want, d, req))
            continue
        if _same(key, want, got[key]):
            continue
        msg = f"{key}: wanted {_show(want)}, got {_show(got[key])}"
        if key == "route" and got[key] is not None and route_named(rules, got[key]) is not None:
            r = route_named(rules, got[key])
            if r.origin or r.file:
                msg += f" [{route_label(r, got[key])}]"
        if key == "route" and want is not None:
            why = next((w for r, w in d.routes_passed if r == want), None)
            if why is not None:
                msg += f" ({route_label(route_named(rules, want), want)}: {why})"
            elif not any(r.name == want for r in rules.routes):
                msg += f" (the rules have no route {want!r})"
            elif d.route is not None:
                msg += f" ({route_label(route_named(rules, d.route), d.route)} comes first and owns the request)"
        if key == "backend" and want is not None:
            why = next((a.reason for a in d.attempts if a.backend == want and not a.held), None)
            if why is not None:
                msg += f" ({want}: {why})"
            elif not any(b.name == want for r in rules.routes for b in r.backends):
                msg += f" (the rules have no backend {want!r})"
            elif d.backend is not None and want not in [a.backend for a in d.attempts]:
                msg += f" ({want} was not tried: {d.backend} came first)"
        if key == "upstream" and want is not None and want not in rules.upstreams and "://" not in str(want):
            msg += f" (the rules have no upstream {want!r})"
        diffs.append(msg)
    r = route_named(rules, d.route)
    if diffs and r is not None and (r.origin or r.file) and "route" not in case.expect:
        diffs.append(f"decided by route {route_label(r, r.name)}")   # an imported rule, by its source
    return diffs
