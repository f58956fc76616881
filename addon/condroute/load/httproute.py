"""Gateway API HTTPRoute documents (``gateway.networking.k8s.io/v1``, ``v1beta1``) → model Routes.

The engine is first-match; the Gateway API is not (a rule's place in the file is the last
tie-breaker). So every (HTTPRoute, rule, match) becomes one condroute Route, and the list is emitted
already in the specification's precedence order:

1. **hostname groups**, as Envoy-based gateways (Istio, Envoy Gateway, Contour) build virtual hosts:
   a request sees only the HTTPRoutes of the most specific hostname that matches its host (exact
   names first, then wildcards longest first, then HTTPRoutes without hostnames), and gets 404 when
   none of *those* rules matches — each group ends in a generated 404 route. (The specification's
   text can also be read as falling through to less specific hostnames, as Traefik does; a load
   warning names every hostname where the two readings differ.)
2. inside a group, per match: Exact path, then the longest PathPrefix (trailing ``/`` not counted),
   then RegularExpression (Istio's ranking; the specification leaves regex implementation-specific),
   then a method match, then most header matches, then most query matches, then across HTTPRoutes
   the oldest ``creationTimestamp`` (missing: after every present one) and ``namespace/name`` in
   alphabetical order, then rule order, then match order.

Matching: Exact and PathPrefix (element by element: ``/abc`` matches ``/abc``, ``/abc/``,
``/abc/def``, not ``/abcd``) become path segments, built directly (``*``, ``{`` are literal here);
RegularExpression is an RE2 whole-path match; headers (names case-insensitive) are a ``header``
condition, queryParams (names case-sensitive) a ``cel`` one, the first of equivalent names counting;
``method`` the route's method. A query parameter is tested on its first value (a ``cel`` test with
``getQuery``), as the specification recommends and Envoy does; a header on each of its values. The action of a rule (backendRefs, filters, timeouts) is
``load.httproute_rule``'s.

Names (no ``/`` and no spaces, so ``check``'s ``ROUTE/BACKEND`` and the commands can use them):
``NAME#N`` for rule N (1-based; the rule's ``name:`` instead of N when it has one), ``NAME#N.M``
for match M of a rule with several matches, ``@HOST`` after it when the HTTPRoute is in several
hostname groups (the group's first hostname), ``NAME.NAMESPACE`` instead of ``NAME`` when two
HTTPRoutes of different namespaces share a name; the 404 route of a group is ``NAME#no-match@HOST``
(``NAME#no-match`` for the HTTPRoutes without hostnames), NAME the group's first HTTPRoute, so that
two imported files do not both have a route named ``no-match``. ``Route.origin`` is the human label:
``httproute header-matching, rule 3, match 2 (routes.yaml:27)``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterator

import re2

from ..httptext import HTTP_METHODS, TOKEN
from ..model import Backend, Respond, Route, RoutePath
from ..node import Y
from .ctx import CompileCtx, kind
from .httproute_rule import RULE_KEYS, RuleBackend, RuleInfo, check_keys, get, hostname, text_of

DOC_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")
SPEC_KEYS = ("parentRefs", "hostnames", "rules", "useDefaultGateways")
MATCH_KEYS = ("path", "headers", "queryParams", "method")
PATH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
VALUE_TYPES = ("Exact", "RegularExpression")
PATH_RANK = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}
_PATH_CHARS = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*$")
NOT_FOUND = "condroute: no HTTPRoute rule matches this request (the gateway answers 404)\n"


@dataclass
class Entry:
    """One match of one rule: one condroute Route once its group is known."""
    hr: "HTTPRoute"
    rule: int                       # 0-based
    match: int                      # 0-based
    n_matches: int
    rule_name: str | None
    line: int
    ptype: str
    plen: int
    path: RoutePath
    method: str | None
    conditions: Y | None
    n_headers: int
    n_query: int
    backend: Backend

    def key(self) -> tuple:
        hr = self.hr
        return (PATH_RANK[self.ptype], -self.plen, 0 if self.method else 1, -self.n_headers, -self.n_query,
                hr.ts or "~", f"{hr.ns}/{hr.name}", self.rule, self.match)

    def name(self) -> str:
        n = f"{self.hr.display}#{self.rule_name or self.rule + 1}"
        return n + (f".{self.match + 1}" if self.n_matches > 1 else "")

    def origin(self, file: str) -> str:
        o = f"httproute {self.hr.name}, rule {self.rule + 1}"
        o += f" ({self.rule_name})" if self.rule_name else ""
        o += f", match {self.match + 1}" if self.n_matches > 1 else ""
        return f"{o} ({os.path.basename(file)}:{self.line})"


@dataclass
class HTTPRoute:
    node: Y
    name: str
    ns: str
    ts: str                         # creationTimestamp as written, "" when absent
    hostnames: list[tuple[str, Y]]
    display: str = ""
    entries: list[Entry] = field(default_factory=list)


# -- matches -------------------------------------------------------------------------------------
def _regex(node: Y, cc: CompileCtx, what: str) -> str | None:
    """``R`` as a whole-value RE2 pattern ``^(?:R)$``; None after a located error."""
    t = node.text
    if t is None:
        cc.error(node, f"{what} must be a regular expression (a string), not {kind(node.v)}")
        return None
    full = f"^(?:{t})$"
    opts = re2.Options()
    opts.log_errors = False
    try:
        re2.compile(t, options=opts)       # the pattern as written first: its error names no wrapper
        re2.compile(full, options=opts)
    except re2.error as e:
        why = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        cc.error(node, f"{what}: bad regular expression {t!r}: {why} (condroute runs RE2, as Envoy-based "
                       f"gateways do: no backreferences or lookaround)")
        return None
    return full


def _path(node: Y | None, cc: CompileCtx) -> tuple[str, str, RoutePath] | None:
    """(type, value, RoutePath) of a match's ``path`` (PathPrefix / when absent)."""
    if node is None:
        return "PathPrefix", "/", RoutePath(text="/*", segs=(), has_rest=True)
    if not check_keys(node, ("type", "value"), "path", cc):
        return None
    tn, vn = get(node, "type"), get(node, "value")
    t = text_of(tn) or "PathPrefix"
    if t not in PATH_TYPES:
        cc.error(tn or node, f"path.type must be Exact, PathPrefix or RegularExpression, not {kind(tn.v if tn else None)} "
                             f"(the gateway refuses the route)")
        return None
    v = "/" if vn is None else vn.text
    if v is None:
        cc.error(vn or node, f"path.value must be a string, not {kind(vn.v if vn else None)}")
        return None
    where = vn or node
    # the texts are condroute's own spelling of the same match (Exact /a: /a; PathPrefix /a/: /a/*;
    # RegularExpression R: {regex: ^(?:R)$}): explain shows them and validate reasons on them
    if t == "RegularExpression":
        rx = _regex(where, cc, "path.value")
        if rx is None:
            return None
        return t, v, RoutePath(text=repr({"regex": rx}),
                               matcher=Y({"regex": Y(rx, where.line, where.col)}, where.line, where.col,
                                         {"regex": (where.line, where.col)}))
    bad = (None if v.startswith("/") else "must start with '/'") or \
        (f"must not contain {s!r}" if (s := next((s for s in ("//", "/./", "/../", "%2f", "%2F", "#") if s in v), None))
         else None) or \
        ("must not end in '/..' or '/.'" if v.endswith(("/..", "/.")) else None) or \
        (None if _PATH_CHARS.match(v) else "holds a character a path may not (only letters, digits, "
                                            "-._~!$&'()*+,;=:@/ and %XX escapes)") or \
        ("is longer than 1024 characters" if len(v) > 1024 else None) or \
        ("must not contain an encoded '.' (%2e): requests are matched after normalisation"
         if "%2e" in v.lower() else None)
    if bad:
        cc.error(where, f"path.value {v!r} {bad} (the gateway refuses the route)")
        return None
    if t == "Exact":
        segs = tuple((False, s) for s in v.split("/")[1:])
        return t, v, RoutePath(text=v, segs=segs, has_rest=False, literal_prefix=v if v != "/" else "")
    p = v.rstrip("/")
    return t, v, RoutePath(text=f"{p}/*", segs=tuple((False, s) for s in p.split("/")[1:]) if p else (),
                           has_rest=True, literal_prefix=p)


