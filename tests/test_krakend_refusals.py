"""KrakenD import (issue 14 §3): what it refuses, skips or does not apply, each located where it is
written; martian → set/remove headers; auth/validator (401/403, keys, propagated claims as
krakend-jose formats them); a verified-token memo per key set."""
from __future__ import annotations

import base64
import json
import textwrap
from pathlib import Path

import jwt
import pytest

from condroute.conditions import jwtauth
from condroute.conditions.jwtvalidator import go_value, header_values
from condroute.engine import decide
from condroute.errors import RulesError
from condroute.model import ClaimHeader
from condroute.request import RequestView
from condroute.rules import load_rules, load_rules_text

REAL = Path(__file__).resolve().parent / "fixtures" / "krakend" / "real"
SYM = json.loads((REAL / "keys" / "symmetric.jwks.json").read_text())
HS_KEY = base64.urlsafe_b64decode(SYM["keys"][1]["k"] + "==")
A = "http://127.0.0.1:9001"


def text_of(cfg: dict) -> str:
    return json.dumps(cfg, indent=2)


def at(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """(line, column) of the nth occurrence of ``needle`` in ``text``."""
    i = -1
    for _ in range(nth + 1):
        i = text.index(needle, i + 1)
    line = text.count("\n", 0, i) + 1
    return line, i - (text.rfind("\n", 0, i) + 1) + 1


def warnings_at(rules) -> list[tuple[int, int, str]]:
    return sorted((w.line, w.col, w.message) for w in rules.warnings)


def one(cfg: dict, *eps: dict) -> dict:
    return {"version": 3, "host": [A], "endpoints": list(eps), **cfg}


def req(url: str, method: str = "GET", headers=(), jwt_token: str | None = None) -> RequestView:
    return RequestView.from_url(url, method=method, headers=list(headers), jwt_token=jwt_token)


def hs(claims: dict, kid: str | None = "hs1") -> str:
    return jwt.encode({"exp": 4102444800, **claims}, HS_KEY, "HS256", headers={"kid": kid} if kid else None)


# -- endpoints condroute cannot serve ------------------------------------------------------------------
@pytest.mark.parametrize("where, value, says", [
    ("url_pattern", "/x/{input_headers.X-Route}", "takes the request header X-Route (dynamic routing)"),
    ("url_pattern", "/x/{input_query_strings.route}", "takes the query string route (dynamic routing)"),
    ("url_pattern", "/x/{resp0_id}", "takes a value from backend-1's response (sequential proxy), which condroute "
                                     "cannot know before it routes"),
    ("url_pattern", "/x/{JWT.sub}", "takes the token's claim sub (dynamic routing)"),
    ("url_pattern", "/x/{{.JWT.sub}}", "takes the token's claim sub (dynamic routing)"),
    ("host", "http://{input_headers.X-Tenant}.svc:80", "takes the request header X-Tenant (dynamic routing)"),
])
def test_dynamic_routing_skips_the_endpoint_located_and_answers_502(where, value, says):
    b = {"url_pattern": "/ok", where: [value] if where == "host" else value}
    t = text_of(one({}, {"endpoint": "/ok", "backend": [{"url_pattern": "/fine"}]},
                    {"endpoint": "/dyn", "backend": [b]}))
    r = load_rules_text(t, "k.json")
    line, col = at(t, json.dumps(value))
    assert warnings_at(r) == [(line, col, f"endpoint GET /dyn: skipped: backend-1's {where} {value!r} {says}")]
    assert [x.name for x in r.routes] == ["GET /ok", "GET /dyn"]        # the rest loads
    d = decide(r, req("http://gw/dyn"))
    assert (d.route, d.backend, d.outcome, d.status) == ("GET /dyn", "skipped", "respond", 502)
    assert "condroute skipped the KrakenD endpoint GET /dyn" in d.respond.body
    assert decide(r, req("http://gw/ok")).url == A + "/fine"


@pytest.mark.parametrize("policy", ["req_params.Resp0_label == 'BENIGN'", "req_params['resp1_x'] == 'y'"])
def test_a_policy_on_a_sequential_proxy_value_can_never_hold(policy):
    t = text_of(one({}, {"endpoint": "/g", "input_headers": ["Resp0_label"], "backend": [
        {"url_pattern": "/a", "extra_config": {"backend/conditional": {"strategy": "policy", "value": policy}}},
        {"url_pattern": "/b", "extra_config": {"backend/conditional": {"strategy": "fallback"}}}]}))
    r = load_rules_text(t, "k.json")
    key = policy.split("'")[1] if "[" in policy.split("==")[0] else "Resp0_label"
    n = int(key[4])
    line, col = at(t, json.dumps(policy))
    assert warnings_at(r) == [(line, col, f"endpoint GET /g: backend-1: the policy reads req_params.{key}, a value "
                                          f"KrakenD takes from backend-{n + 1}'s response (sequential proxy); "
                                          "condroute routes before any backend answers, so this conditional can "
                                          "never hold")]
    d = decide(r, req("http://gw/g?Resp0_label=BENIGN&resp1_x=y", headers=[("Resp0_label", "BENIGN")]),
               explain=True)
    assert d.backend == "backend-2"
    assert "can never hold" in d.trail[0][2]


# -- a piece of a configuration ---------------------------------------------------------------------
@pytest.mark.parametrize("doc, says", [
    ({"endpoint": "/x", "backend": [{"url_pattern": "/a"}]}, 'this is a KrakenD endpoint, not a whole configuration: '
                                                              'wrap it in {"version": 3, "endpoints": [...]}'),
    ([{"endpoint": "/x", "backend": [{"url_pattern": "/a"}]}], 'this is a KrakenD endpoint, not a whole '
                                                               'configuration: wrap it in {"version": 3, '
                                                               '"endpoints": [...]}'),
    ({"url_pattern": "/a", "host": [A]}, 'this is a KrakenD backend, not a whole configuration: wrap it in '
                                         '{"version": 3, "endpoints": [{"endpoint": "/...", "backend": [...]}]}'),
    ([{"url_pattern": "/a", "host": [A]}], 'this is a KrakenD backend, not a whole configuration: wrap it in '
                                           '{"version": 3, "endpoints": [{"endpoint": "/...", "backend": [...]}]}'),
])
def test_a_bare_endpoint_or_backend_says_wrap_it(doc, says):
    with pytest.raises(RulesError) as e:
        load_rules_text(json.dumps(doc, indent=2), "frag.json")
    assert [str(p) for p in e.value.problems] == [f"frag.json:1:1: {says}"]


def test_a_condroute_file_keeps_its_own_messages():
    with pytest.raises(RulesError) as e:
        load_rules_text("version: 1\nroutes: 3\n", "r.yaml")
    assert "KrakenD" not in str(e.value.problems[0])


# -- the GeoIP database, in KrakenD's terms -----------------------------------------------------------
def _geo(policy: str) -> str:
    return text_of(one({"extra_config": {"plugin/http-server": {"name": ["geoip"],
                                                                "geoip": {"citydb_path": "geo/City.mmdb"}}}},
                       {"endpoint": "/g", "backend": [
                           {"url_pattern": "/a", "extra_config": {"backend/conditional": {"strategy": "policy",
                                                                                          "value": policy}}},
                           {"url_pattern": "/b", "extra_config": {"backend/conditional":
                                                                  {"strategy": "fallback"}}}]}))


def test_a_missing_geoip_database_is_a_warning_when_no_policy_calls_geoip(tmp_path):
    t = _geo("hasHeader('X-A')")
    f = tmp_path / "k.json"
    f.write_text(t)
    r = load_rules(str(f))
    line, col = at(t, '"geo/City.mmdb"')
    assert (line, col, f"the geoip plugin's citydb_path geo/City.mmdb: no such file ({tmp_path}/geo/City.mmdb); "
                       "condroute needs it only for geoIP() in conditional policies, and none calls it") \
        in warnings_at(r)


def test_a_missing_geoip_database_is_an_error_when_a_policy_calls_geoip(tmp_path):
    t = _geo("geoIP().country.iso_code == 'NO'")
    f = tmp_path / "k.json"
    f.write_text(t)
    with pytest.raises(RulesError) as e:
        load_rules(str(f))
    line, col = at(t, '"geo/City.mmdb"')
    pline, _ = at(t, "geoIP()")
    assert [str(p) for p in e.value.problems] == [
        f"{f}:{line}:{col}: the geoip plugin's citydb_path geo/City.mmdb: no such file ({tmp_path}/geo/City.mmdb): "
        "the MaxMind GeoLite2/GeoIP2 City database KrakenD's geoip plugin reads; condroute needs it for geoIP() "
        f"in the policy at line {pline}"]


# -- namespaces that are not applied ------------------------------------------------------------------
def test_namespaces_that_change_behaviour_are_named_once_where_they_are():
    t = text_of(one({"extra_config": {"security/cors": {}, "telemetry/logging": {},
                                      "plugin/http-server": {"name": ["url-rewrite"]}}},
                    {"endpoint": "/e", "extra_config": {"auth/api-keys": {}, "modifier/jmespath": {},
                                                        "proxy": {"static": {"data": {}}}},
                     "backend": [{"url_pattern": "/a", "extra_config": {"qos/http-cache": {}, "backend/grpc": {},
                                                                        "something/new": {}}}]}))
    r = load_rules_text(t, "k.json")
    got = warnings_at(r)
    assert (*at(t, '"auth/api-keys"'), "endpoint GET /e: not applied by condroute: auth/api-keys (KrakenD refuses a "
                                       "request without a valid API key); proxy.static (KrakenD answers with its "
                                       "static data)") in got
    assert (*at(t, '"qos/http-cache"'), "endpoint GET /e: backend-1: not applied by condroute: qos/http-cache "
                                        "(KrakenD answers from its cache); backend/grpc (KrakenD speaks gRPC to this "
                                        "host); something/new") in got
    assert (*at(t, '"security/cors"'), "the service's extra_config: not applied by condroute: security/cors "
                                       "(KrakenD answers CORS preflights itself)") in got
    assert (*at(t, '"plugin/http-server"'), "server plugins not applied by condroute: url-rewrite (KrakenD "
                                            "rewrites the request path before it routes)") in got
    assert len(got) == 4          # telemetry and jmespath shape or observe: nothing to say


# -- martian -----------------------------------------------------------------------------------------
def _martian(m: dict) -> tuple:
    t = text_of(one({}, {"endpoint": "/m", "backend": [{"url_pattern": "/a", "extra_config":
                                                         {"modifier/martian": m}}]}))
    r = load_rules_text(t, "k.json")
    b = r.routes[0].backends[0]
    return t, b.set_headers, b.remove_headers, warnings_at(r)


def test_martian_fifo_group_runs_in_order():
    t, sets, removes, w = _martian({"fifo.Group": {"scope": ["request"], "modifiers": [
        {"header.Modifier": {"scope": ["request"], "name": "X-Stage", "value": "one"}},
        {"header.Modifier": {"name": "X-Gone", "value": "soon"}},
        {"header.Blacklist": {"scope": ["request"], "names": ["X-Gone", "X-Forwarded-For"]}},
        {"header.Modifier": {"scope": ["request"], "name": "X-Stage", "value": "two"}}]}})
    assert (sets, removes) == ((("X-Stage", "two"),), ("X-Gone", "X-Forwarded-For"))
    # the second modifier has no scope: request and response; the response half is said, located
    line, col = at(t, '"header.Modifier"', 1)
    assert w == [(line, col, "endpoint GET /m: backend-1: modifier/martian: header.Modifier's response scope is not "
                             "applied: condroute does not change responses")]
    d = decide(load_rules_text(t, "k.json"), req("http://gw/m"))
    assert (d.set_headers, d.remove_headers) == (sets, removes)


@pytest.mark.parametrize("m, key, says", [
    ({"header.Modifier": {"scope": ["request"], "name": "X-A", "value": "1"},
      "header.Blacklist": {"scope": ["request"], "names": ["X-B"]}}, None,
     "KrakenD ignores this modifier/martian: it must hold exactly one modifier (use fifo.Group for several), not 2; "
     "condroute applies none of it"),
    ({"header.Append": {"scope": ["request"], "name": "X-A", "value": "1"}}, "header.Append",
     "header.Append is not applied: the value it gives depends on the request"),
    ({"header.Copy": {"scope": ["request"], "from": "A", "to": "B"}}, "header.Copy",
     "header.Copy is not applied: the value it gives depends on the request"),
    ({"header.Id": {"scope": ["request"]}}, "header.Id",
     "header.Id is not applied: the value it gives depends on the request"),
    ({"header.Filter": {"scope": ["request"], "name": "X-T", "value": "v1",
                        "modifier": {"header.Modifier": {"name": "X-A", "value": "1"}}}}, "header.Filter",
     "header.Filter is a conditional modifier: not applied"),
    ({"cookie.Modifier": {"scope": ["request"], "name": "c", "value": "1"}}, "cookie.Modifier",
     "cookie.Modifier is not applied: condroute applies header.Modifier, header.Blacklist and fifo.Group of them"),
    ({"header.Modifier": {"scope": ["request"], "name": "Content-Length", "value": "5"}}, "header.Modifier",
     "header.Modifier on Content-Length is not applied: Content-Length frames the request"),
])
def test_martian_what_is_not_applied_is_located(m, key, says):
    t, sets, removes, w = _martian(m)
    assert (sets, removes) == ((), ())
    if key is None:                # at the modifier/martian mapping itself
        line, col = at(t, '"modifier/martian": {')
        col += len('"modifier/martian": ')
    else:                          # at the modifier's key
        line, col = at(t, f'"{key}"')
    assert len(w) == 1 and (w[0][0], w[0][1]) == (line, col)
    assert w[0][2].startswith("endpoint GET /m: backend-1: modifier/martian: " + says)


# -- auth/validator -----------------------------------------------------------------------------------
def _validated(validator: dict, policy: str = "req_headers['X-Tier'][0] == 'gold'",
               input_headers=("X-Tier",)) -> dict:
    return one({}, {"endpoint": "/v", "input_headers": list(input_headers),
                    "extra_config": {"auth/validator": validator},
                    "backend": [{"url_pattern": "/gold", "extra_config": {"backend/conditional": {
                        "strategy": "policy", "value": policy}}},
                                {"url_pattern": "/other", "extra_config": {"backend/conditional": {
                                    "strategy": "fallback"}}}]})


def _write(tmp_path: Path, cfg: dict, name: str = "k.json") -> tuple[Path, str]:
    t = text_of(cfg)
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / "sym.json").write_text(json.dumps(SYM))
    f = tmp_path / name
    f.write_text(t)
    return f, t


