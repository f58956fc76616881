"""Imported Gateway API HTTPRoutes through a live mitmdump (issue 14 §1, "a sample through a live
mitmdump"): the conformance manifests of rewrite-path, rewrite-host, request-header-modifier,
redirect-path, header-matching (its 404) and weight, in one multi-document file imported by one
condroute file whose upstreams are echo backends. The echo backends answer with the request they got
(path, Host, headers), so what is checked is what really arrived."""
from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from helpers import ROOT, read_head, serve_raw

pytestmark = pytest.mark.slow
FIX = ROOT / "tests" / "fixtures" / "httproute"
SAMPLE = ("rewrite-path", "rewrite-host", "request-header-modifier", "redirect-path", "header-matching")


@pytest.fixture
def gateway(tmp_path: Path, echo, proxy):
    docs = [(FIX / f"httproute-{t}.yaml").read_text() for t in SAMPLE]
    # the weight route matches every path: give it a hostname of its own so that it does not take
    # the header-matching requests that should get 404
    weight = (FIX / "httproute-weight.yaml").read_text()
    assert "spec:\n  parentRefs:" in weight
    docs.append(weight.replace("spec:\n", "spec:\n  hostnames: [weight.test]\n", 1))
    (tmp_path / "cluster.yaml").write_text("---\n".join(docs))
    (tmp_path / "rules.yaml").write_text(
        "version: 1\nupstreams:\n"
        + "".join(f"  infra-backend-v{i}: {echo(f'v{i}')}\n" for i in (1, 2, 3))
        + "imports: [cluster.yaml]\n")
    p = proxy(tmp_path / "rules.yaml")
    with httpx.Client(proxy=p.url, timeout=10, follow_redirects=False) as c:
        yield c


