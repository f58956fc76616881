"""Property-based tests of the engine (hypothesis): decide() never raises on any request, and
agrees with a small independent reference evaluator on generated rules."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from condroute.engine import decide
from condroute.request import RequestView
from condroute.rules import load_rules_text

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- arbitrary hostile requests against a rules file that uses every condition kind ----------------
EVERYTHING = """
version: 1
upstreams: {a: "http://127.0.0.1:9001", b: "http://[::1]:9002/base"}
settings: {trusted_proxies: [127.0.0.0/8, "::1/128"]}
routes:
  - name: api
    match: {path: "/api/{ver}/*", methods: [GET, POST]}
    backends:
      - {name: h, when: {header: {X-A: {regex: "^(a+)+$"}}}, upstream: b, path: "/x/{ver}/{rest}"}
      - {name: c, when: {cookie: {uid: {gt: 10}}}, upstream: a}
      - {name: q, when: {query: {v: {in: ["1", "2"]}, w: {present: false}}}, upstream: b}
      - {name: ip, when: {client_ip: [10.0.0.0/8, "2001:db8::/32"]}, upstream: a}
      - {name: n, when: {not: {any: [{method: POST}, {host: {suffix: .internal, ignore_case: true}}]}}, upstream: a}
      - {name: s, split: {by: "cookie:uid", weights: {a: 1, b: 3}}}
  - name: rest
    match: {host: ["*.example", "[::1]"]}
    backends:
      - {name: only, when: {header: {Authorization: {prefix: Bearer}}}, respond: {status: 403, body: no}}
      - {name: fb, fallback: true, upstream: a}
