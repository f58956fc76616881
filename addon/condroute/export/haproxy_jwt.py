"""``jwt`` conditions (and cookie / query regexes) for the HAProxy export, as a Lua action (part of
``condroute.lua``).

HAProxy's own ``jwt_payload_query`` returns nothing for an array claim (and ``$.groups[0]`` is not
read either), while condroute's ``jwt: {groups: beta-testers}`` holds when *any* element of a list
claim matches — the common case of role and group claims. So the claims are read the way condroute
reads them (``conditions/jwtauth.py``: the token where ``settings.jwt.from`` says, ``Bearer ``
stripped; decode-only, or an HS256/384/512 signature checked with HAProxy's ``hmac`` converter and
then PyJWT's claim checks: iat, nbf, exp with leeway, iss, aud, sub and jti types), and each jwt
atom's whole matcher is evaluated over the claim's values (a list claim: its elements), setting
``txn.cr_lua_N`` when it holds; its ACL is ``var(txn.cr_lua_N) -m found``. A token that fails gives
no claims: every jwt atom is false, ``{not: ...}`` true, as in condroute.

The same action evaluates a cookie or query parameter under a regular expression: the raw-text
expressions of ``haproxy_cond`` cover the other matchers, and HAProxy's ``req.cook``/``url_param``
split and decode otherwise than condroute (cookies on ',', parameters on ';', no decoded names).

Refused: keys from public_key_file or jwks_file (RS*/ES*/PS*/EdDSA), number comparisons.

Why this module is long: it carries the Lua source (~400 lines: a JSON reader, condroute's claim
and cookie/query rules, PyJWT's checks), one program kept in one piece.
"""
from __future__ import annotations

import json

from .. import model
from . import ir
from .haproxy_text import regex_problem

HS = ("HS256", "HS384", "HS512")


class JwtAtoms:
    """The jwt atoms of a rules file, numbered, and the Lua that evaluates them."""

    def __init__(self, rules: model.Rules):
        self.settings = rules.settings.jwt
        self.atoms: list[str] = []          # Lua matcher expressions, by number
        self.by_key: dict[tuple, int] = {}
        self._config: str | None = None
        self._problem: str | None = None
        self.reads_jwt = False
        self.splits: list[str] = []         # claims that splits are keyed by
        if self.settings is not None:
            try:
                self._config = self._read_settings(self.settings.plain())
            except ValueError as e:
                self._problem = str(e)

    @property
    def used(self) -> bool:
        return bool(self.atoms or self.splits)

    def split_key(self, claim: str, at: ir.Where) -> str:
        """The variable the Lua action sets to a split's key ``jwt:CLAIM`` (engine.split_key: the
        claim's first value as text, nothing when it is missing or empty)."""
        if self._problem is not None:
            raise ir.NotExported(at, self._problem)
        if self.settings is None:
            raise ir.NotExported(at, "a split by a jwt claim needs settings.jwt")
        if claim not in self.splits:
            self.splits.append(claim)
        return f"var(txn.cr_split_{self.splits.index(claim) + 1})"

    def _read_settings(self, s: dict) -> str:
        src = str(s.get("from", "header:authorization"))
        kind, _, name = src.partition(":")
        kind, name = kind.strip().lower(), name.strip()
        if kind == "header":
            name = name.lower()
        v = s.get("verify")
        conf = {"kind": kind, "name": name, "verify": v is not False}
        if v is False:
            return _lua_table(conf)
        if not isinstance(v, dict):
            raise ValueError("settings.jwt.verify is not a mapping")
        if "secret" in v:
            conf["secret"] = str(v["secret"])
        elif "secret_env" in v:
            conf["secret_env"] = str(v["secret_env"])
        else:
            raise ValueError("settings.jwt.verify with public_key_file or jwks_file: only secrets (HS256/384/512) "
                             "are exported to HAProxy")
        algs = [a for a in v.get("algorithms", HS) if a in HS]
        conf["algs"] = {a: True for a in algs}
        for key in ("issuer", "audience"):
            if key in v:
                val = v[key]
                conf[key] = [str(x) for x in val] if isinstance(val, list) else [str(val)]
                conf[key + "_list"] = isinstance(val, list)
        conf["leeway"] = float(v.get("leeway", 0))
        return _lua_table(conf)

    def atom(self, a: ir.Atom) -> int:
        """The number of an atom evaluated in Lua (its matcher written once): a jwt claim, or a
        cookie / query parameter under a regular expression (the raw-text expressions cover the
        other matchers; ``req.cook``/``url_param`` split and decode otherwise than condroute).
        NotExported when it cannot be."""
        if a.source == "jwt":
            if self._problem is not None:
                raise ir.NotExported(a.at, self._problem)
            if self.settings is None:
                raise ir.NotExported(a.at, "jwt conditions need settings.jwt")
            self.reads_jwt = True
        expr = _lua_matcher(a.matcher, a.at)
        key = (a.source, a.name, expr)     # (query_first/cookie_first: CEL's getQuery/getCookie)
        n = self.by_key.get(key)
        if n is None:
            n = self.by_key[key] = len(self.atoms) + 1
            self.atoms.append(f"  [{n}] = {{src = \"{a.source}\", name = {_lua_str(a.name or '')}, m = {expr}}},")
        return n

    def lua(self) -> str:
        return (_LUA.replace("%CONFIG%", self._config or "nil")
                    .replace("%ATOMS%", "\n".join(self.atoms))
                    .replace("%SPLITS%", ", ".join(_lua_str(c) for c in self.splits)))


