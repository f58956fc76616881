"""Retries on a reset or a 5xx (``retry_on: [reset, 5xx, gateway-error]``): condroute sends the request itself.

mitmproxy cannot send a request again once its upstream reset the connection or answered 5xx: on
a server error it answers the client 502 itself right after the ``error`` hook, and a response
cannot be replaced once it is on its way. So for a routed flow whose backend's ``retry_on`` names
``reset``, ``5xx`` or ``gateway-error``, whose method is idempotent (GET HEAD OPTIONS TRACE PUT
DELETE), whose request body is buffered (not streamed), that is no WebSocket or other upgrade and
not in upstream-proxy mode, the addon's ``request`` hook hands the flow to :class:`Retry` (a
coroutine, awaited by mitmproxy; every other flow keeps the synchronous path). It sends the request
as it would be forwarded (method, path, headers after condroute's rewrites, Host included, body)
with an HTTP/1.1 client of its own (h11, which mitmproxy depends on, for the framing: content-length,
chunked or close-delimited responses; TLS for https upstreams, verified unless mitmproxy's
``ssl_insecure`` is set, against ``ssl_verify_upstream_trusted_ca`` or certifi's CAs, with the
server name ``sni`` when the backend sets one, else the upstream's host), one connection per attempt.

What counts as a failed attempt follows Envoy's ``x-envoy-retry-on``:

* ``reset``: the connection was reset or closed before the response was complete, or no response
  head came within the backend's ``timeout`` (Envoy: "does not respond at all (disconnect/reset/read
  timeout)");
* ``5xx``: a 5xx status, and everything ``reset`` covers;
* ``gateway-error``: a 502, 503 or 504 status, and everything ``reset`` covers;
* connection failures are retried when ``retry_on`` has any of them (``connect-failure``, ``reset``,
  ``5xx``, ``gateway-error``: Envoy's ``reset`` retries every reset reason, a connection failure
  included, and 5xx and gateway-error include it).

The per-attempt timeout is the backend's ``timeout`` (for the response head; then for each pause
in the body); between attempts the wait doubles from upstreams.RETRY_BACKOFF. A 5xx that
``retry_on`` does not name (a 500 with only ``gateway-error``) is an answer like any other.

When every one of the ``1 + retries`` attempts failed, the request is decided again with that
upstream passed over (for this request only: a 5xx does not mark it down for others) — unless the
backend has ``failover: false`` or nothing else would serve (no other backend holds, no fallback):
then the client gets the last upstream response (a 5xx), or condroute's 502 (reset) / 504 (no
response in time) naming the backend, the upstream and what happened. The next backend is then
forwarded by mitmproxy as usual (or sent by condroute again when it retries too). On success the
upstream's response becomes ``flow.response`` (hop-by-hop headers removed, ``content-length`` set)
and mitmproxy never connects.

**Buffered, bounded**: such responses are read whole before anything is sent to the client, which
is what makes "never once a byte reached the client" hold. The bound is mitmproxy's
``stream_large_bodies`` when it is set, else 16 MiB: a response announced or found larger is not
read on; the request is left to mitmproxy, which sends it once more (it is idempotent) and streams
the answer, and the attempt says so. HTTP/1.1 towards the upstream only (an HTTP/2 client's request
is sent as HTTP/1.1; the answer goes back in the client's protocol); request trailers, client
certificates towards the upstream and upstream proxies are left to mitmproxy (no retry then).

Every attempt is recorded: ``Decision.tries`` (the status page's recent decisions),
``flow.metadata["condroute"]["tries"]`` (``condroute explain --flows``), ``flow.comment`` and one
warning per failed attempt in the log.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

import h11
from mitmproxy import ctx, http

from .. import render
from ..engine import Decision, decide
from .connections import preserved_name
from .trust import upstream_tls
from .upstreams import Upstreams, _Pending, backoff, describe_connect_error
from .view import request_view

__all__ = ["Retry", "Result", "send_once", "failed_kind"]

log = logging.getLogger("condroute")

DEFAULT_MAX_BODY = 16 * 1024 * 1024
GATEWAY_ERRORS = (502, 503, 504)
READ_SIZE = 65536
# not forwarded (RFC 9110 7.6.1), and content-length/transfer-encoding: the framing is the client's own
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"content-length", b"proxy-authenticate",
                        b"proxy-authorization"})
PASSED_OVER = "did not serve this request"
CLIENT_CHECK = 0.5          # s: how often an attempt looks whether the client is still there


@dataclass
class Result:
    outcome: str                          # answered | reset | timeout | connect-failure | too-large | unsendable
    reason: str                           # the status line, or what went wrong
    response: http.Response | None = None


def failed_kind(res: Result, retry_on: frozenset[str]) -> str | None:
    """Which retry_on kind makes ``res`` a failed attempt (None: it is the answer). Only a request
    whose retry_on names reset, 5xx or gateway-error comes here, and each of those covers a reset, a
    timeout and a connection failure (Envoy), so every failed attempt is retried while tries remain."""
    if res.outcome == "answered":
        st = res.response.status_code if res.response is not None else 0
        if st >= 500 and "5xx" in retry_on:
            return "5xx"
        if st in GATEWAY_ERRORS and "gateway-error" in retry_on:
            return "gateway-error"
        return None
    if res.outcome in ("reset", "timeout"):
        return "reset"
    if res.outcome == "connect-failure":
        return "connect-failure"
    return None




def _fields(flow: http.HTTPFlow, body: bytes) -> list[tuple[bytes, bytes]]:
    """The request headers as mitmproxy would forward them over HTTP/1.1: Host first (an HTTP/2
    request's :authority), hop-by-hop headers and those its Connection header names left out, the
    body's length."""
    r = flow.request
    named = {t.strip().lower().encode() for t in r.headers.get("connection", "").split(",") if t.strip()}
    host = r.host_header or r.authority or r.pretty_host
    out = [(b"Host", host.encode("idna") if not host.isascii() else host.encode())]
    for k, v in r.headers.fields:
        lk = k.lower()
        if lk in HOP_BY_HOP or lk in named or lk == b"host":
            continue
        out.append((k, v))
    if body or r.method.upper() in ("PUT", "POST", "PATCH"):
        out.append((b"content-length", str(len(body)).encode()))
    return out


def _response(ev: h11.Response, body: bytes, head_only: bool, started: float) -> http.Response:
    named = set()
    for k, v in ev.headers:
        if k == b"connection":
            named.update(t.strip().lower() for t in v.split(b",") if t.strip())
    keep_length = head_only or ev.status_code in (204, 304)
    fields = [(k, v) for k, v in ev.headers
              if not ((k in HOP_BY_HOP and not (keep_length and k == b"content-length")) or k in named)]
    if not keep_length:
        fields.append((b"content-length", str(len(body)).encode()))
    return http.Response(b"HTTP/1.1", ev.status_code, ev.reason or b"", tuple(fields), body, None,
                         started, time.time())


async def send_once(host: str, port: int, method: bytes, target: bytes, fields: list[tuple[bytes, bytes]],
                    body: bytes, *, tls: ssl.SSLContext | None = None, server_hostname: str | None = None,
                    connect_timeout: float = 3.0, timeout: float | None = None,
                    max_body: int = DEFAULT_MAX_BODY) -> Result:
    """Send one request on a new connection and read the whole response (at most ``max_body``
    bytes of body). Never raises for anything the network does."""
    conn = h11.Connection(h11.CLIENT)
    try:
        data = conn.send(h11.Request(method=method, target=target, headers=fields))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError as e:     # a request h11 will not write (mitmproxy may): not the upstream's fault
        # h11's message ends with the refused bytes (a header value: a Cookie, a token): not kept
        what = str(e).split(" b'", 1)[0].split(' b"', 1)[0]
        return Result("unsendable", f"not sent by condroute: h11 refuses the request ({what})")
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls, server_hostname=server_hostname if tls else None),
            connect_timeout)
    except ssl.SSLError as e:
        return Result("connect-failure", f"failed the TLS handshake ({e.reason or e})")
    except ValueError as e:     # ssl refuses the server name (sni: preserve of a host that is no TLS name)
        return Result("unsendable", f"not sent by condroute: the server name {server_hostname!r} cannot be "
                                    f"sent ({type(e).__name__})")
    except (OSError, asyncio.TimeoutError) as e:
        return Result("connect-failure", describe_connect_error(e, connect_timeout))
    started = time.time()
    head: h11.Response | None = None
    chunks: list[bytes] = []
    size = 0
    eof = False
    try:
        writer.write(data)
        await writer.drain()
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                try:
                    got = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
                except asyncio.TimeoutError:
                    what = "sent no response head" if head is None else "stopped sending the response body"
                    return Result("timeout", f"{what} within {timeout:g}s")
                eof = not got
                conn.receive_data(got)
                continue
            if isinstance(ev, h11.InformationalResponse):
                continue
            if isinstance(ev, h11.Response):
                head = ev
                length = dict(ev.headers).get(b"content-length")
                if length is not None and length.isdigit() and int(length) > max_body and method != b"HEAD":
                    return Result("too-large", f"announced a {int(length)}-byte body, more than the "
                                               f"{max_body} bytes condroute buffers")
                continue
            if isinstance(ev, h11.Data):
                size += len(ev.data)
                if size > max_body:
                    return Result("too-large", f"sent more than the {max_body} bytes condroute buffers")
                chunks.append(bytes(ev.data))
                continue
            if isinstance(ev, h11.EndOfMessage):
                assert head is not None
                resp = _response(head, b"".join(chunks), method == b"HEAD", started)
                return Result("answered", f"answered {head.status_code} {resp.reason}".rstrip(), resp)
            # h11.ConnectionClosed before the end of the response
            return Result("reset", _cut(head))
    except (h11.RemoteProtocolError, ConnectionError, OSError, asyncio.IncompleteReadError) as e:
        if isinstance(e, h11.RemoteProtocolError) and not eof and head is None:
            return Result("reset", f"sent a response that is not HTTP/1.1 ({e})")
        return Result("reset", _cut(head, e))
    finally:
        writer.close()


