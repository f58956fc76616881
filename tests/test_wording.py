"""What a decision says, in the words issue 13 (item 7) asked for.

- log and explain lines keep a non-default port (and bracket an IPv6 host);
- `condroute explain`: a route that does not own the request is "no match" (not "passed"); an
  X-Forwarded-For ignored because the peer is not a trusted proxy says so; a false CEL policy that is
  a top-level && chain names its first false clause (computed at explain time only); `--json` keeps
  its shape (fields added, none renamed);
- a passthrough request whose connection fails (a name that does not resolve) leaves passive health
  alone and logs no cool-down; an upstream's failed connection still does.
"""
from __future__ import annotations

import http.client as httpclient
import json
import logging
import textwrap
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow

from condroute import render
from condroute.cel import clauses
from condroute.cli.main import main
from condroute.engine import decide
from condroute.explain import build_request
from condroute.mitm.addon import ConditionalRouting
from condroute.request import RequestView
from condroute.rules import load_rules_text

RULES = """\
    version: 1
    settings: {trusted_proxies: [10.0.0.0/8]}
    upstreams:
      admin: http://127.0.0.1:9001
    routes:
      - name: cart
        match: {host: shop.example, path: /cart}
        backends:
          - {name: only, upstream: admin}
      - name: api
        match:
          path: /api/*
          cel: 'req_method == "GET" && "X-Api" in req_headers'
        backends:
          - name: admins
            when: {cel: 'req_method == "GET" && req_headers["X-Role"][0] == "admin" && req_path.startsWith("/api")'}
            upstream: admin
          - name: both
            when: {all: [{header: {X-A: "1"}}, {cel: 'req_path == "/api/x" && req_method == "POST"'}]}
            upstream: admin
          - name: plain
            when: {cel: 'req_method == "PUT"'}
            upstream: admin
          - {name: fb, fallback: true, upstream: admin}
    """


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    return p


def explain(capsys, *argv: str) -> list[str]:
    assert main(["explain", *map(str, argv)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out.splitlines()


# -- the port --------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, want", [
    ("http://127.0.0.1:9002/direct", "GET http://127.0.0.1:9002/direct"),
    ("http://127.0.0.1:80/direct", "GET http://127.0.0.1/direct"),
    ("https://shop.example:443/a?access_token=s3cr3t&x=1", "GET https://shop.example/a?access_token=<redacted>&x=1"),
    ("https://shop.example:80/a", "GET https://shop.example:80/a"),
    ("http://[::1]:8080/a", "GET http://[::1]:8080/a"),
    ("http://[::1]/a", "GET http://[::1]/a"),
])
def test_describe_keeps_a_non_default_port(url, want):
    assert build_request(url).describe() == want


def test_reverse_mode_describes_the_port_the_client_asked_for():
    r = RequestView.from_url("http://shop.example:9000/x")   # the reverse target's port
    r.__dict__["asked_port"] = 8080                           # the port of the Host header
    assert r.describe() == "GET http://shop.example:8080/x"


def test_explain_and_the_log_line_keep_the_port(capsys, rules_path, caplog):
    assert explain(capsys, rules_path, "http://127.0.0.1:9002/direct")[0] == "request   GET http://127.0.0.1:9002/direct"
    caplog.set_level(logging.INFO)
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=str(rules_path), condroute_log="verbose")
        for url in ("http://127.0.0.1:9002/direct", "http://shop.example:8080/cart"):
            req = http.Request.make("GET", url)
            req.headers["Host"] = url.split("/")[2]
            req.authority = ""
            addon.requestheaders(tflow.tflow(req=req))
    logged = [r.getMessage() for r in caplog.records]
    assert "condroute: GET http://127.0.0.1:9002/direct -> no route, passthrough" in logged
    assert any(m.startswith("condroute: GET http://shop.example:8080/cart -> cart/only -> admin") for m in logged)


# -- explain's words -------------------------------------------------------------------------------
def test_a_route_that_does_not_own_the_request_is_no_match(capsys, rules_path):
    lines = explain(capsys, rules_path, "http://other.example/x")
    assert lines[1] == "no match  cart: host 'other.example' is not shop.example"
    assert not any(line.startswith("passed") for line in lines)


