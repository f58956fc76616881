"""Fault injection (issue #16 item 5, Istio's HTTPFaultInjection): the engine's draw and the decision
it makes (an abort answers, a delay is recorded), every text it is shown as, and the addon's hooks in
mitmproxy's test harness (the delay waited for without blocking, the abort answered without an
upstream). The end-to-end tests through a real mitmdump are in test_fault_e2e.py."""
from __future__ import annotations

import asyncio
import random
import textwrap
from pathlib import Path

import pytest
from mitmproxy import flow, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from condroute import engine, render
from condroute.cli.lint import lint
from condroute.engine import FAULT_ABORT_BODY, decide
from condroute.mitm import addon as addon_mod
from condroute.mitm.addon import ConditionalRouting
from condroute.mitm.upstreams import Upstreams
from condroute.request import RequestView
from condroute.rules import load_rules, load_rules_text


def rules(text: str):
    return load_rules_text(textwrap.dedent(text), "t.yaml")


def req(url="http://shop.example/p", headers=(), method="GET"):
    return RequestView.from_url(url, method=method, headers=list(headers))


def one(fault: str, kind: str = "upstream: http://127.0.0.1:9001", more: str = ""):
    return rules(f"""
        version: 1
        routes:
          - name: r
            backends:
              - {{name: b, {kind}, fault: {fault}{more}}}
        """)


class Draws:
    """random.random as the engine sees it: a script of values, the last repeated."""

    def __init__(self, *values: float):
        self.values = list(values)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


# -- the draw --------------------------------------------------------------------------------------
@pytest.mark.parametrize("draw", [0.0, 1e-12, 0.5, 0.999999])
def test_percent_0_never_fires(monkeypatch, draw):
    monkeypatch.setattr(engine.random, "random", lambda: draw)
    r = one("{delay: 2, abort: 503, percent: 0}")
    for _ in range(200):
        d = decide(r, req())
        assert (d.outcome, d.fault_delay, d.fault_abort) == ("routed", None, None)


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.9999999999])
def test_percent_100_always_fires(monkeypatch, draw):
    monkeypatch.setattr(engine.random, "random", lambda: draw)
    for fault in ("{delay: 2, abort: 503}", "{delay: 2, abort: 503, percent: 100}",
                  "{delay: {seconds: 2, percent: 100}, abort: {status: 503, percent: 100}}"):
        d = decide(one(fault), req())
        assert (d.outcome, d.fault_delay, d.fault_abort, d.status) == ("respond", 2.0, 503, 503)


def test_percent_50_is_about_half_over_many_draws():
    random.seed(20261202)               # a fixed sequence: the bound below cannot flake
    r = one("{delay: {seconds: 1, percent: 50}, abort: {status: 503, percent: 50}}")
    n, delayed, aborted, both = 10_000, 0, 0, 0
    for _ in range(n):
        d = decide(r, req())
        delayed += d.fault_delay is not None
        aborted += d.fault_abort is not None
        both += d.fault_delay is not None and d.fault_abort is not None
    assert 0.40 * n <= delayed <= 0.60 * n
    assert 0.40 * n <= aborted <= 0.60 * n
    assert 0.20 * n <= both <= 0.30 * n          # independent draws: about a quarter are both


def test_small_percent_is_rare_but_happens():
    random.seed(7)
    r = one("{abort: 503, percent: 1}")
    aborted = sum(decide(r, req()).fault_abort is not None for _ in range(10_000))
    assert 50 <= aborted <= 150


def test_delay_and_abort_are_drawn_independently_delay_first(monkeypatch):
    r = one("{delay: {seconds: 2, percent: 50}, abort: {status: 503, percent: 50}}")
    for seq, delayed, aborted in [((0.1, 0.9), True, False), ((0.9, 0.1), False, True),
                                  ((0.1, 0.1), True, True), ((0.9, 0.9), False, False)]:
        draws = Draws(*seq)
        monkeypatch.setattr(engine.random, "random", draws)
        d = decide(r, req())
        assert draws.calls == 2                  # one draw each, the delay's first
        assert (d.fault_delay is not None, d.fault_abort is not None) == (delayed, aborted)
        assert d.outcome == ("respond" if aborted else "routed")


