"""Response timeouts against upstreams that stall part-way, through a real mitmdump: the client gets a
clean 504 while nothing of the response has reached it, else a cut connection (HTTP/1) or a reset
stream (HTTP/2) — never a response with the 504 spliced into it. Also pins the mitmproxy internals
the timeout relies on, so that a mitmproxy upgrade that changes them fails here, loudly."""
from __future__ import annotations

import inspect
import socket
import ssl
import threading

import pytest

from helpers import logs_status, read_head, serve_raw

TIMEOUT = 0.4
TEXT = "did not respond within 0.4s"


class Staller:
    """A raw-socket upstream: reads the request head, sends ``prefix``, then stalls (keeps the
    connection open, sends nothing more) until the proxy closes it or the test ends."""

    def __init__(self, prefix: bytes):
        self.prefix = prefix
        self.closed_by_proxy = threading.Semaphore(0)   # released when the proxy closes a stalled connection
        self.stop = threading.Event()
        self.srv = serve_raw(self._handle)
        self.port = self.srv.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            if not read_head(conn).endswith(b"\r\n\r\n"):
                return
            try:
                conn.sendall(self.prefix)
            except OSError:
                return
            conn.settimeout(0.1)
            while not self.stop.is_set():        # stall; notice the proxy giving up on us
                try:
                    if conn.recv(4096) == b"":
                        self.closed_by_proxy.release()
                        return
                except socket.timeout:
                    continue
                except OSError:
                    self.closed_by_proxy.release()
                    return

    def close(self) -> None:
        self.stop.set()
        self.srv.close()


@pytest.fixture
def staller():
    made: list[Staller] = []

    def make(prefix: bytes) -> Staller:
        s = Staller(prefix)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def raw_get(proxy_port: int, url: str, timeout: float = 10.0) -> bytes:
    """What the proxy sends back to one HTTP/1.1 request: up to the end of its Content-Length, or
    up to the proxy closing the connection, whichever comes first."""
    host = url.split("/")[2]
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout) as s:
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        out = b""
        while True:
            head, sep, body = out.partition(b"\r\n\r\n")
            if sep:
                lengths = [int(v) for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                           if k.strip().lower() == b"content-length"]
                if lengths and len(body) >= lengths[0]:
                    return out
            chunk = s.recv(65536)          # a socket.timeout here fails the test: the client hung
            if not chunk:
                return out
            out += chunk


def rules_for(rules_file, upstream: str, fast: str | None = None):
    extra = f'\n              - {{name: fast, upstream: "{fast}", timeout: {TIMEOUT}}}' if fast else ""
    return rules_file(f"""
        version: 1
        routes:
          - name: api
            backends:
              - {{name: slow, when: {{path: /stall}}, upstream: "{upstream}", timeout: {TIMEOUT}}}{extra}
        """)


HEAD_STALLS = {
    "nothing": b"",
    "half a status line": b"HTTP/1.1 2",
    "the status line": b"HTTP/1.1 200 OK\r\n",
    "half a header": b"HTTP/1.1 200 OK\r\nX-Partial: ab",
    "all headers but the blank line": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Partial: abc\r\n",
}


@pytest.mark.parametrize("prefix", HEAD_STALLS.values(), ids=HEAD_STALLS.keys())
def test_http1_client_gets_a_clean_504_whatever_part_of_the_head_the_upstream_sent(
        rules_file, proxy, staller, prefix):
    up = staller(prefix)
    p = proxy(rules_for(rules_file, up.url))
    out = raw_get(p.port, "http://stall.example/stall")
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 504 Gateway Timeout", out
    assert b"X-Partial" not in out and b"200" not in out, out          # nothing of the upstream's head
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"X-Condroute"] == f"api/slow -> {up.url} (timeout {TIMEOUT:g}s: 504)".encode()
    assert body == (f"condroute: upstream {up.url} ({up.url}/stall) {TEXT}\n"
                    f"  route 'api', backend 'slow'\n").encode()
    assert int(headers[b"content-length"]) == len(body)
    assert up.closed_by_proxy.acquire(timeout=10)        # the upstream connection is closed, never reused
    p.wait_for(r"api/slow: upstream .* did not respond within 0.4s, answering 504")
    assert "Traceback" not in p.output() and "mitmproxy has crashed" not in p.output()


