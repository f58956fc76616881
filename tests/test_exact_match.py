"""Rules-format "What is matched": the host is where the request really goes, and the path is matched
(and forwarded) normalised. The engine and explain/check directly, the addon on mitmproxy's test
flows, and property tests over generated paths and hosts (issue 11, items 1 and 2). End to end
through a real mitmdump: test_e2e_exact.py."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from condroute.cli.cases import load_cases, run_case
from condroute.engine import decide
from condroute.errors import RulesError
from condroute.explain import build_request, final_path
from condroute.mitm.addon import ConditionalRouting, request_view
from condroute.request import RequestView, normalize_path
from condroute.rules import load_rules

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RULES = """
    version: 1
    upstreams: {base: "http://10.0.0.1:8080/base"}
    routes:
      - name: admin
        match: {path: /admin/*}
        backends: [{name: deny, respond: {status: 403, body: "blocked\\n"}}]
      - name: api
        match: {path: /api/*}
        backends: [{name: v1, upstream: base, path: "/v1/{rest}"}]
      - name: users
        match: {path: "/users/{id}"}
        backends: [{name: u, upstream: base, path: "/u/{id}/profile"}]
      - name: files
        match: {path: "/files/{name}.json"}
        backends: [{name: f, upstream: base, path: "/f/{name}"}]
      - name: pair
        match: {path: "/p/{a}-{b}"}
        backends: [{name: p, upstream: base, path: "/p/{a}{b}"}]
      - name: raw
        match: {path: /raw/*}
        backends: [{name: r, upstream: base, path: "{rest}"}]
    """


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    p = tmp_path_factory.mktemp("exact") / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    return load_rules(str(p))


def view(url: str, headers=()) -> RequestView:
    return build_request(url, "GET", list(headers))


# -- the normalisation itself ----------------------------------------------------------------------
@pytest.mark.parametrize("raw,norm", [
    ("/", "/"), ("/a/b", "/a/b"), ("/./admin/x", "/admin/x"), ("//admin/x", "/admin/x"),
    ("/api/../admin/x", "/admin/x"), ("/a/b/..", "/a/"), ("/a/.", "/a/"), ("/..", "/"), ("/../..//x/", "/x/"),
    ("/a;b/c", "/a;b/c"), ("/.hidden/x", "/.hidden/x"), ("/a%20b/./c", "/a%20b/c"), ("*", "*"),
])
def test_dot_segments_removed_and_slashes_merged(raw, norm):
    assert normalize_path(raw) == (norm, None)


@pytest.mark.parametrize("raw,alt", [
    ("/%2e/admin/x", "/admin/x"), ("/%2E%2e/admin", "/admin"), ("/admin%2fx", "/admin/x"), ("/admin%2Fx", "/admin/x"),
    ("/a%5cb", "/a/b"), ("/a%5C..%5Cadmin", "/admin"), ("/a\\..\\admin", "/admin"), ("/api/..;/admin/x", "/admin/x"),
    ("/x/.;y/admin", "/x/admin"),
])
def test_encoded_separators_backslashes_and_dot_params_are_questioned(raw, alt):
    norm, refused = normalize_path(raw)
    assert refused is not None and refused[1] == alt


# -- the engine: a block cannot be walked around ----------------------------------------------------
@pytest.mark.parametrize("path", ["/./admin/x", "//admin/x", "/api/../admin/x", "/x/y/../../admin/x", "/admin//x"])
def test_dot_segments_and_double_slashes_do_not_skip_a_block(rules, path):
    d = decide(rules, view("http://shop.example" + path))
    assert (d.outcome, d.route, d.status) == ("respond", "admin", 403)


@pytest.mark.parametrize("path", ["/%2e/admin/x", "/%2E/admin/x", "/admin%2fx", "/api/..;/admin/x", "/api%2f..%2fadmin/x",
                                  "/x/%2e%2e/admin/y", "/a\\..\\admin\\x", "/a%5c..%5cadmin/x"])
def test_encoded_dots_and_slashes_answer_400_where_a_route_could_own_the_path(rules, path):
    d = decide(rules, view("http://shop.example" + path))
    assert (d.outcome, d.status) == ("bad_request", 400), d
    assert "the path has" in d.reason and d.route is not None
    assert d.error_body().startswith("condroute: bad request: the path has")


def test_an_odd_path_that_no_route_could_own_passes_through_untouched(rules):
    req = view("http://shop.example/static/a%2Fb/%2e%2e/c?x=%2e%2e")
    d = decide(rules, req)
    assert (d.outcome, d.route) == ("passthrough", None)
    assert final_path(d, req) == "/static/a%2Fb/%2e%2e/c?x=%2e%2e"
    req = view("http://shop.example/static/../x//y")
    assert final_path(decide(rules, req), req) == "/static/../x//y"   # passthrough: as received


def test_the_normalised_path_is_what_is_forwarded_and_the_query_stays(rules):
    d = decide(rules, view("http://shop.example/api/./users//7/?q=/../%2e&r=a//b"))
    assert (d.outcome, d.path) == ("routed", "/base/v1/users/7/?q=/../%2e&r=a//b")


@pytest.mark.parametrize("path", ["/api/../../admin", "/api/x/../../../admin", "/users/..", "/users/../admin/x"])
def test_captured_values_never_carry_dot_dot(rules, path):
    d = decide(rules, view("http://shop.example" + path))
    assert d.outcome in ("respond", "passthrough"), d
    if d.outcome == "routed":
        assert ".." not in d.path


@pytest.mark.parametrize("path,why", [("/files/..json", "'/f/.'"), ("/p/.-.", "'/p/..'")])
def test_a_rendered_path_that_would_climb_out_is_refused(rules, path, why):
    d = decide(rules, view("http://shop.example" + path))
    assert (d.outcome, d.status) == ("bad_request", 400)
    assert why in d.reason


def test_rest_alone_renders_an_origin_form_path_under_the_base(rules):
    d = decide(rules, view("http://shop.example/raw/ment"))
    assert (d.outcome, d.path) == ("routed", "/base/ment")


# -- property tests --------------------------------------------------------------------------------
SEGMENTS = [".", "..", "%2e", "%2E", "%2e%2e", "%2E%2e", ".%2e", "%2f", "%2F", "%5c", "%5C", "", ";", "..;", ".;x",
            "..;a=b", "admin", "ADMIN", "api", "users", "files", "p", "raw", "v1", "x", "a%20b", "%41", "\\", "a\\..",
            "x.json", "..json", ".-.", "a-b", "admin;x", "%2e%2e%2fadmin"]
paths = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=8).map(lambda s: "/" + "/".join(s))
queries = st.sampled_from(["", "q=1", "q=/../%2e", "a=%2f&b=..//x"])


def server_reading(path: str, decode: bool) -> str:
    """How a server may read a path: as RFC 3986 says, or decoding every escape, reading a backslash
    as "/" and "..;x" as ".." (Tomcat). Written independently of condroute's own normaliser."""
    if decode:
        path = unquote(path).replace("\\", "/")
    out: list[str] = []
    segs = path.split("/")[1:]
    for i, seg in enumerate(segs):
        dot = seg.split(";")[0] if decode else seg
        if dot == "..":
            out = out[:-1]
        elif dot != "." and seg:
            out.append(seg)
            continue
        if i == len(segs) - 1:
            out.append("")
    return "/" + "/".join(out)


def under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


@SETTINGS
@given(path=paths, query=queries)
def test_nothing_forwarded_leaves_the_upstreams_base_path(rules, path, query):
    d = decide(rules, RequestView("GET", "http", "shop.example", 80, path, query))
    if d.outcome != "routed":
        return
    fwd, _, q = d.path.partition("?")
    assert q == query                                     # the query string is kept untouched
    for decode in (False, True):
        assert under(server_reading(fwd, decode), "/base"), (path, fwd)
    assert not re.search(r"%2e|%2f|%5c|\\", fwd, re.I)


@SETTINGS
@given(path=paths)
def test_no_path_into_a_blocked_prefix_avoids_the_block(rules, path):
    d = decide(rules, RequestView("GET", "http", "shop.example", 80, path))
    if any(under(server_reading(path, decode).lower(), "/admin") and
           under(server_reading(path, decode), "/admin") for decode in (False, True)):
        assert (d.outcome, d.status) in (("respond", 403), ("bad_request", 400)), (path, d)


@SETTINGS
@given(path=paths, query=queries)
def test_explain_decides_as_the_addon(rules, path, query):
    """explain/check build their request from a URL; the addon from mitmproxy's data."""
    f = tflow.tflow()
    target = path + (f"?{query}" if query else "")
    f.request = http.Request("shop.example", 80, b"GET", b"http", b"", target.encode(), b"HTTP/1.1",
                             http.Headers([(b"Host", b"shop.example")]), b"", None, 0, 0)
    f.server_conn.address = ("shop.example", 80)
    a, b = decide(rules, request_view(f)), decide(rules, build_request("http://shop.example" + target))
    assert (a.outcome, a.route, a.path, a.status, a.reason) == (b.outcome, b.route, b.path, b.status, b.reason)


# -- rules that could never match, or would climb out, are load errors -----------------------------
@pytest.mark.parametrize("snippet,msg", [
    ('match: {path: "/a/../b"}', "has a '.' or '..' segment"),
    ('match: {path: "/a//b"}', "has an empty segment"),
    ('match: {path: "/a%2Fb"}', "encoded"),
    ('match: {path: "/a"}\n    backends: [{name: b, upstream: "http://h/x", path: "/../{path}"}]', "stay under"),
    ('match: {path: "/a"}\n    backends: [{name: b, upstream: "http://h/base/../x"}]', "bad upstream URL"),
])
def test_paths_in_the_rules_must_be_normal(tmp_path: Path, snippet, msg):
    if "backends" not in snippet:
        snippet += "\n    backends: [{name: b, upstream: \"http://h\"}]"
    p = tmp_path / "r.yaml"
    p.write_text(f"version: 1\nroutes:\n  - name: r\n    {snippet}\n")
    with pytest.raises(RulesError) as e:
        load_rules(str(p))
    assert msg in str(e.value)
    assert re.search(r"r\.yaml:\d+:\d+: ", str(e.value))


def test_check_cases_can_expect_a_400(rules, tmp_path: Path):
    p = tmp_path / "cases.yaml"
    p.write_text(textwrap.dedent("""
        - request: {url: "http://shop.example/%2e/admin/x"}
          expect: {outcome: bad_request, status: 400}
        - request: {url: "http://shop.example//admin/x"}
          expect: {route: admin, status: 403}
        """))
    cases = load_cases(str(p))
    assert [run_case(rules, c) for c in cases] == [[], []]


# -- hosts: the addon decides on where the request goes ---------------------------------------------
HOST_RULES = """
    version: 1
    routes:
      - name: blocked
        match: {host: 127.0.0.1}
        backends: [{name: deny, respond: {status: 403}}]
      - name: other
        match: {host: other.example}
        backends: [{name: o, upstream: "http://10.9.9.9:1"}]
    """


@pytest.fixture
def addon(tmp_path: Path):
    p = tmp_path / "hosts.yaml"
    p.write_text(textwrap.dedent(HOST_RULES))
    a = ConditionalRouting()
    with taddons.context(a) as tctx:
        tctx.configure(a, condroute_rules=str(p))
        yield a


def flow(host: str, port: int, fields: list[tuple[bytes, bytes]], authority: bytes = b"", h2: bool = False,
         mode: str = "regular", tunnel: bool = False, path: bytes = b"/") -> http.HTTPFlow:
    """A flow as mitmproxy hands it to requestheaders: ``host``/``port`` where it goes."""
    f = tflow.tflow()
    f.request = http.Request(host, port, b"GET", b"http", authority, path, b"HTTP/2.0" if h2 else b"HTTP/1.1",
                             http.Headers(fields), b"", None, 0, 0)
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    f.server_conn.address = (host, port) if tunnel or mode.startswith("reverse") else None
    return f


def answer(f: http.HTTPFlow) -> int | None:
    md = f.metadata.get("condroute") or {}
    return (md.get("answer") or {}).get("status")


def test_absolute_form_host_header_is_ignored_and_replaced(addon):
    # curl -x PROXY http://127.0.0.1:PORT/ -H 'Host: other.example': the request goes to 127.0.0.1
    f = flow("127.0.0.1", 8080, [(b"Host", b"other.example")])
    addon.route(f)
    assert answer(f) == 403
    f = flow("shop.example", 8080, [(b"host", b"other.example")])
    addon.route(f)
    assert answer(f) is None and f.request.data.headers.fields == ((b"host", b"shop.example:8080"),)
    f = flow("shop.example", 80, [])
    addon.route(f)
    assert f.request.headers["Host"] == "shop.example"


@pytest.mark.parametrize("fields", [
    [(b"Host", b"x.example"), (b"Host", b"127.0.0.1:8080")],
    [(b"Host", b"127.0.0.1:8080"), (b"HOST", b"127.0.0.1:8080")],
])
@pytest.mark.parametrize("mode,tunnel", [("regular", False), ("regular", True), ("reverse:http://127.0.0.1:2", True),
                                         ("upstream:http://127.0.0.1:3", False)])
def test_two_host_headers_get_400(addon, fields, mode, tunnel):
    f = flow("127.0.0.1", 8080, fields, mode=mode, tunnel=tunnel)
    addon.route(f)
    assert answer(f) == 400
    assert "two Host headers" in f.metadata["condroute"]["answer"]["body"]


@pytest.mark.parametrize("fields,authority,h2", [
    ([(b"Host", b"other.example")], b"", False),                     # HTTP/1 inside CONNECT 127.0.0.1:8080
    ([], b"other.example", True),                                    # HTTP/2 :authority inside the tunnel
    ([(b"Host", b"other.example")], b"127.0.0.1:8080", True),        # HTTP/2 :authority and Host disagree
    ([(b"Host", b"127.0.0.1")], b"http://other.example", False),     # absolute-form inside the tunnel
])
def test_a_tunnel_whose_request_names_another_host_gets_400(addon, fields, authority, h2):
    f = flow("127.0.0.1", 8080, fields, authority, h2=h2, tunnel=True)
    addon.route(f)
    assert answer(f) == 400


def test_http2_authority_and_host_disagreeing_without_tunnel_get_400(addon):
    f = flow("127.0.0.1", 8080, [(b"Host", b"other.example")], b"127.0.0.1:8080", h2=True)
    addon.route(f)
    assert answer(f) == 400


def test_reverse_mode_routes_on_the_host_header(addon):
    f = flow("10.1.1.1", 80, [(b"Host", b"other.example")], mode="reverse:http://10.1.1.1:80")
    addon.route(f)
    assert f.request.host == "10.9.9.9"
    f = flow("10.1.1.1", 80, [(b"Host", b"127.0.0.1")], b"other.example", h2=True, mode="reverse:http://10.1.1.1:80")
    addon.route(f)
    assert answer(f) == 400


def test_transparent_mode_uses_the_name_and_checks_it_against_sni(addon):
    f = flow("10.1.1.1", 443, [(b"Host", b"other.example")], mode="transparent", tunnel=True)
    assert request_view(f).host == "other.example"
    f.client_conn.sni = "127.0.0.1"
    addon.route(f)
    assert answer(f) == 400


hosts = st.sampled_from(["127.0.0.1", "other.example", "shop.example", "SHOP.example.", "[::1]", "::1", "127.0.0.1:80",
                         "other.example:8443", "x.example"])


@SETTINGS
@given(target=st.sampled_from(["127.0.0.1", "other.example", "shop.example"]), port=st.sampled_from([80, 8443]),
       host_headers=st.lists(hosts, max_size=2), authority=st.one_of(st.just(""), hosts), h2=st.booleans(),
       mode=st.sampled_from(["regular", "upstream:http://127.0.0.1:3", "reverse:http://127.0.0.1:2"]),
       tunnel=st.booleans())
def test_the_decided_host_is_where_the_request_goes(tmp_path_factory, target, port, host_headers, authority, h2, mode,
                                                    tunnel):
    p = tmp_path_factory.mktemp("h") / "hosts.yaml"
    p.write_text(textwrap.dedent(HOST_RULES))
    a = ConditionalRouting()
    reverse = mode.startswith("reverse")
    if not tunnel and not reverse:
        if h2:
            authority = target        # HTTP/2 to the proxy itself: mitmproxy's target is :authority
        elif mode == "regular":
            authority = ""            # mitmproxy turns absolute-form into origin-form
        else:
            authority = f"{target}:{port}"
    fields = [(b"Host", h.encode()) for h in host_headers]
    f = flow(target, port, fields, authority.encode(), h2=h2, mode=mode, tunnel=tunnel)
    with taddons.context(a) as tctx:
        tctx.configure(a, condroute_rules=str(p))
        v = request_view(f)
        a.route(f)
    if answer(f) == 400:
        return
    def named(raw: str) -> str:
        if raw.startswith("["):
            return raw[1:raw.index("]")]
        return (raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw).lower().rstrip(".")
    if reverse:
        want = named(authority or (host_headers[0] if host_headers else target))
    else:
        want = target
        # nothing that reaches the server names another host than the one it is sent to
        if answer(f) is None and f.metadata.get("condroute", {}).get("outcome") != "routed":
            r = f.request.data
            hs = [named(v_.decode()) for k, v_ in r.headers.fields if k.lower() == b"host"]
            assert all(h == target for h in hs), hs
            if r.authority and r.http_version == b"HTTP/2.0":
                assert named(r.authority.decode()) == target
    assert v.host == want
    assert answer(f) == (403 if want == "127.0.0.1" else None)


def test_explain_flows_decides_on_the_host_the_addon_decided_on():
    from condroute.mitm.flows import flow_request
    f = flow("127.0.0.1", 8080, [(b"Host", b"other.example")])          # regular mode: where it went
    assert flow_request(f)[0].host == "127.0.0.1"
    f = flow("10.1.1.1", 80, [(b"Host", b"other.example")], mode="reverse:http://10.1.1.1:80")
    assert flow_request(f)[0].host == "other.example"                   # reverse mode: the Host header
