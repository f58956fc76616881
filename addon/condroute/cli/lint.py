"""Static checks behind ``condroute validate``: rules that load but probably do not do what was meant.

Every check is conservative: it warns only when the problem is certain from the file alone
(a backend after an unconditional one can never be selected; a route whose match is provably
inside an earlier route's match can never own a request). Each warning is a located
:class:`~condroute.errors.Problem`, ``FILE:LINE:COLUMN``.
"""
from __future__ import annotations

import os

import re
from typing import Iterator

from .. import localfiles
from ..conditions.registry import KINDS
from ..localfiles import shown_name
from ..errors import Problem
from ..compile.runtime import PathPattern, Route, Rules
from ..load.yamlpos import Y, load_file


class _Where:
    """Positions of routes, backends and keys, from the YAML tree of a condroute-format file."""

    def __init__(self, rules: Rules, root: Y | None):
        self.rules = rules
        ours = rules.source_format == "condroute" and root is not None and isinstance(root.v, dict)
        self.root = root if ours else None
        self.route_nodes: list[Y | None] = [None] * len(rules.routes)
        self.backend_nodes: list[list[Y | None]] = [[None] * len(r.backends) for r in rules.routes]
        rn = self.root.v.get("routes") if self.root is not None else None
        if rn is not None and isinstance(rn.v, list) and len(rn.v) == len(rules.routes):
            for i, (node, route) in enumerate(zip(rn.v, rules.routes)):
                if not isinstance(node.v, dict) or node.line != route.line:
                    continue
                self.route_nodes[i] = node
                bn = node.v.get("backends")
                if bn is not None and isinstance(bn.v, list) and len(bn.v) == len(route.backends):
                    self.backend_nodes[i] = [b if isinstance(b.v, dict) and b.line == be.line else None
                                             for b, be in zip(bn.v, route.backends)]

    def route(self, i: int) -> tuple[int, int]:
        n = self.route_nodes[i]
        return (n.line, n.col) if n is not None else (self.rules.routes[i].line, 1)

    def backend(self, i: int, j: int) -> tuple[int, int]:
        n = self.backend_nodes[i][j]
        return (n.line, n.col) if n is not None else (self.rules.routes[i].backends[j].line, 1)

    def backend_key(self, i: int, j: int, *keys: str) -> tuple[int, int]:
        """Position of a nested value under a backend (e.g. split, weights), or of the backend itself."""
        n = self.backend_nodes[i][j]
        if n is None:
            return self.backend(i, j)
        for k in keys:
            if not isinstance(n.v, dict) or k not in n.v:
                break
            n = n.v[k]
        return n.line, n.col


# --------------------------------------------------------------------------------------------------
def _unconditional_shadows(rules: Rules, w: _Where) -> Iterator[Problem]:
    for i, route in enumerate(rules.routes):
        first = next((b for b in route.backends if b.unconditional), None)
        if first is None:
            continue
        f = route.file or rules.file
        after = False
        for j, b in enumerate(route.backends):
            if b is first:
                after = True
                continue
            if b.fallback:
                yield Problem(f, *w.backend(i, j),
                              f"fallback backend {b.name!r} of route {route.name!r} can never be selected: "
                              f"backend {first.name!r} (line {first.line}) has no `when` and always holds")
            elif after:
                yield Problem(f, *w.backend(i, j),
                              f"backend {b.name!r} of route {route.name!r} can never be selected: "
                              f"the earlier backend {first.name!r} (line {first.line}) has no `when` and always holds")


def _host_covered(outer: tuple[str, ...], h: str) -> bool:
    for o in outer:
        if o == "*" or o == h:
            return True
        if o.startswith("*.") and h != "*":
            suffix = o[1:]                         # ".example.com"
            if h.startswith("*."):
                if h[1:].endswith(suffix):         # *.a.example.com is inside *.example.com
                    return True
            elif h.endswith(suffix):
                return True
    return False


_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


def _path_covered(outer: PathPattern, inner: PathPattern | None) -> bool:
    """Does every path ``inner`` matches also match ``outer``? (False when unsure.)

    Reasoned on the path texts only, so it holds whatever the compiled form of a pattern is."""
    if inner is None:
        return False                               # any path, including "*": only a path-less route covers it
    if outer.matcher is not None or inner.matcher is not None:
        return outer.matcher is not None and inner.matcher is not None and outer.text == inner.text
    if outer.has_rest and not outer.params:
        base = outer.text[:-2]                     # "/api/*" -> "/api"; "/*" -> ""
        return inner.text == base or inner.text.startswith(base + "/")
    if not inner.params and not inner.has_rest:
        return outer.match(inner.text) is not None  # inner matches exactly one path: its text
    return _PARAM.sub("{}", outer.text) == _PARAM.sub("{}", inner.text)   # same template, other names


