"""compile_policy with the identity lookups that the ``cel`` condition kind passes (the token's
claims for ``jwt``, the GeoIP record for ``geoIP()``), for tests that compile expressions directly."""
from __future__ import annotations

from condroute.cel.policy import CelLoadProblem, CelPolicy, IdentityLookups
from condroute.cel.policy import compile_policy as _compile_policy
from condroute.conditions.geo import client_cel_record
from condroute.conditions.jwtauth import token_state

LOOKUPS = IdentityLookups(token=token_state, geo_record=client_cel_record)


def compile_policy(text: str, engine: str | None = None, geo: bool = True,
                   jwt: bool = True) -> tuple[CelPolicy | None, list[CelLoadProblem]]:
    return _compile_policy(text, engine, geo, jwt, lookups=LOOKUPS)
