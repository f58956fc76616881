"""The engine's view of a request: plain data, no mitmproxy. Costly parts are parsed lazily."""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable, Sequence
from urllib.parse import unquote_plus, urlsplit

from .httptext import authority
from .redact import redact_query_string   # secret-named parameters (access_token=...) are not shown in logs

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_XFF_HOPS = 32


class lazy:
    """Like functools.cached_property, without its lock (Python 3.11's costs ~1 µs per access)."""

    def __init__(self, fn):
        self.fn = fn
        self.name = fn.__name__

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        v = obj.__dict__[self.name] = self.fn(obj)
        return v


_ip_cache: dict[str, "IPAddr | None"] = {}


def parse_ip(text: str | None) -> IPAddr | None:
    """Parse a client address (memoised: peers repeat): IPv4, IPv6 (bracketed or with a zone),
    IPv4-mapped IPv6 unwrapped. Garbage gives None."""
    if not text:
        return None
    try:
        return _ip_cache[text]
    except KeyError:
        pass
    ip = _parse_ip(text)
    if len(text) > 64:   # not an address (X-Forwarded-For hops come from the client): not kept
        return ip
    if len(_ip_cache) >= 4096:   # 4096 keys of at most 64 characters: ~0.8 MB at most
        _ip_cache.clear()
    _ip_cache[text] = ip
    return ip


_ip_texts: dict[tuple[int, int], str] = {}


def ip_text(ip: IPAddr) -> str:
    """``str(ip)``, memoised (ipaddress formats an address in Python, on every call)."""
    key = (ip._version, ip._ip)
    s = _ip_texts.get(key)
    if s is None:
        if len(_ip_texts) >= 4096:
            _ip_texts.clear()
        s = _ip_texts[key] = str(ip)
    return s


def _parse_ip(text: str) -> IPAddr | None:
    s = text.strip()
    if s.startswith("[") and "]" in s:
        s = s[1:s.index("]")]
    elif s.count(":") == 1 and "." in s:  # 1.2.3.4:5678
        s = s.split(":", 1)[0]
    s = s.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(ip: IPAddr | None, nets: Sequence[IPNet]) -> bool:
    if ip is None:
        return False
    for n in nets:
        if ip.version == n.version and ip in n:
            return True
    return False


def parse_cookie_header(values: Iterable[str]) -> dict[str, list[str]]:
    """Parse ``Cookie`` headers leniently (RFC 6265 style): pairs split on ';', first '='."""
    out: dict[str, list[str]] = {}
    for header in values:
        for part in header.split(";"):
            name, eq, value = part.partition("=")
            if not eq:
                continue
            name = name.strip()
            if not name:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            seen = out.get(name)
            if seen is None:
                out[name] = [value]
            else:
                seen.append(value)
    return out


