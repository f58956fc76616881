"""The nginx exporter's locations: one internal location per backend (``/_condroute/LOC``) that
forwards (``proxy_pass`` with the forwarded path in a variable, ``proxy_set_header``, timeouts,
retries, ``mirror``), answers (``return``) or redirects, and the maps its path rewrites and splits
need."""
from __future__ import annotations

from .. import model
from .ir import NotExported, Where, where_line
from .nginx_match import esc
from .nginx_parts import HEADER_NAME, OWN_RESPONSE_HEADERS, PREFIX, Config, c, q, qv


def _ms(seconds: float) -> str:
    return f"{max(1, int(round(seconds * 1000)))}ms"


def _rewritten(cfg: Config, rw: model.PathRewrite, at: Where) -> tuple[str, bool]:
    """The request path after an imported rewrite, as an nginx string, and whether it may hold a
    '.' or '..' segment."""
    v = cfg.var("rw")
    if rw.kind == "full":
        return qv(rw.value)[1:-1], True
    if rw.kind == "segments":
        p, r = rw.prefix.rstrip("/"), rw.value.rstrip("/")
        cfg.maps.append("\n".join([
            f"map $cr_path {v} {{   # {at} rewrite {c(rw.prefix or '/')} -> {c(rw.value or '/')} by segment",
            f"    {q('~^' + esc(p) + '$')}  {qv(r or '/')};",
            f"    {q('~^' + esc(p) + '/(.*)$')}  {qv(r + '/')[:-1]}$1\";",
            "    default $cr_path;", "}"]))
        return v, False
    if rw.kind == "prefix":
        cfg.maps.append("\n".join([
            f"map $cr_path {v} {{   # {at} rewrite prefix {c(rw.prefix)} -> {c(rw.value)}",
            f"    {q('~(?s)^.{%d}(.*)$' % len(rw.prefix))}  {qv(rw.value)[:-1]}$1\";",
            f"    default {qv(rw.value)};", "}"]))
        return v, True
    fn = cfg.njs.rewrite(rw.pattern, rw.value, at)     # replace every match: njs
    cfg.js_sets[f"$cr_{fn}"] = fn
    return f"${{cr_{fn}}}", True


def _slash(cfg: Config, text: str, at: Where) -> str:
    """``text`` with a leading '/' when it has none (an origin-form path always starts with one)."""
    if text.startswith("/") or text.startswith("${cr_path}") or text == "$cr_path":
        return text
    v = cfg.var("fw")
    cfg.maps.append(f'map "{text}" {v} {{   # {at} a path always starts with /\n    "~^/"  "{text}";\n'
                    f'    default "/{text}";\n}}')
    return v


def _template(cfg: Config, b: model.Backend, params: dict[str, str], at: Where) -> tuple[str, bool]:
    """The forwarded path (without base path and query) as an nginx string, and whether it may hold
    a '.' or '..' segment (then the location refuses it, as condroute)."""
    if b.rewrite is not None:
        text, risky = _rewritten(cfg, b.rewrite, at)
        return _slash(cfg, text, at), risky
    if b.path is None:
        return "$cr_path", False
    out, risky = [], False
    for is_ph, s in b.path.parts:
        if not is_ph:
            out.append(qv(s)[1:-1])
        elif s == "path":
            out.append("${cr_path}")
        else:
            var = params.get(s)
            out.append("${" + var[1:] + "}" if var else "")
            risky = True
    return _slash(cfg, "".join(out), at), risky


