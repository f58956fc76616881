"""retry_on and failover: false through a real mitmdump, with real resetting, 5xx and refusing
backends on loopback: what the client gets, what the backend saw, and what the log, the saved
flow's metadata and comment, and ``condroute explain --flows`` say about each attempt."""
from __future__ import annotations

import io
import json
import socket
import ssl
import struct
import threading
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import pytest
from mitmproxy import io as mio

from condroute.mitm.flows import explain_flows
from condroute.rules import load_rules
from helpers import free_port, h2_request_via_proxy, read_head, serve_raw
from test_sni_support import make_ca, make_leaf


class Backend:
    """A raw HTTP/1.1 backend: ``script`` says what each request gets in turn ("reset", or a status
    code); after the script, 200. Counts the requests whose head it read."""

    def __init__(self, script: list, tls: ssl.SSLContext | None = None):
        self.script = list(script)
        self.seen = 0
        self.bodies: list[bytes] = []
        self.names: list[str | None] = []         # TLS: the server name of each handshake
        self.lock = threading.Lock()
        self.tls = tls
        if tls is not None:
            tls.sni_callback = lambda obj, name, c: self.names.append(name)
        self.srv = serve_raw(self.handle)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.srv.getsockname()[1]}"

    def handle(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):
                return
        with conn:
            while True:
                head = read_head(conn)
                if not head:
                    return
                head, _, body = head.partition(b"\r\n\r\n")
                length = next((int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])
                               if k.strip().lower() == b"content-length"), 0)
                while len(body) < length:
                    more = conn.recv(65536)
                    if not more:
                        return
                    body += more
                with self.lock:
                    self.seen += 1
                    self.bodies.append(body)
                    n = self.seen
                    what = self.script[n - 1] if n <= len(self.script) else 200
                if what == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if what == "stall":          # no answer until the client gives up
                    conn.settimeout(10)
                    conn.recv(1)
                    return
                body = f"answer {n} ({what}{', ' + str(len(body)) + ' bytes' if body else ''})".encode()
                conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nX-Seen: %d\r\n\r\n%s"
                             % (what, len(body), n, body))


@pytest.fixture
def backends():
    made: list[Backend] = []

    def make(script: list, tls: ssl.SSLContext | None = None) -> Backend:
        b = Backend(script, tls)
        made.append(b)
        return b

    yield make
    for b in made:
        b.srv.close()


