"""KrakenD configuration import (no network): the hand-written fixtures after KrakenD's
conditional-routing documentation load and route as documented; the mapping rules, warnings and
errors, each with its line."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from condroute.engine import decide
from condroute.errors import RulesError
from condroute.load.krakend import parse_duration
from condroute.request import RequestView
from condroute.rules import load_rules, load_rules_text
from condroute.load.yamlpos import Y

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "krakend"
A, B, C = "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"


def fixture(name: str):
    return load_rules(str(FIXTURES / name))


def krakend(cfg: dict | str, name: str = "krakend.json"):
    text = cfg if isinstance(cfg, str) else json.dumps(cfg, indent=2)
    return load_rules_text(text, name)


def errors_of(cfg: dict | str, name: str = "krakend.json") -> list[str]:
    with pytest.raises(RulesError) as e:
        krakend(cfg, name)
    return [str(p) for p in e.value.problems]


def warnings_of(rules) -> list[str]:
    return [str(w) for w in rules.warnings]


def route(rules, url: str, headers=(), method: str = "GET", peer: str = "127.0.0.1", generator: bool = False):
    h = list(headers.items()) if isinstance(headers, dict) else list(headers)
    rq = RequestView.from_url(url, method=method, headers=h, peer=peer)
    if generator:    # as the addon hands them over: a one-shot iterator of (name, value)
        rq.headers = (x for x in h)
    d = decide(rules, rq)
    return d.backend, d.url


def cfg(*backends, input_headers=None, endpoint="/e", **top) -> dict:
    ep = {"endpoint": endpoint, "backend": list(backends)}
    if input_headers is not None:
        ep["input_headers"] = input_headers
    return {"version": 3, "host": [C], "endpoints": [ep], **top}


def cond(strategy: str, **kw) -> dict:
    return {"backend/conditional": {"strategy": strategy, **kw}}


# -- the documented configurations ---------------------------------------------------------------------
def test_ab_test_by_header_routes_as_documented():
    r = fixture("ab-test-header.json")
    assert (r.source_format, r.settings.on_no_match, r.summary()) == \
        ("krakend", "error", "1 route, 2 backends, 2 upstreams")
    assert warnings_of(r) == []
    assert route(r, "http://gw/ab-test", {"X-Test": "TestA"}) == ("backend-1", A + "/option-a")
    assert route(r, "http://gw/ab-test?x=1", {"x-test": "TestB"}) == ("backend-2", B + "/option-b?x=1")
    assert route(r, "http://gw/ab-test", {"X-Test": "testb"}) == (None, None)        # values are case-sensitive
    d = decide(r, RequestView.from_url("http://gw/ab-test"))
    assert (d.outcome, d.status) == ("no_match", 502)
    assert "backend-1: header X-Test is missing" in d.error_body()
    assert route(r, "http://gw/ab-test", {"X-Test": "TestA"}, method="POST") == (None, None)   # GET endpoint
    assert decide(r, RequestView.from_url("http://gw/other")).outcome == "passthrough"


def test_cookie_policy_routes_as_documented():
    r = fixture("cookie-policy.json")
    assert route(r, "http://gw/cookie-test", {"Cookie": "ab-test-xyz=1"}) == ("backend-1", A + "/AB-option/1")
    assert route(r, "http://gw/cookie-test", {"Cookie": "x=y; ab-test-xyz=2"}) == ("backend-2", B + "/AB-option/2")
    assert route(r, "http://gw/cookie-test") == ("backend-3", C + "/AB-option/default")      # the fallback
    assert route(r, "http://gw/cookie-test", {"Cookie": "ab-test-xyz=1"}, generator=True) == \
        ("backend-1", A + "/AB-option/1")
    # the endpoint without "Cookie" in input_headers: the policy never sees it; a warning with its line
    assert route(r, "http://gw/cookie-test-undeclared", {"Cookie": "ab-test-xyz=1"}) == \
        ("backend-2", C + "/AB-option/default")
    d = decide(r, RequestView.from_url("http://gw/cookie-test-undeclared", headers=[("Cookie", "ab-test-xyz=1")]))
    assert d.skipped[0].reason.endswith("(Cookie was sent but is not in the endpoint's input_headers)")
    w = warnings_of(r)
    assert len(w) == 1 and w[0].startswith(f"{FIXTURES / 'cookie-policy.json'}:56:24: endpoint GET "
                                           "/cookie-test-undeclared: backend-1: the policy reads the header Cookie")


def test_fallback_routes_as_documented():
    r = fixture("fallback.json")
    assert warnings_of(r) == []
    assert route(r, "http://gw/v1/users/42", {"X-Tier": "gold"}) == ("backend-1", A + "/premium/users/42")
    assert route(r, "http://gw/v1/users/42", {"X-Beta": "yes"}) == ("backend-2", B + "/beta/users/42")
    assert route(r, "http://gw/v1/users/42", {"X-Beta": "yes"}, generator=True) == ("backend-2", B + "/beta/users/42")
    assert route(r, "http://gw/v1/users/0", {"X-Beta": "yes"}) == ("backend-3", C + "/users/0")   # req_params.Id
    assert route(r, "http://gw/v1/users/42", {"X-Tier": "silver"}) == ("backend-3", C + "/users/42")
    assert route(r, "http://gw/v1/users/42/x") == (None, None)
    b = r.routes[0].backends
    assert [x.fallback for x in b] == [False, False, True] and r.routes[0].fallback is b[2]
    assert {x.timeout for x in b} == {3.0}                      # the service-level "timeout": "3s"


def test_geographic_routing_routes_as_documented(tmp_path):
    from test_traffic_e2e import build_city_db
    build_city_db(tmp_path / "GeoIP2-City.mmdb")
    (tmp_path / "geo.json").write_text((FIXTURES / "geo-routing.json").read_text())
    r = load_rules(str(tmp_path / "geo.json"))
    assert r.settings.geoip is not None and [str(n) for n in r.settings.trusted_proxies] == ["127.0.0.1/32"]
    assert warnings_of(r) == []

    def via(ip, peer="127.0.0.1"):
        return route(r, "http://gw/catalog/b1", {"X-Forwarded-For": ip}, peer=peer)
    assert via("89.160.20.112") == ("backend-1", A + "/eu/catalog/b1")
    assert via("216.160.83.56") == ("backend-2", B + "/us/catalog/b1")
    assert via("81.2.69.160") == ("backend-3", C + "/global/catalog/b1")
    assert via("216.160.83.56", peer="10.9.9.9") == ("backend-3", C + "/global/catalog/b1")   # untrusted peer
    assert route(r, "http://gw/catalog/b1", peer="216.160.83.56") == ("backend-2", B + "/us/catalog/b1")


def test_the_fixtures_are_plain_krakend_json():
    for f in FIXTURES.glob("*.json"):
        cfg_ = json.loads(f.read_text())
        assert cfg_["version"] == 3 and cfg_["endpoints"]
        for ep in cfg_["endpoints"]:
            for b in ep["backend"]:
                assert set(b) <= {"url_pattern", "host", "encoding", "extra_config", "method"}


def test_validate_accepts_the_fixtures():
    exe = Path(sys.executable).with_name("condroute")
    out = subprocess.run([str(exe), "validate", str(FIXTURES / "ab-test-header.json")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# -- mapping rules ----------------------------------------------------------------------------------------
def test_hosts_default_and_sanitise_and_first_of_several_is_used():
    r = krakend(cfg({"url_pattern": "/a"}, {"url_pattern": "/b", "host": ["127.0.0.1:9001", B]},
                    {"url_pattern": "/c", "host": ["https://api.example/base"]}))
    b = r.routes[0].backends
    assert [x.upstream.url for x in b] == [C, A, "https://api.example/base"]
    assert (b[2].upstream.scheme, b[2].upstream.port, b[2].upstream.base_path) == ("https", 443, "/base")
    w = warnings_of(r)
    assert any("backend-2: KrakenD balances load over 2 hosts; condroute sends to the first, http://127.0.0.1:9001"
               in x for x in w)
    assert any("KrakenD calls backend-1 and backend-2 and backend-3 on every request" in x for x in w)


def test_a_backend_without_any_host_is_an_error_with_its_line():
    text = json.dumps({"version": 3, "endpoints": [{"endpoint": "/e", "backend": [{"url_pattern": "/x"}]}]}, indent=2)
    (e,) = errors_of(text)
    assert e.startswith("krakend.json:7:9: endpoint GET /e: backend-1 has no `host`")


def test_url_pattern_takes_the_endpoint_parameters():
    r = krakend(cfg({"url_pattern": "/users/{id}/orders/{order}"}, endpoint="/v2/{id}/o/{order}"))
    assert route(r, "http://gw/v2/7/o/99?full=1") == ("backend-1", C + "/users/7/orders/99?full=1")
    e = errors_of(cfg({"url_pattern": "/users/{user}"}, endpoint="/v2/{id}"))
    assert any("unknown placeholder {user}" in x for x in e)
    # a dynamic routing placeholder: the endpoint is skipped, with a located warning (issue 14)
    r = krakend(cfg({"url_pattern": "/{input_headers.X-Tenant}/foo"}))
    assert any("skipped: backend-1's url_pattern '/{input_headers.X-Tenant}/foo' takes the request header "
               "X-Tenant" in x for x in warnings_of(r))


def test_wildcard_endpoint_and_methods():
    r = krakend({"version": 3, "host": [A], "endpoints": [
        {"endpoint": "/files/*", "method": "post", "backend": [{"url_pattern": "/store"}]},
        {"endpoint": "/files/*", "backend": [{"url_pattern": "/read"}]}]})
    assert [x.name for x in r.routes] == ["POST /files/*", "GET /files/*"]
    assert route(r, "http://gw/files/a/b", method="POST") == ("backend-1", A + "/store")
    assert route(r, "http://gw/files/a/b") == ("backend-1", A + "/read")
    e = errors_of({"version": 3, "host": [A], "endpoints": [
        {"endpoint": "/x", "backend": [{"url_pattern": "/a"}]},
        {"endpoint": "/x", "backend": [{"url_pattern": "/b"}]}]})
    assert any("endpoint GET /x is declared twice" in x for x in e)
    e = errors_of(cfg({"url_pattern": "/a"}) | {"endpoints": [{"endpoint": "/x", "method": "FETCH",
                                                               "backend": [{"url_pattern": "/a"}]}]})
    assert any("method must be an HTTP method" in x for x in e)


def test_header_strategy_visibility_follows_input_headers():
    b1 = {"url_pattern": "/1", "host": [A], "extra_config": cond("header", name="X-Test", value="A")}
    b2 = {"url_pattern": "/2", "host": [B], "extra_config": cond("fallback")}
    # declared (any case): holds
    r = krakend(cfg(b1, b2, input_headers=["x-test"]))
    assert warnings_of(r) == []
    assert route(r, "http://gw/e", {"X-TEST": "A"}) == ("backend-1", A + "/1")
    # "*": every header is visible
    assert route(krakend(cfg(b1, b2, input_headers=["*"])), "http://gw/e", {"X-Test": "A"})[0] == "backend-1"
    # undeclared: never holds, and a warning points at the name
    text = json.dumps(cfg(b1, b2, input_headers=["X-Other"]), indent=2)
    r = krakend(text)
    assert route(r, "http://gw/e", {"X-Test": "A"}) == ("backend-2", B + "/2")
    d = decide(r, RequestView.from_url("http://gw/e", headers=[("X-Test", "A")]))
    assert "not in the endpoint's input_headers" in d.skipped[0].reason
    (w,) = warnings_of(r)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if '"name": "X-Test"' in s)
    assert w.startswith(f"krakend.json:{line}:") and "checks header X-Test which is not in the endpoint's " \
                                                        "input_headers: KrakenD never passes it on" in w
    # no input_headers at all: nothing is visible
    assert route(krakend(cfg(b1, b2)), "http://gw/e", {"X-Test": "A"})[0] == "backend-2"


def test_policy_sees_only_declared_headers_and_keeps_the_client_ip():
    b1 = {"url_pattern": "/1", "host": [A],
          "extra_config": cond("policy", value="hasHeader('X-A') && ipInCidr(client_ip, '10.0.0.0/8')")}
    b2 = {"url_pattern": "/2", "extra_config": cond("fallback")}
    top = {"extra_config": {"router": {"forwarded_by_client_ip": True, "trusted_proxies": ["127.0.0.1"]}}}
    r = krakend(cfg(b1, b2, input_headers=["X-A"], **top))
    assert warnings_of(r) == []
    # X-Forwarded-For is not declared, but the client IP is found all the same (KrakenD's router does it)
    assert route(r, "http://gw/e", {"X-A": "1", "X-Forwarded-For": "10.1.2.3"})[0] == "backend-1"
    assert route(r, "http://gw/e", {"X-A": "1", "X-Forwarded-For": "10.1.2.3"}, generator=True)[0] == "backend-1"
    assert route(r, "http://gw/e", {"X-A": "1", "X-Forwarded-For": "192.0.2.1"})[0] == "backend-2"
    r = krakend(cfg(b1, b2, input_headers=["X-B"], **top))
    assert any("the policy reads the header X-A, which is not in the endpoint's input_headers" in w
               for w in warnings_of(r))
    assert route(r, "http://gw/e", {"X-A": "1", "X-Forwarded-For": "10.1.2.3"})[0] == "backend-2"


def test_unconditional_backends_always_hold_and_merging_is_a_warning():
    plain = {"url_pattern": "/p", "host": [A]}
    hb = {"url_pattern": "/h", "host": [B], "extra_config": cond("header", name="X-T", value="1")}
    r = krakend(cfg(hb, plain, input_headers=["X-T"]))
    assert route(r, "http://gw/e", {"X-T": "1"})[0] == "backend-1"
    assert route(r, "http://gw/e")[0] == "backend-2"            # unconditional: always holds
    (w,) = warnings_of(r)
    assert ("endpoint GET /e: KrakenD calls backend-2 on every request (plus backend-1 when it holds) and merges "
            "the responses; condroute routes each request to one upstream: the first backend that holds "
            "(in file order)") in w
    r = krakend(cfg(plain, hb, input_headers=["X-T"], **{}))
    assert "(always backend-1)" in warnings_of(r)[0]
    # a single unconditional backend, or conditionals + fallback only: no warning
    assert warnings_of(krakend(cfg(plain))) == []
    fb = {"url_pattern": "/f", "extra_config": cond("fallback")}
    assert warnings_of(krakend(cfg(hb, fb, input_headers=["X-T"]))) == []
    # two conditionals on the very same header value: both would run
    hb2 = {"url_pattern": "/h2", "host": [A], "extra_config": cond("header", name="x-t", value="1")}
    w = warnings_of(krakend(cfg(hb, hb2, input_headers=["X-T"])))
    assert any("backend-2 checks the same header value as backend-1: KrakenD calls both" in x for x in w)
    # a sequential proxy says so
    seq = cfg(plain, hb, input_headers=["X-T"])
    seq["endpoints"][0]["extra_config"] = {"proxy": {"sequential": True}}
    assert "on every request (plus backend-2 when it holds) in sequence" in warnings_of(krakend(seq))[0]


def test_conditional_errors_are_located():
    def err(c):
        return errors_of(json.dumps(cfg({"url_pattern": "/a", "extra_config": {"backend/conditional": c}},
                                        input_headers=["X"]), indent=2))
    assert any("strategy must be header, policy or fallback, not a string ('cookie')" in e
               for e in err({"strategy": "cookie"}))
    assert any("needs `strategy`" in e for e in err({"name": "X"}))
    assert any("strategy header needs `name`" in e for e in err({"strategy": "header", "value": "1"}))
    assert any("strategy header needs `value`" in e for e in err({"strategy": "header", "name": "X"}))
    assert any("unknown key 'when' in backend/conditional" in e for e in err({"strategy": "fallback", "when": 1}))
    assert any("cel" in e.lower() for e in err({"strategy": "policy", "value": "hasHeader("}))
    # comment keys are fine
    krakend(cfg({"url_pattern": "/a", "extra_config": {"backend/conditional": {"strategy": "fallback",
                                                                                "@comment": "x"}}}))
    two = cfg({"url_pattern": "/a", "extra_config": cond("fallback")},
              {"url_pattern": "/b", "extra_config": cond("fallback")})
    assert any("only one backend may use strategy fallback (backend-1 already does)" in e for e in errors_of(two))


def test_warnings_for_what_condroute_does_differently():
    r = krakend(cfg({"url_pattern": "/a", "method": "POST", "sd": "dns"}))
    w = " | ".join(warnings_of(r))
    assert "KrakenD would send POST; condroute forwards the client's method (GET)" in w
    assert "service discovery 'dns' is not supported" in w
    top = {"extra_config": {"router": {"forwarded_by_client_ip": True, "trusted_proxies": ["10.0.0.0/8"],
                                       "remote_ip_headers": ["CF-Connecting-IP"]}}}
    assert any("not CF-Connecting-IP" in x for x in warnings_of(krakend(cfg({"url_pattern": "/a"}, **top))))


def test_durations():
    def secs(v):
        class CC:
            problems = []

            def error(self, node, msg):
                self.problems.append(msg)
        cc = CC()
        return parse_duration(Y(v, 1, 1), cc, "timeout"), cc.problems
    assert secs("2s") == (2.0, [])
    assert secs("1m30s") == (90.0, [])
    assert secs("500ms") == (0.5, [])
    assert secs(3) == (3.0, [])
    assert secs("soon")[0] is None and secs("0s")[0] is None and secs("-1s")[0] is None
    r = krakend(cfg({"url_pattern": "/a"}) | {"timeout": "1m"})
    assert r.routes[0].backends[0].timeout == 60.0
    c = cfg({"url_pattern": "/a"}) | {"timeout": "1m"}
    c["endpoints"][0]["timeout"] = "250ms"
    assert krakend(c).routes[0].backends[0].timeout == 0.25
    assert any("timeout must be a duration" in e for e in errors_of(cfg({"url_pattern": "/a"}) | {"timeout": "x"}))


def test_a_yaml_krakend_file_and_a_condroute_file_with_endpoints_key():
    r = krakend(textwrap.dedent(f"""
        version: 3
        host: ["{A}"]
        endpoints:
          - endpoint: /y
            backend:
              - url_pattern: /z
        """), "krakend.yaml")
    assert r.source_format == "krakend" and route(r, "http://gw/y") == ("backend-1", A + "/z")
    e = errors_of({"version": 3, "endpoints": "nope"})
    assert any("endpoints must be a list" in x for x in e)
    e = errors_of({"version": 3, "endpoints": [{"backend": []}]})
    assert any("an endpoint needs `endpoint`" in x for x in e)
