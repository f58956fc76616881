"""The nginx export's njs script (``condroute.js``): JWT claims decoded and HS-verified as condroute
does, and the client address walked through X-Forwarded-For from trusted proxies, each compared on
the real nginx with condroute's own decision for awkward tokens and address chains (slow), plus
what the script refuses (fast)."""
from __future__ import annotations

import textwrap
import time

import jwt
import pytest

from condroute.engine import decide
from condroute.export.base import ExportOptions
from condroute.export.nginx import TARGET
from condroute.export.targets import read
from condroute.export.verify import run, wire
from condroute.request import RequestView

SECRET = "s" * 64
RULES = textwrap.dedent(f"""\
    version: 1
    upstreams: {{a: "http://127.0.0.1:9001", b: "http://127.0.0.1:9002", c: "http://127.0.0.1:9003"}}
    settings:
      trusted_proxies: [127.0.0.1/32, "::1/128", 10.0.0.0/8]
      jwt: {{from: "header:Authorization", verify: {{secret: "{SECRET}", issuer: [https://idp, https://idp2], audience: shop, leeway: 5}}}}
    routes:
      - name: ip
        match: {{path: /ip}}
        backends:
          - {{name: office, when: {{client_ip: [192.168.0.0/16, "fd00::/8"]}}, upstream: b}}
          - {{name: rest, fallback: true, upstream: a}}
      - name: jwt
        match: {{path: /jwt}}
        backends:
          - {{name: nested, when: {{jwt: {{realm.role: admin}}}}, upstream: c}}
          - {{name: grp, when: {{jwt: {{groups: {{prefix: Beta, ignore_case: true}}}}}}, upstream: b}}
          - {{name: num, when: {{jwt: {{level: "3"}}}}, upstream: b}}
          - {{name: nosub, when: {{not: {{jwt: {{sub: {{present: true}}}}}}}}, upstream: c}}
          - {{name: rest, fallback: true, upstream: a}}
      - name: split
        match: {{path: /split}}
        backends:
          - {{name: s, split: {{by: "jwt:sub", weights: {{a: 1, b: 1}}}}}}
    """)


def tok(claims: dict, key: str = SECRET, alg: str = "HS256", headers: dict | None = None) -> str:
    now = int(time.time())
    base = {"iss": "https://idp", "aud": "shop", "sub": "ana", "exp": now + 3600}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, key, algorithm=alg, headers=headers)


def requests() -> list[tuple[str, dict, str | None]]:
    now = int(time.time())
    admin = {"realm": {"role": "admin"}}

    def bearer(claims: dict, **kw) -> dict:
        return {"Authorization": "Bearer " + tok(claims, **kw)}
    return [
        ("/ip", {}, "192.168.1.1"), ("/ip", {}, "127.0.0.1"),
        ("/ip", {"X-Forwarded-For": "192.168.3.3"}, "127.0.0.1"),
        ("/ip", {"X-Forwarded-For": "192.168.3.3, 10.1.1.1"}, "127.0.0.1"),
        ("/ip", {"X-Forwarded-For": "192.168.3.3, 8.8.8.8"}, "127.0.0.1"),
        ("/ip", {"X-Forwarded-For": "192.168.3.3, garbage"}, "127.0.0.1"),
        ("/ip", {"X-Forwarded-For": "garbage, 192.168.3.3"}, "127.0.0.1"),
        ("/ip", {"X-Real-IP": "192.168.9.9"}, "127.0.0.1"), ("/ip", {"X-Real-IP": "192.168.9.9"}, "8.8.8.8"),
        ("/ip", {"X-Forwarded-For": "fd00::5"}, "::1"), ("/ip", {"X-Forwarded-For": "[fd00::5]:443"}, "10.2.2.2"),
        ("/ip", {"X-Forwarded-For": "::ffff:192.168.1.2"}, "127.0.0.1"),
        ("/ip", {"X-Forwarded-For": "192.168.1.2:8080"}, "127.0.0.1"),
        ("/ip", {"X-Forwarded-For": "192.168.01.2"}, "127.0.0.1"),
        ("/ip", {"X-Forwarded-For": "192.168.3.3,,"}, "127.0.0.1"),
        ("/ip", {}, "fd00::1"), ("/ip", {}, "::ffff:192.168.0.1"),
        ("/jwt", bearer(admin), None),
        ("/jwt", {"Authorization": "bearer  " + tok({"groups": ["x", "beta-1"]})}, None),
        ("/jwt", {"Authorization": tok({"groups": "BETAx"})}, None),
        ("/jwt", {"Authorization": "Basic " + tok({"groups": "BETAx"})}, None),
        ("/jwt", bearer({"level": 3}), None), ("/jwt", bearer({"level": 3.0}), None),
        ("/jwt", bearer({"realm.role": "admin"}), None),
        ("/jwt", bearer(admin, key="x" * 64), None), ("/jwt", bearer(admin, alg="HS384"), None),
        ("/jwt", bearer({**admin, "exp": now - 3}), None), ("/jwt", bearer({**admin, "exp": now - 30}), None),
        ("/jwt", bearer({**admin, "exp": str(now + 100)}), None), ("/jwt", bearer({**admin, "nbf": now + 100}), None),
        ("/jwt", bearer({**admin, "iat": "x"}), None), ("/jwt", bearer({**admin, "iss": "https://idp2"}), None),
        ("/jwt", bearer({**admin, "iss": "https://evil"}), None), ("/jwt", bearer({**admin, "aud": ["x", "shop"]}), None),
        ("/jwt", bearer({**admin, "aud": []}), None), ("/jwt", bearer({**admin, "sub": 5}), None),
        ("/jwt", bearer({"sub": None}), None), ("/jwt", bearer(admin, headers={"kid": "k5"}), None),
        ("/jwt", {"Authorization": "Bearer " + jwt.encode(admin, None, algorithm="none")}, None),
        ("/jwt", {"Authorization": "Bearer x.y"}, None), ("/jwt", {}, None),
        ("/split", bearer({"sub": "zed"}), None), ("/split", {}, None),
    ]


