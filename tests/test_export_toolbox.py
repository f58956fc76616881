"""export and the dev-traffic toolbox fields (enabled, failover, retry_on, mirror, fault, sni,
throttle, respond.file/dir): each one a target cannot express exactly is refused, located at its
key; ``enabled: false`` leaves the route or backend out; respond.file is inlined and an abort of
every request answered, both verified on the real gateways (one start per gateway)."""
from __future__ import annotations

import os

import pytest
from export_support import binary_or_skip

from condroute.export import toolbox
from condroute.export.base import ExportOptions
from condroute.export.targets import NAMES, read_model, target, verify_file

TARGETS = ("envoy", "nginx", "haproxy", "httproute", "krakend")

# one route per field; each line number below is the key's line in FIELDS_RULES
FIELDS_RULES = """\
version: 1
upstreams:
  a: http://127.0.0.1:9001
  b: http://127.0.0.1:9002
  tls: https://10.0.0.5:8443
routes:
  - name: r-retry
    match: {path: /retry/*}
    backends:
      - name: x
        upstream: a
        retries: 2
        retry_on: [reset, 5xx]
  - name: r-mirror
    match: {path: /mirror/*}
    backends:
      - name: x
        upstream: a
        mirror: {upstream: b, percent: 100}
        preserve_host: true
  - name: r-fault
    match: {path: /fault/*}
    backends:
      - name: x
        upstream: a
        fault: {delay: 2, percent: 50}
  - name: r-sni
    match: {path: /sni/*}
    backends:
      - name: x
        upstream: tls
        sni: api.internal
  - name: r-throttle
    match: {path: /slow/*}
    backends:
      - name: x
        upstream: a
        throttle: {kbps: 256}
  - name: r-dir
    match: {path: /mocks/*}
    backends:
      - name: x
        respond: {status: 200, dir: mocks}
  - name: r-file
    match: {path: /mock}
    backends:
      - name: x
        respond: {status: 200, file: mock.json}
  - name: r-sampled-abort
    match: {path: /abort/*}
    backends:
      - name: x
        upstream: a
        fault: {abort: 503, percent: 10}
"""
# field -> (line, column) of its key
KEYS = {"retry_on": (13, 9), "mirror": (19, 9), "fault": (26, 9), "sni": (32, 9), "throttle": (38, 9),
        "dir": (43, 32), "file": (48, 32), "sampled-abort": (54, 9)}
# what each target refuses (the rest it exports)
REFUSED = {
    "envoy": {"retry_on", "fault", "sni", "throttle", "dir", "sampled-abort"},
    "nginx": {"retry_on", "fault", "sni", "throttle", "dir", "sampled-abort"},
    "haproxy": {"retry_on", "mirror", "fault", "sni", "throttle", "dir", "sampled-abort"},
    "httproute": {"retry_on", "fault", "sni", "throttle", "dir", "file", "sampled-abort"},
    "krakend": {"retry_on", "mirror", "fault", "sni", "throttle", "dir", "file", "sampled-abort"},
}
# a word of each why a gateway user should read
WORDS = {"retry_on": ("retr",), "mirror": ("mirror",), "fault": ("fault",), "sni": ("sni",),
         "throttle": ("throttle",), "dir": ("respond.dir",), "file": ("respond.file",), "sampled-abort": ("fault",)}


@pytest.fixture
def fields_file(tmp_path):
    (tmp_path / "mocks").mkdir()
    (tmp_path / "mocks" / "a.json").write_text("{}")
    (tmp_path / "mock.json").write_text('{"ok": true}\n')
    p = tmp_path / "fields.yaml"
    p.write_text(FIELDS_RULES)
    return str(p)


def test_the_fixture_lines_are_the_keys():
    lines = FIELDS_RULES.splitlines()
    for fld, (line, col) in KEYS.items():
        key = {"dir": "dir", "file": "file", "sampled-abort": "fault"}.get(fld, fld)
        assert lines[line - 1][col - 1:].startswith(f"{key}:"), (fld, lines[line - 1])