def test_jwk_url_without_keys_skips_an_endpoint_whose_conditional_reads_a_propagated_header(tmp_path):
    f, t = _write(tmp_path, _validated({"alg": "HS256", "jwk_url": "http://idp/certs",
                                        "propagate_claims": [["tier", "X-Tier"]]}))
    r = load_rules(str(f))
    assert warnings_at(r) == [
        (*at(t, '"http://idp/certs"'), "endpoint GET /v: auth/validator: not enforced: jwk_url http://idp/certs "
                                       "cannot be fetched offline; import this file from a condroute file whose "
                                       "settings.jwt.verify.jwks_file holds that key set (or verify: false to only "
                                       "decode tokens)"),
        (*at(t, '"req_headers['), "endpoint GET /v: skipped: its backend/conditional reads X-Tier, which "
                                     "KrakenD sets from the verified token (auth/validator propagate_claims), "
                                     "and the validator's keys are not available (see its warning)")]
    d = decide(r, req("http://gw/v", headers=[("X-Tier", "gold")]))
    assert (d.backend, d.status) == ("skipped", 502)


def test_an_endpoint_that_only_authenticates_loads_without_keys_and_never_forwards_the_clients_claim_header(
        tmp_path):
    cfg = one({}, {"endpoint": "/q", "input_headers": ["X-Tier"],
                   "extra_config": {"auth/validator": {"alg": "HS256", "jwk_local_path": "/opt/krakend/none.json",
                                                       "propagate_claims": [["tier", "X-Tier"]]}},
                   "backend": [{"url_pattern": "/a"}]})
    f, t = _write(tmp_path, cfg)
    r = load_rules(str(f))
    assert warnings_at(r) == [(*at(t, '"/opt/krakend/none.json"'),
                               "endpoint GET /q: auth/validator: not enforced: jwk_local_path /opt/krakend/none.json "
                               "does not exist (/opt/krakend/none.json); import this file from a condroute file "
                               "whose settings.jwt.verify.jwks_file holds that key set (or verify: false to only "
                               "decode tokens)")]
    d = decide(r, req("http://gw/q", headers=[("X-Tier", "gold")]))
    assert (d.backend, d.remove_headers) == ("backend-1", ("X-Tier",))


