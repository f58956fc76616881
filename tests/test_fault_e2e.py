"""Fault injection through a real mitmdump with real sockets (issue #16 item 5): an injected abort is
answered by condroute without contacting the upstream; a delay comes before the upstream is asked
(streamed bodies too), never blocks other requests, and is not counted by the backend's timeout;
header-triggered faults through an ordinary `when`; percent 0 never faults.

Times are only ever lower bounds (a delay is at least its length); "does not block" is proved by
ordering: a request sent after a delayed one is answered while the delayed one still waits."""
from __future__ import annotations

import select
import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from helpers import read_head, serve_raw


class Upstream:
    """A raw HTTP/1.1 upstream on 127.0.0.1: records every connection it accepts (when) and every
    request (head, body, when it was complete); answers 200 "rec", keeping the connection alive.
    ``stall=True``: reads the request and never answers (for timeouts)."""

    def __init__(self, stall: bool = False):
        self.stall = stall
        self.accepted: list[float] = []
        self.requests: list[tuple[bytes, bytes, float]] = []
        self.cond = threading.Condition()
        self.srv = serve_raw(self._handle)
        self.port = self.srv.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _handle(self, conn: socket.socket) -> None:
        with self.cond:
            self.accepted.append(time.monotonic())
        with conn:
            while True:
                head = read_head(conn)
                if b"\r\n\r\n" not in head:
                    return
                head, body = head.split(b"\r\n\r\n", 1)
                length = next((int(ln.split(b":", 1)[1]) for ln in head.split(b"\r\n")
                               if ln.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                with self.cond:
                    self.requests.append((head, body, time.monotonic()))
                    self.cond.notify_all()
                if self.stall:
                    while conn.recv(4096):
                        pass
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nrec")

    def close(self) -> None:
        self.srv.close()


@pytest.fixture
def upstream():
    made: list[Upstream] = []

    def make(stall: bool = False) -> Upstream:
        u = Upstream(stall)
        made.append(u)
        return u

    yield make
    for u in made:
        u.close()


def client(p) -> httpx.Client:
    return httpx.Client(proxy=p.url, timeout=30)


def test_an_abort_is_answered_without_contacting_the_upstream(upstream, rules_file, proxy):
    up = upstream()
    p = proxy(rules_file(f"""
        version: 1
        upstreams: {{app: "{up.url}"}}
        routes:
          - name: broken
            match: {{path: /broken/*}}
            backends:
              - {{name: b, upstream: app, fault: {{abort: 503, percent: 100}}, retries: 3, retry_on: [5xx]}}
          - name: never
            match: {{path: /never/*}}
            backends:
              - {{name: b, upstream: app, fault: {{delay: 30, abort: 500, percent: 0}}}}
        """))
    with client(p) as c:
        r = c.get("http://fault.test/broken/x")
        assert (r.status_code, r.text) == (503, "fault filter abort")
        assert r.headers["content-type"] == "text/plain"
        assert r.headers["x-condroute"] == "broken/b -> fault: abort 503"
        assert up.accepted == [] and up.requests == []     # never connected to, never retried
        for i in range(20):                                 # percent 0: never a fault
            r = c.get(f"http://fault.test/never/{i}")
            assert (r.status_code, r.text) == (200, "rec")
            assert "fault" not in r.headers["x-condroute"]
    assert len(up.requests) == 20
    p.wait_for(r"condroute: GET http://fault\.test/broken/x -> broken/b -> fault: abort 503, nothing forwarded")
    assert not any("Traceback" in line for line in p.lines), p.output()


HEADER_TRIGGERED = """
    version: 1
    upstreams: {{app: "{url}"}}
    routes:
      - name: api
        backends:
          - name: slow
            when: {{header: {{x-fault: delay}}}}
            upstream: app
            fault: {{delay: 500ms}}
          - name: hold
            when: {{header: {{x-fault: hold}}}}
            upstream: app
            fault: {{delay: 20}}
          - name: normal
            upstream: app
    """


def test_header_triggered_delays_never_block_other_requests(upstream, rules_file, proxy):
    """One mitmdump (stream_large_bodies=1k, so that a large body is streamed): a header-triggered
    delay, the normal path without the header, a streamed body delayed before the connection, and a
    delay that does not block a request sent after it."""
    up = upstream()
    p = proxy(rules_file(HEADER_TRIGGERED.format(url=up.url)), "--set", "stream_large_bodies=1k")
    with client(p) as c:
        t0 = time.monotonic()
        r = c.get("http://fault.test/a", headers={"x-fault": "delay"})
        elapsed = time.monotonic() - t0
        assert (r.status_code, r.text) == (200, "rec")
        assert r.headers["x-condroute"] == "api/slow -> app (fault: delayed 0.5s)"
        assert elapsed >= 0.5                              # a lower bound only
        (_, _, asked), = up.requests
        assert asked - t0 >= 0.5                           # the upstream was asked after the delay
        r = c.get("http://fault.test/b")
        assert (r.status_code, r.text, r.headers["x-condroute"]) == (200, "rec", "api/normal -> app")
    p.wait_for(r"condroute: GET http://fault\.test/a -> api/slow -> app \(.*\), fault: delayed 0\.5s")

    # a streamed body (mitmproxy connects right after requestheaders): the delay still comes first,
    # the upstream accepts no connection (nor a probe) before it
    body = b"x" * 200_000
    with client(p) as c:
        before = len(up.accepted)
        t0 = time.monotonic()
        r = c.post("http://fault.test/upload", content=body, headers={"x-fault": "delay"})
        assert (r.status_code, r.text) == (200, "rec")
        assert r.headers["x-condroute"] == "api/slow -> app (fault: delayed 0.5s)"
    assert len(up.accepted) > before and min(up.accepted[before:]) - t0 >= 0.5
    assert up.requests[-1][1] == body
    p.wait_for(r"Streaming request to 127\.0\.0\.1")

    # ordering, not timing: the delayed request is still waiting (no byte of an answer, the
    # upstream has not seen it) when a request sent after it has been answered
    mark, seen = p.mark(), len(up.requests)
    held = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        held.sendall(b"GET http://fault.test/held HTTP/1.1\r\nHost: fault.test\r\nx-fault: hold\r\n\r\n")
        p.wait_for(r"GET http://fault\.test/held -> api/hold .*fault: delayed 20s", start=mark)  # decided, waiting
        with client(p) as c:
            r = c.get("http://fault.test/other")
            assert (r.status_code, r.text, r.headers["x-condroute"]) == (200, "rec", "api/normal -> app")
        assert select.select([held], [], [], 0)[0] == []       # the delayed one: nothing yet
        assert [h.split(b"\r\n")[0] for h, _, _ in up.requests[seen:]] == [b"GET /other HTTP/1.1"]
    finally:
        held.close()


def test_the_timeout_does_not_count_the_delay(upstream, rules_file, proxy):
    fast, stalled = upstream(), upstream(stall=True)
    p = proxy(rules_file(f"""
        version: 1
        routes:
          - name: fast
            match: {{path: /fast}}
            backends:
              - {{name: b, upstream: "{fast.url}", timeout: 0.5, fault: {{delay: 0.8}}}}
          - name: stalled
            match: {{path: /stalled}}
            backends:
              - {{name: b, upstream: "{stalled.url}", timeout: 0.3, fault: {{delay: 0.3}}}}
          - name: mock
            match: {{path: /mock}}
            backends:
              - {{name: m, respond: {{status: 200, body: slow mock}}, fault: {{delay: 0.3}}}}
        """))
    with client(p) as c:
        # a 0.8s delay before a backend with timeout 0.5: answered (Envoy: the fault filter runs
        # before the router's timeout starts), not 504
        t0 = time.monotonic()
        r = c.get("http://fault.test/fast")
        assert (r.status_code, r.text) == (200, "rec") and time.monotonic() - t0 >= 0.8
        # the timeout still holds after the delay: 504 no sooner than delay + timeout
        t0 = time.monotonic()
        r = c.get("http://fault.test/stalled")
        assert r.status_code == 504 and "did not respond within 0.3s" in r.text
        assert time.monotonic() - t0 >= 0.6
        (_, _, asked), = stalled.requests
        assert asked - t0 >= 0.3
        # a slow mock: a respond backend with a delay
        t0 = time.monotonic()
        r = c.get("http://fault.test/mock")
        assert (r.status_code, r.text) == (200, "slow mock") and time.monotonic() - t0 >= 0.3
        assert r.headers["x-condroute"] == "mock/m -> respond 200 (fault: delayed 0.3s)"


def test_a_delayed_http2_stream_does_not_hold_up_its_connection(upstream, rules_file, proxy, tmp_path):
    """HTTP/2: a delayed stream and a later stream on the same connection; the later one is answered
    while the delayed one still waits (mitmproxy pauses only the stream whose hook is running)."""
    up = upstream()
    confdir = tmp_path / "mitmconf"
    p = proxy(rules_file(HEADER_TRIGGERED.format(url=up.url)), "--set", f"confdir={confdir}")
    ca = confdir / "mitmproxy-ca-cert.pem"
    assert ca.exists(), p.output()
    sock = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        sock.sendall(b"CONNECT fault.test:443 HTTP/1.1\r\nHost: fault.test:443\r\n\r\n")
        assert read_head(sock).split(b" ", 2)[1] == b"200"
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2"])
        tls = ctx.wrap_socket(sock, server_hostname="fault.test")
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        mark = p.mark()

        def get(path: str, *extra: tuple[str, str]) -> int:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", "fault.test"),
                                    (":path", path), *extra], end_stream=True)
            tls.sendall(conn.data_to_send())
            return sid

        held = get("/held", ("x-fault", "hold"))
        p.wait_for(r"GET https://fault\.test/held -> api/hold .*fault: delayed 20s", start=mark)
        other = get("/other")
        responded: list[int] = []
        while other not in responded:
            for ev in conn.receive_data(tls.recv(65536)):
                if isinstance(ev, h2.events.StreamEnded):
                    responded.append(ev.stream_id)
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            tls.sendall(conn.data_to_send())
        assert responded == [other] and held not in responded
        assert [h.split(b"\r\n")[0] for h, _, _ in up.requests] == [b"GET /other HTTP/1.1"]
    finally:
        sock.close()
