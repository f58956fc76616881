"""``condroute export --to nginx``: the regular expressions that stand for condroute's matchers
(checked against condroute's own parsing on generated inputs, no nginx needed), the configuration
it writes, ``nginx -t`` on every shipped rules file, and the real nginx verified against condroute's
decisions (slow)."""
from __future__ import annotations

import os
import random
import re
import textwrap

import pytest

from condroute.engine import decide
from condroute.export import ir
from condroute.export.base import ExportOptions
from condroute.export.nginx import TARGET
from condroute.export.nginx_cel import translate
from condroute.export.nginx_match import (bits_rx, cookie_first, cookie_first_rx, cookie_rx, query_first, query_first_rx,
                                          query_rx, whole_rx)
from condroute.export.nginx_parts import q
from condroute.export.targets import read, verify_file
from condroute.export.verify import run, wire
from export_support import AT, IMPORTED, ROOT, SHIPPED, assert_verifies, binary_or_skip, cases_of
from condroute.request import RequestView, parse_cookie_header, parse_query



def nginx_or_skip() -> str:
    return binary_or_skip("nginx")


def holds(m, values: list[str]) -> bool:
    """condroute's meaning of a leaf matcher on a list of values (any value; missing fails)."""
    def one(v: str) -> bool:
        ic = getattr(m, "ignore_case", False)
        s = v.lower() if ic else v
        if isinstance(m, ir.Eq):
            return s in {x.lower() if ic else x for x in m.values}
        t = m.value.lower() if ic else m.value
        return {ir.Prefix: s.startswith, ir.Suffix: s.endswith, ir.Contains: lambda x: x in s}[type(m)](t)
    if isinstance(m, ir.Present):
        return bool(values) == m.present
    return any(one(v) for v in values)


MATCHERS = [ir.Eq(("1",)), ir.Eq(("",)), ir.Eq(("a b", "x")), ir.Eq(("A",), True), ir.Prefix("a"), ir.Prefix(""),
            ir.Suffix("b"), ir.Suffix("B", True), ir.Contains(" "), ir.Contains("=x"), ir.Present(True)]


def test_cookie_regexes_hold_exactly_when_condroute_parses_a_matching_pair():
    rnd = random.Random(15)
    alphabet = ['a', 'b', 'A', 'B', ' ', '"', ';', '=', 'x', '1', '\t', 'k']
    for _ in range(4000):
        header = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 14)))
        if rnd.random() < 0.5:
            header = rnd.choice(["k=", " k =", "k= ", 'k="', "x; k="]) + header
        for m in MATCHERS:
            want = holds(m, parse_cookie_header([header]).get("k", []))
            got = re.search(cookie_rx("k", m, AT), header) is not None
            assert got == want, (header, m)
        first = parse_cookie_header([header]).get("k")
        mm = re.search(cookie_first("k"), header)
        assert (mm.group(1) or "") + (mm.group(2) or "") == first[0] if first else mm is None, header


def test_query_regexes_match_the_decoded_query_as_condroute_does():
    rnd = random.Random(16)
    pieces = ["k", "%6B", "%6b", "=", "&", "a", "%61", "%41", "+", "%20", " ", "b", "%2B", "x", "%3D", "%", "%zz", "1"]
    for _ in range(4000):
        qs = "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 10)))
        if rnd.random() < 0.5:
            qs = rnd.choice(["k=", "k", "%6b=", "x=1&k="]) + qs
        values = parse_query(qs).get("k", [])
        for m in MATCHERS:
            got = re.search(query_rx("k", m, AT), qs) is not None
            assert got == holds(m, values), (qs, m)
        first = re.search(query_first("k"), qs)
        assert (first is not None) == bool(values) or "%6" in qs.lower(), qs


