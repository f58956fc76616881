"""The public face of condroute.cel (issue #12): the identity lookups a policy is given (it imports
neither the jwt nor the geo condition kind), and the helper table everything reads."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from condroute.cel import context
from condroute.cel.engines import available_engines
from condroute.cel.helpers import HELPERS
from condroute.cel.policy import CelCond, IdentityLookups, compile_policy
from condroute.request import RequestView
from condroute.rules import load_rules_text

ENGINES = ["cel-python", "cel-expr-python"]


@pytest.fixture(params=ENGINES)
def engine(request):
    if request.param not in available_engines():
        pytest.skip(f"{request.param} is not installed")
    return request.param


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return load_rules_text("version: 1\nroutes: []\n", str(tmp_path_factory.mktemp("celapi") / "r.yaml"))


def req(headers=(), url="http://shop.example/api?a=1"):
    return RequestView.from_url(url, headers=list(headers), peer="127.0.0.1")


class FakeLookups:
    """Lookups that answer what they are told, and count the calls."""

    def __init__(self, claims=None, error=None, record=None, why="no GeoIP database is configured"):
        self.state = SimpleNamespace(token="tok" if claims or error else None, claims=claims or {}, error=error)
        self.record, self.why = record, why
        self.calls = {"token": 0, "geo": 0}

    def token(self, r, e):
        self.calls["token"] += 1
        return self.state

    def geo_record(self, r, e):
        self.calls["geo"] += 1
        return (self.record, None) if self.record is not None else (None, self.why)

    def lookups(self) -> IdentityLookups:
        return IdentityLookups(token=self.token, geo_record=self.geo_record)


# -- identity lookups ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["jwt.role == 'admin'", "JWT.role == 'admin'", "size(jwt) > 0",
                                  "geoIP().Country.IsoCode == 'SE'"])
def test_jwt_and_geoip_need_lookups(engine, text):
    with pytest.raises(TypeError, match="pass lookups="):
        compile_policy(text, engine)


def test_other_expressions_need_none(engine, env):
    pol, problems = compile_policy("getHeader('X-A') == 'b' && ipInCidr(client_ip, '127.0.0.0/8')", engine)
    assert not problems and pol.lookups is None
    assert pol.evaluate(req([("X-A", "b")]), env) is None


def test_claims_come_from_the_token_lookup(engine, env):
    fake = FakeLookups(claims={"role": "admin", "groups": ["a", "b"]})
    pol, problems = compile_policy("jwt.role == 'admin' && 'b' in JWT.groups", engine, lookups=fake.lookups())
    assert not problems
    assert pol.evaluate(req(), env) is None
    assert fake.calls["token"] > 0
    assert context.current.lookups is None and context.current.req is None     # cleared after the evaluation


def test_a_rejected_token_is_named_in_the_reason(engine, env):
    fake = FakeLookups(error="token expired")
    pol, _ = compile_policy("jwt.role == 'admin'", engine, lookups=fake.lookups())
    reason = pol.evaluate(req(), env)
    assert reason is not None and reason.endswith("(the token was rejected: token expired)"), reason


def test_geoip_comes_from_the_geo_lookup(engine, env):
    fake = FakeLookups(record={"Country": {"IsoCode": "SE"}})
    pol, _ = compile_policy("geoIP().Country.IsoCode == 'SE'", engine, lookups=fake.lookups())
    assert pol.evaluate(req(), env) is None and fake.calls["geo"] == 1
    none = FakeLookups(why="the client IP is unknown")
    pol, _ = compile_policy("geoIP().Country.IsoCode == 'SE'", engine, lookups=none.lookups())
    assert pol.evaluate(req(), env).endswith("could not be evaluated: geoIP(): the client IP is unknown")


def test_each_policy_keeps_its_own_lookups(engine, env):
    """One program (same text, shared), two policies, two lookups: neither sees the other's."""
    text = "jwt.role == 'admin'"
    a, _ = compile_policy(text, engine, lookups=FakeLookups(claims={"role": "admin"}).lookups())
    b, _ = compile_policy(text, engine, lookups=FakeLookups(claims={"role": "viewer"}).lookups())
    assert a.program is b.program
    assert a.evaluate(req(), env) is None
    assert b.evaluate(req(), env).endswith("is false")
    assert a.evaluate(req(), env) is None


