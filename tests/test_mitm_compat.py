"""condroute.mitm.compat, the one seam to mitmproxy's internals: each internal it relies on is
checked here with real mitmproxy objects (layers, streams, the addon manager, the proxy server),
so that a mitmproxy upgrade that changes one fails a test naming it; and a changed shape stops
condroute at import with an error naming mitmproxy's version and the internal."""
from __future__ import annotations

import asyncio
import inspect
import logging
import subprocess
import sys
import types

import pytest
from mitmproxy import hooks, http, options
from mitmproxy.addonmanager import AddonManager
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.connection import ConnectionState, Server
from mitmproxy.proxy import context, commands, events, layer
from mitmproxy.proxy.layers import http as lh
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow
from mitmproxy.version import VERSION

from condroute.mitm import compat
from condroute.mitm.addon import answered, body_dropped

from helpers import ADDON


# -- the shapes, checked at import ------------------------------------------------------------------
def test_every_internal_has_the_shape_compat_expects():
    assert compat.problems() == []
    compat.check()


@pytest.mark.parametrize("internal, breaks", [
    ("HttpStream.check_body_size", lambda mp: mp.setattr(lh.HttpStream, "check_body_size", lambda self, request: False)),
    ("HttpStream states", lambda mp: mp.delattr(lh.HttpStream, "state_stream_response_body")),
    ("Layer.__init__", lambda mp: mp.setattr(layer.Layer, "__init__", lambda self, context: None)),
    ("ErrorCode", lambda mp: (mp.setattr(compat, "ErrorCode", None), mp.setattr(compat, "VERSION", "12.0.0"))),
    ("ConnectionHandler", lambda mp: mp.setattr(compat.ConnectionHandler, "server_event", lambda self, event: None)),
    ("AddonManager._iter_hooks", lambda mp: mp.setattr(compat.AddonManager, "_iter_hooks", lambda self, a, e: iter(()))),
    ("Request.host_header", lambda mp: mp.setattr(http.Request, "host_header", None)),
    ("MessageInjected", lambda mp: mp.setattr(events.MessageInjected, "__annotations__", {})),
])
def test_a_changed_internal_is_named_with_mitmproxys_version(monkeypatch, internal, breaks):
    breaks(monkeypatch)
    with pytest.raises(compat.MitmproxyIncompatible) as e:
        compat.check()
    assert internal in str(e.value) and compat.VERSION in str(e.value), e.value


