"""Mirrors (Gateway API RequestMirror, Istio mirror): a copy of a routed request sent to another
upstream, its answer read and dropped.

The engine draws the mirrors of a request (``Decision.mirrors``: each with the path and Host the
copy is sent with); the addon hands them here when it reroutes the flow (:meth:`Mirrors.remember`)
and calls :meth:`Mirrors.request` from its ``request`` hook, when the request body is complete:
the copies are built then, and sent once the real response has been sent to the client (or the
flow failed; after ``WAIT_MAX`` seconds at the latest: a long download, a WebSocket), looked at
every ``TICK`` seconds while any is waiting. Each copy is sent by a task of its own, straight to
the mirror's address over a new
connection (HTTP/1.1, ``Connection: close``; TLS for an https upstream, verified as mitmproxy
verifies its own upstreams: ``ssl_verify_upstream_trusted_ca``/``_confdir`` or certifi's CAs, none
with ``ssl_insecure``): never through mitmproxy, so it is not routed again, not shown as a flow
and never delays or changes the real request. The copy has the request's method, the forwarded
path, the forwarded headers (after remove/set/add; hop-by-hop ones left out), the Host the
forwarded request has (or the mirror's own authority when that is the upstream's) and the body.

At most ``MAX_IN_FLIGHT`` copies are under way (waiting or being sent) at once; more are dropped
(said once per burst).
A request whose body is streamed (``stream_large_bodies``) is not mirrored: its body is not kept
(said once; each copy not sent counts as dropped). A mirror that fails (refused, reset or closed
before answering, a failed TLS handshake, no answer within ``TIMEOUT`` seconds) is logged once
until a copy to it succeeds again, with its name and address, never the request's URL or headers.
Nothing here runs for a request without mirrors.

Counts (the status page's ``mirrors``): in total and per mirror upstream (:attr:`Mirrors.by_upstream`,
keyed by the upstream, which compares by value, so a reload that keeps a mirror keeps its counts):
``sent`` (answered, any status), ``failed``, ``dropped``, ``in_flight``.

Why the real response is never delayed: the ``request`` hook only builds the copy's head (~20-30 µs
on a busy 2-core machine); connecting, writing and reading happen in a task on the proxy's
single-threaded event loop, and only after the real response was sent: started at once, that work
(~0.3 ms of CPU per copy here) fell while the mirrored request waited for its own answer and made
it ~4% slower at the median and 8-10% at p99 than an unmirrored one (scripts/bench_mirror.py
measures that ratio). The TLS context for https mirrors is made once per set of TLS options, in
a worker thread.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from mitmproxy import http

from .trust import upstream_tls
from .upstreams import describe_connect_error

log = logging.getLogger("condroute")

MAX_IN_FLIGHT = 64
TIMEOUT = 10.0
TICK = 0.005        # s: how often copies waiting for their request's response are looked at
WAIT_MAX = 2.0      # s: a copy waits at most this long for the real response (then goes anyway)


class NoAnswer(ConnectionError):
    pass


class NoTrust(ConnectionError):
    pass
# not copied: how this hop is framed and kept (recomputed for the copy), and the Host (set below)
_NOT_COPIED = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                         b"proxy-connection", b"te", b"upgrade", b"trailer", b"proxy-authorization"})


class Mirrors:
    """Part of ConditionalRouting (see the module docstring)."""

    def __init__(self) -> None:
        # flow id -> the decision's mirrors, from the decision until the body is complete (or the
        # flow fails); a plain dict, so that "is any pending?" costs nothing per request
        self.pending: dict[str, tuple] = {}
        self.tasks: set[asyncio.Task] = set()
        # copies built, waiting for their flow's response to be sent: (flow, since, body, copies)
        self.waiting: list[tuple[http.HTTPFlow, float, bytes, list]] = []
        self._ticker: asyncio.TimerHandle | None = None
        self.under_way = 0                 # copies waiting or being sent
        self.failing: set[str] = set()     # mirror upstreams whose last copy failed (logged once)
        self.sent = 0                      # copies answered by their mirror (any status)
        self.failed = 0
        self.dropped = 0
        # per mirror upstream: [sent, failed, dropped, in_flight]
        self.by_upstream: dict[Any, list[int]] = {}
        self._said_full = self._said_streamed = False

    def remember(self, flow: http.HTTPFlow, mirrors: tuple) -> None:
        if len(self.pending) >= 4096:      # flows that ended without a request or error hook
            for k in list(self.pending)[:1024]:
                del self.pending[k]         # (the dict itself stays: the addon holds it)
        self.pending[flow.id] = mirrors

    def forget(self, flow: http.HTTPFlow) -> None:
        if self.pending:
            self.pending.pop(flow.id, None)

    def request(self, flow: http.HTTPFlow) -> None:
        """The request body is complete: build the copies; they are sent once the real response has
        been (see _tick; nothing is awaited here)."""
        targets = self.pending.pop(flow.id, None)
        md = flow.metadata.get("condroute")
        if (not targets or not md or not md.get("mirrors") or flow.error is not None
                or (flow.response is not None and "tries" not in md)):
            return      # (decided again after a failed connection, without mirrors: the draw is void;
            #            a response with tries is the upstream's, to a request condroute sent: retry.py)
        r = flow.request
        body = r.raw_content
        if body is None:           # streamed: the body went on without being kept
            for m, _, _ in targets:
                self._count(m.upstream)[2] += 1
            self.dropped += len(targets)
            if not self._said_streamed:
                self._said_streamed = True
                log.info("condroute: a request with a streamed body (stream_large_bodies) is not mirrored: "
                         "its body is not kept (said once; counted as dropped)")
            return
        host_now = r.host_header or ""
        fields = [(k, v) for k, v in r.headers.fields if k.lower() not in _NOT_COPIED]
        copies = []
        for m, path, host in targets:
            counts = self._count(m.upstream)
            if self.under_way >= MAX_IN_FLIGHT:
                self.dropped += 1
                counts[2] += 1
                if not self._said_full:
                    self._said_full = True
                    log.warning(f"condroute: {MAX_IN_FLIGHT} mirrored copies are under way: dropping more "
                                "until they finish")
                continue
            self._said_full = False
            head = _head(r.method, path, host if host is not None else host_now, fields, len(body))
            counts[3] += 1
            self.under_way += 1
            copies.append((m.upstream, head, counts))
        if copies:
            self.waiting.append((flow, time.monotonic(), body, copies))
            if self._ticker is None:
                self._ticker = asyncio.get_running_loop().call_later(TICK, self._tick)

    def _tick(self) -> None:
        """Send the copies of flows whose response has been sent to the client (mitmproxy sets
        ``flow.live`` to False then, or when the flow fails), or that waited WAIT_MAX. The proxy's
        event loop is single-threaded: a copy's work (connect, write) done while its own request
        waits for the real answer would delay that answer (measured: scripts/bench_mirror.py)."""
        self._ticker = None
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        still = []
        for item in self.waiting:
            flow, since, body, copies = item
            if flow.live and now - since < WAIT_MAX:
                still.append(item)
                continue
            if flow.response is None and flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE:
                # killed after the request hook (another addon, an intercept): the request never left
                # (a response means it did: killed later, or condroute sent it itself, retry.py)
                for _up, _head, counts in copies:
                    counts[2] += 1
                    counts[3] -= 1
                self.dropped += len(copies)
                self.under_way -= len(copies)
                continue
            for up, head, counts in copies:
                task = loop.create_task(self._send(up, head, body, counts))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        self.waiting = still
        if still:
            self._ticker = loop.call_later(TICK, self._tick)

    def rows(self, rules: Any) -> list[dict[str, Any]]:
        """The per-mirror counts for the status page. The counts of a mirror the rules in force no
        longer have are dropped (once none of its copies is under way), as the status page drops
        the counts of a route a reload removed."""
        keep = set()
        if rules is not None:
            for r in rules.routes:
                for b in r.backends:
                    keep.update(m.upstream for m in b.mirrors)
        for up in [u for u, c in self.by_upstream.items() if u not in keep and not c[3]]:
            del self.by_upstream[up]
        return [{"name": up.name, "url": up.url, "sent": c[0], "failed": c[1], "dropped": c[2], "in_flight": c[3],
                 "failing": up.name in self.failing} for up, c in self.by_upstream.items()]

    def _count(self, up: Any) -> list[int]:
        c = self.by_upstream.get(up)
        if c is None:
            c = self.by_upstream[up] = [0, 0, 0, 0]
        return c

    async def _send(self, up: Any, head: bytes, body: bytes, counts: list[int]) -> None:
        try:
            status = await _exchange(up, head, body)
        except asyncio.CancelledError:      # the proxy shuts down
            counts[3] -= 1
            self.under_way -= 1
            raise
        except Exception as e:
            self.failed += 1
            counts[1] += 1
            counts[3] -= 1
            self.under_way -= 1
            if up.name not in self.failing:
                self.failing.add(up.name)
                if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
                    why = f"did not answer within {TIMEOUT:g}s"
                elif isinstance(e, NoAnswer):
                    why = str(e)
                elif isinstance(e, NoTrust):
                    why = str(e)
                elif isinstance(e, ssl.SSLError):
                    why = f"failed the TLS handshake ({e.reason or type(e).__name__})"
                else:
                    why = describe_connect_error(e, TIMEOUT)
                log.warning(f"condroute: mirror {up.name} ({up.authority}) {why}; the copy is dropped (the "
                            "request itself is not affected); further failures are not logged until it works again")
            return
        self.sent += 1
        counts[0] += 1
        counts[3] -= 1
        self.under_way -= 1
        if up.name in self.failing:
            self.failing.discard(up.name)
            log.info(f"condroute: mirror {up.name} ({up.authority}) answers again ({status})")


def _head(method: str, path: str, host: str, fields: list[tuple[bytes, bytes]], length: int) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode("utf-8", "surrogateescape"),
             b"Host: " + host.encode("utf-8", "surrogateescape")]
    lines.extend(k + b": " + v for k, v in fields)
    if length or method.upper() not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"):
        lines.append(b"Content-Length: " + str(length).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Copy(asyncio.Protocol):
    """One copy on a connection of its own: written once connected; the status line of the answer
    kept, the rest dropped as it comes; ``done`` gets the status code when the mirror closes, or
    why there was no answer. (A protocol, not asyncio's streams: half the work on the loop.)"""

    def __init__(self, head: bytes, body: bytes, done: asyncio.Future) -> None:
        self.head, self.body, self.done = head, body, done
        self.first = b""
        self.status: str | None = None

    def connection_made(self, transport: Any) -> None:
        transport.write(self.head)
        if self.body:
            transport.write(self.body)     # (not head + body: no copy of a large body on the loop)
        self.head = self.body = b""

    def data_received(self, data: bytes) -> None:
        if self.status is None:
            self.first += data
            line, nl, _ = self.first.partition(b"\n")
            if nl or len(self.first) > 8192:
                parts = line.split(b" ", 2)
                self.status = parts[1].decode("ascii", "replace").strip() if len(parts) > 1 else "?"
                self.first = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if self.status is not None:
            self.done.set_result(self.status)
        elif isinstance(exc, ConnectionResetError):
            self.done.set_exception(NoAnswer("reset the connection before answering"))
        elif isinstance(exc, BrokenPipeError):
            self.done.set_exception(NoAnswer("closed the connection before reading the copy"))
        elif exc is not None:
            self.done.set_exception(NoAnswer(f"failed before answering ({type(exc).__name__})"))
        else:
            self.done.set_exception(NoAnswer("closed the connection without answering"))


async def _exchange(up: Any, head: bytes, body: bytes) -> str:
    """Send one copy and read its answer to the end (dropped); the status line's code. Raises
    TimeoutError when the mirror has not answered within TIMEOUT seconds (an answer whose end
    has not come by then counts as answered)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    proto = _Copy(head, body, done)
    transport = None
    try:
        async with asyncio.timeout(TIMEOUT):
            tls = None
            if up.scheme == "https":
                try:
                    tls = await upstream_tls()
                except (OSError, ssl.SSLError) as e:
                    raise NoTrust(f"cannot be verified: the trusted certificates do not load ({e})") from None
            transport, _ = await loop.create_connection(lambda: proto, up.host, up.port, ssl=tls,
                                                        server_hostname=up.host if tls else None)
            return await done
    except TimeoutError:
        if proto.status is not None:
            return proto.status
        raise
    finally:
        if transport is not None and not done.done():
            transport.abort()