def test_local_keys_enforce_401_and_403_and_claims_route(tmp_path):
    f, t = _write(tmp_path, _validated({"alg": "HS256", "jwk_local_path": "keys/sym.json", "roles": ["user"],
                                        "propagate_claims": [["tier", "X-Tier"]]}))
    r = load_rules(str(f))
    assert warnings_at(r) == []
    names = [b.name for b in r.routes[0].backends]
    assert names == ["auth/validator", "auth/validator-roles", "backend-1", "backend-2"]

    def go(**kw):
        d = decide(r, req("http://gw/v", **kw), explain=True)
        return d.backend, d.status

    gold = hs({"roles": ["user"], "tier": "gold"})
    assert go(jwt_token=gold) == ("backend-1", None)
    assert go(jwt_token=hs({"roles": ["user"], "tier": "iron"}), headers=[("X-Tier", "gold")]) == ("backend-2", None)
    assert go(headers=[("X-Tier", "gold")]) == ("auth/validator", 401)
    assert go(jwt_token=hs({"roles": ["guest"], "tier": "gold"})) == ("auth/validator-roles", 403)
    assert go(jwt_token=hs({"roles": ["user"], "tier": "gold"}, kid=None)) == ("auth/validator", 401)
    assert go(headers=[("Authorization", gold)]) == ("backend-1", None)          # a bare token is accepted
    assert go(headers=[("Cookie", f"access_token={gold}")]) == ("backend-1", None)
    assert go(headers=[("Authorization", f"Basic {gold}")]) == ("auth/validator", 401)
    d = decide(r, req("http://gw/v", headers=[("X-Tier", "gold")]), explain=True)
    assert "KrakenD answers 401" in d.trail[0][2]
    d = decide(r, req("http://gw/v", jwt_token=hs({"roles": ["user"], "tier": "iron"})), explain=True)
    assert d.backend == "backend-2" and "iron" not in " ".join(x[2] for x in d.trail)   # claim values: never shown