def _named(node: Y | None, cc: CompileCtx, what: str, label: str) -> tuple[Y | None, int, bool]:
    """``headers`` / ``queryParams`` → (the condition's {NAME: MATCHER} node, count, ok)."""
    if node is None or node.v is None:
        return None, 0, True
    if not cc.expect_list(node, what):
        return None, 0, False
    fold = what == "headers"
    out: dict[str, Y] = {}
    pos: dict[str, tuple[int, int]] = {}
    seen: dict[str, int] = {}
    ok = True
    for i, h in enumerate(node.v):
        if not check_keys(h, ("name", "value", "type"), f"{what}[{i}]", cc):
            ok = False
            continue
        nn, vn, tn = get(h, "name"), get(h, "value"), get(h, "type")
        name = text_of(nn)
        if not name or (fold and not TOKEN.match(name)):
            cc.error(nn or h, f"{what}[{i}] needs `name`" + (", a header name" if fold else ""))
            ok = False
            continue
        t = text_of(tn) or "Exact"
        if t not in VALUE_TYPES:
            cc.error(tn, f"{what}[{i}].type must be Exact or RegularExpression, not {kind(tn.v)} (the gateway "
                         f"refuses the route)")
            ok = False
            continue
        if vn is None or vn.text is None:
            cc.error(vn or h, f"{what}[{i}] needs `value` (a string)")
            ok = False
            continue
        k = name.lower() if fold else name
        if k in seen:
            cc.warn(nn, f"{label}: {what}[{i}] names {name} again: only the first entry for a name counts "
                        f"(the specification), this one is ignored")
            continue
        seen[k] = i
        if t == "Exact":
            val = Y(vn.text, vn.line, vn.col)
        else:
            rx = _regex(vn, cc, f"{what}[{i}].value")
            if rx is None:
                ok = False
                continue
            val = Y({"regex": Y(rx, vn.line, vn.col)}, vn.line, vn.col, {"regex": (vn.line, vn.col)})
        out[name] = val
        pos[name] = (nn.line, nn.col)
    if not out:
        return None, 0, ok
    if fold:
        return Y(out, node.line, node.col, pos), len(out), ok
    # query parameters: the *first* value of a repeated one counts, as the specification recommends
    # (and Envoy does); the `query` condition tests every value, CEL's getQuery() the first
    tests = []
    for name, val in out.items():
        q = json.dumps(name, ensure_ascii=False)
        test = (f"getQuery({q}) == {json.dumps(val.v, ensure_ascii=False)}" if not isinstance(val.v, dict) else
                f"getQuery({q}).matches({json.dumps(val.v['regex'].v, ensure_ascii=False)})")
        tests.append(f"hasQuery({q}) && {test}")
    return Y(" && ".join(tests), node.line, node.col), len(out), ok


