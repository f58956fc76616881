"""condroute's options as mitmproxy's option store sees them: typed (mitmweb's editor shows a checkbox
and a choice), bad values refused with OptionsError at run time (mitmproxy rolls them back), logged
at start-up (mitmdump exits 1, no traceback), and --set values checked before mitmproxy converts
them: unknown condroute_* names get a "did you mean", a repeated option an error."""
from __future__ import annotations

import logging
import textwrap

import httpx
import pytest
from mitmproxy import exceptions, hooks, optmanager
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from condroute.mitm import options
from condroute.mitm.addon import ConditionalRouting
from helpers import ADDON, Proxy, free_port, run_mitmdump_until_exit
from test_addon import RULES, Harness, make_flow, messages


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="condroute")
    return caplog


@pytest.fixture
def rules_file(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent(RULES))
    return str(p)


@pytest.fixture
async def running(rules_file):
    """An addon whose proxy is running: option changes now come from mitmweb, the console or a command."""
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=rules_file, condroute_log="verbose")
        tctx.master.addons.invoke_addon_sync(addon, hooks.RunningHook())
        yield Harness(tctx, addon)
        tctx.master.addons.invoke_addon_sync(addon, hooks.DoneHook())


# -- typed, as mitmweb's and the console's option editors show them ---------------------------------------
async def test_options_are_typed_for_the_editors(running):
    dump = optmanager.dump_dicts(running.tctx.options)
    assert dump["condroute_debug_header"]["type"] == "bool"
    assert dump["condroute_log"]["choices"] == ["off", "decisions", "verbose"]
    assert dump["condroute_rules"]["type"] == "str"
    assert {n for n in dump if n.startswith("condroute_")} == set(options.OPTIONS)
    assert all(dump[n]["help"].startswith("condroute: ") for n in options.OPTIONS)


# -- run time: a bad value is refused and rolled back -------------------------------------------------
@pytest.mark.parametrize("name, value, says", [
    ("condroute_log", "loud", "condroute_log must be one of off, decisions, verbose, not 'loud'"),
    ("condroute_reload_interval", "-1", "condroute_reload_interval must be a number of seconds"),
    ("condroute_cooldown", "soon", "condroute_cooldown must be a number of seconds"),
    ("condroute_connect_timeout", "1e9", "condroute_connect_timeout must be a number of seconds"),
])
async def test_a_bad_value_at_run_time_is_refused_and_rolled_back(running, logs, name, value, says):
    before = getattr(running.tctx.options, name)
    state = (running.addon.log_level, running.addon.reload_interval, running.addon.upstreams.health.cooldown,
             running.addon.upstreams.connect_timeout)
    with pytest.raises(exceptions.OptionsError, match=says):
        running.configure(**{name: value})
    assert getattr(running.tctx.options, name) == before                 # mitmproxy rolled it back
    assert (running.addon.log_level, running.addon.reload_interval, running.addon.upstreams.health.cooldown,
            running.addon.upstreams.connect_timeout) == state
    # and verbose logging still works
    logs.clear()
    await running.cycle(make_flow())
    assert any("skipped force-b" in m for m in messages(logs))


async def test_a_good_value_at_run_time_applies(running):
    running.configure(condroute_log="Off", condroute_cooldown="2.5s", condroute_debug_header=True)
    assert running.addon.log_level == 0 and running.addon.upstreams.health.cooldown == 2.5
    assert running.addon.debug_header is True


async def test_the_typed_switch_refuses_text(running):
    # mitmproxy's own type check: the editor sends a bool; text is refused before condroute sees it
    with pytest.raises(TypeError, match="Expected <class 'bool'> for condroute_debug_header"):
        running.configure(condroute_debug_header="maybe")
    assert running.addon.debug_header is False
    running.tctx.options.set("condroute_debug_header=true")              # the console's `set` command
    assert running.addon.debug_header is True


