"""``condroute export --to httproute``: the rules as Gateway API HTTPRoutes
(``gateway.networking.k8s.io/v1``, standard channel), one YAML document per group of hostnames.

What becomes what (README "From laptop to production", /work/notes/readme-documents.md):

- **Hostnames.** condroute tries routes in file order whatever the host; a gateway gives a request
  only to the HTTPRoutes of the most specific hostname that matches it. So every hostname a route
  names gets an HTTPRoute holding, in file order, every route that can see that host (the routes
  naming it, those with a wildcard covering it, those without hosts); hostnames with the same routes
  share one HTTPRoute. Routes without hosts also go into one HTTPRoute without ``hostnames``.
- **One rule per backend** (per match variant, below), in condroute's order (non-fallback backends
  in file order, then the fallback), its ``matches`` the route's path and methods AND the backend's
  ``when`` (``any`` → several matches); ``httproute_match`` says how values are written.
- **Precedence.** The gateway does not try rules in order: it ranks matches (Exact path, longest
  PathPrefix, RegularExpression, a method, most headers, most query parameters, then order). The
  export keeps file order wherever two matches that lead to different backends can both match one
  request; where the gateway would rank the later one first, that later backend is refused
  (located), never emitted with a changed meaning. Requests a route matches but none of its
  backends takes (no fallback) must also not reach a later route: when a later rule could take
  them, the route is refused.
- **Services.** An upstream is the Service named after it (the upstream's name as a DNS label;
  a URL written in a backend: ``HOST-PORT``), on the upstream's port. Its base path becomes a
  URLRewrite. The Host the upstream gets: condroute sends the upstream's own host; the export
  writes ``URLRewrite.hostname`` with it when it is a DNS name, and notes where it cannot (an IP
  address: the gateway then sends the client's Host).
- **Not expressible** (refused, located): cookies, client addresses, JWT claims, GeoIP, CEL,
  ``not``, absent headers, numbers, sticky splits (gateway weights are a fresh draw per request),
  direct answers with a body or status (no direct response in HTTPRoute v1), retries (not in the
  standard channel), ``on_no_match: error`` for a route that can select nothing (a gateway
  answers 404 or 500, never 502), path templates other than a fixed path, ``PREFIX{path}`` and
  ``PREFIX/{rest}``. No route at all: nothing is written for it (the gateway's own 404).

The parts: ``httproute_match`` (matches, precedence, overlap), ``httproute_action`` (backendRefs,
filters, Services), ``httproute_roundtrip`` (``--verify``: the export imported again).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from .. import model
from . import ir, toolbox
from .base import Exported, ExportOptions, Target
from .httproute_match import ANY_PATH, MAX_MATCHES, Match, apply, covers, disjoint, dnf, route_path
from .httproute_action import Actions, dns_label, is_dns_name
from .httproute_roundtrip import decided_by_refused
from .httproute_roundtrip import run as run_roundtrip
from .httproute_roundtrip import workdir_file
from .ir import NotExported, Where, where_line

API = "gateway.networking.k8s.io/v1"
MAX_RULES = 16
GATEWAY = "gateway"          # parentRefs: the Gateway the routes attach to (change it to yours)


@dataclass
class Entry:
    """One match of one rule, in condroute's order."""
    route: int
    backend: int                     # index in route.backends; -1: the route's "nothing selected"
    match: Match
    rule: dict
    at: Where
    single: bool = False             # its rule may hold only this match (ReplacePrefixMatch)
    variant: int = 0


@dataclass
class RouteInfo:
    route: model.Route
    at: Where
    bases: list[Match] = field(default_factory=list)
    covered: bool = False            # some exported backend always holds
    ends: bool = False               # ends in a 404 answer (the gateway's own)