def test_lookups_per_thread(engine, env):
    """Threads evaluating policies with different lookups at once each get their own answer."""
    text = "jwt.n == getHeader('X-N')"
    pols = {i: compile_policy(text, engine, lookups=FakeLookups(claims={"n": str(i)}).lookups())[0] for i in range(4)}
    errors: list[str] = []

    def work(i: int) -> None:
        for k in range(50):
            if pols[i]._run(req([("X-N", str(i))]), env) is not None:
                errors.append(f"thread {i}, step {k}")

    threads = [threading.Thread(target=work, args=(i,)) for i in pols]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- the helper table -------------------------------------------------------------------------------
def test_the_helper_table_is_consistent():
    for name, h in HELPERS.items():
        assert h.name == name and h.doc
        assert set(h.params) <= {"S"} and h.returns in ("B", "S", "D")
        assert (h.method is None) == (h.receiver == ""), name
        assert h.reads in ("header", "cookie", "query", "geo", "")


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_the_checker_takes_arity_from_the_table(engine, name):
    h = HELPERS[name]
    args = ", ".join(["'x'"] * (h.arity + 1))
    _, problems = compile_policy(f"{name}({args}) == true", engine)
    want = h.arity
    assert [p.message for p in problems] == [f"{name}() takes {want} argument{'s' * (want != 1)}, not {want + 1}"]


@pytest.mark.parametrize("name", sorted(n for n, h in HELPERS.items() if h.reads != "geo"))
def test_every_helper_runs_on_both_forms(engine, env, name):
    """Each engine declares every helper of the table, global and method form."""
    h = HELPERS[name]
    if name == "ipInCidr":
        texts = ["ipInCidr('127.0.0.1', '127.0.0.0/8')", "'127.0.0.1'.ipInCidr('127.0.0.0/8')"]
    else:
        recv = "req_querystring" if h.reads == "query" else "req_headers"
        first = {"header": "'X-A'", "cookie": "'c'", "query": "'a'"}[h.reads]
        args = ", ".join([first] + ["'1'"] * (h.arity - 1))
        texts = [f"{name}({args}) != null", f"{recv}.{name}({args}) != null"]
    for text in texts:
        pol, problems = compile_policy(text, engine)
        assert not problems, [p.message for p in problems]
        assert pol.evaluate(req([("X-A", "1"), ("Cookie", "c=1")]), env) is None, text


# -- which headers a policy reads ----------------------------------------------------------------------
HEADERS_READ = [
    ("req_headers['X-Ab'][0] == 'B' && hasHeader('X-Test')", {"x-ab", "x-test"}, False),
    ("'X-B' in req_headers && request.headers['x-c'] == '1'", {"x-b", "x-c"}, False),
    ("req_headers.getHeader('X-D') == '' && request.headers.getHeader('X-E') == ''", {"x-d", "x-e"}, False),
    ("hasCookie('uid') && request.cookies.ab == '1'", {"cookie"}, False),
    ("req_headers.containsCookie('ab', '1')", {"cookie"}, False),
    ("getCookie(getHeader('X-Name')) == ''", {"cookie", "x-name"}, False),     # a computed cookie name
    ("size(req_headers) > 2", set(), True),
    ("getHeader(req_path) == ''", set(), True),                                 # a computed header name
    ("request.headers.exists(h, h == 'x')", set(), True),
    ("request.method == 'GET' && req_path.startsWith('/a') && getQuery('a') == '1'", set(), False),
    ("jwt.role == 'admin' && geoIP().Country.IsoCode == 'SE'", set(), False),   # via the lookups: not counted
]


def _policy_headers_as_krakend_had_it(pol) -> tuple[set[str], bool]:
    """load/krakend.py's _policy_headers before issue #12, over the policy's input codes."""
    names, everything = set(), False
    for a in pol.atoms:
        if isinstance(a, tuple) and a and a[0] == "H":
            everything = True
        elif isinstance(a, tuple) and len(a) == 2 and a[0] == "h" and isinstance(a[1], str):
            names.add(a[1].lower())
        elif isinstance(a, tuple) and len(a) == 2 and a[0] == "c":
            names.add("cookie")
    return names, everything


@pytest.mark.parametrize("text, names, everything", HEADERS_READ)
def test_headers_read(text, names, everything):
    pol, problems = compile_policy(text, "cel-python", lookups=FakeLookups().lookups())
    assert not problems, [p.message for p in problems]
    got = pol.headers_read()
    assert got == (frozenset(names), everything)
    assert (set(got[0]), got[1]) == _policy_headers_as_krakend_had_it(pol)
    assert CelCond(pol).headers_read() == frozenset(names)     # a condition's answer: the names
