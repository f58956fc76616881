"""Traffic management end to end, through a real mitmdump with the addon, real clients and local
backends on 127.0.0.1: sticky splits, KrakenD configurations, failover, retries, timeouts — and
streaming and WebSocket flows still working under a timeout."""
from __future__ import annotations

import collections
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from condroute.engine import choose_arm
from condroute.rules import load_rules
from helpers import free_port, logs_status

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "krakend"


# -- local test servers ----------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


def start_server(handler_cls) -> tuple[ThreadingHTTPServer, str]:
    srv = _Server(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def slow_handler(delay: float):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            time.sleep(delay)       # a slow backend: no response headers for `delay` seconds
            try:
                body = b"late\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass

        def log_message(self, *a):
            pass
    return H


def dribble_handler(chunks: int, interval: float):
    """Answers at once with headers, then sends the chunked body slowly (longer than any timeout)."""
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _go(self):
            n = int(self.headers.get("Content-Length") or 0)
            got = len(self.rfile.read(n)) if n else 0
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Received", str(got))
            self.end_headers()
            for i in range(chunks):
                time.sleep(interval)
                data = f"chunk {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        do_GET = do_POST = _go

        def log_message(self, *a):
            pass
    return H


def named_handler(name: str):
    """A minimal backend that says its name, answering in ONE write: the demo echo writes headers and
    body separately, and on a keep-alive connection Nagle + delayed ACK then cost ~40 ms a request."""
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = json.dumps({"backend": name, "path": self.path}).encode()
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Backend: %s\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (name.encode(), len(body), body))

        def log_message(self, *a):
            pass
    return H


@pytest.fixture
def servers():
    started: list[ThreadingHTTPServer] = []

    def make(handler_cls) -> str:
        srv, url = start_server(handler_cls)
        started.append(srv)
        return url

    make.started = started      # type: ignore[attr-defined]
    yield make
    for s in started:
        s.shutdown()
        s.server_close()




# -- sticky split ------------------------------------------------------------------------------------
def test_split_of_2000_cookies_is_80_20_and_sticky(servers, rules_file, proxy):
    stable, canary = servers(named_handler("stable")), servers(named_handler("canary"))
    rules = rules_file(f"""
        version: 1
        upstreams: {{stable: "{stable}", canary: "{canary}"}}
        routes:
          - name: shop
            backends:
              - name: pin
                when: {{header: {{X-Variant: canary}}}}
                upstream: canary
              - name: split
                split: {{by: "cookie:uid", weights: {{stable: 80, canary: 20}}, salt: e2e}}
        """)
    p = proxy(rules, "--set", "condroute_log=off", "--set", "flow_detail=0")
    split = load_rules(str(rules)).routes[0].backends[1].split
    n = 2000
    seen: dict[str, str] = {}
    t0 = time.monotonic()
    with httpx.Client(proxy=p.url, timeout=10) as c:          # one keep-alive connection
        for i in range(n):
            r = c.get("http://shop.example/", headers={"Cookie": f"uid=user-{i}"})
            assert r.status_code == 200
            arm = r.headers["X-Condroute"].split(" -> ")[1]
            assert r.headers["X-Backend"] == arm               # the debug header names the arm that answered
            seen[f"user-{i}"] = arm
        first_pass = time.monotonic() - t0
        for i in range(0, n, 4):                               # again: everyone stays where they were
            r = c.get("http://shop.example/", headers={"Cookie": f"uid=user-{i}"})
            assert r.headers["X-Backend"] == seen[f"user-{i}"]
        r = c.get("http://shop.example/", headers={"Cookie": "uid=user-0", "X-Variant": "canary"})
        assert r.headers["X-Condroute"] == "shop/pin -> canary" and r.headers["X-Backend"] == "canary"
    share = collections.Counter(seen.values())["canary"] / n
    assert abs(share - 0.20) <= 0.02, share
    # the proxy chose exactly what the pure engine chooses (same hash on every machine)
    assert all(choose_arm(split, "shop", u).name == arm for u, arm in seen.items())
    print(f"\n2000 cookies: canary share {share:.4f}, first pass {first_pass:.2f}s")


