"""render: every text a decision is shown as, from real decisions of the engine.

Each value here is what the addon logs, writes in flow.comment, sends as X-Condroute or in its
400/502 answers, and what `condroute explain` prints: byte for byte."""
from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest

from condroute import render
from condroute.engine import Decision, decide
from condroute.explain import build_request
from condroute.request import RequestView
from condroute.rules import load_rules_text

RULES = load_rules_text(textwrap.dedent("""\
    version: 1
    settings: {on_no_match: error}
    upstreams:
      canary: http://127.0.0.1:9002
      stable: https://stable.internal:8443/base
    routes:
      - name: api
        match: {path: /api/*}
        backends:
          - name: mock
            respond: {status: 418, body: "short and stout", headers: {X-Tea: "1"}}
      - name: checkout
        match: {path: "/checkout/{id}"}
        backends:
          - name: force-b
            when: {header: {X-Ab-Test: B}}
            upstream: canary
            path: "/v2/checkout/{id}"
            set_headers: {X-Variant: b}
            remove_headers: [X-Ab-Test]
            timeout: 2.5
            retries: 1
          - name: default
            upstream: stable
      - name: strict
        match: {path: /strict}
        backends:
          - name: only-b
            when: {cookie: {ab: B}}
            upstream: canary
    """), "t.yaml")


def decided(url: str, headers=(), explain: bool = True) -> tuple[Decision, RequestView]:
    req = RequestView.from_url(url, headers=list(headers), peer="127.0.0.1")
    return decide(RULES, req, explain=explain), req


@pytest.fixture
def utf8_stdout(monkeypatch):
    class Out:
        encoding = "utf-8"
    monkeypatch.setattr("sys.stdout", Out())


def test_routed_with_everything_set(utf8_stdout):
    d, req = decided("http://shop.example/checkout/42?x=1", [("X-Ab-Test", "B")])
    url = "http://127.0.0.1:9002/v2/checkout/42?x=1"
    assert render.header_value(d) == "checkout/force-b -> canary"
    assert render.outcome_text(d) == f"checkout/force-b -> canary ({url})"
    assert render.summary(d) == f"GET http://shop.example/checkout/42?x=1 -> checkout/force-b -> canary ({url})"
    # the decision first; then where it went (no query string), nothing skipped
    assert render.comment(d) == ('shop.example/checkout/42 → checkout/force-b [header X-Ab-Test "B"]'
                                 " | to http://127.0.0.1:9002/v2/checkout/42 (upstream canary)")
    assert render.to_dict(d) == {
        "outcome": "routed", "route": "checkout", "backend": "force-b", "upstream": "canary", "url": url,
        "path": "/v2/checkout/42?x=1", "status": None, "skipped": [],
        "attempts": [{"backend": "force-b", "held": True, "reason": 'when holds: header X-Ab-Test "B"',
                      "fallback": False}],
        "timeout": 2.5, "retries": 1, "set_headers": {"X-Variant": "b"}, "remove_headers": ["X-Ab-Test"],
        "routes_passed": [{"route": "api", "reason": "path '/checkout/42' does not match /api/*"}]}
    data = render.decision_data(RULES, d, req)
    assert list(data)[0] == "request" and data["request"] == "GET http://shop.example/checkout/42?x=1"
    assert {k: data[k] for k in ("final_url", "host_header", "not_tried")} == \
        {"final_url": url, "host_header": "127.0.0.1:9002", "not_tried": ["default"]}
    assert render.render_decision(RULES, d, req) == [
        "request   GET http://shop.example/checkout/42?x=1",
        "no match  api: path '/checkout/42' does not match /api/*",
        "route     checkout (line 12)",
        'backend   ✓ force-b  when holds: header X-Ab-Test "B"',
        "backend   · default  not tried: an earlier backend was selected",
        "upstream  canary (http://127.0.0.1:9002)",
        f"url       {url}",
        "set       Host: 127.0.0.1:9002",
        "set       X-Variant: b",
        "removed   X-Ab-Test",
        "limits    timeout 2.5s, retries 1"]


def test_a_skipped_backend_is_in_the_comment_the_json_and_the_table(utf8_stdout):
    d, req = decided("http://shop.example/checkout/42", [("X-Ab-Test", "A")])
    why = 'header X-Ab-Test is "A", wanted "B"'
    assert render.comment(d) == ("shop.example/checkout/42 → checkout/default [unconditional]"
                                 " | to https://stable.internal:8443/base/checkout/42 (upstream stable)"
                                 f" | skipped force-b: {why}")
    assert render.to_dict(d)["skipped"] == [{"backend": "force-b", "reason": why}]
    assert render.render_decision(RULES, d, req)[3:6] == [
        f"backend   ✗ force-b  {why}",
        "backend   ✓ default  unconditional",
        "upstream  stable (https://stable.internal:8443/base)"]


