"""The condroute rules format (YAML or JSON, see README "The rules file") read into the model.

Everything structural is checked here, each problem located in the file; what a condition means
is the compiler's (the condition-kind registry): a ``when`` and the condition keys of ``match``
are kept as written."""
from __future__ import annotations

import os
from typing import Any, Iterator

from ..errors import Problem
from ..httptext import TOKEN
from ..model import Backend, Respond, Route, Settings, Split
from ..node import Y, as_text
from .common import (REMOVE_KEPT, REQUEST_HEADERS_KEPT, RESPOND_NO_BODY, header_map, parse_cidrs,
                     parse_path_template, parse_route_path, parse_upstream_url, upstream_ref)
from .ctx import CompileCtx, kind
from .imports import read_imports
from .toolbox import TOOLBOX_KEYS, read_bool, read_local_answer, read_toolbox

TOP_KEYS = ("version", "upstreams", "settings", "routes", "imports")
SETTINGS_KEYS = ("on_no_match", "trusted_proxies", "jwt", "geoip_db", "strip_routing_headers")
ROUTE_KEYS = ("name", "match", "backends", "enabled")
MATCH_KEYS = ("host", "methods", "method", "path")     # and condition keys (the compiler's registry)
BACKEND_KEYS = ("name", "when", "fallback", "upstream", "split", "path", "set_headers", "remove_headers",
                "preserve_host", "respond", "timeout", "retries") + TOOLBOX_KEYS
SPLIT_KEYS = ("by", "weights", "salt")
RESPOND_KEYS = ("status", "body", "headers", "file", "dir")


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
        elif low == "content-length" and val.strip() != str(len(body.encode())) \
                and "file" not in r.v and "dir" not in r.v:     # (refused for those: read_local_answer)
            cc.error_key(r.v["headers"], name, f"respond.headers: {name} {val} does not match the body "
                                               f"({len(body.encode())} bytes); leave it out: it is set from the body")


def parse_split(node: Y, cc: CompileCtx) -> Split | None:
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
        up = upstream_ref(Y(name, *w_node.key_pos[name]), cc)
        if up is not None:
            arms.append((up, float(w)))
    if arms and sum(w for _, w in arms) <= 0:
        cc.warn(w_node, "every weight of this split is 0: it picks among its upstreams evenly")
    salt_node = node.v.get("salt")
    salt = "" if salt_node is None or (salt_node.v is None and salt_node.text is None) else as_text(salt_node)
    return Split(by, kind_, key, tuple(arms), salt)


def parse_backend(node: Y, cc: CompileCtx) -> Backend | None:
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
        kw["when"] = v["when"]            # a condition mapping: the compiler reads it
    targets = [k for k in ("upstream", "split", "respond") if k in v]
    if len(targets) > 1:
        cc.error_key(node, targets[1], f"backend {name!r}: use only one of upstream, split, respond")
    if "upstream" in v:
        kw["upstream"] = upstream_ref(v["upstream"], cc)
    if "split" in v:
        kw["split"] = parse_split(v["split"], cc)
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
            hdrs = header_map(r.v["headers"], cc, "respond.headers") if "headers" in r.v else ()
            _check_respond(r, cc, st, btxt, hdrs)
            local: dict[str, Any] = {}
            if ("file" in r.v or "dir" in r.v) and not read_local_answer(r, cc, local):
                ok = False
            kw["respond"] = Respond(st, btxt, hdrs, **local)
    if "path" in v:
        kw["path"] = parse_path_template(v["path"], cc)
    if "set_headers" in v:
        kw["set_headers"] = header_map(v["set_headers"], cc, "set_headers")
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
                if t is None or not TOKEN.match(t):
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
    if not read_toolbox(node, cc, kw, name):
        ok = False
    if not ok:
        return None
    return Backend(name=name, line=node.line, **kw)


