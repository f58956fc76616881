"""What the loaders of every format check the same way: upstream URLs, paths, path templates,
header maps, CIDRs. Each function reads a node, records located problems in the context, and
returns a model value (or None when the node is wrong)."""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from ..httptext import TOKEN
from ..model import IPNet, PathTemplate, RoutePath, Upstream
from ..node import Y
from .ctx import CompileCtx, kind

SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


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


def upstream_ref(node: Y, cc: CompileCtx) -> Upstream | None:
    ref = node.text     # an upstream named `yes:` is referred to as `upstream: yes`
    if ref and "://" not in ref:
        up = cc.upstreams.get(ref)
        if up is None:
            known = ", ".join(sorted(cc.upstreams)) or "none are defined"
            cc.error(node, f"unknown upstream {ref!r} (known upstreams: {known})")
        return up
    return parse_upstream_url(node, cc)


def parse_route_path(node: Y, cc: CompileCtx) -> RoutePath | None:
    if isinstance(node.v, dict):
        return RoutePath(text=repr(node.plain()), matcher=node)   # a matcher: compiled with the conditions
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
        return RoutePath(text=text, params=tuple(params), has_rest=has_rest, literal_prefix=lp, segs=tuple(whole))
    pattern = "".join("/" + p for p in pieces)
    if has_rest:
        pattern += r"(?:/(?P<rest>.*))?"
    elif not pattern:
        pattern = "/"
    return RoutePath(text=text, pattern=pattern + r"\Z", params=tuple(params), has_rest=has_rest,
                       literal_prefix=lp)


def parse_path_template(node: Y, cc: CompileCtx) -> PathTemplate | None:
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


def header_map(node: Y, cc: CompileCtx, what: str) -> tuple[tuple[str, str], ...]:
    if not cc.expect_map(node, what):
        return ()
    out = []
    for name, v in node.v.items():
        if not TOKEN.match(name):
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


def parse_cidrs(node: Y, cc: CompileCtx, what: str) -> list[IPNet]:
    items = node.v if isinstance(node.v, list) else [node]
    if isinstance(node.v, list) and not items:
        cc.error(node, f"{what}: an empty list")
    nets: list[IPNet] = []
    for n in items:
        if not isinstance(n.v, str):
            cc.error(n, f"{what}: expected a CIDR such as 10.0.0.0/8 or ::1/128, not {kind(n.v)}")
            continue
        try:
            net = ipaddress.ip_network(n.v.strip(), strict=False)
        except ValueError as e:
            cc.error(n, f"{what}: bad CIDR {n.v!r}: {e}")
            continue
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        nets.append(net)
    return nets
