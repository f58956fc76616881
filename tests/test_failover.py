"""failover: false — a pinned backend answers 502/503 with the reason instead of failing over: the
engine (an unavailable upstream), the connection probe (a refused connection, in mitmproxy's test
harness), and the lint warnings for retry_on / failover that cannot do what they say."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from condroute.cli.lint import lint
from condroute.engine import decide
from condroute.mitm.addon import ConditionalRouting
from condroute.mitm.health import Health
from condroute.mitm.upstreams import Upstreams, connect_tries
from condroute.request import RequestView
from condroute.rules import load_rules, load_rules_text
from test_traffic_health import Clock, Down, Probe, make_flow

CANARY, STABLE = ("127.0.0.1", 9201), ("127.0.0.1", 9202)

RULES = """
    version: 1
    upstreams:
      canary: http://127.0.0.1:9201
      stable: http://127.0.0.1:9202
      a: http://127.0.0.1:9203
      b: http://127.0.0.1:9204
    routes:
      - name: app
        match: {host: app.example}
        backends:
          - {name: canary, when: {header: {X-Variant: canary}}, upstream: canary, failover: false}
          - {name: beta, when: {header: {X-Beta: "1"}}, upstream: canary}
          - {name: stable, fallback: true, upstream: stable}
      - name: split
        match: {host: split.example}
        backends:
          - name: ab
            failover: false
            split: {by: "header:X-User", weights: {a: 50, b: 50}}
          - {name: stable, fallback: true, upstream: stable}
      - name: last
        match: {host: last.example}
        backends:
          - {name: one, when: {header: {X-One: "1"}}, upstream: canary}
          - {name: stable, fallback: true, upstream: stable, failover: false}
    """


def rules():
    return load_rules_text(textwrap.dedent(RULES), "t.yaml")


def req(host="app.example", headers=()):
    return RequestView.from_url(f"http://{host}/x", headers=list(headers))


# -- the engine --------------------------------------------------------------------------------------
def test_a_pinned_backend_whose_upstream_is_down_answers_503_with_the_reason():
    d = decide(rules(), req(headers=[("X-Variant", "canary")]), health=Down(CANARY))
    assert (d.outcome, d.status, d.route, d.backend) == ("unavailable", 503, "app", "canary")
    assert d.reason == ("backend 'canary' does not fail over (failover: false): upstream canary (127.0.0.1:9201) "
                        "is unavailable: refused the connection 0.1s ago")
    assert d.header_value() == "app/canary -> error 503 (upstream unavailable, failover: false)"
    assert d.error_body().startswith("condroute: route 'app': backend 'canary' does not fail over")
    assert "[backend 'canary' does not fail over (failover: false): upstream canary" in d.comment()
    assert d.summary().endswith("app/canary: answered 503: " + d.reason)
    assert d.to_dict()["reason"] == d.reason and d.to_dict()["status"] == 503


def test_the_same_upstream_without_failover_false_fails_over_as_before():
    d = decide(rules(), req(headers=[("X-Beta", "1")]), health=Down(CANARY))
    assert (d.outcome, d.backend, d.upstream) == ("routed", "stable", "stable")
    assert "beta" in {a.backend for a in d.skipped}


def test_failover_false_changes_nothing_while_the_upstream_is_up_or_the_backend_does_not_hold():
    r = rules()
    assert decide(r, req(headers=[("X-Variant", "canary")]), health=Down()).backend == "canary"
    assert decide(r, req(headers=[("X-Variant", "canary")])).backend == "canary"      # the CLI: no health
    d = decide(r, req(), health=Down(CANARY))                                          # canary does not hold
    assert (d.outcome, d.backend) == ("routed", "stable")


def test_a_pinned_split_answers_503_only_when_every_arm_is_down():
    r = rules()
    a, b = ("127.0.0.1", 9203), ("127.0.0.1", 9204)
    d = decide(r, req("split.example", [("X-User", "u1")]), health=Down(a))
    assert (d.outcome, d.backend, d.upstream) == ("routed", "ab", "b")                # one arm left: it serves
    d = decide(r, req("split.example", [("X-User", "u1")]), health=Down(a, b))
    assert (d.outcome, d.status, d.backend) == ("unavailable", 503, "ab")
    assert "every arm of its split is unavailable" in d.reason


def test_a_pinned_fallback_answers_503_with_its_reason():
    d = decide(rules(), req("last.example"), health=Down(STABLE))
    assert (d.outcome, d.status, d.backend) == ("unavailable", 503, "stable")
    assert d.reason.startswith("backend 'stable' does not fail over (failover: false): upstream stable")


# -- the connection probe (mitmproxy's test harness, scripted connections) ----------------------------
@pytest.fixture
def addon(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(Upstreams, "_live", lambda self, flow: True)
    a = ConditionalRouting()
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    with taddons.context(Proxyserver(), a) as tctx:
        tctx.configure(a, condroute_rules=str(p), condroute_debug_header=True)
        a.upstreams.health = Health(cooldown=5, clock=Clock())
        yield tctx, a


async def test_a_refused_connection_to_a_pinned_backend_answers_502_not_the_fallback(addon, caplog):
    tctx, a = addon
    a.upstreams.probe = probe = Probe({CANARY: ["refused the connection"]})
    f = make_flow("http://app.example/cart", headers={"X-Variant": "canary"})
    await tctx.cycle(a, f)
    assert probe.calls == [CANARY]                              # tried once: no retries; never the fallback
    assert f.response is not None and f.response.status_code == 502
    text = f.response.get_text()
    assert text.startswith("condroute: route 'app': backend 'canary' does not fail over (failover: false): "
                           "upstream canary (127.0.0.1:9201) refused the connection")
    assert f.response.headers["X-Condroute"] == "app/canary -> error 502 (upstream unavailable, failover: false)"
    md = f.metadata["condroute"]
    assert (md["outcome"], md["status"]) == ("unavailable", 502)
    assert md["connect_failures"][0]["error"] == "refused the connection"
    assert (f.request.host, f.request.port) == ("app.example", 80)      # put back as the client sent it
    assert "condroute answered 502" in f.comment
    assert "refused the connection; answering 502" in caplog.text
    # while it cools down the engine answers 503, without trying it
    probe.calls.clear()
    f = make_flow("http://app.example/cart", headers={"X-Variant": "canary"})
    await tctx.cycle(a, f)
    assert probe.calls == [] and f.response.status_code == 503


async def test_the_stable_fallback_still_serves_requests_the_pin_does_not_hold_for(addon):
    tctx, a = addon
    a.upstreams.probe = Probe({CANARY: ["refused the connection"]})
    f = make_flow("http://app.example/cart", headers={"X-Beta": "1"})
    await tctx.cycle(a, f)
    assert f.response is None and f.metadata["condroute"]["backend"] == "stable"


def test_connect_retries_follow_retry_on():
    r = load_rules_text(textwrap.dedent("""
        version: 1
        routes:
          - name: r
            backends:
              - {name: d, when: {header: {X-A: "1"}}, upstream: "http://127.0.0.1:1", retries: 2}
              - {name: reset, when: {header: {X-B: "1"}}, upstream: "http://127.0.0.1:1", retries: 2, retry_on: [reset]}
              - {name: g, upstream: "http://127.0.0.1:1", retries: 2, retry_on: [gateway-error]}
        """), "t.yaml")

    def tries(h, method="GET"):
        return connect_tries(decide(r, RequestView.from_url("http://x/", method=method, headers=[h])), method)

    assert tries(("X-A", "1")) == 3                  # connect-failure, the default
    assert tries(("X-A", "1"), "POST") == 1          # never for a method that is not idempotent
    assert tries(("X-B", "1")) == 3                  # retry_on: [reset] covers them (Envoy: a connection failure is a reset)
    assert tries(("X-C", "1")) == 3                  # gateway-error includes them (Envoy)


# -- lint ------------------------------------------------------------------------------------------------
LINT = """\
version: 1
upstreams: {a: "http://127.0.0.1:9001", b: "http://127.0.0.1:9002"}
routes:
  - name: alone
    match: {path: /alone}
    backends:
      - {name: only, upstream: a, failover: false}
  - name: posts
    match: {path: /posts, methods: [POST, PATCH]}
    backends:
      - {name: p, upstream: a, retries: 2, retry_on: [5xx]}
  - name: zero
    match: {path: /zero}
    backends:
      - {name: z, upstream: a, retry_on: [reset]}
  - name: fine
    match: {path: /fine}
    backends:
      - {name: f, when: {header: {x-a: "1"}}, upstream: a, retry_on: [reset], failover: false, retries: 1}
      - {name: g, when: {header: {x-b: "1"}}, upstream: a, retry_on: [5xx], retries: 0}
      - {name: h, fallback: true, upstream: b}
  - name: slow
    match: {path: /slow}
    backends:
      - {name: s, upstream: a, retries: 2, retry_on: [reset, connect-failure], throttle: {kbps: 64}}
