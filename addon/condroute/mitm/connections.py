"""Upstream connections a backend shapes: its TLS server name (``sni``) and its rate (``throttle``).

Both act below HTTP, where an addon sees no flow: on the connection mitmproxy opens to the upstream.
This part of :class:`~condroute.mitm.ConditionalRouting` (called from its hooks, which it registers
only while the rules have a backend with ``sni`` or ``throttle``: see ``ConditionalRouting._sync_hooks``)
uses mitmproxy's public hooks only:

* **sni.** mitmproxy gives a new upstream connection the request's host as its server name
  (``HttpLayer.get_connection``: ``server.sni = address[0]``; an IP address is never sent as SNI,
  RFC 6066, but the certificate is checked against it), and ``TlsConfig.tls_start_server`` both sends
  ``server.sni`` and verifies the certificate against it (``X509_VERIFY_PARAM_set1_host``) unless
  ``ssl_insecure``. The ``server_connect`` hook runs after the connection object is made and before it
  is opened, so before TLS starts: there the name is set. Which flow a connection is opened for is not
  in the hook's data, so :meth:`Connections.routed` remembers, for a rerouted flow, ``(client
  connection id, host, port) -> name``, and :meth:`Connections.server_connect` takes it (once).
  ``preserve`` is the name the client itself sent in its TLS handshake with the proxy
  (``client_conn.sni``); a client that spoke plain HTTP sent none, and then it is the host it asked
  for (before condroute rewrote it), when that is a DNS name; for an IP address, mitmproxy's default
  (the upstream's address: no SNI sent). Envoy's ``auto_sni`` takes the Host/:authority of the
  request sent upstream instead; condroute sends the client's, as the word says.
  *Reuse:* mitmproxy reuses an open upstream connection for a request to the same address (host,
  port, TLS, upstream proxy) on the same client connection, whatever its server name (measured: the
  second of two backends with names a and b for one address was sent on a's connection). So while
  these hooks run, the name of each open TLS connection is kept (``open``), and a flow whose client
  connection has one to its address under another name (or is about to: a name not yet taken) goes
  through a relay that only forwards, one per address and name: a connection of its own, reused by
  the next request with that name. Flows of backends without sni are checked too (one dict test per
  request, only while such connections are open). Not in upstream-proxy mode.
* **throttle.** mitmproxy reads a response as fast as the upstream sends it, and its ``stream``
  callable is synchronous (it cannot wait without stopping the event loop). So a throttled flow is sent
  to a relay on 127.0.0.1 owned by this module (an asyncio server in mitmproxy's loop, one per
  upstream address, rate and server name, started at its first use, its listener closed when the
  rules no longer name it and at shutdown), which forwards the bytes both ways to the real upstream and
  paces the upstream-to-proxy direction with a token bucket (per connection: each connection gets the
  rate, as one slow client would). The flow's destination becomes the relay; its Host header, scheme
  (TLS runs end to end through the relay, with the upstream's own name or the backend's ``sni`` as
  server name and for verification), decision and log stay the upstream's. Its response is streamed
  to the client (``responseheaders``), so the client sees the body arrive at that rate rather than
  all at once at the end. The relay reports its own connections to the real upstream to passive
  health (opened, closed, failed): connect-failure probing and cool-downs stay on the real address.
  In upstream-proxy mode (mitmproxy connects to another proxy) throttle is not applied (logged once).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any, Callable

from mitmproxy import http

from ..engine import Decision
from ..model import every_upstream
from .health import Health
from .upstreams import describe_connect_error

__all__ = ["Bucket", "Connections", "Relay", "needs", "preserved_name"]

log = logging.getLogger("condroute")

MAX_NAMES = 4096           # remembered names not yet taken by a connection (bounded: a reused
                           # connection never takes its flow's entry)
RELAY_HOST = "127.0.0.1"
MAX_RELAYS = 256           # listeners kept (a relay is per name too: sni preserve takes each client's);
                           # past it the least recently used one stops accepting (its connections run on)


def needs(rules: Any) -> tuple[bool, bool]:
    """(any backend with sni or throttle, any with throttle) in ``rules`` (None: no rules)."""
    if rules is None:
        return False, False
    sni = throttle = False
    for r in rules.routes:
        for b in r.backends:
            sni = sni or b.sni is not None
            throttle = throttle or b.throttle is not None
    return sni or throttle, throttle


def _is_dns_name(host: str) -> bool:
    if not host:
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    return False


def preserved_name(client_sni: str | None, client_host: str | None) -> str | None:
    """``sni: preserve``: the client's own TLS server name, else the host it asked for when that is a
    DNS name; None (mitmproxy's default) otherwise."""
    if client_sni:
        return client_sni
    if client_host and _is_dns_name(client_host):
        return client_host.rstrip(".").lower()
    return None


class Bucket:
    """A token bucket that may go into debt: ``take(n, now)`` says how long to wait before sending
    ``n`` bytes so that at most ``burst + rate * t`` bytes have gone in any ``t`` seconds."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.last = float(burst), now

    def take(self, n: int, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate) - n
        self.last = now
        return -self.tokens / self.rate if self.tokens < 0 else 0.0


class Relay:
    """A listener on 127.0.0.1 that forwards each accepted connection to ``host:port``, pacing what
    comes back at ``kbps`` (1 kbps = 125 bytes/s; None: not paced, a connection of its own). Its port is known (and connections queue in the
    kernel's backlog) as soon as it is made; it starts accepting on the next turn of the loop."""

    def __init__(self, host: str, port: int, kbps: float | None, health: Health,
                 connect_timeout: Callable[[], float]) -> None:
        self.host, self.upstream_port, self.kbps = host, port, kbps
        self.rate = kbps * 125.0 if kbps else None                 # bytes per second (None: as fast as it comes)
        self.chunk = int(min(65536, max(256, self.rate / 20))) if self.rate else 65536   # ~20 writes a second
        self.health = health
        self.connect_timeout = connect_timeout
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((RELAY_HOST, 0))
        sock.listen(128)
        sock.setblocking(False)
        self.port: int = sock.getsockname()[1]
        self._sock = sock
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._start = asyncio.get_running_loop().create_task(self._serve())
        self.closed = False

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self._sock)

    def close_listener(self) -> None:
        """Accept no more connections; the open ones run on (their flows finish)."""
        self.closed = True
        if self._server is not None:
            self._server.close()
        else:
            self._start.cancel()
            self._sock.close()

    def abort(self) -> None:
        """Close the listener and every connection (shutdown)."""
        self.close_listener()
        for w in list(self._writers):
            w.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            # shutdown cancels every task: a handler that ends cancelled makes asyncio's stream
            # server log a traceback (Python 3.11); its connections are closed below anyway
            writer.transport.abort()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        timeout = self.connect_timeout()
        try:
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection(self.host, self.upstream_port), timeout)
            except (OSError, asyncio.TimeoutError) as e:
                err = describe_connect_error(e, timeout)
                if self.health.mark_down(self.host, self.upstream_port, err):
                    log.warning(f"condroute: upstream {self.host}:{self.upstream_port} (throttled) {err}; "
                                f"passing it over for {self.health.cooldown:g}s")
                writer.transport.abort()
                return
            self.health.opened(self.host, self.upstream_port)
            self._writers.add(up_w)
            try:
                up = asyncio.ensure_future(self._forward(reader, up_w))
                try:
                    await self._paced(up_r, writer)
                finally:
                    up.cancel()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                self.health.closed(self.host, self.upstream_port)
                self._writers.discard(up_w)
                up_w.transport.abort()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    @staticmethod
    async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Proxy to upstream, as it comes; the proxy's end of writing is passed on."""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.transport.abort()

    async def _paced(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Upstream to proxy, at most ``rate`` bytes a second after a burst of one chunk."""
        loop = asyncio.get_running_loop()
        bucket = Bucket(self.rate, self.chunk, loop.time()) if self.rate else None
        while data := await reader.read(self.chunk):
            wait = bucket.take(len(data), loop.time()) if bucket is not None else 0.0
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


class Connections:
    """Part of ConditionalRouting (see the module docstring): the server names to set on upstream
    connections about to open, and the throttling relays."""

    def __init__(self, health: Health, connect_timeout: Callable[[], float]) -> None:
        self.health = health
        self.connect_timeout = connect_timeout
        self.names: dict[tuple[str, str, int], str] = {}   # (client id, host, port) -> server name
        # the TLS connections open while these hooks run: (client id, host, port) -> (server id, name)
        self.open: dict[tuple[str, str, int], tuple[str, str | None]] = {}
        self.relays: dict[tuple[str, int, float | None, str | None], Relay] = {}
        self._warned_via = False
        self._warned_loop = False

    # -- a rerouted flow ---------------------------------------------------------------------------
    def routed(self, flow: http.HTTPFlow, d: Decision, client_host: str | None) -> float | None:
        """Called by ConditionalRouting.route for a routed flow whose backend has sni or throttle,
        after the request was rewritten for the upstream. Sends it to a relay when throttled (returns
        the kbps then) and remembers the server name its connection is to get."""
        https = d.scheme == "https"
        name: str | None = None
        if https and d.sni is not None:
            name = preserved_name(flow.client_conn.sni, client_host) if d.sni == "preserve" else d.sni
        data = flow.request.data
        relayed = None
        if d.throttle and d.host is not None and d.port is not None:
            if flow.server_conn.via is not None:
                if not self._warned_via:
                    self._warned_via = True
                    log.warning("condroute: throttle is not applied in upstream-proxy mode (mitmproxy connects "
                                "to the upstream proxy, not to the backend's upstream)")
            else:
                relay = self._relay(d.host, d.port, d.throttle, name)
                if relay is not None:
                    if https and name is None:
                        name = d.host      # the upstream's own name (or address) through the relay
                    data.host, data.port = RELAY_HOST, relay.port
                    relayed = d.throttle
        if https and relayed is None and (self.open or self.names) and flow.server_conn.via is None:
            name = self._apart(flow, d, name)
        if name is not None:
            names = self.names
            if len(names) >= MAX_NAMES:
                del names[next(iter(names))]
            names[(flow.client_conn.id, data.host, data.port)] = name
        return relayed

    def _apart(self, flow: http.HTTPFlow, d: Decision, name: str | None) -> str | None:
        """A flow whose client connection has (or is about to have) a TLS connection to the same
        address under another server name: mitmproxy would send it on that one. It goes through a
        relay that only forwards (one per address and name), a connection of its own."""
        data = flow.request.data
        want = name or data.host             # mitmproxy's default: the address
        key = (flow.client_conn.id, data.host, data.port)
        have = self.open.get(key)
        pending = self.names.get(key)
        if (have is None or have[1] == want) and (pending is None or pending == want):
            return name
        relay = self._relay(data.host, data.port, None, want)
        if relay is None:
            return name
        data.host, data.port = RELAY_HOST, relay.port
        return want

    def _relay(self, host: str, port: int, kbps: float | None, name: str | None) -> Relay | None:
        key = (host.lower(), port, kbps, name)
        relays = self.relays
        r = relays.get(key)
        if r is not None and not r.closed:
            if len(relays) > 1:
                relays[key] = relays.pop(key)     # the most recently used last
            return r
        try:
            asyncio.get_running_loop()
        except RuntimeError:      # no event loop (a flow handled outside mitmproxy's loop)
            if not self._warned_loop:
                self._warned_loop = True
                log.warning("condroute: throttle needs mitmproxy's event loop; not applied here")
            return None
        while len(relays) >= MAX_RELAYS:
            relays.pop(next(iter(relays))).close_listener()
        r = relays[key] = Relay(host, port, kbps, self.health, self.connect_timeout)
        return r

    # -- hooks -------------------------------------------------------------------------------------
    def server_connect(self, data: Any) -> None:
        """A connection is about to open: give it the server name its flow is to send; keep the name
        of each TLS connection while it is open (see _apart)."""
        a = data.server.address
        if not a:
            return
        key = (data.client.id, str(a[0]), int(a[1]))
        name = self.names.pop(key, None)
        if name is not None:
            data.server.sni = name
        if data.server.tls:
            opened = self.open
            if len(opened) >= MAX_NAMES and key not in opened:
                del opened[next(iter(opened))]       # (bounded, should a close go unreported)
            opened[key] = (data.server.id, data.server.sni)

    def server_disconnected(self, data: Any) -> None:
        """A connection closed, or failed to open (server_connect_error): its name is no longer in use."""
        a = data.server.address
        if a:
            key = (data.client.id, str(a[0]), int(a[1]))
            if self.open.get(key, ("",))[0] == data.server.id:
                del self.open[key]

    @staticmethod
    def responseheaders(flow: http.HTTPFlow) -> None:
        """A throttled response is streamed: the client gets the body at the relay's pace."""
        resp = flow.response
        if resp is None or resp.stream:
            return
        md = flow.metadata.get("condroute")
        if md is not None and md.get("throttled"):
            resp.stream = True

    def sync(self, rules: Any) -> None:
        """New rules: close the listeners of relays they no longer ask for (a throttle's address
        and rate; an https upstream's address for a relay that only forwards); forget the names when
        no backend has sni or throttle (the hooks that use them are no longer called)."""
        if not needs(rules)[0]:
            self.names.clear()
            self.open.clear()
        if not self.relays:
            return
        wanted: set[tuple[str, int, float | None]] = set()
        if rules is not None:
            wanted.update((u.host.lower(), u.port, None) for u in every_upstream(rules) if u.scheme == "https")
            for r in rules.routes:
                for b in r.backends:
                    if b.throttle is not None:
                        ups = [b.upstream] if b.upstream is not None else []
                        if b.split is not None:
                            ups += [u for u, _ in b.split.arms]
                        wanted.update((u.host.lower(), u.port, b.throttle.kbps) for u in ups if u is not None)
        for key, relay in list(self.relays.items()):
            if key[:3] not in wanted:
                relay.close_listener()
                del self.relays[key]

    def close(self) -> None:
        for relay in self.relays.values():
            relay.abort()
        self.relays.clear()
        self.names.clear()
        self.open.clear()
