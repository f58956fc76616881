"""Small pieces of HTTP text that several layers write or read the same way: a token (a header
name or a method), an authority, a canonical header name, a number of seconds.

The bottom floor, beside ``model`` and ``errors``: it imports nothing of condroute's."""
from __future__ import annotations

import re

# RFC 9110 §5.6.2: a token (header names and methods are tokens)
TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
TOKEN_PATTERN = TOKEN.pattern


def is_token(text: str) -> bool:
    return TOKEN.match(text) is not None


def default_port(scheme: str) -> int:
    return 443 if scheme in ("https", "wss") else 80


def bracket(host: str) -> str:
    """An IPv6 address in brackets, as an authority writes it; anything else as it is."""
    return f"[{host}]" if ":" in host else host


def authority(scheme: str, host: str, port: int | None) -> str:
    """host[:port], the port left out when it is the scheme's default (RFC 9110 §4.2)."""
    h = bracket(host)
    return h if port is None or port == default_port(scheme) else f"{h}:{port}"


def canonical_header(name: str) -> str:
    """A header name as Go's textproto writes it (and KrakenD reads it): x-beta -> X-Beta."""
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


def parse_seconds(name: str, value: str, maximum: float = 3600) -> float:
    """An option's number of seconds ("2", "2.5", "2s"), from 0 to ``maximum``; else ValueError
    with a sentence naming the option."""
    raw = value.strip()
    try:
        v = float(raw[:-1] if raw.endswith("s") else raw)
    except ValueError:
        v = -1.0
    if not 0 <= v <= maximum:       # (also false for NaN)
        raise ValueError(f"{name} must be a number of seconds from 0 to {maximum:g}, not {value!r}")
    return v


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
# RFC 9110 §9.2.2: a request that may be sent again (retries)
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