def test_no_backend_holds_answers_502_with_the_reasons():
    d, req = decided("http://shop.example/strict")
    assert render.header_value(d) == "strict -> error 502"
    assert render.summary(d) == "GET http://shop.example/strict -> strict: no backend holds, answered 502"
    assert render.error_body(d) == ("condroute: no backend of route 'strict' holds for GET http://shop.example/strict\n"
                                    '  only-b: cookie ab is missing, wanted "B"\n')
    assert render.decision_data(RULES, d, req)["final_url"] is None
    assert render.render_decision(RULES, d, req)[-1] == \
        "result    no backend holds: answered 502 (on_no_match: error)"


def test_respond_and_the_ascii_marks(monkeypatch):
    class Out:
        encoding = "ascii"
    monkeypatch.setattr("sys.stdout", Out())
    d, req = decided("http://shop.example/api/1")
    assert render.header_value(d) == render.outcome_text(d) == "api/mock -> respond 418"
    assert render.render_decision(RULES, d, req) == [
        "request   GET http://shop.example/api/1",
        "route     api (line 7)",
        "backend   + mock  unconditional",
        'respond   418 "short and stout"',
        "header    X-Tea: 1"]
    assert render.decision_data(RULES, d, req)["respond"] == \
        {"status": 418, "body": "short and stout", "headers": {"X-Tea": "1"}}


def test_no_route_is_passthrough():
    d, req = decided("http://shop.example:8080/other?q=1")
    assert (render.header_value(d), render.comment(d)) == \
        ("passthrough", "shop.example:8080/other → (no route) | passed through unchanged")
    assert render.final_url(d, req) == "http://shop.example:8080/other?q=1"
    assert render.final_path(d, req) == "/other?q=1"
    assert render.render_decision(RULES, d, req)[-2:] == [
        "route     none: passthrough, the request goes on unchanged",
        "url       http://shop.example:8080/other?q=1"]


def test_a_refused_request_from_the_addon():
    d = Decision("bad_request", req=RequestView.from_url("http://shop.example/"))
    d.status, d.reason = 400, "a bad Host header"
    assert render.header_value(d) == "request -> refused 400"
    assert render.summary(d) == "GET http://shop.example/ -> refused 400: a bad Host header"
    assert render.error_body(d) == "condroute: bad request: a bad Host header\n"
    assert render.to_dict(d)["reason"] == "a bad Host header"


def test_the_decision_methods_are_render():
    d, _ = decided("http://shop.example/checkout/42", [("X-Ab-Test", "A")])
    assert (d.header_value(), d.outcome_text(), d.summary(), d.comment(), d.error_body(), d.to_dict()) == \
        (render.header_value(d), render.outcome_text(d), render.summary(d), render.comment(d),
         render.error_body(d), render.to_dict(d))
    assert json.loads(json.dumps(d.to_dict())) == d.to_dict()


def test_routes_passed_is_not_shared_between_decisions():
    quiet, _ = decided("http://shop.example/strict", explain=False)
    loud, _ = decided("http://shop.example/strict")
    assert quiet.routes_passed == () and "routes_passed" not in quiet.to_dict()
    assert [r for r, _ in loud.routes_passed] == ["api", "checkout"]
    assert Decision.routes_passed == ()


def test_the_url_leaves_out_the_schemes_default_port():
    r = load_rules_text("version: 1\nroutes:\n  - name: r\n    backends:\n      - {name: b, path: /x}\n", "t.yaml")
    urls = {u: decide(r, build_request(u)).url for u in
            ("wss://h/a", "https://h:443/a", "http://[::1]:8080/a", "ws://h:443/a")}
    assert urls == {"wss://h/a": "wss://h/x", "https://h:443/a": "https://h/x",
                    "http://[::1]:8080/a": "http://[::1]:8080/x", "ws://h:443/a": "ws://h:443/x"}


def test_render_does_not_import_the_engine_at_run_time():
    # below the engine: its types for type checking only; at run time the CEL clause finder and the
    # condition classes (what only `condroute explain` says: which clause of a policy failed)
    tree = ast.parse(Path(render.__file__).read_text())
    runtime = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [n.module for n in runtime if isinstance(n, ast.ImportFrom)] == \
        ["__future__", "typing", "cel.clauses", "cel.policy", "conditions.base", "httptext", "localfiles", "redact"]
