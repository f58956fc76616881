"""Every use of mitmproxy's internals, in one place: the one seam between condroute and mitmproxy.

The rest of condroute.mitm uses mitmproxy's public API only (``mitmproxy.http`` flows and their
``data``, ``ctx`` and options, ``mode_specs``, hook signatures). What that API cannot do is done here,
behind plain functions, each saying what it relies on and why:

* :func:`keep_answered_bodies_local` wraps ``HttpStream.check_body_size`` (a request body that
  condroute answers itself must never be streamed to the host it was kept from);
* :func:`show_hook` and :func:`answer_every_hook_name` lean on how the addon manager looks up hooks
  (per-request costs measured with callgrind);
* :func:`deferred_options`, :func:`set_deferred` and :func:`drop_deferred` read and amend the
  ``--set`` values mitmproxy keeps for options not registered yet (mitm/options.py says why);
* :func:`set_host_header` does what ``Request.host_header = value`` does, on the request data;
* :func:`connection_handler`, :func:`stream_of` and :class:`FlowStream` find a flow's HTTP stream
  among the proxy's layers and feed it a 504 or a protocol error when an upstream times out (no hook
  can make mitmproxy answer a request it is waiting on).

At import, :func:`check` looks at the shape of every internal used here (that it exists, that its
``__init__`` still sets the attributes read, its parameters, the events it handles) and raises
:class:`MitmproxyIncompatible` naming mitmproxy's version and the internal: condroute refuses to
run half-working on a mitmproxy it does not know (mitmdump then exits with status 1). The shape is
cheap to look at; how each internal behaves is checked with real mitmproxy objects in
tests/test_mitm_compat.py, and end to end in the tests that start mitmdump.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from mitmproxy import hooks, http, optmanager
from mitmproxy.addonmanager import AddonManager
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import context, events, layer
from mitmproxy.proxy.layers import http as layers_http
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.server import ConnectionHandler
from mitmproxy.utils import human
from mitmproxy.version import VERSION

HttpLayer = layers_http.HttpLayer
HttpStream = layers_http.HttpStream
Http1Connection = layers_http.Http1Connection
ResponseHeaders = layers_http.ResponseHeaders
ResponseData = layers_http.ResponseData
ResponseEndOfMessage = layers_http.ResponseEndOfMessage
ResponseProtocolError = layers_http.ResponseProtocolError
try:  # mitmproxy 12 types the error code of a ResponseProtocolError; 11 takes the status code itself
    from mitmproxy.proxy.layers.http._events import ErrorCode
except ImportError:
    ErrorCode = None  # type: ignore[assignment,misc]


class MitmproxyIncompatible(RuntimeError):
    """An internal of mitmproxy that condroute relies on is not what it was."""


# -- the shape of every internal used here, checked at import ----------------------------------------
def _sets(fn: Any, *names: str) -> bool:
    """Does function ``fn`` (an ``__init__``) assign or read these attribute names? (Its code object
    lists every attribute name it uses: cheap, and needs no source.)"""
    code = getattr(inspect.unwrap(fn), "__code__", None)
    return code is not None and set(names) <= set(code.co_names)


def _annotated(cls: type, name: str) -> bool:
    return any(name in getattr(c, "__annotations__", {}) for c in cls.__mro__)


def _params(fn: Any) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _major() -> int:
    try:
        return int(VERSION.split(".")[0])
    except ValueError:  # pragma: no cover - a development version
        return 0


# (internal, what condroute expects of it, the check): each row names one internal
SHAPES: list[tuple[str, str, Callable[[], bool]]] = [
    ("mitmproxy.proxy.layers.http.HttpStream.check_body_size",
     "a generator method (self, request), wrapped to keep answered request bodies local",
     lambda: inspect.isgeneratorfunction(HttpStream.check_body_size)
     and _params(HttpStream.check_body_size) == ["self", "request"]),
    ("mitmproxy.proxy.layers.http.HttpStream.__init__",
     "sets request_body_buf, response_body_buf and server_state; the stream has flow and stream_id",
     lambda: _sets(HttpStream.__init__, "request_body_buf", "response_body_buf", "server_state")
     and _annotated(HttpStream, "flow") and _annotated(HttpStream, "stream_id")),
    ("mitmproxy.proxy.layers.http.HttpStream states",
     "state_wait_for_response_headers, state_consume_response_body, state_stream_response_body",
     lambda: all(callable(getattr(HttpStream, n, None)) for n in
                 ("state_wait_for_response_headers", "state_consume_response_body", "state_stream_response_body"))),
    ("mitmproxy.proxy.layers.http.HttpStream.child_layer",
     "the layer of a CONNECT tunnel's stream (walked to find a flow's stream)",
     lambda: _annotated(HttpStream, "child_layer")),
    ("mitmproxy.proxy.layer.Layer.__init__",
     "sets context, _paused and _paused_event_queue (events queued while a hook runs)",
     lambda: _sets(layer.Layer.__init__, "context", "_paused", "_paused_event_queue")),
    ("mitmproxy.proxy.layer.NextLayer.layer", "the layer NextLayer hands events to",
     lambda: _annotated(layer.NextLayer, "layer")),
    ("mitmproxy.proxy.context.Context.layers", "the list of a context's layers",
     lambda: _annotated(context.Context, "layers")),
    ("mitmproxy.proxy.layers.modes.HttpProxy._handle_event",
     "replaced by the bound handle_event of its child layer (walked to find a flow's stream)",
     lambda: _sets(modes.HttpProxy._handle_event, "_handle_event", "handle_event")),
    ("mitmproxy.proxy.layers.http.HttpLayer",
     "__init__ sets streams and connections; _handle_event routes a MessageInjected to a stream",
     lambda: _sets(HttpLayer.__init__, "streams", "connections")
     and _sets(HttpLayer._handle_event, "MessageInjected", "streams", "layers", "stream_id")),
    ("mitmproxy.proxy.layers.http.Http1Connection.stream_id", "the stream an HTTP/1 connection serves",
     lambda: _annotated(Http1Connection, "stream_id")),
    ("mitmproxy.proxy.events.MessageInjected", "an event with flow and message",
     lambda: {"flow", "message"} <= set(getattr(events.MessageInjected, "__annotations__", {}))),
    ("mitmproxy.proxy.layers.http response events",
     "ResponseHeaders(stream_id, response, end_stream), ResponseData(stream_id, data), "
     "ResponseEndOfMessage(stream_id), ResponseProtocolError(stream_id, message, code)",
     lambda: {"stream_id", "response", "end_stream"} <= set(_params(ResponseHeaders))
     and {"stream_id", "data"} <= set(_params(ResponseData))
     and {"stream_id"} <= set(_params(ResponseEndOfMessage))
     and {"stream_id", "message", "code"} <= set(_params(ResponseProtocolError))),
    ("mitmproxy.proxy.layers.http._events.ErrorCode",
     "GENERIC_SERVER_ERROR (mitmproxy 12 and later; 11 takes a status code)",
     lambda: (ErrorCode is None and _major() < 12) or hasattr(ErrorCode, "GENERIC_SERVER_ERROR")),
    ("mitmproxy.proxy.server.ConnectionHandler",
     "async server_event(event), close_connection(connection, ...), transports set by __init__",
     lambda: inspect.iscoroutinefunction(ConnectionHandler.server_event)
     and _params(ConnectionHandler.close_connection)[:2] == ["self", "connection"]
     and _sets(ConnectionHandler.__init__, "transports")),
    ("mitmproxy.addons.proxyserver.Proxyserver.connections",
     "the connection handlers of the running proxy, by client connection id",
     lambda: _sets(Proxyserver.__init__, "connections")),
    ("mitmproxy.addonmanager.AddonManager._iter_hooks",
     "looks every hook up with getattr on each event, a falsy value meaning none",
     lambda: _sets(AddonManager._iter_hooks, "getattr")),
    ("mitmproxy.hooks.all_hooks", "a dict of every hook name",
     lambda: isinstance(hooks.all_hooks, dict) and "requestheaders" in hooks.all_hooks),
    ("mitmproxy.http.Request.host_header", "a property with a setter (re-done by set_host_header)",
     lambda: isinstance(http.Request.__dict__.get("host_header"), property)
     and http.Request.__dict__["host_header"].fset is not None),
    ("mitmproxy.http.RequestData.authority, Headers.fields",
     "request data with authority and headers; headers keep their fields as a tuple of byte pairs",
     lambda: _annotated(http.RequestData, "authority") and _annotated(http.RequestData, "headers")
     and _annotated(http.Headers, "fields")),
    ("mitmproxy.optmanager.OptManager.deferred",
     "a dict set by __init__ of option name to value, or to _UnconvertedStrings(val: list of the --set texts), "
     "converted by process_deferred",
     lambda: _sets(optmanager.OptManager.__init__, "deferred")
     and _sets(optmanager.OptManager.process_deferred, "deferred", "_UnconvertedStrings")
     and "val" in getattr(optmanager._UnconvertedStrings, "__dataclass_fields__", {})),
    ("mitmproxy.utils.human.parse_size", "a size option as a number of bytes",
     lambda: callable(getattr(human, "parse_size", None))),
]


def problems() -> list[str]:
    """Each internal whose shape is not what condroute expects, said in one line."""
    out = []
    for name, expected, ok in SHAPES:
        try:
            good = bool(ok())
        except Exception as e:  # noqa: BLE001 - a missing attribute is a changed internal
            good, expected = False, f"{expected} ({type(e).__name__}: {e})"
        if not good:
            out.append(f"{name}: expected {expected}")
    return out


def check() -> None:
    """Raise MitmproxyIncompatible, naming mitmproxy's version and each internal that changed."""
    bad = problems()
    if bad:
        raise MitmproxyIncompatible(
            f"condroute does not work with mitmproxy {VERSION}: internals it relies on have changed "
            f"(see condroute/mitm/compat.py):\n  " + "\n  ".join(bad))


