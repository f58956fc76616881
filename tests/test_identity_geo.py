"""GeoIP: settings.geoip_db, geo conditions, the client address behind them (unit level). The
database is built by the tests (test_identity_support.build_geo_db)."""
from __future__ import annotations

import pytest

from condroute.engine import decide
from condroute.errors import RulesError
from condroute.conditions.geo import go_style
from condroute.request import RequestView
from condroute.rules import load_rules
from test_identity_support import CA_IP6, GB_IP, REPRESENTED_IP, SE_IP, UNKNOWN_IP, US_IP, build_geo_db


def write_rules(tmp_path, when: str, trusted: str = "[127.0.0.1/32]", db: str = "data/geo.mmdb",
                name: str = "rules.yaml"):
    (tmp_path / "data").mkdir(exist_ok=True)
    if not (tmp_path / "data" / "geo.mmdb").exists():
        build_geo_db(tmp_path / "data" / "geo.mmdb")
    p = tmp_path / name
    p.write_text(f"""version: 1
settings:
  trusted_proxies: {trusted}
  geoip_db: {db}
routes:
  - name: r
    backends:
      - name: geo
        when: {when}
        respond: {{status: 200}}
      - {{name: default, fallback: true, respond: {{status: 404}}}}
""")
    return p


def rules_for(tmp_path, when: str, **kw):
    return load_rules(str(write_rules(tmp_path, when, **kw)))


def go(rules, xff: str | None = None, peer: str = "127.0.0.1") -> tuple[str, str]:
    headers = [("X-Forwarded-For", xff)] if xff else []
    d = decide(rules, RequestView.from_url("http://shop.example/", headers=headers, peer=peer))
    return d.backend, next((a.reason for a in d.attempts if a.backend == "geo" and not a.held), "")


def test_country_condition(tmp_path):
    rules = rules_for(tmp_path, "{geo: {country: [US, gb]}}")
    assert go(rules, US_IP) == ("geo", "")
    assert go(rules, GB_IP) == ("geo", "")
    assert go(rules, SE_IP) == ("default", "geo country is 'SE', wanted GB, US")
    assert go(rules, CA_IP6) == ("default", "geo country is 'CA', wanted GB, US")


def test_eu_and_continent(tmp_path):
    eu = rules_for(tmp_path, "{geo: {eu: true}}", name="eu.yaml")
    assert go(eu, SE_IP)[0] == "geo"
    assert go(eu, GB_IP) == ("default", "geo country GB is outside the EU, wanted in")
    non_eu = rules_for(tmp_path, "{geo: {eu: false}}", name="noneu.yaml")
    assert go(non_eu, GB_IP)[0] == "geo"
    assert go(non_eu, SE_IP) == ("default", "geo country SE is in the EU, wanted outside")
    both = rules_for(tmp_path, "{geo: {country: [SE, GB], eu: true, continent: EU}}", name="both.yaml")
    assert go(both, SE_IP)[0] == "geo"
    assert go(both, GB_IP)[0] == "default"
    assert go(both, US_IP) == ("default", "geo country is 'US', wanted GB, SE")
    na = rules_for(tmp_path, "{geo: {continent: [NA]}}", name="na.yaml")
    assert go(na, US_IP)[0] == "geo"
    assert go(na, SE_IP) == ("default", "geo continent is 'EU', wanted NA")


def test_an_address_not_in_the_database_is_a_skip_with_a_reason(tmp_path):
    rules = rules_for(tmp_path, "{geo: {country: [US]}}")
    assert go(rules, UNKNOWN_IP) == ("default", f"geo: client IP {UNKNOWN_IP} is not in the GeoIP database")
    assert go(rules) == ("default", "geo: client IP 127.0.0.1 is not in the GeoIP database")
    assert go(rules, peer="") == ("default", "geo: the client IP is unknown")


def test_x_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path):
    trusted = rules_for(tmp_path, "{geo: {country: [SE]}}", name="t.yaml")
    untrusted = rules_for(tmp_path, "{geo: {country: [SE]}}", trusted="[10.0.0.0/8]", name="u.yaml")
    assert go(trusted, SE_IP)[0] == "geo"
    assert go(untrusted, SE_IP) == ("default", "geo: client IP 127.0.0.1 is not in the GeoIP database")
    assert go(untrusted, SE_IP, peer="10.9.9.9")[0] == "geo"
    # a chain: the right-most untrusted hop is the client
    assert go(trusted, f"{US_IP}, {SE_IP}, 127.0.0.1")[0] == "geo"
    assert go(trusted, f"{SE_IP}, {US_IP}")[0] == "default"


def test_the_path_is_relative_to_the_rules_file_not_the_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    p = write_rules(sub, "{geo: {country: [SE]}}")
    monkeypatch.chdir(tmp_path)
    rules = load_rules("conf/rules.yaml")
    assert rules.settings.geoip.path == str(sub / "data" / "geo.mmdb")
    assert p.exists()


