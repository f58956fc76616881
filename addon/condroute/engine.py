"""The decision: which route owns a request, which backend serves it, and where it goes.

``decide(rules, req)`` is pure: no network, no mitmproxy. The addon and the CLI both call it.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any, Sequence

from . import render
from .httptext import authority, default_port
from .request import RequestView
from .compile.rewrite import rewrite_path
from .compile.runtime import Backend, Respond, Route, Rules, Split, Upstream
from .conditions.jwtauth import claim_values
from .node import as_text


@dataclass
class Attempt:
    backend: str
    held: bool
    reason: str
    fallback: bool = False


class Decision:
    """What ``decide`` found. Unset fields keep their class defaults, so that a decision costs only
    what it holds; ``trail`` keeps the backends tried as ``(backend, held, reason, fallback)``."""

    route: str | None = None
    backend: str | None = None
    upstream: str | None = None       # upstream name (or URL as written); the split's arm for a split
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None           # forwarded path, query string included
    host_header: str | None = None    # Host/:authority to send; None keeps the client's
    set_headers: tuple = ()
    remove_headers: tuple = ()
    add_headers: tuple = ()           # appended after remove and set
    mirrors: tuple = ()               # (Mirror, path, Host or None = the client's) drawn for this request
    respond: Respond | None = None
    status: int | None = None         # for respond, no-match errors and bad_request
    reason: str | None = None         # why a request is refused (bad_request)
    timeout: float | None = None
    retries: int = 0
    fault_delay: float | None = None  # seconds to wait before the upstream is asked (a fault drawn)
    fault_abort: int | None = None    # the status answered instead of forwarding (a fault drawn)
    sni: str | None = None            # the TLS server name towards the upstream ("preserve": the client's)
    throttle: float | None = None     # kbps of the response towards the client
    split: str | None = None          # "by=value -> arm" description when a split chose
    # the requests condroute sent itself (retry_on beyond connect-failure, mitm/retry.py), each
    # {"upstream", "address", "outcome", "reason"}; outcome: answered | reset | timeout | 5xx | connect-failure
    tries: Sequence[dict] = ()
    routes_passed: Sequence[tuple[str, str]] = ()   # only with explain=True: then a list of its own
    upstream_obj: Upstream | None = None
    backend_obj: Backend | None = None

    def __init__(self, outcome: str, req: RequestView | None = None):
        self.outcome = outcome            # routed | respond | passthrough | no_match | unavailable | bad_request
        self.trail: list[tuple[str, bool, str, bool]] = []
        self._request = ""
        self._req = req

    def __repr__(self) -> str:
        return (f"Decision({self.outcome!r}, route={self.route!r}, backend={self.backend!r}, "
                f"upstream={self.upstream!r}, url={self.url!r})")

    @property
    def request(self) -> str:
        """"METHOD URL" of the request, for log lines (built only when one is written)."""
        if not self._request and self._req is not None:
            self._request = self._req.describe()
        return self._request

    @property
    def attempts(self) -> list[Attempt]:
        return [Attempt(*t) for t in self.trail]

    @property
    def url(self) -> str | None:
        if self.scheme is None or self.host is None:
            return None
        up = self.upstream_obj
        if up is not None and up.host == self.host and up.port == self.port:
            return up.origin + (self.path or "/")
        return f"{self.scheme}://{authority(self.scheme, self.host, self.port)}{self.path or '/'}"

    @property
    def skipped(self) -> list[Attempt]:
        return [Attempt(*t) for t in self.trail if not t[1]]

    def header_value(self) -> str:
        """The X-Condroute debug header."""
        return render.header_value(self)

    def outcome_text(self) -> str:
        """What became of the request: the part of the log line after the request."""
        return render.outcome_text(self)

    def summary(self) -> str:
        """One log line."""
        return render.summary(self)

    def comment(self) -> str:
        """One line for flow.comment (shown by mitmweb)."""
        return render.comment(self)

    def error_body(self) -> str:
        return render.error_body(self)

    def to_dict(self) -> dict[str, Any]:
        return render.to_dict(self)


# --------------------------------------------------------------------------------------------------
def route_fail(route: Route, req: RequestView, rules: Rules) -> str | None:
    """Why ``route`` does not own ``req`` (None if it does). Sets req.params/req.rest on success."""
    if route.methods is not None and req.method not in route.methods:
        return f"method {req.method} not in {', '.join(sorted(route.methods))}"
    if route.hosts and not route.host_ok(req.host):
        return f"host {req.host!r} is not {', '.join(route.hosts)}"
    if route.path is not None:
        params = route.path.match(req.path)
        if params is None:
            return f"path {req.path!r} does not match {route.path.text}"
        rest = params.pop("rest", None)
        req.params = params
        req.rest = rest
    else:
        req.params, req.rest = {}, None
    if route.cond is not None:
        r = route.cond.fail(req, rules)
        if r is not None:
            return r
    return None


def split_key(split: Split, req: RequestView, rules: Rules) -> str | None:
    k = split.kind
    if k == "cookie":
        v = req.cookies.get(split.key)
    elif k == "header":
        v = req.header(split.key)
    elif k == "query":
        v = req.query.get(split.key)
    elif k == "client_ip":
        ip = req.client_ip(rules.settings.trusted_proxies)
        return None if ip is None else str(ip)
    elif k == "random":             # a fresh weighted draw per request (an imported gateway's weights)
        return None
    else:
        v = claim_values(req, rules, split.key)
    if not v:
        return None
    s = as_text(v[0])
    return s if s != "" else None


def choose_arm(split: Split, route: str, key: str | None, exclude: frozenset = frozenset()) -> Upstream | None:
    """Weighted rendezvous hashing: the same key always picks the same arm, and changing one arm's
    weight only moves keys to or from that arm. Arms in ``exclude`` (unavailable upstreams) are left
    out, which moves only their own keys."""
    arms = split.arms
    if not arms:
        return None
    all_zero = all(w <= 0 for _, w in arms)
    best, best_score = None, math.inf
    for up, w in arms:
        if (w <= 0 and not all_zero) or up in exclude:
            continue
        w = 1.0 if all_zero else w
        if key is None:
            u = random.random() or 1e-12
        else:
            h = hashlib.blake2b(f"{split.salt}\x00{route}\x00{up.name}\x00{key}".encode("utf-8", "surrogateescape"),
                                digest_size=8).digest()
            u = (int.from_bytes(h, "big") + 1) / (2 ** 64 + 1)
        score = -math.log(u) / w
        if score < best_score:
            best, best_score = up, score
    return best


def escapes(path: str) -> bool:
    """Whether a rendered path has a "." or ".." segment (also as "..;x"), which could climb out of
    the upstream's base path. A normalised request path never has one, but a template can join two
    captured values into one ("{a}{b}" with a="." and b=".") or a regex capture can be ".."."""
    if "." not in path:
        return False
    return any(s.partition(";")[0] in (".", "..") for s in path.split("/"))


def build_target(d: Decision, b: Backend, req: RequestView, up: Upstream | None) -> None:
    qs = req.query_string
    if not req.path.startswith("/"):   # asterisk-form (OPTIONS *): nothing to rewrite
        path = req.path
    else:
        if b.path is not None:             # a template, or an imported gateway's rewrite (compile.rewrite)
            path = b.path.render(req.params, req.path, req.rest)
            if not path.startswith("/"):   # "{rest}": an origin-form path always starts with "/"
                path = "/" + path
            if escapes(path):
                d.outcome, d.status = "bad_request", 400
                d.reason = f"the path would leave the backend's path: {b.path.text} gives {path!r}"
                return
            if qs and "?" in path:         # a query string of its own: the request's is added to it
                path += "&" + qs
                qs = ""
        else:
            path = req.path
        if up is not None and up.base_path:
            path = up.base_path + path
    if up is not None:
        d.scheme, d.host, d.port = up.scheme, up.host, up.port
        d.upstream = up.name
        d.upstream_obj = up
        if not b.preserve_host:
            d.host_header = up.authority
    else:
        d.scheme, d.host, d.port = req.scheme, req.host, req.port
    if qs:
        path += "?" + qs
    d.path = path


def _draw_mirrors(b: Backend, d: Decision) -> tuple:
    """The mirrors of ``b`` drawn for this request (each with its percent), with the path and Host
    each copy is sent with: the forwarded path (query included) under the mirror's own base path;
    the Host the forwarded request has, or the mirror's authority when that is the upstream's."""
    out = []
    path = d.path or "/"
    up = d.upstream_obj
    if up is not None and up.base_path and path.startswith(up.base_path):
        path = path[len(up.base_path):]
    for m in b.mirrors:
        if _drawn(m.percent):
            mup = m.upstream
            if b.host_rewrite is not None:
                host = b.host_rewrite
            else:
                host = None if b.preserve_host else mup.authority
            out.append((m, (mup.base_path + path) if path.startswith("/") else path, host))
    return tuple(out)


def _drawn(percent: float) -> bool:
    return percent >= 100 or (percent > 0 and random.random() * 100 < percent)


FAULT_ABORT_BODY = "fault filter abort"     # what Envoy's fault filter answers an injected abort with
_fault_answers: dict[int, Respond] = {}


def _draw_fault(f: Any, d: Decision) -> bool:
    """Istio's fault injection: the delay and the abort are each drawn on their own (``percent`` of
    requests), the delay first. True when an abort is drawn: then the decision is an answer (outcome
    ``respond``, status the abort's, body "fault filter abort" as Envoy's) instead of the backend's
    own (forwarding, a redirect or a respond), and it says why (``reason``). Envoy's fault filter
    runs before its router: an aborted request has no timeout and is not retried; a delayed one is
    waited for before the upstream is asked (the addon), and its timeout starts after the wait."""
    if f.delay is not None and _drawn(f.delay_percent):
        d.fault_delay = f.delay
    if f.abort is None or not _drawn(f.abort_percent):
        return False
    st = d.fault_abort = f.abort
    r = _fault_answers.get(st)
    if r is None:
        r = _fault_answers[st] = Respond(st, FAULT_ABORT_BODY, (("Content-Type", "text/plain"),))
    d.outcome, d.status, d.respond = "respond", st, r
    pct = "" if f.abort_percent >= 100 else f", {f.abort_percent:g}% of requests"
    d.reason = f"injected fault: abort {st} (fault.abort{pct}), nothing forwarded"
    d.timeout, d.retries = None, 0
    return True


def redirect_location(b: Backend, req: RequestView) -> str:
    """The ``Location`` of a redirect backend for this request (model.Redirect): each part the
    redirect leaves out is the request's; the port is the redirect's, else the scheme's default
    (``port_from="scheme"``) or the port the client asked for; :80 for http and :443 for https
    left out; the request's query string kept unless the new path has one of its own."""
    r = b.redirect
    scheme = r.scheme or req.scheme
    if scheme not in ("http", "https"):
        scheme = "https" if scheme == "wss" else "http"
    host = r.host if r.host is not None else req.host
    if r.port is not None:
        port = r.port
    elif r.port_from == "scheme":
        port = default_port(scheme)
    else:
        port = req.dest_port
        if scheme != req.scheme and port == default_port(req.scheme):
            port = default_port(scheme)       # http -> https: the old scheme's default port goes (Envoy)
    path = req.path
    if r.path is not None and path.startswith("/"):
        path = rewrite_path(r.path, b.redirect_rx, path)
        if not path.startswith("/"):
            path = "/" + path
    if req.query_string and "?" not in path:
        path += "?" + req.query_string
    return f"{scheme}://{authority(scheme, host, port)}{path}"