@pytest.mark.parametrize("name", TARGETS)
def test_every_field_refused_at_its_key_or_exported(name, fields_file):
    assert name in NAMES
    exp = target(name).export(read_model(fields_file), ExportOptions())
    got = {(e.at.line, e.at.col): e for e in exp.refused}
    for fld, (line, col) in KEYS.items():
        if fld in REFUSED[name]:
            assert (line, col) in got, (fld, [e.line(name) for e in exp.refused])
            e = got[(line, col)]
            assert e.at.file == fields_file
            assert any(w in e.why for w in WORDS[fld]), e.why
            assert e.line(name).startswith(f"{fields_file}:{line}:{col}: not exported to {name}: ")
        else:
            assert (line, col) not in got, (fld, got[(line, col)].why)
    if name in ("envoy", "nginx", "haproxy"):   # the documents refuse paths such as /* (KrakenD) too
        assert set(got) == {KEYS[f] for f in REFUSED[name]}


@pytest.mark.parametrize("name", ("envoy", "nginx", "haproxy"))
def test_respond_file_is_inlined_with_its_type(name, fields_file):
    exp = target(name).export(read_model(fields_file), ExportOptions())
    text = exp.text + "".join(exp.files.values())
    assert "application/json" in text
    assert "ok" in text
    assert any("respond.file mock.json: inlined" in n for n in exp.notes)


def test_respond_file_too_large_or_binary_refused_at_the_key(tmp_path):
    (tmp_path / "big.txt").write_text("x" * (toolbox.MAX_INLINE + 1))
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    p = tmp_path / "r.yaml"
    p.write_text("version: 1\nroutes:\n  - name: big\n    match: {path: /big}\n    backends:\n"
                 "      - name: x\n        respond:\n          status: 200\n          file: big.txt\n"
                 "  - name: img\n    match: {path: /img}\n    backends:\n"
                 "      - {name: x, respond: {file: img.png}}\n")
    for name in ("envoy", "nginx", "haproxy"):
        exp = target(name).export(read_model(str(p)), ExportOptions())
        lines = sorted(e.line(name) for e in exp.refused)
        assert lines == [f"{p}:13:29: not exported to {name}: respond.file: img.png is not UTF-8 text; only "
                         f"text is inlined into the {name} configuration",
                         f"{p}:9:11: not exported to {name}: respond.file: big.txt is larger than 4096 bytes, too "
                         f"large to inline into the {name} configuration (Envoy's direct responses stop at 4 KiB; "
                         f"serve it from a static file server)"]


ENABLED_RULES = """\
version: 1
upstreams:
  a: http://127.0.0.1:9001
  b: http://127.0.0.1:9002
  c: http://127.0.0.1:9003
routes:
  - name: switched-off
    enabled: false
    match: {path: /off/*}
    backends:
      - {name: x, upstream: a}
  - name: one-backend-off
    match: {path: /bk/*}
    backends:
      - {name: zzoff, upstream: a, enabled: false}
      - {name: second, upstream: b}
  - name: fallback-off
    match: {path: /fb/*}
    backends:
      - {name: tagged, upstream: a, when: {header: {X-Tag: "1"}}}
      - {name: rest, upstream: b, fallback: true, enabled: false}
  - name: pinned
    match: {path: /pinned/*}
    backends:
      - {name: x, upstream: a, failover: false}
  - name: mock
    match: {path: /mock}
    backends:
      - {name: x, respond: {status: 201, file: mock.json, headers: {X-Mock: "yes"}}}
  - name: text-mock
    match: {path: /hello}
    backends:
      - {name: x, respond: {file: hello.txt}}
  - name: broken
    match: {path: /broken/*}
    backends:
      - {name: x, upstream: a, fault: {abort: 503}}
  - name: mirrored
    match: {path: /mirrored/*}
    backends:
      - {name: x, upstream: a, preserve_host: true, mirror: {upstream: c, percent: 100}}
  - name: mirrored-own-host
    match: {path: /copied/*}
    backends:
      - {name: x, upstream: a, mirror: {upstream: c, percent: 100}}
  - name: catch-all
    match: {path: /*}
    backends:
      - {name: x, upstream: b}
"""
ENABLED_CASES = """\
- name: a switched-off route is passed over
  request: {url: "http://shop.example/off/1"}
  expect: {route: catch-all, upstream: b}
- name: a switched-off backend is passed over
  request: {url: "http://shop.example/bk/1"}
  expect: {route: one-backend-off, backend: second, upstream: b}
- name: the backend before a switched-off fallback
  request: {url: "http://shop.example/fb/1", headers: {X-Tag: "1"}}
  expect: {route: fallback-off, backend: tagged, upstream: a}
- name: a switched-off fallback selects nothing
  request: {url: "http://shop.example/fb/1"}
  expect: {route: fallback-off, backend: null}
- name: failover false forwards as usual
  request: {url: "http://shop.example/pinned/x"}
  expect: {route: pinned, upstream: a}
- name: a file answers
  request: {url: "http://shop.example/mock"}
  expect: {route: mock, outcome: respond, status: 201}
- name: a text file answers
  request: {url: "http://shop.example/hello"}
  expect: {route: text-mock, outcome: respond}
- name: an abort of every request
  request: {url: "http://shop.example/broken/1"}
  expect: {route: broken, outcome: respond, status: 503}
- name: a mirror of every request
  request: {url: "http://shop.example/mirrored/1?q=2"}
  expect: {route: mirrored, upstream: a}
- name: a mirror's copy goes with the mirror's own Host
  request: {url: "http://shop.example/copied/1"}
  expect: {route: mirrored-own-host, upstream: a}
"""


