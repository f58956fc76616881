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
* a request no backend of its endpoint can serve is answered 502 (``on_no_match: error``);
* ``auth/validator`` (``krakend_auth``) → a token check answered 401/403 before the backends, and
  ``propagate_claims`` headers set from the verified token in what conditionals see (the client's
  values are dropped, and removed from what the upstream gets);
* ``modifier/martian`` header modifiers (``krakend_martian``) → ``set_headers``/``remove_headers``;
* an endpoint with dynamic routing is skipped (a located warning, and a route that answers 502 with
  the reason); a policy on ``req_params.RespN_*`` can never hold; namespaces that are not applied
  get a located warning (``krakend_extra``); a host named in the importing file's ``upstreams``
  (as written, ``HOST:PORT`` or ``HOST``) is that upstream.

KrakenD calls every backend that holds and merges their responses; condroute routes a request to
one upstream, the first backend that holds, and says so in a load warning wherever KrakenD would
call more than one.

Why this module is long: an endpoint's and a backend's mapping read best whole, in one place; the
parts that stand alone are in krakend_auth, krakend_martian and krakend_extra.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from typing import Iterator

from ..httptext import HTTP_METHODS
from ..httptext import canonical_header as canonical
from ..model import (Backend, Never, Respond, Route, Settings, TokenCheck, TokenRejected, Upstream, VisibleHeaders,
                     When)
from ..node import Y, as_text
from .common import parse_cidrs, parse_path_template, parse_route_path, parse_upstream_url
from .ctx import CompileCtx, kind
from .krakend_auth import reads_claim_header, token_check, validator_node
from .krakend_extra import DYNAMIC, geoip_caller, geoip_ok, not_applied, server_plugins, unservable
from .krakend_martian import martian_headers, martian_node


CONDITIONAL = "backend/conditional"
STRATEGIES = ("header", "policy", "fallback")
CONDITIONAL_KEYS = ("name", "strategy", "value")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATIONS = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# a policy that reads a value of the sequential proxy (an earlier backend's response)
_RESP_PARAM = re.compile(r"req_params\s*(?:\.\s*|\[\s*['\"])([Rr]esp\d+_\w*)")
GUARD = "auth/validator"
_METHOD = re.compile(r"^[A-Za-z]+$")


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


