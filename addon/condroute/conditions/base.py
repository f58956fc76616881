"""Conditions (``when``): compiled once at load into small objects with one method.

``cond.fail(req, env)`` returns ``None`` when the condition holds, or a short human reason when
it does not. Reasons are built only on failure, so a holding condition costs no string work.
``env`` is the compiled :class:`~condroute.rules.Rules` (settings: trusted proxies, JWT, GeoIP).
"""
from __future__ import annotations

import ipaddress
from typing import Any, Callable, Sequence

from ..load.ctx import CompileCtx, kind
from ..compile.matchers import Matcher, compile_matcher, show_values
from ..redact import SENSITIVE_HEADERS, cookie_shower, header_shower, query_shower  # noqa: F401 - re-exported
from ..request import IPNet, RequestView, ip_text
from ..load.yamlpos import Y

CONDITION_KEYS = ("header", "cookie", "query", "jwt", "client_ip", "geo", "method", "host", "path",
                  "cel", "any", "all", "not")

# a ValuesCond remembers the reason for up to SEEN_ENTRIES single values of up to SEEN_VALUE_CHARS
# characters: ~256 * (0.3 + 0.2) KB at most per condition, whatever the requests
SEEN_ENTRIES = 256
SEEN_VALUE_CHARS = 256


class Cond:
    text: str = ""

    def fail(self, req: RequestView, env: Any) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError


class ValuesCond(Cond):
    """A matcher applied to values pulled out of the request by ``get``."""

    def __init__(self, label: str, get: Callable[[RequestView, Any], Sequence[Any]], m: Matcher,
                 redact: Callable[[Sequence[Any]], Any] | None = None):
        self.label = label
        self.get = get
        self.m = m
        self.redact = redact      # None: values are shown (cut at 64 characters); else how they are hidden
        self.text = f"{label} {m.want}"
        # the reason is "<label> is <values>, wanted <want>": its fixed parts are built once, and the
        # whole text is remembered for a single text value (most failures repeat: "A" is not "B")
        self._head = f"{label} is "
        self._tail = f", wanted {m.want}"
        self._missing = f"{label} is missing, wanted {m.want}"
        self._seen: dict[str, str] = {}

    def fail(self, req: RequestView, env: Any) -> str | None:
        values = self.get(req, env)
        if self.m.holds(values):
            return None
        if not values:
            return self._missing
        v0 = values[0]
        if len(values) == 1 and v0.__class__ is str and len(v0) <= SEEN_VALUE_CHARS:
            # bounded in bytes too: at most SEEN_ENTRIES short keys (the reason shows 64 characters)
            seen = self._seen
            r = seen.get(v0)
            if r is None:
                if len(seen) >= SEEN_ENTRIES:
                    seen.clear()
                r = seen[v0] = self._reason(values)
            return r
        return self._reason(values)

    def _reason(self, values: Sequence[Any]) -> str:
        shown = values if self.redact is None else self.redact(values)
        return self._head + (shown if isinstance(shown, str) else show_values(shown)) + self._tail


class AllCond(Cond):
    def __init__(self, parts: list[Cond]):
        self.parts = parts
        self.text = " and ".join(p.text for p in parts)

    def fail(self, req: RequestView, env: Any) -> str | None:
        for p in self.parts:
            r = p.fail(req, env)
            if r is not None:
                return r
        return None


class AnyCond(Cond):
    def __init__(self, parts: list[Cond]):
        self.parts = parts
        self.text = "any of (" + "; ".join(p.text for p in parts) + ")"

    def fail(self, req: RequestView, env: Any) -> str | None:
        reasons = []
        for p in self.parts:
            r = p.fail(req, env)
            if r is None:
                return None
            reasons.append(r)
        return "none of any: " + "; ".join(reasons)


class NotCond(Cond):
    def __init__(self, inner: Cond):
        self.inner = inner
        self.text = f"not ({inner.text})"

    def fail(self, req: RequestView, env: Any) -> str | None:
        if self.inner.fail(req, env) is None:
            return f"not: {self.inner.text} holds"
        return None


class CidrCond(Cond):
    def __init__(self, nets: list[IPNet]):
        self.nets = nets
        self.text = "client IP in " + ", ".join(str(n) for n in nets)
        self._not_in = " is not in " + ", ".join(str(n) for n in nets)
        # (version, network, mask) as integers: ipaddress's own `in` costs more than all the rest
        self._ints = tuple((n.version, int(n.network_address), int(n.netmask)) for n in nets)

    def fail(self, req: RequestView, env: Any) -> str | None:
        ip = req.client_ip(env.settings.trusted_proxies)
        if ip is None:
            return "client IP is unknown"
        version, value = ip._version, ip._ip    # what ipaddress's own properties return, without the calls
        for v, net, mask in self._ints:
            if v == version and value & mask == net:
                return None
        return "client IP " + ip_text(ip) + self._not_in


