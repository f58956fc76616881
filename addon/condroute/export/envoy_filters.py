"""The HTTP filters the Envoy export puts before the router.

- **Path** (always, first): condroute's normalisation in Lua (``_PATH_LUA``), Envoy's own
  ``normalize_path`` being off.

- **Client address** (``client_ip`` conditions, ``split: {by: client_ip}``): a small Lua filter
  (``envoy.filters.http.lua`` is in the standard build). Envoy's route match has no source-address
  matcher, and its own X-Forwarded-For handling (``xff_num_trusted_hops``, the ``xff`` original-IP
  extension) is not condroute's walk: from a trusted peer, X-Forwarded-For is read from the right to
  the first untrusted address, stopping at garbage, and X-Real-IP is used when there is no
  X-Forwarded-For. The filter does exactly that and writes one internal header per set of networks
  the client is in (``x-condroute-client-net-N: 1``) and the address itself
  (``x-condroute-client-ip``), which the route match reads and the route configuration removes
  before anything goes upstream. With ``--verify`` the peer is the verifier's client header.
- **JWT** (``jwt`` conditions, ``split: {by: jwt:CLAIM}``): a first Lua stage finds the token as
  condroute does (the first value of the header, ``Bearer`` in any case or no scheme at all; or
  the first cookie of that name, quotes removed) and hands it to ``jwt_authn`` in an internal
  header; ``jwt_authn`` verifies it with the key of ``settings.jwt.verify`` and puts the payload
  in dynamic metadata (a missing or failing token is let through without claims:
  ``allow_missing_or_failed``, as in condroute). The second stage writes each claim the rules read
  to an internal header, one value per element of a list claim (Envoy's ``claim_to_headers``
  writes a list as base64 JSON, which no matcher can read). Every internal header the client
  sends is removed first (the Lua filter clears the route cache), so none can be forged.
"""
from __future__ import annotations

import base64
import json
import os

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from .. import model
from ..node import Y
from .base import ExportOptions
from .envoy_match import CLIENT_HEADER, JWT_HEADER, NET_HEADER, Ctx
from .ir import NotExported, where

LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
JWT = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"