def load_error(tmp_path, db: str, when: str = "{geo: {country: [SE]}}") -> str:
    p = write_rules(tmp_path, when, db=db)
    with pytest.raises(RulesError) as ei:
        load_rules(str(p))
    (problem,) = ei.value.problems
    return str(problem).split("rules.yaml:", 1)[1]


def test_a_missing_file_is_a_located_load_error(tmp_path):
    assert load_error(tmp_path, "nope.mmdb") == f"4:13: settings.geoip_db: no such file: {tmp_path / 'nope.mmdb'}"


def test_a_file_that_is_not_a_database_is_a_load_error(tmp_path):
    (tmp_path / "junk.mmdb").write_bytes(b"\x00not a maxmind database\x00" * 50)
    assert load_error(tmp_path, "junk.mmdb").startswith("4:13: settings.geoip_db: ")
    assert "not a MaxMind DB file, or a damaged one" in load_error(tmp_path, "junk.mmdb")


def test_a_damaged_database_is_a_load_error(tmp_path):
    good = build_geo_db(tmp_path / "good.mmdb").read_bytes()
    # keep the metadata at the end, scribble over the search tree at the start
    (tmp_path / "bad.mmdb").write_bytes(b"\xff" * 600 + good[600:])
    msg = load_error(tmp_path, "bad.mmdb")
    assert msg.startswith("4:13: settings.geoip_db: ") and "damaged" in msg
    (tmp_path / "cut.mmdb").write_bytes(good[: len(good) // 3])
    assert "4:13: settings.geoip_db: " in load_error(tmp_path, "cut.mmdb")


def test_a_directory_is_a_load_error(tmp_path):
    (tmp_path / "dir.mmdb").mkdir()
    assert "is a directory" in load_error(tmp_path, "dir.mmdb")


@pytest.mark.parametrize("when, expected", [
    ("{geo: {country: USA}}", "9:31: geo country: expected a 2-letter code such as US, GB, DE, not a string ('USA')"),
    ("{geo: {eu: 'yes'}}", "9:26: geo eu must be true or false, not a string ('yes')"),
    ("{geo: {city: Paris}}", "9:22: unknown key 'city' in geo; expected one of: continent, country, eu"),
    ("{geo: {}}", "9:21: geo: name at least one of country, eu, continent"),
    ("{geo: {country: []}}", "9:31: geo country: an empty list"),
])
def test_bad_geo_conditions_are_located(tmp_path, when, expected):
    p = write_rules(tmp_path, when)
    with pytest.raises(RulesError) as ei:
        load_rules(str(p))
    assert [str(x).split("rules.yaml:", 1)[1] for x in ei.value.problems] == [expected]


def test_geo_condition_without_a_database(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text("""version: 1
routes:
  - name: r
    backends:
      - {name: g, when: {geo: {country: [SE]}}, respond: {status: 200}}
""")
    with pytest.raises(RulesError) as ei:
        load_rules(str(p))
    assert [str(x).split("rules.yaml:", 1)[1] for x in ei.value.problems] == [
        "5:31: geo conditions need a GeoIP database: set settings.geoip_db to a MaxMind DB file"]


def test_lookups_are_cached_per_address(tmp_path):
    rules = rules_for(tmp_path, "{geo: {country: [SE]}}")
    db = rules.settings.geoip
    calls = []
    real = db.reader.get
    db.reader = type("R", (), {"get": lambda self, ip: calls.append(ip) or real(ip)})()
    for _ in range(20):
        assert go(rules, SE_IP)[0] == "geo"
        assert go(rules, UNKNOWN_IP)[0] == "default"
    assert len(calls) == 2


def test_go_style_record_has_zero_values_for_what_is_absent():
    rec = go_style({"country": {"iso_code": "SE", "is_in_european_union": True, "names": {"en": "Sweden"},
                                "geoname_id": 2661886}})
    assert rec["Country"] == {"GeoNameID": 2661886, "IsInEuropeanUnion": True, "IsoCode": "SE",
                              "Names": {"en": "Sweden"}}
    assert rec["RepresentedCountry"] == {"GeoNameID": 0, "IsInEuropeanUnion": False, "IsoCode": "", "Names": {},
                                         "Type": ""}
    assert rec["City"] == {"GeoNameID": 0, "Names": {}}
    assert rec["Subdivisions"] == [] and rec["Traits"]["IsAnonymousProxy"] is False
    assert rec["Location"]["Latitude"] == 0.0


def test_represented_country_is_read_as_maxmind_writes_it(tmp_path):
    rules = rules_for(tmp_path, "{geo: {country: [DE], eu: true}}")
    assert go(rules, REPRESENTED_IP)[0] == "geo"
    rec, why = rules.settings.geoip.cel_record(__import__("ipaddress").ip_address(REPRESENTED_IP))
    assert why is None
    assert rec["RepresentedCountry"]["IsoCode"] == "IT" and rec["RepresentedCountry"]["Type"] == "military"
    assert rec["represented_country"]["is_in_european_union"] is True
    assert rec["registered_country"]["is_in_european_union"] is False      # filled in: MaxMind omits false
