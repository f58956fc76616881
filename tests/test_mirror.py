"""Mirrors (Gateway API RequestMirror, Istio mirror): a copy of a routed request goes to the mirror
upstream, fire and forget. In mitmproxy's harness (taddons) with real sockets for the mirror, and
through a real mitmdump importing an HTTPRoute with a RequestMirror filter."""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from condroute import model
from condroute.compile.compiler import compile_rules
from condroute.load.ctx import CompileCtx
from condroute.mitm import mirror
from helpers import read_head, serve_raw

A = model.Upstream("main", "http://127.0.0.1:9001", "http", "127.0.0.1", 9001, "")


class Recorder:
    """A mirror upstream on 127.0.0.1 that keeps each request (head and body) and answers 200,
    or (``answer=False``) holds every connection open without answering."""

    def __init__(self, answer: bool = True):
        self.got: list[tuple[bytes, bytes]] = []
        self.answer = answer
        self.cond = threading.Condition()
        self.held: list[socket.socket] = []
        self.srv = serve_raw(self._handle)
        self.port = self.srv.getsockname()[1]
        self.up = model.Upstream("shadow", f"http://127.0.0.1:{self.port}/m", "http", "127.0.0.1", self.port, "/m")

    def _handle(self, conn: socket.socket) -> None:
        if not self.answer:
            self.held.append(conn)
            with self.cond:
                self.got.append((b"", b""))
                self.cond.notify_all()
            return
        with conn:
            head = read_head(conn)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            with self.cond:
                self.got.append((head.split(b"\r\n\r\n", 1)[0], body))
                self.cond.notify_all()

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[bytes, bytes]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.got) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"the mirror got {len(self.got)} of {n} copies"
                self.cond.wait(left)
            return list(self.got)

    def close(self) -> None:
        self.srv.close()
        for c in self.held:
            c.close()


@pytest.fixture
def recorder():
    made: list[Recorder] = []

    def make(answer: bool = True) -> Recorder:
        r = Recorder(answer)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def rules_with(*mirrors: model.Mirror, **backend):
    b = model.Backend("b", 2, upstream=A, mirrors=mirrors, **backend)
    return compile_rules("r.yaml", "hand", {}, model.Settings(), [model.Route("r", 1, backends=(b,))],
                         CompileCtx("r.yaml"))


