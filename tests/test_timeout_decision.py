"""A response timeout is recorded in the request's decision like every other reason a backend did
not serve: a trail entry (in the metadata's ``attempts`` and ``skipped``), the decision's ``reason``,
status 504 when condroute answers; and the log line, the flow's comment and the X-Condroute header
say it. Driven in process: a real mitmproxy HTTP layer (no sockets) inside a taddons context, whose
Proxyserver holds the connection, so the timer's whole path runs (condroute.mitm.upstreams and
condroute.mitm.compat)."""
from __future__ import annotations

import asyncio
import inspect
import logging

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers import http as lh
from mitmproxy.test import taddons

from condroute.engine import decide
from condroute.mitm.addon import ConditionalRouting
from condroute.mitm.upstreams import record_timeout, timeout_reason
from condroute.request import RequestView
from condroute.rules import load_rules_text

from test_mitm_compat import Handler, connect, names, open_client, sent_to_client

RULES = """
version: 1
routes:
  - name: api
    backends:
      - {name: slow, when: {path: /slow}, upstream: "http://127.0.0.1:9", timeout: 0.4}
      - {name: rest, fallback: true, upstream: "http://127.0.0.1:9"}
"""


def test_the_reason_goes_into_the_decision_like_a_skip_reason():
    d = decide(load_rules_text(RULES, "r.yaml"), RequestView.from_url("http://a.example/slow"))
    assert (d.outcome, d.backend, d.timeout) == ("routed", "slow", 0.4)
    held = list(d.trail)
    record_timeout(d, timeout_reason("headers", 0.4), sent=False)
    assert d.trail == [*held, ("slow", False, "no response headers within 0.4s", False)]
    assert (d.reason, d.status) == ("no response headers within 0.4s", 504)
    data = d.to_dict()
    assert data["skipped"][-1] == {"backend": "slow", "reason": "no response headers within 0.4s"}
    assert data["attempts"][-1]["held"] is False and data["reason"] == "no response headers within 0.4s"
    cut = decide(load_rules_text(RULES, "r.yaml"), RequestView.from_url("http://a.example/slow"))
    record_timeout(cut, timeout_reason("body", 0.4), sent=True)            # the response had started
    assert (cut.reason, cut.status) == ("the response body stalled for 0.4s", None)


async def drive_addon(addon: ConditionalRouting, root, *evs: events.Event) -> list[commands.Command]:
    """Feed events to the layer as mitmproxy would, the addon's hooks called as mitmdump calls them."""
    out: list[commands.Command] = []
    pending = list(evs)
    while pending:
        for cmd in root.handle_event(pending.pop(0)):
            out.append(cmd)
            if connect(cmd, pending):
                continue
            if isinstance(cmd, commands.StartHook) and cmd.blocking:
                handler = getattr(addon, cmd.name, None)
                if handler:
                    got = handler(*cmd.args())
                    if inspect.isawaitable(got):
                        await got
                pending.append(events.HookCompleted(cmd, None))
    return out


async def test_a_timed_out_request_says_why_in_its_decision_comment_header_and_log(tmp_path, caplog):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    addon, ps = ConditionalRouting(), Proxyserver()
    with taddons.context(ps, addon) as tctx:
        tctx.configure(addon, condroute_rules=str(rules), condroute_debug_header=True)

        async def reachable(host: str, port: int, timeout: float) -> None:
            return None
        addon.upstreams.probe = reachable
        ctx, client = open_client()
        hl = lh.HttpLayer(ctx, lh.HTTPMode.regular)
        handler = ps.connections[client.id] = Handler(hl)       # the running proxy's connection
        handler.layer = hl
        await drive_addon(addon, hl, events.Start(),
                          events.DataReceived(client, b"GET http://a.example/slow HTTP/1.1\r\nHost: a.example\r\n\r\n"))
        (stream,) = hl.streams.values()
        f = stream.flow
        assert f.request.port == 9 and f.metadata["condroute"]["backend"] == "slow"
        handler.transports[f.server_conn] = object()
        timer = addon.upstreams.timers[f.id]                    # armed by the request hook
        caplog.set_level(logging.INFO, logger="condroute")
        timer._run()                                            # it fires now: the headers never came
        timer.cancel()                                          # (and not again)
        await asyncio.gather(*addon.upstreams._tasks)
        assert names(handler.commands) == ["HttpResponseHeadersHook"] and f.response.status_code == 504
        assert handler.closed == [f.server_conn]                  # the late answer is never read
        addon.responseheaders(f)                                # the injected headers' hook, as mitmproxy calls it
        out = await drive_addon(addon, hl, events.HookCompleted(handler.commands[-1], None))
        assert sent_to_client(out, client).startswith(b"HTTP/1.1 504 Gateway Timeout")

    reason = "no response headers within 0.4s"
    md = f.metadata["condroute"]
    assert (md["timed_out"], md["timeout_reason"], md["reason"], md["status"]) == (0.4, reason, reason, 504)
    assert md["skipped"] == [{"backend": "slow", "reason": reason}]
    assert md["attempts"][-1] == {"backend": "slow", "held": False, "reason": reason, "fallback": False}
    assert md["header"] == f.response.headers["X-Condroute"] == "api/slow -> http://127.0.0.1:9 (timeout 0.4s: 504)"
    assert f.comment.endswith(" | upstream http://127.0.0.1:9 did not respond within 0.4s: answering 504")
    assert "api/slow: upstream http://127.0.0.1:9 did not respond within 0.4s, answering 504" in caplog.text
    assert b"did not respond within 0.4s\n  route 'api', backend 'slow'\n" in f.response.content


@pytest.mark.parametrize("phase, text", [("headers", "no response headers within 2.5s"),
                                         ("body", "the response body stalled for 2.5s")])
def test_timeout_reasons(phase, text):
    assert timeout_reason(phase, 2.5) == text


def test_the_flow_keeps_no_decision_alive():
    """The decisions kept for timeouts are held by the flow, weakly: a finished flow takes its along."""
    import gc

    from mitmproxy.test import tflow

    addon = ConditionalRouting()
    f = tflow.tflow()
    d = decide(load_rules_text(RULES, "r.yaml"), RequestView.from_url("http://a.example/slow"))
    addon.upstreams.decisions[f] = d
    del f
    gc.collect()
    assert len(addon.upstreams.decisions) == 0
