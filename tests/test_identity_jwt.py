"""JWT: settings.jwt, verification with PyJWT, jwt conditions, claim paths, caching (unit level)."""
from __future__ import annotations

import json
import time

import pytest

from condroute.conditions import jwtauth
from condroute.engine import decide, split_key
from condroute.errors import RulesError
from condroute.request import RequestView
from condroute.rules import load_rules
from test_identity_support import (EC_PUBLIC_PEM, ED_PUBLIC_PEM, OTHER_RSA_PRIVATE, RSA_PRIVATE, RSA_PUBLIC_PEM,
                                   SECRET, alg_none, claims, eddsa, es256, forged, hs256,
                                   hs256_with_rsa_public_key_as_secret, jwks, pem_private, rs256)


def rules_with(tmp_path, settings_jwt: str, when: str = "{jwt: {role: admin}}", extra_backends: str = "",
               name: str = "rules.yaml"):
    p = tmp_path / name
    p.write_text(f"""version: 1
settings:
  jwt: {settings_jwt}
routes:
  - name: api
    backends:
      - name: admin
        when: {when}
        respond: {{status: 200, body: admin}}
{extra_backends}      - name: default
        fallback: true
        respond: {{status: 200, body: default}}
""")
    return load_rules(str(p))


def req(token: str | None = None, header: str = "Authorization", scheme: str = "Bearer ", extra=(), url="http://api.example/x"):
    headers = list(extra)
    if token is not None:
        headers.append((header, f"{scheme}{token}"))
    return RequestView.from_url(url, headers=headers, peer="127.0.0.1")


def outcome(rules, r) -> tuple[str, str]:
    d = decide(rules, r)
    skipped = {a.backend: a.reason for a in d.attempts if not a.held}
    return d.backend, skipped.get("admin", "")


def errors_of(tmp_path, text: str, name: str = "rules.yaml") -> list[str]:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(RulesError) as ei:
        load_rules(str(p))
    return [str(x) for x in ei.value.problems]


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("CONDROUTE_TEST_JWT_SECRET", SECRET)
    return "{verify: {secret_env: CONDROUTE_TEST_JWT_SECRET}}"


# -- HS256 ------------------------------------------------------------------------------------------
def test_hs256_routes_by_claim_and_falls_back_with_a_reason(tmp_path, secret_env):
    rules = rules_with(tmp_path, secret_env)
    assert outcome(rules, req(hs256(claims(role="admin")))) == ("admin", "")
    backend, why = outcome(rules, req(hs256(claims(role="viewer"))))
    assert backend == "default"
    assert why == 'jwt role does not match, wanted "admin"'
    assert "viewer" not in why                       # claim values are token contents: never shown
    backend, why = outcome(rules, req(None))
    assert (backend, why) == ("default", 'jwt role: there is no token, wanted "admin"')
    backend, why = outcome(rules, req(hs256(claims())))
    assert (backend, why) == ("default", 'jwt role is missing from the token, wanted "admin"')


@pytest.mark.filterwarnings("ignore::jwt.InsecureKeyLengthWarning")
def test_secret_written_in_the_file_and_short_secret_warning(tmp_path):
    rules = rules_with(tmp_path, "{verify: {secret: short}}")
    assert any("the secret is 5 bytes" in str(w) for w in rules.warnings)
    assert outcome(rules, req(hs256(claims(role="admin"), secret="short")))[0] == "admin"
    assert outcome(rules, req(hs256(claims(role="admin"))))[1].endswith("the token was rejected: bad signature")


