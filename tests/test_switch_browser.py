"""The status page's switch buttons in a real browser (issue 16, item 3): headless Chromium (Debian's
/usr/bin/chromium, as in test_status_browser.py), driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: fd 3 in, fd 4 out, JSON messages ending in NUL; no websocket client
needed). It loads ``http://condroute.mitm.it/`` through a real mitmdump, reads a backend's state
(off in the file), clicks its button, and the next request through the proxy reaches that backend.

Then a page of another site, browsed through the same proxy, tries to switch a backend off: a
JSON fetch (which needs a CORS preflight the status host never allows: OPTIONS gets 405) and a
form-like no-cors POST (sent, with the other site's Origin: 403; it is not JSON either). Nothing
changes.
"""
from __future__ import annotations

import base64
import json
import os
import select
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from condroute.cli.demo import start_echo
from helpers import Proxy
from test_status_browser import CHROMIUM
from test_status_page import via

EVIL_PAGE = """<!doctype html><title>evil</title><script>
var body = JSON.stringify({name: "shop/main", enabled: false});
fetch("http://condroute.mitm.it/api/switch", {method: "POST", headers: {"Content-Type": "application/json"}, body: body})
  .then(function () { document.title = "json: sent"; }, function () { document.title = "json: blocked"; })
  .then(function () {
    return fetch("http://condroute.mitm.it/api/switch", {method: "POST", mode: "no-cors", body: body,
                                                           headers: {"Content-Type": "text/plain"}});
  })
  .then(function () { document.title += ", form: sent"; }, function () { document.title += ", form: blocked"; });
</script>"""

RULES = """
    version: 1
    upstreams: {{a: "http://127.0.0.1:{a}", b: "http://127.0.0.1:{b}"}}
    routes:
      - name: evil
        match: {{host: evil.example}}
        backends:
          - name: page
            respond: {{status: 200, headers: {{Content-Type: text/html}}, body: {evil}}}
      - name: shop
        match: {{host: shop.example}}
        backends:
          - name: beta
            enabled: false
            upstream: b
          - {{name: main, upstream: a}}
    """