@pytest.fixture
def enabled_file(tmp_path):
    (tmp_path / "mock.json").write_text('{"items": [1, 2], "name": "caf\\u00e9 \\"quoted\\" $x %d"}\n')
    (tmp_path / "hello.txt").write_text("hello from a file\nline two é\n")
    p = tmp_path / "switches.yaml"
    p.write_text(ENABLED_RULES)
    (tmp_path / "switches.cases.yaml").write_text(ENABLED_CASES)
    return str(p)


@pytest.mark.parametrize("name", TARGETS)
def test_switched_off_parts_are_left_out(name, enabled_file):
    exp = target(name).export(read_model(enabled_file), ExportOptions())
    if name in ("envoy", "nginx"):
        assert exp.refused == []
    if name == "haproxy":
        assert [(e.at.line, e.at.col) for e in exp.refused] == [(41, 53), (45, 32)]      # the mirrors
    text = exp.text
    assert "switched-off" not in text
    assert "zzoff" not in text
    if name in ("envoy", "nginx", "haproxy"):
        assert any("failover: false" in n for n in exp.notes), exp.notes


@pytest.mark.parametrize("name", ("envoy", "nginx", "haproxy"))
def test_verified_on_the_gateway(name, enabled_file):
    """One gateway start: disabled routes, backends and a fallback are not served; a file and an
    abort of every request answer as condroute does (status, body, Content-Type); a mirror of every
    request sends its copy (path under the mirror's base path, the client's Host)."""
    binary_or_skip(name)
    r = verify_file(name, enabled_file, enabled_file.replace(".yaml", ".cases.yaml"), allow_partial=True)
    assert r.failed == 0, "\n".join(r.lines)
    if name == "haproxy":      # no mirrors: that route is refused, its case skipped
        assert r.refused == [f"{enabled_file}:{at}: not exported to haproxy: {toolbox.WHY[('haproxy', 'mirror')]}"
                             for at in ("41:53", "45:32")]
        assert (r.passed, r.skipped) == (8, 2)
    else:
        assert r.refused == []
        assert (r.passed, r.skipped) == (10, 0)


def test_httproute_round_trip(enabled_file):
    """The switched-off parts are not in the document: the cases they would decide pass; a file and
    a fault are refused at their keys (HTTPRoute has neither)."""
    r = verify_file("httproute", enabled_file, enabled_file.replace(".yaml", ".cases.yaml"))
    assert r.failed == 0, "\n".join(r.lines)
    assert r.passed == 6
    whys = [x.split(": not exported to httproute: ", 1)[1] for x in r.refused]
    assert not any("enabled" in w or "switched-off" in w or "zzoff" in w for w in whys)
    assert f"{enabled_file}:29:42: not exported to httproute: respond.file: HTTPRoute v1 has no direct " \
           "response (route it to a Service that serves the file)" in r.refused
    assert any(x.startswith(f"{enabled_file}:37:32: not exported to httproute: fault: ") for x in r.refused)


