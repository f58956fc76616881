"""condroute's mitmproxy commands, as mitmproxy users expect of a built-in addon:

* ``condroute.explain FLOWS`` — the decision for flows (``@focus``, ``@marked``, ``@all``...) with
  the rules in force now, decided from each request as the client sent it: the table of
  ``condroute explain``, flow by flow;
* ``condroute.reload`` — load the rules file again now (a file that does not load is refused, the
  rules in force stay);
* ``condroute.status`` — the rules file, its generation, the last reload error, hits per route and
  backend, upstream health and switches, as text (the status page has the same as HTML and JSON);
* ``condroute.disable ROUTE[/BACKEND]`` / ``condroute.enable ROUTE[/BACKEND]`` — switch a route or a
  backend off, or on (also one the file turns off with ``enabled: false``); an off backend is
  skipped with its reason, an off route owns no request. Each command sets the state in force; a
  command that would change nothing is an error that says the state (a mistyped name shows at
  once). Setting the file's own state again drops the switch;
* ``condroute.switches`` — the run-time switches and what the file turns off, as text;
* ``condroute.switches.reset`` — every route and backend back to the file's state.

Switches are kept by name across reloads and never written to the file; a switch the file comes to
agree with is dropped at reload (the file has taken over). The status page shows them and flips
them (``POST /api/switch``, mitm/switch_api.py), through the same :meth:`Commands.set_switch`.

The methods are on the addon itself (a mixin): mitmproxy dispatches every event to every
sub-addon, which would cost each request more than these commands ever will.
"""

import logging
import time
from collections.abc import Sequence
from typing import Any

from mitmproxy import command, exceptions, flow, http

from .. import render
from ..compile.switches import UnknownSwitch, find, resolve, state, switched
from ..engine import decide
from ..errors import RulesError
from ..rules import Rules
from .flows import flow_request

log = logging.getLogger("condroute")