def parse_query(qs: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not qs:
        return out
    for part in qs.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        try:
            name, value = unquote_plus(name, errors="surrogateescape"), unquote_plus(value, errors="surrogateescape")
        except Exception:  # pragma: no cover - unquote_plus is lenient
            pass
        out.setdefault(name, []).append(value)
    return out


# -- paths ------------------------------------------------------------------------------------------
# What "What is matched" in rules-format.md promises: a path is matched after RFC 3986 dot-segment
# removal with "//" merged, so that /./admin, //admin and /api/../admin are all /admin. Encoded
# separators (%2e, %2f, %5c in any case), a raw backslash, and a "." or ".." segment with ";"
# parameters (Tomcat reads "..;" as "..") mean different paths to different servers: such a path is
# refused with 400 when a route could own it read either way (see engine.decide).
_ENCODED = ("%2e", "%2f", "%5c")
_DECODE = re.compile(r"%(?:2[eEfF]|5[cC])")
_DECODED = {"e": ".", "f": "/", "c": "/"}


def needs_normalizing(path: str) -> bool:
    """False for the usual path, which is already normal (the test the addon makes per request)."""
    return "/." in path or "//" in path or "%" in path or "\\" in path


def remove_dot_segments(path: str, params_are_dots: bool = False) -> str:
    """RFC 3986 §5.2.4 on an absolute path, with empty segments ("//") merged; ".." above the root
    is dropped, as the RFC says. A trailing "." or ".." leaves a trailing "/". With
    ``params_are_dots`` a "..;x" segment counts as ".." (how Tomcat and Jetty read it)."""
    segs = path[1:].split("/")
    out: list[str] = []
    last = len(segs) - 1
    for i, seg in enumerate(segs):
        dot = seg.partition(";")[0] if params_are_dots else seg
        if dot == "..":
            if out:
                out.pop()
        elif dot != "." and (seg or i == last):
            out.append(seg)
            continue
        if i == last:
            out.append("")
    return "/" + "/".join(out)


def normalize_path(path: str) -> tuple[str, tuple[str, str] | None]:
    """The path to match and forward, and — when the path must be refused if a route could own it —
    ``(why, the path as a server that decodes %2e/%2f/%5c and reads backslashes and "..;" would see
    it)``. Only absolute paths are touched (not "*")."""
    if not path.startswith("/"):
        return path, None
    why = []
    if "\\" in path:
        why.append("a backslash")
    if "%" in path:
        low = path.lower()
        if any(e in low for e in _ENCODED):
            why.append("an encoded '.', '/' or '\\' (%2e, %2f, %5c)")
    norm = remove_dot_segments(path) if "/." in path or "//" in path else path
    if ";" in path and any(s.partition(";")[0] in (".", "..") and ";" in s for s in path.split("/")):
        why.append("a '.' or '..' segment with ';' parameters")
    if not why:
        return norm, None
    alt = _DECODE.sub(lambda m: _DECODED[m.group(0)[2].lower()], path).replace("\\", "/")
    return norm, (" and ".join(why), remove_dot_segments(alt, params_are_dots=True))


class RequestView:
    """What the engine sees of a request.

    ``headers`` is a sequence of ``(name, value)`` pairs in wire order; ``path`` excludes the query
    string, which is kept raw in ``query_string``; ``peer`` is the address the connection came from.
    """

    __slots__ = ("method", "scheme", "host", "port", "path", "query_string", "headers", "peer",
                 "jwt_token", "__dict__")
    # set (in the instance's __dict__) only when normalize_path changed or questioned the path:
    raw_path: str | None = None                # the path as received, when ``path`` differs from it
    refused: tuple[str, str] | None = None     # normalize_path's (why, decoded reading)

    def __init__(self, method: str, scheme: str, host: str, port: int, path: str,
                 query_string: str = "", headers: Sequence[tuple[str, str]] = (),
                 peer: str | None = None, jwt_token: str | None = None):
        self.method = method.upper()
        self.scheme = scheme.lower()
        self.host = host.lower().rstrip(".")
        self.port = port
        path = path or "/"
        if needs_normalizing(path):
            norm, self.refused = normalize_path(path)
            if norm != path:
                self.raw_path = path
            path = norm
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.peer = peer
        # an explicit token (CLI --jwt); otherwise it is read where settings.jwt.from says
        self.jwt_token = jwt_token
        # filled by the engine per request: route params and cached evaluations
        self.params: dict[str, str] = {}
        self.rest: str | None = None

    @classmethod
    def from_url(cls, url: str, method: str = "GET", headers: Sequence[tuple[str, str]] = (),
                 peer: str | None = None, jwt_token: str | None = None) -> "RequestView":
        u = urlsplit(url if "://" in url else "http://" + url)
        scheme = u.scheme or "http"
        host = u.hostname or ""
        try:
            port = u.port or (443 if scheme in ("https", "wss") else 80)
        except ValueError:
            port = 443 if scheme in ("https", "wss") else 80
        hdrs = list(headers)
        if not any(k.lower() == "host" for k, _ in hdrs) and u.netloc:
            hdrs.insert(0, ("Host", u.netloc.rsplit("@", 1)[-1]))
        return cls(method, scheme, host, port, u.path or "/", u.query, hdrs, peer, jwt_token)

    # -- lazily parsed parts ----------------------------------------------------------------------
    @lazy
    def header_map(self) -> dict[str, list[str]]:
        m: dict[str, list[str]] = {}
        for k, v in self.headers:
            m.setdefault(k.lower(), []).append(v)
        return m

    def header(self, name_lower: str) -> list[str]:
        return self.header_map.get(name_lower, [])

    @lazy
    def cookies(self) -> dict[str, list[str]]:
        return parse_cookie_header(self.header("cookie"))

    @lazy
    def query(self) -> dict[str, list[str]]:
        return parse_query(self.query_string)

    @lazy
    def peer_ip(self) -> IPAddr | None:
        return parse_ip(self.peer)

    def client_ip(self, trusted: Sequence[IPNet]) -> IPAddr | None:
        """The client address: the peer, or — only when the peer is a trusted proxy — the first
        untrusted address walking ``X-Forwarded-For`` from the right (then ``X-Real-IP``)."""
        cache = self.__dict__.get("_client_ip")
        if cache is not None and cache[0] is trusted:
            return cache[1]
        ip = self.peer_ip
        if trusted and in_networks(ip, trusted):
            hops: list[str] = []
            for v in self.header("x-forwarded-for"):
                hops.extend(h.strip() for h in v.split(","))
            hops = hops[-MAX_XFF_HOPS:]
            if hops:
                for hop in reversed(hops):
                    hip = parse_ip(hop)
                    if hip is None:
                        break  # garbage in the chain: stop believing it
                    ip = hip
                    if not in_networks(hip, trusted):
                        break
            else:
                real = self.header("x-real-ip")
                if real:
                    rip = parse_ip(real[-1])
                    if rip is not None:
                        ip = rip
        self.__dict__["_client_ip"] = (trusted, ip)
        return ip

    def describe(self) -> str:
        """"METHOD URL" for log lines and ``condroute explain`` (not computed per request otherwise):
        the port the client asked for unless it is the scheme's default, an IPv6 host in brackets,
        secret-named query parameters redacted."""
        q = f"?{redact_query_string(self.query_string)}" if self.query_string else ""
        return f"{self.method} {self.scheme}://{authority(self.scheme, self.host, self.dest_port)}{self.path}{q}"

    def client_explained(self, trusted: Sequence[IPNet]) -> tuple[IPAddr | None, str]:
        """For ``condroute explain`` only: the client address (as :meth:`client_ip` finds it) and
        how it was found, e.g. ``"X-Forwarded-For ignored: 127.0.0.1 is not a trusted proxy"``."""
        ip = self.client_ip(trusted)
        fwd = "X-Forwarded-For" if self.header("x-forwarded-for") else "X-Real-IP" if self.header("x-real-ip") else None
        peer = self.peer_ip
        if fwd is None:
            return ip, "the peer address" if ip is not None else "unknown: no peer address"
        if peer is None:
            return ip, f"unknown: {fwd} ignored: the peer address is unknown (give the proxy's peer with --client-ip)"
        if not in_networks(peer, trusted):
            why = f"{fwd} ignored: {ip_text(peer)} is not a trusted proxy"
            return ip, why + ("; settings.trusted_proxies is empty" if not trusted else "")
        if ip == peer:
            return ip, f"{ip_text(peer)} is a trusted proxy, but {fwd} gives no other usable client address"
        return ip, f"from {fwd}: the peer {ip_text(peer)} is a trusted proxy"

    @property
    def dest_port(self) -> int:
        """The destination port the client asked for (the ``port`` condition): ``port``, unless the
        adapter set ``asked_port`` (reverse mode: the port of the Host header the host is read from)."""
        return self.__dict__.get("asked_port", self.port)

    def memo(self, key: str, fn) -> Any:
        """Per-request memo for expensive values (JWT claims, GeoIP record)."""
        d = self.__dict__
        k = "_m_" + key
        if k not in d:
            d[k] = fn()
        return d[k]