@pytest.mark.parametrize("args, want", [
    (["--client-ip", "127.0.0.1"],
     "client    127.0.0.1 (X-Forwarded-For ignored: 127.0.0.1 is not a trusted proxy)"),
    (["--client-ip", "10.0.0.1"], "client    1.2.3.4 (from X-Forwarded-For: the peer 10.0.0.1 is a trusted proxy)"),
    ([], "client    unknown: X-Forwarded-For ignored: the peer address is unknown (give the proxy's peer with "
         "--client-ip)"),
])
def test_explain_says_how_the_client_address_was_found(capsys, rules_path, args, want):
    lines = explain(capsys, rules_path, "http://other.example/x", "-H", "X-Forwarded-For: 1.2.3.4", *args)
    assert lines[1] == want
    # without forwarding headers there is nothing to say
    assert not any(line.startswith("client") for line in explain(capsys, rules_path, "http://other.example/x", *args))


def test_an_empty_trusted_proxies_is_named():
    r = load_rules_text("version: 1\nroutes: []\n", "t.yaml")
    req = build_request("http://h/x", headers=[("X-Real-IP", "1.2.3.4")], client_ip="127.0.0.1")
    assert render.client_text(r, req) == ("127.0.0.1 (X-Real-IP ignored: 127.0.0.1 is not a trusted proxy; "
                                          "settings.trusted_proxies is empty)")


def test_explain_names_the_first_false_clause(capsys, rules_path):
    lines = explain(capsys, rules_path, "http://x/api/y", "-H", "X-Api: 1", "-H", "X-Role: user", "-H", "X-A: 1")
    assert lines[1:3] == ["no match  cart: host 'x' is not shop.example", "route     api (line 10)"]
    assert lines[3:7] == [
        'backend   ✗ admins  cel `req_method == "GET" && req_headers["X-Role"][0] == "admin" && '
        'req_path.startsWi…` is false at clause 2 of 3: req_headers["X-Role"][0] == "admin"',
        'backend   ✗ both    cel `req_path == "/api/x" && req_method == "POST"` is false at clause 1 of 2: '
        'req_path == "/api/x"',
        'backend   ✗ plain   cel `req_method == "PUT"` is false',       # not a chain: nothing to add
        "backend   ✓ fb      fallback: no other backend held",
    ]
    # a clause that cannot be evaluated (no X-Role header) is named as such
    lines = explain(capsys, rules_path, "http://x/api/y", "-H", "X-Api: 1")
    assert lines[3].endswith('could not be evaluated: no such key "X-Role" (clause 2 of 3: req_headers["X-Role"][0] == "admin")')
    # a route's match
    lines = explain(capsys, rules_path, "http://x/api/y")
    assert lines[2] == ('no match  api: cel `req_method == "GET" && "X-Api" in req_headers` is false at clause 2 of 2: '
                        '"X-Api" in req_headers')


OLD_KEYS = {"request", "outcome", "route", "backend", "upstream", "url", "path", "status", "skipped", "attempts",
            "final_url", "host_header", "not_tried", "routes_passed"}


def test_json_keeps_its_shape_and_adds_the_clause_and_the_client(capsys, rules_path):
    out = "\n".join(explain(capsys, rules_path, "http://x/api/y", "-H", "X-Api: 1", "-H", "X-Role: user",
                            "-H", "X-Forwarded-For: 1.2.3.4", "--client-ip", "127.0.0.1", "--json"))
    data = json.loads(out)
    assert OLD_KEYS - {"not_tried", "routes_passed"} <= set(data)
    assert set(data) - OLD_KEYS == {"client"}
    assert data["client"] == {"ip": "127.0.0.1", "how": "X-Forwarded-For ignored: 127.0.0.1 is not a trusted proxy"}
    admins = data["attempts"][0]
    assert set(admins) == {"backend", "held", "reason", "fallback", "clause"}
    assert admins["reason"].endswith("is false")          # the engine's reason, as logged and in the metadata
    assert admins["clause"] == {"index": 2, "count": 3, "text": 'req_headers["X-Role"][0] == "admin"', "false": True,
                                "reason": 'cel `req_headers["X-Role"][0] == "admin"` is false'}
    assert "clause" not in data["attempts"][2]            # a single clause: nothing to add
    out = "\n".join(explain(capsys, rules_path, "http://x/api/y", "--json"))
    passed = json.loads(out)["routes_passed"]
    assert [set(p) for p in passed] == [{"route", "reason"}, {"route", "reason", "clause"}]
    assert passed[1]["clause"]["index"] == 2