KRAKEND_RULES = """\
version: 1
settings: {on_no_match: error}
upstreams:
  a: http://127.0.0.1:9001
  b: http://127.0.0.1:9002
routes:
  - name: switched-off
    enabled: false
    match: {path: /a, methods: [GET]}
    backends:
      - {name: x, upstream: a}
  - name: same-path-later
    match: {path: /a, methods: [GET]}
    backends:
      - {name: x, upstream: b}
  - name: one-backend-off
    match: {path: /bk, methods: [GET]}
    backends:
      - {name: zzoff, upstream: a, enabled: false}
      - {name: second, upstream: b}
  - name: pinned
    match: {path: /pinned, methods: [GET]}
    backends:
      - {name: x, upstream: a, failover: false}
"""
KRAKEND_CASES = """\
- name: a switched-off route is passed over
  request: {url: "http://shop.example/a"}
  expect: {route: same-path-later, upstream: b}
- name: a switched-off backend is passed over
  request: {url: "http://shop.example/bk"}
  expect: {route: one-backend-off, backend: second, upstream: b}
- name: failover false forwards as usual
  request: {url: "http://shop.example/pinned"}
  expect: {route: pinned, upstream: a}
"""


def test_krakend_round_trip(tmp_path):
    p = tmp_path / "k.yaml"
    p.write_text(KRAKEND_RULES)
    (tmp_path / "k.cases.yaml").write_text(KRAKEND_CASES)
    r = verify_file("krakend", str(p), str(tmp_path / "k.cases.yaml"))
    assert r.refused == []
    assert r.failed == 0, "\n".join(r.lines)
    assert r.passed == 3
    exp = target("krakend").export(read_model(str(p)))
    assert "zzoff" not in exp.text and "switched-off" not in exp.text
    assert any("failover: false" in n for n in exp.notes)


def test_where_key_falls_back_to_the_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("version: 1\nroutes:\n  - name: a\n    backends:\n      - {name: x, respond: {status: 204}}\n")
    assert str(toolbox.where_key(str(p), 5, "mirror")) == f"{p}:5:9"
    assert str(toolbox.where_key(str(p), 5, "respond", "status")) == f"{p}:5:29"
    assert str(toolbox.where_key(str(os.path.join(str(tmp_path), "gone.yaml")), 3, "mirror")).endswith(":3:1")


def test_a_fault_that_never_fires_is_no_fault(tmp_path):
    """percent 0 never injects (engine._drawn): the backend forwards as usual on every target; a
    delay of percent 0 beside an abort of every request leaves the abort."""
    p = tmp_path / "r.yaml"
    p.write_text("version: 1\nupstreams: {a: http://127.0.0.1:9001}\nroutes:\n  - name: r\n    backends:\n"
                 "      - {name: x, upstream: a, when: {header: {X-A: '1'}}, fault: {abort: 503, percent: 0}}\n"
                 "      - {name: y, upstream: a, fault: {delay: {seconds: 2, percent: 0}, abort: 500}}\n")
    m = read_model(str(p))
    for name in TARGETS:
        got = toolbox.prepare(m, name)
        x = got.rules.routes[0].backends[0]
        assert x.fault is None and x.upstream is not None
        if name in toolbox.ANSWERING:
            assert got.refused == []
            y = got.rules.routes[0].backends[1]
            assert (y.respond.status, y.respond.body, y.upstream) == (500, "fault filter abort", None)
        else:
            assert [(e.at.line, e.at.col) for e in got.refused] == [(7, 32)]


def test_two_backends_on_one_line_each_located_at_its_own_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("version: 1\nupstreams: {a: http://127.0.0.1:9001}\nroutes:\n  - name: r\n    backends: ["
                 "{name: x, upstream: a, when: {header: {X-A: '1'}}, throttle: {kbps: 8}}, "
                 "{name: y, upstream: a, throttle: {kbps: 9}}]\n")
    exp = target("nginx").export(read_model(str(p)), ExportOptions())
    line = p.read_text().splitlines()[4]
    assert [(e.at.line, e.at.col) for e in exp.refused] == \
        [(5, line.index("throttle") + 1), (5, line.rindex("throttle") + 1)]
