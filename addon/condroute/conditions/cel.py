"""``cel: EXPRESSION``: a CEL policy over the request (see ``condroute.cel``).

The policy reads the token's claims (``jwt``) and the client's GeoIP record (``geoIP()``) through
the lookups given here: the jwt and geo kinds own them, and ``cel/`` sits below them."""
from __future__ import annotations

from ..cel.context import IdentityLookups
from ..cel.policy import compile_cel_condition
from ..load.ctx import CompileCtx
from ..node import Y
from .base import Cond, Kind, SubCompiler
from .geo import client_cel_record
from .jwtauth import token_state

LOOKUPS = IdentityLookups(token=token_state, geo_record=client_cel_record)


def compile_cel(node: Y, cc: CompileCtx, sub: SubCompiler) -> Cond | None:
    return compile_cel_condition(node, cc, LOOKUPS)


KINDS = [Kind("cel", 100, compile_cel, {"type": "string", "description": "a CEL expression that must evaluate to true"},
              "a CEL expression over the request")]