class DevTools:
    """The DevTools protocol over Chromium's debugging pipe, one command at a time."""

    def __init__(self, args: list[str], cwd: Path):
        self.to_r, self.to_w = os.pipe()         # we write commands; Chromium reads fd 3
        self.from_r, self.from_w = os.pipe()     # Chromium writes fd 4; we read
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{self.to_r} 4>&{self.from_w} {self.to_r}<&- {self.from_w}>&-',
             CHROMIUM, "--remote-debugging-pipe", *args],
            pass_fds=(self.to_r, self.from_w), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(cwd))
        os.close(self.to_r)
        os.close(self.from_w)
        self.buf = b""
        self.n = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 20) -> dict:
        self.n += 1
        msg: dict = {"id": self.n, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, _, self.buf = self.buf.partition(b"\0")
                got = json.loads(raw)
                if got.get("id") == self.n:
                    assert "error" not in got, (method, got["error"])
                    return got["result"]
            left = deadline - time.monotonic()
            assert left > 0, f"no answer to {method} within {timeout} s"
            if select.select([self.from_r], [], [], left)[0]:
                chunk = os.read(self.from_r, 1 << 16)
                assert chunk, "chromium closed its debugging pipe:\n" + self.proc.stderr.read().decode()[-3000:]
                self.buf += chunk

    def evaluate(self, session: str, expr: str):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True}, session)
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")

    def until(self, session: str, expr: str, timeout: float = 20):
        """Evaluate ``expr`` in the page until it is truthy (the page draws itself asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.evaluate(session, expr)
            if v:
                return v
            assert time.monotonic() < deadline, f"never true in the page: {expr}"
            select.select([], [], [], 0.05)      # poll interval, not a wait for the result

    def open(self, url: str) -> str:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        return self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_w)
        os.close(self.from_r)


STATE = '(function () {{ var s = document.querySelector(\'tr[data-backend="{b}"] td.state span\'); ' \
        'return s ? s.textContent : ""; }})()'


@pytest.mark.slow
def test_clicking_a_switch_on_the_status_page(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium (/usr/bin/chromium): scripts/test installs Debian's package when it can")
    servers = [start_echo("a"), start_echo("b")]
    dead = socket.socket()          # bound, never listening: the browser's own requests go nowhere
    dead.bind(("127.0.0.1", 0))
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent(RULES).format(a=servers[0].server_address[1], b=servers[1].server_address[1],
                                                   evil=json.dumps(EVIL_PAGE)))
    proxy = Proxy(["-s", str(Path(__file__).parent.parent / "addon" / "conditional_routing.py"),
                   "--set", f"condroute_rules={rules}"])
    browser = None
    try:
        proxy.start()
        shop = lambda: json.loads(via(proxy.port, "http://shop.example/x")[2])["backend"]   # noqa: E731
        assert shop() == "a"
        # evil.example goes to the proxy too (a page browsed through it); anything else nowhere
        js = (f'function FindProxyForURL(url, host) {{ return (host == "condroute.mitm.it" || host == "evil.example")'
              f' ? "PROXY 127.0.0.1:{proxy.port}" : "PROXY 127.0.0.1:{dead.getsockname()[1]}"; }}')
        pac_url = "data:application/x-ns-proxy-autoconfig;base64," + base64.b64encode(js.encode()).decode()
        browser = DevTools(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                            "--disable-background-networking", "--disable-component-update", "--disable-extensions",
                            "--disable-default-apps", "--no-default-browser-check",
                            "--disable-features=HttpsUpgrades,NetworkTimeServiceQuerying,OptimizationHints,Translate",
                            f"--user-data-dir={tmp_path / 'profile'}", f"--proxy-pac-url={pac_url}", "about:blank"],
                           tmp_path)
        page = browser.open("http://condroute.mitm.it/")
        assert browser.until(page, STATE.format(b="beta")).startswith("enabled: false (rules.yaml:")
        assert browser.evaluate(page, 'document.querySelector(\'button[data-switch="shop/beta"]\').textContent') \
            == "turn on"
        browser.evaluate(page, 'document.querySelector(\'button[data-switch="shop/beta"]\').click()')
        assert browser.until(page, STATE.format(b="beta") + ' == "switched on (enabled: false in the file)"')
        assert browser.evaluate(page, 'document.querySelector(\'button[data-switch="shop/beta"]\').textContent') \
            == "turn off", browser.evaluate(page, 'document.querySelector(\'tr[data-backend="beta"]\').outerHTML')
        assert shop() == "b"                                       # the next request reaches it
        s = json.loads(via(proxy.port, "http://condroute.mitm.it/api/status")[2])
        assert [(x["name"], x["enabled"], x["by"]) for x in s["switches"]] == [("shop/beta", True, "status page")]

        # another site's page, browsed through the proxy, cannot switch anything
        evil = browser.open("http://evil.example/")
        title = browser.until(evil, 'document.title.indexOf("form:") >= 0 ? document.title : ""')
        assert title.startswith("json: blocked"), title
        proxy.wait_for(r"POST http://condroute\.mitm\.it/api/switch")
        s = json.loads(via(proxy.port, "http://condroute.mitm.it/api/status")[2])
        main = s["routes"][1]["backends"][1]
        assert main["name"] == "main" and main["state"] == "on", main
        assert [x["name"] for x in s["switches"]] == ["shop/beta"]
        out = proxy.output()
        assert "OPTIONS http://condroute.mitm.it/api/switch" in out and "<< 405" in out, out[-3000:]
        assert "<< 403" in out, out[-3000:]        # the no-cors POST: sent, with the other site's Origin
    finally:
        if browser is not None:
            browser.close()
        proxy.stop()
        dead.close()
        for srv in servers:
            srv.shutdown()
            srv.server_close()
