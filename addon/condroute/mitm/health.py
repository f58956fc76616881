"""Passive upstream health: which upstream addresses recently refused connections.

Pure bookkeeping, no mitmproxy and no network: the addon (``upstreams.py``) reports what it saw
(a refused or timed-out connection, a successful one, a connection closed) and the engine asks
:meth:`Health.unavailable` while it selects a backend. An address that failed is *passed over*
for a cool-down; after it the next request tries it again (one probe), so a restarted upstream
is back within one cool-down.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

DEFAULT_COOLDOWN = 5.0      # seconds an upstream that refused a connection is passed over
FRESH = 2.0                 # seconds a successful connection vouches for an upstream
MAX_ENTRIES = 4096          # addresses remembered before expired entries are dropped


@dataclass
class Failure:
    error: str              # what went wrong, e.g. "refused the connection"
    at: float               # clock time of the (last) failure
    attempts: int = 1       # connection attempts that failed in a row


class Health:
    """Health of upstream addresses, keyed by ``(host, port)``."""

    def __init__(self, cooldown: float = DEFAULT_COOLDOWN, clock: Callable[[], float] = time.monotonic):
        self.cooldown = cooldown
        self.clock = clock
        self.failures: dict[tuple[str, int], Failure] = {}
        self.last_ok: dict[tuple[str, int], float] = {}
        self.open: dict[tuple[str, int], int] = {}

    @staticmethod
    def _key(host: str, port: int) -> tuple[str, int]:
        return (host.lower().strip("[]"), int(port))

    # -- what the engine asks ---------------------------------------------------------------------
    def unavailable(self, host: str, port: int) -> str | None:
        """Why ``host:port`` is passed over right now, or None when it may be used."""
        if not self.failures:
            return None
        k = self._key(host, port)
        f = self.failures.get(k)
        if f is None:
            return None
        age = self.clock() - f.at
        if age >= self.cooldown:
            return None
        tries = f" ({f.attempts} attempts)" if f.attempts > 1 else ""
        return (f"{f.error}{tries} {age:.1f}s ago; passed over for {self.cooldown - age:.1f}s more "
                f"(cool-down {self.cooldown:g}s)")

    # -- what the addon reports -------------------------------------------------------------------
    def known_up(self, host: str, port: int, fresh: bool = True) -> bool:
        """True when a connection to ``host:port`` is open or (``fresh``) succeeded within the last
        few seconds: then there is no point in probing it first."""
        k = self._key(host, port)
        if self.open.get(k, 0) > 0:
            return True
        t = self.last_ok.get(k) if fresh else None
        return t is not None and self.clock() - t < FRESH

    def mark_down(self, host: str, port: int, error: str, attempts: int = 1) -> bool:
        """Record a failed connection. Returns True when the address was not already cooling down
        (so the caller logs the transition once)."""
        k = self._key(host, port)
        was = self.unavailable(host, port) is not None
        now = self.clock()
        self.failures[k] = Failure(error, now, attempts)
        if len(self.failures) > MAX_ENTRIES:
            self.failures = {a: f for a, f in self.failures.items() if now - f.at < self.cooldown}
        self.last_ok.pop(k, None)
        return not was

    def mark_up(self, host: str, port: int) -> bool:
        """Record a successful connection. Returns True when the address had been marked down."""
        k = self._key(host, port)
        now = self.clock()
        self.last_ok[k] = now
        if len(self.last_ok) > MAX_ENTRIES:        # every address mitmproxy connects to passes here
            self.last_ok = {a: t for a, t in self.last_ok.items() if now - t < FRESH}
        return self.failures.pop(k, None) is not None

    def opened(self, host: str, port: int) -> None:
        k = self._key(host, port)
        self.open[k] = self.open.get(k, 0) + 1
        self.mark_up(host, port)

    def closed(self, host: str, port: int) -> None:
        k = self._key(host, port)
        n = self.open.get(k, 0) - 1
        if n > 0:
            self.open[k] = n
        else:
            self.open.pop(k, None)
