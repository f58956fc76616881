"""The Istio VirtualService importer (load/istio*.py, issue 14 §2): the fixture cases through
`condroute check`, hosts and the order of VirtualServices, the withoutHeaders truth table, the
weighted canary's distribution, what each rule field becomes, and every refusal and warning with its
FILE:LINE:COLUMN. The live samples through mitmdump are in test_import_istio_live.py.

Why this module is long: most of it is the two tables of refusals and warnings (one row each, with
its exact located message), which read best side by side."""
from __future__ import annotations

import random
import re
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from condroute.cli.cases import load_cases
from condroute.cli.main import main
from condroute.engine import decide
from condroute.errors import RulesError
from condroute.request import RequestView
from condroute.rules import load_rules
from helpers import ROOT
from test_identity_support import SECRET, claims, forged, hs256

FIX = ROOT / "tests" / "fixtures" / "istio"
CASES = sorted(p.name[:-len(".cases.yaml")] for p in FIX.glob("*.cases.yaml"))

HEAD = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: t
spec:
  hosts: [svc]
  http:
"""
IMPORTING = """\
version: 1
upstreams:
  svc/v1: http://127.0.0.1:9101
  svc/v2: http://127.0.0.1:9102
  other: http://127.0.0.1:9103
imports: [vs.yaml]
"""


def write(tmp_path: Path, manifest: str, importing: str = IMPORTING, head: str = HEAD) -> Path:
    text = textwrap.dedent(manifest)
    (tmp_path / "vs.yaml").write_text(head + textwrap.indent(text, "  ") if head else text)
    main_file = tmp_path / "main.yaml"
    main_file.write_text(importing)
    return main_file


def load(tmp_path: Path, manifest: str, **kw):
    return load_rules(str(write(tmp_path, manifest, **kw)))


def located(problems, tmp_path: Path) -> list[str]:
    return [str(p).replace(str(tmp_path) + "/", "") for p in problems]


def errors(tmp_path: Path, manifest: str, **kw) -> list[str]:
    with pytest.raises(RulesError) as e:
        load(tmp_path, manifest, **kw)
    return located(e.value.problems, tmp_path)


def warnings(tmp_path: Path, manifest: str, **kw) -> list[str]:
    return located(load(tmp_path, manifest, **kw).warnings, tmp_path)


def go(rules, url: str, method: str = "GET", headers=(), jwt: str | None = None):
    return decide(rules, RequestView.from_url(url, method, list(headers), jwt_token=jwt))


# -- the fixture cases ------------------------------------------------------------------------------
def test_the_fixtures_are_istios_with_their_licence():
    assert (FIX / "LICENSE").read_text().lstrip().startswith("Apache License")
    source = (FIX / "SOURCE.md").read_text()
    assert "86c9f01fd735fb01d8192f5bcaf0d424afb7f14c" in source and "b8f8791d9653b2edc77a071d48887e582cfe84bf" in source
    for d in ("bookinfo", "istio-api", "istio-testdata"):
        for f in (FIX / d).iterdir():
            assert f.name in source, f"{d}/{f.name} is not described in SOURCE.md"
    assert {"bookinfo", "bookinfo-weighted", "ratings-rewrite", "ratings-direct-response"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_cases_pass_through_condroute_check(capsys, name):
    rc = main(["check", str(FIX / f"{name}.rules.yaml"), str(FIX / f"{name}.cases.yaml")])
    out = capsys.readouterr().out
    assert rc == 0, out
    m = re.search(r"^(\d+) passed, 0 failed$", out, re.M)
    assert m is not None and int(m.group(1)) >= 2, out


def test_a_wrong_expectation_fails_check(tmp_path, capsys):
    """The cases above can fail: the same rules with jason expected on v1 do."""
    cases = tmp_path / "c.yaml"
    cases.write_text('- request: {url: "http://reviews:9080/reviews/0", headers: {end-user: jason}}\n'
                     '  expect: {route: reviews#1, upstream: reviews/v1}\n')
    assert main(["check", str(FIX / "bookinfo.rules.yaml"), str(cases)]) == 1
    assert "upstream: wanted \"reviews/v1\", got \"reviews/v2\"" in capsys.readouterr().out


def test_the_imported_routes_are_named_and_labelled_by_their_source():
    rules = load_rules(str(FIX / "bookinfo-gateway.rules.yaml"))
    vs = str(FIX / "bookinfo" / "bookinfo-gateway.yaml")
    assert [(r.name, r.file) for r in rules.routes] == [
        ("bookinfo#1#1", vs), ("bookinfo#1#2", vs), ("bookinfo#1#3", vs), ("bookinfo#1#4", vs),
        ("bookinfo#1#5", vs), ("bookinfo#no-match", vs)]
    assert rules.routes[1].origin == "virtualservice bookinfo, http rule 1, match 2 (bookinfo-gateway.yaml:31)"
    rules = load_rules(str(FIX / "reviews-prefix-rewrite.rules.yaml"))
    assert [r.origin for r in rules.routes] == [
        "virtualservice reviews-route, http rule 1 (reviews-v2-routes), match 1 (reviews-route-prefix-rewrite.yaml:11)",
        "virtualservice reviews-route, http rule 1 (reviews-v2-routes), match 2 (reviews-route-prefix-rewrite.yaml:13)",
        "virtualservice reviews-route, http rule 2 (reviews-v1-route) (reviews-route-prefix-rewrite.yaml:21)"]


def test_explain_names_the_imported_rule_by_its_source(capsys):
    rc = main(["explain", str(FIX / "bookinfo.rules.yaml"), "http://reviews:9080/reviews/0", "-H", "end-user: jason"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "reviews#1 (virtualservice reviews, http rule 1 (virtual-service-reviews-test-v2.yaml:9))" in out, out


# -- hosts and the order of VirtualServices ---------------------------------------------------------
def test_host_forms_follow_the_namespace(tmp_path):
    rules = load(tmp_path, """\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: a, namespace: shop}
        spec:
          hosts: [svc, Other.Prod.Svc.Cluster.Local, mine.shop.svc.cluster.local, api.example.com]
          http:
          - route: [{destination: {host: svc, subset: v1}}]
        """, head="")
    assert rules.routes[0].hosts == (
        "svc", "svc.shop", "svc.shop.svc", "svc.shop.svc.cluster.local",
        "other.prod.svc.cluster.local", "other.prod.svc", "other.prod",
        "mine.shop.svc.cluster.local", "mine.shop.svc", "mine.shop", "mine",
        "api.example.com")
    assert go(rules, "http://svc.shop:8080/x").upstream == "svc/v1"
    assert go(rules, "http://other/x").route is None           # another namespace's short name
    assert go(rules, "http://mine/x").upstream == "svc/v1"        # the VirtualService's namespace


def test_virtual_hosts_go_most_specific_first_and_each_gets_its_404(tmp_path):
    def doc(name: str, hosts: str, prefix: str, dest: str) -> str:
        return (f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n"
                f"  hosts: {hosts}\n  http: [{{match: [{{uri: {{prefix: {prefix}}}}}], route: [{{destination: {dest}}}]}}]\n")
    rules = load(tmp_path, "---\n".join([
        doc("star", '["*"]', "/s", "{host: svc, subset: v1}"),
        doc("wild", '["*.example.com", api.example.com]', "/w", "{host: svc, subset: v2}"),
        doc("longer", '["*.shop.example.com"]', "/l", "{host: other}")]), head="")
    assert [(r.name, r.hosts) for r in rules.routes] == [
        ("wild#1", ("api.example.com",)), ("wild#no-match", ("api.example.com",)),
        ("longer#1", ("*.shop.example.com",)), ("longer#no-match", ("*.shop.example.com",)),
        ("wild#1@*.example.com", ("*.example.com",)), ("wild#no-match@*.example.com", ("*.example.com",)),
        ("star#1", ("*",)), ("star#no-match", ("*",))]
    # Envoy picks the virtual host by the most specific domain, then its first matching route
    assert go(rules, "http://a.shop.example.com/w").route == "longer#no-match"
    assert go(rules, "http://a.example.com/w").route == "wild#1@*.example.com"
    assert go(rules, "http://a.example.com/s").status == 404
    assert go(rules, "http://anything/s").upstream == "svc/v1"


def test_several_virtualservices_for_one_host_share_one_404_after_both(tmp_path):
    rules = load_rules(str(FIX / "istio-testdata.rules.yaml"))
    names = [r.name for r in rules.routes]
    assert names.index("default-route-2#1") < names.index("default-route-1#no-match")
    assert "default-route-2#no-match" not in names


# -- withoutHeaders ---------------------------------------------------------------------------------
WITHOUT = {   # Envoy: invert_match with treat_missing_header_as_empty (a presence test: absence)
    "{}":               {None: True, "off": False, "": False, "abc": False},
    "{exact: 'off'}":   {None: True, "off": False, "": True, "abc": True},
    "{exact: ''}":      {None: False, "off": True, "": False, "abc": True},
    "{regex: '.*'}":    {None: False, "off": False, "": False, "abc": False},
    "{regex: 'a.*'}":   {None: True, "off": True, "": True, "abc": False},
    "{regex: '*'}":     {None: True, "off": False, "": False, "abc": False},
    "{prefix: a}":      {None: True, "off": True, "": True, "abc": False},
}


@pytest.mark.parametrize("matcher", list(WITHOUT))
def test_without_headers_truth_table(tmp_path, matcher):
    rules = load(tmp_path, f"""\
          - match: [{{withoutHeaders: {{x-h: {matcher}}}}}]
            route: [{{destination: {{host: svc, subset: v1}}}}]
        """)
    for value, holds in WITHOUT[matcher].items():
        d = go(rules, "http://svc/x", headers=[] if value is None else [("X-H", value)])
        assert (d.route == "t#1") is holds, (matcher, value, d.route)
        if not holds:
            assert (d.route, d.status) == ("t#no-match", 404)


# -- weighted destinations ---------------------------------------------------------------------------
@pytest.mark.parametrize("fixture, shares", [
    ("virtual-service-reviews-80-20.yaml", {"reviews/v1": 0.8, "reviews/v2": 0.2}),
    ("virtual-service-reviews-90-10.yaml", {"reviews/v1": 0.9, "reviews/v2": 0.1}),
    ("virtual-service-reviews-50-v3.yaml", {"reviews/v1": 0.5, "reviews/v3": 0.5}),
])
def test_weighted_canary_draws_each_request_in_proportion(tmp_path, fixture, shares):
    main_file = tmp_path / "main.yaml"
    main_file.write_text("version: 1\nupstreams:\n" + "".join(
        f"  reviews/v{i}: http://127.0.0.1:910{i}\n" for i in (1, 2, 3)) + f"imports: [{FIX / 'bookinfo' / fixture}]\n")
    rules = load_rules(str(main_file))
    random.seed(14)
    n = 10_000
    got = Counter(go(rules, "http://reviews:9080/reviews/0").upstream for _ in range(n))
    assert set(got) == set(shares)
    for name, share in shares.items():
        assert abs(got[name] / n - share) < 0.02, got
    # not sticky: the same request (same client, same headers) goes to both arms
    assert len({go(rules, "http://reviews:9080/reviews/0", headers=[("cookie", "uid=1")]).upstream
                for _ in range(200)}) == 2


def test_weight_zero_is_never_drawn_and_one_destination_takes_everything(tmp_path):
    rules = load(tmp_path, """\
          - match: [{uri: {prefix: /z}}]
            route:
            - {destination: {host: svc, subset: v1}, weight: 0}
            - {destination: {host: svc, subset: v2}, weight: 3}
            - {destination: {host: other}, weight: 1}
          - route: [{destination: {host: svc, subset: v1}, weight: 0}]
        """)
    random.seed(3)
    got = Counter(go(rules, "http://svc/z").upstream for _ in range(2000))
    assert set(got) == {"svc/v2", "other"} and 0.70 < got["svc/v2"] / 2000 < 0.80
    assert go(rules, "http://svc/a").upstream == "svc/v1"
    assert rules.routes[0].backends[0].split.kind == "random"


# -- what a rule does ---------------------------------------------------------------------------------
def test_rule_fields_become_backend_fields(tmp_path):
    rules = load_rules(str(FIX / "actions.rules.yaml"))
    legacy = rules.routes[0].backends[0]
    assert (legacy.timeout, legacy.retries, legacy.preserve_host, legacy.host_rewrite) == (1.5, 4, True, "legacy.internal")
    assert (legacy.set_headers, legacy.add_headers, legacy.remove_headers) == (
        (("x-env", "dev"),), (("x-trace", "on"),), ("x-debug",))
    mirrored = next(r for r in rules.routes if r.name == "web#mirrored").backends[0]
    assert [(m.upstream.name, m.percent) for m in mirrored.mirrors] == [("web/shadow", 50.0)]
    default = next(r for r in rules.routes if r.name == "web#default").backends[0]
    assert (default.retries, default.timeout, default.mirrors) == (2, None, ())   # Istio's default retries


def test_direct_responses_carry_their_body_and_response_headers():
    rules = load_rules(str(FIX / "ratings-direct-response.rules.yaml"))
    r = rules.routes[0].backends[0].respond
    assert (r.status, r.body, r.headers) == (503, '{"error": "unknown error"}', (("content-type", "text/plain"),))
    rules = load_rules(str(FIX / "direct-response-bytes.rules.yaml"))
    assert rules.routes[0].backends[0].respond.body == "unknown error"


@pytest.mark.parametrize("rewrite, url, path", [
    ("{uri: /v1}", "http://svc/foo?a=1", "/v1foo?a=1"),                        # no uri match: only "/" replaced
])
def test_rewrite_without_uri_match_is_envoys_prefix_rewrite_of_slash(tmp_path, rewrite, url, path):
    rules = load(tmp_path, f"""\
          - match: [{{headers: {{x: {{exact: "1"}}}}}}]
            rewrite: {rewrite}
            route: [{{destination: {{host: svc, subset: v1}}}}]
        """)
    assert go(rules, url, headers=[("x", "1")]).path == path


@pytest.mark.parametrize("match, url, path", [
    ("{uri: {prefix: /api/}}", "http://svc/api/x/y?q=1", "/v2/x/y?q=1"),
    ("{uri: {prefix: /API/}, ignoreUriCase: true}", "http://svc/api/x", "/v2/x"),
    ("{uri: {exact: /api}}", "http://svc/api?q=1", "/v2/?q=1"),
    ("{uri: {regex: '/a.i/.*'}}", "http://svc/api/x", "/v2/"),
])
def test_rewrite_uri_replaces_what_the_block_matched(tmp_path, match, url, path):
    rules = load(tmp_path, f"""\
          - match: [{match}]
            rewrite: {{uri: /v2/}}
            route: [{{destination: {{host: svc, subset: v1}}}}]
        """)
    assert go(rules, url).path == path


def test_a_rewrite_that_climbs_out_is_refused_per_request(tmp_path):
    rules = load(tmp_path, """\
          - match: [{uri: {prefix: /x}}]
            rewrite: {uri: /.}
            route: [{destination: {host: svc, subset: v1}}]
        """)
    d = go(rules, "http://svc/x./y")
    assert (d.outcome, d.status) == ("bad_request", 400)


def test_jwt_claims_match_through_the_importing_files_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDROUTE_TEST_JWT_SECRET", SECRET)
    importing = IMPORTING.replace("imports:", "settings:\n  jwt: {verify: {secret_env: CONDROUTE_TEST_JWT_SECRET}}\nimports:")
    rules = load(tmp_path, """\
          - match: [{headers: {"@request.auth.claims.groups": {exact: admin}}}]
            route: [{destination: {host: svc, subset: v2}}]
          - match: [{headers: {"@request.auth.claims[org][team]": {prefix: core}}}]
            route: [{destination: {host: other}}]
          - route: [{destination: {host: svc, subset: v1}}]
        """, importing=importing)
    assert go(rules, "http://svc/x", jwt=hs256(claims(groups=["viewer", "admin"]))).upstream == "svc/v2"
    assert go(rules, "http://svc/x", jwt=hs256(claims(org={"team": "core-a"}))).upstream == "other"
    assert go(rules, "http://svc/x", jwt=forged(claims(groups="admin"))).upstream == "svc/v1"   # not verified
    assert go(rules, "http://svc/x", headers=[("@request.auth.claims.groups", "admin")]).upstream == "svc/v1"


def test_the_authority_match_reads_host_and_port_as_the_client_wrote_them(tmp_path):
    rules = load(tmp_path, """\
          - match: [{authority: {exact: "svc:9080"}}]
            route: [{destination: {host: svc, subset: v2}}]
          - match: [{headers: {":authority": {regex: "svc(:80)?"}}}]
            route: [{destination: {host: svc, subset: v1}}]
        """)
    assert go(rules, "http://svc:9080/").upstream == "svc/v2"
    assert go(rules, "http://svc/").upstream == "svc/v1"
    assert go(rules, "https://svc:9080/").upstream == "svc/v2"
    assert go(rules, "https://svc/").upstream == "svc/v1"      # 443 left out: "svc"
    assert go(rules, "https://svc:8443/").status == 404


def test_method_and_query_parameter_matches(tmp_path):
    rules = load(tmp_path, """\
          - match: [{method: {exact: POST}, queryParams: {v: {regex: "[0-9]+"}}}]
            route: [{destination: {host: svc, subset: v2}}]
          - match: [{headers: {":method": {prefix: PU}}}]
            route: [{destination: {host: svc, subset: v1}}]
        """)
    assert rules.routes[0].methods == frozenset({"POST"})
    assert go(rules, "http://svc/?v=12", "POST").upstream == "svc/v2"
    assert go(rules, "http://svc/?v=12a", "POST").status == 404           # a full match
    assert go(rules, "http://svc/?v=a&v=12", "POST").status == 404        # Envoy reads the first value
    assert go(rules, "http://svc/?v=1%32", "POST").upstream == "svc/v2"   # decoded
    assert go(rules, "http://svc/", "PUT").upstream == "svc/v1"


# -- refusals -----------------------------------------------------------------------------------------
REFUSED = [
    ("""\
      - match: [{uri: {prefix: /a}, headerz: {a: {exact: b}}}]
        route: [{destination: {host: svc, subset: v1}}]
    """, "vs.yaml:8:33: unknown key 'headerz' in a match block of t#1; expected one of: authority, gateways, "),
    ("""\
      - mirror_percentage: {value: 5}
        route: [{destination: {host: svc, subset: v1}}]
    """, "vs.yaml:8:5: unknown key 'mirror_percentage' in http rule t#1 (did you mean mirrorPercentage? "
         "Kubernetes reads the camelCase name and would drop mirror_percentage)"),
    ("""\
      - match: [{}]
        route: [{destination: {host: svc, subset: v1}}]
    """, "vs.yaml:8:13: t#1: an empty match block (Istio refuses it"),
    ("""\
      - match: [{uri: {prefix: /a}}]
    """, "vs.yaml:8:5: t#1: a rule needs route, redirect or directResponse (Istio refuses it too)"),
    ("""\
      - route: [{destination: {host: svc, subset: v3, port: {number: 8080}}}]
    """, "vs.yaml:8:34: destination svc subset v3 port 8080 does not resolve to an upstream: define one of "
         "svc/v3, svc:8080, svc in the upstreams of main.yaml"),
    ("""\
      - route: [{destination: {host: reviews.prod.svc.cluster.local}}]
    """, "vs.yaml:8:34: destination reviews.prod.svc.cluster.local does not resolve to an upstream: define one "
         "of reviews.prod.svc.cluster.local, reviews in the upstreams of main.yaml"),
    ("""\
      - route: [{destination: {host: svc, subset: v1}}]
        redirect: {uri: /x}
    """, "vs.yaml:9:5: t#1: use one of route, redirect, directResponse (Istio refuses route and redirect together)"),
    ("""\
      - match: [{headers: {x: {regex: "a(b"}}}]
        route: [{destination: {host: svc, subset: v1}}]
    """, "vs.yaml:8:35: t#1: headers x: bad regular expression 'a(b': missing ): a(b (RE2 syntax"),
    ("""\
      - match: [{uri: {prefix: /a}}]
        rewrite: {uriRegexRewrite: {match: "(", rewrite: /}}
        route: [{destination: {host: svc, subset: v1}}]
    """, "vs.yaml:9:40: t#1: bad regular expression '(': missing ): ("),
    ("""\
      - route:
        - {destination: {host: svc, subset: v1}, weight: 0}
        - {destination: {host: svc, subset: v2}}
    """, "vs.yaml:9:5: t#1: every destination has weight 0 (Istio refuses it: \"total destination weight = 0\")"),
    ("""\
      - route: [{destination: {host: svc, subset: v1}, weight: -1}]
    """, "vs.yaml:8:60: t#1: weight must be a whole number >= 0, not a number (-1)"),
    ("""\
      - match: [{uri: {prefix: /r}}]
        redirect: {uri: /x, redirectCode: 304}
    """, "vs.yaml:9:39: t#1: redirectCode must be one of 301, 302, 303, 307, 308 (what Istio sends), not a number (304)"),
    ("""\
      - match: [{uri: {exact: /r}}]
        redirect: {prefixRewrite: /x}
    """, "vs.yaml:9:31: t#1: redirect prefixRewrite needs a uri prefix match in every match block"),
    ("""\
      - match: [{uri: {exact: /r}}]
        redirect: {uri: /x}
        rewrite: {uri: /y}
    """, "vs.yaml:10:5: t#1: rewrite cannot go with redirect (Istio refuses it)"),
    ("""\
      - delegate: {name: other}
    """, "vs.yaml:8:5: t#1: delegate is not supported: import the delegate VirtualService's rules instead"),
    ("""\
      - match: [{headers: {"@request.auth.claims.groups": {exact: admin}}}]
        route: [{destination: {host: svc, subset: v1}}]
    """, "vs.yaml:8:24: t#1: headers @request.auth.claims.groups: a JWT claim match needs settings.jwt in the "
         "importing condroute file"),
    ("""\
      - match: [{uri: {exact: /x}}]
        directResponse: {status: 503, body: {bytes: "//79"}}
    """, "vs.yaml:9:49: t#1: directResponse body bytes is not base64 text that decodes to UTF-8"),
    ("""\
      - match: [{uri: {exact: /x}}]
        directResponse: {status: 99}
    """, "vs.yaml:9:30: t#1: directResponse needs status, an HTTP status from 200 to 599"),
    ("""\
      - route: [{destination: {host: svc, subset: v1}}]
        timeout: 2 seconds
    """, "vs.yaml:9:14: t#1: timeout must be a duration such as \"2s\" or \"500ms\""),
    ("""\
      - route: [{destination: {host: svc, subset: v1}}]
        headers: {request: {set: {content-length: "5"}}}
    """, "vs.yaml:9:31: t#1: set content-length: condroute cannot set it: it frames the request"),
    ("""\
      - route: [{destination: {host: svc, subset: v1}}]
        headers: {request: {set: {host: a}}}
        rewrite: {authority: b}
    """, "vs.yaml:10:26: t#1: rewrite authority and a headers.request host: set the Host once (Istio refuses both)"),
    ("""\
      - match: [{uri: {prefix: api}}]
        route: [{destination: {host: svc, subset: v1}}]
    """, "vs.yaml:8:28: t#1: uri prefix 'api' must start with '/' (request paths do)"),
    ("""\
      - match: [{headers: {x: {exact: a, prefix: b}}}]
        route: [{destination: {host: svc, subset: v1}}]
    """, "vs.yaml:8:27: t#1: headers x: use one of exact, prefix, regex (Istio refuses exact and prefix together)"),
    ("""\
      - name: a
        route: [{destination: {host: svc, subset: v1}}]
        match: [{uri: {prefix: /a}}]
      - name: a
        route: [{destination: {host: svc, subset: v1}}]
    """, "vs.yaml:11:5: t: two http rules are named 'a' (the other at line 8)"),
    ("""\
      - route: [{destination: {host: svc, subset: v1}}]
        mirror: {host: svc, subset: v2}
        mirrors: [{destination: {host: svc, subset: v2}}]
    """, "vs.yaml:10:5: t#1: use one of mirror and mirrors (Istio refuses both)"),
]


def _rule(rule: str) -> str:
    """One http rule (flow style lines, as written under ``http:``) routed to svc/v1 unless it says."""
    return rule if "route:" in rule or "redirect:" in rule or "directResponse:" in rule else \
        rule + "\n  route: [{destination: {host: svc, subset: v1}}]"


REFUSED += [(_rule(rule) + "\n", message) for rule, message in [
    ('- match: [{headers: {":path": {exact: /a}}}]',
     "vs.yaml:8:24: t#1: headers :path: matching :path in headers is not supported; use uri"),
    ('- match: [{headers: {":status": {exact: "200"}}}]',
     "vs.yaml:8:24: t#1: headers :status: :status is not a request pseudo-header (:authority, :method, :scheme)"),
    ('- match: [{headers: {"@request.foo": {exact: a}}}]',
     "vs.yaml:8:24: t#1: headers @request.foo: only @request.auth.claims.NAME (or [a][b]) can be matched here"),
    ('- match: [{withoutHeaders: {":method": {exact: GET}}}]',
     "vs.yaml:8:31: t#1: withoutHeaders :method: withoutHeaders on a pseudo-header is not supported"),
    ('- match: [{uri: {prefix: /a}, ignoreUriCase: "yes"}]',
     "vs.yaml:8:48: t#1: ignoreUriCase must be true or false, not a string ('yes')"),
    ("- match: [{port: 70000}]", "vs.yaml:8:20: t#1: port must be a port number from 1 to 65535, not a number (70000)"),
    ("- match: [{uri: /a}]", "vs.yaml:8:19: t#1: uri must be a mapping with one of exact, prefix, regex, not a string ('/a')"),
    ('- match: [{uri: {regex: ""}}]', "vs.yaml:8:27: t#1: uri: an empty regex (Istio refuses it)"),
    ("- route: []", "vs.yaml:8:12: t#1: route is empty"),
    ("- route: [{weight: 1}]", "vs.yaml:8:13: t#1: a route entry needs `destination` ({host, subset, port})"),
    ("- route: [{destination: {subset: v1}}]", "vs.yaml:8:27: t#1: destination needs `host`"),
    ("- route: [{destination: {host: svc, port: 80}}]",
     "vs.yaml:8:45: t#1: destination port must be {number: N} with N from 1 to 65535"),
    ("- route: [{destination: {host: svc, subset: v1}, wieght: 1}]",
     "vs.yaml:8:52: unknown key 'wieght' in t#1: a route destination; expected one of: destination, headers, weight"),
    ("- match: [{uri: {prefix: /a}}]\n  redirect: {redirectCode: 301}",
     "vs.yaml:9:15: t#1: redirect needs uri, prefixRewrite, authority, port or scheme"),
    ("- match: [{uri: {prefix: /a}}]\n  redirect: {uri: /b, prefixRewrite: /c}",
     "vs.yaml:9:25: t#1: use one of redirect uri and prefixRewrite"),
    ("- match: [{uri: {prefix: /a}}]\n  redirect: {scheme: ftp}", "vs.yaml:9:24: t#1: redirect scheme must be http or https"),
    ("- match: [{uri: {prefix: /a}}]\n  redirect: {authority: a, derivePort: SOMETIMES}",
     "vs.yaml:9:42: t#1: derivePort must be FROM_REQUEST_PORT or FROM_PROTOCOL_DEFAULT"),
    ("- match: [{uri: {prefix: /a}}]\n  redirect: {uri: b}", "vs.yaml:9:21: t#1: redirect uri must be a path starting with '/'"),
    ("- rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}",
     "vs.yaml:8:24: t#1: use one of rewrite uri and uriRegexRewrite (Istio refuses both)"),
    ("- rewrite: {uriRegexRewrite: {match: a}}", "vs.yaml:8:32: t#1: uriRegexRewrite needs both match (a regex) and rewrite"),
    ("- match: [{uri: {prefix: /a}}]\n  directResponse: {status: 200, body: {string: a, bytes: YQ==}}",
     "vs.yaml:9:41: t#1: directResponse body: use one of string and bytes"),
    ("- match: [{uri: {prefix: /a}}]\n  directResponse: {status: 204, body: {string: a}}",
     "vs.yaml:9:41: t#1: a 204 answer cannot have a body"),
    ("- retries: {attempts: -1}", "vs.yaml:8:25: t#1: retries attempts must be a whole number >= 0, not a number (-1)"),
    ("- mirror_percent: 5", "vs.yaml:8:5: t#1: mirror_percent: write mirrorPercentage: {value: N}"),
    ("- headers: {request: {remove: [host]}}", "vs.yaml:8:34: t#1: remove host: Istio refuses removing the Host"),
    ('- headers: {request: {set: {"a b": c}}}', "vs.yaml:8:31: t#1: set: 'a b' is not a header name"),
    ('- headers: {request: {set: {x: "a\\nb"}}}',
     "vs.yaml:8:34: t#1: set x: the value must not contain a line break or a control character"),
    ("- mirror: {host: nowhere}", "vs.yaml:8:20: mirror nowhere does not resolve to an upstream: define one of nowhere"),
]]
WARNED_MORE = [
    ("- mirrorPercentage: {value: 5}", "vs.yaml:8:5: t#1: mirrorPercentage without mirror does nothing"),
    ("- match: [{uri: {exact: /a}}]\n  directResponse: {status: 200}\n  headers: {request: {set: {x: y}}}",
     "vs.yaml:10:15: t#1: headers.request does nothing on a directResponse (no request is sent)"),
]


@pytest.mark.parametrize("manifest, message", REFUSED)
def test_refusals_are_located(tmp_path, manifest, message):
    found = errors(tmp_path, manifest)
    assert any(e.startswith(message) for e in found), found


@pytest.mark.parametrize("document, message", [
    ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [svc]}\n",
     "vs.yaml:4:7: VirtualService a has no http rules"),
    ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  http: []\n",
     "vs.yaml:5:3: VirtualService a has no hosts: it is a delegate, which condroute does not read"),
    ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {namespace: x}\nspec: {hosts: [a]}\n",
     "vs.yaml:3:11: a VirtualService needs metadata.name"),
    ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a], htp: []}\n",
     "vs.yaml:4:20: unknown key 'htp' in VirtualService a: spec; expected one of: exportTo, gateways, hosts, http"),
    ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: ['a*b'], http: []}\n",
     "vs.yaml:4:16: VirtualService a: hosts: 'a*b' is not a host name"),
    ("apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a]}\n",
     "vs.yaml:1:13: VirtualService networking.istio.io/v2 is not read"),
    ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [a]\n"
     "  http: [{route: [{destination: {host: other}}]}]\n---\n"
     "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec:\n  hosts: [b]\n"
     "  http: [{route: [{destination: {host: other}}]}]\n",
     "vs.yaml:10:18: VirtualService a (namespace default) is defined twice in this file (first at line 3)"),
])
def test_document_refusals_are_located(tmp_path, document, message):
    found = errors(tmp_path, document, head="")
    assert any(e.startswith(message) for e in found), found


def test_destination_rules_alone_are_not_a_routing_file(tmp_path):
    main_file = tmp_path / "main.yaml"
    main_file.write_text(f"version: 1\nimports: [{FIX / 'bookinfo' / 'destination-rule-all.yaml'}]\n")
    with pytest.raises(RulesError) as e:
        load_rules(str(main_file))
    assert any("no HTTPRoute or VirtualService in this file" in p.message for p in e.value.problems), e.value.problems


def test_same_name_in_two_namespaces_gets_the_namespace_in_its_route_names(tmp_path):
    doc = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a, namespace: {ns}}}\n"
           "spec:\n  hosts: [{h}]\n  http: [{{route: [{{destination: {{host: other}}}}]}}]\n")
    rules = load(tmp_path, doc.format(ns="x", h="a.x") + "---\n" + doc.format(ns="y", h="b.y"), head="")
    assert [r.name for r in rules.routes] == ["a.x#1", "a.y#1"]


# -- warnings -----------------------------------------------------------------------------------------
WARNED = [
    ("""\
      - route: [{destination: {host: svc, subset: v1}}]
        retries: {attempts: 30}
    """, "vs.yaml:9:25: t#1: retries attempts 30: condroute retries at most 10 times"),
    ("""\
      - route: [{destination: {host: svc, subset: v1}}]
        corsPolicy: {allowOrigins: [{exact: "https://a"}]}
    """, "vs.yaml:9:5: t#1: corsPolicy is not supported yet: condroute does not answer CORS preflights"),
    ("""\
      - match: [{uri: {prefix: /a}, sourceLabels: {app: a}}]
        route: [{destination: {host: svc, subset: v1}}]
    """, "vs.yaml:8:33: t#1: sourceLabels selects which workloads or gateways get this rule, not which requests; "
         "condroute applies the rule to every request"),
    ("""\
      - match: [{headers: {x: {exact: "1"}}}]
        rewrite: {uri: /v1}
        route: [{destination: {host: svc, subset: v1}}]
    """, "vs.yaml:9:20: t#1: rewrite uri '/v1' with no uri match replaces only the leading \"/\""),
    ("""\
      - route: [{destination: {host: svc, subset: v1}}]
        headers: {response: {set: {x: y}}}
    """, "vs.yaml:9:15: t#1: headers.response is not supported yet: responses reach the client as the upstream sent them"),
    ("""\
      - route:
        - {destination: {host: svc, subset: v1}, weight: 50, headers: {request: {set: {x: y}}}}
        - {destination: {host: svc, subset: v2}, weight: 50}
    """, "vs.yaml:9:58: t#1: headers of one destination among several are not supported yet"),
    ("""\
      - route: [{destination: {host: svc, subset: v1}}]
        headers: {request: {set: {x-node: "%HOSTNAME%"}}}
    """, "vs.yaml:9:39: t#1: set x-node: Envoy would expand %HOSTNAME%; condroute sends the value as written"),
    ("""\
      - route: [{destination: {host: svc, subset: v1}}]
      - route: [{destination: {host: svc, subset: v2}}]
    """, "vs.yaml:9:5: t#2 is never used: t#1 before it matches every request (Istio leaves it out too)"),
]

WARNED += [(_rule(rule) + "\n", message) for rule, message in WARNED_MORE]

@pytest.mark.parametrize("manifest, message", WARNED)
def test_warnings_are_located_and_the_file_loads(tmp_path, manifest, message):
    found = warnings(tmp_path, manifest)
    assert any(w.startswith(message) for w in found), found


def test_tcp_routes_and_other_kinds_are_named_in_warnings(tmp_path):
    found = warnings(tmp_path, """\
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: d}
        spec: {host: svc}
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: a}
        spec:
          hosts: [svc]
          tcp: [{route: [{destination: {host: svc}}]}]
          http: [{route: [{destination: {host: other}}]}]
        """, head="")
    assert "vs.yaml:11:3: VirtualService a: tcp routes are not read (condroute routes HTTP)" in found, found
    assert any(w.startswith("vs.yaml:1:1: not read: DestinationRule") for w in found), found


def test_the_bookinfo_fault_fixture_is_imported_without_warnings():
    """Fault rows of their own: test_import_toolbox.py."""
    rules = load_rules(str(FIX / "ratings-fault.rules.yaml"))
    assert not rules.warnings
    jason = rules.routes[0].backends[0]
    assert (jason.fault.abort, jason.fault.abort_percent, jason.fault.delay) == (500, 100.0, None)


@pytest.mark.parametrize("name", CASES)
def test_the_route_index_agrees_with_a_full_scan(name):
    """check decides with explain (every route tried in order); the proxy uses the route index
    (keyed on hosts and whole first path segments): an Istio prefix is a plain string prefix, so
    the index must never key a route on a segment its prefix does not complete."""
    rules = load_rules(str(FIX / f"{name}.rules.yaml"))
    for case in load_cases(str(FIX / f"{name}.cases.yaml")):
        full = decide(rules, case.request, explain=True)
        fast = decide(rules, case.request)
        assert (fast.route, fast.backend, fast.status) == (full.route, full.backend, full.status), case.name