check()


# -- request bodies that condroute answers itself ------------------------------------------------------
def keep_answered_bodies_local(answered: Callable[[http.HTTPFlow], bool],
                               dropped: Callable[[http.HTTPFlow], None]) -> None:
    """Never stream the body of a request that condroute answers itself (respond, on_no_match: error).

    With ``stream_large_bodies`` set, mitmproxy (11 and 12) starts streaming a request body to the
    request's destination as soon as more than that many bytes have arrived, even when an addon
    cleared ``flow.request.stream`` in ``requestheaders``: a blocked request's body would reach the
    very host it was blocked from, and that host's response would replace the answer. There is no
    hook for this, so the proxy core's size check (``HttpStream.check_body_size``, a generator run
    for each piece of body) is wrapped: for a flow that ``answered(flow)``, a buffered request body
    (``HttpStream.request_body_buf``) beyond the limit is dropped instead, and ``dropped(flow)`` is
    told. Once per process (idempotent): the callbacks must not depend on an addon instance."""
    orig = HttpStream.check_body_size
    if getattr(orig, "_condroute", False):
        return

    def check_body_size(self, request: bool):
        f = getattr(self, "flow", None)
        buf = self.request_body_buf if request and f is not None and answered(f) else None
        if buf:
            limit = human.parse_size(self.context.options.stream_large_bodies)
            if limit is not None and len(buf) > limit:
                buf.clear()
                dropped(f)
                return False
        return (yield from orig(self, request))

    check_body_size._condroute = True  # type: ignore[attr-defined]
    HttpStream.check_body_size = check_body_size  # type: ignore[method-assign]


