"""The nginx exporter's njs script (``condroute.js``, beside nginx.conf): what nginx's own
directives cannot read exactly.

- JWT claims (``jwt`` conditions): the token found where ``settings.jwt.from`` says (the first
  header of that name, ``Bearer`` stripped, or the first cookie), decoded as PyJWT decodes it, and
  with ``verify: {secret|secret_env}`` checked as condroute checks it (HS256/384/512, ``alg none``
  refused, ``exp``/``nbf``/``iat`` with the leeway, ``iss``, ``aud``, ``sub``/``jti`` types). Each
  jwt leaf is one ``js_set`` variable, 1 when some value of the claim matches. Public keys and JWKS
  are not exported: njs verifies them only asynchronously, which ``js_set`` cannot wait for.
- Whether a header was sent at all, for the header tests that hold on an empty value
  (``present: true``, ``equals: ""``, ``prefix: ""``...): nginx reads an empty header as missing.
- The client address with ``settings.trusted_proxies``: X-Forwarded-For walked from the right to
  the first untrusted address (then X-Real-IP), as ``RequestView.client_ip`` does — nginx's realip
  module does not fall back to X-Real-IP, and in ``--verify`` the peer address itself comes from
  the verifier's header, which realip would have to read first.
"""
from __future__ import annotations

import json
from typing import Any

from .. import model
from ..compile.rewrite import parse_replacement
from . import ir
from .ir import NotExported, Where
from .nginx_match import translate_regex

