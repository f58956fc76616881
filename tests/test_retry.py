"""retry_on beyond connect-failure (mitm/retry.py): the addon's hook logic in mitmproxy's test harness
with a scripted sender (no network), and condroute's own HTTP/1.1 client (send_once) against raw
loopback sockets: framing, resets, timeouts, the body bound."""
from __future__ import annotations

import asyncio
import socket
import struct
import textwrap
import time
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from condroute.mitm import retry as retry_mod
from condroute.mitm.addon import ConditionalRouting
from condroute.mitm.health import Health
from condroute.mitm.retry import Result, failed_kind, send_once
from condroute.mitm.upstreams import Upstreams
from helpers import read_head, serve_raw
from test_traffic_health import Clock, Probe, make_flow

MAIN, FALLBACK = ("127.0.0.1", 9301), ("127.0.0.1", 9303)

RULES = """
    version: 1
    upstreams:
      main: http://127.0.0.1:9301
      pinned: http://127.0.0.1:9302
      fallback: http://127.0.0.1:9303
    routes:
      - name: shop
        match: {host: shop.example}
        backends:
          - {name: main, upstream: main, retries: 2, retry_on: [reset, 5xx], set_headers: {X-Main: "1"}}
          - {name: safety, fallback: true, upstream: fallback}
      - name: pinned
        match: {host: pinned.example}
        backends:
          - {name: p, upstream: pinned, retries: 1, retry_on: [gateway-error], failover: false, timeout: 2}
          - {name: safety, fallback: true, upstream: fallback}
      - name: alone
        match: {host: alone.example}
        backends:
          - {name: only, upstream: main, retries: 1, retry_on: [reset]}
      - name: slowly
        match: {host: slowly.example}
        backends:
          - {name: t, upstream: main, retries: 2, retry_on: [reset], throttle: {kbps: 64}}
      - name: plain
        match: {host: plain.example}
        backends:
          - {name: p, upstream: main, retries: 2}
      - name: kept
        match: {host: kept.example}
        backends:
          - {name: k, upstream: "https://127.0.0.1:9304", sni: preserve, retries: 1, retry_on: [reset]}
    """


def answer(status: int, body: bytes = b"ok", headers=()) -> Result:
    r = http.Response.make(status, body, dict(headers))
    return Result("answered", f"answered {status} {r.reason}", r)


class Sender:
    """Scripted sends: per upstream port a list of Results (the last repeated); records each call."""

    def __init__(self, script: dict):
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: list[dict] = []

    async def __call__(self, host, port, method, target, fields, body, **kw):
        self.calls.append({"port": port, "method": method, "target": target, "fields": fields, "body": body, **kw})
        seq = self.script[port]
        return seq.pop(0) if len(seq) > 1 else seq[0]


@pytest.fixture
def addon(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Upstreams, "_live", lambda self, flow: True)     # as if on a live client connection
    monkeypatch.setattr(retry_mod, "backoff", lambda i: 0.0)
    a = ConditionalRouting()
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, condroute_rules=str(p), condroute_debug_header=True)
        a.upstreams.health = Health(cooldown=5, clock=Clock())
        a.upstreams.probe = Probe({})                                    # every connection works
        yield tctx, a


RESET = Result("reset", "reset the connection before a response")


async def test_a_reset_is_retried_and_the_answer_is_the_upstreams(addon, caplog):
    tctx, a = addon
    a.retry.send = send = Sender({9301: [RESET, RESET, answer(200, b"third")]})
    f = make_flow("http://shop.example/cart?q=1", headers={"X-Client": "c"})
    await tctx.cycle(a, f)
    assert len(send.calls) == 3
    c = send.calls[0]
    assert (c["method"], c["target"], c["body"]) == (b"GET", b"/cart?q=1", b"")
    fields = dict(c["fields"])
    assert fields[b"Host"] == b"127.0.0.1:9301" and fields[b"X-Main"] == b"1" and fields[b"X-Client"] == b"c"
    assert f.response.status_code == 200 and f.response.content == b"third"
    assert f.response.headers["X-Condroute"] == "shop/main -> main"
    md = f.metadata["condroute"]
    assert [(t["outcome"], t["address"]) for t in md["tries"]] == [("reset", "127.0.0.1:9301")] * 2 + \
        [("answered", "127.0.0.1:9301")]
    assert ("tried upstream main (127.0.0.1:9301): 1 reset the connection before a response; 2 reset the "
            "connection before a response; 3 answered 200 OK: answered 200 OK") in f.comment
    assert caplog.text.count("attempt ") == 2 and "attempt 2 of 3: reset the connection before a response; " \
        "retrying in 0s" in caplog.text
    # the status page's recent decisions show the attempts
    recent = a.status.snapshot()["recent"][0]
    assert [t["outcome"] for t in recent["tries"]] == ["reset", "reset", "answered"]


