"""GeoIP: ``settings.geoip_db`` (a MaxMind DB file), ``geo`` conditions, and the record behind CEL's
``geoIP()``.

The database is opened once when the rules load (a missing or unreadable file is a load error)
and read with MaxMind's own reader. The client address is the one the rest of condroute uses:
the peer, or ``X-Forwarded-For`` when the peer is one of ``settings.trusted_proxies``. Lookups are
cached per address (bounded) and per request.
"""
from __future__ import annotations

import os
from typing import Any

import maxminddb

from ..boundcache import BoundedCache
from ..load.ctx import CompileCtx, kind
from .base import Cond, Kind, SubCompiler
from ..request import IPAddr, RequestView
from ..load.yamlpos import Y

GEO_KEYS = ("country", "eu", "continent")
LOOKUP_CACHE_SIZE = 8192
LOOKUP_CACHE_BYTES = 16 << 20     # each of the two caches; a City record is a few KB of Python objects
_PROBES = ("1.1.1.1", "8.8.8.8", "81.2.69.160")

_COUNTRY_LIKE = ("country", "registered_country", "represented_country")


class GeoDB:
    """An open MaxMind database with a bounded per-address cache of lookups."""

    def __init__(self, path: str, reader: Any):
        self.path = path
        self.reader = reader
        meta = reader.metadata()
        self.ip_version = meta.ip_version
        self.database_type = meta.database_type
        self._lookups = BoundedCache(LOOKUP_CACHE_SIZE, LOOKUP_CACHE_BYTES)
        self._cel = BoundedCache(LOOKUP_CACHE_SIZE, LOOKUP_CACHE_BYTES)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"GeoDB({self.path!r}, {self.database_type})"

    def lookup(self, ip: IPAddr) -> tuple[dict | None, str | None]:
        """``(record, None)``, or ``(None, why there is none)``."""
        hit = self._lookups.get(ip)
        if hit is not None:
            return hit
        res: tuple[dict | None, str | None]
        if ip.version == 6 and self.ip_version == 4:
            res = (None, f"client IP {ip} is IPv6 and the GeoIP database holds IPv4 only")
        else:
            try:
                rec = self.reader.get(ip)
            except (ValueError, maxminddb.InvalidDatabaseError, OSError):
                rec, res = None, (None, f"the GeoIP database could not be read for client IP {ip}")
            else:
                if isinstance(rec, dict) and rec:
                    res = (normalise(rec), None)
                else:
                    res = (None, f"client IP {ip} is not in the GeoIP database")
        self._lookups.put(ip, res)
        return res

    def cel_record(self, ip: IPAddr) -> tuple[dict | None, str | None]:
        """The record as CEL's ``geoIP()`` returns it: MaxMind's names and KrakenD's Go-style names."""
        hit = self._cel.get(ip)
        if hit is not None:
            return hit
        rec, why = self.lookup(ip)
        res = (None, why) if rec is None else ({**rec, **go_style(rec)}, None)
        self._cel.put(ip, res)
        return res


def normalise(rec: dict) -> dict:
    """MaxMind leaves ``is_in_european_union`` out when it is false: put it in, so that
    ``geoIP().country.is_in_european_union`` is a boolean whenever the country is known."""
    out = dict(rec)
    for k in _COUNTRY_LIKE:
        c = out.get(k)
        if isinstance(c, dict) and "is_in_european_union" not in c:
            out[k] = {**c, "is_in_european_union": False}
    return out


def country_of(rec: dict) -> dict:
    """Where the address is: ``country``, else the country it is registered to."""
    c = rec.get("country")
    if isinstance(c, dict) and c.get("iso_code"):
        return c
    rc = rec.get("registered_country")
    return rc if isinstance(rc, dict) else {}


