"""Hostile text in a rules file reaches each gateway exactly, or is refused with a located reason.

Every string below (quotes, backslashes, ``$``/``${x}``/``%d``/``%{x}`` — the template languages
of nginx, HAProxy and Envoy —, ``{}``, ``;``, ``#``, ``|``, spaces and tabs, non-ASCII, 300
characters, leading ``-``/``~``/``=``) is put into a header ``equals`` and ``prefix``, a query
value, a cookie value, ``set_headers``, ``remove_headers``, a ``respond`` body and header, route
and backend names; names that collide once sanitised (``x-y``, ``x_y``, ``x.y``) name routes and
upstreams, and upstream URLs carry a path with ``%20``. Each gateway (envoy, nginx, haproxy real
binaries; httproute and krakend by their round trip) must then decide every case as condroute
does (``verify_file(..., allow_partial=True)``: 0 failed), and anything skipped must be skipped
because of a located ``not exported`` refusal.

Cases that send a string in a request header or compare a response header use ASCII strings only:
the verifier writes and reads header fields as latin-1 (http.client), while gateways and
mitmproxy speak UTF-8 there; non-ASCII still goes into every rule and every body."""
from __future__ import annotations

import json
import re
import time
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from condroute.export.targets import verify_file
from export_support import binary_or_skip

HOSTILE = ['say "hi"', "it's", "back\\slash", "$x", "${x}", "100%", "%d %s", "{a}", "}", "a;b", "#c", "a|b",
           "sp ace", "tab\there", "é", "😀", "x" * 300, "-leading", "~tilde", "=eq", "\\d+$", "'\"$;{}#|\\",
           "$host", "$1", "@at", "a,b", "<>&", "`cmd`", "!bang", "*star", "?q", "[br]", "%{x}", "%[x]", "%%",
           "%25", "a\\nb", "}}{{", "{{x}}", "\\\\", "default", "include x;"]
# routes and upstreams whose names collide once sanitised, or look like flags/map keys
NAMES = [("x-y", "u-3"), ("x_y", "u_3"), ("x.y", "u.3"), ("-x", "~u"), ("=x", "u#4"), ("a b;c", "u 5"),
         ("r\n}\nevil", "u6"), ("b\rlisten 1;\u2028x\x85# y", "u7")]
TARGETS = ("envoy", "nginx", "haproxy", "httproute", "krakend")
GATEWAYS = ("envoy", "nginx", "haproxy")


def q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _header_safe(s: str) -> bool:
    """Sendable (and comparable) as a header value by the verifier: ASCII, no CR/LF, no edge blanks."""
    return s.isascii() and s == s.strip(" \t") and "\r" not in s and "\n" not in s


