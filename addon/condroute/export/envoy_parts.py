"""Helpers of the Envoy export (envoy.py): a route's path as an Envoy path specifier and its
groups, path templates and imported rewrites as ``regex_rewrite``, a backend's condition as Envoy
sees it, the routes that answer 400 where a path template would climb out of the upstream's path,
weights, addresses, CAs."""
from __future__ import annotations

import ipaddress
import os
import re
import ssl

from .. import model
from . import ir
from .envoy_match import rx_escape, search
from .ir import NotExported, Where

def backend_when(b: model.Backend, file: str) -> ir.Cond | None:
    """A backend's condition; an imported KrakenD conditional that sees only the endpoint's declared
    headers (model.VisibleHeaders without a token check) is its condition with every other header
    missing; one that can never hold (model.Never) is false."""
    w = b.when
    if isinstance(w, model.Never):      # never holds: no Envoy route at all is exact
        return ir.Or(())
    if isinstance(w, model.VisibleHeaders) and w.token is None:
        return _visible(ir.condition(w.inner, file), w.headers)
    return ir.when(b, file)


def escape_guards(r: model.Route, b: model.Backend, at: Where) -> list[dict]:
    """condroute answers 400 when a path template would render a '.' or '..' segment (engine.escapes).
    A parameter that is a whole segment of the normalised path never is one, nor is {rest} or {path}
    alone; a parameter matched inside a segment (``/f/{name}.json``) can be ``.`` or ``..``: for a
    template segment that is only that parameter, the path specifiers that catch those values (each
    answered 400 before the backend's route). Other template segments that could render a dot
    segment are refused."""
    if b.path is None or b.respond is not None or b.redirect is not None or r.path is None:
        return []
    p = r.path
    inner = set(p.params) if p.pattern is not None else set()
    guards = []
    for seg in b.path.text.split("/"):
        if "{" not in seg:
            continue
        head = seg.partition(";")[0]
        lead = head.split("{", 1)[0]
        if lead.strip(".") != "":
            continue                  # a literal that is not a dot starts the segment: never a dot segment
        m = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", seg)
        name = m.group(1) if m else None
        if name is not None and name not in inner:
            continue                  # a whole normalised segment, {rest} or {path}: never '.' or '..'
        if name is None:
            raise NotExported(at, f"path template {b.path.text!r}: its segment {seg!r} could render '.' or '..', "
                                  "which condroute refuses with 400 and Envoy's regex_rewrite cannot tell")
        dots = f"(?P<{name}>\\.\\.?(?:;[^/]*)?)"
        pat = p.pattern[:-2] if p.pattern.endswith("\\Z") else p.pattern
        guards.append({"safe_regex": {"regex": pat.replace(f"(?P<{name}>[^/]+)", dots)}})
    return guards


def _missing_holds(m: ir.Matcher) -> bool:
    """Does the matcher hold on a missing value (condroute: only present: false and not)?"""
    if isinstance(m, ir.Present):
        return not m.present
    if isinstance(m, ir.MNot):
        return not _missing_holds(m.inner)
    if isinstance(m, ir.MAll):
        return all(_missing_holds(p) for p in m.parts)
    return False


def _visible(c: ir.Cond, headers: frozenset[str] | None) -> ir.Cond:
    if headers is None:
        return c
    if isinstance(c, ir.Atom) and c.source == "header" and (c.name or "") not in headers:
        return ir.TRUE if _missing_holds(c.matcher) else ir.Or(())
    if isinstance(c, (ir.And, ir.Or)):
        return type(c)(tuple(_visible(p, headers) for p in c.parts))
    if isinstance(c, ir.Not):
        return ir.Not(_visible(c.inner, headers))
    return c


