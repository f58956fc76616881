"""The action side of the HTTPRoute export: a backend as a rule's ``backendRefs``, ``filters``
(RequestHeaderModifier, URLRewrite with the Host and the forwarded path, RequestRedirect,
RequestMirror) and ``timeouts``, and the Service an upstream becomes. ``httproute`` builds the
document; :class:`Actions` is the part of its exporter that writes actions.

Services: an upstream is the Service named after it (its name as a DNS label; a URL written in a
backend: ``HOST-PORT``), on the upstream's port; its base path becomes part of the URLRewrite.
Host: condroute sends the upstream's authority; ``URLRewrite.hostname`` carries it when the host
is a DNS name (without the port: a note when it is not the scheme's default), else the gateway
sends the client's Host (a note; the round trip then does not compare Host).
Paths: the forwarded path is written only where a URLRewrite says exactly the same: a fixed path
(ReplaceFullPath), ``PREFIX{path}`` (ReplacePrefixMatch of the route's prefix, or ReplaceFullPath
on an exact path), ``PREFIX/{rest}`` on a ``/prefix/*`` route (ReplacePrefixMatch for the paths
below the prefix, and an Exact rule with ReplaceFullPath ``PREFIX/`` for the bare prefix, which
ReplacePrefixMatch would write without its ``/``).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from .. import model
from .httproute_match import PathM, exact_path
from .ir import NotExported, Where

_NAME_PORT = re.compile(r"^([a-z]([-a-z0-9]{0,61}[a-z0-9])?):([0-9]{1,5})$")
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def dns_label(text: str, limit: int = 63) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not s or not s[0].isalpha():
        s = "u-" + s if s else "u"
    return s[:limit].rstrip("-")


def is_dns_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        return bool(_HOSTNAME.match(host)) and not host.startswith("*.") and len(host) <= 253


def duration(secs: float, at: Where) -> str:
    """A GEP-2257 duration (``10s``, ``1500ms``, ``1h30m``)."""
    ms = round(secs * 1000)
    if abs(ms - secs * 1000) > 1e-6 or ms <= 0:
        raise NotExported(at, f"timeout {secs:g} s is not a whole number of milliseconds (GEP-2257 durations)")
    s, ms = divmod(ms, 1000)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")]
    return "".join(f"{n}{u}" for n, u in parts if n) or "0s"


def _literal_prefix(r: model.Route) -> str | None:
    """The prefix of a ``/prefix/*`` route ("" for every path), None for any other path."""
    p = r.path
    if p is None:
        return ""
    if p.segs is not None and p.has_rest and all(not is_p for is_p, _ in p.segs):
        return "/" + "/".join(t for _, t in p.segs) if p.segs else ""
    return None


class Actions:
    """Writes actions; the exporter (``httproute._Export``) holds the state it fills."""
    services: dict[tuple[str, str], tuple[str, int]]   # (upstream name, origin+base) -> Service, port
    ports: dict[str, tuple[int, model.Upstream]]        # "SERVICE:PORT" -> (port, upstream)
    host_free: set[str]                        # upstream origins whose Host the gateway does not send
    notes: list[str]

    def service(self, up: model.Upstream) -> tuple[str, int]:
        """The Service (name, port) an upstream is: an upstream named ``NAME:PORT`` (as the HTTPRoute
        import looks a backendRef up) is Service NAME on PORT; another is the Service named after it
        on the upstream's own port."""
        key = (up.name, up.origin + up.base_path)
        if key in self.services:
            return self.services[key]
        m = _NAME_PORT.match(up.name)
        if m is not None and 0 < int(m.group(3)) < 65536:
            base, port = m.group(1), int(m.group(3))
        else:
            base, port = dns_label(up.name if "://" not in up.name else f"{up.host}-{up.port}"), up.port
        name, n = base, 2
        taken = set(self.services.values())
        while (name, port) in taken:
            name = f"{base[:60]}-{n}"
            n += 1
        self.services[key] = (name, port)
        self.ports[f"{name}:{port}"] = (port, up)
        if up.scheme == "https":
            self._note(f"upstream {up.name} is https: Service {name} is reached over plain HTTP unless a "
                       f"BackendTLSPolicy says otherwise (not written)")
        return name, port

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def ref(self, up: model.Upstream, weight: int | None = None) -> dict:
        name, port = self.service(up)
        d: dict[str, Any] = {"name": name, "port": port}
        if weight is not None:
            d["weight"] = weight
        return d

    # -------------------------------------------------------------------------------- actions
    def host(self, b: model.Backend, ups: list[model.Upstream], at: Where) -> str | None:
        """URLRewrite.hostname for the Host condroute sends (None: the client's)."""
        if b.host_rewrite is not None:
            if not is_dns_name(b.host_rewrite):
                raise NotExported(at, f"the Host {b.host_rewrite} is not a DNS name: URLRewrite.hostname cannot send it")
            return b.host_rewrite
        if b.preserve_host:
            return None
        hosts = {up.host for up in ups}
        if len(hosts) == 1 and is_dns_name(next(iter(hosts))):
            h = next(iter(hosts))
            for up in ups:
                default = 443 if up.scheme == "https" else 80
                if up.port != default:
                    self._note(f"upstream {up.name}: the gateway sends Host {h} (URLRewrite.hostname takes no port); "
                               f"condroute sends {up.authority}")
            return h
        for up in ups:
            self.host_free.add(up.origin)
            self._note(f"upstream {up.name} ({up.authority}): the gateway sends the client's Host to Service "
                       f"{self.service(up)[0]}, condroute sends {up.authority} (URLRewrite.hostname takes a DNS "
                       f"name only; give the upstream its DNS name, or set preserve_host: true, for the same Host)")
        return None

    def headers_filter(self, b: model.Backend, at: Where) -> dict | None:
        sets = list(b.set_headers)
        set_names = {k.lower() for k, _ in sets}
        removes = [h for h in b.remove_headers if h.lower() not in set_names]
        adds = list(b.add_headers)
        seen = set_names | {h.lower() for h in removes}
        for k, _ in adds:
            if k.lower() in seen:
                raise NotExported(at, f"header {k} is both set or removed and added: an HTTPRoute header "
                                      f"modifier takes one action per header")
        if not (sets or removes or adds):
            return None
        body: dict[str, Any] = {}
        if sets:
            body["set"] = [{"name": k, "value": v} for k, v in sets]
        if adds:
            body["add"] = [{"name": k, "value": v} for k, v in adds]
        if removes:
            body["remove"] = list(dict.fromkeys(removes))
        return {"type": "RequestHeaderModifier", "requestHeaderModifier": body}

    def variants(self, r: model.Route, b: model.Backend, ups: list[model.Upstream], at: Where
                 ) -> list[tuple[PathM | None, dict | None, bool]]:
        """(path instead of the route's, the URLRewrite path, one match per rule) for each rule the
        backend needs: the forwarded path as HTTPRoute writes it."""
        if b.rewrite is not None:
            rw = b.rewrite
            if rw.kind == "full":
                return [(None, {"type": "ReplaceFullPath", "replaceFullPath": rw.value}, False)]
            if rw.kind == "segments" and _literal_prefix(r) == rw.prefix.rstrip("/"):
                return [(None, {"type": "ReplacePrefixMatch", "replacePrefixMatch": rw.value or "/"}, True)]
            raise NotExported(at, f"the path rewrite ({rw.kind}) has no HTTPRoute URLRewrite")
        bases = {up.base_path for up in ups}
        if len(bases) > 1:
            raise NotExported(at, "the split's upstreams have different base paths: one URLRewrite serves a rule")
        base = bases.pop() if bases else ""
        parts = list(b.path.parts) if b.path is not None else [(True, "path")]
        if base:
            parts = [(False, base)] + parts
        merged: list[tuple[bool, str]] = []
        for is_ph, s in parts:
            if merged and not is_ph and not merged[-1][0]:
                merged[-1] = (False, merged[-1][1] + s)
            else:
                merged.append((is_ph, s))
        shown = "".join("{" + s + "}" if p else s for p, s in merged)
        if all(not p for p, _ in merged):
            return [(None, {"type": "ReplaceFullPath", "replaceFullPath": shown}, False)]
        if merged == [(True, "path")]:
            return [(None, None, False)]
        rp = r.path
        prefix = exact = None
        if rp is None:
            prefix = ""
        elif rp.segs is not None and all(not p for p, _ in rp.segs):
            lit = "/" + "/".join(t for _, t in rp.segs) if rp.segs else ""
            prefix = lit if rp.has_rest else None
            exact = None if rp.has_rest else (lit or "/")
        why = (f"the forwarded path {shown} has no HTTPRoute URLRewrite (which writes a fixed path, or replaces "
               f"a PathPrefix: PREFIX{{path}}, or PREFIX/{{rest}} on a /prefix/* route)")
        if len(merged) == 2 and not merged[0][0] and merged[1] == (True, "path"):
            q = merged[0][1]
            if q.endswith("/"):
                raise NotExported(at, f"the forwarded path {shown} doubles the '/' before the path: "
                                      f"no HTTPRoute URLRewrite writes that")
            if prefix is not None:
                return [(None, {"type": "ReplacePrefixMatch", "replacePrefixMatch": q + prefix}, True)]
            if rp is not None and rp.segs is not None and not rp.has_rest and all(not p for p, _ in rp.segs):
                return [(None, {"type": "ReplaceFullPath", "replaceFullPath": q + exact}, False)]
            raise NotExported(at, why)
        if len(merged) == 2 and not merged[0][0] and merged[1] == (True, "rest") and merged[0][1].endswith("/") \
                and prefix is not None:
            q0 = merged[0][1][:-1]
            rewrite = {"type": "ReplacePrefixMatch", "replacePrefixMatch": q0 or "/"}
            if prefix == "":
                return [(None, rewrite, True)]
            # the bare prefix gets its own Exact rule (ReplacePrefixMatch would drop the '/'); the
            # PathPrefix rule then decides only the paths below it (Exact outranks it at the gateway)
            under = PathM("PathPrefix", prefix, tuple((False, t) for t in prefix.split("/")[1:]), True, True)
            return [(exact_path(prefix), {"type": "ReplaceFullPath", "replaceFullPath": q0 + "/"}, False),
                    (under, rewrite, True)]
        if merged == [(True, "rest")] and prefix == "":
            return [(None, None, False)]
        raise NotExported(at, why)

    def action(self, r: model.Route, b: model.Backend, at: Where) -> tuple[dict, list]:
        """The rule's action (backendRefs, filters, timeouts) and its path variants."""
        if b.respond is not None:
            raise NotExported(at, f"a direct answer ({b.respond.status}) has no HTTPRoute equivalent: HTTPRoute "
                                  f"v1 has no direct response (route it to a Service that answers it)")
        if b.retries:
            raise NotExported(at, "retries are not in HTTPRoute's standard channel (the experimental `retry` "
                                  "field is implementation-specific)")
        rule: dict[str, Any] = {}
        filters: list[dict] = []
        if b.redirect is not None:
            rd = b.redirect
            body: dict[str, Any] = {}
            if rd.scheme:
                body["scheme"] = rd.scheme
            if rd.host:
                body["hostname"] = rd.host
            if rd.port is not None:
                body["port"] = rd.port
            elif rd.port_from == "scheme" and not rd.scheme:
                raise NotExported(at, "a redirect to the scheme's default port without a scheme")
            elif rd.port_from == "request" and rd.scheme:
                raise NotExported(at, "a redirect to another scheme that keeps the request's port: a gateway "
                                      "sends it to the scheme's own port")
            single = False
            if rd.path is not None:
                if rd.path.kind == "full":
                    body["path"] = {"type": "ReplaceFullPath", "replaceFullPath": rd.path.value}
                elif rd.path.kind == "segments" and _literal_prefix(r) == rd.path.prefix.rstrip("/"):
                    body["path"] = {"type": "ReplacePrefixMatch", "replacePrefixMatch": rd.path.value or "/"}
                    single = True
                else:
                    raise NotExported(at, f"the redirect's path rewrite ({rd.path.kind}) is not exported")
            body["statusCode"] = rd.status
            filters.append({"type": "RequestRedirect", "requestRedirect": body})
            rule["filters"] = filters
            return rule, [(None, None, single)]
        ups: list[model.Upstream] = []
        if b.split is not None:
            if b.split.kind != "random":
                raise NotExported(at, f"a sticky split (by {b.split.by}) has no HTTPRoute equivalent: backendRef "
                                      f"weights are a fresh random draw for every request")
            ws = [w for _, w in b.split.arms]
            scale = next((k for k in (1, 10, 100, 1000, 10000) if all(abs(w * k - round(w * k)) < 1e-9 for w in ws)),
                         None)
            if scale is None or any(round(w * scale) > 1_000_000 for w in ws):
                raise NotExported(at, "the split's weights are not whole numbers an HTTPRoute weight can hold")
            refs = [self.ref(up, int(round(w * scale))) for up, w in b.split.arms]
            ups = [up for up, _ in b.split.arms]
        elif b.upstream is not None:
            refs = [self.ref(b.upstream)]
            ups = [b.upstream]
        else:
            raise NotExported(at, "the backend forwards to the request's original destination: a gateway has none")
        variants = self.variants(r, b, ups, at)
        hf = self.headers_filter(b, at)
        if hf is not None:
            filters.append(hf)
        host = self.host(b, ups, at)
        if host is not None:
            filters.append({"type": "URLRewrite", "urlRewrite": {"hostname": host}})
        for mi in b.mirrors:
            body = {"backendRef": self.ref(mi.upstream)}
            if mi.percent != 100:
                if float(mi.percent).is_integer():
                    body["percent"] = int(mi.percent)
                else:
                    body["fraction"] = {"numerator": int(round(mi.percent * 10000)), "denominator": 1_000_000}
            filters.append({"type": "RequestMirror", "requestMirror": body})
        if filters:
            rule["filters"] = filters
        rule["backendRefs"] = refs
        if b.timeout:
            rule["timeouts"] = {"request": duration(b.timeout, at)}
        return rule, variants

    @staticmethod
    def split_exact(exact: PathM, variant: tuple) -> list[tuple[PathM | None, dict | None, bool]]:
        """A PathPrefix rule of a route where another backend has its own rule for the bare prefix
        (PREFIX/{rest}): split the same way, so that the gateway's ranking (Exact before PathPrefix)
        treats every backend of the route alike."""
        _, rewrite, single = variant
        prefix = exact.value
        on_exact = rewrite
        if rewrite is not None and rewrite["type"] == "ReplacePrefixMatch":
            on_exact = {"type": "ReplaceFullPath", "replaceFullPath": rewrite["replacePrefixMatch"].rstrip("/") or "/"}
        under = PathM("PathPrefix", prefix, tuple((False, t) for t in prefix.split("/")[1:]), True, True)
        return [(exact, on_exact, False), (under, rewrite, single)]

    @staticmethod
    def _rewrite(rule: dict, path: dict) -> dict:
        host = next((f["urlRewrite"].get("hostname") for f in rule.get("filters", []) if f["type"] == "URLRewrite"),
                    None)
        body: dict[str, Any] = {}
        if host:
            body["hostname"] = host
        body["path"] = path
        return {"type": "URLRewrite", "urlRewrite": body}
