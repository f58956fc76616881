"""Loading: every bad input gives FILE:LINE:COLUMN: message, never a traceback."""
from __future__ import annotations

import json
import textwrap

import pytest

from condroute.errors import RulesError
from condroute.rules import load_rules, load_rules_text

HEAD = "version: 1\nupstreams: {a: 'http://127.0.0.1:9001'}\nroutes:\n"


def err(text: str, name: str = "f.yaml") -> str:
    with pytest.raises(RulesError) as ei:
        load_rules_text(text, name)
    return str(ei.value)


@pytest.mark.parametrize("body, where, message", [
    # YAML itself
    ("  - name: r\n    backends: [{name: a, upstream: a}\n", (6, ""), "YAML syntax error"),
    ("  - name: r\n    name: s\n    backends: []\n", (5, "name"), "duplicate key 'name'"),
    # structure and types
    ("  - name: r\n    bakends: []\n", (5, "bakends"), "unknown key 'bakends' in a route"),
    ("  - name: r\n", (4, "name"), "needs `backends`"),
    ("  - name: r\n    backends: {}\n", (5, "{}"), "backends must be a list"),
    ("  - name: r\n    backends: []\n", (5, "[]"), "backends is empty"),
    ("  - name: r\n    backends:\n      - upstream: a\n", (6, "upstream"), "a backend needs a `name`"),
    ("  - name: r\n    backends:\n      - {name: b, upstream: a, colour: red}\n", (6, "colour"), "unknown key 'colour' in a backend"),
    ("  - name: r\n    backends:\n      - {name: b, upstream: nope}\n", (6, "nope"), "unknown upstream 'nope'"),
    ("  - name: r\n    backends:\n      - {name: b, upstream: 'ftp://x'}\n", (6, "'ftp"), "bad upstream URL"),
    ("  - name: r\n    backends:\n      - {name: b, upstream: a}\n      - {name: b, upstream: a}\n",
     (7, "b, "), "duplicate backend name 'b'"),
    ("  - name: r\n    backends:\n      - {name: x, fallback: true, upstream: a}\n      - {name: y, fallback: true, upstream: a}\n",
     (7, "{"), "two fallback backends"),
    ("  - name: r\n    backends:\n      - {name: x, fallback: true, when: {header: {A: b}}, upstream: a}\n",
     (6, "when"), "a fallback backend cannot have `when`"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, respond: {status: 200}}\n", (6, "respond"),
     "use only one of upstream, split, respond"),
    ("  - name: r\n    backends:\n      - {name: x, respond: {status: 999}}\n", (6, "999"), "respond.status"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, timeout: -1}\n", (6, "-1"), "timeout must be"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, retries: 1.5}\n", (6, "1.5"), "retries must be"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, preserve_host: yes please}\n", (6, "yes"),
     "preserve_host must be true or false"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, set_headers: {'bad header': v}}\n", (6, "'bad"),
     "not a valid header name"),
    # conditions and matchers
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, when: {headr: {A: b}}}\n", (6, "headr"),
     "unknown condition 'headr'"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, when: {header: {A: {regex: '(['}}}}\n", (6, "'(["), "bad regular expression"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, when: {header: {A: {sufix: b}}}}\n", (6, "sufix"),
     "unknown matcher 'sufix'"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, when: {header: {A: {gt: many}}}}\n", (6, "many"),
     "gt takes a number"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, when: {client_ip: 10.0.0.0/33}}\n", (6, "10.0.0.0/33"),
     "bad CIDR"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, when: {client_ip: [1.2.3.4, nope]}}\n", (6, "nope"),
     "bad CIDR 'nope'"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, when: {any: {}}}\n", (6, "{}}"), "any must be a list"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, when: {header: {A: []}}}\n", (6, "[]"),
     "an empty list can never match"),
    ("  - name: r\n    backends:\n      - {name: x, upstream: a, when: {header: {A: {ignore_case: true}}}}\n",
     (6, "ignore_case"), "ignore_case goes beside a string matcher"),
    # paths
    ("  - name: r\n    match: {path: 'api/*'}\n    backends: [{name: x, upstream: a}]\n", (5, "'api"),
     "must start with '/'"),
    ("  - name: r\n    match: {path: '/a/*/b'}\n    backends: [{name: x, upstream: a}]\n", (5, "'/a"),
     "'*' is only allowed as the last segment"),
    ("  - name: r\n    match: {path: '/a/{id}/{id}'}\n    backends: [{name: x, upstream: a}]\n", (5, "'/a"),
     "{id} is used twice"),
    ("  - name: r\n    match: {path: '/a/{id}'}\n    backends: [{name: x, upstream: a, path: '/b/{nope}'}]\n",
     (6, "'/b"), "unknown placeholder {nope}"),
    ("  - name: r\n    match: {path: '/a/{id}'}\n    backends: [{name: x, upstream: a, path: '/b/{rest}'}]\n",
     (6, "'/b"), "{rest} needs a route path that ends in /*"),
    ("  - name: r\n    match: {host: 'a.*.com'}\n    backends: [{name: x, upstream: a}]\n", (5, "'a.*"),
     "a wildcard is only allowed as a leading"),
    ("  - name: r\n    match: {methods: [GET, 'NOT A METHOD']}\n    backends: [{name: x, upstream: a}]\n",
     (5, "'NOT"), "is not an HTTP method"),
    # split
    ("  - name: r\n    backends: [{name: s, split: {by: 'cookie:uid', weights: {a: -1}}}]\n", (5, "-1"),
     "must be a number >= 0"),
    ("  - name: r\n    backends: [{name: s, split: {by: 'session', weights: {a: 1}}}]\n", (5, "'session"),
     "split.by 'session'"),
    ("  - name: r\n    backends: [{name: s, split: {by: 'cookie:uid', weights: {zz: 1}}}]\n", (5, "zz"),
     "unknown upstream 'zz'"),
    # duplicate routes, settings
    ("  - {name: r, backends: [{name: x, upstream: a}]}\n  - {name: r, backends: [{name: x, upstream: a}]}\n",
     (5, "r, "), "duplicate route name 'r'"),
])
def test_load_errors_are_located(body, where, message):
    """``where`` is (line, token): the error must point at the column where ``token`` starts."""
    src = HEAD + body
    text = err(src)
    line, token = where
    col = src.splitlines()[line - 1].index(token) + 1 if token else 1
    prefix = f"f.yaml:{line}:{col}: "
    assert any(ln.startswith(prefix) and message in ln for ln in text.splitlines()), (prefix, message, text)
    assert "Traceback" not in text


