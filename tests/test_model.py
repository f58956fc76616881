"""The rules model: loaders write it, the compiler reads it, exporters will read it.

Checked here: a condroute file and a KrakenD file load into plain model values with their
positions; a model built by hand (as an importer would, without any file) compiles and routes;
and the model module loads no parser, no re2 and no mitmproxy."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from condroute import model
from condroute.compile.compiler import compile_rules
from condroute.engine import decide
from condroute.errors import RulesError
from condroute.load.ctx import CompileCtx
from condroute.load.yamlpos import parse_text
from condroute.node import Y
from condroute.request import RequestView
from condroute.rules import load_model, load_rules_text

RULES = """\
version: 1
upstreams:
  stable: http://127.0.0.1:9001
  canary: http://[::1]:9002/base
settings:
  on_no_match: error
  trusted_proxies: [10.0.0.0/8]
routes:
  - name: checkout
    match:
      host: [Shop.Example., "*.shop.example"]
      methods: [get, POST]
      path: /checkout/{id}/*
      header: {x-team: blue}
    backends:
      - name: beta
        when: {cookie: {beta: "1"}}
        upstream: canary
        path: /v2/{id}/{rest}
        set_headers: {X-Variant: B}
        timeout: 2.5
        retries: 1
      - name: split
        split: {by: "cookie:uid", weights: {stable: 90, canary: 10}}
      - {name: default, fallback: true, upstream: stable}
  - name: teapot
    backends: [{name: t, respond: {status: 418, body: "no", headers: {X-A: b}}}]
"""


def model_of(text: str, file: str = "r.yaml") -> model.Rules:
    return load_model(parse_text(text, file), CompileCtx(file, text))


def test_a_condroute_file_is_plain_model_values_with_positions():
    m = model_of(RULES)
    assert m.source_format == "condroute" and m.file == "r.yaml"
    assert m.upstreams["canary"] == model.Upstream("canary", "http://[::1]:9002/base", "http", "::1", 9002, "/base")
    assert m.upstreams["canary"].origin == "http://[::1]:9002"
    assert m.settings.on_no_match == "error"
    assert [str(n) for n in m.settings.trusted_proxies] == ["10.0.0.0/8"]
    r = m.routes[0]
    assert (r.name, r.line) == ("checkout", 9)
    assert r.hosts == ("shop.example", "*.shop.example")
    assert r.methods == frozenset({"GET", "POST"})
    assert (r.path.text, r.path.params, r.path.has_rest, r.path.literal_prefix) == \
        ("/checkout/{id}/*", ("id",), True, "/checkout")
    # conditions stay as written, with where they were written
    assert r.conditions.plain() == {"header": {"x-team": "blue"}}
    beta, split, default = r.backends
    assert beta.when.plain() == {"cookie": {"beta": "1"}} and (beta.when.line, beta.when.col) == (17, 15)
    assert beta.upstream is m.upstreams["canary"]
    assert beta.path.text == "/v2/{id}/{rest}"
    assert (beta.set_headers, beta.timeout, beta.retries) == ((("X-Variant", "B"),), 2.5, 1)
    assert split.split.kind == "cookie" and split.split.key == "uid"
    assert [(u.name, w) for u, w in split.split.arms] == [("stable", 90.0), ("canary", 10.0)]
    assert default.fallback and r.fallback is default and not default.unconditional
    t = m.routes[1].backends[0]
    assert t.respond == model.Respond(418, "no", (("X-A", "b"),)) and t.unconditional


def test_structural_problems_are_located_by_the_loader():
    with pytest.raises(RulesError) as e:
        model_of("version: 1\nroutes:\n  - name: r\n    backends:\n      - {name: a, upstream: nowhere}\n")
    assert str(e.value).startswith("r.yaml:5:29: unknown upstream 'nowhere'")


def test_a_krakend_file_loads_into_the_same_model():
    text = """\
{"version": 3, "host": ["http://127.0.0.1:8080"], "endpoints": [
  {"endpoint": "/v1/users/{id}", "input_headers": ["X-Beta"], "backend": [
    {"url_pattern": "/users/{id}", "extra_config": {"backend/conditional":
       {"strategy": "policy", "value": "req_headers['X-Beta'][0] == '1'"}}},
    {"url_pattern": "/u/{id}", "extra_config": {"backend/conditional": {"strategy": "fallback"}}}]}]}
"""
    m = model_of(text, "k.json")
    assert m.source_format == "krakend" and m.settings.on_no_match == "error"
    (r,) = m.routes
    assert (r.name, r.methods, r.path.params) == ("GET /v1/users/{id}", frozenset({"GET"}), ("id",))
    policy, fb = r.backends
    assert isinstance(policy.when, model.VisibleHeaders)
    assert policy.when.headers == frozenset({"x-beta"})
    assert policy.when.inner.plain() == {"cel": "req_headers['X-Beta'][0] == '1'"}
    assert policy.upstream.origin == "http://127.0.0.1:8080" and policy.path.text == "/users/{id}"
    assert fb.fallback and fb.path.text == "/u/{id}"


def test_a_model_built_by_hand_compiles_and_routes():
    """What an importer does: build the model (no file, no YAML), hand it to the compiler."""
    a = model.Upstream("a", "http://127.0.0.1:9001", "http", "127.0.0.1", 9001, "")
    b = model.Upstream("b", "http://127.0.0.1:9002", "http", "127.0.0.1", 9002, "/b")
    when = Y({"header": Y({"x-canary": Y("yes", 3, 20)}, 3, 10, {"x-canary": (3, 10)})}, 3, 1, {"header": (3, 1)})
    route = model.Route("imported", 1, hosts=("api.example",),
                        path=model.RoutePath("/api/*", has_rest=True, literal_prefix="/api", segs=((False, "api"),)),
                        backends=(model.Backend("canary", 2, when=when, upstream=b),
                                  model.Backend("stable", 4, upstream=a)))
    cc = CompileCtx("imported.yaml")
    rules = compile_rules("imported.yaml", "hand", {"a": a, "b": b}, model.Settings(), [route], cc)
    d = decide(rules, RequestView.from_url("http://api.example/api/x", headers=[("X-Canary", "yes")]))
    assert (d.route, d.backend, d.url) == ("imported", "canary", "http://127.0.0.1:9002/b/api/x")
    d = decide(rules, RequestView.from_url("http://api.example/api/x"), explain=True)
    assert (d.backend, d.url) == ("stable", "http://127.0.0.1:9001/api/x")
    assert d.trail[0][:3] == ("canary", False, 'header x-canary is missing, wanted "yes"')
    # a bad condition in a hand-built model is a located error, like one in a file
    bad = model.Backend("x", 2, when=Y({"heder": Y("1", 7, 9)}, 7, 3, {"heder": (7, 3)}), upstream=a)
    with pytest.raises(RulesError) as e:
        compile_rules("imported.yaml", "hand", {}, model.Settings(), [model.Route("r", 1, backends=(bad,))],
                      CompileCtx("imported.yaml"))
    assert str(e.value).startswith("imported.yaml:7:3: unknown condition 'heder'")


def test_never_and_visible_headers_compile_to_their_conditions():
    a = model.Upstream("a", "http://127.0.0.1:9001", "http", "127.0.0.1", 9001, "")
    never = model.Backend("n", 2, when=model.Never("header X is \"1\" (never)", "X is hidden"), upstream=a)
    rules = compile_rules("f", "hand", {}, model.Settings(), [model.Route("r", 1, backends=(never,))],
                          CompileCtx("f"))
    d = decide(rules, RequestView.from_url("http://h/", headers=[("X", "1")]), explain=True)
    assert d.outcome == "no_match" and d.trail[0][2] == "X is hidden"


def test_the_loaded_rules_equal_the_compiled_model():
    """load_rules_text is load_model + compile: same routes, same order, same names."""
    m = model_of(RULES)
    rules = load_rules_text(RULES, "r.yaml")
    assert [r.name for r in rules.routes] == [r.name for r in m.routes]
    assert [[b.name for b in r.backends] for r in rules.routes] == [[b.name for b in r.backends] for r in m.routes]
    assert rules.upstreams == m.upstreams


def test_the_model_module_loads_no_parser_no_re2_no_mitmproxy():
    addon = Path(__file__).resolve().parent.parent / "addon"
    code = ("import sys; import condroute.model, condroute.node; "
            "bad = [m for m in ('yaml', 're2', 'mitmproxy', 'celpy', 'jwt') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(addon), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
