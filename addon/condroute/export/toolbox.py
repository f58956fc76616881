"""The dev-traffic toolbox fields (rules format, "More backend fields") on the way to a gateway.

Every exporter calls :func:`prepare` first. It gives the exporter the rules as the gateway should
run them, and what it refused:

- ``enabled: false`` (a route or a backend): left out. condroute skips it like a condition that
  never holds, which is what a gateway does with a route or backend it does not have.
- ``respond.file``: the file's content, read at export time, inlined as the direct answer's body
  with the content type condroute gives it (``localfiles.content_type``), on the targets that answer
  themselves (Envoy ``direct_response``, nginx ``return``, HAProxy ``http-request return``):
  UTF-8 text of at most :data:`MAX_INLINE` bytes; anything else is refused. The document targets
  (HTTPRoute, KrakenD) have no direct answer.
- ``failover: false``: the gateways never send a request to another backend when its upstream is
  down (each answers its own 502/503), which is what ``failover: false`` asks; exported with a note.
- ``fault``: an abort of every request (``percent`` 100, no delay) is a direct answer, as condroute
  (and Envoy's fault filter) answers it: the status, body ``fault filter abort``, ``text/plain``;
  on the targets that answer themselves. A delay, or a sampled abort, cannot be checked by
  ``--verify`` (no timed checks; a random draw on each side) and is refused.
- ``mirror``: left to the exporters (Envoy ``request_mirror_policies``, nginx ``mirror``, HTTPRoute
  ``RequestMirror``); refused here on HAProxy and KrakenD, located at the ``mirror`` key.
- Everything else (``respond.dir``, ``retry_on`` beyond ``connect-failure``, ``sni``,
  ``throttle``, ``fault`` elsewhere) is refused, located at its key, with what the gateway does
  otherwise (:data:`WHY`).

A refused backend is left out of the rules the exporter sees (its route's cases are skipped by
``--verify``), so an exporter never meets a field it does not handle.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from .. import model
from ..engine import FAULT_ABORT_BODY
from ..load.yamlpos import parse_text
from ..localfiles import content_type
from ..node import Y
from .ir import NotExported, Where, where_line

MAX_INLINE = 4096      # Envoy's default max_direct_response_body_size_bytes
ANSWERING = ("envoy", "nginx", "haproxy")       # targets that answer requests themselves

# (target, field) -> why it is refused ("{retry_on}" is filled in)
_NO_VERIFY = "--verify cannot check it (its recording backends never fail)"
WHY: dict[tuple[str, str], str] = {
    # respond.dir: a folder, read per request
    **{(t, "dir"): "respond.dir answers with a file picked per request from a folder on condroute's host; "
                   f"{n} cannot read that folder (serve it from a static file server and route there)"
       for t, n in (("envoy", "Envoy"), ("nginx", "nginx"), ("haproxy", "HAProxy"), ("httproute", "HTTPRoute"),
                    ("krakend", "KrakenD"))},
    ("httproute", "file"): "respond.file: HTTPRoute v1 has no direct response (route it to a Service that "
                           "serves the file)",
    ("krakend", "file"): "respond.file: a KrakenD endpoint answers from its backends, never with a file of its own",
    # retry_on
    ("envoy", "retry_on"): "retry_on {retry_on}: Envoy's retry_policy retries, but when the retries are spent "
                           "it answers with the last attempt's response, where condroute sends the request to "
                           "the route's fallback; " + _NO_VERIFY,
    ("nginx", "retry_on"): "retry_on {retry_on}: nginx's proxy_next_upstream names only the statuses 500, 502, "
                           "503 and 504 (not every 5xx), and when the tries are spent it answers with the last "
                           "response, where condroute sends the request to the route's fallback; " + _NO_VERIFY,
    ("haproxy", "retry_on"): "retry_on {retry_on}: HAProxy's retry-on names only the statuses 500, 501, 502, "
                             "503 and 504 (not every 5xx), and when the retries are spent it answers with the "
                             "last response, where condroute sends the request to the route's fallback; "
                             + _NO_VERIFY,
    ("httproute", "retry_on"): "retry_on {retry_on}: retries are not in HTTPRoute's standard channel",
    ("krakend", "retry_on"): "retry_on {retry_on}: KrakenD does not retry a backend",
    # mirror
    ("haproxy", "mirror"): "mirror: HAProxy 2.6 has no request mirroring of its own (an SPOE agent is a "
                           "separate program; its Lua httpclient sends only GET, HEAD, PUT, POST and DELETE)",
    ("krakend", "mirror"): "mirror: KrakenD has no request mirroring (a shadow backend is answered, not discarded "
                           "unseen)",
    # fault
    ("envoy", "fault"): "fault: a delay, or an abort of only some requests, would be Envoy's fault filter, but "
                        "--verify cannot check a delay or a sampled abort; only an abort of every request "
                        "(percent 100, no delay) is exported (a direct answer, as the fault filter's)",
    ("nginx", "fault"): "fault: nginx has no fault injection (no delay, no abort of a share of requests, without "
                        "a third-party module); only an abort of every request (percent 100, no delay) is "
                        "exported (return STATUS)",
    ("haproxy", "fault"): "fault: HAProxy has no fault injection built in (no sampled delay or abort); only an "
                          "abort of every request (percent 100, no delay) is exported (http-request return)",
    ("httproute", "fault"): "fault: HTTPRoute has no fault injection (Istio's VirtualService has; HTTPRoute v1 "
                            "does not)",
    ("krakend", "fault"): "fault: KrakenD has no fault injection",
    # sni
    ("envoy", "sni"): "sni: Envoy sets the TLS server name per cluster (UpstreamTlsContext.sni, auto_sni for "
                      "preserve), but --verify reaches upstreams over plain HTTP and cannot check the name sent; "
                      "not exported",
    ("nginx", "sni"): "sni: nginx's proxy_ssl_server_name on and proxy_ssl_name would send it, but --verify "
                      "reaches upstreams over plain HTTP and cannot check the name sent; not exported",
    ("haproxy", "sni"): "sni: HAProxy's server ... sni would send it, but --verify reaches upstreams over plain "
                        "HTTP and cannot check the name sent; not exported",
    ("httproute", "sni"): "sni: HTTPRoute has no TLS server name for a backend (BackendTLSPolicy's hostname is a "
                          "separate, per-Service resource)",
    ("krakend", "sni"): "sni: KrakenD has no TLS server name per backend",
    # throttle
    ("envoy", "throttle"): "throttle: Envoy's bandwidth_limit filter shares one limit (KiB/s) among all the "
                           "requests of a route, where condroute paces each response on its own",
    ("nginx", "throttle"): "throttle: nginx's limit_rate would pace each response (bytes/s), but --verify cannot "
                           "measure a rate; not exported (add limit_rate by hand)",
    ("haproxy", "throttle"): "throttle: HAProxy 2.6 has no bandwidth limitation (its bwlim filter came in 2.7)",
    ("httproute", "throttle"): "throttle: HTTPRoute has no bandwidth limit",
    ("krakend", "throttle"): "throttle: KrakenD has no bandwidth limit for a response",
}
FAILOVER_ERROR = {"envoy": "503", "nginx": "502", "haproxy": "503", "httproute": "5xx", "krakend": "5xx"}


@dataclass
class Prepared:
    rules: model.Rules
    refused: list[NotExported] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped: set[tuple[str, str]] = field(default_factory=set)    # (route, backend) refused, left out

    def decided_by_refused(self, d) -> bool:
        """condroute's decision ``d`` was made by a backend refused here (a round trip skips it)."""
        return (d.route, d.backend) in self.dropped


