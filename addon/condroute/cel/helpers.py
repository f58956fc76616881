"""The helper functions a ``cel:`` expression may call (KrakenD's vocabulary: ``hasHeader``,
``getCookie``, ``ipInCidr``, ``geoIP()``...), all in one table, :data:`HELPERS`.

Each entry says everything about one helper: its argument and result types, its implementations
(the global form, ``getHeader('X-Ab')``, and the method form, ``req_headers.getHeader('X-Ab')``),
what a literal first argument names in the request (so the checker knows which input the call
reads), and what it does. The checker (:mod:`.check`), both engines and the docs read this table;
nothing else lists the helpers.

The implementations are the same Python code for both engines. The global forms read the request
of the evaluation under way (:mod:`.context`); the method forms read their receiver, a CEL map.
A helper that cannot answer raises :class:`HelperError`, whose text is safe to show.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable

from ..boundcache import BoundedCache
from ..request import RequestView, parse_cookie_header, parse_ip
from .context import current


class HelperError(Exception):
    """Raised by a helper function (``geoIP()``, ``ipInCidr``): its text is safe to show."""


@dataclass(frozen=True)
class Helper:
    name: str
    params: str                 # the global form's argument types, one letter each: S string
    returns: str                # B bool, S string, D dyn (a map)
    call: Callable              # the global form
    method: Callable | None     # the method form (receiver first), or None: a function only
    receiver: str               # the method form's receiver: "map" (an extra argument in front: req_headers,
    #                             request.headers, req_querystring) or "first" (the first argument: ip.ipInCidr(c))
    reads: str                  # what the first argument, a literal, names: header, cookie, query; geo: the
    #                             client's GeoIP record; "": nothing of the request by name
    doc: str

    @property
    def arity(self) -> int:
        """The number of arguments of the global form."""
        return len(self.params)


# -- implementations ---------------------------------------------------------------------------------
def _req() -> RequestView:
    req = current.req
    if req is None:  # pragma: no cover - only when called outside an evaluation
        raise HelperError("no request")
    return req


def _name(v: Any, fn: str) -> str:
    if not isinstance(v, str):
        raise HelperError(f"{fn}: the name must be a string")
    return str(v)


def _map_values(m: Any, name: str, fold: bool) -> list:
    """Values under ``name`` in a CEL map of lists (req_headers) or of strings (request.headers)."""
    if not isinstance(m, dict):
        raise HelperError("the receiver is not a map")
    v = m[name] if name in m else None      # (celpy's map type raises on .get of a missing key)
    if v is None and fold:
        low = name.lower()
        for k, val in m.items():
            if isinstance(k, str) and k.lower() == low:
                v = val
                break
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


def _hdr(name: Any, fn: str) -> list[str]:
    return _req().header_map.get(_name(name, fn).lower(), [])


def _cookies_of(m: Any) -> dict[str, list[str]]:
    return parse_cookie_header(_map_values(m, "Cookie", True))


def _first(vals: list) -> str:
    return str(vals[0]) if vals else ""


def g_hasHeader(name: Any) -> bool:
    return bool(_hdr(name, "hasHeader"))


def m_hasHeader(m: Any, name: Any) -> bool:
    return bool(_map_values(m, _name(name, "hasHeader"), True))


def g_getHeader(name: Any) -> str:
    return _first(_hdr(name, "getHeader"))


def m_getHeader(m: Any, name: Any) -> str:
    return _first(_map_values(m, _name(name, "getHeader"), True))


def g_hasCookie(name: Any) -> bool:
    return _name(name, "hasCookie") in _req().cookies


def m_hasCookie(m: Any, name: Any) -> bool:
    return _name(name, "hasCookie") in _cookies_of(m)


def g_getCookie(name: Any) -> str:
    return _first(_req().cookies.get(_name(name, "getCookie"), []))


def m_getCookie(m: Any, name: Any) -> str:
    return _first(_cookies_of(m).get(_name(name, "getCookie"), []))


def g_containsCookie(name: Any, value: Any) -> bool:
    return _name(value, "containsCookie") in _req().cookies.get(_name(name, "containsCookie"), ())


def m_containsCookie(m: Any, name: Any, value: Any) -> bool:
    return _name(value, "containsCookie") in _cookies_of(m).get(_name(name, "containsCookie"), ())


def g_hasQuery(name: Any) -> bool:
    return _name(name, "hasQuery") in _req().query


def m_hasQuery(m: Any, name: Any) -> bool:
    return bool(_map_values(m, _name(name, "hasQuery"), False))


def g_getQuery(name: Any) -> str:
    return _first(_req().query.get(_name(name, "getQuery"), []))


def m_getQuery(m: Any, name: Any) -> str:
    return _first(_map_values(m, _name(name, "getQuery"), False))


_MISSING = object()
_nets = BoundedCache(1024, 1 << 20)


def _net(text: str) -> Any:
    """The network a CIDR names, or None (cached when the text is short enough to be a CIDR)."""
    net = _nets.get(text, _MISSING)
    if net is not _MISSING:
        return net
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        net = None
    if len(text) <= 64:         # a CIDR is at most 43 characters; longer text (from a request) is not kept
        _nets.put(text, net, 256)
    return net


def is_cidr(text: str) -> bool:
    return _net(text) is not None


def ip_in_cidr(ip: Any, cidr: Any) -> bool:
    if not isinstance(ip, str) or not isinstance(cidr, str):
        raise HelperError("ipInCidr: wants two strings, an address and a CIDR")
    addr = parse_ip(ip)
    if addr is None:
        raise HelperError("ipInCidr: the first argument is not an IP address")
    net = _net(str(cidr))
    if net is None:
        raise HelperError("ipInCidr: the second argument is not a CIDR")
    if net.version == 6 and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
        net = _net(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    return addr.version == net.version and addr in net


def g_geoIP() -> dict:
    lookups = current.lookups
    if lookups is None:  # pragma: no cover - compile_policy refuses geoIP() without lookups
        raise HelperError("geoIP(): no GeoIP lookup")
    rec, why = lookups.geo_record(_req(), current.env)
    if rec is None:
        raise HelperError(f"geoIP(): {why}")
    return rec


# -- the table ---------------------------------------------------------------------------------------
HELPERS: dict[str, Helper] = {h.name: h for h in (
    Helper("hasHeader", "S", "B", g_hasHeader, m_hasHeader, "map", "header",
           "whether the request has the header (any case)"),
    Helper("getHeader", "S", "S", g_getHeader, m_getHeader, "map", "header",
           "the header's first value, or '' when it is absent"),
    Helper("hasCookie", "S", "B", g_hasCookie, m_hasCookie, "map", "cookie",
           "whether the request sends the cookie"),
    Helper("getCookie", "S", "S", g_getCookie, m_getCookie, "map", "cookie",
           "the cookie's first value, or ''"),
    Helper("containsCookie", "SS", "B", g_containsCookie, m_containsCookie, "map", "cookie",
           "whether the cookie (first argument) has the value (second argument)"),
    Helper("hasQuery", "S", "B", g_hasQuery, m_hasQuery, "map", "query",
           "whether the query string has the parameter"),
    Helper("getQuery", "S", "S", g_getQuery, m_getQuery, "map", "query",
           "the query parameter's first value, or ''"),
    Helper("ipInCidr", "SS", "B", ip_in_cidr, ip_in_cidr, "first", "",
           "whether the address (first argument) is in the CIDR (second argument); IPv4-mapped IPv6 "
           "addresses match IPv4 networks"),
    Helper("geoIP", "", "D", g_geoIP, None, "", "geo",
           "the client's GeoIP record (settings.geoip_db), with geoip2-golang's and MaxMind's field names"),
)}