# -- KrakenD configurations -------------------------------------------------------------------------
def krakend_copy(name: str, tmp_path: Path, hosts: dict[str, str]) -> Path:
    """The hand-written fixture with its 127.0.0.1:900N hosts pointed at this test's backends."""
    text = (FIXTURES / name).read_text()
    for fixed, real in hosts.items():
        text = text.replace(fixed, real)
    out = tmp_path / name
    out.write_text(text)
    return out


def three(echo) -> dict[str, str]:
    return {"http://127.0.0.1:9001": echo("one"), "http://127.0.0.1:9002": echo("two"),
            "http://127.0.0.1:9003": echo("three")}


def get(c: httpx.Client, path: str, headers: dict | None = None) -> tuple[int, str, str, str]:
    r = c.get("http://gateway.example" + path, headers=headers or {})
    if r.status_code != 200:
        return r.status_code, "", "", r.text
    j = r.json()
    return r.status_code, j["backend"], j["path"], r.headers["X-Condroute"]


def test_krakend_ab_test_by_header(echo, proxy, tmp_path):
    p = proxy(krakend_copy("ab-test-header.json", tmp_path, three(echo)))
    with httpx.Client(proxy=p.url, timeout=10) as c:
        assert get(c, "/ab-test", {"X-Test": "TestA"})[:3] == (200, "one", "/option-a")
        assert get(c, "/ab-test?q=1", {"X-Test": "TestB"})[:3] == (200, "two", "/option-b?q=1")
        status, _, _, body = get(c, "/ab-test", {"X-Test": "testa"})      # the value is case-sensitive
        assert status == 502 and "no backend of route 'GET /ab-test' holds" in body
        assert 'header X-Test is "testa", wanted "TestA"' in body
        assert get(c, "/ab-test")[0] == 502
        # the endpoint is GET only: a POST is no route's, so it goes where it was going (an unresolvable
        # host here, which mitmproxy itself answers with 502)
        r = c.post("http://gateway.example/ab-test", headers={"X-Test": "TestA"})
        assert r.status_code == 502 and "X-Condroute" not in r.headers


def test_krakend_cookie_policy(echo, proxy, tmp_path):
    p = proxy(krakend_copy("cookie-policy.json", tmp_path, three(echo)))
    w = p.wait_for(r"warning: .*cookie-policy\.json:(\d+):\d+: endpoint GET /cookie-test-undeclared: "
                   r"backend-1: the policy reads the header Cookie, which is not in the endpoint's input_headers")
    assert int(w.group(1)) == 56
    with httpx.Client(proxy=p.url, timeout=10) as c:
        assert get(c, "/cookie-test", {"Cookie": "ab-test-xyz=1"})[:3] == (200, "one", "/AB-option/1")
        assert get(c, "/cookie-test", {"Cookie": "a=b; ab-test-xyz=2"})[:3] == (200, "two", "/AB-option/2")
        assert get(c, "/cookie-test")[:3] == (200, "three", "/AB-option/default")
        assert get(c, "/cookie-test", {"Cookie": "ab-test-xyz=3"})[:3] == (200, "three", "/AB-option/default")
        # without "Cookie" in input_headers KrakenD's policy never sees the cookie
        status, backend, path, header = get(c, "/cookie-test-undeclared", {"Cookie": "ab-test-xyz=1"})
        assert (status, backend, path) == (200, "three", "/AB-option/default")
        assert header.startswith("GET /cookie-test-undeclared/backend-2 -> ")


def test_krakend_fallback(echo, proxy, tmp_path):
    p = proxy(krakend_copy("fallback.json", tmp_path, three(echo)))
    with httpx.Client(proxy=p.url, timeout=10) as c:
        assert get(c, "/v1/users/42", {"X-Tier": "gold"})[:3] == (200, "one", "/premium/users/42")
        assert get(c, "/v1/users/42", {"X-Beta": "yes"})[:3] == (200, "two", "/beta/users/42")
        assert get(c, "/v1/users/0", {"X-Beta": "yes"})[:3] == (200, "three", "/users/0")
        status, backend, path, header = get(c, "/v1/users/42", {"X-Tier": "silver"})
        assert (status, backend, path) == (200, "three", "/users/42")
        assert header.startswith("GET /v1/users/{id}/backend-3 -> http://127.0.0.1:")
        assert get(c, "/v1/users")[0] != 200 or get(c, "/v1/users")[3] == "passthrough"