_LUA_BODY = r"""
local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local function v4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  local out = {}
  for _, p in ipairs({a, b, c, d}) do
    if #p > 1 and p:sub(1, 1) == "0" then return nil end
    local n = tonumber(p)
    if n > 255 then return nil end
    out[#out + 1] = n
  end
  return out
end

local function v6(s)
  local head, tail = s, nil
  local i = s:find("::", 1, true)
  if i then
    head, tail = s:sub(1, i - 1), s:sub(i + 2)
    if tail:find("::", 1, true) then return nil end
  end
  local function groups(t)
    local g = {}
    if t == "" then return g end
    local parts = {}
    for p in (t .. ":"):gmatch("([^:]*):") do parts[#parts + 1] = p end
    for k, p in ipairs(parts) do
      if k == #parts and p:find(".", 1, true) then
        local q = v4(p)
        if not q then return nil end
        g[#g + 1] = q[1] * 256 + q[2]
        g[#g + 1] = q[3] * 256 + q[4]
      else
        if not p:match("^%x%x?%x?%x?$") then return nil end
        g[#g + 1] = tonumber(p, 16)
      end
    end
    return g
  end
  local h = groups(head)
  if not h then return nil end
  local all = {}
  if tail then
    local t = groups(tail)
    if not t or #h + #t > 7 then return nil end
    for _, x in ipairs(h) do all[#all + 1] = x end
    for _ = 1, 8 - #h - #t do all[#all + 1] = 0 end
    for _, x in ipairs(t) do all[#all + 1] = x end
  else
    if #h ~= 8 then return nil end
    all = h
  end
  local out = {}
  for _, x in ipairs(all) do out[#out + 1] = math.floor(x / 256); out[#out + 1] = x % 256 end
  -- an IPv4-mapped address is the IPv4 address
  local mapped = true
  for k = 1, 10 do if out[k] ~= 0 then mapped = false end end
  if mapped and out[11] == 255 and out[12] == 255 then return {out[13], out[14], out[15], out[16]} end
  return out
end

-- condroute's parse_ip: brackets, an IPv4 address with a port, a zone; nil for garbage
local function parse_ip(text)
  if not text then return nil end
  local s = trim(text)
  if s == "" then return nil end
  if s:sub(1, 1) == "[" and s:find("]", 1, true) then
    s = s:sub(2, s:find("]", 1, true) - 1)
  else
    local _, colons = s:gsub(":", "")
    if colons == 1 and s:find(".", 1, true) then s = s:match("^([^:]*)") end
  end
  s = s:match("^([^%%]*)")
  if s:find(":", 1, true) then return v6(s) end
  return v4(s)
end

local function in_net(ip, net)
  if ip == nil or #ip ~= #net[1] then return false end
  local bits = net[2]
  for k = 1, #ip do
    if bits <= 0 then return true end
    local take = bits >= 8 and 8 or bits
    if math.floor(ip[k] / 2 ^ (8 - take)) ~= math.floor(net[1][k] / 2 ^ (8 - take)) then return false end
    bits = bits - take
  end
  return true
end

local function in_any(ip, nets)
  for _, n in ipairs(nets) do if in_net(ip, n) then return true end end
  return false
end

local function text_of(ip)
  if #ip == 4 then return table.concat(ip, ".") end
  local g = {}
  for k = 1, 16, 2 do g[#g + 1] = string.format("%x", ip[k] * 256 + ip[k + 1]) end
  return table.concat(g, ":")
end

local function first_cookie(h, name)
  local n = h:getNumValues("cookie")
  for k = 0, n - 1 do
    local v = h:getAtIndex("cookie", k)
    for part in (v .. ";"):gmatch("([^;]*);") do
      local eq = part:find("=", 1, true)
      if eq then
        local key = trim(part:sub(1, eq - 1))
        if key == name then
          local val = trim(part:sub(eq + 1))
          if #val >= 2 and val:sub(1, 1) == '"' and val:sub(-1) == '"' then val = val:sub(2, -2) end
          return val
        end
      end
    end
  end
  return nil
end

-- condroute's token_of: the first value of the header ("Bearer " stripped, any case; another
-- scheme is no token), or the first cookie of that name
local function token_of(h)
  local v
  if TOKEN_COOKIE then
    v = first_cookie(h, TOKEN_COOKIE)
    if v then v = trim(v) end
  else
    if h:getNumValues(TOKEN_HEADER) == 0 then return nil end
    v = trim(h:getAtIndex(TOKEN_HEADER, 0))
    local sp = v:find(" ", 1, true)
    if sp then
      if v:sub(1, sp - 1):lower() ~= "bearer" then return nil end
      v = trim(v:sub(sp + 1))
    end
  end
  if v == nil or v == "" then return nil end
  return v
end

local function client_ip(handle, h)
  local peer
  if PEER_HEADER then peer = h:get(PEER_HEADER) else peer = handle:streamInfo():downstreamDirectRemoteAddress() end
  local ip = parse_ip(peer)
  if #TRUSTED > 0 and ip and in_any(ip, TRUSTED) then
    local hops = {}
    local n = h:getNumValues("x-forwarded-for")
    for k = 0, n - 1 do
      local v = h:getAtIndex("x-forwarded-for", k)
      for part in (v .. ","):gmatch("([^,]*),") do hops[#hops + 1] = trim(part) end
    end
    local first = math.max(1, #hops - 31)
    if #hops > 0 then
      for k = #hops, first, -1 do
        local hip = parse_ip(hops[k])
        if hip == nil then break end
        ip = hip
        if not in_any(hip, TRUSTED) then break end
      end
    else
      local m = h:getNumValues("x-real-ip")
      if m > 0 then
        local rip = parse_ip(h:getAtIndex("x-real-ip", m - 1))
        if rip then ip = rip end
      end
    end
  end
  return ip
end

local MISSING = {}
local function is_list(t) return t[1] ~= nil end

-- condroute's resolve_claim: the claim as written, else a.b reaching into nested claims
local function resolve(obj, path)
  if type(obj) ~= "table" then return MISSING end
  if is_list(obj) then
    if path:match("^%d+$") and tonumber(path) < #obj then return obj[tonumber(path) + 1] end
  elseif obj[path] ~= nil then
    return obj[path]
  end
  local i = path:find(".", 1, true)
  while i do
    local head = path:sub(1, i - 1)
    local sub = nil
    if is_list(obj) then
      if head:match("^%d+$") and tonumber(head) < #obj then sub = obj[tonumber(head) + 1] end
    else
      sub = obj[head]
    end
    if sub ~= nil then
      local r = resolve(sub, path:sub(i + 1))
      if r ~= MISSING then return r end
    end
    i = path:find(".", i + 1, true)
  end
  return MISSING
end

local function claim_text(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "boolean" then return v and "true" or "false" end
  if t == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", v) end
    for _, f in ipairs({"%.15g", "%.16g", "%.17g"}) do
      local s = string.format(f, v)
      if tonumber(s) == v then return s end
    end
  end
  return nil
end

function envoy_on_request(handle)
  local h = handle:headers()
  if STAGE == "token" then
    h:remove(TOKEN_INTERNAL)
    local tok = token_of(h)
    if tok then h:add(TOKEN_INTERNAL, tok) end
    return
  end
  for k = 0, NSETS - 1 do h:remove(NET_HEADER .. k) end
  h:remove(CLIENT_HEADER)
  for k = 0, #CLAIMS - 1 do h:remove(JWT_HEADER .. k) end
  if #CLAIMS > 0 then
    local md = handle:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
    local payload = md and md["payload"]
    if payload then
      for k, claim in ipairs(CLAIMS) do
        local v = resolve(payload, claim)
        if v ~= MISSING and v ~= nil then
          local vals = (type(v) == "table" and is_list(v)) and v or {v}
          for _, e in ipairs(vals) do
            local s = claim_text(e)
            if s then h:add(JWT_HEADER .. (k - 1), s) end
          end
        end
      end
    end
  end
  if NSETS > 0 or NEED_CLIENT then
    local ip = client_ip(handle, h)
    if ip == nil then return end
    h:add(CLIENT_HEADER, text_of(ip))
    for k = 0, NSETS - 1 do
      if in_any(ip, SETS[k]) then h:add(NET_HEADER .. k, "1") end
    end
  end
end
"""