async def test_spent_retries_fail_over_to_the_fallback_which_mitmproxy_forwards(addon):
    tctx, a = addon
    a.retry.send = send = Sender({9301: [answer(503)]})
    f = make_flow("http://shop.example/cart")
    await tctx.cycle(a, f)
    assert len(send.calls) == 3 and f.response is None                  # left to mitmproxy
    assert (f.request.host, f.request.port, f.request.path) == ("127.0.0.1", 9303, "/cart")
    assert "X-Main" not in f.request.headers                           # main's rewrite undone
    md = f.metadata["condroute"]
    assert (md["backend"], md["upstream"]) == ("safety", "fallback")
    assert [t["outcome"] for t in md["tries"]] == ["5xx"] * 3
    assert md["failed_over"] == [{"upstream": "main", "address": "127.0.0.1:9301", "error": "answered 503 Service "
                                  "Unavailable", "attempts": 3}]
    skipped = {s["backend"]: s["reason"] for s in md["skipped"]}
    assert skipped["main"] == ("upstream main (127.0.0.1:9301) is unavailable: answered 503 Service Unavailable "
                               "(3 attempts): did not serve this request")
    assert "failed over to shop/safety" in f.comment
    # only this request passed it over: the next one is sent to main again
    assert a.upstreams.health.unavailable(*MAIN) is None
    assert [t["outcome"] for t in a.status.latest().tries] == ["5xx"] * 3


async def test_failover_false_gives_the_client_the_last_5xx(addon, caplog):
    tctx, a = addon
    a.retry.send = send = Sender({9302: [answer(502, b"bad gateway 1"), answer(504, b"late")]})
    f = make_flow("http://pinned.example/x")
    await tctx.cycle(a, f)
    assert len(send.calls) == 2 and send.calls[0]["timeout"] == 2
    assert f.response.status_code == 504 and f.response.content == b"late"
    md = f.metadata["condroute"]
    assert md["retry_reason"] == ("upstream pinned (127.0.0.1:9302) answered 504 Gateway Time-out (2 attempts); "
                                  "failover: false")
    assert "answering with its last response (504, failover: false)" in f.comment
    assert "answering with its last response (504, failover: false)" in caplog.text


async def test_a_reset_with_nothing_to_fail_over_to_answers_502_with_the_reason(addon):
    tctx, a = addon
    a.retry.send = Sender({9301: [RESET]})
    f = make_flow("http://alone.example/x")
    await tctx.cycle(a, f)
    assert f.response.status_code == 502
    assert f.response.get_text() == ("condroute: upstream main (127.0.0.1:9301) reset the connection before a "
                                     "response (2 attempts); no other backend can serve\n"
                                     "  route 'alone', backend 'only', GET http://alone.example/x\n")
    assert f.response.headers["X-Condroute"] == "alone/only -> main (gave up after 2 attempts: 502)"


async def test_a_timeout_with_nothing_to_fail_over_to_answers_504(addon):
    tctx, a = addon
    a.retry.send = Sender({9301: [Result("timeout", "sent no response head within 2s")]})
    f = make_flow("http://alone.example/x")
    await tctx.cycle(a, f)
    assert f.response.status_code == 504 and "sent no response head within 2s (2 attempts)" in f.response.get_text()


async def test_a_5xx_retry_on_does_not_name_is_the_answer(addon):
    tctx, a = addon
    a.retry.send = send = Sender({9302: [answer(500, b"boom")], 9301: [answer(503)]})
    f = make_flow("http://pinned.example/x")           # gateway-error: 502, 503, 504 only
    await tctx.cycle(a, f)
    assert len(send.calls) == 1 and f.response.status_code == 500
    f = make_flow("http://alone.example/x")            # reset only: a 503 is an answer
    await tctx.cycle(a, f)
    assert len(send.calls) == 2 and f.response.status_code == 503


