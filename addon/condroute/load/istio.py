"""Istio VirtualService documents → model Routes (rules-format "Imports"), in the order Istio and
Envoy would try them.

Sources: istio/api ``networking/v1alpha3/virtual_service.proto`` (v1 and v1beta1 are aliases of
that schema) and istio/istio ``pilot/pkg/networking/core/route/route.go`` (VirtualService → Envoy
routes); the notes of issue 14 cite them line by line.

* Each http rule becomes one Route **per match block** (Envoy gets one route per block; ORed blocks
  then keep their own rewrite length). Names: ``VS#N`` (N the rule's 1-based number, or its
  ``name``), ``#M`` appended when the rule has several match blocks (M 1-based, or the block's
  ``name``). ``Route.origin`` is the human label: ``virtualservice reviews, http rule 1
  (reviews.yaml:9)``.
* Rules are tried in order; the first that matches wins. A rule that matches every request ends
  the list: rules after it are never used (a located warning; Istio drops them too).
* ``spec.hosts`` are the routes' hosts: a short name ``reviews`` is also ``reviews.NS``,
  ``reviews.NS.svc`` and ``reviews.NS.svc.cluster.local`` (NS = metadata.namespace, ``default``),
  as a client in the VirtualService's namespace may write it; an FQDN is also its shorter forms.
* A request for one of those hosts that no rule matches is answered ``404`` (Envoy's
  route_not_found): route ``VS#no-match``, backend ``not-found``. The 404s come after every rule of
  the file's VirtualServices for those hosts, so that several VirtualServices for one host all get
  their turn (as Istio merges them).
* Envoy picks the virtual host (most specific domain) before the route: within a file the routes
  are grouped exact hosts first, then ``*.suffix`` (longest first), then ``*``. A VirtualService
  whose hosts fall in several such groups is emitted once per group; the later groups' route names
  get ``@HOST``.

What a rule does with the request: load/istio_rule.py; what a match block matches:
load/istio_match.py."""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Iterator

from ..model import Backend, Respond, Route
from ..node import Y
from .ctx import CompileCtx, kind
from .istio_match import MatchReader, check_keys
from .istio_rule import RULE_KEYS, RuleReader

SPEC_KEYS = ("exportTo", "gateways", "hosts", "http", "tcp", "tls")
CLUSTER_DOMAIN = "cluster.local"
_IP = re.compile(r"[0-9.]+|\[?[0-9a-fA-F:]+\]?")
_UNSAFE = re.compile(r"[/\s]+")


@dataclass
class _VS:
    name: str
    namespace: str
    node: Y
    hosts: dict[tuple, list[str]] = field(default_factory=dict)   # host group → host forms
    group_label: dict[tuple, str] = field(default_factory=dict)   # host group → the host written first
    routes: list[Route] = field(default_factory=list)              # hosts not set yet
    not_found: Route | None = None


def host_forms(h: str, ns: str) -> list[str]:
    """The Host values a client in namespace ``ns`` may use for the VirtualService host ``h``."""
    if h == "*" or h.startswith("*.") or _IP.fullmatch(h):
        return [h]
    if "." not in h:
        return [h, f"{h}.{ns}", f"{h}.{ns}.svc", f"{h}.{ns}.svc.{CLUSTER_DOMAIN}"]
    m = re.fullmatch(rf"([^.]+)\.([^.]+)\.svc\.{re.escape(CLUSTER_DOMAIN)}", h)
    if m:
        name, hns = m.groups()
        return [h, f"{name}.{hns}.svc", f"{name}.{hns}"] + ([name] if hns == ns else [])
    return [h]


def host_group(h: str) -> tuple:
    """Envoy's domain precedence: exact names, then ``*.suffix`` longest first, then ``*``."""
    if h == "*":
        return (2, 0)
    if h.startswith("*."):
        return (1, -len(h))
    return (0, 0)


def safe_name(text: str) -> str:
    """A route-name part: no "/" (X-Condroute is ROUTE/BACKEND) and no spaces."""
    return _UNSAFE.sub("-", text.strip()) or "-"


