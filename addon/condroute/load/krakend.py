"""KrakenD configuration import: a file with top-level ``endpoints`` becomes condroute rules.

What maps to what (see the README, "KrakenD configuration files"):

* each endpoint → a route named ``METHOD /endpoint/{param}``, matching its ``method`` (default GET)
  and its ``endpoint`` path (``{params}``; a trailing ``/*`` is a prefix);
* each backend → a backend ``backend-N`` (N counts from 1 in file order) whose upstream is its first
  ``host`` (or the service-level ``host`` when it has none, as KrakenD does; a host without a scheme
  gets ``http://``) and whose forwarded path is ``url_pattern`` with the endpoint's ``{params}``
  filled in;
* ``extra_config."backend/conditional"``: ``strategy: header`` (``name``, ``value``: the header
  equals the literal value, case-sensitive) → ``when: {header: {NAME: VALUE}}``;
  ``strategy: policy`` (``value``: a KrakenD policy, i.e. CEL) → ``when: {cel: VALUE}``;
  ``strategy: fallback`` → ``fallback: true`` (one per endpoint). A backend without it always holds;
* headers are visible to a conditional only when the endpoint lists them in ``input_headers``
  (``"*"``: all), as in KrakenD: a header strategy on an undeclared header never holds, and a policy
  sees only declared headers. Either is a load warning with its line;
* endpoint or service ``timeout`` (``"2s"``, ``"500ms"``) → every backend's ``timeout``;
  ``extra_config.router`` with ``forwarded_by_client_ip`` and ``trusted_proxies`` →
  ``settings.trusted_proxies``; the ``geoip`` server plugin's ``citydb_path`` → ``settings.geoip_db``
  (for ``geoIP()`` in policies);
* a request no backend of its endpoint can serve is answered 502 (``on_no_match: error``).

KrakenD calls every backend that holds and merges their responses; condroute routes a request to
one upstream, the first backend that holds, and says so in a load warning wherever KrakenD would
call more than one.
"""
from __future__ import annotations

import re
from typing import Any

from .ctx import CompileCtx, kind
from ..conditions.base import Cond, compile_cidrs, compile_condition
from ..compile.matchers import as_text
from ..request import RequestView
from ..compile.rules import (HTTP_METHODS, Backend, Route, Rules, Settings, compile_path_pattern, compile_path_template,
                    parse_upstream_url)
from .yamlpos import Y

CONDITIONAL = "backend/conditional"
STRATEGIES = ("header", "policy", "fallback")
CONDITIONAL_KEYS = ("name", "strategy", "value")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATIONS = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DYNAMIC = re.compile(r"\{\s*(input_headers|input_query_strings|JWT|jwt|resp\d+_)[^}]*\}")
_METHOD = re.compile(r"^[A-Za-z]+$")


def canonical(name: str) -> str:
    """A header name as Go's textproto writes it: x-beta -> X-Beta."""
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


def _meta(key: str) -> bool:
    """KrakenD ignores keys starting with @ $ _ # (comments and the like)."""
    return key[:1] in ("@", "$", "_", "#")


def parse_duration(node: Y, cc: CompileCtx, what: str) -> float | None:
    """A Go duration such as "2s", "1m30s", "500ms" (or a plain number of seconds) in seconds."""
    v = node.v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        secs = float(v)
    elif isinstance(v, str) and v and _DURATIONS.fullmatch(v.replace(" ", "")) is None:
        secs = -1.0
    elif isinstance(v, str) and v:
        secs = sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(v))
    else:
        secs = -1.0
    if not 0 < secs <= 86400:
        cc.error(node, f"{what} must be a duration such as \"2s\" or \"500ms\" (at most 24h), not {kind(v)}")
        return None
    return secs


# -- conditions --------------------------------------------------------------------------------------
class NeverCond(Cond):
    """A condition that cannot hold (a header KrakenD would not see)."""

    def __init__(self, text: str, reason: str):
        self.text = text
        self.reason = reason

    def fail(self, req: RequestView, env: Any) -> str | None:
        return self.reason


class _VisibleView(RequestView):
    """The request as a KrakenD backend conditional sees it: only the declared headers. The client
    IP is the real request's (KrakenD's router determines it before any header filtering)."""

    def client_ip(self, trusted):  # type: ignore[override]
        return self.__dict__["_orig"].client_ip(trusted)


