"""condroute's commands (issue 13 item 5) through mitmproxy's command manager, as mitmweb's command
bar, the console's `:` prompt and scripts call them: condroute.explain, .reload, .status, .enable,
.disable."""
from __future__ import annotations

import textwrap

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.addons.view import View
from mitmproxy.test import taddons

from condroute.compile.switches import UnknownSwitch, resolve, switched
from condroute.engine import decide
from condroute.explain import build_request
from condroute.mitm.addon import ConditionalRouting
from condroute.rules import load_rules_text
from test_addon import RULES, make_flow


@pytest.fixture
def rules_file(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    return p


@pytest.fixture
def ctx(rules_file):
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=str(rules_file))
        yield tctx, addon


def call(tctx, name, *args):
    return tctx.master.commands.call(name, *args)


def test_the_commands_are_registered_with_their_help(ctx):
    tctx, _ = ctx
    cmds = tctx.master.commands.commands
    for name in ("condroute.explain", "condroute.reload", "condroute.status", "condroute.enable",
                 "condroute.disable"):
        assert name in cmds and cmds[name].help
    assert [p.name for p in cmds["condroute.explain"].parameters] == ["flows"]


# -- explain --------------------------------------------------------------------------------------
async def test_explain_decides_a_rerouted_flow_again_from_its_original_request(ctx):
    tctx, addon = ctx
    f = make_flow("http://shop.example/checkout/42", headers={"X-Ab-Test": "B", "Cookie": "uid=1"})
    await tctx.cycle(addon, f)
    assert f.request.port == 9002                                   # rerouted: the saved request changed
    text = call(tctx, "condroute.explain", [f])
    first, *rest = text.splitlines()
    assert first == "http://shop.example/checkout/42"               # the original, not 127.0.0.1:9002
    body = "\n".join(rest)
    assert "force-b" in body and "/v2/checkout/42" in body and "127.0.0.1:9002" in body
    assert "uid=1" not in text                                      # cookie values are not shown


async def test_explain_through_a_command_string_with_a_flow_spec(rules_file):
    # as typed in mitmweb's command bar or the console: "@all" is resolved by mitmproxy's view addon
    addon, view = ConditionalRouting(), View()
    with taddons.context(Proxyserver(), view, addon) as tctx:
        tctx.configure(addon, condroute_rules=str(rules_file))
        f = make_flow("http://strict.example/", headers={"Cookie": "beta=1"})
        await tctx.cycle(addon, f)
        view.add([f])
        text = tctx.master.commands.execute("condroute.explain @all")
    assert text.splitlines()[0] == "http://strict.example/" and "beta" in text


def test_explain_without_rules_or_flows_is_a_command_error(ctx, tmp_path):
    tctx, addon = ctx
    with pytest.raises(exceptions.CommandError, match="no HTTP flows"):
        call(tctx, "condroute.explain", [])
    tctx.configure(addon, condroute_rules="")
    with pytest.raises(exceptions.CommandError, match="no rules loaded"):
        call(tctx, "condroute.explain", [make_flow()])


# -- reload ---------------------------------------------------------------------------------------
def test_reload_loads_the_file_now_and_refuses_a_bad_one(ctx, rules_file):
    tctx, addon = ctx
    gen = addon.generation
    rules_file.write_text(rules_file.read_text().replace("name: strict", "name: stricter"))
    tctx.master.commands.execute("condroute.reload")
    assert addon.generation == gen + 1 and [r.name for r in addon.rules.routes][-1] == "stricter"
    good = addon.rules
    rules_file.write_text("routes: [")
    with pytest.raises(exceptions.CommandError, match=r"rules\.yaml:\d+:\d+: "):
        tctx.master.commands.execute("condroute.reload")
    assert addon.rules is good and addon.generation == gen + 1
    assert "rules.yaml:2:1: YAML syntax error" in addon.last_error


def test_reload_without_a_rules_file_says_so(ctx):
    tctx, addon = ctx
    tctx.configure(addon, condroute_rules="")
    with pytest.raises(exceptions.CommandError, match="no rules file is set"):
        tctx.master.commands.execute("condroute.reload")


