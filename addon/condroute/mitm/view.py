"""What the engine sees of a mitmproxy request: :class:`FlowView`, made by :func:`request_view`.

Read from mitmproxy's public request data (``flow.request.data``) directly: the public properties
re-parse the Host header and re-decode headers on every access. Also the host names a Host header
or :authority gives, parsed as mitmproxy parses them.
"""
from __future__ import annotations

import ipaddress
import operator

from mitmproxy import http
from mitmproxy.proxy.mode_specs import RegularMode, ReverseMode, UpstreamMode

from ..httptext import authority, bracket, default_port
from ..request import RequestView, lazy, normalize_path

H2_H3 = (b"HTTP/2.0", b"HTTP/3")


# -- host names in Host headers and :authority ---------------------------------------------------------
def authority_host(authority: str) -> str:
    """The host part of a Host header or :authority ("[::1]:80" -> "::1", "a.example:8080" -> "a.example")."""
    if authority.startswith("["):
        end = authority.find("]")
        return authority[1:end] if end > 0 else authority
    if authority.count(":") == 1:
        return authority.split(":", 1)[0]
    return authority


def authority_port(authority: str, default: int) -> int:
    """The port of a Host header or :authority ("[::1]:8443" -> 8443), or ``default`` when it names none."""
    if authority.startswith("["):
        end = authority.find("]")
        rest = authority[end + 1:] if end > 0 else ""
    else:
        rest = authority[authority.index(":"):] if authority.count(":") == 1 else ""
    digits = rest[1:]
    if rest[:1] == ":" and digits.isascii() and digits.isdigit() and 0 < int(digits) < 65536:
        return int(digits)
    return default


def authority_text(raw: bytes) -> str:
    """:authority as mitmproxy's Request.authority decodes it (IDNA only where there is any)."""
    if b"xn--" in raw.lower() or not raw.isascii():
        try:
            return raw.decode("idna")
        except UnicodeError:
            pass
    return raw.decode("utf-8", "surrogateescape")


def host_name(host: str) -> str:
    """A host name as condroute matches it (and mitmproxy writes ``request.host``): lower-case,
    without a trailing dot."""
    return host.lower().rstrip(".")


def host_of(raw: bytes) -> str:
    """The host a Host header or :authority names, as mitmproxy writes ``request.host``."""
    return host_name(authority_host(authority_text(raw)))


def header_host(raw: bytes) -> str:
    """The host a Host header names, as text (IDNA is decoded for :authority only, as mitmproxy's
    ``Request.host_header`` does)."""
    return host_name(authority_host(raw.decode("utf-8", "surrogateescape")))


def host_header_text(raw: bytes | None, h2: bool) -> str | None:
    """The client's Host header (``h2``: its :authority) as mitmproxy's ``Request.host_header`` reads it."""
    if raw is None:
        return None
    return authority_text(raw) if h2 else raw.decode("utf-8", "surrogateescape")


def names(raw: bytes, host: str) -> bool:
    """Whether a Host header or :authority names ``host`` (a ``request.host``, lower-cased, without
    a trailing dot); the usual "host" and "host:port" are answered without parsing."""
    if raw.isascii():
        s = raw.decode().lower()
        if s == host:
            return True
        n = len(host)
        if ":" not in host and s.startswith(host) and s[n:n + 1] == ":" and s[n + 1:].isdigit():
            return True
    return host_of(raw) == host


