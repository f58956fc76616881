"""Passive health, retries and failover: the pure parts (Health, the engine consulting it) and the
addon's hook logic inside mitmproxy's test harness with a scripted connection probe (no network)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from condroute.engine import choose_arm, decide
from condroute.mitm.health import FRESH, Health
from condroute.mitm.addon import ConditionalRouting
from condroute.request import RequestView
from condroute.rules import load_rules_text
from condroute.mitm.upstreams import Upstreams, describe_connect_error, parse_seconds

PRIMARY, SECOND, FALLBACK = ("127.0.0.1", 9101), ("127.0.0.1", 9102), ("127.0.0.1", 9103)

RULES = """
    version: 1
    upstreams:
      primary: http://127.0.0.1:9101
      second: http://127.0.0.1:9102/v2
      fallback: http://127.0.0.1:9103
    routes:
      - name: shop
        backends:
          - {name: beta, when: {header: {X-Beta: "1"}}, upstream: second}
          - {name: main, upstream: primary, retries: 2, set_headers: {X-Main: "1"}}
          - {name: safety-net, fallback: true, upstream: fallback}
    """


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def rules(text: str = RULES):
    return load_rules_text(textwrap.dedent(text), "t.yaml")


def req(headers=(), url="http://shop.example/cart", method="GET"):
    return RequestView.from_url(url, method=method, headers=list(headers))


# -- Health ----------------------------------------------------------------------------------------
def test_health_cooldown_and_recovery():
    c = Clock()
    h = Health(cooldown=5, clock=c)
    assert h.unavailable(*PRIMARY) is None
    assert h.mark_down(*PRIMARY, "refused the connection", 3) is True
    assert h.mark_down(*PRIMARY, "refused the connection", 3) is False      # already down: no new log line
    why = h.unavailable(*PRIMARY)
    assert why.startswith("refused the connection (3 attempts) 0.0s ago") and "cool-down 5s" in why
    assert h.unavailable(*SECOND) is None
    c.t += 4.9
    assert h.unavailable(*PRIMARY) is not None
    c.t += 0.2
    assert h.unavailable(*PRIMARY) is None                                   # cool-down over: try it again
    h.mark_down(*PRIMARY, "refused the connection")
    assert h.mark_up(*PRIMARY) is True and h.unavailable(*PRIMARY) is None


def test_health_known_up_from_open_or_recent_connections():
    c = Clock()
    h = Health(clock=c)
    assert not h.known_up(*PRIMARY)
    h.opened(*PRIMARY)
    c.t += 100
    assert h.known_up(*PRIMARY)                  # an open connection vouches for it
    h.closed(*PRIMARY)
    assert not h.known_up(*PRIMARY)              # closed long after it was opened
    h.mark_up(*PRIMARY)
    c.t += FRESH - 0.1
    assert h.known_up(*PRIMARY)
    c.t += 0.2
    assert not h.known_up(*PRIMARY)
    h.mark_down(*PRIMARY, "refused")
    assert not h.known_up(*PRIMARY)
    assert h.known_up("LOCALHOST", 1) is False and h._key("[::1]", "80") == ("::1", 80)


# -- the engine consults it ------------------------------------------------------------------------------
class Down:
    """A stub health: the given addresses are down."""

    def __init__(self, *addrs):
        self.addrs = set(addrs)

    def unavailable(self, host, port):
        return "refused the connection 0.1s ago" if (host, port) in self.addrs else None


def test_a_held_backend_whose_upstream_is_down_is_passed_over_for_the_next():
    r = rules()
    d = decide(r, req(), health=Down(PRIMARY))
    assert (d.outcome, d.backend, d.upstream) == ("routed", "safety-net", "fallback")
    skipped = {a.backend: a.reason for a in d.skipped}
    assert skipped["main"] == ("upstream primary (127.0.0.1:9101) is unavailable: "
                               "refused the connection 0.1s ago")
    assert "safety-net: fallback" in d.comment() or "skipped" in d.comment()
    assert d.set_headers == ()                       # the fallback's own, not main's
    # the beta backend is not affected
    d = decide(r, req({"X-Beta": "1"}.items()), health=Down(PRIMARY))
    assert (d.backend, d.url) == ("beta", "http://127.0.0.1:9102/v2/cart")
    # without health (the CLI) nothing changes
    assert decide(r, req()).backend == "main"
    assert decide(r, req(), health=Down()).backend == "main"


def test_when_nothing_can_serve_the_answer_is_502_naming_what_was_tried():
    r = rules()
    d = decide(r, req(), health=Down(PRIMARY, FALLBACK))
    assert (d.outcome, d.status, d.backend) == ("unavailable", 502, None)
    body = d.error_body()
    assert body.startswith("condroute: no upstream of route 'shop' can serve GET http://shop.example/cart; tried:")
    assert "main: upstream primary (127.0.0.1:9101) is unavailable: refused" in body
    assert "safety-net: upstream fallback (127.0.0.1:9103) is unavailable: refused" in body
    assert "beta: header X-Beta is missing" in body or "beta: header X-Beta" in body
    assert d.header_value() == "shop -> error 502 (no upstream available)"
    assert "no upstream available, answered 502" in d.summary()
    assert d.to_dict()["outcome"] == "unavailable"


def test_unavailable_is_a_502_even_with_on_no_match_passthrough_but_plain_no_match_is_not():
    r = rules("""
        version: 1
        routes:
          - name: only
            backends:
              - {name: b, when: {header: {X-B: "1"}}, upstream: http://127.0.0.1:9101}
        """)
    assert decide(r, req(), health=Down(PRIMARY)).outcome == "no_match"          # nothing held
    d = decide(r, req([("X-B", "1")]), health=Down(PRIMARY))
    assert (d.outcome, d.status) == ("unavailable", 502)


def test_respond_backends_and_destination_keeping_backends_ignore_health():
    r = rules("""
        version: 1
        routes:
          - name: r
            backends:
              - {name: block, when: {header: {X-Block: "1"}}, respond: {status: 403}}
              - {name: keep, set_headers: {X-Seen: "1"}}
        """)
    assert decide(r, req([("X-Block", "1")]), health=Down(PRIMARY)).outcome == "respond"
    assert decide(r, req(), health=Down(("shop.example", 80))).backend == "keep"


def test_a_split_arm_that_is_down_gives_its_users_to_the_other_arms_only():
    r = rules("""
        version: 1
        upstreams: {a: "http://127.0.0.1:9101", b: "http://127.0.0.1:9102", c: "http://127.0.0.1:9103"}
        routes:
          - name: r
            backends:
              - {name: s, split: {by: "cookie:uid", weights: {a: 50, b: 30, c: 20}}}
              - {name: fb, fallback: true, upstream: "http://127.0.0.1:9104"}
        """)
    split = r.routes[0].backends[0].split
    moved = 0
    for i in range(2000):
        rq = req([("Cookie", f"uid=u{i}")])
        normal = choose_arm(split, "r", f"u{i}").name
        d = decide(r, rq, health=Down(PRIMARY))                         # arm a is down
        assert d.backend == "s"
        assert d.split.endswith("(passed over, unavailable: a)")
        if normal == "a":
            assert d.upstream in ("b", "c")
            moved += 1
        else:
            assert d.upstream == normal                                 # nobody else moves
    assert 0.45 <= moved / 2000 <= 0.55
    d = decide(r, req([("Cookie", "uid=x")]), health=Down(PRIMARY, SECOND, FALLBACK))
    assert d.backend == "fb"
    assert "every arm of its split is unavailable" in d.skipped[0].reason


# -- the addon's hooks, with a scripted probe ----------------------------------------------------------
class Probe:
    """Scripted connection attempts: per address a list of results (None = connected), the last repeated."""

    def __init__(self, script: dict):
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host, port, timeout):
        self.calls.append((host, port))
        seq = self.script.get((host, port), [None])
        return seq.pop(0) if len(seq) > 1 else seq[0]


def make_flow(url="http://shop.example/cart", method="GET", headers=None) -> http.HTTPFlow:
    r = http.Request.make(method, url, b"", headers or {})
    r.headers["Host"] = r.pretty_url.split("/")[2]
    r.authority = ""
    return tflow.tflow(req=r)


@pytest.fixture
def addon(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Upstreams, "_live", lambda self, flow: True)     # as if on a live client connection
    a = ConditionalRouting()
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, condroute_rules=str(p), condroute_debug_header=True)
        a.upstreams.health = Health(cooldown=5, clock=Clock())
        yield tctx, a


async def run(tctx, a, f):
    await tctx.cycle(a, f)
    return f


REFUSED = "refused the connection"


async def test_get_is_retried_then_fails_over_to_the_fallback(addon):
    tctx, a = addon
    a.upstreams.probe = probe = Probe({PRIMARY: [REFUSED]})
    f = await run(tctx, a, make_flow())
    assert probe.calls == [PRIMARY] * 3 + [FALLBACK]               # 1 + retries: 2, then the fallback
    md = f.metadata["condroute"]
    assert (md["backend"], md["upstream"]) == ("safety-net", "fallback")
    assert md["failed_over"] == [{"upstream": "primary", "address": "127.0.0.1:9101", "error": REFUSED,
                                  "attempts": 3}]
    assert "refused the connection (3 attempts)" in {a_["backend"]: a_["reason"] for a_ in md["skipped"]}["main"]
    assert (f.request.host, f.request.port, f.request.path) == ("127.0.0.1", 9103, "/cart")
    assert "X-Main" not in f.request.headers                         # main's rewrite was undone
    assert f.request.host_header == "127.0.0.1:9103"
    assert "; main: upstream primary (127.0.0.1:9101) is unavailable: refused" in f.comment


async def test_post_is_not_retried(addon):
    tctx, a = addon
    a.upstreams.probe = probe = Probe({PRIMARY: [REFUSED]})
    f = await run(tctx, a, make_flow(method="POST"))
    assert probe.calls == [PRIMARY, FALLBACK]
    assert f.metadata["condroute"]["failed_over"][0]["attempts"] == 1


async def test_a_retry_that_connects_keeps_the_backend(addon):
    tctx, a = addon
    a.upstreams.probe = probe = Probe({PRIMARY: [REFUSED, REFUSED, None]})
    f = await run(tctx, a, make_flow())
    assert probe.calls == [PRIMARY] * 3
    md = f.metadata["condroute"]
    assert md["backend"] == "main" and "failed_over" not in md
    assert f.request.headers["X-Main"] == "1" and f.request.port == 9101
    assert a.upstreams.health.unavailable(*PRIMARY) is None


async def test_nothing_left_answers_502_naming_what_was_tried(addon):
    tctx, a = addon
    a.upstreams.probe = probe = Probe({PRIMARY: [REFUSED], FALLBACK: ["did not accept a connection within 3s"]})
    f = await run(tctx, a, make_flow())
    assert probe.calls == [PRIMARY] * 3 + [FALLBACK]
    assert f.response is not None and f.response.status_code == 502
    body = f.response.get_text()
    assert "no upstream of route 'shop' can serve" in body
    assert "main: upstream primary (127.0.0.1:9101) is unavailable: refused the connection (3 attempts)" in body
    assert "safety-net: upstream fallback (127.0.0.1:9103) is unavailable: did not accept a connection" in body
    assert f.response.headers["X-Condroute"] == "shop -> error 502 (no upstream available)"
    assert [x["upstream"] for x in f.metadata["condroute"]["failed_over"]] == ["primary", "fallback"]


async def test_the_cool_down_passes_over_without_trying_then_tries_again(addon):
    tctx, a = addon
    a.upstreams.probe = probe = Probe({PRIMARY: [REFUSED]})
    await run(tctx, a, make_flow())
    probe.calls.clear()
    f = await run(tctx, a, make_flow())
    assert probe.calls == []                                  # the fallback connected a moment ago
    assert f.metadata["condroute"]["backend"] == "safety-net"
    assert "cool-down 5s" in f.comment
    a.upstreams.health.clock.t += 5.1                         # cool-down over; primary is back
    probe.script[PRIMARY] = [None]
    f = await run(tctx, a, make_flow())
    assert probe.calls == [PRIMARY]
    assert f.metadata["condroute"]["backend"] == "main"


async def test_a_recent_success_spares_the_try_except_for_backends_with_retries(addon):
    tctx, a = addon
    a.upstreams.probe = probe = Probe({})
    a.upstreams.health.mark_up(*PRIMARY)          # connected a moment ago, nothing open now
    a.upstreams.health.mark_up(*SECOND)
    await run(tctx, a, make_flow(headers={"X-Beta": "1"}))
    assert probe.calls == []                      # beta has no retries: the recent success is enough
    await run(tctx, a, make_flow())
    assert probe.calls == [PRIMARY]               # main has retries: tried first
    probe.calls.clear()
    await run(tctx, a, make_flow(method="POST"))
    assert probe.calls == []                      # ... but a POST is never retried, so not tried first
    a.upstreams.health.opened(*PRIMARY)
    await run(tctx, a, make_flow())
    assert probe.calls == []                      # an open connection proves it


async def test_passive_health_from_mitmproxy_connection_events(addon):
    tctx, a = addon
    a.upstreams.probe = probe = Probe({})
    srv = tflow.tserver_conn()
    srv.address = PRIMARY
    srv.error = "[Errno 111] Connect call failed ('127.0.0.1', 9101)"
    from mitmproxy.proxy.server_hooks import ServerConnectionHookData
    data = ServerConnectionHookData(server=srv, client=tflow.tclient_conn())
    srv.timestamp_start = None                  # refused by an addon before any attempt: not a failure
    a.upstreams.server_connect_error(data)
    assert a.upstreams.health.unavailable(*PRIMARY) is None
    srv.timestamp_start = 1.0                   # a real attempt that failed
    a.upstreams.server_connect_error(data)
    assert "Connect call failed" in a.upstreams.health.unavailable(*PRIMARY)
    f = await run(tctx, a, make_flow())
    assert f.metadata["condroute"]["backend"] == "safety-net"
    assert PRIMARY not in probe.calls
    # a connection that succeeds vouches for the upstream: no probe
    ok = tflow.tserver_conn()
    ok.address = SECOND
    a.upstreams.server_connected(ServerConnectionHookData(server=ok, client=tflow.tclient_conn()))
    probe.calls.clear()
    f = await run(tctx, a, make_flow(headers={"X-Beta": "1"}))
    assert probe.calls == [] and f.metadata["condroute"]["backend"] == "beta"


async def test_flows_not_on_a_live_connection_are_never_probed(tmp_path):
    a = ConditionalRouting()
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, condroute_rules=str(p))
        a.upstreams.probe = probe = Probe({PRIMARY: [REFUSED]})
        f = await run(tctx, a, make_flow())
        assert probe.calls == [] and f.metadata["condroute"]["backend"] == "main"
        assert a.upstreams.pending == {} and a.upstreams.timers == {}


def test_small_helpers():
    assert describe_connect_error(ConnectionRefusedError(), 3) == "refused the connection"
    assert describe_connect_error(TimeoutError(), 2.5) == "did not accept a connection within 2.5s"
    assert "no route to host" in describe_connect_error(OSError(113, "No route to host"), 1)
    assert parse_seconds("x", "5") == 5.0 and parse_seconds("x", "0.5s") == 0.5
    with pytest.raises(ValueError):
        parse_seconds("x", "soon")


async def test_cooldown_option(addon):
    tctx, a = addon
    tctx.configure(a.upstreams, condroute_cooldown="12")
    assert a.upstreams.health.cooldown == 12.0


def test_health_forgets_expired_entries_when_it_has_many():
    from condroute.mitm import health as hm
    c = Clock()
    h = Health(cooldown=5, clock=c)
    for i in range(hm.MAX_ENTRIES):
        h.mark_up("10.0.0.1", i)
        h.mark_down("10.0.0.2", i, "refused")
    c.t += 60
    h.mark_up("10.0.0.3", 1)
    h.mark_down("10.0.0.4", 1, "refused")
    assert len(h.last_ok) == 1 and len(h.failures) == 1
    assert h.known_up("10.0.0.3", 1) and h.unavailable("10.0.0.4", 1)
