"""The status page in a real browser (issue 13, item 6): headless Chromium (Debian's
/usr/bin/chromium, installed by scripts/test when missing) loads ``http://condroute.mitm.it/``
through a real mitmdump after some traffic. The DOM after the script ran must show the route and
backend names with their counts (a page whose JavaScript is broken is empty: the shell has no
data); the screenshot must show the page drawn (decoded here with zlib + struct, no imaging
library). Names and request values with markup in them must come out as text.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import textwrap
import time
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from condroute.cli.demo import start_echo
from helpers import Proxy
from test_status_page import E2E, via

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and os.access(p, os.X_OK)), None)
WIDTH, HEIGHT = 1000, 800
INJECT_ROUTE = "<img src=x onerror=\"document.title='pwned'\">"
INJECT_VALUE = "<script>document.title='pwned'</script>"
HEADER_RGB = (0x16, 0x21, 0x3e)     # the page's header band (status_page.CSS)
BAR_RGB = (0x24, 0x56, 0xc7)        # a backend's hit bar: drawn only for a backend with hits

# test_status_page's rules, with a route whose name is markup and one to a port nothing listens on
RULES = E2E.replace("      - name: everything-else", """\
      - name: '{inject}'
        match: {{host: inject.example}}
        backends:
          - {{name: only, when: {{header: {{X-Ab-Test: B}}}}, upstream: a}}
          - {{name: other, fallback: true, respond: {{status: 204}}}}
      - name: broken
        match: {{host: broken.example}}
        backends:
          - {{name: gone, upstream: "http://127.0.0.1:{dead}"}}
      - name: everything-else""")
BAD_RULES = "version: 1\nroutes:\n  - name: r\n    backends:\n      - {name: x, upstream: nowhere}\n"


# -- decoding what the browser gave ------------------------------------------------------------------
def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, head = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
    assert head is not None, "no IHDR"
    w, h, depth, ctype, _, _, interlace = head
    assert depth == 8 and ctype in (2, 6) and interlace == 0, f"unsupported PNG: {head}"
    bpp = 4 if ctype == 6 else 3
    raw = zlib.decompress(b"".join(idat))
    stride = w * bpp
    prev = bytearray(stride)
    low7, high1 = int.from_bytes(b"\x7f" * stride, "big"), int.from_bytes(b"\x80" * stride, "big")
    rows = []
    for y in range(h):
        f = raw[y * (stride + 1)]
        cur = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                cur[i] = (cur[i] + cur[i - bpp]) & 255
        elif f == 2:   # bytewise (x + up) mod 256, on the whole row at once: no carry crosses a byte
            x, u = int.from_bytes(cur, "big"), int.from_bytes(prev, "big")
            cur = bytearray((((x & low7) + (u & low7)) ^ ((x ^ u) & high1)).to_bytes(stride, "big"))
        elif f == 3:
            for i in range(stride):
                cur[i] = (cur[i] + ((cur[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif f == 4:
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        else:
            assert f == 0, f"bad PNG filter {f}"
        prev = cur
        if bpp == 3:
            rows.append(bytes(cur))
        else:   # RGBA: drop the alpha bytes
            rgb = bytearray(w * 3)
            for k in range(3):
                rgb[k::3] = cur[k::4]
            rows.append(bytes(rgb))
    return w, h, rows


def colours(rows: list[bytes]) -> Counter:
    """How many pixels of each colour (every pixel)."""
    c: Counter = Counter()
    for r in rows:
        c.update(r[i:i + 3] for i in range(0, len(r), 3))
    return c


def drawn(c: Counter) -> str | None:
    """Why a screenshot with these colours is not a drawn page (None when it is): most pixels one
    colour, or too few colours to be text, tables and badges."""
    total = sum(c.values())
    top, n = c.most_common(1)[0]
    if n > 0.95 * total:
        return f"{n / total:.1%} of the pixels are #{top.hex()}"
    real = [k for k, v in c.items() if v >= 20]
    if len(real) < 8:
        return f"only {len(real)} colours cover 20 pixels or more"
    return None


def make_png(w: int, h: int, filt: int = 0) -> bytes:
    """A one-colour PNG (to check that the check above sees a blank page as blank): white, or with
    a filter other than none, black (all-zero differences give zero with every filter)."""
    row = bytes([filt]) + (b"\xff\xff\xff" * w if filt == 0 else bytes(3 * w))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * h)) + chunk(b"IEND", b""))


class Rows(HTMLParser):
    """The table rows of the dumped DOM: each <tr>'s data-* attributes and its cells' text; also
    every element name seen and the document title."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict, list[str]]] = []
        self.tags: Counter = Counter()
        self.attrs: dict[str, dict] = {}
        self.title = ""
        self._cell: list[str] | None = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        a = dict(attrs)
        if "id" in a:
            self.attrs[a["id"]] = a
        if tag == "tr":
            self.rows.append(({k: v for k, v in a.items() if k.startswith("data-")}, []))
        elif tag in ("td", "th") and self.rows:
            self.rows[-1][1].append("")
            self._cell = self.rows[-1][1]
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._cell = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[-1] += data
        if self._in_title:
            self.title += data

    def row(self, **want: str) -> list[str]:
        found = [cells for a, cells in self.rows if all(a.get(f"data-{k}") == v for k, v in want.items())
                 and ("backend" in want or "data-backend" not in a)]
        assert len(found) == 1, (want, self.rows)
        return found[0]