def test_a_key_set_without_a_key_for_the_algorithm_says_so(tmp_path):
    f, t = _write(tmp_path, _validated({"alg": "RS256", "jwk_local_path": "keys/sym.json",
                                        "propagate_claims": [["tier", "X-Tier"]]}))
    r = load_rules(str(f))
    assert (*at(t, '"keys/sym.json"'), f"endpoint GET /v: auth/validator: not enforced: the key set "
                                       f"{tmp_path}/keys/sym.json has no key for RS256") in warnings_at(r)


def test_a_bad_local_key_set_is_an_error_located_in_the_krakend_file_also_when_imported(tmp_path):
    f, t = _write(tmp_path, _validated({"alg": "HS256", "jwk_local_path": "keys/bad.json",
                                        "propagate_claims": [["tier", "X-Tier"]]}))
    (tmp_path / "keys" / "bad.json").write_text("{not json")
    w = tmp_path / "w.yaml"
    w.write_text("version: 1\nimports: [k.json]\nroutes: []\n")
    for path in (f, w):
        with pytest.raises(RulesError) as e:
            load_rules(str(path))
        line, col = at(t, '"keys/bad.json"')
        assert [str(p) for p in e.value.problems] == [
            f"{f}:{line}:{col}: endpoint GET /v: auth/validator jwk_local_path: {tmp_path}/keys/bad.json is not "
            "valid JSON: Expecting property name enclosed in double quotes"]


