"""End to end through a real mitmdump: JWT-, CEL- and GeoIP-based routing (127.0.0.1 only)."""
from __future__ import annotations

import json
import time

import httpx
import pytest

from condroute.cel.engines import available_engines
from test_identity_support import (OTHER_RSA_PRIVATE, RSA_PRIVATE, RSA_PUBLIC_PEM, SE_IP, SECRET, US_IP, alg_none,
                                   build_geo_db, claims, forged, hs256, hs256_with_rsa_public_key_as_secret, jwks,
                                   rs256)


def get(p, url: str, headers: dict | None = None, cookies: dict | None = None) -> httpx.Response:
    with httpx.Client(proxy=p.url, timeout=10) as c:
        if cookies:
            c.cookies.update(cookies)
        return c.get(url, headers=headers or {})


def backend_of(p, token: str | None, **kw) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    r = get(p, "http://api.example/orders", headers=headers, **kw)
    assert r.status_code == 200, r.text
    return r.json()["backend"]


JWT_ROUTES = """
routes:
  - name: api
    match: {{host: api.example}}
    backends:
      - {{name: admins, when: {{jwt: {{role: admin, org.team: core}}}}, upstream: "{admin}"}}
      - {{name: beta, when: {{jwt: {{groups: beta}}}}, upstream: "{beta}"}}
      - {{name: default, fallback: true, upstream: "{default}"}}
"""

GOOD = dict(role="admin", org={"team": "core"}, aud="shop", iss="https://idp.test")


def _cases(sign, wrong_key_sign):
    now = int(time.time())
    return [
        ("valid admin", sign(claims(**GOOD)), "admin"),
        ("list claim", sign(claims(aud="shop", iss="https://idp.test", groups=["alpha", "beta"])), "beta"),
        ("valid, not admin", sign(claims(**{**GOOD, "role": "viewer"})), "default"),
        ("forged claims", forged(claims(**GOOD)), "default"),
        ("signed by another key", wrong_key_sign(claims(**GOOD)), "default"),
        ("alg none", alg_none(claims(**GOOD)), "default"),
        ("HS256 with the RSA public key", hs256_with_rsa_public_key_as_secret(claims(**GOOD)), "default"),
        ("expired", sign(claims(**{**GOOD, "exp": now - 3600})), "default"),
        ("wrong audience", sign(claims(**{**GOOD, "aud": "other"})), "default"),
        ("wrong issuer", sign(claims(**{**GOOD, "iss": "https://evil.test"})), "default"),
        ("garbage", "not-a-jwt", "default"),
        ("no token", None, "default"),
    ]


@pytest.mark.parametrize("kind", ["HS256", "RS256", "JWKS"])
def test_jwt_routing(kind, echo, rules_file, proxy, tmp_path):
    up = {n: echo(n) for n in ("admin", "beta", "default")}
    checks = "issuer: https://idp.test, audience: shop"
    env = None
    if kind == "HS256":
        verify = f"{{secret_env: CONDROUTE_E2E_SECRET, {checks}}}"
        env = {"CONDROUTE_E2E_SECRET": SECRET}
        sign, wrong = hs256, (lambda c: hs256(c, secret="z" * 40))
    elif kind == "RS256":
        (tmp_path / "keys").mkdir()
        (tmp_path / "keys" / "idp.pem").write_bytes(RSA_PUBLIC_PEM)
        verify = f"{{public_key_file: keys/idp.pem, {checks}}}"
        sign, wrong = rs256, (lambda c: rs256(c, key=OTHER_RSA_PRIVATE))
    else:
        (tmp_path / "jwks.json").write_text(json.dumps(jwks(("idp-2024", RSA_PRIVATE))))
        verify = f"{{jwks_file: jwks.json, {checks}}}"
        sign, wrong = (lambda c: rs256(c, kid="idp-2024")), (lambda c: rs256(c, key=OTHER_RSA_PRIVATE, kid="idp-2024"))
    rules = rules_file(f"version: 1\nsettings:\n  jwt: {{verify: {verify}}}\n" + JWT_ROUTES.format(**up))
    p = proxy(rules, "--set", "condroute_log=verbose", env=env)
    cases = _cases(sign, wrong)
    got = {name: backend_of(p, token) for name, token, _ in cases}
    assert got == {name: want for name, _, want in cases}
    # the reasons are in the log; the tokens and their claims are not
    out = p.output()
    assert "skipped admins: jwt role: the token was rejected: token expired" in out
    assert "skipped admins: jwt role: the token was rejected: wrong audience" in out
    assert "skipped admins: jwt role: the token was rejected: alg none is not accepted" in out
    assert "skipped admins: jwt role does not match, wanted \"admin\"" in out
    for _, token, _ in cases:
        if token:
            for part in token.split("."):
                assert len(part) < 8 or part not in out
    assert "viewer" not in out and "https://evil.test" not in out