class VirtualServiceReader:
    def __init__(self, cc: CompileCtx):
        self.cc = cc
        self.base = os.path.basename(cc.file)

    def read(self, d: Y, name: str) -> _VS | None:
        cc = self.cc
        meta = d.v.get("metadata")
        ns = "default"
        if meta is not None and isinstance(meta.v, dict) and meta.v.get("namespace") is not None:
            ns = (meta.v["namespace"].text or "default").lower()
        spec = d.v.get("spec")
        if spec is None or not cc.expect_map(spec, f"VirtualService {name}: spec"):
            if spec is None:
                cc.error(d, f"VirtualService {name} has no spec")
            return None
        if not check_keys(spec, SPEC_KEYS, f"VirtualService {name}: spec", cc):
            return None
        vs = _VS(name, ns, d)
        hn = spec.v.get("hosts")
        if hn is None or (isinstance(hn.v, list) and not hn.v):
            cc.error(hn or spec, f"VirtualService {name} has no hosts: it is a delegate, which condroute does not "
                                 f"read; import the root VirtualService's rules instead")
            return None
        if not cc.expect_list(hn, f"VirtualService {name}: hosts"):
            return None
        for h in hn.v:
            t = (h.text or "").lower().rstrip(".")
            if not t or ("*" in t and not (t == "*" or (t.startswith("*.") and "*" not in t[2:]))):
                cc.error(h, f"VirtualService {name}: hosts: {h.text!r} is not a host name, \"*.suffix\" or \"*\"")
                continue
            g = host_group(t)
            vs.group_label.setdefault(g, t)
            vs.hosts.setdefault(g, [])
            vs.hosts[g] += [f for f in host_forms(t, ns) if f not in vs.hosts[g]]
        for other in ("tcp", "tls"):
            if other in spec.v:
                cc.warn(spec, f"VirtualService {name}: {other} routes are not read (condroute routes HTTP)", key=other)
        http = spec.v.get("http")
        if http is None:
            if not any(k in spec.v for k in ("tcp", "tls")):
                cc.error(spec, f"VirtualService {name} has no http rules")
            return None
        if not cc.expect_list(http, f"VirtualService {name}: http"):
            return None
        self.rules(vs, http)
        return vs

    def rules(self, vs: _VS, http: Y) -> None:
        cc = self.cc
        matches, actions = MatchReader(cc), RuleReader(cc, vs.namespace)
        used: dict[str, int] = {}
        catch_all: str | None = None
        for i, rule in enumerate(http.v):
            rname = None
            if isinstance(rule.v, dict) and "name" in rule.v and rule.v["name"].text:
                rname = rule.v["name"].text
            base = f"{safe_name(vs.name)}#{safe_name(rname) if rname else i + 1}"
            if catch_all is not None:
                cc.warn(rule, f"{base} is never used: {catch_all} before it matches every request (Istio leaves "
                              f"it out too)")
                continue
            if not cc.expect_map(rule, f"http rule {base}"):
                continue
            if not check_keys(rule, RULE_KEYS, f"http rule {base}", cc):
                continue
            if base in used:
                cc.error_key(rule, "name", f"{vs.name}: two http rules are named {rname!r} (the other at line "
                                           f"{used[base]})")
                continue
            used[base] = rule.line
            act = actions.action(rule, base)
            blocks: list[tuple[Y | None, str]] = [(None, base)]
            mn = rule.v.get("match")
            if mn is not None and mn.v is not None and cc.expect_list(mn, f"{base}: match") and mn.v:
                blocks = []
                for j, b in enumerate(mn.v):
                    bname = b.v["name"].text if isinstance(b.v, dict) and "name" in b.v and b.v["name"].text else None
                    blocks.append((b, f"{base}#{safe_name(bname) if bname else j + 1}" if len(mn.v) > 1 else base))
            for j, (b, rname_full) in enumerate(blocks):
                bm = matches.block(b, rname_full) if b is not None else None
                if b is not None and bm is None:
                    continue
                if act is None:
                    continue
                backend = actions.for_block(act, bm, rname_full)
                at = b if b is not None and len(blocks) > 1 else rule
                origin = (f"virtualservice {vs.name}, http rule {i + 1}" + (f" ({rname})" if rname else "")
                          + (f", match {j + 1}" if len(blocks) > 1 else "") + f" ({self.base}:{at.line})")
                vs.routes.append(Route(
                    name=rname_full, line=at.line, methods=bm.methods if bm else None, path=bm.path if bm else None,
                    conditions=bm.conditions if bm else None, backends=(backend,), file=cc.file, origin=origin))
                if bm is None or bm.catch_all:
                    catch_all = rname_full
        if catch_all is None:
            vs.not_found = Route(
                name=f"{safe_name(vs.name)}#no-match", line=vs.node.line,
                backends=(Backend(name="not-found", line=vs.node.line, respond=Respond(404, "", ())),),
                file=cc.file,
                origin=f"virtualservice {vs.name}: no http rule matches, Envoy answers 404 ({self.base}:{vs.node.line})")