def test_first_value_regexes_test_only_the_first_pair_of_the_name():
    rnd = random.Random(18)
    for _ in range(3000):
        cookie = "; ".join(rnd.choice(["k=1", "k=2", " k = 1 ", "k=", 'k="1"', "x=1", "kk=1", "k"]) for _ in range(rnd.randint(0, 4)))
        query = "&".join(rnd.choice(["k=1", "k=2", "%6B=1", "k=", "k", "x=1", "kk=1", ""]) for _ in range(rnd.randint(0, 4)))
        for v in ("1", ""):
            m = ir.Eq((v,))
            ck, qv = parse_cookie_header([cookie]).get("k"), parse_query(query).get("k")
            assert (re.search(cookie_first_rx("k", m, AT), cookie) is not None) == (bool(ck) and ck[0] == v), cookie
            assert (re.search(query_first_rx("k", m, AT), query) is not None) == (bool(qv) and qv[0] == v), query


@pytest.mark.parametrize("expr, ok", [
    ('hasQuery("animal") && getQuery("animal") == "whale"', True),
    ("(hasQuery('a') || !hasHeader('X-A')) && getCookie('c') != ''", True),
    ('request.scheme == "http" && request.method == "GET"', True),
    ('containsCookie("ab", "1") || true', True),
    ('request.path.startsWith("/x")', False),
    ('getQuery("a") > "b"', False),
    ('size(req_headers) > 1', False),
])
def test_cel_helpers_importers_write_are_translated_and_the_rest_refused(expr, ok):
    c = ir.Cel(expr, AT)
    if ok:
        assert translate(c) is not None
    else:
        with pytest.raises(ir.NotExported, match="cel: only"):
            translate(c)


def test_a_query_regex_matcher_is_refused_with_its_reason():
    with pytest.raises(ir.NotExported, match="raw"):
        query_rx("k", ir.Regex("^a"), AT)


def test_whole_value_regexes_anchor_and_escape():
    assert re.search(whole_rx(ir.Eq(("a.b", "c")), AT), "a.b")
    assert not re.search(whole_rx(ir.Eq(("a.b",)), AT), "axb")
    assert not re.search(whole_rx(ir.Eq(("a",)), AT), "ab")
    assert re.search(whole_rx(ir.Prefix("x$"), AT), "x$y")
    assert re.search(whole_rx(ir.Regex("(?P<host>a)b"), AT), "zab")
    assert "?P<" not in whole_rx(ir.Regex("(?P<host>a)"), AT)    # nginx would make $host of it
    with pytest.raises(ir.NotExported, match="ASCII"):
        whole_rx(ir.Eq(("é",), True), AT)


def test_condition_trees_as_one_regex_over_their_bits():
    rnd = random.Random(17)

    def tree(depth: int):
        k = rnd.random()
        if depth == 0 or k < 0.3:
            return ("atom", rnd.randrange(4))
        if k < 0.55:
            return ("not", tree(depth - 1))
        return (rnd.choice(["and", "or"]), [tree(depth - 1) for _ in range(rnd.randint(1, 3))])

    def build(t, atoms):
        if t[0] == "atom":
            a = atoms[t[1]]
            return a
        if t[0] == "not":
            return ir.Not(build(t[1], atoms))
        parts = tuple(build(p, atoms) for p in t[1])
        return ir.And(parts) if t[0] == "and" else ir.Or(parts)

    def value(t, bits):
        if t[0] == "atom":
            return bits[t[1]] == "1"
        if t[0] == "not":
            return not value(t[1], bits)
        vals = [value(p, bits) for p in t[1]]
        return all(vals) if t[0] == "and" else any(vals)

    atoms = [ir.ClientIP((), ir.Where("f", i, 1)) for i in range(4)]
    index = {id(a): i for i, a in enumerate(atoms)}
    for _ in range(300):
        t = tree(3)
        rx = "^" + bits_rx(build(t, atoms), index)
        for n in range(16):
            bits = format(n, "04b")
            assert (re.search(rx, bits) is not None) == value(t, bits), (t, rx, bits)


