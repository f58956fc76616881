"""Export to HAProxy (2.6 or later): one ``haproxy.cfg`` — a frontend that decides as condroute
does, one backend section per condroute backend (per split arm), each with its rewrites.

How the decision is kept exact (the notes, /work/notes/readme-haproxy.md, say it for users):

- Conditions become named ACLs (``haproxy_cond``). A route's match and each backend's ``when`` are
  ORs of ANDs of ACLs, written as one ``http-request set-var`` line per AND, in file order:
  ``txn.cr_route`` takes the first route whose match holds (``!cr_routed`` on every line keeps the
  first), then ``txn.cr_backend`` the first backend of that route whose ``when`` holds, its fallback
  last. ``use_backend`` then only reads the variable: HAProxy's own order (all ``http-request`` rules
  before any ``use_backend``) cannot reorder anything.
- The client address (``--verify``: a header; then ``settings.trusted_proxies`` walking
  X-Forwarded-For from the right, bounded at 32 hops as condroute is) is set with ``set-src`` before
  anything reads ``src``; the path is normalised (``normalize-uri``, dot segments and ``//``) before
  any ACL reads it; ``host`` is the Host header lower-cased without port, brackets or trailing dots.
- A split is drawn in the frontend (a hash of the key into 10,000 buckets, weighted ranges; a
  missing key draws at random) and each arm is its own backend section, so that each arm gets its
  own Host and base path.
- No route: ``404 no route``; a route where nothing is selected: 502 (``on_no_match: error``) or
  the same 404 (passthrough); a path condroute refuses: 400.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import zlib

from .. import model
from . import ir, toolbox
from .base import ExportOptions, Exported, Target
from .haproxy_cond import Acls, Dnf, cond_dnf, conj, fetch_of, term_text
from .haproxy_jwt import JwtAtoms
from .haproxy_lua import LUA_NAME, lua_text
from .haproxy_paths import path_lines, path_regex, rewrite_fmt
from .haproxy_text import header_value, lf, word

BUCKETS = 10000
DEFAULT_SERVER_TIMEOUT = "300s"


class _Skip(Exception):
    """A route or backend left out (its NotExported already recorded)."""


class _Writer:
    def __init__(self, rules: model.Rules, opts: ExportOptions, target: str):
        self.rules, self.opts, self.target = rules, opts, target
        self.acls = Acls()
        self.refused: list[ir.NotExported] = []
        self.notes: list[str] = []
        self.select: list[str] = []        # route and backend selection (http-request set-var)
        self.answer: list[str] = []        # direct answers, split draws (after the selection)
        self.use: list[str] = []           # use_backend lines
        self.sections: list[list[str]] = []
        self.reads_path = False
        self.needs_port = False            # a redirect reads the port the client asked for
        self.alt_owner: list[str] = []     # the routes' match again, on the path read decoded
        self.jwt = JwtAtoms(rules)

    # ------------------------------------------------------------------------------------ routes
    def route_dnf(self, i: int, r: model.Route, file: str) -> Dnf:
        at = ir.where_line(file, r.line)
        d: Dnf = [()]
        if r.methods is not None:
            d = conj(d, [((self.acls.define("method,upper", "str", False, sorted(r.methods), "method"), False),)], at)
        if r.hosts and "*" not in r.hosts:
            names = [h for h in r.hosts if not h.startswith("*.")]
            suffixes = [h[1:] for h in r.hosts if h.startswith("*.")]
            lits = []
            if names:
                lits.append(((self.acls.define("var(txn.cr_host)", "str", False, names, "host"), False),))
            if suffixes:
                lits.append(((self.acls.define("var(txn.cr_host)", "end", False, suffixes, "host_suffix"), False),))
            d = conj(d, lits, at)
        if r.path is not None:
            self.reads_path = True
            if r.path.matcher is not None:
                d = conj(d, cond_dnf(self.acls, ir.Atom("path", None, ir.matcher(r.path.matcher), at)), at)
            else:
                rx, _ = path_regex(r.path, at)
                d = conj(d, [((self.acls.define("path", "reg", False, [rx], "path"), False),)], at)
        cond = ir.route_conditions(r, file)
        if any(isinstance(a, ir.Atom) and a.source == "path" for a in ir.atoms(cond)):
            self.reads_path = True
        return conj(d, cond_dnf(self.acls, cond, self.jwt_fetch), at)

    def jwt_fetch(self, a: ir.Atom) -> int:
        return self.jwt.atom(a)

    def write_route(self, i: int, r: model.Route) -> None:
        file = ir.route_file(self.rules, r)
        try:
            own = self.route_dnf(i, r, file)
        except ir.NotExported as e:
            self.refused.append(e)
            return
        label = f"route {r.name!r} ({ir.where_line(file, r.line)})"
        self.select.append(f"# {label}")
        for t in own:
            self.select.append(f"http-request set-var(txn.cr_route) int({i}) if !cr_routed {term_text(t)}".rstrip())
            self.alt_owner.append(f"http-request set-var(txn.cr_alt) int({i}) if cr_altread !cr_altowned "
                                  f"{term_text(t)}".rstrip())
        in_route = f"cr_route_{i}"
        self.acls.lines.append(f"acl {in_route} var(txn.cr_route) -m int eq {i}")
        fallback_line: list[str] = []
        for j, b in enumerate(r.backends):
            name = f"cr_{i}_{j}"
            try:
                when = [()] if b.fallback else cond_dnf(self.acls, ir.when(b, file), self.jwt_fetch)
                self.write_backend(name, r, b, file)
            except ir.NotExported as e:
                self.refused.append(e)
                continue
            lines = fallback_line if b.fallback else self.select
            for t in when:
                lines.append(f"http-request set-var(txn.cr_backend) str({name}) if {in_route} !cr_chosen "
                             f"{term_text(t)}".rstrip())
        self.select.extend(fallback_line)
        on = r.on_no_match or self.rules.settings.on_no_match
        if on == "error":
            body = f"condroute: route {r.name}: no backend holds\n"
            self.answer.append(f"http-request return status 502 content-type {word('text/plain; charset=utf-8')} "
                               f"string {word(body)} if {in_route} !cr_chosen")
        else:
            self.answer.append(f"http-request return status 404 content-type text/plain string "
                               f"{word(NO_ROUTE)} if {in_route} !cr_chosen")

    # ---------------------------------------------------------------------------------- backends
    def write_backend(self, name: str, r: model.Route, b: model.Backend, file: str) -> None:
        at = ir.where_line(file, b.line)
        chosen = f"cr_be_{name[3:]}"
        assert not b.mirrors        # refused by toolbox.prepare, located at the mirror key
        if b.redirect is not None:
            lines = redirect_lines(b.redirect, chosen, at)
            self.acls.lines.append(f"acl {chosen} var(txn.cr_backend) -m str {name}")
            self.answer.extend(lines)
            self.needs_port = True
            return
        # everything is checked before a line is written: a refused backend leaves nothing behind
        if b.respond is not None:
            lines = [respond_line(b.respond, chosen, at)]
            self.acls.lines.append(f"acl {chosen} var(txn.cr_backend) -m str {name}")
            self.answer.extend(lines)
            return
        if b.split is not None:
            arms = split_arms(b.split, at)
            key = split_key(b.split, at, self.jwt)
            uses = [self.place(f"{name}_{k}", r, b, up, file, at) for k, (up, _) in enumerate(arms)]
            self.acls.lines.append(f"acl {chosen} var(txn.cr_backend) -m str {name}")
            seed = zlib.crc32(f"{b.split.salt}\x00{r.name}".encode()) & 0x7FFFFFFF
            if key is None:
                self.answer.append(f"http-request set-var(txn.cr_bucket) rand({BUCKETS}) if {chosen}")
            elif key == "src":
                self.answer.append(f"http-request set-var(txn.cr_bucket) src,xxh32({seed}),mod({BUCKETS}) if {chosen}")
            else:
                self.answer.append(f"http-request set-var(txn.cr_key) {word(key)} if {chosen}")
                self.answer.append(f"http-request set-var(txn.cr_bucket) var(txn.cr_key),xxh32({seed}),mod({BUCKETS}) "
                                   f"if {chosen} {{ var(txn.cr_key) -m len gt 0 }}")
                self.answer.append(f"http-request set-var(txn.cr_bucket) rand({BUCKETS}) "
                                   f"if {chosen} !{{ var(txn.cr_key) -m len gt 0 }}")
            for k, (_, upto) in enumerate(arms):
                last = k == len(arms) - 1
                cond = chosen + ("" if last else f" {{ var(txn.cr_bucket) -m int lt {upto} }}")
                self.use += [line.replace("%COND%", cond) for line in uses[k]]
            if b.split.kind != "random":
                self.notes.append(f"{at}: split by {b.split.by}: sticky per key with the same weights, "
                                  "but a key's arm is HAProxy's hash, not condroute's")
            return
        if b.upstream is None:
            raise ir.NotExported(at, "a backend without upstream, split or respond")
        use = self.place(name, r, b, b.upstream, file, at)
        self.acls.lines.append(f"acl {chosen} var(txn.cr_backend) -m str {name}")
        self.use += [line.replace("%COND%", chosen) for line in use]

    def place(self, name: str, r: model.Route, b: model.Backend, up: model.Upstream, file: str,
              at: ir.Where) -> list[str]:
        """The backend section(s) for ``up`` and their ``use_backend`` lines (``%COND%`` for the
        condition): with retries, a second section without them for the methods condroute does not
        retry (it retries idempotent methods only; HAProxy retries a failed connection for any)."""
        self.sections.append(self.section(name, r, b, up, file, at, b.retries))
        if not b.retries:
            return [f"use_backend {name} if %COND%"]
        self.sections.append(self.section(f"{name}_once", r, b, up, file, at, 0))
        return [f"use_backend {name}_once if %COND% !cr_idempotent", f"use_backend {name} if %COND%"]

    def section(self, name: str, r: model.Route, b: model.Backend, up: model.Upstream, file: str,
                at: ir.Where, retries: int) -> list[str]:
        s = [f"backend {name}", f"    # route {r.name!r}, backend {b.name!r} ({at}) -> {up.name!r}"]
        if b.timeout is not None:
            s.append(f"    timeout server {max(1, round(b.timeout * 1000))}ms")
        s.append(f"    retries {retries}")
        if retries:
            s.append("    retry-on conn-failure")
        s += ["    " + x for x in path_lines(r, b, up, at)]
        if b.host_rewrite is not None:
            s.append(f"    http-request set-header Host {word(lf(b.host_rewrite))}")
        elif not b.preserve_host:
            s.append(f"    http-request set-header Host {word(lf(up.authority))}")
        for h in b.remove_headers:
            s.append(f"    http-request del-header {word(h)}")
        for h, v in b.set_headers:
            s.append(f"    http-request set-header {word(h)} {header_value(v)}")
        for h, v in b.add_headers:
            s.append(f"    http-request add-header {word(h)} {header_value(v)}")
        s.append("    " + server_line(up, self.opts))
        return s

    # ------------------------------------------------------------------------------------- whole
    def run(self) -> Exported:
        for i, r in enumerate(self.rules.routes, 1):
            self.write_route(i, r)
        files = {}
        if self.uses_lua:
            files[LUA_NAME] = lua_text(self.rules.settings.trusted_proxies) + (self.jwt.lua() if self.jwt.used else "")
        return Exported(self.text(), files=files, refused=self.refused, notes=self.notes)

    @property
    def uses_lua(self) -> bool:
        return bool(self.rules.settings.trusted_proxies) or self.jwt.used

    def lua_path(self) -> str:
        w = self.opts.workdir
        return LUA_NAME if w in ("", ".") else os.path.join(os.path.abspath(w), LUA_NAME)

    def text(self) -> str:
        o, rules = self.opts, self.rules
        out = [f"# condroute export --to haproxy {os.path.basename(rules.file)} (HAProxy 2.6 or later)",
               "# Runs in the foreground (haproxy -db -f haproxy.cfg), unprivileged.",
               "global",
               "    expose-experimental-directives     # normalize-uri (path dot segments, //)",
               *([f"    lua-load {word(self.lua_path())}"] if self.uses_lua else []),
               "",
               "defaults",
               "    mode http",
               "    timeout connect 5s",
               "    timeout client 60s",
               f"    timeout server {DEFAULT_SERVER_TIMEOUT}",
               "    timeout http-request 30s",
               "    retries 0",
               "",
               "frontend condroute",
               f"    bind {bind_address(o.listen_host, o.listen_port)}"]
        f: list[str] = []
        if o.client_ip_header:
            h = o.client_ip_header.lower()
            f += ["# --verify: the client address comes from a header",
                  f"http-request set-src req.fhdr({h},-1) if {{ req.fhdr({h},-1) -m found }}",
                  f"http-request del-header {h}"]
        f += trusted_lines(rules.settings.trusted_proxies)
        if self.jwt.used:
            f += ["# jwt claims, and cookies/query parameters under a regex, read as condroute reads them (condroute.lua)",
                  "http-request lua.condroute_atoms"]
        f += ["# the path as condroute matches it: dot segments removed, // merged",
              "http-request set-var(txn.cr_rawpath) path",
              "http-request normalize-uri path-merge-slashes",
              "http-request normalize-uri path-strip-dot",
              "http-request normalize-uri path-strip-dotdot full",
              "http-request set-var(txn.cr_host) " + word("req.fhdr(host,-1),host_only,regsub('\\.+$',''),"
                                                          "regsub('^\\[(.*)\\]$','\\1')")]
        fetches = {k[0] for k in self.acls.by_key}
        if self.needs_port or fetches & {"var(txn.cr_port)", "var(txn.cr_authority)"}:
            f += ["# the port the client asked for (the Host header's, else http's 80) and the authority",
                  "http-request set-var(txn.cr_port) req.fhdr(host,-1),port_only",
                  "http-request set-var(txn.cr_port) int(80) unless { var(txn.cr_port) -m int gt 0 }"]
        if "var(txn.cr_authority)" in fetches:
            f += ["http-request set-var-fmt(txn.cr_authority) %[var(txn.cr_host)]",
                  "http-request set-var-fmt(txn.cr_authority) [%[var(txn.cr_host)]] if { var(txn.cr_host) -m sub : }",
                  "http-request set-var-fmt(txn.cr_authority) %[var(txn.cr_authority)]:%[var(txn.cr_port)] "
                  "unless { var(txn.cr_port) -m int eq 80 }"]
        acl_head = ["acl cr_routed var(txn.cr_route) -m found",
                    "acl cr_chosen var(txn.cr_backend) -m found",
                    "acl cr_idempotent method,upper -m str GET HEAD PUT DELETE OPTIONS TRACE",
                    "acl cr_badpath var(txn.cr_rawpath) -m reg -i -- '%2[ef]|%5c|\\\\' '(^|/)\\.\\.?;'"]
        f += acl_head + self.acls.lines
        f += ["# routes in file order: the first whose match holds owns the request"] + self.select
        f += ["# condroute refuses an owned path written with %2e, %2f, %5c, a backslash or '..;' (400)",
              "http-request deny deny_status 400 if cr_routed cr_badpath"]
        if self.reads_path:
            f += alt_reading(self.alt_owner)
        f += self.answer
        f.append(f"http-request return status 404 content-type text/plain string {word(NO_ROUTE)} if !cr_routed")
        f += self.use
        f.append("default_backend cr_none")
        out += ["    " + x for x in f]
        for sec in self.sections:
            out += [""] + sec
        out += ["", "backend cr_none",
                "    # not reached: every request is answered or sent on by the frontend",
                "    http-request return status 502 content-type text/plain string \"condroute: no backend\\n\""]
        return "\n".join(out) + "\n"


NO_ROUTE = "no route\n"


def alt_reading(owners: list[str]) -> list[str]:
    """engine.decide: a path with %2e/%2f/%5c, a backslash or a '..;' segment that no route owns is
    still refused (400) when a route would own it read as a server that decodes them would read it
    (decoded, backslashes as '/', '..;x' as '..', then normalised): so the path is read that way for
    a moment, every route's match is tried on it, and the normal path is put back."""
    decode = word("%[var(txn.cr_rawpath),regsub('%2[eE]','.','g'),regsub('%2[fF]','/','g'),"
                  "regsub('%5[cC]','/','g'),regsub('[\\\\]','/','g'),"
                  "regsub('(^|/)(\\.\\.?);[^/]*','\\1\\2','g')]")
    return (["# a refused path no route owns: would a route own it read decoded? (then 400, as condroute)",
             "acl cr_altread var(txn.cr_normpath) -m found",
             "acl cr_altowned var(txn.cr_alt) -m found",
             "http-request set-var(txn.cr_normpath) path if cr_badpath !cr_routed",
             f"http-request set-path {decode} if cr_altread",
             "http-request normalize-uri path-merge-slashes if cr_altread",
             "http-request normalize-uri path-strip-dot if cr_altread",
             "http-request normalize-uri path-strip-dotdot full if cr_altread"]
            + owners +
            ["http-request deny deny_status 400 if cr_altread cr_altowned",
             "http-request set-path %[var(txn.cr_normpath)] if cr_altread"])


