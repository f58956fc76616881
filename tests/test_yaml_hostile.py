"""The YAML/JSON loader under hostile or surprising input (issue 11, items 3, 5 and 9):
a value is the text written (YAML 1.1's `NO`/`yes`/`0777` never change what is compared), aliases
are converted once and what they add is capped (alias bombs), and every bad input is a located
`FILE:LINE:COLUMN: message` -- never another exception."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from condroute.load import yamlpos
from condroute.cli.main import main
from condroute.engine import decide
from condroute.errors import RulesError
from condroute.mitm.addon import ConditionalRouting
from condroute.request import RequestView
from condroute.rules import load_rules, load_rules_bytes, load_rules_text
from condroute.load.yamlpos import parse_text

FB = "http://127.0.0.1:9001"
HIT = "http://127.0.0.1:9002"


def rules(text: str, name: str = "t.yaml"):
    return load_rules_text(textwrap.dedent(text), name)


def when(cond: str):
    """One route: backend `hit` when ``cond`` holds, else `fb`."""
    return rules(f"""
        version: 1
        routes:
          - name: r
            backends:
              - {{name: hit, when: {cond}, upstream: "{HIT}"}}
              - {{name: fb, fallback: true, upstream: "{FB}"}}
        """)


def backend(r, url="http://h.example/", headers=()) -> str | None:
    return decide(r, RequestView.from_url(url, method="GET", headers=list(headers), peer="10.1.2.3")).backend


def err(text: str, name: str = "f.yaml") -> str:
    with pytest.raises(RulesError) as ei:
        load_rules_text(text, name)
    return str(ei.value)


# ---------------------------------------------------------------------------------------------------
# 3. Text stays text
# ---------------------------------------------------------------------------------------------------
WORDS = ["NO", "no", "yes", "Yes", "on", "off", "OFF", "y", "n", "true", "False", "0777", "1_000", "0x1F",
         "0o17", "2026-12-01", "2026-12-01T10:00:00Z", "~", "null", ".inf", "-.inf", ".nan", "1e3", "1.0",
         "+1", "007", "1:30", "190:20:30", "=", "<<"]


@pytest.mark.parametrize("word", WORDS)
def test_a_header_value_is_the_text_written(word):
    r = when(f"{{header: {{X-T: {word}}}}}")
    assert backend(r, headers=[("X-T", word)]) == "hit"
    # and not what YAML 1.1 would have made of it
    for other in ("false", "true", "511", "1000", "31", "null", "inf", "1000.0", "1", "None"):
        if other != word:
            assert backend(r, headers=[("X-T", other)]) == "fb", (word, other)


@pytest.mark.parametrize("word", ["NO", "yes", "on", "0777", "1_000", "2026-12-01", "~", "null", "y"])
def test_header_cookie_query_names_and_values_are_the_text_written(word):
    r = when(f"{{header: {{{word}: {word}}}}}")
    assert backend(r, headers=[(word, word)]) == "hit"
    r = when(f"{{cookie: {{{word}: {word}}}}}")
    assert backend(r, headers=[("Cookie", f"{word}={word}")]) == "hit"
    r = when(f"{{query: {{{word}: {word}}}}}")
    assert backend(r, url=f"http://h.example/?{word}={word}") == "hit"
    assert backend(r, url=f"http://h.example/?{word}=x") == "fb"


def test_the_issues_examples():
    r = when("{header: {X-Country: NO}}")
    assert backend(r, headers=[("X-Country", "NO")]) == "hit"
    assert backend(r, headers=[("X-Country", "false")]) == "fb"
    r = when('{query: {on: "1"}}')
    assert backend(r, url="http://h.example/?on=1") == "hit"
    assert backend(r, url="http://h.example/?false=1") == "fb"
    assert "query on" in r.routes[0].backends[0].when.text


def test_text_in_matcher_forms_lists_and_method():
    r = when("{header: {X-T: {in: [NO, 0777, ~]}}}")
    assert [backend(r, headers=[("X-T", v)]) for v in ("NO", "0777", "~", "false", "511")] == \
        ["hit", "hit", "hit", "fb", "fb"]
    r = when("{header: {X-T: {prefix: 0x1F}}}")
    assert backend(r, headers=[("X-T", "0x1F-a")]) == "hit"
    r = when("{header: {X-T: {not: off}}}")
    assert backend(r, headers=[("X-T", "false")]) == "hit" and backend(r, headers=[("X-T", "off")]) == "fb"


def test_names_set_headers_salt_and_upstream_references_are_text():
    r = rules("""
        version: 1
        upstreams: {yes: "http://127.0.0.1:9003", 0777: "http://127.0.0.1:9004"}
        routes:
          - name: on
            match: {host: n}
            backends:
              - name: no
                when: {header: {X-A: "1"}}
                upstream: yes
                set_headers: {X-Flag: off, X-Mode: 0777, X-Day: 2026-12-01, X-Null: ~}
                remove_headers: [y]
              - name: 1_000
                split: {by: "header:X-U", weights: {yes: 1, 0777: 0}, salt: 0777}
        """)
    route = r.routes[0]
    assert route.name == "on" and route.hosts == ("n",)
    b0, b1 = route.backends
    assert b0.name == "no" and b0.upstream.port == 9003
    assert b0.set_headers == (("X-Flag", "off"), ("X-Mode", "0777"), ("X-Day", "2026-12-01"), ("X-Null", "~"))
    assert b0.remove_headers == ("y",)
    assert b1.name == "1_000" and b1.split.salt == "0777"
    assert [(u.name, w) for u, w in b1.split.arms] == [("yes", 1.0), ("0777", 0.0)]


def test_geo_country_no_is_norway():
    from condroute.load.ctx import CompileCtx
    from condroute.conditions.geo import _codes
    cc = CompileCtx("t.yaml")
    assert _codes(parse_text("[NO, SE, ON]", "t.yaml"), cc, "country", 2) == frozenset({"NO", "SE", "ON"})
    assert cc.problems == []


def test_numbers_and_booleans_stay_where_they_are_meant():
    r = rules("""
        version: 1
        routes:
          - name: r
            backends:
              - {name: t, when: {header: {X-N: {gt: 0x1F, le: 1_000}}}, upstream: "http://127.0.0.1:9002",
                 timeout: 1.5, retries: 2, preserve_host: yes}
              - {name: s, when: {header: {X-P: {present: no}}}, respond: {status: 404, body: 0777}}
              - {name: fb, fallback: on, upstream: "http://127.0.0.1:9001"}
        """)
    t, s, fb = r.routes[0].backends
    assert (t.timeout, t.retries, t.preserve_host, fb.fallback) == (1.5, 2, True, True)
    assert (s.respond.status, s.respond.body) == (404, "0777")
    assert backend(r, headers=[("X-N", "32"), ("X-P", "x")]) == "t"
    assert backend(r, headers=[("X-N", "31"), ("X-P", "x")]) == "fb"
    assert backend(r, headers=[("X-N", "31")]) == "s"
    # a number where text is wanted is refused as before only when it is not text at all
    assert "timeout must be a number" in err("version: 1\nroutes:\n  - name: r\n    backends:\n"
                                             "      - {name: x, upstream: 'http://h', timeout: yes}\n")


def test_an_empty_value_is_still_missing_while_tilde_is_text():
    assert "a matcher is missing here" in err(
        "version: 1\nroutes:\n  - name: r\n    backends:\n      - name: x\n        upstream: 'http://h'\n"
        "        when: {header: {X-T: }}\n")
    assert "a matcher is missing" not in str(when("{header: {X-T: ~}}").routes[0].backends[0].when.text)


def test_json_files_keep_json_meaning(tmp_path: Path):
    doc = {"version": 1, "routes": [{"name": "r", "backends": [
        {"name": "hit", "when": {"header": {"X-N": 1, "X-B": True}}, "upstream": HIT, "timeout": 1e3},
        {"name": "nul", "when": {"header": {"X-Z": None}}, "upstream": HIT},
        {"name": "fb", "fallback": True, "upstream": FB}]}]}
    p = tmp_path / "r.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(RulesError) as ei:      # JSON null is null: no matcher
        load_rules(str(p))
    assert "X-Z: a matcher is missing" in str(ei.value)
    del doc["routes"][0]["backends"][1]
    p.write_text(json.dumps(doc))
    r = load_rules(str(p))
    hit = r.routes[0].backends[0]
    assert hit.timeout == 1000.0 and r.routes[0].backends[1].fallback is True
    assert backend(r, headers=[("X-N", "1"), ("X-B", "true")]) == "hit"
    assert backend(r, headers=[("X-N", "1.0"), ("X-B", "true")]) == "fb"


def test_mapping_keys_are_the_key_text_and_scalars_keep_their_text():
    y = parse_text("on: 1\nNO: yes\n0777: ~\n~: 2026-12-01\n'q': !!str 0777\n", "t.yaml")
    assert list(y.v) == ["on", "NO", "0777", "~", "q"]
    assert [(n.v, n.text) for n in y.v.values()] == [
        (1, "1"), (True, "yes"), (None, "~"), (__import__("datetime").date(2026, 12, 1), "2026-12-01"), ("0777", "0777")]


async def test_the_addon_routes_x_country_no(tmp_path: Path):
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(f"""
        version: 1
        routes:
          - name: nordic
            backends:
              - {{name: norway, when: {{header: {{X-Country: NO}}}}, upstream: "{HIT}"}}
              - {{name: other, fallback: true, upstream: "{FB}"}}
        """))
    addon = ConditionalRouting()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, condroute_rules=str(p))
        for value, port in (("NO", 9002), ("false", 9001), ("no", 9001)):
            req = http.Request.make("GET", "http://shop.example/x", b"", {"X-Country": value, "Host": "shop.example"})
            req.authority = ""
            f = tflow.tflow(req=req)
            await tctx.cycle(addon, f)
            assert f.request.port == port, (value, f.request.pretty_url)


def test_end_to_end_x_country_no_routes(echo, rules_file, proxy):
    import httpx
    no, other = echo("norway"), echo("other")
    p = proxy(rules_file(f"""
        version: 1
        routes:
          - name: nordic
            backends:
              - {{name: norway, when: {{header: {{X-Country: NO}}}}, upstream: "{no}"}}
              - {{name: other, fallback: true, upstream: "{other}"}}
        """))
    with httpx.Client(proxy=p.url, timeout=10) as c:
        assert c.get("http://shop.example/", headers={"X-Country": "NO"}).json()["backend"] == "norway"
        assert c.get("http://shop.example/", headers={"X-Country": "false"}).json()["backend"] == "other"


def test_schema_says_values_are_text():
    from condroute.cli.schema import build_schema
    s = build_schema()
    matcher = s["$defs"]["matcher_object"]["properties"]
    assert "NO, yes, on, 0777" in matcher["equals"]["description"]
    assert "the text written" in json.dumps(s["$defs"]["backend"]["properties"]["set_headers"])


# ---------------------------------------------------------------------------------------------------
# 5. Alias bombs
# ---------------------------------------------------------------------------------------------------
def billion_laughs(levels: int = 9) -> str:
    out = ["a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        out.append(f"{cur}: &{cur} [" + ",".join(f"*{prev}" for _ in range(9)) + "]")
    return "\n".join(out) + "\n"


def test_billion_laughs_is_refused_at_the_alias_quickly():
    text = billion_laughs()
    assert len(text) < 400
    t0 = time.process_time()
    out = err(text)
    assert time.process_time() - t0 < 5      # in fact milliseconds; the bound is for slow machines
    line, col = out.split(":")[1:3]
    src = text.splitlines()[int(line) - 1]
    assert src[int(col) - 1] == "*", out     # located at the alias that crosses the cap
    assert f"more than {yamlpos.MAX_ALIAS_NODES:,} values" in out


def test_the_cap_is_exact_and_counts_expanded_nodes(monkeypatch):
    # [*a]*3 where a has 1 + 9 nodes: 30 nodes added by aliases
    text = 'a: &a [1,2,3,4,5,6,7,8,9]\nb: [*a, *a, *a]\n'
    monkeypatch.setattr(yamlpos, "MAX_ALIAS_NODES", 30)
    y = parse_text(text, "t.yaml")
    # converted once: every reference is the same node
    assert y.v["b"].v[0] is y.v["a"] and y.v["b"].v[2] is y.v["a"]
    monkeypatch.setattr(yamlpos, "MAX_ALIAS_NODES", 29)
    with pytest.raises(RulesError) as ei:
        parse_text(text, "t.yaml")
    assert str(ei.value).startswith("t.yaml:2:13: the aliases in this file expand to more than 29 values")


def test_the_cap_is_far_above_a_10000_route_file():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from bench import gen_rules
    import yaml
    n = sum(1 for e in yaml.parse(gen_rules(1000), Loader=yamlpos._Loader)
            if isinstance(e, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)))
    assert 10 * n * 1.5 < yamlpos.MAX_ALIAS_NODES     # the whole file, written out twice over, fits


def test_a_real_file_with_anchors_and_merges_loads():
    r = rules("""
        version: 1
        routes:
          - name: r
            backends:
              - &d {name: base, upstream: "http://127.0.0.1:9002", timeout: 5, set_headers: {X-From: yes}}
              - {<<: *d, name: a, when: {header: {X-A: "1"}}}
              - {<<: [{name: first, retries: 1}, *d], when: {header: {X-B: "1"}}}
              - {name: c, fallback: true, upstream: "http://127.0.0.1:9001"}
        """)
    base, a, first, c = r.routes[0].backends
    assert (a.name, a.timeout, a.set_headers) == ("a", 5.0, (("X-From", "yes"),))
    assert (first.name, first.retries, first.timeout) == ("first", 1, 5.0)   # the first mapping of a list wins


@pytest.mark.parametrize("text, where, message", [
    ("a: &a [*a]\n", "1:8", "the alias *a refers to a node that contains it"),
    ("a: *nope\n", "1:4", "the alias *nope has no anchor &nope before it"),
    ("a: &a " + "[" * 60 + "]" * 60 + "\nb: " + "[" * 50 + "*a" + "]" * 50 + "\n", "2:54",
     "nested more than 100 levels deep (through the alias *a)"),
])
def test_alias_problems_are_located(text, where, message):
    assert err(text) == f"f.yaml:{where}: {message}"


def test_validate_refuses_an_alias_bomb_fast(tmp_path: Path, capsys):
    p = tmp_path / "bomb.yaml"
    p.write_text(billion_laughs())
    t0 = time.monotonic()
    rc = main(["validate", str(p)])
    out, errout = capsys.readouterr()
    assert time.monotonic() - t0 < 5
    assert rc == 1 and "Traceback" not in out + errout
    assert f"{p}:" in out + errout and "more than" in out + errout


# ---------------------------------------------------------------------------------------------------
# 9. Every loader error located
# ---------------------------------------------------------------------------------------------------
HEAD = "version: 1\nroutes:\n  - name: r\n    backends:\n"


@pytest.mark.parametrize("text, where, message", [
    ("a: {<<: 1}\n", "1:9", "a merge (<<) takes a mapping or a list of mappings, not a single value"),
    ("a: {<<: [1]}\n", "1:10", "a merge (<<) takes a mapping or a list of mappings, not a single value"),
    ("a: {<<: [[1]]}\n", "1:10", "a merge (<<) takes a mapping or a list of mappings, not a list"),
    ("a: !!python/object:os.system {x: 1}\n", "1:4", "unsupported YAML tag !!python/object:os.system"),
    ("a: !!python/name:os.system ''\n", "1:4", "unsupported YAML tag !!python/name:os.system"),
    ("a: !foo x\n", "1:4", "unsupported YAML tag !foo"),
    ("!foo a: x\n", "1:1", "unsupported YAML tag !foo"),
    ("a: !!set {x}\n", "1:4", "unsupported YAML tag !!set"),
    ("a: !!int abc\n", "1:4", "bad value for !!int: invalid literal for int() with base 10: 'abc'"),
    ("a: !!timestamp 2026-13-45\n", "1:4", "bad value for !!timestamp: month must be in 1..12"),
    ("a: b\nc: d\x00e\n", "2:5", "the character U+0000 (NUL) is not allowed in a rules file"),
    ("a: [b,\n  'c\x07']\n", "2:5", "the character U+0007 is not allowed in a rules file"),
    ("a: b\ud800\n", "1:5", "the character U+D800 (a lone surrogate) is not allowed in a rules file"),
    ("a: " + "[" * 200 + "]" * 200 + "\n", "1:103", "nested more than 100 levels deep"),
    ("a: 1\n---\nb: 2\n", "2:1", "a rules file holds one YAML document; a second one starts here"),
    ("? [a]\n: b\n", "1:3", "a mapping key must be a plain value, not a list"),
    ("a: 1\na: 2\n", "2:1", "duplicate key 'a'"),
])
def test_loader_errors_are_located(text, where, message):
    out = err(text)
    assert out.startswith(f"f.yaml:{where}: {message}") and "\n" not in out, out


def test_a_huge_number_or_a_bad_date_in_plain_text_is_text():
    digits = "9" * 5000        # int() refuses more than 4300 digits: it is text, as written
    r = when(f"{{header: {{X-T: {digits}}}}}")
    assert backend(r, headers=[("X-T", digits)]) == "hit"
    r = when("{header: {X-T: 2026-13-45}}")
    assert backend(r, headers=[("X-T", "2026-13-45")]) == "hit"
    assert "timeout must be a number" in err(HEAD + f"      - {{name: x, upstream: 'http://h', timeout: {digits}}}\n")


def test_a_huge_scalar_loads():
    body = "x" * 3_000_000
    r = rules(f"""
        version: 1
        routes:
          - name: r
            backends: [{{name: x, respond: {{status: 200, body: "{body}"}}}}]
        """)
    assert len(r.routes[0].backends[0].respond.body) == 3_000_000


def test_bytes_bom_utf16_and_bad_utf8_are_located(tmp_path: Path):
    good = HEAD + "      - {name: x, upstream: nope}\n"
    line = good.splitlines()[4]
    with pytest.raises(RulesError) as ei:      # a BOM is not a column
        load_rules_bytes(b"\xef\xbb\xbf" + good.encode(), "f.yaml")
    assert str(ei.value).startswith(f"f.yaml:5:{line.index('nope') + 1}: unknown upstream 'nope'")
    with pytest.raises(RulesError) as ei:
        load_rules_bytes(good.encode("utf-16"), "f.yaml")
    assert str(ei.value) == "f.yaml:1:1: the file is UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8"
    # the column counts characters, not bytes: "é" is one column
    raw = "version: 1\nroutes: [{name: \"café".encode() + b"\xff\"}]\n"
    with pytest.raises(RulesError) as ei:
        load_rules_bytes(raw, "f.yaml")
    assert str(ei.value) == "f.yaml:2:22: the file is not valid UTF-8"   # bytes would say 23


def test_validate_exits_1_with_located_errors_and_no_traceback(tmp_path: Path):
    cases = {"merge.yaml": "a: {<<: 1}\n", "nul.yaml": "a: b\nc: d\x00\n", "deep.yaml": "a: " + "[" * 5000 + "\n",
             "tag.yaml": "a: !!python/object:os.system {}\n"}
    for name, text in cases.items():
        p = tmp_path / name
        p.write_text(text)
        proc = subprocess.run([sys.executable, "-m", "condroute.cli", "validate", str(p)],
                              capture_output=True, text=True, timeout=60)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and "Traceback" not in out, out
        assert f"{p}:" in out


# -- fuzz --------------------------------------------------------------------------------------------
SEED = textwrap.dedent("""\
    version: 1
    upstreams: {a: "http://127.0.0.1:9001", b: 'http://127.0.0.1:9002'}
    routes:
      - name: &n r
        match: {host: shop.example, path: "/x/{id}", methods: [GET]}
        backends:
          - &bk {name: h, when: {header: {X-T: NO}, cookie: {c: [1, yes]}}, upstream: b, timeout: 1.5}
          - {<<: *bk, name: m, set_headers: {X-A: ~}}
          - name: s
            split: {by: "cookie:uid", weights: {a: 1, b: 2}, salt: 0777}
          - {name: d, fallback: true, upstream: a, path: /y/{id}}
    """)
ALPHABET = list("&*!<>{}[]:,-|?'\"#%@`~ \t\n\r\x00\x85\ufeff") + ["<<", "!!", "*bk", "&bk", "!!int ", "- ", ": "]


def check(text: str, name: str = "f.yaml") -> None:
    try:
        load_rules_text(text, name)
    except RulesError as e:
        for p in e.problems:
            assert p.file == name and p.line >= 1 and p.col >= 1 and p.message, e


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(SEED)), st.integers(0, 3), st.sampled_from(ALPHABET)), max_size=6))
def test_fuzz_mutated_yaml_gives_only_rules_errors(edits):
    text = SEED
    for pos, cut, ins in edits:
        pos = min(pos, len(text))
        text = text[:pos] + ins + text[pos + cut:]
    check(text)
    check(text, "f.json")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_give_only_rules_errors(raw):
    for name in ("f.yaml", "f.json"):
        try:
            load_rules_bytes(raw, name)
        except RulesError as e:
            assert all(p.line >= 1 and p.col >= 1 for p in e.problems)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_random_text_gives_only_rules_errors(text):
    check(text)
