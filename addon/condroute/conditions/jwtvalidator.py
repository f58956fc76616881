"""A gateway's own token check on one route (the model's :class:`~condroute.model.TokenCheck`,
KrakenD's ``auth/validator``), as krakend-jose does it:

- the token is read from the ``Authorization`` header (``Bearer `` stripped, a bare token
  accepted), then from the ``access_token`` cookie (both names configurable); an explicit token
  (``condroute check``'s ``jwt:``, ``explain --jwt``) comes first;
- it must verify with the route's keys and its one algorithm, carry a ``kid`` that is in the key
  set, and match the audience and issuer when they are given: otherwise KrakenD answers 401;
- then the roles (``roles_key``, nested on ``.`` with ``roles_key_is_nested``) and scopes: 403;
- ``propagate_claims`` headers are computed from the verified claims as ``Claims.Get`` formats
  them: a string as is, a whole number ``%d``, another number ``%f``, an array joined with ``,``,
  anything else as JSON; a missing claim gives ``""`` (krakend-jose ≥ 2.10 sets the header empty,
  so a client's own value never survives).

Each compiled check memoises its token state per request under its own key, so two routes with
different key sets never share a verified result. Claim values never appear in a reason or a
message (see ``jwtauth``)."""
from __future__ import annotations

import itertools
import json
from typing import Any

from ..load.ctx import CompileCtx
from ..model import ClaimHeader, TokenCheck
from ..node import Y
from ..request import RequestView
from .base import Cond
from .jwtauth import NO_TOKEN, JwtKey, JwtSettings, TokenState, _jwks, compile_jwt_settings

_ids = itertools.count(1)
_MISSING = object()


def go_value(v: Any) -> str:
    """A claim value as krakend-jose's ``Claims.Get`` writes it into a header."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool) or v is None or isinstance(v, dict):
        return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if isinstance(v, (int, float)):
        return f"{int(v)}" if float(v).is_integer() else f"{float(v):f}"
    if isinstance(v, list):
        return ",".join(_go_v(x) for x in v)
    return json.dumps(v, separators=(",", ":"))


def _go_v(v: Any) -> str:
    """An array element as Go's %v prints it."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return f"{int(v)}" if float(v).is_integer() else repr(float(v))
    if v is None:
        return "<nil>"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_v(v[k])}" for k in sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(_go_v(x) for x in v) + "]"
    return str(v)


def claim_at(claims: dict, claim: str, nested: bool = True) -> Any:
    """krakend-jose's claim lookup: ``a.b.c`` is nested unless the name starts with ``http``; an
    intermediate that is not an object means the claim is missing."""
    if not nested or claim.startswith("http") or "." not in claim:
        return claims.get(claim, _MISSING)
    cur: Any = claims
    for part in claim.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def header_values(claims: dict, ch: ClaimHeader) -> list[str]:
    v = claim_at(claims, ch.claim)
    if v is _MISSING:
        return [""]
    if ch.preserve_array and isinstance(v, list):
        return [_go_v(x) for x in v] or [""]
    return [go_value(v)]


class Validator:
    """A compiled :class:`TokenCheck`. ``settings`` is None when no key is available: nothing is
    enforced then, and no header is set from claims."""

    def __init__(self, tc: TokenCheck, settings: JwtSettings | None):
        self.tc = tc
        self.settings = settings
        self.memo_key = f"validator:{next(_ids)}"
        self.names = frozenset(h.header.lower() for h in tc.claim_headers)

    def token_of(self, req: RequestView) -> str | None:
        if req.jwt_token:
            return req.jwt_token
        vals = req.header(self.tc.header)
        if vals:
            v = vals[0].strip()
            scheme, sp, rest = v.partition(" ")
            if sp and scheme.lower() == "bearer":
                v = rest.strip()
            elif sp:
                v = ""
            if v:
                return v
        c = req.cookies.get(self.tc.cookie) if self.tc.cookie else None
        return (c[0].strip() or None) if c else None

    def state(self, req: RequestView) -> TokenState:
        return req.memo(self.memo_key, lambda: self._state(req))

    def _state(self, req: RequestView) -> TokenState:
        if self.settings is None:
            return NO_TOKEN
        token = self.token_of(req)
        if not token:
            return NO_TOKEN
        return self.settings.check(token)

    def rejected(self, req: RequestView) -> str | None:
        """Why KrakenD would answer 401, or None."""
        if self.settings is None:
            return None
        st = self.state(req)
        if st.token is None:
            return "there is no token"
        if st.error is not None:
            return f"the token was rejected: {st.error}"
        return None

    def forbidden(self, req: RequestView) -> str | None:
        """Why KrakenD would answer 403 (a valid token without the roles or scopes), or None."""
        st = self.state(req)
        if self.settings is None or st.error is not None or st.token is None:
            return None
        tc = self.tc
        if tc.roles:
            have = claim_at(st.claims, tc.roles_key or "roles", tc.roles_nested)
            if not isinstance(have, list) or not any(r in have for r in tc.roles):
                return f"the token has none of the roles {', '.join(tc.roles)} (claim {tc.roles_key or 'roles'})"
        if tc.scopes:
            have = claim_at(st.claims, tc.scopes_key or "scope", tc.scopes_nested)
            got = set(have.split()) if isinstance(have, str) else set(have) if isinstance(have, list) else set()
            ok = all(s in got for s in tc.scopes) if tc.scopes_all else any(s in got for s in tc.scopes)
            if not ok:
                return (f"the token lacks {'the' if tc.scopes_all else 'any of the'} scopes "
                        f"{', '.join(tc.scopes)} (claim {tc.scopes_key or 'scope'})")
        return None

    def headers(self, req: RequestView) -> list[tuple[str, str]]:
        """The propagated headers (lower-case names) KrakenD sets for this request: none without
        a valid token (KrakenD would have answered 401)."""
        st = self.state(req)
        if self.settings is None or st.token is None or st.error is not None:
            return []
        out = []
        for ch in self.tc.claim_headers:
            for v in header_values(st.claims, ch):
                out.append((ch.header.lower(), v))
        return out