def test_jwt_from_a_cookie_with_a_cel_policy(echo, rules_file, proxy):
    a, b = echo("admin"), echo("default")
    rules = rules_file(f"""
        version: 1
        settings:
          jwt: {{from: "cookie:session", verify: {{secret_env: CONDROUTE_E2E_SECRET}}}}
        routes:
          - name: api
            backends:
              - {{name: admins, when: {{cel: "JWT.role in ['admin', 'root'] || JWT.permissions.can_write_users"}}, upstream: "{a}"}}
              - {{name: default, fallback: true, upstream: "{b}"}}
        """)
    p = proxy(rules, env={"CONDROUTE_E2E_SECRET": SECRET})
    assert get(p, "http://api.example/", cookies={"session": hs256(claims(role="root"))}).json()["backend"] == "admin"
    perm = hs256(claims(role="x", permissions={"can_write_users": True}))
    assert get(p, "http://api.example/", cookies={"session": perm}).json()["backend"] == "admin"
    assert get(p, "http://api.example/", cookies={"session": hs256(claims(role="x"))}).json()["backend"] == "default"
    assert get(p, "http://api.example/", cookies={"session": forged(claims(role="root"))}).json()["backend"] == "default"
    assert get(p, "http://api.example/", headers={"Authorization": f"Bearer {hs256(claims(role='root'))}"}
               ).json()["backend"] == "default"


@pytest.mark.parametrize("cel_engine", ["cel-python", "cel-expr-python"])
def test_krakend_cel_policies(cel_engine, echo, rules_file, proxy):
    if cel_engine not in available_engines():
        pytest.skip(f"{cel_engine} is not installed")
    up = {n: echo(n) for n in ("ab", "test", "window", "default")}
    rules = rules_file(f"""
        version: 1
        routes:
          - name: shop
            match: {{host: shop.example}}
            backends:
              - name: ab
                when: {{cel: "req_headers.containsCookie('ab-test-xyz', '1')"}}
                upstream: "{up['ab']}"
              - name: test
                when: {{cel: "hasHeader('X-Test') && req_method == 'GET' && req_path.startsWith('/api')"}}
                upstream: "{up['test']}"
              - name: window
                when: {{cel: "timestamp(now) > timestamp('2023-01-01T10:00:20.000-05:00') && getQuery('w') == '1'"}}
                upstream: "{up['window']}"
              - name: default
                fallback: true
                upstream: "{up['default']}"
        """)
    p = proxy(rules, "--set", "condroute_log=verbose", env={"CONDROUTE_CEL_ENGINE": cel_engine})
    assert get(p, "http://shop.example/", cookies={"ab-test-xyz": "1"}).json()["backend"] == "ab"
    assert get(p, "http://shop.example/", cookies={"ab-test-xyz": "2"}).json()["backend"] == "default"
    assert get(p, "http://shop.example/api/x", headers={"X-Test": "1"}).json()["backend"] == "test"
    assert get(p, "http://shop.example/web", headers={"X-Test": "1"}).json()["backend"] == "default"
    assert get(p, "http://shop.example/web?w=1").json()["backend"] == "window"
    r = get(p, "http://shop.example/web?w=2")
    assert r.json()["backend"] == "default" and r.headers["X-Condroute"] == "shop/default -> " + up["default"]
    out = p.output()
    assert "skipped ab: cel `req_headers.containsCookie('ab-test-xyz', '1')` is false" in out


