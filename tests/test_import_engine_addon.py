"""The addon applies what importers write (taddons + tflow, no network): added headers after
remove and set (and a replay puts them back), a rewritten Host over HTTP/1 and as HTTP/2's
:authority, a redirect answered by the proxy, the status page's origin per route, and
explain --flows naming an imported rule."""
from __future__ import annotations

from mitmproxy import http
from mitmproxy.test import tflow

from condroute import model
from condroute.compile.compiler import compile_rules
from condroute.load.ctx import CompileCtx
from condroute.mitm.flows import flow_request, restore_request

A = model.Upstream("infra-backend-v1", "http://127.0.0.1:9001", "http", "127.0.0.1", 9001, "")
B = model.Upstream("infra-backend-v2", "http://127.0.0.1:9002/base", "http", "127.0.0.1", 9002, "/base")
ORIGIN = "httproute shop, rule 1 (routes.yaml:7)"

MODIFY = model.Backend("main", 8, upstream=B, set_headers=(("X-Set", "set"),), remove_headers=("X-Gone",),
                       add_headers=(("X-Add", "added"), ("X-Add", "again")), host_rewrite="internal.test",
                       rewrite=model.PathRewrite("segments", "/v2", prefix="/api"))


def compiled(*routes: model.Route):
    return compile_rules("main.yaml", "hand", {A.name: A, B.name: B}, model.Settings(), list(routes),
                         CompileCtx("main.yaml"))


def imported(*backends: model.Backend, name: str = "shop#1", **kw) -> model.Route:
    return model.Route(name, 7, backends=backends, file="routes.yaml", origin=ORIGIN, **kw)


def make_flow(url: str, headers: list[tuple[str, str]] = (), http2: bool = False) -> http.HTTPFlow:
    req = http.Request.make("GET", url, b"", [(k.encode(), v.encode()) for k, v in headers])
    if http2:
        req.http_version = "HTTP/2.0"
        req.authority = req.pretty_url.split("/")[2]
    else:
        req.headers.insert(0, "Host", req.pretty_url.split("/")[2])
        req.authority = ""
    return tflow.tflow(req=req)


async def cycle(addon, rules, f: http.HTTPFlow) -> http.HTTPFlow:
    addon.rules = rules
    await addon.tctx.cycle(addon, f)
    return f


async def test_added_headers_come_after_remove_and_set_and_the_host_is_rewritten(addon):
    f = await cycle(addon, compiled(imported(MODIFY)), make_flow(
        "http://shop.test/api/items?x=1", [("X-Add", "client"), ("X-Gone", "1"), ("X-Set", "a"), ("x-set", "b")]))
    r = f.request
    assert (r.host, r.port, r.path) == ("127.0.0.1", 9002, "/base/v2/items?x=1")
    assert [h for h in r.headers.fields if h[0] != b"content-length"] == [
        (b"Host", b"internal.test"), (b"X-Add", b"client"), (b"X-Set", b"set"), (b"X-Add", b"added"), (b"X-Add", b"again")]
    md = f.metadata["condroute"]
    assert md["add_headers"] == [["X-Add", "added"], ["X-Add", "again"]]
    assert md["original"]["headers"] == {"X-Add": ["client"], "X-Gone": ["1"], "X-Set": ["a", "b"]}
    assert md["original"]["host_header"] == "shop.test"
    # explain --flows decides again from the request as the client sent it ...
    view, exact = flow_request(f)
    assert exact and sorted(h for h in view.headers if h[0] != "content-length") == sorted(
        [("Host", "shop.test"), ("X-Add", "client"), ("X-Gone", "1"), ("X-Set", "a"), ("X-Set", "b")])
    # ... and a replay puts it back (the added values gone, the client's kept)
    assert restore_request(f)
    assert f.request.headers.get_all("X-Add") == ["client"] and f.request.headers.get_all("X-Set") == ["a", "b"]
    assert f.request.headers["X-Gone"] == "1" and f.request.host_header == "shop.test"


async def test_a_rewritten_host_is_http2s_authority(addon):
    f = await cycle(addon, compiled(imported(MODIFY)), make_flow("https://shop.test/api/x", http2=True))
    r = f.request
    assert r.authority == "internal.test" and r.host_header == "internal.test" and "Host" not in r.headers
    assert (r.host, r.port, r.scheme) == ("127.0.0.1", 9002, "http")


