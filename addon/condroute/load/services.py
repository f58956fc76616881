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


def resolve(cc: CompileCtx, node: Y, candidates: Sequence[str], what: str,
            cluster: tuple[str, int] | None = None) -> Upstream | None:
    """The first of ``candidates`` defined in the upstreams, or None after a located error at
    ``node`` (``what`` names the reference: ``backendRef infra-backend-v1 port 8080``).

    A file loaded directly (not imported: nothing maps its services) forwards to ``cluster``, the
    service's cluster DNS name and port, as the gateway would, with one warning per file saying
    how to map them instead."""
    for name in candidates:
        up = cc.upstreams.get(name)
        if up is not None:
            return up
    if cc.importer is None and cluster is not None:
        host, port = cluster
        if cc.shared.get(("cluster-dns", cc.file)) is None:
            cc.shared[("cluster-dns", cc.file)] = True
            cc.warn(node, f"this file is not imported, so no upstreams map its services: {what} and the others "
                          f"go to their cluster DNS names ({host}:{port}), as from inside the cluster; to run "
                          f"them on this machine, import the file from a condroute file whose upstreams define "
                          f"one of {', '.join(dict.fromkeys(candidates))}")
        return Upstream(f"{host}:{port}", f"http://{host}:{port}", "http", host, port, "")
    names = ", ".join(dict.fromkeys(candidates))
    if cc.importer is not None:
        where = f"define one of {names} in the upstreams of {os.path.basename(cc.importer.file)}"
    else:
        where = (f"import this file from a condroute file (`imports: [{os.path.basename(cc.file)}]`) "
                 f"whose upstreams define one of {names}")
    cc.error(node, f"{what} does not resolve to an upstream: {where}")
    return None