def _entries(hr: HTTPRoute, spec: Y, cc: CompileCtx) -> None:
    rules_n = get(spec, "rules")
    if rules_n is None or rules_n.v is None:
        rules = [Y({}, spec.line, spec.col, {})]      # the API's default: one rule matching everything
    elif not cc.expect_list(rules_n, "rules"):
        return
    else:
        rules = rules_n.v
    named: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if not check_keys(rule, RULE_KEYS, f"rules[{i}]", cc):
            continue
        rn = get(rule, "name")
        rule_name = None
        if rn is not None:
            rule_name = rn.text
            if not rule_name or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rule_name):
                cc.error(rn, f"rules[{i}].name must be lower-case letters, digits and '-', not {kind(rn.v)}")
                continue
            if rule_name in named:
                cc.error(rn, f"rules[{i}].name {rule_name} is also the name of rule {named[rule_name]}: rule names "
                             f"are unique within an HTTPRoute (the gateway refuses the route)")
                continue
            named[rule_name] = i + 1
        label = f"HTTPRoute {hr.name} rule {rule_name or i + 1}"
        mn = get(rule, "matches")
        if mn is not None and mn.v is not None and not cc.expect_list(mn, "matches"):
            continue
        matches = mn.v if mn is not None and mn.v else [Y({}, rule.line, rule.col, {})]
        parsed = []
        for j, m in enumerate(matches):
            p = _match(m, j, cc, label)
            if p is not None:
                parsed.append((j, m, p))
        if len(parsed) != len(matches):
            continue
        single = parsed[0][2][0] if len(parsed) == 1 and parsed[0][2][0][0] == "PathPrefix" else None
        backend = RuleBackend(cc, RuleInfo(hr.name, hr.ns, label, single[1] if single else None)).build(rule)
        if backend is None:
            continue
        for j, m, ((ptype, pval, rpath), method, conds, nh, nq) in parsed:
            plen = len(pval.rstrip("/")) if ptype == "PathPrefix" else len(pval)
            hr.entries.append(Entry(hr, i, j, len(matches), rule_name, m.line, ptype, plen, rpath, method, conds,
                                    nh, nq, backend))


