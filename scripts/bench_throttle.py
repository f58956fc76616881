#!/usr/bin/env python3
"""Throttle measurement (a benchmark, not a test): the rate a client gets through ``throttle: {kbps}``.

    .venv/bin/python scripts/bench_throttle.py [--seconds 2] [--kbps 64,256,1024,8192]

One mitmdump (condroute, regular proxy mode, log off) with one route per rate, each to the same
plain HTTP backend on 127.0.0.1 (tests/test_sni_support.PlainBackend: GET /size/N answers N bytes),
plus an https backend (a self-signed certificate, ssl_insecure) for the same rates. For each rate a
body of about ``--seconds`` worth of bytes is fetched through the proxy on a fresh connection and
timed from the request to the last byte. Printed per rate: bytes, seconds, the achieved kilobits per
second (the body only; the head and, for https, TLS records also pass through the relay) and the
ratio achieved / kbps, which is expected a little above 1 for small bodies (a burst of one chunk,
1/20 s worth, goes at once) and at or below 1 otherwise. An unthrottled route's figure is printed
for comparison.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import httpx  # noqa: E402

from helpers import ADDON, Proxy  # noqa: E402
from test_sni_support import PlainBackend, TLSBackend, make_leaf  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--kbps", default="64,256,1024,8192")
    args = ap.parse_args()
    rates = [float(k) for k in args.kbps.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-throttle-"))
    plain = PlainBackend()
    cert, key = make_leaf(tmp, ["api.example.test", "127.0.0.1"])
    tls = TLSBackend(cert, key)
    routes = []
    for scheme, port in (("http", plain.port), ("https", tls.port)):
        for k in rates:
            host = f"{scheme}-{k:g}.test"
            routes.append(f"  - {{name: '{host}', match: {{host: '{host}'}}, backends: [{{name: b, upstream: "
                          f"'{scheme}://127.0.0.1:{port}', throttle: {{kbps: {k:g}}}}}]}}")
        routes.append(f"  - {{name: '{scheme}-off.test', match: {{host: '{scheme}-off.test'}}, backends: "
                      f"[{{name: b, upstream: '{scheme}://127.0.0.1:{port}'}}]}}")
    rules = tmp / "rules.yaml"
    rules.write_text("version: 1\nroutes:\n" + "\n".join(routes) + "\n")
    p = Proxy(["-s", str(ADDON), "--set", f"condroute_rules={rules}", "--set", "condroute_log=off",
               "--set", "ssl_insecure=true"]).start()
    try:
        print(f"{'route':>14} {'bytes':>10} {'seconds':>8} {'achieved kbps':>14} {'ratio':>6}")
        for scheme in ("http", "https"):
            for k in [*rates, None]:
                size = int((k or 80_000) * 125 * args.seconds)
                host = f"{scheme}-{'off' if k is None else f'{k:g}'}.test"
                with httpx.Client(proxy=p.url, timeout=120) as c:
                    c.get(f"http://{host}/warm")          # the connection and the relay are up
                    start = time.monotonic()
                    r = c.get(f"http://{host}/size/{size}")
                    took = time.monotonic() - start
                assert r.status_code == 200 and len(r.content) == size, (r.status_code, len(r.content))
                achieved = size * 8 / 1000 / took
                ratio = f"{achieved / k:6.3f}" if k else "     -"
                print(f"{host:>14} {size:>10} {took:>8.3f} {achieved:>14.1f} {ratio}")
    finally:
        p.stop()
        plain.close()
        tls.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
