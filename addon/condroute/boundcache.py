"""A dict with a size bound, for per-rules caches (verified tokens, GeoIP records, CEL results).

Reads are plain ``dict.get`` calls (no lock, no bookkeeping), which is what matters on the hot path.
When full, ``put`` drops the oldest entry (first in, first out). A cache lives in one compiled
:class:`~condroute.rules.Rules`, so a reload starts with empty caches.
"""
from __future__ import annotations

from typing import Any, Hashable


class BoundedCache(dict):
    __slots__ = ("limit",)

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key: Hashable, value: Any) -> None:
        if len(self) >= self.limit and key not in self:
            try:
                del self[next(iter(self))]
            except (StopIteration, KeyError, RuntimeError):  # a concurrent put got there first
                pass
        self[key] = value
