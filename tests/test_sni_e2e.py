"""sni end to end: a real mitmdump in front of a TLS backend that reports the server name each
handshake carried (test_sni_support.TLSBackend)."""
from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from helpers import h2_request_via_proxy
from test_sni_support import NO_SNI, TLSBackend, make_ca, make_leaf


@pytest.fixture
def tls_backend(tmp_path: Path):
    made = []

    def make(names: list[str], ca=None) -> TLSBackend:
        cert, key = make_leaf(tmp_path, names, ca)
        b = TLSBackend(cert, key)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def test_sni_name_preserve_and_none_through_mitmdump(proxy, rules_file, tls_backend, tmp_path):
    b = tls_backend(["api.example.test", "127.0.0.1"])
    up = f"https://127.0.0.1:{b.port}"
    rules = rules_file(f"""
        version: 1
        routes:
          - name: named
            match: {{host: named.test}}
            backends: [{{name: n, upstream: "{up}", sni: api.example.test}}]
          - name: plain
            match: {{host: plain.test}}
            backends: [{{name: p, upstream: "{up}"}}]
          - name: kept
            match: {{host: kept.test}}
            backends: [{{name: k, upstream: "{up}", sni: preserve}}]
        """)
    confdir = tmp_path / "conf"
    p = proxy(rules, "--set", "ssl_insecure=true", "--set", f"confdir={confdir}")
    with httpx.Client(proxy=p.url, timeout=20) as c:
        assert c.get("http://named.test/").text == "sni=api.example.test"
        # no sni: mitmproxy's default, the upstream's address; an IP address is never sent as SNI
        assert c.get("http://plain.test/").text == f"sni={NO_SNI}"
        # preserve, the client speaking plain HTTP: the host it asked for
        assert c.get("http://kept.test/").text == "sni=kept.test"
    # preserve, the client speaking TLS to the proxy (CONNECT): the name of its own handshake
    ca = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem"))
    with httpx.Client(proxy=p.url, timeout=20, verify=ca) as c:
        assert c.get("https://kept.test/").text == "sni=kept.test"
    assert b.seen == ["api.example.test", NO_SNI, "kept.test", "kept.test"]


def test_sni_is_what_the_certificate_is_verified_against(proxy, rules_file, tls_backend, tmp_path):
    """ssl_insecure=false: the upstream's certificate (for api.example.test, signed by a test CA) is
    checked against the sni name; without sni, against the address, and refused."""
    ca = make_ca(tmp_path)
    b = tls_backend(["api.example.test"], ca)
    up = f"https://127.0.0.1:{b.port}"
    rules = rules_file(f"""
        version: 1
        routes:
          - name: named
            match: {{host: named.test}}
            backends: [{{name: n, upstream: "{up}", sni: api.example.test}}]
          - name: wrong
            match: {{host: wrong.test}}
            backends: [{{name: w, upstream: "{up}", sni: other.example.test}}]
          - name: plain
            match: {{host: plain.test}}
            backends: [{{name: p, upstream: "{up}"}}]
        """)
    p = proxy(rules, "--set", f"ssl_verify_upstream_trusted_ca={ca[0]}")
    with httpx.Client(proxy=p.url, timeout=20) as c:
        r = c.get("http://named.test/")
        assert (r.status_code, r.text) == (200, "sni=api.example.test")
        for host in ("wrong.test", "plain.test"):
            r = c.get(f"http://{host}/")
            assert r.status_code == 502, (host, r.text)
            assert "certificate" in r.text.lower() or "tls" in r.text.lower(), r.text


def test_one_client_connection_to_one_address_under_several_names(proxy, rules_file, tls_backend):
    """mitmproxy reuses an open upstream connection for the next request of the same client
    connection to the same address, whatever name it was opened with: a request that needs another
    name gets a connection of its own (through a relay that only forwards), and each is reused."""
    b = tls_backend(["api.example.test", "127.0.0.1"])
    up = f"https://127.0.0.1:{b.port}"
    rules = rules_file(f"""
        version: 1
        routes:
          - name: r
            backends:
              - {{name: a, when: {{path: /a}}, upstream: "{up}", sni: a.test}}
              - {{name: b, when: {{path: /b}}, upstream: "{up}", sni: b.test}}
              - {{name: c, upstream: "{up}"}}
        """)
    p = proxy(rules, "--set", "ssl_insecure=true")
    with httpx.Client(proxy=p.url, timeout=20) as c:      # one connection to the proxy (one origin)
        got = [c.get(f"http://x.test/{path}").text for path in ("a", "b", "c", "a", "b", "c")]
    assert got == ["sni=a.test", "sni=b.test", f"sni={NO_SNI}"] * 2
    assert b.seen == ["a.test", "b.test", NO_SNI]           # three connections, each reused


def test_http2_client_preserve_through_a_throttle(proxy, rules_file, tls_backend, tmp_path):
    """An HTTP/2 client (CONNECT, TLS with ALPN h2) to a throttled https backend with sni: preserve:
    the name the client sent the proxy reaches the backend through the relay."""
    b = tls_backend(["api.example.test", "127.0.0.1"])
    rules = rules_file(f"""
        version: 1
        routes:
          - name: kept
            match: {{host: kept.test}}
            backends: [{{name: k, upstream: "https://127.0.0.1:{b.port}", sni: preserve, throttle: {{kbps: 800}}}}]
        """)
    confdir = tmp_path / "conf"
    p = proxy(rules, "--set", "ssl_insecure=true", "--set", f"confdir={confdir}")
    status, headers, body, alpn = h2_request_via_proxy(p.port, "https://kept.test/", str(confdir / "mitmproxy-ca-cert.pem"))
    assert (status, body, alpn) == (200, b"sni=kept.test", "h2")
    assert b.seen == ["kept.test"]