def _lua_str(s: str) -> str:
    return "\"" + "".join(c if c.isascii() and c.isprintable() and c not in "\"\\" else
                          "".join(f"\\{b}" for b in c.encode("utf-8")) for c in s) + "\""


def _lua_table(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v))
    if isinstance(v, str):
        return _lua_str(v)
    if isinstance(v, list):
        return "{" + ", ".join(_lua_table(x) for x in v) + "}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"[{_lua_str(k)}] = {_lua_table(x)}" for k, x in v.items()) + "}"
    return _lua_str(json.dumps(v))


def _lua_matcher(m: ir.Matcher, at: ir.Where) -> str:
    if isinstance(m, ir.MNot):
        return f"{{op = \"not\", m = {_lua_matcher(m.inner, at)}}}"
    if isinstance(m, ir.MAll):
        return "{op = \"all\", parts = {" + ", ".join(_lua_matcher(p, at) for p in m.parts) + "}}"
    if isinstance(m, ir.Present):
        return f"{{op = \"present\", p = {'true' if m.present else 'false'}}}"
    if isinstance(m, ir.Compare):
        raise ir.NotExported(at, "a number comparison (gt/ge/lt/le): Lua reads numbers otherwise "
                                 "than condroute (hexadecimal, no underscores)")
    ic = getattr(m, "ignore_case", False)
    texts = m.values if isinstance(m, ir.Eq) else (m.pattern if isinstance(m, ir.Regex) else m.value,)
    if ic and not all(t.isascii() for t in texts):
        raise ir.NotExported(at, "ignore_case with non-ASCII text: Lua's lower() folds ASCII letters only")
    if isinstance(m, ir.Eq):
        vals = ", ".join(f"[{_lua_str(x.lower() if ic else x)}] = true" for x in m.values)
        return f"{{op = \"eq\", set = {{{vals}}}, ic = {'true' if ic else 'false'}}}"
    if isinstance(m, ir.Regex):
        why = regex_problem(m.pattern)
        if why:
            raise ir.NotExported(at, f"regex {m.pattern!r}: {why}")
        return f"{{op = \"regex\", rx = rx({_lua_str(m.pattern)}, {'false' if ic else 'true'})}}"
    op = {ir.Prefix: "prefix", ir.Suffix: "suffix", ir.Contains: "contains"}[type(m)]
    return f"{{op = \"{op}\", s = {_lua_str(m.value.lower() if ic else m.value)}, ic = {'true' if ic else 'false'}}}"


