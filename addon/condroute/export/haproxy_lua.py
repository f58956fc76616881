"""The Lua helper an HAProxy export loads when a rules file has ``settings.trusted_proxies``.

condroute believes X-Forwarded-For only from a trusted peer and then walks it from the right, hop by
hop, while the hops are trusted proxies (``request.RequestView.client_ip``): the first untrusted hop
is the client, a hop that is not an address stops the walk, at most the last 32 hops are read,
and without any X-Forwarded-For a parseable X-Real-IP (its last line) is the client. HAProxy's own
fetches read at most the 10th occurrence from the end (``req.hdr_ip(x-forwarded-for,-11)`` is a
configuration error), so the walk is this small Lua action (HAProxy is built with Lua in Debian and
every major distribution); it sets ``txn.cr_client``, which ``http-request set-src`` then uses."""
from __future__ import annotations

LUA_NAME = "condroute.lua"

_LUA = r"""-- condroute export --to haproxy: the client address behind trusted proxies (settings.trusted_proxies)
-- Loaded by haproxy.cfg (lua-load); used as: http-request lua.condroute_client
local trusted = {
%NETS%
}
local MAX_HOPS = 32

local function is_trusted(addr)
  for _, net in ipairs(trusted) do
    if core.match_addr(addr, net) then return true end
  end
  return false
end

-- condroute's parse_ip: "[v6]:port", "v4:port", a "%zone" dropped; anything else that is not an
-- address is nil (a v4 octet with a leading zero, a CIDR, a name)
local function parse_ip(s)
  if s == nil then return nil end
  s = s:match("^%s*(.-)%s*$")
  local close = s:find("]", 1, true)
  if s:sub(1, 1) == "[" and close then
    s = s:sub(2, close - 1)
  else
    local _, colons = s:gsub(":", "")
    if colons == 1 and s:find(".", 1, true) then s = s:match("^([^:]*)") end
  end
  s = s:match("^([^%%]*)")
  if s == "" or s:find("/", 1, true) then return nil end
  -- an IPv4-mapped IPv6 address is its IPv4 address (as Python's ipv4_mapped)
  local v4 = s:match("^::[fF][fF][fF][fF]:(%d+%.%d+%.%d+%.%d+)$")
  if v4 == nil then
    local hi, lo = s:match("^::[fF][fF][fF][fF]:(%x%x?%x?%x?):(%x%x?%x?%x?)$")
    if hi then
      local a, b = tonumber(hi, 16), tonumber(lo, 16)
      v4 = string.format("%d.%d.%d.%d", a >> 8, a & 255, b >> 8, b & 255)
    end
  end
  if v4 ~= nil then s = v4 end
  if s:find(":", 1, true) then
    if not s:match("^[0-9A-Fa-f:.]+$") then return nil end
  else
    local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    if not a then return nil end
    for _, o in ipairs({a, b, c, d}) do
      if (#o > 1 and o:sub(1, 1) == "0") or tonumber(o) > 255 then return nil end
    end
  end
  local addr = core.parse_addr(s)
  if addr == nil then return nil end
  return s, addr
end

core.register_action("condroute_client", {"http-req"}, function(txn)
  local _, peer = parse_ip(txn.f:src())
  if peer == nil or not is_trusted(peer) then return end
  local headers = txn.http:req_get_headers()
  local hops = {}
  local xff = headers["x-forwarded-for"]
  if xff ~= nil then
    local i = 0
    while xff[i] ~= nil do
      for hop in (xff[i] .. ","):gmatch("([^,]*),") do hops[#hops + 1] = hop end
      i = i + 1
    end
  end
  local client = nil
  if #hops > 0 then
    local first = math.max(1, #hops - MAX_HOPS + 1)
    for k = #hops, first, -1 do
      local text, addr = parse_ip(hops[k])
      if text == nil then break end
      client = text
      if not is_trusted(addr) then break end
    end
  else
    local real = headers["x-real-ip"]
    if real ~= nil then
      local last = 0
      while real[last + 1] ~= nil do last = last + 1 end
      client = parse_ip(real[last])
    end
  end
  if client ~= nil then txn:set_var("txn.cr_client", client) end
end)
"""


def lua_text(nets) -> str:
    lines = ",\n".join(f'  core.parse_addr("{n}")' for n in nets)
    return _LUA.replace("%NETS%", lines)
