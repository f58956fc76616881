"""End to end through a real mitmdump, in every proxy mode, with real clients (httpx, curl, websockets)
and echo backends that say who they are. Everything listens on 127.0.0.1 / ::1 only."""
from __future__ import annotations

import json
import re
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from helpers import ADDON, h2_request_via_proxy, has_ipv6_loopback, run_mitmdump_until_exit

RELOADED = r"condroute: reloaded "


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "15", *args], capture_output=True, text=True, timeout=20)


def curl_json(*args: str) -> dict:
    out = curl(*args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# -- regular mode ----------------------------------------------------------------------------------
def test_regular_mode(echo, rules_file, proxy):
    a, b, direct = echo("svc-a"), echo("svc-b"), echo("direct")
    rules = rules_file(f"""
        version: 1
        upstreams: {{a: "{a}", b: "{b}/b-base"}}
        routes:
          - name: orders
            match: {{host: shop.example, path: "/orders/{{id}}"}}
            backends:
              - {{name: beta, when: {{cookie: {{beta: "1"}}}}, upstream: b, path: "/v2/orders/{{id}}"}}
              - {{name: default, fallback: true, upstream: a}}
          - name: blocked
            match: {{path: /admin/*}}
            backends:
              - {{name: deny, respond: {{status: 403, body: "nope\\n"}}}}
        """)
    p = proxy(rules)
    with httpx.Client(proxy=p.url, timeout=10) as c:
        r = c.get("http://shop.example/orders/42?full=1", cookies={"beta": "1"})
        assert r.status_code == 200
        j = r.json()
        assert (j["backend"], j["path"]) == ("svc-b", "/b-base/v2/orders/42?full=1")
        assert j["host"] == b.split("//")[1]
        assert r.headers["X-Condroute"] == "orders/beta -> b"

        r = c.get("http://shop.example/orders/7")
        j = r.json()
        assert (j["backend"], j["path"], j["host"]) == ("svc-a", "/orders/7", a.split("//")[1])
        assert r.headers["X-Condroute"] == "orders/default -> a"

        # no route: the request goes where it was going, untouched
        r = c.get(f"{direct}/other?q=1", headers={"Cookie": "beta=1"})
        j = r.json()
        assert (j["backend"], j["path"], j["host"]) == ("direct", "/other?q=1", direct.split("//")[1])
        assert r.headers["X-Condroute"] == "passthrough"

        # respond: answered by the proxy even though the host does not exist
        r = c.post("http://nowhere.invalid/admin/users", content=b"x" * 100)
        assert (r.status_code, r.text) == (403, "nope\n")
        assert r.headers["X-Condroute"] == "blocked/deny -> respond 403"
    j = curl_json("-x", p.url, "-b", "beta=1", "http://shop.example/orders/9")
    assert (j["backend"], j["path"]) == ("svc-b", "/b-base/v2/orders/9")
    p.wait_for(r"condroute: GET http://shop\.example/orders/9 -> orders/beta -> b ")


# -- reverse mode ----------------------------------------------------------------------------------
def test_reverse_mode_default_backend_and_path_routes(echo, rules_file, proxy):
    default, api = echo("default"), echo("api")
    rules = rules_file(f"""
        version: 1
        routes:
          - name: api
            match: {{path: /api/*}}
            backends:
              - {{name: api, upstream: "{api}", path: "/{{rest}}"}}
        """)
    p = proxy(rules, "--mode", f"reverse:{default}")
    with httpx.Client(timeout=10) as c:
        r = c.get(f"{p.url}/api/users/1?x=2")
        j = r.json()
        assert (j["backend"], j["path"], j["host"]) == ("api", "/users/1?x=2", api.split("//")[1])
        assert r.headers["X-Condroute"] == "api/api -> " + api
        r = c.get(f"{p.url}/index.html")
        j = r.json()
        assert (j["backend"], j["path"], j["host"]) == ("default", "/index.html", default.split("//")[1])
        assert r.headers["X-Condroute"] == "passthrough"


def test_reverse_mode_host_rules_need_keep_host_header(echo, rules_file, proxy):
    default, shop, shop2 = echo("default"), echo("shop"), echo("shop-preserve")
    rules = rules_file(f"""
        version: 1
        routes:
          - name: shop
            match: {{host: shop.example}}
            backends:
              - {{name: keep, when: {{header: {{X-Keep: "1"}}}}, upstream: "{shop2}", preserve_host: true}}
              - {{name: shop, upstream: "{shop}"}}
        """)
    # without keep_host_header mitmproxy has rewritten Host before the addon sees it: the addon warns
    p1 = proxy(rules, "--mode", f"reverse:{default}")
    p1.wait_for(r"rules that match on host need --set keep_host_header=true")
    with httpx.Client(timeout=10) as c:
        assert c.get(f"{p1.url}/", headers={"Host": "shop.example"}).json()["backend"] == "default"

    p = proxy(rules, "--mode", f"reverse:{default}", "--set", "keep_host_header=true")
    assert "keep_host_header=true" not in p.output()
    with httpx.Client(timeout=10) as c:
        r = c.get(f"{p.url}/cart", headers={"Host": "shop.example"})
        j = r.json()
        assert (j["backend"], j["path"], j["host"]) == ("shop", "/cart", shop.split("//")[1])
        r = c.get(f"{p.url}/cart", headers={"Host": "shop.example", "X-Keep": "1"})
        j = r.json()
        assert (j["backend"], j["host"]) == ("shop-preserve", "shop.example")
        r = c.get(f"{p.url}/cart", headers={"Host": "other.example"})
        j = r.json()
        assert (j["backend"], j["host"]) == ("default", "other.example")


# -- upstream mode ---------------------------------------------------------------------------------
def test_upstream_mode_through_a_second_proxy(echo, rules_file, proxy, plain_mitmdump):
    a, b = echo("svc-a"), echo("svc-b")
    b_port = b.rsplit(":", 1)[1]
    up = plain_mitmdump()
    rules = rules_file(f"""
        version: 1
        routes:
          - name: shop
            match: {{host: shop.example}}
            backends:
              - {{name: b, when: {{query: {{v: b}}}}, upstream: "{b}", path: "/via-b{{path}}"}}
              - {{name: a, fallback: true, upstream: "{a}"}}
        """)
    p = proxy(rules, "--mode", f"upstream:{up.url}")
    mark = up.mark()
    with httpx.Client(proxy=p.url, timeout=10) as c:
        r = c.get("http://shop.example/cart?v=b")
        j = r.json()
        assert (j["backend"], j["path"], j["host"]) == ("svc-b", "/via-b/cart?v=b", f"127.0.0.1:{b_port}")
        assert r.headers["X-Condroute"] == f"shop/b -> {b}"
        assert c.get("http://shop.example/cart").json()["backend"] == "svc-a"
    # the upstream proxy really carried it, already rerouted
    up.wait_for(rf"GET http://127\.0\.0\.1:{b_port}/via-b/cart\?v=b", start=mark)
    assert "shop.example" not in "\n".join(up.lines[mark:])


# -- HTTPS interception ----------------------------------------------------------------------------
def _ca(confdir: Path, p) -> Path:
    ca = confdir / "mitmproxy-ca-cert.pem"
    assert ca.exists(), p.output()
    return ca


def test_https_interception_of_unresolvable_host_http1_and_http2(echo, rules_file, proxy, tmp_path):
    api = echo("local-api")
    rules = rules_file(f"""
        version: 1
        routes:
          - name: dev-api
            match: {{host: api.dev.invalid, path: /v1/*}}
            backends:
              - {{name: local, upstream: "{api}", path: "/{{rest}}", set_headers: {{X-Routed: "yes"}}}}
        """)
    confdir = tmp_path / "mitmconf"
    p = proxy(rules, "--set", f"confdir={confdir}")
    ca = _ca(confdir, p)
    api_auth = api.split("//")[1]
    ctx = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(proxy=p.url, verify=ctx, timeout=10) as c:                    # HTTP/1.1
        r = c.get("https://api.dev.invalid/v1/users/7?x=1")
        assert r.http_version == "HTTP/1.1"
        j = r.json()
        assert (j["backend"], j["path"], j["host"]) == ("local-api", "/users/7?x=1", api_auth)
        assert j["headers"]["X-Routed"] == "yes"
        assert r.headers["x-condroute"] == f"dev-api/local -> {api}"
        r = c.post("https://api.dev.invalid/v1/items", content=b"12345678")
        assert (r.json()["method"], r.json()["path"], r.json()["body_length"]) == ("POST", "/items", 8)
    # HTTP/2 between client and mitmproxy, HTTP/1.1 from mitmproxy to the local backend
    status, headers, body, alpn = h2_request_via_proxy(p.port, "https://api.dev.invalid/v1/users/8?y=2", str(ca),
                                                       headers=[("x-ab", "1")])
    assert (alpn, status) == ("h2", 200)
    j = json.loads(body)
    assert (j["backend"], j["path"], j["host"]) == ("local-api", "/users/8?y=2", api_auth)
    assert j["headers"]["X-Routed"] == "yes" and j["headers"]["x-ab"] == "1"
    assert headers["x-condroute"] == f"dev-api/local -> {api}"
    status, _, body, _ = h2_request_via_proxy(p.port, "https://api.dev.invalid/v1/items", str(ca), method="POST",
                                              body=b"h2-body-123")
    j = json.loads(body)
    assert (status, j["method"], j["path"], j["body_length"]) == (200, "POST", "/items", 11)
    for flag, version in (("--http1.1", "1.1"), ("--http2", "2")):
        out = curl("--cacert", str(ca), "-x", p.url, flag, "-w", "\n%{http_version} %{response_code}",
                   "https://api.dev.invalid/v1/ping")
        assert out.returncode == 0, out.stderr
        body, _, status = out.stdout.rpartition("\n")
        assert status == f"{version} 200", out.stdout
        j = json.loads(body)
        assert (j["backend"], j["path"], j["host"]) == ("local-api", "/ping", api_auth)
    # a path that no route owns goes to the (unresolvable) original host: mitmproxy answers 502
    with httpx.Client(proxy=p.url, verify=ctx, timeout=10) as c:
        r = c.get("https://api.dev.invalid/other")
        assert r.status_code == 502
        assert "local-api" not in r.text


# -- WebSocket -------------------------------------------------------------------------------------
async def test_websocket_upgrade_rerouted(rules_file, proxy):
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    def handler_for(name: str):
        async def handler(ws):
            await ws.send(json.dumps({"backend": name, "path": ws.request.path,
                                      "host": ws.request.headers.get("Host")}))
            async for msg in ws:
                await ws.send(f"{name} echoes {msg}")
        return handler

    async with serve(handler_for("ws-live"), "127.0.0.1", 0) as live, \
            serve(handler_for("ws-canary"), "127.0.0.1", 0) as canary:
        live_port = live.sockets[0].getsockname()[1]
        canary_port = canary.sockets[0].getsockname()[1]
        rules = rules_file(f"""
            version: 1
            routes:
              - name: chat
                match: {{host: chat.example, path: /socket/*}}
                backends:
                  - {{name: canary, when: {{query: {{canary: "1"}}}}, upstream: "ws://127.0.0.1:{canary_port}",
                      path: "/ws/{{rest}}"}}
                  - {{name: live, fallback: true, upstream: "ws://127.0.0.1:{live_port}"}}
            """)
        p = proxy(rules)
        for query, name, port, path in (("?canary=1", "ws-canary", canary_port, "/ws/room/1?canary=1"),
                                        ("", "ws-live", live_port, "/socket/room/1")):
            async with connect(f"ws://chat.example/socket/room/1{query}", proxy=p.url, open_timeout=10) as ws:
                hello = json.loads(await ws.recv())
                assert hello == {"backend": name, "path": path, "host": f"127.0.0.1:{port}"}
                assert ws.response.headers["X-Condroute"].startswith(f"chat/{name.removeprefix('ws-')} -> ")
                await ws.send("ping")
                assert await ws.recv() == f"{name} echoes ping"


# -- streamed request bodies -----------------------------------------------------------------------
def test_streamed_request_body_is_rerouted(echo, rules_file, proxy, tmp_path):
    uploads, other, origin = echo("uploads"), echo("other"), echo("origin")
    rules = rules_file(f"""
        version: 1
        routes:
          - name: upload
            match: {{host: files.example, methods: [POST, PUT]}}
            backends:
              - {{name: big, when: {{header: {{X-Big: "1"}}}}, upstream: "{uploads}", path: "/store{{path}}"}}
              - {{name: other, fallback: true, upstream: "{other}"}}
        """)
    p = proxy(rules, "--set", "stream_large_bodies=1")
    size = 3 * 1024 * 1024 + 17

    def chunks():
        for _ in range(3):
            yield b"a" * (1024 * 1024)
        yield b"b" * 17

    mark = p.mark()
    with httpx.Client(proxy=p.url, timeout=20) as c:
        r = c.post("http://files.example/up/1", content=chunks(), headers={"X-Big": "1"})  # chunked
        j = r.json()
        assert (j["backend"], j["path"], j["body_length"]) == ("uploads", "/store/up/1", size)
        assert j["headers"].get("Transfer-Encoding") == "chunked"
        assert j["host"] == uploads.split("//")[1]
        # the streamed body went to the rerouted destination, never towards files.example
        p.wait_for(r"Streaming request to 127\.0\.0\.1", start=mark)
        assert "files.example" not in " ".join(ln for ln in p.lines[mark:] if "Streaming" in ln)

        r = c.put("http://files.example/up/2", content=b"c" * 200_000)               # Content-Length
        j = r.json()
        assert (j["backend"], j["path"], j["body_length"]) == ("other", "/up/2", 200_000)

        r = c.post(f"{origin}/raw", content=chunks())                               # no route
        assert (r.json()["backend"], r.json()["body_length"]) == ("origin", size)
    big = tmp_path / "big.bin"
    big.write_bytes(b"z" * 500_000)
    j = curl_json("-x", p.url, "-H", "X-Big: 1", "--data-binary", f"@{big}", "http://files.example/curl")
    assert (j["backend"], j["path"], j["body_length"]) == ("uploads", "/store/curl", 500_000)


def test_respond_with_streamed_request_body_never_contacts_original_host(rules_file, proxy):
    """A `respond` backend answers itself even when mitmproxy would stream the body: the body must not
    be sent to the original destination first."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    contacted = threading.Event()

    class Origin(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            contacted.set()
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"origin")

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        origin = f"http://127.0.0.1:{srv.server_address[1]}"
        rules = rules_file("""
            version: 1
            settings: {on_no_match: error}
            routes:
              - name: blocked
                match: {path: /admin/*}
                backends:
                  - {name: deny, respond: {status: 403, body: "blocked\\n"}}
              - name: strict
                match: {path: /strict/*}
                backends:
                  - {name: never, when: {header: {X-Never: "1"}}, upstream: "http://127.0.0.1:9"}
            """)
        p = proxy(rules, "--set", "stream_large_bodies=1")

        def chunks():
            for _ in range(4):
                yield b"s" * 65536

        with httpx.Client(proxy=p.url, timeout=10) as c:
            for path, status in (("/admin/x", 403), ("/strict/y", 502)):
                r = c.post(f"{origin}{path}", content=chunks())
                assert r.status_code == status, r.text
                r = c.post(f"{origin}{path}", content=b"l" * 300_000)
                assert r.status_code == status, r.text
        assert not contacted.is_set()
        assert "Traceback" not in p.output()
    finally:
        srv.shutdown()
        srv.server_close()


# -- IPv6 ------------------------------------------------------------------------------------------
def test_ipv6_upstream(echo, rules_file, proxy):
    if not has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    six = echo("six", host="::1")
    port = int(six.rsplit(":", 1)[1])
    rules = rules_file(f"""
        version: 1
        upstreams: {{v6: "{six}"}}
        routes:
          - name: v6
            match: {{host: six.example}}
            backends:
              - {{name: v6, upstream: v6, path: "/six{{path}}"}}
        """)
    p = proxy(rules)
    with httpx.Client(proxy=p.url, timeout=10) as c:
        r = c.get("http://six.example/hello?x=1")
    j = r.json()
    assert (j["backend"], j["path"], j["host"]) == ("six", "/six/hello?x=1", f"[::1]:{port}")
    assert r.headers["X-Condroute"] == "v6/v6 -> v6"
    p.wait_for(re.escape(f"(http://[::1]:{port}/six/hello?x=1)"))


# -- hot reload ------------------------------------------------------------------------------------
def test_hot_reload_good_and_bad(echo, rules_file, proxy):
    a, b = echo("svc-a"), echo("svc-b")
    template = """
        version: 1
        routes:
          - name: main
            backends:
              - {{name: only, upstream: "{up}"}}
        """
    path = rules_file(template.format(up=a))
    p = proxy(path)
    with httpx.Client(proxy=p.url, timeout=10) as c:
        assert c.get("http://svc.example/").json()["backend"] == "svc-a"

        mark = p.mark()
        rules_file(template.format(up=b))
        p.wait_for(RELOADED + re.escape(str(path)), start=mark)
        r = c.get("http://svc.example/")
        assert r.json()["backend"] == "svc-b"

        mark = p.mark()
        path.write_text("version: 1\nroutes:\n  - name: main\n    backends:\n      - {name: only, upstream: nope}\n")
        m = p.wait_for(re.escape(str(path)) + r":(\d+):(\d+): (.*)", start=mark)
        assert (m.group(1), m.group(2)) == ("5", "32") and "unknown upstream 'nope'" in m.group(3)
        assert "keeping the last good rules" in "\n".join(p.lines[mark:])
        assert c.get("http://svc.example/").json()["backend"] == "svc-b"   # old rules still route

        mark = p.mark()
        rules_file(template.format(up=a))
        p.wait_for(RELOADED, start=mark)
        assert c.get("http://svc.example/").json()["backend"] == "svc-a"
    assert "Traceback" not in p.output()


# -- start-up errors -------------------------------------------------------------------------------
def test_bad_rules_file_at_startup_exits_1_with_location(rules_file):
    path = rules_file("""
        version: 1
        routes:
          - name: r
            match: {path: "no-slash"}
            backends:
              - {name: x, upstream: "http://127.0.0.1:9001"}
        """)
    res = run_mitmdump_until_exit(["-s", str(ADDON), "--set", f"condroute_rules={path}"])
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert re.search(re.escape(str(path)) + r":5:\d+: match\.path must start with '/'", out), out
    assert "Traceback" not in out


def test_missing_rules_file_at_startup_exits_1(tmp_path):
    path = tmp_path / "missing.yaml"
    res = run_mitmdump_until_exit(["-s", str(ADDON), "--set", f"condroute_rules={path}"])
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert str(path) in out
    assert "Traceback" not in out


def test_bad_option_at_startup_exits_1(rules_file):
    path = rules_file("version: 1\nroutes: []\n")
    res = run_mitmdump_until_exit(["-s", str(ADDON), "--set", f"condroute_rules={path}",
                                   "--set", "condroute_log=loud"])
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "condroute_log must be one of off, decisions, verbose" in out
    assert "Traceback" not in out