def parse_route(node: Y, cc: CompileCtx, index: int) -> Route | None:
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
    if "match" in v:
        m = v["match"]
        if cc.expect_map(m, "match"):
            extra = {k: s for k, s in m.v.items() if k not in MATCH_KEYS}
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
                        if not isinstance(x.v, str) or not TOKEN.match(x.v):
                            cc.error(x, f"match.{mk}: {x.v!r} is not an HTTP method")
                            continue
                        meths.add(x.v.upper())
                    kw["methods"] = cc.share(("methods", frozenset(meths)), lambda meths=meths: frozenset(meths))
            if "path" in m.v:
                pp = parse_route_path(m.v["path"], cc)
                if pp is not None:
                    kw["path"] = pp
                    cc.route_params, cc.route_has_rest = pp.params, pp.has_rest
            if extra:
                # the condition keys (header, cel, ...): the compiler reads them, and says which
                # keys are not conditions either
                kw["conditions"] = Y(extra, m.line, m.col, m.key_pos)
    if "enabled" in v:
        en = read_bool(v["enabled"], cc, "enabled")
        if en is not None:
            kw["enabled"] = en
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
    for bn in bnode.v:
        b = parse_backend(bn, cc)
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
    return Route(name=name, line=node.line, backends=tuple(backends), **kw)


def parse_settings(node: Y | None, cc: CompileCtx) -> Settings:
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
        kw["trusted_proxies"] = tuple(parse_cidrs(node.v["trusted_proxies"], cc, "trusted_proxies"))
    if "jwt" in node.v:
        kw["jwt"] = node.v["jwt"]               # compiled by conditions.jwtauth
    if "geoip_db" in node.v:
        kw["geoip_db"] = node.v["geoip_db"]     # opened by conditions.geo
    return Settings(**kw)


class CondrouteLoader:
    """Reads a parsed condroute file: :meth:`head` (version, upstreams, settings), then
    :meth:`routes` one at a time, so that a big file's tree and its compiled routes are never in
    memory whole at the same time (each route's nodes are freed once it is read)."""

    format = "condroute"

    def __init__(self, root: Y, cc: CompileCtx):
        self.root = root
        self.cc = cc

    @staticmethod
    def claims(root: Y) -> bool:
        return isinstance(root.v, dict) and not ("endpoints" in root.v and "routes" not in root.v)

    def head(self) -> Settings:
        cc, root = self.cc, self.root
        if not isinstance(root.v, dict):
            cc.error(root, f"the rules file must be a mapping with `version` and `routes`, not {kind(root.v)}")
            cc.raise_if_errors()
        cc.check_keys(root, TOP_KEYS, "the rules file")
        ver = root.v.get("version")
        if ver is not None and ver.v != 1:
            cc.error(ver, f"unsupported version {ver.v!r}: this condroute reads version 1")
        if "upstreams" in root.v:
            un = root.v["upstreams"]
            if cc.expect_map(un, "upstreams"):
                for name, u in un.v.items():
                    if "://" in name or not name.strip("/") or name != name.strip():
                        cc.error_key(un, name, f"upstream name {name!r} must be a name (a service such as "
                                               f"reviews, reviews/v2 or backend:8080), not a URL")
                        continue
                    up = parse_upstream_url(u, cc, name)
                    if up is not None:
                        cc.upstreams[name] = up
        self.settings = parse_settings(root.v.get("settings"), cc)
        self.imports = read_imports(root.v.get("imports"), cc, self.settings)
        return self.settings

    def routes(self) -> Iterator[Route]:
        names: dict[str, tuple[str, int]] = {}
        for r in self.own_routes():
            names[r.name] = (self.cc.file, r.line)
            yield r
        for imp in self.imports:
            for r in imp.routes():
                if r.name in names:
                    f, line = names[r.name]
                    self.cc.problems.append(Problem(r.file, r.line, 1, (
                        f"route name {r.name!r} is already used by {os.path.basename(f)}:{line}; route names "
                        f"must be unique across imported files (rename one of them)")))
                    continue
                names[r.name] = (r.file, r.line)
                yield r

    def own_routes(self) -> Iterator[Route]:
        cc, root = self.cc, self.root
        if "routes" not in root.v:
            if "imports" not in root.v:
                cc.error(root, "the rules file needs `routes` (a list) or `imports`")
            return
        rn = root.v["routes"]
        if not cc.expect_list(rn, "routes"):
            return
        seen: dict[str, int] = {}
        for i, node in enumerate(rn.v):
            r = parse_route(node, cc, i)
            if r is not None:
                if r.name in seen:
                    cc.error(node.v.get("name", node), f"duplicate route name {r.name!r} (first at line {seen[r.name]})")
                else:
                    seen[r.name] = node.line
                    yield r
            # the route's tree is not read again: free it now
            rn.v[i] = node = None    # type: ignore[call-overload]
