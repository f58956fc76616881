"""Helpers of the Envoy export (envoy.py): a backend's condition as Envoy sees it, the routes that
answer 400 where a path template would climb out of the upstream's path, weights, addresses, CAs."""
from __future__ import annotations

import ipaddress
import os
import re
import ssl

from .. import model
from . import ir
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
