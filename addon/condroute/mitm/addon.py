"""The mitmproxy addon: a thin adapter between mitmproxy flows and the pure engine.

ConditionalRouting reads its options, decides for each request (engine.decide on a
view.FlowView) and rewrites or answers it. The rules in force and the watcher of their file are
in reload.py (LiveRules, which it extends); retries, failover, passive health and timeouts in
upstreams.py; every use of mitmproxy's internals in compat.py.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

from .. import localfiles, render
from ..engine import Decision, decide
from ..errors import RulesError
from ..model import Respond
from . import compat, options
from .compat import set_host_header
from .commands import Commands
from .connections import Connections, needs
from .flows import restore_request
from .mirror import Mirrors
from .reload import LiveRules
from .retry import Retry
from .status import Status
from .upstreams import DEFAULT_CONNECT_TIMEOUT, Upstreams
from .view import H2_H3, FlowView, host_header_text, request_view

__all__ = ["ConditionalRouting", "FlowView", "request_view"]

log = logging.getLogger("condroute")

# the mark of a rerouted flow in mitmweb's and the console's flow list (🔀; `~marked` selects them)
REROUTED_MARK = ":twisted_rightwards_arrows:"

def answered(flow: http.HTTPFlow) -> bool:
    """Does condroute answer ``flow`` itself (respond, on_no_match: error)? Then its request body
    stays local (compat.keep_answered_bodies_local)."""
    md = flow.metadata.get("condroute")
    return bool(md and md.get("answer"))


def local_answer(r: Respond, rest: str | None) -> dict[str, Any]:
    """A Map Local answer, in the flow's metadata (plain data: saved flows keep it): what
    ``_local_response`` reads the file with when the request is answered."""
    out: dict[str, Any] = {"root": r.root, "headers": [[k, v] for k, v in r.headers]}
    if r.file:
        out["file"] = r.file
    else:
        out["dir"], out["rest"] = r.dir, rest
    return out


def body_dropped(flow: http.HTTPFlow) -> None:
    """Part of the answered request's body was dropped: the request keeps no body (_answer_or_fix)."""
    flow.metadata["condroute"]["body_dropped"] = True