# ---------------------------------------------------------------------------------------- locating
_trees: dict[str, tuple[float, Y | None]] = {}


def _tree(file: str) -> Y | None:
    try:
        mtime = os.stat(file).st_mtime
        got = _trees.get(file)
        if got is not None and got[0] == mtime:
            return got[1]
        with open(file, encoding="utf-8-sig") as f:
            tree = parse_text(f.read(), file)
    except Exception:     # a file gone or changed since it was read: the line alone will do
        tree = None
        mtime = 0.0
    _trees[file] = (mtime, tree)
    return tree


def _mapping_at(node: Y, line: int, key: str, name: str | None = None) -> Y | None:
    if isinstance(node.v, dict):
        if node.line == line and key in node.v and (
                name is None or "name" not in node.v or node.v["name"].v == name):
            return node
        items = node.v.values()
    elif isinstance(node.v, list):
        items = node.v
    else:
        return None
    for n in items:
        found = _mapping_at(n, line, key, name)
        if found is not None:
            return found
    return None


def where_key(file: str, line: int, *keys: str, name: str | None = None) -> Where:
    """Where key ``keys[0]`` of the mapping that starts on ``line`` (a backend, a route; with
    ``name``, the one so named, for two on one line) is written, and below it ``keys[1]`` ...
    (``"respond", "file"``); the mapping's line when it has no such key (an imported backend)."""
    tree = _tree(file)
    node = _mapping_at(tree, line, keys[0], name) if tree is not None else None
    if node is None:
        return where_line(file, line)
    at = where_line(file, line)
    for k in keys:
        if not isinstance(node.v, dict) or k not in node.v:
            break
        kp = node.key_pos
        at = Where(file, *kp[k]) if kp is not None and k in kp else Where(file, node.v[k].line, node.v[k].col)
        node = node.v[k]
    return at