def _down_arms(split: Split, health: Any) -> frozenset:
    return frozenset(up for up, _ in split.arms if health.unavailable(up.host, up.port))


def _unavailable(b: Backend, health: Any) -> str | None:
    """Why backend ``b`` cannot serve now although it holds (its upstream is cooling down after a
    failed connection), or None. ``health`` is any object with ``unavailable(host, port)``."""
    if b.split is not None:
        live = [(up, w) for up, w in b.split.arms if w > 0] or list(b.split.arms)
        why = [(up, health.unavailable(up.host, up.port)) for up, _ in live]
        if why and all(r for _, r in why):
            return "every arm of its split is unavailable: " + "; ".join(
                f"{up.name} ({up.authority}) {r}" for up, r in why)
        return None
    up = b.upstream
    if up is not None and b.respond is None:
        r = health.unavailable(up.host, up.port)
        if r:
            return f"upstream {up.name} ({up.authority}) is unavailable: {r}"
    return None


def _pinned_down(d: Decision, b: Backend, why: str) -> None:
    """``failover: false``: backend ``b`` holds but its upstream is unavailable, so the request is
    answered 503 with the reason, and no later backend or fallback serves it (a pinned backend)."""
    d.trail.append((b.name, False, why, b.fallback))
    d.outcome, d.status, d.backend = "unavailable", 503, b.name
    d.reason = f"backend {b.name!r} does not fail over (failover: false): {why}"


