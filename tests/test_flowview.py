"""The addon's fast request view (condroute.mitm.addon.request_view, which reads mitmproxy's request data
directly and decodes headers only when asked) against the plain RequestView built from mitmproxy's
public request properties: for any request they must be the same to the engine."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode
from mitmproxy.test import tflow

from condroute.engine import decide
from condroute.mitm.compat import set_host_header
from condroute.mitm.view import authority_host, authority_port, request_view
from condroute.request import RequestView
from test_fuzz_engine import RULES

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.one_of(st.sampled_from([b"Host", b"host", b"HOST", b"Cookie", b"X-A", b"x-a", b"X-Forwarded-For",
                                   b"Authorization", b"Hos", b"Hostx",
                                   "\u212aey".encode(), "HOS\u212a".encode(), b"x\0host", b"host\0"]),   # KELVIN SIGN: "key", "hosk" by str.lower()
                  st.binary(min_size=1, max_size=12))
values = st.one_of(st.sampled_from([b"shop.example", b"[::1]:8080", b"a.EXAMPLE.", b"uid=12; ab=B", b"aaaa",
                                    b"Bearer x", b"10.1.2.3, 127.0.0.1", b"xn--bcher-kva.example"]),
                   st.binary(max_size=40))
authorities = st.one_of(st.just(b""), st.sampled_from([b"api.example:443", b"[::1]:9", b"xn--bcher-kva.example",
                                                       b"UPPER.example"]), st.binary(max_size=20))


def public_view(flow: http.HTTPFlow) -> RequestView:
    """What the addon builds, from mitmproxy's public properties: the host is where the request
    goes (``request.host``), except in reverse mode, where it is the Host header (:authority)."""
    r = flow.request
    path, _, qs = r.path.partition("?")
    asked = None
    if isinstance(flow.client_conn.proxy_mode, ReverseMode):
        authority = r.authority or r.host_header   # an absolute-form target wins over Host (RFC 9112)
        host = authority_host(authority) if authority else r.host
        # the port the client asked for (log lines and the port condition): the Host's, else the
        # client connection's default
        default = 443 if flow.client_conn.tls_established else 80
        asked = authority_port(authority, default) if authority else default
    else:
        host = r.host
    peer = flow.client_conn.peername[0] if flow.client_conn.peername else None
    v = RequestView(r.data.method.decode("ascii", "replace"), r.data.scheme.decode("ascii", "replace"), host,
                    r.port, path, qs, tuple(r.headers.items(multi=True)), peer)
    if asked is not None:
        v.__dict__["asked_port"] = asked
    return v


@SETTINGS
@given(fields=st.lists(st.tuples(names, values), max_size=8), version=st.sampled_from([b"HTTP/1.1", b"HTTP/2.0", b"HTTP/3"]),
       authority=authorities, path=st.binary(max_size=40), method=st.sampled_from([b"GET", b"post", b"OPTIONS"]),
       peer=st.sampled_from([("127.0.0.1", 5), ("::1", 6), ("10.9.8.7", 7)]),
       lookups=st.lists(st.sampled_from(["host", "cookie", "x-a", "x-forwarded-for", "authorization", "hos", "key"]),
                        max_size=4),
       mode=st.sampled_from(["regular", "upstream:http://127.0.0.1:1", "reverse:http://127.0.0.1:2"]),
       tunnel=st.booleans())
def test_fast_view_equals_the_public_one(fields, version, authority, path, method, peer, lookups, mode, tunnel):
    f = tflow.tflow()
    f.request = http.Request("origin.example", 8080, method, b"http", authority, b"/" + path, version,
                             http.Headers(fields), b"", None, 0, 0)
    f.client_conn.peername = peer
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    f.server_conn.address = ("origin.example", 8080) if tunnel or mode.startswith("reverse") else None
    fast, slow = request_view(f), public_view(f)
    for attr in ("method", "scheme", "host", "port", "path", "query_string", "peer"):
        if attr == "host" and fast.bad_host is not None:
            continue   # refused with 400 (e.g. two Host headers, which the public property joins)
        assert getattr(fast, attr) == getattr(slow, attr), attr
    for name in lookups:                  # one header at a time, before anything decodes them all
        assert fast.header(name) == slow.header(name), name
    assert fast.cookies == slow.cookies
    assert fast.header_map == slow.header_map
    assert tuple(fast.headers) == tuple(slow.headers)
    if fast.bad_host is not None:
        return
    assert fast.describe() == slow.describe()     # (the port too: in reverse mode, from where the host came)
    assert fast.dest_port == slow.dest_port
    a, b = decide(RULES, fast), decide(RULES, public_view(f))
    assert (a.outcome, a.route, a.backend, a.url, a.trail) == (b.outcome, b.route, b.backend, b.url, b.trail)


@SETTINGS
@given(fields=st.lists(st.tuples(names, values), max_size=8), version=st.sampled_from([b"HTTP/1.1", b"HTTP/2.0"]),
       authority=authorities, value=st.sampled_from([b"127.0.0.1:9001", b"[::1]:8080", b"backend.internal"]))
def test_host_header_rewrite_equals_mitmproxys_setter(fields, version, authority, value):
    """apply() writes the Host header at the data level; it must do what Request.host_header's
    setter does (replace the first, drop the rest, add one for HTTP/1, keep names as written)."""
    def make() -> http.HTTPFlow:
        f = tflow.tflow()
        f.request = http.Request("origin.example", 8080, b"GET", b"http", authority, b"/", version,
                                 http.Headers(fields), b"", None, 0, 0)
        return f

    ours, theirs = make(), make()
    view = request_view(ours)
    set_host_header(ours.request.data, version == b"HTTP/2.0", value, view.__dict__["host_at"])
    theirs.request.host_header = value.decode()
    assert ours.request.data.headers.fields == theirs.request.data.headers.fields
    assert ours.request.data.authority == theirs.request.data.authority
