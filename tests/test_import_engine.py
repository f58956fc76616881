"""The engine runs what importers write into the model (HTTPRoute, Istio VirtualService, KrakenD):
add_headers, host_rewrite, PathRewrite (segments / prefix / full / regex), Redirect, a weighted
random Split, mirrors, and a route's file and origin. Each model here is built by hand, as an
importer builds it, and compiled with the compiler (no rules file)."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from condroute import model
from condroute.compile.compiler import compile_rules
from condroute.engine import decide
from condroute.errors import RulesError
from condroute.load.ctx import CompileCtx
from condroute.node import Y
from condroute.request import RequestView

A = model.Upstream("infra-backend-v1", "http://127.0.0.1:9001", "http", "127.0.0.1", 9001, "")
B = model.Upstream("infra-backend-v2", "http://127.0.0.1:9002/base", "http", "127.0.0.1", 9002, "/base")
C = model.Upstream("infra-backend-v3", "http://[::1]:9003", "http", "::1", 9003, "")


def compiled(*routes: model.Route, settings: model.Settings | None = None, file: str = "rules.yaml"):
    return compile_rules(file, "hand", {u.name: u for u in (A, B, C)}, settings or model.Settings(), list(routes),
                         CompileCtx(file))


def prefix(p: str) -> model.RoutePath:
    """A Gateway API PathPrefix, built as the HTTPRoute importer builds it."""
    v = p.rstrip("/")
    return model.RoutePath(f"PathPrefix {p}", has_rest=True, literal_prefix=v,
                           segs=tuple((False, s) for s in v.split("/")[1:]) if v else ())


def route(*backends: model.Backend, path: model.RoutePath | None = None, **kw) -> model.Route:
    return model.Route(kw.pop("name", "r"), 1, path=path, backends=backends, **kw)


def get(rules, url: str, headers=(), method: str = "GET", explain: bool = False):
    return decide(rules, RequestView.from_url(url, method, headers), explain=explain)


# -- route file and origin ---------------------------------------------------------------------
def test_the_runtime_route_carries_file_and_origin():
    r = route(model.Backend("b", 2, upstream=A), name="header-matching rule 3", file="routes.yaml",
              origin="httproute header-matching, rule 3 (routes.yaml:27)")
    rules = compiled(r)
    (got,) = rules.routes
    assert (got.file, got.origin) == ("routes.yaml", "httproute header-matching, rule 3 (routes.yaml:27)")
    assert compiled(route(model.Backend("b", 2, upstream=A))).routes[0].origin == ""


def test_problems_of_an_imported_route_are_located_in_its_file():
    bad = model.Backend("x", 2, when=Y({"heder": Y("1", 7, 9)}, 7, 3, {"heder": (7, 3)}), upstream=A)
    good = model.Backend("y", 5, when=Y({"heder": Y("1", 9, 9)}, 9, 4, {"heder": (9, 4)}), upstream=A)
    cc = CompileCtx("main.yaml")
    with pytest.raises(RulesError) as e:
        compile_rules("main.yaml", "hand", {}, model.Settings(),
                      [route(bad, file="routes.yaml"), route(good, name="own")], cc)
    shown = sorted(str(p) for p in e.value.problems)
    assert shown[0].startswith("main.yaml:9:4: unknown condition 'heder'"), shown
    assert shown[1].startswith("routes.yaml:7:3: unknown condition 'heder'"), shown
    assert cc.file == "main.yaml"      # restored after the imported route


# -- add_headers, host_rewrite ---------------------------------------------------------------------
def test_add_headers_come_after_remove_and_set_and_host_rewrite_is_the_host_sent():
    b = model.Backend("b", 2, upstream=A, set_headers=(("X-Set", "s"),), remove_headers=("X-Gone",),
                      add_headers=(("X-Add", "a1"), ("X-Add", "a2")), host_rewrite="rewritten.example")
    d = get(compiled(route(b)), "http://shop.example/p")
    assert d.outcome == "routed"
    assert d.add_headers == (("X-Add", "a1"), ("X-Add", "a2"))
    assert d.set_headers == (("X-Set", "s"),) and d.remove_headers == ("X-Gone",)
    assert d.host_header == "rewritten.example"
    # without a rewrite: the upstream's authority, or the client's Host with preserve_host
    assert get(compiled(route(model.Backend("b", 2, upstream=A))), "http://shop.example/").host_header == "127.0.0.1:9001"
    kept = get(compiled(route(model.Backend("b", 2, upstream=A, preserve_host=True))), "http://shop.example/")
    assert kept.host_header is None and kept.add_headers == ()
    # a backend with no upstream (the original destination) can rewrite the Host too
    d = get(compiled(route(model.Backend("b", 2, host_rewrite="other.example"))), "http://shop.example/x")
    assert (d.url, d.host_header) == ("http://shop.example/x", "other.example")


# -- path rewrites ---------------------------------------------------------------------------------
# Gateway API's table for ReplacePrefixMatch (httproute_types.go), every row
SEGMENT_ROWS = [
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
    # the conformance suite's rewrite-path cases
    ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
    ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
    ("/strip-prefix", "/strip-prefix", "/", "/"),
]


@pytest.mark.parametrize("path,match,replace,want", SEGMENT_ROWS)
def test_replace_prefix_match_by_segment(path, match, replace, want):
    rw = model.PathRewrite("segments", replace, prefix=match.rstrip("/"))
    rules = compiled(route(model.Backend("b", 2, upstream=A, rewrite=rw), path=prefix(match)))
    d = get(rules, f"http://gw.example{path}?q=1")
    assert d.path == want + "?q=1", (path, match, replace)


def test_prefix_rewrite_replaces_characters_and_full_replaces_the_path_and_base_path_comes_first():
    # Istio's rewrite.uri: the matched prefix's characters, as Envoy's prefix_rewrite
    istio = model.PathRewrite("prefix", "/v1", prefix="/")
    d = get(compiled(route(model.Backend("b", 2, upstream=A, rewrite=istio))), "http://h/foo")
    assert d.path == "/v1foo"                      # the classic Istio trap, as Istio does it
    rw = model.PathRewrite("prefix", "/new", prefix="/old")
    d = get(compiled(route(model.Backend("b", 2, upstream=B, rewrite=rw))), "http://h/oldies/x?a=b")
    assert d.path == "/base/newies/x?a=b" and d.url == "http://127.0.0.1:9002/base/newies/x?a=b"
    full = model.PathRewrite("full", "/one")
    d = get(compiled(route(model.Backend("b", 2, upstream=A, rewrite=full))), "http://h/full/one/two?x=1")
    assert d.path == "/one?x=1"


def test_rewrite_wins_over_a_path_template():
    tpl = model.PathTemplate("/tpl", ((False, "/tpl"),))
    b = model.Backend("b", 2, upstream=A, path=tpl, rewrite=model.PathRewrite("full", "/rw"))
    assert get(compiled(route(b)), "http://h/x").path == "/rw"


def test_regex_rewrite_replaces_every_match_with_groups_as_envoy_reads_them():
    rw = model.PathRewrite("regex", r"/\1/x\\y", pattern=r"/one/([a-z]+)")
    rules = compiled(route(model.Backend("b", 2, upstream=A, rewrite=rw)))
    assert get(rules, "http://h/one/abc/one/def?q").path == r"/abc/x\y/def/x\y?q"
    assert get(rules, "http://h/nothing").path == "/nothing"
    envoy_doc = model.PathRewrite("regex", "two", pattern="one")
    d = get(compiled(route(model.Backend("b", 2, upstream=A, rewrite=envoy_doc))), "http://h/xxx/one/yyy/one/zzz")
    assert d.path == "/xxx/two/yyy/two/zzz"
    whole = model.PathRewrite("regex", r"[\0]", pattern="^/a")
    assert get(compiled(route(model.Backend("b", 2, upstream=A, rewrite=whole))), "http://h/ab").path == "/[/a]b"


def test_regex_rewrite_is_compiled_once_and_bad_ones_are_located_errors():
    rw = model.PathRewrite("regex", r"/\1", pattern="/(a)")
    rules = compiled(route(model.Backend("b", 2, upstream=A, rewrite=rw)))
    rx = rules.routes[0].backends[0].path.rx        # in the path template's place
    assert rx is not None and rx.groups == 1
    for pattern, value, why in [("/(a", "/x", "missing"), ("/(a)", r"/\2", "group \\2"),
                                ("/a", "/x\\", "lone backslash"), ("/a", r"/\n", "followed by a digit"),
                                (r"(?P<n>a)\1", "/x", "")]:
        bad = model.Backend("b", 7, upstream=A, rewrite=model.PathRewrite("regex", value, pattern=pattern))
        with pytest.raises(RulesError) as e:
            compiled(route(bad, file="vs.yaml"))
        (p,) = e.value.problems
        assert (p.file, p.line) == ("vs.yaml", 7) and "rewrite" in p.message and why in p.message, p.message
    with pytest.raises(RulesError, match="unknown rewrite kind 'middle'"):
        compiled(route(model.Backend("b", 2, upstream=A, rewrite=model.PathRewrite("middle", "/x"))))


def test_a_rewrite_that_climbs_out_is_refused_with_400():
    rw = model.PathRewrite("regex", "/..", pattern="^/up")
    d = get(compiled(route(model.Backend("b", 2, upstream=B, rewrite=rw))), "http://h/up/secret")
    assert (d.outcome, d.status) == ("bad_request", 400)
    assert d.reason == "the path would leave the backend's path: regex ^/up -> /.. gives '/../secret'"


def test_a_template_with_its_own_query_gets_the_requests_after_an_ampersand():
    tpl = model.PathTemplate("/x?fixed=1", ((False, "/x?fixed=1"),))
    d = get(compiled(route(model.Backend("b", 2, upstream=A, path=tpl))), "http://h/y?client=2")
    assert d.path == "/x?fixed=1&client=2"


# -- redirects ---------------------------------------------------------------------------------------
def redirect_rules(r: model.Redirect, path: model.RoutePath | None = None):
    return compiled(route(model.Backend("redirect", 2, redirect=r), path=path))


@pytest.mark.parametrize("redirect,url,location", [
    # the request's scheme, host and port (the port the client asked for) unless given
    (model.Redirect(), "http://gw.example/a?x=1", "http://gw.example/a?x=1"),
    (model.Redirect(host="example.org"), "http://gw.example:8080/a", "http://example.org:8080/a"),
    (model.Redirect(scheme="https", port_from="scheme"), "http://gw.example:8080/a", "https://gw.example/a"),
    (model.Redirect(scheme="https", port=8443), "http://gw.example/a", "https://gw.example:8443/a"),
    (model.Redirect(scheme="http", port=80), "https://gw.example/a", "http://gw.example/a"),
    (model.Redirect(port=443, scheme="https"), "http://gw.example/a", "https://gw.example/a"),
    (model.Redirect(status=301, host="::1", port=8080), "http://gw.example/a", "http://[::1]:8080/a"),
    (model.Redirect(path=model.PathRewrite("full", "/new")), "http://gw.example/old?keep=1", "http://gw.example/new?keep=1"),
    (model.Redirect(path=model.PathRewrite("full", "/new?own=1")), "http://gw.example/old?keep=1", "http://gw.example/new?own=1"),
    (model.Redirect(path=model.PathRewrite("prefix", "/v2", prefix="/v1")), "http://gw.example/v1/x", "http://gw.example/v2/x"),
])
def test_redirect_location(redirect, url, location):
    d = get(redirect_rules(redirect), url)
    assert (d.outcome, d.status, d.backend) == ("respond", redirect.status, "redirect")
    assert d.respond.headers == (("Location", location),) and d.respond.body == ""
    assert d.url is None


def test_redirect_path_by_segment_and_the_client_asked_port_in_reverse_mode():
    rw = model.PathRewrite("segments", "/paprika", prefix="/original-prefix")
    rules = redirect_rules(model.Redirect(path=rw), path=prefix("/original-prefix"))
    d = get(rules, "http://gw.example/original-prefix/lemon")
    assert d.respond.headers == (("Location", "http://gw.example/paprika/lemon"),)
    rq = RequestView.from_url("http://gw.example/original-prefix")
    rq.__dict__["asked_port"] = 8080          # reverse mode: the Host header's port
    assert decide(rules, rq).respond.headers == (("Location", "http://gw.example:8080/paprika"),)


def test_bad_redirects_are_located_errors():
    for r, why in [(model.Redirect(status=200), "must be 3xx"), (model.Redirect(scheme="ftp"), "http or https"),
                   (model.Redirect(port=0), "1-65535"), (model.Redirect(port_from="listener"), "port_from")]:
        with pytest.raises(RulesError, match=why):
            redirect_rules(r)


# -- the weighted random split ---------------------------------------------------------------------
def weighted(*arms):
    return model.Backend("weighted", 2, split=model.Split("random", "random", "", tuple(arms), ""))


def test_a_random_split_draws_per_request_by_weight_and_never_picks_weight_zero():
    rules = compiled(route(weighted((A, 70), (B, 30), (C, 0))))
    random.seed(1)
    counts = Counter(get(rules, "http://gw.example/").upstream for _ in range(500))
    assert counts[C.name] == 0
    assert abs(counts[A.name] / 500 - 0.7) <= 0.05 and abs(counts[B.name] / 500 - 0.3) <= 0.05, counts
    # the same request, decided again, is not sticky
    assert len({get(rules, "http://gw.example/same").upstream for _ in range(50)}) == 2
    d = get(rules, "http://gw.example/")
    assert d.split == f"weighted random -> {d.upstream}"


def test_the_split_text_of_a_keyed_split_is_unchanged():
    sticky = model.Backend("split", 2, split=model.Split("cookie:uid", "cookie", "uid", ((A, 1), (B, 1)), ""))
    d = get(compiled(route(sticky)), "http://h/")
    assert d.split.startswith("cookie:uid=(missing: random) -> ")


# -- mirrors ----------------------------------------------------------------------------------------
def test_mirrors_drawn_per_request_with_path_and_host():
    b = model.Backend("b", 2, upstream=B, mirrors=(model.Mirror(C), model.Mirror(A, 0.0)))
    rules = compiled(route(b))
    d = get(rules, "http://gw.example/x?q=1")
    assert d.path == "/base/x?q=1"
    assert d.mirrors == ((b.mirrors[0], "/x?q=1", "[::1]:9003"),)   # under the mirror's base path, its authority
    kept = compiled(route(model.Backend("b", 2, upstream=A, preserve_host=True, mirrors=(model.Mirror(B),))))
    assert get(kept, "http://gw.example/y").mirrors == ((model.Mirror(B), "/base/y", None),)   # None: the client's Host
    rw = compiled(route(model.Backend("b", 2, upstream=A, host_rewrite="h.example", mirrors=(model.Mirror(B),))))
    assert get(rw, "http://gw.example/y").mirrors == ((model.Mirror(B), "/base/y", "h.example"),)


def test_a_mirror_percent_is_a_draw_per_request():
    rules = compiled(route(model.Backend("b", 2, upstream=A, mirrors=(model.Mirror(B, 25.0),))))
    random.seed(7)
    n = sum(bool(get(rules, "http://gw.example/").mirrors) for _ in range(2000))
    assert 400 <= n <= 600, n
    with pytest.raises(RulesError, match="percent must be 0-100"):
        compiled(route(model.Backend("b", 2, upstream=A, mirrors=(model.Mirror(B, 150.0),))))


def test_no_mirror_for_a_request_that_is_not_forwarded():
    rw = model.PathRewrite("regex", "/..", pattern="^/up")
    rules = compiled(route(model.Backend("b", 2, upstream=A, rewrite=rw, mirrors=(model.Mirror(B),))))
    d = get(rules, "http://h/up")
    assert d.outcome == "bad_request" and d.mirrors == () and d.add_headers == ()


def test_backends_without_the_new_fields_are_not_marked_extra():
    rules = compiled(route(model.Backend("plain", 2, upstream=A, set_headers=(("X", "1"),))),
                     route(model.Backend("add", 2, upstream=A, add_headers=(("X", "1"),)), name="r2"))
    assert [r.backends[0].extra for r in rules.routes] == [False, True]
