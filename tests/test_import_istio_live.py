"""Imported Istio VirtualServices through a live mitmdump (issue 14 §2): Bookinfo's reviews routing
(end-user: jason → v2, else v1), the 80/20 canary, a header + uri prefix match with a rewrite, a
directResponse, plus a redirect, the 404 of an unmatched request and a mirror (fault and retries:
test_import_toolbox_live.py). The upstreams are echo backends that answer with the request they got (path, Host,
headers), so what is checked is what really arrived."""
from __future__ import annotations

import queue
from collections import Counter
from pathlib import Path

import httpx
import pytest

from helpers import ROOT, read_head, serve_raw

pytestmark = pytest.mark.slow
FIX = ROOT / "tests" / "fixtures" / "istio"


@pytest.fixture
def mesh(tmp_path: Path, echo, proxy):
    """mesh(imports, {upstream: echo name or URL}) -> (an httpx client through a mitmdump running
    a condroute file that imports those fixture files, the mitmdump)."""
    clients: list[httpx.Client] = []

    def make(imports: list[str], upstreams: dict[str, str]):
        lines = "".join(f"  {name}: {u if '://' in u else echo(u)}\n" for name, u in upstreams.items())
        listed = ", ".join(str(FIX / i) for i in imports)
        (tmp_path / "rules.yaml").write_text(f"version: 1\nupstreams:\n{lines}imports: [{listed}]\n")
        p = proxy(tmp_path / "rules.yaml")
        c = httpx.Client(proxy=p.url, timeout=10, follow_redirects=False)
        clients.append(c)
        return c, p

    yield make
    for c in clients:
        c.close()


def echoed(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def test_bookinfo_reviews_jason_gets_v2_everyone_else_v1(mesh):
    c, _ = mesh(["bookinfo/virtual-service-reviews-test-v2.yaml"],
                {"reviews/v1": "reviews-v1", "reviews/v2": "reviews-v2", "reviews/v3": "reviews-v3"})
    got = echoed(c.get("http://reviews:9080/reviews/0", headers={"end-user": "jason"}))
    assert (got["backend"], got["path"], got["host"]) == ("reviews-v2", "/reviews/0", "reviews:9080")
    assert got["headers"]["end-user"] == "jason"
    r = c.get("http://reviews:9080/reviews/0", headers={"end-user": "Jason"})
    assert echoed(r)["backend"] == "reviews-v1"
    assert r.headers["x-condroute"].startswith("reviews#2/destination")
    assert echoed(c.get("http://reviews.default.svc.cluster.local:9080/reviews/1"))["backend"] == "reviews-v1"


def test_weighted_canary_80_20(mesh):
    c, _ = mesh(["bookinfo/virtual-service-reviews-80-20.yaml"], {"reviews/v1": "reviews-v1", "reviews/v2": "reviews-v2"})
    n = 500
    got = Counter(echoed(c.get("http://reviews:9080/reviews/0"))["backend"] for _ in range(n))
    assert set(got) == {"reviews-v1", "reviews-v2"}
    # binomial, p = 0.2 (sd 1.8 %): 6 % is 3.4 standard deviations, about one run in 1,500 outside
    assert abs(got["reviews-v2"] / n - 0.2) < 0.06, got


def test_header_and_uri_prefix_match_with_rewrite(mesh):
    c, _ = mesh(["istio-api/ratings-route-header-prefix-rewrite.yaml"],
                {"ratings/v1": "ratings-v1", "ratings/v2": "ratings-v2"})
    host = "ratings.prod.svc.cluster.local:9080"
    got = echoed(c.get(f"http://{host}/ratings/v2/42?lang=de", headers={"end-user": "jason"}))
    assert (got["backend"], got["path"], got["host"]) == ("ratings-v2", "/bookRatings/v2/42?lang=de", host)
    got = echoed(c.get(f"http://{host}/RATINGS/V2/42", headers={"end-user": "jason"}))   # ignoreUriCase
    assert (got["backend"], got["path"]) == ("ratings-v2", "/bookRatings/v2/42")
    got = echoed(c.get(f"http://{host}/ratings/v2/42"))                                  # no header: rule 2
    assert (got["backend"], got["path"]) == ("ratings-v1", "/v1/bookRatings/v2/42")
    r = c.get(f"http://{host}/health")                                                     # no rule: Envoy's 404
    assert r.status_code == 404 and r.headers["x-condroute"].startswith("ratings-route#no-match/not-found")


def test_direct_response(mesh):
    c, _ = mesh(["istio-api/ratings-route-direct-response-json.yaml"], {"ratings/v1": "ratings-v1"})
    r = c.post("http://ratings.prod.svc.cluster.local/v1/getProductRatings", content=b"x")
    assert (r.status_code, r.text, r.headers["content-type"]) == (503, '{"error": "unknown error"}', "text/plain")
    assert echoed(c.get("http://ratings.prod.svc.cluster.local/v1/bookRatings"))["backend"] == "ratings-v1"


def test_redirect_and_request_headers(mesh):
    c, _ = mesh(["istio-api/ratings-route-redirect.yaml", "istio-testdata/rule-default-route-append-headers.yaml"],
                {"ratings/v1": "ratings-v1", "appendh": "appendh"})
    r = c.get("http://ratings.prod.svc.cluster.local/v1/getProductRatings?id=1")
    assert (r.status_code, r.headers["location"]) == (301, "http://newratings.default.svc.cluster.local/v1/bookRatings?id=1")
    got = echoed(c.get("http://appendh.test.istio.io/x", headers={"istio-custom-header": "mine"}))
    assert (got["backend"], got["host"]) == ("appendh", "appendh.test.istio.io")
    # add appends a value after the client's (the echo backend shows the last of a repeated header)
    assert got["headers"]["istio-custom-header"] == "user-defined-value"


def test_mirror_sends_a_copy(mesh, tmp_path):
    seen: queue.Queue[bytes] = queue.Queue()

    def shadow(conn):
        with conn:
            seen.put(read_head(conn))
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    srv = serve_raw(shadow)
    try:
        vs = tmp_path / "mirror.yaml"
        vs.write_text("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: m}\nspec:\n"
                      "  hosts: [web]\n  http:\n  - mirror: {host: web, subset: shadow}\n"
                      "    route: [{destination: {host: web, subset: v1}}]\n")
        c, _ = mesh([str(vs)], {"web/v1": "web-v1", "web/shadow": f"http://127.0.0.1:{srv.getsockname()[1]}"})
        got = echoed(c.get("http://web/copy/me?x=1"))
        assert got["backend"] == "web-v1"
        head = seen.get(timeout=10)
        assert head.startswith(b"GET /copy/me?x=1 HTTP/1.1\r\n"), head
    finally:
        srv.close()
