"""What people read about the fields importers write: ``condroute explain`` (table and --json),
``condroute check`` (expect headers / location, failure lines naming an imported rule by its
source), forwarded_headers (what check and export --verify compare), and redaction of secret
header values that a backend sets or adds."""
from __future__ import annotations

import json

import pytest

from condroute import model
from condroute.cli.cases import CasesError, load_cases, run_case
from condroute.compile.compiler import compile_rules
from condroute.engine import decide
from condroute.explain import build_request
from condroute.load.ctx import CompileCtx
from condroute.render import decision_data, forwarded_headers, render_decision

A = model.Upstream("infra-backend-v1", "http://127.0.0.1:9001", "http", "127.0.0.1", 9001, "")
B = model.Upstream("infra-backend-v2", "http://127.0.0.1:9002/base", "http", "127.0.0.1", 9002, "/base")
ORIGIN = "httproute header-matching, rule 3 (routes.yaml:27)"


def compiled(*routes: model.Route):
    return compile_rules("main.yaml", "hand", {A.name: A, B.name: B}, model.Settings(), list(routes),
                         CompileCtx("main.yaml"))


def imported(*backends: model.Backend, name: str = "header-matching rule 3", **kw) -> model.Route:
    return model.Route(name, 27, backends=backends, file="routes.yaml", origin=ORIGIN, **kw)


HEADERS = model.Backend("b", 30, upstream=B, set_headers=(("X-Set", "s"), ("Authorization", "Bearer sekrit")),
                        remove_headers=("X-Gone",), add_headers=(("X-Add", "a"), ("X-Api-Token", "tok")),
                        host_rewrite="rewritten.example", rewrite=model.PathRewrite("segments", "/xyz", prefix="/foo"),
                        mirrors=(model.Mirror(A), model.Mirror(A, 0.0)))


def explain(rules, url: str, headers=(), method: str = "GET"):
    req = build_request(url, method, headers)
    d = decide(rules, req, explain=True)
    return d, req


# -- forwarded_headers ---------------------------------------------------------------------------
def test_forwarded_headers_follow_apply_host_remove_set_add():
    rules = compiled(imported(HEADERS))
    d, req = explain(rules, "http://gw.example/foo/bar",
                     [("X-Set", "old1"), ("x-gone", "1"), ("X-Add", "first"), ("x-set", "old2")])
    assert forwarded_headers(d, req) == [
        ("Host", "rewritten.example"), ("X-Set", "s"), ("X-Add", "first"),
        ("Authorization", "Bearer sekrit"), ("X-Add", "a"), ("X-Api-Token", "tok")]


def test_forwarded_host_is_the_clients_with_preserve_host_else_the_upstreams():
    rules = compiled(imported(model.Backend("keep", 30, upstream=A, preserve_host=True)))
    d, req = explain(rules, "http://gw.example:8080/")
    assert forwarded_headers(d, req) == [("Host", "gw.example:8080")]
    rules = compiled(imported(model.Backend("up", 31, upstream=A)))
    d, req = explain(rules, "http://gw.example/")
    assert forwarded_headers(d, req) == [("Host", "127.0.0.1:9001")]


def test_nothing_is_forwarded_for_an_answer_and_a_passthrough_keeps_its_headers():
    rules = compiled(imported(model.Backend("redirect", 30, redirect=model.Redirect(status=301))))
    d, req = explain(rules, "http://gw.example/x")
    assert forwarded_headers(d, req) is None
    other = compiled(model.Route("only", 1, hosts=("only.example",), backends=(model.Backend("b", 2, upstream=A),)))
    d, req = explain(other, "http://gw.example/x", [("X-A", "1")])
    assert d.outcome == "passthrough" and forwarded_headers(d, req) == [("Host", "gw.example"), ("X-A", "1")]


