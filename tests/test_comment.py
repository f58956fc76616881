"""flow.comment: led by the decision, and filterable with mitmproxy's own `~comment` filter.

The comment is made by the real addon on real flows (mitmproxy.test.tflow through taddons), and the
filters documented in the README ("Finding flows in mitmweb") are parsed by
mitmproxy.flowfilter.parse: `~comment "→ ROUTE/BACKEND "` must select exactly the flows sent to that
backend, and `~comment "→ ROUTE[/ ]"` those of a route, also when names are prefixes of each other
and when the request (path, header values shown in reasons) contains the arrow and those names.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from mitmproxy import flowfilter, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from condroute import render
from condroute.engine import decide
from condroute.explain import build_request
from condroute.mitm.addon import ConditionalRouting
from condroute.rules import load_rules_text

RULES = """\
    version: 1
    settings: {on_no_match: error}
    upstreams:
      a: http://127.0.0.1:9001
      b: http://127.0.0.1:9002
    routes:
      - name: shop
        match: {host: shop.example}
        backends:
          - name: variant-b-by-header
            when: {header: {X-Ab-Test: B}}
            upstream: b
          - name: variant-b
            when: {cookie: {ab: B}}
            upstream: b
          - name: variant
            when: {query: {v: "1"}}
            upstream: http://127.0.0.1:9003
          - name: my backend
            when: {header: {X-My: "1"}}
            upstream: a
          - name: a/b
            when: {header: {X-Slash: "1"}}
            upstream: a
          - name: deny
            when: {path: {prefix: /admin/}}
            respond: {status: 403, body: no}
          - name: variant-a
            fallback: true
            upstream: a
      - name: shop-2
        match: {host: shop2.example}
        backends:
          - name: variant-b
            when: {header: {X-Ab-Test: B}}
            upstream: b
          - name: Variant-B
            when: {header: {X-Ab-Test: C}}
            upstream: b
      - name: strict
        match: {host: strict.example}
        backends:
          - name: only
            when: {header: {X-Ab-Test: B}}
            upstream: b
    """

ARROW = "→"
CASE_INSENSITIVE = bool(flowfilter.parse("~comment x").re.flags & re.IGNORECASE)   # mitmproxy 12 (11: no)


def make_flow(url: str, headers: dict | None = None, path: str | None = None) -> http.HTTPFlow:
    req = http.Request.make("GET", url, b"", headers or {})
    req.headers["Host"] = req.pretty_url.split("/")[2]
    req.authority = ""
    if path is not None:
        req.path = path
    return tflow.tflow(req=req)


# (label, url, headers, path, route, backend): what each request should be decided as
REQUESTS = [
    ("by header", "http://shop.example/cart", {"X-Ab-Test": "B"}, None, "shop", "variant-b-by-header"),
    ("by cookie", "http://shop.example/cart", {"Cookie": "ab=B"}, None, "shop", "variant-b"),
    ("by query", "http://shop.example/cart?v=1", {}, None, "shop", "variant"),
    ("spaced name", "http://shop.example/cart", {"X-My": "1"}, None, "shop", "my backend"),
    ("slashed name", "http://shop.example/cart", {"X-Slash": "1"}, None, "shop", "a/b"),
    ("respond", "http://shop.example/admin/x", {}, None, "shop", "deny"),
    ("fallback", "http://shop.example/cart", {}, None, "shop", "variant-a"),
    # the request carries the arrow and the names: in a reason (a header value) and in the path
    ("hostile header", "http://shop.example/cart", {"X-Ab-Test": f"x {ARROW} shop/variant-b [y"}, None,
     "shop", "variant-a"),
    ("hostile path", "http://shop.example/cart", {}, f"/x {ARROW} shop/variant-b [", "shop", "variant-a"),
    ("other route", "http://shop2.example:8080/cart", {"X-Ab-Test": "B"}, None, "shop-2", "variant-b"),
    ("case differs", "http://shop2.example/cart", {"X-Ab-Test": "C"}, None, "shop-2", "Variant-B"),
    ("no backend", "http://strict.example/x", {"X-Ab-Test": "A"}, None, "strict", None),
    ("no route", "http://elsewhere.example/x", {}, None, None, None),
]


@pytest.fixture(scope="module")
def flows(tmp_path_factory) -> dict[str, http.HTTPFlow]:
    p: Path = tmp_path_factory.mktemp("comment") / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    addon = ConditionalRouting()
    out = {}
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=str(p))
        for label, url, headers, path, _, _ in REQUESTS:
            f = make_flow(url, headers, path)
            addon.requestheaders(f)
            out[label] = f
    return out


def test_the_flows_are_decided_as_the_table_says(flows):
    for label, _, _, _, route, backend in REQUESTS:
        md = flows[label].metadata.get("condroute")
        got = (md["route"], md["backend"]) if md else (None, None)
        assert got == (route, backend), label


def test_the_comment_leads_with_the_decision(flows):
    c = {label: f.comment for label, f in flows.items()}
    assert c["by header"] == ('shop.example/cart → shop/variant-b-by-header [header X-Ab-Test "B"]'
                              " | to http://127.0.0.1:9002/cart (upstream b)")
    assert c["by query"] == ('shop.example/cart → shop/variant [query v "1"] | to http://127.0.0.1:9003/cart'
                             ' | skipped variant-b-by-header: header X-Ab-Test is missing, wanted "B";'
                             ' variant-b: cookie ab is missing, wanted "B"')
    assert c["spaced name"].startswith('shop.example/cart → shop/"my backend" [header X-My "1"]')
    assert c["slashed name"].startswith('shop.example/cart → shop/"a/b" [header X-Slash "1"]')
    assert c["respond"].startswith('shop.example/admin/x → shop/deny [path prefix "/admin/"] | condroute answered 403'
                                   " | skipped variant-b-by-header: ")
    assert c["fallback"].startswith("shop.example/cart → shop/variant-a [fallback: no other backend held]"
                                    " | to http://127.0.0.1:9001/cart (upstream a) | skipped variant-b-by-header: ")
    # a non-default port is kept
    assert c["other route"].startswith('shop2.example:8080/cart → shop-2/variant-b [header X-Ab-Test "B"]')
    assert c["no backend"] == ('strict.example/x → strict [no backend holds] | condroute answered 502'
                               ' | skipped only: header X-Ab-Test is "A", wanted "B"')
    assert c["no route"] == ""        # traffic condroute does not route gets no comment
    # the request's own arrow is not repeated: written "->" in a reason, escaped in the path
    assert 'header X-Ab-Test is "x -> shop/variant-b [y", wanted "B"' in c["hostile header"]
    assert c["hostile path"].startswith("shop.example/x%20%E2%86%92%20shop/variant-b%20[ → shop/variant-a [")


def test_one_line_and_one_arrow(flows):
    for label, f in flows.items():
        if f.comment:
            assert "\n" not in f.comment and f.comment.count(ARROW) == 1, label


def selected(flows, expr: str) -> set[str]:
    flt = flowfilter.parse(expr)
    return {label for label, f in flows.items() if flt(f)}


def test_a_backend_filter_selects_exactly_its_flows(flows):
    # the bare name also matches flows that only mention it (the problem this format solves)
    assert selected(flows, "~comment variant-b") > {"by header", "by cookie", "other route"}
    assert selected(flows, '~comment "→ shop/variant-b "') == {"by cookie"}
    assert selected(flows, '~comment "→ shop/variant-b-by-header "') == {"by header"}
    assert selected(flows, '~comment "→ shop/variant "') == {"by query"}
    assert selected(flows, '~comment "→ shop/variant-a "') == {"fallback", "hostile header", "hostile path"}
    # mitmproxy 12 matches filters case-insensitively (11 does not): Variant-B is variant-b there ...
    assert selected(flows, '~comment "→ shop-2/variant-b "') == \
        ({"other route", "case differs"} if CASE_INSENSITIVE else {"other route"})
    assert selected(flows, '~comment \'→ shop/"my backend" \'') == {"spaced name"}
    assert selected(flows, '~comment \'→ shop/"a/b" \'') == {"slashed name"}
    assert selected(flows, '~comment "→ shop/deny "') == {"respond"}
    # ... unless the pattern says (?-i:...): exact in both
    assert selected(flows, '~comment "(?-i:→ shop-2/Variant-B )"') == {"case differs"}
    assert selected(flows, '~comment "(?-i:→ shop-2/variant-b )"') == {"other route"}


def test_a_route_filter_selects_exactly_its_flows(flows):
    shop = {"by header", "by cookie", "by query", "spaced name", "slashed name", "respond", "fallback",
            "hostile header", "hostile path"}
    assert selected(flows, '~comment "→ shop[/ ]"') == shop
    assert selected(flows, '~comment "→ shop-2[/ ]"') == {"other route", "case differs"}
    assert selected(flows, '~comment "→ strict[/ ]"') == {"no backend"}
    assert selected(flows, "~comment →") == shop | {"other route", "case differs", "no backend"}
    # combined with mitmproxy's other filters
    assert selected(flows, '~comment "→ shop[/ ]" & !~comment "→ shop/variant-a "') == \
        shop - {"fallback", "hostile header", "hostile path"}


RULES_PASS = load_rules_text(textwrap.dedent("""\
    version: 1
    upstreams: {a: http://127.0.0.1:9001}
    routes:
      - name: r
        match: {path: /r/*}
        backends:
          - {name: only, when: {header: {X-A: "1"}}, upstream: a}
          - {name: esc, when: {header: {X-E: "1"}}, path: "/v2{path}"}
    """), "p.yaml")


@pytest.mark.parametrize("url, headers, want", [
    ("http://h.example/r/x?q=secret", [], 'h.example/r/x → r [no backend holds] | passed through unchanged'
                                         ' | skipped only: header X-A is missing, wanted "1";'
                                         ' esc: header X-E is missing, wanted "1"'),
    ("http://[::1]:8443/r/x", [("X-E", "1")], '[::1]:8443/r/x → r/esc [header X-E "1"]'
                                              ' | to http://[::1]:8443/v2/r/x (original destination)'
                                              ' | skipped only: header X-A is missing, wanted "1"'),
    ("https://h.example:443/other", [], "h.example/other → (no route) | passed through unchanged"),
])
def test_passthrough_and_original_destination(url, headers, want):
    d = decide(RULES_PASS, build_request(url, headers=headers))
    assert render.comment(d) == want


def test_refused_and_internal_error():
    d = decide(RULES_PASS, build_request("http://h.example/r/%2e%2e/admin"))
    assert d.outcome == "bad_request"
    assert render.comment(d).startswith("h.example/r/%2e%2e/admin → r [refused: the path has ")
    assert render.comment(d).endswith("| condroute answered 400")
    assert render.internal_error_comment(build_request("http://h.example:81/x")) == \
        "h.example:81/x → (no route) [internal error while routing] | condroute answered 502"
    assert render.internal_error_comment(None).startswith("? → (no route) ")


def test_names_are_quoted_only_when_they_must_be():
    assert [render.comment_name(n) for n in ("variant-b", "v1.2_x", "my backend", "a/b", 'q"', "", "x→y", "tab\t")] == \
        ["variant-b", "v1.2_x", '"my backend"', '"a/b"', '"q\\""', '""', '"x\\u2192y"', '"tab\\t"']


async def test_a_routed_flow_that_fails_says_so_after_its_decision(tmp_path):
    from mitmproxy.flow import Error
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=str(p))
        f = make_flow("http://shop.example/cart", {"X-Ab-Test": "B"})
        addon.requestheaders(f)
        f.error = Error(f"Connection refused {ARROW} twice\n")
        addon.error(f)
    assert f.comment == ('shop.example/cart → shop/variant-b-by-header [header X-Ab-Test "B"]'
                         " | to http://127.0.0.1:9002/cart (upstream b) | failed: Connection refused -> twice\\n")
    assert f.metadata["condroute"]["error"] == f"Connection refused {ARROW} twice\n"
    assert selected({"f": f}, '~comment "→ shop/variant-b-by-header "') == {"f"}


def test_a_dot_in_a_name_is_written_as_a_class():
    f, g = tflow.tflow(), tflow.tflow()
    f.comment, g.comment = "h/x → r/v1.2 [x]", "h/x → r/v1x2 [x]"
    assert selected({"f": f, "g": g}, '~comment "→ r/v1[.]2 "') == {"f"}
    assert selected({"f": f, "g": g}, '~comment "→ r/v1\\\\.2 "') == {"f"}
    assert selected({"f": f, "g": g}, '~comment "→ r/v1.2 "') == {"f", "g"}
