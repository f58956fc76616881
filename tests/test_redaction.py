"""Secrets never reach a reason (issue 11, item 10): not the token settings.jwt reads, not a long
cookie value, not a secret-named query parameter, not a header named like a secret - in the engine's
reasons, flow.comment, the log, the 502 body or `condroute explain`. RE2 (under cel-python's
matches()) does not print a bad pattern to stderr, and CEL errors never carry request values."""
from __future__ import annotations

import logging
import textwrap

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from condroute.cel.engines import available_engines
from condroute.cel.policy import compile_policy
from condroute.cli.main import main
from condroute.engine import decide
from condroute.explain import build_request
from condroute.mitm.addon import ConditionalRouting
from condroute import render
from condroute.redact import redact_query_string, secret_name
from condroute.rules import load_rules_text
from test_addon import make_flow

TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1c2VyLTQyIn0.c2VjcmV0LXNpZ25hdHVyZQ"   # what must never show
LONG_COOKIE = "prefs-7c1e4a9b2f"          # 16 characters: longer than COOKIE_SHOWN_CHARS
QUERY_SECRET = "qs-s3cr3t-value"
HEADER_SECRET = "hdr-s3cr3t-value"
SECRETS = (TOKEN, LONG_COOKIE, QUERY_SECRET, HEADER_SECRET)


def rules_text(source: str) -> str:
    return textwrap.dedent(f"""\
        version: 1
        settings:
          on_no_match: error
          jwt: {{from: "{source}", verify: false}}
        routes:
          - name: strict
            match: {{host: strict.example}}
            backends:
              - {{name: beta, when: {{cookie: {{session: {{prefix: beta-}}}}}}, upstream: http://127.0.0.1:9001}}
              - {{name: tok, when: {{header: {{X-Token: {{prefix: t-}}}}}}, upstream: http://127.0.0.1:9001}}
              - {{name: theme, when: {{cookie: {{theme: dark}}}}, upstream: http://127.0.0.1:9001}}
              - {{name: ab, when: {{cookie: {{ab: "1"}}}}, upstream: http://127.0.0.1:9001}}
              - {{name: q, when: {{query: {{access_token: abc}}}}, upstream: http://127.0.0.1:9001}}
              - {{name: auth, when: {{header: {{X-Auth-Token: abc}}}}, upstream: http://127.0.0.1:9001}}
              - {{name: cel, when: {{cel: "int(request.cookies.session) > 0 || getHeader('X-Token').matches('^t-')"}},
                 upstream: http://127.0.0.1:9001}}
        """)


HEADERS = {"X-Token": TOKEN, "Cookie": f"session={TOKEN}; theme={LONG_COOKIE}; ab=2",
           "X-Auth-Token": HEADER_SECRET}
URL = f"http://strict.example/cart?access_token={QUERY_SECRET}&page=2"


def assert_clean(text: str) -> None:
    for s in SECRETS:
        assert s not in text
    assert TOKEN[:20] not in text          # not even the first 64 characters a reason would show


@pytest.mark.parametrize("source", ["cookie:session", "header:X-Token"])
def test_the_engines_reasons_show_no_secret(tmp_path, source):
    rules = load_rules_text(rules_text(source), str(tmp_path / "rules.yaml"))
    req = build_request(URL, headers=list(HEADERS.items())[:1] + [("X-Auth-Token", HEADER_SECRET)],
                        cookies=[f"session={TOKEN}", f"theme={LONG_COOKIE}", "ab=2"])
    d = decide(rules, req, explain=True)
    reasons = {a.backend: a.reason for a in d.attempts}
    assert set(reasons) == {"beta", "tok", "theme", "ab", "q", "auth", "cel"}
    for text in [*reasons.values(), d.comment(), d.error_body(), d.summary(), d.request]:
        assert_clean(text)
    assert reasons["beta"] == 'cookie session is <redacted>, wanted prefix "beta-"'
    assert reasons["tok"] == 'header X-Token is <redacted>, wanted prefix "t-"'
    assert reasons["theme"] == 'cookie theme is "<redacted, 16 chars>", wanted "dark"'
    assert reasons["ab"] == 'cookie ab is "2", wanted "1"'           # a short value stays readable
    assert reasons["q"] == 'query access_token is <redacted>, wanted "abc"'
    assert reasons["auth"] == 'header X-Auth-Token is <redacted>, wanted "abc"'
    assert "access_token=<redacted>&page=2" in d.request


@pytest.mark.parametrize("source", ["cookie:session", "header:X-Token"])
async def test_the_addon_shows_no_secret(tmp_path, source, caplog):
    caplog.set_level(logging.DEBUG)
    p = tmp_path / "rules.yaml"
    p.write_text(rules_text(source))
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=str(p), condroute_log="verbose")
        f = make_flow(URL, headers=HEADERS)
        await tctx.cycle(addon, f)
    assert f.response is not None and f.response.status_code == 502
    body = f.response.text
    assert "cookie session is <redacted>" in body and "header X-Token is <redacted>" in body
    assert "skipped" in f.comment
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "skipped beta: cookie session is <redacted>" in logged
    for text in (body, f.comment, logged, str(f.metadata.get("condroute"))):
        assert_clean(text)