def test_clauses_of_a_top_level_chain_only():
    assert clauses.top_level_clauses('a == 1 && (b || c) &&\n  d.startsWith("x")') == \
        ["a == 1", "(b || c)", 'd.startsWith("x")']
    assert clauses.top_level_clauses("a || b && c") == []
    assert clauses.top_level_clauses("(a && b)") == []
    assert clauses.top_level_clauses("a &&") == []               # does not parse


def test_the_clauses_are_evaluated_at_explain_time_only(rules_path):
    rules = load_rules_text(rules_path.read_text(), str(rules_path))
    policy = rules.routes[1].backends[0].when.policy
    req = build_request("http://x/api/y", headers=[("X-Api", "1"), ("X-Role", "user")])
    decide(rules, req)                                           # the per-request path
    assert "_clauses" not in policy.__dict__
    d = decide(rules, req, explain=True)
    assert "_clauses" not in policy.__dict__                     # deciding, even with explain, does not split
    render.render_decision(rules, d, req)
    assert [t for t, _ in policy.__dict__["_clauses"]] == ['req_method == "GET"', 'req_headers["X-Role"][0] == "admin"',
                                                           'req_path.startsWith("/api")']


# -- no health noise for traffic condroute did not route -------------------------------------------
def connect_error(host: str, port: int) -> ServerConnectionHookData:
    srv = tflow.tserver_conn()
    srv.address = (host, port)
    srv.error = "Name or service not known"
    srv.timestamp_start = 1.0
    return ServerConnectionHookData(server=srv, client=tflow.tclient_conn())


async def test_a_passthrough_that_cannot_connect_marks_nothing_down(rules_path, caplog):
    caplog.set_level(logging.INFO)
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=str(rules_path))
        req = http.Request.make("GET", "http://nothing.invalid/x")
        req.headers["Host"] = "nothing.invalid"
        req.authority = ""
        f = tflow.tflow(req=req)
        await tctx.cycle(addon, f)
        assert "condroute" not in f.metadata                     # not routed
        addon.server_connect_error(connect_error("nothing.invalid", 80))
        assert addon.upstreams.health.failures == {}
        assert not [r for r in caplog.records if "passing it over" in r.getMessage()]
        # an upstream's address still is (the same event, for 127.0.0.1:9001)
        addon.server_connect_error(connect_error("127.0.0.1", 9001))
        assert "Name or service not known" in addon.upstreams.health.unavailable("127.0.0.1", 9001)
        assert [r.getMessage() for r in caplog.records if "passing it over" in r.getMessage()] == \
            ["condroute: upstream 127.0.0.1:9001 failed: Name or service not known; passing it over for 5s"]


def test_a_passthrough_to_a_name_that_does_not_resolve_logs_no_cooldown(proxy, rules_file):
    p = rules_file(RULES)
    px = proxy(p, "--set", "condroute_log=verbose")
    c = httpclient.HTTPConnection("127.0.0.1", px.port, timeout=30)
    c.request("GET", "http://nothing.invalid/x")
    r = c.getresponse()
    r.read()
    assert r.status == 502                                       # mitmproxy's own answer
    px.wait_for(r"GET http://nothing\.invalid/x -> no route, passthrough")
    at = px.wait_for(r"error establishing server connection").string
    px.wait_for(r"client disconnect", start=px.lines.index(at))   # after every hook of the failed connection
    c.close()
    px.stop()
    out = px.output()
    assert "cool" not in out and "passing it over" not in out and "condroute: upstream" not in out, out
