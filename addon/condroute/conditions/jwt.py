"""``jwt: {CLAIM: MATCHER}``: claims of the request's JWT (settings.jwt says where the token is
and how it is verified; a.b reaches into nested claims). Claim values are never shown in reasons."""
from __future__ import annotations

from typing import Any

from ..load.ctx import CompileCtx
from ..node import Y
from ..request import RequestView
from .base import AllCond, Cond, Kind, SubCompiler
from .jwtauth import token_state, values_at
from .matchers import Matcher, compile_matcher


class JwtClaimCond(Cond):
    def __init__(self, claim: str, m: Matcher):
        self.claim = claim
        self.m = m
        self.text = f"jwt {claim} {m.want}"

    def fail(self, req: RequestView, env: Any) -> str | None:
        st = token_state(req, env)
        if st.error is not None:
            return f"jwt {self.claim}: the token was rejected: {st.error}"
        values = values_at(st.claims, self.claim)
        if self.m.holds(values):
            return None
        if st.token is None:
            return f"jwt {self.claim}: there is no token, wanted {self.m.want}"
        if not values:
            return f"jwt {self.claim} is missing from the token, wanted {self.m.want}"
        # never show the claim's value: it is token content
        return f"jwt {self.claim} does not match, wanted {self.m.want}"


def compile_jwt_condition(node: Y, cc: CompileCtx, sub: SubCompiler | None = None) -> Cond | None:
    if not cc.expect_map(node, "jwt"):
        return None
    if not node.v:
        cc.error(node, "jwt: name at least one claim, e.g. {role: admin}")
        return None
    if getattr(cc.settings, "jwt", None) is None and not cc.jwt_declared:
        cc.error(node, "jwt conditions need settings.jwt: where the token is and how it is verified "
                       "(verify: {secret_env: VAR}, {public_key_file: F}, {jwks_file: F}, or false to only decode)")
        return None
    parts: list[Cond] = []
    for claim, sub in node.v.items():
        if not claim or claim.startswith(".") or claim.endswith("."):
            cc.error_key(node, claim, f"jwt: bad claim path {claim!r}")
            continue
        m = compile_matcher(sub, cc, f"jwt {claim}")
        if m is not None:
            parts.append(JwtClaimCond(claim, m))
    if len(parts) != len(node.v):
        return None
    return parts[0] if len(parts) == 1 else AllCond(parts)


_SCHEMA = {"type": "object", "description": "{CLAIM: MATCHER}; a.b reaches into nested claims",
           "minProperties": 1, "additionalProperties": {"$ref": "#/$defs/matcher"}}
KINDS = [Kind("jwt", 40, compile_jwt_condition, _SCHEMA, "claims of the request's JWT")]