def _redirect(cfg: Config, b: model.Backend, loc: str, at: Where) -> str:
    """An imported redirect: ``return 3xx URL`` built as engine.redirect_location builds it (this
    server listens on plain HTTP: the request's scheme is http)."""
    rd = b.redirect
    assert rd is not None
    if rd.status not in (301, 302, 303, 307, 308):
        raise NotExported(at, f"a redirect with status {rd.status}: nginx redirects with 301, 302, 303, 307 or 308 only")
    scheme = rd.scheme or "http"
    default = 443 if scheme == "https" else 80
    host = ("$host" if rd.host is None else
            qv(f"[{rd.host}]" if ":" in rd.host else rd.host)[1:-1])
    if rd.port is not None:
        port = "" if rd.port == default else f":{rd.port}"
    elif rd.port_from == "scheme":
        port = ""
    else:               # the port the client asked for; http -> https drops :80
        port = cfg.var("rport")
        quiet = ["80", "443"] if scheme == "https" else ["80"]
        cfg.maps.append(f"map $cr_port {port} {{   # {at} the redirect's port\n"
                        + "".join(f'    {p} "";\n' for p in quiet) + '    default ":$cr_port";\n}')
    query = "$is_args$args"
    path = "$cr_path"
    if rd.path is not None:
        text, _ = _rewritten(cfg, rd.path, at)
        path = _slash(cfg, text, at)
        if "?" in rd.path.value:
            if rd.path.kind in ("regex", "prefix"):
                raise NotExported(at, "a redirect whose rewritten path may or may not hold '?': not exported to nginx")
            query = ""
    return "\n".join([f"location = {PREFIX}{loc} {{   # {at} {c(b.name)}: redirect {rd.status}", "    internal;",
                      f'    return {rd.status} "{scheme}://{host}{port}{path}{query}";', "}"])


def _headers(b: model.Backend, authority: str, strip: tuple[str, ...], at: Where) -> list[str]:
    """The proxy_set_header lines of backend ``b``: Host, removed, set and added headers."""
    lines = []
    sets = {k.lower(): (k, v) for k, v in b.set_headers}
    host = sets.pop("host", None)
    if host is not None:
        lines.append(f"    proxy_set_header Host {qv(host[1])};")
    elif b.host_rewrite is not None:
        lines.append(f"    proxy_set_header Host {qv(b.host_rewrite)};")
    elif b.preserve_host:
        lines.append("    proxy_set_header Host $http_host;")
    else:
        lines.append(f"    proxy_set_header Host {authority if authority.startswith(('$', chr(34))) else q(authority)};")
    removed = list(dict.fromkeys(n.lower() for n in b.remove_headers + strip))
    for name in removed:
        if name in sets or name == "host":
            continue
        if not HEADER_NAME.match(name):
            raise NotExported(at, f"remove_headers {name!r}: not a header name nginx passes on")
        lines.append(f'    proxy_set_header {q(name)} "";')
    for k, v in sets.values():
        if v == "":
            raise NotExported(at, f"set_headers {k}: \"\": nginx does not send a header set to an empty value")
        if not HEADER_NAME.match(k):
            raise NotExported(at, f"set_headers {k!r}: not a header name nginx sends")
        lines.append(f"    proxy_set_header {q(k)} {qv(v)};")
    for k, v in b.add_headers:
        if k.lower() in sets or k.lower() in removed or not HEADER_NAME.match(k) or v == "":
            raise NotExported(at, f"add_headers {k}: also set or removed, empty, or not a header name nginx sends")
        lines.append(f"    proxy_set_header {q(k)} $http_{k.lower().replace('-', '_')};   # the client's, then added")
        lines.append(f"    proxy_set_header {q(k)} {qv(v)};")
    return lines


def _respond(cfg: Config, b: model.Backend, loc: str, at: Where) -> str:
    rs = b.respond
    assert rs is not None
    lines = [f"location = {PREFIX}{loc} {{   # {at} {c(b.name)}: respond {rs.status}", "    internal;"]
    ctype = None
    location = None
    for k, v in rs.headers:
        low = k.lower()
        if low == "content-type":
            ctype = v
        elif low == "location" and 300 <= rs.status < 400:
            location = v
        elif low in OWN_RESPONSE_HEADERS or not HEADER_NAME.match(k):
            raise NotExported(at, f"respond header {k}: nginx writes this header itself")
        elif not v:
            raise NotExported(at, f"respond header {k}: \"\": nginx's add_header does not send an empty value")
        else:
            lines.append(f"    add_header {q(k)} {qv(v)} always;")
    if rs.status in (301, 302, 303, 307, 308):
        if rs.body or location is None:
            raise NotExported(at, f"respond {rs.status}: nginx answers {rs.status} only as a redirect (a Location, no body)")
        lines.append(f"    return {rs.status} {qv(location)};")
    else:
        if location is not None:
            lines.append(f"    add_header Location {qv(location)} always;")
        if rs.status < 200 or rs.status > 599 or (rs.status in (204, 304) and rs.body):
            raise NotExported(at, f"respond {rs.status}: nginx cannot answer that status with a body")
        if ctype is not None:
            lines.append(f"    default_type {q(ctype)};")
        # an empty text would make nginx answer its own error page for a status >= 400
        lines.append(f"    return {rs.status} {qv(rs.body) if rs.body else chr(34) + '${cr_empty}' + chr(34)};")
    lines.append("}")
    return "\n".join(lines)