# ------------------------------------------------------------------------------------- respond.file
def file_answer(resp: model.Respond) -> model.Respond:
    """``resp`` (a respond.file) as the direct answer condroute gives (``localfiles``): the file's
    text as body, its Content-Type (from the name, unless ``headers`` has one) and
    ``Cache-Control: no-cache`` (unless ``headers`` has one); not ETag and Last-Modified, which
    name a version of the file the gateway does not re-read. Raises UnicodeDecodeError, OSError
    and OverflowError (larger than MAX_INLINE)."""
    with open(resp.file, "rb") as f:
        raw = f.read(MAX_INLINE + 1)
    if len(raw) > MAX_INLINE:
        raise OverflowError(len(raw))
    text = raw.decode("utf-8")
    user = {k.lower() for k, _ in resp.headers}
    headers: tuple[tuple[str, str], ...] = ()
    if "content-type" not in user:
        headers += (("Content-Type", content_type(resp.file)),)
    if "cache-control" not in user:
        headers += (("Cache-Control", "no-cache"),)
    return dataclasses.replace(resp, body=text, headers=headers + resp.headers, file="", dir="", root="")


# ------------------------------------------------------------------------------------------ prepare
def _backend(target: str, b: model.Backend, file: str) -> tuple[model.Backend, list[str]]:
    """``b`` as the exporter of ``target`` should see it, and notes; raises NotExported."""
    notes: list[str] = []

    def refuse(fld: str, *keys: str) -> NotExported:
        why = WHY[(target, fld)].format(retry_on=", ".join(sorted(b.retry_on)))
        return NotExported(where_key(file, b.line, *keys, name=b.name), why)

    f = b.fault
    if f is not None and not (f.delay is not None and f.delay_percent > 0) \
            and not (f.abort is not None and f.abort_percent > 0):
        b, f = dataclasses.replace(b, fault=None), None        # percent 0: never injected
    if f is not None:
        if target not in ANSWERING or (f.delay is not None and f.delay_percent > 0) or f.abort is None \
                or f.abort_percent < 100:
            raise refuse("fault", "fault")
        # every request aborted: condroute answers it as Envoy's fault filter does, before anything
        # else of the backend applies (nothing is forwarded, mirrored, retried or throttled)
        answer = model.Respond(f.abort, FAULT_ABORT_BODY, (("Content-Type", "text/plain"),))
        return dataclasses.replace(b, respond=answer, fault=None, upstream=None, split=None, redirect=None,
                                   mirrors=(), retries=0, retry_on=model.DEFAULT_RETRY_ON, timeout=None,
                                   sni=None, throttle=None, failover=True, path=None, rewrite=None), notes
    r = b.respond
    if r is not None and r.dir:
        raise refuse("dir", "respond", "dir")
    if r is not None and r.file:
        if target not in ANSWERING:
            raise refuse("file", "respond", "file")
        at = where_key(file, b.line, "respond", "file", name=b.name)
        try:
            b = dataclasses.replace(b, respond=file_answer(r))
        except OSError as e:
            raise NotExported(at, f"respond.file: cannot read {r.file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise NotExported(at, f"respond.file: {os.path.basename(r.file)} is not UTF-8 text; only text is "
                                  f"inlined into the {target} configuration") from None
        except OverflowError:
            raise NotExported(at, f"respond.file: {os.path.basename(r.file)} is larger than {MAX_INLINE} bytes, "
                                  f"too large to inline into the {target} configuration (Envoy's direct "
                                  f"responses stop at 4 KiB; serve it from a static file server)") from None
        notes.append(f"{at}: respond.file {os.path.basename(r.file)}: inlined as it is now; condroute reads it "
                     f"again when it changes and adds ETag/Last-Modified, {target} answers the copy without them")
    if b.retry_on != model.DEFAULT_RETRY_ON:
        raise refuse("retry_on", "retry_on")
    if b.mirrors and (target, "mirror") in WHY:
        raise refuse("mirror", "mirror")
    if b.sni is not None:
        raise refuse("sni", "sni")
    if b.throttle is not None:
        raise refuse("throttle", "throttle")
    if not b.failover:
        notes.append(f"{where_key(file, b.line, 'failover', name=b.name)}: failover: false: {target} never sends a request "
                     f"to another backend when this one's upstream is down; it answers its own "
                     f"{FAILOVER_ERROR[target]}, as condroute answers 502/503 (the text differs)")
    return b, notes


def prepare(rules: model.Rules, target: str) -> Prepared:
    """The rules ``target``'s exporter should write (see the module), with what was refused."""
    out = Prepared(rules)
    routes = []
    changed = False
    for r in rules.routes:
        if not r.enabled:
            changed = True
            continue
        file = r.file or rules.file
        backends = []
        for b in r.backends:
            if not b.enabled:
                continue
            try:
                nb, notes = _backend(target, b, file)
            except NotExported as e:
                out.refused.append(e)
                out.dropped.add((r.name, b.name))
                continue
            out.notes.extend(notes)
            backends.append(nb)
        if len(backends) != len(r.backends) or any(x is not y for x, y in zip(backends, r.backends)):
            changed = True
            r = dataclasses.replace(r, backends=tuple(backends))
        routes.append(r)
    if changed:
        out.rules = dataclasses.replace(rules, routes=tuple(routes))
    return out


def merge(p: Prepared, exp):
    """The exporter's result ``exp`` (base.Exported) with what :func:`prepare` refused and noted."""
    exp.refused[:0] = p.refused
    exp.notes[:0] = p.notes
    return exp
