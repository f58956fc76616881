"""Gateway API HTTPRoute documents → model Routes (being written)."""
from __future__ import annotations

from typing import Iterator

from ..model import Route
from ..node import Y
from .ctx import CompileCtx


def httproute_routes(docs: list[Y], cc: CompileCtx) -> Iterator[Route]:
    """The routes of every HTTPRoute in ``docs`` (mappings with apiVersion gateway.networking.k8s.io/*
    and kind HTTPRoute, List items already expanded), in precedence order, 404 routes included."""
    for d in docs:
        cc.error(d, "HTTPRoute is not supported yet")
    return iter(())
