"""Differential test of the nginx export: generated rule sets (within what nginx is given) and
generated requests, each decided by condroute and sent through the real nginx, zero differences.
Seeded, so a failure names a rule set and a request that can be replayed."""
from __future__ import annotations

import json
import random

import pytest

from condroute.engine import decide
from condroute.export.nginx import TARGET
from condroute.export.targets import read
from condroute.export.verify import run, wire
from condroute.request import RequestView

HOSTS = ["a.example", "b.example", "x.a.example"]
PATHS = ["/", "/api", "/api/v1/users/7", "/api/v1/users/7/", "/users/42/items/x/y", "/static/app.js",
         "/api/../api/v1", "//api/v1", "/a%20b", "/api/v1/users/%41"]
# no repeated header (nginx joins the values: readme-nginx)
HEADER_VALUES = ["B", "b", "beta", "alpha-1", "", "x y", "Beta-2"]
COOKIES = ["ab=B", "ab=b; uid=7", 'ab="B"', "uid=9; ab=beta", "AB=B", "ab= B ", "x=1", "ab=B; ab=c"]
QUERIES = ["", "t=eu-1", "t=us-1&x=1", "t=eu%2D2", "%74=eu-3", "t=x&t=eu-4", "T=eu-5", "t", "t=a+b", "t=a%20b"]


def matcher(rnd: random.Random, values: list[str]):
    v = rnd.choice([x for x in values if x])
    kind = rnd.randrange(8)
    if kind == 0:
        return v
    if kind == 1:
        return {"in": rnd.sample([x for x in values if x], 2)}
    if kind == 2:
        return {"prefix": v[:2], "ignore_case": rnd.random() < 0.5}
    if kind == 3:
        return {"suffix": v[-1:]}
    if kind == 4:
        return {"contains": v[1:3] or v}
    if kind == 5:
        return {"present": rnd.random() < 0.5}
    if kind == 6:
        return {"not": {"equals": v, "ignore_case": True}}
    return {"equals": v}


def condition(rnd: random.Random, depth: int = 0) -> dict:
    k = rnd.randrange(7 if depth < 2 else 4)
    if k == 0:
        return {"header": {"X-Ab": matcher(rnd, HEADER_VALUES)}}
    if k == 1:
        return {"cookie": {"ab": matcher(rnd, ["B", "b", "beta", "c"])}}
    if k == 2:
        m = matcher(rnd, ["eu-1", "eu-", "a b", "us-1"])
        if isinstance(m, dict) and ("suffix" in m or "contains" in m or "regex" in m):
            m = {"prefix": "eu-"}
        return {"query": {"t": m}}
    if k == 3:
        return {"client_ip": rnd.sample(["10.0.0.0/8", "192.168.1.0/24", "fd00::/8"], 2)}
    if k == 4:
        return {"any": [condition(rnd, depth + 1) for _ in range(2)]}
    if k == 5:
        return {"all": [condition(rnd, depth + 1) for _ in range(2)]}
    return {"not": condition(rnd, depth + 1)}


def rules(seed: int) -> dict:
    rnd = random.Random(seed)
    routes = []
    for i in range(rnd.randint(2, 4)):
        match: dict = {}
        if rnd.random() < 0.5:
            match["host"] = rnd.choice(["a.example", "*.a.example", ["a.example", "b.example"]])
        if rnd.random() < 0.5:
            match["path"] = rnd.choice(["/api/*", "/api/v1/users/{id}", "/users/{id}/items/*", "/static/*", "/"])
        if rnd.random() < 0.3:
            match["methods"] = ["GET", "POST"]
        if rnd.random() < 0.3:
            match.update(condition(rnd))
        backends = []
        for j in range(rnd.randint(1, 3)):
            b: dict = {"name": f"b{j}", "when": condition(rnd), "upstream": rnd.choice(["u1", "u2", "u3"])}
            if rnd.random() < 0.3:
                b["set_headers"] = {"X-Set": f"v{j}"}
            if rnd.random() < 0.3:
                b["remove_headers"] = ["X-Ab"]
            if rnd.random() < 0.2:
                b["preserve_host"] = True
            if "path" in match and match["path"].endswith("/*") and rnd.random() < 0.5:
                b["path"] = rnd.choice(["/v2/{rest}", "/{rest}", "/p{path}"])
            backends.append(b)
        if rnd.random() < 0.3:
            backends.append({"name": "split", "when": condition(rnd),
                             "split": {"by": rnd.choice(["cookie:uid", "header:X-Ab", "query:t", "client_ip"]),
                                       "weights": {"u1": 70, "u3": 30}}})   # (u2 has a base path: the verifier compares the path of the arm condroute chose)
        if rnd.random() < 0.4:
            backends.append({"name": "resp", "when": condition(rnd), "respond": {"status": 403, "body": "no $x\n"}})
        if rnd.random() < 0.6:
            backends.append({"name": "fb", "fallback": True, "upstream": "u1"})
        routes.append({"name": f"r{i}", **({"match": match} if match else {}), "backends": backends})
    settings: dict = {"on_no_match": rnd.choice(["passthrough", "error"])}
    if rnd.random() < 0.5:
        settings["trusted_proxies"] = ["127.0.0.1/32", "10.0.0.0/8"]
    return {"version": 1, "upstreams": {"u1": "http://127.0.0.1:9001", "u2": "http://127.0.0.1:9002/base",
                                        "u3": "http://u3.example:8080"},
            "settings": settings, "routes": routes}


def requests(seed: int, n: int) -> list[tuple[str, str, list[tuple[str, str]], str]]:
    rnd = random.Random(seed * 7919)
    out = []
    for _ in range(n):
        q = rnd.choice(QUERIES)
        url = f"http://{rnd.choice(HOSTS)}{rnd.choice(PATHS)}{'?' + q if q else ''}"
        headers = []
        if rnd.random() < 0.6:
            headers.append(("X-Ab", rnd.choice(HEADER_VALUES)))
        if rnd.random() < 0.6:
            headers.append(("Cookie", rnd.choice(COOKIES)))
        if rnd.random() < 0.4:
            headers.append(("X-Forwarded-For", rnd.choice(["192.168.1.5", "8.8.8.8, 10.9.9.9", "fd00::7", "junk"])))
        ip = rnd.choice(["127.0.0.1", "10.1.2.3", "192.168.1.9", "fd00::1", "8.8.8.8"])
        out.append((rnd.choice(["GET", "GET", "POST", "DELETE"]), url, headers, ip))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_generated_rules_route_on_nginx_as_in_condroute(seed, tmp_path):
    exe, why = TARGET.binary()
    if exe is None:
        pytest.skip(why)
    f = tmp_path / "rules.json"
    f.write_text(json.dumps(rules(seed), indent=1))
    compiled, m = read(str(f))
    wires = [wire(f"seed {seed} request {i}: {method} {url} {headers} from {ip}", "generated",
                  RequestView.from_url(url, method, headers, ip), m)
             for i, (method, url, headers, ip) in enumerate(requests(seed, 60))]
    decisions = {(d.outcome, d.route, d.backend) for d in (decide(compiled, w.view) for w in wires)}
    assert len(decisions) >= 2, decisions      # the requests reach more than one place
    r = run(TARGET, compiled, m, wires)
    assert r.refused == []
    assert r.failed == 0, f"{f.read_text()}\n" + "\n".join(r.lines)