def select(route: Route, req: RequestView, rules: Rules, d: Decision, health: Any = None) -> None:
    chosen: Backend | None = None
    down = False
    trail = d.trail
    for b in route.backends:
        if b.fallback:
            continue
        reason = b.when.fail(req, rules) if b.when is not None else None
        if reason is None and health is not None:
            reason = _unavailable(b, health)
            if reason is not None and not b.failover:
                return _pinned_down(d, b, reason)
            down = down or reason is not None
        if reason is None:
            trail.append((b.name, True, b.held_reason, False))
            chosen = b
            break
        trail.append((b.name, False, reason, False))
    if chosen is None and route.fallback is not None:
        fb = route.fallback
        reason = _unavailable(fb, health) if health is not None else None
        if reason is not None and not fb.failover:
            return _pinned_down(d, fb, reason)
        if reason is None:
            chosen = fb
            trail.append((fb.name, True, fb.held_reason, True))
        else:
            down = True
            trail.append((fb.name, False, reason, True))
    if chosen is None and down:
        d.outcome, d.status = "unavailable", 502   # whatever on_no_match says: nothing can serve
        return
    if chosen is None:
        d.outcome = "no_match"
        if (route.on_no_match or rules.settings.on_no_match) == "error":
            d.status = 502
        return
    d.backend, d.backend_obj = chosen.name, chosen
    d.timeout, d.retries = chosen.timeout, chosen.retries
    extra = chosen.extra
    if extra and chosen.fault is not None and _draw_fault(chosen.fault, d):
        return      # an injected abort answers, whatever the backend would have done
    if chosen.respond is not None:
        d.outcome, d.respond, d.status = "respond", chosen.respond, chosen.respond.status
        return
    if extra and chosen.redirect is not None:
        status = chosen.redirect.status
        d.outcome, d.status = "respond", status
        d.respond = Respond(status, "", (("Location", redirect_location(chosen, req)),))
        return
    d.outcome = "routed"
    up = chosen.upstream
    if chosen.split is not None:
        split = chosen.split
        key = split_key(split, req, rules)
        down_arms = _down_arms(split, health) if health is not None else frozenset()
        up = choose_arm(split, route.name, key, down_arms)
        if split.kind == "random":
            d.split = f"weighted random -> {up.name if up else None}"
        else:
            d.split = f"{split.by}={'(missing: random)' if key is None else 'hash'} -> {up.name if up else None}"
        if down_arms:
            d.split += " (passed over, unavailable: " + ", ".join(sorted(u.name for u in down_arms)) + ")"
    build_target(d, chosen, req, up)
    d.set_headers, d.remove_headers = chosen.set_headers, chosen.remove_headers
    if extra and d.outcome == "routed":     # fields an imported gateway writes
        if chosen.host_rewrite is not None:
            d.host_header = chosen.host_rewrite
        d.add_headers = chosen.add_headers
        if route.propagate is not None:     # KrakenD propagate_claims: the verified token's, never the client's
            d.add_headers += tuple(route.propagate.headers(req))
        if chosen.mirrors:
            d.mirrors = _draw_mirrors(chosen, d)
        d.sni = chosen.sni
        if chosen.throttle is not None:
            d.throttle = chosen.throttle.kbps
    elif extra and d.fault_delay is not None:   # refused (bad_request): answered at once, never delayed
        d.fault_delay = None
    if rules.settings.strip_routing_headers and route.routing_headers:
        d.remove_headers = tuple(dict.fromkeys(chosen.remove_headers + route.routing_headers))