def route_covers(outer: Route, inner: Route) -> str | None:
    """Why ``outer`` owns every request ``inner`` could match, or None when that is not certain."""
    if outer.cond is not None:
        return None
    if outer.methods is not None and (inner.methods is None or not inner.methods <= outer.methods):
        return None
    if outer.hosts and not (inner.hosts and all(_host_covered(outer.hosts, h) for h in inner.hosts)):
        return None
    if outer.path is not None and not _path_covered(outer.path, inner.path):
        return None
    if outer.methods is None and not outer.hosts and outer.path is None:
        return "it has no match and owns every request"
    parts = []
    if outer.hosts:
        parts.append("host")
    if outer.methods is not None:
        parts.append("methods")
    if outer.path is not None:
        parts.append("path")
    return f"its match ({' and '.join(parts)}) covers everything this route matches"


def _shadowed_routes(rules: Rules, w: _Where) -> Iterator[Problem]:
    for i, route in enumerate(rules.routes):
        for earlier in rules.routes[:i]:
            why = route_covers(earlier, route)
            if why is not None:
                where = (f"{os.path.basename(earlier.file or rules.file)}:{earlier.line}"
                         if (earlier.file or rules.file) != (route.file or rules.file) else f"line {earlier.line}")
                yield Problem(route.file or rules.file, *w.route(i),
                              f"route {route.name!r} can never own a request: the earlier route {earlier.name!r} "
                              f"({where}) comes first and {why}")
                break


def _zero_splits(rules: Rules, w: _Where) -> Iterator[Problem]:
    already = {(p.line, p.col) for p in rules.warnings}
    for i, route in enumerate(rules.routes):
        for j, b in enumerate(route.backends):
            if b.split is not None and b.split.arms and all(wt <= 0 for _, wt in b.split.arms):
                pos = w.backend_key(i, j, "split", "weights")
                if pos not in already:
                    yield Problem(route.file or rules.file, *pos, f"every weight of the split of backend {b.name!r} is 0: "
                                  "it picks among its upstreams evenly")


def _mirror_at(w: _Where, i: int, j: int, k: int, key: str) -> tuple[int, int]:
    """Position of mirror ``k`` of a backend (its ``key`` when it has one), or of the backend."""
    n = w.backend_nodes[i][j]
    if n is None or not isinstance(n.v, dict) or "mirror" not in n.v:
        return w.backend(i, j)
    n = n.v["mirror"]
    if isinstance(n.v, list) and k < len(n.v):
        n = n.v[k]
    if isinstance(n.v, dict) and key in n.v:
        n = n.v[key]
    return n.line, n.col


def _mirror_misuse(rules: Rules, w: _Where) -> Iterator[Problem]:
    """A mirror to where the request itself goes (same scheme, host and port), or with percent 0."""
    for i, route in enumerate(rules.routes):
        for j, b in enumerate(route.backends):
            if not b.mirrors:
                continue
            goes = {b.upstream.origin} if b.upstream is not None else set()
            if b.split is not None:
                goes.update(up.origin for up, _ in b.split.arms)
            for k, m in enumerate(b.mirrors):
                if m.upstream.origin in goes:
                    yield Problem(route.file or rules.file, *_mirror_at(w, i, j, k, "upstream"),
                                  f"backend {b.name!r} mirrors to {m.upstream.name!r} ({m.upstream.origin}), where it "
                                  "also forwards: the copy goes where the request goes: every request reaches it twice")
                if m.percent <= 0:
                    yield Problem(route.file or rules.file, *_mirror_at(w, i, j, k, "percent"),
                                  f"the mirror of backend {b.name!r} to {m.upstream.name!r} has percent 0: it never "
                                  "mirrors")


def _sni_misuse(rules: Rules, w: _Where) -> Iterator[Problem]:
    """An sni that is the upstream's own host name: mitmproxy sends that name anyway."""
    for i, route in enumerate(rules.routes):
        for j, b in enumerate(route.backends):
            if b.sni is None or b.sni == "preserve":
                continue
            ups = [b.upstream] if b.upstream is not None else []
            if b.split is not None:
                ups += [up for up, _ in b.split.arms]
            ups = [up for up in ups if up.scheme == "https"]
            if ups and all(up.host.lower().rstrip(".") == b.sni for up in ups):
                yield Problem(route.file or rules.file, *w.backend_key(i, j, "sni"),
                              f"backend {b.name!r}: sni {b.sni} is its upstream's own host name, which mitmproxy "
                              "sends anyway: sni is for an upstream addressed by IP or by another name")