@pytest.mark.slow
def test_mitmdump_refuses_to_start_condroute_on_a_mitmproxy_whose_internals_changed():
    """Loud, not half-working: the script does not load, and mitmdump exits with status 1."""
    code = ("from mitmproxy.proxy.layers import http\n"
            "del http.HttpStream.state_consume_response_body\n"
            "from mitmproxy.tools.main import mitmdump\n"
            f"mitmdump(['-s', {str(ADDON)!r}, '-p', '0', '--listen-host', '127.0.0.1'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert f"condroute does not work with mitmproxy {VERSION}" in out
    assert "mitmproxy.proxy.layers.http.HttpStream states: expected" in out


# -- real layers, driven without a network -----------------------------------------------------------
def proxy_options() -> options.Options:
    opts = options.Options()
    Proxyserver().load(opts)            # the proxy core's options (stream_large_bodies, ...)
    return opts


def open_client() -> tuple[context.Context, object]:
    client = tflow.tclient_conn()
    client.proxy_mode = ProxyMode.parse("regular")
    client.state = ConnectionState.OPEN
    return context.Context(client, proxy_options()), client


def drive(root: layer.Layer, *evs: events.Event, hooks_done: bool = True) -> list[commands.Command]:
    """Feed events to a layer as mitmproxy's connection handler would, completing every blocking
    command (hooks unless ``hooks_done`` is False, server connections: opened)."""
    out: list[commands.Command] = []
    pending = list(evs)
    while pending:
        for cmd in root.handle_event(pending.pop(0)):
            out.append(cmd)
            if connect(cmd, pending):
                continue
            if isinstance(cmd, commands.StartHook) and cmd.blocking and hooks_done:
                pending.append(events.HookCompleted(cmd, None))
    return out


def connect(cmd: commands.Command, pending: list[events.Event]) -> bool:
    """Complete a command asking for a server connection (opened at once); False for any other."""
    if isinstance(cmd, lh.GetHttpConnection):
        srv = Server(address=cmd.address)
        srv.state, srv.timestamp_start = ConnectionState.OPEN, 1
        pending.append(lh.GetHttpConnectionCompleted(cmd, (srv, None)))
        return True
    if isinstance(cmd, commands.OpenConnection):
        cmd.connection.state = ConnectionState.OPEN
        pending.append(events.OpenConnectionCompleted(cmd, None))
        return True
    return False


def names(cmds: list[commands.Command]) -> list[str]:
    return [type(c).__name__ for c in cmds]


def sent_to_client(cmds: list[commands.Command], client) -> bytes:
    return b"".join(c.data for c in cmds if isinstance(c, commands.SendData) and c.connection is client)


def waiting_request(absolute: bool = True) -> tuple[lh.HttpLayer, http.HTTPFlow, object]:
    """An HTTP layer whose one request went upstream and waits for the response headers."""
    ctx, client = open_client()
    hl = lh.HttpLayer(ctx, lh.HTTPMode.regular)
    drive(hl, events.Start(),
          events.DataReceived(client, b"GET http://upstream.example/x HTTP/1.1\r\nHost: upstream.example\r\n\r\n"))
    (stream,) = hl.streams.values()
    return hl, stream.flow, client


class Handler:
    """mitmproxy's ConnectionHandler as FlowStream uses it: server_event feeds the root layer."""

    def __init__(self, root: layer.Layer, hooks_done: bool = False):
        self.root, self.commands, self.transports, self.closed = root, [], {}, []
        self.hooks_done = hooks_done

    async def server_event(self, event: events.Event) -> None:
        self.commands += drive(self.root, event, hooks_done=self.hooks_done)

    def close_connection(self, connection, half_close: bool = False) -> None:
        self.closed.append(connection)


# -- HttpStream.check_body_size: answered request bodies stay local ------------------------------------
@pytest.mark.parametrize("answer", [True, False])
def test_a_buffered_request_body_beyond_stream_large_bodies_is_dropped_only_when_answered(answer):
    """mitmproxy asks check_body_size for every piece of a buffered request body and starts
    streaming it to the destination past stream_large_bodies; for a flow condroute answers the
    wrapper drops what was buffered instead."""
    compat.keep_answered_bodies_local(answered, body_dropped)
    compat.keep_answered_bodies_local(answered, body_dropped)          # once per process
    assert lh.HttpStream.check_body_size._condroute
    ctx, _ = open_client()
    ctx.server = tflow.tserver_conn()
    ctx.options.update(stream_large_bodies="10")
    stream = lh.HttpStream(ctx, 1)
    f = tflow.tflow()
    f.request.headers.pop("content-length", None)
    if answer:
        f.metadata["condroute"] = {"answer": {"status": 403, "body": "no", "headers": {}}}
    stream.flow = f
    stream.client_state = stream.state_consume_request_body
    cmds = []
    for piece in (b"a" * 8, b"b" * 8, b"c" * 8):
        cmds += list(stream.handle_event(lh.RequestData(1, piece)))
    if answer:
        assert cmds == [] and not f.request.stream and f.metadata["condroute"]["body_dropped"] is True
        assert bytes(stream.request_body_buf) == b"c" * 8              # what came after the last drop
    else:
        assert "GetHttpConnection" in names(cmds) and f.request.stream is True   # mitmproxy streams it


# -- the addon manager: hooks looked up on every event ---------------------------------------------------
def test_a_hook_is_looked_up_on_every_event_and_none_means_no_handler():
    calls = []

    class A:
        def responseheaders(self, flow):
            calls.append(flow)

    a, f = A(), tflow.tflow(resp=True)
    with taddons.context(a) as tctx:
        invoke = tctx.master.addons.invoke_addon_sync
        compat.show_hook(a, "responseheaders", False)
        assert a.responseheaders is None
        invoke(a, lh.HttpResponseHeadersHook(f))
        assert calls == []
        compat.show_hook(a, "responseheaders", True)
        invoke(a, lh.HttpResponseHeadersHook(f))
        assert calls == [f]
        compat.show_hook(a, "responseheaders", True)                     # showing twice: harmless
        invoke(a, lh.HttpResponseHeadersHook(f))
        assert calls == [f, f]


def test_a_script_module_answering_every_hook_name_with_none_gets_no_call():
    mod = types.ModuleType("script")
    compat.answer_every_hook_name(vars(mod))
    assert set(hooks.all_hooks) - compat.DEPRECATED_HOOKS <= set(vars(mod)) and mod.requestheaders is None
    assert not compat.DEPRECATED_HOOKS & set(vars(mod))
    mod.request = lambda flow: flow.marked.append("x")          # a real handler is not overwritten
    compat.answer_every_hook_name(vars(mod))
    f = tflow.tflow()
    f.marked = []
    with taddons.context() as tctx:
        for hook in (lh.HttpRequestHeadersHook(f), lh.HttpRequestHook(f), lh.HttpResponseHook(f)):
            tctx.master.addons.invoke_addon_sync(mod, hook)
    assert f.marked == ["x"]


def test_loading_the_script_warns_about_no_deprecated_hook(caplog):
    # issue 13: "The add_log event has been deprecated..." at every start came from condroute itself.
    # The names mitmproxy warns about are the keys of a dict inside AddonManager.register:
    assert all(f'"{n}"' in inspect.getsource(AddonManager.register) for n in compat.DEPRECATED_HOOKS)
    with caplog.at_level(logging.INFO), taddons.context() as tctx:
        sc = tctx.script(str(ADDON))
        assert type(sc.addons[0]).__name__ == "ConditionalRouting"
        assert "deprecated" not in caplog.text.lower()
        control = types.ModuleType("control")          # the warning is seen when it is given
        control.add_log = None
        tctx.master.addons.register(control)
        assert "The add_log event has been deprecated" in caplog.text


# -- Request.host_header, re-done on the request data -----------------------------------------------------
@pytest.mark.parametrize("fields", [(), ((b"Host", b"a.example"),), ((b"host", b"a"), (b"X", b"1"), (b"HOST", b"b")),
                                    ((b"X", b"1"),)])
@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/2.0"])
def test_set_host_header_does_what_the_setter_does(fields, version):
    def make() -> http.Request:
        return http.Request("origin.example", 80, b"GET", b"http", b"origin.example", b"/", version,
                            http.Headers(fields), b"", None, 0, 0)

    ours, theirs = make(), make()
    compat.set_host_header(ours.data, version == b"HTTP/2.0", b"[::1]:9001")
    theirs.host_header = "[::1]:9001"
    assert (ours.data.headers.fields, ours.data.authority) == (theirs.data.headers.fields, theirs.data.authority)
    if len(fields) == 1 and fields[0][0] == b"Host":
        known = make()
        compat.set_host_header(known.data, version == b"HTTP/2.0", b"[::1]:9001", host_at=0)
        assert known.data.headers.fields == theirs.data.headers.fields


# -- the running proxy's connections ------------------------------------------------------------------------
async def test_the_proxy_keeps_its_connection_handlers_by_client_connection_id():
    """Proxyserver.connections, as its own inject_event reads it."""
    ps = Proxyserver()
    f = tflow.tflow()
    assert compat.connection_handler(f, ps) is None and compat.stream_of(f, ps) is None
    with pytest.raises(ValueError):
        ps.inject_event(compat._Headers(f, 1, None))                 # not a live connection
    got = []

    class H:
        layer = None

        async def server_event(self, event):
            got.append(event)

    ps.connections[f.client_conn.id] = H()
    assert isinstance(compat.connection_handler(f, ps), H)
    assert compat.stream_of(f, ps) is None                          # no layer holds its stream
    ps.inject_event(ev := compat._Headers(f, 1, None))
    await asyncio.sleep(0)
    assert got == [ev]


def test_find_stream_walks_the_proxy_mode_layer_next_layer_and_http_layer():
    ctx, client = open_client()
    root = modes.HttpProxy(ctx)
    drive(root, events.Start())
    nl = root._handle_event.__self__                               # HttpProxy hands events to its child
    assert isinstance(nl, layer.NextLayer)
    hl = nl.layer = lh.HttpLayer(ctx, lh.HTTPMode.regular)
    drive(nl, events.DataReceived(client, b"GET http://upstream.example/ HTTP/1.1\r\nHost: upstream.example\r\n\r\n"))
    (stream,) = hl.streams.values()
    assert compat.find_stream(root, stream.flow) == [(hl, stream)]
    assert compat.find_stream(root, tflow.tflow()) is None


# -- the timeout answer, through real HTTP layers --------------------------------------------------------------
async def test_a_504_enters_a_stream_waiting_for_response_headers_as_if_the_upstream_sent_it():
    hl, f, client = waiting_request()
    handler = Handler(hl)
    fs = compat.FlowStream(f, handler, compat.find_stream(hl, f))
    assert (fs.state, fs.paused, fs.routable()) == ("headers", False, True)
    answer = http.Response.make(504, b"late", {"content-type": "text/plain"})
    await fs.answer(answer, b"late")
    assert names(handler.commands) == ["HttpResponseHeadersHook"] and fs.paused and f.response is answer
    out = drive(hl, events.HookCompleted(handler.commands[-1], None))     # responseheaders done: body, end
    assert "HttpResponseHook" in names(out)
    sent = sent_to_client(out, client)
    assert sent.startswith(b"HTTP/1.1 504 ") and sent.endswith(b"\r\n\r\nlate")
    handler.transports[f.server_conn] = object()
    fs.close_upstream()
    assert handler.closed == [f.server_conn]


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_protocol_error_ends_a_stalled_body_with_504_or_a_cut(streamed):
    hl, f, client = waiting_request()
    server = f.server_conn
    pending: list[events.Event] = [events.DataReceived(server, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx")]
    while pending:                                  # the headers and 2 of 100 bytes come; then nothing
        for cmd in hl.handle_event(pending.pop(0)):
            if isinstance(cmd, commands.StartHook) and cmd.blocking:
                if isinstance(cmd, lh.HttpResponseHeadersHook) and streamed:
                    f.response.stream = True
                pending.append(events.HookCompleted(cmd, None))
    fs = compat.FlowStream(f, Handler(hl, hooks_done=True), compat.find_stream(hl, f))
    assert fs.state == ("streaming" if streamed else "buffering")
    assert fs.buffered == (0 if streamed else 2) and fs.routable()
    await fs.fail("stalled", sent=streamed)
    cmds = fs.handler.commands
    if streamed:                                 # the headers went out: the client connection is cut
        assert any(isinstance(c, commands.CloseConnection) and c.connection is client for c in cmds), names(cmds)
        assert not sent_to_client(cmds, client).startswith(b"HTTP/1.1 504")
    else:                                        # nothing sent yet: mitmproxy answers 504
        assert sent_to_client(cmds, client).startswith(b"HTTP/1.1 504 "), names(cmds)


def test_routes_to_refuses_a_path_whose_http_layer_holds_another_stream():
    hl, f, _ = waiting_request()
    path = compat.find_stream(hl, f)
    assert compat.routes_to(path, f)
    other = lh.HttpStream(hl.context, 99)
    assert not compat.routes_to([(hl, other)], f)


def test_the_timeout_codes():
    """mitmproxy 11 takes the status itself; 12 an ErrorCode (a 504 stand-in while nothing was sent)."""
    code, sent = compat.timeout_code(sent=False), compat.timeout_code(sent=True)
    assert (code if isinstance(code, int) else code.http_status_code()) == 504
    if compat.ErrorCode is None:
        assert sent == 502
    else:
        from mitmproxy.proxy.layers.http import _http2
        assert sent is compat.ErrorCode.GENERIC_SERVER_ERROR
        # an HTTP/2 stream whose headers went out is reset by matching the code against ErrorCode members
        assert "ErrorCode.GENERIC_SERVER_ERROR" in inspect.getsource(_http2.Http2Connection)
