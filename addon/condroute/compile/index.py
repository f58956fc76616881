"""Route index: which routes can possibly own a request, without scanning all of them.

Two keys, both taken from what a route *requires*:

- routes whose hosts are all exact names are only candidates for those hosts;
- the other routes are keyed by their first literal path segment (``/api/...``) when they have
  one; routes with neither are candidates for every request.

Each lookup returns the candidates in file order, so the first-match-wins order of the file is
kept; ``decide`` still checks every candidate fully.
"""
from __future__ import annotations

from typing import Sequence


class RouteIndex:
    __slots__ = ("buckets", "general", "by_host", "order")

    def __init__(self, buckets: dict[str, tuple], general: tuple, by_host: dict[str, tuple], order: dict[int, int]):
        self.buckets = buckets
        self.general = general
        self.by_host = by_host
        self.order = order

    def candidates(self, path: str, host: str = "") -> tuple:
        rest = self.general
        if self.buckets:
            end = path.find("/", 1)
            b = self.buckets.get(path[1:end] if end > 0 else path[1:])
            if b is not None:
                rest = b
        if self.by_host:
            h = self.by_host.get(host)
            if h:
                if not rest:
                    return h
                order = self.order
                return tuple(sorted(h + rest, key=lambda r: order[id(r)]))
        return rest


def _exact_hosts(route) -> tuple[str, ...]:
    hosts = route.hosts
    if hosts and not any(h == "*" or h.startswith("*.") for h in hosts):
        return hosts
    return ()


def build_index(routes: Sequence) -> RouteIndex:
    by_host: dict[str, list] = {}
    keyed: dict[str, list[int]] = {}
    general: list[int] = []
    for i, r in enumerate(routes):
        exact = _exact_hosts(r)
        if exact:
            for h in dict.fromkeys(exact):
                by_host.setdefault(h, []).append(r)
            continue
        lp = r.path.literal_prefix if r.path is not None else ""
        if lp:
            keyed.setdefault(lp[1:].split("/", 1)[0], []).append(i)
        else:
            general.append(i)
    buckets = {seg: tuple(routes[i] for i in sorted(idx + general)) for seg, idx in keyed.items()}
    return RouteIndex(buckets, tuple(routes[i] for i in general), {h: tuple(v) for h, v in by_host.items()},
                      {id(r): i for i, r in enumerate(routes)})