def build(strings: list[str], tmp, names=NAMES) -> tuple[str, str]:
    """A rules file with each string in every place text goes, and cases that exercise it."""
    ups = ["  u1: http://127.0.0.1:9001", "  'u-2': http://127.0.0.1:9002/base"]
    routes: list[str] = []
    cases: list[dict] = []

    def case(name: str, url: str, backend: str, headers=None, cookies=None) -> None:
        req = {"url": url, "headers": headers or {}}
        if cookies:
            req["cookies"] = cookies
        cases.append({"name": name, "request": req, "expect": {"backend": backend}})

    for i, s in enumerate(strings):
        body = s + "\n"
        rh = s if _header_safe(s) else "ascii"
        routes += [
            f"  - name: {q(f'a{i} {s}')}", f"    match: {{path: /a{i}/x}}", "    backends:",
            f"      - name: {q('hdr' + s)}", f"        when: {{header: {{X-T: {q(s)}}}}}", "        upstream: u1",
            f"        set_headers: {{X-Set: {q(s)}}}",
            f"      - name: {q('pre' + s)}", f"        when: {{header: {{X-P: {{prefix: {q(s)}}}}}}}",
            "        upstream: u-2",
            f"      - name: {q('q' + s)}", f"        when: {{query: {{q: {q(s)}}}}}", "        upstream: u1",
            "        remove_headers: [X-Gone]",
            f"      - name: {q('fa' + s)}", "        fallback: true", "        upstream: u-2",
            f"  - name: {q(f'b{i} {s}')}", f"    match: {{path: /b{i}/x}}", "    backends:",
            f"      - name: {q('ck' + s)}", f"        when: {{cookie: {{c: {q(s)}}}}}", "        upstream: u-2",
            f"      - name: {q('fb' + s)}", "        fallback: true", "        upstream: u1",
            f"  - name: {q(f'c{i} {s}')}", f"    match: {{path: /c{i}/x}}", "    backends:",
            f"      - name: {q('rs' + s)}", "        fallback: true",
            f"        respond: {{status: 200, body: {q(body)}, headers: {{X-Body: {q(rh)}}}}}"]
        if _header_safe(s):
            case(f"hdr {i}", f"http://h.test/a{i}/x", "hdr" + s, {"X-T": s, "X-Gone": "g"})
            case(f"pre {i}", f"http://h.test/a{i}/x", "pre" + s, {"X-P": s + "tail"})
            case(f"fa {i}", f"http://h.test/a{i}/x", "fa" + s, {"X-T": s + "no"})
            if not re.search(r'[;", \t]', s):
                case(f"ck {i}", f"http://h.test/b{i}/x", "ck" + s, cookies={"c": s})
        case(f"q {i}", f"http://h.test/a{i}/x?q=" + urllib.parse.quote(s, safe=""), "q" + s, {"X-Gone": "g"})
        case(f"rs {i}", f"http://h.test/c{i}/x", "rs" + s)
    for j, (n, u) in enumerate(names):
        raw = urllib.parse.quote(n, safe="=;~")      # a literal path part as it is on the wire
        ups.append(f"  {q(u)}: http://127.0.0.1:{9100 + j}/p{j}%20{j}")
        routes += [f"  - name: {q(n)}", f"    match: {{path: {q(f'/n{j}/{raw}/{{id}}')}}}", "    backends:",
                   f"      - name: {q(n)}", f"        when: {{header: {{X-R: {{regex: {q('^(?P<v>[0-9]+)[$]$')}}}}}}}",
                   f"        upstream: {q(u)}", f"        set_headers: {{X-N: {q(raw)}}}",
                   f"      - name: {q(n + '.fb')}", "        fallback: true", "        upstream: u1"]
        url = f"http://h.test/n{j}/{raw}/7?z=1"
        case(f"n {j}", url, n, {"X-R": "12$"})
        case(f"nfb {j}", url, n + ".fb", {"X-R": "12"})
    rules = tmp / "hostile.yaml"
    rules.write_text("\n".join(["version: 1", "upstreams:", *ups, "routes:", *routes]) + "\n")
    cases_path = tmp / "hostile.cases.yaml"
    cases_path.write_text(json.dumps(cases, ensure_ascii=False))
    return str(rules), str(cases_path)


def assert_exact_or_refused(name: str, strings: list[str], tmp) -> None:
    if name in GATEWAYS:
        binary_or_skip(name)
    # an HTTPRoute holds at most 16 rules: a few strings (or names) per document
    chunks = ([(strings[k:k + 3], ()) for k in range(0, len(strings), 3)] + [([], NAMES[:3]), ([], NAMES[3:])]
              if name == "httproute" else [(strings, NAMES)])
    passed = 0
    for k, (part, names) in enumerate(chunks):
        d = tmp / str(k)
        d.mkdir()
        rules, cases = build(part, d, names)
        r = verify_file(name, rules, cases, allow_partial=True)
        assert r.failed == 0, "\n".join(r.lines)
        assert all(re.match(rf".+\.yaml:\d+:\d+: not exported to {name}: ", x) for x in r.refused), r.refused
        if r.skipped:
            assert r.refused, "\n".join(r.lines)
        passed += r.passed
    assert passed >= len(strings), f"{name}: only {passed} cases compared"


def test_the_cases_say_what_condroute_decides(tmp_path):
    """The generated cases hold in condroute itself (else the gateways would be compared with nothing)."""
    from condroute.cli.cases import load_cases
    from condroute.engine import decide
    from condroute.rules import load_rules

    rules, cases = build(HOSTILE, tmp_path)
    compiled = load_rules(rules)
    loaded = load_cases(cases)
    assert len(loaded) > 200
    for c in loaded:
        assert decide(compiled, c.request).backend == c.expect["backend"], c.name