def backend_location(cfg: Config, rules: model.Rules, r: model.Route, b: model.Backend, loc: str,
                     params: dict[str, str], file: str, strip: tuple[str, ...] = ()) -> None:
    """The internal location of backend ``b`` (``/_condroute/LOC``), added to ``cfg``; raises
    NotExported for what it cannot write."""
    at = where_line(file, b.line)
    if b.respond is not None:
        cfg.locations.append(_respond(cfg, b, loc, at))
        return
    if b.redirect is not None:
        cfg.locations.append(_redirect(cfg, b, loc, at))
        return
    path, risky = _template(cfg, b, params, at)
    query = "$is_args$args"
    if b.path is not None and b.rewrite is None and "?" in b.path.text:
        query = "${cr_ampargs}"
        if not any("cr_ampargs" in m for m in cfg.maps):
            cfg.maps.append('map $args $cr_ampargs { "" ""; default "&$args"; }')
    lines = [f"location = {PREFIX}{loc} {{   # {at} route {c(r.name)}, backend {c(b.name)}", "    internal;"]
    retries = max(0, int(b.retries or 0))
    if b.split is not None:
        sp = b.split
        arms = [(up, w) for up, w in sp.arms if w > 0] or [(up, 1.0) for up, _ in sp.arms]
        if not arms:
            raise NotExported(at, "a split without arms")
        key = _split_key(cfg, sp, at)
        sv = cfg.var("split")
        total = sum(w for _, w in arms)
        body = []
        for k, (_, w) in enumerate(arms):
            if k == len(arms) - 1:
                body.append(f"    *  {k};")
            else:     # rounded down to nginx's 0.01 %: the last arm takes the rest
                body.append(f"    {int(w / total * 10000) / 100:g}%  {k};")
        cfg.maps.append(f"split_clients {q(key)} {sv} {{   # {at} split by {c(sp.by)}: {', '.join(f'{c(u.name)} {w:g}' for u, w in arms)}\n"
                        + "\n".join(body) + "\n}")
        schemes, groups, hosts, bases, snis = [], [], [], [], []
        for up, _ in arms:
            sch, g = cfg.upstream(up, retries)
            schemes.append(sch)
            groups.append(g)
            hosts.append(up.authority)
            bases.append(up.base_path)
            snis.append(up.host)
        gv, hv, bv = sv + "_up", sv + "_host", sv + "_base"
        arm_maps = [(gv, groups), (hv, hosts), (bv, bases)]
        if len(set(schemes)) == 1:
            scheme = schemes[0]
        else:
            scheme = sv + "_scheme"
            arm_maps.append((scheme, schemes))
        sni = None
        if "https" in schemes:
            sni = sv + "_sni"
            arm_maps.append((sni, snis))
        for v, vals in arm_maps:
            cfg.maps.append(f"map {sv} {v} {{\n" + "\n".join(f"    {k}  {qv(x)};" for k, x in enumerate(vals)) + "\n}")
        group, authority, base = gv, hv, bv
    else:
        up = b.upstream
        if up is None:
            raise NotExported(at, "a backend without an upstream")
        scheme, group = cfg.upstream(up, retries)
        authority, base = qv(up.authority), qv(up.base_path)[1:-1]
        sni = up.host if scheme == "https" else None
    fwd, fwdp = f"$cr_fwd_{loc}", f"$cr_fwdp_{loc}"
    lines.append(f'    set {fwdp} "{path}";')
    if risky:
        lines.append(f'    if ({fwdp} ~ "(?:^|/)\\\\.\\\\.?(?:;[^/]*)?(?:/|$)") {{ return 400 "condroute: the path would leave '
                     "the backend's path\\n\"; }")
    lines.append(f'    set {fwd} "{base}${{{fwdp[1:]}}}";')
    lines.append(f"    proxy_pass {scheme}://{group}{fwd}{query};")
    if sni:
        lines += ["    proxy_ssl_server_name on;", f"    proxy_ssl_name {sni if sni.startswith('$') else q(sni)};"]
    header_lines = _headers(b, authority, strip, at)
    lines += header_lines
    mirrors = []
    for k, mi in enumerate(b.mirrors, 1):
        if mi.percent <= 0:
            continue
        mloc = f"{loc}_mirror{k}"
        if not mirrors:
            lines.insert(2, "    set $cr_routed 1;   # (seen by the mirror's subrequest, which shares the variables)")
        lines.append(f"    mirror {PREFIX}{mloc};")
        mirrors.append(_mirror(cfg, b, mi, mloc, fwdp, query, header_lines, at))
    if b.timeout:
        t = _ms(b.timeout)
        lines += [f"    proxy_connect_timeout {t};", f"    proxy_send_timeout {t};", f"    proxy_read_timeout {t};"]
    if retries:
        lines += ["    proxy_next_upstream error;   # idempotent methods only (nginx's default)",
                  f"    proxy_next_upstream_tries {retries + 1};"]
    else:
        lines.append("    proxy_next_upstream off;")
    lines.append("}")
    cfg.locations.append("\n".join(lines))
    cfg.locations.extend(mirrors)