NEVER_STRIP = frozenset({"host", "authorization", "cookie", "content-type", "content-length", "transfer-encoding"})


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def ca_file() -> str | None:
    p = ssl.get_default_verify_paths()
    for f in (p.cafile, p.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if f and os.path.isfile(f):
            return f
    try:
        import certifi
        return certifi.where()
    except ImportError:     # pragma: no cover
        return None


def int_weights(ws: list[float]) -> list[int]:
    """Envoy's weights are integers: condroute's, scaled until they are whole (at most 10^6)."""
    for scale in (1, 10, 100, 1000, 10000, 100000, 1000000):
        if all(abs(w * scale - round(w * scale)) < 1e-9 for w in ws):
            return [int(round(w * scale)) for w in ws]
    return [max(1, int(round(w * 1000000))) for w in ws]


def route_path(r: model.Route, at: Where) -> tuple[dict, str | None, dict, int | None]:
    """(the RouteMatch path specifier, the full-path RE2 pattern with groups or None, group of
    each parameter, group of {rest})."""
    p = r.path
    if p is None:
        return {"prefix": "/"}, None, {}, None
    if p.matcher is not None:
        m = ir.matcher(p.matcher)
        if isinstance(m, ir.Eq) and len(m.values) == 1:
            return {"path": m.values[0], **({"case_sensitive": False} if m.ignore_case else {})}, None, {}, None
        if isinstance(m, ir.Prefix):
            return {"prefix": m.value, **({"case_sensitive": False} if m.ignore_case else {})}, None, {}, None
        if isinstance(m, ir.Regex):
            return {"safe_regex": {"regex": search(m.pattern, m.ignore_case)}}, None, {}, None
        if isinstance(m, (ir.Eq, ir.Suffix, ir.Contains)):
            e = [rx_escape(v) for v in (m.values if isinstance(m, ir.Eq) else (m.value,))]
            rx = {ir.Eq: "|".join(e), ir.Suffix: f".*{e[0]}", ir.Contains: f".*{e[0]}.*"}[type(m)]
            return {"safe_regex": {"regex": ("(?i)" if m.ignore_case else "") + f"(?:{rx})"}}, None, {}, None
        # not, several matchers: the path as a condition on :path (envoy_match.PathSource)
        return {"prefix": "/"}, None, {}, None
    groups: dict[str, int] = {}
    rest = None
    if p.segs is not None:
        parts, n = [], 0
        for is_param, text in p.segs:
            if is_param:
                n += 1
                groups[text] = n
                parts.append("([^/]+)")
            else:
                parts.append(rx_escape(text))
        rx = ("/" + "/".join(parts)) if parts else ""
        if p.has_rest:
            n += 1
            rest = n
            rx += "(?:/(.*))?"
        if not p.params and not p.has_rest:
            spec = {"path": p.text}
        elif not p.params and p.segs:
            spec = {"path_separated_prefix": "/" + "/".join(t for _, t in p.segs)}
        elif not p.params:
            spec = {"prefix": "/"}
        else:
            spec = {"safe_regex": {"regex": rx}}
        return spec, rx, groups, rest
    pat = p.pattern[:-2] if p.pattern.endswith("\\Z") else p.pattern
    gi = re.compile(pat).groupindex
    groups = {k: v for k, v in gi.items() if k != "rest"}
    return {"safe_regex": {"regex": pat}}, pat, groups, gi.get("rest")

def rewrite(b: model.Backend, path_rx, groups, rest, base: str, at: Where) -> dict | None:
    """regex_rewrite for the backend's path template / rewrite and the upstream's base path."""
    def lit(s: str) -> str:
        return s.replace("\\", "\\\\")
    if b.rewrite is not None:
        rw = b.rewrite
        if rw.kind == "full":
            return {"pattern": {"regex": "^.*$"}, "substitution": lit(base + rw.value)}
        if rw.kind == "prefix":     # the first len(prefix) characters (the prefix in any case)
            return {"pattern": {"regex": f"^(?s:.{{{len(rw.prefix)}}})(.*)$"},
                    "substitution": lit(base + rw.value) + "\\1"}
        if rw.kind == "segments":
            pfx, val = rw.prefix.rstrip("/"), rw.value.rstrip("/")
            if not val:
                return {"pattern": {"regex": f"^{rx_escape(pfx)}/?"}, "substitution": lit(base) + "/"} \
                    if not base else {"pattern": {"regex": f"^{rx_escape(pfx)}(?:/(.*))?$"},
                                      "substitution": lit(base) + "/\\1"}
            return {"pattern": {"regex": f"^{rx_escape(pfx)}(/.*)?$"}, "substitution": lit(base + val) + "\\1"}
        if base:
            raise NotExported(at, "a regular-expression rewrite towards an upstream with a base path: "
                                  "Envoy has one regex_rewrite per route")
        return {"pattern": {"regex": rw.pattern}, "substitution": rw.value}
    if b.path is None:
        return {"pattern": {"regex": "^(.*)$"}, "substitution": lit(base) + "\\1"} if base else None
    if "?" in b.path.text:
        raise NotExported(at, f"path {b.path.text!r} has a query string of its own: Envoy's regex_rewrite "
                              "would put the request's query after it with a second '?'")
    sub = []
    first = b.path.parts[0] if b.path.parts else (False, "")
    if not (first[0] is False and first[1].startswith("/")) and first != (True, "path"):
        sub.append("/")
    for is_ph, s in b.path.parts:
        if not is_ph:
            sub.append(lit(s))
            continue
        n = 0 if s == "path" else rest if s == "rest" else groups.get(s)
        if n is None or n > 9:
            raise NotExported(at, f"path template {b.path.text!r}: Envoy's regex_rewrite refers to at most 9 "
                                  "groups of the route's path")
        sub.append(f"\\{n}")
    pat = f"^{path_rx}$" if path_rx is not None else "^.*$"
    if path_rx is None and any(is_ph and s != "path" for is_ph, s in b.path.parts):
        raise NotExported(at, f"path template {b.path.text!r} needs the route path's parameters")
    return {"pattern": {"regex": pat}, "substitution": lit(base) + "".join(sub)}