def decide(rules: Rules, req: RequestView, explain: bool = False, health: Any = None) -> Decision:
    """Decide for one request. Never raises for any request input. ``health`` (optional, e.g. a
    :class:`~condroute.health.Health`) passes over backends whose upstream is cooling down."""
    d = Decision("passthrough", req=req)
    if explain:
        candidates = rules.routes
        passed: list[tuple[str, str]] = []
        d.routes_passed = passed
    elif rules.index is not None:
        candidates = rules.index.candidates(req.path, req.host)
    else:
        candidates = rules.routes
    for route in candidates:
        why = route_fail(route, req, rules)
        if why is None:
            d.route = route.name
            if req.refused is not None:
                return _refuse(d, req.refused[0])
            select(route, req, rules, d, health)
            return d
        if explain:
            passed.append((route.name, why))
    if req.refused is not None:
        # Read as a server that decodes %2e/%2f/%5c would read it, would a route own the path? Then it
        # is refused: a route is never walked around by spelling its path another way. A path that no
        # route could own goes on untouched (mitmproxy is also used to send odd paths on purpose).
        why, alt = req.refused
        path = req.path
        req.path = alt
        try:
            owner = next((r for r in (rules.index.candidates(alt, req.host) if rules.index is not None
                                      else rules.routes) if route_fail(r, req, rules) is None), None)
        finally:
            req.path = path
        if owner is not None:
            d.route = owner.name
            return _refuse(d, f"{why} (read as {alt!r} it belongs to route {owner.name!r})")
    return d


def _refuse(d: Decision, why: str) -> Decision:
    d.outcome, d.status, d.reason = "bad_request", 400, f"the path has {why}"
    return d