def compile_cidrs(node: Y, cc: CompileCtx, what: str) -> list[IPNet]:
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


def _named_values(node: Y, cc: CompileCtx, what: str, make: Callable[[str, Matcher, CompileCtx], Cond]) -> Cond | None:
    if not cc.expect_map(node, what):
        return None
    if not node.v:
        cc.error(node, f"{what}: name at least one {what}")
        return None
    parts = []
    for name, sub in node.v.items():
        if what == "header":
            cc.header_names.add(name)
        m = compile_matcher(sub, cc, f"{what} {name}")
        if m is not None:
            parts.append(cc.share((what, name, id(m)), lambda name=name, m=m: make(name, m, cc)))   # m: shared or new
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AllCond(parts)


def _jwt_settings(cc: CompileCtx) -> Any:
    """settings.jwt (compiled before the routes): its token source is redacted like a password."""
    return getattr(getattr(cc, "settings", None), "jwt", None)


def _header_cond(name: str, m: Matcher, cc: CompileCtx) -> Cond:
    low = name.lower()
    return ValuesCond(f"header {name}", lambda r, e: r.header(low), m, header_shower(low, _jwt_settings(cc)))


def _cookie_cond(name: str, m: Matcher, cc: CompileCtx) -> Cond:
    return ValuesCond(f"cookie {name}", lambda r, e: r.cookies.get(name, ()), m, cookie_shower(name, _jwt_settings(cc)))


def _query_cond(name: str, m: Matcher, cc: CompileCtx) -> Cond:
    return ValuesCond(f"query {name}", lambda r, e: r.query.get(name, ()), m, query_shower(name))


def _single(label: str, get: Callable[[RequestView], Any], node: Y, cc: CompileCtx, upper: bool = False) -> Cond | None:
    if upper and node.text:
        node = Y(node.text.upper(), node.line, node.col)
    elif upper and isinstance(node.v, list):
        node = Y([Y(n.text.upper(), n.line, n.col) if n.text else n for n in node.v], node.line, node.col)
    m = compile_matcher(node, cc, label)
    if m is None:
        return None
    return ValuesCond(label, lambda r, e: (get(r),), m)


def compile_condition(node: Y, cc: CompileCtx, what: str = "when") -> Cond | None:
    """Compile a condition mapping (every key must hold). Errors are recorded in ``cc``."""
    if not isinstance(node.v, dict):
        cc.error(node, f"{what} must be a mapping of conditions ({', '.join(CONDITION_KEYS)}), not {kind(node.v)}")
        return None
    if not node.v:
        cc.error(node, f"{what} is empty; omit it for a backend that always holds")
        return None
    parts: list[Cond] = []
    for key, sub in node.v.items():
        c: Cond | None = None
        if key == "header":
            c = _named_values(sub, cc, "header", _header_cond)
        elif key == "cookie":
            c = _named_values(sub, cc, "cookie", _cookie_cond)
        elif key == "query":
            c = _named_values(sub, cc, "query", _query_cond)
        elif key == "method":
            c = _single("method", lambda r: r.method, sub, cc, upper=True)
        elif key == "host":
            c = _single("host", lambda r: r.host, sub, cc)
        elif key == "path":
            c = _single("path", lambda r: r.path, sub, cc)
        elif key == "client_ip":
            nets = compile_cidrs(sub, cc, "client_ip")
            c = cc.share(("cidr", tuple(nets)), lambda nets=nets: CidrCond(nets)) if nets else None
        elif key in ("any", "all"):
            if cc.expect_list(sub, key):
                if not sub.v:
                    cc.error(sub, f"{key}: an empty list")
                inner = [compile_condition(n, cc, f"{key} item") for n in sub.v]
                inner_ok = [i for i in inner if i is not None]
                if inner_ok and len(inner_ok) == len(inner):
                    c = AnyCond(inner_ok) if key == "any" else AllCond(inner_ok)
        elif key == "not":
            inner1 = compile_condition(sub, cc, "not")
            c = NotCond(inner1) if inner1 is not None else None
        elif key == "jwt":
            from .jwtauth import compile_jwt_condition
            c = compile_jwt_condition(sub, cc)
        elif key == "cel":
            from ..cel.policy import compile_cel_condition
            c = compile_cel_condition(sub, cc)
        elif key == "geo":
            from .geo import compile_geo_condition
            c = compile_geo_condition(sub, cc)
        else:
            cc.error_key(node, key, f"unknown condition {key!r}; expected one of: {', '.join(CONDITION_KEYS)}")
            continue
        if c is not None:
            parts.append(c)
    if len(parts) != len(node.v):
        return None
    return parts[0] if len(parts) == 1 else AllCond(parts)