def build_city_db(path: Path) -> Path:
    mmdb_writer = pytest.importorskip("mmdb_writer")
    netaddr = pytest.importorskip("netaddr")

    def country(code, name, gid, eu=False):
        d = {"geoname_id": gid, "iso_code": code, "names": {"en": name}}
        if eu:
            d["is_in_european_union"] = True
        return d
    w = mmdb_writer.MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City",
                               languages=["en"], description="condroute traffic tests", int_type="u32")
    w.insert_network(netaddr.IPSet(["89.160.20.0/24"]), {"country": country("SE", "Sweden", 2661886, True),
                                                         "city": {"geoname_id": 2694762, "names": {"en": "Linköping"}}})
    w.insert_network(netaddr.IPSet(["216.160.83.0/24"]), {"country": country("US", "United States", 6252001)})
    w.insert_network(netaddr.IPSet(["81.2.69.0/24"]), {"country": country("GB", "United Kingdom", 2635167)})
    w.to_db_file(str(path))
    return path


def test_krakend_geographic_routing(echo, proxy, tmp_path):
    build_city_db(tmp_path / "GeoIP2-City.mmdb")
    p = proxy(krakend_copy("geo-routing.json", tmp_path, three(echo)))
    with httpx.Client(proxy=p.url, timeout=10) as c:
        def via(ip):
            return get(c, "/catalog/book-7", {"X-Forwarded-For": ip})[:3]
        assert via("89.160.20.112") == (200, "one", "/eu/catalog/book-7")        # Sweden: EU
        assert via("216.160.83.56") == (200, "two", "/us/catalog/book-7")        # United States
        assert via("81.2.69.160") == (200, "three", "/global/catalog/book-7")    # United Kingdom: not EU
        assert via("198.51.100.7") == (200, "three", "/global/catalog/book-7")   # not in the database
        assert get(c, "/catalog/book-7")[:3] == (200, "three", "/global/catalog/book-7")   # 127.0.0.1


# -- failover, retries, nothing left ------------------------------------------------------------------
def test_dead_upstream_fails_over_to_the_fallback(echo, rules_file, proxy):
    fallback = echo("fallback")
    dead = free_port()
    rules = rules_file(f"""
        version: 1
        routes:
          - name: shop
            backends:
              - {{name: main, upstream: "http://127.0.0.1:{dead}", retries: 2}}
              - {{name: safety-net, fallback: true, upstream: "{fallback}"}}
        """)
    p = proxy(rules, "--set", "condroute_log=verbose", "--set", "condroute_cooldown=30")
    with httpx.Client(proxy=p.url, timeout=10) as c:
        mark = p.mark()
        r = c.get("http://shop.example/cart")
        assert r.status_code == 200 and r.json()["backend"] == "fallback"
        assert r.headers["X-Condroute"] == f"shop/safety-net -> {fallback}"
        p.wait_for(rf"shop/main: upstream http://127.0.0.1:{dead} \(127.0.0.1:{dead}\) refused the connection "
                   rf"\(3 attempts\); passing it over for 30s", start=mark)
        p.wait_for(rf"skipped main: upstream http://127.0.0.1:{dead} \(127.0.0.1:{dead}\) is unavailable: "
                   r"refused the connection \(3 attempts\)", start=mark)
        # the next requests pass it over without trying it: no new refusal, no 502
        mark = p.mark()
        for _ in range(5):
            r = c.post("http://shop.example/cart", content=b"x")
            assert r.status_code == 200 and r.json()["backend"] == "fallback"
        p.wait_for(r"POST http://shop.example/cart -> shop/safety-net", start=mark)
        assert "passing it over" not in "\n".join(p.lines[mark:])     # not tried again


def test_failover_of_a_streamed_upload(echo, rules_file, proxy):
    fallback = echo("fallback")
    dead = free_port()
    rules = rules_file(f"""
        version: 1
        routes:
          - name: upload
            backends:
              - {{name: main, upstream: "http://127.0.0.1:{dead}", path: "/main{{path}}"}}
              - {{name: fb, fallback: true, upstream: "{fallback}", path: "/fb{{path}}"}}
        """)
    p = proxy(rules, "--set", "stream_large_bodies=1")
    with httpx.Client(proxy=p.url, timeout=20) as c:
        r = c.post("http://files.example/store?x=1", content=b"q" * 300_000)
        assert r.status_code == 200
        j = r.json()
        assert (j["backend"], j["path"], j["body_length"]) == ("fallback", "/fb/store?x=1", 300_000)


