"""CEL policies: the same conformance cases run against every CEL engine (cel-python always,
cel-expr-python when installed), plus load errors, result caching and thread safety."""
from __future__ import annotations

import logging
import threading

import pytest

from condroute.cel import policy as celpolicy
from condroute.cel.engines import available_engines
from condroute.errors import RulesError
from condroute.request import RequestView
from condroute.rules import load_rules, load_rules_text
from cel_support import compile_policy
from test_identity_support import (identity_env, GB_IP, REPRESENTED_IP, SE_IP, UNKNOWN_IP, US_IP, build_geo_db, claims,
                                   forged, hs256)

ENGINES = ["cel-python", "cel-expr-python"]


@pytest.fixture(params=ENGINES)
def engine(request):
    if request.param not in available_engines():
        pytest.skip(f"{request.param} is not installed")
    return request.param


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return identity_env(tmp_path_factory.mktemp("celenv"))


TOKEN = hs256(claims(role="admin", groups=["a", "b"], org={"team": "core"}, level=3,
                     permissions={"can_write_users": False}))
BASE_HEADERS = [("X-Ab-Test", "B"), ("X-Test", "yes"), ("Cookie", "ab-test-xyz=1; uid=42"), ("X-Multi", "1"),
                ("x-multi", "2"), ("Authorization", f"Bearer {TOKEN}")]


def make_req(headers=None, url="http://shop.example/api/items/42?a=1&b=2&b=3", method="GET", peer="127.0.0.1",
             params=None, xff: str | None = None, drop=()):
    hs = [h for h in (BASE_HEADERS if headers is None else headers) if h[0].lower() not in drop]
    if xff:
        hs.append(("X-Forwarded-For", xff))
    r = RequestView.from_url(url, method=method, headers=hs, peer=peer)
    r.params = {"id": "42"} if params is None else params
    return r


def ev(engine, env, text, **req):
    pol, problems = compile_policy(text, engine)
    assert not problems, [p.message for p in problems]
    return pol.evaluate(make_req(**req), env)