# -- switches -------------------------------------------------------------------------------------
async def test_disable_a_backend_skips_it_with_a_reason_and_enable_brings_it_back(ctx):
    tctx, addon = ctx
    tctx.master.commands.execute("condroute.disable shop/force-b")
    f = make_flow(headers={"X-Ab-Test": "B"})
    await tctx.cycle(addon, f)
    md = f.metadata["condroute"]
    assert md["backend"] == "default"
    assert any(s["backend"] == "force-b" and "switched off (condroute.disable shop/force-b)" in s["reason"]
               for s in md["skipped"])
    tctx.master.commands.execute("condroute.enable shop/force-b")
    f = make_flow(headers={"X-Ab-Test": "B"})
    await tctx.cycle(addon, f)
    assert f.metadata["condroute"]["backend"] == "force-b"


async def test_disable_a_route_lets_the_request_go_on_to_the_next_routes(ctx):
    tctx, addon = ctx
    call(tctx, "condroute.disable", "blocked")
    f = make_flow("http://shop.example/admin/x")
    await tctx.cycle(addon, f)
    assert f.response is None and "condroute" not in f.metadata        # passthrough now, not the 403
    assert "blocked" in call(tctx, "condroute.status") and "(switched off)" in call(tctx, "condroute.status")


async def test_switches_survive_a_reload(ctx, rules_file):
    tctx, addon = ctx
    call(tctx, "condroute.disable", "shop/force-b")
    rules_file.write_text(rules_file.read_text() + "\n")
    call(tctx, "condroute.reload")
    f = make_flow(headers={"X-Ab-Test": "B"})
    await tctx.cycle(addon, f)
    assert f.metadata["condroute"]["backend"] == "default"


def test_disable_an_unknown_name_says_what_there_is(ctx):
    tctx, _ = ctx
    with pytest.raises(exceptions.CommandError, match="there is no route 'nope'; the routes are shop, blocked, strict"):
        call(tctx, "condroute.disable", "nope")
    with pytest.raises(exceptions.CommandError, match="route 'shop' has no backend 'x'; its backends are force-b"):
        call(tctx, "condroute.disable", "shop/x")
    with pytest.raises(exceptions.CommandError, match="'shop' is not switched off"):
        call(tctx, "condroute.enable", "shop")


def test_a_switched_off_fallback_is_not_tried():
    rules = load_rules_text(textwrap.dedent(RULES), "r.yaml")
    off = switched(rules, ["shop/default"])
    d = decide(off, build_request("http://shop.example/checkout/1"))
    assert d.route == "shop" and d.backend is None and d.outcome == "no_match"
    assert decide(rules, build_request("http://shop.example/checkout/1")).backend == "default"
    assert switched(rules, []) is rules and switched(rules, ["gone/route"]) is rules
    assert resolve(rules, " shop ") == "shop"
    with pytest.raises(UnknownSwitch):
        resolve(None, "shop")


# -- status ---------------------------------------------------------------------------------------
async def test_status_lists_rules_hits_and_upstreams(ctx, rules_file):
    tctx, addon = ctx
    for _ in range(3):
        await tctx.cycle(addon, make_flow(headers={"X-Ab-Test": "B"}))
    text = call(tctx, "condroute.status")
    assert text.splitlines()[0].startswith(f"rules: {rules_file}, generation 1")
    assert "route shop: 3 hits" in text and "  force-b: 3" in text and "  keep: 0" in text
    assert "upstream b http://127.0.0.1:9002/base" in text


async def test_the_status_page_shows_switches(ctx):
    tctx, addon = ctx
    call(tctx, "condroute.disable", "shop/keep")
    call(tctx, "condroute.disable", "strict")
    snap = addon.status.snapshot()
    routes = {r["name"]: r for r in snap["routes"]}
    assert routes["strict"]["switched_off"] and not routes["shop"]["switched_off"]
    assert [b["name"] for b in routes["shop"]["backends"] if b["switched_off"]] == ["keep"]