# -- how mitmproxy looks up hooks ------------------------------------------------------------------------
def show_hook(addon: Any, name: str, show: bool) -> None:
    """Let mitmproxy call ``addon``'s method ``name`` (show) or not (hide), from now on.

    mitmproxy's addon manager (``_iter_hooks``) dispatches every hook an addon has on every event,
    and looks each one up with ``getattr`` every time, a falsy value meaning "no handler": an
    instance attribute of None hides the class's method, and removing it shows the method again."""
    if show:
        addon.__dict__.pop(name, None)
    else:
        setattr(addon, name, None)


def answer_every_hook_name(namespace: dict[str, Any]) -> None:
    """Give a script module (its ``globals()``) an attribute of None for every hook name it has none for.

    mitmproxy asks the script module, like every addon, for a handler of each event it dispatches:
    eight per request (requestheaders, request, responseheaders, response, each followed by update).
    On Python 3.11 a module attribute that is missing costs a formatted AttributeError every time
    (1.1 µs here; 0.17 µs on 3.12), about 0.7% of mitmdump's own work per request (callgrind). A
    module attribute that is None means "no handler" at no such cost (``_iter_hooks``: getattr with a
    default, then a truth test). Relies on ``mitmproxy.hooks.all_hooks``, every hook name.

    Deprecated hook names (DEPRECATED_HOOKS) are left out: mitmproxy warns about every addon that has
    an attribute of that name, whatever its value (``AddonManager.register``), and they are not
    dispatched per request."""
    for name in list(hooks.all_hooks):
        if name not in DEPRECATED_HOOKS:
            namespace.setdefault(name, None)


# hook names that make mitmproxy's AddonManager.register warn about the addon having them
DEPRECATED_HOOKS = frozenset({"add_log"})


# -- option values given before the option exists ------------------------------------------------------
def deferred_options(options: Any) -> list[tuple[str, list[str] | None]]:
    """The options mitmproxy keeps values for until someone registers them (``OptManager.deferred``):
    (name, the texts given with --set, one per --set) or (name, None) for a value that is not text
    (from config.yaml)."""
    return [(name, list(v.val) if isinstance(v, optmanager._UnconvertedStrings) else None)
            for name, v in list(options.deferred.items())]