_LUA = r"""
-- jwt claims (settings.jwt), cookies and query parameters under a regex, read as condroute reads
-- them: http-request lua.condroute_atoms sets txn.cr_lua_N when atom N holds
local JWT = %CONFIG%

local function rx(pattern, case_sensitive)
  local ok, r = Regex.new(pattern, case_sensitive)
  if not ok then error("bad regex " .. pattern) end
  return r
end

local ATOMS = {
%ATOMS%
}
local SPLITS = {%SPLITS%}

-- base64url as Python's urlsafe_b64decode reads it (characters outside the alphabet skipped)
local B64 = {}
do
  local a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  for i = 1, #a do B64[a:byte(i)] = i - 1 end
  B64[("+"):byte()] = 62
  B64[("/"):byte()] = 63
end
local function b64dec(s)
  local out, bits, n, count = {}, 0, 0, 0
  for i = 1, #s do
    local v = B64[s:byte(i)]
    if v ~= nil then
      bits = (bits << 6) | v
      n = n + 6
      count = count + 1
      if n >= 8 then
        n = n - 8
        out[#out + 1] = string.char((bits >> n) & 0xFF)
      end
    elseif s:sub(i, i) == "=" then
      break
    end
  end
  if count % 4 == 1 then return nil end
  return table.concat(out)
end

-- JSON (RFC 8259, as Python's json.loads in strict mode); arrays and objects are tagged tables
local NULL = setmetatable({}, {__tostring = function() return "null" end})
local ARR, OBJ = {}, {}
local function utf8char(c) return utf8.char(c) end
local function jdecode(s)
  local pos = 1
  local function ws() pos = s:find("[^ \t\r\n]", pos) or (#s + 1) end
  local value
  local function str()
    pos = pos + 1
    local buf = {}
    while true do
      local c = s:sub(pos, pos)
      if c == "" then error("eof") end
      if c == '"' then pos = pos + 1; break end
      if c:byte() < 32 then error("control") end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        local map = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t"}
        if map[e] then buf[#buf + 1] = map[e]; pos = pos + 2
        elseif e == "u" then
          local h = s:sub(pos + 2, pos + 5)
          if not h:match("^%x%x%x%x$") then error("escape") end
          local cp = tonumber(h, 16)
          pos = pos + 6
          if cp >= 0xD800 and cp <= 0xDBFF and s:sub(pos, pos + 1) == "\\u" then
            local l = tonumber(s:sub(pos + 2, pos + 5), 16)
            if l and l >= 0xDC00 and l <= 0xDFFF then
              cp = 0x10000 + ((cp - 0xD800) << 10) + (l - 0xDC00)
              pos = pos + 6
            end
          end
          buf[#buf + 1] = utf8char(cp)
        else error("escape") end
      else
        buf[#buf + 1] = c
        pos = pos + 1
      end
    end
    return table.concat(buf)
  end
  value = function()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local o = {[OBJ] = true}
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return o end
      while true do
        ws()
        if s:sub(pos, pos) ~= '"' then error("key") end
        local k = str(); ws()
        if s:sub(pos, pos) ~= ":" then error("colon") end
        pos = pos + 1
        o[k] = value(); ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "}" then return o end
        if d ~= "," then error("object") end
      end
    elseif c == "[" then
      local a = {[ARR] = 0}
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return a end
      while true do
        a[ARR] = a[ARR] + 1
        a[a[ARR]] = value(); ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "]" then return a end
        if d ~= "," then error("array") end
      end
    elseif c == '"' then return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4; return NULL
    else
      local int = s:match("^-?%d+", pos)
      if not int or int:match("^-?0%d") then error("number") end
      local num = int
      local frac = s:match("^%.%d+", pos + #num)
      if frac then num = num .. frac end
      local exp = s:match("^[eE][-+]?%d+", pos + #num)
      if exp then num = num .. exp end
      pos = pos + #num
      if not frac and not exp then return math.tointeger(tonumber(num)) or tonumber(num) end
      return tonumber(num) + 0.0
    end
  end
  local ok, v = pcall(function() local v = value(); ws(); if pos <= #s then error("trailing") end; return v end)
  if ok then return v end
  return nil
end

-- condroute's as_text (node.as_text): how a claim value is compared
local as_text
local function jencode(v)
  if type(v) == "table" and v[OBJ] then
    local keys = {}
    for k in pairs(v) do if type(k) == "string" then keys[#keys + 1] = k end end
    table.sort(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = jencode(k) .. ":" .. jencode(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif type(v) == "table" and v[ARR] then
    local parts = {}
    for i = 1, v[ARR] do parts[i] = jencode(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  elseif type(v) == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      local m = {['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\b"] = "\\b", ["\f"] = "\\f"}
      return m[c] or string.format("\\u%04x", c:byte())
    end) .. '"'
  end
  return as_text(v)
end
as_text = function(v)
  if type(v) == "string" then return v end
  if v == true then return "true" elseif v == false then return "false" end
  if v == NULL then return "null" end
  if math.type(v) == "integer" then return tostring(v) end
  if math.type(v) == "float" then
    if v == math.floor(v) and v > -2^63 and v < 2^63 then return string.format("%d", v) end
    for p = 15, 17 do
      local t = string.format("%." .. p .. "g", v)
      if tonumber(t) == v then return t end
    end
  end
  return jencode(v)
end

-- condroute's resolve_claim: a.b into nested objects, a number indexes a list, a name with dots as written
local MISSING = {}
local function resolve(obj, path)
  if type(obj) == "table" and obj[OBJ] then
    if obj[path] ~= nil then return obj[path] end
  elseif type(obj) == "table" and obj[ARR] then
    if path:match("^%d+$") and tonumber(path) < obj[ARR] then return obj[tonumber(path) + 1] end
  else
    return MISSING
  end
  local i = path:find(".", 1, true)
  while i do
    local head = path:sub(1, i - 1)
    local sub = MISSING
    if obj[OBJ] then
      if obj[head] ~= nil then sub = obj[head] end
    elseif head:match("^%d+$") and tonumber(head) < obj[ARR] then
      sub = obj[tonumber(head) + 1]
    end
    if sub ~= MISSING then
      local r = resolve(sub, path:sub(i + 1))
      if r ~= MISSING then return r end
    end
    i = path:find(".", i + 1, true)
  end
  return MISSING
end

local function values_at(claims, claim)
  local v = resolve(claims, claim)
  if v == MISSING then return {} end
  if type(v) == "table" and v[ARR] then
    local out = {}
    for i = 1, v[ARR] do out[i] = v[i] end
    return out
  end
  return {v}
end

local function holds(m, values)
  local op = m.op
  if op == "not" then return not holds(m.m, values) end
  if op == "all" then
    for _, p in ipairs(m.parts) do if not holds(p, values) then return false end end
    return true
  end
  if op == "present" then return (#values > 0) == m.p end
  for _, v in ipairs(values) do
    local s = as_text(v)
    if m.ic then s = s:lower() end
    if op == "eq" then if m.set[s] then return true end
    elseif op == "prefix" then if s:sub(1, #m.s) == m.s then return true end
    elseif op == "suffix" then if #m.s == 0 or s:sub(-#m.s) == m.s then return true end
    elseif op == "contains" then if s:find(m.s, 1, true) then return true end
    elseif op == "regex" then if m.rx:exec(s) then return true end
    end
  end
  return false
end

-- condroute's cookie parsing (request.parse_cookie_header): ';' pairs, the first '=', quotes taken off
local function cookies(headers, name)
  local out = {}
  local lines = headers["cookie"]
  if lines == nil then return out end
  local i = 0
  while lines[i] ~= nil do
    for part in (lines[i] .. ";"):gmatch("([^;]*);") do
      local k, v = part:match("^([^=]*)=(.*)$")
      if k ~= nil then
        k = k:match("^%s*(.-)%s*$")
        v = v:match("^%s*(.-)%s*$")
        if #v >= 2 and v:sub(1, 1) == '"' and v:sub(-1) == '"' then v = v:sub(2, -2) end
        if k == name then out[#out + 1] = v end
      end
    end
    i = i + 1
  end
  return out
end

local function token_of(txn)
  local headers = txn.http:req_get_headers()
  if JWT.kind == "header" then
    local vals = headers[JWT.name]
    if vals == nil or vals[0] == nil then return nil end
    local v = vals[0]:match("^%s*(.-)%s*$")
    local sp = v:find(" ", 1, true)
    if sp then
      if v:sub(1, sp - 1):lower() ~= "bearer" then return nil end
      v = v:sub(sp + 1):match("^%s*(.-)%s*$")
    end
    if v == "" then return nil end
    return v
  end
  local v = cookies(headers, JWT.name)[1]
  if v == nil then return nil end
  v = v:match("^%s*(.-)%s*$")
  if v == "" then return nil end
  return v
end

-- Python's int() of a claim (PyJWT's iat/nbf/exp checks): nil when it raises
local function py_int(v)
  if v == true then return 1 elseif v == false then return 0 end
  if math.type(v) == "integer" then return v end
  if math.type(v) == "float" then
    if v ~= v or v == math.huge or v == -math.huge then return nil end
    return v >= 0 and math.floor(v) or math.ceil(v)
  end
  if type(v) == "string" then
    local t = v:match("^%s*([-+]?%d[%d_]*)%s*$")
    if t and not t:find("__", 1, true) and not t:match("_$") then return tonumber((t:gsub("_", ""))) end
  end
  return nil
end

-- Python's truthiness of an empty list or object (PyJWT: "not payload['aud']")
local function is_empty(v)
  if type(v) ~= "table" then return false end
  if v[ARR] then return v[ARR] == 0 end
  for k in pairs(v) do if type(k) == "string" then return false end end
  return true
end

local function claims_of(txn, token)
  if #token > 16384 then return nil end
  local h, p, sig = token:match("^([^.]*)%.(.*)%.([^.]*)$")
  if h == nil or p:find(".", 1, true) then return nil end
  local header = jdecode(b64dec(h) or "\0")
  if type(header) ~= "table" or not header[OBJ] then return nil end
  local claims = jdecode(b64dec(p) or "\0")
  if type(claims) ~= "table" or not claims[OBJ] then return nil end
  if not JWT.verify then return claims end
  if header["kid"] ~= nil and type(header["kid"]) ~= "string" then return nil end
  local alg = header["alg"]
  if type(alg) ~= "string" or alg == "" or alg:lower() == "none" or not JWT.algs[alg] then return nil end
  local secret = JWT.secret or os.getenv(JWT.secret_env or "")
  if secret == nil or secret == "" then return nil end
  local want = txn.c:hmac(h .. "." .. p, "sha" .. alg:sub(3), txn.c:base64(secret))
  if want == nil or want ~= b64dec(sig) then return nil end
  local t = core.now()
  local now = t.sec + t.usec / 1e6
  local leeway = JWT.leeway
  if claims["iat"] ~= nil then
    local iat = py_int(claims["iat"])
    if iat == nil or iat > now + leeway then return nil end
  end
  if claims["nbf"] ~= nil then
    local nbf = py_int(claims["nbf"])
    if nbf == nil or nbf > now + leeway then return nil end
  end
  if claims["exp"] ~= nil then
    local exp = py_int(claims["exp"])
    if exp == nil or exp <= now - leeway then return nil end
  end
  if JWT.issuer then
    local iss = claims["iss"]
    if type(iss) ~= "string" then return nil end
    local found = false
    for _, x in ipairs(JWT.issuer) do if x == iss then found = true end end
    if not found then return nil end
  end
  if JWT.audience then
    local aud = claims["aud"]
    if aud == nil or aud == NULL or aud == "" or aud == false or aud == 0 or is_empty(aud) then return nil end
    local list = {}
    if type(aud) == "string" then list = {aud}
    elseif type(aud) == "table" and aud[ARR] then
      for i = 1, aud[ARR] do
        if type(aud[i]) ~= "string" then return nil end
        list[i] = aud[i]
      end
    else return nil end
    local found = false
    for _, want_aud in ipairs(JWT.audience) do
      for _, a in ipairs(list) do if a == want_aud then found = true end end
    end
    if not found then return nil end
  end
  if claims["sub"] ~= nil and type(claims["sub"]) ~= "string" then return nil end
  if claims["jti"] ~= nil and type(claims["jti"]) ~= "string" then return nil end
  return claims
end

-- condroute's parse_query: '&' pairs, the first '=', unquote_plus on name and value
local function unquote_plus(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
local function query_values(query, name)
  local out = {}
  if query == nil or query == "" then return out end
  for part in (query .. "&"):gmatch("([^&]*)&") do
    if part ~= "" then
      local k, v = part, ""
      local eq = part:find("=", 1, true)
      if eq then k, v = part:sub(1, eq - 1), part:sub(eq + 1) end
      if unquote_plus(k) == name then out[#out + 1] = unquote_plus(v) end
    end
  end
  return out
end

core.register_action("condroute_atoms", {"http-req"}, function(txn)
  local claims, headers = false, nil
  for n, a in pairs(ATOMS) do
    local values
    if a.src == "jwt" then
      if claims == false then
        local token = token_of(txn)
        claims = token and claims_of(txn, token) or nil
      end
      values = claims and values_at(claims, a.name) or {}
    elseif a.src == "cookie" or a.src == "cookie_first" then
      headers = headers or txn.http:req_get_headers()
      values = cookies(headers, a.name)
    else
      values = query_values(txn.f:query(), a.name)
    end
    if a.src == "cookie_first" or a.src == "query_first" then values = {values[1]} end
    if holds(a.m, values) then txn:set_var("txn.cr_lua_" .. n, 1) end
  end
  for n, claim in ipairs(SPLITS) do
    if claims == false then
      local token = token_of(txn)
      claims = token and claims_of(txn, token) or nil
    end
    local values = claims and values_at(claims, claim) or {}
    if #values > 0 then
      local key = as_text(values[1])
      if key ~= "" then txn:set_var("txn.cr_split_" .. n, key) end
    end
  end
end)
"""