# -- conformance: expressions that hold --------------------------------------------------------------
HOLDS = [
    # KrakenD, verbatim
    ("req_headers.containsCookie('ab-test-xyz', '1')", {}),
    ("hasHeader('X-Test')", {}),
    ("geoIP().Country.IsoCode in [\"US\",\"UK\",\"AU\"]", {"xff": US_IP}),
    ("geoIP().RepresentedCountry.IsInEuropeanUnion", {"xff": REPRESENTED_IP}),
    ("'::1' in req_headers['X-Forwarded-For']", {"xff": "::1"}),
    ("req_headers['X-Ab-Test'][0] == 'B'", {}),
    ("'X-Ab-Test' in req_headers", {}),
    ("req_headers['X-Multi'] == ['1', '2']", {}),
    ("req_method == 'GET' && req_path == '/api/items/42'", {}),
    ("req_querystring['b'] == ['2', '3'] && req_querystring.a[0] == '1'", {}),
    ("req_params.id == '42' && req_params.Id == '42'", {}),
    ("timestamp(now) > timestamp('2023-01-01T10:00:20.000-05:00')", {}),
    ("JWT.role in ['admin', 'root'] || JWT.permissions.can_write_users", {}),
    # request.*, client_ip, jwt, now
    ("request.method == 'GET' && request.scheme == 'http' && request.host == 'shop.example' && request.port == 80", {}),
    ("request.path == '/api/items/42' && request.query == 'a=1&b=2&b=3'", {}),
    ("request.headers['x-ab-test'] == 'B' && request.headers['x-multi'] == '1, 2'", {}),
    ("request.cookies.uid == '42' && request.cookies['ab-test-xyz'] == '1'", {}),
    ("'x-test' in request.headers && !('x-nope' in request.headers)", {}),
    ("client_ip == '127.0.0.1'", {}),
    ("client_ip == '89.160.20.112'", {"xff": SE_IP}),
    ("jwt.role == 'admin' && jwt.org.team == 'core' && jwt.level > 2", {}),
    ("'b' in jwt.groups && jwt.groups.exists(g, g == 'a') && size(jwt.groups) == 2", {}),
    ("has(jwt.org.team) && !has(jwt.nope) && has(request.headers.cookie)", {}),
    ("now.getFullYear() >= 2024 && now > timestamp('2020-01-01T00:00:00Z')", {}),
    # helper functions, global and method form
    ("hasHeader('x-ab-test') && getHeader('X-AB-TEST') == 'B' && getHeader('X-Nope') == ''", {}),
    ("hasCookie('uid') && getCookie('uid') == '42' && !hasCookie('nope') && getCookie('nope') == ''", {}),
    ("containsCookie('uid', '42') && !containsCookie('uid', '43')", {}),
    ("req_headers.hasHeader('X-Test') && req_headers.getHeader('x-test') == 'yes'", {}),
    ("req_headers.hasCookie('uid') && req_headers.getCookie('uid') == '42'", {}),
    ("request.headers.containsCookie('uid', '42') && request.headers.hasHeader('X-Test')", {}),
    ("hasQuery('a') && getQuery('b') == '2' && !hasQuery('z') && getQuery('z') == ''", {}),
    ("req_querystring.hasQuery('a') && req_querystring.getQuery('b') == '2'", {}),
    ("ipInCidr(client_ip, '127.0.0.0/8') && !ipInCidr(client_ip, '10.0.0.0/8')", {}),
    ("client_ip.ipInCidr('89.160.0.0/16')", {"xff": SE_IP}),
    ("ipInCidr('::ffff:10.1.2.3', '10.0.0.0/8') && ipInCidr('2001:db8::1', '2001:db8::/32')", {}),
    ("geoIP().country.iso_code == 'SE' && geoIP().country.is_in_european_union", {"xff": SE_IP}),
    ("!geoIP().country.is_in_european_union && geoIP().Country.IsoCode == 'GB'", {"xff": GB_IP}),
    ("geoIP().Continent.Code == 'EU' && geoIP().Country.Names['en'] == 'Sweden'", {"xff": SE_IP}),
    ("!geoIP().RepresentedCountry.IsInEuropeanUnion && geoIP().RepresentedCountry.IsoCode == ''", {"xff": US_IP}),
    ("geoIP().represented_country.type == 'military' && geoIP().RegisteredCountry.IsoCode == 'US'", {"xff": REPRESENTED_IP}),
    # the standard library both engines share
    ("req_path.startsWith('/api') && req_path.endsWith('42') && req_path.contains('items')", {}),
    ("req_path.matches('^/api/items/[0-9]+$') && matches(req_path, '^/api')", {}),
    ("int(req_params.id) == 42 && string(7) == '7' && double('1.5') == 1.5 && uint(3) == 3u", {}),
    ("duration('1h') > duration('30m') && size('abc') == 3 && 'abc'.size() == 3", {}),
    ("[1, 2, 3].all(x, x > 0) && [1, 2, 3].filter(x, x > 1).size() == 2", {}),
    ("[1, 2].map(x, x * 2) == [2, 4] && [1, 2].exists_one(x, x == 2)", {}),
    ("{'a': 1}.a == 1 && {'a': 1}['a'] == 1 && 'a' in {'a': 1}", {}),
    ("req_method == 'GET' ? true : false", {}),
    ("dyn(1) == 1 && type(1) == int && b'ab' == bytes('ab')", {}),
    ("type([]) == list && type({}) == map && type(null) == null_type && type(1u) == uint && type(type(1)) == type", {}),
    ("now.getHours('UTC') >= 0 && now.getFullYear('Europe/Paris') > 2000 && now.getDayOfWeek() >= 0", {}),
    ("timestamp('2024-01-01T00:00:00Z').getMonth() == 0 && duration('1h').getHours() == 1", {}),
    ("req_headers['X-Missing'][0] == 'a' || true", {}),      # an error absorbed by ||
    ("[1, 2].exists(x, x == 2) && !(1 in [2, 3])", {}),
]


@pytest.mark.parametrize("text, req", HOLDS, ids=[h[0][:60] for h in HOLDS])
def test_holds(engine, env, text, req):
    assert ev(engine, env, text, **req) is None