class VisibleHeadersCond(Cond):
    """Evaluates ``inner`` against the request with only the ``allowed`` headers (lower-case)."""

    def __init__(self, inner: Cond, allowed: frozenset[str], hidden: tuple[str, ...] = ()):
        self.inner = inner
        self.allowed = allowed
        self.hidden = hidden        # headers the condition reads that are not declared
        self.text = inner.text
        self._memo = "krakend_visible:" + ",".join(sorted(allowed))

    def view(self, req: RequestView) -> RequestView:
        def make() -> RequestView:
            # header_map, not req.headers: the addon hands the engine a one-shot iterator of headers
            v = _VisibleView(req.method, req.scheme, req.host, req.port, req.path, req.query_string,
                             [(k, val) for k, vals in req.header_map.items() if k in self.allowed for val in vals],
                             req.peer, req.jwt_token)
            v.__dict__["_orig"] = req
            return v
        v = req.memo(self._memo, make)
        v.params, v.rest = req.params, req.rest
        return v

    def fail(self, req: RequestView, env: Any) -> str | None:
        r = self.inner.fail(self.view(req), env)
        if r is not None and self.hidden:
            sent = [canonical(n) for n in self.hidden if req.header_map.get(n)]
            if sent:
                r += (f" ({', '.join(sent)} {'was' if len(sent) == 1 else 'were'} sent but "
                      f"{'is' if len(sent) == 1 else 'are'} not in the endpoint's input_headers)")
        return r


def _policy_headers(cond: Any) -> tuple[set[str], bool]:
    """Which headers (lower-case) a compiled CEL policy reads, and whether it reads all of them."""
    atoms = getattr(getattr(cond, "policy", None), "atoms", ()) or ()
    names, everything = set(), False
    for a in atoms:
        if isinstance(a, tuple) and a and a[0] == "H":
            everything = True
        elif isinstance(a, tuple) and len(a) == 2 and a[0] == "h" and isinstance(a[1], str):
            names.add(a[1].lower())
        elif isinstance(a, tuple) and len(a) == 2 and a[0] == "c":      # a cookie: the Cookie header
            names.add("cookie")
    return names, everything


