"""What of a KrakenD file condroute cannot apply, said where it is written:

- ``extra_config`` namespaces: one located warning per endpoint, backend or service listing each
  that changes what KrakenD does with a request (refuses it, answers it itself, rewrites it, speaks
  another protocol). Namespaces that only shape the response or observe traffic (telemetry,
  documentation, JMESPath, response bodies, signing) are left out; a namespace known to neither
  list is named too, so nothing is ever dropped without a word;
- server plugins (``url-rewrite``) and the geoip plugin's database, which is an error in KrakenD's
  terms only when a conditional policy calls ``geoIP()``;
- endpoints with dynamic routing (``{input_headers.X}``, ``{input_query_strings.X}``,
  ``{JWT.x}``/``{{.JWT.x}}``, ``{respN_x}``): condroute cannot know those values when it routes."""
from __future__ import annotations

import os
import re

from ..node import Y
from .ctx import CompileCtx

# read by the importer itself
HANDLED = frozenset({"backend/conditional", "auth/validator", "github.com/devopsfaith/krakend-jose/validator",
                     "modifier/martian", "github.com/devopsfaith/krakend-martian", "router", "proxy"})

NOT_APPLIED = {
    "security/policies": "KrakenD may refuse the request by policy",
    "validation/json-schema": "KrakenD refuses a body that does not match the schema",
    "validation/cel": "KrakenD refuses requests its expressions reject",
    "validation/response-json-schema": "KrakenD checks the response",
    "auth/api-keys": "KrakenD refuses a request without a valid API key",
    "auth/basic": "KrakenD refuses a request without valid credentials",
    "auth/revoker": "KrakenD refuses revoked tokens",
    "auth/client-credentials": "KrakenD adds a client-credentials token",
    "auth/gcp": "KrakenD adds a Google Cloud token",
    "auth/ntlm": "KrakenD authenticates with NTLM",
    "qos/ratelimit/router": "KrakenD answers 429 over the limit",
    "qos/ratelimit/proxy": "KrakenD answers 503 over the backend's limit",
    "qos/ratelimit/tiered": "KrakenD answers 429 over the limit",
    "qos/circuit-breaker": "KrakenD stops calling a failing backend",
    "qos/http-cache": "KrakenD answers from its cache",
    "governance/quota": "KrakenD answers 429 over the quota",
    "websocket": "KrakenD terminates the websocket itself",
    "ai/mcp": "KrakenD answers MCP itself",
    "ai/llm": "KrakenD rewrites the request for the model's vendor",
    "backend/static-filesystem": "KrakenD serves files from disk; condroute forwards to the host",
    "backend/soap": "KrakenD builds a SOAP body",
    "backend/graphql": "KrakenD builds a GraphQL request",
    "backend/grpc": "KrakenD speaks gRPC to this host",
    "backend/lambda": "KrakenD invokes a Lambda function",
    "backend/http/client": "KrakenD's client options",
    "plugin/http-client": "KrakenD's client plugin",
    "plugin/req-resp-modifier": "KrakenD's modifier plugin",
    "modifier/lua-endpoint": "KrakenD runs a Lua script",
    "modifier/lua-proxy": "KrakenD runs a Lua script",
    "modifier/lua-backend": "KrakenD runs a Lua script",
    "modifier/body-generator": "KrakenD replaces the request body",
    "modifier/request-body-generator": "KrakenD replaces the request body",
    "modifier/request-headers": "KrakenD changes request headers",
    "security/bot-detector": "KrakenD refuses bots",
    "security/http": "KrakenD refuses requests its security rules reject",
    "security/cors": "KrakenD answers CORS preflights itself",
    "server/virtualhost": "KrakenD routes by virtual host",
    "server/static-filesystem": "KrakenD serves files from disk",
    "plugin/http-server": "KrakenD's server plugins",
    "grpc": "KrakenD's gRPC server",
    "redis": "", "governance/processors": "", "qos/ratelimit/service": "KrakenD answers 429 over the limit",
    "qos/ratelimit/service/redis": "",
}
# response shaping and observation: nothing to say
SILENT_PREFIXES = ("telemetry/", "documentation/")
SILENT = frozenset({"modifier/jmespath", "modifier/response-body", "modifier/response-body-generator",
                    "modifier/response-headers", "auth/signer", "backend/http"})


# dynamic routing: a value of the request, the token or another backend's response in a url_pattern or host
DYNAMIC = re.compile(r"\{\s*\.?(input_headers|input_query_strings|JWT|jwt|resp\d+_)([^}]*)\}")
_GEOIP_CALL = re.compile(r"\bgeoIP\s*\(")


def _meta(key: str) -> bool:
    return key[:1] in ("@", "$", "_", "#")