def test_only_the_configured_part_is_drawn(monkeypatch):
    draws = Draws(0.0)
    monkeypatch.setattr(engine.random, "random", draws)
    d = decide(one("{delay: 500ms, percent: 10}"), req())
    assert (d.fault_delay, d.fault_abort, d.outcome, draws.calls) == (0.5, None, "routed", 1)
    d = decide(one("{abort: 418, percent: 10}"), req())
    assert (d.fault_delay, d.fault_abort, d.outcome) == (None, 418, "respond")


# -- the decision ------------------------------------------------------------------------------------
def test_an_abort_is_an_answer_that_says_it_was_injected():
    r = one("{abort: 503}", more=", timeout: 2, retries: 3, set_headers: {X-A: '1'}")
    d = decide(r, req())
    assert (d.outcome, d.status, d.backend) == ("respond", 503, "b")
    assert (d.respond.status, d.respond.body, d.respond.headers) == (503, "fault filter abort",
                                                                      (("Content-Type", "text/plain"),))
    assert FAULT_ABORT_BODY == "fault filter abort"          # Envoy's fault filter's body
    assert d.reason == "injected fault: abort 503 (fault.abort), nothing forwarded"
    assert d.url is None and d.upstream is None and d.mirrors == ()
    assert (d.timeout, d.retries) == (None, 0)                # never sent: no timeout, never retried
    assert render.header_value(d) == "r/b -> fault: abort 503"
    assert render.outcome_text(d) == "r/b -> fault: abort 503, nothing forwarded"
    assert render.summary(d) == "GET http://shop.example/p -> r/b -> fault: abort 503, nothing forwarded"
    assert render.comment(d) == "shop.example/p → r/b [unconditional] | fault: abort 503: condroute answered 503"
    md = render.to_dict(d)
    assert (md["outcome"], md["status"], md["fault_abort"], md["reason"]) == \
        ("respond", 503, 503, "injected fault: abort 503 (fault.abort), nothing forwarded")
    assert "fault_delay" not in md and "timeout" not in md


def test_an_abort_with_a_percent_says_so_and_a_delay_before_it():
    d = decide(one("{delay: 2s, abort: 500, percent: 100}"), req())
    assert render.header_value(d) == "r/b -> fault: abort 500 after a delay of 2s"
    assert "fault: abort 500 after a delay of 2s: condroute answered 500" in render.comment(d)
    random.seed(1)
    r = one("{abort: {status: 503, percent: 99.5}}")
    d = next(d for d in (decide(r, req()) for _ in range(100)) if d.fault_abort)
    assert d.reason == "injected fault: abort 503 (fault.abort, 99.5% of requests), nothing forwarded"


def test_an_aborted_request_sends_no_mirror_copy_and_a_delayed_one_does():
    r = rules("""
        version: 1
        upstreams: {a: "http://127.0.0.1:9001", m: "http://127.0.0.1:9002"}
        routes:
          - name: r
            backends:
              - {name: x, when: {header: {x-abort: "1"}}, upstream: a, mirror: m, fault: {abort: 503}}
              - {name: y, upstream: a, mirror: m, fault: {delay: 1}}
        """)
    d = decide(r, req(headers=[("x-abort", "1")]))
    assert (d.outcome, d.mirrors) == ("respond", ())
    d = decide(r, req())
    assert d.outcome == "routed" and len(d.mirrors) == 1 and d.fault_delay == 1.0
    assert render.outcome_text(d).endswith(", mirrored to m, fault: delayed 1s")


def test_a_delay_is_recorded_in_the_decision():
    r = one("{delay: 2}", more=", timeout: 1")
    d = decide(r, req())
    assert (d.outcome, d.fault_delay, d.fault_abort, d.upstream) == ("routed", 2.0, None, "http://127.0.0.1:9001")
    assert d.timeout == 1                          # kept: it starts after the delay (the addon)
    assert render.header_value(d) == "r/b -> http://127.0.0.1:9001 (fault: delayed 2s)"
    assert render.outcome_text(d).endswith("(http://127.0.0.1:9001/p), fault: delayed 2s")
    assert render.comment(d).endswith("| to http://127.0.0.1:9001/p | fault: delayed 2s")
    assert render.to_dict(d)["fault_delay"] == 2.0


def test_no_fault_no_fault_text():
    d = decide(rules("""
        version: 1
        routes: [{name: r, backends: [{name: b, upstream: "http://127.0.0.1:9001"}]}]
        """), req())
    assert "fault" not in render.comment(d) + render.header_value(d) + render.summary(d)
    assert "fault_delay" not in render.to_dict(d)