# -- the run -------------------------------------------------------------------------------------------
def pac(proxy_port: int, dead_port: int) -> str:
    """Only the status host goes to mitmdump; anything else Chromium asks for on its own goes to a
    closed port, so that nothing of the browser's own reaches mitmdump or the network."""
    js = (f'function FindProxyForURL(url, host) {{ return host == "condroute.mitm.it" ? '
          f'"PROXY 127.0.0.1:{proxy_port}" : "PROXY 127.0.0.1:{dead_port}"; }}')
    return "data:application/x-ns-proxy-autoconfig;base64," + base64.b64encode(js.encode()).decode()


@pytest.fixture(scope="module")
def browsed(tmp_path_factory):
    """mitmdump with rules and two echo backends, some traffic, a reload that fails, then one
    headless Chromium run through it: {"dom", "png", "status" (the JSON afterwards), "out"
    (mitmdump's output), "dead" (the port of the upstream that refused)}."""
    if CHROMIUM is None:
        pytest.skip("no chromium (/usr/bin/chromium): scripts/test installs Debian's package when it can")
    tmp = tmp_path_factory.mktemp("browser")
    servers = [start_echo("a"), start_echo("b")]
    dead = socket.socket()                 # bound, never listening: connections to it are refused
    dead.bind(("127.0.0.1", 0))
    rules = tmp / "rules.yaml"
    dead_port = dead.getsockname()[1]
    rules.write_text(textwrap.dedent(RULES).format(a=servers[0].server_address[1], b=servers[1].server_address[1],
                                                   inject=INJECT_ROUTE.replace("'", "''"), dead=dead_port))
    proxy = Proxy(["-s", str(Path(__file__).parent.parent / "addon" / "conditional_routing.py"),
                   "--set", f"condroute_rules={rules}", "--set", "condroute_reload_interval=0.1",
                   "--set", "condroute_cooldown=600"])
    try:
        proxy.start()
        sent = [("http://shop.example/b1", {"X-Ab-Test": "B"}), ("http://shop.example/b2", {"X-Ab-Test": "B"}),
                ("http://shop.example/a1", {}), ("http://shop.example/a2", {}), ("http://shop.example/a3", {}),
                ("http://inject.example/x", {"X-Ab-Test": INJECT_VALUE}),
                ("http://inject.example/y", {"X-Ab-Test": "B"})]
        for url, headers in sent:
            assert via(proxy.port, url, headers=headers)[0] in (200, 204), url
        assert via(proxy.port, "http://broken.example/")[0] == 502      # refused: down, decided again
        rules.write_text(BAD_RULES)
        old = time.time() - 3600
        os.utime(rules, (old, old))              # long settled: loaded at the watcher's second check
        proxy.wait_for("reload failed")
        shot = tmp / "shot.png"
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
               "--disable-features=HttpsUpgrades,NetworkTimeServiceQuerying,OptimizationHints,Translate,MediaRouter",
               f"--user-data-dir={tmp / 'profile'}", f"--proxy-pac-url={pac(proxy.port, dead_port)}",
               f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", "--virtual-time-budget=3000",
               f"--screenshot={shot}", "--dump-dom", "http://condroute.mitm.it/"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=str(tmp))
        assert r.returncode == 0 and shot.exists(), f"chromium failed ({r.returncode}):\n{r.stderr[-3000:]}"
        status = json.loads(via(proxy.port, "http://condroute.mitm.it/api/status")[2])
        yield {"dom": r.stdout, "png": shot.read_bytes(), "status": status, "out": proxy.output(), "dead": dead_port}
    finally:
        proxy.stop()
        dead.close()
        for s in servers:
            s.shutdown()
            s.server_close()


