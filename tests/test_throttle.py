"""throttle: the engine's decision, the token bucket, the relay (real sockets on 127.0.0.1, in this
process's event loop) and the addon in mitmproxy's harness. End to end: test_throttle_e2e.py."""
from __future__ import annotations

import asyncio
import logging
import textwrap
from pathlib import Path

import pytest
from mitmproxy import connection, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.net import server_spec
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow

from condroute.engine import decide
from condroute.errors import RulesError
from condroute.mitm.addon import ConditionalRouting
from condroute.mitm.connections import RELAY_HOST, Bucket, Connections, Relay
from condroute.mitm.health import Health
from condroute.request import RequestView
from condroute.rules import load_rules_text

RULES = """
    version: 1
    routes:
      - name: slow
        match: {{host: slow.test}}
        backends: [{{name: s, upstream: "{up}", throttle: {{kbps: 80}}}}]
      - name: fast
        match: {{host: fast.test}}
        backends: [{{name: f, upstream: "{up}"}}]
    """


def rules(text: str):
    return load_rules_text(textwrap.dedent(text), "t.yaml")


def req(url: str) -> RequestView:
    return RequestView.from_url(url, method="GET", headers=[], peer="127.0.0.1")


# -- engine ---------------------------------------------------------------------------------------------
def test_decision_carries_kbps_for_the_throttled_backend_only():
    r = rules(RULES.format(up="http://127.0.0.1:9001"))
    d = decide(r, req("http://slow.test/"))
    assert (d.backend, d.throttle, d.sni) == ("s", 80.0, None)
    assert decide(r, req("http://fast.test/")).throttle is None


def test_throttle_is_refused_on_a_respond_backend():
    with pytest.raises(RulesError) as e:
        rules("""
            version: 1
            routes:
              - name: r
                backends: [{name: b, respond: {status: 200}, throttle: {kbps: 8}}]
            """)
    assert "throttle" in str(e.value)


# -- the token bucket -------------------------------------------------------------------------------------
def test_bucket_never_lets_more_than_burst_plus_rate_times_elapsed():
    b = Bucket(rate=1000.0, burst=100, now=0.0)
    assert b.take(100, 0.0) == 0.0                    # the burst goes at once
    assert b.take(100, 0.0) == pytest.approx(0.1)     # then 100 bytes per 0.1 s
    assert b.take(100, 0.1) == pytest.approx(0.1)     # (it waited: the debt was paid, a new one made)
    assert b.take(50, 1.0) == 0.0                     # idle: refilled, up to the burst only
    assert b.take(100, 1.0) == pytest.approx(0.05)
    # simulate sending 10,000 bytes in chunks of 100, waiting as told: the last goes at >= 9.9 s
    b, now = Bucket(rate=1000.0, burst=100, now=0.0), 0.0
    for _ in range(100):
        now += b.take(100, now)
    assert now == pytest.approx(9.9)


# -- the relay, with real sockets -------------------------------------------------------------------------
async def _upstream(answer: bytes) -> tuple[asyncio.AbstractServer, int, list[bytes]]:
    """An upstream that reads one request line and answers ``answer``, then closes."""
    got: list[bytes] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.append(await r.readline())
        w.write(answer)
        await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1], got


async def test_relay_forwards_both_ways_and_paces_what_comes_back():
    srv, port, got = await _upstream(b"y" * 6000)
    health = Health()
    relay = Relay("127.0.0.1", port, kbps=160, health=health, connect_timeout=lambda: 3.0)   # 20,000 bytes/s
    try:
        loop = asyncio.get_running_loop()
        r, w = await asyncio.open_connection(RELAY_HOST, relay.port)
        w.write(b"GET / HTTP/1.1\r\n")
        await w.drain()
        first = await r.readexactly(1)
        start = loop.time()
        rest = await r.read()              # until the relay passes the upstream's close on
        took = loop.time() - start
        assert first + rest == b"y" * 6000
        assert got == [b"GET / HTTP/1.1\r\n"]
        # 6,000 bytes at 20,000 bytes/s after a burst of one chunk (1,000 bytes): at least 0.25 s
        assert took >= 0.2, took
        assert relay.chunk == 1000
        w.close()
    finally:
        relay.abort()
        srv.close()