async def test_a_rewritten_host_for_the_original_destination(addon):
    rules = compiled(imported(model.Backend("b", 8, host_rewrite="other.test")))
    f = await cycle(addon, rules, make_flow("http://shop.test/x"))
    assert (f.request.host, f.request.host_header) == ("shop.test", "other.test")
    f = await cycle(addon, rules, make_flow("https://shop.test/x", http2=True))
    assert (f.request.host, f.request.authority) == ("shop.test", "other.test")


async def test_a_redirect_is_answered_by_the_proxy(addon):
    rules = compiled(imported(model.Backend("redirect", 8, redirect=model.Redirect(
        status=301, scheme="https", port_from="scheme", path=model.PathRewrite("full", "/new")))))
    f = await cycle(addon, rules, make_flow("http://shop.test:8080/old?keep=1"))
    assert f.response is not None and f.response.status_code == 301
    assert f.response.headers["Location"] == "https://shop.test/new?keep=1" and f.response.content == b""
    assert f.request.host == "shop.test"           # never forwarded
    assert f.comment == ("shop.test:8080/old → shop#1/redirect [unconditional] | condroute answered 301, "
                         "redirect to https://shop.test/new?keep=1")
    g = await cycle(addon, rules, make_flow("http://shop.test/old?access_token=SECRET"))
    assert g.response.headers["Location"] == "https://shop.test/new?access_token=SECRET"    # the client needs it
    assert "SECRET" not in g.comment and g.comment.endswith("redirect to https://shop.test/new?access_token=<redacted>")


async def test_log_line_and_comment_of_a_mirrored_request(addon, caplog):
    import logging
    caplog.set_level(logging.INFO)
    rules = compiled(imported(model.Backend("main", 8, upstream=A, mirrors=(model.Mirror(B), model.Mirror(A, 0.0)))))
    f = await cycle(addon, rules, make_flow("http://shop.test/x"))
    assert f.comment == ("shop.test/x → shop#1/main [unconditional] | to http://127.0.0.1:9001/x "
                         "(upstream infra-backend-v1) | mirrored to infra-backend-v2")
    assert "condroute: GET http://shop.test/x -> shop#1/main -> infra-backend-v1 (http://127.0.0.1:9001/x), " \
           "mirrored to infra-backend-v2" in [r.getMessage() for r in caplog.records]
    addon.mirrors.pending.clear()      # (not sent: this test is about the texts)


async def test_a_random_split_in_the_comment_and_a_weight_zero_arm_never_served(addon):
    split = model.Backend("weighted", 8, split=model.Split("random", "random", "", ((A, 1.0), (B, 0.0)), ""))
    rules = compiled(imported(split))
    for _ in range(20):
        f = await cycle(addon, rules, make_flow("http://shop.test/x"))
        assert f.request.port == 9001
        assert f.comment.endswith("| split weighted random -> infra-backend-v1"), f.comment


async def test_the_status_api_names_an_imported_rule_by_its_source(addon):
    rules = compiled(imported(MODIFY), model.Route("own", 3, hosts=("own.test",),
                                                   backends=(model.Backend("b", 4, upstream=A),)),
                     imported(model.Backend("m", 9, upstream=A, mirrors=(model.Mirror(B, 10.0),)), name="shop#2"))
    addon.rules = rules
    snap = addon.status.snapshot()
    assert [(r["name"], r["line"], r["origin"], r["file"]) for r in snap["routes"]] == [
        ("shop#1", 7, ORIGIN, "routes.yaml"), ("own", 3, "", ""), ("shop#2", 7, ORIGIN, "routes.yaml")]
    assert snap["routes"][2]["backends"][0]["target"] == "infra-backend-v1; mirrored to infra-backend-v2 10%"
    assert {u["name"] for u in snap["upstreams"]} == {A.name, B.name}


def test_explain_flows_names_an_imported_rule(tmp_path, capsys):
    from mitmproxy import io

    from condroute.mitm.flows import explain_flows

    rules = compiled(imported(MODIFY))
    path = tmp_path / "flows.mitm"
    with open(path, "wb") as fh:
        io.FlowWriter(fh).add(make_flow("http://shop.test/api/a"))
    assert explain_flows(rules, str(path), as_json=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("1  GET http://shop.test/api/a -> shop#1/main -> infra-backend-v2 ")
    assert out[0].endswith(f"  ({ORIGIN})")
    assert any(line.split() == ["shop#1/main", "1", *ORIGIN.split()] for line in out), out