def test_retry_on_and_failover_false_end_to_end(tmp_path: Path, rules_file, proxy, echo, backends):
    flaky = backends(["reset", "reset"])               # resets twice, then 200
    five = backends([503, 503])                        # 503 twice, then 200
    dead = backends(["reset"] * 100)                   # always resets
    post = backends(["reset"] * 100)
    ca = make_ca(tmp_path)
    cert, key = make_leaf(tmp_path, ["api.example.test"], ca)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    secure = backends(["reset", 503], server_tls)     # https: resets, 503, then 200
    slow = backends(["stall"])                         # no answer at first, then 200
    fb = echo("fallback")
    gone = f"http://127.0.0.1:{free_port()}"           # refuses connections
    rules = rules_file(f"""
        version: 1
        upstreams:
          flaky: {flaky.url}
          five: {five.url}
          dead: {dead.url}
          post: {post.url}
          fb: {fb}
          gone: {gone}
          secure: {secure.url}
          slow: {slow.url}
        routes:
          - name: slow
            match: {{path: /slow}}
            backends:
              - {{name: s, upstream: slow, retries: 1, retry_on: [reset], timeout: 0.5}}
          - name: secure
            match: {{path: /secure}}
            backends:
              - {{name: s, upstream: secure, retries: 2, retry_on: [reset, gateway-error], sni: api.example.test}}
          - name: flaky
            match: {{path: /flaky}}
            backends:
              - {{name: main, upstream: flaky, retries: 3, retry_on: [reset]}}
          - name: five
            match: {{path: /five}}
            backends:
              - {{name: main, upstream: five, retries: 3, retry_on: [5xx]}}
          - name: dead
            match: {{path: /dead}}
            backends:
              - {{name: main, upstream: dead, retries: 1, retry_on: [reset]}}
              - {{name: safety, fallback: true, upstream: fb}}
          - name: pinned
            match: {{path: /pinned}}
            backends:
              - {{name: main, upstream: dead, retries: 1, retry_on: [reset], failover: false}}
              - {{name: safety, fallback: true, upstream: fb}}
          - name: post
            match: {{path: /post}}
            backends:
              - {{name: main, upstream: post, retries: 3, retry_on: [reset, 5xx]}}
              - {{name: safety, fallback: true, upstream: fb}}
          - name: canary
            match: {{path: /canary}}
            backends:
              - {{name: canary, when: {{header: {{X-Variant: canary}}}}, upstream: gone, failover: false}}
              - {{name: stable, fallback: true, upstream: fb}}
        """)
    dump = tmp_path / "flows.mitm"
    # the https backend's certificate is for api.example.test, signed by the test CA: verified
    # against the backend's sni (ssl_insecure is off)
    confdir = tmp_path / "conf"
    p = proxy(rules, "-w", str(dump), "--set", f"ssl_verify_upstream_trusted_ca={ca[0]}", "--set", f"confdir={confdir}")
    with httpx.Client(proxy=p.url, timeout=20) as c:
        # resets twice, then answers: the client gets the third answer
        mark = p.mark()
        r = c.get("http://app.example/flaky")
        assert (r.status_code, r.text) == (200, "answer 3 (200)")
        assert flaky.seen == 3
        assert r.headers["X-Condroute"] == "flaky/main -> flaky"
        p.wait_for(r"flaky/main: upstream flaky \(127\.0\.0\.1:\d+\) attempt 1 of 4: reset the connection "
                   r"before a response; retrying in 0\.05s", start=mark, timeout=5)
        p.wait_for(r"attempt 2 of 4: reset the connection before a response; retrying in 0\.1s", start=mark,
                   timeout=5)

        # 503 twice, then 200
        r = c.get("http://app.example/five?x=1")
        assert (r.status_code, r.text) == (200, "answer 3 (200)") and five.seen == 3

        # no response head within the backend's timeout: a failed attempt (Envoy's "read timeout")
        mark = p.mark()
        r = c.get("http://app.example/slow")
        assert (r.status_code, r.text) == (200, "answer 2 (200)") and slow.seen == 2
        p.wait_for(r"slow/s: upstream slow \(127\.0\.0\.1:\d+\) attempt 1 of 2: sent no response head within "
                   r"0\.5s; retrying", start=mark, timeout=5)

        # https: a reset, a 503, then 200; each handshake with the backend's sni, the certificate verified
        r = c.get("http://app.example/secure")
        assert (r.status_code, r.text) == (200, "answer 3 (200)"), r.text
        assert secure.seen == 3 and secure.names == ["api.example.test"] * 3

        # always resets, with a fallback: 1 + retries tries, then the fallback's echo answers
        mark = p.mark()
        r = c.get("http://app.example/dead")
        assert r.status_code == 200 and r.json()["backend"] == "fallback"
        assert r.headers["X-Condroute"] == "dead/safety -> fb"
        assert dead.seen == 2
        p.wait_for(r"dead/main: upstream dead \(127\.0\.0\.1:\d+\) reset the connection before a response "
                   r"\(2 attempts\); failing over to dead/safety", start=mark, timeout=5)

        # the same with failover: false: 502 naming the backend, the upstream and what happened
        before = dead.seen
        r = c.get("http://app.example/pinned")
        assert r.status_code == 502, r.text
        assert "upstream dead (127.0.0.1:" in r.text and "reset the connection before a response (2 attempts)" \
            in r.text and "failover: false" in r.text and "backend 'main'" in r.text
        assert dead.seen == before + 2
        assert r.headers["X-Condroute"] == "pinned/main -> dead (gave up after 2 attempts: 502)"

        # POST is never retried (nor sent by condroute): the backend sees exactly one request
        r = c.post("http://app.example/post", content=b"payload")
        assert r.status_code == 502 and post.seen == 1

        # a pinned canary whose upstream refuses: 502 with the reason, not the stable fallback
        r = c.get("http://app.example/canary", headers={"X-Variant": "canary"})
        assert r.status_code == 502, r.text
        assert "backend 'canary' does not fail over (failover: false): upstream gone (127.0.0.1:" in r.text
        assert "refused the connection" in r.text
        # then, while it cools down, the engine answers 503 with the reason
        r = c.get("http://app.example/canary", headers={"X-Variant": "canary"})
        assert r.status_code == 503, r.text
        assert "backend 'canary' does not fail over (failover: false): upstream gone" in r.text
        assert r.headers["X-Condroute"] == "canary/canary -> error 503 (upstream unavailable, failover: false)"
        # without the header the stable fallback serves as usual
        r = c.get("http://app.example/canary")
        assert r.status_code == 200 and r.json()["backend"] == "fallback"
    # an HTTP/2 client (TLS to the proxy): the answer condroute read over HTTP/1.1 goes back as HTTP/2
    # (a PUT with a body: sent each time with its length, as mitmproxy would have forwarded it)
    flaky.script, flaky.seen = ["reset"], 0
    code, headers, body, alpn = h2_request_via_proxy(p.port, "https://app.example/flaky", str(confdir / "mitmproxy-ca-cert.pem"),
                                                     method="PUT", body=b"h2-body")
    assert (alpn, code, body) == ("h2", 200, b"answer 2 (200, 7 bytes)")
    assert flaky.seen == 2 and flaky.bodies[-2:] == [b"h2-body", b"h2-body"]
    p.stop()

    with open(dump, "rb") as f:
        flows: dict = {}
        for fl in mio.FlowReader(f).stream():        # the first flow of each route
            flows.setdefault(fl.metadata.get("condroute", {}).get("route"), fl)
    md = flows["flaky"].metadata["condroute"]
    assert [(t["outcome"], t["reason"]) for t in md["tries"]] == [
        ("reset", "reset the connection before a response"), ("reset", "reset the connection before a response"),
        ("answered", "answered 200 X")]
    assert "tried upstream flaky (127.0.0.1:" in flows["flaky"].comment
    assert "1 reset the connection before a response; 2 reset the connection" in flows["flaky"].comment
    assert [t["outcome"] for t in flows["five"].metadata["condroute"]["tries"]] == ["5xx", "5xx", "answered"]
    md = flows["dead"].metadata["condroute"]
    assert md["backend"] == "safety" and [t["outcome"] for t in md["tries"]] == ["reset", "reset"]
    assert md["failed_over"][0]["upstream"] == "dead"
    assert "failed over to dead/safety" in flows["dead"].comment

    out = io.StringIO()
    with redirect_stdout(out):
        assert explain_flows(load_rules(str(rules)), str(dump), as_json=True) == 0
    data = json.loads(out.getvalue())
    by_route: dict = {}
    for x in data["decisions"]:
        by_route.setdefault(x["route"], x)
    assert [t["outcome"] for t in by_route["flaky"]["live_tries"]] == ["reset", "reset", "answered"]
    out = io.StringIO()
    with redirect_stdout(out):
        explain_flows(load_rules(str(rules)), str(dump), as_json=False)
    assert "live: tried upstream flaky (127.0.0.1:" in out.getvalue()