# -- explain ------------------------------------------------------------------------------------------
def test_explain_names_the_imported_rule_and_shows_rewrite_headers_mirrors_redacted():
    rules = compiled(imported(HEADERS))
    d, req = explain(rules, "http://gw.example/foo/bar?q=1")
    lines = render_decision(rules, d, req)
    text = "\n".join(lines)
    assert f"route     header-matching rule 3 ({ORIGIN})" in lines
    assert "url       http://127.0.0.1:9002/base/xyz/bar?q=1" in lines
    assert "rewrite   prefix /foo -> /xyz (by segment): /foo/bar -> /base/xyz/bar" in lines
    assert "set       Host: rewritten.example (host rewrite)" in lines
    assert "set       X-Set: s" in lines and "set       Authorization: <redacted>" in lines
    assert "added     X-Add: a" in lines and "added     X-Api-Token: <redacted>" in lines
    assert "removed   X-Gone" in lines
    assert ("mirror    infra-backend-v1 (http://127.0.0.1:9001): a copy goes to http://127.0.0.1:9001/xyz/bar?q=1 "
            "(its answer is dropped)") in lines
    assert "mirror    infra-backend-v1 (http://127.0.0.1:9001), 0% of requests: not drawn for this request" in lines
    assert "sekrit" not in text and "tok" not in text.replace("token", "")


def test_explain_json_has_the_new_fields_redacted():
    rules = compiled(imported(HEADERS))
    d, req = explain(rules, "http://gw.example/foo/bar")
    data = json.loads(json.dumps(decision_data(rules, d, req)))
    assert data["route_origin"] == ORIGIN
    assert data["set_headers"] == {"X-Set": "s", "Authorization": "<redacted>"}
    assert data["add_headers"] == [["X-Add", "a"], ["X-Api-Token", "<redacted>"]]
    assert data["remove_headers"] == ["X-Gone"]
    assert (data["host_header"], data["host_rewrite"]) == ("rewritten.example", "rewritten.example")
    assert data["rewrite"] == "prefix /foo -> /xyz (by segment)"
    assert data["mirrors"] == [
        {"upstream": "infra-backend-v1", "url": "http://127.0.0.1:9001", "percent": 100.0, "sent": True},
        {"upstream": "infra-backend-v1", "url": "http://127.0.0.1:9001", "percent": 0.0, "sent": False}]
    assert "sekrit" not in json.dumps(data)


def test_explain_of_a_redirect_and_of_a_route_passed_over():
    rules = compiled(model.Route("exact", 5, path=model.RoutePath("Exact /only", segs=((False, "only"),)),
                                 backends=(model.Backend("b", 6, upstream=A),), file="routes.yaml",
                                 origin="httproute exact, rule 1 (routes.yaml:5)"),
                     imported(model.Backend("redirect", 30, redirect=model.Redirect(
                         scheme="https", port_from="scheme", path=model.PathRewrite("full", "/new")))))
    d, req = explain(rules, "http://gw.example:8080/old?keep=1")
    lines = render_decision(rules, d, req)
    assert lines[1] == "no match  exact (httproute exact, rule 1 (routes.yaml:5)): path '/old' does not match Exact /only"
    assert lines[-1] == "redirect  302 to https://gw.example/new?keep=1"
    data = decision_data(rules, d, req)
    assert data["location"] == data["final_url"] == "https://gw.example/new?keep=1"
    assert data["respond"]["headers"] == {"Location": "https://gw.example/new?keep=1"}


def test_a_set_authorization_is_redacted_in_a_plain_rules_file_too():
    plain = compiled(model.Route("r", 1, backends=(model.Backend("b", 2, upstream=A,
                                                                  set_headers=(("Cookie", "sid=abc123"),)),)))
    d, req = explain(plain, "http://h/")
    lines = render_decision(plain, d, req)
    assert "set       Cookie: <redacted>" in lines and "route     r (line 1)" in lines
    assert decision_data(plain, d, req)["set_headers"] == {"Cookie": "<redacted>"}
    assert d.to_dict()["set_headers"] == {"Cookie": "sid=abc123"}   # the flow's metadata: what was sent