def test_a_conf_string_keeps_backslashes_quotes_and_newlines():
    assert q('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


RULES = textwrap.dedent("""\
    version: 1
    upstreams:
      a: http://127.0.0.1:9001
      b: https://b.example:8443/base
    settings:
      jwt: {from: header:Authorization, verify: false}
      geoip_db: GEO
    routes:
      - name: first
        match: {path: /x/*}
        backends:
          - name: geo
            when: {geo: {country: [SE]}}
            upstream: a
          - name: cel
            when: {cel: "request.path.startsWith('/x')"}
            upstream: a
          - name: num
            when: {header: {X-N: {gt: 3}}}
            upstream: a
          - name: mock
            when: {header: {X-Mock: "1"}}
            respond: {status: 200, body: "cost: $5\\n", headers: {X-Why: "$x"}}
          - name: tls
            upstream: b
            timeout: 2.5
            retries: 2
      - name: second
        backends:
          - name: only
            when: {header: {X-B: "1"}}
            upstream: a
    """).replace("GEO", os.path.join(ROOT, "rules", "recipes", "geoip", "GeoLite2-Country-Test.mmdb"))


def export_text(tmp_path, text: str, **kw) -> tuple:
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    _, m = read(str(f))
    opts = ExportOptions(listen_host="127.0.0.1", listen_port=18080, workdir=str(tmp_path), **kw)
    return TARGET.export(m, opts), str(f)


def test_what_nginx_cannot_express_is_refused_located_and_left_out(tmp_path):
    e, f = export_text(tmp_path, RULES)
    lines = [r.line("nginx") for r in e.refused]
    assert lines[0] == f"{f}:13:16: not exported to nginx: geo: the nginx export does not write GeoIP2 " \
                       "(a third-party module with its own database settings)"
    assert f"{f}:16:16: not exported to nginx: cel:" in lines[1]
    assert f"{f}:19:25: not exported to nginx: header X-N: a numeric comparison (gt)" in lines[2].replace("x-n", "X-N")
    assert len(lines) == 3
    assert "r1b1" not in e.text and "r1b4" in e.text and "r1b5" in e.text


def test_routes_and_backends_are_chosen_in_file_order(tmp_path):
    e, _ = export_text(tmp_path, RULES)
    entries = re.findall(r'"~\^([01.]*)"\s+(\w+);', e.text.split("$cr_target {")[1].split("}")[0])
    # first route: X-Mock, then tls (unconditional), then no fallback: passthrough's 404;
    # the second route counts only when the first does not match
    assert entries == [("11", "r1b4"), ("101", "r1b5"), ("1", "none"), ("0..11", "r2b1"), ("0..1", "none")]


def test_respond_keeps_dollars_literal_and_forwarding_sets_host_timeouts_retries(tmp_path):
    e, _ = export_text(tmp_path, RULES)
    assert 'return 200 "cost: ${cr_dollar}5\\n";' in e.text
    assert 'add_header "X-Why" "${cr_dollar}x" always;' in e.text
    assert "proxy_pass https://cr_b_try3$cr_fwd_r1b5$is_args$args;" in e.text
    assert 'proxy_set_header Host "b.example:8443";' in e.text
    assert 'proxy_ssl_name "b.example";' in e.text
    assert "proxy_read_timeout 2500ms;" in e.text and "proxy_next_upstream_tries 3;" in e.text
    assert e.text.count("server b.example:8443 max_fails=0;") == 3
    assert 'set $cr_fwdp_r1b5 "$cr_path";' in e.text and 'set $cr_fwd_r1b5 "/base${cr_fwdp_r1b5}";' in e.text


def test_verify_addresses_replace_the_upstreams_but_not_the_host_header(tmp_path):
    e, _ = export_text(tmp_path, RULES, addresses={"https://b.example:8443": ("127.0.0.1", 9555)})
    assert "server 127.0.0.1:9555 max_fails=0;" in e.text
    assert "proxy_pass http://cr_b_try3" in e.text
    assert 'proxy_set_header Host "b.example:8443";' in e.text


@pytest.mark.slow     # runs nginx -t
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.relpath(p, ROOT))
@pytest.mark.parametrize("verify", [False, True], ids=["production", "verify"])
def test_every_shipped_rules_file_loads_in_nginx(path, verify, tmp_path):
    nginx_or_skip()
    _, m = read(path)
    opts = ExportOptions(listen_host="127.0.0.1", listen_port=18080, workdir=str(tmp_path))
    if verify:
        opts.addresses = {u.origin: ("127.0.0.1", 9000 + i) for i, u in enumerate(m.upstreams.values())}
        opts.client_ip_header = "X-Condroute-Verify-Client"
    e = TARGET.export(m, opts)
    (tmp_path / "nginx.conf").write_text(e.text)
    for name, text in e.files.items():
        (tmp_path / name).write_text(text)
    assert TARGET.check(str(tmp_path)) is None
    for r in e.refused:
        assert r.line("nginx").startswith(f"{path}:") or r.at.file.startswith(os.path.dirname(path))


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in SHIPPED if cases_of(p)], ids=lambda p: os.path.relpath(p, ROOT))
def test_every_shipped_rules_file_verifies_on_nginx(path):
    assert_verifies("nginx", path)


