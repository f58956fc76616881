"""Runtime bugs found reviewing issue #16 (the dev-traffic toolbox), each with the test that
showed it: in mitmproxy's harness (taddons), with a scripted sender for condroute's own requests."""
from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from condroute.mitm import retry as retry_mod
from condroute.mitm.addon import ConditionalRouting
from condroute.mitm.health import Health
from condroute.mitm.upstreams import Upstreams
from test_retry import Sender, answer
from test_traffic_health import Clock, Probe, make_flow

RULES = """
    version: 1
    upstreams:
      main: http://127.0.0.1:9301
      shadow: http://127.0.0.1:9305
    routes:
      - name: shop
        match: {host: shop.example}
        backends:
          - {name: main, upstream: main, retries: 1, retry_on: [5xx], mirror: {upstream: shadow}}
    """


@pytest.fixture
def addon(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Upstreams, "_live", lambda self, flow: True)
    monkeypatch.setattr(retry_mod, "backoff", lambda i: 0.0)
    a = ConditionalRouting()
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, condroute_rules=str(p))
        a.upstreams.health = Health(cooldown=5, clock=Clock())
        a.upstreams.probe = Probe({})
        yield tctx, a
        for item in a.mirrors.waiting:      # nothing is sent to the (absent) mirror
            item[0].live = True
        if a.mirrors._ticker is not None:
            a.mirrors._ticker.cancel()


async def test_a_request_condroute_sends_itself_is_mirrored_too(addon):
    """retry_on beside a mirror: the upstream's answer (set by retry.py before the mirrors' turn in
    the request hook) must not void the copy: the request did reach an upstream."""
    tctx, a = addon
    a.retry.send = send = Sender({9301: [answer(503), answer(200, b"second")]})
    f = make_flow("http://shop.example/cart?q=1")
    await tctx.cycle(a, f)
    assert len(send.calls) == 2 and f.response.status_code == 200
    assert f.metadata["condroute"]["mirrors"]
    assert a.mirrors.under_way == 1 and [w[0] for w in a.mirrors.waiting] == [f]
    assert a.mirrors.pending == {}


async def test_a_header_h11_refuses_is_not_copied_into_the_record(tmp_path: Path, monkeypatch):
    """h11's message names the refused header value (a NUL in a Cookie or Authorization): the
    attempt's reason goes to the comment, the saved flow's tries and the status page, which every
    client of the proxy can read, so it says what was refused, never the value."""
    from test_retry import RULES as RETRY_RULES
    monkeypatch.setattr(Upstreams, "_live", lambda self, flow: True)
    a = ConditionalRouting()
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RETRY_RULES))
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, condroute_rules=str(p))
        a.upstreams.probe = Probe({})
        f = make_flow("http://shop.example/x", headers={"Authorization": "Bearer s3cr3t\x00tok"})
        await tctx.cycle(a, f)
        md = f.metadata["condroute"]
        assert [t["outcome"] for t in md["tries"]] == ["unsendable"]
        assert "Illegal header value" in md["tries"][0]["reason"]
        shown = [f.comment, str(md), str(a.status.snapshot())]
        assert not any("s3cr3t" in s for s in shown), shown


async def test_a_preserved_name_tls_cannot_send_is_left_to_mitmproxy(tmp_path: Path, monkeypatch, caplog):
    """sni: preserve with a plain-HTTP client takes the host it asked for; one that is no valid TLS
    name (a label over 63 characters) made ssl raise out of send_once and the request hook (a
    traceback, nothing recorded). It is an attempt condroute cannot make: left to mitmproxy."""
    import logging
    import socket
    caplog.set_level(logging.INFO)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()          # accepts (in the backlog) and never answers: the TLS name is checked first
    port = srv.getsockname()[1]
    monkeypatch.setattr(Upstreams, "_live", lambda self, flow: True)
    a = ConditionalRouting()
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(f"""
        version: 1
        routes:
          - name: kept
            match: {{host: "*.kept.example"}}
            backends:
              - {{name: k, upstream: "https://127.0.0.1:{port}", sni: preserve, retries: 1, retry_on: [reset]}}
        """))
    try:
        with taddons.context(Proxyserver(), a) as tctx:
            tctx.configure(a, condroute_rules=str(p))
            a.upstreams.probe = Probe({})
            f = make_flow("http://x.kept.example/x")
            long = "a" * 64 + ".kept.example"
            f.request.data.host = long
            f.request.headers["Host"] = long
            f.client_conn.sni = None          # a plain-HTTP client
            await tctx.cycle(a, f)
            md = f.metadata["condroute"]
            assert md["backend"] == "k" and [t["outcome"] for t in md["tries"]] == ["unsendable"]
            assert "left to mitmproxy" in f.comment and f.response is None
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    finally:
        srv.close()


async def test_a_bug_while_sending_leaves_the_request_to_the_hook_s_usual_work(addon, caplog):
    """Whatever goes wrong inside retry.py, forward() still runs (the answer of a respond fallback
    failed over to, the timeout's timer, the mirrors) and no exception leaves the request hook."""
    import logging
    tctx, a = addon

    async def broken(*args, **kw):
        raise RuntimeError("a bug")
    a.retry.send = broken
    f = make_flow("http://shop.example/cart")
    await tctx.cycle(a, f)
    assert f.response is None and f.request.port == 9301
    assert a.mirrors.under_way == 1 and a.upstreams.retrying == {}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "condroute: internal error while sending a request itself (RuntimeError); left to mitmproxy"]


