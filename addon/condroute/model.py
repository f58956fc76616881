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
    """A direct answer, without an upstream. With ``file`` the body is that file (Map Local); with
    ``dir`` it is the file ``{rest}`` names inside that folder (404 when there is none). Both are
    absolute, normalised (not resolved) paths under ``root`` (the rules file's folder, resolved),
    checked when loaded; they are resolved, checked and read again when a request is answered
    (``localfiles``), so a changed file (or a link pointed elsewhere) is served changed."""
    status: int
    body: str
    headers: tuple[tuple[str, str], ...]
    file: str = ""
    dir: str = ""
    root: str = ""


@dataclass(frozen=True)
class Split:
    """A sticky weighted choice among upstreams, or (``kind="random"``, an imported gateway's
    weighted backends) a fresh weighted draw per request."""
    by: str                    # as written: "cookie:uid"; "random" for kind random
    kind: str                  # cookie | header | query | jwt | client_ip | random
    key: str                   # the name after the colon (lower-case for a header)
    arms: tuple[tuple[Upstream, float], ...]
    salt: str


@dataclass(frozen=True)
class PathRewrite:
    """An imported gateway's path rewrite, applied to the request path (no query) instead of a
    template.

    - ``kind="segments"`` (Gateway API ``ReplacePrefixMatch``): ``prefix`` (without a trailing
      ``/``) is the matched PathPrefix, replaced element by element by ``value``
      (``/foo`` → ``/xyz``: ``/foo/bar`` → ``/xyz/bar``, ``/foo`` → ``/xyz``, ``""`` → ``/bar``);
    - ``kind="prefix"`` (Istio ``rewrite.uri``): the first ``len(prefix)`` characters (the
      matched uri prefix) become ``value``, character by character as Envoy's prefix_rewrite;
    - ``kind="full"``: the whole path becomes ``value``;
    - ``kind="regex"`` (Istio ``uriRegexRewrite``): every match of ``pattern`` (RE2) is
      replaced by ``value`` (``\\1`` for groups)."""
    kind: str
    value: str
    prefix: str = ""
    pattern: str = ""


@dataclass(frozen=True)
class Redirect:
    """Answer with a redirect instead of forwarding (Gateway API RequestRedirect, Istio redirect).
    Each part left None keeps the request's. ``port``: a number, or None with ``port_from`` saying
    where it comes from: ``"request"`` (the port the client asked for), ``"scheme"`` (the
    scheme's default). ``Location`` leaves out :80 for http and :443 for https. The query string
    is kept."""
    status: int = 302
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    port_from: str = "request"
    path: PathRewrite | None = None


@dataclass(frozen=True)
class Mirror:
    """A copy of the request also sent to ``upstream`` for ``percent`` % of requests; its answer
    is discarded (Gateway API RequestMirror, Istio mirror)."""
    upstream: Upstream
    percent: float = 100.0


@dataclass(frozen=True)
class Fault:
    """Fault injection (Istio's HTTPFaultInjection): for ``delay_percent`` % of requests the request
    waits ``delay`` seconds before the upstream is asked; for ``abort_percent`` % it is answered
    with status ``abort`` instead of being forwarded. Each is sampled on its own, the delay first
    (a request can be delayed and then aborted)."""
    delay: float | None = None
    delay_percent: float = 100.0
    abort: int | None = None
    abort_percent: float = 100.0


@dataclass(frozen=True)
class Throttle:
    """The response is sent to the client at ``kbps`` kilobits per second (1 kbps = 125 bytes/s)."""
    kbps: float


RETRY_ON = ("connect-failure", "reset", "5xx", "gateway-error")
DEFAULT_RETRY_ON = frozenset({"connect-failure"})


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
class ClaimHeader:
    """A request header a gateway sets from a verified token's claim (KrakenD ``propagate_claims``):
    ``claim`` is nested on ``.`` unless it starts with ``http``."""
    header: str                                # as written, e.g. "X-Role"
    claim: str                                 # e.g. "realm_access.roles"
    preserve_array: bool = False               # each element of an array claim its own header value


@dataclass(frozen=True)
class TokenCheck:
    """A gateway's own token check on one route (KrakenD ``auth/validator``), compiled by
    ``conditions.jwtauth``. ``keys`` is a ``settings.jwt.verify``-shaped mapping (its paths relative
    to ``keys_file``), None when no key is available (then nothing is enforced)."""
    label: str                                 # "endpoint POST /llm: auth/validator", for messages
    keys: Y | None
    keys_file: str
    decode_only: bool = False                  # the importing file's settings.jwt.verify: false
    algorithms: tuple[str, ...] = ()
    audience: tuple[str, ...] = ()
    issuer: str | None = None
    leeway: float = 0.0
    header: str = "authorization"              # where the token is, then ``cookie``
    cookie: str = "access_token"
    require_kid: bool = True
    roles_key: str = ""
    roles: tuple[str, ...] = ()
    roles_nested: bool = False
    scopes_key: str = ""
    scopes: tuple[str, ...] = ()
    scopes_nested: bool = False
    scopes_all: bool = False
    claim_headers: tuple[ClaimHeader, ...] = ()


@dataclass(frozen=True)
class TokenRejected:
    """Holds when ``check`` rejects the request's token: ``status`` 401 (missing or invalid) or 403
    (valid, but without the roles or scopes ``check`` requires)."""
    check: TokenCheck
    status: int


@dataclass(frozen=True)
class VisibleHeaders:
    """``inner`` sees only these request headers (lower-case; None: all of them), as a gateway that
    passes on only declared headers (KrakenD's ``input_headers``) would have it. ``label`` names
    the place for the warning when the inner condition reads a header that is not visible. With
    ``token``, the headers of its ``claim_headers`` are never the client's: they are set from the
    verified token (and are absent without one)."""
    inner: Y
    headers: frozenset[str] | None
    label: str
    token: TokenCheck | None = None


When = Union[Y, Never, VisibleHeaders, TokenRejected]


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
    retry_on: frozenset[str] = DEFAULT_RETRY_ON   # of RETRY_ON
    enabled: bool = True                       # false: skipped, "enabled: false" (condroute.enable switches it on)
    failover: bool = True                      # false: its upstream down -> 502/503, no other backend serves
    fault: Fault | None = None
    sni: str | None = None                     # TLS server name towards an https upstream; "preserve": the client's
    throttle: Throttle | None = None
    mirrors: tuple[Mirror, ...] = ()           # `mirror` (and imported mirrors)
    # written by importers (HTTPRoute, VirtualService, KrakenD); not in the rules format yet
    add_headers: tuple[tuple[str, str], ...] = ()   # appended after remove and set (a gateway's `add`)
    host_rewrite: str | None = None            # the Host sent upstream (URLRewrite hostname, rewrite.authority)
    rewrite: PathRewrite | None = None         # instead of ``path``
    redirect: Redirect | None = None           # answer with a redirect instead of forwarding

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
    file: str = ""                             # the file it was written in, when not the rules file (an import)
    origin: str = ""                           # an imported rule's source: "httproute header-matching, rule 3 (routes.yaml:27)"
    on_no_match: str | None = None             # overrides settings.on_no_match (a KrakenD endpoint: "error")
    propagate: Any = None                      # a TokenCheck whose claim_headers are added to the forwarded
                                               # request (KrakenD propagate_claims)
    enabled: bool = True                       # false: the route is skipped, "enabled: false"

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
    source_format: str = "condroute"           # condroute | krakend | kubernetes
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
            found.extend(m.upstream for m in b.mirrors)
    return found