@pytest.mark.parametrize("text, where, message", [
    ("", "f.yaml:1:1:", "the file is empty"),
    ("- a\n- b\n", "f.yaml:1:1:", "must be a mapping"),
    ("version: 2\nroutes: []\n", "f.yaml:1:10:", "unsupported version 2"),
    ("version: 1\n", "f.yaml:1:1:", "needs `routes`"),
    ("version: 1\nroute: []\n", "f.yaml:2:1:", "unknown key 'route'"),
    ("version: 1\nsettings: {on_no_match: drop}\nroutes: []\n", "f.yaml:2:25:", "on_no_match must be passthrough or error"),
    ("version: 1\nsettings: {trusted_proxies: [300.1.1.1]}\nroutes: []\n", "f.yaml:2:30:", "bad CIDR"),
    ("version: 1\nupstreams: {'http://b': 'http://x'}\nroutes: []\n", "f.yaml:2:13:", "must be a name (a service"),
    ("version: 1\nupstreams: {a: 'http://x?y=1'}\nroutes: []\n", "f.yaml:2:16:", "query string"),
])
def test_top_level_errors(text, where, message):
    out = err(text)
    assert any(ln.startswith(where) and message in ln for ln in out.splitlines()), out


def test_several_errors_reported_together_in_file_order():
    out = err(HEAD + "  - name: r\n    backends:\n      - {name: x, upstream: nope1}\n      - {name: y, upstream: nope2}\n")
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("f.yaml:6:") and lines[1].startswith("f.yaml:7:")