STRESS = textwrap.dedent("""\
    version: 1
    upstreams:
      a: http://127.0.0.1:9001
      b: http://127.0.0.1:9002/base
      c: http://127.0.0.1:9003
    settings:
      on_no_match: error
    routes:
      - name: users
        match:
          host: [api.example, "*.svc.example"]
          methods: [GET, POST]
          path: /users/{id}/items/*
        backends:
          - name: by-cookie
            when: {cookie: {ab-test: "1"}}
            upstream: b
            path: /v2/u/{id}/{rest}
            set_headers: {X-Variant: "B$x \\"q\\""}
            remove_headers: [X-Drop]
          - name: by-query
            when: {query: {tenant: {prefix: "eu-"}}}
            upstream: c
            path: "/t?x=1"
          - name: by-not
            when: {not: {header: {X-Ab: {in: [A, B]}}}, header: {X-Ab: {present: true}}}
            upstream: c
            preserve_host: true
          - name: fb
            fallback: true
            upstream: a
      - name: mock
        match: {path: /mock}
        backends:
          - name: m
            respond: {status: 418, body: "I'm a $teapot \\"x\\"\\nline2", headers: {X-Mock: "y$z", Content-Type: application/json}}
      - name: regexes
        match:
          path: {regex: "^/r/[0-9]+$"}
          any:
            - header: {X-Name: {regex: "^ab+c", ignore_case: true}}
            - cookie: {sess: {regex: "^s[0-9]+$"}}
            - query: {q: {in: ["a b", "x+y", "é"]}}
        backends:
          - name: r
            upstream: a
      - name: split
        match: {path: /split/*}
        backends:
          - name: s
            split: {by: "header:X-User", weights: {a: 50, c: 50}}
            path: "/{rest}"
      - name: empty-cookie
        match: {path: /ec}
        backends:
          - name: e
            when: {cookie: {e: ""}}
            upstream: a
          - name: q
            when: {cookie: {e: {suffix: "z"}}}
            upstream: c
    """)
# (url, headers, method): each one decided by condroute and sent through nginx
REQUESTS = [
    ("http://api.example/users/7/items/x/y", {"Cookie": "ab-test=1", "X-Drop": "1"}, "GET"),
    ("http://API.example:8080/users/7/items", {"Cookie": 'x=1; ab-test = "1" ; z=2'}, "GET"),
    ("http://api.example/users/7/items/", {"Cookie": 'ab-test="1 "'}, "GET"),
    ("http://api.example/users/7/items/", {"Cookie": "AB-TEST=1"}, "GET"),
    ("http://api.example/users/7/items/", {"Cookie": "ab-test=2; ab-test=1"}, "POST"),
    ("http://api.example/users/7/items/q?tenant=eu%2Dx&b=2", {}, "GET"),
    ("http://api.example/users/7/items/q?ten%61nt=%65u-a", {}, "GET"),
    ("http://api.example/users/7/items/q?tenant=x&tenant=eu-b", {}, "GET"),
    ("http://api.example/users/7/items/q?TENANT=eu-b", {}, "GET"),
    ("http://x.svc.example/users/7/items/q", {"X-Ab": "C"}, "GET"),
    ("http://x.svc.example/users/7/items/q", {"X-Ab": "A"}, "GET"),
    ("http://x.svc.example/users/7/items/q", {}, "DELETE"),
    ("http://api.example/users/7/../7/items/a//b", {}, "GET"),
    ("http://api.example/users/7/items/a%2fb", {}, "GET"),
    ("http://api.example/users/7/items/%41b?z=%20", {}, "GET"),
    ("http://api.example/users/7/items/./x", {}, "GET"),
    ("http://api.example/users/7/items/x/..", {}, "GET"),
    ("http://other.example/mock", {}, "GET"),
    ("http://other.example/r/12", {"X-Name": "ABBC"}, "GET"),
    ("http://other.example/r/12", {"Cookie": "sess=s12"}, "GET"),
    ("http://other.example/r/12?q=a+b", {}, "GET"),
    ("http://other.example/r/12?q=x%2By", {}, "GET"),
    ("http://other.example/r/12?q=x+y", {}, "GET"),
    ("http://other.example/r/12?q=%c3%a9", {}, "GET"),
    ("http://other.example/r/12", {}, "GET"),
    ("http://other.example/split/a/b?k=1", {"X-User": "u1"}, "GET"),
    ("http://other.example/split/", {}, "GET"),
    ("http://other.example/ec", {"Cookie": "e= ; f=1"}, "GET"),
    ("http://other.example/ec", {"Cookie": 'e=""'}, "GET"),
    ("http://other.example/ec", {"Cookie": "e=az ; f=1"}, "GET"),
    ("http://other.example/ec", {"Cookie": 'e="a z"'}, "GET"),
    ("http://other.example/ec", {}, "GET"),
    ("http://other.example/nothing", {}, "GET"),
]


