"""``--verify`` for the document targets (HTTPRoute, KrakenD), which have no binary to run: the
exported document is imported again with condroute's own importer and every request is decided by
both, the original rules and the imported document, and compared.

Compared, per request (``compare``):

- routed: the same upstream (by origin, ``scheme://host:port``; a weighted split: the same arms
  with the same shares), the same forwarded path and query, the same forwarded headers (names
  without case, values in order), the Host included unless the exporter said that the gateway
  sends another one (``host_free``: an upstream that is an IP address becomes a Service, which
  gets the client's Host), and the same mirrors;
- a direct answer: status, body and headers (a redirect: its Location);
- no route in the original (passthrough, which a gateway cannot do): the import also passes it
  through, or answers 404 itself (the gateway's own answer); nothing selected with
  ``on_no_match: error``: 502 in both; a refused path: 400 in both.

Requests decided by a part that was not exported are skipped and counted as such. Used by
``export.httproute`` and ``export.krakend``; ``export.httproute_documents.roundtrip`` runs it on
files.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

from ..compile.runtime import Rules
from ..engine import Decision, decide
from ..errors import RulesError
from ..render import final_path, forwarded_headers, location, passes_through
from ..request import RequestView
from ..rules import load_rules
from .verify import Result


def decided_by_refused(routes, parts: set, d: Decision, ends: dict[int, set[int]] | None = None) -> bool:
    """The decision ``d`` was made by a part of ``routes`` (the model's) that was not exported:
    ``parts`` holds ``(route, None)`` for a whole route, ``(route, backend)`` for a backend and
    ``(route, -1)`` for what a route selects nothing for (and, with ``ends``, what its 404 backends
    answer), by index."""
    ri = next((i for i, r in enumerate(routes) if r.name == d.route), None)
    if ri is None:
        return False
    if (ri, None) in parts:
        return True
    bi = next((i for i, b in enumerate(routes[ri].backends) if b.name == d.backend), None)
    if (ri, -1) in parts and (bi is None or bi in (ends or {}).get(ri, ())):
        return True
    return bi is not None and (ri, bi) in parts


def _arms(d: Decision) -> list[tuple[str, float]] | None:
    b = d.backend_obj
    if b is None or b.split is None:
        return None
    total = sum(w for _, w in b.split.arms if w > 0) or 1.0
    return sorted((up.origin, round(w / total, 9)) for up, w in b.split.arms if w > 0)


def _headers(h: list[tuple[str, str]] | None, skip_host: bool) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in h or []:
        low = k.lower()
        if skip_host and low == "host":
            continue
        out.setdefault(low, []).append(v)
    return out


def _status(d: Decision) -> str:
    if passes_through(d):
        return "passes it through"
    if d.outcome == "routed":
        return f"sends it to {d.upstream}"
    return f"answers {d.status}" if d.status else d.outcome


def compare(d0: Decision, d1: Decision, req: RequestView, target: str,
            host_free: Callable[[Decision], bool]) -> list[str]:
    """What differs between the original decision ``d0`` and the imported document's ``d1``."""
    gateway_404 = passes_through(d1) or (d1.outcome == "respond" and d1.status == 404)
    if passes_through(d0) or (d0.outcome == "respond" and d0.status == 404 and location(d0) is None):
        if gateway_404:
            return []
        return [f"condroute {_status(d0)} (the gateway's 404), {target} {_status(d1)}"]
    if d0.outcome == "routed":
        if d1.outcome != "routed":
            return [f"condroute sends it to {d0.upstream}, {target} {_status(d1)}"]
        diffs = []
        a0, a1 = _arms(d0), _arms(d1)
        if a0 is not None or a1 is not None:
            if a0 != a1:
                diffs.append(f"split: condroute {a0 or d0.upstream}, {target} {a1 or d1.upstream}")
        elif d0.upstream_obj is None or d1.upstream_obj is None or d0.upstream_obj.origin != d1.upstream_obj.origin:
            diffs.append(f"upstream: condroute {d0.upstream}, {target} {d1.upstream}")
        p0, p1 = final_path(d0, req), final_path(d1, req)
        if p0 != p1:
            diffs.append(f"path: condroute {p0}, {target} {p1}")
        free = host_free(d0)
        h0 = _headers(forwarded_headers(d0, req), free)
        h1 = _headers(forwarded_headers(d1, req), free)
        for name in sorted(set(h0) | set(h1)):
            if h0.get(name) != h1.get(name):
                diffs.append(f"header {name}: condroute {h0.get(name)}, {target} {h1.get(name)}")
        m0 = sorted((m.upstream.origin, m.percent) for m in (d0.backend_obj.mirrors if d0.backend_obj else ()))
        m1 = sorted((m.upstream.origin, m.percent) for m in (d1.backend_obj.mirrors if d1.backend_obj else ()))
        if m0 != m1:
            diffs.append(f"mirrors: condroute {m0}, {target} {m1}")
        if (d0.timeout or None) != (d1.timeout or None):
            diffs.append(f"timeout: condroute {d0.timeout}, {target} {d1.timeout}")
        return diffs
    if d1.outcome == "routed" or passes_through(d1):
        return [f"condroute {_status(d0)}, {target} {_status(d1)}"]
    diffs = []
    s0 = d0.status or 502
    s1 = d1.status or 502
    if s0 != s1:
        diffs.append(f"status: condroute {s0}, {target} {s1}")
    if d0.outcome == "respond" and d0.respond is not None:
        if location(d0) != location(d1):
            diffs.append(f"location: condroute {location(d0)}, {target} {location(d1)}")
        elif location(d0) is None and d1.respond is not None and d0.respond.body != d1.respond.body:
            diffs.append(f"body: condroute {d0.respond.body!r}, {target} {d1.respond.body!r}")
    return diffs


def run(target: str, compiled: Rules, wires: list, refused: list, write: Callable[[str], str | None],
        host_free: Callable[[Decision], bool], skip: Callable[[Decision], bool]) -> Result:
    """Decide every wire (``verify.Wire``) with ``compiled`` and with the document ``write(tmpdir)``
    writes (it returns the path of the file to load; None: nothing was exported, so every request
    passes through), and compare. ``refused``: the exporter's NotExported list; ``skip(d)``: the
    original decision ``d`` was made by a part that was not exported (the case is skipped)."""
    res = Result(refused=[r.line(target) for r in refused])
    tmp = tempfile.mkdtemp(prefix=f"condroute-roundtrip-{target}-")
    try:
        path = write(tmp)
        imported = None
        try:
            imported = _load(path) if path is not None else None
        except RulesError as e:
            res.failed = 1
            res.lines.extend(f"the exported {target} document does not import: {p}" for p in e.problems)
            return res
        for w in wires:
            d0 = decide(compiled, w.view)
            if skip(d0):
                res.skipped += 1
                what = f"{d0.route}/{d0.backend}" if d0.backend else f"route {d0.route} (no backend holds)"
                res.lines.append(f"skip  {w.name} ({w.where}): decided by {what}, which was not exported")
                continue
            d1 = decide(imported, w.view) if imported is not None else Decision("passthrough", req=w.view)
            diffs = compare(d0, d1, w.view, target, host_free)
            if diffs:
                res.failed += 1
                res.lines.extend(f"FAIL  {w.name} ({w.where}): {d}" for d in diffs)
            else:
                res.passed += 1
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(path: str) -> Rules:
    return load_rules(path)


def workdir_file(tmp: str, name: str, text: str) -> str:
    p = os.path.join(tmp, name)
    with open(p, "w", encoding="utf-8") as f:
        f.write(text)
    return p
