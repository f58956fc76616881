"""Route index: which routes can possibly own a request, without scanning all of them.

Routes whose path starts with a literal segment (``/api/...``) are only candidates for requests
whose first path segment is that literal; all others are candidates for every request. Each
bucket is pre-merged with the catch-all routes in file order, so a lookup is one dict access and
the first-match-wins order of the file is kept.
"""
from __future__ import annotations

from typing import Sequence


class RouteIndex:
    __slots__ = ("buckets", "general")

    def __init__(self, buckets: dict[str, tuple], general: tuple):
        self.buckets = buckets
        self.general = general

    def candidates(self, path: str) -> tuple:
        if self.buckets:
            end = path.find("/", 1)
            seg = path[1:end] if end > 0 else path[1:]
            b = self.buckets.get(seg)
            if b is not None:
                return b
        return self.general


def build_index(routes: Sequence) -> RouteIndex:
    keyed: dict[str, list[int]] = {}
    general: list[int] = []
    for i, r in enumerate(routes):
        lp = r.path.literal_prefix if r.path is not None else ""
        if lp:
            keyed.setdefault(lp[1:].split("/", 1)[0], []).append(i)
        else:
            general.append(i)
    buckets = {seg: tuple(routes[i] for i in sorted(idx + general)) for seg, idx in keyed.items()}
    return RouteIndex(buckets, tuple(routes[i] for i in general))