def redirect_lines(r: model.Redirect, cond: str, at: ir.Where) -> list[str]:
    """An imported redirect (engine.redirect_location) as ``http-request redirect``: each part the
    redirect leaves out is the request's (the frontend is plain http: the request's scheme is http,
    its port the Host header's or 80), the default port of the scheme left out, the query kept
    unless the new path has its own."""
    if r.status not in (301, 302, 303, 307, 308):
        raise ir.NotExported(at, f"a redirect with status {r.status}: HAProxy redirects with 301, 302, 303, "
                                 "307 or 308 only")
    scheme = r.scheme or "http"
    if scheme not in ("http", "https"):
        scheme = "https" if scheme == "wss" else "http"
    out: list[str] = []
    host = (f"[{r.host}]" if ":" in r.host else lf(r.host)) if r.host is not None else "%[var(txn.cr_hostb)]"
    if r.host is None:
        out += [f"http-request set-var-fmt(txn.cr_hostb) %[var(txn.cr_host)] if {cond}",
                f"http-request set-var-fmt(txn.cr_hostb) [%[var(txn.cr_host)]] if {cond} {{ var(txn.cr_host) -m sub : }}"]
    default = 443 if scheme == "https" else 80
    if r.port is not None:
        ports = [("" if r.port == default else f":{r.port}", "")]
    elif r.port_from == "scheme":
        ports = [("", "")]
    else:       # the port the client asked for; http -> https also drops http's default port
        ports = [("", " { var(txn.cr_port) -m int 80" + (" 443 }" if scheme == "https" else " }")),
                 (":%[var(txn.cr_port)]", "")]
    path = "%[path]"
    if r.path is not None:
        path = rewrite_fmt(r.path, at, out, "txn.cr_rpath", cond)
        out.append(f"http-request set-var-fmt(txn.cr_rpath) {word(path)} if {cond}")
        out.append(f"http-request set-var-fmt(txn.cr_rpath) /%[var(txn.cr_rpath)] if {cond} "
                   "!{ var(txn.cr_rpath) -m beg / }")
        path = "%[var(txn.cr_rpath)]"
    queries = [("", "")] if r.path is not None and "?" in r.path.value else \
        [("?%[query]", " { query -m len gt 0 }"), ("", "")]
    for port, pcond in ports:
        for query, qcond in queries:
            loc = f"{scheme}://{host}{port}{path}{query}"
            out.append(f"http-request redirect location {word(loc)} code {r.status} if {cond}{pcond}{qcond}")
    return out


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def trusted_lines(nets) -> list[str]:
    """condroute's client address behind trusted proxies, by the Lua action of ``haproxy_lua``."""
    if not nets:
        return []
    return ["# settings.trusted_proxies: X-Forwarded-For is believed only from these peers (condroute.lua)",
            "http-request lua.condroute_client",
            "http-request set-src var(txn.cr_client) if { var(txn.cr_client) -m found }"]