async def test_what_condroute_never_sends_itself(addon):
    tctx, a = addon
    a.retry.send = send = Sender({9301: [RESET]})
    # a method that is not idempotent, an upgrade, a backend without retry_on, a throttled one; a streamed body
    flows = [make_flow("http://shop.example/x", method="POST"),
             make_flow("http://shop.example/x", headers={"Upgrade": "websocket", "Connection": "upgrade"}),
             make_flow("http://plain.example/x"),
             make_flow("http://slowly.example/x")]      # throttled: paced by a relay mitmproxy connects through
    for f in flows:
        await tctx.cycle(a, f)
        assert f.response is None and f.id not in a.upstreams.retrying
    f = make_flow("http://shop.example/x")
    probe = a.requestheaders(f)
    if probe is not None:
        await probe
    f.request.stream = True                        # stream_large_bodies: the body is not buffered
    assert a.upstreams.retrying                    # flagged at the decision...
    r = a.request(f)
    await r                                        # ...but the request hook leaves it to mitmproxy
    assert send.calls == [] and f.response is None and not a.upstreams.retrying


def test_the_request_hook_stays_synchronous_for_other_flows(addon):
    tctx, a = addon
    f = make_flow("http://plain.example/x")
    a.route(f)
    assert a.request(f) is None                     # no coroutine: the fast path


async def test_a_response_too_large_to_buffer_is_left_to_mitmproxy(addon):
    tctx, a = addon
    a.retry.send = Sender({9301: [Result("too-large", "announced a 99-byte body, more than the 10 bytes "
                                                      "condroute buffers")]})
    f = make_flow("http://shop.example/x")
    await tctx.cycle(a, f)
    assert f.response is None and f.request.port == 9301 and f.metadata["condroute"]["backend"] == "main"
    assert "left to mitmproxy, which sends it again and streams the answer" in f.comment


async def test_a_request_h11_refuses_to_write_is_left_to_mitmproxy(addon):
    tctx, a = addon
    f = make_flow("http://shop.example/x", headers={"X-Bad": "a\x00b"})       # a NUL in a header value
    await tctx.cycle(a, f)
    md = f.metadata["condroute"]
    assert f.response is None and md["backend"] == "main" and [t["outcome"] for t in md["tries"]] == ["unsendable"]
    assert "left to mitmproxy" in f.comment
    assert a.upstreams.health.unavailable(*MAIN) is None


async def test_a_refused_connection_is_retried_under_reset_then_answered_502(addon):
    tctx, a = addon
    a.retry.send = send = Sender({9301: [Result("connect-failure", "refused the connection")]})
    f = make_flow("http://alone.example/x")        # retry_on: [reset], retries: 1, nothing to fail over to
    await tctx.cycle(a, f)
    assert len(send.calls) == 2                    # Envoy's reset retries a connection failure too
    assert f.response.status_code == 502 and "refused the connection" in f.response.get_text()
    assert a.upstreams.health.unavailable(*MAIN) is not None      # marked down, as a probe would


def test_failed_kind_follows_envoy():
    r5 = answer(503)
    assert failed_kind(r5, frozenset({"5xx"})) == "5xx"
    assert failed_kind(r5, frozenset({"gateway-error"})) == "gateway-error"
    assert failed_kind(answer(500), frozenset({"gateway-error"})) is None
    assert failed_kind(r5, frozenset({"reset"})) is None
    assert failed_kind(answer(200), frozenset({"5xx"})) is None
    assert failed_kind(RESET, frozenset({"5xx"})) == "reset"        # 5xx includes resets
    assert failed_kind(Result("timeout", "x"), frozenset({"gateway-error"})) == "reset"


# -- condroute's own client against raw sockets ------------------------------------------------------
def serve(reply):
    """A raw server: reads the request head, then ``reply(conn, head)``."""
    heads = []

    def handle(conn):
        with conn:
            head = read_head(conn)
            heads.append(head)
            reply(conn, head)

    srv = serve_raw(handle)
    return srv, srv.getsockname()[1], heads