def _every_backend_off(rules: Rules, w: _Where) -> Iterator[Problem]:
    """A route that is on while every backend of it is off (enabled: false): it still owns its
    requests, and none of them is served by it nor goes on to a later route. (One backend off is a
    deliberate choice, and so is an off route: neither is warned about.)"""
    for i, route in enumerate(rules.routes):
        if route.enabled and route.backends and not any(b.enabled for b in route.backends):
            if (route.on_no_match or rules.settings.on_no_match) == "error":
                then = "answered 502 (on_no_match: error)"
            else:
                then = "passed through unchanged (on_no_match: passthrough)"
            yield Problem(route.file or rules.file, *w.route(i),
                          f"every backend of route {route.name!r} is enabled: false, but the route is on: it still "
                          f"owns its requests, and they are {then} instead of going on to later routes; to let "
                          f"later routes have them, write enabled: false on the route")


def _servable(folder: str, limit: int = 10_000) -> bool | None:
    """Whether a folder holds a file Map Local would serve (not hidden, not in a hidden folder);
    None when ``limit`` entries were looked at without finding one (no warning then)."""
    seen = 0
    for _top, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if not f.startswith("."):
                return True
        seen += len(dirs) + len(files)
        if seen > limit:
            return None
    return False


def _local_misuse(rules: Rules, w: _Where) -> Iterator[Problem]:
    """Map Local: a respond.file larger than condroute serves (it is answered 500), a respond.dir
    with no file condroute would serve (every request is answered 404)."""
    for i, route in enumerate(rules.routes):
        for j, b in enumerate(route.backends):
            r = b.respond
            if r is None or not (r.file or r.dir):
                continue
            at = w.backend_key(i, j, "respond", "file" if r.file else "dir")
            name = shown_name(r, None)
            if r.file:
                try:
                    size = os.stat(r.file).st_size
                except OSError:
                    continue
                if size > localfiles.MAX_FILE:
                    yield Problem(route.file or rules.file, *at,
                                  f"backend {b.name!r}: respond.file {name} is {size / (1 << 20):.1f} MiB: condroute "
                                  f"serves files up to {localfiles.MAX_FILE >> 20} MiB (the answer is held in memory) "
                                  "and answers 500 for this one")
            elif _servable(r.dir) is False:
                yield Problem(route.file or rules.file, *at,
                              f"backend {b.name!r}: respond.dir {name} has no file condroute would serve (hidden "
                              "files and folders, whose names start with '.', are not served): every request gets 404")


def _unused_upstreams(rules: Rules, w: _Where) -> Iterator[Problem]:
    used: set[str] = set()
    for route in rules.routes:
        for b in route.backends:
            if b.upstream is not None:
                used.add(b.upstream.name)
            if b.split is not None:
                used.update(up.name for up, _ in b.split.arms)
            used.update(m.upstream.name for m in b.mirrors)
    un = w.root.v.get("upstreams") if w.root is not None else None
    for name in rules.upstreams:
        if name in used:
            continue
        line, col = (1, 1)
        if un is not None and isinstance(un.v, dict) and un.key_pos and name in un.key_pos:
            line, col = un.key_pos[name]
        yield Problem(rules.file, line, col, f"upstream {name!r} is defined but no backend uses it")


# -- names spelled with different case ------------------------------------------------------------
def _cond_names(node: Y, out: list[tuple[str, str, int, int]]) -> None:
    if not isinstance(node.v, dict):
        return
    for k, sub in node.v.items():
        if k in ("header", "cookie") and isinstance(sub.v, dict):
            for name in sub.v:
                line, col = (sub.key_pos or {}).get(name, (sub.line, sub.col))
                out.append((k, name, line, col))
        elif k in KINDS and KINDS[k].nests:
            for item in sub.v if isinstance(sub.v, list) else [sub]:
                _cond_names(item, out)


def _keyed(kind_name: Y, out: list[tuple[str, str, int, int]]) -> None:
    """A `KIND:NAME` string (split.by, settings.jwt.from)."""
    if isinstance(kind_name.v, str) and ":" in kind_name.v:
        k, _, name = kind_name.v.partition(":")
        if k in ("header", "cookie") and name:
            out.append((k, name, kind_name.line, kind_name.col))