# -- conformance: expressions that do not hold, and why -----------------------------------------------
NOT_HOLDS = [
    ("false", {}, "is false"),
    ("req_headers.containsCookie('ab-test-xyz', '1')", {"headers": [("Cookie", "ab-test-xyz=2")]}, "is false"),
    ("hasHeader('X-Test')", {"drop": ("x-test",)}, "is false"),
    ("geoIP().Country.IsoCode in [\"US\",\"UK\",\"AU\"]", {"xff": SE_IP}, "is false"),
    ("geoIP().Country.IsoCode in [\"US\",\"UK\",\"AU\"]", {"xff": UNKNOWN_IP},
     f"could not be evaluated: geoIP(): client IP {UNKNOWN_IP} is not in the GeoIP database"),
    ("geoIP().Country.IsoCode == 'US'", {}, "could not be evaluated: geoIP(): client IP 127.0.0.1 is not in the GeoIP database"),
    ("JWT.department in ['IT','HR']", {}, 'could not be evaluated: no such key "department"'),
    ("'a'", {}, "gave a string, not true"),
    ("1", {}, "gave an int, not true"),
    ("[true]", {}, "gave a list, not true"),
    ("req_headers['X-Missing'][0] == 'a'", {}, 'could not be evaluated: no such key "X-Missing"'),
    ("req_headers['x-ab-test'][0] == 'B'", {}, 'could not be evaluated: no such key "x-ab-test"'),  # keys are canonical
    ("jwt.nope == 1", {}, 'could not be evaluated: no such key "nope"'),
    ("1 / 0 == 1", {}, "could not be evaluated: division by zero"),
    ("[1][3] == 1", {}, "could not be evaluated: index out of range"),
    ("'a' + 1 == 'a1'", {}, "could not be evaluated: no matching overload"),
    ("int('abc') == 1", {}, "could not be evaluated: bad value for a conversion"),
    ("req_headers['X-Missing'][0] == 'a' && false", {}, "is false"),    # CEL's && is commutative over errors
    ("ipInCidr(req_path, '10.0.0.0/8')", {}, "could not be evaluated: ipInCidr: the first argument is not an IP address"),
]


@pytest.mark.parametrize("text, req, why", NOT_HOLDS, ids=[f"{n[0][:50]}-{i}" for i, n in enumerate(NOT_HOLDS)])
def test_does_not_hold_with_a_reason(engine, env, text, req, why):
    reason = ev(engine, env, text, **req)
    assert reason is not None
    assert reason.startswith(f"cel `{text}` ")
    assert why in reason


def test_a_rejected_token_gives_empty_claims_and_says_why(engine, env):
    bad = forged(claims(role="admin"))
    hs = [("Authorization", f"Bearer {bad}")]
    reason = ev(engine, env, "jwt.role == 'admin'", headers=hs)
    assert reason.endswith('could not be evaluated: no such key "role" (the token was rejected: bad signature)')
    assert ev(engine, env, "size(jwt) == 0", headers=hs) is None
    assert ev(engine, env, "size(jwt) == 0", headers=[]) is None            # no token: empty claims
    assert bad not in reason


def test_request_values_never_appear_in_reasons(engine, env):
    secret = "s3cr3t-cookie-value"
    hs = [("Cookie", f"uid={secret}"), ("X-Api-Key", secret), ("Authorization", f"Bearer {TOKEN}")]
    for text in ("int(getCookie('uid')) == 1", "jwt[getCookie('uid')] == 1", "req_headers['X-Api-Key'][0] == 'x'",
                 "int(req_headers['X-Api-Key'][0]) > 1", "getCookie('uid')", "jwt.role + 1 == 2",
                 "req_headers[req_headers['X-Api-Key'][0]] == 'a'", "timestamp(getCookie('uid')) > now"):
        reason = ev(engine, env, text, headers=hs)
        assert reason is not None
        assert secret not in reason and "admin" not in reason.replace(text, ""), reason
        assert TOKEN not in reason