@pytest.mark.parametrize("make, reason", [
    (lambda: forged(claims(role="admin")), "bad signature"),
    (lambda: hs256(claims(role="admin"), secret="x" * 40), "bad signature"),
    (lambda: alg_none(claims(role="admin")), "alg none is not accepted"),
    (lambda: alg_none(claims(role="admin"), alg="NoNe"), "alg none is not accepted"),
    (lambda: hs256(claims(role="admin", exp=int(time.time()) - 60)), "token expired"),
    (lambda: hs256(claims(role="admin", nbf=int(time.time()) + 600)), "token not yet valid"),
    (lambda: rs256(claims(role="admin")), "algorithm RS256 is not allowed for the configured key"),
    (lambda: "garbage", "malformed token"),
    (lambda: "a.b.c", "malformed token"),
    (lambda: "bm90IGpzb24.e30.c2ln", "malformed token"),
    (lambda: "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", "bad signature"),   # the signature is checked first
    (lambda: hs256(claims(role="admin"))[:-6], "malformed token"),
    (lambda: "x" * 20000, "malformed token (too long)"),
])
def test_hs256_rejections_fall_back_and_say_why(tmp_path, secret_env, make, reason):
    rules = rules_with(tmp_path, secret_env)
    token = make()
    backend, why = outcome(rules, req(token))
    assert backend == "default"
    assert why == f"jwt role: the token was rejected: {reason}"
    for part in token.split("."):
        if len(part) > 3:
            assert part not in why


def test_a_rejected_token_makes_every_jwt_condition_false_even_absent_and_not(tmp_path, secret_env):
    rules = rules_with(tmp_path, secret_env, when="{jwt: {role: {present: false}}}")
    assert outcome(rules, req(None))[0] == "admin"                          # no token: the claim is absent
    assert outcome(rules, req(hs256(claims())))[0] == "admin"               # valid token without the claim
    backend, why = outcome(rules, req(forged(claims(role="x"))))
    assert (backend, why) == ("default", "jwt role: the token was rejected: bad signature")
    rules = rules_with(tmp_path, secret_env, when="{jwt: {role: {not: admin}}}", name="r2.yaml")
    assert outcome(rules, req(hs256(claims(role="viewer"))))[0] == "admin"
    assert outcome(rules, req(hs256(claims(role="viewer", exp=1))))[0] == "default"


# -- RS256, ES256, EdDSA with a public key file; key confusion ----------------------------------------
def test_public_key_file_relative_to_the_rules_file(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "rsa.pem").write_bytes(RSA_PUBLIC_PEM)
    rules = rules_with(tmp_path, "{verify: {public_key_file: keys/rsa.pem}}")
    assert outcome(rules, req(rs256(claims(role="admin"))))[0] == "admin"
    assert outcome(rules, req(rs256(claims(role="admin"), alg="PS256")))[0] == "admin"
    assert outcome(rules, req(rs256(claims(role="admin"), alg="RS512")))[0] == "admin"
    assert outcome(rules, req(rs256(claims(role="admin"), key=OTHER_RSA_PRIVATE)))[1].endswith("bad signature")
    # HS256 signed with the public key as the HMAC secret: refused before any HMAC is computed
    assert outcome(rules, req(hs256_with_rsa_public_key_as_secret(claims(role="admin"))))[1].endswith(
        "algorithm HS256 is not allowed for the configured key")
    assert outcome(rules, req(alg_none(claims(role="admin"))))[1].endswith("alg none is not accepted")
    assert outcome(rules, req(es256(claims(role="admin"))))[1].endswith(
        "algorithm ES256 is not allowed for the configured key")


