"""`mirror` in the condroute rules format: the engine's draw (percent sampled per request, the path
and Host of each copy), the lint warnings (a mirror to where the request goes; percent 0), and the
per-mirror counts of the status text. The copies themselves: test_mirror.py (harness) and
test_mirror_e2e.py (a real mitmdump)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from condroute import engine
from condroute.cli.lint import lint
from condroute.engine import decide
from condroute.request import RequestView
from condroute.rules import load_rules, load_rules_text

RULES = """\
version: 1
upstreams:
  main: http://127.0.0.1:9001/base
  shadow: http://127.0.0.1:9002/m
  other: http://127.0.0.1:9003
routes:
  - name: shop
    match: {host: shop.test}
    backends:
      - name: live
        upstream: main
        mirror: [{upstream: shadow, percent: 25}, {upstream: other}]
"""


def view(path: str = "/p", qs: str = "q=1", host: str = "shop.test") -> RequestView:
    return RequestView("POST", "http", host, 80, path, qs, [("Host", host)], "127.0.0.1")


def drawn(d) -> list[str]:
    return [m.upstream.name for m, _, _ in d.mirrors]


def test_percent_is_drawn_for_each_request_and_each_mirror(monkeypatch):
    rules = load_rules_text(RULES, "r.yaml")
    # one draw per request for the 25 % mirror (the 100 % one takes none): below 0.25 copies
    draws = iter([0.10, 0.30, 0.2499, 0.25, 0.0])
    monkeypatch.setattr(engine.random, "random", lambda: next(draws))
    got = [drawn(decide(rules, view())) for _ in range(5)]
    assert got == [["shadow", "other"], ["other"], ["shadow", "other"], ["other"], ["shadow", "other"]]
    with pytest.raises(StopIteration):        # exactly one draw per request: none left over
        engine.random.random()


def test_percent_over_many_requests_matches_the_seeded_sequence():
    rules = load_rules_text(RULES, "r.yaml")
    random.seed(1616)
    n = sum("shadow" in drawn(decide(rules, view())) for _ in range(2000))
    rnd = random.Random(1616)
    expect = sum(rnd.random() * 100 < 25 for _ in range(2000))
    assert n == expect and 400 < n < 600


def test_percent_0_and_100_draw_nothing_at_random(monkeypatch):
    text = RULES.replace("percent: 25", "percent: 0")
    rules = load_rules_text(text, "r.yaml")

    def no(): raise AssertionError("drew at random")
    monkeypatch.setattr(engine.random, "random", no)
    assert drawn(decide(rules, view())) == ["other"]


def test_the_copy_path_and_host():
    rules = load_rules_text(RULES, "r.yaml")
    random.seed(1)
    d = decide(rules, view("/a b/c", "x=1&y=%20"))
    while "shadow" not in drawn(d):
        d = decide(rules, view("/a b/c", "x=1&y=%20"))
    (m1, path1, host1), (m2, path2, host2) = d.mirrors
    # the forwarded path (under main's /base) moved under each mirror's own base path; the mirror's Host
    assert d.path.startswith("/base/")
    assert path1 == "/m" + d.path[len("/base"):] and host1 == "127.0.0.1:9002"
    assert path2 == d.path[len("/base"):] and host2 == "127.0.0.1:9003"


def test_no_mirrors_no_draw():
    rules = load_rules_text(RULES.replace("        mirror: [{upstream: shadow, percent: 25}, {upstream: other}]\n", ""))
    d = decide(rules, view())
    assert d.outcome == "routed" and d.mirrors == ()


# -- lint ------------------------------------------------------------------------------------------
LINT = """\
version: 1
upstreams:
  a: http://127.0.0.1:9001
  b: http://127.0.0.1:9002
  m: http://127.0.0.1:9009/mirror
routes:
  - name: r
    match: {host: one.test}
    backends:
      - {name: same, upstream: a, mirror: {upstream: 'http://127.0.0.1:9001/other', percent: 50}}
  - name: s
    match: {host: two.test}
    backends:
      - name: arm
        split: {by: client_ip, weights: {a: 1, b: 1}}
        mirror: [m, {upstream: b, percent: 0}]
  - name: fine
    match: {host: three.test}
    backends:
      - {name: ok, upstream: a, mirror: m}
  - name: fine2
    match: {host: four.test}
    backends:
      - {name: short, upstream: b, mirror: a}
"""


def test_lint_warns_of_a_mirror_to_where_the_request_goes_and_of_percent_0(tmp_path: Path):
    f = tmp_path / "r.yaml"
    f.write_text(LINT)
    got = [(p.line, p.col, p.message) for p in lint(load_rules(str(f)))]
    twice = "the copy goes where the request goes: every request reaches it twice"
    assert got == [
        (10, 54, "backend 'same' mirrors to 'http://127.0.0.1:9001/other' (http://127.0.0.1:9001), where it also "
                 f"forwards: {twice}"),
        (16, 32, f"backend 'arm' mirrors to 'b' (http://127.0.0.1:9002), where it also forwards: {twice}"),
        (16, 44, "the mirror of backend 'arm' to 'b' has percent 0: it never mirrors"),
    ]


def test_lint_says_nothing_of_a_mirror_elsewhere(tmp_path: Path):
    f = tmp_path / "r.yaml"
    f.write_text(LINT.split("  - name: r\n")[0] + "  - name: fine\n" + LINT.split("  - name: fine\n")[1])
    assert lint(load_rules(str(f))) == []
