"""Upstream connections: retries, failover, passive health and response timeouts (mitmproxy side).

The engine stays pure: it only asks a :class:`~condroute.health.Health` which upstream addresses
are cooling down. This part of :class:`~condroute.mitm.ConditionalRouting` (called from its hooks) feeds that object
and enforces ``retries`` and ``timeout`` with what mitmproxy (11 and 12) offers an addon:

* **Connection failures, retries and failover** happen before mitmproxy connects. mitmproxy opens
  the upstream connection right after the ``requestheaders`` hook (streamed bodies) or after the
  ``request`` hook, and when that connection fails it answers 502 itself: neither the ``error``
  hook nor ``server_connect_error`` can change that answer or re-send the request. So for a routed
  flow whose upstream has not proven itself recently (no open connection to it, none made in the
  last seconds), this addon's async ``requestheaders`` hook first tries a TCP connection to it
  (up to ``1 + retries`` times for idempotent methods, once otherwise) and closes it again. When
  every try fails, the address is marked down (passive health) and the request is decided again:
  the next backend that holds — or the fallback — serves, and its decision says why the first was
  passed over. Later requests pass over the address for the cool-down without trying it.
  An open connection to the upstream proves it; so does one that succeeded in the last two seconds,
  except for backends with ``retries``. Steady traffic (open keep-alive connections) is never probed.
  The retries count connection failures when ``retry_on`` names ``connect-failure`` (the default),
  ``reset``, ``5xx`` or ``gateway-error`` (Envoy: a connection failure is one of the resets its
  ``reset`` retries, and is included in 5xx and gateway-error). A backend with
  ``failover: false`` is not passed over: its request is answered 502 naming the backend, the
  upstream and the error (``refuse_pinned``), and the engine answers 503 while it cools down.
  Resets and 5xx responses (``retry_on: [reset, 5xx, gateway-error]``): mitm/retry.py, which
  sends such requests itself from the ``request`` hook (``retrying`` holds them until then).
* **Passive health** also comes from mitmproxy's own connections: ``server_connect_error`` marks an
  address down — only the address of an upstream of the live rules (``is_upstream``): a failure of
  traffic condroute does not route (a passthrough whose host does not resolve) marks nothing and
  logs no cool-down — and ``server_connected`` / ``server_disconnected`` keep count of open connections.
* **Timeouts**: when a request with a ``timeout`` has been sent (the ``request`` hook; for streamed
  bodies, after the last byte) a timer starts. Until the response headers are complete the whole
  ``timeout`` applies; after them it is the longest the upstream may pause while sending the body
  (so streamed bodies that keep coming, and WebSockets, run as long as they like). The timer is not
  cancelled when the headers come (it holds the flow weakly; most responses are complete when it
  fires); a body still arriving then is looked at a few times per timeout. No hook can make
  mitmproxy answer a request it is waiting on, so when the timer fires the answer is fed to the
  flow's HTTP stream the way mitmproxy feeds ``inject.websocket``: as ``MessageInjected`` events
  through the client connection's handler (``Proxyserver.connections[id].server_event``), which
  mitmproxy routes straight to the stream, past the HTTP/1 client layer whose buffer may hold part
  of the upstream's head (feeding bytes there would splice them into it), and past CONNECT tunnels:
  - no response headers yet: a complete ``504`` response enters the stream as if the upstream had
    sent it (its headers injected; its body and end of message queued on the stream, which waits
    on the responseheaders hook then: a CONNECT stream on the way would turn injected body events
    into its tunnel's bytes); ``responseheaders``/``response`` run (the debug
    header is added) and it goes out like any response (HTTP/1 clients: with ``Connection: close``);
  - headers in, body stalled: the stream gets a protocol error. mitmproxy then answers ``504`` when
    nothing has been sent to the client yet (a buffered body), or else cuts the response: it
    closes an HTTP/1 client connection, resets an HTTP/2 stream; never a 504 inside a response.
  In both cases the upstream connection is closed at once: a late answer is never read, the
  connection never reused. An event is only injected into a stream that is in the state it
  expects and not paused in a hook (else it is tried again 50 ms later), after checking that
  mitmproxy will route it to that stream. HTTP/2 and HTTP/3 upstream connections: not enforced
  (said once in the log). The internals of mitmproxy this relies on are in compat.py (FlowStream),
  pinned by tests/test_mitm_compat.py and tests/test_upstream_timeouts.py.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from mitmproxy import ctx, http

from .. import render
from ..engine import Decision
from ..httptext import IDEMPOTENT, parse_seconds
from ..model import DEFAULT_RETRY_ON, every_upstream
from ..render import timeout_reason
from . import compat
from .health import Health

__all__ = ["Upstreams", "describe_connect_error", "parse_seconds", "record_timeout", "tcp_probe", "timeout_reason"]

log = logging.getLogger("condroute")

DEFAULT_CONNECT_TIMEOUT = 3.0
RETRY_BACKOFF = 0.05          # seconds before the 2nd try, doubling, at most 1 s

# retry_on kinds that need condroute to send the request itself (mitm/retry.py). Every kind counts
# connection failures (Envoy: reset retries every reset reason, 5xx and gateway-error include it).
RESPONSE_RETRY_ON = frozenset({"reset", "5xx", "gateway-error"})


def backoff(i: int) -> float:
    """Seconds to wait before try ``i`` (0-based; 0 for the first)."""
    return 0.0 if i <= 0 else min(1.0, RETRY_BACKOFF * 2 ** (i - 1))


def connect_tries(d: Decision, method: str) -> int:
    """How many times a connection to the decision's upstream is tried: ``1 + retries`` for an
    idempotent method (every retry_on kind covers connection failures, as in Envoy), else once."""
    return 1 + d.retries if d.retries and method.upper() in IDEMPOTENT else 1


def sends_itself(d: Decision, flow: http.HTTPFlow) -> bool:
    """Does condroute send this routed request itself, to retry it on a reset or a 5xx (retry_on
    beyond connect-failure, an idempotent method, no WebSocket or other upgrade, no throttle: a
    throttled response is paced by a relay mitmproxy connects through)? The body is checked later,
    in the ``request`` hook (mitm/retry.py). One identity test for the rest."""
    ro = d.backend_obj.retry_on
    if ro is DEFAULT_RETRY_ON or ro.isdisjoint(RESPONSE_RETRY_ON):
        return False
    if d.throttle is not None:     # paced by a relay (connections.py): mitmproxy must fetch it
        return False
    r = flow.request
    return r.method.upper() in IDEMPOTENT and "upgrade" not in r.headers and not (r.is_http2 and r.method == "CONNECT")

# What Upstreams calls to decide for a flow again (after its upstream failed to connect):
# ConditionalRouting.route, which decides, rewrites the request and records the decision.
Reroute = Callable[[http.HTTPFlow], None]


def record_timeout(d: Decision, reason: str, sent: bool) -> None:
    """A timeout, in the decision like every other reason a backend did not serve: a trail entry
    for the backend (not held: it did not answer in time), the decision's reason, and status 504
    when condroute answers (nothing had been sent to the client)."""
    fallback = any(fb for b, held, _, fb in d.trail if held and b == d.backend)
    d.trail.append((d.backend or "", False, reason, fallback))
    d.reason = reason
    if not sent:
        d.status = 504


class _Counted:
    """Wraps a streamed response's ``stream`` (True or a callable): counts the bytes that pass, so
    that a stalled streamed body can be told from one that keeps coming."""

    def __init__(self, inner: Any):
        self.inner, self.seen = inner, 0

    def __call__(self, data: bytes) -> Any:
        self.seen += len(data)
        return data if not callable(self.inner) else self.inner(data)


def describe_connect_error(e: BaseException, timeout: float) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "refused the connection"
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return f"did not accept a connection within {timeout:g}s"
    if isinstance(e, socket.gaierror):
        return f"cannot be resolved ({e.strerror or e})"
    if isinstance(e, OSError) and e.strerror:
        return f"cannot be connected to ({e.strerror.lower()})"
    return f"cannot be connected to ({type(e).__name__})"


async def tcp_probe(host: str, port: int, timeout: float) -> str | None:
    """Open and close one TCP connection. None when it worked, else what went wrong."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        return describe_connect_error(e, timeout)
    writer.close()
    return None