def test_post_is_tried_once_and_get_as_often_as_retries(echo, rules_file, proxy):
    fallback = echo("fallback")
    dead1, dead2 = free_port(), free_port()
    rules = rules_file(f"""
        version: 1
        routes:
          - name: post
            match: {{path: /post}}
            backends:
              - {{name: main, upstream: "http://127.0.0.1:{dead1}", retries: 3}}
              - {{name: fb, fallback: true, upstream: "{fallback}"}}
          - name: get
            match: {{path: /get}}
            backends:
              - {{name: main, upstream: "http://127.0.0.1:{dead2}", retries: 3}}
              - {{name: fb, fallback: true, upstream: "{fallback}"}}
        """)
    p = proxy(rules)
    with httpx.Client(proxy=p.url, timeout=10) as c:
        assert c.post("http://shop.example/post", content=b"{}").json()["backend"] == "fallback"
        p.wait_for(rf"post/main: upstream \S+ \(127.0.0.1:{dead1}\) refused the connection; passing it over")
        assert c.get("http://shop.example/get").json()["backend"] == "fallback"
        p.wait_for(rf"get/main: upstream \S+ \(127.0.0.1:{dead2}\) refused the connection \(4 attempts\)")


def test_nothing_can_serve_answers_502_naming_what_was_tried(rules_file, proxy):
    dead1, dead2 = free_port(), free_port()
    rules = rules_file(f"""
        version: 1
        routes:
          - name: shop
            backends:
              - {{name: main, upstream: "http://127.0.0.1:{dead1}"}}
              - {{name: safety-net, fallback: true, upstream: "http://127.0.0.1:{dead2}"}}
        """)
    p = proxy(rules)
    with httpx.Client(proxy=p.url, timeout=10) as c:
        for _ in range(2):            # tried, then passed over during the cool-down: the same answer
            r = c.get("http://shop.example/cart")
            assert r.status_code == 502
            assert r.text.startswith("condroute: no upstream of route 'shop' can serve GET http://shop.example/cart")
            assert f"main: upstream http://127.0.0.1:{dead1} (127.0.0.1:{dead1}) is unavailable: refused" in r.text
            assert (f"safety-net: upstream http://127.0.0.1:{dead2} (127.0.0.1:{dead2}) is unavailable: "
                    "refused") in r.text
            assert r.headers["X-Condroute"] == "shop -> error 502 (no upstream available)"


def test_passive_health_learns_from_mitmproxys_own_failed_connection(servers, echo, rules_file, proxy):
    """An upstream with an open connection is not probed; when it stops accepting new connections,
    mitmproxy's own connection attempt fails (that request gets mitmproxy's 502) and condroute passes
    the upstream over from then on."""
    fallback = echo("fallback")
    main_url = servers(named_handler("main"))
    rules = rules_file(f"""
        version: 1
        routes:
          - name: shop
            backends:
              - {{name: main, upstream: "{main_url}"}}
              - {{name: fb, fallback: true, upstream: "{fallback}"}}
        """)
    p = proxy(rules, "--set", "condroute_log=verbose")
    with httpx.Client(proxy=p.url, timeout=10) as a, httpx.Client(proxy=p.url, timeout=10) as b:
        assert a.get("http://shop.example/").json()["backend"] == "main"      # a keeps its connection open
        srv = next(s for s in servers.started if s.server_address[1] == int(main_url.rsplit(":", 1)[1]))
        srv.shutdown()
        srv.server_close()                     # no new connections; a's stays open
        mark = p.mark()
        r = b.get("http://shop.example/")      # known up (open connection): no probe, mitmproxy connects
        assert r.status_code == 502
        p.wait_for(r"condroute: upstream 127\.0\.0\.1:\d+ failed: .*; passing it over for 5s", start=mark)
        r = b.get("http://shop.example/")
        assert r.status_code == 200 and r.json()["backend"] == "fallback"
        p.wait_for(r"skipped main: upstream \S+ \(127\.0\.0\.1:\d+\) is unavailable: ", start=mark)


