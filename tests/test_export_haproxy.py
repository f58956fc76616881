"""``condroute export --to haproxy``: the configuration it writes (quoting, conditions as ORs of ANDs
of ACLs, first-match order, refusals located), ``haproxy -c`` on every shipped rules file, and the
real HAProxy verified against condroute's decisions (slow): the shipped cases, the awkward requests
the nginx export is tested with, and HAProxy's own hard parts (X-Forwarded-For walks beyond the 10
hops HAProxy's fetches reach, JWT list claims and verification, path rewrites, sticky splits).
Over 500 lines: most of it is rules files and request tables, each case one line."""
from __future__ import annotations

import itertools
import os
import random
import re
import textwrap
import time

import jwt as pyjwt
import pytest

from condroute.engine import decide
from condroute.export import ir
from condroute.export.base import ExportOptions
from condroute.export.haproxy import TARGET, split_arms
from condroute.export.haproxy_cond import Acls, cond_dnf, negate
from condroute.export.haproxy_text import pcre_literal, word
from condroute.export.targets import read, verify_file
from condroute.export.verify import run, wire
from export_support import AT, IMPORTED, ROOT, SHIPPED, assert_verifies, binary_or_skip, cases_of
from condroute.request import RequestView



def haproxy_or_skip() -> str:
    return binary_or_skip("haproxy")


# ------------------------------------------------------------------------------------------ text
def test_a_word_keeps_quotes_backslashes_dollars_and_control_characters():
    assert word("plain-1.2") == "plain-1.2"
    assert word('a "b" \\c $HOME #x') == '"a \\"b\\" \\\\c \\$HOME #x"'
    assert word("line\nnext\x7f") == '"line\\x0anext\\x7f"'
    assert word("-i") == '"-i"'          # never read as an ACL flag
    assert word("") == '""'


def test_a_pcre_literal_escapes_every_ascii_symbol_and_the_single_quote():
    assert pcre_literal("a.b'(c)") == "a\\.b\\x27\\(c\\)"
    assert re.fullmatch(pcre_literal("x+y?[z]\\"), "x+y?[z]\\")


# -------------------------------------------------------------------------------- conditions (DNF)
def _eval_dnf(dnf, truth: dict[str, bool]) -> bool:
    return any(all(truth[n] != neg for n, neg in t) for t in dnf)


def _eval_cond(c, truth: dict[str, bool], names: dict) -> bool:
    if isinstance(c, ir.Atom):
        return truth[names[c]]
    if isinstance(c, ir.And):
        return all(_eval_cond(p, truth, names) for p in c.parts)
    if isinstance(c, ir.Or):
        return any(_eval_cond(p, truth, names) for p in c.parts)
    return not _eval_cond(c.inner, truth, names)


def test_conditions_become_an_or_of_ands_that_holds_exactly_when_the_tree_does():
    rnd = random.Random(15)
    leaves = [ir.Atom("header", f"x-{i}", ir.Eq((str(i),)), AT) for i in range(4)]

    def tree(depth: int):
        if depth == 0 or rnd.random() < 0.3:
            return rnd.choice(leaves)
        kind = rnd.choice([ir.And, ir.Or, ir.Not])
        if kind is ir.Not:
            return ir.Not(tree(depth - 1))
        return kind(tuple(tree(depth - 1) for _ in range(rnd.randint(0, 3))))
    for _ in range(300):
        acls = Acls()
        c = tree(4)
        dnf = cond_dnf(acls, c)
        names = {leaf: acls.by_key[(f"req.fhdr({leaf.name})", "str", False, leaf.matcher.values)]
                 for leaf in leaves if (f"req.fhdr({leaf.name})", "str", False, leaf.matcher.values) in acls.by_key}
        for bits in itertools.product([False, True], repeat=len(leaves)):
            truth = {names.get(leaf, f"unused{i}"): b for i, (leaf, b) in enumerate(zip(leaves, bits))}
            assert _eval_dnf(dnf, truth) == _eval_cond(c, truth, names), c


def test_negation_of_true_and_false():
    assert negate([()]) == [] and negate([]) == [()]


def test_a_missing_value_makes_not_hold_and_present_false_is_a_negated_found():
    acls = Acls()
    d = cond_dnf(acls, ir.Atom("header", "x-a", ir.MNot(ir.Eq(("1",))), AT))
    assert d == [((acls.by_key[("req.fhdr(x-a)", "str", False, ("1",))], True),)]
    d = cond_dnf(acls, ir.Atom("header", "x-a", ir.Present(False), AT))
    assert d == [((acls.by_key[("req.fhdr(x-a)", "found", False, ())], True),)]
    assert "acl cr_2_header_x_a req.fhdr(x-a) -m found" in acls.lines


