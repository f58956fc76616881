"""The condroute command line: validate, explain, check, schema (in-process via main(argv), and a few
through the installed console script). Everything offline except the round trip through mitmdump."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from condroute.cli import main as cli
from condroute.cli.main import main
from condroute.engine import decide
from condroute.explain import build_request
from condroute.cli.lint import route_covers
from condroute.rules import load_rules, load_rules_text
from helpers import ROOT

CONDROUTE = Path(sys.executable).with_name("condroute")

SHOP = """\
version: 1
upstreams:
  stable: http://127.0.0.1:9001
  canary: http://127.0.0.1:9002/base
routes:
  - name: api
    match: {path: /api/*}
    backends:
      - {name: api-default, upstream: stable}
  - name: checkout
    match:
      host: shop.example
      methods: [GET, POST]
      path: /checkout/{id}
    backends:
      - name: force-b
        when: {header: {X-Ab-Test: B}}
        upstream: canary
        path: /v2/checkout/{id}
        set_headers: {X-Variant: B}
        remove_headers: [X-Debug]
      - name: office
        when: {client_ip: 10.0.0.0/8}
        upstream: canary
      - name: blocked
        when: {cookie: {banned: "1"}}
        respond: {status: 403, body: "go away"}
      - name: default
        fallback: true
        upstream: stable
"""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    p = tmp_path / "shop.yaml"
    p.write_text(SHOP)
    return p


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# ==================================================================================================
# validate
# ==================================================================================================
def test_validate_good_file_prints_the_summary_line(capsys, shop):
    rc, out, err = run(capsys, "validate", shop)
    assert rc == 0
    assert out == f"{shop}: OK: 2 routes, 5 backends, 2 upstreams\n"
    assert err == ""


def test_validate_singular_summary_and_several_files(capsys, tmp_path, shop):
    one = write(tmp_path, "one.yaml", """\
        version: 1
        upstreams: {a: "http://127.0.0.1:9001"}
        routes: [{name: r, backends: [{name: b, upstream: a}]}]
        """)
    rc, out, err = run(capsys, "validate", one, shop)
    assert rc == 0
    assert out.splitlines() == [f"{one}: OK: 1 route, 1 backend, 1 upstream",
                                f"{shop}: OK: 2 routes, 5 backends, 2 upstreams"]


def test_validate_bad_file_gives_located_errors_and_exit_1(capsys, tmp_path):
    bad = write(tmp_path, "bad.yaml", """\
        version: 1
        upstreams: {a: "http://127.0.0.1:9001"}
        routes:
          - name: r
            backends:
              - {name: b, upstream: a, colour: red}
              - {name: c, upstream: nope}
        """)
    rc, out, err = run(capsys, "validate", bad)
    assert rc == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"{bad}:6:32: unknown key 'colour' in a backend")
    assert lines[1].startswith(f"{bad}:7:29: unknown upstream 'nope'")
    assert len(lines) == 2


def test_validate_unreadable_rules_file_is_a_located_error_exit_1(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    rc, out, err = run(capsys, "validate", missing)
    assert rc == 1
    assert err == f"{missing}:1:1: cannot read the file: No such file or directory\n"


def test_validate_one_bad_file_of_two_exits_1_and_still_reports_the_good_one(capsys, tmp_path, shop):
    bad = write(tmp_path, "bad.yaml", "version: 1\nroutes: {}\n")
    rc, out, err = run(capsys, "validate", shop, bad)
    assert rc == 1
    assert out == f"{shop}: OK: 2 routes, 5 backends, 2 upstreams\n"
    assert err.startswith(f"{bad}:2:9: routes must be a list")


LINT = """\
version: 1
upstreams:
  a: http://127.0.0.1:9001
  b: http://127.0.0.1:9002
  unused: http://127.0.0.1:9003
routes:
  - name: api
    match: {host: "*.example.com", path: /api/*}
    backends:
      - name: first
        when: {header: {X-Ab-Test: B}}
        upstream: a
      - name: always
        upstream: b
      - name: never
        when: {cookie: {uid: "1"}}
        upstream: a
      - name: fb
        fallback: true
        upstream: a
  - name: api-v1
    match: {host: shop.example.com, methods: [GET], path: "/api/v1/{id}"}
    backends:
      - {name: x, upstream: a, remove_headers: [x-ab-test]}
  - name: split
    match: {path: /s}
    backends:
      - name: s
        when: {cookie: {UID: "2"}}
        split: {by: "cookie:uid", weights: {a: 0, b: 0}}
  - name: all
    backends: [{name: y, upstream: a}]
  - name: after-all
    match: {path: /zzz}
    backends: [{name: z, upstream: a}]
"""


def test_validate_warnings_are_located_and_exit_0(capsys, tmp_path):
    f = write(tmp_path, "lint.yaml", LINT)
    rc, out, err = run(capsys, "validate", f)
    assert rc == 0
    assert out == f"{f}: OK: 5 routes, 8 backends, 3 upstreams; 8 warnings\n"
    w = err.splitlines()
    assert w == [
        f"{f}:5:3: warning: upstream 'unused' is defined but no backend uses it",
        f"{f}:15:9: warning: backend 'never' of route 'api' can never be selected: the earlier backend 'always' "
        "(line 13) has no `when` and always holds",
        f"{f}:18:9: warning: fallback backend 'fb' of route 'api' can never be selected: backend 'always' "
        "(line 13) has no `when` and always holds",
        f"{f}:21:5: warning: route 'api-v1' can never own a request: the earlier route 'api' (line 7) comes first "
        "and its match (host and path) covers everything this route matches",
        f"{f}:24:49: warning: header name 'x-ab-test' is spelled 'X-Ab-Test' at line 11: header names ignore case, "
        "so both mean the same header, but one spelling is easier to read and search for",
        f"{f}:29:25: warning: cookie name 'UID' differs only in case from 'uid' at line 16: cookie names are "
        "case-sensitive, so these are two different cookies",
        f"{f}:30:44: warning: every weight of this split is 0: it picks among its upstreams evenly",
        f"{f}:33:5: warning: route 'after-all' can never own a request: the earlier route 'all' (line 31) comes "
        "first and it has no match and owns every request",
    ]


def test_validate_strict_turns_warnings_into_exit_1(capsys, tmp_path, shop):
    f = write(tmp_path, "lint.yaml", LINT)
    assert run(capsys, "validate", "--strict", f)[0] == 1
    assert run(capsys, "validate", "--strict", shop)[0] == 0


def test_validate_clean_file_has_no_warnings(capsys, shop):
    rc, out, err = run(capsys, "validate", shop)
    assert "warning" not in err and "warning" not in out


def test_validate_prints_load_warnings_from_the_loader(capsys, tmp_path):
    # a zero-weight split is also a loader warning: printed once, located, not twice
    f = write(tmp_path, "z.yaml", """\
        version: 1
        upstreams: {a: "http://127.0.0.1:9001", b: "http://127.0.0.1:9002"}
        routes:
          - name: r
            backends:
              - {name: s, split: {by: "cookie:uid", weights: {a: 0, b: 0}}}
        """)
    rules = load_rules(str(f))
    assert [(p.line, p.col) for p in rules.warnings] == [(6, 54)]
    rc, out, err = run(capsys, "validate", f)
    assert rc == 0
    assert err == f"{f}:6:54: warning: every weight of this split is 0: it picks among its upstreams evenly\n"
    assert out.endswith("; 1 warning\n")


def test_validate_zero_split_warning_from_lint_alone(tmp_path):
    # the lint check stands on its own (should the loader ever drop its warning)
    from condroute.cli.lint import lint
    f = write(tmp_path, "z.yaml", """\
        version: 1
        upstreams: {a: "http://127.0.0.1:9001"}
        routes:
          - name: r
            backends:
              - {name: s, split: {by: "cookie:uid", weights: {a: 0}}}
        """)
    rules = load_rules(str(f))
    object.__setattr__(rules, "warnings", ())
    found = lint(rules)
    assert [(p.line, p.col, "every weight" in p.message) for p in found] == [(6, 54, True)]


def test_validate_krakend_file_warnings_fall_back_to_lines(capsys, tmp_path):
    f = tmp_path / "krakend.json"
    f.write_text(json.dumps({"version": 3, "endpoints": [{"endpoint": "/a", "method": "GET", "backend": [
        {"host": ["http://127.0.0.1:9001"], "url_pattern": "/a"},
        {"host": ["http://127.0.0.1:9002"], "url_pattern": "/b"}]}]}, indent=1))
    rc, out, err = run(capsys, "validate", f)
    assert rc == 0
    assert out.startswith(f"{f}: OK: 1 route, 2 backends, 2 upstreams; ")
    assert any(line.startswith(f"{f}:") and "backend 'backend-2' of route 'GET /a' can never be selected" in line
               for line in err.splitlines())


R = "version: 1\nupstreams: {a: 'http://127.0.0.1:9001'}\nroutes:\n"


def _routes(*matches: str):
    text = R + "".join(f"  - name: r{i}\n    {m}\n    backends: [{{name: b, upstream: a}}]\n"
                       for i, m in enumerate(matches))
    return load_rules_text(text).routes


@pytest.mark.parametrize("outer, inner, covered", [
    ("match: {path: /api/*}", "match: {path: /api/users}", True),
    ("match: {path: /api/*}", "match: {path: /api}", True),
    ("match: {path: /api/*}", "match: {path: '/api/{id}/x'}", True),
    ("match: {path: /api/*}", "match: {path: /api/v1/*}", True),
    ("match: {path: /api/*}", "match: {path: /apix}", False),
    ("match: {path: /api/*}", "match: {path: '/api{x}'}", False),
    ("match: {path: /api/*}", "match: {path: {regex: '^/api/'}}", False),
    ("match: {path: /api/*}", "match: {host: a.example}", False),          # inner: any path
    ("match: {path: /*}", "match: {path: /x/y}", True),
    ("match: {path: '/u/{id}'}", "match: {path: /u/42}", True),
    ("match: {path: '/u/{id}'}", "match: {path: '/u/{uid}'}", True),
    ("match: {path: '/u/{id}'}", "match: {path: /u/42/x}", False),
    ("match: {path: '/u/{id}'}", "match: {path: '/u/{id}/*'}", False),
    ("match: {path: {regex: '^/a'}}", "match: {path: {regex: '^/a'}}", True),
    ("match: {path: {regex: '^/a'}}", "match: {path: /a}", False),       # not provable: stay quiet
    ("match: {host: '*.example.com'}", "match: {host: shop.example.com}", True),
    ("match: {host: '*.example.com'}", "match: {host: '*.eu.example.com'}", True),
    ("match: {host: '*.example.com'}", "match: {host: example.com}", False),
    ("match: {host: '*.example.com'}", "match: {path: /x}", False),          # inner: any host
    ("match: {host: [a.example, b.example]}", "match: {host: [b.example, a.example]}", True),
    ("match: {host: [a.example]}", "match: {host: [a.example, c.example]}", False),
    ("match: {methods: [GET, POST]}", "match: {methods: [GET]}", True),
    ("match: {methods: [GET]}", "match: {methods: [GET, POST]}", False),
    ("match: {methods: [GET]}", "match: {path: /x}", False),                 # inner: any method
    ("match: {path: /api/*, header: {X-Beta: '1'}}", "match: {path: /api/x}", False),   # extra condition
    ("match: {path: /a}", "match: {path: /a, header: {X-Beta: '1'}}", True),  # inner's extra condition narrows
    ("match: {path: /a}", "match: {path: /b}", False),
    ("match: {host: x.example, path: /a/*}", "match: {host: x.example, path: /a/b, methods: [GET]}", True),
])
def test_route_covers_is_conservative(outer, inner, covered):
    r0, r1 = _routes(outer, inner)
    assert (route_covers(r0, r1) is not None) is covered


def test_validate_no_shadow_warning_for_an_earlier_route_with_extra_conditions(capsys, tmp_path):
    f = write(tmp_path, "ok.yaml", """\
        version: 1
        upstreams: {a: "http://127.0.0.1:9001", b: "http://127.0.0.1:9002"}
        routes:
          - name: beta
            match: {path: /api/*, header: {X-Beta: "1"}}
            backends: [{name: b, upstream: b}]
          - name: api
            match: {path: /api/*}
            backends:
              - {name: x, when: {query: {v: "2"}}, upstream: b}
              - {name: y, fallback: true, upstream: a}
        """)
    rc, out, err = run(capsys, "validate", f)
    assert (rc, err) == (0, "")


def test_validate_warns_about_a_fallback_written_before_an_unconditional_backend(capsys, tmp_path):
    f = write(tmp_path, "fb.yaml", """\
        version: 1
        upstreams: {a: "http://127.0.0.1:9001"}
        routes:
          - name: r
            backends:
              - {name: fb, fallback: true, upstream: a}
              - {name: always, upstream: a}
        """)
    rc, out, err = run(capsys, "validate", f)
    assert rc == 0
    assert err == (f"{f}:6:9: warning: fallback backend 'fb' of route 'r' can never be selected: backend "
                   "'always' (line 7) has no `when` and always holds\n")


def test_validate_upstream_used_only_by_a_split_is_used(capsys, tmp_path):
    f = write(tmp_path, "s.yaml", """\
        version: 1
        upstreams: {a: "http://127.0.0.1:9001", b: "http://127.0.0.1:9002"}
        routes:
          - name: r
            backends: [{name: s, split: {by: client_ip, weights: {a: 1, b: 1}}}]
        """)
    assert run(capsys, "validate", f)[2] == ""


# ==================================================================================================
# explain
# ==================================================================================================
def test_explain_human_table(capsys, shop):
    rc, out, err = run(capsys, "explain", shop, "http://shop.example/checkout/42?x=1", "-H", "X-Ab-Test: B",
                       "-H", "X-Debug: 1")
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        "request   GET http://shop.example/checkout/42?x=1",
        "no match  api: path '/checkout/42' does not match /api/*",
        "route     checkout (line 10)",
        'backend   ✓ force-b  when holds: header X-Ab-Test "B"',
        "backend   · office   not tried: an earlier backend was selected",
        "backend   · blocked  not tried: an earlier backend was selected",
        "backend   · default  not tried: an earlier backend was selected",
        "upstream  canary (http://127.0.0.1:9002/base)",
        "url       http://127.0.0.1:9002/base/v2/checkout/42?x=1",
        "set       Host: 127.0.0.1:9002",
        "set       X-Variant: B",
        "removed   X-Debug",
    ]


def test_explain_skipped_backends_show_the_engines_reasons(capsys, shop):
    rc, out, _ = run(capsys, "explain", shop, "--method", "post", "http://shop.example/checkout/7",
                     "-H", "X-Ab-Test: A")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "request   POST http://shop.example/checkout/7"
    assert 'backend   ✗ force-b  header X-Ab-Test is "A", wanted "B"' in lines
    assert "backend   ✗ office   client IP is unknown" in lines
    assert 'backend   ✗ blocked  cookie banned is missing, wanted "1"' in lines
    assert "backend   ✓ default  fallback: no other backend held" in lines
    assert "url       http://127.0.0.1:9001/checkout/7" in lines


def test_explain_client_ip_sets_the_peer(capsys, shop):
    rc, out, _ = run(capsys, "explain", shop, "http://shop.example/checkout/7", "--client-ip", "10.1.2.3")
    assert rc == 0
    assert "backend   ✓ office   when holds: client IP in 10.0.0.0/8" in out.splitlines()
    rc, out, _ = run(capsys, "explain", shop, "http://shop.example/checkout/7", "--client-ip", "192.0.2.1")
    assert "backend   ✗ office   client IP 192.0.2.1 is not in 10.0.0.0/8" in out.splitlines()


def test_explain_cookie_and_respond(capsys, shop):
    rc, out, _ = run(capsys, "explain", shop, "http://shop.example/checkout/7", "--cookie", "a=b",
                     "--cookie", "banned=1")
    assert rc == 0
    lines = out.splitlines()
    assert 'backend   ✓ blocked  when holds: cookie banned "1"' in lines
    assert lines[-1] == 'respond   403 "go away"'


def test_explain_no_route_is_passthrough_with_the_original_url(capsys, shop):
    rc, out, _ = run(capsys, "explain", shop, "http://other.example/x?y=1")
    assert rc == 0
    assert out.splitlines() == [
        "request   GET http://other.example/x?y=1",
        "no match  api: path '/x' does not match /api/*",
        "no match  checkout: host 'other.example' is not shop.example",
        "route     none: passthrough, the request goes on unchanged",
        "url       http://other.example/x?y=1",
    ]


def test_explain_no_backend_with_on_no_match_error_answers_502(capsys, tmp_path):
    f = write(tmp_path, "e.yaml", """\
        version: 1
        upstreams: {a: "http://127.0.0.1:9001"}
        settings: {on_no_match: error}
        routes:
          - name: tenants
            backends: [{name: t1, when: {header: {X-Tenant: t1}}, upstream: a}]
        """)
    rc, out, _ = run(capsys, "explain", f, "http://x.example/")
    assert rc == 0
    assert out.splitlines()[-2:] == ["backend   ✗ t1  header X-Tenant is missing, wanted \"t1\"",
                                     "result    no backend holds: answered 502 (on_no_match: error)"]
    data = json.loads(run(capsys, "explain", f, "http://x.example/", "--json")[1])
    assert (data["outcome"], data["status"], data["final_url"]) == ("no_match", 502, None)


def test_explain_json_is_the_engines_decision(capsys, shop):
    argv = ["explain", shop, "http://shop.example/checkout/42", "-H", "X-Ab-Test: A", "--client-ip", "10.9.9.9",
            "--json"]
    rc, out, err = run(capsys, *argv)
    assert (rc, err) == (0, "")
    data = json.loads(out)
    rules = load_rules(str(shop))
    d = decide(rules, build_request("http://shop.example/checkout/42", "GET", [("X-Ab-Test", "A")],
                                    client_ip="10.9.9.9"), explain=True)
    for k, v in d.to_dict().items():
        assert data[k] == v, k
    assert data["attempts"] == [
        {"backend": "force-b", "held": False, "reason": 'header X-Ab-Test is "A", wanted "B"', "fallback": False},
        {"backend": "office", "held": True, "reason": "when holds: client IP in 10.0.0.0/8", "fallback": False},
    ]
    assert data["routes_passed"] == [{"route": "api", "reason": "path '/checkout/42' does not match /api/*"}]
    assert data["final_url"] == "http://127.0.0.1:9002/base/checkout/42"
    assert data["host_header"] == "127.0.0.1:9002"
    assert data["not_tried"] == ["blocked", "default"]
    assert data["request"] == "GET http://shop.example/checkout/42"


def test_explain_url_host_wins_over_a_host_header_like_the_addon(capsys, shop):
    # the URL is the target, as in an absolute-form request: its Host header is ignored and replaced
    # (rules-format "What is matched"; RFC 9112 §3.2.2)
    rc, out, _ = run(capsys, "explain", shop, "http://127.0.0.1:8080/checkout/1", "-H", "Host: shop.example:8080",
                     "--json")
    data = json.loads(out)
    assert (data["route"], data["request"]) == (None, "GET http://127.0.0.1:8080/checkout/1")
    rc, out, _ = run(capsys, "explain", shop, "http://shop.example/checkout/1", "-H", "Host: 127.0.0.1", "--json")
    assert json.loads(out)["route"] == "checkout"


def test_explain_jwt_is_passed_to_the_engine(capsys, shop, monkeypatch):
    seen = []
    real = cli.decide

    def spy(rules, req, explain=False):
        seen.append(req.jwt_token)
        return real(rules, req, explain)

    monkeypatch.setattr(cli, "decide", spy)
    assert run(capsys, "explain", shop, "http://shop.example/", "--jwt", "eyJhbGciOiJub25lIn0.e30.")[0] == 0
    assert seen == ["eyJhbGciOiJub25lIn0.e30."]


JWT_RULES = """\
version: 1
upstreams: {a: "http://127.0.0.1:9001", b: "http://127.0.0.1:9002"}
settings: {jwt: {verify: {secret: "0123456789abcdef0123456789abcdef"}}}
routes:
  - name: r
    backends:
      - {name: admins, when: {jwt: {role: admin}}, upstream: b}
      - {name: others, fallback: true, upstream: a}
"""


def test_explain_and_check_evaluate_the_jwt_given(capsys, tmp_path):
    import jwt as pyjwt
    f = write(tmp_path, "jwt.yaml", JWT_RULES)
    good = pyjwt.encode({"role": "admin"}, "0123456789abcdef0123456789abcdef", algorithm="HS256")
    forged = pyjwt.encode({"role": "admin"}, "another-secret-another-secret-xx", algorithm="HS256")
    data = json.loads(run(capsys, "explain", f, "http://x.example/", "--jwt", good, "--json")[1])
    assert data["backend"] == "admins"
    data = json.loads(run(capsys, "explain", f, "http://x.example/", "--jwt", forged, "--json")[1])
    assert data["backend"] == "others"
    assert data["attempts"][0]["held"] is False
    cases = write(tmp_path, "c.yaml", f"""\
        - request: {{url: "http://x.example/", jwt: "{good}"}}
          expect: {{backend: admins}}
        - request: {{url: "http://x.example/", jwt: "{forged}"}}
          expect: {{backend: others}}
        - request: {{url: "http://x.example/"}}
          expect: {{backend: others}}
        """)
    rc, out, _ = run(capsys, "check", f, cases)
    assert (rc, out.splitlines()[-1]) == (0, "3 passed, 0 failed")


def test_explain_bad_rules_file_is_located_exit_1(capsys, tmp_path):
    bad = write(tmp_path, "bad.yaml", "version: 2\nroutes: []\n")
    rc, out, err = run(capsys, "explain", bad, "http://x/")
    assert rc == 1
    assert out == ""
    assert err == f"{bad}:1:10: unsupported version 2: this condroute reads version 1\n"


# ==================================================================================================
# usage errors: one sentence, exit 2
# ==================================================================================================
@pytest.mark.parametrize("argv, sentence, helpfor", [
    ([], "condroute: name a command: validate, explain, check, export or schema.", "condroute"),
    (["frobnicate"], "condroute: unknown command 'frobnicate'; the commands are validate, explain, check, export, schema.",
     "condroute"),
    (["validate"], "condroute validate: missing FILE.", "condroute validate"),
    (["explain"], "condroute explain: missing FILE.", "condroute explain"),
    (["explain", "{shop}"], "condroute explain: missing URL (or --flows DUMP).", "condroute explain"),
    (["explain", "{shop}", "http://x/", "-H", "nocolon"],
     "condroute explain: -H 'nocolon' is not a header: write it as 'Name: value'.", "condroute explain"),
    (["explain", "{shop}", "http://x/", "--cookie", "novalue"],
     "condroute explain: --cookie 'novalue' is not a cookie: write it as 'name=value'.", "condroute explain"),
    (["explain", "{shop}", "http://x/", "--client-ip", "banana"],
     "condroute explain: 'banana' is not an IP address.", "condroute explain"),
    (["explain", "{shop}", "http:///nohost"],
     "condroute explain: the URL 'http:///nohost' needs a host, as in http://shop.example/cart.", "condroute explain"),
    (["explain", "{shop}", "ftp://x/"], "condroute explain: the URL 'ftp://x/' must be http:// or https://.",
     "condroute explain"),
    (["explain", "{shop}", "http://x/", "--method", "BAD METHOD"],
     "condroute explain: 'BAD METHOD' is not an HTTP method.", "condroute explain"),
    (["explain", "{shop}", "http://x/", "--method"], "condroute explain: --method needs a value.", "condroute explain"),
    (["explain", "{shop}", "http://x/", "--colour"], "condroute explain: unknown argument --colour.",
     "condroute explain"),
    (["explain", "{shop}", "http://x/", "--flows", "{shop}"],
     "condroute explain: give either a URL or --flows DUMP, not both.", "condroute explain"),
    (["explain", "{shop}", "--flows", "{tmp}/none.mitm"],
     "condroute explain: cannot read the flows file {tmp}/none.mitm: No such file or directory.", "condroute explain"),
    (["explain", "{shop}", "--flows", "{shop}", "-H", "A: b"],
     "condroute explain: -H describes one request and does not go with --flows.", "condroute explain"),
    (["check", "{shop}"], "condroute check: missing CASES.", "condroute check"),
    (["check", "{shop}", "{tmp}/none.yaml"],
     "condroute check: cannot read the cases file {tmp}/none.yaml: No such file or directory.", "condroute check"),
    (["schema", "extra"], "condroute schema: unknown argument extra.", "condroute schema"),
])
def test_bad_arguments_give_one_sentence_and_exit_2(capsys, shop, tmp_path, argv, sentence, helpfor):
    fill = {"shop": str(shop), "tmp": str(tmp_path)}
    rc, out, err = run(capsys, *[a.format(**fill) for a in argv])
    assert rc == 2
    assert out == ""
    assert err.splitlines() == [sentence.format(**fill), f"Try '{helpfor} --help'."]


@pytest.mark.parametrize("argv, usage", [
    (["--help"], "usage: condroute "),
    (["validate", "--help"], "usage: condroute validate "),
    (["explain", "-h"], "usage: condroute explain "),
    (["check", "--help"], "usage: condroute check "),
    (["schema", "--help"], "usage: condroute schema "),
])
def test_help_everywhere(capsys, argv, usage):
    rc, out, err = run(capsys, *argv)
    assert rc == 0
    assert out.startswith(usage)
    assert err == ""


# ==================================================================================================
# check
# ==================================================================================================
CASES_OK = """\
- name: variant B by header
  request: {method: GET, url: "http://shop.example/checkout/42?x=1", headers: {X-Ab-Test: B}}
  expect: {route: checkout, backend: force-b, upstream: canary, path: /base/v2/checkout/42}
- name: query string compared only when expected
  request: {url: "http://shop.example/checkout/42?x=1", headers: {X-Ab-Test: B}}
  expect: {path: "/base/v2/checkout/42?x=1", url: "http://127.0.0.1:9002/base/v2/checkout/42?x=1"}
- name: office network
  request: {url: "http://shop.example/checkout/1", client_ip: 10.1.2.3}
  expect: {backend: office, upstream: canary, status: null}
- name: banned cookie is answered 403
  request: {method: post, url: "http://shop.example/checkout/1", cookies: {banned: 1}}
  expect: {backend: blocked, status: 403, upstream: null, outcome: respond}
- name: no route
  request: {url: "http://elsewhere.example/a?b=1"}
  expect: {route: null, backend: null, url: "http://elsewhere.example/a?b=1", path: /a}
- request: {url: "http://shop.example/checkout/1", jwt: "eyJhbGciOiJub25lIn0.e30."}
  expect: {backend: default}
"""


def test_check_all_pass_exit_0(capsys, tmp_path, shop):
    cases = write(tmp_path, "cases.yaml", CASES_OK)
    rc, out, err = run(capsys, "check", shop, cases)
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        "pass  variant B by header",
        "pass  query string compared only when expected",
        "pass  office network",
        "pass  banned cookie is answered 403",
        "pass  no route",
        "pass  case 6: GET http://shop.example/checkout/1",
        "6 passed, 0 failed",
    ]


def test_check_failures_say_what_differed_and_exit_1(capsys, tmp_path, shop):
    cases = write(tmp_path, "cases.yaml", """\
        - name: expects B but sends A
          request: {url: "http://shop.example/checkout/42", headers: {X-Ab-Test: A}}
          expect: {backend: force-b, upstream: canary}
        - name: right
          request: {url: "http://shop.example/checkout/42"}
          expect: {backend: default}
        - name: wrong route
          request: {url: "http://shop.example/api/x"}
          expect: {route: checkout}
        - name: nothing selected expected
          request: {url: "http://shop.example/checkout/1"}
          expect: {backend: null}
        - name: status expected but routed
          request: {url: "http://shop.example/checkout/1"}
          expect: {status: 403}
        - name: typo in route name
          request: {url: "http://other.example/"}
          expect: {route: chekout}
        """)
    rc, out, err = run(capsys, "check", shop, cases)
    assert (rc, err) == (1, "")
    assert out.splitlines() == [
        f'FAIL  expects B but sends A ({cases}:1): backend: wanted "force-b", got "default" '
        '(force-b: header X-Ab-Test is "A", wanted "B"); upstream: wanted "canary", got "stable"',
        "pass  right",
        f'FAIL  wrong route ({cases}:7): route: wanted "checkout", got "api" (api comes first and owns the request)',
        f'FAIL  nothing selected expected ({cases}:10): backend: wanted null, got "default"',
        f"FAIL  status expected but routed ({cases}:13): status: wanted 403, got null",
        f"FAIL  typo in route name ({cases}:16): route: wanted \"chekout\", got null "
        "(the rules have no route 'chekout')",
        "1 passed, 5 failed",
    ]


def test_check_502_status_for_no_match_error(capsys, tmp_path):
    f = write(tmp_path, "e.yaml", """\
        version: 1
        upstreams: {a: "http://127.0.0.1:9001"}
        settings: {on_no_match: error}
        routes:
          - name: tenants
            backends: [{name: t1, when: {header: {X-Tenant: t1}}, upstream: a}]
        """)
    cases = write(tmp_path, "c.yaml", """\
        - request: {url: "http://x.example/"}
          expect: {route: tenants, backend: null, status: 502, url: null}
        - request: {url: "http://x.example/", headers: {X-Tenant: t1}}
          expect: {backend: t1, status: null, url: "http://127.0.0.1:9001/"}
        """)
    rc, out, _ = run(capsys, "check", f, cases)
    assert rc == 0, out
    assert out.splitlines()[-1] == "2 passed, 0 failed"


def test_check_bad_cases_file_is_located_exit_1(capsys, tmp_path, shop):
    cases = write(tmp_path, "bad.yaml", """\
        - name: x
          request: {url: "http://x/", client_ip: banana, headers: [a]}
          expect: {backend: [1], colour: red, status: 999}
        - 3
        - request: {method: GET}
          expect: {}
        - expect: {route: r}
        """)
    rc, out, err = run(capsys, "check", shop, cases)
    assert rc == 1
    assert out == ""
    assert err.splitlines() == [
        f"{cases}:2:42: request.client_ip must be an IP address, not 'banana'",
        f"{cases}:2:59: request.headers must be a mapping of header names to values",
        f"{cases}:3:21: expect.backend must be a single value or null",
        f"{cases}:3:26: unknown key 'colour' in expect; expected one of: route, backend, upstream, path, url, "
        "status, outcome, headers, location, file",
        f"{cases}:3:47: expect.status must be an HTTP status code (100-599) or null, not '999'",
        f"{cases}:4:3: a case must be a mapping with request and expect",
        f"{cases}:5:12: request needs a url",
        f"{cases}:6:11: expect is empty: name at least one of route, backend, upstream, path, url, status, outcome, headers, location, file",
        f"{cases}:7:3: a case needs a request (at least {{url: ...}})",
    ]


@pytest.mark.parametrize("text, where", [
    ("- [\n", "2:1: YAML syntax error"),
    ("request: {url: x}\n", "1:1: a cases file must be a list of cases"),
    ("[]\n", "1:1: the cases file has no cases"),
    ("", "1:1: the file is empty"),
])
def test_check_unusable_cases_file_exit_1(capsys, tmp_path, shop, text, where):
    cases = tmp_path / "c.yaml"
    cases.write_text(text)
    rc, out, err = run(capsys, "check", shop, cases)
    assert rc == 1
    assert err.startswith(f"{cases}:{where}")


def test_check_bad_rules_file_exit_1(capsys, tmp_path):
    bad = write(tmp_path, "bad.yaml", "routes: [{name: r}]\n")
    cases = write(tmp_path, "c.yaml", CASES_OK)
    rc, out, err = run(capsys, "check", bad, cases)
    assert rc == 1
    assert err == f"{bad}:1:10: route 'r' needs `backends`\n"


def test_check_json_cases_file(capsys, tmp_path, shop):
    cases = tmp_path / "c.json"
    cases.write_text(json.dumps([{"request": {"url": "http://shop.example/api/1"},
                                  "expect": {"route": "api", "backend": "api-default"}}]))
    rc, out, _ = run(capsys, "check", shop, cases)
    assert (rc, out.splitlines()[-1]) == (0, "1 passed, 0 failed")


# ==================================================================================================
# schema
# ==================================================================================================
def test_schema_is_draft_2020_12_json(capsys):
    rc, out, err = run(capsys, "schema")
    assert (rc, err) == (0, "")
    s = json.loads(out)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["anyOf"] == [{"required": ["routes"]}, {"required": ["imports"]}]


def test_schema_keys_match_the_loaders_key_lists():
    from condroute.load import condroute as rules
    from condroute.conditions.registry import CONDITION_KEYS
    from condroute.conditions.matchers import MATCHER_KEYS
    from condroute.cli.schema import build_schema
    s = build_schema()
    d = s["$defs"]
    assert set(s["properties"]) == set(rules.TOP_KEYS)
    assert set(s["properties"]["settings"]["properties"]) == set(rules.SETTINGS_KEYS)
    assert set(d["route"]["properties"]) == set(rules.ROUTE_KEYS)
    assert set(d["backend"]["properties"]) == set(rules.BACKEND_KEYS)
    assert set(d["backend"]["properties"]["split"]["properties"]) == set(rules.SPLIT_KEYS)
    assert set(d["backend"]["properties"]["respond"]["properties"]) == set(rules.RESPOND_KEYS)
    assert set(d["condition"]["properties"]) == set(CONDITION_KEYS)
    assert set(d["matcher_object"]["properties"]) == set(MATCHER_KEYS)
    assert set(d["route"]["properties"]["match"]["properties"]) == set(rules.MATCH_KEYS) | set(CONDITION_KEYS)
    from condroute.conditions import geo
    from condroute.conditions import jwtauth
    jwt = s["properties"]["settings"]["properties"]["jwt"]
    assert set(jwt["properties"]) == set(jwtauth.SETTINGS_KEYS)
    assert set(jwt["properties"]["verify"]["oneOf"][1]["properties"]) == set(jwtauth.VERIFY_KEYS)
    assert set(d["condition"]["properties"]["geo"]["properties"]) == set(geo.GEO_KEYS)
    # every $ref points somewhere
    text = json.dumps(s)
    for ref in set(__import__("re").findall(r'"\$ref": "#/([^"]+)"', text)):
        node = s
        for part in ref.split("/"):
            node = node[part]


def test_schema_validates_the_shipped_rules_and_rejects_typos():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml
    from condroute.cli.schema import build_schema
    s = build_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    v = jsonschema.Draft202012Validator(s)
    files = sorted(f for f in (ROOT / "rules").glob("*.yaml") if not f.name.endswith(".cases.yaml"))
    assert files
    for f in files:
        doc = yaml.safe_load(f.read_text())
        if "endpoints" in doc:
            continue
        errors = [e.message for e in v.iter_errors(doc)]
        assert errors == [], (f, errors)
    assert list(v.iter_errors(yaml.safe_load(SHOP))) == []
    every_form = yaml.safe_load(textwrap.dedent("""\
        version: 1
        upstreams: {a: "http://127.0.0.1:1"}
        settings: {on_no_match: error, trusted_proxies: [127.0.0.1/32], geoip_db: x.mmdb,
                   jwt: {from: "cookie:tok", verify: {secret_env: X, issuer: me, audience: [a], leeway: 5}}}
        routes:
          - name: r
            match: {host: ["*.x", y], method: GET, path: {regex: "^/v"}, cel: "true",
                    not: {header: {A: {present: true}}}}
            backends:
              - name: a
                when: {any: [{jwt: {sub: {in: [a, b]}}}, {geo: {country: [US], eu: true}},
                             {query: {q: {gt: 3}}}, {cookie: {c: {prefix: x, ignore_case: true}}}],
                       all: [{method: [GET]}, {client_ip: [10.0.0.0/8]}], not: {path: {not: {suffix: /x}}}}
                upstream: a
                path: "/x{path}"
                set_headers: {X: 1}
                remove_headers: Cookie
                preserve_host: true
                timeout: 1.5
                retries: 2
              - {name: b, respond: {status: 200, body: hi, headers: {X-A: b}}}
              - {name: n, respond: {status: 204, headers: {X-A: "tab\\there"}}}
              - {name: c, fallback: true, split: {by: client_ip, weights: {a: 1}, salt: 3}}
        """))
    assert [e.message for e in v.iter_errors(every_form)] == []
    # answers that are not valid HTTP, as the loader refuses them
    for respond in ({"status": 101}, {"status": 204, "body": "hi"}, {"status": 304, "body": "x"},
                    {"status": 200, "headers": {"X-A": "a\x00b"}}, {"status": 200, "headers": {"X-A": "a\x7f"}}):
        doc = copy.deepcopy(every_form)
        doc["routes"][0]["backends"][1]["respond"] = respond
        assert list(v.iter_errors(doc)), respond
    bad = yaml.safe_load(SHOP.replace("upstream: stable\n", "upstrem: stable\n", 1))
    assert any("upstrem" in e.message for e in v.iter_errors(bad))
    bad = yaml.safe_load(SHOP.replace("{header: {X-Ab-Test: B}}", "{headers: {X-Ab-Test: B}}"))
    assert list(v.iter_errors(bad))
    bad = yaml.safe_load(SHOP.replace("upstream: canary\n", "upstream: canary\n        fallback: true\n", 1))
    assert list(v.iter_errors(bad))   # a fallback with `when`


# ==================================================================================================
# through the installed console script
# ==================================================================================================
def cr(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONDROUTE), *map(str, args)], capture_output=True, text=True, timeout=60,
                          cwd=str(ROOT))


def test_console_script_validate_good_and_bad(shop, tmp_path):
    p = cr("validate", shop)
    assert (p.returncode, p.stdout, p.stderr) == (0, f"{shop}: OK: 2 routes, 5 backends, 2 upstreams\n", "")
    bad = write(tmp_path, "bad.yaml", "version: 1\nroutes:\n  - name: r\n    backends: [{name: b, upstream: nope}]\n")
    p = cr("validate", bad)
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.startswith(f"{bad}:4:36: unknown upstream 'nope'")
    assert "Traceback" not in p.stderr


def test_console_script_explain_and_usage_error(shop):
    p = cr("explain", shop, "http://shop.example/checkout/1", "-H", "X-Ab-Test: B", "--json")
    assert p.returncode == 0
    assert json.loads(p.stdout)["backend"] == "force-b"
    p = cr("explain", shop, "http://shop.example/", "--bogus")
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr == "condroute explain: unknown argument --bogus.\nTry 'condroute explain --help'.\n"


def test_console_script_check_exit_codes(shop, tmp_path):
    good = write(tmp_path, "good.yaml", CASES_OK)
    p = cr("check", shop, good)
    assert p.returncode == 0
    assert p.stdout.splitlines()[-1] == "6 passed, 0 failed"
    bad = write(tmp_path, "bad.yaml", """\
        - request: {url: "http://shop.example/checkout/1"}
          expect: {backend: force-b}
        """)
    p = cr("check", shop, bad)
    assert p.returncode == 1
    assert p.stdout.splitlines()[-1] == "0 passed, 1 failed"
    p = cr("check", shop, tmp_path / "missing.yaml")
    assert p.returncode == 2


def test_console_script_schema(tmp_path):
    p = cr("schema")
    assert p.returncode == 0
    assert json.loads(p.stdout)["$id"] == "urn:condroute:rules:v1"


# ==================================================================================================
# --flows: offline decisions for saved traffic
# ==================================================================================================
def _flow(url: str, headers=(), metadata=None, peer=("127.0.0.1", 5555), method="GET"):
    from mitmproxy.test import tflow
    from mitmproxy import http
    f = tflow.tflow(resp=True)
    f.request = http.Request.make(method, url, b"", dict(headers))
    f.client_conn.peername = peer
    if metadata is not None:
        f.metadata["condroute"] = metadata
    return f


def _dump(path: Path, flows) -> Path:
    from mitmproxy import io
    with open(path, "wb") as fo:
        w = io.FlowWriter(fo)
        for f in flows:
            w.add(f)
    return path


def test_flows_restore_the_original_request_from_metadata(tmp_path, shop):
    from condroute.mitm.flows import flow_request
    # what the addon saved: the forwarded request, plus what it changed
    f = _flow("http://127.0.0.1:9002/base/v2/checkout/42?x=1", {"Host": "127.0.0.1:9002", "X-Variant": "B"},
              {"outcome": "routed", "header": "checkout/force-b -> canary",
               "original": {"scheme": "http", "host": "shop.example", "port": 80, "path": "/checkout/42?x=1",
                            "host_header": "shop.example", "headers": {"X-Variant": [], "X-Debug": ["1"]}}})
    req, exact = flow_request(f)
    assert exact
    assert (req.scheme, req.host, req.port, req.path, req.query_string) == ("http", "shop.example", 80,
                                                                            "/checkout/42", "x=1")
    hm = dict(req.header_map)
    hm.pop("content-length", None)
    assert hm == {"host": ["shop.example"], "x-debug": ["1"]}
    assert req.peer == "127.0.0.1"


def test_flows_coverage_table_and_unrecoverable_flows(capsys, tmp_path, shop):
    dump = _dump(tmp_path / "t.mitm", [
        _flow("http://shop.example/checkout/1", {"X-Ab-Test": "B"}),
        _flow("http://shop.example/checkout/2"),
        _flow("http://shop.example/checkout/3", peer=("10.0.0.7", 1)),
        _flow("http://shop.example/api/x"),
        _flow("http://nowhere.example/"),
        # routed by an addon that did not save the original: decided as forwarded, and said so
        _flow("http://127.0.0.1:9001/checkout/9",
              metadata={"outcome": "routed", "header": "checkout/default -> stable"}),
    ])
    rc, out, err = run(capsys, "explain", shop, "--flows", dump)
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "1  GET http://shop.example/checkout/1 -> checkout/force-b -> canary " \
                       "(http://127.0.0.1:9002/base/v2/checkout/1)  [live: passthrough]"
    assert lines[4] == "5  GET http://nowhere.example/ -> no route, passthrough  [live: same]"
    assert lines[5] == ("6  GET http://127.0.0.1:9001/checkout/9 -> no route, passthrough"
                        "  [live: checkout/default -> stable]"
                        "  (decided on the forwarded request: the original was not saved)")
    i = lines.index("coverage of 6 requests:")
    assert lines[i + 1:] == [
        "  backend                  requests",
        "  api/api-default                 1",
        "  checkout/force-b                1",
        "  checkout/office                 1",
        "  checkout/blocked                0",
        "  checkout/default                1",
        "  (no route: passthrough)         2",
        "never reached: checkout/blocked",
        "5 requests decided differently from the live proxy (the rules changed since, or the original request "
        "was not saved)",
    ]


def test_flows_of_a_plain_mitmproxy_have_no_live_column(capsys, tmp_path, shop):
    dump = _dump(tmp_path / "t.mitm", [_flow("http://shop.example/checkout/1"), _flow("http://shop.example/api/")])
    rc, out, _ = run(capsys, "explain", shop, "--flows", dump)
    assert rc == 0
    assert out.splitlines()[:2] == [
        "1  GET http://shop.example/checkout/1 -> checkout/default -> stable (http://127.0.0.1:9001/checkout/1)",
        "2  GET http://shop.example/api/ -> api/api-default -> stable (http://127.0.0.1:9001/api/)",
    ]
    data = json.loads(run(capsys, "explain", shop, "--flows", dump, "--json")[1])
    assert data["coverage"]["checkout/default"] == 1
    assert data["never_reached"] == ["checkout/force-b", "checkout/office", "checkout/blocked"]
    assert [x["agrees_with_live"] for x in data["decisions"]] == [None, None]


def test_flows_file_that_is_not_a_dump_exit_1(capsys, tmp_path, shop):
    junk = tmp_path / "junk.mitm"
    junk.write_bytes(b"this is not a flow file")
    rc, out, err = run(capsys, "explain", shop, "--flows", junk)
    assert rc == 1
    assert err.startswith(f"{junk}: not a mitmproxy flow file")


def test_round_trip_live_proxy_and_offline_explain_agree(capsys, echo, rules_file, proxy, tmp_path):
    a, b, c = echo("echo-a"), echo("echo-b"), echo("echo-c")
    names = {"a": "echo-a", "b": "echo-b", "c": "echo-c"}
    rules = rules_file(f"""
        version: 1
        upstreams: {{a: "{a}", b: "{b}", c: "{c}"}}
        routes:
          - name: blocked
            match: {{path: /blocked}}
            backends:
              - {{name: deny, respond: {{status: 403, body: "no"}}}}
          - name: shop
            match: {{host: shop.example}}
            backends:
              - name: force-b
                when: {{header: {{X-Ab-Test: B}}}}
                upstream: b
                path: /v2{{path}}
                remove_headers: [X-Ab-Test]
              - name: by-cookie
                when: {{cookie: {{ab: C}}}}
                upstream: c
                set_headers: {{Cookie: "rewritten=1"}}
              - name: default
                fallback: true
                upstream: a
          - name: api
            match: {{host: api.example, methods: [POST]}}
            backends:
              - {{name: remote, when: {{client_ip: 10.0.0.0/8}}, upstream: b}}
              - {{name: local, when: {{client_ip: 127.0.0.0/8}}, upstream: c}}
        """)
    dump = tmp_path / "traffic.mitm"
    p = proxy(rules, "-w", str(dump))
    live = []
    with httpx.Client(proxy=p.url, timeout=10) as client:
        for method, url, headers in [
            ("GET", "http://shop.example/cart?x=1", {"X-Ab-Test": "B"}),
            ("GET", "http://shop.example/cart", {"Cookie": "ab=C"}),
            ("GET", "http://shop.example/", {}),
            ("POST", "http://api.example/orders", {}),
            ("GET", "http://shop.example/blocked", {}),
            ("GET", f"{c}/direct", {}),                   # no route: passthrough, straight to echo-c
        ]:
            r = client.request(method, url, headers=headers)
            answered = r.json()["backend"] if r.status_code == 200 else None
            live.append((r.headers["X-Condroute"], answered, r.status_code))
    p.stop()
    assert [x[1] for x in live] == ["echo-b", "echo-c", "echo-a", "echo-c", None, "echo-c"]

    rc, out, err = run(capsys, "explain", rules, "--flows", dump, "--json")
    assert (rc, err) == (0, "")
    data = json.loads(out)
    assert data["requests"] == len(live)
    for got, (header, answered, status) in zip(data["decisions"], live):
        assert got["x_condroute"] == header
        assert got["agrees_with_live"] is True
        assert got["original_recovered"] is True
        if got["outcome"] == "routed":
            assert names[got["upstream"]] == answered
        elif got["outcome"] == "respond":
            assert got["status"] == status == 403
        else:
            assert header == "passthrough" and answered == "echo-c"
    assert data["never_reached"] == ["api/remote"]

    rc, out, _ = run(capsys, "explain", rules, "--flows", dump)
    lines = out.splitlines()
    assert all(line.endswith("[live: same]") for line in lines[:6]), out
    assert "never reached: api/remote" in lines
