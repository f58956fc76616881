"""Real KrakenD files (issue 14 §3): condroute's rewritten derivatives of the KrakenD playground,
the AI-gateway example and the schema's full test-case (tests/fixtures/krakend/real, SOURCE.md
says why they are rewritten) pass their cases through `condroute check`; the unmodified originals
load when CONDROUTE_KRAKEND_FIXTURES points at them; and a real mitmdump shows that a forged X-Role
is ignored while a verified token routes."""
from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import httpx
import jwt
import pytest

from condroute.cli.main import main
from condroute.rules import load_rules

REAL = Path(__file__).resolve().parent / "fixtures" / "krakend" / "real"
REALM_KEY = (REAL / "keys" / "realm-private.pem").read_bytes()
KID = json.loads((REAL / "keys" / "realm.jwks.json").read_text())["keys"][0]["kid"]


def check(capsys, rules: Path, cases: Path) -> tuple[int, list[str]]:
    rc = main(["check", str(rules), str(cases)])
    out, err = capsys.readouterr()
    return rc, (out + err).splitlines()


def token(roles: list[str] | None, aud: str = "gateway", **kw) -> str:
    claims = {"aud": aud, "exp": 4102444800, "email": "t@example.test", **kw}
    if roles is not None:
        claims["realm_access"] = {"roles": roles}
    return jwt.encode(claims, REALM_KEY, "RS256", headers={"kid": KID})


@pytest.mark.parametrize("rules, cases, n", [
    ("playground.condroute.yaml", "playground.cases.yaml", 35),
    ("ai-gateway.condroute.yaml", "ai-gateway.cases.yaml", 5),
    ("schema-test.json", "schema-test.cases.yaml", 10),
])
def test_the_rewritten_real_files_pass_their_cases(capsys, rules, cases, n):
    rc, lines = check(capsys, REAL / rules, REAL / cases)
    assert rc == 0, "\n".join(lines)
    assert lines[-1] == f"{n} passed, 0 failed"
    assert sum(x.startswith("pass ") for x in lines) == n


def test_a_case_that_trusts_the_forged_header_fails(capsys, tmp_path):
    """The cases can fail: expecting the client's X-Role to win is reported as a failure."""
    cases = tmp_path / "forged.yaml"
    cases.write_text(textwrap.dedent(f"""\
        - name: forged
          request: {{method: POST, url: "http://localhost:8080/chat/role", headers: {{X-Role: moderator}},
                    jwt: "{token(['reader'])}"}}
          expect: {{backend: backend-1}}
        """))
    shutil.copy(REAL / "playground.condroute.yaml", tmp_path)
    shutil.copy(REAL / "playground.json", tmp_path)
    shutil.copytree(REAL / "keys", tmp_path / "keys")
    rc, lines = check(capsys, tmp_path / "playground.condroute.yaml", cases)
    assert rc == 1
    assert lines[-1] == "0 passed, 1 failed"
    assert 'backend: wanted "backend-1", got "backend-2"' in lines[0]


def test_the_fixture_tokens_are_the_committed_keys_own():
    """make.py wrote the cases with tokens of keys/realm-private.pem: a regenerated key without
    regenerated cases would fail here first."""
    text = (REAL / "playground.cases.yaml").read_text()
    pub = json.loads((REAL / "keys" / "realm.jwks.json").read_text())["keys"][0]
    key = jwt.PyJWK(pub).key
    line = next(x for x in text.splitlines() if "a verified moderator token" in x)
    tok = text.split(line, 1)[1].split('jwt: "', 1)[1].split('"', 1)[0]
    claims = jwt.decode(tok, key, algorithms=["RS256"], audience="gateway")
    assert claims["realm_access"]["roles"][0] == "moderator"


# -- the unmodified originals, when someone has them ---------------------------------------------------
ORIGINALS = os.environ.get("CONDROUTE_KRAKEND_FIXTURES", "")
originals = pytest.mark.skipif(
    not ORIGINALS, reason="CONDROUTE_KRAKEND_FIXTURES is not set: it names a folder with the unlicensed "
                          "originals (playground.json, ai-gateway.json, schema-all.json; see "
                          "tests/fixtures/krakend/real/SOURCE.md)")


def _original(name: str) -> Path:
    p = Path(ORIGINALS) / name
    if not p.is_file():
        pytest.skip(f"{p} is not there (see tests/fixtures/krakend/real/SOURCE.md)")
    return p


def _wrap(tmp_path: Path, krakend: Path) -> Path:
    shutil.copy(krakend, tmp_path / "krakend.json")
    w = tmp_path / "wrap.yaml"
    w.write_text(textwrap.dedent(f"""\
        version: 1
        settings: {{on_no_match: error, jwt: {{verify: {{jwks_file: {REAL / 'keys' / 'realm.jwks.json'}}}}}}}
        imports: [krakend.json]
        routes: []
        """))
    return w