def test_a_respond_backend_with_a_delay_is_a_slow_mock():
    r = one("{delay: 500ms}", kind="respond: {status: 200, body: ok}")
    d = decide(r, req())
    assert (d.outcome, d.status, d.respond.body, d.fault_delay) == ("respond", 200, "ok", 0.5)
    assert render.header_value(d) == "r/b -> respond 200 (fault: delayed 0.5s)"
    assert render.outcome_text(d) == "r/b -> respond 200, fault: delayed 0.5s"
    assert render.comment(d).endswith("| condroute answered 200 | fault: delayed 0.5s")


def test_a_respond_backend_with_an_abort_answers_the_abort():
    d = decide(one("{abort: 503}", kind="respond: {status: 200, body: ok}"), req())
    assert (d.outcome, d.status, d.respond.body, d.fault_abort) == ("respond", 503, FAULT_ABORT_BODY, 503)


def test_a_split_backend_draws_its_fault():
    r = rules("""
        version: 1
        upstreams: {a: "http://127.0.0.1:9001", c: "http://127.0.0.1:9002"}
        routes:
          - name: r
            backends:
              - {name: s, split: {by: "header:x-user", weights: {a: 50, c: 50}}, fault: {delay: 1}}
              - {name: t, when: {header: {x-t: "1"}}, split: {by: "header:x-user", weights: {a: 1, c: 1}},
                 fault: {abort: 502}}
        """)
    d = decide(r, req(headers=[("x-user", "u1")]))
    assert d.outcome == "routed" and d.upstream in ("a", "c") and d.fault_delay == 1.0 and d.split
    d = decide(r, req(headers=[("x-user", "u1"), ("x-t", "1")]))
    assert d.backend == "s"        # s holds first (no when)
    r2 = rules("""
        version: 1
        upstreams: {a: "http://127.0.0.1:9001", c: "http://127.0.0.1:9002"}
        routes:
          - name: r
            backends:
              - {name: t, split: {by: "header:x-user", weights: {a: 1, c: 1}}, fault: {abort: 502}}
        """)
    d = decide(r2, req(headers=[("x-user", "u1")]))
    assert (d.outcome, d.status, d.split, d.upstream) == ("respond", 502, None, None)


FALLBACK = """
    version: 1
    routes:
      - name: r
        backends:
          - name: slow
            when: {header: {x-fault: delay}}
            upstream: http://127.0.0.1:9001
            fault: {delay: 0.5}
          - name: broken
            when: {header: {x-fault: abort}}
            upstream: http://127.0.0.1:9001
            fault: {abort: 503}
          - {name: normal, when: {header: {x-normal: "1"}}, upstream: http://127.0.0.1:9001}
          - {name: fb, fallback: true, upstream: http://127.0.0.1:9002, fault: {abort: 500, percent: 100}}
    """


def test_header_triggered_faults_through_an_ordinary_when():
    r = rules(FALLBACK)
    d = decide(r, req(headers=[("x-fault", "delay")]))
    assert (d.backend, d.outcome, d.fault_delay) == ("slow", "routed", 0.5)
    d = decide(r, req(headers=[("x-fault", "abort")]))
    assert (d.backend, d.outcome, d.status) == ("broken", "respond", 503)
    assert "slow: header x-fault" in render.comment(d)        # the skipped backend, with why
    d = decide(r, req(headers=[("x-normal", "1")]))
    assert (d.backend, d.outcome, d.fault_delay, d.fault_abort) == ("normal", "routed", None, None)


def test_a_fallback_with_a_fault_draws_it_when_it_serves():
    d = decide(rules(FALLBACK), req())
    assert (d.backend, d.outcome, d.status) == ("fb", "respond", 500)
    assert d.trail[-1][3] is True                              # the fallback, held
    assert render.header_value(d) == "r/fb -> fault: abort 500"


def test_a_refused_request_is_never_delayed():
    """The backend's path template would climb out (build_target refuses, 400): answered at once."""
    r = rules("""
        version: 1
        routes:
          - name: r
            match: {path: "/x/{a}"}
            backends:
              - {name: b, upstream: http://127.0.0.1:9001, path: "/.{a}", fault: {delay: 3}}
        """)
    assert decide(r, req("http://shop.example/x/y")).fault_delay == 3.0
    d = decide(r, req("http://shop.example/x/;x"))          # "/.;x": a "." segment
    assert d.outcome == "bad_request" and d.trail and d.fault_delay is None