class _Export(Actions):
    def __init__(self, rules: model.Rules):
        self.prepared = toolbox.prepare(rules, "httproute")     # enabled, the toolbox fields (export.toolbox)
        self.rules = self.prepared.rules
        self.refused: list[NotExported] = list(self.prepared.refused)
        self.notes: list[str] = list(self.prepared.notes)
        self.services: dict[tuple[str, str], tuple[str, int]] = {}   # (upstream name, origin+base) -> Service
        self.ports: dict[str, tuple[int, model.Upstream]] = {}
        self.host_free: set[str] = set()                  # upstream origins whose Host the gateway does not send
        self.entries: list[Entry] = []
        self.infos: list[RouteInfo] = []
        self.dead: set[tuple[int, int]] = set()
        self.covering: dict[int, int] = {}                 # route -> the backend that always holds
        self.ends: set[int] = set()                        # routes that end in the gateway's 404
        self.ends_by: dict[int, set[int]] = {}             # route -> its 404 backends
        self.parts: set[tuple[int, int | None]] = set()    # refused: (route, backend) or (route, None)

    # -------------------------------------------------------------------------------- services
    def refuse(self, e: NotExported, route: int, *backends: int | None) -> None:
        """Record a refusal and the part it leaves out: a backend of ``route``, or (no backend, or
        None) the whole route; ``refuse(e, r1, r2, ...)`` with several routes is not meant: use
        :meth:`refuse_routes`."""
        self.refused.append(e)
        if not backends or backends == (None,):
            self.parts.add((route, None))
        else:
            for b in backends:
                self.parts.add((route, b))

    def refuse_routes(self, e: NotExported, routes) -> None:
        self.refused.append(e)
        self.parts.update((ri, None) for ri in routes)

    def skipped(self, d) -> bool:
        """A decision made by a part that was not exported (its route, or its backend)."""
        return self.prepared.decided_by_refused(d) or decided_by_refused(self.rules.routes, self.parts, d, self.ends_by)

    # -------------------------------------------------------------------------------- routes
    def route(self, ri: int, r: model.Route) -> None:
        file = ir.route_file(self.rules, r)
        at = where_line(file, r.line)
        info = RouteInfo(r, at)
        self.infos.append(info)
        try:
            if r.propagate is not None:
                raise NotExported(at, "a gateway token check that sets headers from claims has no HTTPRoute equivalent")
            for h in r.hosts:
                if h != "*" and not is_dns_name(h.removeprefix("*.")):
                    raise NotExported(at, f"host {h} is not a hostname an HTTPRoute can name (no IP addresses)")
            base = Match(route_path(r.path, at) if r.path is None or r.path.matcher is None else ANY_PATH)
            bases = [base] if not r.methods else [Match(base.path, m) for m in sorted(r.methods)]
            conds: list[ir.Cond] = []
            if r.path is not None and r.path.matcher is not None:
                conds.append(ir.Atom("path", None, ir.matcher(r.path.matcher), ir.where(r.path.matcher, file)))
            rc = ir.route_conditions(r, file)
            if rc is not None:
                conds.append(rc)
            if conds:
                c = conds[0] if len(conds) == 1 else ir.And(tuple(conds))
                bases = [m for b0 in bases for conj in dnf(c) for m in apply(b0, conj)]
            info.bases = bases
        except NotExported as e:
            self.refuse(e, ri)
            return
        order = [i for i, b in enumerate(r.backends) if not b.fallback] + \
                [i for i, b in enumerate(r.backends) if b.fallback]
        built: list[tuple[int, Where, dict, list, list[Match]]] = []
        for bi in order:
            b = r.backends[bi]
            bat = where_line(file, b.line)
            if info.covered:
                self.dead.add((ri, bi))
                self._note(f"{bat}: route {r.name}: backend {b.name} is never selected (an earlier backend always "
                           f"holds): not written")
                continue
            if isinstance(b.when, model.Never):
                self._note(f"{bat}: route {r.name}: backend {b.name} can never hold ({b.when.reason}): not written")
                continue
            if b.respond is not None and b.respond.status == 404 and not b.respond.headers and b.when is None:
                # the gateway's own 404: nothing written, and no later rule may take these requests
                info.ends = True
                self._note(f"{bat}: route {r.name}: backend {b.name} answers 404: not written, the gateway answers "
                           f"its own 404 (its body, not condroute's)")
                info.covered = True
                self.covering[ri] = -2
                self.ends.add(ri)
                self.ends_by.setdefault(ri, set()).add(bi)
                continue
            try:
                c = ir.when(b, file)
                matches = list(bases) if c is None else [m for b0 in bases for conj in dnf(c) for m in apply(b0, conj)]
                if len(matches) > MAX_MATCHES:
                    raise NotExported(bat, f"the condition needs {len(matches)} matches; a rule holds at most {MAX_MATCHES}")
                rule, variants = self.action(r, b, bat)
                if any(path is not None for path, _, _ in variants) and any(m.path_set for m in matches):
                    raise NotExported(bat, "a path rewrite with a `path` condition")
                built.append((bi, bat, rule, variants, matches))
                if c is None and matches == bases:
                    info.covered = True
                    self.covering[ri] = bi
            except NotExported as e:
                self.refuse(e, ri, bi)
        split = next((v[0] for _, _, _, vs, _ in built for v in vs if v[0] is not None and v[0].ptype == "Exact"),
                     None)
        for bi, bat, rule, variants, matches in built:
            if split is not None and len(variants) == 1 and variants[0][0] is None and \
                    any(not m.path_set and m.path == bases[0].path for m in matches):
                variants = self.split_exact(split, variants[0])
            for vi, (path, rewrite, single) in enumerate(variants):
                vr = dict(rule)
                if rewrite is not None:
                    vr["filters"] = [f for f in vr.get("filters", [])
                                     if f["type"] != "URLRewrite"] + [self._rewrite(vr, rewrite)]
                for m in matches:
                    if path is not None and not m.path_set:
                        m = m.copy()
                        m.path = path
                    self.entries.append(Entry(ri, bi, m, vr, bat, single, vi))

    # -------------------------------------------------------------------------------- groups
    def groups(self) -> list[tuple[list[str], list[int]]]:
        """(hostnames, route indexes in order) of each HTTPRoute; hostnames [] for the one without."""
        names: list[str] = []
        for info in self.infos:
            for h in info.route.hosts:
                if h != "*" and h not in names:
                    names.append(h)

        def sees(r: model.Route, h: str) -> bool:
            if not r.hosts or "*" in r.hosts or h in r.hosts:
                return True
            if h.startswith("*."):
                s = h[2:]
                return any(w.startswith("*.") and (s == w[2:] or s.endswith("." + w[2:])) for w in r.hosts)
            return any(w.startswith("*.") and h.endswith(w[1:]) for w in r.hosts)

        by_members: dict[tuple[int, ...], list[str]] = {}
        for h in names:
            members = tuple(i for i, info in enumerate(self.infos) if sees(info.route, h))
            by_members.setdefault(members, []).append(h)
        out = [(hs, list(ms)) for ms, hs in by_members.items()]
        anyhost = [i for i, info in enumerate(self.infos) if not info.route.hosts or "*" in info.route.hosts]
        if anyhost:
            out.append(([], anyhost))
        return out

    def shadowed(self, hosts: list[str], members: list[int]) -> set[int]:
        """The routes of one HTTPRoute that condroute never reaches: an earlier route matches every
        request they do (and owns it, whatever its backends do). Leaving them out is exact."""
        dead: set[int] = set()
        for n, ri in enumerate(members):
            info = self.infos[ri]
            if not info.bases:
                continue
            by = None
            for m in info.bases:
                by = next((k for k in members[:n] if k not in dead for a in self.infos[k].bases if covers(a, m)), None)
                if by is None:
                    break
            if by is not None:
                dead.add(ri)
                where = f" for {', '.join(hosts)}" if hosts else ""
                self._note(f"{info.at}: route {info.route.name} is never reached{where}: route "
                           f"{self.infos[by].route.name} ({self.infos[by].at}) matches every request it does; not "
                           f"written")
        return dead

    def conflicts(self, members: list[int], dead: set[int]) -> list[tuple[NotExported, int, int | None]]:
        """Where the gateway's precedence would change the winner within one HTTPRoute."""
        ents = [e for e in self.entries if e.route in members and e.route not in dead]
        rank = {ri: n for n, ri in enumerate(members)}
        ents.sort(key=lambda e: (rank[e.route], self._border(e)))
        out: list[tuple[NotExported, int, int | None]] = []
        bad: set[tuple[int, int]] = set()
        for j, b in enumerate(ents):
            if (b.route, b.backend) in bad:
                continue
            for a in ents[:j]:
                if (a.route, a.backend) == (b.route, b.backend) or (a.route, a.backend) in bad:
                    continue
                if b.match.key() < a.match.key() and not disjoint(a.match, b.match):
                    ra = self.infos[a.route].route
                    what_a = f"route {ra.name} backend {ra.backends[a.backend].name} ({a.at})"
                    why = (f"the gateway ranks this match ({_describe(b.match)}) before the one of {what_a} "
                           f"({_describe(a.match)}), which comes first in condroute and can match the same requests")
                    out.append((NotExported(b.at, why), b.route, b.backend))
                    bad.add((b.route, b.backend))
                    break
        # requests a route owns that none of its backends takes must not reach a later route
        for n, ri in enumerate(members):
            info = self.infos[ri]
            if ri in dead:
                continue
            if (ri, self.covering.get(ri)) in bad:
                info.covered = False
            if (info.covered and not info.ends) or not info.bases:
                continue
            later = [e for e in ents if rank[e.route] > n and (e.route, e.backend) not in bad]
            hit = next((e for e in later for m in info.bases if not disjoint(m, e.match)), None)
            if hit is not None:
                rl = self.infos[hit.route].route
                what = "answers 404" if info.ends else "passes through"
                why = (f"route {info.route.name}: a request it matches that none of its backends takes {what} in "
                       f"condroute, but the gateway would give it to route {rl.name} ({hit.at})"
                       + ("" if info.ends else "; add a fallback backend"))
                out.append((NotExported(info.at, why), ri, -1))
        self.entries = [e for e in self.entries if (e.route, e.backend) not in bad]
        return out

    def _border(self, e: Entry) -> int:
        r = self.infos[e.route].route
        fb = r.backends[e.backend].fallback
        return (len(r.backends) if fb else e.backend) * 10 + e.variant

    # -------------------------------------------------------------------------------- document
    def run(self) -> Exported:
        if self.rules.settings.strip_routing_headers:
            self.refuse_routes(NotExported(where_line(self.rules.file, 1),
                                           "settings.strip_routing_headers is not exported to HTTPRoute"),
                               range(len(self.rules.routes)))
        for ri, r in enumerate(self.rules.routes):
            self.route(ri, r)
        for ri, info in enumerate(self.infos):
            nm = info.route.on_no_match or self.rules.settings.on_no_match
            if not info.covered and not info.ends and info.bases and nm == "error":
                self.refuse(NotExported(info.at, f"route {info.route.name} can select no backend and then "
                                                         f"answers 502 (on_no_match: error); an HTTPRoute cannot "
                                                         f"answer 502 (a gateway answers 404, or 500 for a rule "
                                                         f"without backends): add a fallback backend"), ri, -1)
        if any(e.match.headers for e in self.entries):
            self._note("headers: condroute tests each value of a repeated header on its own (so does its HTTPRoute "
                       "import); Envoy-based gateways test the values joined with ','")
        if any(e.match.query for e in self.entries):
            self._note("query parameters: the gateway tests a parameter's first value (as the specification "
                       "recommends); condroute tests every value of a repeated one")
        groups = self.groups()
        seen: set[str] = set()
        deads: list[set[int]] = []
        for hosts, members in groups:
            dead = self.shadowed(hosts, members)
            deads.append(dead)
            for e, ri, bi in self.conflicts(members, dead):
                if e.line("x") not in seen:
                    seen.add(e.line("x"))
                    self.refuse(e, ri, bi)
        docs = []
        stem = dns_label(os.path.splitext(os.path.basename(self.rules.file))[0], 40)
        used: set[str] = set()
        for (hosts, members), dead in zip(groups, deads):
            doc = self.document(stem, hosts, [ri for ri in members if ri not in dead], used)
            if doc is not None:
                docs.append(doc)
        self.refused.sort(key=lambda e: (e.at.file, e.at.line, e.at.col))
        head = [f"# condroute export of {os.path.basename(self.rules.file)}: {len(docs)} HTTPRoute(s) "
                f"({API}).",
                f"# parentRefs names the Gateway '{GATEWAY}': change it to yours. Services (one per upstream):"]
        for (up_name, _), (svc, port) in self.services.items():
            up = self.ports[f"{svc}:{port}"][1]
            head.append(f"#   {svc}:{port}  <- upstream {up_name!r} ({up.url!r})")
        head.append("# Requests no rule matches get the gateway's own 404 (condroute would pass them through).")
        body = "---\n".join(dump(d) for d in docs)
        return Exported(text="\n".join(head) + "\n" + (body or "# (nothing to export)\n"),
                        refused=self.refused, notes=self.notes)

    def document(self, stem: str, hosts: list[str], members: list[int], used: set[str]) -> dict | None:
        rank = {ri: n for n, ri in enumerate(members)}
        ents = sorted((e for e in self.entries if e.route in members), key=lambda e: (rank[e.route], self._border(e)))
        if not ents:
            return None
        rules: list[dict] = []
        names: set[str] = set()
        prev = None
        for e in ents:
            key = (e.route, e.backend, e.variant)
            if key == prev and not e.single and len(rules[-1]["matches"]) < MAX_MATCHES:
                rules[-1]["matches"].append(e.match.to_dict())
                continue
            prev = key
            r = self.infos[e.route].route
            base = dns_label(f"{r.name}-{r.backends[e.backend].name}")
            name, n = base, 2
            while name in names:
                name = f"{base[:58]}-{n}"
                n += 1
            names.add(name)
            rules.append({"name": name, "matches": [e.match.to_dict()], **e.rule})
        if len(rules) > MAX_RULES or sum(len(r["matches"]) for r in rules) >= 128:
            last = ents[-1]
            why = (f"the HTTPRoute for {', '.join(hosts) or 'every host'} needs {len(rules)} rules; one holds at "
                   f"most {MAX_RULES} (and fewer than 128 matches), and the order of several HTTPRoutes for one host "
                   f"is their creation time")
            self.refuse_routes(NotExported(self.infos[last.route].at, why), members)
            return None
        suffix = dns_label(hosts[0].replace("*.", "wildcard."), 60) if hosts else ""
        name = f"{stem}-{suffix}" if suffix else stem
        n = 2
        while name in used:
            name = f"{stem}-{suffix}-{n}" if suffix else f"{stem}-{n}"
            n += 1
        used.add(name)
        spec: dict[str, Any] = {"parentRefs": [{"name": GATEWAY}]}
        if hosts:
            spec["hostnames"] = hosts
        spec["rules"] = rules
        return {"apiVersion": API, "kind": "HTTPRoute", "metadata": {"name": name}, "spec": spec}


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(doc: Any) -> str:
    """YAML without anchors (a rule's action is shared between its variants in memory only)."""
    return yaml.dump(doc, Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=1000)


