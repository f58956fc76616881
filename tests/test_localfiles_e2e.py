"""Map Local end to end through a real mitmdump: httpx as a browser revalidating (ETag, 304, a changed
file), HEAD, and traversal attempts sent with curl --path-as-is and over raw sockets, each checked for
what answers it (mitmproxy, condroute's path check in the engine, or localfiles) and that nothing
outside the folder ever comes back. 127.0.0.1 only."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import textwrap
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

SECRET = "TOP-SECRET-OUTSIDE"

RULES = """
version: 1
routes:
  - name: me
    match: {path: /api/me}
    backends:
      - {name: mock, respond: {file: mock.json}}
  - name: mocks
    match: {path: /mocks/*}
    backends:
      - {name: folder, respond: {dir: mocks/}}
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "rules"
    (root / "mocks" / "sub").mkdir(parents=True)
    (root / "mock.json").write_text('{"v": 1}')
    (root / "mocks" / "users.json").write_text('[{"id": 1}]')
    (root / "mocks" / "a b.json").write_text('{"space": true}')
    (root / "mocks" / "sub" / "index.html").write_text("<h1>index</h1>")
    (root / "mocks" / ".env").write_text(SECRET)
    (root / "secret.txt").write_text(SECRET)         # inside the rules folder, outside mocks/
    (tmp_path / "secret.txt").write_text(SECRET)
    (root / "mocks" / "out.txt").symlink_to(tmp_path / "secret.txt")
    (root / "mocks" / "up").symlink_to(tmp_path)
    (root / "rules.yaml").write_text(textwrap.dedent(RULES))
    return root


def test_browser_revalidation_head_and_change(tree, proxy):
    p = proxy(tree / "rules.yaml")
    with httpx.Client(proxy=p.url, timeout=10) as c:
        r = c.get("http://app.example/api/me")
        assert (r.status_code, r.content) == (200, b'{"v": 1}')
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-condroute"] == "me/mock -> respond 200 from file mock.json"
        etag, lm = r.headers["etag"], r.headers["last-modified"]

        r2 = c.get("http://app.example/api/me", headers={"If-None-Match": etag, "If-Modified-Since": lm})
        assert (r2.status_code, r2.content) == (304, b"")
        assert r2.headers["etag"] == etag and "content-length" not in r2.headers

        r3 = c.get("http://app.example/api/me", headers={"If-Modified-Since": lm})
        assert r3.status_code == 304

        (tree / "mock.json").write_text('{"v": 2, "changed": true}')
        r4 = c.get("http://app.example/api/me", headers={"If-None-Match": etag})
        assert (r4.status_code, r4.content) == (200, b'{"v": 2, "changed": true}')
        assert r4.headers["etag"] != etag

        os.utime(tree / "mock.json", (1_600_000_000, 1_600_000_000))
        r5 = c.get("http://app.example/api/me", headers={"If-Modified-Since": formatdate(1_600_000_000, usegmt=True)})
        assert r5.status_code == 304

        h = c.head("http://app.example/mocks/users.json")
        assert (h.status_code, h.content) == (200, b"")
        assert h.headers["content-length"] == str(len('[{"id": 1}]'))
        # the connection is still usable after a HEAD: the next answer is framed right
        r6 = c.get("http://app.example/mocks/a%20b.json")
        assert (r6.status_code, r6.content) == (200, b'{"space": true}')
        r7 = c.get("http://app.example/mocks/sub/")
        assert (r7.status_code, r7.text) == (200, "<h1>index</h1>")
        assert r7.headers["content-type"] == "text/html; charset=utf-8"

        (tree / "mock.json").unlink()
        r8 = c.get("http://app.example/api/me")
        assert r8.status_code == 404 and r8.text == "condroute: mock.json: there is no such file (respond.file)\n"
    p.wait_for(r"condroute: GET http://app\.example/api/me: answered 404: mock\.json: there is no such file")


def curl(*args: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", *args],
                         capture_output=True, text=True, timeout=15)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body


def raw(port: int, target: bytes) -> tuple[int, bytes]:
    """One absolute-form request with the target exactly as given; (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: " + target.split(b"/")[2] + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.1 (\d{3})", head)
    assert m, data[:200]
    return int(m.group(1)), body


# (the path as sent, the status, who answers): "engine" is condroute's path check (a path that a
# route could own when read decoded is refused before any backend), "core" is localfiles, "passthrough"
# a path that normalises outside /mocks/ (no route owns it: it goes to the echo server, not to a file)
CASES = [
    ("/mocks/users.json", 200, "core"),
    ("/mocks/../secret.txt", 200, "passthrough"),
    ("/mocks/sub/../../secret.txt", 200, "passthrough"),
    ("/mocks/./users.json", 200, "core"),                 # normalised to /mocks/users.json first
    ("/mocks/%2e%2e/secret.txt", 400, "engine"),
    ("/mocks/%2E%2E%2Fsecret.txt", 400, "engine"),
    ("/mocks/.%2e/secret.txt", 400, "engine"),
    ("/mocks/..%2fsecret.txt", 400, "engine"),
    ("/mocks/..%5csecret.txt", 400, "engine"),
    ("/mocks/%2fetc%2fpasswd", 400, "engine"),
    ("/mocks/..;/secret.txt", 400, "engine"),
    ("/mocks/%252e%252e/secret.txt", 404, "core"),         # decoded once: a file named "%2e%2e"
    ("/mocks/users.json%00.txt", 400, "core"),
    ("/mocks/%00", 400, "core"),
    ("/mocks/C:/Windows/win.ini", 400, "core"),
    ("/mocks/c%3a/secret.txt", 400, "core"),
    ("/mocks/.env", 404, "core"),
    ("/mocks/%2eenv", 400, "engine"),
    ("/mocks/out.txt", 403, "core"),
    ("/mocks/up/secret.txt", 403, "core"),
    ("/mocks//etc/passwd", 404, "core"),                   # "//" merged: mocks/etc/passwd, no such file
    ("/mocks/nope.json", 404, "core"),
    ("/mocks/", 404, "core"),                              # no index.html in mocks/
]


def test_traversal_through_curl_and_raw_sockets(tree, proxy, echo):
    direct = echo("direct")           # where a path that no route owns goes (its own echo: never a file)
    port = direct.rsplit(":", 1)[1]
    p = proxy(tree / "rules.yaml")
    base = f"http://127.0.0.1:{port}"
    for path, status, who in CASES:
        for how in ("curl", "raw"):
            if how == "curl":
                got, body = curl("--path-as-is", "-x", p.url, base + path)
                body_b = body.encode()
            else:
                got, body_b = raw(p.port, (base + path).encode())
            assert got == status, (how, path, body_b[:200])
            assert SECRET.encode() not in body_b, (how, path)
            if who == "passthrough":
                assert b'"direct"' in body_b, (how, path, body_b[:200])
            elif who == "engine":
                assert body_b.startswith(b"condroute: bad request: the path has"), (how, path, body_b)
            elif status == 200:
                assert body_b == b'[{"id": 1}]', (how, path, body_b)
            else:                      # localfiles' own sentence
                assert body_b.startswith(b"condroute: mocks/"), (how, path, body_b)
    # a raw backslash and a raw NUL in the request target: mitmproxy lets both through; the engine
    # refuses the backslash (a route could own it read as "/"), the NUL reaches localfiles
    got, body = raw(p.port, (base + "/mocks/..\\secret.txt").encode())
    assert (got, body) == (400, b"condroute: bad request: the path has a backslash\n")
    got, body = raw(p.port, (base + "/mocks/users.json\x00").encode())
    assert (got, body) == (400, b"condroute: mocks/users.json\\x00: the name has a NUL\n")


def test_http2_get_head_and_304(tree, proxy, tmp_path):
    """Over HTTP/2 (h2 between the client and mitmproxy): a HEAD keeps its Content-Length with no
    DATA, a 304 has neither (h2 checks the framing of what it receives)."""
    from helpers import h2_request_via_proxy
    confdir = tmp_path / "mitmconf"
    p = proxy(tree / "rules.yaml", "--set", f"confdir={confdir}")
    ca = str(confdir / "mitmproxy-ca-cert.pem")
    status, headers, body, alpn = h2_request_via_proxy(p.port, "https://app.example/mocks/users.json", ca)
    assert (alpn, status, body) == ("h2", 200, b'[{"id": 1}]')
    etag = headers["etag"]
    status, headers, body, _ = h2_request_via_proxy(p.port, "https://app.example/mocks/users.json", ca, method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", str(len('[{"id": 1}]')))
    status, headers, body, _ = h2_request_via_proxy(p.port, "https://app.example/mocks/users.json", ca,
                                                    headers=[("if-none-match", etag)])
    assert (status, body, headers["etag"]) == (304, b"", etag)
    assert "content-length" not in headers