"""
RULES = load_rules_text(EVERYTHING, "everything.yaml")

text = st.text(max_size=300)
header_name = st.one_of(st.sampled_from(["X-A", "x-a", "Cookie", "cookie", "X-Forwarded-For", "X-Real-IP",
                                         "Authorization", "Host"]), st.text(min_size=1, max_size=20))
surrogate_text = st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape"))
ip_text = st.one_of(st.ip_addresses().map(str), st.ip_addresses(v=4).map(lambda i: f"::ffff:{i}"),
                    st.sampled_from(["", "garbage", "[::1]:80", "1.2.3.4:5", "fe80::1%eth0", "::"]), text)
path = st.one_of(st.sampled_from(["/", "/api", "/api/", "/api/v1", "/api/v1/", "/api/v1/a/b", "//", "*"]),
                 st.text(max_size=60).map(lambda s: "/" + s))


@SETTINGS
@given(method=st.one_of(st.sampled_from(["GET", "POST", "get"]), st.text(min_size=1, max_size=10)),
       host=st.one_of(st.sampled_from(["a.example", "X.INTERNAL", "::1", ""]), text),
       path=path, qs=st.one_of(text, st.sampled_from(["v=1", "v=2&w", "v=%ZZ&%", "=&&=", "v=1;w=2"])),
       headers=st.lists(st.tuples(header_name, st.one_of(text, surrogate_text)), max_size=12),
       peer=st.one_of(st.none(), ip_text))
def test_decide_never_raises_and_returns_a_consistent_decision(method, host, path, qs, headers, peer):
    rv = RequestView(method, "http", host, 80, path, qs, headers, peer)
    d = decide(RULES, rv)
    assert d.outcome in ("routed", "respond", "passthrough", "no_match", "bad_request")
    if d.outcome == "bad_request":      # an encoded separator, backslash or "..;" where a route could own it
        assert d.status == 400 and d.reason and d.route
    if d.outcome == "routed":
        assert d.url and d.backend
        assert d.path.startswith("/") or d.path.split("?")[0] == path == "*"
        if d.upstream == "b" and path != "*":
            assert d.path.startswith("/base")
    if d.outcome == "passthrough":
        assert d.route is None
    json.dumps(d.to_dict())             # metadata is always plain, serialisable data
    d.header_value(), d.comment(), d.summary(), d.error_body()


@SETTINGS
@given(cookie=st.one_of(text, surrogate_text), xff=st.lists(ip_text, max_size=40))
def test_odd_cookies_and_forwarded_chains(cookie, xff):
    rv = RequestView("GET", "http", "a.example", 80, "/api/v1/x", "",
                     [("Cookie", cookie), ("X-Forwarded-For", ", ".join(xff))], "127.0.0.1")
    d = decide(RULES, rv)
    assert d.route == "api"


@SETTINGS
@given(bearer=st.booleans(), secret=st.one_of(text, st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_random_tokens_in_authorization(bearer, secret):
    token = ("Bearer " if bearer else "") + "Zq9" + secret
    rv = RequestView("GET", "http", "a.example", 80, "/web", "", [("Authorization", token)], "127.0.0.1")
    d = decide(RULES, rv)
    assert d.route == "rest"
    assert d.backend == ("only" if bearer else "fb")
    assert "Zq9" not in json.dumps(d.to_dict()) + d.comment() + d.error_body()   # never shown


# -- generated rules vs a reference evaluator --------------------------------------------------------
NAMES = ["X-A", "X-B"]
VALUES = ["", "1", "2", "ab", "abc", "B"]

matcher = st.one_of(
    st.sampled_from(VALUES).map(lambda v: ("eq", v)),
    st.sampled_from(VALUES[1:]).map(lambda v: ("prefix", v)),
    st.booleans().map(lambda b: ("present", b)),
)
cond = st.fixed_dictionaries({}, optional={"X-A": matcher, "X-B": matcher})
backend = st.one_of(st.just(None), cond)          # None = unconditional
route = st.fixed_dictionaries({
    "host": st.one_of(st.none(), st.sampled_from(["a.example", "b.example", "*.example"])),
    "prefix": st.one_of(st.none(), st.sampled_from(["/x", "/y"])),
    "backends": st.lists(backend, min_size=1, max_size=4),
    "fallback": st.booleans(),
})


def to_yaml(routes: list[dict]) -> str:
    def m(spec):
        kind, v = spec
        if kind == "eq":
            return json.dumps(v)
        if kind == "prefix":
            return json.dumps({"prefix": v})
        return json.dumps({"present": v})

    out = ["version: 1", "routes:"]
    for i, r in enumerate(routes):
        out.append(f"  - name: r{i}")
        match = {}
        if r["host"]:
            match["host"] = r["host"]
        if r["prefix"]:
            match["path"] = r["prefix"] + "/*"
        if match:
            out.append(f"    match: {json.dumps(match)}")
        out.append("    backends:")
        for j, b in enumerate(r["backends"]):
            when = "" if b is None or not b else ", when: {header: {" + ", ".join(
                f"{k}: {m(v)}" for k, v in b.items()) + "}}"
            out.append(f"      - {{name: b{j}, upstream: 'http://127.0.0.1:{1000 + j}'{when}}}")
        if r["fallback"]:
            out.append("      - {name: fb, fallback: true, upstream: 'http://127.0.0.1:999'}")
    return "\n".join(out) + "\n"


def reference(routes: list[dict], host: str, path: str, headers: dict[str, str]) -> tuple:
    """The selection semantics of the README's "The rules file", written as plainly as possible."""
    def host_ok(pattern):
        if pattern is None:
            return True
        if pattern.startswith("*."):
            return host.endswith(pattern[1:])
        return host == pattern

    def path_ok(prefix):
        return prefix is None or path == prefix or path.startswith(prefix + "/")

    def holds(spec, value):
        kind, v = spec
        if kind == "present":
            return (value is not None) == v
        if value is None:
            return False
        return value == v if kind == "eq" else value.startswith(v)

    for i, r in enumerate(routes):
        if host_ok(r["host"]) and path_ok(r["prefix"]):
            for j, b in enumerate(r["backends"]):
                if not b or all(holds(spec, headers.get(k)) for k, spec in b.items()):
                    return f"r{i}", f"b{j}"
            return f"r{i}", ("fb" if r["fallback"] else None)
    return None, None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(routes=st.lists(route, min_size=1, max_size=5),
       host=st.sampled_from(["a.example", "b.example", "c.other"]),
       path=st.sampled_from(["/", "/x", "/x/1", "/y/", "/xy"]),
       headers=st.fixed_dictionaries({}, optional={"X-A": st.sampled_from(VALUES), "X-B": st.sampled_from(VALUES)}))
def test_engine_matches_reference_evaluator(routes, host, path, headers):
    rules = load_rules_text(to_yaml(routes), "gen.yaml")
    rv = RequestView("GET", "http", host, 80, path, "", list(headers.items()), "127.0.0.1")
    d = decide(rules, rv)
    assert (d.route, d.backend) == reference(routes, host, path, headers)