def _describe(m: Match) -> str:
    bits = [f"path {m.path.ptype} {m.path.value}"]
    if m.method:
        bits.append(f"method {m.method}")
    if m.headers:
        bits.append(f"{len(m.headers)} header(s)")
    if m.query:
        bits.append(f"{len(m.query)} query parameter(s)")
    return ", ".join(bits)


class HTTPRouteTarget(Target):
    name = "httproute"
    config_name = "httproute.yaml"
    document = True

    def export(self, rules: model.Rules, opts: ExportOptions | None = None) -> Exported:
        return _Export(rules).run()

    def roundtrip(self, compiled, m: model.Rules, wires: list):
        """``--verify``: the export imported again beside a condroute file that maps every Service
        to its upstream's origin, and every wire decided by both (``httproute_roundtrip``)."""
        ex = _Export(m)
        exp = ex.run()

        def write(tmp: str) -> str | None:
            if "\nkind: HTTPRoute" not in exp.text:
                return None                     # nothing exported: every request passes through
            workdir_file(tmp, self.config_name, exp.text)
            ups = {key: f"{up.scheme}://{up.authority}" for key, (_, up) in ex.ports.items()}
            text = yaml.safe_dump({"version": 1, "upstreams": ups, "imports": [self.config_name]}, sort_keys=False)
            return workdir_file(tmp, "condroute.yaml", text)

        def host_free(d) -> bool:
            ups = [d.upstream_obj] if d.upstream_obj is not None else []
            if d.backend_obj is not None and d.backend_obj.split is not None:
                ups = [up for up, _ in d.backend_obj.split.arms]
            return any(up.origin in ex.host_free or (up.port != (443 if up.scheme == "https" else 80)
                                                     and not (d.backend_obj and d.backend_obj.preserve_host))
                       for up in ups)

        return run_roundtrip(self.name, compiled, wires, exp.refused, write, host_free, ex.skipped)


TARGET = HTTPRouteTarget()