def test_cel_errors_are_skips_never_500(echo, rules_file, proxy):
    a, b = echo("policy"), echo("default")
    rules = rules_file(f"""
        version: 1
        routes:
          - name: r
            backends:
              - {{name: p, when: {{cel: "int(req_headers['X-N'][0]) / int(getQuery('d')) > 1"}}, upstream: "{a}"}}
              - {{name: default, fallback: true, upstream: "{b}"}}
        """)
    p = proxy(rules, "--set", "condroute_log=verbose")
    assert get(p, "http://x.example/?d=1", headers={"X-N": "5"}).json()["backend"] == "policy"
    for url, hs in (("http://x.example/?d=0", {"X-N": "5"}), ("http://x.example/?d=1", {"X-N": "secret-value"}),
                    ("http://x.example/", {})):
        r = get(p, url, hs)
        assert r.status_code == 200 and r.json()["backend"] == "default"
    out = p.output()
    assert "could not be evaluated: division by zero" in out
    assert "could not be evaluated: no such key \"X-N\"" in out
    assert "secret-value" not in out


def test_geo_routing_trusts_x_forwarded_for_only_from_trusted_proxies(echo, rules_file, proxy, tmp_path):
    build_geo_db(tmp_path / "GeoTest-Country.mmdb")
    up = {n: echo(n) for n in ("eu", "us", "default")}

    def rules(trusted: str, name: str):
        return rules_file(f"""
            version: 1
            settings:
              trusted_proxies: {trusted}
              geoip_db: GeoTest-Country.mmdb
            routes:
              - name: shop
                backends:
                  - {{name: eu, when: {{geo: {{eu: true}}}}, upstream: "{up['eu']}"}}
                  - {{name: us, when: {{cel: "geoIP().Country.IsoCode in [\\"US\\",\\"UK\\",\\"AU\\"]"}}, upstream: "{up['us']}"}}
                  - {{name: default, fallback: true, upstream: "{up['default']}"}}
            """, name)

    trusting = proxy(rules("[127.0.0.1/32]", "trusting.yaml"), "--set", "condroute_log=verbose")
    assert get(trusting, "http://shop.example/", {"X-Forwarded-For": SE_IP}).json()["backend"] == "eu"
    assert get(trusting, "http://shop.example/", {"X-Forwarded-For": US_IP}).json()["backend"] == "us"
    assert get(trusting, "http://shop.example/", {"X-Forwarded-For": "198.51.100.7"}).json()["backend"] == "default"
    assert get(trusting, "http://shop.example/").json()["backend"] == "default"
    assert "skipped eu: geo: client IP 198.51.100.7 is not in the GeoIP database" in trusting.output()

    # the proxy sees the client as 127.0.0.1, which is not a trusted proxy here: X-Forwarded-For is ignored
    ignoring = proxy(rules("[10.0.0.0/8]", "ignoring.yaml"), "--set", "condroute_log=verbose")
    assert get(ignoring, "http://shop.example/", {"X-Forwarded-For": SE_IP}).json()["backend"] == "default"
    assert get(ignoring, "http://shop.example/", {"X-Forwarded-For": US_IP}).json()["backend"] == "default"
    assert "skipped eu: geo: client IP 127.0.0.1 is not in the GeoIP database" in ignoring.output()


def test_bad_identity_settings_stop_mitmdump_with_located_errors(rules_file, tmp_path):
    from helpers import ADDON, run_mitmdump_until_exit
    rules = rules_file("""
        version: 1
        settings:
          geoip_db: missing.mmdb
          jwt: {verify: {public_key_file: nope.pem}}
        routes:
          - name: r
            backends:
              - {name: a, when: {cel: "req_headerz['X'] == 'a'"}, respond: {status: 200}}
        """)
    res = run_mitmdump_until_exit(["-s", str(ADDON), "--set", f"condroute_rules={rules}"])
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert f"{rules}:4:13: settings.geoip_db: no such file" in out
    assert f"{rules}:5:35: settings.jwt.verify.public_key_file: no such file" in out
    assert f"{rules}:9:32: unknown variable 'req_headerz'" in out
    assert "Traceback" not in out


def test_decode_only_mode_routes_and_warns_at_start_up(echo, rules_file, proxy):
    a, b = echo("admin"), echo("default")
    rules = rules_file(f"""
        version: 1
        settings:
          jwt: {{verify: false}}
        routes:
          - name: api
            backends:
              - {{name: admins, when: {{jwt: {{role: admin}}}}, upstream: "{a}"}}
              - {{name: default, fallback: true, upstream: "{b}"}}
        """)
    p = proxy(rules)
    assert "settings.jwt.verify is false: JWT signatures, expiry and audience are NOT checked" in p.output()
    assert f"{rules}:4:17:" in p.output()
    unsigned = alg_none(claims(role="admin"))
    assert backend_of(p, unsigned) == "admin"
    assert backend_of(p, "garbage") == "default"
