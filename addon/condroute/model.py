"""The rules model: what a rules file says, as plain typed values, with where each part was written.

Loaders write it (``load.condroute`` for condroute YAML/JSON, ``load.krakend`` for KrakenD files;
HTTPRoute and VirtualService importers next); the compiler (``compile``) turns it into the matchers
the engine runs; exporters read it. Nothing here parses, compiles or touches the network: no
yaml, no re2, no mitmproxy.

Conditions stay as written: a ``when`` (or the conditions of a route's ``match``) is the rules
format's own mapping, a :class:`~condroute.node.Y` that keeps every position, because that mapping
*is* condroute's condition language (``{header: {x-beta: "1"}}``, ``{any: [...]}``); what each key
means is the condition-kind registry's (``conditions.registry``). An importer whose source has
conditions the rules format cannot write uses :class:`Never` or :class:`VisibleHeaders`.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Union

from .httptext import authority
from .node import Y

IPNet = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@dataclass(frozen=True)
class Upstream:
    name: str          # the name in `upstreams`, or the URL as written
    url: str
    scheme: str        # http | https
    host: str          # without brackets
    port: int
    base_path: str     # "" or "/base" (no trailing slash)

    def __post_init__(self) -> None:
        # read per routed request: worked out once here
        auth = authority(self.scheme, self.host, self.port)
        object.__setattr__(self, "authority", auth)
        object.__setattr__(self, "origin", f"{self.scheme}://{auth}")
        object.__setattr__(self, "authority_b", auth.encode("utf-8", "surrogateescape"))
        object.__setattr__(self, "scheme_b", self.scheme.encode())

    authority: str = field(init=False, repr=False, compare=False)     # host[:port]
    origin: str = field(init=False, repr=False, compare=False)        # scheme://authority
    authority_b: bytes = field(init=False, repr=False, compare=False)
    scheme_b: bytes = field(init=False, repr=False, compare=False)


@dataclass(frozen=True)
class Respond:
    """A direct answer, without an upstream."""
    status: int
    body: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Split:
    """A sticky weighted choice among upstreams."""
    by: str                    # as written: "cookie:uid"
    kind: str                  # cookie | header | query | jwt | client_ip
    key: str                   # the name after the colon (lower-case for a header)
    arms: tuple[tuple[Upstream, float], ...]
    salt: str


@dataclass(frozen=True)
class PathTemplate:
    """A backend's forwarded path: literal text and {placeholders} ({path}, {rest}, route params)."""
    text: str
    parts: tuple[tuple[bool, str], ...]   # (is_placeholder, literal-or-name)

    def render(self, params: dict[str, str], path: str, rest: str | None) -> str:
        out = []
        for is_ph, s in self.parts:
            if not is_ph:
                out.append(s)
            elif s == "path":
                out.append(path)
            elif s == "rest":
                out.append(rest or "")
            else:
                out.append(params.get(s, ""))
        return "".join(out)


@dataclass(frozen=True)
class RoutePath:
    """A route's ``match.path``: a template (``/users/{id}``, ``/api/*``) or a matcher mapping."""
    text: str                                      # as written (the mapping form: its repr)
    params: tuple[str, ...] = ()
    has_rest: bool = False                         # ends in /*
    literal_prefix: str = ""                       # the leading literal segments, for the route index
    segs: tuple[tuple[bool, str], ...] | None = None   # every parameter a whole segment: (is_param, text)
    pattern: str | None = None                     # else a parameter inside a segment: a regular expression
    matcher: Y | None = None                       # the mapping form ({prefix: /api}), compiled as a matcher


@dataclass(frozen=True)
class Never:
    """A condition that cannot hold, and why (an importer's: a header the source gateway hides)."""
    text: str
    reason: str


@dataclass(frozen=True)
class VisibleHeaders:
    """``inner`` sees only these request headers (lower-case), as a gateway that passes on only
    declared headers (KrakenD's ``input_headers``) would have it. ``label`` names the place for
    the warning when the inner condition reads a header that is not visible."""
    inner: Y
    headers: frozenset[str]
    label: str


When = Union[Y, Never, VisibleHeaders]


@dataclass(frozen=True)
class Backend:
    name: str
    line: int
    when: When | None = None
    fallback: bool = False
    upstream: Upstream | None = None
    split: Split | None = None
    path: PathTemplate | None = None
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    preserve_host: bool = False
    respond: Respond | None = None
    timeout: float | None = None
    retries: int = 0

    @property
    def unconditional(self) -> bool:
        return self.when is None and not self.fallback


@dataclass(frozen=True)
class Route:
    name: str
    line: int
    hosts: tuple[str, ...] = ()                # exact hosts and "*.suffix" patterns, lower-case; () = any
    methods: frozenset[str] | None = None
    path: RoutePath | None = None
    conditions: Y | None = None                # match's condition keys (header, cel, ...), as written
    backends: tuple[Backend, ...] = ()         # in file order, fallback included

    @property
    def fallback(self) -> Backend | None:
        return next((b for b in self.backends if b.fallback), None)


@dataclass(frozen=True)
class Settings:
    on_no_match: str = "passthrough"           # passthrough | error
    trusted_proxies: tuple[IPNet, ...] = ()
    jwt: Y | None = None                       # settings.jwt as written (compiled by conditions.jwtauth)
    geoip_db: Y | None = None                  # the database's path as written
    strip_routing_headers: bool = False


@dataclass(frozen=True)
class Rules:
    """A whole rules file. ``routes`` in file order."""
    file: str
    upstreams: dict[str, Upstream]
    settings: Settings
    routes: tuple[Route, ...]
    source_format: str = "condroute"           # condroute | krakend
    warnings: tuple = ()


def every_upstream(rules: Any) -> list[Upstream]:
    """Every upstream ``rules`` can send to (the model's, or the compiled rules', which have the same
    shape): the named ones, then URLs written in backends and the arms of splits, in that order,
    repeats included."""
    found = list(rules.upstreams.values())
    for r in rules.routes:
        for b in r.backends:
            if b.upstream is not None:
                found.append(b.upstream)
            if b.split is not None:
                found.extend(up for up, _ in b.split.arms)
    return found