class TokenRejectedCond(Cond):
    """Holds when the route's token check answers ``status`` (401 or 403)."""

    def __init__(self, validator: Validator, status: int):
        self.validator = validator
        self.status = status
        what = "rejects the token (no token, or an invalid one)" if status == 401 else \
            "finds the token without the roles or scopes it requires"
        self.text = f"{validator.tc.label} {what}: KrakenD answers {status}"

    def fail(self, req: RequestView, env: Any) -> str | None:
        v = self.validator
        why = v.rejected(req) if self.status == 401 else v.forbidden(req)
        if why is not None:
            return None
        return "the token is valid" if self.status == 401 else "the token has what it requires"


def compile_token_check(tc: TokenCheck, cc: CompileCtx) -> Validator:
    """The compiled check (one per distinct key set and options: equal checks share it, and with it
    the verified-token cache)."""
    return cc.share(("token_check", id(tc.keys), tc.keys_file, tc.decode_only, tc.algorithms, tc.audience,
                     tc.issuer, tc.leeway, tc.header, tc.cookie, tc.require_kid, tc.roles_key, tc.roles,
                     tc.roles_nested, tc.scopes_key, tc.scopes, tc.scopes_nested, tc.scopes_all,
                     tc.claim_headers),
                    lambda: Validator(tc, _settings(tc, cc)))


def _settings(tc: TokenCheck, cc: CompileCtx) -> JwtSettings | None:
    if tc.decode_only:
        return JwtSettings("header", tc.header, False)
    if tc.keys is None:
        return None
    keys = _keys(tc, cc)
    if keys is None:
        return None
    algs = frozenset(tc.algorithms)
    if algs:
        keys = tuple(JwtKey(k.kid, k.key, k.algs & algs, k.what) for k in keys if k.algs & algs)
    if not keys:
        # (the loader checks that the key set has a key of the algorithm's kind, with its location)
        cc.warn(None, f"{tc.label}: not enforced: its key set has no key for {', '.join(sorted(algs))}")
        return None
    aud = list(tc.audience) if tc.audience else None
    return JwtSettings("header", tc.header, True, keys, tc.issuer, aud, tc.leeway, require_kid=tc.require_kid)


def _keys(tc: TokenCheck, cc: CompileCtx) -> tuple[JwtKey, ...] | None:
    assert tc.keys is not None
    node = tc.keys.v.get("jwk_local_path") if isinstance(tc.keys.v, dict) else None
    if node is not None:
        # the KrakenD file's own jwk_local_path: problems are located in that file
        at = cc if tc.keys_file == cc.file else _located_in(tc.keys_file, cc)
        return _jwks(node, at, f"{tc.label} jwk_local_path")
    # the importing file's settings.jwt.verify: its own load reports what is wrong with it
    scratch = CompileCtx(tc.keys_file)
    s = compile_jwt_settings(Y({"verify": tc.keys}, tc.keys.line, tc.keys.col), scratch)
    return s.keys if s is not None else None


def _located_in(file: str, cc: CompileCtx) -> CompileCtx:
    """A context for ``file`` whose problems are ``cc``'s."""
    c = CompileCtx(file)
    c.problems, c.warnings = cc.problems, cc.warnings
    return c