def echoed(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def test_rewrite_path(gateway):
    got = echoed(gateway.get("http://gateway.test/prefix/one/two?q=1"))
    assert (got["backend"], got["path"], got["host"]) == ("v1", "/one/two?q=1", "gateway.test")
    assert echoed(gateway.get("http://gateway.test/strip-prefix/three"))["path"] == "/three"
    assert echoed(gateway.get("http://gateway.test/full/one/two"))["path"] == "/one"


def test_rewrite_host(gateway):
    got = echoed(gateway.get("http://rewrite.example/one/x"))
    assert (got["backend"], got["host"], got["path"]) == ("v1", "one.example.org", "/one/x")
    got = echoed(gateway.get("http://rewrite.example/rewrite-host-and-modify-headers",
                             headers={"X-Header-Set": "old", "X-Header-Remove": "gone"}))
    assert (got["backend"], got["host"]) == ("v2", "test.example.org")
    assert got["headers"]["X-Header-Set"] == "set-overwrites-values"
    assert got["headers"]["X-Header-Add"] == "header-val-1"
    assert "X-Header-Remove" not in got["headers"]


def test_request_header_modifier(gateway):
    got = echoed(gateway.get("http://gateway.test/set", headers={"X-Header-Set": "some-other-value"}))
    assert got["headers"]["X-Header-Set"] == "set-overwrites-values"
    got = echoed(gateway.get("http://gateway.test/add"))
    assert got["headers"]["X-Header-Add"] == "add-appends-values"
    got = echoed(gateway.get("http://gateway.test/remove", headers={"X-Header-Remove": "val"}))
    assert "X-Header-Remove" not in got["headers"] and got["host"] == "gateway.test"
    got = echoed(gateway.get("http://gateway.test/case-insensitivity", headers={"x-header-set": "x"}))
    assert {k.lower(): v for k, v in got["headers"].items()}["x-header-set"] == "header-set"


def test_redirect(gateway):
    r = gateway.get("http://gateway.test/original-prefix/lemon?x=1")
    assert (r.status_code, r.headers["location"]) == (302, "http://gateway.test/replacement-prefix/lemon?x=1")
    r = gateway.get("http://gateway.test/path-and-status")
    assert (r.status_code, r.headers["location"]) == (301, "http://gateway.test/replacement-prefix")
    r = gateway.get("http://gateway.test/full-path-and-host")
    assert (r.status_code, r.headers["location"]) == (302, "http://example.org/replacement-full")


def test_no_rule_matches_gets_404_and_a_matching_rule_routes(gateway):
    r = gateway.get("http://gateway.test/", headers={"Color": "purple"})
    assert r.status_code == 404 and "no HTTPRoute rule matches" in r.text
    assert r.headers["x-condroute"].startswith("rewrite-path#no-match/404")   # the group's first HTTPRoute names it
    assert echoed(gateway.get("http://gateway.test/", headers={"Version": "two", "Color": "orange"}))["backend"] == "v1"


def test_weight_live(gateway):
    """200 requests through mitmdump: the 70/30/0 split holds loosely (±15%: 4.6 standard
    deviations, so a false failure is a few in a million) and the weight-0 backend gets none."""
    seen = Counter(echoed(gateway.get("http://weight.test/")).get("backend") for _ in range(200))
    assert seen["v3"] == 0 and set(seen) <= {"v1", "v2"}
    assert abs(seen["v1"] / 200 - 0.7) <= 0.15, seen


def test_timeouts_request_answers_504(tmp_path: Path, proxy):
    """conformance httproute-timeout-request: a backend slower than timeouts.request gets 504."""
    release = threading.Event()

    def never_answers(conn):
        read_head(conn)
        release.wait(30)
        conn.close()

    srv = serve_raw(never_answers)
    try:
        (tmp_path / "route.yaml").write_text(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: slow}\n"
            "spec:\n  hostnames: [slow.test]\n"
            "  rules: [{timeouts: {request: 500ms}, backendRefs: [{name: slow, port: 80}]}]\n")
        (tmp_path / "rules.yaml").write_text(
            f"version: 1\nupstreams:\n  slow: http://127.0.0.1:{srv.getsockname()[1]}\nimports: [route.yaml]\n")
        p = proxy(tmp_path / "rules.yaml")
        with httpx.Client(proxy=p.url, timeout=10) as c:
            t0 = time.monotonic()
            r = c.get("http://slow.test/x")
            took = time.monotonic() - t0
        assert r.status_code == 504, r.text
        assert 0.4 <= took < 5, took
    finally:
        release.set()
        srv.close()


def test_request_mirror_sends_a_copy(tmp_path: Path, echo, proxy):
    """conformance httproute-request-mirror: the client gets the real backend's answer and a copy of
    the request (path, Host) reaches the mirror backend."""
    seen: list[bytes] = []
    got_one = threading.Event()

    def record(conn):
        seen.append(read_head(conn))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        conn.close()
        got_one.set()

    srv = serve_raw(record)
    try:
        (tmp_path / "route.yaml").write_text(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: mirror}\n"
            "spec:\n  hostnames: [mirror.test]\n  rules:\n  - filters:\n"
            "    - {type: RequestMirror, requestMirror: {backendRef: {name: copy, port: 80}}}\n"
            "    backendRefs: [{name: real, port: 80}]\n")
        (tmp_path / "rules.yaml").write_text(
            f"version: 1\nupstreams:\n  real: {echo('real')}\n"
            f"  copy: http://127.0.0.1:{srv.getsockname()[1]}\nimports: [route.yaml]\n")
        p = proxy(tmp_path / "rules.yaml")
        with httpx.Client(proxy=p.url, timeout=10) as c:
            assert echoed(c.get("http://mirror.test/mirror?x=1"))["backend"] == "real"
        assert got_one.wait(10), "the mirror backend got no copy"
        head = seen[0].decode()
        assert head.startswith("GET /mirror?x=1 HTTP/1.1\r\n"), head
        assert "\r\nhost: mirror.test\r\n" in head.lower(), head
    finally:
        srv.close()
