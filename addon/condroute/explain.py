"""Building a request for ``condroute explain`` and ``condroute check`` from plain arguments.

How a decision is shown (the explain table, ``--json`` data, the log line...) is in
:mod:`condroute.render`; its names are importable from here too, as they were before it existed.
The reasons shown are the engine's own (``Decision.attempts`` and ``routes_passed``): the same text
the addon logs, from one implementation.
"""
from __future__ import annotations

from typing import Sequence
from urllib.parse import urlsplit

from .httptext import TOKEN
from .request import RequestView, parse_ip
from .render import (LABEL, decision_data, final_path, final_url, not_tried, original_url,
                     passes_through, render_decision)

__all__ = ["build_request",
           # from render (imported from here before render existed)
           "LABEL", "decision_data", "final_path", "final_url", "not_tried", "original_url",
           "passes_through", "render_decision"]


def build_request(url: str, method: str = "GET", headers: Sequence[tuple[str, str]] = (),
                  cookies: Sequence[str] = (), client_ip: str | None = None,
                  jwt: str | None = None) -> RequestView:
    """A RequestView as the addon would build it for this request. Raises ValueError with a sentence."""
    if not isinstance(method, str) or not TOKEN.match(method):
        raise ValueError(f"{method!r} is not an HTTP method")
    full = url if "://" in url else "http://" + url.lstrip("/")
    try:
        u = urlsplit(full)
        _ = u.port   # raises ValueError for a bad port
    except ValueError as e:
        raise ValueError(f"bad URL {url!r}: {e}") from None
    if not u.hostname:
        raise ValueError(f"the URL {url!r} needs a host, as in http://shop.example/cart")
    if u.scheme.lower() not in ("http", "https", "ws", "wss"):
        raise ValueError(f"the URL {url!r} must be http:// or https://")
    peer = None
    if client_ip is not None:
        ip = parse_ip(str(client_ip))
        if ip is None:
            raise ValueError(f"{client_ip!r} is not an IP address")
        peer = str(ip)
    hdrs = list(headers)
    if cookies:
        hdrs.append(("Cookie", "; ".join(cookies)))
    # The URL is the request's target, as in an absolute-form request to the proxy: its host is the
    # host (rules-format "What is matched"), and a Host header is replaced with the URL's authority,
    # as the proxy does (RFC 9112 §3.2.2). Two Host headers get 400 from the proxy.
    if sum(k.lower() == "host" for k, _ in hdrs) > 1:
        raise ValueError("two Host headers: the proxy answers 400 Bad Request to such a request")
    hdrs = [(k, v) for k, v in hdrs if k.lower() != "host"]
    return RequestView.from_url(full, method, hdrs, peer=peer, jwt_token=jwt)