class Commands:
    """Mixed into ConditionalRouting (a reload.LiveRules with ``status`` and ``upstreams``)."""

    rules: Rules | None
    loaded: Rules | None
    path: str
    status: Any
    upstreams: Any

    def __init__(self) -> None:
        super().__init__()
        self.switches: dict[str, Switch] = {}     # name (ROUTE or ROUTE/BACKEND) -> its run-time state

    def _adapt(self, rules: Rules) -> Rules:
        """The rules to put in force for rules just loaded: the switches applied; those the file now
        agrees with are dropped (the file has taken over)."""
        for name, sw in list(self.switches.items()):
            item = find(rules, name)
            if item is not None and item.enabled == sw.enabled:
                del self.switches[name]
                log.info(f"condroute: {name}: the file now says {'on' if sw.enabled else 'off'} too; its "
                         f"run-time switch is dropped")
        return switched(rules, self.overrides())

    def overrides(self) -> dict[str, bool]:
        return {n: sw.enabled for n, sw in self.switches.items()}

    # -- explain ----------------------------------------------------------------------------------
    @command.command("condroute.explain")
    def explain_flows(self, flows: Sequence[flow.Flow]) -> str:
        """The decision for each flow with the rules in force, from its request as the client sent it."""
        rules = self.rules
        if rules is None:
            raise exceptions.CommandError("condroute has no rules loaded (set condroute_rules=FILE)")
        out: list[str] = []
        for f in flows:
            if not isinstance(f, http.HTTPFlow):
                continue
            req, exact = flow_request(f)
            d = decide(rules, req, explain=True, health=self.upstreams.health)
            out.append(f"{render.original_url(req)}" + ("" if exact else "  (the original request was not saved: "
                                                           "decided on the forwarded one)"))
            out.extend("  " + line for line in render.render_decision(rules, d, req))
        if not out:
            raise exceptions.CommandError("no HTTP flows given")
        return "\n".join(out)

    # -- reload ------------------------------------------------------------------------------------
    @command.command("condroute.reload")
    def reload_now(self) -> None:
        """Load the rules file again now; a file that does not load is refused and the rules stay."""
        if not self.path:
            raise exceptions.CommandError("no rules file is set (condroute_rules)")
        try:
            self.load_now(self.path, "reloaded")  # type: ignore[attr-defined]
        except RulesError as e:
            self.last_error = str(e)
            log.error(f"condroute: condroute.reload: the rules file does not load; keeping the last good rules:\n{e}")
            raise exceptions.CommandError(str(e)) from None

    # -- status ------------------------------------------------------------------------------------
    @command.command("condroute.status")
    def status_text(self) -> str:
        """The rules in force, hits per route and backend, upstream health and switches, as text."""
        snap = self.status.snapshot()
        r = snap["rules"]
        lines = [f"rules: {r['path'] or '(none: condroute is inactive)'}"
                 + (f", generation {r['generation']}" if r["generation"] else "")
                 + (f", loaded {time.strftime('%H:%M:%S', time.localtime(r['loaded_at']))}" if r["loaded_at"] else "")]
        if r.get("error"):
            lines.append(f"last reload error: {r['error']}")
        for route in snap["routes"]:
            lines.append(f"route {route['name']}: {route['hits']} hits{_state_text(route)}")
            for b in route["backends"]:
                lines.append(f"  {b['name']}: {b['hits']}{_state_text(b)}")
        for u in snap["upstreams"]:
            lines.append(f"upstream {u['name']} {u['url']}: {u['state']}")
        for m in snap["mirrors"]["upstreams"]:
            lines.append(f"mirror {m['name']} {m['url']}: {m['sent']} sent, {m['failed']} failed, {m['dropped']} dropped"
                         + (f", {m['in_flight']} under way" if m["in_flight"] else "")
                         + (" (failing)" if m["failing"] else ""))
        missing = [f"{n} ({'on' if sw.enabled else 'off'})" for n, sw in self.switches.items()
                   if find(self.loaded, n) is None]
        if missing:
            lines.append("switched, not in the rules now: " + ", ".join(missing))
        return "\n".join(lines)

    # -- switches ----------------------------------------------------------------------------------
    @command.command("condroute.disable")
    def disable(self, name: str) -> None:
        """Switch a route (ROUTE) or a backend (ROUTE/BACKEND) off: it is skipped until switched on again."""
        self._command_switch(name, False)

    @command.command("condroute.enable")
    def enable(self, name: str) -> None:
        """Switch a route (ROUTE) or a backend (ROUTE/BACKEND) on, also one the file turns off (enabled: false)."""
        self._command_switch(name, True)

    @command.command("condroute.switches")
    def switches_text(self) -> str:
        """The run-time switches (kept across reloads, never written to the file) and what the file turns off."""
        lines = []
        for name, sw in self.switches.items():
            item = find(self.loaded, name)
            file = ("not in the rules now" if item is None else
                    f"{'on' if item.enabled else 'off'} in the file" + ("" if item.enabled else f": {item.off}"))
            lines.append(f"{name}: switched {'on' if sw.enabled else 'off'} at "
                         f"{time.strftime('%H:%M:%S', time.localtime(sw.at))} ({sw.by}); {file}")
        if not lines:
            lines.append("no run-time switches: every route and backend is as the file says")
        off = [f"  {n}: {why}" for n, why in _off_in_file(self.loaded)]
        if off:
            lines.append("off in the file:")
            lines.extend(off)
        return "\n".join(lines)

    @command.command("condroute.switches.reset")
    def reset_switches(self) -> None:
        """Drop every run-time switch: each route and backend is on or off as the file says."""
        n = len(self.switches)
        self.switches.clear()
        self._apply_switches()
        log.info(f"condroute: {n} run-time switch{'es' * (n != 1)} dropped: the rules are as the file says")

    def _command_switch(self, spec: str, enabled: bool) -> None:
        try:
            name, changed, now = self.set_switch(spec, enabled, "condroute." + ("enable" if enabled else "disable"))
        except UnknownSwitch as e:
            raise exceptions.CommandError(str(e)) from None
        if not changed:
            if enabled:
                raise exceptions.CommandError(f"{name!r} is not switched off: it is on" + (
                    "" if name in self.switches else ", as the file says"))
            raise exceptions.CommandError(f"{name!r} is off already: {now}")

    def set_switch(self, spec: str, enabled: bool, by: str) -> tuple[str, bool, str]:
        """Put ``spec`` (ROUTE or ROUTE/BACKEND) on or off now: (its name, whether anything changed,
        its state as a phrase). Setting the file's own state drops the switch. UnknownSwitch when
        the rules have no such name (a switch kept for a name the file no longer has can be dropped)."""
        spec = spec.strip()
        loaded = self.loaded
        if spec in self.switches and find(loaded, spec) is None:   # kept across a reload that removed the name
            if self.switches[spec].enabled == enabled:
                return spec, False, f"switched {'on' if enabled else 'off'}"
            del self.switches[spec]
            log.info(f"condroute: {spec}: run-time switch dropped ({by}); the name is not in the rules now")
            return spec, True, "as the file says"
        name = resolve(loaded, spec)
        item = find(loaded, name)
        assert item is not None
        sw = self.switches.get(name)
        now_on = sw.enabled if sw is not None else item.enabled
        if now_on == enabled:
            return name, False, self._phrase(name)
        if enabled == item.enabled:
            del self.switches[name]
        else:
            self.switches[name] = Switch(enabled, time.time(), by)
        self._apply_switches()
        phrase = self._phrase(name)
        log.info(f"condroute: {name} switched {'on' if enabled else 'off'} ({by}): {phrase}")
        return name, True, phrase

    def _phrase(self, name: str) -> str:
        """The state of ``name`` in force, as a phrase: "on", "switched off (condroute.disable x)",
        "enabled: false (rules.yaml:4)", "switched on (enabled: false in the file)"."""
        item = find(self.rules, name)
        if item is None:
            return "not in the rules"
        st = state(item)
        if st == "switched on":
            return "switched on (enabled: false in the file)"
        return item.off or "on"

    def _apply_switches(self) -> None:
        if self.loaded is not None:
            self.rules = switched(self.loaded, self.overrides())    # one assignment: the next request sees it


class Switch:
    """A run-time switch: on or off, since when, by what (a command, the status page)."""
    __slots__ = ("enabled", "at", "by")

    def __init__(self, enabled: bool, at: float, by: str) -> None:
        self.enabled, self.at, self.by = enabled, at, by


def _state_text(item: dict) -> str:
    """" (switched off)" and the like after a route or backend of ``condroute.status``."""
    st = item.get("state", "on")
    if st == "on":
        return ""
    if st == "off":
        return f" (off: {item.get('off_reason')})"
    return f" ({st}" + ("; off in the file)" if st == "switched on" else ")")


def _off_in_file(rules: Rules | None) -> list[tuple[str, str]]:
    """(name, reason) of each route and backend the file turns off."""
    out: list[tuple[str, str]] = []
    for r in rules.routes if rules is not None else ():
        if not r.enabled:
            out.append((r.name, r.off or "enabled: false"))
        out.extend((f"{r.name}/{b.name}", b.off or "enabled: false") for b in r.backends if not b.enabled)
    return out
