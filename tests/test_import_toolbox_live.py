"""Imported Istio ``fault`` and ``retries`` through a real mitmdump (issue 16): a VirtualService
whose rule aborts every request with 503 (the client gets Envoy's "fault filter abort", the backend
sees nothing) and one that retries 5xx (the backend answers 503, then 200: the client gets the 200,
the backend saw two requests). Loader-level mappings and warnings: test_import_toolbox.py."""
from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx
import pytest

from helpers import read_head, serve_raw

pytestmark = pytest.mark.slow


class Scripted:
    """A raw HTTP/1.1 backend answering each request with the next status of ``statuses`` (200 once
    they are spent) and counting the request heads it read."""

    def __init__(self, statuses: list[int]):
        self.statuses = list(statuses)
        self.heads: list[bytes] = []
        self.lock = threading.Lock()
        self.srv = serve_raw(self.handle)
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}"

    def handle(self, conn: socket.socket) -> None:
        with conn:
            while True:
                head = read_head(conn)
                if not head:
                    return
                with self.lock:
                    self.heads.append(head)
                    st = self.statuses.pop(0) if self.statuses else 200
                body = b"answer %d (%d)" % (len(self.heads), st)
                conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (st, len(body), body))


@pytest.fixture
def scripted():
    made: list[Scripted] = []

    def make(statuses: list[int]) -> Scripted:
        b = Scripted(statuses)
        made.append(b)
        return b

    yield make
    for b in made:
        b.srv.close()


def test_imported_fault_abort_and_retries_on_5xx(tmp_path: Path, proxy, scripted):
    aborted = scripted([])                 # must see nothing
    flaky = scripted([503])                # 503, then 200
    (tmp_path / "vs.yaml").write_text("""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop]
  http:
  - match: [{uri: {prefix: /broken}}]
    fault:
      abort: {httpStatus: 503, percentage: {value: 100}}
    route: [{destination: {host: shop, subset: aborted}}]
  - match: [{uri: {prefix: /flaky}}]
    retries: {attempts: 2, retryOn: "5xx"}
    route: [{destination: {host: shop, subset: flaky}}]
""")
    (tmp_path / "rules.yaml").write_text(
        f"version: 1\nupstreams:\n  shop/aborted: {aborted.url}\n  shop/flaky: {flaky.url}\nimports: [vs.yaml]\n")
    p = proxy(tmp_path / "rules.yaml")
    with httpx.Client(proxy=p.url, timeout=10) as c:
        r = c.get("http://shop/broken/cart")
        assert (r.status_code, r.text) == (503, "fault filter abort")
        assert r.headers["x-condroute"].startswith("shop#1")
        r = c.get("http://shop/flaky/items")
        assert (r.status_code, r.text) == (200, "answer 2 (200)")
    assert aborted.heads == []
    assert [h.split(b"\r\n", 1)[0] for h in flaky.heads] == [b"GET /flaky/items HTTP/1.1"] * 2