def test_verify_false_in_the_importing_file_decodes_with_a_warning(tmp_path):
    f, t = _write(tmp_path, _validated({"alg": "HS256", "jwk_url": "http://idp/certs",
                                        "propagate_claims": [["tier", "X-Tier"]]}))
    w = tmp_path / "w.yaml"
    w.write_text("version: 1\nsettings: {on_no_match: error, jwt: {verify: false}}\nimports: [k.json]\nroutes: []\n")
    r = load_rules(str(w))
    assert (str(f), *at(t, '"http://idp/certs"'), f"endpoint GET /v: auth/validator: tokens are only decoded, not "
                                                  f"verified (settings.jwt.verify: false in {w}): anyone can forge "
                                                  f"the claims it propagates") in \
        [(x.file, x.line, x.col, x.message) for x in r.warnings]
    unsigned = jwt.encode({"tier": "gold"}, "x" * 32, "HS256")
    assert decide(r, req("http://gw/v", jwt_token=unsigned)).backend == "backend-1"
    assert decide(r, req("http://gw/v", headers=[("X-Tier", "gold")])).status == 401


def test_two_validators_never_share_a_verified_token(tmp_path):
    """The same request tried against two endpoints' checks with different keys: the second does
    not reuse what the first verified."""
    other = {"keys": [{"kty": "oct", "alg": "HS256", "kid": "hs1", "k": base64.urlsafe_b64encode(b"o" * 64)
                       .decode().rstrip("=")}]}
    f, t = _write(tmp_path, one({}, *[
        {"endpoint": p, "input_headers": ["X-Tier"],
         "extra_config": {"auth/validator": {"alg": "HS256", "jwk_local_path": k,
                                             "propagate_claims": [["tier", "X-Tier"]]}},
         "backend": [{"url_pattern": "/gold", "extra_config": {"backend/conditional": {
             "strategy": "policy", "value": "req_headers['X-Tier'][0] == 'gold'"}}},
                     {"url_pattern": "/other", "extra_config": {"backend/conditional": {"strategy": "fallback"}}}]}
        for p, k in (("/one", "keys/sym.json"), ("/two", "keys/other.json"))]))
    (tmp_path / "keys" / "other.json").write_text(json.dumps(other))
    r = load_rules(str(f))
    rq = req("http://gw/one", jwt_token=hs({"tier": "gold"}))
    one_route, two_route = r.routes
    assert one_route.backends[1].when.fail(rq, r) is None          # held with sym.json's key
    assert two_route.backends[0].when.fail(rq, r) is None          # two's check rejects the same token: 401
    assert two_route.backends[1].when.fail(rq, r) is not None      # and its conditional never sees X-Tier