@dataclass
class _Pending:
    snapshot: Any          # flow.request.data before condroute rewrote it
    decision: Decision     # the engine's Decision


class Upstreams:
    """Part of ConditionalRouting, which calls these methods from its own hooks (they keep
    mitmproxy's hook names and signatures): see the module docstring. ``reroute(flow)`` decides
    for a flow again, once its upstream has been marked down (ConditionalRouting.route)."""

    def __init__(self, reroute: Reroute, live_rules: Callable[[], Any] = lambda: None):
        self.reroute = reroute
        self.live_rules = live_rules      # the rules in force (their upstreams' addresses: is_upstream)
        self.health = Health()
        self.connect_timeout = DEFAULT_CONNECT_TIMEOUT
        self.probe = tcp_probe            # replaceable in tests
        self.pending: dict[str, _Pending] = {}
        # flows whose request condroute sends itself (retry_on beyond connect-failure: mitm/retry.py)
        self.retrying: dict[str, _Pending] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self._warned_h2 = False
        self._tasks: set[asyncio.Task] = set()
        self._body: dict[str, tuple[int, float]] = {}   # flow id -> (body bytes seen, since when)
        # the addresses of the live rules' upstreams (as Health keys them), for the rules object they
        # came from: a failed connection marks an address down only when it is one of these
        self._addresses: tuple[Any, frozenset[tuple[str, int]]] = (None, frozenset())
        # the decisions of flows with a timeout, while it may fire (held by the flow, weakly)
        self.decisions: weakref.WeakKeyDictionary[http.HTTPFlow, Decision] = weakref.WeakKeyDictionary()

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _proxyserver() -> Any:
        try:
            return ctx.master.addons.get("proxyserver")
        except Exception:  # pragma: no cover - no master (unit tests without taddons)
            return None

    def _live(self, flow: http.HTTPFlow) -> bool:
        """Is this flow on a client connection of the running proxy (not a replay, not a test flow)?"""
        return compat.connection_handler(flow, self._proxyserver()) is not None

    # -- connection failures, retries, failover --------------------------------------------------
    def remember(self, flow: http.HTTPFlow, d: Decision) -> None:
        """Called by ConditionalRouting.requestheaders for a routed flow, before it rewrites the
        request. Keeps the decision of a flow with a timeout (the timeout is recorded in it), and
        what a failover needs when the upstream is to be tried first."""
        if d.timeout:
            self.decisions[flow] = d
        up = d.upstream_obj
        if up is None or flow.server_conn.via is not None:   # upstream-proxy mode: mitmproxy connects to the proxy
            return
        snapshot = None
        if d.backend_obj.retry_on is not DEFAULT_RETRY_ON and sends_itself(d, flow) and self._live(flow):
            snapshot = flow.request.data.copy()
            self.retrying[flow.id] = _Pending(snapshot, d)
        # A backend with retries is tried first unless a connection to it is open right now: a
        # restarting upstream closes its connections, and the retries are meant for exactly that.
        retrying = bool(d.retries) and connect_tries(d, flow.request.method) > 1
        if self.health.known_up(up.host, up.port, fresh=not retrying) or not self._live(flow):
            return
        self.pending[flow.id] = _Pending(snapshot or flow.request.data.copy(), d)

    def requestheaders(self, flow: http.HTTPFlow) -> Any:
        """Sync for the common case (nothing to try); returns a coroutine, which mitmproxy awaits
        while the flow waits, only when an upstream is to be tried first."""
        if not self.pending:
            return None
        p = self.pending.pop(flow.id, None)
        return None if p is None else self._ensure(flow, p)

    async def _ensure(self, flow: http.HTTPFlow, p: _Pending | None) -> None:
        rounds = 0
        while p is not None and rounds < 32:
            rounds += 1
            d = p.decision
            tries = connect_tries(d, flow.request.method)
            err = await self._try_connect(d.host, d.port, tries)
            if err is None:
                return
            addr = f"{d.host}:{d.port}"
            self.health.mark_down(d.host, d.port, err, tries)
            if flow.response is not None or flow.error is not None or not flow.live:
                log.warning(f"condroute: {render.connect_failed(d, addr, err, tries, self.health.cooldown)}")
                return
            failed = render.failed_over(d, addr, err, tries)
            earlier = (flow.metadata.get("condroute") or {}).get("failed_over", [])
            if not d.backend_obj.failover:
                self.refuse_pinned(flow, d, render.failover_refused(d, addr, err, tries), p.snapshot,
                                   connect_failures=[*earlier, failed])
                return
            log.warning(f"condroute: {render.connect_failed(d, addr, err, tries, self.health.cooldown)}")
            self.retrying.pop(flow.id, None)                 # the new decision says whether it retries
            flow.request.data = p.snapshot                   # as the client sent it
            flow.metadata.pop("condroute", None)
            self.reroute(flow)                               # decides again, now without that upstream
            md = flow.metadata.get("condroute")
            if md is not None:
                md["failed_over"] = [*earlier, failed]
            p = self.pending.pop(flow.id, None)              # the new upstream may need a try as well

    def refuse_pinned(self, flow: http.HTTPFlow, d: Decision, reason: str, snapshot: Any,
                      status: int = 502, **record: Any) -> None:
        """failover: false and its upstream cannot be connected to: the request is answered (in the
        ``request`` hook, as condroute's other answers: its body stays local) with ``status`` and
        the reason, instead of being decided again. The request is put back as the client sent it
        (nothing is forwarded; ``condroute explain --flows`` decides on it)."""
        self.retrying.pop(flow.id, None)
        log.warning(f"condroute: {d.request}: {d.route}/{d.backend}: {reason}; answering {status}")
        flow.request.data = snapshot
        md = flow.metadata.get("condroute")
        if md is None:
            md = flow.metadata["condroute"] = {}
        md.update(record)
        md.update(outcome="unavailable", status=status, reason=reason,
                  header=f"{d.route}/{d.backend} -> error {status} (upstream unavailable, failover: false)",
                  answer={"status": status, "headers": {"Content-Type": "text/plain; charset=utf-8"},
                          "body": f"condroute: route {d.route!r}: {reason}\n  (for {d.request})\n"})
        flow.request.stream = False      # answered in `request`: the body must not be streamed anywhere
        flow.comment = f"{flow.comment or render.comment(d)} | {render._clean(reason)}: condroute answered {status}"

    async def _try_connect(self, host: str, port: int, tries: int) -> str | None:
        err = None
        for i in range(tries):
            if i:
                await asyncio.sleep(backoff(i))
            err = await self.probe(host, port, self.connect_timeout)
            if err is None:
                self.health.mark_up(host, port)
                return None
        return err

    # -- passive health from mitmproxy's own connections -----------------------------------------
    @staticmethod
    def _addr(data: Any) -> tuple[str, int] | None:
        a = data.server.address
        return (str(a[0]), int(a[1])) if a else None

    def is_upstream(self, host: str, port: int) -> bool:
        """Is ``host:port`` the address of an upstream of the live rules (a named one, a URL written
        in a backend, an arm of a split)? Only those are marked down: a connection that fails for
        traffic condroute does not route (a passthrough to a name that does not resolve) says
        nothing about an upstream, and logs no cool-down. Asked on connection errors only."""
        rules = self.live_rules()
        if rules is None:
            return False
        seen, keys = self._addresses
        if seen is not rules:
            keys = frozenset(Health._key(u.host, u.port) for u in every_upstream(rules))
            self._addresses = (rules, keys)
        return Health._key(host, port) in keys

    def server_connected(self, data: Any) -> None:
        a = self._addr(data)
        if a:
            self.health.opened(*a)

    def server_disconnected(self, data: Any) -> None:
        a = self._addr(data)
        if a:
            self.health.closed(*a)

    def server_connect_error(self, data: Any) -> None:
        a = self._addr(data)
        # only a real attempt (an addon that refused the connection in server_connect is no upstream failure)
        if a and data.server.error and data.server.timestamp_start is not None and self.is_upstream(*a):
            if self.health.mark_down(*a, str(data.server.error)):
                log.warning(f"condroute: upstream {a[0]}:{a[1]} failed: {data.server.error}; passing it "
                            f"over for {self.health.cooldown:g}s")

    # -- timeouts --------------------------------------------------------------------------------
    def request(self, flow: http.HTTPFlow) -> None:
        md = flow.metadata.get("condroute")
        if not md or md.get("outcome") != "routed" or not md.get("timeout") or flow.response is not None:
            return
        if flow not in self.decisions or not self._live(flow):
            return
        self._arm(flow, float(md["timeout"]), float(md["timeout"]))

    def _arm(self, flow: http.HTTPFlow, delay: float, timeout: float) -> None:
        # a weak reference: a body timer outlives most responses, and must not keep their flows alive
        loop = asyncio.get_running_loop()
        self.timers[flow.id] = loop.call_later(delay, self._fire, weakref.ref(flow), flow.id, timeout)

    def _cancel(self, flow: http.HTTPFlow) -> None:
        t = self.timers.pop(flow.id, None)
        if t is not None:
            t.cancel()
        self._body.pop(flow.id, None)
        self.decisions.pop(flow, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """The headers are in: from now on the timeout is the longest pause in the body. The timer
        armed at the request runs on (most responses are complete when it fires: nothing to do);
        then the body is checked a few times per timeout. No body byte has been taken in yet."""
        if flow.id not in self.timers or flow.response is None:
            return              # no timeout on this flow, or it is condroute's own 504
        if flow.response.stream and not isinstance(flow.response.stream, _Counted):
            flow.response.stream = _Counted(flow.response.stream)
        self._body[flow.id] = (0, time.monotonic())

    def error(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)
        self.pending.pop(flow.id, None)
        self.retrying.pop(flow.id, None)
        md = flow.metadata.get("condroute")
        if md is not None and flow.error is not None and "error" not in md:
            md["error"] = flow.error.msg
            if flow.comment and "timed_out" not in md:      # (a timeout said it already)
                flow.comment += " | " + render.error_comment(flow.error.msg)

    def _fire(self, ref: weakref.ref, flow_id: str, timeout: float) -> None:
        self.timers.pop(flow_id, None)
        flow = ref()
        resp = flow.response if flow is not None else None
        if flow is None or not flow.live or (resp is not None and resp.timestamp_end is not None):
            self._body.pop(flow_id, None)
            if flow is not None:
                self.decisions.pop(flow, None)
            return              # the common case: the response is complete (no task needed)
        task = asyncio.get_running_loop().create_task(self._timed_out(flow, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _timed_out(self, flow: http.HTTPFlow, timeout: float) -> None:
        """Runs as a task (server_event is a coroutine). Everything is looked at here, right before
        the events go in: nothing else runs in between (server_event does not wait inside)."""
        resp = flow.response
        if (flow.error is not None or not flow.live or flow.websocket is not None
                or (resp is not None and resp.timestamp_end is not None)):
            self._body.pop(flow.id, None)
            return              # answered, failed or finished meanwhile
        sc = flow.server_conn
        if not sc.connected:
            # still connecting: look again shortly (a connection that fails ends the flow through
            # the error hook)
            self._arm(flow, 0.05, timeout)
            return
        if sc.alpn in (b"h2", b"h3"):
            self._not_enforced(flow)
            return
        fs = compat.stream_of(flow, self._proxyserver())
        if fs is None:
            log.warning("condroute: the timed-out request's HTTP stream was not found; not answered")
            self._body.pop(flow.id, None)
            return
        if fs.paused:
            # waiting on a hook of some addon: events would queue behind it; look again shortly
            self._arm(flow, 0.05, timeout)
            return
        state = fs.state
        if resp is None:
            if state != "headers":
                return
            phase, sent = "headers", False
        else:
            if state == "buffering":                            # nothing sent yet
                seen, sent = fs.buffered, False
            elif state == "streaming":                          # the headers went out already
                if not isinstance(resp.stream, _Counted):
                    # streaming began mid-body (stream_large_bodies on a chunked body): what came
                    # before is unknown, so the pause starts now
                    resp.stream = _Counted(resp.stream)
                    self._body.pop(flow.id, None)
                seen, sent = resp.stream.seen, True
            else:
                self._body.pop(flow.id, None)
                return
            now = time.monotonic()
            before, since = self._body.get(flow.id, (-1, now))
            if seen != before:
                since = now      # the body moved (at the latest now): the pause starts again
            if now - since < timeout * 0.99:
                self._body[flow.id] = (seen, since)
                self._arm(flow, max(0.01, min(timeout / 4, since + timeout - now)), timeout)
                return
            self._body.pop(flow.id, None)
            phase = "body"
        if not fs.routable():
            self._not_enforced(flow, "connections whose HTTP layers mitmproxy would not route the answer "
                                     "through (an HTTP/2 or HTTP/3 connection on the way)")
            return
        d = self.decisions.pop(flow, None)
        if d is None:           # pragma: no cover - armed only for a flow whose decision is kept
            return
        self._record(flow, d, timeout, phase, sent)
        if phase == "headers":
            body = b"" if flow.request.method.upper() == "HEAD" else render.timeout_body(d, timeout).encode()
            answer = http.Response.make(504, body, {"content-type": "text/plain; charset=utf-8"})
            answer.reason = "Gateway Timeout"                   # RFC 9110's name (mitmproxy: "Time-out")
            if not (flow.request.is_http2 or flow.request.is_http3):
                # HTTP/1: the client connection ends with this answer. The closed upstream connection
                # reports an error to the stream later on; on a connection that went on to the next
                # request, mitmproxy would hand that error to the wrong request.
                answer.headers["connection"] = "close"
        try:
            if phase == "headers":
                await fs.answer(answer, body)
            else:
                await fs.fail(render.timeout_error(d, timeout), sent)
            fs.close_upstream()      # the late answer is never read, the connection never reused
        except Exception as e:  # pragma: no cover - the connection went away meanwhile
            log.error(f"condroute: could not answer the timed-out request: {type(e).__name__}: {e}")

    def _record(self, flow: http.HTTPFlow, d: Decision, timeout: float, phase: str, sent: bool) -> None:
        """Says what happened in the decision (and its metadata), the flow's comment and the log."""
        reason = timeout_reason(phase, timeout)
        record_timeout(d, reason, sent)
        md = flow.metadata.get("condroute")
        if md is None:
            md = flow.metadata["condroute"] = {}
        md.update(render.to_dict(d))
        md["timed_out"] = timeout
        md["timeout_reason"] = reason
        if not sent:
            md["header"] = render.timeout_header(d, timeout)
        flow.comment = f"{flow.comment or render.comment(d)} | {render.timeout_comment(d, phase, timeout, sent)}"
        request = f"{flow.request.method} {flow.request.pretty_url.split('?')[0]}"
        log.warning(f"condroute: {render.timeout_line(d, request, phase, timeout, sent)}")

    def _not_enforced(self, flow: http.HTTPFlow, where: str = "HTTP/2 or HTTP/3 upstream connections") -> None:
        self._body.pop(flow.id, None)
        if not self._warned_h2:
            self._warned_h2 = True
            log.warning(f"condroute: timeouts are not enforced on {where}")