def test_a_stalled_buffered_body_gives_a_504_as_nothing_has_reached_the_client(rules_file, proxy, staller):
    up = staller(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Partial: abc\r\n\r\n" + b"x" * 10)
    p = proxy(rules_for(rules_file, up.url))
    out = raw_get(p.port, "http://stall.example/stall")
    assert out.startswith(b"HTTP/1.1 504 "), out
    assert b"X-Partial" not in out and b"xxxxxxxxxx" not in out, out
    assert b"stopped sending the response body for 0.4s" in out
    assert up.closed_by_proxy.acquire(timeout=10)
    p.wait_for(r"api/slow: upstream .* stopped sending the response body for 0.4s")


def test_a_stalled_streamed_body_cuts_the_connection_without_any_504_inside(rules_file, proxy, staller):
    """Once the upstream's headers and part of its body went out to the client, a 504 can no longer
    be said: the client sees a response shorter than its Content-Length and a closed connection."""
    up = staller(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    p = proxy(rules_for(rules_file, up.url), "--set", "stream_large_bodies=1")
    out = raw_get(p.port, "http://stall.example/stall")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 100" in head.lower(), out
    assert body == b"x" * 10, out                       # truncated, then closed
    assert b"504" not in out and b"did not respond" not in out
    assert up.closed_by_proxy.acquire(timeout=10)


def test_a_body_that_keeps_coming_is_not_cut(rules_file, proxy):
    """The body's timeout is the time between two pieces of it, not the whole transfer."""
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
            try:
                for _ in range(8):                       # 8 x 0.15 s = 1.2 s, three times the timeout
                    if stop.wait(0.15):
                        return
                    conn.sendall(b"y")
            except OSError:
                return                                   # (the proxy cut it: the test fails on its side)
            stop.wait(10)

    srv = serve_raw(handle)
    try:
        rules = rules_for(rules_file, f"http://127.0.0.1:{srv.getsockname()[1]}")
        for extra in ((), ("--set", "stream_large_bodies=1")):        # buffered, then streamed
            p = proxy(rules, *extra)
            out = raw_get(p.port, "http://stall.example/stall")
            assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"\r\n\r\nyyyyyyyy"), (extra, out)
            assert not logs_status(p.output(), 504) and "stopped sending" not in p.output()
    finally:
        stop.set()
        srv.close()


def test_the_decision_metadata_says_why_the_request_timed_out(rules_file, proxy, staller, tmp_path):
    """Read back from mitmdump's own flow file: flow.metadata["condroute"] and the flow's comment."""
    from mitmproxy import io

    head = staller(b"HTTP/1.1 200 OK\r\nX-Partial: ab")
    body = staller(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    rules = rules_file(f"""
        version: 1
        routes:
          - name: api
            backends:
              - {{name: head, when: {{path: /head}}, upstream: "{head.url}", timeout: {TIMEOUT}}}
              - {{name: body, upstream: "{body.url}", timeout: {TIMEOUT}}}
        """)
    saved = tmp_path / "flows.mitm"
    p = proxy(rules, "-w", str(saved))
    assert raw_get(p.port, "http://stall.example/head").startswith(b"HTTP/1.1 504 ")
    assert raw_get(p.port, "http://stall.example/body").startswith(b"HTTP/1.1 504 ")
    p.wait_for("stopped sending the response body")
    p.stop()
    with saved.open("rb") as fh:
        flows = {f.request.path: f for f in io.FlowReader(fh).stream()}
    md = flows["/head"].metadata["condroute"]
    assert (md["timed_out"], md["timeout_reason"], md["status"]) == (TIMEOUT, "no response headers within 0.4s", 504)
    assert flows["/head"].response.status_code == 504
    assert "did not respond within 0.4s: answering 504" in flows["/head"].comment
    md = flows["/body"].metadata["condroute"]
    assert (md["timed_out"], md["timeout_reason"]) == (TIMEOUT, "the response body stalled for 0.4s")
    assert "stopped sending the response body" in flows["/body"].error.msg


# -- HTTP/2 clients: per stream ------------------------------------------------------------------
def h2_requests(proxy_port: int, cafile: str, host: str, paths: list[str], timeout: float = 10.0) -> dict:
    """Several HTTP/2 requests on ONE connection (CONNECT, TLS, ALPN h2). For each path: status,
    headers, data and how the stream ended ("end" or "reset")."""
    import h2.connection
    import h2.events

    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        head = read_head(sock)
        assert head.split(b" ", 2)[1] == b"200", head
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["h2"])
        tls = ctx.wrap_socket(sock, server_hostname=host)
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        results: dict[int, dict] = {}
        for path in paths:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", host),
                                    (":path", path)], end_stream=True)
            results[sid] = {"path": path, "status": 0, "headers": {}, "data": b"", "ended": None}
        tls.sendall(conn.data_to_send())
        while any(r["ended"] is None for r in results.values()):
            chunk = tls.recv(65536)
            assert chunk, f"connection closed: {results}"
            for ev in conn.receive_data(chunk):
                r = results.get(getattr(ev, "stream_id", None))
                if r is None:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    r["headers"] = {k.decode(): v.decode() for k, v in ev.headers}
                    r["status"] = int(r["headers"][":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    r["data"] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    r["ended"] = "end"
                elif isinstance(ev, h2.events.StreamReset):
                    r["ended"] = "reset"
            tls.sendall(conn.data_to_send())
        return {r["path"]: r for r in results.values()}
    finally:
        sock.close()


@pytest.mark.parametrize("prefix", [b"HTTP/1.1 2", b"HTTP/1.1 200 OK\r\nX-Partial: ab",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10],
                         ids=["half a status line", "half a header", "buffered partial body"])
def test_http2_client_gets_a_clean_504_on_that_stream_only(rules_file, proxy, staller, echo, tmp_path, prefix):
    up = staller(prefix)
    fast = echo("fast")
    confdir = tmp_path / "mitmconf"
    p = proxy(rules_for(rules_file, up.url, fast), "--set", f"confdir={confdir}")
    res = h2_requests(p.port, str(confdir / "mitmproxy-ca-cert.pem"), "api.dev.invalid", ["/stall", "/other"])
    slow, other = res["/stall"], res["/other"]
    assert (other["status"], other["ended"]) == (200, "end")      # the connection's other stream is fine
    assert (slow["status"], slow["ended"]) == (504, "end"), slow
    assert "x-partial" not in slow["headers"] and b"xxxxxxxxxx" not in slow["data"]
    assert b"did not respond within 0.4s" in slow["data"] or b"stopped sending the response body" in slow["data"]
    assert up.closed_by_proxy.acquire(timeout=10)
    assert "mitmproxy has crashed" not in p.output()


def test_http2_client_stream_is_reset_when_a_streamed_body_stalls(rules_file, proxy, staller, echo, tmp_path):
    up = staller(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    fast = echo("fast")
    confdir = tmp_path / "mitmconf"
    p = proxy(rules_for(rules_file, up.url, fast), "--set", f"confdir={confdir}", "--set", "stream_large_bodies=1")
    res = h2_requests(p.port, str(confdir / "mitmproxy-ca-cert.pem"), "api.dev.invalid", ["/stall", "/other"])
    slow, other = res["/stall"], res["/other"]
    assert (other["status"], other["ended"]) == (200, "end")
    assert (slow["status"], slow["data"], slow["ended"]) == (200, b"x" * 10, "reset"), slow
    assert up.closed_by_proxy.acquire(timeout=10)
    assert "mitmproxy has crashed" not in p.output()


# -- the mitmproxy internals the timeout relies on -------------------------------------------------
def test_mitmproxy_internals_used_by_timeouts_are_still_there():
    """condroute.mitm.upstreams answers a timed-out request by injecting events into the flow's HTTP
    stream. If one of these assumptions breaks with a new mitmproxy, this test says which."""
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.proxy import events, layer
    from mitmproxy.proxy.layers import http as mhttp
    from mitmproxy.proxy.server import ConnectionHandler

    from condroute.mitm import compat as upstreams

    # 1. HttpLayer routes a MessageInjected to the stream of flow.server_conn's HTTP/1 client layer:
    #    connections[server_conn].context.layers[-1].stream_id (mitmproxy's inject.websocket path).
    src = inspect.getsource(mhttp.HttpLayer._handle_event)
    assert "events.MessageInjected" in src and "self.connections[event.flow.server_conn]" in src, src
    assert "conn.context.layers[-1]" in src and "self.streams[stream_id]" in src, src
    # ...and a layer registers itself in its context's layer list
    assert "self.context.layers.append(self)" in inspect.getsource(layer.Layer.__init__)
    # 2. The stream's states and buffer, looked at to decide what can still be said to the client
    for name in ("state_wait_for_response_headers", "state_consume_response_body",
                 "state_stream_response_body", "handle_protocol_error"):
        assert callable(getattr(mhttp.HttpStream, name, None)), name
    init = inspect.getsource(mhttp.HttpStream.__init__)
    assert "self.response_body_buf" in init and "self.server_state" in init, init
    assert "self._paused = None" in inspect.getsource(layer.Layer.__init__)
    # events that arrive while a layer waits on a hook are queued, then handled in order
    assert "self._paused_event_queue = collections.deque()" in inspect.getsource(layer.Layer.__init__)
    assert "self._paused_event_queue.popleft()" in inspect.getsource(layer.Layer._Layer__continue)
    # a CONNECT stream turns response data/end-of-message into connection events (so these are queued
    # on the inner stream rather than injected), and passes headers and errors on as they are
    passthrough = inspect.getsource(mhttp.HttpStream.passthrough)
    assert "isinstance(event, ResponseData)" in passthrough and "ResponseHeaders" not in passthrough
    assert "ResponseProtocolError" not in passthrough.split("for command in")[0]
    assert "self.streams" in inspect.getsource(mhttp.HttpLayer.__init__)
    assert "self.connections" in inspect.getsource(mhttp.HttpLayer.__init__)
    assert "stream_id" in mhttp.Http1Client.__annotations__ or hasattr(mhttp.Http1Client, "stream_id")
    # a synthetic response completes through the response-body state: EOM takes the buffered body
    assert "self.flow.response.data.content = bytes(self.response_body_buf)" in \
        inspect.getsource(mhttp.HttpStream.state_consume_response_body)
    # send_response stamps timestamp_end before the response hook: "the response is complete"
    assert "timestamp_end" in inspect.getsource(mhttp.HttpStream.send_response)
    # 3. The events and their fields
    for cls, fields in ((mhttp.ResponseHeaders, ("stream_id", "response", "end_stream")),
                        (mhttp.ResponseData, ("stream_id", "data")),
                        (mhttp.ResponseProtocolError, ("stream_id", "message", "code"))):
        assert set(fields) <= set(inspect.signature(cls).parameters), cls
    assert {"flow", "message"} <= set(events.MessageInjected.__annotations__)
    ev = upstreams._Headers(object(), 7, None)      # type: ignore[arg-type]
    assert isinstance(ev, events.MessageInjected) and isinstance(ev, mhttp.ResponseHeaders) and ev.stream_id == 7
    # 4. The connection handler: how the event is fed in and the upstream connection closed
    assert inspect.iscoroutinefunction(ConnectionHandler.server_event)
    assert list(inspect.signature(ConnectionHandler.close_connection).parameters)[:2] == ["self", "connection"]
    assert "self.transports" in inspect.getsource(ConnectionHandler.__init__)
    assert "self.connections" in inspect.getsource(Proxyserver.__init__)
    # 5. The code of an injected protocol error: mitmproxy 11 takes a status, 12 an ErrorCode
    code = upstreams.timeout_code(sent=False)
    status = code if isinstance(code, int) else code.http_status_code()
    assert status == 504
    sent = upstreams.timeout_code(sent=True)
    assert isinstance(sent, int) or type(sent).__name__ == "ErrorCode"     # mitmproxy 12 matches on it


def test_the_stream_of_a_flow_is_found_through_nested_layers():
    from mitmproxy.test import tflow

    from condroute.mitm.compat import find_stream

    f, other = tflow.tflow(), tflow.tflow()

    class L:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    inner_stream = L(flow=f, stream_id=5)
    inner = L(streams={5: inner_stream})
    connect_stream = L(flow=other, stream_id=1, child_layer=L(layer=L(child_layer=inner)))
    root = L(layer=L(streams={1: connect_stream}))
    assert find_stream(root, f) == [(root.layer, connect_stream), (inner, inner_stream)]
    assert find_stream(root, tflow.tflow()) is None


async def test_a_pending_timer_does_not_keep_its_flow_alive():
    """The timer armed at the request runs on after most responses are complete: it holds its
    flow weakly, so bodies are not kept for the length of the timeout."""
    import gc
    import weakref

    from mitmproxy.test import tflow

    from condroute.mitm.upstreams import Upstreams

    u = Upstreams(None)
    f = tflow.tflow(resp=True)
    f.metadata["condroute"] = {"timeout": 60.0}
    u._arm(f, 60.0, 60.0)
    u.responseheaders(f)
    ref, fid = weakref.ref(f), f.id
    del f
    gc.collect()
    assert ref() is None
    handle = u.timers[fid]
    handle._run()                                   # it fires: nothing left to do, and forgotten
    assert fid not in u.timers and fid not in u._body and not u._tasks
    handle.cancel()