def test_explain_shows_the_fault_and_what_was_drawn(monkeypatch):
    r = one("{delay: {seconds: 2, percent: 30}, abort: {status: 503, percent: 10}}")
    monkeypatch.setattr(engine.random, "random", Draws(0.1, 0.5))        # delay drawn, abort not
    d = decide(r, req(), explain=True)
    lines = render.render_decision(r, d, req())
    assert any(ln.startswith("fault") and "delay 2s (30% of requests): drawn" in ln
               and "abort 503 (10% of requests): not drawn for this request; each request is drawn anew" in ln
               for ln in lines)
    data = render.decision_data(r, d, req())
    assert data["fault"] == {"delay": {"seconds": 2.0, "percent": 30.0, "drawn": True},
                             "abort": {"status": 503, "percent": 10.0, "drawn": False}}
    monkeypatch.setattr(engine.random, "random", Draws(0.5, 0.05))       # abort drawn
    d = decide(r, req(), explain=True)
    lines = render.render_decision(r, d, req())
    assert any("abort 503 (10% of requests): drawn: condroute answers it, nothing is forwarded" in ln
               for ln in lines)
    assert any(ln.startswith("respond") and '503 "fault filter abort"' in ln for ln in lines)


# -- the addon's hooks -------------------------------------------------------------------------------
ADDON_RULES = """
    version: 1
    routes:
      - name: r
        match: {host: shop.example}
        backends:
          - {name: slow, when: {header: {x-fault: delay}}, upstream: "http://127.0.0.1:9101", fault: {delay: 1.5},
             timeout: 1}
          - {name: broken, when: {header: {x-fault: abort}}, upstream: "http://127.0.0.1:9101",
             fault: {abort: 503}}
          - {name: both, when: {header: {x-fault: both}}, upstream: "http://127.0.0.1:9101",
             fault: {delay: 0.25, abort: 504}}
          - {name: mock, when: {header: {x-fault: mock}}, respond: {status: 200, body: slow mock}, fault: {delay: 2}}
          - {name: normal, upstream: "http://127.0.0.1:9101"}
    """


def make_flow(headers=None, url="http://shop.example/cart") -> http.HTTPFlow:
    r = http.Request.make("GET", url, b"", headers or {})
    r.headers["Host"] = "shop.example"
    r.authority = ""
    return tflow.tflow(req=r)


@pytest.fixture
def fa(tmp_path: Path, monkeypatch):
    """The addon with ADDON_RULES; asyncio.sleep as the addon calls it recorded (and not waited)."""
    monkeypatch.setattr(Upstreams, "_live", lambda self, flow: False)    # no connection probes
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    monkeypatch.setattr(addon_mod.asyncio, "sleep", sleep)
    a = ConditionalRouting()
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(ADDON_RULES))
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, condroute_rules=str(p), condroute_debug_header=True)
        a.slept = slept
        yield a


def test_no_fault_keeps_the_sync_fast_path(fa):
    f = make_flow()
    assert fa.requestheaders(f) is None                # no coroutine, nothing recorded
    assert fa._delays == {} and fa.slept == []
    assert f.metadata["condroute"]["backend"] == "normal"


async def test_an_abort_is_answered_without_the_upstream(fa):
    f = make_flow({"x-fault": "abort"})
    assert fa.requestheaders(f) is None                # no delay: nothing to wait for
    fa.request(f)
    assert f.response is not None and f.response.status_code == 503
    assert f.response.content == b"fault filter abort"
    assert f.response.headers["content-type"] == "text/plain"
    assert (f.request.host, f.request.port) == ("shop.example", 80)   # never rewritten for an upstream
    assert fa.upstreams.timers == {}
    md = f.metadata["condroute"]
    assert (md["outcome"], md["header"], md["fault_abort"]) == ("respond", "r/broken -> fault: abort 503", 503)
    assert "fault: abort 503: condroute answered 503" in f.comment