def flow(url: str = "http://shop.test/p?q=1", method: str = "POST", body: bytes = b"hello",
         headers: tuple = ()) -> http.HTTPFlow:
    req = http.Request.make(method, url, body, [(b"Host", b"shop.test"), (b"X-Client", b"c"),
                                                (b"Proxy-Authorization", b"Basic c2VjcmV0"), *headers])
    req.authority = ""
    return tflow.tflow(req=req)


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_a_copy_of_the_forwarded_request_goes_to_the_mirror(addon, recorder):
    rec = recorder()
    addon.rules = rules_with(model.Mirror(rec.up), add_headers=(("X-Add", "added"),), remove_headers=("X-Client",))
    f = flow()
    await addon.tctx.cycle(addon, f)
    # the real request is rerouted as usual, and not waiting on the copy
    assert (f.request.host, f.request.port, f.request.path) == ("127.0.0.1", 9001, "/p?q=1")
    assert f.metadata["condroute"]["mirrors"] == [{"upstream": "shadow", "url": f"http://127.0.0.1:{rec.port}/m/p?q=1"}]
    # the copy waits until the real response has been sent (mitmproxy: flow.live False)
    await asyncio.sleep(mirror.TICK * 4)
    assert not addon.mirrors.tasks and addon.mirrors.under_way == 1 and rec.got == []
    assert addon.status.snapshot()["mirrors"]["in_flight"] == 1
    f.live = False
    ((head, body),) = await asyncio.get_running_loop().run_in_executor(None, rec.wait, 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /m/p?q=1 HTTP/1.1"
    assert lines[1] == f"Host: 127.0.0.1:{rec.port}".encode()      # the mirror's own authority
    assert b"X-Add: added" in lines and b"Content-Length: 5" in lines and b"Connection: close" in lines
    assert not any(x.lower().startswith((b"x-client", b"proxy-authorization")) for x in lines), lines
    assert body == b"hello"
    await until(lambda: addon.mirrors.sent == 1 and not addon.mirrors.tasks)
    assert addon.mirrors.pending == {}
    assert addon.status.snapshot()["mirrors"] == {
        "sent": 1, "failed": 0, "dropped": 0, "in_flight": 0, "failing": [],
        "upstreams": [{"name": "shadow", "url": rec.up.url, "sent": 1, "failed": 0, "dropped": 0, "in_flight": 0,
                       "failing": False}]}


@pytest.mark.slow
async def test_a_mirror_percent_and_preserve_host(addon, recorder):
    rec = recorder()
    addon.rules = rules_with(model.Mirror(rec.up, 0.0), model.Mirror(rec.up), preserve_host=True)
    f = flow(method="GET", body=b"")
    await addon.tctx.cycle(addon, f)
    f.live = False
    ((head, body),) = await asyncio.get_running_loop().run_in_executor(None, rec.wait, 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /m/p?q=1 HTTP/1.1" and lines[1] == b"Host: shop.test" and body == b""
    assert not any(x.lower().startswith(b"content-length") for x in lines)
    await until(lambda: not addon.mirrors.tasks)
    assert len(rec.got) == 1                         # the 0 % mirror was never drawn


@pytest.mark.slow
async def test_a_failing_mirror_is_logged_once_and_the_request_goes_on(addon, recorder, caplog):
    caplog.set_level(logging.INFO)
    with socket.socket() as s:                       # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = model.Upstream("shadow", f"http://127.0.0.1:{port}", "http", "127.0.0.1", port, "")
    addon.rules = rules_with(model.Mirror(dead))
    for _ in range(3):
        f = flow(url="http://shop.test/p?access_token=SECRET")
        await addon.tctx.cycle(addon, f)
        assert f.request.port == 9001 and f.response is None and f.error is None
        f.live = False
    await until(lambda: addon.mirrors.failed == 3)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("condroute: mirror ")]
    assert said == [f"condroute: mirror shadow (127.0.0.1:{port}) refused the connection; the copy is dropped "
                    "(the request itself is not affected); further failures are not logged until it works again"]
    assert caplog.records[[r.getMessage() for r in caplog.records].index(said[0])].levelno == logging.WARNING
    assert "SECRET" not in caplog.text
    snap = addon.status.snapshot()["mirrors"]
    assert snap["failing"] == ["shadow"]
    assert snap["upstreams"] == [{"name": "shadow", "url": dead.url, "sent": 0, "failed": 3, "dropped": 0,
                                  "in_flight": 0, "failing": True}]
    assert f"mirror shadow {dead.url}: 0 sent, 3 failed, 0 dropped (failing)" in addon.status_text().splitlines()


@pytest.mark.slow
async def test_copies_in_flight_are_bounded(addon, recorder, caplog, monkeypatch):
    monkeypatch.setattr(mirror, "MAX_IN_FLIGHT", 2)
    monkeypatch.setattr(mirror, "TIMEOUT", 1.0)
    rec = recorder(answer=False)
    addon.rules = rules_with(model.Mirror(rec.up))
    flows = [flow() for _ in range(5)]
    for f in flows:
        await addon.tctx.cycle(addon, f)
    assert addon.mirrors.under_way == 2 and addon.mirrors.dropped == 3     # (waiting for the responses)
    assert addon.mirrors.by_upstream[rec.up] == [0, 0, 3, 2]     # sent, failed, dropped, in flight
    for f in flows:
        f.live = False
    await until(lambda: len(addon.mirrors.tasks) == 2)
    assert sum("copies are under way" in r.getMessage() for r in caplog.records) == 1
    await until(lambda: not addon.mirrors.tasks)     # each one given up after TIMEOUT
    assert addon.mirrors.failed == 2
    assert any("did not answer within 1s" in r.getMessage() for r in caplog.records)


async def test_a_streamed_body_is_not_mirrored_and_nothing_runs_without_mirrors(addon, caplog):
    caplog.set_level(logging.INFO)
    up = model.Upstream("shadow", "http://127.0.0.1:9", "http", "127.0.0.1", 9, "")
    addon.rules = rules_with(model.Mirror(up))
    f = flow()
    f.request.stream = True
    f.request.data.content = None
    await addon.tctx.cycle(addon, f)
    assert not addon.mirrors.tasks and addon.mirrors.pending == {}
    assert any("streamed body" in r.getMessage() for r in caplog.records)
    assert addon.mirrors.dropped == 1 and addon.mirrors.by_upstream[up] == [0, 0, 1, 0]
    addon.rules = rules_with()
    g = flow()
    await addon.tctx.cycle(addon, g)
    assert "mirrors" not in g.metadata["condroute"] and addon.mirrors.pending == {}


async def test_a_failed_flow_forgets_its_mirrors(addon):
    up = model.Upstream("shadow", "http://127.0.0.1:9", "http", "127.0.0.1", 9, "")
    addon.rules = rules_with(model.Mirror(up))
    f = flow()
    addon.requestheaders(f)
    assert list(addon.mirrors.pending) == [f.id]
    f.error = tflow.terr()
    addon.error(f)
    assert addon.mirrors.pending == {}


# -- through a real mitmdump -----------------------------------------------------------------------
HTTPROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: default}
spec:
  hostnames: [shop.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add: [{name: X-Add, value: added}]
    - type: URLRewrite
      urlRewrite: {hostname: internal.test, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 8080}}
    backendRefs: [{name: main, port: 8080}]
