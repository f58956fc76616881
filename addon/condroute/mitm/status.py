"""The status page: ``http://condroute.mitm.it/`` (option ``condroute_status_host``) and
``/api/status``, answered by the addon itself, never forwarded and never counted as traffic.

STUB: the API the addon calls (filled in by the status-page work of issue 13):

* ``Status(live, upstreams)`` — ``live`` is the addon (a reload.LiveRules: ``rules``, ``path``,
  ``generation``, ``loaded_at``, ``last_error``); ``upstreams`` its Upstreams (``health``).
* ``load(loader)`` / ``configure(updated)`` — its option; ``configure`` raises ``ValueError`` with
  a sentence for a bad value (the addon turns it into an OptionsError or a start-up error).
* ``host`` — the status host (lower case), or "" when the page is off.
* ``record(d)`` — called for every decision made (routed, answered, passthrough): hit counts and
  the recent decisions. Must stay cheap: it runs on every request.
* ``response(flow)`` — the http.Response for a request to the status host.
"""
from __future__ import annotations

from typing import Any

from mitmproxy import http

from ..engine import Decision

DEFAULT_HOST = "condroute.mitm.it"


class Status:
    def __init__(self, live: Any, upstreams: Any) -> None:
        self.live = live
        self.upstreams = upstreams
        self.host = DEFAULT_HOST

    def load(self, loader: Any) -> None:
        loader.add_option("condroute_status_host", str, DEFAULT_HOST,
                          "condroute: the host of the status page answered by the proxy (http://HOST/ and "
                          "http://HOST/api/status); empty = no status page.")

    def configure(self, updated: set[str]) -> None:
        from mitmproxy import ctx
        if "condroute_status_host" in updated:
            self.host = ctx.options.condroute_status_host.strip().lower()

    def record(self, d: Decision) -> None:
        pass

    def response(self, flow: http.HTTPFlow) -> http.Response:
        return http.Response.make(200, b"condroute status\n", {"Content-Type": "text/plain"})