def _name_uses(root: Y) -> list[tuple[str, str, int, int]]:
    out: list[tuple[str, str, int, int]] = []
    settings = root.v.get("settings")
    if settings is not None and isinstance(settings.v, dict):
        jwt = settings.v.get("jwt")
        if jwt is not None and isinstance(jwt.v, dict) and "from" in jwt.v:
            _keyed(jwt.v["from"], out)
    routes = root.v.get("routes")
    for rn in routes.v if routes is not None and isinstance(routes.v, list) else ():
        if not isinstance(rn.v, dict):
            continue
        if "match" in rn.v:
            _cond_names(rn.v["match"], out)
        bl = rn.v.get("backends")
        for bn in bl.v if bl is not None and isinstance(bl.v, list) else ():
            if not isinstance(bn.v, dict):
                continue
            if "when" in bn.v:
                _cond_names(bn.v["when"], out)
            sh = bn.v.get("set_headers")
            if sh is not None and isinstance(sh.v, dict):
                for name in sh.v:
                    out.append(("header", name, *(sh.key_pos or {}).get(name, (sh.line, sh.col))))
            rh = bn.v.get("remove_headers")
            if rh is not None:
                for n in rh.v if isinstance(rh.v, list) else [rh]:
                    if n.text:
                        out.append(("header", n.text, n.line, n.col))
            sp = bn.v.get("split")
            if sp is not None and isinstance(sp.v, dict) and "by" in sp.v:
                _keyed(sp.v["by"], out)
    return out


def _case_mismatches(rules: Rules, w: _Where) -> Iterator[Problem]:
    if w.root is None:
        return
    first: dict[tuple[str, str], tuple[str, int]] = {}
    reported: set[tuple[str, str]] = set()
    for kind, name, line, col in sorted(_name_uses(w.root), key=lambda t: (t[2], t[3])):
        key = (kind, name.lower())
        if key not in first:
            first[key] = (name, line)
            continue
        spelled, at = first[key]
        if name == spelled or (kind, name) in reported:
            continue
        reported.add((kind, name))
        if kind == "header":
            msg = (f"header name {name!r} is spelled {spelled!r} at line {at}: header names ignore case, so both "
                   "mean the same header, but one spelling is easier to read and search for")
        else:
            msg = (f"cookie name {name!r} differs only in case from {spelled!r} at line {at}: cookie names are "
                   "case-sensitive, so these are two different cookies")
        yield Problem(rules.file, line, col, msg)


def _fault_at(w: _Where, i: int, j: int, part: str, key: str) -> tuple[int, int]:
    """Position in a backend's fault of ``part`` (delay, abort): its percent (its own, else the
    fault's shared one) for ``key`` "percent", else its value (the seconds, the status)."""
    n = w.backend_nodes[i][j]
    if n is None or not isinstance(n.v, dict) or "fault" not in n.v:
        return w.backend(i, j)
    f = n.v["fault"]
    p = f.v.get(part) if isinstance(f.v, dict) else None
    if p is None:
        return f.line, f.col
    if key == "percent":
        if isinstance(p.v, dict) and "percent" in p.v:
            p = p.v["percent"]
        elif "percent" in f.v:
            p = f.v["percent"]
    elif isinstance(p.v, dict):
        p = p.v.get("seconds" if part == "delay" else "status", p)
    return p.line, p.col


