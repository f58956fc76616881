"""Istio VirtualService documents → model Routes (being written)."""
from __future__ import annotations

from typing import Iterator

from ..model import Route
from ..node import Y
from .ctx import CompileCtx


def virtualservice_routes(docs: list[Y], cc: CompileCtx) -> Iterator[Route]:
    """The routes of every VirtualService in ``docs`` (mappings with apiVersion networking.istio.io/*
    and kind VirtualService, List items already expanded), in the order Istio would try them."""
    for d in docs:
        cc.error(d, "VirtualService is not supported yet")
    return iter(())
