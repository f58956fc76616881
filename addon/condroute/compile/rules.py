"""Compile a rules file (see ``rules-format.md``) into an immutable, ready-to-evaluate form."""
from __future__ import annotations

import gc
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..load.ctx import CompileCtx, kind
from ..conditions.base import Cond, compile_cidrs, compile_condition
from ..errors import RulesError
from .matchers import Matcher, as_text, compile_matcher
from ..request import IPNet, lazy
from ..load.yamlpos import Y, parse_bytes, parse_text

TOP_KEYS = ("version", "upstreams", "settings", "routes")
SETTINGS_KEYS = ("on_no_match", "trusted_proxies", "jwt", "geoip_db", "strip_routing_headers")
# never stripped by strip_routing_headers: the upstream needs them whatever they routed on
NEVER_STRIP = frozenset({"host", "authorization", "cookie", "content-type", "content-length", "transfer-encoding"})
ROUTE_KEYS = ("name", "match", "backends")
MATCH_KEYS = ("host", "methods", "method", "path")
BACKEND_KEYS = ("name", "when", "fallback", "upstream", "split", "path", "set_headers", "remove_headers",
                "preserve_host", "respond", "timeout", "retries")
SPLIT_KEYS = ("by", "weights", "salt")
RESPOND_KEYS = ("status", "body", "headers")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True)
class Upstream:
    name: str          # the name in `upstreams`, or the URL as written
    url: str
    scheme: str
    host: str          # without brackets
    port: int
    base_path: str     # "" or "/base" (no trailing slash)

    @lazy
    def authority(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return h if self.port == default else f"{h}:{self.port}"

    @lazy
    def origin(self) -> str:
        """scheme://authority"""
        return f"{self.scheme}://{self.authority}"

    @lazy
    def authority_b(self) -> bytes:
        return self.authority.encode("utf-8", "surrogateescape")

    @lazy
    def scheme_b(self) -> bytes:
        return self.scheme.encode()


@dataclass(frozen=True)
class Respond:
    status: int
    body: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Split:
    by: str                    # as written: "cookie:uid"
    kind: str                  # cookie | header | query | jwt | client_ip
    key: str                   # the name after the colon
    arms: tuple[tuple[Upstream, float], ...]
    salt: str


@dataclass(frozen=True)
class PathTemplate:
    text: str
    parts: tuple[tuple[bool, str], ...]   # (is_placeholder, literal-or-name)

    def render(self, params: dict[str, str], path: str, rest: str | None) -> str:
        out = []
        for is_ph, s in self.parts:
            if not is_ph:
                out.append(s)
            elif s == "path":
                out.append(path)
            elif s == "rest":
                out.append(rest or "")
            else:
                out.append(params.get(s, ""))
        return "".join(out)


@dataclass(frozen=True)
class Backend:
    name: str
    line: int
    when: Cond | None = None
    fallback: bool = False
    upstream: Upstream | None = None
    split: Split | None = None
    path: PathTemplate | None = None
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    preserve_host: bool = False
    respond: Respond | None = None
    timeout: float | None = None
    retries: int = 0

    @property
    def unconditional(self) -> bool:
        return self.when is None and not self.fallback

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

    @lazy
    def has_timeouts(self) -> bool:
        return any(b.timeout for r in self.routes for b in r.backends)

    def summary(self) -> str:
        nb = sum(len(r.backends) for r in self.routes)
        return (f"{len(self.routes)} route{'s' * (len(self.routes) != 1)}, {nb} backend{'s' * (nb != 1)}, "
                f"{len(self.upstreams)} upstream{'s' * (len(self.upstreams) != 1)}")


# --------------------------------------------------------------------------------------------------
def parse_upstream_url(node: Y, cc: CompileCtx, name: str | None = None) -> Upstream | None:
    text = node.v
    if not isinstance(text, str) or not text:
        cc.error(node, f"an upstream must be a URL such as http://127.0.0.1:9001, not {kind(text)}")
        return None
    try:
        u = urlsplit(text)
        port = u.port
    except ValueError as e:
        cc.error(node, f"bad upstream URL {text!r}: {e}")
        return None
    scheme = SCHEMES.get(u.scheme.lower())
    if scheme is None or not u.hostname:
        cc.error(node, f"bad upstream URL {text!r}: expected scheme://host[:port][/base] with scheme http or https")
        return None
    if u.query or u.fragment:
        cc.error(node, f"bad upstream URL {text!r}: a query string or fragment is not allowed here")
        return None
    if u.username or u.password:
        cc.error(node, f"bad upstream URL {text!r}: credentials in the URL are not supported; use set_headers")
        return None
    base = u.path.rstrip("/")
    if base and unnormal_path(base):
        cc.error(node, f"bad upstream URL {text!r}: its path {unnormal_path(base)}; write the path it means")
        return None
    return Upstream(name or text, text, scheme, u.hostname, port or (443 if scheme == "https" else 80), base)


def unnormal_path(text: str) -> str | None:
    """Why a path written in the rules is not a normalised path (see request.normalize_path), or None."""
    if "\\" in text or any(e in text.lower() for e in ("%2e", "%2f", "%5c")):
        return "has a backslash or an encoded '.', '/' or '\\' (%2e, %2f, %5c)"
    segs = text.split("/")
    if any(s.partition(";")[0] in (".", "..") for s in segs):
        return "has a '.' or '..' segment"
    if "//" in text:
        return "has an empty segment ('//')"
    return None


def _upstream_ref(node: Y, cc: CompileCtx) -> Upstream | None:
    ref = node.text     # an upstream named `yes:` is referred to as `upstream: yes`
    if ref and "://" not in ref:
        up = cc.upstreams.get(ref)
        if up is None:
            known = ", ".join(sorted(cc.upstreams)) or "none are defined"
            cc.error(node, f"unknown upstream {ref!r} (known upstreams: {known})")
        return up
    return parse_upstream_url(node, cc)


def compile_path_pattern(node: Y, cc: CompileCtx) -> PathPattern | None:
    if isinstance(node.v, dict):
        m = compile_matcher(node, cc, "path")
        return PathPattern(text=repr(node.plain()), matcher=m) if m else None
    text = cc.expect_str(node, "match.path")
    if text is None:
        return None
    if not text.startswith("/"):
        cc.error(node, f"match.path must start with '/': {text!r}")
        return None
    bad = unnormal_path(text)
    if bad:
        cc.error(node, f"match.path {text!r} {bad}: request paths are matched normalised, so it would never match")
        return None
    has_rest = text == "/*" or text.endswith("/*")
    body = text[:-2] if has_rest else text
    if "*" in body:
        cc.error(node, "'*' is only allowed as the last segment of a path, as in /api/*")
        return None
    params: list[str] = []
    pieces = []
    literal_prefix: list[str] = []
    literal_done = False
    for seg in body.split("/")[1:] if body else []:
        pos = 0
        rx = ""
        for m in _PARAM.finditer(seg):
            rx += re.escape(seg[pos:m.start()])
            name = m.group(1)
            if name in params or name in ("path", "rest"):
                cc.error(node, f"path parameter {{{name}}} is {'used twice' if name in params else 'a reserved name'}")
                return None
            params.append(name)
            rx += f"(?P<{name}>[^/]+)"
            pos = m.end()
        tail = seg[pos:]
        if "{" in tail or "}" in tail:
            cc.error(node, f"bad path parameter in segment {seg!r}: use {{name}} with a letter, digits or _")
            return None
        rx += re.escape(tail)
        pieces.append(rx)
        if pos == 0 and not literal_done:
            literal_prefix.append(seg)
        else:
            literal_done = True
    lp = "/" + "/".join(literal_prefix) if literal_prefix else ""
    segments = body.split("/")[1:] if body else []
    whole = [(True, seg[1:-1]) if _PARAM.fullmatch(seg) else (False, seg) for seg in segments]
    if all(is_p or "{" not in t for is_p, t in whole):
        # every parameter is a whole segment: match by splitting, no regular expression
        return PathPattern(text=text, params=tuple(params), has_rest=has_rest, literal_prefix=lp, segs=tuple(whole))
    pattern = "".join("/" + p for p in pieces)
    if has_rest:
        pattern += r"(?:/(?P<rest>.*))?"
    elif not pattern:
        pattern = "/"
    return PathPattern(text=text, regex=re.compile(pattern + r"\Z"), params=tuple(params), has_rest=has_rest,
                       literal_prefix=lp)


def compile_path_template(node: Y, cc: CompileCtx) -> PathTemplate | None:
    text = cc.expect_str(node, "path")
    if text is None:
        return None
    if not text.startswith("/") and not text.startswith("{"):
        cc.error(node, f"path must start with '/' (or a placeholder such as {{path}}): {text!r}")
        return None
    parts: list[tuple[bool, str]] = []
    pos = 0
    for m in _PARAM.finditer(text):
        if m.start() > pos:
            parts.append((False, text[pos:m.start()]))
        name = m.group(1)
        if name == "rest" and not cc.route_has_rest:
            cc.error(node, "{rest} needs a route path that ends in /*")
        elif name not in ("path", "rest") and name not in cc.route_params:
            have = ", ".join("{" + p + "}" for p in cc.route_params) or "none"
            cc.error(node, f"unknown placeholder {{{name}}}: the route's path parameters are {have}; also {{path}}"
                     + (" and {rest}" if cc.route_has_rest else ""))
        parts.append((True, name))
        pos = m.end()
    if pos < len(text):
        parts.append((False, text[pos:]))
    if any("{" in s or "}" in s for ph, s in parts if not ph):
        cc.error(node, "bad placeholder in path: use {name} with a letter, digits or _")
    bad = unnormal_path(text)
    if bad:
        cc.error(node, f"path {text!r} {bad}: the forwarded path must stay under the upstream's path")
    return PathTemplate(text, tuple(parts))


def _header_map(node: Y, cc: CompileCtx, what: str) -> tuple[tuple[str, str], ...]:
    if not cc.expect_map(node, what):
        return ()
    out = []
    for name, v in node.v.items():
        if not _TOKEN.match(name):
            cc.error_key(node, name, f"{what}: {name!r} is not a valid header name")
            continue
        if v.text is None:      # a mapping, a list or nothing (`~` is the text "~")
            cc.error(v, f"{what}: the value of {name} must be a single value, not {kind(v.v)}")
            continue
        val = v.text
        bad = _CTL.search(val)
        if bad:
            ch = bad.group()
            cc.error(v, f"{what}: the value of {name} must not contain a line break" if ch in "\r\n" else
                     f"{what}: the value of {name} must not contain the control character {ch!r} (character "
                     f"{bad.start() + 1}): a header value is visible text and tabs (RFC 9110 §5.5)")
            continue
        out.append((name, val))
    return tuple(out)


# Control characters a header value may not hold (RFC 9110 §5.5): all but HTAB, and DEL.
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Request headers set_headers may not set (and remove_headers may not remove, for the framing ones
# and Host), and why. They describe the message's framing or mitmproxy's own connection to the
# upstream: `Content-Length: 5` on a GET makes the upstream wait for five bytes that never come, and
# on a POST a wrong one makes it read the rest of the body as another request.
_FRAMES = ("frames the request, and mitmproxy frames it from the body it forwards (a length that "
           "disagrees with the body stalls the upstream or splits the request in two)")
_HOP = ("is hop-by-hop (RFC 9110 §7.6.1): it is about mitmproxy's own connection to the upstream, "
        "which mitmproxy manages")
REQUEST_HEADERS_KEPT = {
    "content-length": _FRAMES, "transfer-encoding": _FRAMES,
    "host": "is the upstream URL's host, or the client's with preserve_host: true; another one "
            "would say one host while the request goes to another",
    "connection": _HOP, "keep-alive": _HOP, "proxy-connection": _HOP, "te": _HOP, "trailer": _HOP,
    "upgrade": _HOP,
}
REMOVE_KEPT = ("content-length", "transfer-encoding", "host")
RESPOND_NO_BODY = {204: "§15.3.5", 304: "§15.4.5"}     # RFC 9110: "cannot contain content"


def _check_respond(r: Y, cc: CompileCtx, st: int, body: str, hdrs: tuple[tuple[str, str], ...]) -> None:
    """A direct answer must be valid HTTP as written: mitmproxy frames it from its body."""
    if body and st in RESPOND_NO_BODY:
        cc.error(r.v["body"], f"respond.body must be empty with status {st}: a {st} response cannot have "
                              f"content (RFC 9110 {RESPOND_NO_BODY[st]})")
    for name, val in hdrs:
        low = name.lower()
        if low == "transfer-encoding":
            cc.error_key(r.v["headers"], name, f"respond.headers: {name} cannot be set: the answer is sent "
                                               f"whole, framed by a Content-Length taken from its body")
        elif low == "content-length" and st == 204:
            cc.error_key(r.v["headers"], name, f"respond.headers: {name} cannot be sent with status 204 "
                                               f"(RFC 9110 §8.6)")
        elif low == "content-length" and val.strip() != str(len(body.encode())):
            cc.error_key(r.v["headers"], name, f"respond.headers: {name} {val} does not match the body "
                                               f"({len(body.encode())} bytes); leave it out: it is set from the body")


def compile_split(node: Y, cc: CompileCtx, route_name: str) -> Split | None:
    if not cc.expect_map(node, "split") or not cc.check_keys(node, SPLIT_KEYS, "split"):
        return None
    by_node = node.v.get("by")
    w_node = node.v.get("weights")
    if by_node is None:
        cc.error(node, "split needs `by` (cookie:NAME, header:NAME, query:NAME, jwt:CLAIM or client_ip)")
        return None
    if w_node is None:
        cc.error(node, "split needs `weights`, e.g. {stable: 90, canary: 10}")
        return None
    by = cc.expect_str(by_node, "split.by")
    if by is None:
        return None
    kind_, _, key = by.partition(":")
    if kind_ == "client_ip" and not key:
        pass
    elif kind_ not in ("cookie", "header", "query", "jwt") or not key:
        cc.error(by_node, f"split.by {by!r}: expected cookie:NAME, header:NAME, query:NAME, jwt:CLAIM or client_ip")
        return None
    if kind_ == "header":
        key = key.lower()
    if not cc.expect_map(w_node, "split.weights"):
        return None
    if len(w_node.v) < 1:
        cc.error(w_node, "split.weights: name at least one upstream")
        return None
    arms = []
    for name, wn in w_node.v.items():
        w = wn.v
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or w != w:
            cc.error(wn, f"split weight of {name!r} must be a number >= 0, not {kind(w)}")
            continue
        up = _upstream_ref(Y(name, *w_node.key_pos[name]), cc)
        if up is not None:
            arms.append((up, float(w)))
    if arms and sum(w for _, w in arms) <= 0:
        cc.warn(w_node, "every weight of this split is 0: it picks among its upstreams evenly")
    salt_node = node.v.get("salt")
    salt = "" if salt_node is None or (salt_node.v is None and salt_node.text is None) else as_text(salt_node)
    return Split(by, kind_, key, tuple(arms), salt)


def compile_backend(node: Y, cc: CompileCtx, route_name: str, index: int) -> Backend | None:
    if not cc.expect_map(node, "a backend"):
        return None
    ok = cc.check_keys(node, BACKEND_KEYS, "a backend")
    v = node.v
    name_node = v.get("name")
    if name_node is None:
        cc.error(node, "a backend needs a `name`")
        return None
    name = name_node.text
    if not name:
        cc.error(name_node, f"a backend name must be a non-empty string, not {kind(name_node.v)}")
        return None
    kw: dict[str, Any] = {}
    if "fallback" in v:
        fb = v["fallback"]
        if not isinstance(fb.v, bool):
            cc.error(fb, "fallback must be true or false")
        elif fb.v:
            kw["fallback"] = True
            if "when" in v:
                cc.error_key(node, "when", f"backend {name!r}: a fallback backend cannot have `when`")
    if "when" in v:
        kw["when"] = compile_condition(v["when"], cc)
    targets = [k for k in ("upstream", "split", "respond") if k in v]
    if len(targets) > 1:
        cc.error_key(node, targets[1], f"backend {name!r}: use only one of upstream, split, respond")
    if "upstream" in v:
        kw["upstream"] = _upstream_ref(v["upstream"], cc)
    if "split" in v:
        kw["split"] = compile_split(v["split"], cc, route_name)
    if "respond" in v:
        r = v["respond"]
        if cc.expect_map(r, "respond") and cc.check_keys(r, RESPOND_KEYS, "respond"):
            status = r.v.get("status")
            st = 200
            if status is not None:
                if isinstance(status.v, bool) or not isinstance(status.v, int) or not 100 <= status.v <= 599:
                    cc.error(status, f"respond.status must be an HTTP status code (200-599), not {kind(status.v)}")
                elif status.v < 200:
                    why = {100: "100 tells the client to go on sending its body",
                           101: "101 would switch the connection to another protocol"}.get(
                        status.v, "the client would go on waiting for the final one")
                    cc.error(status, f"respond.status {status.v} is an interim (1xx) response, and a direct answer "
                                     f"must be a final one (200-599): {why}")
                else:
                    st = status.v
            body = r.v.get("body")
            btxt = ""
            if body is not None:
                if isinstance(body.v, (dict, list)):
                    cc.error(body, "respond.body must be text")
                else:
                    btxt = body.text or ""
            hdrs = _header_map(r.v["headers"], cc, "respond.headers") if "headers" in r.v else ()
            _check_respond(r, cc, st, btxt, hdrs)
            kw["respond"] = Respond(st, btxt, hdrs)
    if "path" in v:
        kw["path"] = compile_path_template(v["path"], cc)
    if "set_headers" in v:
        kw["set_headers"] = _header_map(v["set_headers"], cc, "set_headers")
        for hname, _ in kw["set_headers"]:
            if hname.lower() in REQUEST_HEADERS_KEPT:
                cc.error_key(v["set_headers"], hname, f"set_headers cannot set {hname}: it "
                                                      f"{REQUEST_HEADERS_KEPT[hname.lower()]}")
    if "remove_headers" in v:
        rh = v["remove_headers"]
        if isinstance(rh.v, str):
            rh = Y([rh], rh.line, rh.col)
        if cc.expect_list(rh, "remove_headers"):
            names = []
            for n in rh.v:
                t = n.text
                if t is None or not _TOKEN.match(t):
                    cc.error(n, f"remove_headers: {n.v!r} is not a valid header name")
                elif t.lower() in REMOVE_KEPT:
                    cc.error(n, f"remove_headers cannot remove {t}: it {REQUEST_HEADERS_KEPT[t.lower()]}")
                else:
                    names.append(t)
            kw["remove_headers"] = tuple(names)
    if "preserve_host" in v:
        ph = v["preserve_host"]
        if not isinstance(ph.v, bool):
            cc.error(ph, "preserve_host must be true or false")
        else:
            kw["preserve_host"] = ph.v
    if "timeout" in v:
        t = v["timeout"]
        if isinstance(t.v, bool) or not isinstance(t.v, (int, float)) or not 0 < t.v <= 86400:
            cc.error(t, f"timeout must be a number of seconds > 0, not {kind(t.v)}")
        else:
            kw["timeout"] = float(t.v)
    if "retries" in v:
        t = v["retries"]
        if isinstance(t.v, bool) or not isinstance(t.v, int) or not 0 <= t.v <= 10:
            cc.error(t, f"retries must be a whole number from 0 to 10, not {kind(t.v)}")
        else:
            kw["retries"] = t.v
    if not ok:
        return None
    return Backend(name=name, line=node.line, **kw)


def compile_route(node: Y, cc: CompileCtx, index: int) -> Route | None:
    if not cc.expect_map(node, "a route"):
        return None
    cc.check_keys(node, ROUTE_KEYS, "a route")
    v = node.v
    name = f"route-{index + 1}"
    if "name" in v:
        n = v["name"]
        if not n.text:
            cc.error(n, f"a route name must be a non-empty string, not {kind(n.v)}")
        else:
            name = n.text
    kw: dict[str, Any] = {}
    cc.route_params, cc.route_has_rest = (), False
    cc.header_names = set()
    if "match" in v:
        m = v["match"]
        if cc.expect_map(m, "match"):
            extra = {k: s for k, s in m.v.items() if k not in MATCH_KEYS}
            for k in extra:
                if k not in ("header", "cookie", "query", "jwt", "client_ip", "geo", "cel", "any", "all", "not"):
                    cc.error_key(m, k, f"unknown key {k!r} in match; expected host, methods, path, "
                                 "or a condition (header, cookie, query, client_ip, jwt, geo, cel, any, all, not)")
            if "host" in m.v:
                hn = m.v["host"]
                items = hn.v if isinstance(hn.v, list) else [hn]
                hosts = []
                for h in items:
                    if not h.text:
                        cc.error(h, f"match.host must be a host name, \"*.example.com\" or a list of those, not {kind(h.v)}")
                        continue
                    hv = h.text.lower().rstrip(".")
                    if "*" in hv and not (hv == "*" or (hv.startswith("*.") and "*" not in hv[2:])):
                        cc.error(h, f"match.host {h.text!r}: a wildcard is only allowed as a leading \"*.\"")
                        continue
                    if hv.startswith("[") and hv.endswith("]"):
                        hv = hv[1:-1]
                    hosts.append(hv)
                kw["hosts"] = tuple(hosts)
            for mk in ("methods", "method"):
                if mk in m.v:
                    mn = m.v[mk]
                    items = mn.v if isinstance(mn.v, list) else [mn]
                    meths = set()
                    for x in items:
                        if not isinstance(x.v, str) or not _TOKEN.match(x.v):
                            cc.error(x, f"match.{mk}: {x.v!r} is not an HTTP method")
                            continue
                        meths.add(x.v.upper())
                    kw["methods"] = cc.share(("methods", frozenset(meths)), lambda meths=meths: frozenset(meths))
            if "path" in m.v:
                pp = compile_path_pattern(m.v["path"], cc)
                if pp is not None:
                    kw["path"] = pp
                    cc.route_params, cc.route_has_rest = pp.params, pp.has_rest
            known_extra = {k: s for k, s in extra.items()
                           if k in ("header", "cookie", "query", "jwt", "client_ip", "geo", "cel", "any", "all", "not")}
            if known_extra and len(known_extra) == len(extra):
                kw["cond"] = compile_condition(Y(known_extra, m.line, m.col, m.key_pos), cc, "match")
    if "backends" not in v:
        cc.error(node, f"route {name!r} needs `backends`")
        return None
    bnode = v["backends"]
    if not cc.expect_list(bnode, "backends"):
        return None
    if not bnode.v:
        cc.error(bnode, f"route {name!r}: backends is empty")
        return None
    backends: list[Backend] = []
    names: dict[str, Y] = {}
    fallback = None
    for i, bn in enumerate(bnode.v):
        b = compile_backend(bn, cc, name, i)
        if b is None:
            continue
        if b.name in names:
            cc.error(bn.v.get("name", bn), f"duplicate backend name {b.name!r} in route {name!r} "
                     f"(first at line {names[b.name].line})")
            continue
        names[b.name] = bn
        if b.fallback:
            if fallback is not None:
                cc.error(bn, f"route {name!r} has two fallback backends ({fallback.name!r} and {b.name!r}); "
                         "at most one is allowed")
                continue
            fallback = b
        backends.append(b)
    seen_h: dict[str, str] = {}
    for h in sorted(cc.header_names):
        if h.lower() not in NEVER_STRIP:
            seen_h.setdefault(h.lower(), h)
    return Route(name=name, line=node.line, fallback=fallback, backends=tuple(backends),
                 routing_headers=tuple(seen_h.values()), **kw)


def compile_settings(node: Y | None, cc: CompileCtx) -> Settings:
    if node is None:
        return Settings()
    if not cc.expect_map(node, "settings"):
        return Settings()
    cc.check_keys(node, SETTINGS_KEYS, "settings")
    kw: dict[str, Any] = {}
    if "on_no_match" in node.v:
        o = node.v["on_no_match"]
        if o.v not in ("passthrough", "error"):
            cc.error(o, f"on_no_match must be passthrough or error, not {kind(o.v)}")
        else:
            kw["on_no_match"] = o.v
    if "strip_routing_headers" in node.v:
        sr = node.v["strip_routing_headers"]
        if not isinstance(sr.v, bool):
            cc.error(sr, f"strip_routing_headers must be true or false, not {kind(sr.v)}")
        else:
            kw["strip_routing_headers"] = sr.v
    if "trusted_proxies" in node.v:
        kw["trusted_proxies"] = tuple(compile_cidrs(node.v["trusted_proxies"], cc, "trusted_proxies"))
    if "jwt" in node.v:
        from ..conditions.jwtauth import compile_jwt_settings
        kw["jwt"] = compile_jwt_settings(node.v["jwt"], cc)
    if "geoip_db" in node.v:
        from ..conditions.geo import open_geoip_db
        kw["geoip"] = open_geoip_db(node.v["geoip_db"], cc)
    return Settings(**kw)


def compile_tree(root: Y, cc: CompileCtx) -> Rules:
    if not isinstance(root.v, dict):
        cc.error(root, f"the rules file must be a mapping with `version` and `routes`, not {kind(root.v)}")
        cc.raise_if_errors()
    if "endpoints" in root.v and "routes" not in root.v:
        from ..load.krakend import import_krakend
        return import_krakend(root, cc)
    cc.check_keys(root, TOP_KEYS, "the rules file")
    ver = root.v.get("version")
    if ver is not None and ver.v != 1:
        cc.error(ver, f"unsupported version {ver.v!r}: this condroute reads version 1")
    if "upstreams" in root.v:
        un = root.v["upstreams"]
        if cc.expect_map(un, "upstreams"):
            for name, u in un.v.items():
                if "://" in name or "/" in name:
                    cc.error_key(un, name, f"upstream name {name!r} must be a plain name (no '/')")
                    continue
                up = parse_upstream_url(u, cc, name)
                if up is not None:
                    cc.upstreams[name] = up
    cc.settings = settings = compile_settings(root.v.get("settings"), cc)
    routes: list[Route] = []
    if "routes" not in root.v:
        cc.error(root, "the rules file needs `routes` (a list)")
    else:
        rn = root.v["routes"]
        if cc.expect_list(rn, "routes"):
            seen: dict[str, int] = {}
            for i, node in enumerate(rn.v):
                r = compile_route(node, cc, i)
                if r is None:
                    continue
                if r.name in seen:
                    cc.error(node.v.get("name", node), f"duplicate route name {r.name!r} (first at line {seen[r.name]})")
                    continue
                seen[r.name] = node.line
                routes.append(r)
                # the route's tree is not read again: free it now, so a big file's tree and its
                # compiled routes are never in memory whole at the same time (peak RSS)
                rn.v[i] = node = None    # type: ignore[call-overload]
    cc.raise_if_errors()
    rules = Rules(file=cc.file, routes=tuple(routes), upstreams=dict(cc.upstreams), settings=settings,
                  warnings=tuple(cc.warnings))
    from .index import build_index
    object.__setattr__(rules, "index", build_index(rules.routes))
    return rules


class _no_gc:
    """Loading allocates hundreds of thousands of small objects and frees none of them until the
    end: the cyclic GC would rescan them over and over (measured: 40% of a 10,000-route load).
    gc.disable() is process-wide and a hot reload loads in a worker thread, possibly while another
    load runs: the first load in disables the GC, the last one out restores it."""
    _lock = threading.Lock()
    _depth = 0
    _was = False

    def __enter__(self):
        with _no_gc._lock:
            if _no_gc._depth == 0:
                _no_gc._was = gc.isenabled()
                gc.disable()
            _no_gc._depth += 1

    def __exit__(self, *exc):
        with _no_gc._lock:
            _no_gc._depth -= 1
            if _no_gc._depth == 0:
                if not gc.get_freeze_count():   # (unless someone else froze objects on purpose)
                    # All that the load allocated is in the youngest generation, and the next
                    # young collections would traverse it all with traffic waiting (~0.5 s for a
                    # 5 MB file). freeze() + unfreeze() moves every object to the oldest generation
                    # in O(1), without a traversal; garbage there goes at the next full collection.
                    gc.freeze()
                    gc.unfreeze()
                if _no_gc._was:
                    gc.enable()


def load_rules(path: str) -> Rules:
    """Load and compile a rules file. Raises :class:`RulesError` with located problems."""
    from ..load.rulesfile import read_rules_file   # regular files only, size cap, one read
    return load_rules_bytes(read_rules_file(path).data, path)


def load_rules_bytes(raw: bytes, path: str) -> Rules:
    """Compile the bytes of a rules file read once (by rulesfile.read_rules_file)."""
    try:
        with _no_gc():
            root, text = parse_bytes(raw, path)
            try:
                return compile_tree(root, CompileCtx(path, text))
            finally:
                _dismantle(root)
    except RecursionError:
        raise RulesError.at(path, 1, 1, "the file is nested too deeply") from None


def _dismantle(root: Y) -> None:
    """Free a parsed tree one list item at a time (routes, endpoints). Freed at once, a 5 MB file's
    tree is one C-level cascade holding the GIL for ~0.2 s: in a hot reload's worker thread, the
    event loop would wait for it; item by item, it gets the GIL back in between."""
    if isinstance(root.v, dict):
        for node in root.v.values():
            if isinstance(node.v, list):
                while node.v:
                    node.v.pop()


def load_rules_text(text: str, file: str = "<rules>") -> Rules:
    try:
        with _no_gc():
            return compile_tree(parse_text(text, file), CompileCtx(file, text))
    except RecursionError:
        raise RulesError.at(file, 1, 1, "the file is nested too deeply") from None