def test_an_upstream_that_comes_back_is_used_again_after_the_cool_down(echo, rules_file, proxy, servers):
    fallback = echo("fallback")
    port = free_port()
    rules = rules_file(f"""
        version: 1
        routes:
          - name: shop
            backends:
              - {{name: main, upstream: "http://127.0.0.1:{port}"}}
              - {{name: fb, fallback: true, upstream: "{fallback}"}}
        """)
    p = proxy(rules, "--set", "condroute_cooldown=0.5")
    with httpx.Client(proxy=p.url, timeout=10) as c:
        assert c.get("http://shop.example/").json()["backend"] == "fallback"
        from condroute.cli.demo import start_echo
        back = start_echo("main-again", "127.0.0.1", port)     # the upstream restarts on its port
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:                 # polls until the cool-down is over
                if c.get("http://shop.example/").json()["backend"] == "main-again":
                    break
            else:
                pytest.fail("the upstream was never used again")
        finally:
            back.shutdown()
            back.server_close()


# -- timeouts -------------------------------------------------------------------------------------------
def test_slow_backend_hits_the_timeout_with_504(echo, rules_file, proxy, servers):
    slow = servers(slow_handler(8.0))
    fast = echo("fast")
    rules = rules_file(f"""
        version: 1
        upstreams: {{slowpoke: "{slow}"}}
        routes:
          - name: reports
            match: {{path: /reports/*}}
            backends:
              - {{name: main, upstream: slowpoke, timeout: 0.5}}
          - name: other
            backends:
              - {{name: fast, upstream: "{fast}", timeout: 0.5}}
        """)
    p = proxy(rules)
    with httpx.Client(proxy=p.url, timeout=20) as c:
        t0 = time.monotonic()
        r = c.get("http://shop.example/reports/q3?x=1")
        took = time.monotonic() - t0
        assert r.status_code == 504
        assert 0.45 <= took < 5, took
        assert r.text == (f"condroute: upstream slowpoke ({slow}/reports/q3?x=1) did not respond within 0.5s\n"
                          f"  route 'reports', backend 'main'\n")
        assert r.headers["X-Condroute"] == "reports/main -> slowpoke (timeout 0.5s: 504)"
        p.wait_for(r"reports/main: upstream slowpoke did not respond within 0.5s, answering 504")
        # the proxy goes on serving, and a fast backend with the same timeout is not cut
        for _ in range(3):
            r = c.get("http://shop.example/fast")
            assert r.status_code == 200 and r.json()["backend"] == "fast"
    # HTTP/1.0-style client without keep-alive as well
    with httpx.Client(proxy=p.url, timeout=20, headers={"Connection": "close"}) as c:
        assert c.get("http://shop.example/reports/x").status_code == 504
    assert "mitmproxy has crashed" not in p.output()


def test_a_late_response_after_the_timeout_is_ignored(rules_file, proxy, servers):
    answered = threading.Semaphore(0)

    class Late(slow_handler(0.35)):
        def do_GET(self):
            super().do_GET()
            answered.release()            # the late response has been written (or refused)

    late = servers(Late)
    rules = rules_file(f"""
        version: 1
        routes:
          - name: r
            backends:
              - {{name: late, upstream: "{late}", timeout: 0.3}}
        """)
    p = proxy(rules)
    with httpx.Client(proxy=p.url, timeout=20) as c:
        for _ in range(8):
            r = c.get("http://late.example/")
            assert r.status_code == 504 and "did not respond within 0.3s" in r.text
        for _ in range(8):
            assert answered.acquire(timeout=10)
        assert c.get("http://late.example/").status_code == 504     # the proxy is fine and still answering
    out = p.output()
    assert "mitmproxy has crashed" not in out and "Traceback" not in out, out


def test_timeout_with_an_http2_client(rules_file, proxy, servers, echo, tmp_path):
    from helpers import h2_request_via_proxy
    slow, fast = servers(slow_handler(8.0)), echo("fast")
    rules = rules_file(f"""
        version: 1
        routes:
          - name: api
            match: {{host: api.dev.invalid}}
            backends:
              - {{name: slow, when: {{path: /slow}}, upstream: "{slow}", timeout: 0.4}}
              - {{name: fast, upstream: "{fast}", timeout: 0.4}}
        """)
    confdir = tmp_path / "mitmconf"
    p = proxy(rules, "--set", f"confdir={confdir}")
    ca = str(confdir / "mitmproxy-ca-cert.pem")
    status, headers, body, alpn = h2_request_via_proxy(p.port, "https://api.dev.invalid/slow", ca)
    assert alpn == "h2" and status == 504
    assert b"did not respond within 0.4s" in body
    assert headers["x-condroute"] == f"api/slow -> {slow} (timeout 0.4s: 504)"
    status, _, body, _ = h2_request_via_proxy(p.port, "https://api.dev.invalid/other", ca)
    assert status == 200 and json.loads(body)["backend"] == "fast"
    assert "mitmproxy has crashed" not in p.output()


