"""One HTTPRoute rule's action → one model Backend: ``backendRefs`` (weights), ``filters``
(RequestHeaderModifier, URLRewrite, RequestRedirect, RequestMirror; the rest refused or warned about,
located), ``timeouts``, ``retry`` (GEP-1731: connection errors and the status codes condroute can
retry; see :meth:`RuleBackend.retry`). The matching side (paths, headers, precedence) is
``load.httproute``'s.

Every refusal names the field and says what the gateway would do (most are the API server's or the
gateway's own refusals: a hand-written file may break them).

Why this module is long: every field of a rule's action, each with its located refusals and
warnings, is read here in one class, in the order the API documents them; split up, the rule's
reader would be passed around between modules for no gain."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..httptext import TOKEN
from ..model import Backend, Mirror, PathRewrite, Redirect, Respond, Split, Upstream
from ..node import Y
from .common import REMOVE_KEPT, REQUEST_HEADERS_KEPT
from .ctx import CompileCtx, kind
from .istio_answer import (DEFAULT_RETRIES, FIRST_BACKOFF, MAX_RETRIES, RETRY_BACKOFF_TEXT, codes_text, status_retry_on,
                           worst_case)
from .services import resolve

RULE_KEYS = ("name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence")
REF_KEYS = ("group", "kind", "name", "namespace", "port", "weight", "filters")
FILTER_FIELDS = {"RequestHeaderModifier": "requestHeaderModifier", "ResponseHeaderModifier": "responseHeaderModifier",
                 "RequestRedirect": "requestRedirect", "URLRewrite": "urlRewrite",
                 "RequestMirror": "requestMirror", "ExtensionRef": "extensionRef", "CORS": "cors",
                 "ExternalAuth": "externalAuth"}
REPEATABLE = ("RequestMirror", "ExtensionRef")
REDIRECT_STATUS = (301, 302, 303, 307, 308)
# GEP-2257 durations: 1 to 4 of NUMBER UNIT, NUMBER at most 5 digits
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SERVICE_GROUPS = {("", "Service"), ("core", "Service"), ("multicluster.x-k8s.io", "ServiceImport")}


@dataclass
class RuleInfo:
    """What the backend of a rule needs to know about the route and the rule."""
    route: str                 # metadata.name
    namespace: str
    label: str                 # "HTTPRoute NAME rule N", for messages
    prefix_match: str | None   # the rule's single PathPrefix value, when it has exactly one match and it is one


def get(node: Y, key: str) -> Y | None:
    return node.v.get(key) if isinstance(node.v, dict) else None


def text_of(node: Y | None) -> str:
    return "" if node is None or node.text is None else node.text


def duration(node: Y, cc: CompileCtx, what: str) -> float | None:
    """A GEP-2257 duration in seconds (``0s`` is 0: no timeout); None after a located error."""
    t = node.text
    if t is None or not _DURATION.match(t):
        cc.error(node, f"{what} must be a Gateway API duration such as 10s, 500ms or 1h30m "
                       f"(GEP-2257: digits and h, m, s, ms; no fractions, no days), not {kind(node.v)}")
        return None
    secs = sum(int(n) * _UNIT[u] for n, u in _DURATION_PART.findall(t))
    if 0 < secs < 0.001:
        cc.error(node, f"{what} must be 0s or at least 1ms")
        return None
    return secs


def check_keys(node: Y, allowed: tuple[str, ...], what: str, cc: CompileCtx) -> bool:
    if not cc.expect_map(node, what):
        return False
    return cc.check_keys(node, allowed, what)


def int_field(node: Y, cc: CompileCtx, what: str, lo: int, hi: int) -> int | None:
    v = node.v
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        cc.error(node, f"{what} must be a whole number from {lo} to {hi}, not {kind(v)}")
        return None
    return v


def hostname(node: Y, cc: CompileCtx, what: str, wildcard: bool) -> str | None:
    """A Gateway API hostname (lower-case RFC 1123 labels; ``*.`` first when ``wildcard``)."""
    t = node.text
    if not t:
        cc.error(node, f"{what} must be a hostname, not {kind(node.v)}")
        return None
    low = t.lower()
    if not HOSTNAME.match(low) or (low.startswith("*.") and not wildcard) or len(low) > 253:
        cc.error(node, f"{what} {t!r} is not a hostname: lower-case letters, digits, '-' and '.'"
                       + (", with an optional leading '*.'" if wildcard else "") + " (no port, no path)")
        return None
    if re.fullmatch(r"[0-9.]+", low.removeprefix("*.")):
        cc.error(node, f"{what} {t!r} is an IP address: the Gateway API takes hostnames only")
        return None
    return low


class RuleBackend:
    """Reads the action side of one rule (:meth:`build`); problems are located in ``cc``."""

    def __init__(self, cc: CompileCtx, info: RuleInfo):
        self.cc, self.info = cc, info

    # -- backendRefs ------------------------------------------------------------------------
    def ref(self, node: Y, what: str, weighted: bool) -> tuple[Upstream | None, int, str]:
        """A backendRef → (upstream or None, weight, name); errors located."""
        cc = self.cc
        if not check_keys(node, REF_KEYS if weighted else REF_KEYS[:5], what, cc):
            return None, 0, ""
        group, kd = text_of(get(node, "group")), text_of(get(node, "kind")) or "Service"
        name_n = get(node, "name")
        if name_n is None or not name_n.text:
            cc.error(node, f"{what} needs `name` (the Service to send to)")
            return None, 0, ""
        if (group, kd) not in SERVICE_GROUPS:
            g = f" (group {group})" if group else ""
            cc.error(get(node, "kind") or get(node, "group") or node,
                     f"{what}: kind {kd}{g} is not supported: condroute forwards to Services (and "
                     f"ServiceImports) mapped in the importing file's upstreams; route it with a route of your "
                     f"own before the import")
            return None, 0, ""
        port_n = get(node, "port")
        port = None
        if port_n is not None:
            port = int_field(port_n, cc, f"{what}: port", 1, 65535)
            if port is None:
                return None, 0, ""
        elif kd == "Service":
            cc.error(node, f"{what}: a Service backendRef needs `port` (the gateway refuses it without one)")
            return None, 0, ""
        weight = 1
        if weighted and get(node, "weight") is not None:
            w = int_field(node.v["weight"], cc, f"{what}: weight", 0, 1_000_000)
            if w is None:
                return None, 0, ""
            weight = w
        if weighted and get(node, "filters") is not None:
            f = node.v["filters"]
            if not isinstance(f.v, list) or f.v:
                cc.error_key(node, "filters", f"{what}: filters on a backendRef are not supported yet: put the "
                                              f"filter on the rule (it then applies to every backend of the rule)")
                return None, 0, ""
        name = name_n.text
        ns = text_of(get(node, "namespace")) or self.info.namespace
        cands = ([f"{name}:{port}"] if port is not None else []) + [f"{name}.{ns}", name]
        up = resolve(cc, name_n, cands, f"backendRef {name}" + (f" port {port}" if port is not None else ""),
                     cluster=(f"{name}.{ns}.svc.cluster.local", port or 80))
        return up, weight, name

    def backend_refs(self, node: Y | None) -> tuple[list[tuple[Upstream, int, str]], bool, bool]:
        """(resolved refs with their weights, written, ok)."""
        if node is None or node.v is None:
            return [], False, True
        cc = self.cc
        if not cc.expect_list(node, "backendRefs"):
            return [], True, False
        out, ok = [], True
        for i, r in enumerate(node.v):
            up, w, name = self.ref(r, f"backendRefs[{i}]", True)
            if up is None:
                ok = False
                continue
            out.append((up, w, name))
        return out, True, ok

    # -- filters ------------------------------------------------------------------------------
    def header_modifier(self, node: Y, kw: dict[str, Any]) -> bool:
        cc = self.cc
        if not check_keys(node, ("set", "add", "remove"), "requestHeaderModifier", cc):
            return False
        ok = True
        seen: dict[str, str] = {}
        out: dict[str, list] = {"set": [], "add": [], "remove": []}

        def once(name: str, action: str, at: Y) -> bool:
            low = name.lower()
            if low in seen:
                cc.error(at, f"requestHeaderModifier: header {name} already has an action ({seen[low]}); the "
                             f"specification allows one action per header name (the gateway refuses the route)")
                return False
            seen[low] = action
            return True

        for action in ("set", "add"):
            lst = get(node, action)
            if lst is None:
                continue
            if not cc.expect_list(lst, f"requestHeaderModifier.{action}"):
                ok = False
                continue
            for h in lst.v:
                if not check_keys(h, ("name", "value"), f"requestHeaderModifier.{action} entry", cc):
                    ok = False
                    continue
                nn, vn = get(h, "name"), get(h, "value")
                if nn is None or not nn.text or not TOKEN.match(nn.text):
                    cc.error(nn or h, f"requestHeaderModifier.{action}: `name` must be a header name, "
                                      f"not {kind(nn.v) if nn else 'missing'}")
                    ok = False
                    continue
                if nn.text.lower() in REQUEST_HEADERS_KEPT:
                    why = REQUEST_HEADERS_KEPT[nn.text.lower()]
                    if nn.text.lower() == "host":
                        why = "is the request's Host: use a URLRewrite filter with `hostname`"
                    cc.error(nn, f"requestHeaderModifier.{action}: {nn.text} cannot be set: it {why}")
                    ok = False
                    continue
                val = "" if vn is None or vn.text is None else vn.text
                if vn is None or vn.text is None:
                    cc.error(vn or h, f"requestHeaderModifier.{action}: {nn.text} needs a `value` (a string)")
                    ok = False
                    continue
                if _CTL.search(val):
                    cc.error(vn, f"requestHeaderModifier.{action}: the value of {nn.text} must not contain a line "
                                 f"break or control character")
                    ok = False
                    continue
                if once(nn.text, action, nn):
                    out[action].append((nn.text, val))
                else:
                    ok = False
        rm = get(node, "remove")
        if rm is not None and cc.expect_list(rm, "requestHeaderModifier.remove"):
            for n in rm.v:
                if not n.text or not TOKEN.match(n.text):
                    cc.error(n, f"requestHeaderModifier.remove: expected a header name, not {kind(n.v)}")
                    ok = False
                elif n.text.lower() in REMOVE_KEPT:
                    cc.error(n, f"requestHeaderModifier.remove: {n.text} cannot be removed: mitmproxy needs it "
                                f"to forward the request")
                    ok = False
                elif once(n.text, "remove", n):
                    out["remove"].append(n.text)
                else:
                    ok = False
        elif rm is not None:
            ok = False
        kw["set_headers"] = tuple(out["set"])
        kw["add_headers"] = tuple(out["add"])
        kw["remove_headers"] = tuple(out["remove"])
        return ok

    def path_modifier(self, node: Y, what: str) -> PathRewrite | None:
        cc = self.cc
        if not check_keys(node, ("type", "replaceFullPath", "replacePrefixMatch"), f"{what}.path", cc):
            return None
        tn = get(node, "type")
        t = text_of(tn)
        if t == "ReplaceFullPath":
            v = get(node, "replaceFullPath")
            if v is None or not isinstance(v.v, str) or not v.v.startswith("/"):
                cc.error(v or node, f"{what}.path: ReplaceFullPath needs `replaceFullPath`, a path starting with '/'")
                return None
            return PathRewrite(kind="full", value=v.v)
        if t == "ReplacePrefixMatch":
            v = get(node, "replacePrefixMatch")
            if v is None or not isinstance(v.v, str) or (v.v and not v.v.startswith("/")):
                cc.error(v or node, f"{what}.path: ReplacePrefixMatch needs `replacePrefixMatch`, a path "
                                    f"starting with '/' (or empty)")
                return None
            if self.info.prefix_match is None:
                cc.error(tn, f"{what}.path: ReplacePrefixMatch needs the rule to have exactly one match, "
                             f"with a PathPrefix path (the gateway refuses the route otherwise)")
                return None
            return PathRewrite(kind="segments", value=v.v, prefix=self.info.prefix_match.rstrip("/"))
        cc.error(tn or node, f"{what}.path: type must be ReplaceFullPath or ReplacePrefixMatch, not "
                            f"{kind(tn.v) if tn else 'missing'}")
        return None

    def url_rewrite(self, node: Y, kw: dict[str, Any]) -> bool:
        cc = self.cc
        if not check_keys(node, ("hostname", "path"), "urlRewrite", cc):
            return False
        ok = True
        if get(node, "hostname") is not None:
            h = hostname(node.v["hostname"], cc, "urlRewrite.hostname", wildcard=False)
            if h is None:
                ok = False
            else:
                kw["host_rewrite"] = h
        if get(node, "path") is not None:
            rw = self.path_modifier(node.v["path"], "urlRewrite")
            if rw is None:
                ok = False
            else:
                kw["rewrite"] = rw
        return ok

    def redirect(self, node: Y) -> Redirect | None:
        cc = self.cc
        if not check_keys(node, ("scheme", "hostname", "path", "port", "statusCode"), "requestRedirect", cc):
            return None
        kw: dict[str, Any] = {}
        ok = True
        sn = get(node, "scheme")
        if sn is not None:
            if sn.text not in ("http", "https"):
                cc.error(sn, f"requestRedirect.scheme must be http or https, not {kind(sn.v)}")
                ok = False
            kw["scheme"] = sn.text
            kw["port_from"] = "scheme"
        if get(node, "hostname") is not None:
            h = hostname(node.v["hostname"], cc, "requestRedirect.hostname", wildcard=False)
            ok = ok and h is not None
            kw["host"] = h
        if get(node, "port") is not None:
            p = int_field(node.v["port"], cc, "requestRedirect.port", 1, 65535)
            ok = ok and p is not None
            kw["port"] = p
        if get(node, "statusCode") is not None:
            s = node.v["statusCode"]
            if s.v not in REDIRECT_STATUS or isinstance(s.v, bool):
                cc.error(s, f"requestRedirect.statusCode must be one of 301, 302, 303, 307, 308, not {kind(s.v)}")
                ok = False
            kw["status"] = s.v
        if get(node, "path") is not None:
            rw = self.path_modifier(node.v["path"], "requestRedirect")
            ok = ok and rw is not None
            kw["path"] = rw
        return Redirect(**kw) if ok else None

    def mirror(self, node: Y, i: int) -> Mirror | None:
        cc = self.cc
        if not check_keys(node, ("backendRef", "percent", "fraction"), "requestMirror", cc):
            return None
        br = get(node, "backendRef")
        if br is None:
            cc.error(node, "requestMirror needs `backendRef` (where the copies go)")
            return None
        up, _, _ = self.ref(br, "requestMirror.backendRef", False)
        if up is None:
            return None
        pn, fn = get(node, "percent"), get(node, "fraction")
        if pn is not None and fn is not None:
            cc.error(fn, "requestMirror: give `percent` or `fraction`, not both")
            return None
        percent = 100.0
        if pn is not None:
            p = int_field(pn, cc, "requestMirror.percent", 0, 100)
            if p is None:
                return None
            percent = float(p)
        elif fn is not None:
            if not check_keys(fn, ("numerator", "denominator"), "requestMirror.fraction", cc):
                return None
            num_n, den_n = get(fn, "numerator"), get(fn, "denominator")
            if num_n is None:
                cc.error(fn, "requestMirror.fraction needs `numerator`")
                return None
            num = int_field(num_n, cc, "requestMirror.fraction.numerator", 0, 1_000_000)
            den = 100 if den_n is None else int_field(den_n, cc, "requestMirror.fraction.denominator", 1, 1_000_000)
            if num is None or den is None:
                return None
            if num > den:
                cc.error(num_n, f"requestMirror.fraction: the numerator ({num}) must not exceed the denominator ({den})")
                return None
            percent = 100.0 * num / den
        return Mirror(upstream=up, percent=percent)

    def filters(self, node: Y | None, kw: dict[str, Any]) -> tuple[dict[str, Y], bool]:
        """Reads the rule's filters into ``kw``; returns the filter nodes by type and whether all were good."""
        cc = self.cc
        by_type: dict[str, Y] = {}
        if node is None or node.v is None:
            return by_type, True
        if not cc.expect_list(node, "filters"):
            return by_type, False
        ok = True
        mirrors: list[Mirror] = []
        for i, f in enumerate(node.v):
            what = f"filters[{i}]"
            if not cc.expect_map(f, what):
                ok = False
                continue
            tn = get(f, "type")
            t = text_of(tn)
            if t not in FILTER_FIELDS:
                cc.error(tn or f, f"{what}: unknown filter type {t or kind(tn.v if tn else None)}; the gateway refuses "
                                  f"the route (expected one of: {', '.join(FILTER_FIELDS)})")
                ok = False
                continue
            if not cc.check_keys(f, ("type", FILTER_FIELDS[t]), what):
                ok = False
                continue
            if t in by_type and t not in REPEATABLE:
                cc.error(tn, f"{what}: a second {t} filter: the specification allows each filter type once per "
                             f"rule (except RequestMirror and ExtensionRef)")
                ok = False
                continue
            by_type.setdefault(t, f)
            body = get(f, FILTER_FIELDS[t])
            if t in ("RequestHeaderModifier", "URLRewrite", "RequestRedirect", "RequestMirror") and body is None:
                cc.error(f, f"{what}: a {t} filter needs `{FILTER_FIELDS[t]}`")
                ok = False
                continue
            if t == "RequestHeaderModifier":
                ok = self.header_modifier(body, kw) and ok
            elif t == "URLRewrite":
                ok = self.url_rewrite(body, kw) and ok
            elif t == "RequestRedirect":
                r = self.redirect(body)
                ok = ok and r is not None
                if r is not None:
                    kw["redirect"] = r
            elif t == "RequestMirror":
                m = self.mirror(body, i)
                ok = ok and m is not None
                if m is not None:
                    mirrors.append(m)
            elif t in ("ExtensionRef", "ExternalAuth"):
                why = ("a custom filter condroute cannot run; the specification says requests it would have "
                       "handled MUST get an error" if t == "ExtensionRef" else
                       "an external authorization service condroute does not call; it MUST fail closed")
                cc.warn(tn, f"{self.info.label}: {t} filter is not supported: {why}, so this rule answers 500")
                kw["_fail"] = t
            else:
                what_not = ("response headers are not modified" if t == "ResponseHeaderModifier" else
                            "CORS is not applied: no CORS response headers, and a preflight OPTIONS is "
                            "forwarded instead of answered")
                cc.warn(tn, f"{self.info.label}: {t} filter is not supported yet: {what_not}")
        if mirrors:
            kw["mirrors"] = tuple(mirrors)
        if "URLRewrite" in by_type and "RequestRedirect" in by_type:
            cc.error(get(by_type["RequestRedirect"], "type") or by_type["RequestRedirect"],
                     "a rule may have URLRewrite or RequestRedirect, not both (the gateway refuses the route)")
            ok = False
        return by_type, ok

    # -- the backend --------------------------------------------------------------------------
    def timeouts(self, node: Y | None, retries: int) -> tuple[float | None, bool]:
        """GEP-1742: ``request`` bounds the whole request, retries included; ``backendRequest`` each
        request to a backend. condroute's timeout bounds each attempt (mitm/retry.py): without
        retries the shorter of the two, with them ``backendRequest`` (else ``request``), and a
        located warning when the attempts may then outlast ``request``."""
        if node is None:
            return None, True
        cc = self.cc
        if not check_keys(node, ("request", "backendRequest"), "timeouts", cc):
            return None, False
        got = {}
        for k in ("request", "backendRequest"):
            if get(node, k) is not None:
                got[k] = duration(node.v[k], cc, f"timeouts.{k}")
                if got[k] is None:
                    return None, False
        req, back = got.get("request"), got.get("backendRequest")
        if req and back and back > req:
            cc.error(node.v["backendRequest"], "timeouts.backendRequest must not be longer than timeouts.request")
            return None, False
        nonzero = [t for t in (req, back) if t]
        each = min(nonzero) if nonzero else None
        if retries and req and each is not None and worst_case(retries, each) > req:
            cc.warn(node, f"{self.info.label}: timeouts.request {node.v['request'].text} bounds the whole request, "
                          f"retries included; condroute bounds each attempt by {each:g}s, so {retries + 1} attempts "
                          f"may take up to {worst_case(retries, each):g}s (the waits between them included)",
                    key="request")
        return each, True

    def retry(self, node: Y | None) -> dict[str, Any] | None:
        """GEP-1731 ``retry: {codes, attempts, backoff}``: connection errors (connect-failure, reset)
        and the ``codes`` condroute can retry (istio_answer.status_retry_on); ``attempts`` →
        retries (unset: 2, as Istio's conversion to a VirtualService does; at most 10); a ``backoff`` longer
        than condroute's first wait warned. {} without retry; None after a located error."""
        if node is None:
            return {}
        cc, label = self.cc, self.info.label
        if not check_keys(node, ("attempts", "backoff", "codes"), "retry", cc):
            return None
        codes: set[int] = set()
        cn = get(node, "codes")
        if cn is not None:
            if not cc.expect_list(cn, "retry codes"):
                return None
            for c in cn.v:
                if isinstance(c.v, bool) or not isinstance(c.v, int) or not 400 <= c.v <= 599:
                    cc.error(c, f"retry codes: {kind(c.v)} is not an HTTP status from 400 to 599")
                    return None
                codes.add(c.v)
        an = get(node, "attempts")
        if an is None:
            n = DEFAULT_RETRIES
            cc.warn(node, f"{label}: retry without attempts: the number of retries is implementation-specific; "
                          f"condroute retries {n} times, as Istio does")
        elif isinstance(an.v, bool) or not isinstance(an.v, int) or an.v < 0:
            cc.error(an, f"retry attempts must be a whole number >= 0, not {kind(an.v)}")
            return None
        elif an.v > MAX_RETRIES:
            cc.warn(an, f"{label}: retry attempts {an.v}: condroute retries at most {MAX_RETRIES} times")
            n = MAX_RETRIES
        else:
            n = an.v
        bn = get(node, "backoff")
        if bn is not None:
            secs = duration(bn, cc, "retry.backoff")
            if secs is None:
                return None
            if secs > FIRST_BACKOFF:
                cc.warn(bn, f"{label}: retry backoff {bn.text} is not imported: {RETRY_BACKOFF_TEXT}")
        if not n:
            return {"retries": 0}
        on = {"connect-failure", "reset"}
        add, note = status_retry_on(codes, on)
        if note:
            cc.warn(cn, f"{label}: retry codes {codes_text(codes)}: {note}")
        return {"retries": n, "retry_on": frozenset(on | add)}

    def build(self, rule: Y) -> Backend | None:
        """The rule's Backend (None after located errors)."""
        cc, info = self.cc, self.info
        kw: dict[str, Any] = {}
        by_type, ok = self.filters(get(rule, "filters"), kw)
        refs_n = get(rule, "backendRefs")
        refs, written, refs_ok = self.backend_refs(refs_n)
        ok = ok and refs_ok
        retry = self.retry(get(rule, "retry"))
        if retry is None:
            ok, retry = False, {}
        kw.update(retry)
        timeout, t_ok = self.timeouts(get(rule, "timeouts"), retry.get("retries", 0))
        ok = ok and t_ok
        if get(rule, "sessionPersistence") is not None:
            cc.warn(rule, f"{info.label}: `sessionPersistence` is not supported yet: each request is a fresh "
                          f"weighted draw", key="sessionPersistence")
        if "RequestRedirect" in by_type and refs_n is not None and isinstance(refs_n.v, list) and refs_n.v:
            cc.error_key(rule, "backendRefs", "a rule with a RequestRedirect filter cannot have backendRefs: "
                                              "it answers with the redirect (the gateway refuses the route)")
            ok = False
        if not ok:
            return None
        line = rule.line
        fail = kw.pop("_fail", None)
        if fail is not None:
            return Backend(name="unsupported-filter", line=line, respond=Respond(
                500, f"condroute: {info.label} has a {fail} filter condroute cannot apply (the gateway must "
                     f"answer with an error)\n", ()))
        if "redirect" in kw:
            return Backend(name="redirect", line=line, redirect=kw["redirect"])
        live = [(up, w, n) for up, w, n in refs if w > 0]
        if not live:
            why = ("every backendRef has weight 0" if refs else
                   "it has no backendRefs" if not written or not refs_n.v else "no backendRef")
            cc.warn(refs_n if refs_n is not None else rule,
                    f"{info.label}: {why}: requests it matches get 500, as the specification says")
            return Backend(name="no-backend", line=line, respond=Respond(
                500, f"condroute: {info.label} has no backend to forward to ({why}; the gateway answers 500)\n", ()))
        common: dict[str, Any] = {"line": line, "timeout": timeout, "preserve_host": "host_rewrite" not in kw, **kw}
        if len(live) == 1:
            up, _, name = live[0]
            return Backend(name=name, upstream=up, **common)
        arms = tuple((up, float(w)) for up, w, _ in live)
        return Backend(name="weighted", split=Split(by="random", kind="random", key="", arms=arms, salt=""), **common)
