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
* **Passive health** also comes from mitmproxy's own connections: ``server_connect_error`` marks an
  address down, ``server_connected`` / ``server_disconnected`` keep count of open connections.
* **Timeouts**: when a request with a ``timeout`` has been sent (the ``request`` hook; for streamed
  bodies, after the last byte) a timer starts; the ``responseheaders`` hook stops it (so streamed
  responses and WebSocket connections, whose 101 arrives in time, run as long as they like). No hook
  can make mitmproxy answer a request it is waiting on, so when the timer fires first the answer is
  fed to the connection the way mitmproxy feeds its own events, through the client connection's
  handler (``Proxyserver.connections[id].server_event``):
  - plain-HTTP/1 upstream: the bytes of a ``504`` response with ``Connection: close`` are handed in
    as if the upstream had sent them. mitmproxy parses them as the upstream's answer, runs
    ``responseheaders``/``response`` (the debug header is added), sends it, and closes that upstream
    connection in the same step, so a late answer is never read and the connection never reused;
  - TLS upstream: its bytes cannot be forged, so the flow's HTTP stream gets a ``MessageInjected``
    protocol error with status 504 (the mechanism behind ``inject.websocket``: mitmproxy routes such
    events to the flow's stream, through CONNECT tunnels too); mitmproxy's error page carries the
    text, and the upstream connection is closed after it;
  - HTTP/2 or HTTP/3 upstream connections: not enforced (said once in the log).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy import events

from .health import DEFAULT_COOLDOWN, Health
from .rules import IDEMPOTENT

try:  # mitmproxy 11 and 12
    from mitmproxy.proxy.layers.http import ResponseProtocolError
except ImportError:  # pragma: no cover - another mitmproxy layout
    ResponseProtocolError = None  # type: ignore[assignment,misc]
try:  # mitmproxy 12 types the error code of a ResponseProtocolError; 11 takes the status code itself
    from mitmproxy.proxy.layers.http._events import ErrorCode as _ErrorCode
except ImportError:
    _ErrorCode = None

log = logging.getLogger("condroute")

DEFAULT_CONNECT_TIMEOUT = 3.0
RETRY_BACKOFF = 0.05          # seconds before the 2nd try, doubling, at most 1 s


class _GatewayTimeoutCode:
    """For mitmproxy 12, whose ErrorCode has no 504: answers its one question, the status code."""

    def http_status_code(self) -> int:
        return 504


if ResponseProtocolError is not None:
    class _InjectedTimeout(ResponseProtocolError, events.MessageInjected):  # type: ignore[misc,valid-type]
        """A protocol error with status 504, injected into the flow's HTTP stream: mitmproxy routes a
        MessageInjected event straight to the stream of its flow (past any CONNECT tunnel)."""

        def __init__(self, flow: http.HTTPFlow, message: str):
            self.flow, self.stream_id, self.message = flow, 0, message
            self.code = 504 if _ErrorCode is None else _GatewayTimeoutCode()


def find_stream_id(layer: Any, flow: http.HTTPFlow, depth: int = 0) -> int | None:
    """The id of the HTTP stream that carries ``flow``, found by looking (only looking) through the
    connection's layers: HTTP layers keep their streams in ``streams``; layers nest through ``layer``
    (NextLayer), ``child_layer``, or a ``_handle_event`` bound to the child (the proxy-mode layers);
    CONNECT tunnels through their stream's ``child_layer``."""
    if layer is None or depth > 32:
        return None
    streams = getattr(layer, "streams", None)
    if isinstance(streams, dict):
        for sid, st in list(streams.items()):
            if getattr(st, "flow", None) is flow:
                return sid
            found = find_stream_id(getattr(st, "child_layer", None), flow, depth + 1)
            if found is not None:
                return found
    children = [getattr(layer, "layer", None), getattr(layer, "child_layer", None),
                getattr(getattr(layer, "_handle_event", None), "__self__", None)]   # HttpProxy delegates so
    for child in children:
        if child is not None and child is not layer:
            found = find_stream_id(child, flow, depth + 1)
            if found is not None:
                return found
    return None


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


def parse_seconds(name: str, value: str) -> float:
    try:
        v = float(value.strip().rstrip("s"))
    except ValueError:
        v = -1.0
    if not 0 <= v <= 3600:
        raise ValueError(f"{name} must be a number of seconds from 0 to 3600, not {value!r}")
    return v


@dataclass
class _Pending:
    snapshot: Any          # flow.request.data before condroute rewrote it
    decision: Any          # the engine's Decision


class Upstreams:
    """Part of ConditionalRouting (``parent``), which calls these methods from its own hooks (they
    keep mitmproxy's hook names and signatures): see the module docstring."""

    def __init__(self, parent: Any):
        self.parent = parent
        self.health = Health()
        self.connect_timeout = DEFAULT_CONNECT_TIMEOUT
        self.probe = tcp_probe            # replaceable in tests
        self.pending: dict[str, _Pending] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self._warned_h2 = False
        self._tasks: set[asyncio.Task] = set()

    # -- options --------------------------------------------------------------------------------
    def load(self, loader: Any) -> None:
        loader.add_option("condroute_cooldown", str, f"{DEFAULT_COOLDOWN:g}",
                          "condroute: seconds an upstream that refused a connection is passed over "
                          "(its backends are skipped, the next one or the fallback serves).")
        loader.add_option("condroute_connect_timeout", str, f"{DEFAULT_CONNECT_TIMEOUT:g}",
                          "condroute: seconds to wait for an unproven upstream to accept a connection.")

    def configure(self, updated: set[str]) -> None:
        try:
            if "condroute_cooldown" in updated:
                self.health.cooldown = parse_seconds("condroute_cooldown", ctx.options.condroute_cooldown)
            if "condroute_connect_timeout" in updated:
                t = parse_seconds("condroute_connect_timeout", ctx.options.condroute_connect_timeout)
                self.connect_timeout = t or DEFAULT_CONNECT_TIMEOUT
        except ValueError as e:
            log.error(f"condroute: {e}")

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _proxyserver() -> Any:
        try:
            return ctx.master.addons.get("proxyserver")
        except Exception:  # pragma: no cover - no master (unit tests without taddons)
            return None

    def _live(self, flow: http.HTTPFlow) -> bool:
        """Is this flow on a client connection of the running proxy (not a replay, not a test flow)?"""
        ps = self._proxyserver()
        conns = getattr(ps, "connections", None)
        return bool(conns) and flow.client_conn.id in conns

    # -- connection failures, retries, failover --------------------------------------------------
    def remember(self, flow: http.HTTPFlow, d: Any) -> None:
        """Called by ConditionalRouting.requestheaders for a routed flow, before it rewrites the
        request. Keeps what a failover needs when the upstream is to be tried first."""
        up = d.upstream_obj
        if up is None or flow.server_conn.via is not None:   # upstream-proxy mode: mitmproxy connects to the proxy
            return
        # A backend with retries is tried first unless a connection to it is open right now: a
        # restarting upstream closes its connections, and the retries are meant for exactly that.
        retrying = bool(d.retries) and flow.request.method.upper() in IDEMPOTENT
        if self.health.known_up(up.host, up.port, fresh=not retrying) or not self._live(flow):
            return
        self.pending[flow.id] = _Pending(flow.request.data.copy(), d)

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
            tries = 1 + (d.retries if flow.request.method.upper() in IDEMPOTENT else 0)
            err = await self._try_connect(d.host, d.port, tries)
            if err is None:
                return
            addr = f"{d.host}:{d.port}"
            self.health.mark_down(d.host, d.port, err, tries)
            log.warning(f"condroute: {d.route}/{d.backend}: upstream {d.upstream} ({addr}) {err}"
                        f"{f' ({tries} attempts)' if tries > 1 else ''}; passing it over for "
                        f"{self.health.cooldown:g}s and deciding again")
            if flow.response is not None or flow.error is not None or not flow.live:
                return
            failed = {"upstream": d.upstream, "address": addr, "error": err, "attempts": tries}
            earlier = (flow.metadata.get("condroute") or {}).get("failed_over", [])
            flow.request.data = p.snapshot                   # as the client sent it
            flow.metadata.pop("condroute", None)
            self.parent.route(flow)                          # decides again, now without that upstream
            md = flow.metadata.get("condroute")
            if md is not None:
                md["failed_over"] = [*earlier, failed]
            p = self.pending.pop(flow.id, None)              # the new upstream may need a try as well

    async def _try_connect(self, host: str, port: int, tries: int) -> str | None:
        err = None
        for i in range(tries):
            if i:
                await asyncio.sleep(min(1.0, RETRY_BACKOFF * 2 ** (i - 1)))
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
        if a and data.server.error and data.server.timestamp_start is not None:
            if self.health.mark_down(*a, str(data.server.error)):
                log.warning(f"condroute: upstream {a[0]}:{a[1]} failed: {data.server.error}; passing it "
                            f"over for {self.health.cooldown:g}s")

    # -- timeouts --------------------------------------------------------------------------------
    def request(self, flow: http.HTTPFlow) -> None:
        md = flow.metadata.get("condroute")
        if not md or md.get("outcome") != "routed" or not md.get("timeout") or flow.response is not None:
            return
        if not self._live(flow):
            return
        self._arm(flow, float(md["timeout"]), float(md["timeout"]))

    def _arm(self, flow: http.HTTPFlow, delay: float, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.timers[flow.id] = loop.call_later(delay, self._fire, flow, timeout)

    def _cancel(self, flow: http.HTTPFlow) -> None:
        t = self.timers.pop(flow.id, None)
        if t is not None:
            t.cancel()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)
        self.pending.pop(flow.id, None)
        md = flow.metadata.get("condroute")
        if md is not None and flow.error is not None and "error" not in md:
            md["error"] = flow.error.msg

    def _fire(self, flow: http.HTTPFlow, timeout: float) -> None:
        self.timers.pop(flow.id, None)
        if flow.response is not None or flow.error is not None or not flow.live:
            return
        sc = flow.server_conn
        if not sc.connected:
            # still connecting: mitmproxy would queue the answer behind the connection attempt;
            # look again shortly (a connection that fails ends the flow through the error hook)
            self._arm(flow, 0.05, timeout)
            return
        if sc.alpn in (b"h2", b"h3"):
            if not self._warned_h2:
                self._warned_h2 = True
                log.warning("condroute: timeouts are not enforced on HTTP/2 or HTTP/3 upstream connections")
            return
        ps = self._proxyserver()
        handler = getattr(ps, "connections", {}).get(flow.client_conn.id)
        if handler is None:
            return
        md = flow.metadata.get("condroute") or {}
        route, backend, upstream, url = md.get("route"), md.get("backend"), md.get("upstream"), md.get("url")
        text = (f"condroute: upstream {upstream} ({url}) did not respond within {timeout:g}s\n"
                f"  route {route!r}, backend {backend!r}\n")
        md["status"] = 504
        md["timed_out"] = timeout
        md["header"] = f"{route}/{backend} -> {upstream} (timeout {timeout:g}s: 504)"
        flow.comment = (flow.comment + " | " if flow.comment else "condroute: ") + \
            f"upstream {upstream} did not respond within {timeout:g}s: answered 504"
        log.warning(f"condroute: {flow.request.method} {flow.request.pretty_url.split('?')[0]}: "
                    f"{route}/{backend}: upstream {upstream} did not respond within {timeout:g}s, answering 504")
        task = asyncio.get_running_loop().create_task(self._answer_504(flow, handler, sc, text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_504(self, flow: http.HTTPFlow, handler: Any, sc: Any, text: str) -> None:
        if flow.response is not None or flow.error is not None or not flow.live:
            return              # the upstream answered after all, a moment before this ran
        try:
            if not sc.tls:
                # A plain HTTP/1 upstream: the 504 enters as the upstream's own response bytes, so
                # mitmproxy parses it, runs responseheaders/response, sends it, and (Connection: close)
                # closes that upstream connection in the same step: a late answer is never read.
                body = text.encode()
                raw = (b"HTTP/1.1 504 Gateway Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                       b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
                await handler.server_event(events.DataReceived(sc, raw))
            elif ResponseProtocolError is not None:
                # TLS to the upstream: its bytes cannot be forged. The stream gets a protocol error with
                # status 504 instead (mitmproxy's error page carries the text); the upstream connection,
                # which still owes a response, is closed after it. The stream passes that event on to
                # the client connection as it is, so it must carry the stream's id.
                sid = find_stream_id(getattr(handler, "layer", None), flow)
                if sid is None:
                    log.warning("condroute: the timed-out request's HTTP stream was not found; not answered")
                    return
                ev = _InjectedTimeout(flow, text.strip())
                ev.stream_id = sid
                await handler.server_event(ev)
                handler.close_connection(sc)
        except Exception as e:  # pragma: no cover - the connection went away meanwhile
            log.error(f"condroute: could not answer the timed-out request: {type(e).__name__}: {e}")
