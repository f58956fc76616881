"""enabled: false and run-time switches (issue 16, item 3).

The engine and the compiler: a route or backend the file turns off is compiled off with its
reason, for every consumer (the addon, `condroute check`, `condroute explain`, lint); run-time
switches (compile.switches) turn it on or others off. The commands (condroute.enable, .disable,
.switches, .switches.reset) in mitmproxy's harness, across reloads; the status page's state and
POST /api/switch with its cross-site protections. Through a real mitmdump: test_switch_e2e.py; in
a browser: test_switch_browser.py.
"""
from __future__ import annotations

import json
import textwrap

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from condroute import render
from condroute.cli.lint import lint
from condroute.cli.main import main
from condroute.compile.switches import file_off_reason, state, switched
from condroute.engine import decide
from condroute.explain import build_request
from condroute.mitm.addon import ConditionalRouting
from condroute.rules import load_rules_text
from test_addon import make_flow, settle

RULES = """
    version: 1
    upstreams: {a: "http://127.0.0.1:9001", b: "http://127.0.0.1:9002", c: "http://127.0.0.1:9003"}
    routes:
      - name: legacy
        enabled: false
        match: {path: /api/*}
        backends:
          - {name: old, upstream: c}
      - name: shop
        backends:
          - name: beta
            enabled: false
            when: {header: {X-Beta: "1"}}
            upstream: b
          - {name: main, when: {header: {X-Main: "1"}}, upstream: a}
          - {name: default, fallback: true, upstream: a}
    """


def rules(text: str = RULES, name: str = "rules.yaml"):
    return load_rules_text(textwrap.dedent(text), name)


def req(url: str = "http://shop.example/x", **headers: str):
    return build_request(url, headers=[(k.replace("_", "-"), v) for k, v in headers.items()])


def names(d) -> list[tuple[str, bool, str]]:
    return [(b, held, why) for b, held, why, _ in d.trail]


# -- the engine, compiled from the file --------------------------------------------------------------
def test_a_backend_off_in_the_file_is_skipped_with_its_place():
    d = decide(rules(), req(X_Beta="1"))
    assert (d.route, d.backend, d.upstream) == ("shop", "default", "a")
    assert names(d)[0] == ("beta", False, "enabled: false (rules.yaml:12)")
    assert "skipped beta: enabled: false (rules.yaml:12)" in render.skipped_lines(d)


def test_a_route_off_in_the_file_lets_the_request_go_on_to_the_next_route():
    r = rules()
    d = decide(r, req("http://shop.example/api/1"))
    assert d.route == "shop" and d.backend == "default"
    d = decide(r, req("http://shop.example/api/1"), explain=True)
    assert d.routes_passed == [("legacy", "enabled: false (rules.yaml:5)")]
    # left out of the index (nothing per request for it), kept in the routes (explain, the status page)
    assert [x.name for x in r.index.candidates("/api/1", "shop.example")] == ["shop"]
    assert [x.name for x in r.routes] == ["legacy", "shop"]


def test_an_off_fallback_is_not_tried_and_explain_says_why():
    r = rules(RULES.replace("{name: default, fallback: true, upstream: a}",
                            "{name: default, fallback: true, enabled: false, upstream: a}"))
    d = decide(r, req())
    assert d.outcome == "no_match" and d.backend is None
    assert [b for b, *_ in d.trail] == ["beta", "main"]
    lines = render.render_decision(r, d, req())
    assert any("default" in line and "not tried: enabled: false (rules.yaml:17)" in line for line in lines), lines


def test_on_no_match_error_with_every_backend_off_answers_502_with_the_reasons():
    r = rules("""
        version: 1
        settings: {on_no_match: error}
        routes:
          - name: r
            backends:
              - {name: x, enabled: false, upstream: "http://127.0.0.1:9"}
        """)
    d = decide(r, req())
    assert d.status == 502 and "x: enabled: false (rules.yaml:7)" in d.error_body()


def test_enabled_true_changes_nothing():
    plain = rules(RULES.replace("enabled: false", "enabled: true"))
    assert all(r.off is None and all(b.off is None for b in r.backends) for r in plain.routes)
    assert decide(plain, req(X_Beta="1")).backend == "beta"
    assert file_off_reason("", 3) == "enabled: false (line 3)"


# -- switches at run time --------------------------------------------------------------------------
def test_a_switch_turns_a_file_disabled_backend_and_route_on():
    r = rules()
    on = switched(r, {"shop/beta": True, "legacy": True})
    assert decide(on, req(X_Beta="1")).backend == "beta"
    assert decide(on, req("http://shop.example/api/1")).route == "legacy"
    assert [x.name for x in on.index.candidates("/api/1", "h")] == ["legacy", "shop"]
    beta = on.routes[1].backends[0]
    assert state(beta) == "switched on" and beta.enabled is False and beta.off is None
    assert beta.held_reason.startswith("when holds: header X-Beta")
    # the rules as loaded are untouched: a switch builds new rules
    assert decide(r, req(X_Beta="1")).backend == "default"