def set_deferred(options: Any, name: str, text: str) -> None:
    """Replace the --set text kept for ``name`` (to be converted by mitmproxy as usual)."""
    options.deferred[name] = optmanager._UnconvertedStrings([text])


def drop_deferred(options: Any, name: str) -> None:
    options.deferred.pop(name, None)


# -- the Host header ----------------------------------------------------------------------------------
def set_host_header(data: http.RequestData, h2: bool, value: bytes, host_at: int | None = None) -> None:
    """What ``Request.host_header = value`` does, on the request data: for HTTP/2 and 3 :authority
    is set and a Host header only replaced; for HTTP/1 the first Host header is replaced (its name
    kept as written), others removed, and one added when there was none. ``host_at``: the index of
    the only Host field, when that is known.

    The public setter validates and re-encodes the value and rebuilds the headers through the
    multidict on every call; the values written here come from upstream URLs checked when the rules
    were loaded, or from mitmproxy's own target. It must do exactly what the setter does:
    tests/test_flowview.py compares the two on random headers."""
    if h2:
        data.authority = value
    fields = data.headers.fields
    if host_at is not None:
        data.headers.fields = (*fields[:host_at], (fields[host_at][0], value), *fields[host_at + 1:])
        return
    out = []
    found = False
    for f in fields:
        k = f[0]
        if len(k) == 4 and k.lower() == b"host":
            if not found:
                out.append((k, value))
                found = True
        else:
            out.append(f)
    if not found:
        if h2:
            return
        out.append((b"Host", value))
    data.headers.fields = tuple(out)


# -- a flow's HTTP stream, for the timeout answer ---------------------------------------------------------
def connection_handler(flow: http.HTTPFlow, proxyserver: Any) -> Any:
    """The running proxy's handler of ``flow``'s client connection (``Proxyserver.connections``),
    or None: a replayed flow, a test flow, a connection that has closed."""
    conns = getattr(proxyserver, "connections", None)
    return conns.get(flow.client_conn.id) if conns else None


class _GatewayTimeoutCode:
    """For mitmproxy 12, whose ErrorCode has no 504: answers its one question, the status code.
    Only used while nothing has been sent to the client (mitmproxy 12 resets an HTTP/2 stream whose
    headers went out by matching the code against its ErrorCode members)."""

    def http_status_code(self) -> int:
        return 504


def timeout_code(sent: bool) -> Any:
    """The code of the protocol error that ends a timed-out stream: a 504 while nothing has been
    sent to the client; once something has, the status no longer matters (the connection is cut
    or the stream reset), and a plain server error is what mitmproxy 12 knows how to reset."""
    if ErrorCode is None:
        return 502 if sent else 504
    return ErrorCode.GENERIC_SERVER_ERROR if sent else _GatewayTimeoutCode()


# Events injected into the flow's HTTP stream. mitmproxy's HttpLayer routes a MessageInjected to the
# stream of the flow's server connection; the stream then handles it as the response event it also is.
# (Only headers and errors: a CONNECT stream in between turns response data and end-of-message events
# into its tunnel's connection events, so those are queued on the stream itself; see FlowStream.answer.)
class _Headers(ResponseHeaders, events.MessageInjected):  # type: ignore[misc]
    def __init__(self, flow: http.HTTPFlow, stream_id: int, response: http.Response):
        self.flow, self.message, self.stream_id, self.response, self.end_stream = flow, None, stream_id, response, False


class _Error(ResponseProtocolError, events.MessageInjected):  # type: ignore[misc]
    def __init__(self, flow: http.HTTPFlow, stream_id: int, message: str, code: Any):
        self.flow, self.stream_id, self.message, self.code = flow, stream_id, message, code


def find_stream(layer: Any, flow: http.HTTPFlow, depth: int = 0) -> list[tuple[Any, Any]] | None:
    """The (HttpLayer, HttpStream) pairs that lead to the stream of ``flow``, outermost first (more
    than one through CONNECT tunnels), found by looking (only looking) through the connection's
    layers: HTTP layers keep their streams in ``streams``; layers nest through ``layer`` (NextLayer),
    ``child_layer``, or a ``_handle_event`` bound to the child (the proxy-mode layers); CONNECT
    tunnels through their stream's ``child_layer``."""
    if layer is None or depth > 32:
        return None
    streams = getattr(layer, "streams", None)
    if isinstance(streams, dict):
        for st in list(streams.values()):
            if getattr(st, "flow", None) is flow:
                return [(layer, st)]
            found = find_stream(getattr(st, "child_layer", None), flow, depth + 1)
            if found is not None:
                return [(layer, st), *found]
    children = [getattr(layer, "layer", None), getattr(layer, "child_layer", None),
                getattr(getattr(layer, "_handle_event", None), "__self__", None)]   # HttpProxy delegates so
    for child in children:
        if child is not None and child is not layer:
            found = find_stream(child, flow, depth + 1)
            if found is not None:
                return found
    return None