def _match(m: Y, j: int, cc: CompileCtx, label: str) -> tuple | None:
    if not check_keys(m, MATCH_KEYS, f"matches[{j}]", cc):
        return None
    path = _path(get(m, "path"), cc)
    method = None
    mn = get(m, "method")
    if mn is not None:
        method = mn.text
        if method not in HTTP_METHODS:
            cc.error(mn, f"method must be one of {', '.join(HTTP_METHODS)} (upper-case), not {kind(mn.v)}")
            return None
    hdrs, nh, ok_h = _named(get(m, "headers"), cc, "headers", label)
    qs, nq, ok_q = _named(get(m, "queryParams"), cc, "queryParams", label)
    if path is None or not ok_h or not ok_q:
        return None
    conds: dict[str, Y] = {}
    pos: dict[str, tuple[int, int]] = {}
    for k, n in (("header", hdrs), ("cel", qs)):
        if n is not None:
            conds[k], pos[k] = n, (n.line, n.col)
    return path, method, (Y(conds, m.line, m.col, pos) if conds else None), nh, nq


# -- documents -----------------------------------------------------------------------------------
def _document(d: Y, cc: CompileCtx) -> HTTPRoute | None:
    if not cc.check_keys(d, DOC_KEYS, "an HTTPRoute"):
        return None
    md = get(d, "metadata")
    if md is None or not cc.expect_map(md, "metadata"):
        if md is None:
            cc.error(d, "an HTTPRoute needs `metadata.name`")
        return None
    nn = get(md, "name")
    name = text_of(nn)
    if not name or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
        cc.error(nn or md, f"metadata.name must be a Kubernetes name (lower-case letters, digits, '-' and '.'), "
                           f"not {kind(nn.v if nn else None)}")
        return None
    ns = text_of(get(md, "namespace")) or "default"
    spec = get(d, "spec")
    if spec is None:
        cc.error(d, f"HTTPRoute {name} needs `spec` (its hostnames and rules)")
        return None
    if not check_keys(spec, SPEC_KEYS, "spec", cc):
        return None
    hosts: list[tuple[str, Y]] = []
    hn = get(spec, "hostnames")
    if hn is not None and hn.v is not None and cc.expect_list(hn, "hostnames"):
        for h in hn.v:
            low = hostname(h, cc, "hostnames:", wildcard=True)
            if low is not None and low not in (x for x, _ in hosts):
                hosts.append((low, h))
    pr = get(spec, "parentRefs")
    if pr is not None and isinstance(pr.v, list):
        for p in pr.v:
            if text_of(get(p, "kind")) == "Service":
                cc.warn(p, f"HTTPRoute {name} is attached to a Service (a mesh route): condroute applies it as "
                           f"a gateway route, to the requests that reach it through the proxy")
    hr = HTTPRoute(d, name, ns, text_of(get(md, "creationTimestamp")), hosts)
    _entries(hr, spec, cc)
    return hr


def _groups(hrs: list[HTTPRoute], cc: CompileCtx) -> list[tuple[tuple[str, ...], list[HTTPRoute]]]:
    """Hostname groups in the order they are tried: (hosts, the HTTPRoutes a request for them sees)."""
    claims: dict[str, list[HTTPRoute]] = {}
    for hr in hrs:
        for h, _ in hr.hostnames:
            claims.setdefault(h, []).append(hr)
    grouped: dict[tuple, list[str]] = {}
    for h, owners in claims.items():
        wild = h.startswith("*.")
        grouped.setdefault((wild, len(h) if wild else 0, tuple(id(x) for x in owners)), []).append(h)
    order = sorted(grouped.items(), key=lambda kv: (kv[0][0], -kv[0][1], min((-len(h), h) for h in kv[1])))
    out = []
    for _, hosts in order:
        hosts.sort(key=lambda h: (-len(h), h))
        out.append((tuple(hosts), claims[hosts[0]]))
    anyhost = [hr for hr in hrs if not hr.hostnames]
    if anyhost:
        out.append(((), anyhost))
    _differ_warnings(hrs, claims, anyhost, cc)
    return out


