"""Cluster service names → the importing file's upstreams (rules-format "Imports", Service names).

An imported HTTPRoute backendRef or VirtualService destination names a service as the cluster knows
it; the condroute file that imports it says where that service runs on this machine, in its
``upstreams``. :func:`resolve` tries the candidate names in order; a name that resolves nowhere is a
located error listing every name that would do."""
from __future__ import annotations

import os
from collections.abc import Sequence

from ..model import Upstream
from ..node import Y
from .ctx import CompileCtx


def resolve(cc: CompileCtx, node: Y, candidates: Sequence[str], what: str) -> Upstream | None:
    """The first of ``candidates`` defined in the upstreams, or None after a located error at
    ``node`` (``what`` names the reference: ``backendRef infra-backend-v1 port 8080``)."""
    for name in candidates:
        up = cc.upstreams.get(name)
        if up is not None:
            return up
    names = ", ".join(dict.fromkeys(candidates))
    if cc.importer is not None:
        where = f"define one of {names} in the upstreams of {os.path.basename(cc.importer.file)}"
    else:
        where = (f"import this file from a condroute file (`imports: [{os.path.basename(cc.file)}]`) "
                 f"whose upstreams define one of {names}")
    cc.error(node, f"{what} does not resolve to an upstream: {where}")
    return None
