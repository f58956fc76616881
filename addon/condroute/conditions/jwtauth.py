"""JWT: ``settings.jwt`` (where the token is, how it is verified), ``jwt`` conditions, and the
claims that ``split: {by: jwt:CLAIM}`` and CEL's ``jwt`` read.

- Verification is PyJWT's. Keys are parsed once, when the rules load. Each key admits only the
  algorithms of its own kind (a secret: HS*; an RSA key: RS*/PS*; an EC key: the ES* of its curve;
  an Ed25519/Ed448 key: EdDSA), so ``alg: none`` and HS/RS key confusion are refused.
- Claims are decoded at most once per request, and only when some condition needs them. The
  outcome of checking a raw token is cached (bounded) until the token expires.
- A token that fails contributes no claims; the reason is one of a fixed set of phrases
  ("token expired", "bad signature", ...). Nothing from the token itself is ever put into a
  reason, a log line or an error message.

Why this module is long: finding, checking and caching a token and reading its key files are one
place where a token's trust is decided (KrakenD's per-route checks are in ``jwtvalidator``).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any

import jwt as pyjwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..boundcache import BoundedCache
from ..load.ctx import CompileCtx, kind
from ..request import RequestView
from ..load.yamlpos import Y

# We warn about short HMAC secrets once, at load; PyJWT would warn on every verification.
warnings.filterwarnings("ignore", category=pyjwt.InsecureKeyLengthWarning)

SETTINGS_KEYS = ("from", "verify")
VERIFY_KEYS = ("secret", "secret_env", "public_key_file", "jwks_file", "issuer", "audience", "leeway", "algorithms")
KEY_SOURCES = ("secret", "secret_env", "public_key_file", "jwks_file")

HS = ("HS256", "HS384", "HS512")
RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_BY_CURVE = {"secp256r1": ("ES256",), "secp384r1": ("ES384",), "secp521r1": ("ES512",), "secp256k1": ("ES256K",)}
KNOWN_ALGS = frozenset(HS + RSA_ALGS + ("ES256", "ES384", "ES512", "ES256K", "EdDSA"))
HS_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}

TOKEN_CACHE_SIZE = 4096
# Bytes, not only entries: a 16 KiB token of many tiny claims decodes to ~300 KB of Python objects.
# An entry (token + claims) above 64 KiB is checked again on every request instead of being kept.
TOKEN_CACHE_BYTES = 16 << 20
TOKEN_ENTRY_BYTES = 64 << 10
_clock = time.time   # the cache's notion of now (tests move it)
MAX_TOKEN_CHARS = 16384


class TokenState:
    """What one request's token amounts to: ``claims`` (empty unless it passed), ``error`` (why it
    did not pass; None when it passed or when there is no token) and ``token`` (the raw token)."""

    __slots__ = ("token", "claims", "error")

    def __init__(self, token: str | None, claims: dict, error: str | None):
        self.token = token
        self.claims = claims
        self.error = error


NO_TOKEN = TokenState(None, {}, None)


class JwtKey:
    __slots__ = ("kid", "key", "algs", "what")

    def __init__(self, kid: str | None, key: Any, algs: frozenset[str], what: str):
        self.kid = kid
        self.key = key
        self.algs = algs
        self.what = what


class JwtSettings:
    """Compiled ``settings.jwt``."""

    def __init__(self, source_kind: str, source_name: str, verify: bool, keys: tuple[JwtKey, ...] = (),
                 issuer: Any = None, audience: Any = None, leeway: float = 0.0, require_kid: bool = False):
        self.source_kind = source_kind          # header | cookie
        self.require_kid = require_kid          # a token without a kid is refused (KrakenD's default)
        self.source_name = source_name          # lower-case for headers
        self.verify = verify
        self.keys = keys
        self.by_kid = {k.kid: k for k in keys if k.kid is not None}
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.cache = BoundedCache(TOKEN_CACHE_SIZE, TOKEN_CACHE_BYTES, TOKEN_ENTRY_BYTES)
        self.verifications = 0                  # how many tokens were actually checked (not cached)
        self._options = {"verify_aud": audience is not None}

    # -- finding the token --------------------------------------------------------------------------
    def token_of(self, req: RequestView) -> str | None:
        if self.source_kind == "header":
            vals = req.header(self.source_name)
            if not vals:
                return None
            v = vals[0].strip()
            scheme, sp, rest = v.partition(" ")
            if sp:
                if scheme.lower() != "bearer":
                    return None          # Basic ..., Digest ...: not a token for us
                v = rest.strip()
            return v or None
        vals = req.cookies.get(self.source_name)
        return (vals[0].strip() or None) if vals else None

    # -- checking it --------------------------------------------------------------------------------
    def check(self, token: str) -> TokenState:
        """The state of a raw token, from the cache while it is still valid."""
        now = _clock()
        hit = self.cache.get(token)
        if hit is not None:
            valid_until, state = hit
            if now <= valid_until:
                return state
            state = TokenState(token, {}, "token expired")
            self.cache.put(token, (math.inf, state))     # (replaces the entry with its claims)
            return state
        state, valid_until = self._check(token, now)
        if valid_until is not None and len(token) <= MAX_TOKEN_CHARS:
            self.cache.put(token, (valid_until, state))
        return state

    def _check(self, token: str, now: float) -> tuple[TokenState, float | None]:
        """Returns the state and until when it may be reused (None: do not cache)."""
        self.verifications += 1
        if len(token) > MAX_TOKEN_CHARS:
            return TokenState(token, {}, "malformed token (too long)"), None
        if not self.verify:
            try:
                claims = pyjwt.decode(token, options={"verify_signature": False})
            except Exception:
                return TokenState(token, {}, "malformed token"), math.inf
            return TokenState(token, claims, None), math.inf
        try:
            header = pyjwt.get_unverified_header(token)
        except Exception:
            return TokenState(token, {}, "malformed token"), math.inf
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            return TokenState(token, {}, "malformed token (no alg)"), math.inf
        if alg.lower() == "none":
            return TokenState(token, {}, "alg none is not accepted"), math.inf
        if alg not in KNOWN_ALGS:
            return TokenState(token, {}, "unsupported algorithm"), math.inf
        kid = header.get("kid")
        if kid is None and self.require_kid:
            return TokenState(token, {}, "the token has no kid (key id)"), math.inf
        if kid is not None and self.by_kid:
            k = self.by_kid.get(kid)
            if k is None:
                return TokenState(token, {}, "unknown key id (kid)"), math.inf
            candidates = [k] if alg in k.algs else []
        else:
            candidates = [k for k in self.keys if alg in k.algs]
        if not candidates:
            return TokenState(token, {}, f"algorithm {alg} is not allowed for the configured key"), math.inf
        for k in candidates:
            try:
                claims = pyjwt.decode(token, k.key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                      leeway=self.leeway, options=self._options)
            except pyjwt.InvalidSignatureError:
                continue
            except pyjwt.ImmatureSignatureError:
                return TokenState(token, {}, "token not yet valid"), None     # time-dependent: do not cache
            except Exception as e:  # noqa: BLE001 - every PyJWT error becomes a fixed phrase
                return TokenState(token, {}, _reason(e)), math.inf
            if not isinstance(claims, dict):
                return TokenState(token, {}, "malformed token"), math.inf
            exp = claims.get("exp")
            has_exp = isinstance(exp, (int, float)) and not isinstance(exp, bool)
            valid_until = float(exp) + self.leeway if has_exp else math.inf
            return TokenState(token, claims, None), valid_until
        return TokenState(token, {}, "bad signature"), math.inf


def _reason(e: Exception) -> str:
    """A fixed phrase for a PyJWT error. Its own message is never used: it may quote the token."""
    if isinstance(e, pyjwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(e, pyjwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(e, pyjwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(e, pyjwt.MissingRequiredClaimError):
        claim = e.claim if e.claim in ("iss", "aud", "exp", "nbf", "iat", "sub", "jti") else "a required claim"
        return f"the token has no {claim} claim"
    if isinstance(e, pyjwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(e, pyjwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    if isinstance(e, pyjwt.InvalidKeyError):
        return "the key does not fit the token's algorithm"
    if isinstance(e, pyjwt.InvalidIssuedAtError):
        return "malformed token (iat)"
    if isinstance(e, pyjwt.DecodeError):
        return "malformed token"
    if isinstance(e, pyjwt.InvalidTokenError):
        return "invalid token"
    return "the token could not be checked"


# -- per request -------------------------------------------------------------------------------------
def token_state(req: RequestView, env: Any) -> TokenState:
    """The request's token, checked at most once per request (and once per token while cached);
    memoised per settings object, so no result checked with another key set is ever reused."""
    s = getattr(getattr(env, "settings", None), "jwt", None)
    return req.memo(f"jwt:{id(s)}", lambda: _state(req, env))


def _state(req: RequestView, env: Any) -> TokenState:
    s: JwtSettings | None = getattr(getattr(env, "settings", None), "jwt", None)
    token = req.jwt_token
    if token is None and s is not None:
        token = s.token_of(req)
    if not token:
        return NO_TOKEN
    if s is None:
        return TokenState(token, {}, "settings.jwt is not configured")
    return s.check(token)


_MISSING = object()


def resolve_claim(obj: Any, path: str) -> Any:
    """The value at a claim path: ``a.b`` reaches into nested objects, a number indexes a list, and
    a claim whose name itself contains dots (``https://example.com/roles``) is found as written."""
    if isinstance(obj, dict):
        if path in obj:
            return obj[path]
    elif isinstance(obj, list):
        if path.isdigit() and int(path) < len(obj):
            return obj[int(path)]
    else:
        return _MISSING
    i = path.find(".")
    while i != -1:
        head = path[:i]
        if isinstance(obj, dict):
            sub = obj.get(head, _MISSING)
        elif head.isdigit() and int(head) < len(obj):
            sub = obj[int(head)]
        else:
            sub = _MISSING
        if sub is not _MISSING:
            r = resolve_claim(sub, path[i + 1:])
            if r is not _MISSING:
                return r
        i = path.find(".", i + 1)
    return _MISSING


def values_at(claims: dict, claim: str) -> list:
    v = resolve_claim(claims, claim)
    if v is _MISSING:
        return []
    if isinstance(v, list):
        return v
    return [v]


def claim_values(req, env, claim: str) -> list:
    """The values of a claim of the request's token (a list claim gives its elements); [] without
    a valid token or without the claim."""
    st = token_state(req, env)
    if st.error is not None:
        return []
    return values_at(st.claims, claim)


# -- settings ----------------------------------------------------------------------------------------
def _algs_of(key: Any) -> tuple[frozenset[str], str]:
    if isinstance(key, rsa.RSAPublicKey):
        return frozenset(RSA_ALGS), "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return frozenset(EC_BY_CURVE.get(key.curve.name, ())), f"EC {key.curve.name}"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return frozenset({"EdDSA"}), "EdDSA"
    return frozenset(), type(key).__name__


def _read(path_node: Y, cc: CompileCtx, what: str) -> tuple[str, bytes] | None:
    name = cc.expect_str(path_node, what)
    if name is None:
        return None
    full = cc.resolve_path(name)
    try:
        with open(full, "rb") as f:
            data = f.read(4 * 1024 * 1024 + 1)
    except FileNotFoundError:
        cc.error(path_node, f"{what}: no such file: {full}")
        return None
    except OSError as e:
        cc.error(path_node, f"{what}: cannot read {full}: {e.strerror or e}")
        return None
    if len(data) > 4 * 1024 * 1024:
        cc.error(path_node, f"{what}: {full} is too large for a key file")
        return None
    return full, data


def _public_key(node: Y, cc: CompileCtx) -> JwtKey | None:
    got = _read(node, cc, "settings.jwt.verify.public_key_file")
    if got is None:
        return None
    full, data = got
    key: Any = None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except Exception:
        hint = " (it holds a private key: give the public key)" if b"PRIVATE KEY" in data else ""
        cc.error(node, f"settings.jwt.verify.public_key_file: {full} is not a PEM public key or certificate{hint}")
        return None
    algs, what = _algs_of(key)
    if not algs:
        cc.error(node, f"settings.jwt.verify.public_key_file: {full}: unsupported key type {what}")
        return None
    return JwtKey(None, key, algs, what)


def _jwks(node: Y, cc: CompileCtx, what: str = "settings.jwt.verify.jwks_file") -> tuple[JwtKey, ...] | None:
    got = _read(node, cc, what)
    if got is None:
        return None
    full, data = got
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        cc.error(node, f"{what}: {full} is not valid JSON: "
                       f"{getattr(e, 'msg', 'not UTF-8')}")
        return None
    if isinstance(doc, dict) and "keys" not in doc and "kty" in doc:
        doc = {"keys": [doc]}           # a single JWK is accepted too
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        cc.error(node, f"{what}: {full} is not a JWK set: expected {{\"keys\": [...]}}")
        return None
    keys: list[JwtKey] = []
    errors_before = len(cc.problems)
    for i, jwk in enumerate(doc["keys"]):
        where = f"{what}: {full}: key {i + 1}"
        if not isinstance(jwk, dict):
            cc.error(node, f"{where} is not an object")
            continue
        if jwk.get("use") not in (None, "sig"):
            continue                     # an encryption key: not for us
        if isinstance(jwk.get("alg"), str) and jwk["alg"] not in KNOWN_ALGS and jwk["alg"].lower() != "none":
            continue                     # a key-wrapping algorithm (A128KW, RSA-OAEP...): not for us
        try:
            pk = pyjwt.PyJWK(jwk)
        except Exception:
            cc.error(node, f"{where} (kty {str(jwk.get('kty'))[:10]!r}) cannot be used: unsupported or incomplete")
            continue
        kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else None
        if pk.key_type == "oct":
            algs = frozenset({jwk["alg"]}) if jwk.get("alg") in HS else frozenset(HS)
            keys.append(JwtKey(kid, pk.key, algs, "oct"))
            continue
        key = pk.key.public_key() if hasattr(pk.key, "public_key") else pk.key   # a private JWK: its public half
        algs, what = _algs_of(key)
        if isinstance(jwk.get("alg"), str):
            if jwk["alg"] not in algs:
                cc.error(node, f"{where}: alg {jwk['alg'][:10]!r} does not fit its key type {what}")
                continue
            algs = frozenset({jwk["alg"]})
        if not algs:
            cc.error(node, f"{where}: unsupported key type {what}")
            continue
        keys.append(JwtKey(kid, key, algs, what))
    if not keys and len(cc.problems) == errors_before:
        cc.error(node, f"{what}: {full} has no signing key")
    kids = [k.kid for k in keys if k.kid is not None]
    if len(kids) != len(set(kids)):
        cc.error(node, f"{what}: {full}: two keys share a kid")
        return None
    return tuple(keys) if keys else None


def _str_or_list(node: Y, cc: CompileCtx, what: str) -> Any:
    if isinstance(node.v, str) and node.v:
        return node.v
    if isinstance(node.v, list) and node.v and all(isinstance(n.v, str) and n.v for n in node.v):
        return [n.v for n in node.v]
    cc.error(node, f"settings.jwt.verify.{what} must be a string or a list of strings, not {kind(node.v)}")
    return None


def compile_jwt_settings(node: Y | None, cc: CompileCtx) -> Any:
    if node is None:
        return None
    cc.jwt_declared = True   # so that jwt conditions do not repeat the error
    if not cc.expect_map(node, "settings.jwt"):
        return None
    ok = cc.check_keys(node, SETTINGS_KEYS, "settings.jwt")
    source_kind, source_name = "header", "authorization"
    if "from" in node.v:
        fnode = node.v["from"]
        text = cc.expect_str(fnode, "settings.jwt.from")
        if text is None:
            return None
        k, _, name = text.partition(":")
        k = k.strip().lower()
        name = name.strip()
        if k not in ("header", "cookie") or not name:
            # (not query:NAME: URLs are logged, by condroute's decision lines and by mitmproxy itself)
            cc.error(fnode, f"settings.jwt.from {text!r}: expected header:NAME (e.g. header:Authorization) "
                            "or cookie:NAME")
            return None
        source_kind, source_name = k, (name.lower() if k == "header" else name)
    if "verify" not in node.v:
        cc.error(node, "settings.jwt needs `verify`: a mapping with secret, secret_env, public_key_file or jwks_file "
                       "(and optionally issuer, audience, leeway), or false to decode tokens without checking them")
        return None
    vnode = node.v["verify"]
    if vnode.v is False:
        cc.warn(vnode, "settings.jwt.verify is false: JWT signatures, expiry and audience are NOT checked; "
                       "anyone can forge claims. Use this for local debugging only")
        return JwtSettings(source_kind, source_name, False) if ok else None
    if not isinstance(vnode.v, dict):
        cc.error(vnode, f"settings.jwt.verify must be false or a mapping with secret, secret_env, public_key_file "
                        f"or jwks_file, not {kind(vnode.v)}")
        return None
    ok = cc.check_keys(vnode, VERIFY_KEYS, "settings.jwt.verify") and ok
    v = vnode.v
    sources = [k for k in KEY_SOURCES if k in v]
    if not sources:
        cc.error(vnode, "settings.jwt.verify needs a key: one of secret, secret_env, public_key_file, jwks_file")
        return None
    if len(sources) > 1:
        cc.error_key(vnode, sources[1], f"settings.jwt.verify: use only one of {', '.join(sources)}")
        return None
    src = sources[0]
    keys: tuple[JwtKey, ...] | None = None
    if src in ("secret", "secret_env"):
        snode = v[src]
        if src == "secret":
            secret = snode.v if isinstance(snode.v, str) else None
            if not secret:
                what = kind(snode.v) if not isinstance(snode.v, str) else "empty"
                cc.error(snode, f"settings.jwt.verify.secret must be a non-empty string, not {what}")
                return None
        else:
            var = cc.expect_str(snode, "settings.jwt.verify.secret_env")
            if var is None:
                return None
            secret = os.environ.get(var)
            if not secret:
                cc.error(snode, f"settings.jwt.verify.secret_env: the environment variable {var} is "
                                f"{'empty' if secret == '' else 'not set'}")
                return None
        raw = secret.encode("utf-8")
        keys = (JwtKey(None, raw, frozenset(HS), "secret"),)
        if len(raw) < 32:
            cc.warn(snode, f"settings.jwt.verify.{src}: the secret is {len(raw)} bytes; HS256 wants at least 32")
    elif src == "public_key_file":
        k1 = _public_key(v[src], cc)
        keys = (k1,) if k1 is not None else None
    else:
        keys = _jwks(v[src], cc)
    issuer = audience = None
    leeway = 0.0
    if "issuer" in v:
        issuer = _str_or_list(v["issuer"], cc, "issuer")
        ok = ok and issuer is not None
    if "audience" in v:
        audience = _str_or_list(v["audience"], cc, "audience")
        ok = ok and audience is not None
    if "leeway" in v:
        ln = v["leeway"]
        if isinstance(ln.v, bool) or not isinstance(ln.v, (int, float)) or not 0 <= ln.v <= 86400:
            cc.error(ln, "settings.jwt.verify.leeway must be a number of seconds between 0 and 86400, "
                         f"not {kind(ln.v)}")
            ok = False
        else:
            leeway = float(ln.v)
    if "algorithms" in v and keys:
        an = v["algorithms"]
        names = [n.v for n in an.v] if isinstance(an.v, list) else None
        if not names or not all(isinstance(x, str) for x in names):
            cc.error(an, f"settings.jwt.verify.algorithms must be a list such as [RS256], not {kind(an.v)}")
            ok = False
        else:
            possible = frozenset().union(*(k.algs for k in keys))
            bad = [x for x in names if x not in possible]
            if bad:
                cc.error(an, f"settings.jwt.verify.algorithms: {', '.join(map(str, bad))} cannot be used with the "
                             f"configured key (possible: {', '.join(sorted(possible))})")
                ok = False
            else:
                allowed = frozenset(names)
                keys = tuple(JwtKey(k.kid, k.key, k.algs & allowed, k.what) for k in keys if k.algs & allowed)
    if keys is None or not ok:
        return None
    return JwtSettings(source_kind, source_name, True, keys, issuer, audience, leeway)
