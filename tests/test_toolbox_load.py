"""The toolbox fields of a backend (enabled, failover, retry_on, mirror, fault, sni, throttle,
respond.file/dir) as the loader reads them: what they become in the model, and a located error
for each bad form; and the JSON Schema agrees with the loader on good and bad forms."""
from __future__ import annotations

import os
import textwrap

import pytest

from condroute.errors import RulesError
from condroute.model import Fault, Throttle
from condroute.rules import load_rules

HEAD = ("version: 1\nupstreams: {a: 'http://127.0.0.1:9001', s: 'https://127.0.0.1:9443', "
        "m: 'http://127.0.0.1:9002'}\nroutes:\n")


def write(tmp_path, text: str, name: str = "f.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def backend(tmp_path, fields: str, match: str = ""):
    p = write(tmp_path, HEAD + f"  - name: r\n{match}    backends:\n      - {{name: x, {fields}}}\n")
    return load_rules(str(p)).routes[0].backends[0]


def err(tmp_path, body: str) -> str:
    p = write(tmp_path, HEAD + body)
    with pytest.raises(RulesError) as ei:
        load_rules(str(p))
    return str(ei.value)


def test_defaults_change_nothing(tmp_path):
    b = backend(tmp_path, "upstream: a")
    assert (b.enabled, b.failover, b.retry_on, b.mirrors, b.fault, b.sni, b.throttle) == \
        (True, True, frozenset({"connect-failure"}), (), None, None, None)
    assert not b.extra


@pytest.mark.parametrize("fields, attr, value", [
    ("upstream: a, enabled: false", "enabled", False),
    ("upstream: a, failover: false", "failover", False),
    ("upstream: a, retry_on: [reset, 5xx]", "retry_on", frozenset({"reset", "5xx"})),
    ("upstream: a, retry_on: 'gateway-error, connect-failure'", "retry_on",
     frozenset({"gateway-error", "connect-failure"})),
    ("upstream: a, fault: {delay: 2, percent: 10}", "fault", Fault(delay=2.0, delay_percent=10.0)),
    ("upstream: a, fault: {abort: 503}", "fault", Fault(abort=503)),
    ("upstream: a, fault: {delay: 500ms, abort: 504, percent: 50}", "fault",
     Fault(delay=0.5, delay_percent=50.0, abort=504, abort_percent=50.0)),
    ("upstream: a, fault: {delay: {seconds: 1m, percent: 5}, abort: {status: 500, percent: 1}, percent: 70}",
     "fault", Fault(delay=60.0, delay_percent=5.0, abort=500, abort_percent=1.0)),
    ("upstream: s, sni: API.Example.test", "sni", "api.example.test"),
    ("upstream: s, sni: preserve", "sni", "preserve"),
    ("upstream: a, throttle: {kbps: 64}", "throttle", Throttle(64.0)),
])
def test_each_field_is_read(tmp_path, fields, attr, value):
    b = backend(tmp_path, fields)
    assert getattr(b, attr) == value
    if attr in ("fault", "sni", "throttle"):
        assert b.extra      # the engine looks at them per request only for such backends


def test_mirror_forms(tmp_path):
    one = backend(tmp_path, "upstream: a, mirror: {upstream: m, percent: 25}").mirrors
    assert [(m.upstream.name, m.percent) for m in one] == [("m", 25.0)]
    short = backend(tmp_path, "upstream: a, mirror: 'http://127.0.0.1:9999'").mirrors
    assert [(m.upstream.port, m.percent) for m in short] == [(9999, 100.0)]
    two = backend(tmp_path, "upstream: a, mirror: [{upstream: m}, {upstream: s, percent: 0.5}]").mirrors
    assert [(m.upstream.name, m.percent) for m in two] == [("m", 100.0), ("s", 0.5)]


def test_enabled_on_a_route(tmp_path):
    p = write(tmp_path, HEAD + "  - name: r\n    enabled: false\n    backends: [{name: x, upstream: a}]\n")
    assert load_rules(str(p)).routes[0].enabled is False


@pytest.mark.parametrize("fields, token, message", [
    ("upstream: a, enabled: 'no'", "'no'", "enabled must be true or false"),
    ("upstream: a, failover: 0", "0", "failover must be true or false"),
    ("upstream: a, retry_on: [reset, 4xx]", "4xx", "retry_on: '4xx' is not one of connect-failure, reset, 5xx"),
    ("upstream: a, retry_on: 'reset,,5xx'", "'reset", "retry_on: '' is not one of"),
    ("upstream: a, retry_on: 5", "5", "retry_on must be a list of"),
    ("upstream: a, retry_on: []", "[]", "retry_on is empty"),
    ("upstream: a, mirror: {upstream: nope}", "nope", "unknown upstream 'nope'"),
    ("upstream: a, mirror: {percent: 5}", "{percent", "mirror needs `upstream`"),
    ("upstream: a, mirror: {upstream: m, percent: 101}", "101", "mirror.percent must be a number from 0 to 100"),
    ("upstream: a, mirror: {upstream: m, pct: 1}", "pct", "unknown key 'pct' in mirror"),
    ("upstream: a, mirror: []", "[]", "mirror is an empty list"),
    ("upstream: a, fault: {percent: 5}", "{percent", "fault needs `delay`"),
    ("upstream: a, fault: {delay: -1}", "-1", "fault.delay must be a number of seconds"),
    ("upstream: a, fault: {delay: 2h}", "2h", "fault.delay must be a number of seconds"),
    ("upstream: a, fault: {delay: 3601}", "3601", "at most 3600"),
    ("upstream: a, fault: {abort: 99}", "99", "fault.abort must be an HTTP status code from 200 to 599"),
    ("upstream: a, fault: {abort: '503'}", "'503'", "fault.abort must be an HTTP status code"),
    ("upstream: a, fault: {abort: {percent: 3}}", "{percent: 3}", "fault.abort needs `status`"),
    ("upstream: a, fault: {abort: 503, percent: -3}", "-3", "fault.percent must be a number from 0 to 100"),
    ("upstream: a, fault: {abort: 503, after: 3}", "after", "unknown key 'after' in fault"),
    ("upstream: s, sni: 10.0.0.1", "10.0.0.1", "is not a host name"),
    ("upstream: s, sni: 'a.example:443'", "'a.example", "is not a host name"),
    ("upstream: s, sni: ''", "''", "sni must be a host name or preserve"),
    ("upstream: a, sni: api.example", "sni", "sni applies to an https upstream"),
    ("respond: {status: 200}, sni: api.example", "sni", "a respond backend has none"),
    ("upstream: a, throttle: 64", "64", "throttle must be a mapping"),
    ("upstream: a, throttle: {}", "{}", "throttle needs `kbps`"),
    ("upstream: a, throttle: {kbps: 0}", "0", "throttle.kbps must be a number of kilobits per second > 0"),
    ("respond: {status: 200}, throttle: {kbps: 8}", "throttle", "this one answers itself (respond)"),
    ("respond: {status: 200}, mirror: m", "mirror", "this one answers itself (respond)"),
    ("respond: {status: 200}, retry_on: reset", "retry_on", "this one answers itself (respond)"),
    # review: an sni on a split none of whose arms is https was accepted and did nothing
    ("split: {by: 'header:x', weights: {a: 1, m: 1}}, sni: api.example", "sni", "sni applies to an https upstream"),
    # review: an integer too large for a float was an OverflowError traceback
    ("upstream: a, fault: {delay: 1" + "0" * 400 + "}", "1000", "fault.delay must be a number of seconds"),
    ("upstream: a, fault: {delay: {seconds: 1" + "0" * 400 + "}}", "1000", "fault.delay.seconds must be"),
    # review: `$` matched before a trailing newline, so a name ending in a line break was sent as the SNI
    ('upstream: s, sni: "api.example\\n"', '"api', "is not a host name"),
])
def test_bad_forms_are_located(tmp_path, fields, token, message):
    body = f"  - name: r\n    backends:\n      - {{name: x, {fields}}}\n"
    text = err(tmp_path, body)
    line = HEAD.count("\n") + 3
    col = body.splitlines()[2].index(token) + 1
    prefix = f"{tmp_path / 'f.yaml'}:{line}:{col}: "
    assert any(ln.startswith(prefix) and message in ln for ln in text.splitlines()), (prefix, message, text)
    assert "Traceback" not in text


def test_respond_file_and_dir(tmp_path):
    (tmp_path / "mock.json").write_text('{"ok": true}')
    (tmp_path / "mocks").mkdir()
    b = backend(tmp_path, "respond: {status: 201, file: mock.json}")
    assert (b.respond.status, b.respond.file, b.respond.root) == \
        (201, os.path.realpath(tmp_path / "mock.json"), os.path.realpath(tmp_path))
    d = backend(tmp_path, "respond: {dir: mocks/}", match="    match: {path: /api/*}\n")
    assert d.respond.dir == os.path.realpath(tmp_path / "mocks")


@pytest.mark.parametrize("respond, match, token, message", [
    ("{file: missing.json}", "", "missing", "there is no such file"),
    ("{file: ../outside.json}", "", "../", "is outside the rules file's folder"),
    ("{file: /etc/passwd}", "", "/etc", "must be relative to the rules file's folder"),
    ("{file: link.json}", "", "link", "outside the rules file's folder ("),
    ("{file: mock.json, body: x}", "", "file", "the body comes from the file"),
    ("{file: mock.json, dir: mocks}", "", "dir:", "use file or dir, not both"),
    ("{dir: mocks}", "", "mocks", "the route's match.path must end in /*"),
    ("{dir: nope/}", "    match: {path: /a/*}\n", "nope", "there is no such folder"),
    ("{dir: mock.json}", "    match: {path: /a/*}\n", "mock.json", "there is no such folder"),
])
def test_bad_local_answers_are_located(tmp_path, respond, match, token, message):
    (tmp_path / "mock.json").write_text("{}")
    (tmp_path / "mocks").mkdir()
    outside = tmp_path.parent / f"outside-{tmp_path.name}.json"
    outside.write_text("secret")
    os.symlink(outside, tmp_path / "link.json")
    body = f"  - name: r\n{match}    backends:\n      - {{name: x, respond: {respond}}}\n"
    text = err(tmp_path, body)
    lines = body.splitlines()
    line = HEAD.count("\n") + len(lines)
    col = lines[-1].index(token) + 1
    prefix = f"{tmp_path / 'f.yaml'}:{line}:{col}: "
    assert any(ln.startswith(prefix) and message in ln for ln in text.splitlines()), (prefix, message, text)
    if "link" in respond:
        assert "through a symbolic link" in text


def test_the_schema_agrees_with_the_loader(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    import yaml
    from condroute.cli.schema import build_schema
    v = jsonschema.Draft202012Validator(build_schema())
    (tmp_path / "mock.json").write_text("{}")
    (tmp_path / "mocks").mkdir()
    good = textwrap.dedent("""\
        version: 1
        upstreams: {a: "http://127.0.0.1:1", s: "https://127.0.0.1:2", m: "http://127.0.0.1:3"}
        routes:
          - name: r
            enabled: false
            match: {path: /api/*}
            backends:
              - {name: a, upstream: a, enabled: false, failover: false, retries: 2, retry_on: [reset, 5xx],
                 mirror: {upstream: m, percent: 10}, fault: {delay: 1.5, abort: 503, percent: 5},
                 throttle: {kbps: 256}}
              - {name: b, upstream: s, sni: api.example, retry_on: "gateway-error,reset", mirror: [m, {upstream: a}],
                 fault: {delay: {seconds: 2s, percent: 1}, abort: {status: 500}}}
              - {name: c, upstream: s, sni: preserve}
              - {name: f, respond: {status: 201, file: mock.json, headers: {X-A: b}}, fault: {delay: 500ms}}
              - {name: d, respond: {dir: mocks}}
        """)
    p = write(tmp_path, good)
    load_rules(str(p))                                    # the loader takes it
    assert [e.message for e in v.iter_errors(yaml.safe_load(good))] == []
    for bad in ("retry_on: [reset, 4xx]", "fault: {percent: 5}", "throttle: {kbps: 0}", "mirror: {percent: 5}",
                "enabled: 'no'", "fault: {abort: 99}", "retry_on: 'reset;5xx'",
                # review: the schema took these, the loader refuses them
                "throttle: {kbps: 20000000}", "mirror: ''", "mirror: {upstream: ''}",
                "fault: {delay: 0}", "fault: {delay: {seconds: 0s}}"):
        doc = yaml.safe_load(good.replace("sni: preserve}", f"sni: preserve, {bad}}}"))
        assert list(v.iter_errors(doc)), bad
        p = write(tmp_path, good.replace("sni: preserve}", f"sni: preserve, {bad}}}"))
        with pytest.raises(RulesError):
            load_rules(str(p))
    for bad in ("sni: 10.0.0.1", "sni: 'a.example:443'", "sni: 'api example'"):
        text = good.replace("sni: preserve}", f"{bad}}}")
        assert list(v.iter_errors(yaml.safe_load(text))), bad
        with pytest.raises(RulesError):
            load_rules(str(write(tmp_path, text)))