# condroute's path normalisation (request.normalize_path), before anything routes: RFC 3986 dot
# segments removed and "//" merged, percent-encodings left as they are; a path with %2e/%2f/%5c, a
# backslash or a "." / ".." segment with ";" parameters is refused with 400. Envoy's normalize_path
# would instead decode %41 and %2e and route what that gives.
_PATH_LUA = r"""
local function remove_dots(path)
  local segs = {}
  for seg in (path:sub(2) .. "/"):gmatch("([^/]*)/") do segs[#segs + 1] = seg end
  local out = {}
  local last = #segs
  for i, seg in ipairs(segs) do
    if seg == ".." then
      if #out > 0 then table.remove(out) end
      if i == last then out[#out + 1] = "" end
    elseif seg ~= "." and (seg ~= "" or i == last) then
      out[#out + 1] = seg
    elseif i == last then
      out[#out + 1] = ""
    end
  end
  return "/" .. table.concat(out, "/")
end

local function refused(path)
  if path:find("\\", 1, true) then return "a backslash" end
  if path:find("%", 1, true) then
    local low = path:lower()
    if low:find("%2e", 1, true) or low:find("%2f", 1, true) or low:find("%5c", 1, true) then
      return "an encoded '.', '/' or '\\' (%2e, %2f, %5c)"
    end
  end
  if path:find(";", 1, true) then
    for seg in (path:sub(2) .. "/"):gmatch("([^/]*)/") do
      local head = seg:match("^([^;]*);")
      if head == "." or head == ".." then return "a '.' or '..' segment with ';' parameters" end
    end
  end
  return nil
end

function envoy_on_request(handle)
  local h = handle:headers()
  local full = h:get(":path")
  if full == nil or full:sub(1, 1) ~= "/" then return end
  local q = full:find("?", 1, true)
  local path = q and full:sub(1, q - 1) or full
  if not (path:find("/.", 1, true) or path:find("//", 1, true) or path:find("%", 1, true)
          or path:find("\\", 1, true)) then
    return
  end
  local why = refused(path)
  if why then
    handle:respond({[":status"] = "400", ["content-type"] = "text/plain"},
                   "condroute: bad request: the path has " .. why .. "\n")
    return
  end
  if path:find("/.", 1, true) or path:find("//", 1, true) then
    local norm = remove_dots(path)
    if norm ~= path then h:replace(":path", norm .. (q and full:sub(q) or "")) end
  end
end
"""


