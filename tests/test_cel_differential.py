"""Routing does not depend on which CEL engine is installed (issue 11, item 12).

A differential test runs cel-python and cel-expr-python over expressions generated from a small
grammar of the whole vocabulary condroute offers (variables, helpers, string functions, size, in,
comprehensions, numbers of every type) and over generated requests, and asserts the same outcome:
the policy holds under both or under neither. Both engines are also held to the same iteration
budget, checked at load (located errors) and per request.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from condroute.cel import policy as celpolicy
from condroute.cel.engines import available_engines
from condroute.cel.cost import CEL_MAX_ITERATIONS
from condroute.errors import RulesError
from condroute.request import RequestView
from cel_support import compile_policy
from test_identity_support import identity_env, GB_IP, SE_IP, UNKNOWN_IP, US_IP, claims, hs256

BOTH = ["cel-python", "cel-expr-python"]
needs_both = pytest.mark.skipif("cel-expr-python" not in available_engines(),
                                reason="cel-expr-python is not installed")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return identity_env(tmp_path_factory.mktemp("celdiff"))


# -- the grammar ---------------------------------------------------------------------------------
HEADERS = ["X-Ab-Test", "X-Num", "X-Multi", "x-test"]
COOKIES = ["uid", "ab"]
QUERY = ["a", "b"]
WORDS = ["", "B", "yes", "1", "2.5", "-3", "abc", "10.0.0.1", "a b", "/api"]
q = repr   # a CEL string literal (Python's repr of these words is valid CEL)

str_lit = st.sampled_from(WORDS).map(q)
hname = st.sampled_from(HEADERS)
cname = st.sampled_from(COOKIES)
qname = st.sampled_from(QUERY)
num_lit = st.sampled_from(["0", "1", "2", "-1", "3", "1u", "2u", "0u", "1.0", "2.5", "-0.5", "1e3", "42"])
regex = st.sampled_from(["'^/api'", "'[0-9]+'", "'^$'", "'b'", "'('", "'^a.c$'", "'(?i)YES'"])
cidr = st.sampled_from(["'127.0.0.0/8'", "'89.160.0.0/16'", "'10.0.0.0/8'", "'::1/128'", "'0.0.0.0/0'"])

str_atom = st.one_of(
    str_lit,
    st.sampled_from(["req_method", "req_path", "client_ip", "request.host", "request.scheme", "request.path",
                     "request.query", "req_params.id", "jwt.role", "JWT.role", "geoIP().country.iso_code",
                     "geoIP().Country.IsoCode", "string(jwt.level)", "request.method"]),
    hname.map(lambda h: f"getHeader({q(h)})"), hname.map(lambda h: f"req_headers.getHeader({q(h)})"),
    hname.map(lambda h: f"req_headers[{q(h)}][0]"), hname.map(lambda h: f"request.headers[{q(h.lower())}]"),
    cname.map(lambda c: f"getCookie({q(c)})"), cname.map(lambda c: f"request.cookies[{q(c)}]"),
    qname.map(lambda n: f"getQuery({q(n)})"), qname.map(lambda n: f"req_querystring[{q(n)}][0]"),
)
num_atom = st.one_of(
    num_lit,
    st.sampled_from(["request.port", "jwt.level", "size(req_path)", "size(req_headers)", "size(jwt)",
                     "size(jwt.groups)", "int(req_params.id)", "dyn(jwt.level)", "double(jwt.level)",
                     "geoIP().Country.GeoNameID"]),
    hname.map(lambda h: f"int(getHeader({q(h)}))"), hname.map(lambda h: f"double(getHeader({q(h)}))"),
    hname.map(lambda h: f"size(req_headers[{q(h)}])"),
)
list_atom = st.one_of(
    hname.map(lambda h: f"req_headers[{q(h)}]"), qname.map(lambda n: f"req_querystring[{q(n)}]"),
    st.sampled_from(["jwt.groups", "req_headers", "request.headers", "request.cookies", "jwt",
                     "req_params", "[1, 2, 3]", "[1, 2.0, 3u]", "['a', 'B', 'yes']", "[]", "['1', 1, 1.0]",
                     "{'a': 1, 'b': 2.5}", "{1: 'a', 2u: 'b'}", "jwt.org", "geoIP().Country.Names"]),
)


def _num(children):
    return st.one_of(num_atom, st.tuples(children, st.sampled_from(["+", "-", "*", "/", "%"]), children)
                     .map(lambda t: f"({t[0]} {t[1]} {t[2]})"))


def _str(children):
    return st.one_of(str_atom, st.tuples(children, children).map(lambda t: f"({t[0]} + {t[1]})"),
                     _num(num_atom).map(lambda n: f"string({n})"))


S = st.deferred(lambda: _str(str_atom))
NUM = st.deferred(lambda: _num(num_atom))
ANY = st.one_of(S, NUM, list_atom, st.sampled_from(["true", "null", "b'ab'", "now"]))

bool_atom = st.one_of(
    st.tuples(S, st.sampled_from(["==", "!="]), S).map(" ".join),
    st.tuples(ANY, st.sampled_from(["==", "!="]), ANY).map(" ".join),
    st.tuples(NUM, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), NUM).map(" ".join),
    st.tuples(S, st.sampled_from(["<", ">="]), S).map(" ".join),
    st.tuples(S, st.sampled_from(["startsWith", "endsWith", "contains", "matches"]), st.one_of(S, regex))
    .map(lambda t: f"{t[0]}.{t[1]}({t[2]})"),
    st.tuples(S, regex).map(lambda t: f"matches({t[0]}, {t[1]})"),
    hname.map(lambda h: f"hasHeader({q(h)})"), hname.map(lambda h: f"req_headers.hasHeader({q(h)})"),
    hname.map(lambda h: f"{q(h)} in req_headers"), hname.map(lambda h: f"{q(h.lower())} in request.headers"),
    cname.map(lambda c: f"hasCookie({q(c)})"), st.tuples(cname, str_lit).map(lambda t: f"containsCookie({q(t[0])}, {t[1]})"),
    st.tuples(cname, str_lit).map(lambda t: f"req_headers.containsCookie({q(t[0])}, {t[1]})"),
    qname.map(lambda n: f"hasQuery({q(n)})"), qname.map(lambda n: f"req_querystring.hasQuery({q(n)})"),
    cidr.map(lambda c: f"ipInCidr(client_ip, {c})"), cidr.map(lambda c: f"client_ip.ipInCidr({c})"),
    st.tuples(ANY, list_atom).map(lambda t: f"{t[0]} in {t[1]}"),
    st.sampled_from(["has(jwt.role)", "has(jwt.org.team)", "has(request.headers.cookie)", "jwt.org.team == 'core'",
                     "geoIP().country.is_in_european_union", "geoIP().RepresentedCountry.IsInEuropeanUnion",
                     "now > timestamp('2020-01-01T00:00:00Z')", "now.getFullYear() == 2030", "dyn(1) == 1.0",
                     "type(jwt.level) == int", "jwt.level == 3.0", "true", "false", "null == null"]),
)


def _bool(children):
    var = st.sampled_from(["x", "y"])
    comprehension = st.tuples(list_atom, st.sampled_from(["all", "exists", "exists_one"]), var, children).map(
        lambda t: f"{t[0]}.{t[1]}({t[2]}, {t[3]})")
    body_over_var = st.tuples(list_atom, st.sampled_from(["all", "exists", "exists_one", "filter", "map"]), var,
                              st.sampled_from(["{v} == 1", "{v} == 'B'", "{v} > 0", "{v} in ['a', 1, 'uid']",
                                               "string({v}).startsWith('a')", "size({v}) > 1", "{v}",
                                               "{v} != {v}", "int({v}) > 0", "{v} == 1.0"])).map(
        lambda t: f"{t[0]}.{t[1]}({t[2]}, {t[3].format(v=t[2])})" + (".size() > 0" if t[1] in ("filter", "map") else ""))
    return st.one_of(
        bool_atom, comprehension, body_over_var,
        children.map(lambda b: f"!({b})"),
        st.tuples(children, st.sampled_from(["&&", "||"]), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
    )


BOOL = st.recursive(bool_atom, _bool, max_leaves=6)

# -- requests ------------------------------------------------------------------------------------
TOKENS = [None, hs256(claims(role="admin", groups=["a", "b"], org={"team": "core"}, level=3)),
          hs256(claims(role="B", groups=[1, "a", 2.5], level=2.5, org={})),
          hs256(claims(role=1, groups=[], level="3")), "not.a.token"]


@st.composite
def requests(draw):
    headers = []
    for name in draw(st.lists(st.sampled_from(HEADERS), max_size=4)):
        headers.append((name, draw(st.sampled_from(WORDS))))
    cookie = "; ".join(f"{c}={draw(st.sampled_from(WORDS))}" for c in draw(st.lists(st.sampled_from(COOKIES), max_size=2)))
    if cookie:
        headers.append(("Cookie", cookie))
    tok = draw(st.sampled_from(TOKENS))
    if tok:
        headers.append(("Authorization", f"Bearer {tok}"))
    headers.append(("X-Forwarded-For", draw(st.sampled_from([SE_IP, US_IP, GB_IP, UNKNOWN_IP, "::1", "10.1.2.3"]))))
    qs = "&".join(f"{n}={draw(st.sampled_from(['1', '2', 'x', '']))}" for n in draw(st.lists(st.sampled_from(QUERY), max_size=3)))
    path = draw(st.sampled_from(["/api/items/42", "/x", "/"]))
    r = RequestView.from_url(f"http://shop.example{path}" + (f"?{qs}" if qs else ""),
                             method=draw(st.sampled_from(["GET", "POST"])), headers=headers, peer="127.0.0.1")
    r.params = {"id": draw(st.sampled_from(["42", "x", "-1"]))}
    return r


def outcomes(text: str, reqs: list, env) -> dict:
    out = {}
    for eng in BOTH:
        pol, problems = compile_policy(text, eng)
        if problems:
            out[eng] = ("load error", tuple(p.message for p in problems))
            continue
        out[eng] = tuple(pol.evaluate(r, env) is None for r in reqs)
    return out


@needs_both
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=BOOL, reqs=st.lists(requests(), min_size=1, max_size=3))
def test_both_engines_route_alike(env, text, reqs, monkeypatch_now):
    got = outcomes(text, reqs, env)
    assert got["cel-python"] == got["cel-expr-python"], text


@pytest.fixture(scope="module")
def monkeypatch_now():
    mp = pytest.MonkeyPatch()
    mp.setattr(celpolicy, "_clock", lambda: 1_900_000_000)     # 2030-03-17
    yield
    mp.undo()


# Cases found by the differential test or named in the issue: they hold under neither engine before
# (cel-python: "no matching overload"), under both now.
SPEC_CASES = ["dyn(1) == 1.0", "1 == 1u", "dyn(1u) == 1.0", "dyn(1) < 1.5", "[1] == [1.0]", "{1: 'a'}[1.0] == 'a'",
              "1.0 in [1]", "1.0 in {1: 'a'}", "dyn(1) != 'a'", "!(dyn(1) == 'a')", "[1, 'a'] == [1.0, 'a']",
              "{'a': 1} == {'a': 1.0}", "jwt.level == 3.0", "['a', 1].exists(x, x > 0)",
              "!([1, 2].exists_one(x, x / 0 == 1))  || true", "dyn(-1) < 0u"]
NOT_TRUE = ["[1, 'a'].all(x, x > 0)", "[1, 'a'].exists(x, x < 0)", "[1, 2].exists_one(x, x / 0 == 1)",
            "[1, 2].map(x, x / 0).size() == 2", "[1, 2].filter(x, 1).size() == 0", "dyn(1) < 'a'",
            "double('nan') == double('nan')", "dyn(1) == 'a'", "dyn(true) == 1", "matches(req_path, '(')"]


@pytest.mark.parametrize("engine", BOTH)
@pytest.mark.parametrize("text", SPEC_CASES)
def test_cel_spec_heterogeneous_numbers_hold(engine, env, text):
    if engine not in available_engines():
        pytest.skip(f"{engine} is not installed")
    pol, problems = compile_policy(text, engine)
    assert not problems
    token = hs256(claims(role="admin", level=3))
    assert pol.evaluate(RequestView.from_url("http://h/", headers=[("Authorization", f"Bearer {token}")]), env) is None


@pytest.mark.parametrize("engine", BOTH)
@pytest.mark.parametrize("text", NOT_TRUE)
def test_errors_and_falsehoods_are_alike(engine, env, text):
    if engine not in available_engines():
        pytest.skip(f"{engine} is not installed")
    pol, problems = compile_policy(text, engine)
    assert not problems
    assert pol.evaluate(RequestView.from_url("http://h/"), env) is not None


def test_errors_in_a_comprehension_cost_linear_time(env):
    """celpy combined errors through a message holding the repr of both operands: 22 errors in an
    exists() took 4 s and 300 MB, 30 never finished. Now 200 errors are quick, under both engines."""
    import time
    text = "[" + ",".join(str(i) for i in range(200)) + "].exists(x, x < 'a')"
    for eng in available_engines():
        pol, problems = compile_policy(text, eng)
        assert not problems
        t = time.perf_counter()
        assert pol.evaluate(RequestView.from_url("http://h/"), env) is not None
        assert time.perf_counter() - t < 5


# -- the iteration budget ------------------------------------------------------------------------
def L(n: int) -> str:
    return "[" + ",".join(str(i) for i in range(1, n + 1)) + "]"


@pytest.mark.parametrize("text, col_of, message", [
    (f"{L(100)}.all(x, {L(100)}.all(y, x * y > 0))", lambda t: t.index("all(x") + 1, "10100 iterations"),
    (f"{L(300)}.exists(x, x == 0)", lambda t: t.index("exists") + 1, "300 iterations"),
    (f"{L(200)}.all(x, x > 0) && {L(200)}.all(x, x > 0)", lambda t: 1, "400 iterations"),
    ("req_headers.all(k, req_headers.all(j, k == j))", lambda t: t.index("all(k") + 1, "square of the request"),
    ("jwt.groups.exists(g, req_headers.exists(h, h == g))", lambda t: t.index("exists(g") + 1, "square"),
    ("[1, 2].map(x, req_headers).all(l, l.all(y, true))", lambda t: t.index("all(l") + 1, "square"),
])
def test_a_costly_expression_is_a_located_load_error(tmp_path, text, col_of, message):
    for eng in available_engines():
        pol, problems = compile_policy(text, eng)
        assert pol is None and len(problems) == 1, eng
        assert message in problems[0].message and problems[0].col == col_of(text), (problems[0].col, problems[0].message)
    # and through a rules file: FILE:LINE:COLUMN, the column inside the quoted expression
    p = tmp_path / "rules.yaml"
    p.write_text(f"version: 1\nroutes:\n  - name: r\n    backends:\n      - name: b\n        when: {{cel: \"{text}\"}}\n"
                 "        respond: {status: 200}\n")
    with pytest.raises(RulesError) as ei:
        from condroute.rules import load_rules
        load_rules(str(p))
    assert f"rules.yaml:6:{21 + col_of(text)}: cel: " in str(ei.value)


@pytest.mark.parametrize("text", [f"{L(80)}.all(x, {L(2)}.all(y, x * y > 0))", "req_headers.exists(k, k == 'X')",
                                  "jwt.groups.exists(g, ['a', 'b'].exists(x, x == g))", f"{L(256)}.all(x, x > 0)"])
def test_affordable_expressions_load(text):
    for eng in available_engines():
        pol, problems = compile_policy(text, eng)
        assert pol is not None, [p.message for p in problems]


def test_the_budget_per_request_is_the_same_for_both_engines(env):
    """A comprehension over request data: linear in the request; a request large enough to pass the
    budget is refused alike by both engines, before evaluating (cel-expr-python alone would have
    answered up to 10,000 items, cel-python would have spent seconds)."""
    text = "req_headers.exists(k, ['X-A', 'X-B'].exists(x, k == x))"     # 3 iterations per header
    small = RequestView.from_url("http://h/", headers=[("X-B", "1")] + [(f"X-{i}", "v") for i in range(50)])
    n = CEL_MAX_ITERATIONS // 3 + 1
    large = RequestView.from_url("http://h/", headers=[("X-B", "1")] + [(f"X-{i}", "v") for i in range(n)])
    for eng in available_engines():
        pol, problems = compile_policy(text, eng)
        assert not problems
        assert pol.evaluate(small, env) is None
        reason = pol.evaluate(large, env)
        assert reason is not None and "too costly for this request" in reason, eng
        assert pol.evaluations == 1          # the large request was not evaluated


def test_a_large_claim_list_is_refused_alike(env):
    text = "jwt.groups.exists(g, g == 'admin')"
    ok = hs256(claims(groups=["x"] * 10 + ["admin"]))
    big = hs256(claims(groups=["x"] * (CEL_MAX_ITERATIONS + 1) + ["admin"]))
    for eng in available_engines():
        pol, _ = compile_policy(text, eng)
        assert pol.evaluate(RequestView.from_url("http://h/", headers=[("Authorization", f"Bearer {ok}")]), env) is None
        r = pol.evaluate(RequestView.from_url("http://h/", headers=[("Authorization", f"Bearer {big}")]), env)
        assert r is not None and "too costly" in r


@pytest.mark.parametrize("engine", BOTH)
@pytest.mark.parametrize("text, holds", [
    # found by the differential test: cel-python answered true, cel-expr-python did not
    ("!(has(jwt.org.team))", False),             # no jwt.org: has() is an error, not false
    ("has(jwt.role.x) || true", True),            # ... absorbed by ||
    ("!(req_querystring['a'] in jwt)", False),    # a list is not a map key: an error
    ("true in {'a': 1} || 1.5 in {1: 1}", False),
    ("2.0 in {2: 1} && has(jwt.role) && !has(jwt.nope)", True),
    ("!(1 * 0u != 42)", False),                   # int and uint do not mix in arithmetic: an error
    ("!(2.5 + size(jwt) > 0)", False),
    ("('' + '').contains('') && 1.5 + 2.5 == 4.0 && {4: 'a'}[1.5 + 2.5] == 'a'", True),
    ("string(double('1')) == '1' && string(1234567.0) == '1.234567e+06' && string(2.5) == '2.5'", True),
])
def test_found_differences(engine, env, text, holds):
    if engine not in available_engines():
        pytest.skip(f"{engine} is not installed")
    pol, problems = compile_policy(text, engine)
    assert not problems
    token = hs256(claims(role="admin"))
    req = RequestView.from_url("http://h/?a=1", headers=[("Authorization", f"Bearer {token}")])
    assert (pol.evaluate(req, env) is None) is holds
