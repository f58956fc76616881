"""export/ir.py: a rules file's conditions read into typed trees with their places, as the engine
reads them."""
from __future__ import annotations

import textwrap

import pytest

from condroute.explain import build_request
from condroute.engine import decide
from condroute.export import ir
from condroute.export.targets import read
from condroute.load.yamlpos import parse_text


def cond(text: str) -> ir.Cond:
    return ir.condition(parse_text(text, "x.yaml"), "x.yaml")


@pytest.mark.parametrize("text, matcher", [
    ("B", ir.Eq(("B",))),
    ("[A, B]", ir.Eq(("A", "B"))),
    ("NO", ir.Eq(("NO",))),                                  # text stays text
    ("{equals: b, ignore_case: true}", ir.Eq(("b",), True)),
    ("{prefix: eu-}", ir.Prefix("eu-")),
    ("{suffix: -us}", ir.Suffix("-us")),
    ("{contains: x}", ir.Contains("x")),
    ("{regex: '^a', ignore_case: true}", ir.Regex("^a", True)),
    ("{present: false}", ir.Present(False)),
    ("{gt: 3}", ir.Compare("gt", 3.0)),
    ("{not: {in: [a]}}", ir.MNot(ir.Eq(("a",)))),
    ("{prefix: a, suffix: z}", ir.MAll((ir.Prefix("a"), ir.Suffix("z")))),
])
def test_every_matcher_form(text, matcher):
    c = cond(f"header: {{X-Ab: {text}}}\n")
    assert c == ir.Atom("header", "x-ab", matcher, ir.Where("x.yaml", 1, 10))


def test_a_method_is_upper_cased_only_where_the_engine_does_it(tmp_path):
    rules = read_rules(textwrap.dedent("""\
        version: 1
        upstreams: {a: "http://127.0.0.1:1"}
        routes:
          - name: r
            backends:
              - {name: listed, when: {method: [get]}, upstream: a}
              - {name: mapped, when: {method: {in: [post]}}, upstream: a}
              - {name: other, fallback: true, upstream: a}
        """), tmp_path)
    compiled, m = rules
    listed, mapped, _ = m.routes[0].backends
    assert ir.when(listed, m.file).matcher == ir.Eq(("GET",))
    assert ir.when(mapped, m.file).matcher == ir.Eq(("post",))     # never holds, in both
    assert decide(compiled, build_request("http://x/", "GET")).backend == "listed"
    assert decide(compiled, build_request("http://x/", "POST")).backend == "other"


def read_rules(text, tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return read(str(p))


def test_any_all_not_and_kinds_keep_their_places():
    c = cond(textwrap.dedent("""\
        any:
          - cookie: {uid: "1"}
          - all: [{query: {t: x}}, {client_ip: 10.0.0.0/8}]
        not: {cel: "true"}
        """))
    assert isinstance(c, ir.And)
    anyc, notc = c.parts
    assert anyc.parts[0] == ir.Atom("cookie", "uid", ir.Eq(("1",)), ir.Where("x.yaml", 2, 14))
    q, ip = anyc.parts[1].parts
    assert q.at == ir.Where("x.yaml", 3, 20) and str(ip.nets[0]) == "10.0.0.0/8"
    assert notc == ir.Not(ir.Cel("true", ir.Where("x.yaml", 4, 7)))
    assert [type(a).__name__ for a in ir.atoms(c)] == ["Atom", "Atom", "ClientIP", "Cel"]


def test_where_line_points_at_the_item_after_its_dash(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("routes:\n  - name: x\n    backends:\n      - name: b\n")
    assert ir.where_line(str(p), 4) == ir.Where(str(p), 4, 9)
    assert ir.where_line(str(p), 3) == ir.Where(str(p), 3, 5)
    assert ir.where_line(str(tmp_path / "gone.yaml"), 2).col == 1


def test_not_exported_is_a_located_line():
    e = ir.NotExported(ir.Where("r.yaml", 3, 7), "cookies cannot be matched")
    assert e.line("httproute") == "r.yaml:3:7: not exported to httproute: cookies cannot be matched"