def test_client_ip_from_x_forwarded_for_only_from_trusted_peers(engine, tmp_path):
    build_geo_db(tmp_path / "geo.mmdb")
    untrusted = load_rules_text("version: 1\nsettings: {trusted_proxies: [10.0.0.0/8], geoip_db: geo.mmdb}\nroutes: []\n",
                                str(tmp_path / "r.yaml"))
    pol, _ = compile_policy("geoIP().Country.IsoCode == 'SE' && client_ip == '89.160.20.112'", engine)
    assert pol.evaluate(make_req(headers=[], xff=SE_IP, peer="10.1.1.1"), untrusted) is None
    reason = pol.evaluate(make_req(headers=[], xff=SE_IP, peer="127.0.0.1"), untrusted)
    assert "geoIP(): client IP 127.0.0.1 is not in the GeoIP database" in reason


# -- load errors ------------------------------------------------------------------------------------
def load_errors(tmp_path, when_yaml: str, settings: str = "") -> list[str]:
    p = tmp_path / "rules.yaml"
    p.write_text("version: 1\n" + settings + "routes:\n  - name: r\n    backends:\n      - name: b\n" + when_yaml
                 + "        respond: {status: 200}\n")
    with pytest.raises(RulesError) as ei:
        load_rules(str(p))
    return [str(x).split("rules.yaml:", 1)[1] for x in ei.value.problems]


@pytest.mark.parametrize("when, expected", [
    ("        when: {cel: req_method == 'GET' &&}\n", "6:43: CEL syntax error: the expression ends too early"),
    ("        when: {cel: \"req_method == 'GET' &&\"}\n", "6:44: CEL syntax error: the expression ends too early"),
    ("        when: {cel: \"req_method == 'GET' && )\"}\n", "6:45: CEL syntax error: unexpected ')'"),
    ("        when: {cel: \"req_method = 'GET'\"}\n", "6:33: CEL syntax error: unexpected character '='"),
    ("        when: {cel: 'fooBar(1)'}\n", "6:22: unknown function 'fooBar'"),
    ("        when: {cel: \"req_path.startswith('/a')\"}\n", "6:31: unknown method 'startswith'; did you mean 'startsWith'?"),
    ("        when: {cel: \"req_headerz['X'] == 'a'\"}\n", "6:22: unknown variable 'req_headerz'; the variables are"),
    ("        when: {cel: \"hasHeader()\"}\n", "6:22: hasHeader() takes 1 argument, not 0"),
    ("        when: {cel: \"req_headers.containsCookie('a')\"}\n", "6:34: containsCookie() takes 2 arguments, not 1"),
    ("        when: {cel: \"request.paht == '/'\"}\n", "6:30: request has no field 'paht'"),
    ("        when: {cel: \"ipInCidr(client_ip, '10.0.0.0/40')\"}\n", "6:42: ipInCidr: '10.0.0.0/40' is not a CIDR"),
    ("        when: {cel: \"has(jwt)\"}\n", "6:26: has() takes a field selection"),
    ("        when: {cel: \"Foo{a: 1} == 1\"}\n", "6:22: message construction (Type{field: ...}) is not supported"),
    ("        when: {cel: \"99999999999999999999 > 1\"}\n", "6:22: integer literal 99999999999999999999 is out of range"),
    ("        when: {cel: \"[1].exists(1, true)\"}\n", "6:33: the first argument of exists() must be a variable name"),
    ("        when: {cel: \"geoIP().Country.IsoCode == 'US'\"}\n", "6:22: geoIP() needs a GeoIP database: set settings.geoip_db"),
    ("        when: {cel: \"jwt.role == 'admin'\"}\n", "6:22: jwt needs settings.jwt"),
    ("        when: {cel: ''}\n", "6:22: cel: the expression is empty"),
    ("        when: {cel: [a]}\n", "6:21: cel must be a CEL expression (a string), not a list"),
    ("        when:\n          cel: |\n            req_method == 'GET' &&\n              nope.x == 1\n",
     "9:15: unknown variable 'nope'"),
    ("        when:\n          cel: >\n            req_method == 'GET' &&\n            nope.x == 1\n",
     "7:16: unknown variable 'nope'; the variables are"),
])
def test_load_errors_are_located(tmp_path, when, expected):
    errs = load_errors(tmp_path, when)
    assert any(e.startswith(expected) for e in errs), errs