SCRIPT = r"""// written by condroute export --to nginx: the parts nginx's directives cannot read exactly
var crypto = require('crypto');
var CFG = @CFG@;
var MISSING = {};
var WS = /^[\t-\r\x1c-\x20]+|[\t-\r\x1c-\x20]+$/g;

function strip(s) { return s.replace(WS, ''); }
function own(o, k) { return Object.prototype.hasOwnProperty.call(o, k); }
function isObj(v) { return v !== null && typeof v === 'object' && !Array.isArray(v); }

function headerValues(r, low) {
    var out = [], h = r.rawHeadersIn;
    for (var i = 0; i < h.length; i++) {
        if (h[i][0].toLowerCase() === low) { out.push(h[i][1]); }
    }
    return out;
}

function cookies(r) {   // request.parse_cookie_header
    var out = {}, hs = headerValues(r, 'cookie');
    for (var i = 0; i < hs.length; i++) {
        var parts = hs[i].split(';');
        for (var j = 0; j < parts.length; j++) {
            var eq = parts[j].indexOf('=');
            if (eq < 0) { continue; }
            var name = strip(parts[j].slice(0, eq));
            if (!name) { continue; }
            var value = strip(parts[j].slice(eq + 1));
            if (value.length >= 2 && value[0] === '"' && value[value.length - 1] === '"') { value = value.slice(1, -1); }
            (out['k' + name] = out['k' + name] || []).push(value);
        }
    }
    return out;
}

// ---------------------------------------------------------------------------------------------- JWT
function b64(s) {       // base64url, as leniently as Python's non-validating decoder
    s = s.replace(/[^A-Za-z0-9+\/_-]/g, '').replace(/-/g, '+').replace(/_/g, '/');
    if (s.length % 4 === 1) { throw new Error('base64'); }
    while (s.length % 4) { s += '='; }
    return Buffer.from(s, 'base64');
}

function tokenOf(r) {
    var J = CFG.jwt;
    if (J.kind === 'header') {
        var vals = headerValues(r, J.name);
        if (!vals.length) { return null; }
        var v = strip(vals[0]);
        var sp = v.indexOf(' ');
        if (sp >= 0) {
            if (v.slice(0, sp).toLowerCase() !== 'bearer') { return null; }
            v = strip(v.slice(sp + 1));
        }
        return v || null;
    }
    var c = cookies(r)['k' + J.name];
    return c ? (strip(c[0]) || null) : null;
}

function pyint(x) {     // Python's int() of a claim, or an exception
    if (typeof x === 'boolean') { return x ? 1 : 0; }
    if (typeof x === 'number') { if (!isFinite(x)) { throw new Error('int'); } return Math.trunc(x); }
    if (typeof x === 'string') {
        var s = strip(x);
        if (!/^[+-]?[0-9]+(_[0-9]+)*$/.test(s)) { throw new Error('int'); }
        return parseInt(s.replace(/_/g, ''), 10);
    }
    throw new Error('int');
}

function pyFalsy(v) {
    return v === null || v === false || v === 0 || v === '' ||
        (Array.isArray(v) && !v.length) || (isObj(v) && !Object.keys(v).length);
}

function checked(J, claims) {   // PyJWT's claim checks: true when the token passes
    var now = Date.now() / 1000, lw = J.leeway;
    if (own(claims, 'iat') && pyint(claims.iat) > now + lw) { return false; }
    if (own(claims, 'nbf') && pyint(claims.nbf) > now + lw) { return false; }
    if (own(claims, 'exp') && pyint(claims.exp) <= now - lw) { return false; }
    if (J.issuer !== null) {
        if (!own(claims, 'iss') || typeof claims.iss !== 'string') { return false; }
        if (typeof J.issuer === 'string' ? claims.iss !== J.issuer : J.issuer.indexOf(claims.iss) < 0) { return false; }
    }
    if (J.audience !== null) {
        if (!own(claims, 'aud') || pyFalsy(claims.aud)) { return false; }
        var aud = typeof claims.aud === 'string' ? [claims.aud] : claims.aud;
        if (!Array.isArray(aud)) { return false; }
        for (var i = 0; i < aud.length; i++) { if (typeof aud[i] !== 'string') { return false; } }
        var want = typeof J.audience === 'string' ? [J.audience] : J.audience;
        if (!want.some(function (a) { return aud.indexOf(a) >= 0; })) { return false; }
    }
    if (own(claims, 'sub') && typeof claims.sub !== 'string') { return false; }
    if (own(claims, 'jti') && typeof claims.jti !== 'string') { return false; }
    return true;
}

function claimsOf(r) {          // the claims, or null (no token, or one that does not pass)
    var J = CFG.jwt, t = tokenOf(r);
    if (!t || t.length > 16384) { return null; }
    try {
        var last = t.lastIndexOf('.');
        if (last < 0) { return null; }
        var signing = t.slice(0, last), first = signing.indexOf('.');
        if (first < 0) { return null; }
        var header = JSON.parse(b64(signing.slice(0, first)).toString());
        if (!isObj(header) || (own(header, 'kid') && typeof header.kid !== 'string')) { return null; }
        var claims = JSON.parse(b64(signing.slice(first + 1)).toString());
        if (!isObj(claims)) { return null; }
        if (!J.verify) { return claims; }
        var alg = header.alg;
        if (typeof alg !== 'string' || J.algs.indexOf(alg) < 0) { return null; }
        var secret = J.secret !== null ? J.secret : process.env[J.secret_env];
        if (!secret) { return null; }
        var mac = crypto.createHmac('sha' + alg.slice(2), secret).update(signing).digest('hex');
        if (mac !== b64(t.slice(last + 1)).toString('hex')) { return null; }
        return checked(J, claims) ? claims : null;
    } catch (e) {
        return null;
    }
}

function resolve(obj, path) {   // jwtauth.resolve_claim
    if (isObj(obj)) {
        if (own(obj, path)) { return obj[path]; }
    } else if (Array.isArray(obj)) {
        if (/^[0-9]+$/.test(path) && +path < obj.length) { return obj[+path]; }
    } else {
        return MISSING;
    }
    var i = path.indexOf('.');
    while (i !== -1) {
        var head = path.slice(0, i), sub = MISSING;
        if (isObj(obj)) {
            if (own(obj, head)) { sub = obj[head]; }
        } else if (/^[0-9]+$/.test(head) && +head < obj.length) {
            sub = obj[+head];
        }
        if (sub !== MISSING) {
            var found = resolve(sub, path.slice(i + 1));
            if (found !== MISSING) { return found; }
        }
        i = path.indexOf('.', i + 1);
    }
    return MISSING;
}

function dumps(v) {             // json.dumps(v, sort_keys=True, separators=(",", ":"))
    if (Array.isArray(v)) { return '[' + v.map(dumps).join(',') + ']'; }
    if (isObj(v)) {
        return '{' + Object.keys(v).sort().map(function (k) { return dumps(k) + ':' + dumps(v[k]); }).join(',') + '}';
    }
    if (typeof v === 'string') {
        return JSON.stringify(v).replace(/[\u007f-\uffff]/g, function (c) {
            return '\\u' + ('0000' + c.charCodeAt(0).toString(16)).slice(-4);
        });
    }
    return asText(v);
}

function asText(v) {            // node.as_text
    if (typeof v === 'string') { return v; }
    if (v === true || v === false) { return v ? 'true' : 'false'; }
    if (v === null) { return 'null'; }
    if (typeof v === 'number') { return Number.isInteger(v) && Math.abs(v) < 1e21 ? v.toFixed(0) : String(v); }
    return dumps(v);
}

function holds(m, values) {     // a leaf matcher on every value of a claim (any value)
    if (m.k === 'present') { return values.length > 0; }
    for (var i = 0; i < values.length; i++) {
        var s = asText(values[i]);
        if (m.ic) { s = s.toLowerCase(); }
        if (m.k === 'eq' && m.v.indexOf(s) >= 0) { return true; }
        if (m.k === 'prefix' && s.slice(0, m.v.length) === m.v) { return true; }
        if (m.k === 'suffix' && s.length >= m.v.length && s.slice(s.length - m.v.length) === m.v) { return true; }
        if (m.k === 'contains' && s.indexOf(m.v) >= 0) { return true; }
        if (m.k === 'regex' && new RegExp(m.v).test(s)) { return true; }
    }
    return false;
}

function leaf(r, n) {
    var claims = claimsOf(r), L = CFG.leaves[n];
    if (claims === null) { return '0'; }
    var v = resolve(claims, L.claim);
    var values = v === MISSING ? [] : (Array.isArray(v) ? v : [v]);
    return holds(L, values) ? '1' : '0';
}

function claimKey(r) {          // a split by jwt:CLAIM: the first value, '' without one
    var claims = claimsOf(r);
    if (claims === null) { return ''; }
    var v = resolve(claims, CFG.splitClaim);
    var values = v === MISSING ? [] : (Array.isArray(v) ? v : [v]);
    return values.length ? asText(values[0]) : '';
}

function rewrite(r, n) {       // every match of the pattern replaced (compile.rewrite.RewriteRegex.sub)
    var R = CFG.rewrites[n];
    return r.variables.cr_path.replace(new RegExp(R.p, 'g'), function () {
        var a = arguments;
        return R.parts.map(function (p) { return typeof p === 'number' ? (a[p] === undefined ? '' : a[p]) : p; }).join('');
    });
}

// ------------------------------------------------------------------------------- the client address
function parse4(s) {
    var p = s.split('.');
    if (p.length !== 4) { return null; }
    var out = [];
    for (var i = 0; i < 4; i++) {
        if (!/^[0-9]{1,3}$/.test(p[i]) || (p[i].length > 1 && p[i][0] === '0') || +p[i] > 255) { return null; }
        out.push(+p[i]);
    }
    return out;
}

function parse6(s) {
    var tail = [];
    if (s.indexOf('.') >= 0) {          // an IPv4 address in the last 32 bits
        var dot = s.lastIndexOf(':');
        var v4 = dot < 0 ? null : parse4(s.slice(dot + 1));
        if (!v4) { return null; }
        tail = [(v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]];
        s = s.slice(0, dot);
        if (s.slice(-1) === ':') { s += ':'; }
    }
    var halves = s.split('::');
    if (halves.length > 2) { return null; }
    function groups(x) {
        if (x === '') { return []; }
        var g = x.split(':');
        for (var i = 0; i < g.length; i++) { if (!/^[0-9A-Fa-f]{1,4}$/.test(g[i])) { return null; } }
        return g.map(function (h) { return parseInt(h, 16); });
    }
    var a = groups(halves[0]);
    var b = halves.length === 2 ? groups(halves[1]) : [];
    if (a === null || b === null) { return null; }
    if (halves.length === 2) { b = b.concat(tail); } else { a = a.concat(tail); }
    var n = a.length + b.length;
    if (halves.length === 2 ? n > 7 : n !== 8) { return null; }
    var all = a.slice();
    while (all.length < 8 - b.length) { all.push(0); }
    all = all.concat(b);
    var bytes = [];
    for (var i = 0; i < 8; i++) { bytes.push(all[i] >> 8, all[i] & 255); }
    return bytes;
}

function parseIp(text) {        // request.parse_ip: [bytes...] (4 or 16 of them) or null
    if (!text) { return null; }
    var s = strip(text);
    if (s[0] === '[' && s.indexOf(']') > 0) {
        s = s.slice(1, s.indexOf(']'));
    } else if (s.split(':').length === 2 && s.indexOf('.') >= 0) {
        s = s.split(':')[0];
    }
    s = s.split('%')[0];
    var ip = parse4(s);
    if (ip) { return ip; }
    if (s.indexOf(':') < 0) { return null; }
    ip = parse6(s);
    if (ip && ip.slice(0, 10).every(function (b) { return b === 0; }) && ip[10] === 255 && ip[11] === 255) {
        return ip.slice(12);
    }
    return ip;
}

function inNets(ip, nets) {
    if (!ip) { return false; }
    for (var i = 0; i < nets.length; i++) {
        var n = nets[i], bits = n[1], ok = n[0].length === ip.length;
        for (var j = 0; ok && bits > 0; j++, bits -= 8) {
            var mask = bits >= 8 ? 255 : (0xff00 >> bits) & 255;
            ok = (ip[j] & mask) === (n[0][j] & mask);
        }
        if (ok) { return true; }
    }
    return false;
}

function ipText(ip) {
    if (ip.length === 4) { return ip.join('.'); }
    var g = [];
    for (var i = 0; i < 16; i += 2) { g.push(((ip[i] << 8) | ip[i + 1]).toString(16)); }
    return g.join(':');
}

function client(r) {            // RequestView.client_ip(settings.trusted_proxies)
    var peer = CFG.peerHeader ? (headerValues(r, CFG.peerHeader)[0] || '') : r.remoteAddress;
    var ip = parseIp(peer), trusted = CFG.trusted;
    if (trusted.length && inNets(ip, trusted)) {
        var hops = [], xff = headerValues(r, 'x-forwarded-for');
        for (var i = 0; i < xff.length; i++) {
            xff[i].split(',').forEach(function (h) { hops.push(strip(h)); });
        }
        hops = hops.slice(-32);
        if (hops.length) {
            for (var k = hops.length - 1; k >= 0; k--) {
                var hip = parseIp(hops[k]);
                if (!hip) { break; }
                ip = hip;
                if (!inNets(hip, trusted)) { break; }
            }
        } else {
            var real = headerValues(r, 'x-real-ip');
            if (real.length) {
                var rip = parseIp(real[real.length - 1]);
                if (rip) { ip = rip; }
            }
        }
    }
    return ip ? ipText(ip) : '';
}

@FUNCS@
export default {@EXPORTS@};
"""