def path_filter() -> dict:
    """The Lua filter that normalises the path as condroute does (the first filter)."""
    return {"name": "envoy.filters.http.lua",
            "typed_config": {"@type": LUA, "default_source_code": {"inline_string": _PATH_LUA},
                             "clear_route_cache": True}}


def _lua_net(n) -> str:
    b = n.network_address.packed
    return "{{" + ",".join(str(x) for x in b) + "}, " + str(n.prefixlen) + "}"


def _lua_nets(nets) -> str:
    return "{" + ", ".join(_lua_net(n) for n in nets) + "}"


def _lua_str(s: str | None) -> str:
    return "nil" if s is None else json.dumps(s)     # a JSON string is a valid Lua string for ASCII text


TOKEN_INTERNAL = "x-condroute-jwt-token"


def _lua(ctx: Ctx, rules: model.Rules, opts: ExportOptions, stage: str, token: tuple[str, str] | None) -> dict:
    head = [
        f"local STAGE = {_lua_str(stage)}",
        f"local NSETS = {len([s for s in ctx.nets if s])}",
        f"local NEED_CLIENT = {'true' if ctx.nets else 'false'}",
        f"local NET_HEADER = {_lua_str(NET_HEADER)}",
        f"local CLIENT_HEADER = {_lua_str(CLIENT_HEADER)}",
        f"local JWT_HEADER = {_lua_str(JWT_HEADER)}",
        f"local TOKEN_INTERNAL = {_lua_str(TOKEN_INTERNAL)}",
        f"local TOKEN_HEADER = {_lua_str(token[1] if token and token[0] == 'header' else None)}",
        f"local TOKEN_COOKIE = {_lua_str(token[1] if token and token[0] == 'cookie' else None)}",
        f"local PEER_HEADER = {_lua_str(opts.client_ip_header.lower() if opts.client_ip_header else None)}",
        f"local TRUSTED = {_lua_nets(rules.settings.trusted_proxies)}",
        "local SETS = {" + ", ".join(f"[{i}] = {_lua_nets(s)}" for i, s in enumerate(x for x in ctx.nets if x)) + "}",
        "local CLAIMS = {" + ", ".join(_lua_str(c) for c in ctx.claims) + "}",
    ]
    return {"name": "envoy.filters.http.lua",
            "typed_config": {"@type": LUA, "default_source_code": {"inline_string": "\n".join(head) + _LUA_BODY},
                             "clear_route_cache": True}}


