"""End to end: regular proxy mode, a real mitmdump between curl/httpx and echo backends."""
import json
import subprocess

import httpx


def test_regular_mode_routes_by_header_and_falls_back(echo, rules_file, proxy):
    a, b = echo("variant-a"), echo("variant-b")
    rules = rules_file(f"""
        version: 1
        upstreams: {{a: "{a}", b: "{b}"}}
        routes:
          - name: shop
            match: {{host: shop.example}}
            backends:
              - {{name: force-b, when: {{header: {{X-Ab-Test: B}}}}, upstream: b}}
              - {{name: default, fallback: true, upstream: a}}
        """)
    p = proxy(rules)
    with httpx.Client(proxy=p.url, timeout=10) as c:
        rb = c.get("http://shop.example/cart?x=1", headers={"X-Ab-Test": "B"})
        ra = c.get("http://shop.example/cart")
    assert rb.json()["backend"] == "variant-b"
    assert rb.json()["path"] == "/cart?x=1"
    assert rb.headers["X-Condroute"] == "shop/force-b -> b"
    assert ra.json()["backend"] == "variant-a"
    assert ra.headers["X-Condroute"] == "shop/default -> a"
    # curl, too
    out = subprocess.run(["curl", "-s", "-x", p.url, "-H", "X-Ab-Test: B", "http://shop.example/"],
                         capture_output=True, text=True, timeout=20).stdout
    assert json.loads(out)["backend"] == "variant-b"
