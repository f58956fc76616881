"""Issue 11, items 1 and 2, end to end: a real mitmdump, curl (--path-as-is, HTTP/1.1 and HTTP/2 through
CONNECT), the h2 library and a raw socket client, echo backends on 127.0.0.1. The host decided on is
where the request goes; a path is matched and forwarded normalised; the tricks answer 400."""
from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from helpers import h2_request_via_proxy


def curl(*args: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "--max-time", "15", "-w", "\n%{response_code}", *args],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    body, _, status = out.stdout.rpartition("\n")
    return int(status), body


def raw(port: int, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are, read the answer until the server closes (Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(request)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    return int(buf.split(b" ", 2)[1]), buf


def test_regular_mode_decides_on_the_absolute_form_target(echo, rules_file, proxy):
    e = echo("backend")
    port = int(e.rsplit(":", 1)[1])
    rules = rules_file("""
        version: 1
        routes:
          - name: blocked
            match: {host: 127.0.0.1}
            backends: [{name: deny, respond: {status: 403, body: "blocked\\n"}}]
        """)
    p = proxy(rules)
    # the request goes to 127.0.0.1: the Host header does not change what is decided
    assert curl("-x", p.url, f"http://127.0.0.1:{port}/", "-H", "Host: other.example")[0] == 403
    # it goes to localhost, whatever Host says; and the Host the backend receives is the target's
    status, body = curl("-x", p.url, f"http://localhost:{port}/x", "-H", "Host: 127.0.0.1")
    assert status == 200 and json.loads(body)["host"] == f"localhost:{port}"
    # two Host headers: 400 from the proxy, nothing forwarded
    for hosts in ((b"x.example", b"127.0.0.1:%d" % port), (b"localhost:%d" % port, b"localhost:%d" % port)):
        status, buf = raw(p.port, b"GET http://localhost:%d/ HTTP/1.1\r\nHost: %s\r\nHost: %s\r\n"
                                  b"Connection: close\r\n\r\n" % (port, *hosts))
        assert status == 400 and b"two Host headers" in buf and b"backend" not in buf, buf
    p.wait_for(rf"condroute: GET http://localhost:{port}/ -> refused 400: two Host headers")   # the port kept


def test_https_tunnel_whose_requests_name_another_host_get_400(echo, rules_file, proxy, tmp_path: Path):
    e = echo("local")
    rules = rules_file(f"""
        version: 1
        routes:
          - name: dev
            match: {{host: api.dev.invalid}}
            backends: [{{name: local, upstream: "{e}"}}]
          - name: blocked
            match: {{host: other.example}}
            backends: [{{name: deny, respond: {{status: 403}}}}]
        """)
    confdir = tmp_path / "conf"
    # validate_inbound_headers=false: else mitmproxy's own HTTP/2 checks refuse an :authority and
    # Host that differ before condroute sees them
    p = proxy(rules, "--set", f"confdir={confdir}", "--set", "validate_inbound_headers=false")
    ca = str(confdir / "mitmproxy-ca-cert.pem")
    url = "https://api.dev.invalid/v1"
    for flag in ("--http1.1", "--http2"):
        status, body = curl("--cacert", ca, "-x", p.url, flag, url)
        assert status == 200 and json.loads(body)["backend"] == "local"
        # curl sends this as Host (HTTP/1.1) or :authority (HTTP/2), inside CONNECT api.dev.invalid:443
        status, body = curl("--cacert", ca, "-x", p.url, flag, url, "-H", "Host: other.example")
        assert status == 400 and "names 'other.example'" in body, body
    # HTTP/2: :authority and a Host header that disagree
    status, _, body, alpn = h2_request_via_proxy(p.port, url, ca, headers=[("host", "other.example")], validate=False)
    assert (alpn, status) == ("h2", 400), body
    status, _, body, _ = h2_request_via_proxy(p.port, url, ca, headers=[("host", "api.dev.invalid")])
    assert status == 200 and json.loads(body)["backend"] == "local"


def test_reverse_mode_routes_on_host_and_refuses_two(echo, rules_file, proxy):
    default, shop = echo("default"), echo("shop")
    rules = rules_file(f"""
        version: 1
        routes:
          - name: shop
            match: {{host: shop.example}}
            backends: [{{name: shop, upstream: "{shop}"}}]
        """)
    p = proxy(rules, "--mode", f"reverse:{default}", "--set", "keep_host_header=true")
    assert json.loads(curl(f"{p.url}/", "-H", "Host: shop.example")[1])["backend"] == "shop"
    assert json.loads(curl(f"{p.url}/", "-H", "Host: else.example")[1])["backend"] == "default"
    status, buf = raw(p.port, b"GET / HTTP/1.1\r\nHost: else.example\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
    assert status == 400 and b"backend" not in buf


def test_upstream_mode_decides_on_the_target(echo, rules_file, proxy, plain_mitmdump):
    e = echo("backend")
    port = int(e.rsplit(":", 1)[1])
    up = plain_mitmdump()
    rules = rules_file("""
        version: 1
        routes:
          - name: blocked
            match: {host: 127.0.0.1}
            backends: [{name: deny, respond: {status: 403}}]
        """)
    p = proxy(rules, "--mode", f"upstream:{up.url}")
    assert curl("-x", p.url, f"http://127.0.0.1:{port}/", "-H", "Host: other.example")[0] == 403
    status, body = curl("-x", p.url, f"http://localhost:{port}/x", "-H", "Host: 127.0.0.1")
    assert status == 200 and json.loads(body)["host"] == f"localhost:{port}"


def test_paths_are_matched_and_forwarded_normalised(echo, rules_file, proxy):
    e = echo("backend")
    auth = e.split("//")[1]
    rules = rules_file(f"""
        version: 1
        routes:
          - name: admin
            match: {{path: /admin/*}}
            backends: [{{name: deny, respond: {{status: 403, body: "blocked\\n"}}}}]
          - name: api
            match: {{path: /api/*}}
            backends: [{{name: v1, upstream: "{e}/base", path: "/v1/{{rest}}"}}]
          - name: users
            match: {{path: "/users/{{id}}"}}
            backends: [{{name: u, upstream: "{e}/base", path: "/u/{{id}}"}}]
        """)
    p = proxy(rules)

    def get(path: str) -> tuple[int, str]:
        return curl("--path-as-is", "-x", p.url, f"http://{auth}{path}")

    for path in ("/./admin/x", "//admin/x", "/api/../admin/x", "/api/../../admin", "/users/../admin/x"):
        assert get(path) == (403, "blocked\n"), path
    for path in ("/%2e/admin/x", "/%2E/admin/x", "/admin%2Fx", "/api/..;/admin/x", "/api/%2e%2e/%2e%2e/admin"):
        status, body = get(path)
        assert status == 400 and "the path has" in body, (path, body)
    status, buf = raw(p.port, b"GET http://%s/a\\..\\admin\\x HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                      % (auth.encode(), auth.encode()))
    assert status == 400 and b"backslash" in buf
    # what is forwarded is what was matched; the query string is untouched
    status, body = get("/api/./users//7/../8?q=/../x&r=%2e")
    assert status == 200 and json.loads(body)["path"] == "/base/v1/users/8?q=/../x&r=%2e"
    # a path no route owns goes on as it came
    for path in ("/static/%2e%2e/x", "/static/../x//y"):
        status, body = get(path)
        assert status == 200 and json.loads(body)["path"] == path