@pytest.mark.slow
def test_tokens_and_forwarded_addresses_route_on_nginx_as_in_condroute(tmp_path):
    exe, why = TARGET.binary()
    if exe is None:
        pytest.skip(why)
    f = tmp_path / "rules.yaml"
    f.write_text(RULES)
    compiled, m = read(str(f))
    wires = []
    for i, (path, headers, ip) in enumerate(requests()):
        view = RequestView.from_url("http://x.example" + path, "GET", list(headers.items()), ip)
        wires.append(wire(f"request {i}", path, view, m))
    backends = {decide(compiled, w.view).backend for w in wires}
    assert backends == {"office", "rest", "nested", "grp", "num", "nosub", "s"}
    r = run(TARGET, compiled, m, wires)
    assert r.refused == []
    assert (r.passed, r.failed) == (len(wires), 0), "\n".join(r.lines)


def export(tmp_path, text: str):
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    _, m = read(str(f))
    return TARGET.export(m, ExportOptions(workdir=str(tmp_path))), str(f)


def test_a_public_key_is_refused_at_the_jwt_condition(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "key.pem").write_bytes(key.public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    e, f = export(tmp_path, textwrap.dedent("""\
        version: 1
        settings: {jwt: {verify: {public_key_file: key.pem}}}
        routes:
          - name: r
            backends:
              - {name: b, when: {jwt: {role: admin}}, upstream: "http://127.0.0.1:9001"}
        """))
    assert [x.line("nginx") for x in e.refused] == [
        f"{f}:6:32: not exported to nginx: jwt: settings.jwt.verify with a public key or JWKS: njs checks "
        "those signatures only asynchronously, which js_set cannot wait for"]
    assert "condroute.js" not in e.files or "cr.j1" not in e.text


def test_a_secret_from_the_environment_is_passed_to_the_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("CR_TEST_SECRET", SECRET)
    e, _ = export(tmp_path, textwrap.dedent("""\
        version: 1
        settings: {jwt: {from: "cookie:tok", verify: {secret_env: CR_TEST_SECRET}}}
        routes:
          - name: r
            backends:
              - {name: b, when: {jwt: {role: admin}}, upstream: "http://127.0.0.1:9001"}
        """))
    assert e.refused == []
    assert "env CR_TEST_SECRET;" in e.text and "js_set $cr_j1 cr.j1;" in e.text
    assert SECRET not in e.files["condroute.js"]
    assert '"secret_env": "CR_TEST_SECRET"' in e.files["condroute.js"]