class Njs:
    """What the script holds for one exported configuration."""

    def __init__(self, rules: model.Rules, peer_header: str | None):
        self.rules = rules
        self.peer_header = peer_header.lower() if peer_header else None
        self.leaves: list[dict[str, Any]] = []
        self.jwt: dict[str, Any] | None = None
        self.split_claims: list[str] = []
        self.client = False
        self.rewrites: list[dict[str, Any]] = []
        self.headers: list[str] = []            # header names whose presence a leaf needs

    @property
    def used(self) -> bool:
        return bool(self.leaves or self.client or self.split_claims or self.rewrites or self.headers)

    def jwt_settings(self, at: Where) -> dict[str, Any]:
        """``settings.jwt`` as the script reads it; NotExported for keys njs cannot check in js_set."""
        if self.jwt is not None:
            return self.jwt
        node = self.rules.settings.jwt
        spec = node.plain() if node is not None else {}
        kind, _, name = str(spec.get("from", "header:Authorization")).partition(":")
        kind, name = kind.strip().lower(), name.strip()
        out: dict[str, Any] = {"kind": kind, "name": name.lower() if kind == "header" else name,
                               "verify": False, "secret": None, "secret_env": None, "issuer": None,
                               "audience": None, "leeway": 0, "algs": []}
        v = spec.get("verify", False)
        if isinstance(v, dict):
            if "secret" not in v and "secret_env" not in v:
                raise NotExported(at, "jwt: settings.jwt.verify with a public key or JWKS: njs checks those "
                                      "signatures only asynchronously, which js_set cannot wait for")
            algs = v.get("algorithms") or ["HS256", "HS384", "HS512"]
            out.update(verify=True, secret=v.get("secret"), secret_env=v.get("secret_env"),
                       issuer=v.get("issuer"), audience=v.get("audience"), leeway=float(v.get("leeway", 0) or 0),
                       algs=[a for a in algs if a in ("HS256", "HS384", "HS512")])
        self.jwt = out
        return out

    def jwt_leaf(self, claim: str, m: ir.Matcher, at: Where) -> str:
        """The js_set function (and variable name) of one jwt leaf."""
        self.jwt_settings(at)
        spec: dict[str, Any] = {"claim": claim}
        ic = getattr(m, "ignore_case", False)
        if ic and not all(s.isascii() for s in getattr(m, "values", (getattr(m, "value", ""),))):
            raise NotExported(at, "ignore_case on a non-ASCII value: not exported to nginx")
        if isinstance(m, ir.Eq):
            spec.update(k="eq", v=[s.lower() if ic else s for s in m.values], ic=ic)
        elif isinstance(m, (ir.Prefix, ir.Suffix, ir.Contains)):
            spec.update(k=type(m).__name__.lower(), v=m.value.lower() if ic else m.value, ic=ic)
        elif isinstance(m, ir.Regex):
            spec.update(k="regex", v=("(?i)" if ic else "") + translate_regex(m.pattern, at), ic=False)
        elif isinstance(m, ir.Present):
            spec.update(k="present")
        else:
            raise NotExported(at, f"jwt {claim}: no nginx form for this matcher")
        self.leaves.append(spec)
        return f"j{len(self.leaves)}"

    def rewrite(self, pattern: str, replacement: str, at: Where) -> str:
        """The js_set function of a regular-expression rewrite of the path (every match replaced,
        ``\\N`` a group, as RE2's rewrite string)."""
        self.rewrites.append({"p": translate_regex(pattern, at), "parts": list(parse_replacement(replacement))})
        return f"rw{len(self.rewrites)}"

    def header_present(self, low: str) -> str:
        """The js_set function that is 1 when a header of that name was sent (even empty)."""
        if low not in self.headers:
            self.headers.append(low)
        return f"hp{self.headers.index(low) + 1}"

    def split_claim(self, claim: str, at: Where) -> str:
        self.jwt_settings(at)
        if self.split_claims and self.split_claims[0] != claim:
            raise NotExported(at, "splits by two different JWT claims: not exported to nginx")
        self.split_claims = [claim]
        return "claimKey"

    def env(self) -> str | None:
        """The environment variable the workers need (``env VAR;``), if any."""
        return self.jwt.get("secret_env") if self.jwt else None

    def script(self) -> str:
        trusted = []
        for n in self.rules.settings.trusted_proxies:
            trusted.append([list(n.network_address.packed), n.prefixlen])
        cfg = {"jwt": self.jwt, "leaves": self.leaves, "trusted": trusted, "peerHeader": self.peer_header,
               "rewrites": self.rewrites,
               "splitClaim": self.split_claims[0] if self.split_claims else None}
        funcs = [f"function j{i}(r) {{ return leaf(r, {i - 1}); }}" for i in range(1, len(self.leaves) + 1)]
        funcs += [f"function rw{i}(r) {{ return rewrite(r, {i - 1}); }}" for i in range(1, len(self.rewrites) + 1)]
        funcs += [f"function hp{i}(r) {{ return headerValues(r, {json.dumps(h)}).length ? '1' : '0'; }}"
                  for i, h in enumerate(self.headers, 1)]
        exports = ([f"j{i}" for i in range(1, len(self.leaves) + 1)] + ["client", "claimKey"]
                   + [f"rw{i}" for i in range(1, len(self.rewrites) + 1)]
                   + [f"hp{i}" for i in range(1, len(self.headers) + 1)])
        return (SCRIPT.replace("@CFG@", json.dumps(cfg, indent=1))
                .replace("@FUNCS@", "\n".join(funcs)).replace("@EXPORTS@", ", ".join(exports)))

