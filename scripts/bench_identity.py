#!/usr/bin/env python3
"""Identity benchmark (a benchmark, not a test): CEL policy evaluation and JWT verification.

    .venv/bin/python scripts/bench_identity.py [--n 5000]

Prints, measured in this one run, for every installed CEL engine:
  - cold:     µs for one evaluation the result cache has not seen (read the inputs, build the
              variables the expression reads, run the engine),
  - repeated: µs per request for the same policy on repeated traffic (same inputs: a cache hit),
  - distinct: µs per request when every request has a different user (a different token) and so
              misses the cache, for a policy reading claims;
and for JWT: µs per verification (no cache) for HS256, RS256, ES256, and per cached lookup.
Every request is a fresh RequestView, as in the proxy (its lazy header/cookie parsing is counted).
For scale: mitmdump itself spends about 1.4 ms of CPU per proxied request.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "addon"))

import jwt  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

from condroute.cel.engines import available_engines  # noqa: E402
from condroute.cel.policy import compile_policy  # noqa: E402
from condroute.conditions.cel import LOOKUPS  # noqa: E402 - where a policy reads the token and GeoIP
from condroute.request import RequestView  # noqa: E402
from condroute.rules import load_rules_text  # noqa: E402

SECRET = "b" * 40
TYPICAL = ("req_headers['X-Ab-Test'][0] == 'B' && req_headers.containsCookie('ab-test-xyz', '1') "
           "&& jwt.role in ['admin', 'root'] && jwt.org.team == 'core' && request.path.startsWith('/api')")
KRAKEND = "req_headers.containsCookie('ab-test-xyz', '1')"
CLAIMS_ONLY = "jwt.role in ['admin', 'root'] && jwt.org.team == 'core'"


def token(sub: str = "user-1", **extra) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "role": "admin", "org": {"team": "core"}, "iat": now, "exp": now + 3600, **extra},
                      SECRET, algorithm="HS256")


def request(tok: str) -> RequestView:
    # a browser-like request: a dozen headers, a few cookies, a bearer token
    headers = [("Host", "shop.example"), ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
               ("Accept", "text/html,application/xhtml+xml"), ("Accept-Language", "en-GB,en;q=0.5"),
               ("Accept-Encoding", "gzip, deflate, br"), ("X-Ab-Test", "B"),
               ("Cookie", "ab-test-xyz=1; uid=42; theme=dark; consent=yes"), ("Authorization", f"Bearer {tok}"),
               ("X-Request-Id", "0f8e2c"), ("Referer", "http://shop.example/"), ("Connection", "keep-alive")]
    return RequestView("GET", "http", "shop.example", 80, "/api/orders/7", "page=2", iter(headers), "127.0.0.1")


def stats(samples_ns: list[int]) -> str:
    s = sorted(samples_ns)
    med = statistics.median(s) / 1000
    p90 = s[int(len(s) * 0.9)] / 1000
    return f"median {med:8.1f} µs   p90 {p90:8.1f} µs"


def bench_cel(rules, engine: str, text: str, n: int) -> dict[str, str]:
    out = {}
    tok = token()
    # cold: a fresh result cache for every evaluation (the token's verification stays cached: that is
    # the JWT figure below)
    pol, problems = compile_policy(text, engine, lookups=LOOKUPS)
    assert not problems, problems
    assert pol.evaluate(request(tok), rules) is None, "the policy should hold"
    samples = []
    for _ in range(max(200, n // 10)):
        pol.cache.clear()
        r = request(tok)
        t = time.perf_counter_ns()
        pol.evaluate(r, rules)
        samples.append(time.perf_counter_ns() - t)
    out["cold"] = stats(samples)
    # repeated traffic: identical inputs, a fresh request object each time
    pol, _ = compile_policy(text, engine, lookups=LOOKUPS)
    pol.evaluate(request(tok), rules)
    samples = []
    for _ in range(n):
        r = request(tok)
        t = time.perf_counter_ns()
        pol.evaluate(r, rules)
        samples.append(time.perf_counter_ns() - t)
    out["repeated"] = stats(samples)
    assert pol.evaluations == 1
    return out


def bench_distinct_users(rules, engine: str, text: str, n: int) -> str:
    """Every request a different user: each token is verified (JWT cost included) and, for a policy
    that reads the whole claims map or a per-user claim, every evaluation misses the cache."""
    pol, _ = compile_policy(text + " && jwt.sub != ''", engine, lookups=LOOKUPS)
    toks = [token(sub=f"user-{i}") for i in range(n)]
    samples = []
    for tk in toks:
        r = request(tk)
        t = time.perf_counter_ns()
        pol.evaluate(r, rules)
        samples.append(time.perf_counter_ns() - t)
    return stats(samples)


def bench_jwt(tmp: Path, n: int) -> dict[str, str]:
    out = {}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    for name, key in (("rsa.pem", rsa_key), ("ec.pem", ec_key)):
        (tmp / name).write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    now = int(time.time())
    payload = {"sub": "u", "role": "admin", "iat": now, "exp": now + 3600, "aud": "shop", "iss": "https://idp"}
    cases = [("HS256", f"{{secret: {SECRET}}}", SECRET),
             ("RS256", "{public_key_file: rsa.pem}", rsa_key),
             ("ES256", "{public_key_file: ec.pem}", ec_key)]
    for alg, verify, key in cases:
        rules = load_rules_text(f"version: 1\nsettings:\n  jwt: {{verify: {verify[:-1]}, audience: shop, "
                                f"issuer: 'https://idp'}}}}\nroutes: []\n", str(tmp / f"{alg}.yaml"))
        s = rules.settings.jwt
        tk = jwt.encode(payload, key, algorithm=alg)
        st, _ = s._check(tk, time.time())
        assert st.error is None, st.error
        samples = []
        for _ in range(max(200, n // 10)):
            t = time.perf_counter_ns()
            s._check(tk, time.time())
            samples.append(time.perf_counter_ns() - t)
        out[f"{alg} verify (uncached)"] = stats(samples)
        s.check(tk)
        samples = []
        for _ in range(n):
            t = time.perf_counter_ns()
            s.check(tk)
            samples.append(time.perf_counter_ns() - t)
        out[f"{alg} cached lookup"] = stats(samples)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="iterations per figure (default 5000)")
    args = ap.parse_args()
    n = args.n
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rules = load_rules_text(f"version: 1\nsettings:\n  jwt: {{verify: {{secret: {SECRET}}}}}\nroutes: []\n",
                                str(tmp / "rules.yaml"))
        print(f"condroute identity benchmark — Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"{n} iterations per 'repeated' figure")
        print(f"typical policy (5 clauses over headers, a cookie, claims, the path):\n  {TYPICAL}\n")
        for engine in available_engines():
            print(f"CEL engine {engine}")
            for label, text in (("typical policy", TYPICAL), ("KrakenD containsCookie", KRAKEND)):
                res = bench_cel(rules, engine, text, n)
                print(f"  {label:24s} cold      {res['cold']}")
                print(f"  {label:24s} repeated  {res['repeated']}")
            print(f"  {'distinct users':24s} each new {bench_distinct_users(rules, engine, CLAIMS_ONLY, max(500, n // 5))}"
                  "   (JWT verification + a cache miss)")
            print()
        print("JWT (PyJWT)")
        for label, figure in bench_jwt(tmp, n).items():
            print(f"  {label:24s}           {figure}")


if __name__ == "__main__":
    main()
