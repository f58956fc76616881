"""A HEAD request answered by condroute itself (respond, on_no_match: error, an injected fault, the
status page) gets the GET answer's headers and no body: a body after a HEAD answer would be read as
the next response on a kept-alive HTTP/1.1 connection (RFC 9110 §9.3.2). Through a real mitmdump,
with HEAD and GET pipelined on one connection."""
from __future__ import annotations

import socket
import time


def _pipelined(port: int, url: bytes) -> bytes:
    """HEAD url, then GET url (Connection: close) on one connection; everything the proxy sent."""
    req = (b"HEAD %s HTTP/1.1\r\nHost: a.test\r\nX-Fault: abort\r\n\r\n"
           b"GET %s HTTP/1.1\r\nHost: a.test\r\nX-Fault: abort\r\nConnection: close\r\n\r\n") % (url, url)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(req)
        buf = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (chunk := s.recv(65536)):
            buf += chunk
    return buf


def test_head_answers_carry_no_body(rules_file, proxy):
    rules = rules_file("""
        version: 1
        settings: {on_no_match: error}
        routes:
          - name: answered
            match: {path: /answer}
            backends: [{name: x, respond: {status: 200, body: "hello world\\n"}}]
          - name: nothing
            match: {path: /none}
            backends: [{name: never, when: {header: {X-Never: "1"}}, upstream: "http://127.0.0.1:9"}]
          - name: faulty
            match: {path: /fault}
            backends: [{name: broken, upstream: "http://127.0.0.1:9", fault: {abort: 503}}]
        """)
    p = proxy(rules)
    for path, status, body in ((b"/answer", b"200", b"hello world\n"), (b"/none", b"502", None),
                               (b"/fault", b"503", b"fault filter abort")):
        buf = _pipelined(p.port, b"http://a.test" + path)
        first, sep, rest = buf.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 " + status), buf
        length = int(next(ln.split(b":")[1] for ln in first.split(b"\r\n") if ln.lower().startswith(b"content-length")))
        assert length > 0, buf
        # right after the HEAD answer's head comes the GET answer, with the body the HEAD announced
        assert rest.startswith(b"HTTP/1.1 " + status), buf
        head2, _, body2 = rest.partition(b"\r\n\r\n")
        if body is not None:        # (the 502's text names the method: HEAD's is one byte longer)
            assert len(body2) == length and body in body2, buf
    # the status page too
    buf = _pipelined(p.port, b"http://condroute.mitm.it/api/status")
    first, _, rest = buf.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200"), buf
    assert rest.startswith(b"HTTP/1.1 200"), buf