def test_certificate_ec_and_eddsa_keys(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(RSA_PRIVATE.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(RSA_PRIVATE, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ec.pem").write_bytes(EC_PUBLIC_PEM)
    (tmp_path / "ed.pem").write_bytes(ED_PUBLIC_PEM)
    r1 = rules_with(tmp_path, "{verify: {public_key_file: cert.pem}}", name="r1.yaml")
    assert outcome(r1, req(rs256(claims(role="admin"))))[0] == "admin"
    r2 = rules_with(tmp_path, "{verify: {public_key_file: ec.pem}}", name="r2.yaml")
    assert outcome(r2, req(es256(claims(role="admin"))))[0] == "admin"
    assert outcome(r2, req(rs256(claims(role="admin"))))[0] == "default"
    r3 = rules_with(tmp_path, "{verify: {public_key_file: ed.pem}}", name="r3.yaml")
    assert outcome(r3, req(eddsa(claims(role="admin"))))[0] == "admin"


def test_algorithms_setting_narrows_what_a_key_accepts(tmp_path):
    (tmp_path / "rsa.pem").write_bytes(RSA_PUBLIC_PEM)
    rules = rules_with(tmp_path, "{verify: {public_key_file: rsa.pem, algorithms: [PS256]}}")
    assert outcome(rules, req(rs256(claims(role="admin"), alg="PS256")))[0] == "admin"
    assert outcome(rules, req(rs256(claims(role="admin"))))[1].endswith("algorithm RS256 is not allowed for the configured key")


# -- JWKS -------------------------------------------------------------------------------------------
def test_jwks_file_selects_the_key_by_kid(tmp_path):
    from test_identity_support import EC_PRIVATE
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(("rsa-1", RSA_PRIVATE), ("ec-1", EC_PRIVATE))))
    rules = rules_with(tmp_path, "{verify: {jwks_file: jwks.json}}")
    assert outcome(rules, req(rs256(claims(role="admin"), kid="rsa-1")))[0] == "admin"
    assert outcome(rules, req(es256(claims(role="admin"), kid="ec-1")))[0] == "admin"
    assert outcome(rules, req(rs256(claims(role="admin"), kid="nope")))[1].endswith("unknown key id (kid)")
    # the RSA key's kid on an ES256 token: the kid's key does not do ES256
    assert outcome(rules, req(es256(claims(role="admin"), kid="rsa-1")))[1].endswith(
        "algorithm ES256 is not allowed for the configured key")
    # no kid: every key that fits the algorithm is tried
    assert outcome(rules, req(rs256(claims(role="admin"))))[0] == "admin"
    assert outcome(rules, req(rs256(claims(role="admin"), key=OTHER_RSA_PRIVATE)))[1].endswith("bad signature")
    assert outcome(rules, req(hs256(claims(role="admin"), kid="rsa-1")))[1].endswith(
        "algorithm HS256 is not allowed for the configured key")


def test_jwks_key_without_alg_admits_its_family(tmp_path):
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(("k", RSA_PRIVATE), alg=False)))
    rules = rules_with(tmp_path, "{verify: {jwks_file: jwks.json}}")
    assert outcome(rules, req(rs256(claims(role="admin"), kid="k", alg="PS384")))[0] == "admin"
    assert outcome(rules, req(rs256(claims(role="admin"), kid="k", alg="RS256")))[0] == "admin"