# -- KrakenD (Go, oschwald/geoip2-golang) field names ----------------------------------------------
def _d(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _names(c: dict) -> dict:
    n = c.get("names")
    return dict(n) if isinstance(n, dict) else {}


def _go_country(c: Any, represented: bool = False) -> dict:
    c = _d(c)
    out = {"GeoNameID": int(c.get("geoname_id") or 0), "IsInEuropeanUnion": bool(c.get("is_in_european_union", False)),
           "IsoCode": str(c.get("iso_code") or ""), "Names": _names(c)}
    if represented:
        out["Type"] = str(c.get("type") or "")
    return out


def go_style(rec: dict) -> dict:
    """The fields of geoip2-golang's ``City`` record (a superset of ``Country``), zero-valued when
    absent, as Go code sees them: ``geoIP().RepresentedCountry.IsInEuropeanUnion`` is false, not an
    error, for an address without a represented country."""
    cont = _d(rec.get("continent"))
    city = _d(rec.get("city"))
    loc = _d(rec.get("location"))
    traits = _d(rec.get("traits"))
    subs = rec.get("subdivisions") if isinstance(rec.get("subdivisions"), list) else []
    return {
        "City": {"GeoNameID": int(city.get("geoname_id") or 0), "Names": _names(city)},
        "Continent": {"Code": str(cont.get("code") or ""), "GeoNameID": int(cont.get("geoname_id") or 0),
                      "Names": _names(cont)},
        "Country": _go_country(rec.get("country")),
        "Location": {"AccuracyRadius": int(loc.get("accuracy_radius") or 0),
                     "Latitude": float(loc.get("latitude") or 0.0), "Longitude": float(loc.get("longitude") or 0.0),
                     "MetroCode": int(loc.get("metro_code") or 0), "TimeZone": str(loc.get("time_zone") or "")},
        "Postal": {"Code": str(_d(rec.get("postal")).get("code") or "")},
        "RegisteredCountry": _go_country(rec.get("registered_country")),
        "RepresentedCountry": _go_country(rec.get("represented_country"), represented=True),
        "Subdivisions": [{"GeoNameID": int(_d(s).get("geoname_id") or 0), "IsoCode": str(_d(s).get("iso_code") or ""),
                          "Names": _names(_d(s))} for s in subs],
        "Traits": {"IsAnonymousProxy": bool(traits.get("is_anonymous_proxy", False)),
                   "IsSatelliteProvider": bool(traits.get("is_satellite_provider", False))},
    }


# -- per request --------------------------------------------------------------------------------------
def client_record(req: RequestView, env: Any) -> tuple[dict | None, str | None]:
    """The GeoIP record of the request's client (memoised per request), or why there is none."""
    return req.memo("geo", lambda: _client_record(req, env))


def _client_record(req: RequestView, env: Any, kind: str = "lookup") -> tuple[dict | None, str | None]:
    """The client's record from the database: ``kind`` is ``lookup`` (MaxMind names) or
    ``cel_record`` (both naming styles, for geoIP() in CEL)."""
    db = getattr(env.settings, "geoip", None) if env is not None else None
    if db is None:
        return None, "no GeoIP database is configured (settings.geoip_db)"
    ip = req.client_ip(env.settings.trusted_proxies)
    if ip is None:
        return None, "the client IP is unknown"
    return getattr(db, kind)(ip)


def client_cel_record(req: RequestView, env: Any) -> tuple[dict | None, str | None]:
    return req.memo("geo_cel", lambda: _client_record(req, env, "cel_record"))


# -- loading ------------------------------------------------------------------------------------------
def open_geoip_db(node: Y | None, cc: CompileCtx) -> Any:
    if node is None:
        return None
    cc.geoip_declared = True   # so that geo conditions do not repeat the error
    path = cc.expect_str(node, "settings.geoip_db")
    if path is None:
        return None
    full = cc.resolve_path(path)
    if os.path.isdir(full):
        cc.error(node, f"settings.geoip_db: {full} is a directory, not a MaxMind DB file")
        return None
    try:
        reader = maxminddb.open_database(full, maxminddb.MODE_AUTO)
    except FileNotFoundError:
        cc.error(node, f"settings.geoip_db: no such file: {full}")
        return None
    except PermissionError:
        cc.error(node, f"settings.geoip_db: cannot read {full}: permission denied")
        return None
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as e:
        what = (f"cannot read it ({e.strerror or e})" if isinstance(e, OSError)
                else "not a MaxMind DB file, or a damaged one")
        cc.error(node, f"settings.geoip_db: {full}: {what}")
        return None
    db = GeoDB(full, reader)
    # walk the search tree a little, so that a truncated or damaged file fails now, not per request
    try:
        for probe in _PROBES:
            reader.get(probe)
        if db.ip_version == 6:
            reader.get("2001:4860:4860::8888")
    except (maxminddb.InvalidDatabaseError, ValueError, OSError):
        cc.error(node, f"settings.geoip_db: {full}: the database is damaged (a test lookup failed)")
        return None
    return db


# -- conditions ---------------------------------------------------------------------------------------
class GeoCond(Cond):
    def __init__(self, countries: frozenset[str] | None, eu: bool | None, continents: frozenset[str] | None):
        self.countries = countries
        self.eu = eu
        self.continents = continents
        parts = []
        if countries is not None:
            parts.append("country in " + ", ".join(sorted(countries)))
        if continents is not None:
            parts.append("continent in " + ", ".join(sorted(continents)))
        if eu is not None:
            parts.append("in the EU" if eu else "outside the EU")
        self.text = "geo " + " and ".join(parts)

    def fail(self, req: RequestView, env: Any) -> str | None:
        rec, why = client_record(req, env)
        if rec is None:
            return f"geo: {why}"
        country = country_of(rec)
        code = str(country.get("iso_code") or "")
        if self.countries is not None and code.upper() not in self.countries:
            return (f"geo country is {code!r}, wanted {', '.join(sorted(self.countries))}" if code
                    else f"geo: no country is known for the client IP, wanted {', '.join(sorted(self.countries))}")
        if self.continents is not None:
            cc = str(_d(rec.get("continent")).get("code") or "")
            if cc.upper() not in self.continents:
                return f"geo continent is {cc!r}, wanted {', '.join(sorted(self.continents))}"
        if self.eu is not None:
            if not country:
                wanted = "the EU" if self.eu else "outside the EU"
                return f"geo: no country is known for the client IP, wanted {wanted}"
            in_eu = bool(country.get("is_in_european_union", False))
            if in_eu != self.eu:
                where, wanted = ("in" if in_eu else "outside"), ("in" if self.eu else "outside")
                return f"geo country {code or '?'} is {where} the EU, wanted {wanted}"
        return None


def _codes(node: Y, cc: CompileCtx, what: str, length: int) -> frozenset[str] | None:
    items = node.v if isinstance(node.v, list) else [node]
    if not items:
        cc.error(node, f"geo {what}: an empty list")
        return None
    out = set()
    for n in items:
        t = (n.text or "").strip()    # the text: Norway's `NO` is not YAML 1.1's false
        if len(t) != length or not t.isalpha():
            example = "US, GB, DE" if length == 2 else "EU, NA"
            cc.error(n, f"geo {what}: expected a {length}-letter code such as {example}, not {kind(n.v)}")
            continue
        out.add(t.upper())
    return frozenset(out) if len(out) == len(items) else None


def compile_geo_condition(node: Y, cc: CompileCtx, sub: SubCompiler | None = None) -> Cond | None:
    if not cc.expect_map(node, "geo"):
        return None
    ok = cc.check_keys(node, GEO_KEYS, "geo")
    if not node.v:
        cc.error(node, "geo: name at least one of country, eu, continent")
        return None
    countries = continents = eu = None
    if "country" in node.v:
        countries = _codes(node.v["country"], cc, "country", 2)
        ok = ok and countries is not None
    if "continent" in node.v:
        continents = _codes(node.v["continent"], cc, "continent", 2)
        ok = ok and continents is not None
    if "eu" in node.v:
        e = node.v["eu"]
        if not isinstance(e.v, bool):
            cc.error(e, f"geo eu must be true or false, not {kind(e.v)}")
            ok = False
        else:
            eu = e.v
    if getattr(cc.settings, "geoip", None) is None and not cc.geoip_declared:
        cc.error(node, "geo conditions need a GeoIP database: set settings.geoip_db to a MaxMind DB file")
        return None
    if not ok:
        return None
    return GeoCond(countries, eu, continents)


def _codes_schema(length: int, what: str) -> dict:
    code = {"type": "string", "pattern": f"^\\s*[A-Za-z]{{{length}}}\\s*$"}
    return {"description": f"a {what} or a list of them",
            "oneOf": [code, {"type": "array", "items": code, "minItems": 1}]}


_SCHEMA = {"type": "object", "description": "{country: [US, GB], continent: [EU], eu: true}",
           "minProperties": 1, "additionalProperties": False,
           "properties": {"country": _codes_schema(2, "ISO country code"),
                          "continent": _codes_schema(2, "continent code"),
                          "eu": {"type": "boolean"}}}
KINDS = [Kind("geo", 60, compile_geo_condition, _SCHEMA, "the client's country (GeoIP)")]