async def test_a_rules_file_that_does_not_load_is_refused_and_the_old_rules_stay(running, rules_file, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - name: x\n    backends: [{name: a, upstream: 'nope://'}]\n")
    rules, generation = running.addon.rules, running.addon.generation
    with pytest.raises(exceptions.OptionsError, match=r"bad\.yaml:3:\d+: "):
        running.configure(condroute_rules=str(bad))
    assert running.tctx.options.condroute_rules == rules_file           # rolled back
    assert running.addon.rules is rules and running.addon.path == rules_file
    assert running.addon.generation == generation                       # the rollback did not reload
    f = await running.cycle(make_flow(headers={"X-Ab-Test": "B"}))
    assert f.metadata["condroute"]["backend"] == "force-b"


async def test_a_missing_rules_file_at_run_time_is_refused(running, rules_file, tmp_path):
    with pytest.raises(exceptions.OptionsError, match="nope.yaml"):
        running.configure(condroute_rules=str(tmp_path / "nope.yaml"))
    assert running.tctx.options.condroute_rules == rules_file and running.addon.rules is not None


# -- start-up: logged, not raised (mitmdump exits 1 after start-up errors) ------------------------------
async def test_a_bad_value_at_start_up_is_logged_and_not_raised(rules_file, logs):
    addon = ConditionalRouting()
    with taddons.context(Proxyserver(), addon) as tctx:
        tctx.configure(addon, condroute_rules=rules_file, condroute_log="loud")
        assert "condroute: condroute_log must be one of off, decisions, verbose, not 'loud'" in messages(
            logs, logging.ERROR)
        assert addon.rules is None          # nothing applied (mitmdump exits 1 after a start-up error)


# -- --set values checked before mitmproxy converts them ----------------------------------------------
def register_with(*specs: str) -> tuple[ConditionalRouting, taddons.context]:
    addon = ConditionalRouting()
    tctx = taddons.context(Proxyserver())
    tctx.options.set(*specs, defer=True)      # as mitmdump does with --set before scripts load
    tctx.master.addons.register(addon)        # raises OptionsError if a deferred value does not convert
    return addon, tctx


@pytest.mark.parametrize("given, value", [("yes", True), ("1", True), ("true", True), ("ON", True),
                                          ("no", False), ("0", False), ("false", False)])
async def test_a_switch_given_with_set_takes_the_words_condroute_always_took(given, value):
    _, tctx = register_with(f"condroute_debug_header={given}")
    assert tctx.options.condroute_debug_header is value


async def test_a_choice_given_with_set_takes_any_case():
    _, tctx = register_with("condroute_log=VERBOSE")
    assert tctx.options.condroute_log == "verbose"


@pytest.mark.parametrize("spec, error", [
    (("condroute_debug_header=maybe",), "condroute: condroute_debug_header must be true or false, not 'maybe'"),
    (("condroute_rules=a.yaml", "condroute_rules=b.yaml"),
     "condroute: condroute_rules is set 2 times ('a.yaml', 'b.yaml'); set it once"),
    (("condroute_log=loud",), "condroute: condroute_log must be one of off, decisions, verbose, not 'loud'"),
])
async def test_a_set_value_condroute_cannot_take_is_a_start_up_error_not_a_silent_stop(logs, spec, error):
    addon, tctx = register_with(*spec)        # without the check, mitmproxy raises here and the addon is lost
    assert error in messages(logs, logging.ERROR)
    assert tctx.master.addons.get("conditionalrouting") is addon
    assert not [n for n in tctx.options.deferred if n.startswith("condroute_")]


async def test_an_unknown_condroute_option_gets_a_did_you_mean(logs):
    register_with("condroute_rule=rules.yaml", "condroute_bogus_thing=1", "other_addon_option=1")
    warnings = messages(logs, logging.WARNING)
    assert "condroute: there is no option condroute_rule (did you mean condroute_rules?); it is ignored" in warnings
    assert any(w.startswith("condroute: there is no option condroute_bogus_thing; condroute's options are ")
               for w in warnings)
    assert not any("other_addon_option" in w for w in warnings)   # not ours to judge


# -- the same, through a real mitmdump --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sets, line", [
    (("condroute_debug_header=maybe",), "condroute: condroute_debug_header must be true or false, not 'maybe'"),
    (("condroute_rules=a.yaml", "condroute_rules=b.yaml"), "condroute_rules is set 2 times"),
])
def test_mitmdump_exits_1_with_one_line_for_a_bad_set_value(sets, line):
    r = run_mitmdump_until_exit(["-s", str(ADDON), *[a for s in sets for a in ("--set", s)]], timeout=20)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert line in out and "Traceback" not in out


@pytest.mark.slow
def test_mitmwebs_option_editor_gets_a_400_and_the_old_value_stays(tmp_path, rules_file):
    """What mitmweb's options editor does: PUT /options. A bad value is answered 400 with condroute's
    sentence and rolled back; a good one applies. (mitmweb 12 wants a token: web_password.)"""
    web = free_port()
    p = Proxy(["--web-host", "127.0.0.1", "--web-port", str(web), "--set", "web_open_browser=false",
               "--set", "web_password=condroute-test", "-s", str(ADDON), "--set", f"condroute_rules={rules_file}"],
              program="mitmweb")
    try:
        p.start()
        p.wait_for(rf"Web server listening at http://127\.0\.0\.1:{web}/")
        # tornado's XSRF check wants the same token in a cookie (named _xsrf in mitmweb 11,
        # _mitmproxy_xsrf in 12) and in the X-XSRFToken header, as mitmweb's page sends them
        token = "0123456789abcdef"
        with httpx.Client(base_url=f"http://127.0.0.1:{web}", timeout=10,
                          headers={"Authorization": "Bearer condroute-test"},
                          cookies={"_xsrf": token, "_mitmproxy_xsrf": token}) as c:
            xsrf = {"X-XSRFToken": token}
            r = c.put("/options", json={"condroute_log": "loud"}, headers=xsrf)
            assert r.status_code == 400 and "condroute_log must be one of off, decisions, verbose" in r.text
            r = c.put("/options", json={"condroute_rules": str(tmp_path / "nope.yaml")}, headers=xsrf)
            assert r.status_code == 400 and "nope.yaml" in r.text
            opts = c.get("/options").json()
            assert opts["condroute_log"]["value"] == "decisions" and opts["condroute_rules"]["value"] == rules_file
            assert opts["condroute_debug_header"]["type"] == "bool"
            assert opts["condroute_log"]["choices"] == ["off", "decisions", "verbose"]
            assert c.put("/options", json={"condroute_log": "verbose"}, headers=xsrf).status_code == 200
            assert c.get("/options").json()["condroute_log"]["value"] == "verbose"
            r = c.post("/commands/condroute.status", json={"arguments": []}, headers=xsrf)
            assert r.status_code == 200 and r.json()["value"].startswith(f"rules: {rules_file}, generation 1")
    finally:
        p.stop()