"""


def test_lint_warns_of_retry_on_and_failover_that_cannot_do_what_they_say(tmp_path: Path):
    f = tmp_path / "r.yaml"
    f.write_text(LINT)
    got = [(p.line, p.col, p.message) for p in lint(load_rules(str(f)))]
    assert got == [
        (7, 45, "backend 'only': failover: false changes nothing: route 'alone' has no other backend and no "
                "fallback to fail over to"),
        (11, 54, "backend 'p': retry_on never applies: route 'posts' matches only PATCH, POST, and only idempotent "
                 "methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are retried"),
        (15, 42, "backend 'z': retry_on reset with retries: 0 and nothing to fail over to: no request is ever "
                 "sent again; set retries"),
        (25, 54, "backend 's': with throttle, only connection failures are retried: a throttled response is "
                 "paced by the relay mitmproxy connects through, so condroute does not send the request itself "
                 "to retry a reset or a 5xx"),
    ]


def test_explain_shows_retry_on_and_failover_false():
    from condroute.explain import decision_data, render_decision
    r = load_rules_text(textwrap.dedent("""
        version: 1
        upstreams: {a: "http://127.0.0.1:9001"}
        routes:
          - name: r
            backends:
              - {name: c, when: {header: {X-Variant: canary}}, upstream: a, failover: false}
              - {name: m, upstream: a, retries: 3, retry_on: [reset, 5xx], timeout: 2}
        """), "t.yaml")
    view = RequestView.from_url("http://x.example/p")
    d = decide(r, view)
    assert render_decision(r, d, view)[-1] == "limits    timeout 2s, retries 3 on 5xx, reset"
    assert decision_data(r, d, view)["retry_on"] == ["5xx", "reset"]
    view = RequestView.from_url("http://x.example/p", headers=[("X-Variant", "canary")])
    d = decide(r, view)
    assert render_decision(r, d, view)[-1] == "limits    failover: false (answers 502/503 instead of failing over)"
    assert decision_data(r, d, view)["failover"] is False and "retry_on" not in decision_data(r, d, view)