def _mirror(cfg: Config, b: model.Backend, mi: model.Mirror, mloc: str, fwdp: str, query: str,
            header_lines: list[str], at: Where) -> str:
    """The location a mirror's copy is sent from (its answer is discarded by nginx's ``mirror``)."""
    scheme, group = cfg.upstream(mi.upstream, 0)
    lines = [f"location = {PREFIX}{mloc} {{   # {at} {c(b.name)}: a copy to {c(mi.upstream.name)} ({mi.percent:g} %)",
             "    internal;"]
    if mi.percent < 100:
        dv = cfg.var("draw")
        cfg.maps.append(f'split_clients "$request_id" {dv} {{   # {at} mirror {mi.percent:g} %\n'
                        f"    {int(mi.percent * 100) / 100:g}%  1;\n    *  0;\n}}")
        lines.append(f"    if ({dv} = 0) {{ return 204; }}")
    lines.append(f"    proxy_pass {scheme}://{group}{qv(mi.upstream.base_path)[1:-1]}{fwdp}{query};")
    if scheme == "https":
        lines += ["    proxy_ssl_server_name on;", f"    proxy_ssl_name {q(mi.upstream.host)};"]
    for ln in header_lines:
        if ln.startswith("    proxy_set_header Host ") and b.host_rewrite is None and not b.preserve_host \
                and not any(k.lower() == "host" for k, _ in b.set_headers):
            ln = f"    proxy_set_header Host {q(mi.upstream.authority)};"
        lines.append(ln)
    lines += ["    proxy_next_upstream off;", "}"]
    return "\n".join(lines)


def _split_key(cfg: Config, sp: model.Split, at: Where) -> str:
    if sp.kind == "random":
        return "$request_id"
    if sp.kind == "cookie":
        src = cfg.cookie_value(sp.key)
    elif sp.kind == "header":
        if not HEADER_NAME.match(sp.key):
            raise NotExported(at, f"split by header {sp.key!r}: not a header name nginx reads")
        src = "$http_" + sp.key.lower().replace("-", "_")
    elif sp.kind == "query":
        src = cfg.query_value(sp.key)
    elif sp.kind == "client_ip":
        src = cfg.client_ip_source(at)
    else:
        cfg.js_sets["$cr_jwtkey"] = cfg.njs.split_claim(sp.key, at)
        src = "$cr_jwtkey"
    kv = cfg.var("key")
    cfg.maps.append(f'map {src} {kv} {{   # {at} the split key; missing: a random pick per request\n'
                    f'    "" $request_id;\n    default "k{src}";\n}}')
    return kv