def rst(conn):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def get(port, method=b"GET", body=b"", **kw):
    fields = [(b"host", f"127.0.0.1:{port}".encode())]
    if body:
        fields.append((b"content-length", str(len(body)).encode()))
    return await send_once("127.0.0.1", port, method, b"/p?q=1", fields, body, **kw)


async def test_send_once_reads_chunked_and_close_delimited_bodies():
    srv, port, heads = serve(lambda c, h: c.sendall(
        b"HTTP/1.1 201 Made\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
        b"X-Kept: 2\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"))
    res = await get(port, b"PUT", b"body!")
    srv.close()
    assert res.outcome == "answered" and res.reason == "answered 201 Made"
    r = res.response
    assert (r.status_code, r.raw_content, r.headers["content-length"], r.headers["X-Kept"]) == (201, b"abcde", "5", "2")
    assert "transfer-encoding" not in r.headers and "x-hop" not in r.headers and "connection" not in r.headers
    assert heads[0].startswith(b"PUT /p?q=1 HTTP/1.1\r\nhost: 127.0.0.1:")
    srv, port, _ = serve(lambda c, h: c.sendall(b"HTTP/1.1 200 OK\r\n\r\nuntil close"))
    res = await get(port)
    srv.close()
    assert res.response.raw_content == b"until close" and res.response.headers["content-length"] == "11"


async def test_send_once_head_keeps_the_announced_length():
    srv, port, _ = serve(lambda c, h: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"))
    res = await get(port, b"HEAD")
    srv.close()
    assert res.outcome == "answered" and res.response.headers["content-length"] == "1234"
    assert res.response.raw_content == b""


async def test_send_once_says_how_the_upstream_failed():
    srv, port, _ = serve(lambda c, h: rst(c))
    res = await get(port)
    assert (res.outcome, res.reason) == ("reset", "reset the connection before a response")
    srv.close()
    srv, port, _ = serve(lambda c, h: None)                          # closes without a word
    res = await get(port)
    assert res.outcome == "reset" and res.reason.endswith("the connection before a response")
    srv.close()

    def half(c, h):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        rst(c)
    srv, port, _ = serve(half)
    res = await get(port)
    assert res.outcome == "reset" and "in the middle of the response body (200)" in res.reason
    srv.close()

    def slow(c, h):
        time.sleep(0.5)
    srv, port, _ = serve(slow)
    res = await get(port, timeout=0.1)
    assert (res.outcome, res.reason) == ("timeout", "sent no response head within 0.1s")
    srv.close()

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    res = await get(port)
    assert (res.outcome, res.reason) == ("connect-failure", "refused the connection")


async def test_send_once_stops_at_the_body_bound():
    srv, port, _ = serve(lambda c, h: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100))
    res = await get(port, max_body=10)
    assert res.outcome == "too-large" and "announced a 100-byte body, more than the 10 bytes" in res.reason
    srv.close()
    srv, port, _ = serve(lambda c, h: c.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100))
    res = await get(port, max_body=10)
    assert res.outcome == "too-large"
    srv.close()


async def test_send_once_skips_100_continue():
    srv, port, _ = serve(lambda c, h: c.sendall(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"))
    res = await asyncio.wait_for(get(port, b"PUT", b"x"), 5)
    srv.close()
    assert res.response.status_code == 204 and "content-length" not in res.response.headers


async def test_sni_preserve_names_the_retried_connection_as_mitmproxys_own(addon):
    """sni: preserve on a request condroute sends itself: the client's TLS name, else the host the client
    asked for (as connections.preserved_name names mitmproxy's connections), never the upstream's IP."""
    tctx, a = addon
    a.retry.send = send = Sender({9304: [answer(200)]})
    f = make_flow("http://kept.example/x")
    f.client_conn.sni = None           # a plain-http client (tflow's client connection has a name)
    await tctx.cycle(a, f)
    assert f.response.status_code == 200
    assert send.calls[0]["server_hostname"] == "kept.example"
    f = make_flow("http://kept.example/x")
    f.client_conn.sni = "client.example"
    await tctx.cycle(a, f)
    assert send.calls[1]["server_hostname"] == "client.example"