def test_the_settings_jwt_memo_is_per_settings(tmp_path):
    secret_a, secret_b = "a" * 32, "b" * 32
    ra = load_rules_text(textwrap.dedent(f"""\
        version: 1
        settings: {{jwt: {{verify: {{secret: "{secret_a}"}}}}}}
        routes: [{{name: r, match: {{path: /}}, backends: [{{name: b, upstream: "{A}"}}]}}]
        """))
    rb = load_rules_text(ra.file and textwrap.dedent(f"""\
        version: 1
        settings: {{jwt: {{verify: {{secret: "{secret_b}"}}}}}}
        routes: [{{name: r, match: {{path: /}}, backends: [{{name: b, upstream: "{A}"}}]}}]
        """))
    rq = req("http://gw/", jwt_token=jwt.encode({"x": 1}, secret_a, "HS256"))
    assert jwtauth.token_state(rq, ra).error is None
    assert jwtauth.token_state(rq, rb).error == "bad signature"


# -- how krakend-jose writes a claim into a header ---------------------------------------------------
@pytest.mark.parametrize("value, header", [
    ("moderator", "moderator"), (["reader", "moderator"], "reader,moderator"), (3, "3"), (3.0, "3"),
    (1.5, "1.500000"), (True, "true"), ({"b": 1, "a": [1, 2]}, '{"a":[1,2],"b":1}'), (None, "null"),
    ([1, 2.5, True], "1,2.5,true"),
])
def test_claim_values_are_formatted_as_krakend_does(value, header):
    assert go_value(value) == header