def test_split_weights_become_bucket_ranges_and_zero_weights_are_never_drawn():
    from condroute import model
    up = [model.Upstream(n, f"http://{n}", "http", n, 80, "") for n in ("a", "b", "c")]
    s = model.Split("cookie:u", "cookie", "u", ((up[0], 90), (up[1], 10), (up[2], 0)), "")
    assert [(u.name, b) for u, b in split_arms(s, AT)] == [("a", 9000), ("b", 10000)]
    s = model.Split("cookie:u", "cookie", "u", ((up[0], 0), (up[1], 0)), "")
    assert [b for _, b in split_arms(s, AT)] == [5000, 10000]
    s = model.Split("cookie:u", "cookie", "u", ((up[0], 1), (up[1], 99999)), "")
    assert [(u.name, b) for u, b in split_arms(s, AT)] == [("b", 10000)]   # 0.001 % rounds to no bucket


# ------------------------------------------------------------------------------------ the config
RULES = textwrap.dedent("""\
    version: 1
    upstreams:
      a: http://127.0.0.1:9001
      b: https://b.example:8443/base
    settings:
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
            respond: {status: 200, body: "cost: $5 %d\\n", headers: {X-Why: "$x %y"}}
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


def export_text(tmp_path, text: str, **kw):
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    _, m = read(str(f))
    opts = ExportOptions(listen_host="127.0.0.1", listen_port=18080, workdir=str(tmp_path), **kw)
    return TARGET.export(m, opts), str(f)


def test_what_haproxy_cannot_express_is_refused_located_and_left_out(tmp_path):
    e, f = export_text(tmp_path, RULES)
    lines = [r.line("haproxy") for r in e.refused]
    assert lines[0].startswith(f"{f}:12:16: not exported to haproxy: geo: HAProxy has no MaxMind lookup")
    assert lines[1].startswith(f"{f}:15:16: not exported to haproxy: cel: HAProxy has no CEL evaluator; only ")
    assert lines[2].startswith(f"{f}:18:25: not exported to haproxy: a number comparison (gt/ge/lt/le)")
    assert len(lines) == 3
    assert "str(cr_1_0)" not in e.text and "str(cr_1_3)" in e.text and "str(cr_1_4)" in e.text


def test_routes_and_backends_are_chosen_in_file_order(tmp_path):
    e, _ = export_text(tmp_path, RULES)
    chosen = re.findall(r"http-request set-var\(txn\.cr_(route|backend)\) (?:int|str)\((\w+)\) if (\S+)", e.text)
    # each route only while none is chosen, each backend only inside its route and while none is
    assert chosen == [("route", "1", "!cr_routed"), ("backend", "cr_1_3", "cr_route_1"),
                      ("backend", "cr_1_4", "cr_route_1"), ("route", "2", "!cr_routed"),
                      ("backend", "cr_2_0", "cr_route_2")]
    assert all(" !cr_chosen" in line for line in e.text.splitlines() if "set-var(txn.cr_backend)" in line)
    # passthrough when a route selects nothing: the 404 every target answers
    assert 'http-request return status 404 content-type text/plain string "no route\\x0a" if cr_route_1 !cr_chosen' in e.text
    assert e.text.index("set-var(txn.cr_route) int(2)") > e.text.index("set-var(txn.cr_backend) str(cr_1_4)")


def test_respond_keeps_dollars_and_percent_signs_literal(tmp_path):
    e, _ = export_text(tmp_path, RULES)
    assert ('http-request return status 200 content-type "text/plain; charset=utf-8" string "cost: \\$5 %d\\x0a" '
            'hdr X-Why "\\$x %%y" if cr_be_1_3') in e.text


def test_forwarding_sets_host_timeouts_retries_and_tls_towards_https(tmp_path):
    e, _ = export_text(tmp_path, RULES)
    sec = e.text.split("backend cr_1_4\n")[1].split("\n\n")[0]
    assert "timeout server 2500ms" in sec and "retries 2" in sec and "retry-on conn-failure" in sec
    assert "http-request set-header Host b.example:8443" in sec
    assert 'http-request set-path "/base%[path]"' in sec
    assert "server b b.example:8443 ssl verify required ca-file @system-ca sni str(b.example) verifyhost b.example" in sec
    assert "retries 0" in e.text.split("backend cr_2_0\n")[1]
    # condroute retries idempotent methods only: the others go to a copy without retries
    once = e.text.split("backend cr_1_4_once\n")[1].split("\n\n")[0]
    assert "retries 0" in once and "retry-on" not in once
    assert "use_backend cr_1_4_once if cr_be_1_4 !cr_idempotent\n    use_backend cr_1_4 if cr_be_1_4\n" in e.text
    assert "acl cr_idempotent method,upper -m str GET HEAD PUT DELETE OPTIONS TRACE" in e.text


def test_verify_addresses_replace_the_upstreams_but_not_the_host_header(tmp_path):
    e, _ = export_text(tmp_path, RULES, addresses={"https://b.example:8443": ("127.0.0.1", 9555)},
                       client_ip_header="X-Condroute-Verify-Client")
    sec = e.text.split("backend cr_1_4\n")[1].split("\n\n")[0]
    assert "server b 127.0.0.1:9555\n" in sec + "\n" and "ssl" not in sec
    assert "http-request set-header Host b.example:8443" in sec
    assert "http-request set-src req.fhdr(x-condroute-verify-client,-1)" in e.text


def test_trusted_proxies_and_jwt_bring_the_lua_helper(tmp_path, monkeypatch):
    monkeypatch.setenv("CR_TEST_SECRET", "s" * 32)
    e, _ = export_text(tmp_path, textwrap.dedent("""\
        version: 1
        settings:
          trusted_proxies: [10.0.0.0/8]
          jwt: {from: "cookie:tok", verify: {secret_env: CR_TEST_SECRET, audience: [x, y]}}
        routes:
          - name: r
            backends:
              - name: b
                when: {jwt: {roles: {in: [a, b]}, "org.id": {not: {prefix: "t-"}}}}
                upstream: http://127.0.0.1:9001
        """))
    assert f"lua-load {os.path.join(str(tmp_path), 'condroute.lua')}" in e.text
    lua = e.files["condroute.lua"]
    assert 'core.parse_addr("10.0.0.0/8")' in lua
    assert '["secret_env"] = "CR_TEST_SECRET"' in lua and '["audience"] = {"x", "y"}' in lua
    assert '[1] = {src = "jwt", name = "roles", m = {op = "eq", set = {["a"] = true, ["b"] = true}, ic = false}},' in lua
    assert '[2] = {src = "jwt", name = "org.id", m = {op = "not", m = {op = "prefix", s = "t-", ic = false}}},' in lua
    assert "http-request lua.condroute_atoms" in e.text and "var(txn.cr_lua_2) -m found" in e.text


def test_a_key_file_is_refused_for_jwt(tmp_path):
    (tmp_path / "keys.json").write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "alg": "HS256"}]}')
    e, f = export_text(tmp_path, textwrap.dedent("""\
        version: 1
        settings:
          jwt: {verify: {jwks_file: keys.json}}
        routes:
          - name: r
            backends:
              - name: b
                when: {jwt: {role: admin}}
                upstream: http://127.0.0.1:9001
        """))
    assert [r.line("haproxy") for r in e.refused] == [
        f"{f}:8:22: not exported to haproxy: settings.jwt.verify with public_key_file or jwks_file: only "
        "secrets (HS256/384/512) are exported to HAProxy"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: os.path.relpath(p, ROOT))
@pytest.mark.parametrize("verify", [False, True], ids=["production", "verify"])
def test_every_shipped_rules_file_loads_in_haproxy(path, verify, tmp_path):
    haproxy_or_skip()
    _, m = read(path)
    opts = ExportOptions(listen_host="127.0.0.1", listen_port=18080, workdir=str(tmp_path))
    if verify:
        opts.addresses = {u.origin: ("127.0.0.1", 9000 + i) for i, u in enumerate(m.upstreams.values())}
        opts.client_ip_header = "X-Condroute-Verify-Client"
    e = TARGET.export(m, opts)
    (tmp_path / "haproxy.cfg").write_text(e.text)
    for name, text in e.files.items():
        (tmp_path / name).write_text(text)
    assert TARGET.check(str(tmp_path)) is None
    for r in e.refused:
        assert re.match(r".+\.yaml:\d+:\d+: not exported to haproxy: ", r.line("haproxy"))


def test_a_bad_configuration_is_reported_with_haproxys_message(tmp_path):
    haproxy_or_skip()
    (tmp_path / "haproxy.cfg").write_text("frontend f\n    bind 127.0.0.1:1\n    use_backend nowhere\n")
    msg = TARGET.check(str(tmp_path))
    assert msg is not None and "nowhere" in msg


# ---------------------------------------------------------------------------------- real HAProxy
@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in SHIPPED if cases_of(p)], ids=lambda p: os.path.relpath(p, ROOT))
def test_every_shipped_rules_file_verifies_on_haproxy(path):
    assert_verifies("haproxy", path)


def _verify(tmp_path, text: str, requests):
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    compiled, m = read(str(f))
    wires = []
    for i, (url, headers, method, peer) in enumerate(requests):
        view = RequestView.from_url(url, method, list(headers.items()) if isinstance(headers, dict) else headers,
                                    peer=peer)
        wires.append(wire(f"request {i}", url, view, m))
    r = run(TARGET, compiled, m, wires)
    assert r.refused == []
    assert (r.passed, r.failed) == (len(requests), 0), "\n".join(r.lines)
    return compiled, wires


@pytest.mark.slow
def test_haproxy_routes_the_nginx_exports_awkward_requests_as_condroute_does(tmp_path):
    haproxy_or_skip()
    from tests.test_export_nginx import REQUESTS, STRESS     # the same requests for every gateway
    compiled, wires = _verify(tmp_path, STRESS, [(u, h, meth, None) for u, h, meth in REQUESTS])
    outcomes = {decide(compiled, w.view).outcome for w in wires}
    assert outcomes >= {"routed", "respond", "passthrough", "no_match", "bad_request"}


CLIENT = textwrap.dedent("""\
    version: 1
    upstreams:
      inside: http://127.0.0.1:9001
      outside: http://127.0.0.1:9002
    settings:
      trusted_proxies: [127.0.0.0/8, 10.0.0.0/8, "fd00::/16"]
    routes:
      - name: r
        backends:
          - name: office
            when: {client_ip: [192.0.2.0/24, "2001:db8::/32"]}
            upstream: inside
          - name: rest
            fallback: true
            upstream: outside
    """)
_TRUSTED_CHAIN = ", ".join(f"10.0.0.{i}" for i in range(1, 40))


@pytest.mark.slow
def test_the_client_address_walks_x_forwarded_for_as_condroute_does(tmp_path):
    haproxy_or_skip()
    u = "http://h.example/"
    reqs = [
        (u, {"X-Forwarded-For": "192.0.2.7"}, "GET", "127.0.0.1"),
        (u, {"X-Forwarded-For": "192.0.2.7"}, "GET", "198.51.100.1"),        # an untrusted peer
        (u, {"X-Forwarded-For": "192.0.2.7, 198.51.100.1"}, "GET", "127.0.0.1"),
        (u, {"X-Forwarded-For": "198.51.100.1, 192.0.2.7, 10.1.1.1"}, "GET", "127.0.0.1"),
        (u, [("X-Forwarded-For", "192.0.2.7"), ("X-Forwarded-For", "10.0.0.1, 10.0.0.2")], "GET", "127.0.0.1"),
        (u, {"X-Forwarded-For": "192.0.2.7, " + _TRUSTED_CHAIN[:200]}, "GET", "127.0.0.1"),   # 12+ hops
        (u, {"X-Forwarded-For": "192.0.2.7, " + _TRUSTED_CHAIN}, "GET", "127.0.0.1"),  # past 32 hops
        (u, {"X-Forwarded-For": "192.0.2.7, garbage, 10.0.0.1"}, "GET", "127.0.0.1"),
        (u, {"X-Forwarded-For": "192.0.2.7:4711"}, "GET", "127.0.0.1"),
        (u, {"X-Forwarded-For": "[2001:db8::1]:80"}, "GET", "127.0.0.1"),
        (u, {"X-Forwarded-For": "2001:db8::1, fd00::1"}, "GET", "127.0.0.1"),
        (u, {"X-Forwarded-For": "192.0.2.07"}, "GET", "127.0.0.1"),
        (u, {"X-Forwarded-For": ""}, "GET", "127.0.0.1"),
        (u, {"X-Real-IP": "192.0.2.9"}, "GET", "127.0.0.1"),
        (u, {"X-Real-IP": "192.0.2.9", "X-Forwarded-For": "198.51.100.1"}, "GET", "127.0.0.1"),
        (u, {}, "GET", "192.0.2.200"),
        (u, {}, "GET", "2001:db8::5"),
        (u, {}, "GET", "::ffff:192.0.2.3"),
        (u, {"X-Forwarded-For": "::ffff:192.0.2.8"}, "GET", "::ffff:127.0.0.1"),
        (u, {"X-Forwarded-For": "192.0.2.8, ::ffff:a00:1"}, "GET", "127.0.0.1"),
        (u, {"X-Forwarded-For": "192.0.2.8, ::ffff:c000:209"}, "GET", "127.0.0.1"),
    ]
    _verify(tmp_path, CLIENT, reqs)


JWT_RULES = textwrap.dedent("""\
    version: 1
    upstreams:
      beta: http://127.0.0.1:9001
      staff: http://127.0.0.1:9002
      other: http://127.0.0.1:9003
    settings:
      jwt:
        from: header:Authorization
        verify: {secret: SECRET, issuer: [https://idp.example, https://idp2.example], audience: shop, leeway: 30}
    routes:
      - name: r
        backends:
          - name: beta
            when: {jwt: {groups: {in: [beta-testers]}, "org.tier": {not: {equals: free}}}}
            upstream: beta
          - name: staff
            when: {any: [{jwt: {"https://example.com/roles": {regex: "^ST", ignore_case: true}}},
                         {jwt: {level: "3", admin: "true"}}]}
            upstream: staff
          - name: rest
            fallback: true
            upstream: other
    """)
SECRET = "condroute-test-secret-0123456789abcdef-0123456789abcdef-01234567"


def _tok(claims: dict, key: str = SECRET, alg: str = "HS256", **hdr) -> str:
    base = {"iss": "https://idp.example", "aud": "shop", "exp": int(time.time()) + 3600}
    return pyjwt.encode({**base, **claims}, key, algorithm=alg, headers=hdr or None)


@pytest.mark.slow
def test_jwt_claims_and_verification_as_condroute_reads_them(tmp_path):
    haproxy_or_skip()
    u = "http://app.example/"
    now = int(time.time())
    tokens = [
        _tok({"groups": ["staff", "beta-testers"], "org": {"tier": "pro"}}),
        _tok({"groups": ["staff", "beta-testers"], "org": {"tier": "free"}}),
        _tok({"groups": "beta-testers"}),                                       # a string claim, no org
        _tok({"groups": ["beta-testers"], "org.tier": "free"}),                 # a dotted name as written
        _tok({"https://example.com/roles": ["x", "staff"]}),
        _tok({"level": 3, "admin": True}),
        _tok({"level": 3.0, "admin": True}),
        _tok({"level": "3", "admin": "true"}),
        _tok({"groups": ["beta-testers"]}, key="another-key-0123456789abcdefgh-0123456789abcdef-0123456789abcdef"),  # forged
        _tok({"groups": ["beta-testers"], "exp": now - 10}),                     # expired within leeway
        _tok({"groups": ["beta-testers"], "exp": now - 100}),                    # expired
        _tok({"groups": ["beta-testers"], "nbf": now + 100}),
        _tok({"groups": ["beta-testers"], "iss": "https://idp2.example"}),
        _tok({"groups": ["beta-testers"], "iss": "https://evil.example"}),
        _tok({"groups": ["beta-testers"], "aud": ["x", "shop"]}),
        _tok({"groups": ["beta-testers"], "aud": []}),
        _tok({"groups": ["beta-testers"], "sub": 5}),
        _tok({"groups": ["beta-testers"]}, alg="HS512"),
        _tok({"groups": ["beta-testers"], "exp": str(now + 100)}),
        pyjwt.encode({"groups": ["beta-testers"], "iss": "https://idp.example", "aud": "shop"}, None, algorithm="none"),
    ]
    reqs = [(u, {"Authorization": f"Bearer {t}"}, "GET", None) for t in tokens]
    reqs += [(u, {"Authorization": f"bearer   {tokens[0]}"}, "GET", None),
             (u, {"Authorization": f"Basic {tokens[0]}"}, "GET", None),
             (u, {"Authorization": tokens[0]}, "GET", None),
             (u, [("Authorization", "Bearer x.y.z"), ("Authorization", f"Bearer {tokens[0]}")], "GET", None),
             (u, {"Authorization": "Bearer not-a-token"}, "GET", None),
             (u, {}, "GET", None)]
    _verify(tmp_path, JWT_RULES.replace("SECRET", SECRET), reqs)


PATHS = textwrap.dedent("""\
    version: 1
    upstreams:
      a: http://127.0.0.1:9001/base
      b: http://127.0.0.1:9002
      c: http://127.0.0.1:9003
    routes:
      - name: files
        match: {host: files.example, path: "/f/{name}.txt"}
        backends:
          - name: f
            upstream: a
            path: "/store/{name}/{path}?v=1"
      - name: users
        match: {host: "*.users.example", path: "/u/{id}/*"}
        backends:
          - name: split
            split: {by: "query:uid", weights: {b: 70, c: 30}, salt: s1}
            path: "{rest}/by/{id}"
            set_headers: {X-Id: "%{id}"}
            preserve_host: true
      - name: hosts
        match: {host: [Exact.Example, "*.wild.example"]}
        backends:
          - name: h
            when: {host: {suffix: .wild.example}}
            upstream: b
          - name: other
            fallback: true
            upstream: c
    """)


@pytest.mark.slow
def test_paths_hosts_and_sticky_splits_as_condroute_does(tmp_path):
    haproxy_or_skip()
    reqs = [
        ("http://files.example/f/report.txt?x=1", {}, "GET", None),
        ("http://files.example/f/report.txt", {}, "GET", None),
        ("http://files.example/f/a/b.txt", {}, "GET", None),
        ("http://files.example/f/.txt", {}, "GET", None),
        ("http://files.example/f/x.txt/", {}, "GET", None),
        ("http://files.example/g/../f/./r.txt", {}, "GET", None),
        ("http://a.users.example/u/7/x/y?uid=1&z", {}, "GET", None),
        ("http://a.users.example/u/7/x/y?uid=1&z", {}, "GET", None),
        ("http://a.users.example/u/7?uid=2", {}, "GET", None),
        ("http://a.users.example/u/7/", {}, "GET", None),
        ("http://users.example/u/7/", {}, "GET", None),
        ("http://exact.example:8080/", {}, "GET", None),
        ("http://exact.example./", {}, "GET", None),
        ("http://x.wild.example/", {}, "GET", None),
        ("http://X.WILD.EXAMPLE:81/", {}, "GET", None),
        ("http://wild.example/", {}, "GET", None),
        ("http://other.example/u/7/%2e%2e/x", {}, "GET", None),
        ("http://a.users.example/u/7/%2e%2e/x", {}, "GET", None),
        ("http://files.example/f%2fa.txt", {}, "GET", None),          # owned only read decoded: 400
        ("http://files.example/g/..;x/f/a.txt", {}, "GET", None),
        ("http://files.example/g/%2E%2E/f/a.txt", {}, "GET", None),
        ("http://files.example/x\\y", {}, "GET", None),              # owned neither way: no route
        ("http://files.example/f/a%5Cb.txt", {}, "GET", None),         # owned as written: 400
    ]
    compiled, wires = _verify(tmp_path, PATHS, reqs)
    outcomes = [decide(compiled, w.view).outcome for w in wires]
    assert outcomes.count("bad_request") == 5 and outcomes.count("passthrough") >= 3, outcomes


VALUES = textwrap.dedent("""\
    version: 1
    upstreams:
      a: http://127.0.0.1:9001
      b: http://127.0.0.1:9002
      c: http://127.0.0.1:9003
    routes:
      - name: r
        backends:
          - name: cookie-rx
            when: {cookie: {s: {regex: "^v[0-9]+$"}}}
            upstream: a
          - name: query-rx
            when: {query: {"q": {regex: "^a b;c$|^x$|^$|%zz"}}}
            upstream: b
          - name: header
            when: {header: {X-H: {not: ""}, X-Tag: {regex: "^T", ignore_case: true}}}
            upstream: c
          - name: query-not
            when: {query: {n: {not: {in: ["1", "2"]}}}, method: [get]}
            upstream: a
          - name: fb
            fallback: true
            upstream: c
    """)


@pytest.mark.slow
def test_cookie_query_and_header_values_as_condroute_reads_them(tmp_path):
    haproxy_or_skip()
    u = "http://v.example/"
    reqs = [
        (u, {"Cookie": "s=v1"}, "GET", None),
        (u, {"Cookie": 's="v22"'}, "GET", None),
        (u, {"Cookie": "s=w, s=v3"}, "GET", None),           # HAProxy's req.cook splits on ','
        (u, {"Cookie": "t=1;s = v4 ;"}, "GET", None),
        (u, [("Cookie", "s=x"), ("Cookie", "s=v5")], "GET", None),
        (u + "?q=a+b;c", {}, "GET", None),                  # url_param ends at ';'
        (u + "?%71=x", {}, "GET", None),                    # an encoded name
        (u + "?q", {}, "GET", None),                        # no '=': the empty value
        (u + "?q=%zz", {}, "GET", None),                    # a bad escape stays as written
        (u + "?q=y&q=x", {}, "GET", None),
        (u, {"X-H": "", "X-Tag": "tall"}, "GET", None),
        (u, {"X-Tag": "a,Tb"}, "GET", None),
        (u, {"X-Tag": "a", "X-H": "1"}, "GET", None),
        (u + "?n=3", {}, "get", None),
        (u + "?n=1&n=3", {}, "GET", None),
        (u + "?n=1", {}, "GET", None),
        (u, {}, "GET", None),
        (u, {}, "POST", None),
    ]
    _verify(tmp_path, VALUES, reqs)


# ------------------------------------------------------------------------------ generated rule sets
_WORDS = ["a", "B", "ab", "a b", "x,y", "é"]


def _matcher(rnd: random.Random, depth: int = 0) -> str:
    w = rnd.choice(_WORDS)
    forms = [f'"{w}"', f'["{w}", "{rnd.choice(_WORDS)}"]', f'{{prefix: "{w[0]}"}}', f'{{suffix: "{w[-1]}"}}',
             f'{{contains: "{w}", ignore_case: {str(w.isascii()).lower()}}}', '{regex: "^[aA]"}', f"{{present: {rnd.choice(['true', 'false'])}}}",
             f'{{equals: "{w.lower()}", ignore_case: true}}' if w.isascii() else '""']
    if depth == 0 and rnd.random() < 0.2:
        return f"{{not: {_matcher(rnd, 1)}}}"
    return rnd.choice(forms)


def _cond(rnd: random.Random, depth: int = 0) -> str:
    r = rnd.random()
    if depth < 2 and r < 0.15:
        return f"{{any: [{_cond(rnd, depth + 1)}, {_cond(rnd, depth + 1)}]}}"
    if depth < 2 and r < 0.25:
        return f"{{not: {_cond(rnd, depth + 1)}}}"
    kind = rnd.choice(["header", "cookie", "query", "method", "path", "host"])
    if kind in ("header", "cookie", "query"):
        return f"{{{kind}: {{{rnd.choice(['k', 'K2'] if kind == 'header' else ['k', 'k2'])}: {_matcher(rnd)}}}}}"
    if kind == "method":
        return f"{{method: {rnd.choice(['GET', '[GET, POST]', '{prefix: P}'])}}}"
    if kind == "path":
        return "{path: " + rnd.choice(["{prefix: /a}", '{regex: "^/[ab]/?$"}', "/b"]) + "}"
    return f"{{host: {rnd.choice(['{suffix: .example}', 'h.example'])}}}"


def _rules(rnd: random.Random) -> str:
    # (a split's arms without base paths: --verify compares the path with condroute's own arm's)
    out = ["version: 1", "upstreams:", "  u1: http://127.0.0.1:9001", "  u2: http://127.0.0.1:9002",
           "  u3: http://127.0.0.1:9003/base",
           f"settings: {{on_no_match: {rnd.choice(['passthrough', 'error'])}}}", "routes:"]
    for i in range(rnd.randint(1, 3)):
        match = rnd.choice(["", "match: {path: /a/*}", 'match: {path: "/{x}/b"}', "match: {host: ['*.example']}",
                            "match: {methods: [GET]}"])
        out += [f"  - name: r{i}"] + ([f"    {match}"] if match else []) + ["    backends:"]
        for j in range(rnd.randint(1, 3)):
            out += [f"      - name: b{j}", f"        when: {_cond(rnd)}"]
            kind = rnd.random()
            if kind < 0.15:
                out.append('        respond: {status: 403, body: "no\\n", headers: {X-R: "1"}}')
            elif kind < 0.3:
                out.append('        split: {by: "header:k", weights: {u1: 50, u2: 50}}')
            else:
                out.append(f"        upstream: {rnd.choice(['u1', 'u2', 'u3'])}")
                if "{x}" in match and rnd.random() < 0.5:
                    out.append('        path: "/p/{x}/{path}"')
                elif "/a/*" in match and rnd.random() < 0.5:
                    out.append('        path: "/r/{rest}"')
                if rnd.random() < 0.4:
                    out.append('        set_headers: {X-Set: "v"}')
                    out.append("        remove_headers: [K2]")
        if rnd.random() < 0.5:
            out += ["      - name: fb", "        fallback: true", "        upstream: u1"]
    return "\n".join(out) + "\n"


def _request(rnd: random.Random) -> tuple:
    path = rnd.choice(["/", "/a", "/a/", "/a/x/y", "/b", "/z/b", "/b/", "/a//x/../y"])
    qs = rnd.choice(["", "?k=a", "?k=a+b", "?k2=%C3%A9&k=B", "?k", "?k=ab&k=x%2Cy"])
    host = rnd.choice(["h.example", "x.example", "other.test"])
    headers: list[tuple[str, str]] = []
    for _ in range(rnd.randint(0, 3)):
        name = rnd.choice(["k", "K2", "Cookie"])
        if name == "Cookie":
            headers.append(("Cookie", rnd.choice(["k=a", 'k="ab"', "k2=B; k=a b", "k=", "x=1"])))
        else:
            headers.append((name, rnd.choice(_WORDS[:5] + [""])))
    return (f"http://{host}{path}{qs}", headers, rnd.choice(["GET", "GET", "POST"]), None)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_generated_rule_sets_route_as_condroute_decides(seed, tmp_path):
    haproxy_or_skip()
    rnd = random.Random(1500 + seed)
    _verify(tmp_path, _rules(rnd), [_request(rnd) for _ in range(60)])


PORTS = textwrap.dedent("""\
    version: 1
    upstreams:
      a: http://127.0.0.1:9001
      b: http://127.0.0.1:9002
      c: http://127.0.0.1:9003
    routes:
      - name: r
        backends:
          - name: high
            when: {port: {gt: 7999.5, lt: 9000}}
            upstream: a
          - name: auth
            when: {authority: [reviews.example, "reviews.example:81", "[::1]:82"]}
            upstream: b
          - name: rest
            fallback: true
            upstream: c
    """)


@pytest.mark.slow
def test_port_and_authority_as_condroute_reads_them(tmp_path):
    haproxy_or_skip()
    reqs = [(u, {}, "GET", None) for u in (
        "http://x.example:8000/", "http://x.example:7999/", "http://x.example:8999/", "http://x.example:9000/",
        "http://reviews.example/", "http://reviews.example:80/", "http://REVIEWS.example:81/",
        "http://reviews.example:82/", "http://[::1]:82/", "http://[::1]/")]
    _verify(tmp_path, PORTS, reqs)


@pytest.mark.slow
@pytest.mark.parametrize("path", IMPORTED, ids=lambda p: os.path.relpath(p, ROOT))
def test_imported_httproutes_and_virtualservices_verify_on_haproxy(path):
    """Redirects, rewrites (segments, prefix, full, regex), host rewrites, weighted draws and the
    CEL the importers write for query parameters, against the importers' own cases."""
    haproxy_or_skip()
    r = verify_file("haproxy", path, path.replace(".rules.yaml", ".cases.yaml"), allow_partial=True)
    assert r.failed == 0, "\n".join(r.lines)
    assert all(": not exported to haproxy: mirror:" in x for x in r.refused), r.refused


def test_the_cel_importers_write_reads_first_values():
    acls = Acls()
    c = ir.Cel('hasQuery("animal") && getQuery("animal") == "whale" && getHeader("X-A") == "b" '
               '&& request.scheme == "http"', AT)
    seen = []
    d = cond_dnf(acls, c, lambda a: seen.append(a) or len(seen))
    assert [(a.source, a.name) for a in seen] == [("query_first", "animal")]      # in Lua: the first value
    assert any(k[0] == "req.fhdr(x-a,1)" for k in acls.by_key)
    assert len(d) >= 1
    with pytest.raises(ir.NotExported, match="cel: HAProxy has no CEL evaluator; only hasQuery"):
        cond_dnf(acls, ir.Cel("request.path.startsWith('/a')", AT))


@pytest.mark.slow
def test_a_split_by_a_jwt_claim_is_sticky_per_claim(tmp_path):
    haproxy_or_skip()
    rules = textwrap.dedent("""\
        version: 1
        upstreams:
          a: http://127.0.0.1:9001
          b: http://127.0.0.1:9002
        settings:
          jwt: {verify: {secret: SECRET}}
        routes:
          - name: r
            backends:
              - name: s
                split: {by: "jwt:org.id", weights: {a: 50, b: 50}}
        """).replace("SECRET", SECRET)
    toks = [pyjwt.encode(c, SECRET, algorithm="HS256") for c in
            ({"org": {"id": "o1"}}, {"org": {"id": "o2"}}, {"org": {"id": ["o3", "x"]}}, {"org": {"id": ""}}, {"x": 1})]
    reqs = [("http://s.example/", {"Authorization": f"Bearer {t}"}, "GET", None) for t in toks for _ in range(2)]
    reqs.append(("http://s.example/", {}, "GET", None))
    _verify(tmp_path, rules, reqs)
    e, _ = export_text(tmp_path, rules)
    assert 'local SPLITS = {"org.id"}' in e.files["condroute.lua"]
    assert "http-request set-var(txn.cr_key) var(txn.cr_split_1) if cr_be_1_0" in e.text