@pytest.mark.slow
def test_the_dom_shows_routes_backends_and_counts(browsed):
    p = Rows()
    p.feed(browsed["dom"])
    assert p.attrs["app"].get("data-state") == "ok", browsed["dom"][-3000:]     # the script ran and drew the JSON
    assert p.row(route="shop")[0] == "shop" and p.row(route="shop")[2] == "5"
    assert p.row(route="shop", backend="variant-b")[2] == "2"
    assert p.row(route="shop", backend="default")[2] == "3"
    assert p.row(route=INJECT_ROUTE)[2] == "2"
    assert p.row(route=INJECT_ROUTE, backend="only")[2] == "1"
    assert p.row(route=INJECT_ROUTE, backend="other")[2] == "1"
    assert p.row(route="broken")[2] == "2" and p.row(route="broken", backend="gone")[2] == "1"   # and failed over
    assert len([a for a, _ in p.rows if "data-outcome" in a]) == 9     # the recent decisions
    assert any(INJECT_VALUE in "".join(cells) for _, cells in p.rows)   # a request's header value, as text
    # the page asked /api/status more than once (it refreshes itself), and was not counted
    out = browsed["out"]
    assert out.count("GET http://condroute.mitm.it/api/status") >= 2, out
    assert browsed["status"]["decisions"] == 9


@pytest.mark.slow
def test_a_reload_error_and_a_down_upstream_are_drawn(browsed):
    p = Rows()
    p.feed(browsed["dom"])
    assert "The last reload failed; generation 1 stays live:" in browsed["dom"]
    assert "upstream" in browsed["status"]["rules"]["error"] and "nowhere" in browsed["dom"]
    assert p.row(route="shop")[2] == "5"                 # the last good rules are drawn
    cells = p.row(upstream=f"http://127.0.0.1:{browsed['dead']}")
    assert cells[2] == "down" and "refused" in cells[3] and "passed over for" in cells[3]
    assert p.row(upstream="a")[2] == "up"


@pytest.mark.slow
def test_markup_in_names_and_requests_stays_text(browsed):
    dom = browsed["dom"]
    p = Rows()
    p.feed(dom)
    assert p.tags["img"] == 0 and p.tags["script"] == 1        # the page's own script only
    assert p.title == "condroute status"
    assert "&lt;img src=x" in dom and "&lt;script&gt;" in dom


@pytest.mark.slow
def test_the_screenshot_shows_the_page_drawn(browsed):
    w, h, rows = png_pixels(browsed["png"])
    assert (w, h) == (WIDTH, HEIGHT)
    c = colours(rows)
    assert drawn(c) is None, drawn(c)
    # the page itself (not a browser error page, which is drawn too): its header band, and a hit bar
    assert c[bytes(HEADER_RGB)] > 0.03 * w * h
    assert c[bytes(BAR_RGB)] > 200


@pytest.mark.parametrize("filt", [0, 1, 2, 3, 4])
def test_the_screenshot_check_sees_a_blank_page(filt):
    w, h, rows = png_pixels(make_png(40, 30, filt))
    assert (w, h) == (40, 30) and len(set(rows)) == 1
    assert drawn(colours(rows)) is not None
