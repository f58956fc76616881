"""throttle end to end: a real mitmdump, its throttling relay and real backends on 127.0.0.1.
Lower bounds only (the body cannot arrive faster than the rate allows); never an upper bound."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers import free_port
from test_sni_support import PlainBackend, TLSBackend, make_leaf


@pytest.fixture
def plain():
    b = PlainBackend()
    yield b
    b.close()


def _timed_get(client: httpx.Client, url: str) -> tuple[bytes, float]:
    """The body, and the seconds from its first byte to its last."""
    with client.stream("GET", url) as r:
        assert r.status_code == 200, r.read()
        first = None
        got = b""
        for chunk in r.iter_raw():
            if first is None:
                first = time.monotonic()
            got += chunk
        return got, time.monotonic() - (first or time.monotonic())


def test_throttled_body_trickles_and_others_are_answered_meanwhile(proxy, rules_file, plain):
    up = f"http://127.0.0.1:{plain.port}"
    rules = rules_file(f"""
        version: 1
        routes:
          - name: slow
            match: {{host: slow.test}}
            backends: [{{name: s, upstream: "{up}", throttle: {{kbps: 80}}}}]
          - name: fast
            match: {{host: fast.test}}
            backends: [{{name: f, upstream: "{up}"}}]
        """)
    p = proxy(rules)
    done = threading.Event()
    result: dict = {}

    def slow() -> None:
        with httpx.Client(proxy=p.url, timeout=30) as c:
            result["slow"] = _timed_get(c, "http://slow.test/size/20000")
        done.set()

    t = threading.Thread(target=slow)
    t.start()
    with httpx.Client(proxy=p.url, timeout=30) as c:
        r = c.get("http://fast.test/size/20000")
        assert r.status_code == 200 and len(r.content) == 20000
        fast_done_before_slow = not done.is_set()
    t.join(30)
    body, seconds = result["slow"]
    assert body == b"x" * 20000
    # 80 kbps = 10,000 bytes/s: 20,000 bytes (and the head) take at least ~1.9 s after the first
    assert seconds >= 1.5, seconds
    assert fast_done_before_slow


def test_throttle_https_upstream_gets_the_right_server_name(proxy, rules_file, tmp_path: Path):
    cert, key = make_leaf(tmp_path, ["api.example.test", "127.0.0.1"])
    b = TLSBackend(cert, key)
    try:
        up = f"https://127.0.0.1:{b.port}"
        rules = rules_file(f"""
            version: 1
            routes:
              - name: named
                match: {{host: named.test}}
                backends: [{{name: n, upstream: "{up}", sni: api.example.test, throttle: {{kbps: 400}}}}]
              - name: plain
                match: {{host: plain.test}}
                backends: [{{name: p, upstream: "{up}", throttle: {{kbps: 400}}}}]
            """)
        p = proxy(rules, "--set", "ssl_insecure=true")
        with httpx.Client(proxy=p.url, timeout=20) as c:
            assert c.get("http://named.test/").text == "sni=api.example.test"
            # through the relay the upstream is still 127.0.0.1 to TLS: no SNI, as without throttle
            assert c.get("http://plain.test/").text == "sni=(none)"
            # 400 kbps = 50,000 bytes/s. Timed from the request: TLS records (16 KB) are decrypted
            # whole, so the client sees a TLS body in steps of up to 16 KB (as on a real slow link)
            start = time.monotonic()
            r = c.get("http://named.test/size/40000")
            assert r.content == b"x" * 40000
            assert time.monotonic() - start >= 0.6
    finally:
        b.close()


def test_throttled_upstream_that_refuses_is_a_clear_502(proxy, rules_file):
    port = free_port()
    rules = rules_file(f"""
        version: 1
        routes:
          - name: gone
            match: {{host: gone.test}}
            backends: [{{name: g, upstream: "http://127.0.0.1:{port}", throttle: {{kbps: 80}}}}]
        """)
    p = proxy(rules)
    with httpx.Client(proxy=p.url, timeout=20) as c:
        for _ in range(2):
            r = c.get("http://gone.test/")
            assert r.status_code in (502, 503), r.text
            assert "refused" in r.text, r.text
    assert "127.0.0.1:%d" % port in p.output()


def test_relay_whose_upstream_refuses_is_a_502_not_a_hang(proxy, rules_file, plain):
    """The upstream stops accepting while a connection to it is open (so it is known up: no probe
    first): the relay's own connection is refused, it closes mitmproxy's connection at once, and
    mitmproxy answers 502 (never a hang); the relay marks the real address down."""
    rules = rules_file(f"""
        version: 1
        routes:
          - name: gone
            match: {{host: gone.test}}
            backends: [{{name: g, upstream: "http://127.0.0.1:{plain.port}", throttle: {{kbps: 800}}}}]
        """)
    p = proxy(rules)
    with httpx.Client(proxy=p.url, timeout=20) as first:
        assert first.get("http://gone.test/size/10").text == "x" * 10   # its relay connection stays open
        plain.srv.shutdown(socket.SHUT_RDWR)      # stop listening (wakes the accepting thread)
        plain.srv.close()
        with httpx.Client(proxy=p.url, timeout=20) as second:        # another client connection
            r = second.get("http://gone.test/")
            assert r.status_code == 502, r.text
    p.wait_for(rf"127\.0\.0\.1:{plain.port} \(throttled\) refused the connection")