def _names(docs: list[Y], cc: CompileCtx) -> list[tuple[Y, str] | None]:
    """Each document's VirtualService name for route names: metadata.name, or name.namespace when
    two VirtualServices of the file share a name (in different namespaces)."""
    seen: dict[tuple[str, str], Y] = {}
    raw: list[tuple[Y, str, str] | None] = []
    for d in docs:
        meta = d.v.get("metadata")
        nn = meta.v.get("name") if meta is not None and isinstance(meta.v, dict) else None
        if nn is None or not nn.text:
            cc.error(nn or meta or d, "a VirtualService needs metadata.name (its routes are named after it)")
            raw.append(None)
            continue
        ns_node = meta.v.get("namespace")
        ns = (ns_node.text if ns_node is not None and ns_node.text else "default").lower()
        if (nn.text, ns) in seen:
            cc.error(nn, f"VirtualService {nn.text} (namespace {ns}) is defined twice in this file (first at line "
                         f"{seen[(nn.text, ns)].line})")
            raw.append(None)
            continue
        seen[(nn.text, ns)] = nn
        raw.append((d, nn.text, ns))
    count: dict[str, int] = {}
    for r in raw:
        if r is not None:
            count[r[1]] = count.get(r[1], 0) + 1
    return [None if r is None else (r[0], r[1] if count[r[1]] == 1 else f"{r[1]}.{r[2]}") for r in raw]


def virtualservice_routes(docs: list[Y], cc: CompileCtx) -> Iterator[Route]:
    """The routes of every VirtualService in ``docs`` (mappings with apiVersion networking.istio.io/*
    and kind VirtualService, List items already expanded), in the order Istio would try them."""
    reader = VirtualServiceReader(cc)
    services: list[_VS] = []
    for entry in _names(docs, cc):
        if entry is None:
            continue
        d, name = entry
        if not isinstance(d.v, dict):
            cc.error(d, f"a VirtualService must be a mapping, not {kind(d.v)}")
            continue
        vs = reader.read(d, name)
        if vs is not None:
            services.append(vs)
    groups = sorted({g for vs in services for g in vs.hosts})
    for g in groups:
        not_found: list[Route] = []
        answered: set[str] = set()       # hosts an earlier 404 of this group already answers
        for vs in services:
            if g not in vs.hosts:
                continue
            hosts = tuple(vs.hosts[g])
            first = min(vs.hosts)
            suffix = "" if g == first else f"@{vs.group_label[g]}"
            for r in vs.routes:
                yield dataclasses.replace(r, hosts=hosts, name=r.name + suffix)
            if vs.not_found is not None and not set(hosts) <= answered:
                answered.update(hosts)
                not_found.append(dataclasses.replace(vs.not_found, hosts=hosts, name=vs.not_found.name + suffix))
        yield from not_found