# -- the import --------------------------------------------------------------------------------------
class _Importer:
    def __init__(self, root: Y, cc: CompileCtx):
        self.root = root
        self.cc = cc
        self.root_hosts: list[Y] = []
        self.root_timeout: float | None = None

    # -- service level ------------------------------------------------------------------------
    def hosts(self, node: Y | None, what: str) -> list[Y]:
        if node is None:
            return []
        items = node.v if isinstance(node.v, list) else [node]
        out = []
        for h in items:
            if not isinstance(h.v, str) or not h.v.strip():
                self.cc.error(h, f"{what}: each host must be a URL such as http://127.0.0.1:8080, not {kind(h.v)}")
                continue
            out.append(h)
        if isinstance(node.v, list) and not node.v:
            self.cc.error(node, f"{what} is an empty list")
        return out

    def settings(self) -> Settings:
        cc, v = self.cc, self.root.v
        kw: dict[str, Any] = {"on_no_match": "error"}
        extra = v.get("extra_config")
        if extra is not None and cc.expect_map(extra, "extra_config"):
            router = extra.v.get("router")
            if router is not None and isinstance(router.v, dict):
                tp = router.v.get("trusted_proxies")
                fwd = router.v.get("forwarded_by_client_ip")
                if tp is not None and fwd is not None and fwd.v is True:
                    kw["trusted_proxies"] = tuple(compile_cidrs(tp, cc, "router.trusted_proxies"))
                    rih = router.v.get("remote_ip_headers")
                    if rih is not None and isinstance(rih.v, list):
                        other = [h.v for h in rih.v if isinstance(h.v, str)
                                 and h.v.lower() not in ("x-forwarded-for", "x-real-ip")]
                        if other:
                            cc.warn(rih, f"router.remote_ip_headers: condroute reads the client IP from "
                                         f"X-Forwarded-For and X-Real-IP only, not {', '.join(other)}")
                elif tp is not None:
                    cc.warn(tp, "router.trusted_proxies has no effect without forwarded_by_client_ip: true")
            db = self.geoip_path(extra)
            if db is not None:
                from ..conditions.geo import open_geoip_db
                kw["geoip"] = open_geoip_db(db, cc)
        return Settings(**kw)

    def geoip_path(self, extra: Y) -> Y | None:
        """citydb_path of the geoip server plugin, in the older (``name`` + ``geoip``) or newer
        (``plugins: [{name, config}]``) layout of ``plugin/http-server``."""
        ps = extra.v.get("plugin/http-server")
        if ps is None or not isinstance(ps.v, dict):
            return None
        g = ps.v.get("geoip")
        if g is not None and isinstance(g.v, dict) and "citydb_path" in g.v:
            return g.v["citydb_path"]
        plugins = ps.v.get("plugins")
        if plugins is not None and isinstance(plugins.v, list):
            for p in plugins.v:
                if isinstance(p.v, dict) and p.v.get("name") is not None and p.v["name"].v == "geoip":
                    conf = p.v.get("config")
                    if conf is not None and isinstance(conf.v, dict) and "citydb_path" in conf.v:
                        return conf.v["citydb_path"]
        return None

    def run(self) -> Rules:
        cc, v = self.cc, self.root.v
        self.root_hosts = self.hosts(v.get("host"), "host")
        if "timeout" in v:
            self.root_timeout = parse_duration(v["timeout"], cc, "timeout")
        cc.settings = settings = self.settings()
        routes: list[Route] = []
        en = v["endpoints"]
        if cc.expect_list(en, "endpoints"):
            if not en.v:
                cc.error(en, "endpoints is empty")
            seen: dict[str, int] = {}
            for i, node in enumerate(en.v):
                r = self.endpoint(node, i)
                if r is None:
                    continue
                if r.name in seen:
                    cc.error(node, f"endpoint {r.name} is declared twice (first at line {seen[r.name]})")
                    continue
                seen[r.name] = node.line
                routes.append(r)
        cc.raise_if_errors()
        rules = Rules(file=cc.file, routes=tuple(routes), upstreams=dict(cc.upstreams), settings=settings,
                      warnings=tuple(cc.warnings), source_format="krakend")
        from ..compile.index import build_index
        object.__setattr__(rules, "index", build_index(rules.routes))
        return rules

    # -- endpoints ----------------------------------------------------------------------------
    def endpoint(self, node: Y, i: int) -> Route | None:
        cc = self.cc
        if not cc.expect_map(node, f"endpoints[{i}]"):
            return None
        v = node.v
        pn = v.get("endpoint")
        if pn is None:
            cc.error(node, "an endpoint needs `endpoint` (its path, such as /v1/users/{id})")
            return None
        path = cc.expect_str(pn, "endpoint")
        if path is None:
            return None
        method = "GET"
        if "method" in v:
            m = v["method"]
            if not isinstance(m.v, str) or not _METHOD.match(m.v) or m.v.upper() not in HTTP_METHODS:
                cc.error(m, f"method must be an HTTP method such as GET or POST, not {kind(m.v)}")
                return None
            method = m.v.upper()
        name = f"{method} {path}"
        pp = compile_path_pattern(pn, cc)
        if pp is None:
            return None
        cc.route_params, cc.route_has_rest = pp.params, pp.has_rest
        visible: frozenset[str] | None = frozenset()     # None: every header ("*")
        if "input_headers" in v:
            ih = v["input_headers"]
            if cc.expect_list(ih, "input_headers"):
                names = [h.v for h in ih.v if isinstance(h.v, str)]
                for h in ih.v:
                    if not isinstance(h.v, str):
                        cc.error(h, f"input_headers: a header name must be a string, not {kind(h.v)}")
                visible = None if "*" in names else frozenset(n.lower() for n in names if n)
        timeout = self.root_timeout
        if "timeout" in v:
            timeout = parse_duration(v["timeout"], cc, "timeout")
        bn = v.get("backend")
        if bn is None:
            cc.error(node, f"endpoint {name} needs `backend` (a list)")
            return None
        if not cc.expect_list(bn, "backend"):
            return None
        if not bn.v:
            cc.error(bn, f"endpoint {name}: backend is empty")
            return None
        backends: list[Backend] = []
        fallback: Backend | None = None
        header_conds: dict[tuple[str, str], str] = {}
        for j, b in enumerate(bn.v):
            be = self.backend(b, j, name, method, visible, timeout, header_conds)
            if be is None:
                continue
            if be.fallback:
                if fallback is not None:
                    cc.error(b, f"endpoint {name}: only one backend may use strategy fallback "
                                f"({fallback.name} already does)")
                    continue
                fallback = be
            backends.append(be)
        self.merge_warning(node, name, backends, v.get("extra_config"))
        return Route(name=name, line=node.line, methods=frozenset({method}), path=pp,
                     backends=tuple(backends), fallback=fallback)

    def merge_warning(self, node: Y, name: str, backends: list[Backend], extra: Y | None) -> None:
        """Where KrakenD would call several backends for one request and merge their responses."""
        uncond = [b for b in backends if b.unconditional]
        if len(backends) < 2 or not uncond:
            return
        others = [b.name for b in backends if not b.unconditional and not b.fallback]
        what = " and ".join(b.name for b in uncond)
        also = f" (plus {', '.join(others)} when {'they hold' if len(others) > 1 else 'it holds'})" if others else ""
        seq = ""
        if extra is not None and isinstance(extra.v, dict):
            proxy = extra.v.get("proxy")
            if proxy is not None and isinstance(proxy.v, dict) and proxy.v.get("sequential") is not None \
                    and proxy.v["sequential"].v is True:
                seq = " in sequence"
        which = f"always {backends[0].name}" if backends[0].unconditional else "in file order"
        self.cc.warn(node, f"endpoint {name}: KrakenD calls {what} on every request{also}{seq} and merges the "
                           f"responses; condroute routes each request to one upstream: the first backend that "
                           f"holds ({which})", key="backend")

    # -- backends -----------------------------------------------------------------------------
    def backend(self, node: Y, j: int, ep: str, method: str, visible: frozenset[str] | None,
                timeout: float | None, header_conds: dict) -> Backend | None:
        cc = self.cc
        bname = f"backend-{j + 1}"
        if not cc.expect_map(node, f"endpoint {ep}: {bname}"):
            return None
        v = node.v
        un = v.get("url_pattern")
        if un is None:
            cc.error(node, f"endpoint {ep}: {bname} needs `url_pattern` (the path on its host)")
            return None
        if not isinstance(un.v, str):
            cc.error(un, f"url_pattern must be a path such as /users/{{id}}, not {kind(un.v)}")
            return None
        if _DYNAMIC.search(un.v):
            cc.error(un, f"url_pattern {un.v!r}: dynamic routing placeholders ({{input_headers...}}, "
                         "{JWT...}, {input_query_strings...}, {respN_...}) are not supported; "
                         "use the endpoint's {params}")
            return None
        up_text = un.v if un.v.startswith("/") else "/" + un.v
        tmpl = compile_path_template(Y(up_text, un.line, un.col), cc)
        hosts = self.hosts(v.get("host"), "host") if "host" in v else []
        if not hosts:
            hosts = self.root_hosts
        if not hosts:
            cc.error(node, f"endpoint {ep}: {bname} has no `host` and the configuration has no "
                           "service-level `host` to default to")
            return None
        h = hosts[0]
        text = h.v.strip()
        if _DYNAMIC.search(text) or "{" in text:
            cc.error(h, f"host {text!r}: dynamic hosts are not supported")
            return None
        if "://" not in text:
            text = "http://" + text          # KrakenD's host sanitising
        up = parse_upstream_url(Y(text, h.line, h.col), cc)
        if up is None:
            return None
        cc.upstreams.setdefault(up.name, up)
        if len(hosts) > 1:
            cc.warn(h, f"endpoint {ep}: {bname}: KrakenD balances load over {len(hosts)} hosts; "
                       f"condroute sends to the first, {up.name}")
        if "sd" in v and isinstance(v["sd"].v, str) and v["sd"].v not in ("static", ""):
            cc.warn(v["sd"], f"endpoint {ep}: {bname}: service discovery {v['sd'].v!r} is not supported; "
                             f"condroute connects to {up.name} as written")
        if "method" in v and isinstance(v["method"].v, str) and v["method"].v.upper() != method:
            cc.warn(v["method"], f"endpoint {ep}: {bname}: KrakenD would send {v['method'].v.upper()}; "
                                 f"condroute forwards the client's method ({method})")
        kw: dict[str, Any] = {}
        extra = v.get("extra_config")
        if extra is not None and cc.expect_map(extra, "extra_config") and CONDITIONAL in extra.v:
            when, fb = self.conditional(extra.v[CONDITIONAL], ep, bname, visible, header_conds)
            if when is None and not fb:
                return None           # the conditional did not compile (the error is recorded)
            if fb:
                kw["fallback"] = True
            else:
                kw["when"] = when
        return Backend(name=bname, line=node.line, upstream=up, path=tmpl, timeout=timeout, **kw)

    def conditional(self, node: Y, ep: str, bname: str, visible: frozenset[str] | None,
                    header_conds: dict) -> tuple[Cond | None, bool]:
        cc = self.cc
        if not cc.expect_map(node, CONDITIONAL):
            return None, False
        v = node.v
        ok = True
        for k in v:
            if k not in CONDITIONAL_KEYS and not _meta(k):
                cc.error_key(node, k, f"unknown key {k!r} in {CONDITIONAL}; expected name, strategy, value")
                ok = False
        sn = v.get("strategy")
        if sn is None:
            cc.error(node, f"{CONDITIONAL} needs `strategy` (header, policy or fallback)")
            return None, False
        if sn.v not in STRATEGIES:
            cc.error(sn, f"{CONDITIONAL}: strategy must be header, policy or fallback, not {kind(sn.v)}")
            return None, False
        if not ok:
            return None, False
        if sn.v == "fallback":
            return None, True
        vn = v.get("value")
        if vn is None or vn.v is None or isinstance(vn.v, (dict, list)):
            cc.error(vn or node, f"{CONDITIONAL}: strategy {sn.v} needs `value` ("
                     + ("the header's exact value" if sn.v == "header" else "a policy expression") + ")")
            return None, False
        if sn.v == "header":
            nn = v.get("name")
            if nn is None or not isinstance(nn.v, str) or not nn.v:
                cc.error(nn or node, f"{CONDITIONAL}: strategy header needs `name` (the header to check)")
                return None, False
            value = as_text(vn)
            if visible is not None and nn.v.lower() not in visible:
                cc.warn(nn, f"endpoint {ep}: {bname} checks header {nn.v} which is not in the endpoint's "
                            f"input_headers: KrakenD never passes it on, so this backend never holds "
                            f"(add \"{nn.v}\" to input_headers)")
                return NeverCond(f"header {nn.v} is \"{value}\" (undeclared: never holds)",
                                 f"header {nn.v} is not in the endpoint's input_headers, so KrakenD does not "
                                 f"see it: this condition never holds"), False
            key = (nn.v.lower(), value)
            if key in header_conds:
                cc.warn(nn, f"endpoint {ep}: {bname} checks the same header value as {header_conds[key]}: KrakenD "
                            f"calls both and merges the responses; condroute routes to {header_conds[key]}")
            else:
                header_conds[key] = bname
            cond = compile_condition(Y({"header": Y({nn.v: Y(value, vn.line, vn.col)}, nn.line, nn.col,
                                                    {nn.v: (nn.line, nn.col)})},
                                       node.line, node.col, {"header": (nn.line, nn.col)}), cc, CONDITIONAL)
            return cond, False
        # policy
        if not isinstance(vn.v, str):
            cc.error(vn, f"{CONDITIONAL}: a policy must be an expression (a string), not {kind(vn.v)}")
            return None, False
        from ..cel.policy import compile_cel_condition
        cond = compile_cel_condition(vn, cc)
        if cond is None:
            return None, False
        if visible is None:
            return cond, False
        names, _ = _policy_headers(cond)
        hidden = sorted(n for n in names if n not in visible)
        if hidden:
            shown = ", ".join(canonical(n) for n in hidden)
            cc.warn(vn, f"endpoint {ep}: {bname}: the policy reads the header{'s' * (len(hidden) > 1)} {shown}, which "
                        f"{'is' if len(hidden) == 1 else 'are'} not in the endpoint's input_headers: KrakenD "
                        f"does not pass {'it' if len(hidden) == 1 else 'them'} on, so the policy sees "
                        f"{'it' if len(hidden) == 1 else 'them'} as missing")
        return VisibleHeadersCond(cond, visible, tuple(hidden)), False


def import_krakend(root: Y, cc: CompileCtx) -> Rules:
    """Compile a KrakenD configuration (a mapping with ``endpoints``) into condroute rules."""
    return _Importer(root, cc).run()