async def test_responseheaders_does_no_throttle_work_without_a_relay(tmp_path: Path, monkeypatch):
    """The hook is registered for routes with a timeout or for the debug header, fields older than
    throttle: their responses must not pay for the throttle check while no relay exists."""
    monkeypatch.setattr(Upstreams, "_live", lambda self, flow: True)
    a = ConditionalRouting()
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent("""
        version: 1
        upstreams: {main: http://127.0.0.1:9301}
        routes:
          - name: shop
            match: {host: shop.example}
            backends: [{name: main, upstream: main, timeout: 5}]
        """))
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, condroute_rules=str(p))
        assert callable(a.responseheaders)
        calls = []
        monkeypatch.setattr(a.conns, "responseheaders", calls.append)
        f = make_flow("http://shop.example/x")
        await tctx.cycle(a, f)
        a.responseheaders(f)
        assert calls == []


async def test_relays_per_client_name_are_bounded(tmp_path: Path, monkeypatch):
    """throttle with sni: preserve keys a relay by the client's name: each new name a client sends
    opened a listening socket kept until a reload. The least recently used listener is closed
    past MAX_RELAYS (its open connections run on)."""
    from mitmproxy import http
    from mitmproxy.test import tflow

    from condroute.mitm import connections
    monkeypatch.setattr(connections, "MAX_RELAYS", 2)
    a = ConditionalRouting()
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent("""
        version: 1
        routes:
          - name: slow
            match: {host: "*.slow.example"}
            backends:
              - {name: t, upstream: "https://127.0.0.1:9443", sni: preserve, throttle: {kbps: 80}}
        """))
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, condroute_rules=str(p))
        made = []
        for name in ("a", "b", "a", "c"):
            f = tflow.tflow(req=http.Request.make("GET", f"https://{name}.slow.example/x"))
            f.request.headers["Host"] = f"{name}.slow.example"
            f.request.authority = ""
            f.client_conn.sni = f"{name}.slow.example"
            await tctx.cycle(a, f)
            made.append(f.request.port)
        assert made[0] == made[2] and len(set(made)) == 3
        assert sorted(k[3] for k in a.conns.relays) == ["a.slow.example", "c.slow.example"]
        assert len(a.conns.relays) == 2
        a.conns.close()


async def test_a_request_killed_after_the_mirrors_were_drawn_sends_no_copy(tmp_path: Path, monkeypatch):
    """Another addon (a blocklist, a user's intercept) kills the request after condroute's request
    hook: the request never leaves, so its copy must not either (flow.live goes False on a kill, which
    _tick took for "the response has been sent"). Counted as dropped."""
    import time

    from mitmproxy import http
    from mitmproxy.test import tflow

    from condroute import model
    from condroute.compile.compiler import compile_rules
    from condroute.load.ctx import CompileCtx
    from condroute.mitm import mirror
    srv_got = []
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    shadow = model.Upstream("shadow", f"http://127.0.0.1:{port}", "http", "127.0.0.1", port, "")
    main = model.Upstream("main", "http://127.0.0.1:9001", "http", "127.0.0.1", 9001, "")
    b = model.Backend("b", 2, upstream=main, mirrors=(model.Mirror(shadow),))
    a = ConditionalRouting()
    try:
        with taddons.context(Proxyserver(), a) as tctx:
            a.rules = compile_rules("r.yaml", "hand", {}, model.Settings(), [model.Route("r", 1, backends=(b,))],
                                    CompileCtx("r.yaml"))
            f = tflow.tflow(req=http.Request.make("GET", "http://shop.test/p", b"", [(b"Host", b"shop.test")]))
            await tctx.cycle(a, f)
            assert a.mirrors.under_way == 1
            f.kill()                                  # by an addon after condroute
            deadline = time.monotonic() + 5
            while a.mirrors.under_way and time.monotonic() < deadline:
                await asyncio.sleep(mirror.TICK)
            srv.setblocking(False)
            try:
                srv_got.append(srv.accept())
            except BlockingIOError:
                pass
            assert (a.mirrors.sent, a.mirrors.failed, a.mirrors.dropped, a.mirrors.under_way) == (0, 0, 1, 0)
            assert srv_got == [] and not a.mirrors.tasks
    finally:
        srv.close()


async def test_an_attempt_without_timeout_ends_when_the_client_leaves(addon, monkeypatch):
    """No backend timeout and an upstream that never answers: mitmproxy does not cancel the pending
    request hook when the client closes, so the attempt (its socket, the hook) waited for ever."""
    from mitmproxy.connection import ConnectionState
    monkeypatch.setattr(retry_mod, "CLIENT_CHECK", 0.01)
    tctx, a = addon
    started = asyncio.Event()
    cancelled = []

    async def silent(*args, **kw):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
    a.retry.send = silent
    f = make_flow("http://shop.example/cart")
    hook = asyncio.ensure_future(tctx.cycle(a, f))
    await asyncio.wait_for(started.wait(), 5)
    f.client_conn.state = ConnectionState.CLOSED
    await asyncio.wait_for(hook, 5)
    assert cancelled == [True] and f.response is None