# -- check ------------------------------------------------------------------------------------------
def cases_file(tmp_path, text: str):
    p = tmp_path / "cases.yaml"
    p.write_text(text)
    return str(p)


def test_check_headers_and_location(tmp_path):
    rules = compiled(imported(HEADERS, path=model.RoutePath("PathPrefix /foo", has_rest=True, literal_prefix="/foo",
                                                            segs=((False, "foo"),))),
                     imported(model.Backend("redirect", 40, redirect=model.Redirect(status=301, host="example.org")),
                              name="redirect rule"))
    cases = load_cases(cases_file(tmp_path, """\
- name: all as forwarded
  request: {url: "http://gw.example/foo/bar", headers: {x-set: [o1, o2], X-Gone: "1", X-Add: [first]}}
  expect:
    path: /base/xyz/bar
    headers: {host: rewritten.example, X-SET: s, x-add: [first, a], X-Gone: null, authorization: "Bearer sekrit"}
- name: wrong on purpose
  request: {url: "http://gw.example/foo/bar", headers: {X-Add: [first]}}
  expect: {headers: {X-Add: a, X-Gone: "1", Host: gw.example}, backend: b}
- name: redirect
  request: {url: "http://gw.example:8080/r?x=1"}
  expect: {status: 301, location: "http://example.org:8080/r?x=1", url: "http://example.org:8080/r"}
- name: redirect headers
  request: {url: "http://gw.example/r"}
  expect: {headers: {X-A: null}, location: "http://example.org/elsewhere"}
"""))
    ok, wrong, redirect, redirect_headers = (run_case(rules, c) for c in cases)
    assert ok == [] and redirect == []
    assert wrong == ['headers.X-Add: wanted "a", got ["first", "a"]', 'headers.X-Gone: wanted "1", got absent',
                     'headers.Host: wanted "gw.example", got "rewritten.example"',
                     f"decided by route header-matching rule 3 ({ORIGIN})"]
    assert redirect_headers == ["headers: nothing is forwarded (respond 301)",
                                'location: wanted "http://example.org/elsewhere", got "http://example.org/r"',
                                f"decided by route redirect rule ({ORIGIN})"]


def test_check_names_the_imported_route_that_owns_the_request(tmp_path):
    rules = compiled(imported(model.Backend("b", 30, upstream=A), name="first rule"),
                     imported(model.Backend("b", 40, upstream=A), name="second rule"))
    (case,) = load_cases(cases_file(tmp_path, '- {request: {url: "http://h/"}, expect: {route: second rule}}\n'))
    assert run_case(rules, case) == [
        f'route: wanted "second rule", got "first rule" [first rule ({ORIGIN})] '
        f"(first rule ({ORIGIN}) comes first and owns the request)"]


@pytest.mark.parametrize("expect,message", [
    ("{headers: [a]}", "3:14: expect.headers must be a mapping"),
    ("{headers: {X-A: {b: 1}}}", "3:20: expect.headers: the value of X-A must be a text"),
    ("{headers: {X-A: [{b: 1}]}}", "3:21: expect.headers: the values of X-A must be texts"),
    ("{headers: {X-A: a, x-a: b}}", "3:23: expect.headers names x-a twice"),
    ("{location: [a]}", "3:15: expect.location must be a single value or null"),
    ("{colour: red}", "3:5: unknown key 'colour' in expect; expected one of: route, backend, upstream, path, url, "
                      "status, outcome, headers, location, file"),
])
def test_bad_expect_headers_and_location_are_located(tmp_path, expect, message):
    path = cases_file(tmp_path, f'- request: {{url: "http://h/"}}\n  expect:\n   {expect}\n')
    with pytest.raises(CasesError) as e:
        load_cases(path)
    (problem,) = e.value.problems
    assert str(problem).startswith(f"{path}:{message}"), str(problem)