def _cut(head: h11.Response | None, e: BaseException | None = None) -> str:
    how = "reset" if isinstance(e, ConnectionResetError) else "closed"
    if head is None:
        return f"{how} the connection before a response"
    return f"{how} the connection in the middle of the response body ({head.status_code})"


class _PassOver:
    """The engine's health interface (``unavailable(host, port)``) with one more address passed
    over, for one request's decision: the real Health answers the rest (and every other attribute,
    for the addon's own use while it decides again)."""

    def __init__(self, health: Any, key: tuple[str, int], why: str):
        self.health, self.key, self.why = health, key, why

    def unavailable(self, host: str, port: int) -> str | None:
        if (host.lower().strip("[]"), int(port)) == self.key:
            return self.why
        return self.health.unavailable(host, port)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.health, name)


class Retry:
    """Sends the requests of flows in ``Upstreams.retrying`` itself (see the module docstring)."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams
        self.send = send_once                   # replaceable in tests

    # -- options -----------------------------------------------------------------------------------
    @staticmethod
    def max_body() -> int:
        try:
            from mitmproxy.utils import human
            v = human.parse_size(getattr(ctx.options, "stream_large_bodies", None))
        except Exception:   # pragma: no cover - no options (bare harness) or a value mitmproxy refused
            v = None
        return v if v else DEFAULT_MAX_BODY

    # -- the request hook --------------------------------------------------------------------------
    @staticmethod
    def eligible(flow: http.HTTPFlow) -> bool:
        """Can condroute send this request itself? Its body must be buffered (not streamed)."""
        r = flow.request
        return (flow.response is None and flow.error is None and flow.live and not r.stream
                and r.raw_content is not None and not r.trailers and flow.websocket is None)

    async def request(self, flow: http.HTTPFlow, live: Any) -> None:
        """For a flow of ``Upstreams.retrying`` (the addon's ``request`` hook awaits this). ``live``
        is the addon: ``live.forward(flow)`` is what its ``request`` hook does for other flows (the
        answer, the timeout's timer, the mirrors), ``live.status`` records the decisions."""
        up = self.upstreams
        rounds = 0
        p = up.retrying.pop(flow.id, None)
        try:
            while p is not None and rounds < 8 and self.eligible(flow):
                rounds += 1
                if not await self._round(flow, p, live):
                    break
                # the next backend's fault delay, drawn when it was chosen (the addon waits for it in
                # requestheaders, which is over for this flow)
                delay = getattr(live, "_delays", {}).pop(flow.id, None)
                if delay:
                    await asyncio.sleep(delay)
                probe = up.pending.pop(flow.id, None)     # the next upstream is tried first, as in requestheaders
                if probe is not None:
                    await up._ensure(flow, probe)
                p = up.retrying.pop(flow.id, None)         # the next decision retries as well
        except Exception as e:
            # a bug must not skip forward(): after a failover to an answer (a respond fallback) the
            # request is the client's own again, and only forward() answers it instead of sending it on
            up.retrying.pop(flow.id, None)
            log.error(f"condroute: internal error while sending a request itself ({type(e).__name__}); "
                      "left to mitmproxy")
        live.forward(flow)

    @staticmethod
    async def _watched(flow: http.HTTPFlow, send: Any) -> Result | None:
        """``send`` (an attempt), given up when the client closes its connection meanwhile (None):
        mitmproxy does not cancel a pending hook then, and with no ``timeout`` a silent upstream
        would hold the attempt, its socket and this hook for ever (mitmproxy itself closes its
        upstream connection when the client leaves)."""
        task = asyncio.ensure_future(send)
        try:
            while True:
                done, _ = await asyncio.wait((task,), timeout=CLIENT_CHECK)
                if done:
                    return task.result()
                if not flow.client_conn.connected:
                    return None
        finally:
            task.cancel()

    async def _round(self, flow: http.HTTPFlow, p: _Pending, live: Any) -> bool:
        """Up to ``1 + retries`` attempts for the decision ``p``. False when done (an answer is set, or
        the request is left to mitmproxy), True when the request was decided again (failover)."""
        d = p.decision
        b = d.backend_obj
        r = flow.request
        body = r.raw_content or b""
        fields = _fields(flow, body)
        address = f"{d.host}:{d.port}"
        try:
            tls = await upstream_tls() if d.scheme == "https" else None
        except (OSError, ssl.SSLError) as e:      # a CA file that does not load: left to mitmproxy, which says so
            log.warning(f"condroute: cannot make the TLS context to retry {d.request}: {e}; left to mitmproxy")
            return False
        sni = d.sni
        if sni == "preserve":    # as connections.py names mitmproxy's own connections
            req = d._req
            sni = preserved_name(flow.client_conn.sni, req.host if req is not None else None)
        attempts = 1 + d.retries
        tries = d.tries = list(d.tries)
        before = len(tries)
        md = flow.metadata.get("condroute")
        if md is None:      # pragma: no cover - the record of a routed flow is always there
            md = flow.metadata["condroute"] = {}
        request = d.request          # as the decision's log line writes it (the client's URL)
        res = Result("reset", "not sent")
        kind: str | None = None
        for i in range(attempts):
            if i:
                await asyncio.sleep(backoff(i))
                if not flow.live or flow.error is not None:
                    return False
            res = await self._watched(flow, self.send(
                d.host, d.port, r.data.method, r.data.path, fields, body, tls=tls, server_hostname=sni or d.host,
                connect_timeout=self.upstreams.connect_timeout, timeout=d.timeout, max_body=self.max_body()))
            if res is None:       # the client left: nobody waits for this answer
                return False
            kind = failed_kind(res, b.retry_on)
            tries.append(render.try_entry(d, address, res.outcome if kind is None else
                                          ("5xx" if kind in ("5xx", "gateway-error") else res.outcome), res.reason))
            md["tries"] = tries
            if res.outcome in ("too-large", "unsendable"):
                then = ("left to mitmproxy, which sends it again and streams the answer" if res.outcome == "too-large"
                        else "left to mitmproxy")
                flow.comment = f"{flow.comment} | " + render.tries_comment(tries, then)
                return False
            if kind is None:
                flow.response = res.response
                if i:
                    flow.comment = f"{flow.comment} | " + render.tries_comment(tries, res.reason)
                return False
            if res.outcome == "connect-failure":
                self.upstreams.health.mark_down(d.host, d.port, res.reason, i + 1)
            last = i == attempts - 1     # (every kind failed_kind returns is retried: see its docstring)
            then = "giving up" if last else f"retrying in {backoff(i + 1):g}s"
            log.warning(f"condroute: {render.try_failed_line(d, request, address, i + 1, attempts, res.reason, then)}")
            if last:
                break
        return self._spent(flow, p, res, len(tries) - before, live)

    def _spent(self, flow: http.HTTPFlow, p: _Pending, res: Result, n: int, live: Any) -> bool:
        """Every attempt failed: fail over, or answer (see the module docstring)."""
        d = p.decision
        md = flow.metadata["condroute"]
        tries = list(d.tries)
        address = f"{d.host}:{d.port}"
        why = f"{res.reason} ({n} attempt{'s' * (n != 1)})"
        nxt = None
        if d.backend_obj.failover:
            nxt = self._next_decision(flow, p, why)
        if nxt is None:
            here = "failover: false" if not d.backend_obj.failover else "no other backend can serve"
            if res.outcome == "answered" and res.response is not None:
                flow.response = res.response
                then = f"answering with its last response ({res.response.status_code}, {here})"
            else:
                status = 504 if res.outcome == "timeout" else 502
                body = render.retry_failed_body(d, address, res.reason, n, here)
                flow.response = http.Response.make(status, body if flow.request.method != "HEAD" else b"",
                                                   {"content-type": "text/plain; charset=utf-8"})
                md["header"] = render.retry_header(d, status, n)
                then = f"answering {status} ({here})"
            md["retry_reason"] = f"upstream {d.upstream} ({address}) {why}; {here}"
            flow.comment = f"{flow.comment} | " + render.tries_comment(tries, then)
            log.warning(f"condroute: {d.request}: {d.route}/{d.backend}: upstream {d.upstream} ({address}) "
                        f"{why}; {then}")
            return False
        # fail over: decide again with this upstream passed over, from the request as the client sent it
        log.warning(f"condroute: {d.request}: {d.route}/{d.backend}: upstream {d.upstream} ({address}) {why}; "
                    f"failing over to {nxt.route}/{nxt.backend}")
        up = self.upstreams
        failed_over = [*md.get("failed_over", []), {"upstream": d.upstream, "address": address,
                                                    "error": res.reason, "attempts": n}]
        flow.request.data = p.snapshot
        flow.metadata.pop("condroute", None)
        real = up.health
        up.health = _PassOver(real, _key(d.host, d.port), f"{why}: {PASSED_OVER}")
        try:
            up.reroute(flow)
        finally:
            up.health = real
        md2 = flow.metadata.get("condroute")
        d2 = live.status.latest()
        if d2 is not None and d2 is not d:
            d2.tries = tries
        if md2 is not None:
            md2["tries"] = tries
            md2["failed_over"] = failed_over
        flow.comment = f"{flow.comment} | " + render.tries_comment(tries, f"failed over to {nxt.route}/{nxt.backend}")
        return True

    def _next_decision(self, flow: http.HTTPFlow, p: _Pending, why: str) -> Decision | None:
        """What would serve the request with this upstream passed over: a decision that forwards or
        answers (a respond fallback), else None (nothing else serves: the client gets the last answer)."""
        rules = self.upstreams.live_rules()
        if rules is None:
            return None
        d = p.decision
        forwarded = flow.request.data
        flow.request.data = p.snapshot.copy()
        try:
            d2 = decide(rules, request_view(flow), health=_PassOver(self.upstreams.health, _key(d.host, d.port), why))
        except Exception:   # pragma: no cover - the addon logs a bug when it decides for real
            return None
        finally:
            flow.request.data = forwarded
        return d2 if d2.outcome in ("routed", "respond") else None


def _key(host: str | None, port: int | None) -> tuple[str, int]:
    return ((host or "").lower().strip("[]"), int(port or 0))

