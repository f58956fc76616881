"""The status page (issue 13, item 6): ``http://condroute.mitm.it/`` and ``/api/status``.

In mitmproxy's own harness (taddons + tflow): the JSON's shape and values after routed requests,
counts across reloads, upstream health states, 404/405/HEAD, the option. Through a real mitmdump
(slow): real traffic counted, a reload error shown, status requests neither counted nor forwarded
(a recording backend on 127.0.0.1 as the status host, and a status host that resolves nowhere).
The page in a real browser: test_status_browser.py.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from condroute.mitm import status as status_mod
from condroute.mitm.addon import ConditionalRouting
from condroute.mitm.health import Failure
from condroute.mitm.status import RECENT, check_host
from condroute.mitm.status_page import CSP, JS, PAGE
from helpers import read_head, run_mitmdump_until_exit, serve_raw
from test_addon import Harness, make_flow, settle

RULES = """
    version: 1
    upstreams:
      a: http://127.0.0.1:9001
      b: http://127.0.0.1:9002
    routes:
      - name: shop
        match: {host: shop.example}
        backends:
          - {name: variant-b, when: {header: {X-Ab-Test: B}}, upstream: b}
          - {name: default, fallback: true, upstream: a}
      - name: admin
        match: {path: /admin/*}
        backends:
          - {name: deny, respond: {status: 403, body: "no\\n"}}
      - name: strict
        match: {host: strict.example}
        backends:
          - {name: beta, when: {cookie: {beta: "1"}}, upstream: "http://127.0.0.1:9003"}
    """


@pytest.fixture
def harness():
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        yield Harness(tctx, addon)


@pytest.fixture
def write(rules_file):
    """write(text) -> the path (str) of a rules file with that (dedented) text."""
    return lambda text: str(rules_file(text))


async def api(h: Harness, path: str = "/api/status", method: str = "GET") -> http.HTTPFlow:
    """A request for the status page through the addon's hooks."""
    return await h.cycle(make_flow(f"http://condroute.mitm.it{path}", method=method))


async def status_json(h: Harness) -> dict:
    f = await api(h)
    assert f.response is not None and f.response.status_code == 200
    assert f.response.headers["Content-Type"] == "application/json"
    return json.loads(f.response.content)


async def status_json_at(h: Harness, host: str) -> dict:
    f = await h.cycle(make_flow(f"http://{host}/api/status"))
    assert f.response is not None and f.response.status_code == 200
    return json.loads(f.response.content)


def route(s: dict, name: str) -> dict:
    return next(r for r in s["routes"] if r["name"] == name)


def hits(s: dict) -> dict:
    """{route: (hits, {backend: hits})}"""
    return {r["name"]: (r["hits"], {b["name"]: b["hits"] for b in r["backends"]}) for r in s["routes"]}


# -- the JSON --------------------------------------------------------------------------------------
async def test_shape_and_counts_after_routed_requests(harness, write):
    path = write(RULES)
    harness.configure(condroute_rules=path)
    await harness.cycle(make_flow("http://shop.example/a", headers={"X-Ab-Test": "B"}))
    await harness.cycle(make_flow("http://shop.example/b"))
    await harness.cycle(make_flow("http://shop.example/c"))
    await harness.cycle(make_flow("http://other.example/admin/x"))          # respond 403
    await harness.cycle(make_flow("http://strict.example/"))                # no backend holds: passthrough
    await harness.cycle(make_flow("http://nowhere.example/"))               # no route
    s = await status_json(harness)
    assert set(s) >= {"rules", "routes", "upstreams", "recent"}
    assert set(s["rules"]) >= {"path", "generation", "loaded_at", "error"}
    assert s["rules"]["path"] == path and s["rules"]["generation"] == 1 and s["rules"]["error"] is None
    assert abs(s["rules"]["loaded_at"] - time.time()) < 60
    assert hits(s) == {"shop": (3, {"variant-b": 1, "default": 2}), "admin": (1, {"deny": 1}),
                       "strict": (1, {"beta": 0})}
    assert route(s, "strict")["unserved"] == 1
    assert s["passthrough"] == 1 and s["decisions"] == 6
    assert [(u["name"], u["url"], u["state"]) for u in s["upstreams"]] == [
        ("a", "http://127.0.0.1:9001", "unknown"), ("b", "http://127.0.0.1:9002", "unknown"),
        ("http://127.0.0.1:9003", "http://127.0.0.1:9003", "unknown")]
    rec = s["recent"]
    assert [(d["outcome"], d["route"], d["backend"]) for d in rec] == [
        ("passthrough", None, None), ("no_match", "strict", None), ("respond", "admin", "deny"),
        ("routed", "shop", "default"), ("routed", "shop", "default"), ("routed", "shop", "variant-b")]
    first = rec[-1]
    assert (first["method"], first["url"], first["upstream"], first["target"]) == (
        "GET", "http://shop.example/a", "b", "http://127.0.0.1:9002/a")
    assert first["reason"] == harness.addon.rules.routes[0].backends[0].held_reason   # "when holds: header ..."
    assert first["reason"].startswith("when holds: header X-Ab-Test")
    assert rec[-2]["reason"] == "fallback: no other backend held"
    assert rec[-2]["skipped"] == [{"backend": "variant-b", "reason": 'header X-Ab-Test is missing, wanted "B"'}]
    assert rec[2]["status"] == 403 and rec[2]["target"] is None
    assert rec[1]["reason"] == "no backend of the route holds" and rec[1]["skipped"][0]["backend"] == "beta"
    assert rec[0]["reason"].startswith("no route matched")
    assert all(rec[i]["time"] >= rec[i + 1]["time"] for i in range(len(rec) - 1))


async def test_status_requests_are_answered_not_counted_not_routed(harness, write):
    harness.configure(condroute_rules=write(RULES))
    for _ in range(3):
        f = await api(harness)
        assert f.response.status_code == 200
        assert f.request.host == "condroute.mitm.it" and f.request.port == 80   # not rewritten
        assert "condroute" not in f.metadata
    await api(harness, "/")
    await api(harness, "/nope")
    s = await status_json(harness)
    assert s["decisions"] == 0 and s["recent"] == [] and s["passthrough"] == 0


async def test_the_page_works_without_rules(harness):
    await harness.cycle(make_flow("http://shop.example/"))   # inactive: nothing decided
    s = await status_json(harness)
    assert s["rules"] == {"path": None, "generation": 0, "loaded_at": None, "error": None, "summary": None,
                          "format": None}
    assert s["routes"] == [] and s["upstreams"] == [] and s["recent"] == []


async def test_recent_keeps_the_last_fifty(harness, write):
    harness.configure(condroute_rules=write(RULES))
    for i in range(RECENT + 7):
        await harness.cycle(make_flow(f"http://shop.example/n{i}"))
    s = await status_json(harness)
    assert len(s["recent"]) == RECENT
    assert s["recent"][0]["url"] == f"http://shop.example/n{RECENT + 6}"
    assert s["recent"][-1]["url"] == "http://shop.example/n7"
    assert route(s, "shop")["hits"] == RECENT + 7


async def test_secrets_in_urls_are_redacted_as_in_the_log(harness, write):
    harness.configure(condroute_rules=write(RULES))
    await harness.cycle(make_flow("http://shop.example/p?access_token=s3cr3t&page=2",
                                  headers={"Cookie": "sessionid=abcdefghijklmnop", "Authorization": "Bearer xyz"}))
    f = await api(harness)
    text = f.response.content.decode()
    assert "s3cr3t" not in text and "abcdefghijklmnop" not in text and "xyz" not in text
    d = json.loads(text)["recent"][0]
    assert d["url"] == "http://shop.example/p?access_token=<redacted>&page=2"
    assert d["target"] == "http://127.0.0.1:9001/p?access_token=<redacted>&page=2"


async def test_counts_kept_across_reloads_for_names_that_remain(harness, write):
    path = write(RULES)
    harness.configure(condroute_rules=path)
    await harness.cycle(make_flow("http://shop.example/", headers={"X-Ab-Test": "B"}))
    await harness.cycle(make_flow("http://shop.example/"))
    await harness.cycle(make_flow("http://other.example/admin/1"))
    assert hits(await status_json(harness))["admin"] == (1, {"deny": 1})
    # the new version: shop keeps variant-b, renames default to main; admin is gone
    write(RULES.replace("name: default", "name: main").replace("name: admin", "name: admin2"))
    assert settle(harness.addon, path) is True
    s = await status_json(harness)
    assert s["rules"]["generation"] == 2
    assert hits(s) == {"shop": (1, {"variant-b": 1, "main": 0}), "admin2": (0, {"deny": 0}),
                       "strict": (0, {"beta": 0})}
    await harness.cycle(make_flow("http://shop.example/", headers={"X-Ab-Test": "B"}))
    assert hits(await status_json(harness))["shop"] == (2, {"variant-b": 2, "main": 0})
    assert len((await status_json(harness))["recent"]) == 4      # the recent decisions stay


async def test_a_failed_reload_shows_its_located_error(harness, write):
    path = write(RULES)
    harness.configure(condroute_rules=path)
    Path(path).write_text("version: 1\nroutes:\n  - name: r\n    backends:\n      - {name: x, upstream: nowhere}\n")
    assert settle(harness.addon, path) is False
    s = await status_json(harness)
    assert s["rules"]["generation"] == 1 and s["rules"]["path"] == path
    assert s["rules"]["error"].startswith(f"{path}:5:") and "nowhere" in s["rules"]["error"]
    assert [r["name"] for r in s["routes"]] == ["shop", "admin", "strict"]     # the last good rules


async def test_upstream_states_from_passive_health(harness, write):
    harness.configure(condroute_rules=write(RULES))
    health = harness.addon.upstreams.health
    now = [1000.0]
    health.clock = lambda: now[0]
    health.cooldown = 5.0
    health.mark_down("127.0.0.1", 9001, "refused the connection", attempts=2)
    health.opened("127.0.0.1", 9002)
    health.failures[("127.0.0.1", 9003)] = Failure("did not accept a connection within 1s", 990.0)
    now[0] = 1001.5
    s = await status_json(harness)
    up = {u["name"]: u for u in s["upstreams"]}
    assert up["a"]["state"] == "down" and up["a"]["error"] == "refused the connection"
    assert up["a"]["cooldown_left"] == pytest.approx(3.5) and up["a"]["attempts"] == 2
    assert up["b"]["state"] == "up" and up["b"]["connections"] == 1
    assert up["http://127.0.0.1:9003"]["state"] == "retrying"
    assert up["http://127.0.0.1:9003"]["failed_ago"] == pytest.approx(11.5)
    health.closed("127.0.0.1", 9002)
    now[0] = 1010.0
    up = {u["name"]: u for u in (await status_json(harness))["upstreams"]}
    assert up["a"]["state"] == "retrying"
    assert up["b"]["state"] == "up" and up["b"]["connections"] == 0 and up["b"]["ok_ago"] == pytest.approx(10.0)


async def test_split_arms_and_inline_upstreams_are_listed_once(harness, write):
    harness.configure(condroute_rules=write("""
        version: 1
        upstreams: {a: http://127.0.0.1:9001, b: http://127.0.0.1:9002}
        routes:
          - name: s
            backends:
              - {name: canary, split: {by: "cookie:uid", weights: {a: 90, b: 10}}}
              - {name: x, fallback: true, upstream: "http://127.0.0.1:9009"}
        """))
    s = await status_json(harness)
    assert [u["name"] for u in s["upstreams"]] == ["a", "b", "http://127.0.0.1:9009"]
    assert route(s, "s")["backends"][0]["target"] == "split by cookie:uid: a 90, b 10"


# -- the answers -----------------------------------------------------------------------------------
async def test_the_page_is_static_and_self_contained(harness, write):
    harness.configure(condroute_rules=write(RULES))
    await harness.cycle(make_flow("http://shop.example/<script>alert(1)</script>"))
    f = await api(harness, "/")
    r = f.response
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert r.content == PAGE                      # no data in the HTML: the script draws it from the JSON
    assert r.headers["Content-Security-Policy"] == CSP and "default-src 'none'" in CSP
    assert r.headers["Cache-Control"] == "no-store"
    page = r.content.decode()
    assert "http://" not in page.replace("http://HOST", "") and "https://" not in page   # no external resources
    assert "innerHTML" not in JS and "document.write" not in JS and "eval(" not in JS


async def test_the_json_never_carries_markup_unescaped_for_html(harness, write):
    harness.configure(condroute_rules=write(RULES.replace("name: shop", "name: '<b>shop</b>'")))
    await harness.cycle(make_flow("http://shop.example/x", headers={"X-Ab-Test": "<img src=x onerror=alert(1)>"}))
    f = await api(harness)
    assert f.response.headers["X-Content-Type-Options"] == "nosniff"
    assert f.response.headers["Content-Type"] == "application/json"
    s = json.loads(f.response.content)
    assert s["routes"][0]["name"] == "<b>shop</b>"
    assert "<img src=x onerror=alert(1)>" in s["recent"][0]["skipped"][0]["reason"]


@pytest.mark.parametrize("path, method, status", [
    ("/", "GET", 200), ("/?x=1", "GET", 200), ("/api/status", "GET", 200), ("/api/status?x", "GET", 200),
    ("/nope", "GET", 404), ("/api/status/", "GET", 404), ("/favicon.ico", "GET", 404), ("/nope", "POST", 404),
    ("/", "POST", 405), ("/api/status", "DELETE", 405), ("/api/status", "PUT", 405), ("/", "OPTIONS", 405),
])
async def test_paths_and_methods(harness, path, method, status):
    f = await api(harness, path, method)
    assert f.response.status_code == status
    assert f.response.headers["Cache-Control"] == "no-store"
    if status == 405:
        assert f.response.headers["Allow"] == "GET, HEAD"
        assert method.encode() in f.response.content


async def test_head_has_the_headers_and_no_body(harness):
    get = (await api(harness, "/")).response
    head = (await api(harness, "/", "HEAD")).response
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(get.content))
    assert head.headers["Content-Type"] == get.headers["Content-Type"]


# -- the option ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, host", [("condroute.mitm.it", "condroute.mitm.it"), (" Status.Local. ", "status.local"),
                                         ("", ""), ("127.0.0.1", "127.0.0.1"), ("a_b-c.example", "a_b-c.example")])
def test_good_status_hosts(value, host):
    assert check_host(value) == host


@pytest.mark.parametrize("value", ["http://condroute.mitm.it", "condroute.mitm.it:8080", "a/b", "a b", "-a.example",
                                   "a..b", "[::1]", "x" * 64 + ".example", "café.example"])
def test_bad_status_hosts(value):
    with pytest.raises(ValueError) as e:
        check_host(value)
    assert "condroute_status_host must be a host name" in str(e.value) and repr(value) in str(e.value)


async def test_bad_status_host_option_keeps_the_old_one(harness, caplog):
    caplog.set_level(logging.INFO)
    harness.configure(condroute_status_host="status.test")
    harness.configure(condroute_status_host="http://x")
    assert harness.addon.status.host == "status.test"
    assert any("condroute_status_host must be a host name" in r.getMessage() for r in caplog.records)
    assert (await harness.cycle(make_flow("http://status.test/api/status"))).response.status_code == 200


async def test_another_status_host_and_none(harness, write):
    harness.configure(condroute_rules=write(RULES), condroute_status_host="Status.Test")
    f = await harness.cycle(make_flow("http://status.test/api/status"))
    assert f.response.status_code == 200
    f = await api(harness)                   # the default host is now an ordinary destination
    assert f.response is None and "condroute_status" not in f.metadata
    assert (await status_json_at(harness, "status.test"))["recent"][0]["url"] == "http://condroute.mitm.it/api/status"
    harness.configure(condroute_status_host="")
    f = await harness.cycle(make_flow("http://status.test/api/status"))
    assert f.response is None


def test_record_is_a_few_operations():
    """What runs per request: no rendering, no formatting (the cost is measured by
    scripts/bench_status.py: see the README)."""
    import dis
    names = {i.argval for i in dis.get_instructions(status_mod.Status.record) if i.opname in (
        "LOAD_GLOBAL", "LOAD_ATTR", "LOAD_METHOD")}
    assert names <= {"recent", "append", "_time", "route", "backend", "hits", "get"}, names


# -- through a real mitmdump (slow) ----------------------------------------------------------------
def recording_backend() -> tuple[socket.socket, list[bytes]]:
    """A backend on 127.0.0.1 that keeps the head of every request it is sent and answers 200."""
    got: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        with conn:
            while True:
                head = read_head(conn)
                if not head.endswith(b"\r\n\r\n"):
                    return
                got.append(head)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    return serve_raw(handle), got


def via(proxy_port: int, url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    c = HTTPConnection("127.0.0.1", proxy_port, timeout=10)
    try:
        c.request(method, url, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


E2E = """
    version: 1
    upstreams: {{a: "http://127.0.0.1:{a}", b: "http://127.0.0.1:{b}"}}
    routes:
      - name: shop
        match: {{host: shop.example}}
        backends:
          - {{name: variant-b, when: {{header: {{X-Ab-Test: B}}}}, upstream: b}}
          - {{name: default, fallback: true, upstream: a}}
      - name: everything-else
        backends:
          - {{name: catch-all, when: {{header: {{X-Catch: "1"}}}}, upstream: a}}
    """


@pytest.mark.slow
def test_e2e_counts_recent_and_never_forwarded(proxy, rules_file):
    srv_a, got_a = recording_backend()
    srv_b, got_b = recording_backend()
    try:
        pa, pb = srv_a.getsockname()[1], srv_b.getsockname()[1]
        p = proxy(rules_file(E2E.format(a=pa, b=pb)))
        assert via(p.port, "http://shop.example/1", headers={"X-Ab-Test": "B"})[0] == 200
        assert via(p.port, "http://shop.example/2")[0] == 200
        assert via(p.port, "http://shop.example/3")[0] == 200
        # the default status host resolves nowhere: answered by the proxy or not at all
        for _ in range(2):
            st, h, body = via(p.port, "http://condroute.mitm.it/api/status", headers={"X-Catch": "1"})
            assert st == 200 and h["cache-control"] == "no-store"
        s = json.loads(body)
        assert hits(s)["shop"] == (3, {"variant-b": 1, "default": 2})
        assert hits(s)["everything-else"] == (0, {"catch-all": 0})
        assert s["decisions"] == 3
        assert [(d["backend"], d["url"], d["target"]) for d in s["recent"]] == [
            ("default", "http://shop.example/3", f"http://127.0.0.1:{pa}/3"),
            ("default", "http://shop.example/2", f"http://127.0.0.1:{pa}/2"),
            ("variant-b", "http://shop.example/1", f"http://127.0.0.1:{pb}/1")]
        assert {u["name"]: u["state"] for u in s["upstreams"]} == {"a": "up", "b": "up"}
        st, h, page = via(p.port, "http://condroute.mitm.it/")
        assert st == 200 and h["content-type"].startswith("text/html") and b'<div id="app"' in page
        assert via(p.port, "http://condroute.mitm.it/x")[0] == 404
        assert via(p.port, "http://condroute.mitm.it/api/status", "POST")[0] == 405
        assert len(got_a) == 2 and len(got_b) == 1          # the routed requests only
        assert all(b"condroute.mitm.it" not in g for g in got_a + got_b)
    finally:
        srv_a.close()
        srv_b.close()


@pytest.mark.slow
@pytest.mark.parametrize("with_rules", [True, False])
def test_e2e_a_status_host_where_a_backend_listens_gets_nothing(proxy, rules_file, with_rules):
    """The status host set to 127.0.0.1, where a recording backend listens, with a route that would
    send everything there: the status requests are answered by the proxy, the backend sees none."""
    srv, got = recording_backend()
    try:
        port = srv.getsockname()[1]
        rules = rules_file(f"""
            version: 1
            routes:
              - name: all
                backends: [{{name: only, upstream: "http://127.0.0.1:{port}"}}]
            """) if with_rules else None
        p = proxy(rules, "--set", "condroute_status_host=127.0.0.1")
        for path in ("/", "/api/status", "/other"):
            st, _, body = via(p.port, f"http://127.0.0.1:{port}{path}")
            assert st == (404 if path == "/other" else 200)
        assert got == []
        assert json.loads(via(p.port, f"http://127.0.0.1:{port}/api/status")[2])["decisions"] == 0
        # another name for the same address is not the status host: it reaches the backend
        assert via(p.port, f"http://localhost:{port}/x")[0] == 200
        assert len(got) == 1 and got[0].startswith(b"GET /x ")
    finally:
        srv.close()


@pytest.mark.slow
def test_e2e_a_failed_reload_shows_up(proxy, rules_file):
    path = rules_file(E2E.format(a=9, b=9))
    p = proxy(path, "--set", "condroute_reload_interval=0.1")
    path.write_text("version: 1\nroutes:\n  - name: r\n    backends:\n      - {name: x, upstream: nowhere}\n")
    old = time.time() - 3600
    os.utime(path, (old, old))            # long settled: loaded at the second check
    p.wait_for("reload failed")
    s = json.loads(via(p.port, "http://condroute.mitm.it/api/status")[2])
    assert s["rules"]["generation"] == 1
    assert s["rules"]["error"].startswith(f"{path}:5:") and "nowhere" in s["rules"]["error"]
    assert [r["name"] for r in s["routes"]] == ["shop", "everything-else"]


@pytest.mark.slow
@pytest.mark.parametrize("keep_host_header", [True, False])
def test_e2e_reverse_mode_needs_keep_host_header(proxy, rules_file, keep_host_header):
    """In reverse mode mitmproxy rewrites Host to the target unless keep_host_header: only then is
    the status host seen (README); without it, the request is the reverse target's like any other."""
    srv, got = recording_backend()
    try:
        target = f"http://127.0.0.1:{srv.getsockname()[1]}"
        p = proxy(rules_file(E2E.format(a=9, b=9)), "--mode", f"reverse:{target}",
                  "--set", f"keep_host_header={str(keep_host_header).lower()}")
        c = HTTPConnection("127.0.0.1", p.port, timeout=10)
        c.request("GET", "/api/status", headers={"Host": "condroute.mitm.it"})
        r = c.getresponse()
        body = r.read()
        c.close()
        if keep_host_header:
            assert r.status == 200 and json.loads(body)["decisions"] == 0 and got == []
        else:
            assert body == b"ok\n" and len(got) == 1 and got[0].startswith(b"GET /api/status ")
    finally:
        srv.close()


@pytest.mark.slow
def test_e2e_a_bad_status_host_at_start_up_is_one_line_and_exit_1():
    r = run_mitmdump_until_exit(["-s", str(Path(__file__).parent.parent / "addon" / "conditional_routing.py"),
                                 "--set", "condroute_status_host=condroute.mitm.it:8080"])
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "condroute_status_host must be a host name" in out and "'condroute.mitm.it:8080'" in out
    assert "Traceback" not in out