@pytest.mark.parametrize("source", ["cookie:session", "header:X-Token"])
@pytest.mark.parametrize("json_out", [False, True])
def test_explain_shows_no_secret(tmp_path, capsys, source, json_out):
    p = tmp_path / "rules.yaml"
    p.write_text(rules_text(source))
    args = ["explain", str(p), URL, "-H", f"X-Token: {TOKEN}", "-H", f"X-Auth-Token: {HEADER_SECRET}",
            "-b", f"session={TOKEN}", "-b", f"theme={LONG_COOKIE}", "-b", "ab=2"] + (["--json"] if json_out else [])
    main(args)
    out, err = capsys.readouterr()
    assert "<redacted" in out
    assert_clean(out + err)


@pytest.mark.parametrize("engine", ["cel-python", "cel-expr-python"])
def test_cel_errors_carry_no_request_value(engine, tmp_path):
    if engine not in available_engines():
        pytest.skip(f"{engine} is not installed")
    env = load_rules_text(rules_text("cookie:session"), str(tmp_path / "rules.yaml"))
    req = build_request(URL, cookies=[f"session={TOKEN}"], headers=[("X-Token", TOKEN)])
    for text in ["int(request.cookies.session) > 0", "getCookie('session') + 1 == 2", "request.cookies.session < 1",
                 "{'a': 1}[getHeader('X-Token')] == 1", "req_headers[getHeader('X-Token')][0] == 'x'",
                 "[getCookie('session')].all(x, int(x) > 0)", "duration(getHeader('X-Token')) > duration('1s')",
                 "getHeader('X-Token').matches(getHeader('X-Token') + '(')"]:
        pol, problems = compile_policy(text, engine)
        assert not problems
        reason = pol.evaluate(req, env)
        assert reason is not None and "could not be evaluated" in reason, reason
        assert_clean(reason)


def test_re2_does_not_print_a_bad_pattern_from_a_request(capfd, tmp_path):
    """cel-python's matches() compiled request-supplied patterns with RE2's default options, and
    RE2 logged "Error parsing '<the pattern>'" to file descriptor 2 through absl."""
    env = load_rules_text(rules_text("cookie:session"), str(tmp_path / "rules.yaml"))
    pol, _ = compile_policy("req_path.matches(getHeader('X-Pattern')) || matches('x', getCookie('session'))",
                            "cel-python")
    pattern = f"({TOKEN}"     # unbalanced: a bad pattern
    req = build_request("http://h/p", headers=[("X-Pattern", pattern)], cookies=[f"session=[{TOKEN}"])
    capfd.readouterr()
    reason = pol.evaluate(req, env)
    out, err = capfd.readouterr()
    assert reason is not None and reason.endswith("could not be evaluated: bad regular expression")
    assert TOKEN not in out + err
    assert "Error parsing" not in err


@pytest.mark.parametrize("name, secret", [
    ("access_token", True), ("token", True), ("api_key", True), ("apiKey", True), ("key", True), ("password", True),
    ("client_secret", True), ("sig", True), ("X-Amz-Signature", True), ("X-Auth-Token", True), ("session_id", True),
    ("user[password]", True), ("JSESSIONID", True),
    ("page", False), ("monkey", False), ("X-Ab-Test", False), ("theme", False), ("sort", False), ("signal", False),
])
def test_secret_names(name, secret):
    assert secret_name(name) is secret


def test_query_strings_are_redacted_by_name():
    assert redact_query_string("a=1&access_token=xyz&b=&token") == "a=1&access_token=<redacted>&b=&token"
    assert redact_query_string("acc%65ss_token=xyz") == "acc%65ss_token=<redacted>"     # decoded names too
    assert redact_query_string("page=2") == "page=2"


def test_a_routed_requests_log_line_and_comment_redact_the_forwarded_query(tmp_path):
    # the target URL carries the client's query string: its secret-named values are not logged
    rules = load_rules_text("routes:\n  - name: r\n    backends: [{name: b, upstream: http://127.0.0.1:9001/base}]\n",
                            str(tmp_path / "rules.yaml"))
    d = decide(rules, build_request(URL))
    assert d.url == f"http://127.0.0.1:9001/base/cart?access_token={QUERY_SECRET}&page=2"   # what is forwarded
    line, comment = render.summary(d), render.comment(d)
    assert "access_token=<redacted>&page=2" in line and "127.0.0.1:9001/base/cart" in line
    assert_clean(line)
    assert_clean(comment)
    assert_clean(render.timeout_error(d, 2.0))