def tls_server(handler_cls, tmp_path: Path) -> tuple[ThreadingHTTPServer, str]:
    """An HTTPS server with a throwaway self-signed certificate for 127.0.0.1."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    pem = tmp_path / "upstream.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    srv = _Server(("127.0.0.1", 0), handler_cls)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pem))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"https://127.0.0.1:{srv.server_address[1]}"


def test_timeout_on_a_tls_upstream_plain_and_inside_an_intercepted_connect(rules_file, proxy, tmp_path):
    slow, url = tls_server(slow_handler(8.0), tmp_path)
    try:
        rules = rules_file(f"""
            version: 1
            routes:
              - name: secure
                backends:
                  - {{name: slow, upstream: "{url}", timeout: 0.4}}
            """)
        confdir = tmp_path / "mitmconf"
        p = proxy(rules, "--set", "ssl_insecure=true", "--set", f"confdir={confdir}")
        with httpx.Client(proxy=p.url, timeout=20) as c:                       # plain http from the client
            r = c.get("http://plain.example/x")
            assert r.status_code == 504 and "did not respond within 0.4s" in r.text
            assert "route &#x27;secure&#x27;" in r.text or "route 'secure'" in r.text
        import ssl
        ctx = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem"))
        with httpx.Client(proxy=p.url, timeout=20, verify=ctx) as c:           # HTTPS through CONNECT
            t0 = time.monotonic()
            r = c.get("https://secure.example/x")
            assert r.status_code == 504 and "did not respond within 0.4s" in r.text
            assert time.monotonic() - t0 < 5
        assert "mitmproxy has crashed" not in p.output()
    finally:
        slow.shutdown()
        slow.server_close()


def test_timeout_does_not_cut_streamed_bodies(rules_file, proxy, servers):
    dribble = servers(dribble_handler(chunks=6, interval=0.25))     # 1.5 s of body after the headers
    rules = rules_file(f"""
        version: 1
        routes:
          - name: stream
            backends:
              - {{name: main, upstream: "{dribble}", timeout: 0.5}}
        """)
    p = proxy(rules, "--set", "stream_large_bodies=1")
    with httpx.Client(proxy=p.url, timeout=20) as c:
        with c.stream("POST", "http://files.example/upload", content=b"z" * 200_000) as r:
            assert r.status_code == 200 and r.headers["X-Received"] == "200000"
            assert r.read() == b"".join(f"chunk {i}\n".encode() for i in range(6))
        r = c.get("http://files.example/download")
        assert r.status_code == 200 and r.text.count("chunk") == 6


async def test_timeout_does_not_cut_a_websocket(rules_file, proxy):
    import asyncio

    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    async def handler(ws):
        async for msg in ws:
            await ws.send(f"echo {msg}")

    async with serve(handler, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        rules = rules_file(f"""
            version: 1
            routes:
              - name: chat
                backends:
                  - {{name: live, upstream: "ws://127.0.0.1:{port}", timeout: 0.3}}
            """)
        p = proxy(rules)
        async with connect("ws://chat.example/socket", proxy=p.url, open_timeout=10) as ws:
            for i in range(4):
                await asyncio.sleep(0.3)          # the session outlives the timeout several times over
                await ws.send(f"m{i}")
                assert await ws.recv() == f"echo m{i}"
        assert not logs_status(p.output(), 504)


def test_krakend_timeout_applies(rules_file, proxy, servers, tmp_path):
    slow = servers(slow_handler(8.0))
    cfg = tmp_path / "krakend.json"
    cfg.write_text(json.dumps({
        "version": 3, "timeout": "400ms", "host": [slow],
        "endpoints": [{"endpoint": "/slow", "backend": [{"url_pattern": "/slow"}]}]}))
    p = proxy(cfg)
    with httpx.Client(proxy=p.url, timeout=20) as c:
        r = c.get("http://gateway.example/slow")
        assert r.status_code == 504 and "did not respond within 0.4s" in r.text
        assert re.search(r"route 'GET /slow', backend 'backend-1'", r.text)