"""


def test_mirrors_through_a_real_mitmdump(tmp_path: Path, echo, proxy):
    rec = Recorder()
    try:
        (tmp_path / "routes.yaml").write_text(HTTPROUTE)
        (tmp_path / "rules.yaml").write_text(
            f"version: 1\nupstreams:\n  main: {echo('main')}\n  shadow: http://127.0.0.1:{rec.port}/m\n"
            "imports: [routes.yaml]\n")
        p = proxy(tmp_path / "rules.yaml")
        with httpx.Client(proxy=p.url, timeout=10) as c:
            r = c.post("http://shop.test/api/items?x=1", content=b"payload", headers={"X-Client": "c"})
            assert r.status_code == 200, r.text
            got = r.json()
            assert (got["backend"], got["path"], got["host"]) == ("main", "/v2/items?x=1", "internal.test")
            assert got["headers"]["X-Add"] == "added"
            ((head, body),) = rec.wait(1)
            lines = head.split(b"\r\n")
            assert lines[0] == b"POST /m/v2/items?x=1 HTTP/1.1" and lines[1] == b"Host: internal.test"
            assert b"X-Add: added" in lines and b"X-Client: c" in lines and body == b"payload"
            # the mirror's copy is not a flow of the proxy and is not routed again: one decision logged
            p.wait_for(r"condroute: POST http://shop\.test/api/items\?x=1 -> shop#1/main -> main")
            assert sum("condroute: POST" in line for line in p.lines) == 1
        assert not any("Traceback" in line for line in p.lines), p.output()
    finally:
        rec.close()


async def test_a_request_decided_again_without_mirrors_sends_no_copy(addon):
    """After a failed connection the flow is decided again (upstreams.py); when the new decision has
    no mirrors, the first draw is void."""
    up = model.Upstream("shadow", "http://127.0.0.1:9", "http", "127.0.0.1", 9, "")
    addon.rules = rules_with(model.Mirror(up))
    f = flow()
    addon.requestheaders(f)
    assert list(addon.mirrors.pending) == [f.id] and f.metadata["condroute"]["mirrors"]
    f.metadata["condroute"].pop("mirrors")          # what the new decision's metadata looks like
    addon.request(f)
    assert addon.mirrors.pending == {} and not addon.mirrors.tasks


@pytest.mark.slow
async def test_a_reload_without_the_mirror_drops_its_counts(addon, recorder):
    rec = recorder()
    addon.rules = rules_with(model.Mirror(rec.up))
    f = flow()
    await addon.tctx.cycle(addon, f)
    f.live = False
    await until(lambda: addon.mirrors.sent == 1 and not addon.mirrors.tasks)
    assert [m["name"] for m in addon.status.snapshot()["mirrors"]["upstreams"]] == ["shadow"]
    addon.rules = rules_with(model.Mirror(rec.up))        # reloaded, the same mirror: counts kept
    assert addon.status.snapshot()["mirrors"]["upstreams"][0]["sent"] == 1
    addon.rules = rules_with()
    snap = addon.status.snapshot()["mirrors"]
    assert snap["upstreams"] == [] and snap["sent"] == 1     # the total since the start stays


@pytest.mark.slow
async def test_a_copy_goes_after_wait_max_when_the_flow_stays_live(addon, recorder, monkeypatch):
    """A long download or a WebSocket keeps the flow live: its copy goes after WAIT_MAX anyway."""
    monkeypatch.setattr(mirror, "WAIT_MAX", 0.05)
    rec = recorder()
    addon.rules = rules_with(model.Mirror(rec.up))
    f = flow()
    await addon.tctx.cycle(addon, f)
    ((head, body),) = await asyncio.get_running_loop().run_in_executor(None, rec.wait, 1)
    assert f.live and body == b"hello"
    await until(lambda: addon.mirrors.sent == 1 and addon.mirrors.under_way == 0 and not addon.mirrors.waiting)
