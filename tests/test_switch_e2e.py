"""enabled: false and the status page's switch through a real mitmdump (issue 16, item 3): a backend
the file turns off is skipped (the request reaches the next backend's echo), POST /api/switch
through the proxy turns it on and the next request reaches it, a reload keeps the switch and leaves
the file as it was, and what a foreign page could send (a form, a foreign Origin) is refused.
"""
from __future__ import annotations

import json
import os
import time
from http.client import HTTPConnection

import pytest

from test_status_page import via

RULES = """
    version: 1
    upstreams: {{a: "{a}", b: "{b}"}}
    routes:
      - name: old
        enabled: false
        match: {{path: /api/*}}
        backends:
          - {{name: x, upstream: b}}
      - name: shop
        backends:
          - name: beta
            enabled: false
            upstream: b
          - {{name: main, upstream: a}}
    """


def reached(port: int, url: str = "http://shop.example/p") -> str:
    st, h, body = via(port, url)
    assert st == 200, body
    return json.loads(body)["backend"]


def switch(port: int, body: object, headers: dict | None = None, method: str = "POST") -> tuple[int, dict]:
    data = json.dumps(body).encode()
    h = {"Content-Type": "application/json", "Content-Length": str(len(data))} if headers is None else \
        {**headers, "Content-Length": str(len(data))}
    c = HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, "http://condroute.mitm.it/api/switch", body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        return r.status, (json.loads(raw) if r.getheader("Content-Type") == "application/json" else {"text": raw})
    finally:
        c.close()


@pytest.mark.slow
def test_a_disabled_backend_switched_on_through_the_proxy(proxy, echo, rules_file):
    path = rules_file(RULES.format(a=echo("a"), b=echo("b")))
    text = path.read_text()
    p = proxy(path, "--set", "condroute_reload_interval=0.1")
    assert reached(p.port) == "a"                                        # beta is off in the file
    assert reached(p.port, "http://shop.example/api/1") == "a"           # so is the route old
    st, h, _ = via(p.port, "http://shop.example/p")
    assert h["x-condroute"] == "shop/main -> a"

    # what a page browsed through the proxy could send: refused, nothing changes
    st, got = switch(p.port, {"name": "shop/beta", "enabled": True},
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 415 and "application/json" in got["error"]
    st, got = switch(p.port, {"name": "shop/beta", "enabled": True}, headers={"Content-Type": "text/plain"})
    assert st == 415
    st, got = switch(p.port, {"name": "shop/beta", "enabled": True},
                     headers={"Content-Type": "application/json", "Origin": "http://evil.example"})
    assert st == 403 and "http://evil.example cannot switch" in got["error"]
    assert via(p.port, "http://condroute.mitm.it/api/switch")[0] == 405       # GET never switches
    assert reached(p.port) == "a"

    # the page's own request: on, and the next request reaches it
    st, got = switch(p.port, {"name": "shop/beta", "enabled": True},
                     headers={"Content-Type": "application/json", "Origin": "http://condroute.mitm.it"})
    assert st == 200 and got["state"] == "switched on", got
    assert reached(p.port) == "b"
    p.wait_for(r"condroute: shop/beta switched on \(status page\)")
    st, got = switch(p.port, {"name": "shop/nope", "enabled": True})
    assert st == 404 and "route 'shop' has no backend 'nope'; its backends are beta, main" in got["error"]

    # a reload keeps the switch; the file is never written
    mark = p.mark()
    path.write_text(text + "\n")
    old = time.time() - 3600
    os.utime(path, (old, old))                # long settled: loaded at the watcher's second check
    p.wait_for("reloaded", start=mark)
    assert reached(p.port) == "b"
    assert path.read_text() == text + "\n"
    s = json.loads(via(p.port, "http://condroute.mitm.it/api/status")[2])
    beta = s["routes"][1]["backends"][0]
    assert (beta["state"], beta["enabled_in_file"], beta["switched_by"]) == ("switched on", False, "status page")
    assert s["routes"][0]["state"] == "off" and s["routes"][0]["off_reason"] == "enabled: false (rules.yaml:5)"

    # back to the file
    st, got = switch(p.port, {"reset": True})
    assert st == 200 and got == {"reset": 1}
    assert reached(p.port) == "a"