def test_a_switch_turns_others_off_and_a_switched_off_fallback_is_not_tried():
    r = rules()
    off = switched(r, {"shop/main": False, "shop/default": False})
    d = decide(off, req(X_Main="1"))
    assert d.outcome == "no_match" and names(d)[1] == ("main", False, "switched off (condroute.disable shop/main)")
    assert state(off.routes[1].backends[2]) == "switched off"
    # switching it back on: the same compiled condition, nothing compiled again
    back = switched(off, {})
    assert back is off
    again = switched(r, {"shop/main": True})            # the file's own state: nothing changes
    assert again is r


def test_switching_a_route_off_and_its_state():
    r = rules()
    off = switched(r, ["shop"])                          # names alone: switched off
    d = decide(off, req("http://shop.example/x"), explain=True)
    assert d.route is None and ("shop", "switched off (condroute.disable shop)") in d.routes_passed
    assert [state(x) for x in off.routes] == ["off", "switched off"]


# -- every consumer: check cases, explain, validate (lint) ----------------------------------------
def test_check_cases_and_explain_see_the_file_state(tmp_path, capsys):
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    cases = tmp_path / "cases.yaml"
    cases.write_text(textwrap.dedent("""
        - request: {url: "http://shop.example/x", headers: {X-Beta: "1"}}
          expect: {route: shop, backend: default}
        - request: {url: "http://shop.example/api/1"}
          expect: {route: shop}
        """))
    assert main(["check", str(p), str(cases)]) == 0
    assert "2 passed, 0 failed" in capsys.readouterr().out
    assert main(["explain", str(p), "http://shop.example/api/1", "-H", "X-Beta: 1"]) == 0
    out = capsys.readouterr().out
    assert "legacy: enabled: false (rules.yaml:5)" in out and "beta" in out and "enabled: false (rules.yaml:12)" in out
    assert main(["explain", "--json", str(p), "http://shop.example/x", "-H", "X-Beta: 1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["skipped"][0] == {"backend": "beta", "reason": "enabled: false (rules.yaml:12)"}


def test_lint_warns_when_every_backend_of_an_enabled_route_is_off():
    r = rules("""
        version: 1
        routes:
          - name: all-off
            match: {path: /a/*}
            backends:
              - {name: x, enabled: false, upstream: "http://127.0.0.1:9"}
              - {name: y, fallback: true, enabled: false, upstream: "http://127.0.0.1:9"}
          - name: one-off
            match: {path: /b/*}
            backends:
              - {name: x, enabled: false, upstream: "http://127.0.0.1:9"}
              - {name: y, upstream: "http://127.0.0.1:9"}
          - name: route-off
            enabled: false
            match: {path: /c/*}
            backends:
              - {name: x, enabled: false, upstream: "http://127.0.0.1:9"}
          - name: catch-all-off
            enabled: false
            backends:
              - {name: x, upstream: "http://127.0.0.1:9"}
          - name: after
            backends:
              - {name: x, upstream: "http://127.0.0.1:9"}
        """)
    ws = [str(p) for p in lint(r)]
    off = [w for w in ws if "every backend" in w]
    assert len(off) == 1 and off[0].startswith("rules.yaml:4:") and "'all-off'" in off[0]
    assert "passed through unchanged (on_no_match: passthrough)" in off[0]
    assert "write enabled: false on the route" in off[0]
    # an off route with no match does not shadow the routes after it; an off backend shadows nothing
    assert not any("can never" in w for w in ws), ws


# -- the commands (mitmproxy's harness) -------------------------------------------------------------
@pytest.fixture
def live(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=str(p))
        yield tctx, addon, p


def call(tctx, name, *args):
    return tctx.master.commands.call(name, *args)


async def backend(tctx, addon, **headers) -> str | None:
    f = make_flow("http://shop.example/x", headers={k.replace("_", "-"): v for k, v in headers.items()})
    await tctx.cycle(addon, f)
    return f.metadata["condroute"]["backend"] if "condroute" in f.metadata else None


def test_the_switch_commands_are_registered_with_their_help(live):
    tctx, _, _ = live
    cmds = tctx.master.commands.commands
    for name in ("condroute.enable", "condroute.disable", "condroute.switches", "condroute.switches.reset"):
        assert name in cmds and cmds[name].help, name
    assert [p.name for p in cmds["condroute.enable"].parameters] == ["name"]
    assert cmds["condroute.switches"].return_type is str


async def test_enable_turns_on_what_the_file_turns_off_and_disable_goes_back(live):
    tctx, addon, _ = live
    assert await backend(tctx, addon, X_Beta="1") == "default"
    tctx.master.commands.execute("condroute.enable shop/beta")
    assert await backend(tctx, addon, X_Beta="1") == "beta"
    assert "shop/beta: switched on at" in call(tctx, "condroute.switches")
    assert "(switched on; off in the file)" in call(tctx, "condroute.status")
    tctx.master.commands.execute("condroute.disable shop/beta")      # the file's state: the switch goes
    assert addon.switches == {}
    assert await backend(tctx, addon, X_Beta="1") == "default"
    with pytest.raises(exceptions.CommandError, match=r"'shop/beta' is off already: enabled: false \(rules.yaml:12\)"):
        call(tctx, "condroute.disable", "shop/beta")
    with pytest.raises(exceptions.CommandError, match="'shop/main' is not switched off: it is on, as the file says"):
        call(tctx, "condroute.enable", "shop/main")


async def test_a_route_off_in_the_file_switched_on(live):
    tctx, addon, _ = live
    f = make_flow("http://shop.example/api/1")
    await tctx.cycle(addon, f)
    assert f.metadata["condroute"]["route"] == "shop"
    call(tctx, "condroute.enable", "legacy")
    f = make_flow("http://shop.example/api/1")
    await tctx.cycle(addon, f)
    assert f.metadata["condroute"]["route"] == "legacy" and f.request.port == 9003


async def test_switches_are_kept_across_reloads_until_the_file_agrees(live):
    tctx, addon, path = live
    call(tctx, "condroute.enable", "shop/beta")
    call(tctx, "condroute.disable", "shop/main")
    path.write_text(path.read_text() + "\n")
    call(tctx, "condroute.reload")
    assert await backend(tctx, addon, X_Beta="1") == "beta"
    assert await backend(tctx, addon, X_Main="1") == "default"
    assert path.read_text() == textwrap.dedent(RULES) + "\n"           # never written to the file
    # the file now says what the switch says: the switch is dropped, the file has taken over
    path.write_text(path.read_text().replace("enabled: false\n        when", "when"))
    assert settle(addon, str(path)) is True
    assert set(addon.switches) == {"shop/main"}
    assert "shop/beta" not in call(tctx, "condroute.switches")


async def test_a_switch_whose_name_goes_away_is_kept_and_applies_when_it_comes_back(live):
    tctx, addon, path = live
    call(tctx, "condroute.disable", "shop/main")
    text = path.read_text()
    path.write_text(text.replace("name: main", "name: primary"))
    call(tctx, "condroute.reload")
    assert "switched, not in the rules now: shop/main (off)" in call(tctx, "condroute.status")
    assert "shop/main: switched off at" in call(tctx, "condroute.switches") and "not in the rules now" in \
        call(tctx, "condroute.switches")
    path.write_text(text)
    call(tctx, "condroute.reload")
    assert await backend(tctx, addon, X_Main="1") == "default"


async def test_reset_goes_back_to_the_file(live):
    tctx, addon, _ = live
    call(tctx, "condroute.enable", "shop/beta")
    call(tctx, "condroute.disable", "shop")
    assert await backend(tctx, addon, X_Beta="1") is None          # the route is off: passthrough
    text = call(tctx, "condroute.switches")
    assert "shop: switched off" in text and "off in the file:\n  legacy: enabled: false (rules.yaml:5)" in text
    call(tctx, "condroute.switches.reset")
    assert addon.switches == {} and addon.rules is addon.loaded
    assert await backend(tctx, addon, X_Beta="1") == "default"
    assert call(tctx, "condroute.switches").startswith("no run-time switches")


# -- the status page -------------------------------------------------------------------------------
async def status(tctx, addon) -> dict:
    f = make_flow("http://condroute.mitm.it/api/status")
    await tctx.cycle(addon, f)
    return json.loads(f.response.content)


async def post(tctx, addon, body, headers=None, method="POST"):
    h = {"Content-Type": "application/json"} if headers is None else headers
    f = make_flow("http://condroute.mitm.it/api/switch", method=method,
                  content=body if isinstance(body, bytes) else json.dumps(body).encode(), headers=h)
    await tctx.cycle(addon, f)
    assert f.response is not None and f.response.headers["Cache-Control"] == "no-store"
    return f.response


async def test_the_status_json_has_each_state(live):
    tctx, addon, _ = live
    call(tctx, "condroute.disable", "shop/main")
    s = await status(tctx, addon)
    legacy, shop = s["routes"]
    assert (legacy["state"], legacy["enabled"], legacy["enabled_in_file"], legacy["switched_off"]) == \
        ("off", False, False, False)
    assert legacy["off_reason"] == "enabled: false (rules.yaml:5)" and legacy["switch"] == "legacy"
    assert legacy["hits"] == 0 and "backends" in legacy and "unserved" in legacy     # the contract's keys stay
    b = {x["name"]: x for x in shop["backends"]}
    assert b["beta"]["state"] == "off" and b["main"]["state"] == "switched off" and b["main"]["switched_off"]
    assert b["main"]["switched_by"] == "condroute.disable" and b["main"]["switch"] == "shop/main"
    assert b["default"]["state"] == "on" and b["default"]["off_reason"] is None
    assert [(x["name"], x["enabled"], x["in_rules"]) for x in s["switches"]] == [("shop/main", False, True)]


async def test_post_switch_turns_a_backend_on_and_the_next_request_reaches_it(live):
    tctx, addon, path = live
    r = await post(tctx, addon, {"name": "shop/beta", "enabled": True})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert json.loads(r.content) == {"name": "shop/beta", "changed": True, "enabled": True, "state": "switched on",
                                     "reason": "switched on (enabled: false in the file)"}
    assert await backend(tctx, addon, X_Beta="1") == "beta"
    s = await status(tctx, addon)
    assert s["routes"][1]["backends"][0]["switched_by"] == "status page"
    r = await post(tctx, addon, {"name": "shop/beta", "enabled": True})              # again: nothing changes
    assert r.status_code == 200 and json.loads(r.content)["changed"] is False
    r = await post(tctx, addon, {"reset": True})
    assert json.loads(r.content) == {"reset": 1} and addon.switches == {}
    assert "enabled: false" in path.read_text()
    # the status requests are answered by the proxy, never counted
    assert (await status(tctx, addon))["decisions"] == 1


@pytest.mark.parametrize("body, status, says", [
    ({"name": "nope", "enabled": False}, 404, "there is no route 'nope'; the routes are legacy, shop"),
    ({"name": "shop/x", "enabled": False}, 404, "route 'shop' has no backend 'x'; its backends are beta, main, default"),
    ({"name": "shop", "enabled": "no"}, 400, '"enabled" must be true or false'),
    ({"name": "", "enabled": True}, 400, '"name" must be a route'),
    ({"name": "shop", "enabled": True, "x": 1}, 400, "unknown key 'x'"),
    ({"reset": True, "name": "shop"}, 400, '"reset" is given alone'),
    ([1, 2], 400, "the body must be a JSON object"),
    (b"{nope", 400, "the body is not JSON"),
    (b"x" * 20000, 413, "takes at most 16384"),
])
async def test_post_switch_mistakes_get_a_4xx_with_a_sentence(live, body, status, says):
    tctx, addon, _ = live
    r = await post(tctx, addon, body)
    assert r.status_code == status
    assert says in json.loads(r.content)["error"]
    assert addon.switches == {}


@pytest.mark.parametrize("headers, status, says", [
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "send Content-Type: application/json"),
    ({"Content-Type": "text/plain"}, 415, "not text/plain"),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "not multipart/form-data"),
    ({}, 415, "not none"),
    ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403,
     "a page of http://evil.example cannot switch routes"),
    ({"Content-Type": "application/json", "Origin": "null"}, 403, "a page of null cannot switch routes"),
    ({"Content-Type": "application/json", "Origin": "http://condroute.mitm.it.evil.example"}, 403, "cannot switch"),
    ({"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403, "a cross-site request cannot"),
    ({"Content-Type": "application/json", "Origin": "http://condroute.mitm.it", "Sec-Fetch-Site": "same-site"}, 403,
     "a same-site request cannot"),
])
async def test_post_switch_refuses_what_a_foreign_page_could_send(live, headers, status, says):
    tctx, addon, _ = live
    r = await post(tctx, addon, {"name": "shop/beta", "enabled": True}, headers=headers)
    assert r.status_code == status and says in json.loads(r.content)["error"]
    assert addon.switches == {} and await backend(tctx, addon, X_Beta="1") == "default"


async def test_post_switch_from_the_status_page_itself_is_allowed(live):
    tctx, addon, _ = live
    for origin in ("http://condroute.mitm.it", "https://condroute.mitm.it", "http://condroute.mitm.it:8080"):
        r = await post(tctx, addon, {"name": "shop/beta", "enabled": True},
                       headers={"Content-Type": "application/json; charset=utf-8", "Origin": origin,
                                "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200, r.content
        await post(tctx, addon, {"reset": True})


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "OPTIONS", "DELETE"])
async def test_only_post_switches(live, method):
    tctx, addon, _ = live
    r = await post(tctx, addon, {"name": "shop/beta", "enabled": True}, method=method)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert "access-control-allow-origin" not in r.headers and "access-control-allow-headers" not in r.headers
    assert addon.switches == {}


async def test_post_switch_without_rules(tmp_path):
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        r = await post(tctx, addon, {"name": "shop", "enabled": False})
        assert r.status_code == 409 and "no rules are loaded" in json.loads(r.content)["error"]