@pytest.mark.slow
def test_nginx_routes_the_awkward_requests_as_condroute_does(tmp_path):
    nginx_or_skip()
    f = tmp_path / "stress.yaml"
    f.write_text(STRESS)
    compiled, m = read(str(f))
    wires = [wire(f"request {i}", url, RequestView.from_url(url, method, list(h.items())), m)
             for i, (url, h, method) in enumerate(REQUESTS)]
    outcomes = {decide(compiled, w.view).outcome for w in wires}
    assert outcomes >= {"routed", "respond", "passthrough", "no_match", "bad_request"}
    r = run(TARGET, compiled, m, wires)
    assert r.refused == []
    assert (r.passed, r.failed) == (len(REQUESTS), 0), "\n".join(r.lines)


def istio_actions(tmp_path) -> tuple[str, str]:
    """tests/fixtures/istio/actions.* without its scheme match (CEL, which nginx is not given)."""
    import yaml
    fx = os.path.join(ROOT, "tests", "fixtures", "istio")
    vs = open(os.path.join(fx, "own", "actions-vs.yaml")).read().replace("      scheme:\n        exact: http\n", "")
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "actions-vs.yaml").write_text(vs)
    rules = tmp_path / "actions.rules.yaml"
    rules.write_text(open(os.path.join(fx, "actions.rules.yaml")).read())
    cases = [c for c in yaml.safe_load(open(os.path.join(fx, "actions.cases.yaml"))) if "scheme match" not in c["name"]]
    (tmp_path / "actions.cases.yaml").write_text(yaml.safe_dump(cases))
    return str(rules), str(tmp_path / "actions.cases.yaml")


@pytest.mark.slow
def test_imported_redirects_rewrites_and_header_edits_verify_on_nginx(tmp_path):
    nginx_or_skip()
    rules, cases = istio_actions(tmp_path)
    r = verify_file("nginx", rules, cases)
    assert r.refused == [] and r.failed == 0 and r.passed == 9, "\n".join(r.lines)