async def test_relay_reports_its_upstream_connections_to_passive_health():
    opened = asyncio.Event()
    release = asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        opened.set()
        await release.wait()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    health = Health()
    relay = Relay("127.0.0.1", port, kbps=8, health=health, connect_timeout=lambda: 3.0)
    try:
        r, w = await asyncio.open_connection(RELAY_HOST, relay.port)
        await asyncio.wait_for(opened.wait(), 5)
        for _ in range(100):                 # the relay counts it right after connecting
            if health.known_up("127.0.0.1", port, fresh=False):
                break
            await asyncio.sleep(0.01)
        assert health.known_up("127.0.0.1", port, fresh=False)    # open right now (the real address)
        release.set()
        assert await asyncio.wait_for(r.read(), 5) == b""
        for _ in range(100):
            if not health.known_up("127.0.0.1", port, fresh=False):
                break
            await asyncio.sleep(0.01)
        assert not health.known_up("127.0.0.1", port, fresh=False)
        w.close()
    finally:
        relay.abort()
        srv.close()


async def test_relay_whose_upstream_refuses_closes_at_once_and_marks_it_down(caplog):
    caplog.set_level(logging.WARNING)
    s = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = s.sockets[0].getsockname()[1]
    s.close()
    await s.wait_closed()
    health = Health()
    relay = Relay("127.0.0.1", port, kbps=8, health=health, connect_timeout=lambda: 3.0)
    try:
        r, w = await asyncio.open_connection(RELAY_HOST, relay.port)
        try:
            assert await asyncio.wait_for(r.read(), 5) == b""
        except ConnectionResetError:
            pass                               # closed with a reset: as good (never a hang)
        assert "refused" in (health.unavailable("127.0.0.1", port) or "")
        assert any(f"127.0.0.1:{port} (throttled) refused the connection" in m.getMessage() for m in caplog.records)
        w.close()
    finally:
        relay.abort()


async def test_sync_closes_the_listeners_the_rules_no_longer_name_and_close_all():
    c = Connections(Health(), lambda: 3.0)
    r = rules(RULES.format(up="http://127.0.0.1:9001"))
    d = decide(r, req("http://slow.test/"))
    f = tflow.tflow(req=http.Request.make("GET", "http://slow.test/"))
    assert c.routed(f, d, "slow.test") == 80.0
    assert (f.request.host, f.request.port) == (RELAY_HOST, next(iter(c.relays.values())).port)
    first = next(iter(c.relays.values()))
    f2 = tflow.tflow(req=http.Request.make("GET", "http://slow.test/"))
    c.routed(f2, d, "slow.test")
    assert f2.request.port == first.port and len(c.relays) == 1          # one listener per address and rate
    await asyncio.sleep(0)
    c.sync(r)
    assert len(c.relays) == 1 and not first.closed
    c.sync(rules(RULES.format(up="http://127.0.0.1:9001").replace("80", "40")))
    assert c.relays == {} and first.closed
    with pytest.raises(OSError):
        await asyncio.open_connection(RELAY_HOST, first.port)
    c.routed(f2, decide(r, req("http://slow.test/")), "slow.test")
    assert len(c.relays) == 1
    c.close()
    assert c.relays == {}


def test_without_an_event_loop_nothing_is_relayed(caplog):
    caplog.set_level(logging.WARNING)
    c = Connections(Health(), lambda: 3.0)
    d = decide(rules(RULES.format(up="http://127.0.0.1:9001")), req("http://slow.test/"))
    f = tflow.tflow(req=http.Request.make("GET", "http://slow.test/"))
    assert c.routed(f, d, "slow.test") is None
    assert f.request.host == "slow.test"
    assert any("not applied" in m.getMessage() for m in caplog.records)