def test_claim_paths_missing_claims_and_preserved_arrays():
    claims = {"realm_access": {"roles": ["a", "b"]}, "https://x.test/tier": "gold", "flat.name": "kept",
              "https://x.test/obj": {"n": 1}}
    assert header_values(claims, ClaimHeader("X-R", "realm_access.roles")) == ["a,b"]
    assert header_values(claims, ClaimHeader("X-R", "realm_access.roles", preserve_array=True)) == ["a", "b"]
    assert header_values(claims, ClaimHeader("X-T", "https://x.test/tier")) == ["gold"]     # not split on "."
    assert header_values(claims, ClaimHeader("X-F", "flat.name")) == [""]      # nested lookup: missing → ""
    assert header_values(claims, ClaimHeader("X-M", "nope")) == [""]
    assert header_values(claims, ClaimHeader("X-M", "realm_access.roles.0")) == [""]


def test_geoip_without_the_geoip_plugin_is_an_error_in_krakends_terms():
    t = text_of(one({}, {"endpoint": "/g", "backend": [
        {"url_pattern": "/a", "extra_config": {"backend/conditional": {
            "strategy": "policy", "value": "geoIP().country.iso_code == 'NO'"}}}]}))
    with pytest.raises(RulesError) as e:
        load_rules_text(t, "k.json")
    line, col = at(t, '"geoIP()')
    assert [str(p) for p in e.value.problems] == [
        f"k.json:{line}:{col}: this policy calls geoIP(), which needs KrakenD's geoip server plugin: add "
        'extra_config."plugin/http-server" with name ["geoip"] and geoip.citydb_path (a MaxMind City database)']


def test_a_malformed_validator_is_a_located_error_and_other_key_strategies_a_warning(tmp_path):
    bad = _validated({"alg": "HS256", "jwk_local_path": "keys/sym.json", "propagate_claims": [["tier"]]})
    f, t = _write(tmp_path, bad)
    with pytest.raises(RulesError) as e:
        load_rules(str(f))
    line, _ = at(t, '"tier"')           # the pair is located at its own list, the line before
    assert [(p.line, p.message) for p in e.value.problems] == [
        (line - 1, "endpoint GET /v: auth/validator: each propagate_claims entry must be a [claim, header] pair "
                   "of names")]
    f, t = _write(tmp_path, _validated({"alg": "HS256", "jwk_local_path": "keys/sym.json",
                                        "key_identify_strategy": "x5t", "propagate_claims": [["tier", "X-Tier"]]}))
    r = load_rules(str(f))
    assert (*at(t, '"x5t"'), "endpoint GET /v: auth/validator: key_identify_strategy 'x5t': condroute finds the "
                             "key by kid when the token has one, else tries every key") in warnings_at(r)
    assert decide(r, req("http://gw/v", jwt_token=hs({"tier": "gold"}, kid=None))).backend == "backend-1"