# -- claims checks ----------------------------------------------------------------------------------
def test_issuer_audience_leeway(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDROUTE_TEST_JWT_SECRET", SECRET)
    rules = rules_with(tmp_path, "{verify: {secret_env: CONDROUTE_TEST_JWT_SECRET, issuer: https://idp.test, "
                                 "audience: [shop, api], leeway: 120}}")
    good = dict(role="admin", iss="https://idp.test", aud="api")
    assert outcome(rules, req(hs256(claims(**good))))[0] == "admin"
    assert outcome(rules, req(hs256(claims(**{**good, "aud": ["other", "shop"]}))))[0] == "admin"
    assert outcome(rules, req(hs256(claims(**{**good, "aud": "other"}))))[1].endswith("wrong audience")
    assert outcome(rules, req(hs256(claims(**{**good, "iss": "https://evil.test"}))))[1].endswith("wrong issuer")
    no_aud = {k: v for k, v in good.items() if k != "aud"}
    assert outcome(rules, req(hs256(claims(**no_aud))))[1].endswith("the token has no aud claim")
    assert outcome(rules, req(hs256(claims(**{**good, "exp": int(time.time()) - 60}))))[0] == "admin"  # leeway
    assert outcome(rules, req(hs256(claims(**{**good, "exp": int(time.time()) - 600}))))[1].endswith("token expired")


def test_without_audience_setting_a_token_with_aud_is_accepted(tmp_path, secret_env):
    rules = rules_with(tmp_path, secret_env)
    assert outcome(rules, req(hs256(claims(role="admin", aud="whatever"))))[0] == "admin"


# -- where the token is -----------------------------------------------------------------------------
def test_bearer_is_stripped_case_insensitively_and_other_schemes_are_not_tokens(tmp_path, secret_env):
    rules = rules_with(tmp_path, secret_env)
    t = hs256(claims(role="admin"))
    assert outcome(rules, req(t, scheme="bearer  "))[0] == "admin"
    assert outcome(rules, req(t, scheme="BEARER "))[0] == "admin"
    assert outcome(rules, req(t, scheme=""))[0] == "admin"            # a bare token
    assert outcome(rules, req(t, scheme="Basic "))[1] == 'jwt role: there is no token, wanted "admin"'


def test_token_from_a_cookie_or_another_header(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDROUTE_TEST_JWT_SECRET", SECRET)
    t = hs256(claims(role="admin"))
    r1 = rules_with(tmp_path, "{from: 'cookie:session', verify: {secret_env: CONDROUTE_TEST_JWT_SECRET}}", name="a.yaml")
    assert outcome(r1, req(extra=[("Cookie", f"a=1; session={t}")]))[0] == "admin"
    assert outcome(r1, req(t))[0] == "default"                         # the Authorization header is not read
    r2 = rules_with(tmp_path, "{from: 'header:X-Token', verify: {secret_env: CONDROUTE_TEST_JWT_SECRET}}", name="b.yaml")
    assert outcome(r2, req(t, header="x-token", scheme=""))[0] == "admin"
    # an explicit token (the CLI's --jwt) wins over the request
    r = req(None)
    r.jwt_token = t
    assert outcome(r1, r)[0] == "admin"


# -- claim paths --------------------------------------------------------------------------------------
@pytest.mark.parametrize("when, payload, held", [
    ("{jwt: {org.team: core}}", {"org": {"team": "core"}}, True),
    ("{jwt: {org.team: core}}", {"org": {"team": "edge"}}, False),
    ("{jwt: {roles: admin}}", {"roles": ["viewer", "admin"]}, True),
    ("{jwt: {roles: admin}}", {"roles": ["viewer"]}, False),
    ("{jwt: {roles.0: viewer}}", {"roles": ["viewer", "admin"]}, True),
    ("{jwt: {realm_access.roles: {prefix: adm}}}", {"realm_access": {"roles": ["x", "admin"]}}, True),
    ("{jwt: {'https://example.com/roles': admin}}", {"https://example.com/roles": ["admin"]}, True),
    ("{jwt: {'https://example.com/roles': admin}}", {"https://example": {"com/roles": "admin"}}, True),
    ("{jwt: {level: {ge: 3}}}", {"level": 5}, True),
    ("{jwt: {level: {ge: 3}}}", {"level": 2}, False),
    ("{jwt: {beta: true}}", {"beta": True}, True),
    ("{jwt: {beta: true}}", {"beta": False}, False),
    ("{jwt: {role: admin, tier: gold}}", {"role": "admin", "tier": "gold"}, True),
    ("{jwt: {role: admin, tier: gold}}", {"role": "admin", "tier": "silver"}, False),
])
def test_claim_paths_and_list_claims(tmp_path, secret_env, when, payload, held):
    rules = rules_with(tmp_path, secret_env, when=when)
    assert (outcome(rules, req(hs256(claims(**payload))))[0] == "admin") is held


def test_resolve_claim_directly():
    c = {"a": {"b": [10, {"c": "deep"}]}, "x.y": 1}
    assert jwtauth.values_at(c, "a.b.1.c") == ["deep"]
    assert jwtauth.values_at(c, "a.b") == [10, {"c": "deep"}]
    assert jwtauth.values_at(c, "x.y") == [1]
    assert jwtauth.values_at(c, "a.nope") == []
    assert jwtauth.values_at(c, "a.b.7") == []


def test_split_by_jwt_claim_uses_verified_claims_only(tmp_path, secret_env):
    rules = rules_with(tmp_path, secret_env, when="{jwt: {role: admin}}")
    split = type("S", (), {"kind": "jwt", "key": "sub"})()
    assert split_key(split, req(hs256(claims(sub="alice"))), rules) == "alice"
    assert split_key(split, req(forged(claims(sub="alice"))), rules) is None
    assert split_key(split, req(None), rules) is None


# -- verify: false ----------------------------------------------------------------------------------
def test_verify_false_decodes_without_checking_and_warns_at_load(tmp_path):
    rules = rules_with(tmp_path, "{verify: false}")
    (w,) = [w for w in rules.warnings if "verify is false" in str(w)]
    assert (w.line, w.col) == (3, 17)
    assert "NOT checked" in w.message
    assert outcome(rules, req(hs256(claims(role="admin"), secret="anything-at-all-anything-at-all!")))[0] == "admin"
    assert outcome(rules, req(alg_none(claims(role="admin"))))[0] == "admin"
    assert outcome(rules, req(hs256(claims(role="admin", exp=1))))[0] == "admin"
    assert outcome(rules, req("garbage"))[1] == "jwt role: the token was rejected: malformed token"


def test_verify_false_warning_reaches_the_addon_log():
    """mitm.py logs every rules warning at load: the warning is a plain located Problem."""
    from condroute.errors import Problem
    from condroute.rules import load_rules_text
    rules = load_rules_text("version: 1\nsettings: {jwt: {verify: false}}\nroutes: []\n", "r.yaml")
    assert [type(w) for w in rules.warnings] == [Problem]
    assert str(rules.warnings[0]).startswith("r.yaml:2:26: settings.jwt.verify is false")


# -- per request, once, and only when needed; the cache ---------------------------------------------------
def test_claims_are_decoded_once_per_request_and_only_when_needed(tmp_path, secret_env):
    rules = rules_with(tmp_path, secret_env, when="{jwt: {role: admin, tier: gold}}",
                       extra_backends="      - {name: second, when: {jwt: {role: viewer}}, respond: {status: 200}}\n")
    s = rules.settings.jwt
    decide(rules, req(hs256(claims(role="other"))))
    assert s.verifications == 1
    # an unconditional backend before any jwt condition: the token is never looked at
    rules2 = rules_with(tmp_path, secret_env, when="{header: {X-Skip: '1'}}", name="r2.yaml",
                        extra_backends="      - {name: second, when: {jwt: {role: viewer}}, respond: {status: 200}}\n")
    d = decide(rules2, req(hs256(claims(role="viewer")), extra=[("X-Skip", "1")]))
    assert d.backend == "admin"
    assert rules2.settings.jwt.verifications == 0


def test_verified_tokens_are_cached_until_they_expire(tmp_path, secret_env, monkeypatch):
    rules = rules_with(tmp_path, secret_env)
    s = rules.settings.jwt
    now = time.time()
    t = hs256(claims(role="admin", exp=int(now) + 100))
    for _ in range(50):
        assert outcome(rules, req(t))[0] == "admin"
    assert s.verifications == 1
    monkeypatch.setattr(jwtauth, "_clock", lambda: now + 500)      # the token has expired meanwhile
    assert outcome(rules, req(t))[1] == "jwt role: the token was rejected: token expired"
    assert s.verifications == 1
    # a failed check is remembered too (a flood of the same forged token costs one verification)
    f = forged(claims(role="admin"))
    for _ in range(20):
        outcome(rules, req(f))
    assert s.verifications == 2


def test_the_token_cache_is_bounded(tmp_path, secret_env, monkeypatch):
    monkeypatch.setattr(jwtauth, "TOKEN_CACHE_SIZE", 8)
    rules = rules_with(tmp_path, secret_env)
    for i in range(40):
        assert outcome(rules, req(hs256(claims(role="admin", n=i))))[0] == "admin"
    assert len(rules.settings.jwt.cache) == 8


# -- load errors, located -------------------------------------------------------------------------------
BASE = "version: 1\nsettings:\n  jwt: {}\nroutes: []\n"


@pytest.mark.parametrize("jwt_settings, expected", [
    ("{verify: {secret: s}, nope: 1}", "3:30: unknown key 'nope' in settings.jwt"),
    ("{from: 'header:Authorization'}", "3:8: settings.jwt needs `verify`"),
    ("{verify: true}", "3:17: settings.jwt.verify must be false or a mapping"),
    ("{verify: {}}", "3:17: settings.jwt.verify needs a key"),
    ("{verify: {secret: a, public_key_file: k.pem}}", "3:29: settings.jwt.verify: use only one of secret, public_key_file"),
    ("{verify: {secret_env: CONDROUTE_SURELY_UNSET_VAR}}", "3:30: settings.jwt.verify.secret_env: the environment variable CONDROUTE_SURELY_UNSET_VAR is not set"),
    ("{verify: {public_key_file: missing.pem}}", "3:35: settings.jwt.verify.public_key_file: no such file:"),
    ("{verify: {jwks_file: missing.json}}", "3:29: settings.jwt.verify.jwks_file: no such file:"),
    ("{from: 'query:t', verify: false}", "3:15: settings.jwt.from 'query:t': expected header:NAME"),
    ("{from: 'body:x', verify: false}", "3:15: settings.jwt.from 'body:x': expected header:NAME (e.g. header:Authorization) or cookie:NAME"),
    ("{verify: {secret: s, leeway: -1}}", "3:37: settings.jwt.verify.leeway must be a number of seconds"),
    ("{verify: {secret: s, issuer: 5}}", "3:37: settings.jwt.verify.issuer must be a string or a list of strings"),
    ("{verify: {secret: s, algorithms: [RS256]}}", "3:41: settings.jwt.verify.algorithms: RS256 cannot be used with the configured key"),
    ("{verify: {secret: s, audiences: x}}", "3:29: unknown key 'audiences' in settings.jwt.verify"),
])
def test_settings_errors_are_located(tmp_path, jwt_settings, expected):
    errs = errors_of(tmp_path, BASE.replace("{}", jwt_settings, 1))
    assert any(e.split("rules.yaml:", 1)[1].startswith(expected) for e in errs), errs


@pytest.mark.parametrize("content, expected", [
    (b"not a key", "is not a PEM public key or certificate"),
    (pem_private(RSA_PRIVATE), "is not a PEM public key or certificate (it holds a private key: give the public key)"),
])
def test_bad_public_key_file(tmp_path, content, expected):
    (tmp_path / "k.pem").write_bytes(content)
    errs = errors_of(tmp_path, BASE.replace("{}", "{verify: {public_key_file: k.pem}}", 1))
    assert len(errs) == 1 and ":3:35: settings.jwt.verify.public_key_file:" in errs[0] and expected in errs[0]


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not valid JSON"),
    ('{"keys": []}', "is not a JWK set"),
    ('[1, 2]', "is not a JWK set"),
    ('{"keys": [{"kty": "XYZ", "kid": "a"}]}', "key 1 (kty 'XYZ') cannot be used"),
    ('{"keys": [{"kty": "RSA", "kid": "a", "n": "AQAB"}]}', "key 1 (kty 'RSA') cannot be used"),
])
def test_bad_jwks_file(tmp_path, content, expected):
    (tmp_path / "jwks.json").write_text(content)
    errs = errors_of(tmp_path, BASE.replace("{}", "{verify: {jwks_file: jwks.json}}", 1))
    assert len(errs) == 1 and ":3:29: settings.jwt.verify.jwks_file:" in errs[0] and expected in errs[0], errs


def test_jwt_condition_needs_settings_jwt(tmp_path):
    errs = errors_of(tmp_path, """version: 1
routes:
  - name: r
    backends:
      - {name: a, when: {jwt: {role: admin}}, respond: {status: 200}}
""")
    assert errs == [f"{tmp_path / 'rules.yaml'}:5:31: jwt conditions need settings.jwt: where the token is and how it "
                    "is verified (verify: {secret_env: VAR}, {public_key_file: F}, {jwks_file: F}, or false to only decode)"]


def test_a_secret_never_appears_in_errors_or_reasons(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDROUTE_TEST_JWT_SECRET", SECRET)
    rules = rules_with(tmp_path, "{verify: {secret_env: CONDROUTE_TEST_JWT_SECRET}}")
    for token in (hs256(claims(role="x")), forged(claims(role="admin")), "garbage"):
        d = decide(rules, req(token))
        text = json.dumps(d.to_dict()) + d.comment() + d.error_body()
        assert SECRET not in text and token not in text