@originals
def test_the_original_playground_loads_and_routes(capsys, tmp_path):
    """krakend/playground-enterprise config/krakend/krakend.json, unmodified: 38 endpoints, the 3
    with dynamic routing skipped (located), the 3 conditional ones route as KrakenD would."""
    orig = _original("playground.json")
    r = load_rules(str(orig))
    assert len(r.routes) == 38
    skipped = [(w.line, w.col) for w in r.warnings if ": skipped: backend-" in w.message]
    assert skipped == [(261, 26), (1125, 26), (1153, 26)]
    cases = tmp_path / "cases.yaml"
    url = "http://localhost:8080"
    cases.write_text(textwrap.dedent(f"""\
        - request: {{method: POST, url: "{url}/llm-routing", headers: {{X-Model: openai}}}}
          expect: {{backend: backend-2}}
        - request: {{method: POST, url: "{url}/llm-conditional", jwt: "{token(['moderator'], aud='playground')}"}}
          expect: {{backend: backend-1, upstream: "https://api.openai.com"}}
        - request: {{method: POST, url: "{url}/llm-conditional", headers: {{X-Role: moderator}},
                    jwt: "{token(['reader'], aud='playground')}"}}
          expect: {{backend: backend-2}}
        - request: {{method: POST, url: "{url}/llm-conditional", headers: {{X-Role: moderator}}}}
          expect: {{status: 401}}
        - request: {{method: POST, url: "{url}/prompt-guardrail-intelligent?Resp0_label=BENIGN"}}
          expect: {{backend: backend-1}}
        - request: {{url: "{url}/sequential"}}
          expect: {{backend: skipped, status: 502}}
        """))
    rc, lines = check(capsys, _wrap(tmp_path, orig), cases)
    assert rc == 0 and lines[-1] == "6 passed, 0 failed", "\n".join(lines)


@originals
def test_the_original_ai_gateway_example_routes_on_the_verified_claim(capsys, tmp_path):
    """krakend/examples ai_gateway/llm krakend.tmpl rendered with its empty .env."""
    orig = _original("ai-gateway.json")
    cases = tmp_path / "cases.yaml"
    dev = token(None, aud="playground", position="developer")
    sup = token(None, aud="playground", position="support")
    cases.write_text(textwrap.dedent(f"""\
        - request: {{method: POST, url: "http://localhost:8080/", jwt: "{dev}"}}
          expect: {{backend: backend-1}}
        - request: {{method: POST, url: "http://localhost:8080/", headers: {{X-Position: developer}}, jwt: "{sup}"}}
          expect: {{backend: backend-2}}
        - request: {{method: POST, url: "http://localhost:8080/", headers: {{X-Position: developer}}}}
          expect: {{status: 401}}
        """))
    rc, lines = check(capsys, _wrap(tmp_path, orig), cases)
    assert rc == 0 and lines[-1] == "3 passed, 0 failed", "\n".join(lines)


@originals
def test_the_original_schema_test_case_loads(tmp_path):
    """krakend/krakend-schema test/v2.13/all.json: its tests[0].data, as KrakenD's schema test
    declares it valid; its martian modifiers are each applied or warned about."""
    doc = json.loads(_original("schema-all.json").read_text())
    f = tmp_path / "krakend.json"
    f.write_text(json.dumps(doc["tests"][0]["data"], indent=2))
    r = load_rules(str(f))
    assert len(r.routes) == 25
    text = "\n".join(str(w) for w in r.warnings)
    for m in ("header.Append", "header.Copy", "header.Id", "header.Filter", "priority.Group", "body.Modifier"):
        assert f"modifier/martian: {m}" in text
    got = {x.name: (x.backends[0].set_headers, x.backends[0].remove_headers) for x in r.routes}
    assert got["GET /test/header.Blacklist"][1] == ("X-Some", "User-Agent", "X-Forwarded-Host", "X-Forwarded-For")
    assert got["GET /test/fifo.Group"][0] == (("X-Martian", "true"),)


# -- live, through a real mitmdump ---------------------------------------------------------------------
def test_live_a_forged_x_role_is_ignored_and_a_real_token_routes(echo, rules_file, proxy):
    openai, gemini = echo("openai"), echo("gemini")
    shutil.copy(REAL / "playground.json", Path(rules_file("", "unused.yaml")).parent / "playground.json")
    rules = rules_file(f"""\
        version: 1
        settings:
          on_no_match: error
          jwt: {{verify: {{jwks_file: {REAL / 'keys' / 'realm.jwks.json'}}}}}
        upstreams:
          api.openai.com: {openai}
          generativelanguage.googleapis.com: {gemini}
        imports: [playground.json]
        routes: []
        """)
    p = proxy(rules)
    url = "http://localhost:8080/chat/role"
    with httpx.Client(proxy=p.url, timeout=10, trust_env=False) as c:
        forged = c.post(url, headers={"X-Role": "moderator", "Authorization": f"Bearer {token(['reader'])}"})
        real = c.post(url, headers={"Authorization": f"Bearer {token(['moderator'])}"})
        none = c.post(url, headers={"X-Role": "moderator"})
    assert forged.status_code == 200, forged.text
    body = forged.json()
    assert body["backend"] == "gemini"
    assert body["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    # the upstream gets X-Role as KrakenD sets it from the verified token, not the client's
    assert {k.lower(): v for k, v in body["headers"].items()}["x-role"] == "reader"
    assert real.status_code == 200 and real.json()["backend"] == "openai"
    assert {k.lower(): v for k, v in real.json()["headers"].items()}["x-role"] == "moderator"
    assert none.status_code == 401