@pytest.mark.slow
def test_a_mirror_sends_a_copy_to_its_own_upstream(tmp_path):
    import http.client
    import time

    from condroute import model
    from condroute.export import verify as v
    nginx_or_skip()
    rules, _ = istio_actions(tmp_path)
    _, m = read(rules)
    recs = {}
    for up in model.every_upstream(m):
        recs.setdefault(up.origin, v.Recorder(up.name))
    work = tmp_path / "work"
    work.mkdir()
    opts = ExportOptions(listen_host="127.0.0.1", listen_port=v.free_port(), workdir=str(work),
                         addresses={o: ("127.0.0.1", r.port) for o, r in recs.items()})
    v.write(TARGET.export(m, opts), TARGET, str(work))
    assert TARGET.check(str(work)) is None
    proc = TARGET.start(str(work), opts)
    try:
        assert v._wait_listening(proc, opts.listen_port, time.monotonic() + 20) is None
        for i in range(40):
            c = http.client.HTTPConnection("127.0.0.1", opts.listen_port, timeout=10)
            c.request("GET", f"/m/{i}?x=1", headers={"Host": "web.shop.example"})
            assert c.getresponse().status == 200
            c.close()
        stable, shadow = recs["http://127.0.0.1:9501"], recs["http://127.0.0.1:9503"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(shadow.arrivals) < 5:
            time.sleep(0.05)
        assert [a["target"] for a in stable.arrivals] == [f"/m/{i}?x=1" for i in range(40)]
        copies = [a["target"] for a in shadow.arrivals]
        assert 5 <= len(copies) <= 35 and set(copies) <= {f"/m/{i}?x=1" for i in range(40)}   # 50 %
    finally:
        v.stop(proc)
        for r in recs.values():
            r.close()


# imported rules (HTTPRoute, Istio): every case verifies (an https:// case is skipped by the verifier)
@pytest.mark.slow
@pytest.mark.parametrize("path", IMPORTED, ids=lambda p: os.path.relpath(p, os.path.join(ROOT, "tests", "fixtures")))
def test_imported_rules_verify_on_nginx(path):
    nginx_or_skip()
    r = verify_file("nginx", path, path.replace(".rules.yaml", ".cases.yaml"))
    assert r.refused == [] and r.failed == 0 and r.passed > 0, "\n".join(r.refused + r.lines)


@pytest.mark.slow
def test_https_upstreams_alone_and_in_a_split_are_reached_over_tls(tmp_path):
    import http.client
    import time

    from condroute.export import verify as v
    from test_traffic_e2e import tls_server     # a throwaway certificate for 127.0.0.1
    nginx_or_skip()
    tls, url = tls_server(v._Recorder, tmp_path)
    tls.label, tls.arrivals = "tls", []
    plain = v.Recorder("plain")
    port = tls.server_address[1]
    f = tmp_path / "rules.yaml"
    f.write_text(textwrap.dedent(f"""\
        version: 1
        upstreams: {{s: "{url}/b", p: "http://127.0.0.1:{plain.port}"}}
        routes:
          - name: r
            backends:
              - {{name: split, when: {{header: {{X-Split: "1"}}}}, split: {{by: "cookie:u", weights: {{s: 1, p: 1}}}}}}
              - {{name: tls, upstream: s}}
        """))
    _, m = read(str(f))
    work = tmp_path / "work"
    work.mkdir()
    opts = ExportOptions(listen_host="127.0.0.1", listen_port=v.free_port(), workdir=str(work))
    v.write(TARGET.export(m, opts), TARGET, str(work))
    proc = TARGET.start(str(work), opts)
    try:
        assert v._wait_listening(proc, opts.listen_port, time.monotonic() + 20) is None
        for i in range(24):
            c = http.client.HTTPConnection("127.0.0.1", opts.listen_port, timeout=10)
            c.request("GET", f"/x/{i}", headers={"Host": "shop.example", "Cookie": f"u=user{i}",
                                                  **({"X-Split": "1"} if i % 2 else {})})
            assert c.getresponse().status == 200
            c.close()
        over_tls = {a["target"]: dict((k.lower(), val) for k, val in a["headers"]) for a in tls.arrivals}
        over_plain = {a["target"] for a in plain.arrivals}
        assert {f"/b/x/{i}" for i in range(0, 24, 2)} <= set(over_tls)          # the tls backend
        assert over_tls["/b/x/0"]["host"] == f"127.0.0.1:{port}"
        split_tls = {t for t in over_tls if int(t.rsplit("/", 1)[1]) % 2}
        assert split_tls and over_plain and len(split_tls) + len(over_plain) == 12   # both arms, 12 in all
        assert all(over_tls[t]["host"] == f"127.0.0.1:{port}" for t in split_tls)
    finally:
        v.stop(proc)
        plain.close()
        tls.shutdown()
        tls.server_close()