@pytest.mark.slow
@pytest.mark.parametrize("name", TARGETS)
def test_hostile_text_arrives_exactly_or_is_refused(name, tmp_path):
    started = time.monotonic()
    assert_exact_or_refused(name, HOSTILE, tmp_path)
    assert time.monotonic() - started < 40


# empty values, bodies and the other edges, each in its own route (a refusal skips only its cases)
EDGES = r"""version: 1
upstreams:
  u1: http://127.0.0.1:9001
routes:
  - name: set-empty
    match: {path: /set-empty}
    backends:
      - {name: b, fallback: true, upstream: u1, set_headers: {X-Empty: "", X-Pct: "%d%%"}}
  - name: respond-empty-header
    match: {path: /respond-empty-header}
    backends:
      - {name: b, fallback: true, respond: {status: 200, body: "x", headers: {X-R: ""}}}
  - name: type-no-body
    match: {path: /type-no-body}
    backends:
      - {name: b, fallback: true, respond: {status: 200, body: "", headers: {Content-Type: application/json}}}
  - name: nul-body
    match: {path: /nul-body}
    backends:
      - {name: b, fallback: true, respond: {status: 200, body: "a\u0000b\r\n\t\"'\\ $x ${y} %d %{z} é 😀"}}
  - name: no-body
    match: {path: /no-body}
    backends:
      - {name: b, fallback: true, respond: {status: 403, body: ""}}
  - name: fold
    match: {path: /fold}
    backends:
      - {name: b, when: {header: {X-A: {equals: "ÉtÉ", ignore_case: true}}}, upstream: u1}
      - {name: c, fallback: true, respond: {status: 200, body: "no"}}
  - name: quoted-type
    match: {path: /quoted-type}
    backends:
      - {name: b, fallback: true, respond: {status: 200, body: "{}", headers: {Content-Type: "text/plain; charset=\"utf-8\"", X-Q: "a\"b'c\\d;e#f{g}"}}}
"""
EDGE_PATHS = ("set-empty", "respond-empty-header", "type-no-body", "nul-body", "no-body", "fold", "quoted-type")


@pytest.mark.slow
@pytest.mark.parametrize("name", TARGETS)
def test_empty_values_and_edges_arrive_exactly_or_are_refused(name, tmp_path):
    """set_headers "", a respond header "", Content-Type without a body, a NUL in a body, ignore_case
    on non-ASCII text: each gateway sends them as condroute does, or refuses the route, located."""
    if name in GATEWAYS:
        binary_or_skip(name)
    rules = tmp_path / "edges.yaml"
    rules.write_text(EDGES)
    cases = tmp_path / "edges.cases.yaml"
    cases.write_text(json.dumps([{"name": p, "request": {"url": f"http://h.test/{p}"}, "expect": {"route": p}}
                                 for p in EDGE_PATHS]))
    r = verify_file(name, str(rules), str(cases), allow_partial=True)
    assert r.failed == 0, "\n".join(r.lines)
    assert all(re.match(rf".+\.yaml:\d+:\d+: not exported to {name}: ", x) for x in r.refused), r.refused
    assert r.passed + r.skipped == len(EDGE_PATHS), "\n".join(r.lines)
    if name in GATEWAYS:
        assert r.passed >= 2, "\n".join(r.lines)


ALPHABET = st.sampled_from(list("\"'\\$%{}();#|&<>`!*?[]~=-_., \té😀") + ["${", "%{", "%[", "\\d", "$1", "{{"])
TEXT = st.lists(ALPHABET | st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
                min_size=1, max_size=12).map("".join)


@pytest.mark.slow
@pytest.mark.parametrize("name", TARGETS)
@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(strings=st.lists(TEXT, min_size=4, max_size=8, unique=True))
def test_generated_text_arrives_exactly_or_is_refused(name, strings, tmp_path_factory):
    assert_exact_or_refused(name, strings, tmp_path_factory.mktemp("t"))