class ConditionalRouting(Commands, LiveRules):
    """The addon (see the module docstring); the rules and their watcher come from LiveRules, its
    commands (condroute.explain, .reload, .status, .enable, .disable) from Commands."""

    def __init__(self) -> None:
        super().__init__()
        self.log_level = 1               # index into LOG_LEVELS
        self.debug_header = False
        # retries, failover, passive health, timeouts. Called from this addon's own hooks rather than
        # registered as a sub-addon: mitmproxy walks an addon's children and dispatches each hook for
        # every event, which cost more per request than condroute's whole decision (callgrind).
        self.upstreams = Upstreams(self.route, lambda: self.rules)
        self.status = Status(self, self.upstreams)
        self.mirrors = Mirrors()
        self._mirroring = self.mirrors.pending     # the same dict: "any copies to send?" per request
        # retry_on beyond connect-failure: condroute sends those requests itself (retry.py)
        self.retry = Retry(self.upstreams)
        self._retrying = self.upstreams.retrying   # the same dict: "any to send ourselves?" per request
        # sni and throttle: server names for upstream connections, throttling relays (connections.py)
        self.conns = Connections(self.upstreams.health, lambda: self.upstreams.connect_timeout)
        self._tls_open = self.conns.open     # the same dict: "TLS connections whose name to mind?" per request
        # flow id -> seconds: an injected delay (fault) drawn for the flow, waited for in requestheaders
        self._delays: dict[str, float] = {}

    # -- options (their types and checks: options.py) -------------------------------------------
    def load(self, loader: Any) -> None:
        compat.keep_answered_bodies_local(answered, body_dropped)
        options.add_options(loader)
        options.check_deferred(loader.master.options)

    def configure(self, updated: set[str]) -> None:
        """Apply changed options. A bad value at run time (mitmweb's or the console's option editor,
        the ``set`` command) raises OptionsError: mitmproxy rolls the option back and shows why, and
        nothing changes here. At start-up the error is logged instead (mitmproxy would print an
        exception from a script with a traceback), which makes mitmdump exit with status 1."""
        try:
            self._configure(updated)
        except (ValueError, RulesError) as e:
            if self._running:
                self._sync_watcher()
                raise OptionsError(self._error_text(e)) from None
            self._log_error(e)
        self._sync_watcher()
        self._sync_hooks()

    def _error_text(self, e: Exception) -> str:
        if isinstance(e, RulesError):
            return "\n".join(str(p) for p in e.problems)
        return f"condroute: {e}"

    def _log_error(self, e: Exception) -> None:
        if isinstance(e, RulesError):
            if self.rules is not None:
                log.error(f"condroute: the rules file does not load; keeping the last good rules ({self.rules.summary()}):")
            for p in e.problems:
                log.error(str(p))
        else:
            log.error(f"condroute: {e}")

    def _sync_hooks(self) -> None:
        """Register ``responseheaders`` only while it has work: mitmproxy dispatches every hook an
        addon has on every request, and this one is needed only for the debug header and for
        response timeouts (see compat.show_hook)."""
        rules = self.rules
        shaped, throttled = needs(rules)     # backends with sni or throttle; with throttle
        compat.show_hook(self, "responseheaders", self.debug_header or bool(self.upstreams.timers) or throttled
                         or (rules is not None and rules.has_timeouts))
        compat.show_hook(self, "server_connect", shaped)
        self.conns.sync(rules)

    def _configure(self, updated: set[str]) -> None:
        """Check every updated option first (ValueError), then load a new rules file (RulesError),
        then apply: a bad value changes nothing."""
        new = options.checked(updated, ctx.options)
        self.status.configure(updated)
        if "condroute_rules" in new:
            self._set_rules_file(new["condroute_rules"])
        if "condroute_log" in new:
            self.log_level = options.LOG_LEVELS.index(new["condroute_log"])
        if "condroute_reload_interval" in new:
            self.reload_interval = new["condroute_reload_interval"]
        if "condroute_debug_header" in new:
            self.debug_header = new["condroute_debug_header"]
        if "condroute_cooldown" in new:
            self.upstreams.health.cooldown = new["condroute_cooldown"]
        if "condroute_connect_timeout" in new:
            self.upstreams.connect_timeout = new["condroute_connect_timeout"] or DEFAULT_CONNECT_TIMEOUT
        if self.rules is not None and ("connection_strategy" in updated or "condroute_rules" in updated):
            # getattr: the option belongs to mitmproxy's Proxyserver addon, absent from bare test harnesses
            if getattr(ctx.options, "connection_strategy", None) == "eager":
                log.info("condroute: setting connection_strategy=lazy, so that a rerouted request never first "
                         "connects to its original destination")
                ctx.options.update(connection_strategy="lazy")
        if self.rules is not None and ("mode" in updated or "keep_host_header" in updated):
            self._warn_reverse_host()

    def _set_rules_file(self, path: str) -> None:
        if not path:
            if self.rules is not None or not self.path:
                log.info("condroute: no rules file (set condroute_rules=FILE): inactive, every request passes through")
            self.rules, self.loaded, self.path, self.signature = None, None, "", None
            return
        if path == self.path and self.rules is not None and self._running:
            return     # the value rolled back after a rejected change, or set again: `condroute.reload` reloads
        # synchronously: at start-up mitmdump must exit with status 1 on a bad file; at run time a
        # bad file must be refused (OptionsError) before anything changes
        self.load_now(path, "loaded")

    def _warn_reverse_host(self) -> None:
        rules = self.rules
        if rules is None:
            return
        modes = [m for m in getattr(ctx.options, "mode", []) if str(m).startswith("reverse")]
        uses_host = any(r.hosts for r in rules.routes)
        if modes and uses_host and not getattr(ctx.options, "keep_host_header", False):
            log.warning("condroute: in reverse mode mitmproxy rewrites the Host header before condroute sees it; "
                        "rules that match on host need --set keep_host_header=true")

    # -- traffic --------------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> Any:
        self.route(flow)
        # a coroutine (awaited by mitmproxy) only when a fault's delay is to be waited for or an
        # upstream must be tried first; mitmproxy connects upstream after this hook (streamed
        # bodies) or after `request`, so the delay always comes before the upstream is asked
        if self._delays and flow.id in self._delays:
            return self._before_upstream(flow, None)
        probe = self.upstreams.requestheaders(flow)
        # (wrapped: a failover may choose a backend whose fault draws a delay)
        return None if probe is None else self._before_upstream(flow, probe)

    async def _before_upstream(self, flow: http.HTTPFlow, probe: Any) -> None:
        """The injected delay drawn for the flow (Istio's fixedDelay), then its upstream tried
        (``probe``, upstreams.requestheaders); after a failover, the new backend's delay too. The
        flow waits, the event loop does not: other requests go on meanwhile. A backend's timeout
        starts later (upstreams.request), so it never counts the delay (Envoy's fault filter runs
        before its router starts the route's timeout)."""
        for _ in range(32):
            if probe is not None:
                await probe
            delay = self._delays.pop(flow.id, None)
            if delay is None:
                return
            await asyncio.sleep(delay)
            if flow.response is not None or flow.error is not None or not flow.live:
                return
            probe = self.upstreams.requestheaders(flow)

    def route(self, flow: http.HTTPFlow) -> None:
        """Decide for a flow and reroute it (or prepare the direct answer)."""
        rules = self.rules
        if flow.response is not None or flow.error is not None or not flow.live:
            return
        if flow.is_replay == "request" and "condroute" in flow.metadata:
            self._forget(flow)
        if rules is None:
            if self.status.host and flow.request.pretty_host.lower() == self.status.host:
                self._status_flow(flow)
            return
        view = None
        try:
            view = request_view(flow)
            if view.host == self.status.host and view.host:
                self._status_flow(flow)
                return
            if view.bad_host is not None:
                d = Decision("bad_request", req=view)
                d.status, d.reason = 400, view.bad_host
            else:
                if view.fix_host is not None:
                    data = flow.request.data
                    set_host_header(data, False, view.fix_host, view.host_at)
                    view.fields = data.headers.fields
                d = decide(rules, view, health=self.upstreams.health)
        except Exception as e:  # a bug must not become a silent passthrough
            log.error(f"condroute: internal error while deciding for {flow.request.method} "
                      f"{flow.request.pretty_url.split('?')[0]}: {type(e).__name__}")
            flow.metadata["condroute"] = {"outcome": "error", "status": 502, "header": "error",
                                          "answer": {"status": 502, "headers": {},
                                                     "body": "condroute: internal error while routing\n"}}
            flow.request.stream = False
            flow.comment = render.internal_error_comment(view)
            return
        self.status.record(d)
        if d.route is None and d.status is None:
            if self.log_level == 2:
                log.info(f"condroute: {render.summary(d)}")
            return
        md = render.to_dict(d)
        md["header"] = render.header_value(d)
        if d.outcome == "routed":
            # what apply() rewrites, so that `condroute explain --flows` can decide again
            data = flow.request.data
            md["original"] = {"scheme": view.scheme, "host": view.host, "port": view.port, "path": view.full_path,
                              "host_header": host_header_text(view.authority, data.http_version in H2_H3),
                              "headers": self._original_headers(flow, d)}
            self.upstreams.remember(flow, d)   # before apply: a failover starts from the original
            self.apply(flow, d, view.host_at if view.fields is data.headers.fields else None)
            if (d.backend_obj.extra and (d.sni is not None or d.throttle is not None)) or (
                    self._tls_open and d.scheme == "https"):
                kbps = self.conns.routed(flow, d, view.host)
                if kbps is not None:
                    md["throttled"] = kbps        # sent through a relay (connections.py)
            if d.backend_obj.extra and d.mirrors:
                self.mirrors.remember(flow, d.mirrors)
            if not flow.marked:                # the user's own mark stays
                flow.marked = REROUTED_MARK
        elif d.status is not None:  # respond, or no match with on_no_match: error
            if d.respond is not None:
                md["answer"] = {"status": d.respond.status, "body": d.respond.body, "headers": dict(d.respond.headers)}
                if d.respond.file or d.respond.dir:   # Map Local: the file is read when answering (_answer_or_fix)
                    md["answer"]["local"] = local_answer(d.respond, view.rest)
            else:
                md["answer"] = {"status": d.status, "body": render.error_body(d),
                                "headers": {"Content-Type": "text/plain; charset=utf-8"}}
            flow.request.stream = False   # answered in `request`: the body must not be streamed anywhere
        if d.fault_delay is not None:     # an injected delay (drawn only for a backend with a fault)
            self._delays[flow.id] = d.fault_delay
        flow.metadata["condroute"] = md
        flow.comment = render.comment(d)
        if self.log_level:
            log.info(f"condroute: {render.summary(d)}")
            if self.log_level == 2:
                for line in render.skipped_lines(d):
                    log.info(f"condroute:   {line}")

    @staticmethod
    def _forget(flow: http.HTTPFlow) -> None:
        """A replayed flow is decided again, with the rules in force now, from the request as the
        client sent it: the saved one was rewritten for its old upstream."""
        restore_request(flow)
        del flow.metadata["condroute"]
        flow.comment = ""
        if flow.marked == REROUTED_MARK:
            flow.marked = ""

    @staticmethod
    def _status_flow(flow: http.HTTPFlow) -> None:
        """A request for the status page: answered in `request`, never forwarded, not traffic."""
        flow.metadata["condroute_status"] = True
        flow.request.stream = False

    @staticmethod
    def _original_headers(flow: http.HTTPFlow, d: Decision) -> dict[str, list[str]]:
        if not (d.remove_headers or d.set_headers or (d.backend_obj.extra and d.add_headers)):
            return {}
        h = flow.request.headers
        return {n: h.get_all(n) for n in {*d.remove_headers, *dict(d.set_headers), *dict(d.add_headers)}}

    @staticmethod
    def apply(flow: http.HTTPFlow, d: Decision, host_at: int | None = None) -> None:
        req = flow.request
        data = req.data
        up = d.upstream_obj
        if up is not None:
            # Written at the data level: the public setters validate and rewrite Host/:authority on
            # every call (and write IPv6 literals unbracketed); Host is set once, below. The values
            # come from an upstream URL checked when the rules were loaded.
            data.scheme = up.scheme_b
            data.host = d.host
            data.port = d.port
            keep_host = d.host_header is None      # preserve_host: the client's Host stays
            h2 = data.http_version in H2_H3
            # the request target of an absolute-form HTTP/1 request (what an upstream proxy is
            # asked for) follows the new destination; for HTTP/2 and 3, :authority is the Host
            if data.authority and not (keep_host and h2):
                data.authority = up.authority_b
            if not keep_host:
                if d.host_header == up.authority and up.authority.isascii():
                    set_host_header(data, h2, up.authority_b, host_at)
                else:
                    req.host_header = d.host_header     # (a host_rewrite; HTTP/2 and 3: :authority)
        elif d.host_header is not None:                 # the original destination, its Host rewritten
            req.host_header = d.host_header
        data.path = d.path.encode("utf-8", "surrogateescape")
        if d.remove_headers or d.set_headers:
            for name in d.remove_headers:
                req.headers.pop(name, None)
            for name, value in d.set_headers:
                req.headers[name] = value
        if d.backend_obj.extra and d.add_headers:   # a gateway's `add`: after remove and set
            for name, value in d.add_headers:
                req.headers.add(name, value)

    def request(self, flow: http.HTTPFlow) -> Any:
        if flow.metadata.get("condroute_status") and flow.response is None:
            flow.response = self.status.response(flow)
            return None
        if self._retrying and flow.id in self._retrying:
            # a coroutine (awaited by mitmproxy): condroute sends the request itself, to retry it
            # on a reset or a 5xx; it calls forward() when it is done (retry.py)
            return self.retry.request(flow, self)
        self.forward(flow)
        return None

    def forward(self, flow: http.HTTPFlow) -> None:
        """The `request` hook's work for a flow mitmproxy forwards (or condroute answers)."""
        if self._delays:
            # a delay still here was drawn when the flow was decided again in this hook (a failover
            # after retries, retry.py): requestheaders, which waits for delays, has run already
            self._delays.pop(flow.id, None)
        self._answer_or_fix(flow)
        self.upstreams.request(flow)
        if self._mirroring:
            self.mirrors.request(flow)

    def _answer_or_fix(self, flow: http.HTTPFlow) -> None:
        md = flow.metadata.get("condroute")
        if md is None or flow.response is not None:
            return
        answer = md.get("answer")
        if answer:
            if md.get("body_dropped"):
                flow.request.data.content = None   # as for a streamed body: not kept
            if "local" in answer:
                flow.response = self._local_response(flow, md, answer)
                return
            resp = http.Response.make(answer["status"], answer["body"], answer["headers"])
            if flow.request.method.upper() == "HEAD":
                # the headers of the GET answer (its Content-Length included), no body: a body after a
                # HEAD answer would be read as the next response on the connection (RFC 9110 9.3.2)
                resp.data.content = b""
            flow.response = resp
        elif md.get("outcome") == "routed":
            # mitmproxy (11, 12) forwards an HTTP/2 request without content-length to an HTTP/1.1
            # server with no framing at all, so the server reads an empty body. A rerouted HTTP/2
            # request often goes to a plain-http backend: give a buffered body its length.
            r = flow.request
            if ((r.is_http2 or r.is_http3) and not r.stream and r.raw_content
                    and "content-length" not in r.headers and "transfer-encoding" not in r.headers):
                r.headers["content-length"] = str(len(r.raw_content))

    def _local_response(self, flow: http.HTTPFlow, md: dict, answer: dict) -> http.Response:
        """A Map Local answer (respond.file / respond.dir), read now (localfiles.serve): the file as
        it is when the request is answered, never as it was when the request was decided."""
        loc = answer["local"]
        r = Respond(answer["status"], "", tuple((k, v) for k, v in loc["headers"]),
                    file=loc.get("file", ""), dir=loc.get("dir", ""), root=loc["root"])
        h = flow.request.headers
        try:
            got = localfiles.serve(r, flow.request.method, loc.get("rest"), h.get_all("if-none-match"),
                                   h.get_all("if-modified-since"))
        except Exception as e:   # a bug must not let the request go on to its original destination
            log.error(f"condroute: internal error while reading {localfiles.shown_name(r, loc.get('rest'))}: "
                      f"{type(e).__name__}")
            got = localfiles.Answer(500, (("Content-Type", "text/plain; charset=utf-8"),),
                                    b"condroute: internal error while reading the file\n", None,
                                    localfiles.shown_name(r, loc.get("rest")), "internal error", True)
        fields = [(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape")) for k, v in got.headers]
        resp = http.Response.make(got.status, got.body, fields)     # (Content-Length: the body's)
        if got.status == 304:
            resp.headers.pop("content-length", None)                      # 304: no Content-Length
        elif got.content_length is not None:
            resp.headers["content-length"] = str(got.content_length)      # HEAD: the file's size
        loc["served"] = {"status": got.status,                               # file: None when not served
                         "file": got.name if not got.note or got.status == 304 else None}
        more = render.local_served(got.status, answer["status"], got.name, got.note)
        if more:
            flow.comment += f" | {more}"
            md["header"] = f"{md['header']} ({more})"
            if got.error:
                log.warning(f"condroute: {flow.request.method} {flow.request.pretty_url.split('?')[0]}: {more}")
            elif self.log_level and got.status != 304:
                log.info(f"condroute:   {more}")
        return resp

    # connection events and errors: for passive health, retries and timeouts
    def error(self, flow: http.HTTPFlow) -> None:
        if self._delays:
            self._delays.pop(flow.id, None)
        self.upstreams.error(flow)
        self.mirrors.forget(flow)

    def server_connect(self, data: Any) -> None:
        """Registered only while a backend has sni or throttle (_sync_hooks)."""
        self.conns.server_connect(data)

    def done(self) -> None:
        super().done()
        self.conns.close()

    def server_connected(self, data: Any) -> None:
        self.upstreams.server_connected(data)

    def server_disconnected(self, data: Any) -> None:
        self.upstreams.server_disconnected(data)
        if self._tls_open:
            self.conns.server_disconnected(data)

    def server_connect_error(self, data: Any) -> None:
        self.upstreams.server_connect_error(data)
        if self._tls_open:
            self.conns.server_disconnected(data)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.conns.relays:                 # (a throttled flow's relay is there: no work otherwise)
            self.conns.responseheaders(flow)     # first: a throttled response is streamed
        self.upstreams.responseheaders(flow)
        if self.debug_header and flow.response is not None:
            md = flow.metadata.get("condroute")
            flow.response.headers["X-Condroute"] = md["header"] if md else "passthrough"