def not_applied(extra: Y | None, cc: CompileCtx, label: str, skip: frozenset[str] = frozenset()) -> None:
    """One warning at the first namespace ``extra`` holds that condroute does not apply."""
    if extra is None or not isinstance(extra.v, dict):
        return
    found: list[str] = []
    first: str | None = None
    for k in extra.v:
        if _meta(k) or k in HANDLED or k in skip or k in SILENT or k.startswith(SILENT_PREFIXES):
            continue
        why = NOT_APPLIED.get(k)
        found.append(f"{k} ({why})" if why else k)
        first = first or k
    if k_proxy_static(extra):
        found.append("proxy.static (KrakenD answers with its static data)")
        first = first or "proxy"
    if found:
        cc.warn(extra, f"{label}: not applied by condroute: {'; '.join(found)}", key=first)


def k_proxy_static(extra: Y) -> bool:
    p = extra.v.get("proxy")
    return p is not None and isinstance(p.v, dict) and "static" in p.v


def geoip_ok(db: Y, root: Y, cc: CompileCtx) -> bool:
    """Whether condroute should open the geoip plugin's database: a missing one is an error in
    KrakenD's terms when a conditional policy calls geoIP(), and otherwise a warning."""
    if not isinstance(db.v, str) or not db.v:
        return True          # the compiler says what is wrong with it
    full = cc.resolve_path(db.v)
    if os.path.isfile(full):
        return True
    call = geoip_caller(root)
    if call is not None:
        cc.error(db, f"the geoip plugin's citydb_path {db.v}: no such file ({full}): the MaxMind GeoLite2/"
                     f"GeoIP2 City database KrakenD's geoip plugin reads; condroute needs it for geoIP() in "
                     f"the policy at line {call.line}")
    else:
        cc.warn(db, f"the geoip plugin's citydb_path {db.v}: no such file ({full}); condroute needs it only "
                    f"for geoIP() in conditional policies, and none calls it")
    return False


def geoip_caller(root: Y) -> Y | None:
    """The first backend/conditional policy that calls geoIP()."""
    en = root.v.get("endpoints")
    for e in (en.v if en is not None and isinstance(en.v, list) else []):
        bs = e.v.get("backend") if isinstance(e.v, dict) else None
        for b in (bs.v if bs is not None and isinstance(bs.v, list) else []):
            x = b.v.get("extra_config") if isinstance(b.v, dict) else None
            c = x.v.get("backend/conditional") if x is not None and isinstance(x.v, dict) else None
            val = c.v.get("value") if c is not None and isinstance(c.v, dict) else None
            if val is not None and isinstance(val.v, str) and _GEOIP_CALL.search(val.v):
                return val
    return None


def server_plugins(extra: Y, cc: CompileCtx) -> None:
    ps = extra.v.get("plugin/http-server")
    if ps is None or not isinstance(ps.v, dict):
        return
    names = ps.v.get("name")
    listed = [n.v for n in names.v if isinstance(n.v, str)] if names is not None and isinstance(names.v, list) \
        else []
    plugins = ps.v.get("plugins")
    if plugins is not None and isinstance(plugins.v, list):
        listed += [p.v["name"].v for p in plugins.v if isinstance(p.v, dict) and "name" in p.v
                   and isinstance(p.v["name"].v, str)]
    other = [n for n in listed if n != "geoip"]
    if other:
        what = {"url-rewrite": "url-rewrite (KrakenD rewrites the request path before it routes)"}
        cc.warn(extra, "server plugins not applied by condroute: " + ", ".join(what.get(n, n) for n in other)
                + ("; the geoip plugin's X-Geoip header is not added either" if "geoip" in listed else ""),
                key="plugin/http-server")


def unservable(bn: Y, ep: str, cc: CompileCtx) -> str | None:
    """Why condroute cannot serve the endpoint (a warning is recorded), or None: a backend whose
    url_pattern or host takes a value from the request or from another backend's response."""
    for j, b in enumerate(bn.v):
        if not isinstance(b.v, dict):
            continue
        hosts = b.v.get("host")
        cands = [b.v.get("url_pattern")] + (hosts.v if hosts is not None and isinstance(hosts.v, list)
                                              else [hosts])
        for n in cands:
            if n is None or not isinstance(n.v, str):
                continue
            m = DYNAMIC.search(n.v)
            if m is None:
                continue
            src, rest = m.group(1), m.group(2).lstrip(".")
            if src.startswith("resp"):
                k = int(src[4:-1])
                what = (f"takes a value from backend-{k + 1}'s response (sequential proxy), which condroute "
                        f"cannot know before it routes")
            elif src == "input_headers":
                what = f"takes the request header {rest} (dynamic routing)"
            elif src == "input_query_strings":
                what = f"takes the query string {rest} (dynamic routing)"
            else:
                what = f"takes the token's claim {rest} (dynamic routing)"
            key = "url_pattern" if n is b.v.get("url_pattern") else "host"
            cc.warn(n, f"endpoint {ep}: skipped: backend-{j + 1}'s {key} {n.v!r} {what}")
            return f"backend-{j + 1}'s {key} {n.v!r} {what}"
    return None
