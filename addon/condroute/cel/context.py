"""The CEL evaluation under way, and where a policy gets what the request alone does not say.

An engine calls a helper function (``getHeader('X-Ab')``, ``geoIP()``) with CEL arguments only.
What else the helper needs -- the request, the loaded settings, the policy's identity lookups --
is put in :data:`current` by the policy for the length of one evaluation (per thread: requests are
evaluated in several threads), and a helper that fails leaves a ``note`` there: the safe text the
reason shows.

:class:`IdentityLookups`: the token's claims and the client's GeoIP record come from the ``jwt``
and ``geo`` condition kinds (``conditions/jwtauth.py``, ``conditions/geo.py``), which sit above
``cel/`` and which ``cel/`` therefore does not import. Whoever compiles a policy that reads ``jwt``
or calls ``geoIP()`` passes their per-request lookups in (the ``cel`` condition kind's
registration does).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..request import RequestView


class TokenLike(Protocol):
    """What the token lookup answers about one request's token (as conditions.jwtauth.TokenState)."""

    token: str | None      # the raw token, or None when the request has none
    claims: dict           # the verified claims; empty unless the token passed
    error: str | None      # why it did not pass (a fixed phrase); None when it passed or is absent


@dataclass(frozen=True)
class IdentityLookups:
    """Per-request lookups a policy may need, each memoised per request by its provider."""

    token: Callable[[RequestView, Any], TokenLike]                    # (req, env): conditions.jwtauth.token_state
    geo_record: Callable[[RequestView, Any], tuple[dict | None, str | None]]
    # (req, env) -> (the client's record for geoIP(), None) or (None, why there is none):
    # conditions.geo.client_cel_record


class Evaluation(threading.local):
    """The evaluation under way in this thread (set and cleared by CelPolicy)."""

    req: RequestView | None = None
    env: Any = None
    lookups: IdentityLookups | None = None
    note: str | None = None              # set by a helper that failed: the reason's text
    literals: frozenset = frozenset()    # the string literals of the expression being evaluated


current = Evaluation()


def set_note(text: str) -> None:
    current.note = text


def is_literal(text: str) -> bool:
    """Is ``text`` written in the expression being evaluated (so that caching by it is bounded)?"""
    return text in current.literals