def test_an_unknown_variable_in_a_macro_body_and_a_shadowing_variable(tmp_path):
    errs = load_errors(tmp_path, "        when: {cel: \"[1].all(x, y > 0)\"}\n")
    assert errs[0].startswith("6:33: unknown variable 'y'")
    pol, problems = compile_policy("[1, 2].exists(jwt, jwt == 2)", "cel-python")     # a local named like a variable
    assert not problems and pol.variables == ()


def test_every_problem_of_an_expression_is_reported(tmp_path):
    errs = load_errors(tmp_path, "        when: {cel: \"foo(1) && bar == 2 && request.x == 1\"}\n")
    assert [e.split(":")[1] for e in errs] == ["22", "32", "52"]


# -- caching: only the inputs an expression reads, and all of them --------------------------------------
@pytest.mark.parametrize("text, base, same, different", [
    ("req_headers['X-Ab-Test'][0] == 'B'", {}, {"headers": [("X-Ab-Test", "B"), ("X-Other", "1")]},
     {"headers": [("X-Ab-Test", "A")]}),
    ("req_headers.containsCookie('ab-test-xyz', '1')", {}, {"headers": [("Cookie", "ab-test-xyz=1; uid=7")]},
     {"headers": [("Cookie", "ab-test-xyz=2; uid=42")]}),
    ("getQuery('a') == '1'", {}, {"url": "http://shop.example/api/items/42?a=1&c=9"},
     {"url": "http://shop.example/api/items/42?a=2"}),
    ("jwt.role == 'admin'", {}, {"headers": [("Authorization", f"Bearer {hs256(claims(role='admin', n=2))}")]},
     {"headers": [("Authorization", f"Bearer {hs256(claims(role='viewer'))}")]}),
    ("geoIP().Country.IsoCode == 'SE'", {"xff": SE_IP}, {"xff": SE_IP, "headers": [("X-Other", "1")]},
     {"xff": GB_IP}),
    ("req_path.startsWith('/api')", {}, {"url": "http://other.example/api/items/42?z=1"}, {"url": "http://shop.example/web"}),
    ("req_method == 'GET'", {}, {"method": "GET", "peer": "127.0.0.2"}, {"method": "POST"}),
    ("req_params.id == '42'", {}, {"params": {"id": "42"}}, {"params": {"id": "43"}}),
    ("size(req_headers) == 6", {}, {"headers": BASE_HEADERS}, {"headers": BASE_HEADERS[:3]}),
    ("request.headers['x-test'] == 'yes'", {}, {"headers": [("X-TEST", "yes")]}, {"headers": [("x-test", "no")]}),
    ("request.port == 80", {}, {"url": "http://a.example/"}, {"url": "http://a.example:8080/"}),
])
def test_cache_key_is_exactly_what_the_expression_reads(engine, env, text, base, same, different):
    pol, problems = compile_policy(text, engine)
    assert not problems
    assert pol.evaluate(make_req(**base), env) is None
    assert pol.evaluations == 1
    assert pol.evaluate(make_req(**same), env) is None     # inputs it does not read changed: cached
    assert pol.evaluations == 1
    assert pol.evaluate(make_req(**different), env) is not None
    assert pol.evaluations == 2
    assert pol.evaluate(make_req(**base), env) is None
    assert pol.evaluations == 2


def test_now_is_part_of_the_key_to_the_second(engine, env, monkeypatch):
    t = [1_900_000_000.2]
    monkeypatch.setattr(celpolicy, "_clock", lambda: t[0])
    pol, _ = compile_policy("now < timestamp('2030-03-17T17:46:41Z')", engine)   # 1_900_000_001
    assert pol.evaluate(make_req(), env) is None
    t[0] = 1_900_000_000.9
    assert pol.evaluate(make_req(), env) is None
    assert pol.evaluations == 1
    t[0] = 1_900_000_001.0
    assert pol.evaluate(make_req(), env).endswith("is false")
    assert pol.evaluations == 2