def routes_to(path: list[tuple[Any, Any]], flow: http.HTTPFlow) -> bool:
    """Will mitmproxy route a MessageInjected of ``flow`` along ``path``? Each HttpLayer takes the
    layer of the flow's server connection (else, for a tunnel, of its client connection) and, unless
    that is a stream itself, the stream id of the HTTP/1 layer at the end of its context's layers
    (an HTTP/2 or HTTP/3 layer there would fail an assertion inside mitmproxy)."""
    for http_layer, stream in path:
        conns = getattr(http_layer, "connections", {})
        conn = conns.get(flow.server_conn if flow.server_conn in conns else flow.client_conn)
        if not isinstance(conn, HttpStream):
            conn = conn.context.layers[-1] if conn is not None and conn.context.layers else None
            if not isinstance(conn, Http1Connection):
                return False
        if conn.stream_id != stream.stream_id or http_layer.streams.get(conn.stream_id) is not stream:
            return False
    return True


# what a stream is doing on its server side: HttpStream.server_state's method name -> a word
STATES = {"state_wait_for_response_headers": "headers", "state_consume_response_body": "buffering",
          "state_stream_response_body": "streaming"}


class FlowStream:
    """The HTTP stream of one flow, inside the running proxy (see :func:`stream_of`)."""

    def __init__(self, flow: http.HTTPFlow, handler: Any, path: list[tuple[Any, Any]]):
        self.flow, self.handler, self.path = flow, handler, path
        self.stream = path[-1][1]

    @property
    def paused(self) -> bool:
        """Waiting on a hook of some addon (``Layer._paused``): events would queue behind it."""
        return self.stream._paused is not None

    @property
    def state(self) -> str:
        """What the stream's server side waits for: "headers" (no response headers yet),
        "buffering" (a body, nothing sent to the client yet), "streaming" (a body whose headers went
        out), or "" (anything else: done, errored, a tunnel)."""
        return STATES.get(getattr(self.stream.server_state, "__name__", ""), "")

    @property
    def buffered(self) -> int:
        """Bytes of the response body buffered so far (``HttpStream.response_body_buf``)."""
        return len(self.stream.response_body_buf)

    def routable(self) -> bool:
        """Will mitmproxy route an injected event to this stream? (see :func:`routes_to`)"""
        return routes_to(self.path, self.flow)

    async def answer(self, response: http.Response, body: bytes) -> None:
        """The upstream's response, as if it had sent it: its headers are injected (the
        ``responseheaders`` hook runs); the body and the end of the message are queued on the
        stream, which waits on that hook then, as it would queue the upstream's body: in order,
        before anything else can come (a CONNECT stream on the way would turn injected body events
        into its tunnel's bytes). Raises RuntimeError when the stream did not take the headers."""
        stream = self.stream
        await self.handler.server_event(_Headers(self.flow, stream.stream_id, response))
        if stream._paused is None or self.flow.response is not response:
            raise RuntimeError("the stream did not take the 504's headers")
        stream._paused_event_queue.extend([ResponseData(stream.stream_id, body),
                                           ResponseEndOfMessage(stream.stream_id)])

    async def fail(self, message: str, sent: bool) -> None:
        """A protocol error on the stream: mitmproxy answers 504 while nothing has been sent to
        the client (``sent`` False), else cuts the response (closes an HTTP/1 connection, resets an
        HTTP/2 stream)."""
        await self.handler.server_event(_Error(self.flow, self.stream.stream_id, message, timeout_code(sent)))

    def close_upstream(self) -> None:
        """Close the flow's upstream connection now, when it is open (``ConnectionHandler.transports``)."""
        sc = self.flow.server_conn
        if sc in getattr(self.handler, "transports", {}):
            self.handler.close_connection(sc)


def stream_of(flow: http.HTTPFlow, proxyserver: Any) -> FlowStream | None:
    """The HTTP stream of ``flow`` in the running proxy, or None when it is not found."""
    handler = connection_handler(flow, proxyserver)
    path = find_stream(getattr(handler, "layer", None), flow) if handler is not None else None
    return FlowStream(flow, handler, path) if path is not None else None