def test_json_rules_and_json_syntax_errors(tmp_path):
    good = tmp_path / "r.json"
    good.write_text(json.dumps({"version": 1, "routes": [{"name": "r", "backends": [
        {"name": "x", "upstream": "http://127.0.0.1:1"}]}]}, indent=2))
    assert load_rules(str(good)).summary() == "1 route, 1 backend, 0 upstreams"
    bad = tmp_path / "b.json"
    bad.write_text('{\n  "version": 1,\n  "routes": [\n    {"name": "r",}\n  ]\n}\n')
    with pytest.raises(RulesError) as ei:
        load_rules(str(bad))
    # the column of a trailing comma differs by Python version (3.13 points at the comma itself)
    assert str(ei.value).startswith((f"{bad}:4:17: JSON syntax error", f"{bad}:4:18: JSON syntax error"))
    located = tmp_path / "c.json"
    line4 = '    {"name": "r", "backends": [{"name": "x", "upstream": "nope"}]}'
    located.write_text('{\n  "version": 1,\n  "routes": [\n' + line4 + '\n  ]\n}\n')
    with pytest.raises(RulesError) as ei:
        load_rules(str(located))
    col = line4.index('"nope') + 1
    assert str(ei.value).startswith(f"{located}:4:{col}: unknown upstream 'nope'")


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(RulesError) as ei:
        load_rules(str(tmp_path / "missing.yaml"))
    assert str(ei.value).startswith(f"{tmp_path / 'missing.yaml'}:1:1: cannot read the file")
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"version: 1\nroutes:\n  - name: caf\xe9\n")
    with pytest.raises(RulesError) as ei:
        load_rules(str(p))
    assert str(ei.value).startswith(f"{p}:3:14: the file is not valid UTF-8")


def test_anchors_and_merge_keys_work():
    r = load_rules_text(textwrap.dedent("""
        version: 1
        upstreams: {u: "http://127.0.0.1:2"}
        routes:
          - name: r
            backends:
              - &common {name: a, when: {header: {X: "1"}}, upstream: u, set_headers: {X-A: "1"}}
              - {<<: *common, name: b}
        """), "f.yaml")
    a, b = r.routes[0].backends
    assert (b.name, b.upstream.port, b.set_headers) == ("b", 2, (("X-A", "1"),))


def test_shipped_rules_files_load():
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent / "rules"
    files = sorted(f for f in root.glob("*.yaml") if not f.name.endswith(".cases.yaml")) + sorted(root.glob("*.json"))
    assert files
    for f in files:
        assert load_rules(str(f)).routes, f


def test_every_shipped_rules_file_has_golden_cases_that_pass():
    """rules/X.yaml ships with rules/X.cases.yaml (what `condroute export --verify` sends through a
    gateway); each passes `condroute check`."""
    import pathlib
    from condroute.cli.cases import load_cases, run_case
    root = pathlib.Path(__file__).resolve().parent.parent / "rules"
    files = sorted(f for f in root.glob("*.yaml") if not f.name.endswith(".cases.yaml"))
    assert len(files) >= 6
    for f in files:
        cases_file = f.with_name(f.stem + ".cases.yaml")
        assert cases_file.exists(), f"{f.name} has no {cases_file.name}"
        rules = load_rules(str(f))
        cases = load_cases(str(cases_file))
        assert len(cases) >= 3
        assert [(c.name, run_case(rules, c)) for c in cases if run_case(rules, c)] == []


