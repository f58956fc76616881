"""compile_policy with the identity lookups that the ``cel`` condition kind passes (the token's
claims for ``jwt``, the GeoIP record for ``geoIP()``), for tests that compile expressions directly."""
from __future__ import annotations

from condroute.cel.policy import CelLoadProblem, CelPolicy
from condroute.cel.policy import compile_policy as _compile_policy
from condroute.conditions.cel import LOOKUPS


def compile_policy(text: str, engine: str | None = None, geo: bool = True,
                   jwt: bool = True) -> tuple[CelPolicy | None, list[CelLoadProblem]]:
    return _compile_policy(text, engine, geo, jwt, lookups=LOOKUPS)