def test_the_result_cache_is_bounded(engine, env, monkeypatch):
    monkeypatch.setattr(celpolicy, "RESULT_CACHE_SIZE", 5)
    pol, _ = compile_policy("getHeader('X-N') != ''", engine)
    for i in range(30):
        assert pol.evaluate(make_req(headers=[("X-N", str(i))]), env) is None
    assert len(pol.cache) == 5 and pol.evaluations == 30


def test_programs_are_compiled_once_per_text(engine, env):
    a, _ = compile_policy("req_method == 'PUT' && true", engine)
    b, _ = compile_policy("req_method == 'PUT' && true", engine)
    assert a.program is b.program and a is not b and a.cache is not b.cache


def test_only_the_variables_an_expression_reads_are_built(engine, env, monkeypatch):
    built = []
    for name, fn in list(celpolicy.VARIABLES.items()):
        monkeypatch.setitem(celpolicy.VARIABLES, name, lambda r, e, _n=name, _f=fn: built.append(_n) or _f(r, e))
    pol, _ = compile_policy("req_headers['X-Test'][0] == 'yes' && hasCookie('uid')", engine)
    assert pol.evaluate(make_req(), env) is None
    assert built == ["req_headers"]


def test_concurrent_evaluation_gives_each_thread_its_own_answer(engine, env):
    """Many threads, one compiled program, different inputs, the result cache bypassed."""
    pol, _ = compile_policy("getHeader('X-N') == string(int(req_params.id) * 2) && hasHeader('X-N')", engine)
    errors: list[str] = []

    def work(tid: int) -> None:
        for i in range(60):
            n = tid * 1000 + i
            ok = pol._run(make_req(headers=[("X-N", str(2 * n))], params={"id": str(n)}), env)
            bad = pol._run(make_req(headers=[("X-N", str(2 * n + 1))], params={"id": str(n)}), env)
            if ok is not None or bad is None:
                errors.append(f"thread {tid} step {i}: {ok!r} {bad!r}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_engine_choice_by_environment(monkeypatch):
    from condroute.cel.engines import default_engine_name
    monkeypatch.setenv("CONDROUTE_CEL_ENGINE", "cel-python")
    assert default_engine_name() == "cel-python"
    monkeypatch.setenv("CONDROUTE_CEL_ENGINE", "auto")
    assert default_engine_name() == available_engines()[-1]
    monkeypatch.setenv("CONDROUTE_CEL_ENGINE", "lua")
    with pytest.raises(ValueError):
        default_engine_name()
    monkeypatch.delenv("CONDROUTE_CEL_ENGINE")
    assert default_engine_name() == ("cel-expr-python" if "cel-expr-python" in available_engines() else "cel-python")


def test_celpy_never_logs(engine, env, caplog):
    caplog.set_level(logging.DEBUG)
    ev(engine, env, "[1, 'a'].all(x, x > 0)")
    ev(engine, env, "req_headers['Cookie'][0] + 1 == 2")
    assert not [r for r in caplog.records if r.name.startswith("celpy")]


def test_through_the_rules_file(tmp_path, engine, monkeypatch):
    monkeypatch.setenv("CONDROUTE_CEL_ENGINE", engine)
    p = tmp_path / "rules.yaml"
    p.write_text("""version: 1
routes:
  - name: shop
    backends:
      - name: ab
        when: {cel: "req_headers.containsCookie('ab-test-xyz', '1')"}
        respond: {status: 200}
      - {name: default, fallback: true, respond: {status: 404}}
""")
    from condroute.engine import decide
    rules = load_rules(str(p))
    assert rules.routes[0].backends[0].when.policy.engine.name == engine
    assert decide(rules, make_req()).backend == "ab"
    d = decide(rules, make_req(headers=[("Cookie", "ab-test-xyz=0")]))
    assert d.backend == "default"
    assert d.attempts[0].reason == "cel `req_headers.containsCookie('ab-test-xyz', '1')` is false"