def target_authority(data: http.RequestData) -> bytes:
    """The authority of the request's target (what an absolute-form request's Host must be), as
    bytes: the host IDNA-encoded where it is not ASCII, the port appended unless it is the default."""
    h = bracket(data.host)
    try:
        hb = h.encode() if h.isascii() else h.encode("idna")
    except UnicodeError:
        hb = h.encode("utf-8", "surrogateescape")
    port = data.port
    return hb if port == default_port(data.scheme.decode("ascii", "replace")) else b"%s:%d" % (hb, port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- the view -----------------------------------------------------------------------------------------
class FlowView(RequestView):
    """The engine's view of a mitmproxy request, read from mitmproxy's request data directly (its
    public properties re-parse the Host header and re-decode headers on every access), with the
    header text decoded only when a rule reads a header. Made by :func:`request_view`, which sets
    every attribute below (``bad_host`` and ``fix_host`` only when they are not None)."""

    fields: tuple[tuple[bytes, bytes], ...]    # the request's header fields, as mitmproxy keeps them
    found: dict[str, list[str]] | None         # headers looked up one by one so far (None: none yet)
    full_path: str                             # the path as received, query string included
    authority: bytes | None                    # the client's Host (:authority for HTTP/2 and 3), raw
    host_at: int | None                        # the index of the only Host field (None: none, or several)
    bad_host: str | None = None     # why the request gets 400 (Host headers that lie about the target)
    fix_host: bytes | None = None   # the Host header an absolute-form request must carry (RFC 9112 §3.2.2)
    reverse_default_port: int | None = None   # reverse mode: the port the client's connection implies
    asked_authority: bytes | None = None      # reverse mode: the authority the host was read from

    @property
    def dest_port(self) -> int:  # type: ignore[override]
        """The port the client asked for: in reverse mode the Host header's (:authority's), as the
        host is (or the default port of the client's connection when it names none); else the target's."""
        default = self.reverse_default_port
        if default is None:
            return self.port
        asked = self.asked_authority
        return authority_port(authority_text(asked), default) if asked else default

    @lazy
    def headers(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return tuple((k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                     for k, v in self.fields)

    def header(self, name_lower: str) -> list[str]:
        """The values of one header: found in the raw fields without decoding the others, while no
        rule has asked for all of them (then RequestView's header_map answers)."""
        if "header_map" in self.__dict__ or not name_lower.isascii():   # the lazy map, once built
            return self.header_map.get(name_lower, [])
        found = self.found
        if found is None:
            # bytes.lower() folds ASCII only, str.lower() more (KELVIN SIGN -> k): with a non-ASCII
            # header name, only the decoded map answers as mitmproxy's own headers would
            if not b"".join(map(_name, self.fields)).isascii():
                return self.header_map.get(name_lower, [])
            found = self.found = {}
        vals = found.get(name_lower)
        if vals is None:
            nb = name_lower.encode()
            n = len(nb)
            vals = found[name_lower] = [v.decode("utf-8", "surrogateescape") for k, v in self.fields
                                        if len(k) == n and k.lower() == nb]
        return vals


_name = operator.itemgetter(0)


def request_view(flow: http.HTTPFlow) -> FlowView:
    """What the engine sees of ``flow``'s request (see FlowView).

    ``host`` is the host the request really goes to (README "What is matched"): by the
    time of ``requestheaders`` mitmproxy has put it in ``data.host``, from the absolute-form target,
    the CONNECT (or SOCKS) tunnel's target, or, for an origin-form request, the Host header. Only in
    reverse mode is the Host header (:authority) the name to route on (virtual hosts), and in
    transparent modes, where the destination is an address, the client's name is the only one.
    A Host header or :authority that names another host than the target inside a tunnel, or two
    Host headers, make ``bad_host``; the Host of an absolute-form request is ignored and replaced
    (``fix_host``), as RFC 9112 §3.2.2 says."""
    data = flow.request.data
    fields = data.headers.fields
    v = FlowView.__new__(FlowView)
    v.method = data.method.decode("ascii", "replace").upper()
    v.scheme = data.scheme.decode("ascii", "replace").lower()
    full = data.path.decode("utf-8", "surrogateescape")
    path, _, v.query_string = full.partition("?")
    if not path:
        path = "/"
    elif "/." in path or "//" in path or "%" in path or "\\" in path:   # request.needs_normalizing
        norm, refused = normalize_path(path)
        if refused is not None:
            v.refused = refused
        if norm != path:
            v.raw_path, path = path, norm
    v.path = path
    v.port = data.port
    # No non-ASCII name lower-cases to "host", so comparing bytes is exact here.
    host_at = [i for i, f in enumerate(fields) if len(f[0]) == 4 and f[0].lower() == b"host"]
    hh = fields[host_at[0]][1] if host_at else None
    h2 = data.http_version in H2_H3
    au = data.authority   # :authority, or the target of an absolute-form request where mitmproxy keeps it
    conn = flow.client_conn
    mode = conn.proxy_mode
    if type(mode) is ReverseMode:
        # virtual hosts: the name the client asked for (mitmproxy rewrote it to the target unless
        # keep_host_header)
        if au and hh is not None and not names(hh, host_of(au)):
            v.bad_host = ":authority and Host name different hosts"
        v.host = host_of(au) if au else header_host(hh) if hh else host_name(data.host)
        v.reverse_default_port = 443 if conn.tls_established else 80
        v.asked_authority = au or hh      # the port comes from where the host came from
    else:
        host = v.host = host_name(data.host)
        target = flow.server_conn.address   # the tunnel's (or transparent/reverse) target; None for absolute-form
        if target is not None and not isinstance(mode, (RegularMode, UpstreamMode)) and _is_ip(target[0]):
            # transparent, local, WireGuard, SOCKS5 by address: the destination is an address and
            # the client's name the only one there is; it must agree with the TLS server name
            if au or hh:
                host = v.host = host_of(au) if au else header_host(hh)
                if au and hh is not None and not names(hh, host):
                    v.bad_host = ":authority and Host name different hosts"
            sni = conn.sni
            if sni and host_name(sni) != host:
                v.bad_host = f"the Host header names {host!r}, the TLS server name {sni!r}"
        else:
            if au and not names(au, host):
                v.bad_host = f"the request names {host_of(au)!r} but goes to {host!r}"
            if hh is not None and (target is not None or h2):
                if hh.lower() != data.host.encode("utf-8", "surrogateescape").lower() and not names(hh, host):
                    v.bad_host = f"the Host header names {host_of(hh)!r} but the request goes to {host!r}"
            elif target is None and not h2:
                # absolute-form: the Host header is ignored and replaced with the target's authority
                # (the usual Host, equal to it, is left alone)
                if hh is None or hh.decode("latin-1").lower() != authority(v.scheme, data.host, data.port).lower():
                    v.fix_host = target_authority(data)
    if len(host_at) > 1:
        v.bad_host = "two Host headers"
    v.peer = conn.peername[0] if conn and conn.peername else None
    v.jwt_token = None
    v.fields, v.found, v.full_path = fields, None, full
    # the client's Host (:authority), decoded only for a routed request's metadata (ConditionalRouting.route)
    v.authority = au if au and h2 else hh
    v.host_at = host_at[0] if len(host_at) == 1 else None
    v.params, v.rest = {}, None
    return v