def server_line(up: model.Upstream, opts: ExportOptions) -> str:
    mapped = (opts.addresses or {}).get(up.origin)
    if mapped is not None:
        return f"server {safe_name(up.name)} {bind_address(*mapped)}"
    line = f"server {safe_name(up.name)} {bind_address(up.host, up.port)}"
    if up.scheme == "https":
        line += " ssl verify required ca-file @system-ca"
        if not _is_ip(up.host):
            line += f" sni str({up.host}) verifyhost {up.host}"
    return line


def _is_ip(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        return False


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", s)[:60] or "upstream"


def respond_line(rp: model.Respond, cond: str, at: ir.Where) -> str:
    headers = list(dict((k.lower(), (k, v)) for k, v in rp.headers).values())   # later wins, as condroute's dict
    ct = next((v for k, v in headers if k.lower() == "content-type"), None)
    line = f"http-request return status {rp.status}"
    if ct is not None and not rp.body:
        raise ir.NotExported(at, "respond: a Content-Type without a body: HAProxy's return sends "
                                 "no Content-Type when there is no body")
    if "\x00" in rp.body:
        raise ir.NotExported(at, "respond: a body with a NUL character: HAProxy's return string ends there")
    if rp.body:
        line += f" content-type {word(ct or 'text/plain; charset=utf-8')} string {word(rp.body)}"
    for k, v in headers:
        if k.lower() in ("content-type", "content-length"):
            continue
        if not v:   # "" is a missing argument, and a value empty at run time leaves the field out
            raise ir.NotExported(at, f"respond header {k}: \"\": HAProxy's return does not send a header "
                                     "with an empty value")
        line += f" hdr {word(k)} {word(lf(v))}"
    return line + f" if {cond}"


def split_arms(split: model.Split, at: ir.Where) -> list[tuple[model.Upstream, int]]:
    """The arms that can be chosen, each with the upper end of its bucket range (of BUCKETS)."""
    arms = list(split.arms)
    if all(w <= 0 for _, w in arms):
        arms = [(u, 1.0) for u, _ in arms]
    arms = [(u, w) for u, w in arms if w > 0]
    total = sum(w for _, w in arms)
    out, cum = [], 0.0
    for u, w in arms:
        cum += w
        out.append((u, round(cum / total * BUCKETS)))
    out = [(u, b) for k, (u, b) in enumerate(out) if b > (out[k - 1][1] if k else 0)]
    if not out:
        raise ir.NotExported(at, "a split without an arm that can be chosen")
    return out


def split_key(split: model.Split, at: ir.Where, jwt: JwtAtoms) -> str | None:
    """The sample expression of a split's key; None: a fresh draw per request; "src": the client."""
    k = split.kind
    if k == "random":
        return None
    if k == "client_ip":
        return "src"
    if k == "jwt":
        return jwt.split_key(split.key, at)
    return fetch_of(ir.Atom(k, split.key, ir.Present(True), at)).replace("req.fhdr(" + split.key + ")",
                                                                          "req.fhdr(" + split.key + ",1)")


class HaproxyTarget(Target):
    name = "haproxy"
    config_name = "haproxy.cfg"

    def export(self, rules: model.Rules, opts: ExportOptions) -> Exported:
        p = toolbox.prepare(rules, self.name)
        return toolbox.merge(p, _Writer(p.rules, opts, self.name).run())

    def binary(self) -> tuple[str | None, str]:
        found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
                                                 if os.access(p, os.X_OK)), None)
        if found:
            return found, ""
        return None, ("haproxy is not installed (Debian/Ubuntu: apt-get install haproxy; the project's "
                      "set-up scripts install it)")

    def check(self, workdir: str) -> str | None:
        exe, why = self.binary()
        if exe is None:
            return why
        p = subprocess.run([exe, "-c", "-f", self.config_name], cwd=workdir, capture_output=True,
                           text=True, timeout=60)
        if p.returncode == 0:
            return None
        said = [x for x in (p.stderr + p.stdout).splitlines() if x.strip() and "[NOTICE]" not in x]
        return "\n".join(said) or f"haproxy -c exited with {p.returncode}"

    def start(self, workdir: str, opts: ExportOptions) -> subprocess.Popen:
        exe, why = self.binary()
        if exe is None:
            raise FileNotFoundError(why)
        with open(os.path.join(workdir, "haproxy.log"), "ab") as log:
            return subprocess.Popen([exe, "-db", "-f", self.config_name], cwd=workdir, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


TARGET = HaproxyTarget()