async def test_a_delay_is_awaited_before_the_upstream_and_the_timer(fa):
    f = make_flow({"x-fault": "delay"})
    c = fa.requestheaders(f)
    assert asyncio.iscoroutine(c) and fa.slept == []    # nothing waited yet: mitmproxy awaits it
    assert f.request.port == 9101                       # routed already (the rewrite is not delayed)
    await c
    assert fa.slept == [1.5] and fa._delays == {}
    assert f.metadata["condroute"]["header"] == "r/slow -> http://127.0.0.1:9101 (fault: delayed 1.5s)"
    assert f.response is None


async def test_delay_then_abort(fa):
    f = make_flow({"x-fault": "both"})
    await fa.requestheaders(f)
    assert fa.slept == [0.25] and f.response is None
    fa.request(f)
    assert f.response.status_code == 504 and f.response.content == b"fault filter abort"


async def test_a_slow_mock_waits_then_answers(fa):
    f = make_flow({"x-fault": "mock"})
    await fa.requestheaders(f)
    fa.request(f)
    assert fa.slept == [2.0] and f.response.status_code == 200 and f.response.content == b"slow mock"


def test_an_error_forgets_the_delay(fa):
    f = make_flow({"x-fault": "delay"})
    c = fa.requestheaders(f)
    f.error = flow.Error("client disconnected")
    fa.error(f)
    assert fa._delays == {}
    c.close()


async def test_the_delay_comes_before_the_connection_probe(fa, monkeypatch):
    """A backend whose upstream is to be tried first: the delay, then the probe (in that order)."""
    monkeypatch.setattr(Upstreams, "_live", lambda self, flow: True)
    order: list[str] = []

    async def probe(host, port, timeout):
        order.append("probe")
        return None

    async def sleep(s):
        order.append(f"sleep {s:g}")

    fa.upstreams.probe = probe
    monkeypatch.setattr(addon_mod.asyncio, "sleep", sleep)
    await fa.requestheaders(make_flow({"x-fault": "delay"}))
    assert order == ["sleep 1.5", "probe"]


# -- lint --------------------------------------------------------------------------------------------
LINT = """\
version: 1
upstreams: {a: "http://127.0.0.1:9001"}
routes:
  - name: r
    backends:
      - {name: never, when: {header: {x-a: "1"}}, upstream: a, fault: {delay: 2, abort: 503, percent: 0}}
      - name: half
        when: {header: {x-b: "1"}}
        upstream: a
        fault: {delay: {seconds: 2, percent: 0}, abort: {status: 503, percent: 10}}
      - {name: slow, when: {header: {x-c: "1"}}, upstream: a, timeout: 1, fault: {delay: 1s}}
      - {name: ok, when: {header: {x-d: "1"}}, upstream: a, fault: {abort: 200}}
      - {name: retried, when: {header: {x-e: "1"}}, upstream: a, retry_on: [5xx], retries: 2, fault: {abort: 503}}
      - {name: fine, upstream: a, timeout: 3, retries: 2, fault: {delay: 500ms, abort: 404, percent: 5}}
"""


def test_lint_warns_of_faults_that_cannot_do_what_is_meant(tmp_path: Path):
    f = tmp_path / "r.yaml"
    f.write_text(LINT)
    got = [(p.line, p.col, p.message) for p in lint(load_rules(str(f)))]
    assert got == [
        (6, 103, "the fault of backend 'never' has percent 0: it never fires"),
        (10, 46, "the fault delay of backend 'half' has percent 0: it never delays a request"),
        (11, 90, "the fault delay of backend 'slow' (1s) is not counted by its timeout (1s): the delay comes "
                 "before the upstream is asked (as in Envoy), so no 504 comes of it; to see a timeout, give the "
                 "client a timeout shorter than the delay"),
        (12, 76, "the fault abort of backend 'ok' answers 200, not an error status: clients take it as a success "
                 "with the body 'fault filter abort'"),
        (13, 110, "backend 'retried' retries 503 (retry_on), but an injected abort is never retried: it is "
                  "answered before the upstream is asked (as in Envoy); the client gets the 503"),
    ]


def test_a_delay_drawn_after_requestheaders_is_not_kept(fa):
    """A flow decided again in the request hook (a failover after retries, retry.py) may draw a
    delay that nothing waits for any more: forward() forgets it (no entry left per flow)."""
    f = make_flow({"x-fault": "delay"})
    fa.route(f)                      # as a failover in the request hook decides again
    assert list(fa._delays) == [f.id]
    fa.forward(f)
    assert fa._delays == {}