def _fault_misuse(rules: Rules, w: _Where) -> Iterator[Problem]:
    """A fault part with percent 0 (it never fires); a delay at least the backend's timeout (not
    counted by it, as in Envoy: no 504 comes of it); an abort with a status below 400 (a success
    with the body "fault filter abort"); an abort whose status the backend's retry_on would retry
    (an injected abort is never retried: it comes before the upstream)."""
    for i, route in enumerate(rules.routes):
        for j, b in enumerate(route.backends):
            f = b.fault
            if f is None:
                continue
            where = route.file or rules.file
            name = b.name
            never = [part for part, v, pct in (("delay", f.delay, f.delay_percent), ("abort", f.abort, f.abort_percent))
                     if v is not None and pct <= 0]
            if never and len(never) == (f.delay is not None) + (f.abort is not None):
                yield Problem(where, *_fault_at(w, i, j, never[0], "percent"),
                              f"the fault of backend {name!r} has percent 0: it never fires")
            elif never:
                what = "delays" if never[0] == "delay" else "aborts"
                yield Problem(where, *_fault_at(w, i, j, never[0], "percent"),
                              f"the fault {never[0]} of backend {name!r} has percent 0: it never {what} a request")
            if f.delay is not None and b.timeout and f.delay >= b.timeout and f.delay_percent > 0:
                yield Problem(where, *_fault_at(w, i, j, "delay", "seconds"),
                              f"the fault delay of backend {name!r} ({f.delay:g}s) is not counted by its timeout "
                              f"({b.timeout:g}s): the delay comes before the upstream is asked (as in Envoy), so no "
                              f"504 comes of it; to see a timeout, give the client a timeout shorter than the delay")
            if f.abort is not None and f.abort_percent > 0:
                if f.abort < 400:
                    yield Problem(where, *_fault_at(w, i, j, "abort", "status"),
                                  f"the fault abort of backend {name!r} answers {f.abort}, not an error status: "
                                  f"clients take it as a success with the body 'fault filter abort'")
                retried = ("5xx" in b.retry_on and f.abort >= 500) or \
                          ("gateway-error" in b.retry_on and f.abort in (502, 503, 504))
                if retried and b.respond is None:
                    yield Problem(where, *_fault_at(w, i, j, "abort", "status"),
                                  f"backend {name!r} retries {f.abort} (retry_on), but an injected abort is never "
                                  f"retried: it is answered before the upstream is asked (as in Envoy); the client "
                                  f"gets the {f.abort}")


_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_RESPONSE_RETRY_ON = frozenset({"reset", "5xx", "gateway-error"})


def _retry_misuse(rules: Rules, w: _Where) -> Iterator[Problem]:
    """retry_on and failover: false where they cannot do what they say (mitm/retry.py): retry_on on a
    route that only matches methods that are never retried; retry_on beyond connect-failure with
    retries: 0 and nothing to fail over to (condroute sends the request itself for nothing); retry_on
    reset/5xx/gateway-error with throttle (left to mitmproxy: connection failures only); and
    failover: false on the only backend of a route without a fallback (nothing could fail over)."""
    for i, route in enumerate(rules.routes):
        f = route.file or rules.file
        alone = len(route.backends) == 1        # (a fallback is one of them)
        for j, b in enumerate(route.backends):
            explicit = b.retry_on != frozenset({"connect-failure"})
            if explicit and route.methods is not None and not (route.methods & _IDEMPOTENT):
                yield Problem(f, *w.backend_key(i, j, "retry_on"),
                              f"backend {b.name!r}: retry_on never applies: route {route.name!r} matches only "
                              f"{', '.join(sorted(route.methods))}, and only idempotent methods (GET, HEAD, OPTIONS, "
                              "TRACE, PUT, DELETE) are retried")
                continue
            if explicit and not b.retries and not b.retry_on.isdisjoint(_RESPONSE_RETRY_ON) and (alone or not b.failover):
                yield Problem(f, *w.backend_key(i, j, "retry_on"),
                              f"backend {b.name!r}: retry_on {', '.join(sorted(b.retry_on))} with retries: 0 and "
                              f"nothing to fail over to: no request is ever sent again; set retries")
            if explicit and b.throttle is not None and not b.retry_on.isdisjoint(_RESPONSE_RETRY_ON):
                yield Problem(f, *w.backend_key(i, j, "retry_on"),
                              f"backend {b.name!r}: with throttle, only connection failures are retried: a "
                              f"throttled response is paced by the relay mitmproxy connects through, so condroute "
                              f"does not send the request itself to retry a reset or a 5xx")
            if not b.failover and alone:
                yield Problem(f, *w.backend_key(i, j, "failover"),
                              f"backend {b.name!r}: failover: false changes nothing: route {route.name!r} has no "
                              "other backend and no fallback to fail over to")


CHECKS = (_unconditional_shadows, _shadowed_routes, _zero_splits, _case_mismatches, _unused_upstreams, _every_backend_off,
          _mirror_misuse, _sni_misuse, _fault_misuse, _retry_misuse, _local_misuse)


def lint(rules: Rules, root: Y | None = None) -> list[Problem]:
    """Warnings for loaded ``rules``. ``root`` is the file's YAML tree (read again when not given)."""
    if root is None and rules.source_format == "condroute":
        try:
            root, _ = load_file(rules.file)
        except Exception:   # the file changed or vanished since it loaded: warn without columns
            root = None
    w = _Where(rules, root)
    out: list[Problem] = []
    for check in CHECKS:
        out.extend(check(rules, w))
    out.sort(key=lambda p: (p.line, p.col))
    return out
