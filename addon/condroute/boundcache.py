"""A dict bounded in entries *and in bytes*, for per-rules caches (verified tokens, GeoIP records,
CEL results, compiled CEL programs).

Reads are plain ``dict.get`` calls (no lock, no bookkeeping), which is what matters on the hot path.
``put`` is told (or measures) how many bytes an entry keeps alive; an entry larger than
``max_entry`` is not cached at all (a hostile 256 KiB header is evaluated again rather than
remembered), and while the entries together exceed ``max_bytes`` or ``limit`` the oldest go first
(first in, first out). A count limit alone is not a bound: 4096 entries of 256 KiB are 1 GiB.
A cache lives in one compiled :class:`~condroute.rules.Rules`, so a reload starts with empty caches.
"""
from __future__ import annotations

import sys
from typing import Any, Hashable

_getsizeof = sys.getsizeof


def sizeof(obj: Any, limit: int = 1 << 62) -> int:
    """Bytes kept alive by ``obj``: ``sys.getsizeof`` summed over nested str/bytes/tuples/lists/
    dicts/sets and objects with ``__slots__``. Shared objects are counted at every reference (an
    over-estimate, which is the safe side). Stops early, returning more than ``limit``, once the
    total passes ``limit``: measuring a hostile value costs no more than the cap it is held to.
    Iterative, so deeply nested JSON claims cannot exhaust the stack."""
    total = 0
    stack = [obj]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        o = pop()
        total += _getsizeof(o)
        if total > limit:
            return total
        t = type(o)
        if t is str or t is int or t is float or t is bool or t is bytes or o is None:
            continue
        if t is tuple or t is list or t is frozenset or t is set:
            extend(o)
        elif t is dict:
            extend(o.keys())
            extend(o.values())
        else:
            for name in getattr(t, "__slots__", ()):
                v = getattr(o, name, None)
                if v is not None:
                    push(v)
            d = getattr(o, "__dict__", None)
            if isinstance(d, dict):
                push(d)
    return total


class BoundedCache(dict):
    __slots__ = ("limit", "max_bytes", "max_entry", "bytes", "_sizes")

    def __init__(self, limit: int, max_bytes: int = 8 << 20, max_entry: int | None = None):
        super().__init__()
        self.limit = limit
        self.max_bytes = max_bytes
        self.max_entry = max_bytes // 64 if max_entry is None else max_entry
        self.bytes = 0                      # accounted bytes of the entries held
        self._sizes: dict[Hashable, int] = {}

    def put(self, key: Hashable, value: Any, size: int | None = None) -> bool:
        """Remember ``value`` under ``key``; ``size``: the bytes both keep alive (measured with
        :func:`sizeof` when not given). Returns False when the entry is too large to be cached."""
        if size is None:
            size = sizeof((key, value), self.max_entry)
        if size > self.max_entry:
            self._drop(key)                 # a stale smaller value must not answer for it
            return False
        self._drop(key)
        sizes = self._sizes
        while self and (len(self) >= self.limit or self.bytes + size > self.max_bytes):
            try:
                self._drop(next(iter(self)))
            except (StopIteration, RuntimeError):  # emptied or changed meanwhile (another thread)
                break
        self[key] = value
        sizes[key] = size
        self.bytes += size
        return True

    def _drop(self, key: Hashable) -> None:
        try:
            del self[key]
        except KeyError:
            pass
        self.bytes -= self._sizes.pop(key, 0)

    def clear(self) -> None:
        super().clear()
        self._sizes.clear()
        self.bytes = 0
