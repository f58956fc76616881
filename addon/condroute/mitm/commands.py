"""condroute's mitmproxy commands, as mitmproxy users expect of a built-in addon:

* ``condroute.explain FLOWS`` — the decision for flows (``@focus``, ``@marked``, ``@all``...) with
  the rules in force now, decided from each request as the client sent it: the table of
  ``condroute explain``, flow by flow;
* ``condroute.reload`` — load the rules file again now (a file that does not load is refused, the
  rules in force stay);
* ``condroute.status`` — the rules file, its generation, the last reload error, hits per route and
  backend, upstream health and switches, as text (the status page has the same as HTML and JSON);
* ``condroute.disable ROUTE[/BACKEND]`` / ``condroute.enable ROUTE[/BACKEND]`` — switch a route or a
  backend off or on again; a switched-off backend is skipped (``switched off``), a switched-off
  route owns no request. Switches are kept across reloads.

The methods are on the addon itself (a mixin): mitmproxy dispatches every event to every
sub-addon, which would cost each request more than these commands ever will.
"""

import logging
import time
from collections.abc import Sequence
from typing import Any

from mitmproxy import command, exceptions, flow, http

from .. import render
from ..compile.switches import UnknownSwitch, resolve, switched
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
        self.switched_off: dict[str, float] = {}     # name -> when (time.time())

    def _adapt(self, rules: Rules) -> Rules:
        return switched(rules, self.switched_off)

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
            lines.append(f"route {route['name']}: {route['hits']} hits" + (" (switched off)" if route["name"]
                                                                            in self.switched_off else ""))
            for b in route["backends"]:
                off = " (switched off)" if f"{route['name']}/{b['name']}" in self.switched_off else ""
                lines.append(f"  {b['name']}: {b['hits']}{off}")
        for u in snap["upstreams"]:
            lines.append(f"upstream {u['name']} {u['url']}: {u['state']}")
        missing = [n for n in self.switched_off if not self._has(n)]
        if missing:
            lines.append("switched off, not in the rules now: " + ", ".join(missing))
        return "\n".join(lines)

    def _has(self, name: str) -> bool:
        try:
            resolve(self.loaded, name)
            return True
        except UnknownSwitch:
            return False

    # -- switches ----------------------------------------------------------------------------------
    @command.command("condroute.disable")
    def disable(self, name: str) -> None:
        """Switch a route (ROUTE) or a backend (ROUTE/BACKEND) off: it is skipped until enabled again."""
        self._switch(name, off=True)

    @command.command("condroute.enable")
    def enable(self, name: str) -> None:
        """Switch a route or backend that condroute.disable switched off on again."""
        self._switch(name, off=False)

    def _switch(self, spec: str, off: bool) -> None:
        if off:
            try:
                name = resolve(self.loaded, spec)
            except UnknownSwitch as e:
                raise exceptions.CommandError(str(e)) from None
            self.switched_off[name] = time.time()
        else:
            name = spec.strip()
            if name not in self.switched_off:
                raise exceptions.CommandError(
                    f"{name!r} is not switched off" + (f"; switched off: {', '.join(self.switched_off)}"
                                                       if self.switched_off else ""))
            del self.switched_off[name]
        if self.loaded is not None:
            self.rules = self._adapt(self.loaded)      # one assignment: the next request sees it
        log.info(f"condroute: {name} switched {'off' if off else 'on'}")