# -- the import --------------------------------------------------------------------------------------
class KrakendLoader:
    """Reads a parsed KrakenD configuration into the model: :meth:`head` (settings), then
    :meth:`routes`, one endpoint at a time."""

    format = "krakend"

    @staticmethod
    def claims(root: Y) -> bool:
        v = root.v
        if isinstance(v, dict):
            if "routes" in v:
                return False
            return "endpoints" in v or "endpoint" in v or "url_pattern" in v or ("backend" in v and "version" not in v)
        if isinstance(v, list):      # a list of endpoints (or backends) pasted alone
            return bool(v) and all(isinstance(i.v, dict) and ("endpoint" in i.v or "url_pattern" in i.v) for i in v)
        return False

    def fragment(self) -> str | None:
        """What to say when the file is a piece of a KrakenD configuration, not a whole one."""
        v = self.root.v
        if isinstance(v, dict) and "endpoints" in v:
            return None
        backend = isinstance(v, dict) and "url_pattern" in v and "endpoint" not in v or \
            isinstance(v, list) and all("endpoint" not in i.v for i in v)
        if backend:
            return ('this is a KrakenD backend, not a whole configuration: wrap it in {"version": 3, '
                    '"endpoints": [{"endpoint": "/...", "backend": [...]}]}')
        return 'this is a KrakenD endpoint, not a whole configuration: wrap it in {"version": 3, "endpoints": [...]}'

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
                    kw["trusted_proxies"] = tuple(parse_cidrs(tp, cc, "router.trusted_proxies"))
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
                cc.geoip_declared = True      # (a policy's geoIP() does not repeat what is said here)
                if geoip_ok(db, self.root, cc):
                    kw["geoip_db"] = db
            not_applied(extra, cc, "the service's extra_config", skip=frozenset({"plugin/http-server"}))
            server_plugins(extra, cc)
        if "geoip_db" not in kw and not cc.geoip_declared:
            call = geoip_caller(self.root)
            if call is not None:
                cc.geoip_declared = True
                cc.error(call, "this policy calls geoIP(), which needs KrakenD's geoip server plugin: add "
                               "extra_config.\"plugin/http-server\" with name [\"geoip\"] and geoip.citydb_path "
                               "(a MaxMind City database)")
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

    def head(self) -> Settings:
        cc, v = self.cc, self.root.v
        frag = self.fragment()
        if frag is not None:
            cc.error(self.root, frag)
            cc.raise_if_errors()
        self.root_hosts = self.hosts(v.get("host"), "host")
        if "timeout" in v:
            self.root_timeout = parse_duration(v["timeout"], cc, "timeout")
        return self.settings()

    def routes(self) -> Iterator[Route]:
        cc = self.cc
        en = self.root.v["endpoints"]
        if not cc.expect_list(en, "endpoints"):
            return
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
            yield r

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
        pp = parse_route_path(pn, cc)
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
        route = Route(name=name, line=node.line, methods=frozenset({method}), path=pp)
        why = unservable(bn, name, cc)
        if why is not None:
            return self.skipped(route, why)
        extra = v.get("extra_config")
        if extra is not None and not cc.expect_map(extra, "extra_config"):
            extra = None
        tc: TokenCheck | None = None
        vn = validator_node(extra)
        if vn is not None:
            tc = token_check(vn, name, cc)
            if tc is None:
                return None
        names = frozenset(h.header.lower() for h in tc.claim_headers) if tc is not None else frozenset()
        enforced = tc is not None and (tc.keys is not None or tc.decode_only)
        if names and not enforced:
            reads = self.reads_propagated(bn, names)
            if reads is not None:
                at, hname = reads
                cc.warn(at, f"endpoint {name}: skipped: its backend/conditional reads {canonical(hname)}, which "
                            f"KrakenD sets from the verified token (auth/validator propagate_claims), and the "
                            f"validator's keys are not available (see its warning)")
                return self.skipped(route, f"its conditional reads {canonical(hname)}, set from a token condroute "
                                           f"cannot verify (no keys)")
        not_applied(extra, cc, f"endpoint {name}")
        backends: list[Backend] = []
        if enforced:
            assert tc is not None
            backends.append(Backend(name=GUARD, line=vn.line, when=TokenRejected(tc, 401),
                                    respond=Respond(401, "", ())))
            if tc.roles or tc.scopes:
                backends.append(Backend(name=GUARD + "-roles", line=vn.line, when=TokenRejected(tc, 403),
                                        respond=Respond(403, "", ())))
        fallback: Backend | None = None
        header_conds: dict[tuple[str, str], str] = {}
        guards = len(backends)
        for j, b in enumerate(bn.v):
            be = self.backend(b, j, name, method, visible, timeout, header_conds, tc if names else None)
            if be is None:
                continue
            if be.fallback:
                if fallback is not None:
                    cc.error(b, f"endpoint {name}: only one backend may use strategy fallback "
                                f"({fallback.name} already does)")
                    continue
                fallback = be
            backends.append(be)
        self.merge_warning(node, name, backends[guards:], extra)
        # KrakenD answers an error when no backend of the endpoint holds, wherever the file is loaded
        # from (an importing condroute file's on_no_match: passthrough does not apply)
        return Route(name=name, line=node.line, methods=frozenset({method}), path=pp, backends=tuple(backends),
                     on_no_match="error", propagate=tc if names else None)

    @staticmethod
    def skipped(route: Route, why: str) -> Route:
        """A route that names the endpoint and never forwards it: a request for it is answered 502
        with the reason (explain and the status page name it), instead of passing through as if
        nothing declared it."""
        body = f"condroute skipped the KrakenD endpoint {route.name}: {why}\n"
        return Route(name=route.name, line=route.line, methods=route.methods, path=route.path,
                     backends=(Backend(name="skipped", line=route.line, respond=Respond(502, body, ())),))

    @staticmethod
    def reads_propagated(bn: Y, names: frozenset[str]) -> tuple[Y, str] | None:
        for b in bn.v:
            x = b.v.get("extra_config") if isinstance(b.v, dict) else None
            c = x.v.get(CONDITIONAL) if x is not None and isinstance(x.v, dict) else None
            h = reads_claim_header(c, names)
            if h is not None:
                return h
        return None

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
                timeout: float | None, header_conds: dict, tc: TokenCheck | None = None) -> Backend | None:
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
        if DYNAMIC.search(un.v):
            cc.error(un, f"url_pattern {un.v!r}: dynamic routing placeholders ({{input_headers...}}, "
                         "{JWT...}, {input_query_strings...}, {respN_...}) are not supported; "
                         "use the endpoint's {params}")
            return None
        up_text = un.v if un.v.startswith("/") else "/" + un.v
        tmpl = parse_path_template(Y(up_text, un.line, un.col), cc)
        hosts = self.hosts(v.get("host"), "host") if "host" in v else []
        if not hosts:
            hosts = self.root_hosts
        if not hosts:
            cc.error(node, f"endpoint {ep}: {bname} has no `host` and the configuration has no "
                           "service-level `host` to default to")
            return None
        h = hosts[0]
        text = h.v.strip()
        if DYNAMIC.search(text) or "{" in text:
            cc.error(h, f"host {text!r}: dynamic hosts are not supported")
            return None
        up = self.named_upstream(text)
        if up is None:
            if "://" not in text:
                text = "http://" + text          # KrakenD's host sanitising
            up = cc.upstreams.get(text) or parse_upstream_url(Y(text, h.line, h.col), cc)
            if up is None:
                return None
            up = cc.upstreams.setdefault(up.name, up)
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
        if extra is not None and not cc.expect_map(extra, "extra_config"):
            extra = None
        if extra is not None and CONDITIONAL in extra.v:
            when, fb = self.conditional(extra.v[CONDITIONAL], ep, bname, visible, header_conds, tc)
            if when is None and not fb:
                return None           # the conditional did not compile (the error is recorded)
            if fb:
                kw["fallback"] = True
            else:
                kw["when"] = when
        sets: tuple = ()
        removes: tuple = ()
        mn = martian_node(extra)
        if mn is not None:
            sets, removes = martian_headers(mn, cc, f"endpoint {ep}: {bname}: modifier/martian")
        if tc is not None:
            # the client's values of propagated headers never reach the upstream
            removes += tuple(canonical(h.header) for h in tc.claim_headers
                             if h.header.lower() not in {r.lower() for r in removes})
            sets = tuple((n, val) for n, val in sets if n.lower() not in {h.header.lower() for h in tc.claim_headers})
        not_applied(extra, cc, f"endpoint {ep}: {bname}")
        return Backend(name=bname, line=node.line, upstream=up, path=tmpl, timeout=timeout,
                       set_headers=sets, remove_headers=removes, **kw)

    def named_upstream(self, text: str) -> Upstream | None:
        """The upstream the importing file names after this host: as written, else ``HOST:PORT``,
        else ``HOST`` (the service name), so that a cluster's hosts map onto local addresses."""
        ups = self.cc.upstreams
        if text in ups:
            return ups[text]
        try:
            u = urlsplit(text if "://" in text else "http://" + text)
            host, port = u.hostname, u.port
        except ValueError:
            return None
        if not host:
            return None
        for name in ((f"{host}:{port}",) if port else ()) + (host,):
            if name in ups:
                return ups[name]
        return None

    def conditional(self, node: Y, ep: str, bname: str, visible: frozenset[str] | None,
                    header_conds: dict, tc: TokenCheck | None = None) -> tuple[When | None, bool]:
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
                return Never(f"header {nn.v} is \"{value}\" (undeclared: never holds)",
                                 f"header {nn.v} is not in the endpoint's input_headers, so KrakenD does not "
                                 f"see it: this condition never holds"), False
            key = (nn.v.lower(), value)
            if key in header_conds:
                cc.warn(nn, f"endpoint {ep}: {bname} checks the same header value as {header_conds[key]}: KrakenD "
                            f"calls both and merges the responses; condroute routes to {header_conds[key]}")
            else:
                header_conds[key] = bname
            hc = Y({"header": Y({nn.v: Y(value, vn.line, vn.col)}, nn.line, nn.col, {nn.v: (nn.line, nn.col)})},
                   node.line, node.col, {"header": (nn.line, nn.col)})
            if tc is not None:
                return VisibleHeaders(hc, visible, f"endpoint {ep}: {bname}", tc), False
            return hc, False
        # policy
        if not isinstance(vn.v, str):
            cc.error(vn, f"{CONDITIONAL}: a policy must be an expression (a string), not {kind(vn.v)}")
            return None, False
        m = _RESP_PARAM.search(vn.v)
        if m is not None:
            k = int(re.match(r"[Rr]esp(\d+)_", m.group(1)).group(1))    # type: ignore[union-attr]
            cc.warn(vn, f"endpoint {ep}: {bname}: the policy reads req_params.{m.group(1)}, a value KrakenD takes "
                        f"from backend-{k + 1}'s response (sequential proxy); condroute routes before any backend "
                        f"answers, so this conditional can never hold")
            return Never(f"policy {vn.v}", f"can never hold: req_params.{m.group(1)} is a value of the sequential "
                                           f"proxy (backend-{k + 1}'s response), unknown when condroute routes"), False
        cel = Y({"cel": vn}, vn.line, vn.col, {"cel": (vn.line, vn.col)})
        if visible is None and tc is None:
            return cel, False
        # which headers the policy reads is known once it is compiled: the compiler warns then
        return VisibleHeaders(cel, visible, f"endpoint {ep}: {bname}", tc), False