def filters(ctx: Ctx, rules: model.Rules, opts: ExportOptions) -> tuple[list[dict], list[str]]:
    """The filters before the router for what ``ctx`` collected, and the internal headers they
    write (removed by the route configuration before anything goes upstream). Raises NotExported."""
    out: list[dict] = []
    internal: list[str] = []
    token = None
    if ctx.claims:
        jwt_filter, token = _jwt(rules)
        out += [_lua(ctx, rules, opts, "token", token), jwt_filter]
        internal += [TOKEN_INTERNAL] + [JWT_HEADER + str(i) for i in range(len(ctx.claims))]
    if ctx.nets or ctx.claims:
        out.append(_lua(ctx, rules, opts, "match", token))
    if ctx.nets:
        internal += [NET_HEADER + str(i) for i in range(len([s for s in ctx.nets if s]))] + [CLIENT_HEADER]
    return out, internal


# ---------------------------------------------------------------------------------------------- JWT
def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _pem_jwk(path: str, at) -> dict:
    """A PEM public key (or certificate) file as a JWK (RSA, EC, Ed25519/Ed448)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        try:
            key = load_pem_public_key(data)
        except ValueError:
            key = x509.load_pem_x509_certificate(data).public_key()
        algo = RSAAlgorithm if isinstance(key, rsa.RSAPublicKey) else \
            ECAlgorithm if isinstance(key, ec.EllipticCurvePublicKey) else OKPAlgorithm
        return json.loads(algo.to_jwk(key))
    except (OSError, ValueError, TypeError, NotImplementedError) as e:
        raise NotExported(at, f"settings.jwt.verify.public_key_file: {e}") from None


def _plain(node: Y):
    return node.plain() if hasattr(node, "plain") else node.v


def _jwt(rules: model.Rules) -> tuple[dict, tuple[str, str]]:
    """jwt_authn for settings.jwt.verify, and where the token is (``("header"|"cookie", name)``)."""
    jwt = rules.settings.jwt
    assert isinstance(jwt, Y) and isinstance(jwt.v, dict)
    file = rules.file
    v = jwt.v["verify"]
    at = where(v, file)
    vv = v.v
    provider: dict = {"forward": True, "payload_in_metadata": "payload",
                      "from_headers": [{"name": TOKEN_INTERNAL}]}
    if "secret" in vv or "secret_env" in vv:
        if "secret" in vv:
            secret = str(vv["secret"].v)
        else:
            var = str(vv["secret_env"].v)
            secret = os.environ.get(var) or ""
            if not secret:
                raise NotExported(at, f"settings.jwt.verify.secret_env: {var} is not set")
        jwks = {"keys": [{"kty": "oct", "k": _b64(secret.encode("utf-8"))}]}
        provider["local_jwks"] = {"inline_string": json.dumps(jwks)}
    else:
        key = "public_key_file" if "public_key_file" in vv else "jwks_file"
        path = str(vv[key].v)
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(file)), path)
        if key == "jwks_file":
            provider["local_jwks"] = {"filename": path}
        else:                                           # Envoy reads JWKS only: the PEM key as a JWK
            provider["local_jwks"] = {"inline_string": json.dumps({"keys": [_pem_jwk(path, where(vv[key], file))]})}
    if "issuer" in vv:
        iss = _plain(vv["issuer"])
        if isinstance(iss, list):
            if len(iss) != 1:
                raise NotExported(where(vv["issuer"], file), "several issuers: an Envoy JWT provider has one")
            iss = iss[0]
        provider["issuer"] = str(iss)
    if "audience" in vv:
        aud = _plain(vv["audience"])
        provider["audiences"] = [str(a) for a in (aud if isinstance(aud, list) else [aud])]
    if "leeway" in vv:
        provider["clock_skew_seconds"] = int(float(str(vv["leeway"].v)))
    src = str(jwt.v["from"].v) if "from" in jwt.v else "header:Authorization"
    kind, _, name = src.partition(":")
    token = ("cookie", name.strip()) if kind.strip().lower() == "cookie" else ("header", name.strip().lower())
    cfg = {"@type": JWT, "providers": {"condroute": provider},
           "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
               {"provider_name": "condroute"}, {"allow_missing_or_failed": {}}]}}}]}
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": cfg}, token


__all__ = ["filters"]