# -- direct answers and request headers that are valid HTTP (issue 11, item 13) ---------------------
@pytest.mark.parametrize("backend, token, message", [
    ("{name: x, respond: {status: 101}}", "101", "respond.status 101 is an interim (1xx) response"),
    ("{name: x, respond: {status: 100, body: go}}", "100", "must be a final one (200-599)"),
    ("{name: x, respond: {status: 199}}", "199", "the client would go on waiting"),
    ("{name: x, respond: {status: 204, body: hi}}", "hi", "respond.body must be empty with status 204"),
    ("{name: x, respond: {status: 304, body: 0}}", "0}", "respond.body must be empty with status 304"),
    ("{name: x, respond: {body: hi, headers: {Transfer-Encoding: chunked}}}", "Transfer", "Transfer-Encoding cannot be set"),
    ("{name: x, respond: {body: hi, headers: {content-length: '3'}}}", "content-length",
     "content-length 3 does not match the body (2 bytes)"),
    ("{name: x, respond: {status: 204, headers: {Content-Length: 0}}}", "Content-Length",
     "cannot be sent with status 204"),
    ("{name: x, respond: {body: é, headers: {Content-Length: 1}}}", "Content-Length", "(2 bytes)"),
    ("{name: x, respond: {headers: {'X(1)': v}}}", "'X(1)'", "is not a valid header name"),
    ("{name: x, respond: {headers: {X-A: \"a\\0\"}}}", "\"a", "control character '\\x00' (character 2)"),
    ("{name: x, respond: {headers: {X-A: \"a\\x7f\"}}}", "\"a", "control character '\\x7f'"),
    ("{name: x, respond: {headers: {X-A: \"\\x1b[31m\"}}}", "\"\\x1b", "control character '\\x1b' (character 1)"),
    ("{name: x, respond: {headers: {X-A: \"a\\nb\"}}}", "\"a", "must not contain a line break"),
    ("{name: x, upstream: a, set_headers: {X-A: \"\\0\"}}", "\"\\0", "control character"),
    ("{name: x, upstream: a, set_headers: {Content-Length: '5'}}", "Content-Length", "set_headers cannot set Content-Length"),
    ("{name: x, upstream: a, set_headers: {transfer-encoding: chunked}}", "transfer", "frames the request"),
    ("{name: x, upstream: a, set_headers: {HOST: b.example}}", "HOST", "preserve_host: true"),
    ("{name: x, upstream: a, set_headers: {Upgrade: websocket}}", "Upgrade", "is hop-by-hop"),
    ("{name: x, upstream: a, set_headers: {TE: trailers}}", "TE", "set_headers cannot set TE"),
    ("{name: x, upstream: a, set_headers: {Keep-Alive: 'timeout=5'}}", "Keep", "hop-by-hop"),
    ("{name: x, upstream: a, set_headers: {Proxy-Connection: close}}", "Proxy", "hop-by-hop"),
    ("{name: x, upstream: a, set_headers: {Trailer: X}}", "Trailer", "hop-by-hop"),
    ("{name: x, upstream: a, remove_headers: Content-Length}", "Content-Length", "remove_headers cannot remove"),
    ("{name: x, upstream: a, remove_headers: [X-A, host]}", "host", "remove_headers cannot remove host"),
])
def test_direct_answers_and_request_headers_must_be_valid_http(backend, token, message):
    src = HEAD + f"  - name: r\n    backends:\n      - {backend}\n"
    text = err(src)
    col = src.splitlines()[5].index(token) + 1
    assert any(ln.startswith(f"f.yaml:6:{col}: ") and message in ln for ln in text.splitlines()), (col, message, text)


def test_valid_answers_and_headers_still_load():
    rules = load_rules_text(HEAD + textwrap.dedent("""\
          - name: r
            backends:
              - {name: a, when: {path: /a}, respond: {status: 204}}
              - {name: b, when: {path: /b}, respond: {status: 304, headers: {ETag: '"x"'}}}
              - {name: c, when: {path: /c}, respond: {status: 200, body: héllo, headers: {Content-Length: 6, X-T: "a\\tb"}}}
              - {name: d, when: {path: /d}, respond: {status: 599, body: ""}}
              - {name: e, upstream: a, set_headers: {X-Forwarded-Host: x, Authorization: Bearer t}, remove_headers: [Cookie, Connection]}
        """), "f.yaml")
    b = {x.name: x for x in rules.routes[0].backends}
    assert b["c"].respond.headers == (("Content-Length", "6"), ("X-T", "a\tb"))
    assert (b["a"].respond.status, b["d"].respond.status) == (204, 599)
    assert b["e"].set_headers == (("X-Forwarded-Host", "x"), ("Authorization", "Bearer t"))


def test_validate_prints_each_invalid_answer_located_and_exits_1(tmp_path, capsys):
    from condroute.cli.main import main

    f = tmp_path / "r.yaml"
    f.write_text(HEAD + "  - name: r\n    backends:\n"
                        "      - {name: a, when: {path: /a}, respond: {status: 101}}\n"
                        "      - {name: b, when: {path: /b}, respond: {status: 204, body: x}}\n"
                        "      - {name: c, upstream: a, set_headers: {Content-Length: '5'}}\n")
    assert main(["validate", str(f)]) == 1
    out, errs = capsys.readouterr()
    lines, src = errs.splitlines(), f.read_text().splitlines()
    assert out == "" and "Traceback" not in errs
    where = [(6, "101"), (7, "x}}"), (8, "Content-Length")]
    starts = [f"{f}:{n}:{src[n - 1].index(tok) + 1}: " for n, tok in where]
    assert starts == [f"{f}:6:55: ", f"{f}:7:66: ", f"{f}:8:46: "]
    assert lines[0].startswith(starts[0] + "respond.status 101 is an interim (1xx) response"), lines
    assert lines[1].startswith(starts[1] + "respond.body must be empty with status 204"), lines
    assert lines[2].startswith(starts[2] + "set_headers cannot set Content-Length"), lines