def _differ_warnings(hrs: list[HTTPRoute], claims: dict[str, list[HTTPRoute]], anyhost: list[HTTPRoute],
                     cc: CompileCtx) -> None:
    """Where the exclusive (virtual host) reading and the fall-through reading differ, say so."""
    for hr in anyhost:
        cc.warn(get(hr.node, "spec") or hr.node,
                f"HTTPRoute {hr.name} has no hostnames: through the proxy it owns every host that no other "
                f"HTTPRoute names (a request it does not match gets 404, as at the gateway's own address); "
                f"list `hostnames` to limit it")
    for hr in hrs:
        for h, node in hr.hostnames:
            wider = [w for w in claims if w != h and w.startswith("*.") and h.endswith(w[1:])
                     and any(o not in claims[h] for o in claims[w])]
            others = sorted({o.name for w in wider for o in claims[w] if o not in claims[h]}
                            | {o.name for o in anyhost})
            if others:
                cc.warn(node, f"requests for {h} see only the HTTPRoutes that name it ({', '.join(sorted({o.name for o in claims[h]}))}), "
                              f"as in Envoy-based gateways (Istio, Envoy Gateway): the rules of {', '.join(others)} "
                              f"are not tried for them and an unmatched one gets 404; gateways differ here "
                              f"(Traefik tries them next)")


def _dedupe(hrs: list[HTTPRoute], cc: CompileCtx) -> list[HTTPRoute]:
    """The later of two documents with one namespace/name replaces the earlier (as ``kubectl apply``)."""
    last: dict[tuple[str, str], HTTPRoute] = {}
    for hr in hrs:
        prev = last.get((hr.ns, hr.name))
        if prev is not None:
            cc.warn(get(get(hr.node, "metadata"), "name") or hr.node,
                    f"HTTPRoute {hr.ns}/{hr.name} is defined again (first at line {prev.node.line}): the cluster "
                    f"keeps one object per name, so this one replaces it")
        last[(hr.ns, hr.name)] = hr
    kept = [hr for hr in hrs if last[(hr.ns, hr.name)] is hr]
    names: dict[str, set[str]] = {}
    for hr in kept:
        names.setdefault(hr.name, set()).add(hr.ns)
    for hr in kept:
        hr.display = hr.name if len(names[hr.name]) == 1 else f"{hr.name}.{hr.ns}"
    return kept


def httproute_routes(docs: list[Y], cc: CompileCtx) -> Iterator[Route]:
    """The routes of every HTTPRoute in ``docs`` (mappings with apiVersion gateway.networking.k8s.io/*
    and kind HTTPRoute, List items already expanded), in precedence order, 404 routes included."""
    hrs = [hr for hr in (_document(d, cc) for d in docs) if hr is not None]
    hrs = _dedupe(hrs, cc)
    groups = _groups(hrs, cc)
    in_groups: dict[int, int] = {}
    for _, members in groups:
        for hr in members:
            in_groups[id(hr)] = in_groups.get(id(hr), 0) + 1
    file = cc.file
    base = os.path.basename(file)
    for hosts, members in groups:
        label = hosts[0] if hosts else ""
        entries = sorted((e for hr in members for e in hr.entries), key=Entry.key)
        for e in entries:
            suffix = f"@{label}" if in_groups[id(e.hr)] > 1 else ""
            yield Route(name=e.name() + suffix, line=e.line, hosts=hosts,
                        methods=frozenset({e.method}) if e.method else None, path=e.path,
                        conditions=e.conditions, backends=(e.backend,), file=file, origin=e.origin(file))
        first = members[0]
        at = next((n for h, n in first.hostnames if h == label), None) if hosts else first.node
        line = at.line if at is not None else first.node.line
        names = ", ".join(hr.name for hr in members)
        yield Route(name=f"{first.display}#no-match" + (f"@{label}" if hosts else ""), line=line, hosts=hosts,
                    backends=(Backend(name="404", line=line, respond=Respond(404, NOT_FOUND, ())),),
                    file=file, origin=f"httproute {names}: no rule matches"
                                      + (f" for {', '.join(hosts)}" if hosts else "") + f" ({base}:{line})")