# -- in mitmproxy's harness -------------------------------------------------------------------------------
@pytest.fixture
def harness(tmp_path: Path):
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        def configure(text: str, name: str = "rules.yaml") -> None:
            p = tmp_path / name
            p.write_text(textwrap.dedent(text))
            tctx.configure(addon, condroute_rules=str(p))
        addon.configure_rules = configure  # type: ignore[attr-defined]
        addon.tctx = tctx  # type: ignore[attr-defined]
        yield addon
        addon.conns.close()


def _flow(url: str) -> http.HTTPFlow:
    f = tflow.tflow(req=http.Request.make("GET", url))
    f.request.headers["Host"] = f.request.pretty_url.split("/")[2]
    f.request.authority = ""
    return f


async def test_hooks_registered_only_while_a_backend_has_throttle(harness):
    harness.configure_rules(RULES.format(up="http://127.0.0.1:9001").replace(", throttle: {{kbps: 80}}", "")
                            .replace(", throttle: {kbps: 80}", ""))
    assert harness.server_connect is None and harness.responseheaders is None
    harness.configure_rules(RULES.format(up="http://127.0.0.1:9001"), "t.yaml")
    assert callable(harness.server_connect) and callable(harness.responseheaders)


async def test_a_throttled_flow_goes_to_the_relay_with_the_upstreams_host_and_is_streamed(harness):
    harness.configure_rules(RULES.format(up="https://api.example.test:9443"))
    f = _flow("http://slow.test/x")
    await harness.tctx.cycle(harness, f)
    relay = next(iter(harness.conns.relays.values()))
    assert (f.request.scheme, f.request.host, f.request.port) == ("https", RELAY_HOST, relay.port)
    assert (relay.host, relay.upstream_port, relay.kbps) == ("api.example.test", 9443, 80.0)
    assert f.request.headers["Host"] == "api.example.test:9443"
    md = f.metadata["condroute"]
    assert md["throttled"] == 80.0 and md["upstream"] == "https://api.example.test:9443"
    # TLS through the relay: the upstream's own name is sent and verified
    server = connection.Server(address=(RELAY_HOST, relay.port))
    server.sni = RELAY_HOST
    harness.server_connect(ServerConnectionHookData(server=server, client=f.client_conn))
    assert server.sni == "api.example.test"
    # the response is streamed (what the relay paces reaches the client as it comes)
    f.response = http.Response.make(200, b"")
    f.response.stream = False
    harness.responseheaders(f)
    assert f.response.stream is True
    fast = _flow("http://fast.test/x")
    await harness.tctx.cycle(harness, fast)
    assert fast.request.host == "api.example.test" and "throttled" not in fast.metadata["condroute"]
    fast.response = http.Response.make(200, b"")
    harness.responseheaders(fast)
    assert fast.response.stream is False


async def test_upstream_proxy_mode_is_not_throttled_and_says_so_once(harness, caplog):
    caplog.set_level(logging.WARNING)
    harness.configure_rules(RULES.format(up="http://127.0.0.1:9001"))
    for _ in range(2):
        f = _flow("http://slow.test/x")
        f.server_conn.via = server_spec.parse("http://127.0.0.1:3128", "http")
        await harness.tctx.cycle(harness, f)
        assert (f.request.host, f.request.port) == ("127.0.0.1", 9001)
        assert "throttled" not in f.metadata["condroute"]
    said = [m for m in caplog.records if "upstream-proxy mode" in m.getMessage()]
    assert len(said) == 1


async def test_a_client_that_goes_away_mid_body_ends_the_upstream_connection():
    """The proxy closes its connection to the relay (the client left): the relay ends its connection
    to the upstream too, rather than reading the rest of a slow body for no one."""
    ended = asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:                      # an endless body, as fast as the relay takes it
                w.write(b"z" * 4096)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            ended.set()
            w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    relay = Relay("127.0.0.1", port, kbps=80, health=Health(), connect_timeout=lambda: 3.0)
    try:
        r, w = await asyncio.open_connection(RELAY_HOST, relay.port)
        assert len(await r.readexactly(1000)) == 1000
        w.transport.abort()
        await asyncio.wait_for(ended.wait(), 10)
        assert relay._writers == set()
    finally:
        relay.abort()
        srv.close()
