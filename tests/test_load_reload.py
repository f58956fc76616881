"""Load through a real mitmproxy while the rules file is rewritten: 5,000 requests over 50
concurrent keep-alive connections, 50 rewrites alternating good and bad versions. Every request
must be routed by one complete version of the rules: zero misrouted, zero errors."""
from __future__ import annotations

import asyncio
import itertools
import os
import time

import httpx

REQUESTS = 5_000
CONNECTIONS = 50
REWRITES = 50

# Two good versions that route the same request differently, and mark what they did: if a request
# were routed by half of one version and half of the other, the backend that answered, the
# X-Rules header it received and the X-Condroute header would disagree.
VERSION = """\
version: 1
upstreams: {{a: "{a}", b: "{b}", c: "{c}"}}
routes:
  - name: shop-{tag}
    match: {{host: shop.example}}
    backends:
      - name: ab-{tag}
        when: {{header: {{X-Ab-Test: B}}}}
        upstream: {ab}
        set_headers: {{X-Rules: "{tag}"}}
      - name: cookie-{tag}
        when: {{cookie: {{beta: "1"}}}}
        upstream: {cookie}
        set_headers: {{X-Rules: "{tag}"}}
      - name: rest-{tag}
        fallback: true
        upstream: {rest}
        set_headers: {{X-Rules: "{tag}"}}
"""
PLAN = {"P": {"ab": "b", "cookie": "c", "rest": "a"}, "Q": {"ab": "c", "cookie": "a", "rest": "b"}}
BAD = ["version: 1\nroutes:\n  - name: x\n    backends: [{name: y, upstream: nope}]\n",
       "version: 1\nroutes: [\n", "", "version: 1\nroutes:\n  - {name: r, backends: [{name: z, upstream: 'ftp://x'}]}\n"]


def test_load_with_50_reloads_routes_every_request_by_one_complete_version(echo, rules_file, proxy):
    ups = {n: echo(f"backend-{n}") for n in "abc"}

    def version(tag: str) -> str:
        return VERSION.format(tag=tag, **ups, **PLAN[tag])

    path = rules_file(version("P"))
    p = proxy(path, "--set", "condroute_reload_interval=0.05", "--set", "condroute_log=off", "--set", "flow_detail=0")
    kinds = [({"X-Ab-Test": "B"}, "ab"), ({"Cookie": "beta=1"}, "cookie"), ({}, "rest")]
    results: list[tuple[str, str, str, str, int]] = []
    errors: list[str] = []
    reloads = {"good": 0, "bad": 0}

    async def client(i: int, n: int) -> None:
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as c:     # one keep-alive connection each
            for j in range(n):
                headers, kind = kinds[(i + j) % 3]
                try:
                    r = await c.get(f"http://shop.example/item/{i}/{j}", headers=headers)
                    body = r.json()
                    results.append((kind, body["backend"], body["headers"].get("X-Rules", ""),
                                    r.headers.get("X-Condroute", ""), r.status_code))
                except Exception as e:  # noqa: BLE001 - every failure counts
                    errors.append(f"{type(e).__name__}: {e}")

    def settled() -> None:
        # the watcher installs a version once it has settled (seen unchanged by two checks and
        # modified at least 2 s ago): an mtime put an hour back spares the wait
        old = time.time() - 3600
        os.utime(path, (old, old))

    async def rewriter() -> None:
        tags = itertools.cycle("QP")
        bads = itertools.cycle(BAD)
        await asyncio.sleep(0)  # let the clients start
        for k in range(REWRITES):
            while len(results) < (k + 1) * REQUESTS // (REWRITES + 2):   # spread over the run
                await asyncio.sleep(0.01)
            mark = p.mark()
            if k % 2 == 0:
                path.write_text(version(next(tags)))
                settled()
                await asyncio.to_thread(p.wait_for, r"condroute: reloaded", 30, mark)
                reloads["good"] += 1
            else:
                path.write_text(next(bads))
                settled()
                await asyncio.to_thread(p.wait_for, r"reload failed|does not load|the file is empty|rules file is gone",
                                        30, mark)
                reloads["bad"] += 1

    async def main() -> None:
        per = REQUESTS // CONNECTIONS
        await asyncio.gather(rewriter(), *(client(i, per) for i in range(CONNECTIONS)))

    asyncio.run(main())
    assert errors == [], errors[:5]
    assert len(results) == REQUESTS
    assert reloads == {"good": REWRITES // 2, "bad": REWRITES // 2}
    seen = set()
    for kind, backend, tag, header, status in results:
        assert status == 200
        assert tag in PLAN, (kind, backend, tag, header)
        assert backend == f"backend-{PLAN[tag][kind]}", (kind, backend, tag, header)   # routed by version `tag`
        assert header == f"shop-{tag}/{kind}-{tag} -> {PLAN[tag][kind]}", (kind, backend, tag, header)
        seen.add(tag)
    assert seen == {"P", "Q"}     # both versions really served traffic
