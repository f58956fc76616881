"""The addon inside mitmproxy's own test harness (taddons + tflow): options, rerouting, answers,
metadata, the debug header, hot reload and logging. No network."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import textwrap
import time
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.layers.http import HttpResponseHeadersHook
from mitmproxy.test import taddons, tflow

from condroute.mitm import reload as mitm
from condroute.load import rulesfile
from condroute.mitm.addon import ConditionalRouting

RULES = """
    version: 1
    upstreams:
      a: http://127.0.0.1:9001
      b: http://127.0.0.1:9002/base
      tls: https://secure.internal
      six: http://[::1]:9003
    routes:
      - name: shop
        match: {host: shop.example, path: "/checkout/{id}"}
        backends:
          - name: force-b
            when: {header: {X-Ab-Test: B}}
            upstream: b
            path: /v2/checkout/{id}
            set_headers: {X-Variant: B, X-Existing: replaced}
            remove_headers: [Cookie, X-Secret]
          - {name: keep, when: {header: {X-Keep: "1"}}, upstream: a, preserve_host: true}
          - {name: secure, when: {header: {X-Tls: "1"}}, upstream: tls}
          - {name: v6, when: {header: {X-Six: "1"}}, upstream: six}
          - {name: default, fallback: true, upstream: a}
      - name: blocked
        match: {path: /admin/*}
        backends:
          - name: deny
            respond: {status: 403, body: "no admin here\\n", headers: {X-Blocked: "yes"}}
      - name: strict
        match: {host: strict.example}
        backends:
          - {name: beta, when: {cookie: {beta: "1"}}, upstream: a}
          - {name: force-b, when: {header: {X-Ab-Test: B}}, upstream: b}
    """

STRICT_ERROR = """
    version: 1
    settings: {on_no_match: error}
    routes:
      - name: strict
        match: {host: strict.example}
        backends:
          - {name: beta, when: {cookie: {beta: "1"}}, upstream: http://127.0.0.1:9001}
          - {name: force-b, when: {header: {X-Ab-Test: B}}, upstream: http://127.0.0.1:9002}
    """


def make_flow(url: str = "http://shop.example/checkout/42", method: str = "GET", headers: dict | None = None,
              http2: bool = False, content: bytes = b"") -> http.HTTPFlow:
    """A live flow as mitmproxy hands it to `requestheaders` in regular proxy mode."""
    req = http.Request.make(method, url, content, headers or {})
    if http2:
        req.http_version = "HTTP/2.0"
        req.authority = req.pretty_url.split("/")[2]
    else:
        # HTTP/1 in regular mode: origin-form request target plus a Host header
        req.headers["Host"] = req.pretty_url.split("/")[2]
        req.authority = ""
    return tflow.tflow(req=req)


@pytest.fixture
def write(tmp_path: Path):
    """write(text, name='rules.yaml') -> path (str) of a rules file with the dedented text."""

    def w(text: str, name: str = "rules.yaml") -> str:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return str(p)

    return w


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def messages(caplog, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "condroute" and (level is None or r.levelno == level)]


class Harness:
    def __init__(self, tctx, addon: ConditionalRouting):
        self.tctx, self.addon = tctx, addon

    def configure(self, **kw):
        self.tctx.configure(self.addon, **kw)

    async def cycle(self, f: http.HTTPFlow) -> http.HTTPFlow:
        await self.tctx.cycle(self.addon, f)
        return f


@pytest.fixture
def harness():
    """An addon inside a taddons context (with the Proxyserver addon, which owns connection_strategy,
    mode and keep_host_header, as in a real mitmdump)."""
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        yield Harness(tctx, addon)


# -- options ---------------------------------------------------------------------------------------
async def test_defaults(harness):
    o = harness.tctx.options
    assert o.condroute_rules == ""
    assert o.condroute_log == "decisions"
    assert o.condroute_debug_header is False
    assert harness.addon.log_level == 1
    assert harness.addon.debug_header is False


async def test_empty_rules_is_inactive_and_says_so(harness, logs):
    harness.configure(condroute_rules="")
    assert harness.addon.rules is None
    assert any("inactive" in m for m in messages(logs, logging.INFO))
    f = await harness.cycle(make_flow(headers={"X-Ab-Test": "B"}))
    assert f.request.pretty_url == "http://shop.example/checkout/42"
    assert "condroute" not in f.metadata
    assert f.response is None


async def test_clearing_rules_makes_it_inactive(harness, write, logs):
    harness.configure(condroute_rules=write(RULES))
    assert harness.addon.rules is not None
    harness.configure(condroute_rules="")
    assert harness.addon.rules is None
    f = await harness.cycle(make_flow(headers={"X-Ab-Test": "B"}))
    assert f.request.host == "shop.example"
    assert "condroute" not in f.metadata


# bad option values, typed options, --set checks: tests/test_options.py


async def test_missing_rules_file_logs_located_error(harness, tmp_path, logs):
    missing = tmp_path / "nope.yaml"
    harness.configure(condroute_rules=str(missing))
    assert harness.addon.rules is None
    errors = messages(logs, logging.ERROR)
    assert errors and str(missing) in errors[0]


async def test_bad_rules_file_logs_file_line_column(harness, write, logs):
    path = write("""
        version: 1
        routes:
          - name: r
            backends:
              - {name: x, upstream: nowhere}
        """)
    harness.configure(condroute_rules=path)
    assert harness.addon.rules is None
    errors = messages(logs, logging.ERROR)
    assert any(e.startswith(f"{path}:6:") and "unknown upstream 'nowhere'" in e for e in errors), errors
    assert not any("Traceback" in e for e in errors)


async def test_connection_strategy_set_to_lazy(harness, write, logs):
    assert harness.tctx.options.connection_strategy == "eager"  # mitmproxy's default
    harness.configure(condroute_rules=write(RULES))
    assert harness.tctx.options.connection_strategy == "lazy"
    assert any("connection_strategy=lazy" in m for m in messages(logs))
    # and it stays lazy when someone sets it back while rules are loaded
    harness.configure(connection_strategy="eager")
    assert harness.tctx.options.connection_strategy == "lazy"


async def test_connection_strategy_untouched_without_rules(harness):
    harness.configure(condroute_rules="")
    assert harness.tctx.options.connection_strategy == "eager"


async def test_reverse_mode_host_rules_warn_without_keep_host_header(harness, write, logs):
    harness.configure(condroute_rules=write(RULES), mode=["reverse:http://127.0.0.1:9001"])
    assert any("keep_host_header" in m for m in messages(logs, logging.WARNING))
    logs.clear()
    harness.configure(keep_host_header=True)
    assert not messages(logs, logging.WARNING)


# -- rerouting -------------------------------------------------------------------------------------
async def test_reroute_scheme_host_port_path_and_host_header(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = make_flow("http://shop.example/checkout/42?x=1&y=2", headers={"X-Ab-Test": "B"})
    harness.addon.requestheaders(f)
    r = f.request
    assert (r.scheme, r.host, r.port) == ("http", "127.0.0.1", 9002)
    assert r.path == "/base/v2/checkout/42?x=1&y=2"
    assert r.headers["Host"] == "127.0.0.1:9002"
    assert r.headers.get_all("Host") == ["127.0.0.1:9002"]
    assert r.authority == ""   # HTTP/1 stays origin-form


async def test_fallback_reroute_keeps_path(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = await harness.cycle(make_flow("http://shop.example/checkout/7"))
    assert (f.request.host, f.request.port, f.request.path) == ("127.0.0.1", 9001, "/checkout/7")
    assert f.request.headers["Host"] == "127.0.0.1:9001"


async def test_https_upstream_with_default_port(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = await harness.cycle(make_flow(headers={"X-Tls": "1"}))
    assert (f.request.scheme, f.request.host, f.request.port) == ("https", "secure.internal", 443)
    assert f.request.headers["Host"] == "secure.internal"
    assert f.request.url == "https://secure.internal/checkout/42"


async def test_preserve_host_keeps_client_host_header(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = await harness.cycle(make_flow("http://shop.example:8080/checkout/42", headers={"X-Keep": "1"}))
    assert (f.request.host, f.request.port) == ("127.0.0.1", 9001)
    assert f.request.headers.get_all("Host") == ["shop.example:8080"]


async def test_ipv6_upstream_gets_bracketed_host_header(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = await harness.cycle(make_flow(headers={"X-Six": "1"}))
    assert (f.request.host, f.request.port) == ("::1", 9003)
    assert f.request.headers.get_all("Host") == ["[::1]:9003"]


async def test_http2_request_gets_authority_of_upstream(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = await harness.cycle(make_flow(headers={"X-Six": "1"}, http2=True))
    assert (f.request.host, f.request.port) == ("::1", 9003)
    assert f.request.authority == "[::1]:9003"
    assert "Host" not in f.request.headers   # :authority is HTTP/2's Host header
    f = await harness.cycle(make_flow(headers={"X-Keep": "1"}, http2=True))
    assert f.request.authority == "shop.example"


async def test_set_and_remove_headers(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = make_flow(headers={"X-Ab-Test": "B", "Cookie": "uid=1", "x-secret": "s3", "X-Existing": "old",
                           "X-Other": "kept"})
    f.request.headers.add("X-Existing", "old2")
    await harness.cycle(f)
    h = f.request.headers
    assert h["X-Variant"] == "B"
    assert h.get_all("X-Existing") == ["replaced"]
    assert "Cookie" not in h and "X-Secret" not in h
    assert h["X-Other"] == "kept" and h["X-Ab-Test"] == "B"


async def test_no_route_passthrough_untouched(harness, write, logs):
    harness.configure(condroute_rules=write(RULES))
    f = make_flow("http://elsewhere.example/x?q=1", headers={"X-Ab-Test": "B"})
    before = f.request.get_state()
    await harness.cycle(f)
    assert f.request.get_state() == before
    assert "condroute" not in f.metadata
    assert f.comment == ""


async def test_route_without_matching_backend_passthrough(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = make_flow("http://strict.example/x")
    before = f.request.get_state()
    await harness.cycle(f)
    assert f.request.get_state() == before
    assert f.response is None
    md = f.metadata["condroute"]
    assert md["outcome"] == "no_match" and md["route"] == "strict" and md["backend"] is None
    assert md["header"] == "passthrough"


async def test_flows_already_answered_or_dead_are_left_alone(harness, write):
    harness.configure(condroute_rules=write(RULES))
    for f in (tflow.tflow(req=make_flow(headers={"X-Ab-Test": "B"}).request, resp=True),
              tflow.tflow(req=make_flow(headers={"X-Ab-Test": "B"}).request, err=True),
              tflow.tflow(req=make_flow(headers={"X-Ab-Test": "B"}).request, live=False)):
        harness.addon.requestheaders(f)
        assert f.request.host == "shop.example"
        assert "condroute" not in f.metadata


async def test_routed_http2_body_without_length_gets_content_length(harness, write):
    """mitmproxy forwards an HTTP/2 request without content-length to an HTTP/1.1 server unframed
    (the server reads no body); a rerouted one gets its length."""
    harness.configure(condroute_rules=write(RULES))
    f = make_flow(method="POST", http2=True, content=b"0123456789", headers={"X-Ab-Test": "B"})
    del f.request.headers["content-length"]
    await harness.cycle(f)
    assert f.request.port == 9002
    assert f.request.headers["content-length"] == "10"
    # not for a passthrough flow, not for HTTP/1, not when already framed
    f = make_flow("http://elsewhere.example/", method="POST", http2=True, content=b"abc")
    del f.request.headers["content-length"]
    await harness.cycle(f)
    assert "content-length" not in f.request.headers
    f = make_flow(method="POST", http2=True, content=b"")
    await harness.cycle(f)
    assert f.request.headers.get("content-length") in (None, "0")
    f = make_flow(method="POST", http2=True, content=b"abc", headers={"content-length": "3"})
    await harness.cycle(f)
    assert f.request.headers.get_all("content-length") == ["3"]


# -- direct answers --------------------------------------------------------------------------------
async def test_respond_answers_in_request_hook(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = make_flow("http://shop.example/admin/users", method="POST", content=b"x" * 10)
    harness.addon.requestheaders(f)
    assert f.response is None            # not yet: the body has not been read
    assert f.request.stream is False     # never stream a body we answer ourselves
    assert f.request.host == "shop.example"   # not rerouted anywhere
    harness.addon.request(f)
    assert f.response is not None
    assert f.response.status_code == 403
    assert f.response.text == "no admin here\n"
    assert f.response.headers["X-Blocked"] == "yes"
    md = f.metadata["condroute"]
    assert md["outcome"] == "respond" and md["route"] == "blocked" and md["backend"] == "deny"


async def test_respond_overrides_stream_flag(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = make_flow("http://shop.example/admin/", method="POST")
    f.request.stream = True  # as mitmproxy sets it for a large body with stream_large_bodies
    harness.addon.requestheaders(f)
    assert f.request.stream is False


async def test_on_no_match_error_answers_502_naming_route_and_reasons(harness, write):
    harness.configure(condroute_rules=write(STRICT_ERROR), condroute_debug_header=True)
    f = await harness.cycle(make_flow("http://strict.example/cart", headers={"X-Ab-Test": "A"}))
    assert f.response is not None and f.response.status_code == 502
    assert f.response.headers["Content-Type"].startswith("text/plain")
    body = f.response.text
    assert "'strict'" in body
    assert 'beta: cookie beta is missing, wanted "1"' in body
    assert 'force-b: header X-Ab-Test is "A", wanted "B"' in body
    assert f.response.headers["X-Condroute"] == "strict -> error 502"
    assert f.request.host == "strict.example"


async def test_request_hook_does_not_override_an_existing_response(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = make_flow("http://shop.example/admin/x")
    harness.addon.requestheaders(f)
    f.response = http.Response.make(418, b"another addon answered")
    harness.addon.request(f)
    assert f.response.status_code == 418


# -- what the flow says about the decision ---------------------------------------------------------
async def test_metadata_and_comment_of_routed_flow(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = await harness.cycle(make_flow(headers={"X-Tls": "1"}))
    md = f.metadata["condroute"]
    assert md["outcome"] == "routed"
    assert (md["route"], md["backend"], md["upstream"]) == ("shop", "secure", "tls")
    assert md["url"] == "https://secure.internal/checkout/42"
    assert [s["backend"] for s in md["skipped"]] == ["force-b", "keep"]
    assert md["skipped"][0]["reason"] == "header X-Ab-Test is missing, wanted \"B\""
    assert md["header"] == "shop/secure -> tls"
    json.dumps(md)   # plain data: survives mitmproxy's flow serialisation
    assert f.comment.startswith('shop.example/checkout/42 → shop/secure [header X-Tls "1"]'
                                " | to https://secure.internal/checkout/42 (upstream tls)")
    assert "skipped force-b: header X-Ab-Test is missing" in f.comment
    assert "\n" not in f.comment


async def test_metadata_of_respond_flow(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = await harness.cycle(make_flow("http://shop.example/admin/x"))
    md = f.metadata["condroute"]
    assert md["outcome"] == "respond" and md["status"] == 403
    assert f.comment == "shop.example/admin/x → blocked/deny [unconditional] | condroute answered 403"


# -- the debug header ------------------------------------------------------------------------------
async def _with_response(harness, f: http.HTTPFlow) -> http.HTTPFlow:
    harness.addon.requestheaders(f)
    harness.addon.request(f)
    if f.response is None:
        f.response = http.Response.make(200, b"from upstream")
    # as mitmproxy dispatches it (the addon registers responseheaders only while it has work)
    harness.tctx.master.addons.invoke_addon_sync(harness.addon, HttpResponseHeadersHook(f))
    return f


async def test_debug_header_values(harness, write):
    harness.configure(condroute_rules=write(RULES), condroute_debug_header=True)
    f = await _with_response(harness, make_flow(headers={"X-Ab-Test": "B"}))
    assert f.response.headers["X-Condroute"] == "shop/force-b -> b"
    f = await _with_response(harness, make_flow("http://elsewhere.example/"))
    assert f.response.headers["X-Condroute"] == "passthrough"
    f = await _with_response(harness, make_flow("http://strict.example/"))
    assert f.response.headers["X-Condroute"] == "passthrough"
    f = await _with_response(harness, make_flow("http://shop.example/admin/"))
    assert f.response.status_code == 403
    assert f.response.headers["X-Condroute"] == "blocked/deny -> respond 403"


async def test_debug_header_passthrough_when_inactive(harness):
    harness.configure(condroute_debug_header=True)
    f = await _with_response(harness, make_flow())
    assert f.response.headers["X-Condroute"] == "passthrough"


async def test_no_debug_header_by_default(harness, write):
    harness.configure(condroute_rules=write(RULES))
    f = await _with_response(harness, make_flow(headers={"X-Ab-Test": "B"}))
    assert "X-Condroute" not in f.response.headers


async def test_debug_header_through_full_cycle(harness, write):
    harness.configure(condroute_rules=write(RULES), condroute_debug_header=True)
    f = make_flow(headers={"X-Ab-Test": "B"})
    await harness.cycle(f)
    f.response = http.Response.make(200, b"upstream")
    await harness.cycle(f)  # second pass: responseheaders/response run now that a response exists
    assert f.response.headers["X-Condroute"] == "shop/force-b -> b"


# -- hot reload ------------------------------------------------------------------------------------
ROUTE_TO = """
    version: 1
    routes:
      - name: all
        backends:
          - {{name: only, upstream: "http://127.0.0.1:{port}"}}
    """


def settle(addon: ConditionalRouting, path: str) -> bool:
    """A check of the watcher once a saved file has settled: it installs a version only once two
    checks saw it unchanged and it was modified longer ago than the reload interval (and 2 s);
    here the mtime is put an hour back instead of waiting."""
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert addon.check_reload() is False     # first seen: settling
    return addon.check_reload()


async def test_reload_swaps_rules_and_bumps_generation(harness, write, logs):
    path = write(ROUTE_TO.format(port=9001))
    harness.configure(condroute_rules=path)
    gen = harness.addon.generation
    assert harness.addon.check_reload() is False           # unchanged file: nothing to do
    assert harness.addon.generation == gen
    f = await harness.cycle(make_flow())
    assert f.request.port == 9001
    write(ROUTE_TO.format(port=19002))
    assert settle(harness.addon, path) is True
    assert harness.addon.generation == gen + 1
    assert any(m.startswith(f"condroute: reloaded {path}") for m in messages(logs, logging.INFO))
    f = await harness.cycle(make_flow())
    assert f.request.port == 19002
    assert harness.addon.check_reload() is False


async def test_reload_picks_up_same_size_edit_within_one_clock_tick(harness, write, monkeypatch):
    """Filesystems with coarse timestamps (HFS+: 1 s, FAT: 2 s, ext4 on older kernels: one jiffy)
    give an edit made right after a load the same mtime (and ctime); the edit must not be missed."""
    def coarse(st):   # a clock too coarse to tell the edit from the load: ctime does not move either
        return (st.st_mtime_ns, 0, st.st_size, st.st_ino)
    monkeypatch.setattr(mitm, "stat_key", coarse)
    monkeypatch.setattr(rulesfile, "stat_key", coarse)
    path = write(ROUTE_TO.format(port=9001))
    harness.configure(condroute_rules=path)
    assert harness.addon.signature.racy is True
    st = os.stat(path)
    write(ROUTE_TO.format(port=9002))                       # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))     # same mtime, as a coarse clock gives
    assert os.stat(path).st_size == st.st_size
    now = time.monotonic()
    monkeypatch.setattr(mitm, "_clock", lambda: now)
    assert harness.addon.check_reload() is False            # a racy version: read again once it settles
    monkeypatch.setattr(mitm, "_clock", lambda: now + 3)
    assert harness.addon.check_reload() is True
    f = await harness.cycle(make_flow())
    assert f.request.port == 9002


async def test_reload_check_of_a_settled_file_is_a_stat_not_a_read(harness, write, monkeypatch):
    """The watcher runs every second: a file last modified well before it was read (not "racy")
    is only stat-ed, not read and hashed (a 10,000-route file is megabytes). An edit still gets a
    newer mtime and is loaded."""
    path = write(ROUTE_TO.format(port=9001))
    old = time.time() - 3600
    os.utime(path, (old, old))
    harness.configure(condroute_rules=path)
    assert harness.addon.signature.racy is False
    reads = []
    real_read = mitm.read_rules_file
    monkeypatch.setattr(mitm, "read_rules_file", lambda p: reads.append(p) or real_read(p))
    assert harness.addon.check_reload() is False
    assert reads == []
    write(ROUTE_TO.format(port=9002))
    assert settle(harness.addon, path) is True
    assert reads == [path]
    f = await harness.cycle(make_flow())
    assert f.request.port == 9002
    assert harness.addon.signature.racy is False             # installed once settled: never racy
    assert harness.addon.check_reload() is False
    assert reads == [path]


async def test_bad_reload_keeps_last_good_rules_and_logs_located_error(harness, write, logs):
    path = write(ROUTE_TO.format(port=9001))
    harness.configure(condroute_rules=path)
    gen = harness.addon.generation
    good = harness.addon.rules
    write("""
        version: 1
        routes:
          - name: all
            backends:
              - {name: only, upstream: "http://127.0.0.1:9002", bogus: 1}
        """)
    logs.clear()
    assert settle(harness.addon, path) is False
    assert harness.addon.rules is good
    assert harness.addon.generation == gen
    errors = messages(logs, logging.ERROR)
    assert len(errors) == 1
    assert "keeping the last good rules" in errors[0]
    assert f"{path}:6:" in errors[0] and "bogus" in errors[0]
    f = await harness.cycle(make_flow())
    assert f.request.port == 9001
    # the same bad file is not reported again on every check
    logs.clear()
    assert harness.addon.check_reload() is False
    assert not messages(logs, logging.ERROR)
    # fixing the file swaps again
    write(ROUTE_TO.format(port=9003))
    assert settle(harness.addon, path) is True
    assert harness.addon.generation == gen + 1
    f = await harness.cycle(make_flow())
    assert f.request.port == 9003


async def test_deleted_rules_file_keeps_rules_and_reappearing_file_loads(harness, write, logs):
    path = write(ROUTE_TO.format(port=9001))
    harness.configure(condroute_rules=path)
    os.unlink(path)
    logs.clear()
    assert harness.addon.check_reload() is False
    assert harness.addon.check_reload() is False
    errors = messages(logs, logging.ERROR)
    assert len(errors) == 1 and "gone" in errors[0]
    f = await harness.cycle(make_flow())
    assert f.request.port == 9001
    write(ROUTE_TO.format(port=9004))
    assert settle(harness.addon, path) is True
    f = await harness.cycle(make_flow())
    assert f.request.port == 9004


async def test_bad_file_via_option_keeps_last_good_rules(harness, write, logs):
    good = write(ROUTE_TO.format(port=9001))
    bad = write("version: 1\nroutes: {}\n", name="bad.yaml")
    harness.configure(condroute_rules=good)
    logs.clear()
    harness.configure(condroute_rules=bad)
    errors = messages(logs, logging.ERROR)
    assert any("keeping the last good rules" in e for e in errors)
    assert any(e.startswith(f"{bad}:2:") for e in errors), errors
    f = await harness.cycle(make_flow())
    assert f.request.port == 9001


async def test_watcher_runs_and_stops(harness, write):
    harness.configure(condroute_rules=write(ROUTE_TO.format(port=9001)))
    harness.addon.running()
    task = harness.addon._watcher
    assert task is not None and not task.done()
    harness.addon.done()
    assert harness.addon._watcher is None
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_watcher_runs_only_while_there_is_a_file_to_watch(harness, write):
    harness.addon.running()
    assert harness.addon._watcher is None                    # no rules file: nothing to watch
    harness.configure(condroute_rules=write(ROUTE_TO.format(port=9001)))
    task = harness.addon._watcher
    assert task is not None and not task.done()
    harness.configure(condroute_reload_interval="0")         # 0: do not watch
    assert harness.addon._watcher is None
    with pytest.raises(asyncio.CancelledError):
        await task
    harness.configure(condroute_reload_interval="1")
    assert harness.addon._watcher is not None
    harness.configure(condroute_rules="")
    assert harness.addon._watcher is None


# -- logging ---------------------------------------------------------------------------------------
async def test_log_off_logs_nothing_per_request(harness, write, logs):
    harness.configure(condroute_rules=write(RULES), condroute_log="off")
    logs.clear()
    for f in (make_flow(), make_flow(headers={"X-Ab-Test": "B"}), make_flow("http://shop.example/admin/"),
              make_flow("http://elsewhere.example/"), make_flow("http://strict.example/")):
        await harness.cycle(f)
    assert messages(logs) == []


async def test_log_decisions_one_line_per_routed_request(harness, write, logs):
    harness.configure(condroute_rules=write(RULES), condroute_log="decisions")
    logs.clear()
    await harness.cycle(make_flow(headers={"X-Ab-Test": "B"}))
    assert messages(logs) == ["condroute: GET http://shop.example/checkout/42 -> shop/force-b -> b "
                              "(http://127.0.0.1:9002/base/v2/checkout/42)"]
    logs.clear()
    await harness.cycle(make_flow("http://elsewhere.example/"))
    assert messages(logs) == []          # no route: not a routed request


async def test_log_verbose_logs_skipped_backends(harness, write, logs):
    harness.configure(condroute_rules=write(RULES), condroute_log="verbose")
    logs.clear()
    await harness.cycle(make_flow(headers={"X-Six": "1"}))
    m = messages(logs)
    assert m[0].startswith("condroute: GET http://shop.example/checkout/42 -> shop/v6 -> six")
    assert 'condroute:   skipped force-b: header X-Ab-Test is missing, wanted "B"' in m
    assert any(x.startswith("condroute:   skipped keep:") for x in m)
    assert any(x.startswith("condroute:   skipped secure:") for x in m)
    assert len(m) == 4
    logs.clear()
    await harness.cycle(make_flow("http://elsewhere.example/"))
    assert messages(logs) == ["condroute: GET http://elsewhere.example/ -> no route, passthrough"]


def test_the_script_module_names_every_hook_so_mitmproxy_finds_no_missing_attribute():
    """mitmproxy looks up a handler for every event on the script module too; on Python 3.11 a
    missing module attribute costs an AttributeError each time. Every hook name is there (None),
    and the addon object keeps the real handlers."""
    from mitmproxy import hooks
    from mitmproxy.addons import script

    from helpers import ADDON

    with taddons.context():
        mod = script.load_script(str(ADDON))
    assert mod is not None
    missing = [name for name in hooks.all_hooks if name not in vars(mod)]
    assert missing == ["add_log"]     # deprecated: mitmproxy warns about an addon having it (test_mitm_compat)
    assert all(vars(mod)[name] is None for name in ("requestheaders", "request", "response", "update"))
    (addon,) = mod.addons
    assert type(addon).__name__ == "ConditionalRouting" and callable(addon.requestheaders)


async def test_responseheaders_is_registered_only_while_it_has_work(harness, write):
    """mitmproxy dispatches every hook an addon has on every request: responseheaders is there only
    for the debug header or response timeouts."""
    harness.configure(condroute_rules=write(RULES))
    assert harness.addon.responseheaders is None
    harness.configure(condroute_debug_header=True)
    assert callable(harness.addon.responseheaders)
    harness.configure(condroute_debug_header=False)
    assert harness.addon.responseheaders is None
    harness.configure(condroute_rules=write(ROUTE_TO.format(port=9001).replace(
        'upstream: "http://127.0.0.1:9001"', 'upstream: "http://127.0.0.1:9001", timeout: 2'), "timeouts.yaml"))
    assert harness.addon.rules.has_timeouts
    assert callable(harness.addon.responseheaders)


async def test_an_internal_error_while_deciding_answers_502_and_says_so(harness, write, logs, monkeypatch):
    import condroute.mitm.addon as addon_module

    def broken(*a, **k):
        raise KeyError("secret-value-from-the-request")

    harness.configure(condroute_rules=write(RULES))
    monkeypatch.setattr(addon_module, "decide", broken)
    f = await harness.cycle(make_flow("http://shop.example:81/checkout/1"))
    assert f.response is not None and f.response.status_code == 502
    assert f.comment == "shop.example:81/checkout/1 → (no route) [internal error while routing] | condroute answered 502"
    errors = messages(logs, logging.ERROR)
    assert errors == ["condroute: internal error while deciding for GET http://shop.example:81/checkout/1: KeyError"]
