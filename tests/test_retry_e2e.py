"""retry_on and failover: false through a real mitmdump, with real resetting, 5xx and refusing
backends on loopback: what the client gets, what the backend saw, and what the log, the saved
flow's metadata and comment, and ``condroute explain --flows`` say about each attempt."""
from __future__ import annotations

import io
import json
import socket
import struct
import threading
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import pytest
from mitmproxy import io as mio

from condroute.mitm.flows import explain_flows
from condroute.rules import load_rules
from helpers import free_port, read_head, serve_raw


class Backend:
    """A raw HTTP/1.1 backend: ``script`` says what each request gets in turn ("reset", or a status
    code); after the script, 200. Counts the requests whose head it read."""

    def __init__(self, script: list):
        self.script = list(script)
        self.seen = 0
        self.lock = threading.Lock()
        self.srv = serve_raw(self.handle)
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}"

    def handle(self, conn: socket.socket) -> None:
        with conn:
            while True:
                head = read_head(conn)
                if not head:
                    return
                with self.lock:
                    self.seen += 1
                    n = self.seen
                    what = self.script[n - 1] if n <= len(self.script) else 200
                if what == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                body = f"answer {n} ({what})".encode()
                conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nX-Seen: %d\r\n\r\n%s"
                             % (what, len(body), n, body))


@pytest.fixture
def backends():
    made: list[Backend] = []

    def make(script: list) -> Backend:
        b = Backend(script)
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
        routes:
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
    p = proxy(rules, "-w", str(dump))
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
    p.stop()

    with open(dump, "rb") as f:
        flows = {fl.metadata.get("condroute", {}).get("route"): fl for fl in mio.FlowReader(f).stream()}
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
    by_route = {x["route"]: x for x in data["decisions"]}
    assert [t["outcome"] for t in by_route["flaky"]["live_tries"]] == ["reset", "reset", "answered"]
    out = io.StringIO()
    with redirect_stdout(out):
        explain_flows(load_rules(str(rules)), str(dump), as_json=False)
    assert "live: tried upstream flaky (127.0.0.1:" in out.getvalue()
