"""What one Istio http rule does with a request it matches → a model Backend.

* ``route``: one destination → backend ``destination``; several → backend ``weighted``, a random
  weighted choice per request (Envoy weighted_clusters: weight / sum of weights, weight 0 never
  chosen; one destination gets everything whatever its weight). A destination ``{host, subset,
  port}`` resolves through the importing file's upstreams (load.services);
* ``rewrite.uri`` replaces the matched uri prefix (Envoy prefix_rewrite: the whole path after an
  exact or regex match, only the leading "/" when the block has no uri match),
  ``rewrite.uriRegexRewrite`` every match of its regex, ``rewrite.authority`` the Host;
* ``headers.request`` set / add / remove (a ``host`` or ``:authority`` set is the Host);
  ``headers.response`` only on a directResponse (condroute does not change upstream responses yet:
  a located warning otherwise);
* ``timeout``; ``retries``: ``attempts`` → retries, ``retryOn`` → retry_on where Envoy's policy means
  what condroute's does (connect-failure, reset, 5xx, gateway-error; status codes 502-504 as
  gateway-error, all of 500-599 as 5xx), ``perTryTimeout`` → timeout (condroute's timeout is per
  attempt, as perTryTimeout is; Istio's ``timeout`` bounds all attempts together: warned when they
  differ). No ``retries``: 2 retries on connect failure, the part of Istio's default policy
  (retry/retry.go: connect-failure, refused-stream, unavailable, cancelled and
  retriable-status-codes with no codes) condroute has: refused-stream is an HTTP/2 stream's,
  unavailable and cancelled are gRPC statuses, and the last retries nothing;
* ``fault`` → Backend.fault (delay and/or an httpStatus abort, each for ``percentage`` % of the
  requests, 0% when left out, as Envoy does);
* ``mirror`` + ``mirrorPercentage`` (or ``mirrorPercent``), ``mirrors``: Backend.mirrors;
* ``directResponse`` → a direct answer (``body.bytes`` decoded from base64, UTF-8 text);
  ``redirect`` → a Redirect (301 by default; a new authority drops the request's port);
* a gRPC or HTTP/2 fault abort, retryOn policies condroute has no equivalent of (refused-stream,
  retriable-4xx, gRPC statuses, ...), retries backoff, ``corsPolicy``, per-destination headers of a
  weighted route: not imported, a located warning each.

The client's Host is forwarded (``preserve_host``), as a sidecar does."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ..httptext import TOKEN
from ..model import Backend, Mirror, PathRewrite, Split, Upstream
from ..node import Y
from .common import REMOVE_KEPT, REQUEST_HEADERS_KEPT
from .ctx import CompileCtx, kind
from .istio_answer import (DEFAULT_RETRIES, RetryPolicy, direct_response, fault, percentage, redirect, retries,
                           worst_case)
from .istio_match import BlockMatch, check_keys, regex_problem
from .krakend import parse_duration
from .services import resolve

RULE_KEYS = ("corsPolicy", "delegate", "directResponse", "fault", "headers", "match", "mirror", "mirrorPercent",
             "mirrorPercentage", "mirror_percent", "mirrors", "name", "redirect", "retries", "rewrite", "route",
             "timeout")
DEST_KEYS = ("destination", "headers", "weight")
DESTINATION_KEYS = ("host", "port", "subset")
REWRITE_KEYS = ("authority", "uri", "uriRegexRewrite")
HEADERS_KEYS = ("request", "response")
OPS_KEYS = ("add", "remove", "set")
HOST_NAMES = ("host", ":authority")
_FORMATTER = re.compile(r"%[A-Z][A-Z0-9_]*(?:\([^)]*\))?(?::\d+)?%")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass
class HeaderOps:
    set: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    add: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    remove: list[str] = dataclasses.field(default_factory=list)
    host: str | None = None


@dataclass
class RuleAction:
    """A rule's backend, before the per-match-block parts (a prefix rewrite, a redirect's
    prefixRewrite: their length is the matched prefix)."""
    backend: Backend
    uri_rewrite: Y | None = None       # rewrite.uri
    redirect_prefix: Y | None = None   # redirect.prefixRewrite


class RuleReader:
    def __init__(self, cc: CompileCtx, namespace: str):
        self.cc = cc
        self.ns = namespace

    # -- the rule -----------------------------------------------------------------------------
    def action(self, rule: Y, label: str) -> RuleAction | None:
        cc, v = self.cc, rule.v
        targets = [k for k in ("route", "redirect", "directResponse", "delegate") if k in v]
        if not targets:
            cc.error(rule, f"{label}: a rule needs route, redirect or directResponse (Istio refuses it too)")
            return None
        if len(targets) > 1:
            cc.error_key(rule, targets[1], f"{label}: use one of route, redirect, directResponse "
                                           f"(Istio refuses {targets[0]} and {targets[1]} together)")
            return None
        if "delegate" in v:
            cc.error_key(rule, "delegate", f"{label}: delegate is not supported: import the delegate "
                                           f"VirtualService's rules instead (with the root's match, if any)")
            return None
        target = targets[0]
        if target != "route":
            for k in ("rewrite", "fault", "mirror", "mirrors", "retries", "timeout"):
                if k in v:
                    cc.error_key(rule, k, f"{label}: {k} cannot go with {target} (Istio refuses it)")
        for k in ("mirror_percent",):
            if k in v:
                cc.error_key(rule, k, f"{label}: {k}: write mirrorPercentage: {{value: N}}")
        ops = self.header_ops(v.get("headers"), label, direct=target == "directResponse")
        if "corsPolicy" in v:
            cc.warn(rule, f"{label}: corsPolicy is not supported yet: condroute does not answer CORS preflights "
                          f"or add CORS headers; requests are routed as if it were absent", key="corsPolicy")
        injected = fault(self.cc, v["fault"], label) if "fault" in v else None
        kw: dict[str, Any] = {}
        if target == "directResponse":
            resp = direct_response(self.cc, v["directResponse"], tuple(ops.set) + tuple(ops.add), label)
            if resp is None:
                return None
            return RuleAction(Backend(name="direct-response", line=v["directResponse"].line, respond=resp))
        if target == "redirect":
            red = redirect(self.cc, v["redirect"], label)
            if red is None:
                return None
            red_node = v["redirect"]
            return RuleAction(Backend(name="redirect", line=red_node.line, redirect=red[0]), redirect_prefix=red[1])
        route = self.route(v["route"], label)
        if route is None:
            return None
        name, up, split, dest_ops = route
        for extra in dest_ops:
            ops.set += extra.set
            ops.add += extra.add
            ops.remove += extra.remove
            ops.host = extra.host or ops.host
        kw.update(set_headers=tuple(ops.set), add_headers=tuple(ops.add), remove_headers=tuple(ops.remove),
                  host_rewrite=ops.host, retries=DEFAULT_RETRIES)
        uri_rewrite = None
        if "rewrite" in v:
            uri_rewrite = self.rewrite(v["rewrite"], label, kw)
        if "timeout" in v:
            kw["timeout"] = self.duration(v["timeout"], f"{label}: timeout")
        if "retries" in v:
            self.retry_policy(rule, retries(self.cc, v["retries"], label), label, kw)
        if injected is not None:
            kw["fault"] = injected
        mirrors = self.mirrors(rule, label)
        if mirrors:
            kw["mirrors"] = mirrors
        return RuleAction(Backend(name=name, line=v["route"].line, upstream=up, split=split, preserve_host=True, **kw),
                          uri_rewrite=uri_rewrite)

    def for_block(self, act: RuleAction, block: BlockMatch | None, label: str) -> Backend:
        """The rule's backend for one of its match blocks (``None``: the rule has no match)."""
        b = act.backend
        kind_ = block.uri_kind if block is not None else None
        value = block.uri_value if block is not None else ""
        if act.uri_rewrite is not None:
            text = act.uri_rewrite.text or ""
            if kind_ == "prefix":
                rw = PathRewrite("prefix", text, prefix=value)
            elif kind_ in ("exact", "regex"):
                rw = PathRewrite("full", text)
            else:
                self.cc.warn(act.uri_rewrite, f"{label}: rewrite uri {text!r} with no uri match replaces only the "
                                              f"leading \"/\" (Envoy's prefix_rewrite of the prefix \"/\"): /foo "
                                              f"becomes {text}foo; match a uri prefix to replace it")
                rw = PathRewrite("prefix", text, prefix="/")
            b = dataclasses.replace(b, rewrite=rw)
        if act.redirect_prefix is not None and b.redirect is not None:
            text = act.redirect_prefix.text or ""
            if kind_ != "prefix":
                self.cc.error(act.redirect_prefix, f"{label}: redirect prefixRewrite needs a uri prefix match in "
                                                   f"every match block (Istio refuses it otherwise)")
            else:
                b = dataclasses.replace(b, redirect=dataclasses.replace(
                    b.redirect, path=PathRewrite("prefix", text, prefix=value)))
        return b

    # -- route: destinations ------------------------------------------------------------------
    def route(self, node: Y, label: str) -> tuple[str, Upstream | None, Split | None, list[HeaderOps]] | None:
        cc = self.cc
        if not cc.expect_list(node, f"{label}: route"):
            return None
        if not node.v:
            cc.error(node, f"{label}: route is empty")
            return None
        arms: list[tuple[Upstream, float, Y]] = []
        dest_ops: list[HeaderOps] = []
        ok = True
        for d in node.v:
            if not cc.expect_map(d, f"{label}: a route destination") or not check_keys(d, DEST_KEYS, f"{label}: a route destination", cc):
                ok = False
                continue
            if "destination" not in d.v:
                cc.error(d, f"{label}: a route entry needs `destination` ({{host, subset, port}})")
                ok = False
                continue
            up = self.destination(d.v["destination"], label)
            w = 0.0
            if "weight" in d.v:
                wn = d.v["weight"]
                if isinstance(wn.v, bool) or not isinstance(wn.v, int) or wn.v < 0:
                    cc.error(wn, f"{label}: weight must be a whole number >= 0, not {kind(wn.v)}")
                    ok = False
                else:
                    w = float(wn.v)
            if "headers" in d.v:
                if len(node.v) > 1:
                    cc.warn(d, f"{label}: headers of one destination among several are not supported yet: they "
                               f"are not applied (put them on the rule to apply them to every destination)",
                            key="headers")
                else:
                    dest_ops.append(self.header_ops(d.v["headers"], label, direct=False))
            if up is None:
                ok = False
                continue
            arms.append((up, w, d))
        if not ok:
            return None
        if len(arms) == 1:
            return "destination", arms[0][0], None, dest_ops
        if sum(w for _, w, _ in arms) <= 0:
            cc.error(node, f"{label}: every destination has weight 0 (Istio refuses it: \"total destination "
                           f"weight = 0\")")
            return None
        kept = tuple((up, w) for up, w, _ in arms if w > 0)
        return "weighted", None, Split(by="random", kind="random", key="", arms=kept, salt=""), dest_ops

    def destination(self, node: Y, label: str, role: str = "destination") -> Upstream | None:
        cc = self.cc
        if not cc.expect_map(node, f"{label}: destination") or not check_keys(node, DESTINATION_KEYS, f"{label}: destination", cc):
            return None
        hn = node.v.get("host")
        if hn is None or not hn.text:
            cc.error(hn or node, f"{label}: destination needs `host` (a service name such as reviews)")
            return None
        host = hn.text.lower().rstrip(".")
        subset = None
        if "subset" in node.v:
            subset = node.v["subset"].text
            if not subset:
                cc.error(node.v["subset"], f"{label}: subset must be a name, not {kind(node.v['subset'].v)}")
                return None
        port = None
        if "port" in node.v:
            pn = node.v["port"]
            num = pn.v.get("number") if isinstance(pn.v, dict) else None
            if num is None or isinstance(num.v, bool) or not isinstance(num.v, int) or not 1 <= num.v <= 65535:
                cc.error(pn, f"{label}: destination port must be {{number: N}} with N from 1 to 65535")
                return None
            port = num.v
        short = host.split(".", 1)[0]
        names: list[str] = []
        if subset:
            names += [f"{host}/{subset}", f"{short}/{subset}"]
        if port:
            names += [f"{host}:{port}", f"{short}:{port}"]
        names += [host, short]
        what = f"{role} {host}" + (f" subset {subset}" if subset else "") + (f" port {port}" if port else "")
        # loaded directly (not imported): the service's cluster DNS name; a subset is a set of pods
        # a DestinationRule selects, which no DNS name reaches, so it must be mapped
        fqdn = host if "." in host else f"{host}.{self.ns}.svc.cluster.local"
        return resolve(cc, hn, list(dict.fromkeys(names)), what,
                       cluster=None if subset else (fqdn, port or 80))

    # -- headers ------------------------------------------------------------------------------
    def header_ops(self, node: Y | None, label: str, direct: bool) -> HeaderOps:
        """``headers: {request: {set, add, remove}, response: {...}}``. On a directResponse the
        response operations are the answer's headers (returned in ``set``/``add``); elsewhere they
        are a warning and the request operations are returned."""
        cc = self.cc
        ops = HeaderOps()
        if node is None or not cc.expect_map(node, f"{label}: headers") or not check_keys(node, HEADERS_KEYS, f"{label}: headers", cc):
            return ops
        req, resp = node.v.get("request"), node.v.get("response")
        if resp is not None and not direct:
            cc.warn(node, f"{label}: headers.response is not supported yet: responses reach the client as the "
                          f"upstream sent them", key="response")
        target = resp if direct else req
        if direct and req is not None:
            cc.warn(node, f"{label}: headers.request does nothing on a directResponse (no request is sent)",
                    key="request")
        if target is None or not cc.expect_map(target, f"{label}: headers") or \
                not check_keys(target, OPS_KEYS, f"{label}: headers", cc):
            return ops
        for op in ("set", "add"):
            if op not in target.v:
                continue
            m = target.v[op]
            if not cc.expect_map(m, f"{label}: {op}"):
                continue
            for name, vn in m.v.items():
                at = Y(None, *(m.key_pos or {}).get(name, (vn.line, vn.col)))
                value = self.header_value(vn, f"{label}: {op} {name}")
                if value is None:
                    continue
                low = name.lower()
                if low in HOST_NAMES and not direct:
                    if op == "set" or ops.host is None:
                        ops.host = value
                    continue
                if not TOKEN.match(name):
                    cc.error(at, f"{label}: {op}: {name!r} is not a header name")
                    continue
                if low in REQUEST_HEADERS_KEPT and not direct:
                    cc.error(at, f"{label}: {op} {name}: condroute cannot set it: it {REQUEST_HEADERS_KEPT[low]}")
                    continue
                if low in ("content-length", "transfer-encoding") and direct:
                    cc.error(at, f"{label}: {op} {name}: a direct answer is framed from its body")
                    continue
                (ops.set if op == "set" else ops.add).append((name, value))
        if "remove" in target.v:
            rn = target.v["remove"]
            if cc.expect_list(rn, f"{label}: remove"):
                for n in rn.v:
                    t = n.text
                    if not t or not TOKEN.match(t):
                        cc.error(n, f"{label}: remove: {n.v!r} is not a header name (Istio refuses pseudo-headers here)")
                    elif t.lower() == "host":
                        cc.error(n, f"{label}: remove {t}: Istio refuses removing the Host")
                    elif t.lower() in REMOVE_KEPT:
                        cc.error(n, f"{label}: remove {t}: condroute cannot remove it: it {REQUEST_HEADERS_KEPT[t.lower()]}")
                    elif not direct:
                        ops.remove.append(t)
        return ops

    def header_value(self, vn: Y, what: str) -> str | None:
        cc = self.cc
        if vn.text is None:
            if vn.v is None:
                return ""
            cc.error(vn, f"{what}: the value must be text, not {kind(vn.v)}")
            return None
        if _CTL.search(vn.text):
            cc.error(vn, f"{what}: the value must not contain a line break or a control character")
            return None
        if _FORMATTER.search(vn.text):
            cc.warn(vn, f"{what}: Envoy would expand {_FORMATTER.search(vn.text).group()}; condroute sends the "
                        f"value as written")
            return vn.text
        return vn.text.replace("%%", "%")

    # -- rewrite, redirect, directResponse ----------------------------------------------------
    def rewrite(self, node: Y, label: str, kw: dict) -> Y | None:
        cc = self.cc
        if not cc.expect_map(node, f"{label}: rewrite") or not check_keys(node, REWRITE_KEYS, f"{label}: rewrite", cc):
            return None
        v = node.v
        if "authority" in v:
            a = v["authority"].text
            if not a:
                cc.error(v["authority"], f"{label}: rewrite authority must be a host name")
            elif kw.get("host_rewrite") is not None:
                cc.error(v["authority"], f"{label}: rewrite authority and a headers.request host: set the Host once "
                                         f"(Istio refuses both)")
            else:
                kw["host_rewrite"] = a
        if "uri" in v and "uriRegexRewrite" in v:
            cc.error_key(node, "uriRegexRewrite", f"{label}: use one of rewrite uri and uriRegexRewrite "
                                                  f"(Istio refuses both)")
            return None
        if "uriRegexRewrite" in v:
            rr = v["uriRegexRewrite"]
            if cc.expect_map(rr, f"{label}: uriRegexRewrite") and \
                    check_keys(rr, ("match", "rewrite"), f"{label}: uriRegexRewrite", cc):
                mn, wn = rr.v.get("match"), rr.v.get("rewrite")
                if mn is None or not mn.text or wn is None or wn.text is None:
                    cc.error(rr, f"{label}: uriRegexRewrite needs both match (a regex) and rewrite")
                else:
                    why = regex_problem(mn.text)
                    if why is not None:
                        cc.error(mn, f"{label}: bad regular expression {mn.text!r}: {why} (RE2 syntax, as Envoy's)")
                    else:
                        kw["rewrite"] = PathRewrite("regex", wn.text, pattern=mn.text)
            return None
        if "uri" in v:
            un = v["uri"]
            if un.text is None or not un.text:
                cc.error(un, f"{label}: rewrite uri must be a path, not {kind(un.v)}")
                return None
            return un
        return None

    def retry_policy(self, rule: Y, policy: RetryPolicy, label: str, kw: dict[str, Any]) -> None:
        """``retries`` into ``kw``, and its perTryTimeout against the rule's ``timeout``: condroute's
        timeout bounds each attempt (mitm/retry.py), as Envoy's per_try_timeout does, while Istio's
        ``timeout`` bounds the whole request, retries included."""
        kw["retries"], kw["retry_on"] = policy.retries, policy.retry_on
        whole = kw.get("timeout")
        per = policy.per_try
        if per is not None and (whole is None or per < whole):
            kw["timeout"] = per
        responses = policy.retry_on - {"connect-failure"}
        each = kw.get("timeout")
        if whole is not None and each is not None and (responses or per is not None) and policy.retries \
                and worst_case(policy.retries, each) > whole:
            self.cc.warn(rule, f"{label}: timeout {rule.v['timeout'].text}: Istio bounds the whole request by it, "
                               f"retries included; condroute bounds each attempt by {each:g}s, so "
                               f"{policy.retries + 1} attempts may take up to {worst_case(policy.retries, each):g}s "
                               f"(the waits between them included)", key="timeout")

    def duration(self, node: Y, what: str) -> float | None:
        if node.text in ("0", "0s", "0ms"):
            return None                      # Istio: 0 disables the timeout
        return parse_duration(node, self.cc, what)

    def mirrors(self, rule: Y, label: str) -> tuple[Mirror, ...]:
        cc, v = self.cc, rule.v
        if "mirror" in v and "mirrors" in v:
            cc.error_key(rule, "mirrors", f"{label}: use one of mirror and mirrors (Istio refuses both)")
            return ()
        out: list[Mirror] = []
        if "mirror" in v:
            up = self.destination(v["mirror"], label, "mirror")
            pct = 100.0
            if "mirrorPercentage" in v:
                pct = percentage(v["mirrorPercentage"], default=100.0)
            elif "mirrorPercent" in v and isinstance(v["mirrorPercent"].v, int):
                pct = float(v["mirrorPercent"].v)
            if up is not None and pct > 0:
                out.append(Mirror(up, pct))
        elif "mirrorPercentage" in v or "mirrorPercent" in v:
            cc.warn(rule, f"{label}: mirrorPercentage without mirror does nothing",
                    key="mirrorPercentage" if "mirrorPercentage" in v else "mirrorPercent")
        if "mirrors" in v and cc.expect_list(v["mirrors"], f"{label}: mirrors"):
            for m in v["mirrors"].v:
                if not cc.expect_map(m, f"{label}: mirrors") or \
                        not check_keys(m, ("destination", "percentage"), f"{label}: mirrors", cc):
                    continue
                if "destination" not in m.v:
                    cc.error(m, f"{label}: a mirrors entry needs destination")
                    continue
                up = self.destination(m.v["destination"], label, "mirror")
                pct = percentage(m.v.get("percentage"), default=100.0)
                if up is not None and pct > 0:
                    out.append(Mirror(up, pct))
        return tuple(out)
